"""Accuracy of bundled models on the report set (not a test): the protocol of docs/MODEL_CARD.md in one command.

The 8 expert-labelled development cases of ``../shared/data`` (9 targets: BraTS as whole tumour, the
hippocampus as its two labels), ``samvolseg evaluate``'s click protocol with 10 clicks, the region-growing
baseline given the same clicks. For every model: per-target Dice after 1..10 clicks, means over targets, the
model-minus-baseline margin, and the thin structures (spinal cord, hippocampus) on their own.

Writes ``benchmarks/results/report_set.json`` and ``report_set.md``. Run::

    python benchmarks/report_set.py --models default,clicknet-v1 --threads 2

``--protocols lasso,scribbles`` (issue 24) runs the stroke protocols of ``samvolseg evaluate`` instead (a lasso on
the largest axial cross-section then clicks; a scribble then correcting scribbles; region growing given the same
strokes) and writes ``report_set_strokes.json`` and ``report_set_strokes.md`` with the issue's targets: lasso Dice
before any click (≥ 0.75), lasso + 2 clicks and 3 scribbles against 5 clicks from scratch (this run's click
protocol if ``clicks`` is among the protocols, else ``report_set.json``), and a stroke step's latency against a
click's (≤ 2×). ``--protocols clicks,lasso,scribbles`` does both.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from SAMVolSegmentLib.tools.evaluation import (
    EvaluationResult,
    discover_cases,
    evaluate_cases,
    expand_label_values,
)
from SAMVolSegmentLib.tools.training import REPORT_CASES

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Cases scored per label value (the rest as ``label > 0``: BraTS sub-regions are fragmented, see its README).
EACH_LABEL = ("mr_msd_hippocampus_003",)
THIN = ("mr_sct_t2_spinalcord", "mr_msd_hippocampus_003")
STROKE_PROTOCOLS = ("lasso", "scribbles")
#: Issue 24's targets: lasso Dice before any click, and a stroke step's latency over a click's.
LASSO_TARGET_DICE = 0.75
LATENCY_TARGET_RATIO = 2.0


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
    parser.add_argument("--protocols", default="clicks",
                        help="comma-separated: clicks (report_set.*), lasso, scribbles (report_set_strokes.*)")
    args = parser.parse_args(argv)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(protocols) - {"clicks", *STROKE_PROTOCOLS})
    if unknown or not protocols:
        parser.error(f"--protocols: unknown {unknown}; choose from clicks, lasso, scribbles")
    session_options = {"coarse_context": True} if args.coarse_context else {}
    torch.set_num_threads(args.threads)
    targets = report_targets(args.data)
    clicks_report = main_clicks(args, targets, session_options) if "clicks" in protocols else None
    strokes = [p for p in protocols if p in STROKE_PROTOCOLS]
    if strokes:
        if clicks_report is None:
            saved = args.out / "report_set.json"
            clicks_report = json.loads(saved.read_text()) if saved.exists() else None
        report = strokes_report(targets, args.models.split(","), strokes, args.clicks, args.threads,
                                session_options, clicks_report)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report_set_strokes.json").write_text(json.dumps(report, indent=2))
        (args.out / "report_set_strokes.md").write_text(strokes_markdown(report))
        print(strokes_markdown(report))
    return 0


def main_clicks(args: argparse.Namespace, targets, session_options: dict) -> dict:
    """The click protocol for every model: report_set.json, .md and .png; returns the report."""
    report = {"machine": machine(args.threads),
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
    return report


def machine(threads: int) -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "threads": threads}


def protocol_entry(result: EvaluationResult) -> dict:
    """Per-target Dice per prompt count (model, baseline), their means, and the model's latency per prompt kind."""
    table = per_target(result.rows)
    methods = [m for m in ("model", "baseline") if all(m in v for v in table.values())]
    return {"per_target": table, "mean": {m: np.mean([table[t][m] for t in table], axis=0).tolist() for m in methods},
            "latency_s": result.summary()["methods"]["model"]["latency_by_prompt_s"]}


def run_strokes(targets, model, protocols, clicks: int, session_options: dict, name: str,
                lasso_options: Optional[dict] = None) -> dict:
    """{protocol: protocol_entry} of one loaded model (a Predictor: its embeddings are shared across protocols,
    so only the first protocol's first prompt pays the encoder; latencies are compared without it)."""
    out = {}
    for protocol in protocols:
        start = time.perf_counter()
        result = evaluate_cases(targets, model, clicks, model_name=name, session_options=session_options,
                                protocol=protocol, lasso_options=lasso_options)
        out[protocol] = protocol_entry(result)
        out[protocol]["minutes"] = (time.perf_counter() - start) / 60
        print(f"{name} {protocol}: Dice by prompt model " + " / ".join(f"{v:.3f}" for v in out[protocol]["mean"]["model"])
              + " baseline " + " / ".join(f"{v:.3f}" for v in out[protocol]["mean"]["baseline"]), flush=True)
    return out


def strokes_report(targets, models, protocols, clicks: int, threads: int, session_options: dict,
                   clicks_report: Optional[dict]) -> dict:
    from SAMVolSegmentLib.engine import strokes
    from SAMVolSegmentLib.engine.predictor import Predictor
    from SAMVolSegmentLib.model import load_model

    report = {"machine": machine(threads), "targets": len(targets), "prompts": clicks, "protocols": protocols,
              "session_options": session_options,
              "stroke_parameters": {"SCRIBBLE_CLICK_SPACING_MM": strokes.SCRIBBLE_CLICK_SPACING_MM,
                                    "MAX_SCRIBBLE_CLICKS": strokes.MAX_SCRIBBLE_CLICKS,
                                    "LASSO_CLICKS": strokes.LASSO_CLICKS},
              "models": {}}
    for name in models:
        predictor = Predictor(load_model(name), threads=threads)
        entry = run_strokes(targets, predictor, protocols, clicks, session_options, name)
        reference = (clicks_report or {}).get("models", {}).get(name)
        if reference is not None:
            entry["clicks_from_scratch"] = {"mean": reference["mean"], "per_target": reference["per_target"],
                                            "click_latency_s": reference.get("click_latency_s"),
                                            "threads": clicks_report["machine"]["threads"]}
        report["models"][name] = entry
    return report


def targets_table(entry: dict) -> List[List[str]]:
    """Issue 24's targets for one model: rows (what, value, target, met)."""
    rows: List[List[str]] = []
    reference = entry.get("clicks_from_scratch")
    at5 = reference["mean"]["model"][4] if reference and len(reference["mean"]["model"]) >= 5 else None

    def versus(value: float, what: str) -> List[str]:
        if at5 is None:
            return [what, f"{value:.3f}", "≥ 5 clicks from scratch (not available)", "?"]
        return [what, f"{value:.3f}", f"≥ 5 clicks from scratch ({at5:.3f})", "yes" if value >= at5 else "no"]

    lasso, scribbles = entry.get("lasso"), entry.get("scribbles")
    if lasso:
        first = lasso["mean"]["model"][0]
        rows.append(["lasso Dice before any click", f"{first:.3f}", f"≥ {LASSO_TARGET_DICE}",
                     "yes" if first >= LASSO_TARGET_DICE else "no"])
        if len(lasso["mean"]["model"]) >= 3:
            rows.append(versus(lasso["mean"]["model"][2], "lasso + 2 clicks"))
    if scribbles and len(scribbles["mean"]["model"]) >= 3:
        rows.append(versus(scribbles["mean"]["model"][2], "3 scribbles"))
    click = _p50(lasso, "click", "later") if lasso else None
    for label, protocol, kind, phase in (("lasso step (first prompt, encoder excluded)", lasso, "lasso",
                                          "first_without_encoder"),
                                         ("correcting scribble step", scribbles, "scribble", "later")):
        step = _p50(protocol, kind, phase) if protocol else None
        if step is None:
            continue
        if click is None:
            rows.append([f"{label} p50 latency", f"{step * 1000:.0f} ms", f"≤ {LATENCY_TARGET_RATIO:g}× a click", "?"])
            continue
        ratio = step / click
        rows.append([f"{label} p50 latency", f"{step * 1000:.0f} ms = {ratio:.2f}× a click ({click * 1000:.0f} ms)",
                     f"≤ {LATENCY_TARGET_RATIO:g}×", "yes" if ratio <= LATENCY_TARGET_RATIO else "no"])
    return rows


def _p50(entry: dict, kind: str, phase: str) -> Optional[float]:
    return entry["latency_s"].get(kind, {}).get(phase, {}).get("p50")


def strokes_markdown(report: dict) -> str:
    params = ", ".join(f"{k} = {v}" for k, v in report["stroke_parameters"].items())
    lines = [f"Report set, stroke protocols (issue 24): {report['targets']} targets, {report['prompts']} prompts "
             f"per target; {report['machine']['threads']} thread(s), torch {report['machine']['torch']}; engine "
             f"defaults {params}.", "",
             "lasso: prompt 1 = a lasso around the target's largest axial cross-section (exact outline, ≤ 64 "
             "vertices), then clicks at the largest error; scribbles: prompt 1 = a scribble inside the target, "
             "then one in the largest error per prompt. Region growing (baseline) gets the same prompts: each "
             "stroke's clicks as seeds, its drawn voxels fixed. The click latency is that of the lasso protocol's "
             "own clicks (same run); a lasso is a first prompt, so its time is given without the encoder.", ""]
    for name, entry in report["models"].items():
        lines += [f"### `{name}`", "", "| issue-24 target | value | target | met |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in targets_table(entry)]
        lines.append("")
        for protocol in report["protocols"]:
            data = entry[protocol]
            count = len(data["mean"]["model"])
            shown = [k for k in (1, 2, 3, 5, 10) if k <= count]
            lines += [f"{protocol} (Dice after k prompts; {data['minutes']:.1f} min):", "",
                      "| target | " + " | ".join(f"@{k}" for k in shown) + " | baseline " +
                      " | ".join(f"@{k}" for k in shown) + " |", "|---" * (1 + 2 * len(shown)) + "|"]
            rows = list(data["per_target"].items()) + [("**mean**", data["mean"])]
            for target, values in rows:
                cells = [f"{values['model'][k - 1]:.3f}" for k in shown]
                cells += [f"{values['baseline'][k - 1]:.3f}" for k in shown]
                lines.append(f"| {target} | " + " | ".join(cells) + " |")
            lines.append("")
        reference = entry.get("clicks_from_scratch")
        if reference:
            lines += ["Clicks from scratch (report_set.json, {} threads), mean model / baseline: ".format(
                reference["threads"]) + ", ".join(f"{k + 1}: {m:.3f}/{b:.3f}" for k, (m, b) in enumerate(
                    zip(reference["mean"]["model"], reference["mean"]["baseline"]))), ""]
    return "\n".join(lines) + "\n"


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
