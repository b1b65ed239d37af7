"""``samvolseg``: click segmentation, evaluation and model management from a terminal.

Subcommands: ``segment`` (prompts from a file → mask file), ``evaluate`` (simulated clicks on labelled cases),
``demo`` (the shipped spleen CT), ``models list`` / ``models download NAME``; modules listed in
``EXTENSION_MODULES`` add more (``train``, ``finetune``) through ``register_cli(subparsers)``.
Progress bars (tqdm, when installed) live only here; the engine reports ``progress(fraction, message)``.
Exit codes: 0 success, 2 bad input or unavailable model (message on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InvalidPromptError, SAMVolSegmentError

#: Modules that add subcommands via ``register_cli(subparsers)``; a missing or broken one never breaks the rest.
EXTENSION_MODULES: List[str] = ["SAMVolSegmentLib.training"]
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DEMO_MASK = "demo_mask.nii.gz"


# ---------------------------------------------------------------- helpers
def load_model_verbose(model: str, device: str):
    """``load_model`` with a one-line report of what was loaded and how long it took."""
    from .model import load_model

    start = time.perf_counter()
    loaded = load_model(model, device=device)
    print(f"model {model} ({getattr(loaded, 'model_id', '?')}) loaded on {device} in {time.perf_counter() - start:.1f} s")
    return loaded


def make_progress(description: str) -> Tuple[Callable[[float, str], None], Callable[[], None]]:
    """A ``progress(fraction, message)`` callback and a ``close()``: a tqdm bar, or plain lines without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        last = [-1]

        def plain(fraction: float, message: str) -> None:
            percent = int(fraction * 100)
            if percent // 10 != last[0] // 10 or fraction >= 1.0:  # at most ~10 lines
                last[0] = percent
                print(f"{description}: {percent:3d}% {message}", flush=True)

        return plain, (lambda: None)
    bar = tqdm(total=100, desc=description, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = min(max(fraction, 0.0), 1.0) * 100
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return update, bar.close


def _check_mask_path(path: Path) -> None:
    if not str(path).lower().endswith(MASK_SUFFIXES):
        raise InvalidPromptError(f"Output {path} needs one of the extensions {', '.join(MASK_SUFFIXES)}.")


# ---------------------------------------------------------------- segment
def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one image from a prompt file and write the mask with the image's geometry (atomically)."""
    from .io_utils import write_image
    from .preprocessing import read_image
    from .prompts_io import read_prompts
    from .session import InteractiveSession

    output = Path(args.output)
    _check_mask_path(output)
    prompts = read_prompts(args.points)
    box = prompts.box_ras
    if args.box is not None:
        corners = np.asarray(args.box, dtype=np.float64).reshape(2, 3)
        box = (corners.min(axis=0), corners.max(axis=0))
    image = read_image(args.image)
    model = load_model_verbose(args.model, args.device)
    start = time.perf_counter()
    with InteractiveSession(model) as session:
        session.set_volume(image)
        session.wait_until_ready()
        print(f"volume {image.GetSize()} ready in {time.perf_counter() - start:.2f} s")
        if box is not None:
            session.set_box(box[0], box[1])
            print(f"box RAS {np.round(box[0], 1).tolist()}..{np.round(box[1], 1).tolist()}: "
                  f"{session.last_timing.get('total_s', 0.0) * 1000:.0f} ms")
        for point, positive in zip(prompts.points_ras, prompts.positive):
            session.add_click(point, bool(positive))
            timing = session.last_timing
            print(f"{'+' if positive else '-'} click at RAS {np.round(point, 1).tolist()}: "
                  f"{timing.get('total_s', 0.0) * 1000:.0f} ms (encoder {timing.get('encode_s', 0.0) * 1000:.0f} ms)")
        mask = session.mask()
        voxels = int(np.count_nonzero(session.mask_array_kji()))
    write_image(mask, output)
    print(f"wrote {output} ({voxels} voxels) in {time.perf_counter() - start:.2f} s total")
    return 0


# ---------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Simulated clicks on labelled cases; writes clicks.csv, summary.json and dice_vs_clicks.png."""
    from .evaluation import discover_cases, evaluate_cases, expand_label_values, write_results

    if args.clicks < 1:
        raise InvalidPromptError("--clicks must be at least 1.")
    cases = discover_cases(args.data, args.cases.split(",") if args.cases else None, args.label)
    if args.each_label:
        cases = expand_label_values(cases, min_voxels=args.min_voxels)
    no_model = str(args.model).lower() == "none"
    if no_model and args.no_baseline:
        raise InvalidPromptError("--model none with --no-baseline leaves nothing to evaluate.")
    model = None if no_model else load_model_verbose(args.model, args.device)
    rule = "each label value" if args.each_label else (
        f"label {args.label}" if args.label is not None else "label > 0 (or the manifest's value)")
    print(f"{len(cases)} target(s); target: {rule}")
    written: list[Path] = []
    if args.protocol in ("clicks", "both"):
        print(f"click protocol: {args.clicks} simulated clicks per target")
        progress, close = make_progress("evaluate")
        try:
            result = evaluate_cases(cases, model, args.clicks, progress=progress, with_baseline=not args.no_baseline,
                                    baseline_clicks=args.baseline_clicks or "shared",
                                    model_name=None if no_model else args.model)
        finally:
            close()
        written.extend(write_results(result, args.out, plot=not args.no_plot).values())
        print_summary(result)
    if args.protocol in ("cvpr25", "both"):
        written.extend(_evaluate_cvpr25(args, cases, model, no_model))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _evaluate_cvpr25(args: argparse.Namespace, cases, model, no_model: bool) -> list[Path]:
    """The CVPR 2025 challenge's protocol (box, then 5 clicks; DSC/NSD per step, AUCs); cvpr25_* files."""
    from .cvpr25 import NUM_CLICKS, evaluate_cvpr25, format_table, write_cvpr25_results

    print(f"CVPR25 protocol: box, then {NUM_CLICKS} clicks per target (box mode {args.box_mode})")
    progress, close = make_progress("evaluate cvpr25")
    try:
        result = evaluate_cvpr25(cases, model, progress=progress, with_baseline=not args.no_baseline,
                                 baseline_clicks=args.baseline_clicks or "own",
                                 model_name=None if no_model else args.model, box_mode=args.box_mode)
    finally:
        close()
    print(format_table(result))
    return list(write_cvpr25_results(result, args.out).values())


def print_summary(result) -> None:
    """Mean Dice per click count per method, and the model's click latency."""
    summary = result.summary()
    for method in result.methods:
        means = result.mean_dice(method)
        print(f"{method:>9} mean Dice: " + "  ".join(f"{k}:{v:.3f}" for k, v in means.items()))
        later = summary["methods"][method]["latency_later_clicks_s"]
        if later["p50"] is not None:
            print(f"{'':>9} latency after the first click: p50 {later['p50'] * 1000:.0f} ms, "
                  f"p95 {later['p95'] * 1000:.0f} ms")


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Click-segment the shipped spleen CT with simulated clicks; print Dice against its reference."""
    from .evaluation import Case, EvaluationResult, simulate_case, write_results
    from .io_utils import write_image
    from .samples import DEMO_SAMPLE, sample_dir
    from .session import InteractiveSession

    if not 1 <= args.clicks <= 20:
        raise InvalidPromptError("--clicks must be between 1 and 20.")
    folder = sample_dir(DEMO_SAMPLE)
    case = Case(DEMO_SAMPLE, folder / "image.nii.gz", folder / "label.nii.gz")
    out = Path(args.output)
    print(f"Demo: {DEMO_SAMPLE} — abdominal CT with a manual spleen label (Medical Segmentation Decathlon, "
          f"CC BY-SA 4.0; see {folder / 'README.md'}).")
    print(f"The clicks are SIMULATED from the reference label: click 1 at the spleen's deepest point, then up to "
          f"{args.clicks - 1} more, each at the centre of the largest error (+ for a miss, - for a false "
          "positive). The region-growing baseline gets the same clicks.")
    model = load_model_verbose(args.model, args.device)
    with InteractiveSession(model) as session:
        rows = simulate_case(session, case, args.clicks)
        for row in rows:
            if row.method != "model":
                continue
            base = next(r for r in rows if r.method == "baseline" and r.click == row.click)
            sign = {True: "+", False: "-", None: " "}[row.positive]
            where = f"RAS ({row.r:.1f}, {row.a:.1f}, {row.s:.1f})" if row.placed else "no click: already exact"
            print(f"click {row.click} {sign} {where}: Dice {row.dice:.3f} ({row.latency_s * 1000:.0f} ms)   "
                  f"baseline Dice {base.dice:.3f}")
        write_image(session.mask(), out / DEMO_MASK)
    result = EvaluationResult(model=args.model, num_clicks=args.clicks, rows=rows)
    paths = write_results(result, out)
    print(f"wrote {out / DEMO_MASK} (the model's mask after the last click) and "
          + ", ".join(str(p) for p in paths.values()))
    return 0


# ---------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    """``models list``: registry and local availability; ``models download NAME``: fetch into the cache dir."""
    from .errors import ModelNotAvailableError
    from .weights import cache_dir, download_model, list_models, resolve_model_path

    if args.action == "list":
        print(f"cache dir: {cache_dir()} (set SAMVOLSEGMENT_MODEL_DIR to change)")
        for spec in list_models():
            try:
                where = f"available at {resolve_model_path(spec.name)}"
            except ModelNotAvailableError:
                where = f"not downloaded (samvolseg models download {spec.name})"
            size = f"{spec.size_bytes / 1e6:.0f} MB" if spec.size_bytes else "bundled"
            print(f"{spec.name:<18} {size:>8}  {spec.description} [{spec.licence}]\n{'':<18} {where}")
        return 0
    progress, close = make_progress(f"download {args.name}")
    try:
        path = download_model(args.name, progress=progress)
    finally:
        close()
    print(f"{args.name} is at {path}")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The full parser, with the subcommands of the importable ``EXTENSION_MODULES``."""
    parser = argparse.ArgumentParser(prog="samvolseg", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("segment", help="segment an image from clicks in a file",
                       description="Segment IMAGE from the clicks in --points and write the mask with IMAGE's geometry.")
    p.add_argument("image", help="image file (NIfTI, NRRD, MHA...)")
    p.add_argument("--points", required=True,
                   help="Slicer .mrk.json (LPS or RAS; negative = point list/label/description starting with 'neg'), "
                        "JSON {'points': [{'ras': [r,a,s], 'positive': true}], 'box_ras': [[..],[..]]} "
                        "or CSV r,a,s,positive; RAS mm")
    p.add_argument("--output", required=True, help=f"mask file; format from the extension ({', '.join(MASK_SUFFIXES)})")
    p.add_argument("--box", nargs=6, type=float, metavar=("R0", "A0", "S0", "R1", "A1", "S1"),
                   help="box prompt: two opposite corners in RAS mm (overrides a box in --points)")
    p.add_argument("--model", default="default", help="registry name (samvolseg models list) or checkpoint path")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("evaluate", help="click-simulation evaluation on labelled cases",
                       description="Simulated clicks (deepest point of the target, then of the largest error) on "
                                   "labelled cases; Dice and HD95 after each click for the model and a "
                                   "region-growing baseline; writes clicks.csv, summary.json, dice_vs_clicks.png.")
    p.add_argument("data", type=Path,
                   help="folder of <case>/image.* + label.* folders, or a CSV manifest image,label[,label_value]")
    p.add_argument("--model", default="default", help="registry name, checkpoint path, or 'none' (baseline only)")
    p.add_argument("--clicks", type=int, default=10, help="clicks per case in the click protocol (default 10)")
    p.add_argument("--out", type=Path, default=Path("samvolseg-eval"), help="output folder")
    p.add_argument("--label", type=int, default=None,
                   help="target label value for cases whose manifest row gives none (default: label > 0, all "
                        "structures as one target)")
    p.add_argument("--each-label", action="store_true",
                   help="evaluate every non-zero label value of a case as its own target (<case>:<value>)")
    p.add_argument("--min-voxels", type=int, default=20, help="with --each-label: skip smaller structures")
    p.add_argument("--cases", default=None, help="comma-separated case names to evaluate (default: all)")
    p.add_argument("--no-baseline", action="store_true", help="skip the region-growing baseline")
    p.add_argument("--baseline-clicks", choices=["shared", "own"], default=None,
                   help="baseline gets the model's clicks (shared) or clicks from its own errors (own); default: "
                        "shared for the click protocol, own for cvpr25 (the challenge scores each method on its own "
                        "errors)")
    p.add_argument("--protocol", choices=["clicks", "cvpr25", "both"], default="clicks",
                   help="clicks: --clicks clicks from the target's deepest point (clicks.csv, summary.json); "
                        "cvpr25: the CVPR 2025 interactive challenge's box + 5 clicks with DSC/NSD (2 mm) per step "
                        "and their AUCs (cvpr25_steps.csv, cvpr25_cases.csv, cvpr25_summary.json); both: both")
    p.add_argument("--box-mode", choices=["initial", "clip"], default="initial",
                   help="cvpr25: the session clips the mask to the challenge's box; initial: lift the clip before "
                        "the first click (the box is only a hint there, default), clip: keep it for every step")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="segment the shipped spleen CT with simulated clicks",
                       description="Segment the shipped spleen CT with clicks simulated from its reference label; "
                                   "print Dice per click next to the baseline's and write the mask.")
    p.add_argument("--model", default="default", help="registry name or checkpoint path")
    p.add_argument("--clicks", type=int, default=5, help="1 click, then up to this many in total (default 5)")
    p.add_argument("--output", default="samvolseg-demo", help=f"output folder for {DEMO_MASK} and the plot")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list or download models")
    models = p.add_subparsers(dest="action", metavar="ACTION")
    models.required = True
    models.add_parser("list", help="registered models and whether they are on this machine")
    download = models.add_parser("download", help="download a registered model into the cache dir")
    download.add_argument("name", help="e.g. sam-med3d-turbo")
    p.set_defaults(func=cmd_models)

    for name in EXTENSION_MODULES:
        register_extension(name, sub)
    return parser


def register_extension(module_name: str, subparsers) -> bool:
    """Import ``module_name`` and let it add subcommands; False (with a note on stderr if broken) on failure."""
    try:
        module = importlib.import_module(module_name)
        module.register_cli(subparsers)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            print(f"samvolseg: note: commands of {module_name} unavailable ({exc})", file=sys.stderr)
        return False
    except Exception as exc:  # a broken optional module must not break the other commands
        print(f"samvolseg: note: commands of {module_name} unavailable ({type(exc).__name__}: {exc})", file=sys.stderr)
        return False
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 error with a message on stderr, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SAMVolSegmentError, FileNotFoundError) as exc:
        print(f"samvolseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("samvolseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
