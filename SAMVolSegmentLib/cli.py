"""``samvolseg``: click segmentation, evaluation and model management from a terminal.

Progress bars (tqdm) live only here; the engine reports ``progress(fraction, message)`` callbacks.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import SAMVolSegmentError

EXTENSION_MODULES = ["SAMVolSegmentLib.training"]  # modules that add subcommands via register_cli(subparsers)
SAMPLE_DIR = Path(__file__).resolve().parent / "samples" / "ct_msd_spleen2_spleen"


def _load(model: str, device: str):
    from .model import load_model

    start = time.perf_counter()
    loaded = load_model(model, device=device)
    print(f"model {model} ({loaded.model_id}) loaded in {time.perf_counter() - start:.1f} s")
    return loaded


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one image from a prompt file and write the mask with the image's geometry."""
    from .io_utils import write_image
    from .preprocessing import read_image
    from .prompts_io import read_prompts
    from .session import InteractiveSession

    prompts = read_prompts(args.points)
    image = read_image(args.image)
    with InteractiveSession(_load(args.model, args.device)) as session:
        session.set_volume(image)
        if prompts.box_ras is not None:
            session.set_box(*prompts.box_ras)
            print(f"box: {session.last_timing['total_s'] * 1000:.0f} ms")
        for point, positive in zip(prompts.points_ras, prompts.positive):
            session.add_click(point, bool(positive))
            t = session.last_timing
            print(f"{'+' if positive else '-'} click at RAS {np.round(point, 1).tolist()}: "
                  f"{t['total_s'] * 1000:.0f} ms (encoder {t['encode_s'] * 1000:.0f} ms)")
        mask = session.mask()
    write_image(mask, args.output)
    voxels = int(np.count_nonzero(session.mask_array_kji()))
    print(f"wrote {args.output} ({voxels} voxels)")
    return 0


def _tqdm_progress(total_label: str):
    try:
        from tqdm import tqdm
    except ImportError:  # plain lines without tqdm
        return (lambda fraction, message: print(f"[{fraction:4.0%}] {message}")), (lambda: None)
    bar = tqdm(total=1000, desc=total_label, unit="‰", leave=True)

    def update(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message)
        bar.refresh()

    return update, bar.close


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Simulated clicks on labelled cases; CSV, JSON and a Dice-vs-clicks plot."""
    from .evaluation import discover_cases, evaluate_cases, write_results

    cases = discover_cases(args.data, args.cases.split(",") if args.cases else None, args.label)
    model = _load(args.model, args.device)
    progress, close = _tqdm_progress("cases")
    try:
        result = evaluate_cases(cases, model, args.clicks, model_name=args.model, progress=progress,
                                with_baseline=not args.no_baseline)
    finally:
        close()
    paths = write_results(result, args.out)
    print_summary(result)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def print_summary(result) -> None:
    for method in result.methods:
        means = result.mean_dice(method)
        print(f"{method:>9}: " + "  ".join(f"@{k} {v:.3f}" for k, v in means.items()))


def cmd_demo(args: argparse.Namespace) -> int:
    """Click-segment the shipped spleen CT with simulated clicks and report Dice against its reference."""
    from .evaluation import Case, EvaluationResult, simulate_case, write_results
    from .io_utils import write_image
    from .session import InteractiveSession

    case = Case("ct_msd_spleen2_spleen", SAMPLE_DIR / "image.nii.gz", SAMPLE_DIR / "label.nii.gz")
    print(f"Demo: {case.name} (MSD spleen CT, CC BY-SA 4.0). Clicks are simulated from the reference mask:\n"
          "click 1 at the spleen's deepest point, then each click at the centre of the largest error.")
    model = _load(args.model, args.device)
    with InteractiveSession(model) as session:
        rows = simulate_case(session, case, args.clicks)
        for row in rows:
            if row.method == "model":
                base = next(r for r in rows if r.method == "baseline" and r.click == row.click)
                print(f"click {row.click} ({'+' if row.positive else '-'}): Dice {row.dice:.3f}  "
                      f"({row.latency_s * 1000:.0f} ms)   baseline Dice {base.dice:.3f}")
        out = Path(args.output)
        write_image(session.mask(), out / "demo_mask.nii.gz")
    result = EvaluationResult(model=args.model, num_clicks=args.clicks, rows=rows)
    paths = write_results(result, out)
    print(f"wrote {out / 'demo_mask.nii.gz'}, {paths.get('png', paths['json'])}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .weights import _spec_path, download_model, list_models

    if args.action == "list":
        for spec in list_models():
            here = "available" if _spec_path(spec).is_file() else "not downloaded"
            size = f"{spec.size_bytes / 1e6:.0f} MB" if spec.size_bytes else "bundled"
            print(f"{spec.name:<18} {size:>8}  {here:<15} {spec.description} [{spec.licence}]")
        return 0
    progress, close = _tqdm_progress(args.name)
    try:
        path = download_model(args.name, progress=progress)
    finally:
        close()
    print(f"{args.name} is at {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samvolseg", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment an image from clicks in a file")
    p.add_argument("image", help="image file (NIfTI, NRRD, MHA...)")
    p.add_argument("--points", required=True,
                   help="Slicer .mrk.json, JSON {'points': [{'ras': [r,a,s], 'positive': true}], 'box_ras': ...} "
                        "or CSV r,a,s,positive — all in RAS mm")
    p.add_argument("--output", required=True, help="mask file; format from the extension (.nii.gz, .nrrd)")
    p.add_argument("--model", default="default", help="registry name or checkpoint path")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="click-simulation evaluation on labelled cases")
    p.add_argument("data", type=Path, help="folder of <case>/image.* + label.* folders, or CSV image,label[,value]")
    p.add_argument("--model", default="default")
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("samvolseg-eval"))
    p.add_argument("--label", type=int, default=None, help="label value of the target (default: label > 0)")
    p.add_argument("--cases", default=None, help="comma-separated case names to keep")
    p.add_argument("--no-baseline", action="store_true", help="skip the region-growing baseline")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="segment the shipped spleen CT with simulated clicks")
    p.add_argument("--model", default="default")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--output", default="samvolseg-demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list or download models")
    models = p.add_subparsers(dest="action", required=True)
    models.add_parser("list", help="registered models and whether they are here")
    download = models.add_parser("download", help="download a registered model into the cache dir")
    download.add_argument("name")
    p.set_defaults(func=cmd_models)

    for name in EXTENSION_MODULES:
        try:
            importlib.import_module(name).register_cli(sub)
        except (ImportError, AttributeError):
            pass  # optional commands (e.g. training) not installed
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SAMVolSegmentError, FileNotFoundError) as exc:
        print(f"samvolseg: error: {exc}", file=sys.stderr)
        return 2





if __name__ == "__main__":
    sys.exit(main())
