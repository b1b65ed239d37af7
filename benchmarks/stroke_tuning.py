"""Tuning the engine's stroke-to-click parameters on a development set of TRAINING cases (issue 24; not a test).

``engine/strokes.py`` gives the model a scribble as clicks every ``SCRIBBLE_CLICK_SPACING_MM`` (at most
``MAX_SCRIBBLE_CLICKS``) and a lasso as ``LASSO_CLICKS`` clicks. Those constants are chosen here, on cases of
``../shared/train`` (never on the report set of ``../shared/data``): the ``lasso`` protocol of ``samvolseg
evaluate`` for each ``LASSO_CLICKS`` in ``--lasso-clicks``, the ``scribbles`` protocol for each spacing in
``--spacings``, and the click protocol as the reference, all with the region-growing baseline on the same prompts;
then, with the engine's defaults, two sloppier simulated lassos (the outline 1 voxel outside / inside the border,
vertices jittered by 1 mm): how much the lasso's numbers owe to a perfect outline.
The constants are set on the module for a variant and restored after it (the engine files stay as they are);
the session and the baseline both read them through ``engine/strokes.py``.

Writes ``benchmarks/results/stroke_tuning.json`` and ``stroke_tuning.md``. Run::

    python benchmarks/stroke_tuning.py --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import torch
from report_set import RESULTS, machine, run_strokes

from SAMVolSegmentLib.engine import strokes
from SAMVolSegmentLib.engine.predictor import Predictor
from SAMVolSegmentLib.model import load_model
from SAMVolSegmentLib.tools.evaluation import Case

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "train"
#: The development set: CT and MR, small lesions, large tumours, thin structures (case, label value or None).
DEV_TARGETS = (("ct_deeplesion_000010_lesion", None), ("ct_ibsi_sts004_sarcoma", None),
               ("mr_brats2013_pat0002_flair_glioma", None), ("mr_ibsi_sts002_t1_sarcoma", None),
               ("mr_msd_hippocampus_014", 1), ("mr_spinegeneric_unf01_t2w_spinalcord", None),
               ("mr_pyradiomics_brain2_lesion", None),
               # The second half, added so that a parameter's choice rests on more than 7 targets.
               ("ct_deeplesion_000002_lesion", None), ("ct_deeplesion_000015_s081_lesion", None),
               ("ct_ibsi_sts011_sarcoma", None), ("mr_brats2013_pat0003_flair_glioma", None),
               ("mr_ibsi_sts005_t1_sarcoma", None), ("mr_msd_hippocampus_141", 2), ("mr_sts001_t2fs_sarcoma", 1))


@contextlib.contextmanager
def engine_constant(name: str, value: Any) -> Iterator[None]:
    """``engine/strokes.py``'s ``name`` set to ``value`` for the block, then restored."""
    old = getattr(strokes, name)
    setattr(strokes, name, value)
    try:
        yield
    finally:
        setattr(strokes, name, old)


def dev_targets(data: Path) -> List[Case]:
    cases = []
    for name, value in DEV_TARGETS:
        folder = data / name
        cases.append(Case(name if value is None else f"{name}:{value}", folder / "image.nii.gz",
                          folder / "label.nii.gz", value))
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=TRAIN)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--lasso-clicks", default="1,3,5")
    parser.add_argument("--spacings", default="5,10,20", help="scribble click spacings, mm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = dev_targets(args.data)
    predictor = Predictor(load_model(args.model), threads=args.threads)  # embeddings shared by every variant
    report: Dict[str, Any] = {"machine": machine(args.threads), "model": args.model, "prompts": args.prompts,
                              "targets": [t.name for t in targets],
                              "defaults": {"SCRIBBLE_CLICK_SPACING_MM": strokes.SCRIBBLE_CLICK_SPACING_MM,
                                           "MAX_SCRIBBLE_CLICKS": strokes.MAX_SCRIBBLE_CLICKS,
                                           "LASSO_CLICKS": strokes.LASSO_CLICKS},
                              "variants": {}}
    start = time.perf_counter()
    report["variants"]["clicks"] = run_strokes(targets, predictor, ["clicks"], args.prompts, {}, "clicks")["clicks"]
    for count in (int(v) for v in args.lasso_clicks.split(",")):
        with engine_constant("LASSO_CLICKS", count):
            report["variants"][f"lasso, LASSO_CLICKS={count}"] = run_strokes(
                targets, predictor, ["lasso"], args.prompts, {}, f"LASSO_CLICKS={count}")["lasso"]
    for spacing in (float(v) for v in args.spacings.split(",")):
        with engine_constant("SCRIBBLE_CLICK_SPACING_MM", spacing):
            report["variants"][f"scribbles, spacing {spacing:g} mm"] = run_strokes(
                targets, predictor, ["scribbles"], args.prompts, {}, f"spacing {spacing:g} mm")["scribbles"]
    for margin in (1, -1):
        options = {"margin_voxels": margin, "jitter_mm": 1.0}
        name = f"lasso, outline {margin:+d} voxel, jitter 1 mm"
        report["variants"][name] = run_strokes(targets, predictor, ["lasso"], args.prompts, {}, name,
                                               lasso_options=options)["lasso"]
    report["minutes"] = (time.perf_counter() - start) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stroke_tuning.json").write_text(json.dumps(report, indent=2))
    (args.out / "stroke_tuning.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: Dict[str, Any]) -> str:
    prompts = report["prompts"]
    defaults = ", ".join(f"{k} = {v}" for k, v in report["defaults"].items())
    lines = [f"Stroke parameters on the development set ({len(report['targets'])} training targets: "
             f"{', '.join(report['targets'])}); model `{report['model']}`, {prompts} prompts, "
             f"{report['machine']['threads']} thread(s), {report['minutes']:.1f} min. Engine defaults: {defaults}.",
             "", "Mean Dice over the targets after k prompts, model / region growing on the same prompts; p50 "
             "latency of a later step (a lasso: the first prompt, encoder excluded; embeddings shared between "
             "variants, so only the first variant's first prompt paid the encoder).", "",
             "| variant | " + " | ".join(f"@{k}" for k in range(1, prompts + 1)) + " | p50 step ms |",
             "|---" * (prompts + 2) + "|"]
    for name, entry in report["variants"].items():
        cells = [f"{m:.3f} / {b:.3f}" for m, b in zip(entry["mean"]["model"], entry["mean"]["baseline"])]
        latency = entry["latency_s"]
        kinds = []
        for kind, values in latency.items():
            value = values["first_without_encoder"]["p50"] if kind == "lasso" else values["later"]["p50"]
            if value is not None:
                kinds.append(f"{kind} {value * 1000:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(kinds)} |")
    lines.append("")
    for family in ("lasso, LASSO_CLICKS", "scribbles"):
        variants = {n: e["mean"]["model"] for n, e in report["variants"].items() if n.startswith(family)}
        if variants:
            best = [max(variants, key=lambda n, k=k: variants[n][k - 1]) for k in (1, 3) if k <= prompts]
            lines.append(f"Best {family.split(',')[0]} variant by the model's mean Dice: after 1 prompt `{best[0]}`"
                         + (f", after 3 prompts `{best[1]}`." if len(best) > 1 else "."))
    lines += ["", "Per target, model Dice after 1 / 3 / 5 prompts:", "",
              "| target | " + " | ".join(report["variants"]) + " |", "|---" * (len(report["variants"]) + 1) + "|"]
    for target in report["targets"]:
        cells = []
        for entry in report["variants"].values():
            values = entry["per_target"][target]["model"]
            cells.append(" / ".join(f"{values[k - 1]:.2f}" for k in (1, 3, 5) if k <= len(values)))
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
