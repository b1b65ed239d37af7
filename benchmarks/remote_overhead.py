"""Remote server overhead on loopback, protocol 2 vs protocol 3 in one run (not a test).

A ``samvolseg serve`` subprocess on 127.0.0.1 serves the model (``default``: the bundled model; ``full``: the
full-size SAM-Med3D ``vit_b_ori`` with random weights, saved to a temporary checkpoint) to this process; where the
machine has two CPUs or more, the server and this process (the client) are pinned to different CPUs
(``os.sched_setaffinity``), so neither's work shows up in the other's time. Both get the same volume (the CT
phantom at 512×512×134, int16 HU) and, per organ (``spleen``: typical; ``liver``: the large-organ case, 3.7 M
voxels), the same clicks (deepest point of the organ, then of the largest error, simulated once with a local
``InteractiveSession`` of the first model). Each protocol runs the click sequence in a fresh remote session twice
(embeddings warm, then reset and timed), in rounds that alternate the protocols' order. Reported per model, organ
and protocol:

* per-click latency p50/p95: local (this process, same clicks) and remote;
* the protocol's own overhead per click: the client's round trip minus the server's time in the step (HTTP,
  JSON, mask encoding and decoding, the client's mirror); the targets of issue 23: ≤ 15 ms p50 on the large
  organ, and replies ≤ 20 kB;
* bytes per click reply on the wire (HTTP body) and, for protocol 3, which delta form and codec the replies used.

And with the first model: upload bytes and seconds for the volume, a second client's set_volume of the same volume
(no upload), and requests/s with 8 concurrent clients × 20 clicks on 8 different 128×128×64 crops (protocol 3).

Writes ``benchmarks/results/remote_overhead.json`` and ``.md`` (with the command line, the CPUs used and the load
average before and after). Run (on a shared machine, pause other heavy jobs for the minutes it takes)::

    python benchmarks/remote_overhead.py --models default --organs spleen,liver --threads 1
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
from SAMVolSegmentLib.remote.protocol import MASK_CODECS, MASK_CODECS_HEADER, UPDATE_MEDIA_TYPE, decode_frame
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


def timed_pass(session, clicks, updates=None):
    """Per-click seconds of ``clicks`` on ``session``; the returned updates are appended to ``updates`` if given."""
    times = []
    for point, positive in clicks:
        start = time.perf_counter()
        update = session.add_click(point, positive)
        times.append(time.perf_counter() - start)
        if updates is not None:
            updates.append(update)
    return times


def codec_costs(shape, updates, codec, repeats=3):
    """In-process CPU cost per click of each protocol's mask path, no HTTP, the shortest of ``repeats`` (the
    machine's other load inflates it less than the round trips, which wait on two processes): protocol 2 encodes
    the box (foreground, packed bits, base64 JSON) and decodes it into the mirror; protocol 3 compares with the
    server's mirror, encodes the delta in a frame, decodes it into the client's mirror and copies the step's box
    (what ``add_click`` returns). Milliseconds per click: {protocol: {"p50", "max"}}."""
    from SAMVolSegmentLib.remote.protocol import (
        apply_delta,
        decode_delta,
        decode_update,
        encode_delta,
        encode_frame,
        encode_update,
        mask_delta,
    )

    def v2(update, mirrors):
        server, client = mirrors
        data = json.loads(json.dumps({"update": encode_update(update, codec)}))
        decode_update(data["update"], shape).apply_to(client)

    def v3(update, mirrors):
        server, client, bound = mirrors
        change, _ = mask_delta(server, update, bound)
        meta, body = ({"form": "none"}, b"") if change is None else encode_delta(
            change.xor, change.new, codec, [lo for lo, _ in change.region])
        header, payload = decode_frame(encode_frame({"update": {"bbox": update.bbox_kji, **meta}}, body))
        box = client[update.slices]
        apply_delta(box, *decode_delta(header["update"], payload, update.mask.shape))
        box.copy()

    costs = {2: [], 3: []}
    for protocol, step in ((2, v2), (3, v3)):
        mirror = np.zeros(shape, np.uint8)
        bound = None
        for update in updates:
            times = []
            for _ in range(repeats):  # on copies of the mirrors as they were before this click (not timed)
                mirrors = (mirror.copy(), mirror.copy()) + ((bound,) if protocol == 3 else ())
                start = time.perf_counter()
                step(update, mirrors)
                times.append(time.perf_counter() - start)
            costs[protocol].append(min(times))
            _, bound = mask_delta(mirror, update, bound)  # the mirrors as of after this click
    return {str(p): {"p50": 1e3 * statistics.median(v), "max": 1e3 * max(v)} for p, v in costs.items()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str, threads: int, token: str, cpus=None):
    """A ``samvolseg serve`` subprocess (pinned to ``cpus`` when given); (process, URL)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SAMVOLSEG_SERVER_TOKEN": token}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen([sys.executable, "-m", "SAMVolSegmentLib.cli.main", "serve", "--model", model, "--port",
                                str(port), "--log-level", "warning", "--threads", str(threads)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=pin)
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


#: Parts of the overhead the client and the server report per step (seconds; protocol 3's server parts only).
PARTS = ("server_delta_s", "server_encode_s", "client_decode_s")


def remote_pass(url, token, image, clicks, variant):
    """Warm pass + timed pass of ``clicks`` in a new session speaking ``variant`` (protocol, mask codec); per-click
    round trips, server step times, reply bytes, protocol 3's delta forms, the final mask, the overhead's parts."""
    protocol, codec = variant
    sizes, forms = [], []

    def seen(response, *args, **kwargs):
        sizes.append(len(response.content))
        if response.headers.get("content-type", "").startswith(UPDATE_MEDIA_TYPE):
            update = decode_frame(response.content)[0]["update"]
            forms.append(f"{update.get('form')} {update.get('codec', '')}".strip())

    remote = RemoteSession(url, token=token, protocol=protocol)
    assert remote.protocol == protocol
    remote._http.headers[MASK_CODECS_HEADER] = codec
    remote._http.hooks["response"].append(seen)
    remote.set_volume(image)
    remote.wait_until_ready()
    timed_pass(remote, clicks)  # warm the server's embeddings
    remote.reset()
    round_trips, server_s, reply_bytes = [], [], []
    parts = {name: [] for name in PARTS}
    forms.clear()
    for point, positive in clicks:
        sizes.clear()
        start = time.perf_counter()
        remote.add_click(point, positive)
        round_trips.append(time.perf_counter() - start)
        server_s.append(remote.last_timing["server_total_s"])
        reply_bytes.append(sum(sizes))
        for name in PARTS:
            parts[name].append(remote.last_timing.get(name, float("nan")))
    mask = remote.mask_array_kji()
    remote.close()
    return round_trips, server_s, reply_bytes, list(forms), mask, parts


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
        session = RemoteSession(url, token=token, max_busy_retries=100)  # the newest protocol
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


def pin_cpus(client_cpu: int, server_cpu: int):
    """Pin this process (the client) to one CPU and return the set for the server, or (None, why) when the machine
    cannot give them separate CPUs."""
    if not hasattr(os, "sched_setaffinity"):
        return None, "no os.sched_setaffinity on this platform: client and server share the CPUs"
    available = os.sched_getaffinity(0)
    if len(available) < 2 or client_cpu not in available or server_cpu not in available or client_cpu == server_cpu:
        return None, f"CPUs {sorted(available)}: client and server share them"
    os.sched_setaffinity(0, {client_cpu})
    return {server_cpu}, f"client pinned to CPU {client_cpu}, server to CPU {server_cpu}"


def summarise(name, model_id, organ, variant, local_times, samples, final_local):
    """One row of the results from a protocol's pooled timed passes."""
    round_trips = [v for s in samples for v in s[0]]
    server_s = [v for s in samples for v in s[1]]
    reply_bytes = [v for s in samples for v in s[2]]
    forms = [f for s in samples for f in s[3]]
    overhead = [rt - srv for rt, srv in zip(round_trips, server_s)]
    return {
        "model": "full (vit_b_ori, random weights)" if name == "full" else name, "model_id": model_id,
        "organ": organ, "protocol": variant[0], "codec": variant[1], "clicks_timed": len(round_trips),
        "local_click_ms": summary_ms(local_times), "remote_click_ms": summary_ms(round_trips),
        "server_step_ms": summary_ms(server_s),
        "remote_minus_local_ms_p50": 1e3 * (statistics.median(round_trips) - statistics.median(local_times)),
        "protocol_overhead_ms": summary_ms(overhead),
        "reply_bytes": {"median": statistics.median(reply_bytes), "max": max(reply_bytes)},
        "delta_forms": {form: forms.count(form) for form in sorted(set(forms))} if forms else None,
        "overhead_parts_ms_p50": {name[:-2]: 1e3 * float(np.nanmedian([v for s in samples for v in s[5][name]]))
                                  if any(not np.isnan(v) for s in samples for v in s[5][name]) else None
                                  for name in PARTS},
        "foreground_voxels": int(final_local.sum()),
        "remote_equals_local": all(bool(np.array_equal(s[4], final_local)) for s in samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default",
                        help="comma-separated: registry names or checkpoint paths, and 'full' for the full-size "
                             "architecture with random weights; the first also runs the upload and load tests")
    parser.add_argument("--organs", default="spleen,liver", help="comma-separated phantom organs to click")
    parser.add_argument("--protocols", default=f"2,3,3/{MASK_CODECS[-1]}",
                        help="comma-separated protocol versions to compare, each optionally with the mask codec the "
                             f"client asks for (3/lzma); without one: the client's default ({MASK_CODECS[0]})")
    parser.add_argument("--rounds", type=int, default=2,
                        help="timed passes per protocol (the protocols' order alternates between rounds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and the local engine")
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU this process (the client) is pinned to")
    parser.add_argument("--server-cpu", type=int, default=1, help="CPU the server is pinned to")
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--load-clicks", type=int, default=20, help="clicks per client of the load test; 0: skip it")
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rewrite remote_overhead.md from remote_overhead.json (no measurement)")
    args = parser.parse_args()
    if args.markdown_only:
        write_markdown(json.loads((RESULTS / "remote_overhead.json").read_text()))
        return
    command = "python benchmarks/remote_overhead.py " + shlex.join(sys.argv[1:])
    load_before = os.getloadavg()
    server_cpus, pinning = pin_cpus(args.client_cpu, args.server_cpu)
    torch.set_num_threads(args.threads)
    token = secrets.token_urlsafe(24)
    protocols = [(int(v.split("/")[0]), v.split("/")[1] if "/" in v else MASK_CODECS[0])
                 for v in args.protocols.split(",")]
    organs = [o.strip() for o in args.organs.split(",")]

    start = time.perf_counter()
    phantom = make_phantom(spacing=(360 / 512, 280 / 512, 160 / 134), seed=0)
    image = phantom.image
    labels = sitk.GetArrayFromImage(phantom.label)
    targets = {organ: labels == PHANTOM_LABELS[organ] for organ in organs}
    print(f"phantom {image.GetSize()} in {time.perf_counter() - start:.0f} s; "
          + ", ".join(f"{o} {int(t.sum())} voxels" for o, t in targets.items()), flush=True)

    clicks = {}
    rows, upload, load, costs = [], None, None, {}
    with tempfile.TemporaryDirectory() as folder:
        for n, name in enumerate(m.strip() for m in args.models.split(",")):
            model_arg = str(full_size_checkpoint(Path(folder))) if name == "full" else name
            model = load_model(model_arg)
            local = InteractiveSession(Predictor(model))
            local.set_volume(image)
            local.wait_until_ready()
            local_runs = {}
            for organ, target in targets.items():
                local.reset()
                if organ not in clicks:  # simulated once, with the first model; every model gets the same clicks
                    clicks[organ] = simulate_clicks(local, image, target, args.clicks)
                else:
                    timed_pass(local, clicks[organ])  # warm the embeddings as the simulation did
                local.reset()
                updates = []
                local_runs[organ] = (timed_pass(local, clicks[organ], updates), local.mask_array_kji())
                if n == 0:
                    costs[organ] = codec_costs(local.geometry.shape_kji, updates, MASK_CODECS[0])
                    print(f"{organ}: in-process mask path per click {costs[organ]}", flush=True)
            model_id = local.model_id
            local.close()
            del local, model

            process, url = start_server(model_arg, args.threads, token, server_cpus)
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
                for organ in organs:
                    samples = {p: [] for p in protocols}
                    for r in range(args.rounds):
                        for protocol in (protocols if r % 2 == 0 else protocols[::-1]):
                            samples[protocol].append(remote_pass(url, token, image, clicks[organ], protocol))
                    for protocol in protocols:
                        local_times, final_local = local_runs[organ]
                        rows.append(summarise(name, model_id, organ, protocol, local_times, samples[protocol],
                                              final_local))
                        print(json.dumps(rows[-1]), flush=True)
                if n == 0 and args.load_clicks > 0:
                    load = load_test(url, token, image, targets[organs[0]], args.load_clicks)
            finally:
                process.terminate()
                process.wait(30)

    load_after = os.getloadavg()
    result = {
        "command": command, "threads": args.threads, "mask_codec": MASK_CODECS[0], "pinning": pinning,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average (1 min) "
                   f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
        "python": sys.version.split()[0], "torch": torch.__version__,
        "volume_size_xyz": list(image.GetSize()), "clicks": {o: len(c) for o, c in clicks.items()},
        "rounds": args.rounds, "rows": rows, "in_process_mask_path_ms": costs, "upload": upload,
        "load_8_clients": load,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "remote_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result)


#: Issue 23's targets for the large organ: protocol overhead p50 and reply bytes (median) of protocol 3.
TARGET_ORGAN, TARGET_OVERHEAD_MS, TARGET_REPLY_BYTES = "liver", 15.0, 20_000


def write_markdown(result) -> None:
    """``remote_overhead.md`` from the results (``--markdown-only`` rewrites it from the JSON alone)."""
    rows, costs, upload, load = (result["rows"], result["in_process_mask_path_ms"], result["upload"],
                                 result["load_8_clients"])
    codec, clicks = result["mask_codec"], result["clicks"]
    md = [
        "# Remote overhead on loopback: protocol 2 vs 3",
        "",
        f"Command: `{result['command']}`. Machine: {result['machine']}; {result['pinning']}; Python "
        f"{result['python']}, torch {result['torch']}, {result['threads']} torch thread(s) on each side.",
        "",
        f"Volume {tuple(result['volume_size_xyz'])} int16 CT phantom; per organ {max(clicks.values())} simulated "
        f"clicks, timed in {result['rounds']} fresh sessions per protocol (embeddings cached; the first timed click "
        f"of each pass starts from an empty mask). Server: `samvolseg serve` subprocess on 127.0.0.1. Protocol "
        "overhead = the client's round trip minus the server's time in the step. Protocol 2: JSON reply, the changed "
        "box's foreground as packed bits + the codec, base64; protocol 3: binary frame, run lengths of the changed "
        "part of the box, as the XOR against the client's mirror or as the new content, + the codec (run bytes of "
        "at most 24 kB always go as zlib).",
        "",
        "| model | organ (voxels) | protocol (codec) | local click p50 ms | remote click p50 / p95 ms "
        "| server step p50 ms | protocol overhead p50 / p95 ms | of which server delta / encode / client decode "
        "p50 ms | reply bytes median / max | protocol 3 replies (form codec: count) | remote = local |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        forms = ", ".join(f"{k}: {v}" for k, v in (row["delta_forms"] or {}).items()) or "-"
        parts = " / ".join("-" if v is None else f"{v:.1f}" for v in row["overhead_parts_ms_p50"].values())
        md.append(
            f"| {row['model']} (`{row['model_id']}`) | {row['organ']} ({row['foreground_voxels']}) "
            f"| {row['protocol']} ({row['codec']}) | {row['local_click_ms']['p50']:.1f} "
            f"| {row['remote_click_ms']['p50']:.1f} / {row['remote_click_ms']['p95']:.1f} "
            f"| {row['server_step_ms']['p50']:.1f} "
            f"| {row['protocol_overhead_ms']['p50']:.1f} / {row['protocol_overhead_ms']['p95']:.1f} "
            f"| {parts} | {row['reply_bytes']['median']:.0f} / {row['reply_bytes']['max']} | {forms} "
            f"| {row['remote_equals_local']} |")
    md.append("")
    for organ in dict.fromkeys(r["organ"] for r in rows):
        by_protocol = {(r["protocol"], r["codec"]): r for r in rows
                       if r["organ"] == organ and r["model"] == rows[0]["model"]}
        old, new = by_protocol.get((2, codec)), by_protocol.get((3, codec))
        if old is None or new is None:
            continue
        md.append(f"{organ} ({codec}): protocol overhead p50 {old['protocol_overhead_ms']['p50']:.1f} → "
                  f"{new['protocol_overhead_ms']['p50']:.1f} ms, reply median {old['reply_bytes']['median']:.0f} "
                  f"→ {new['reply_bytes']['median']:.0f} bytes (max {old['reply_bytes']['max']} → "
                  f"{new['reply_bytes']['max']}).")
        if organ == TARGET_ORGAN:
            overhead, size = new["protocol_overhead_ms"]["p50"], new["reply_bytes"]["median"]
            md.append(f"Targets of issue 23 on the large organ (protocol 3, {codec}): reply ≤ "
                      f"{TARGET_REPLY_BYTES / 1e3:.0f} kB: {'met' if size <= TARGET_REPLY_BYTES else 'NOT met'} "
                      f"({size / 1e3:.1f} kB median, {new['reply_bytes']['max'] / 1e3:.1f} kB max); overhead ≤ "
                      f"{TARGET_OVERHEAD_MS:.0f} ms p50: {'met' if overhead <= TARGET_OVERHEAD_MS else 'NOT met'} "
                      f"({overhead:.1f} ms on this machine, whose other jobs slow every pass over the mask; see the "
                      "in-process cost below).")
    for organ, cost in costs.items():
        md.append(f"{organ}, in-process CPU cost of the mask path per click ({codec}, no HTTP, shortest of 3 on the "
                  f"client's CPU): protocol 2 {cost['2']['p50']:.1f} ms p50 (max {cost['2']['max']:.1f}), "
                  f"protocol 3 {cost['3']['p50']:.1f} ms p50 (max {cost['3']['max']:.1f}).")
    if upload is not None:
        md.append(f"Upload: {upload['raw_int16_bytes'] / 1e6:.1f} MB raw int16 → {upload['compressed_bytes'] / 1e6:.2f} "
                  f"MB on the wire in {upload['seconds']:.2f} s (compress + send + server decode/validate); the same "
                  f"volume again: {upload['same_volume_again_seconds']:.2f} s (no upload).")
    if load is not None:
        md.append(f"Load ({rows[0]['model']} model, protocol 3): 8 clients × {load['clicks'] // load['clients']} "
                  f"clicks on 8 different 128×128×64 crops: {load['clicks']} clicks in {load['seconds']:.1f} s = "
                  f"{load['requests_per_s']:.1f} requests/s.")
    (RESULTS / "remote_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
