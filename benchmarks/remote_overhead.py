"""Remote server overhead on loopback vs the local engine (not a test).

A ``samvolseg serve`` subprocess on 127.0.0.1 and a local ``InteractiveSession`` in this process get the same
volume (the CT phantom at 512×512×134, int16 HU) and the same clicks (deepest point of the spleen, then of the
largest error, simulated once locally). Each backend runs the click sequence twice; the second pass is timed
(embeddings cached: what a user feels after the first click in a region). Reported:

* per-click latency p50/p95, local vs remote, and the difference (the remote overhead);
* bytes per click reply on the wire (HTTP body) vs the full mask (uint8, and packed + compressed);
* upload bytes and seconds for the volume; a second client's set_volume of the same volume (no upload);
* requests/s with 8 concurrent clients × 20 clicks on 8 different 128×128×64 crops.

Writes ``benchmarks/results/remote_overhead.json`` and ``.md``. Run::

    python benchmarks/remote_overhead.py --model default --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk
import torch
from scipy import ndimage

from SAMVolSegmentLib.model import load_model
from SAMVolSegmentLib.phantom import PHANTOM_LABELS, make_phantom
from SAMVolSegmentLib.predictor import Predictor
from SAMVolSegmentLib.remote import RemoteSession
from SAMVolSegmentLib.remote.protocol import encode_bits
from SAMVolSegmentLib.session import InteractiveSession

RESULTS = Path(__file__).resolve().parent / "results"


def deepest_ras(mask: np.ndarray, image: sitk.Image) -> np.ndarray:
    """RAS of the voxel farthest from the mask's border (the simulated click)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]  # the transform on the box only: 35 M voxels are slow
    distance = ndimage.distance_transform_edt(np.pad(mask[box], 1))[1:-1, 1:-1, 1:-1]
    k, j, i = (int(v) + s.start for v, s in zip(np.unravel_index(int(np.argmax(distance)), distance.shape), box))
    lps = image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
    return np.array(lps) * np.array([-1, -1, 1])


def simulate_clicks(session, image, target: np.ndarray, count: int):
    """Clicks at the deepest point of the target, then of the largest error; returns [(ras, positive)]."""
    clicks = [(deepest_ras(target, image), True)]
    target_box = np.zeros_like(target)
    target_box[tuple(slice(max(0, s.start - 10), s.stop + 10) for s in ndimage.find_objects(target.astype(np.uint8))[0])] = True
    session.add_click(*clicks[0])
    for _ in range(count - 1):
        mask = session.mask_array_kji().astype(bool)
        missed, extra = target & ~mask, mask & ~target
        if len(clicks) >= 2:  # later clicks only refine the target's neighbourhood (keeps the labelling cheap)
            missed &= target_box
            extra &= target_box
        labels, n = ndimage.label(missed | extra)
        if n == 0:
            break
        sizes = ndimage.sum(np.ones_like(labels), labels, range(1, n + 1))
        region = labels == (1 + int(np.argmax(sizes)))
        positive = bool(missed[region].sum() >= extra[region].sum())
        clicks.append((deepest_ras(region, image), positive))
        session.add_click(*clicks[-1])
    return clicks


def timed_pass(session, clicks):
    times = []
    for point, positive in clicks:
        start = time.perf_counter()
        session.add_click(point, positive)
        times.append(time.perf_counter() - start)
    return times


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, threads: int, token: str):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SAMVOLSEG_SERVER_TOKEN": token}
    process = subprocess.Popen([sys.executable, "-m", "SAMVolSegmentLib.cli", "serve", "--model", model, "--port",
                                str(port), "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(process.stdout.read())
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return process, url
        except requests.exceptions.ConnectionError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--load-clicks", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    token = secrets.token_urlsafe(24)

    start = time.perf_counter()
    phantom = make_phantom(spacing=(360 / 512, 280 / 512, 160 / 134), seed=0)
    image = phantom.image
    target = sitk.GetArrayFromImage(phantom.label) == PHANTOM_LABELS["spleen"]
    print(f"phantom {image.GetSize()} in {time.perf_counter() - start:.0f} s; spleen {int(target.sum())} voxels")

    model = load_model(args.model)
    local = InteractiveSession(Predictor(model))
    local.set_volume(image)
    local.wait_until_ready()
    clicks = simulate_clicks(local, image, target, args.clicks)
    local.reset()
    local_times = timed_pass(local, clicks)  # embeddings cached by the simulation pass
    final_local = local.mask_array_kji()

    process, url = start_server(args.model, args.threads, token)
    try:
        sizes = []
        remote = RemoteSession(url, token=token)
        remote._http.hooks["response"].append(lambda r, *a, **k: sizes.append(len(r.content)))
        start = time.perf_counter()
        remote.set_volume(image)
        upload_s = time.perf_counter() - start
        upload_bytes = remote.last_upload_bytes
        remote.wait_until_ready()
        timed_pass(remote, clicks)  # warm the server's embeddings
        remote.reset()
        sizes.clear()
        remote_times = timed_pass(remote, clicks)
        reply_bytes = list(sizes)
        same = bool(np.array_equal(remote.mask_array_kji(), final_local))
        second = RemoteSession(url, token=token)
        start = time.perf_counter()
        second.set_volume(image)
        reuse_s = time.perf_counter() - start
        assert second.last_upload_bytes == 0
        second.close()
        remote.close()

        # 8 clients, different volumes (crops around the spleen shifted per client), clicks near the centre.
        array = sitk.GetArrayFromImage(image)
        centre = np.array(ndimage.center_of_mass(target)).astype(int)
        crops = []
        for n in range(8):
            lo = np.clip(centre - [32, 64, 64] + [0, 2 * n, -2 * n], 0, None)
            crop = sitk.GetImageFromArray(array[lo[0]:lo[0] + 64, lo[1]:lo[1] + 128, lo[2]:lo[2] + 128])
            crop.SetSpacing(image.GetSpacing())
            crop.SetOrigin(image.TransformIndexToPhysicalPoint([int(v) for v in lo[::-1]]))
            crops.append(crop)

        def client(n: int) -> int:
            session = RemoteSession(url, token=token, max_busy_retries=100)
            session.set_volume(crops[n])
            size = crops[n].GetSize()
            rng = np.random.default_rng(n)
            for _ in range(args.load_clicks):
                index = [float(s / 2 + rng.uniform(-8, 8)) for s in size]
                point = np.array(crops[n].TransformContinuousIndexToPhysicalPoint(index)) * [-1, -1, 1]
                session.add_click(point, bool(rng.random() < 0.75))
            session.close()
            return args.load_clicks

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            total = sum(pool.map(client, range(8)))
        load_s = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(30)

    full_packed = len(encode_bits(final_local))
    result = {
        "model": args.model, "model_id": local.model_id, "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "volume_size_xyz": list(image.GetSize()), "clicks": len(clicks),
        "local_click_ms": {"p50": 1e3 * statistics.median(local_times), "p95": 1e3 * percentile(local_times, 95)},
        "remote_click_ms": {"p50": 1e3 * statistics.median(remote_times), "p95": 1e3 * percentile(remote_times, 95)},
        "remote_overhead_ms_p50": 1e3 * (statistics.median(remote_times) - statistics.median(local_times)),
        "reply_bytes": {"median": statistics.median(reply_bytes), "max": max(reply_bytes)},
        "full_mask_bytes": {"uint8": int(final_local.size), "packed_zlib": full_packed},
        "remote_equals_local": same,
        "upload": {"raw_int16_bytes": int(array.nbytes), "compressed_bytes": upload_bytes, "seconds": upload_s,
                   "same_volume_again_seconds": reuse_s},
        "load_8_clients": {"clicks": total, "seconds": load_s, "requests_per_s": total / load_s},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "remote_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Remote overhead on loopback: {args.model} ({local.model_id}), {args.threads} threads",
        "",
        f"Volume {image.GetSize()} int16 CT phantom, {len(clicks)} simulated clicks on the spleen (second pass, "
        "embeddings cached). Server: `samvolseg serve` subprocess on 127.0.0.1; client and server share the CPU.",
        "",
        "| | p50 ms | p95 ms |", "|---|---|---|",
        f"| local click | {result['local_click_ms']['p50']:.1f} | {result['local_click_ms']['p95']:.1f} |",
        f"| remote click | {result['remote_click_ms']['p50']:.1f} | {result['remote_click_ms']['p95']:.1f} |",
        "",
        f"Remote overhead p50: {result['remote_overhead_ms_p50']:.1f} ms. Remote mask equals local: {same}.",
        f"Reply bytes per click: median {result['reply_bytes']['median']:.0f}, max {result['reply_bytes']['max']} "
        f"(full mask: {final_local.size} bytes as uint8, {full_packed} packed + zlib).",
        f"Upload: {array.nbytes / 1e6:.1f} MB raw int16 → {upload_bytes / 1e6:.2f} MB on the wire in {upload_s:.2f} s "
        f"(compress + send + server decode/validate); the same volume again: {reuse_s:.2f} s (no upload).",
        f"Load: 8 clients × {args.load_clicks} clicks on 8 different 128×128×64 crops: {total} clicks in "
        f"{load_s:.1f} s = {total / load_s:.1f} requests/s.",
    ]
    (RESULTS / "remote_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
