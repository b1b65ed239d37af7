"""Accuracy of bundled models on the report set (not a test): the protocol of docs/MODEL_CARD.md in one command.

The 8 expert-labelled development cases of ``../shared/data`` (9 targets: BraTS as whole tumour, the
hippocampus as its two labels), ``samvolseg evaluate``'s click protocol with 10 clicks, the region-growing
baseline given the same clicks. For every model: per-target Dice after 1..10 clicks, means over targets, the
model-minus-baseline margin, and the thin structures (spinal cord, hippocampus) on their own.

Writes ``benchmarks/results/report_set.json`` and ``report_set.md``. Run::

    python benchmarks/report_set.py --models default,clicknet-v1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from SAMVolSegmentLib.tools.evaluation import discover_cases, evaluate_cases, expand_label_values
from SAMVolSegmentLib.tools.training import REPORT_CASES

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Cases scored per label value (the rest as ``label > 0``: BraTS sub-regions are fragmented, see its README).
EACH_LABEL = ("mr_msd_hippocampus_003",)
THIN = ("mr_sct_t2_spinalcord", "mr_msd_hippocampus_003")


def report_targets(data: Path):
    whole = discover_cases(data, [c for c in REPORT_CASES if c not in EACH_LABEL])
    return whole + expand_label_values(discover_cases(data, list(EACH_LABEL)))


def per_target(rows) -> Dict[str, Dict[str, List[float]]]:
    """{target: {method: [Dice after click 1..N]}} (target = case, or case:label for per-label cases)."""
    out: Dict[str, Dict[str, List[float]]] = {}
    for row in rows:
        name = row.case if row.label == "all" or row.case.endswith(f":{row.label}") else f"{row.case}:{row.label}"
        out.setdefault(name, {}).setdefault(row.method, []).append(row.dice)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default", help="comma-separated registry names or checkpoint paths")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--coarse-context", action="store_true",
                        help="sessions with coarse_context (a 3 mm context ROI on the first click; issue 22)")
    args = parser.parse_args(argv)
    session_options = {"coarse_context": True} if args.coarse_context else {}
    torch.set_num_threads(args.threads)
    targets = report_targets(args.data)
    report = {"machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                          "platform": platform.platform(), "threads": args.threads},
              "targets": len(targets), "clicks": args.clicks, "session_options": session_options, "models": {}}
    # The baseline also with its own clicks (each next click at its own largest error), so that the comparison
    # on the model's clicks can be read against what region growing does when it drives the clicks itself.
    own = per_target(evaluate_cases(targets, None, args.clicks).rows)
    report["baseline_own_clicks"] = {"per_target": {t: v["baseline"] for t, v in own.items()},
                                     "mean": np.mean([v["baseline"] for v in own.values()], axis=0).tolist()}
    for name in args.models.split(","):
        start = time.perf_counter()
        result = evaluate_cases(targets, name, args.clicks, model_name=name, session_options=session_options)
        table = per_target(result.rows)
        methods = ("model", "baseline")
        means = {m: np.mean([table[t][m] for t in table], axis=0).tolist() for m in methods}
        thin = {m: np.mean([table[t][m] for t in table if t.split(":")[0] in THIN], axis=0).tolist() for m in methods}
        summary = result.summary()["methods"]["model"]
        report["models"][name] = {"per_target": table, "mean": means, "thin_mean": thin,
                                  "click_latency_s": summary["latency_later_clicks_s"],
                                  "minutes": (time.perf_counter() - start) / 60}
        print(f"{name}: Dice@1/3/5/10 model " + " / ".join(f"{means['model'][k - 1]:.3f}" for k in (1, 3, 5, 10))
              + " baseline " + " / ".join(f"{means['baseline'][k - 1]:.3f}" for k in (1, 3, 5, 10)), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report_set.json").write_text(json.dumps(report, indent=2))
    (args.out / "report_set.md").write_text(markdown(report))
    plot(report, args.out / "report_set.png")
    print(markdown(report))
    return 0


def plot(report: dict, path: Path) -> None:
    """Mean Dice over the targets after each click: every model and the baseline (on that model's clicks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in report["models"].items():
        clicks = np.arange(1, len(r["mean"]["model"]) + 1)
        line, = ax.plot(clicks, r["mean"]["model"], "-o", label=f"{name}")
        ax.plot(clicks, r["mean"]["baseline"], "--", color=line.get_color(), alpha=0.6,
                label=f"region growing on {name}'s clicks")
    if "baseline_own_clicks" in report:
        own = report["baseline_own_clicks"]["mean"]
        ax.plot(np.arange(1, len(own) + 1), own, ":", color="gray", label="region growing, its own clicks")
    ax.set_xlabel("clicks")
    ax.set_ylabel(f"mean Dice over {report['targets']} targets")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict) -> str:
    lines = [f"Report set: {report['targets']} targets, {report['clicks']} clicks, baseline on the same clicks; "
             f"{report['machine']['threads']} threads, torch {report['machine']['torch']}.", ""]
    own = report.get("baseline_own_clicks")
    if own:
        lines += ["Region growing with its own clicks (mean over targets after each click): " + ", ".join(
            f"{k + 1}: {v:.3f}" for k, v in enumerate(own["mean"])), ""]
    for name, r in report["models"].items():
        clicks = len(r["mean"]["model"])
        lines += [f"### `{name}`", "", "| target | " + " | ".join(f"@{k}" for k in (1, 2, 3, 5, 10) if k <= clicks)
                  + " | baseline " + " | ".join(f"@{k}" for k in (1, 2, 3, 5, 10) if k <= clicks) + " |",
                  "|---" * (1 + 2 * len([k for k in (1, 2, 3, 5, 10) if k <= clicks])) + "|"]
        rows = list(r["per_target"].items()) + [("**mean**", {"model": r["mean"]["model"],
                                                               "baseline": r["mean"]["baseline"]}),
                                                 ("thin (spinal cord, hippocampus)", {"model": r["thin_mean"]["model"],
                                                                                      "baseline": r["thin_mean"]["baseline"]})]
        for target, values in rows:
            cells = [f"{values['model'][k - 1]:.3f}" for k in (1, 2, 3, 5, 10) if k <= clicks]
            cells += [f"{values['baseline'][k - 1]:.3f}" for k in (1, 2, 3, 5, 10) if k <= clicks]
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
        lines += ["", "Mean over targets after each click (model / baseline): " + ", ".join(
            f"{k + 1}: {m:.3f}/{b:.3f}" for k, (m, b) in enumerate(zip(r["mean"]["model"], r["mean"]["baseline"]))),
            f"Click latency after the first click: p50 {r['click_latency_s']['p50'] * 1000:.0f} ms "
            f"(evaluation run, {r['minutes']:.1f} min).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
