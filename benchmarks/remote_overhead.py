"""Remote server overhead on loopback vs the local engine (not a test).

For each model (``default``: the bundled model; ``full``: the full-size SAM-Med3D ``vit_b_ori``, random
weights, saved to a temporary checkpoint the server loads), a ``samvolseg serve`` subprocess on 127.0.0.1 and
a local ``InteractiveSession`` in this process get the same volume (the CT phantom at 512×512×134, int16 HU)
and the same clicks (deepest point of the spleen, then of the largest error, simulated once locally with the
default model). Each backend runs the click sequence twice; the second pass is timed (embeddings cached: what
a user feels after the first click in a region). Reported per model:

* per-click latency p50/p95, local vs remote, and their difference;
* the protocol's own overhead per click: the client's round trip minus the server's time in the step
  (HTTP, JSON, mask encoding and decoding, the client's mirror); unlike the local-vs-remote difference this
  does not depend on two runs of the model getting the same share of a shared CPU;
* bytes per click reply on the wire (HTTP body) vs the full mask (uint8, and packed + compressed).

And with the default model: upload bytes and seconds for the volume, a second client's set_volume of the same
volume (no upload), and requests/s with 8 concurrent clients × 20 clicks on 8 different 128×128×64 crops.

Writes ``benchmarks/results/remote_overhead.json`` and ``.md`` (with the command line and the load average
before and after). Run::

    python benchmarks/remote_overhead.py --models default,full --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk
import torch
from scipy import ndimage

from SAMVolSegmentLib.engine.predictor import Predictor
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.model import build_model, load_model
from SAMVolSegmentLib.remote import RemoteSession
from SAMVolSegmentLib.remote.protocol import MASK_CODECS, encode_bits
from SAMVolSegmentLib.tools.phantom import PHANTOM_LABELS, make_phantom

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
    process = subprocess.Popen([sys.executable, "-m", "SAMVolSegmentLib.cli.main", "serve", "--model", model, "--port",
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


def summary_ms(seconds):
    return {"p50": 1e3 * statistics.median(seconds), "p95": 1e3 * percentile(seconds, 95)}


def full_size_checkpoint(folder: Path) -> Path:
    """The full-size SAM-Med3D architecture (vit_b_ori, 100.5 M parameters) with seeded random weights."""
    torch.manual_seed(0)
    model = build_model().eval()
    path = folder / "vit_b_ori_random.pth"
    torch.save({"model_state_dict": model.state_dict(), "config": model.config.to_dict()}, path)
    return path


def remote_pass(url, token, image, clicks):
    """Warm pass + timed pass of ``clicks`` on a server; per-click round trips, server step times, reply
    bytes, and the final mask."""
    sizes = []
    remote = RemoteSession(url, token=token)
    remote._http.hooks["response"].append(lambda r, *a, **k: sizes.append(len(r.content)))
    remote.set_volume(image)
    remote.wait_until_ready()
    timed_pass(remote, clicks)  # warm the server's embeddings
    remote.reset()
    round_trips, server_s, reply_bytes = [], [], []
    for point, positive in clicks:
        sizes.clear()
        start = time.perf_counter()
        remote.add_click(point, positive)
        round_trips.append(time.perf_counter() - start)
        server_s.append(remote.last_timing["server_total_s"])
        reply_bytes.append(sum(sizes))
    mask = remote.mask_array_kji()
    remote.close()
    return round_trips, server_s, reply_bytes, mask


def load_test(url, token, image, target, clicks_per_client):
    """8 clients, different volumes (crops around the spleen shifted per client), clicks near the centre."""
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
        for _ in range(clicks_per_client):
            index = [float(s / 2 + rng.uniform(-8, 8)) for s in size]
            point = np.array(crops[n].TransformContinuousIndexToPhysicalPoint(index)) * [-1, -1, 1]
            session.add_click(point, bool(rng.random() < 0.75))
        session.close()
        return clicks_per_client

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(client, range(8)))
    seconds = time.perf_counter() - start
    return {"clients": 8, "clicks": total, "seconds": seconds, "requests_per_s": total / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default,full",
                        help="comma-separated: registry names or checkpoint paths, and 'full' for the full-size "
                             "architecture with random weights; the first also runs the upload and load tests")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--load-clicks", type=int, default=20)
    args = parser.parse_args()
    command = "python benchmarks/remote_overhead.py " + shlex.join(sys.argv[1:])
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    token = secrets.token_urlsafe(24)

    start = time.perf_counter()
    phantom = make_phantom(spacing=(360 / 512, 280 / 512, 160 / 134), seed=0)
    image = phantom.image
    target = sitk.GetArrayFromImage(phantom.label) == PHANTOM_LABELS["spleen"]
    print(f"phantom {image.GetSize()} in {time.perf_counter() - start:.0f} s; spleen {int(target.sum())} voxels")

    clicks = None
    per_model, upload, load = [], None, None
    with tempfile.TemporaryDirectory() as folder:
        for n, name in enumerate(m.strip() for m in args.models.split(",")):
            model_arg = str(full_size_checkpoint(Path(folder))) if name == "full" else name
            model = load_model(model_arg)
            local = InteractiveSession(Predictor(model))
            local.set_volume(image)
            local.wait_until_ready()
            if clicks is None:  # simulated once, with the first model; every model gets the same clicks
                clicks = simulate_clicks(local, image, target, args.clicks)
            else:
                timed_pass(local, clicks)  # warm the embeddings as the simulation did for the first model
            local.reset()
            local_times = timed_pass(local, clicks)
            final_local = local.mask_array_kji()
            model_id = local.model_id
            local.close()
            del local, model

            process, url = start_server(model_arg, args.threads, token)
            try:
                if n == 0:
                    second = RemoteSession(url, token=token)
                    started = time.perf_counter()
                    second.set_volume(image)
                    upload_s = time.perf_counter() - started
                    upload_bytes = second.last_upload_bytes
                    second.close()
                    third = RemoteSession(url, token=token)
                    started = time.perf_counter()
                    third.set_volume(image)
                    reuse_s = time.perf_counter() - started
                    assert third.last_upload_bytes == 0
                    third.close()
                    upload = {"raw_int16_bytes": int(sitk.GetArrayViewFromImage(image).nbytes),
                              "compressed_bytes": upload_bytes, "seconds": upload_s,
                              "same_volume_again_seconds": reuse_s}
                round_trips, server_s, reply_bytes, final_remote = remote_pass(url, token, image, clicks)
                if n == 0:
                    load = load_test(url, token, image, target, args.load_clicks)
            finally:
                process.terminate()
                process.wait(30)
            overhead = [rt - srv for rt, srv in zip(round_trips, server_s)]
            per_model.append({
                "model": "full (vit_b_ori, random weights)" if name == "full" else name, "model_id": model_id,
                "local_click_ms": summary_ms(local_times), "remote_click_ms": summary_ms(round_trips),
                "server_step_ms": summary_ms(server_s),
                "remote_minus_local_ms_p50": 1e3 * (statistics.median(round_trips) - statistics.median(local_times)),
                "protocol_overhead_ms": summary_ms(overhead),
                "reply_bytes": {"median": statistics.median(reply_bytes), "max": max(reply_bytes)},
                "full_mask_bytes": {"uint8": int(final_local.size),
                                    "packed_bz2": len(encode_bits(final_local, MASK_CODECS[0]))},
                "foreground_voxels": int(final_local.sum()),
                "remote_equals_local": bool(np.array_equal(final_remote, final_local)),
            })
            print(json.dumps(per_model[-1], indent=1))

    load_after = os.getloadavg()
    result = {
        "command": command, "threads": args.threads, "mask_codec": MASK_CODECS[0],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other jobs; "
                   f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after",
        "python": sys.version.split()[0], "torch": torch.__version__,
        "volume_size_xyz": list(image.GetSize()), "clicks": len(clicks), "models": per_model,
        "upload": upload, "load_8_clients": load,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "remote_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Remote overhead on loopback",
        "",
        f"Command: `{command}`. Machine: {result['machine']}; Python {result['python']}, torch {result['torch']}. "
        "Client and server share the CPU.",
        "",
        f"Volume {image.GetSize()} int16 CT phantom, {len(clicks)} simulated clicks on the spleen (second pass, "
        f"embeddings cached). Server: `samvolseg serve` subprocess on 127.0.0.1; mask codec {MASK_CODECS[0]}. "
        "Protocol overhead = the client's round trip minus the server's time in the step.",
        "",
        "| model | local click p50 / p95 ms | remote click p50 / p95 ms | remote − local p50 ms "
        "| protocol overhead p50 / p95 ms | reply bytes median / max | remote = local |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in per_model:
        md.append(
            f"| {row['model']} (`{row['model_id']}`) "
            f"| {row['local_click_ms']['p50']:.1f} / {row['local_click_ms']['p95']:.1f} "
            f"| {row['remote_click_ms']['p50']:.1f} / {row['remote_click_ms']['p95']:.1f} "
            f"| {row['remote_minus_local_ms_p50']:.1f} "
            f"| {row['protocol_overhead_ms']['p50']:.1f} / {row['protocol_overhead_ms']['p95']:.1f} "
            f"| {row['reply_bytes']['median']:.0f} / {row['reply_bytes']['max']} "
            f"| {row['remote_equals_local']} |")
    first = per_model[0]
    md += [
        "",
        f"Full mask of the {first['model']} model's spleen ({first['foreground_voxels']} voxels): "
        f"{first['full_mask_bytes']['uint8']} bytes as uint8, {first['full_mask_bytes']['packed_bz2']} packed + "
        f"{MASK_CODECS[0]}.",
        f"Upload: {upload['raw_int16_bytes'] / 1e6:.1f} MB raw int16 → {upload['compressed_bytes'] / 1e6:.2f} MB on "
        f"the wire in {upload['seconds']:.2f} s (compress + send + server decode/validate); the same volume "
        f"again: {upload['same_volume_again_seconds']:.2f} s (no upload).",
        f"Load ({first['model']} model): 8 clients × {args.load_clicks} clicks on 8 different 128×128×64 crops: "
        f"{load['clicks']} clicks in {load['seconds']:.1f} s = {load['requests_per_s']:.1f} requests/s.",
    ]
    (RESULTS / "remote_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
