"""Click latency of the interactive engine vs re-encoding every click (not a test).

Full ``vit_b_ori`` model with random weights on a synthetic CT-sized volume (512×512×134, 0.78×0.78×2.5 mm):

* encoder time, fast (closed-form padded windows + SDPA) vs the plain reference attention path;
* per-click latency (prompt encoder + decoder + upsample + paste-back, via ``InteractiveSession``) over N
  clicks inside one ROI, p50/p95, with the embedding cached (our design);
* the same clicks with the cache disabled, so every click re-encodes (what FastSAM3D_slicer does);
* peak RSS, and RSS a 512×512×600 session adds beyond the model.

Writes ``benchmarks/results/click_latency.json`` and ``click_latency.md``. Run::

    python benchmarks/click_latency.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.model import ModelConfig, build_model

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_ct(size_xyz=(512, 512, 134), spacing=(0.78, 0.78, 2.5), seed: int = 0) -> sitk.Image:
    """A CT-like volume in HU: air, a body ellipse of soft tissue, and a few brighter blobs (LPS, axial)."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    k, j, i = np.ogrid[:nz, :ny, :nx]
    body = ((i - nx / 2) / (nx * 0.42)) ** 2 + ((j - ny / 2) / (ny * 0.33)) ** 2 <= 1
    array = np.where(np.broadcast_to(body, (nz, ny, nx)), 40.0, -1000.0).astype(np.float32)
    for _ in range(6):
        c = rng.uniform([nz * 0.2, ny * 0.35, nx * 0.3], [nz * 0.8, ny * 0.65, nx * 0.7])
        r = rng.uniform(8, 30)
        blob = ((k - c[0]) * spacing[2]) ** 2 + ((j - c[1]) * spacing[1]) ** 2 + ((i - c[2]) * spacing[0]) ** 2
        array[blob <= r**2] = rng.uniform(80, 300)
    array += rng.normal(0, 12, array.shape).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-200.0, -180.0, -160.0))
    return image


def click_points_ras(image: sitk.Image, n: int, seed: int = 1) -> list:
    """N clicks within ±30 mm of the volume centre (inside one ROI's interior), alternating sign."""
    rng = np.random.default_rng(seed)
    centre_idx = [(s - 1) / 2 for s in image.GetSize()]
    centre_lps = np.array(image.TransformContinuousIndexToPhysicalPoint(centre_idx))
    centre_ras = centre_lps * np.array([-1, -1, 1])
    return [(centre_ras + rng.uniform(-30, 30, 3), i % 3 != 1) for i in range(n)]


def time_clicks(session: InteractiveSession, clicks) -> dict:
    latencies, stages = [], []
    for point, positive in clicks:
        start = time.perf_counter()
        session.add_click(point, positive)
        latencies.append(time.perf_counter() - start)
        stages.append(dict(session.last_timing))
    return {"latencies_s": latencies, "stages_s": stages}


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def encoder_time(model: torch.nn.Module, runs: int) -> dict:
    x = torch.randn(1, 1, 128, 128, 128)
    times = []
    with torch.inference_mode():
        first = time.perf_counter()
        model.encode_image(x)
        first = time.perf_counter() - first
        for _ in range(runs):
            start = time.perf_counter()
            model.encode_image(x)
            times.append(time.perf_counter() - start)
    return {"first_call_s": first, "runs_s": times, "mean_s": statistics.mean(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--reencode-clicks", type=int, default=20, help="clicks timed with re-encoding")
    parser.add_argument("--encoder-runs", type=int, default=2)
    parser.add_argument("--skip-reference", action="store_true", help="skip the slow plain-attention encoder")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 512×512×600 memory check")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rss_start = rss_mb()
    config = ModelConfig.vit_b_ori()
    model = build_model(config).eval()
    rss_model = rss_mb()
    results: dict = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": args.threads,
        },
        "model": "vit_b_ori, random weights (100.5 M parameters)",
        "rss_mb": {"start": rss_start, "after_model": rss_model},
    }

    results["encoder_fast"] = encoder_time(model, args.encoder_runs)
    print(f"encoder (fast path): {results['encoder_fast']['mean_s']:.2f} s", flush=True)
    if not args.skip_reference:
        reference = build_model(config, attention_impl="reference").eval()
        reference.load_state_dict(model.state_dict())
        results["encoder_reference"] = encoder_time(reference, 1)
        print(f"encoder (reference path): {results['encoder_reference']['mean_s']:.2f} s", flush=True)
        del reference

    image = synthetic_ct()
    clicks = click_points_ras(image, args.clicks)
    # Random weights predict foreground up to the ROI faces, which would open neighbouring ROIs on every
    # click; the benchmark times the per-click path itself, so ROI extension is off here.
    session = InteractiveSession(model, auto_extend=False)
    start = time.perf_counter()
    session.set_volume(image)
    session.wait_until_ready()
    results["set_volume_s"] = time.perf_counter() - start
    cached = time_clicks(session, clicks)
    later = cached["latencies_s"][1:]  # the first click includes the one encoder run
    results["cached"] = {
        "first_click_s": cached["latencies_s"][0],
        "p50_s": percentile(later, 50),
        "p95_s": percentile(later, 95),
        "encoder_calls": session.predictor.encoder_calls,
        "latencies_s": cached["latencies_s"],
        "p50_stage_s": {k: percentile([st[k] for st in cached["stages_s"][1:]], 50)
                        for k in ("decode_s", "paste_s")},
    }
    print(f"cached clicks: p50 {results['cached']['p50_s'] * 1000:.1f} ms, "
          f"p95 {results['cached']['p95_s'] * 1000:.1f} ms, encoder calls {session.predictor.encoder_calls}",
          flush=True)
    session.close()

    session = InteractiveSession(model, cache_bytes=0, auto_extend=False)  # no cache: every click re-encodes
    session.set_volume(image)
    reencode = time_clicks(session, clicks[: args.reencode_clicks])
    results["reencode"] = {
        "p50_s": percentile(reencode["latencies_s"], 50),
        "p95_s": percentile(reencode["latencies_s"], 95),
        "encoder_calls": session.predictor.encoder_calls,
        "latencies_s": reencode["latencies_s"],
    }
    session.close()
    results["speedup_p50"] = results["reencode"]["p50_s"] / results["cached"]["p50_s"]
    print(f"re-encoding clicks: p50 {results['reencode']['p50_s']:.2f} s -> speed-up ×{results['speedup_p50']:.0f}",
          flush=True)

    if not args.skip_memory:
        big = synthetic_ct((512, 512, 600), (0.78, 0.78, 0.8), seed=2)
        rss_before = rss_mb()
        session = InteractiveSession(model, auto_extend=False)
        session.set_volume(big)
        for point, positive in click_points_ras(big, 3):
            session.add_click(point, positive)
        results["memory_512x512x600"] = {
            "rss_before_mb": rss_before,
            "rss_after_3_clicks_mb": rss_mb(),
            "added_mb": rss_mb() - rss_before,
            "image_mb": big.GetNumberOfPixels() * 4 / 2**20,
        }
        session.close()
        del big
    results["rss_mb"]["peak"] = peak_rss_mb()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "click_latency.json").write_text(json.dumps(results, indent=2))
    (args.out / "click_latency.md").write_text(markdown_table(results))
    print(markdown_table(results))
    return 0


def markdown_table(r: dict) -> str:
    rows = [
        ("Encoder, fast path (s)", f"{r['encoder_fast']['mean_s']:.2f}", "≤ 2"),
        (
            "Encoder, reference path (s)",
            f"{r['encoder_reference']['mean_s']:.2f}" if "encoder_reference" in r else "skipped",
            "12.3 measured for the reference code",
        ),
        ("set_volume (resample to 1.5 mm) (s)", f"{r['set_volume_s']:.2f}", ""),
        ("First click incl. encoding (s)", f"{r['cached']['first_click_s']:.2f}", ""),
        ("Later clicks p50 (ms)", f"{r['cached']['p50_s'] * 1000:.1f}", "≤ 50"),
        ("Later clicks p95 (ms)", f"{r['cached']['p95_s'] * 1000:.1f}", ""),
        ("  of which prompt encoder + decoder, p50 (ms)", f"{r['cached']['p50_stage_s']['decode_s'] * 1000:.1f}", ""),
        ("  of which logits → original grid + threshold, p50 (ms)",
         f"{r['cached']['p50_stage_s']['paste_s'] * 1000:.1f}", ""),
        ("Encoder runs for all clicks", str(r["cached"]["encoder_calls"]), "1"),
        ("Re-encoding every click p50 (s)", f"{r['reencode']['p50_s']:.2f}", ""),
        ("Speed-up of cached clicks (p50 ratio)", f"×{r['speedup_p50']:.0f}", "≥ ×100"),
        ("Peak RSS (MB)", f"{r['rss_mb']['peak']:.0f}", ""),
    ]
    if "memory_512x512x600" in r:
        rows.append(("RSS added by a 512×512×600 session (MB)", f"{r['memory_512x512x600']['added_mb']:.0f}", "≤ 2048"))
    m = r["machine"]
    head = (f"Machine: {m['processor']}, {m['threads']} threads, Python {m['python']}, torch {m['torch']}.\n"
            f"Model: {r['model']}.\n\n| measure | value | target |\n|---|---|---|\n")
    return head + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
