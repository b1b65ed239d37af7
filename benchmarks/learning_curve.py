"""Learning curve of a training run (not a test): training Dice after each simulated click, per window of steps.

Reads the run's ``log.jsonl`` (one line per step: time, loss, learning rate, sample kinds, Dice after each
click on the training ROI's low-res grid) and writes ``<out>/learning_curve.md`` (a table) and
``learning_curve.png``. Run::

    python benchmarks/learning_curve.py runs/default_v2/log.jsonl --out benchmarks/results --window 250
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def windows(rows: list, size: int) -> list:
    out = []
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        dice = np.array([r["dice_per_click"] for r in chunk], dtype=np.float64)
        out.append({"steps": (chunk[0]["step"], chunk[-1]["step"]),
                    "minutes": (round(chunk[0]["t"] / 60, 1), round(chunk[-1]["t"] / 60, 1)),
                    "loss": float(np.mean([r["loss"] for r in chunk])), "lr": float(chunk[-1]["lr"]),
                    "dice_per_click": dice.mean(axis=0).round(3).tolist()})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="the run's log.jsonl")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--window", type=int, default=250, help="steps per row")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    table = windows(rows, args.window)
    clicks = len(table[0]["dice_per_click"])
    lines = ["| steps | minutes | loss | lr | " + " | ".join(f"Dice after click {k}" for k in range(1, clicks + 1)) + " |",
             "|---" * (4 + clicks) + "|"]
    for w in table:
        lines.append(f"| {w['steps'][0]}–{w['steps'][1]} | {w['minutes'][0]}–{w['minutes'][1]} | {w['loss']:.3f} | "
                     f"{w['lr']:.1e} | " + " | ".join(f"{d:.3f}" for d in w["dice_per_click"]) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning_curve.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    minutes = [np.mean(w["minutes"]) for w in table]
    for k in range(clicks):
        ax.plot(minutes, [w["dice_per_click"][k] for w in table], label=f"after click {k + 1}")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("training Dice (low-res grid)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "learning_curve.png", dpi=100)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
