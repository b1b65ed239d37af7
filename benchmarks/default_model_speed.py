"""Speed of the bundled models on the CPU (not a test): encoder per 128³ ROI and click latency.

For each model (default: the bundled ``default`` and the previous ``clicknet-v1``, run one after the other in the
same process so the two are compared under the same machine load):

* encoder time per 128³ ROI (``Predictor.embed`` without the cache), mean of N runs after one warm-up;
* click latency through ``InteractiveSession.add_click`` on a synthetic CT-sized volume (512×512×134,
  0.78×0.78×2.5 mm), clicks inside one ROI: p50/p95, split into decode (click features + decoder) and
  paste-back (logits → original grid → threshold);
* weights file size.

Writes ``benchmarks/results/default_model_speed.json`` and ``.md``. Run::

    python benchmarks/default_model_speed.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from click_latency import RESULTS, click_points_ras, percentile, synthetic_ct, time_clicks

from SAMVolSegmentLib.engine.predictor import Predictor
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.model import load_model
from SAMVolSegmentLib.model.registry import resolve_model_path


def measure(name: str, clicks: int, encoder_runs: int) -> dict:
    path = resolve_model_path(name)
    model = load_model(path)
    predictor = Predictor(model, cache_bytes=0)
    roi = np.random.default_rng(0).standard_normal((128, 128, 128)).astype(np.float32)
    predictor.embed(roi)  # warm-up (allocations, oneDNN kernels)
    encode = []
    for _ in range(encoder_runs):
        start = time.perf_counter()
        predictor.embed(roi)
        encode.append(time.perf_counter() - start)
    image = synthetic_ct()
    session = InteractiveSession(model, auto_extend=False)
    session.set_volume(image)
    session.wait_until_ready()
    timed = time_clicks(session, click_points_ras(image, clicks))
    session.close()
    later = timed["latencies_s"][1:]  # the first click includes the encoder
    stages = timed["stages_s"][1:]
    return {
        "model_id": model.model_id,
        "weights_bytes": path.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "encoder_mean_s": float(np.mean(encode)),
        "encoder_runs_s": encode,
        "first_click_s": timed["latencies_s"][0],
        "click_p50_s": percentile(later, 50),
        "click_p95_s": percentile(later, 95),
        "decode_p50_s": percentile([s["decode_s"] for s in stages], 50),
        "paste_p50_s": percentile([s["paste_s"] for s in stages], 50),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,clicknet-v1", help="comma-separated registry names or paths")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=21)
    parser.add_argument("--encoder-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "threads": args.threads},
        "models": {},
    }
    for name in args.models.split(","):
        results["models"][name] = measure(name, args.clicks, args.encoder_runs)
        r = results["models"][name]
        print(f"{name}: encoder {r['encoder_mean_s']:.2f} s, click p50 {r['click_p50_s'] * 1000:.1f} ms "
              f"(decode {r['decode_p50_s'] * 1000:.1f}, paste {r['paste_p50_s'] * 1000:.1f})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default_model_speed.json").write_text(json.dumps(results, indent=2))
    (args.out / "default_model_speed.md").write_text(markdown_table(results))
    print(markdown_table(results))
    return 0


def markdown_table(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['processor']}, {m['threads']} threads, Python {m['python']}, torch {m['torch']}.", "",
             "| model | weights (MB) | encoder per 128³ ROI (s) | click p50 (ms) | p95 (ms) | decode p50 (ms) | "
             "paste-back p50 (ms) |", "|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        lines.append(f"| {name} (`{r['model_id']}`) | {r['weights_bytes'] / 1e6:.1f} | {r['encoder_mean_s']:.2f} | "
                     f"{r['click_p50_s'] * 1000:.1f} | {r['click_p95_s'] * 1000:.1f} | "
                     f"{r['decode_p50_s'] * 1000:.1f} | {r['paste_p50_s'] * 1000:.1f} |")
    lines.append("")
    lines.append("Targets (issue 8): encoder ≤ 1 s per 128³ ROI, click ≤ 50 ms p50, weights ≤ 20 MB.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
