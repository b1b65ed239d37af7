"""Decode time at click 10 vs click 100 on one mask (not a test): does a click cost more the more came before it?

One ROI of the default model, clicks at random positions (60 % positive). For each repetition and each of the
two click counts N, the mask's first N − 1 clicks are decoded (so the model holds their click summary, as in a
session), then click N is timed — once as the engine runs it (the click summary extended by the new click,
``ClickNet2._click_states``) and once with the summary dropped (every click's heatmap and intensity distance
recomputed: the engine before issue 23's change). Interleaved, medians over ``--repeats``. Writes
``benchmarks/results/click_count_cost.json`` and ``.md``::

    python benchmarks/click_count_cost.py [--threads 2,2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
COUNTS = (10, 100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", default="2,2", help="encoder,decoder threads (as --threads elsewhere)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from SAMVolSegmentLib import load_model
    from SAMVolSegmentLib.engine.predictor import Predictor

    model = load_model(args.model)
    predictor = Predictor(model, threads=args.threads)
    rng = np.random.default_rng(0)
    size = predictor.image_size
    embedding = predictor.embed(rng.normal(0, 1, (size,) * 3).astype(np.float32), "benchmark")
    points = rng.uniform(10, size - 10, (max(COUNTS), 3))
    positive = rng.random(max(COUNTS)) < 0.6
    previous = predictor.predict(embedding, points[:50], positive[:50]).low_res_logits
    times = {mode: {n: [] for n in COUNTS} for mode in ("incremental", "from_scratch")}
    for _ in range(args.repeats):
        for mode in times:
            for n in COUNTS:
                model._click_cache = {}
                predictor.predict(embedding, points[:n - 1], positive[:n - 1], previous)
                if mode == "from_scratch":
                    model._click_cache = {}
                start = time.perf_counter()
                predictor.predict(embedding, points[:n], positive[:n], previous)
                times[mode][n].append(time.perf_counter() - start)
    rows = []
    for mode, by_count in times.items():
        medians = {n: float(np.median(v)) for n, v in by_count.items()}
        rows.append({"mode": mode, **{f"decode_click_{n}_median_s": medians[n] for n in COUNTS},
                     "ratio": medians[COUNTS[1]] / medians[COUNTS[0]]})
    result = {"machine": f"{platform.machine()}, {platform.processor() or '?'}, {__import__('os').cpu_count()} CPUs",
              "torch": torch.__version__, "model": args.model, "threads": args.threads, "repeats": args.repeats,
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "click_count_cost.json").write_text(json.dumps(result, indent=2))
    lines = [f"Decode time of click 10 vs click 100 on one mask; model `{args.model}`, threads {args.threads}, "
             f"{args.repeats} interleaved repeats, medians; {result['machine']}, torch {result['torch']}.", "",
             "| mode | click 10 ms | click 100 ms | ratio |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['decode_click_10_median_s'] * 1000:.1f} | "
                     f"{row['decode_click_100_median_s'] * 1000:.1f} | {row['ratio']:.2f} |")
    (args.out / "click_count_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
