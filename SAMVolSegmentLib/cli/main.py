"""``samvolseg``: click segmentation, evaluation, a self-contained demo, training and model management.

Subcommands: ``segment`` (prompts from a file → mask file), ``batch`` (a manifest of cases), ``evaluate`` (simulated clicks on labelled cases),
``demo`` (a generated CT phantom, a downloaded sample, or your own case), ``models list`` / ``models download NAME``,
``train`` / ``average`` / ``finetune`` (:mod:`SAMVolSegmentLib.tools.training`) and ``serve`` (:mod:`.remote.cli`). An image argument is a file (NIfTI, NRRD, MHA...) or a DICOM series folder.
Start-up stays light: building the parser (``--version``, ``--help``, ``COMMAND --help``) imports neither torch
nor SimpleITK/scipy; each command imports what it needs when it runs.
Progress bars (tqdm) are drawn only on a terminal; elsewhere (logs, CI) progress is a few plain lines. The
engine itself only reports ``progress(fraction, message)``.
Exit codes: 0 success, 1 some batch cases failed (see its report), 2 bad input or unavailable model/device (one line
on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from ..batch import MASK_SUFFIXES
from ..engine.prompts_io import MAX_CLICKS
from ..errors import AuthenticationError, InvalidPromptError, ModelNotAvailableError, SAMVolSegmentError
from ..progress import make_progress
from ..tools.phantom import DEFAULT_TARGET, PHANTOM_LABELS
from .common import DEVICE_HELP, add_device, add_threads, apply_threads, check_device, load_model_verbose

DEMO_MASK = "demo_mask.nii.gz"
DEMO_OVERLAY = "demo_overlay.png"
IMAGE_HELP = "image file (NIfTI, NRRD, MHA...) or a folder holding one DICOM series"
SERIES_HELP = "DICOM series instance UID, when the image folder holds several series"


# ---------------------------------------------------------------- helpers
# ---------------------------------------------------------------- segment
def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one image from a prompt file and write the mask with the image's geometry (atomically).

    The same code path as every batch case (:func:`SAMVolSegmentLib.batch.run_case`); the model is loaded
    only once the prompts and the image have been read and checked.
    """
    import numpy as np

    from ..batch import BatchCase, DeferredModel, quiet_input_warnings, run_case
    from ..io_utils import check_output_file

    if args.points is None and args.auto is None:
        raise InvalidPromptError("Give the clicks with --points FILE, or --auto CLASS to start from the model's "
                                 "proposal (or both: the points then correct the proposal).")
    # Before any work: never write over the input, and an unwritable output fails now, not after the clicks.
    check_output_file(args.output, inputs=[p for p in (args.image, args.points) if p], suffixes=MASK_SUFFIXES)
    box = None if args.box is None else tuple(tuple(c) for c in np.asarray(args.box, float).reshape(2, 3))
    case = BatchCase(str(args.image), str(args.points or ""), str(args.output), series=args.series, box_ras=box,
                     auto=args.auto)

    def load():
        check_device(args.device)
        return load_model_verbose(args.model, args.device)

    def report(kind: str, info: dict) -> None:
        timing = info.get("timing", {})
        if kind == "ready":
            print(f"volume {tuple(info['shape_kji'][::-1])} ready in {info['seconds']:.2f} s")
        elif kind == "propose":
            print(f"proposal of {info['class']}: {timing.get('total_s', 0.0) * 1000:.0f} ms (encoder "
                  f"{timing.get('encode_s', 0.0) * 1000:.0f} ms)")
        elif kind == "box":
            print(f"box RAS {np.round(info['min_ras'], 1).tolist()}..{np.round(info['max_ras'], 1).tolist()}: "
                  f"{timing.get('total_s', 0.0) * 1000:.0f} ms")
        elif kind in ("lasso", "scribble"):
            print(f"{'+' if info['positive'] else '-'} {kind} of {len(info['points_ras'])} points around RAS "
                  f"{np.round(np.mean(info['points_ras'], axis=0), 1).tolist()}: "
                  f"{timing.get('total_s', 0.0) * 1000:.0f} ms (encoder {timing.get('encode_s', 0.0) * 1000:.0f} ms)")
        else:
            print(f"{'+' if info['positive'] else '-'} click at RAS {np.round(info['point_ras'], 1).tolist()}: "
                  f"{timing.get('total_s', 0.0) * 1000:.0f} ms (encoder {timing.get('encode_s', 0.0) * 1000:.0f} ms)")

    backend = _remote_backend(args)
    with warnings.catch_warnings():
        quiet_input_warnings()  # said once below, as a plain line, not as a Python warning with a source line
        result = run_case(case, backend if backend is not None else DeferredModel(load), on_event=report)
    print(f"wrote {args.output} ({result.voxels} voxels) in {result.seconds:.2f} s total")
    for warning in result.warnings:
        print(f"samvolseg: warning: {warning}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- batch
def cmd_batch(args: argparse.Namespace) -> int:
    """Segment every case of a manifest; JSON report, resumable, failures recorded (exit 1 if any)."""
    import os

    from ..batch import quiet_input_warnings, read_manifest, run_batch, summary_line

    if args.workers < 1:
        raise InvalidPromptError("--workers must be at least 1.")
    cases = read_manifest(args.manifest)  # a bad manifest is one line, before any worker starts
    backend = _remote_backend(args)  # with --workers/--scheduler refused by segment_cases, before any case
    if args.scheduler is None and backend is None:
        check_device(args.device)  # a cluster's workers may have devices this machine lacks
    threads = args.threads
    if threads is None and args.workers > 1 and args.scheduler is None:
        threads = max(1, (os.cpu_count() or 1) // args.workers)  # equal total threads: no oversubscription
    mode = f"Dask scheduler {args.scheduler}" if args.scheduler else (
        f"{args.workers} local processes" if args.workers > 1 else "serial")
    where = f"server {args.server}" if backend is not None else f"model {args.model}"
    print(f"batch: {len(cases)} cases from {args.manifest} ({mode}, {where})", flush=True)
    progress, close = make_progress("batch")

    def on_result(result) -> None:
        if result.model_load_s > 0:
            print(f"model {args.model} loaded on {result.worker} in {result.model_load_s:.1f} s", flush=True)
        if result.status == "failed":
            print(f"batch: {result.name} failed: {result.error}", flush=True)
        for warning in result.warnings:  # the case was done; the report keeps the sentence too
            print(f"batch: {result.name}: warning: {warning}", flush=True)

    try:
        with warnings.catch_warnings():
            quiet_input_warnings()  # serial cases run here; worker processes quiet their own
            summary = run_batch(args.manifest, args.report, progress=progress, on_result=on_result,
                                model=backend if backend is not None else args.model,
                                device=args.device, workers=args.workers, scheduler=args.scheduler,
                                threads=threads, overwrite=args.overwrite)
    finally:
        close()
    print(summary_line(summary))
    return 1 if summary["failed"] else 0


# ---------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Simulated clicks on labelled cases; writes clicks.csv, summary.json and dice_vs_clicks.png."""
    from ..io_utils import check_output_folder
    from ..tools.evaluation import discover_cases, evaluate_cases, expand_label_values, write_results

    if args.clicks < 1:
        raise InvalidPromptError("--clicks must be at least 1.")
    check_output_folder(args.output)  # before the work, not as a traceback after it
    cases = discover_cases(args.data, args.cases.split(",") if args.cases else None, args.label)
    if args.each_label:
        cases = expand_label_values(cases, min_voxels=args.min_voxels)
    no_model = str(args.model).lower() == "none"
    if no_model and args.no_baseline:
        raise InvalidPromptError("--model none with --no-baseline leaves nothing to evaluate.")
    if not no_model:
        check_device(args.device)
    model = None if no_model else load_model_verbose(args.model, args.device)
    rule = "each label value" if args.each_label else (
        f"label {args.label}" if args.label is not None else "label > 0 (or the manifest's value)")
    print(f"{len(cases)} target(s); target: {rule}")
    written: list[Path] = []
    for protocol in EVALUATE_PROTOCOLS[args.protocol]:
        if protocol == "cvpr25":
            written.extend(_evaluate_cvpr25(args, cases, model, no_model))
            continue
        print(f"{protocol} protocol: {PROTOCOL_LINES[protocol].format(n=args.clicks, rest=args.clicks - 1)}")
        progress, close = make_progress(f"evaluate {protocol}" if protocol != "clicks" else "evaluate")
        try:
            result = evaluate_cases(cases, model, args.clicks, progress=progress, with_baseline=not args.no_baseline,
                                    baseline_clicks=args.baseline_clicks or "shared",
                                    model_name=None if no_model else args.model,
                                    session_options=_session_options(args), protocol=protocol,
                                    lasso_options=_lasso_options(args))
        finally:
            close()
        written.extend(write_results(result, args.output, plot=not args.no_plot).values())
        print_summary(result)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


#: What each ``--protocol`` choice runs, in order.
EVALUATE_PROTOCOLS = {"clicks": ("clicks",), "cvpr25": ("cvpr25",), "both": ("clicks", "cvpr25"),
                      "lasso": ("lasso",), "scribbles": ("scribbles",), "strokes": ("lasso", "scribbles"),
                      "all": ("clicks", "cvpr25", "lasso", "scribbles")}
PROTOCOL_LINES = {"clicks": "{n} simulated clicks per target",
                  "lasso": "a simulated lasso on the target's largest axial cross-section, then {rest} clicks",
                  "scribbles": "a simulated scribble inside the target, then {rest} correcting scribbles"}


def _lasso_options(args: argparse.Namespace) -> dict:
    """A sloppier simulated lasso from the command line (empty: the exact outline)."""
    options: dict = {}
    if getattr(args, "lasso_margin", 0):
        options["margin_voxels"] = args.lasso_margin
    if getattr(args, "lasso_jitter", 0.0):
        if args.lasso_jitter < 0:
            raise InvalidPromptError("--lasso-jitter is a standard deviation in mm: give 0 or more.")
        options["jitter_mm"] = args.lasso_jitter
    return options


def _session_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of the evaluation's sessions from the command line."""
    return {"coarse_context": True} if getattr(args, "coarse_context", False) else {}


def _evaluate_cvpr25(args: argparse.Namespace, cases, model, no_model: bool) -> list[Path]:
    """The CVPR 2025 challenge's protocol (box, then 5 clicks; DSC/NSD per step, AUCs); cvpr25_* files."""
    from ..tools.cvpr25 import NUM_CLICKS, evaluate_cvpr25, format_table, write_cvpr25_results

    print(f"CVPR25 protocol: box, then {NUM_CLICKS} clicks per target (box mode {args.box_mode})")
    progress, close = make_progress("evaluate cvpr25")
    try:
        result = evaluate_cvpr25(cases, model, progress=progress, with_baseline=not args.no_baseline,
                                 baseline_clicks=args.baseline_clicks or "own",
                                 model_name=None if no_model else args.model, box_mode=args.box_mode,
                                 session_options=_session_options(args))
    finally:
        close()
    print(format_table(result))
    return list(write_cvpr25_results(result, args.output).values())


def print_summary(result) -> None:
    """Mean Dice per click (prompt) count per method, and the latency of later prompts."""
    summary = result.summary()
    what = "click" if getattr(result, "protocol", "clicks") == "clicks" else "prompt"
    for method in result.methods:
        means = result.mean_dice(method)
        print(f"{method:>9} mean Dice: " + "  ".join(f"{k}:{v:.3f}" for k, v in means.items()))
        later = summary["methods"][method]["latency_later_clicks_s"]
        if later["p50"] is not None:
            print(f"{'':>9} latency after the first {what}: p50 {later['p50'] * 1000:.0f} ms, "
                  f"p95 {later['p95'] * 1000:.0f} ms")


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Click-segment a generated CT phantom, a downloaded sample or the user's case with simulated clicks;
    Dice per click."""
    from ..engine.session import InteractiveSession
    from ..io_utils import check_output_folder, write_image
    from ..tools.evaluation import Case, EvaluationResult, simulate_case, write_results

    if args.list_samples:
        return _list_samples()
    if not 1 <= args.clicks <= 20:
        raise InvalidPromptError("--clicks must be between 1 and 20.")
    check_output_folder(args.output)  # before the phantom and the clicks, not as a traceback after them
    if (args.image is None) != (args.label is None):
        raise InvalidPromptError("--image and --label go together: give both (your own case) or neither (phantom).")
    if args.sample is not None and args.image is not None:
        raise InvalidPromptError("--sample and --image/--label are alternatives: give one of them (or neither for "
                                 "the phantom).")
    if args.image is not None and args.target is not None:
        raise InvalidPromptError("--target names a phantom structure or a sample's segment; on your own case give "
                                 "--label-value instead.")
    out = Path(args.output)
    if args.sample is not None:
        case = _demo_sample_case(args.sample, args.target)
    elif args.image is None:
        case = _demo_phantom_case(out, args.target or DEFAULT_TARGET, args.seed)
    else:
        case = Case(Path(args.image).name, Path(args.image), Path(args.label), args.label_value)
        print(f"Demo on your case: {args.image} with reference {args.label} "
              f"(target: {'label > 0' if args.label_value is None else f'label {args.label_value}'}).")
    print(f"The clicks are SIMULATED from the reference label: click 1 at the target's deepest point, then up to "
          f"{args.clicks - 1} more, each at the centre of the largest error (+ for a miss, - for a false "
          "positive). The region-growing baseline gets the same clicks.")
    check_device(args.device)
    model = load_model_verbose(args.model, args.device)
    with InteractiveSession(model) as session:
        rows = simulate_case(session, case, args.clicks)
        for row in rows:
            if row.method != "model":
                continue
            base = next(r for r in rows if r.method == "baseline" and r.click == row.click)
            sign = {True: "+", False: "-", None: " "}[row.positive]
            where = f"RAS ({row.r:.1f}, {row.a:.1f}, {row.s:.1f})" if row.placed else "no click: already exact"
            print(f"click {row.click} {sign} {where}: model Dice {row.dice:.3f} ({row.latency_s * 1000:.0f} ms)   "
                  f"baseline Dice {base.dice:.3f}")
        mask = session.mask()
    written = [write_image(mask, out / DEMO_MASK)]
    result = EvaluationResult(model=args.model, num_clicks=args.clicks, rows=rows)
    written.extend(write_results(result, out).values())
    overlay = _write_overlay(case, mask, out / DEMO_OVERLAY)
    if overlay is not None:
        written.append(overlay)
    print(f"wrote {out / DEMO_MASK} (the model's mask after the last click) and "
          + ", ".join(str(p) for p in written[1:]))
    return 0


def _demo_phantom_case(out: Path, target: str, seed: int):
    """Generate the phantom into ``out/phantom`` and describe it; the evaluation case for ``target``."""
    from ..tools.evaluation import Case
    from ..tools.phantom import DEFAULT_SPACING, write_phantom

    if target not in PHANTOM_LABELS:
        raise InvalidPromptError(f"--target {target!r} is not a phantom structure; choose one of "
                                 f"{', '.join(sorted(PHANTOM_LABELS))}.")
    start = time.perf_counter()
    image_path, label_path = write_phantom(out / "phantom", seed=seed)
    spacing = " x ".join(f"{v:g}" for v in DEFAULT_SPACING)
    print(f"Demo data: a synthetic abdominal CT phantom (seed {seed}, {spacing} mm voxels, HU) and its reference "
          f"label map, generated in {time.perf_counter() - start:.1f} s into {image_path.parent} - nothing is "
          "downloaded.")
    print(f"Target: {target} (label {PHANTOM_LABELS[target]}); the spleen touches the left kidney, the splenic "
          "vein (both of similar brightness), a rib and the colon.")
    return Case(f"phantom_{target}", image_path, label_path, PHANTOM_LABELS[target])


def _demo_sample_case(name: str, target: Optional[str]):
    """Download a registered sample (or find it in the cache) and describe it; the evaluation case for the
    segment ``target`` (default: the sample's)."""
    from ..download import host_of
    from ..tools.evaluation import Case, target_name
    from ..tools.samples import fetch_sample, get_sample, is_cached, sample_dir

    sample = get_sample(name)  # an unknown name is refused before any download
    cached = is_cached(sample)
    if cached:
        print(f"Sample {sample.name}: in the cache at {sample_dir(sample)} (SHA-256 checked, nothing downloaded).")
    else:
        print(f"Sample {sample.name}: downloading {', '.join(f.filename for f in sample.files)} from "
              f"{host_of(sample.image.url)} into {sample_dir(sample)} (SHA-256 checked).", flush=True)
    progress, close = make_progress(f"sample {sample.name}")
    try:
        prepared = fetch_sample(name, progress=None if cached else progress)
    finally:
        close()
    segment, value = prepared.target_value(target)
    print(f"Demo data: {sample.description}. Source: {sample.source}. Licence: {sample.licence}.")
    print(f"Target: segment {segment} (label {value} of {prepared.label_path}); the sample's segments: "
          f"{', '.join(prepared.segments)}.")
    return Case(target_name(sample.name, value), prepared.image_path, prepared.label_path, value)


def _list_samples() -> int:
    """``demo --list-samples``: every registered sample, where it comes from, and whether it is cached."""
    from ..download import cache_root
    from ..tools.samples import is_cached, list_samples

    print(f"samples for samvolseg demo --sample NAME (cache: {cache_root() / 'samples'}; set SAMVOLSEG_CACHE to "
          "change)")
    for sample in list_samples():
        state = "in the cache" if is_cached(sample) else "not downloaded"
        print(f"{sample.name:<14} {state:<15} {sample.description}")
        for item in sample.files:
            print(f"{'':<14} {item.filename}: {item.url}")
        print(f"{'':<14} default target: {sample.default_target}; licence: {sample.licence}")
    return 0


def _write_overlay(case, mask, path: Path) -> Optional[Path]:
    """A PNG of three axial slices through the target: reference contour green, model mask red (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no overlay PNG (install matplotlib: pip install 'samvolsegment[eval]')")
        return None
    import numpy as np
    import SimpleITK as sitk

    from ..io_utils import atomic_path
    from ..tools.evaluation import load_target

    image, target = load_target(case)
    hu = sitk.GetArrayViewFromImage(image)
    predicted = sitk.GetArrayViewFromImage(mask) > 0
    slices = np.nonzero(target.any(axis=(1, 2)))[0]
    chosen = sorted({int(slices[int(round(q * (len(slices) - 1)))]) for q in (0.25, 0.5, 0.75)})
    if float(hu.min()) < -500:  # CT in HU: the usual soft-tissue window (level 50, width 400)
        level, width = 50.0, 400.0
    else:  # MR or other units: a window around the target's intensities
        low, high = np.percentile(hu[target > 0], [1, 99])
        level, width = (low + high) / 2, max(high - low, 1.0) * 3
    figure, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 5), squeeze=False)
    aspect = image.GetSpacing()[1] / image.GetSpacing()[0]
    for axis, k in zip(axes[0], chosen):
        axis.imshow(hu[k], cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect)
        if target[k].any():
            axis.contour(target[k], levels=[0.5], colors="lime", linewidths=1.0)
        if predicted[k].any():
            axis.contour(predicted[k], levels=[0.5], colors="red", linewidths=1.0)
        axis.set_title(f"slice {k}: reference (green), model (red)")
        axis.axis("off")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)
    return path


# ---------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    """``models list``: registry and local availability; ``models download NAME``: fetch into the cache dir."""
    from ..model.registry import cache_dir, download_model, list_models, resolve_model_path

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
    downloadable = sorted(spec.name for spec in list_models() if spec.url)
    if args.name not in downloadable:  # refuse before any progress output
        raise ModelNotAvailableError(f"{args.name!r} is not a downloadable model; choose one of {downloadable}.")
    progress, close = make_progress(f"download {args.name}")
    try:
        path = download_model(args.name, progress=progress)
    finally:
        close()
    print(f"{args.name} is at {path}")
    return 0


# ---------------------------------------------------------------- train / average / finetune
def cmd_train(args: argparse.Namespace) -> int:
    """Train the small default model (ClickNet2 or ClickNet) on labelled cases + synthetic data; JSON result.

    The architecture comes from the run's checkpoint when resuming, else from ``--init-from``'s export (its
    weights are loaded; ``--box-input`` / ``--normalization`` may extend it), else from the defaults."""
    import json

    import torch

    from ..model.clicknet import ClickNet, ClickNetConfig
    from ..model.clicknet2 import ClickNet2, ClickNet2Config
    from ..tools.training import initialise_from, train
    from ..tools.training_data import SampleSource, load_cases, require_cases

    check_device(args.device)
    torch.set_num_threads(args.threads)
    exclude = [name for name in args.exclude.split(",") if name]
    cases = load_cases(args.data, exclude=exclude, allow_non_commercial=args.allow_non_commercial)
    require_cases(cases, args.data)
    source = SampleSource(cases, large_fraction=args.large_fraction, large_blob_fraction=args.large_blob_fraction)
    print(f"{len(cases)} training cases, {sum(len(c.targets) for c in cases)} targets in {len(source.groups)} "
          f"groups: {', '.join(f'{g} ({len(v)})' for g, v in sorted(source.groups.items()))}; "
          f"{len(source.large_targets)} large targets", flush=True)
    overrides = {}
    if args.box_input:
        overrides["box_input"] = True
    if args.stroke_fraction > 0:
        overrides["stroke_prompts"] = True
    if args.normalization:
        overrides["normalization"] = args.normalization
    checkpoint_path = args.output / "checkpoint.pt"
    if args.family == "clicknet":
        model = ClickNet(ClickNetConfig())
    elif args.resume and checkpoint_path.is_file():
        saved = torch.load(str(checkpoint_path), map_location="cpu", weights_only=False)  # our own run's file
        config = dict(saved.get("config") or {})
        if args.stroke_fraction > 0:  # a declaration without weights: a running recipe may add it on resume
            config["stroke_prompts"] = True
        model = ClickNet2(ClickNet2Config.from_dict(config))
    elif args.init_from is not None:
        from ..model import read_checkpoint

        config = dict(read_checkpoint(args.init_from).get("config") or {})
        config.update(overrides)
        model = ClickNet2(ClickNet2Config.from_dict(config))
        extra = initialise_from(model, args.init_from)
        print(f"initialised from {args.init_from}; new parameters (zero-initialised): {', '.join(extra) or 'none'}",
              flush=True)
    else:
        model = ClickNet2(ClickNet2Config(**overrides))
    result = train(model, source, args.output, args.minutes, args.seed, export=args.export, resume=args.resume,
                   decay_from_minute=args.decay_from_minute, lr=args.lr, clicks=args.clicks, device=args.device,
                   checkpoint_every_s=60.0 * args.checkpoint_minutes, box_fraction=args.box_fraction,
                   local_weight=args.local_loss, cvpr_click_fraction=args.cvpr_click_fraction,
                   max_steps=args.max_steps, keep_exports_from_minute=args.keep_exports_from_minute,
                   seed_fraction=args.seed_fraction, stroke_fraction=args.stroke_fraction, clock=args.clock)
    print(json.dumps(result))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    """Uniform weight average of a run's exports (SWA) into one weights file."""
    from ..tools.training import average_exports

    out = average_exports(args.exports, args.output)
    print(f"averaged {len(args.exports)} exports into {out}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune any model on the user's labelled cases; writes finetuned.pt into the output folder."""
    import json

    from ..model import load_model
    from ..tools.training import train
    from ..tools.training_data import SampleSource, load_cases, require_cases

    check_device(args.device)
    cases = load_cases(args.data, allow_non_commercial=True)  # the user's own data, the user's own weights
    require_cases(cases, args.data)  # before the model loads
    model = load_model(args.model)
    source = SampleSource(cases, synthesis_fraction=0.0, blob_fraction=0.0)
    result = train(model, source, args.output, args.minutes, args.seed, export=args.output / "finetuned.pt",
                   resume=args.resume, trainable=args.trainable, lr=args.lr, device=args.device)
    print(json.dumps(result))
    return 0


def _add_training_commands(sub) -> None:
    """``train``, ``average`` and ``finetune``: their options here, their work in :mod:`.training` (which
    imports torch, so it loads only when one of them runs)."""
    data_help = "a folder of <case>/image.* + label.* folders, or one case folder; repeat for several"
    p = sub.add_parser("train", formatter_class=_HelpFormatter,
                       help="train the small default model (ClickNet2) on labelled cases + synthetic data")
    p.add_argument("--data", type=Path, action="append", required=True, help=data_help)
    p.add_argument("--exclude", default="", help="comma-separated case names to leave out")
    p.add_argument("--allow-non-commercial", action="store_true",
                   help="also train on cases whose meta.json licence is non-commercial (the weights inherit it)")
    p.add_argument("--family", choices=["clicknet2", "clicknet"], default="clicknet2", help="model family")
    _add_output(p, Path("runs/default"), "checkpoint and log folder")
    p.add_argument("--minutes", type=float, default=90.0, help="budget in minutes of --clock time (cumulative over resumes)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (samples, clicks, init)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    p.add_argument("--export", type=Path, default=None, help="weights file to (re)write at every checkpoint")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is faster on a shared machine: OpenMP threads wait for each other)")
    add_device(p)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--clicks", type=int, default=5, help="simulated clicks per episode")
    p.add_argument("--decay-from-minute", type=float, default=None,
                   help="keep the learning rate constant until this minute, then cosine-decay it (default: half)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint (and export) interval")
    p.add_argument("--max-steps", type=int, default=None, help="also stop after this many (cumulative) steps")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="what --minutes counts: wall time, or this process's CPU time (a run on a shared or paused "
                        "machine still gets the compute it names; a resumed run may switch)")
    p.add_argument("--keep-exports-from-minute", type=float, default=None,
                   help="from this minute on, keep every checkpoint's export as <export>_m<minute>.pt (for averaging)")
    v3 = p.add_argument_group("v3 options (a new run; a resumed run keeps its checkpoint's architecture)")
    v3.add_argument("--init-from", type=Path, default=None,
                    help="start from this export's weights (e.g. the shipped default); new inputs start at zero")
    v3.add_argument("--box-input", action="store_true", help="give the model a box-prompt input channel")
    v3.add_argument("--normalization", choices=["zscore_positive", "robust_zscore_inside"], default=None,
                    help="intensity normalisation the model declares (default: the initial model's, else "
                         "zscore_positive, the reference rule)")
    v3.add_argument("--box-fraction", type=float, default=0.0, help="share of samples with a box prompt")
    v3.add_argument("--local-loss", type=float, default=0.0,
                    help="weight of the locality loss on correction steps (changes far from the new click)")
    v3.add_argument("--cvpr-click-fraction", type=float, default=0.0,
                    help="share of episodes whose corrective clicks follow the CVPR 2025 challenge's rule")
    v3.add_argument("--large-fraction", type=float, default=0.0,
                    help="share of real draws among the large targets (>= 30k voxels on the 1.5 mm grid)")
    v3.add_argument("--large-blob-fraction", type=float, default=0.0,
                    help="share of synthetic blobs drawn large (radius 60-120 mm)")
    v3.add_argument("--seed-fraction", type=float, default=0.0,
                    help="share of no-box episodes starting from a seed mask prompt (an imperfect copy of the target, "
                         "as the session seeds extension and context ROIs)")
    v3.add_argument("--stroke-fraction", type=float, default=0.0,
                    help="share of the other episodes that start with a lasso or scribble and correct with scribbles "
                         "(the model then declares stroke prompts: the session puts strokes in its mask prompt too; "
                         "may be added when resuming)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("average", formatter_class=_HelpFormatter,
                       help="average the weights of several exports of one training run (SWA)")
    p.add_argument("exports", type=Path, nargs="+", help="exported weight files of one run, e.g. its last checkpoints")
    _add_output(p, None, "averaged weights file")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("finetune", formatter_class=_HelpFormatter,
                       help="fine-tune a model (any checkpoint, official ones included)")
    p.add_argument("model", help="registry name or checkpoint path")
    p.add_argument("--data", type=Path, action="append", required=True, help=data_help)
    _add_output(p, Path("runs/finetune"), "checkpoint, log and finetuned.pt")
    add_device(p)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (cumulative over resumes)")
    p.add_argument("--trainable", choices=["all", "decoder", "adapters"], default="decoder",
                   help="decoder = prompt encoder + mask decoder only (the image encoder stays frozen); "
                        "adapters = small zero-initialised adapters on a frozen base, finetuned.pt is then "
                        "an adapter file naming its base (load it with load_model / --model as usual)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its checkpoint")
    p.set_defaults(func=cmd_finetune)


# ---------------------------------------------------------------- parser
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where the help text already names it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = any(action.default is value for value in (None, False, argparse.SUPPRESS))  # 0 is a default
        if "default" in text or hidden or not action.option_strings:
            return text
        return super()._get_help_string(action)


def _add_server(parser: argparse.ArgumentParser) -> None:
    """--server/--token-file/--ca-file: run on a ``samvolseg serve`` server instead of a local model."""
    parser.add_argument("--server", default=None, metavar="URL",
                        help="run on a samvolseg serve server (e.g. https://gpu-box:8765) with its model, instead of "
                             "--model here; needs pip install 'samvolsegment[client]'")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file whose first line is the server's token (or set $SAMVOLSEG_SERVER_TOKEN)")
    parser.add_argument("--ca-file", type=Path, default=None,
                        help="the server's certificate (self-signed) or CA bundle, to check an https server")


def _remote_backend(args: argparse.Namespace) -> Any:
    """The :class:`~SAMVolSegmentLib.remote.client.RemoteBackend` of --server, checked (None without it).

    Raises:
        InvalidPromptError: --model/--device given with --server, or a --token-file/--ca-file without it.
        ServerConfigError: an unreadable or too-short token, or a missing --ca-file.
        ServerUnavailableError, AuthenticationError, ProtocolMismatchError: the server cannot be used.
    """
    if args.server is None:
        if args.token_file is not None or args.ca_file is not None:
            raise InvalidPromptError("--token-file and --ca-file are for a server: give --server URL too.")
        return None
    if args.model != "default" or args.device != "cpu":
        raise InvalidPromptError("With --server the server's model runs where the server put it: drop --model and "
                                 "--device (choose them in samvolseg serve).")
    from ..errors import ServerConfigError
    from ..remote.cli import resolve_token

    try:
        from ..remote.client import RemoteBackend
    except ImportError as exc:
        raise ServerConfigError(f"--server needs the client extra ({exc.name} is missing): pip install "
                                "'samvolsegment[client]'.") from None

    if args.ca_file is not None and not args.ca_file.is_file():
        raise ServerConfigError(f"--ca-file {args.ca_file} is not a file.")
    token = resolve_token(None, args.token_file)
    backend = RemoteBackend(args.server, token, str(args.ca_file) if args.ca_file is not None else True)
    try:
        with backend.open_session() as session:  # connection, token and certificate checked before any work
            print(f"server {args.server}: model {session.model_id}")
    except AuthenticationError:
        if token is not None:
            raise
        from ..remote.cli import TOKEN_ENV

        raise AuthenticationError(f"The server at {args.server} requires a token: give --token-file FILE (or set "
                                  f"${TOKEN_ENV}) with the value of its --token / --token-file.") from None
    return backend


def _add_output(parser: argparse.ArgumentParser, default: Optional[Path], help_text: str) -> None:
    parser.add_argument("--output", "-o", type=Path, default=default, required=default is None, help=help_text)
    # The old spelling of the output folder flag, kept working but no longer advertised.
    parser.add_argument("--out", dest="output", type=Path, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every subcommand with its options and help."""
    parser = argparse.ArgumentParser(prog="samvolseg", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    p = add("segment", help="segment an image from clicks, scribbles or lassos in a file",
            description="Segment IMAGE from the prompts in --points and write the mask with IMAGE's geometry. "
                        "The box, lassos, scribbles and clicks are applied in that order.")
    p.add_argument("image", help=IMAGE_HELP)
    p.add_argument("--points", default=None,
                   help="Slicer .mrk.json (LPS or RAS; point lists are clicks, a Curve a scribble, a ClosedCurve a "
                        "lasso, a ROI the box; negative = name/label/description starting with 'neg'), "
                        "JSON {'points': [{'ras': [r,a,s], 'positive': true}], 'box_ras': [[..],[..]], "
                        "'scribbles': [{'ras': [[r,a,s],..], 'positive': false}], 'lassos': [{'ras': [..]}]} "
                        "or CSV r,a,s,positive; RAS mm; at least one positive prompt (or a box); at most "
                        f"{MAX_CLICKS} points")
    _add_output(p, None, f"mask file; format from the extension ({', '.join(MASK_SUFFIXES)})")
    p.add_argument("--box", nargs=6, type=float, metavar=("R0", "A0", "S0", "R1", "A1", "S1"),
                   help="box prompt: two opposite corners in RAS mm (overrides a box in --points)")
    p.add_argument("--auto", default=None, metavar="CLASS",
                   help="start from the model's prompt-free proposal of CLASS (a model made by samvolseg teach); "
                        "--points, optional then, correct it")
    p.add_argument("--series", default=None, help=SERIES_HELP)
    p.add_argument("--model", default="default", help="registry name (samvolseg models list) or checkpoint path")
    add_device(p)
    _add_server(p)
    add_threads(p)
    p.set_defaults(func=cmd_segment)

    p = add("batch", help="segment many cases from saved prompts (resumable; local processes or Dask)",
            description="Segment every row of MANIFEST (CSV: image,prompts,output[,label,label_value,auto]; relative "
                        "paths from the manifest's folder; an image may be a DICOM series folder). Outputs that "
                        "exist are skipped, so rerunning resumes; masks are written atomically; a failing case is "
                        "recorded and the others go on. Writes a JSON report (per-case status, error, seconds, "
                        "stage timings, Dice with a label) and ends with a summary line; exit 1 if a case failed.")
    p.add_argument("manifest", type=Path,
                   help="CSV manifest with the columns image,prompts,output[,label,label_value,auto]; a row with an "
                        "auto class starts from the model's proposal of it (its prompts may then be empty)")
    p.add_argument("--model", default="default", help="registry name or checkpoint path (loaded once per worker)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (1: serial in this process)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask distributed cluster (e.g. tcp://host:8786; needs "
                        "pip install 'samvolsegment[batch]'); the workers must see the same paths")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker process (default: CPU cores // --workers with local workers, "
                        "torch's own default otherwise)")
    p.add_argument("--report", type=Path, default=None,
                   help="JSON report path (default: <manifest name>.report.json beside the manifest)")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_device(p)
    _add_server(p)
    p.set_defaults(func=cmd_batch)

    p = add("evaluate", help="click-simulation evaluation on labelled cases",
            description="Simulated clicks (deepest point of the target, then of the largest error) on labelled "
                        "cases; Dice and HD95 after each click for the model and a region-growing baseline; "
                        "writes clicks.csv, summary.json, dice_vs_clicks.png. --protocol lasso / scribbles: drawn prompts "
                        "(a simulated lasso, then clicks; simulated scribbles) with the same tables and plot.")
    p.add_argument("data", type=Path,
                   help="folder of <case>/image.* + label.* folders (image may be a DICOM series folder), or a CSV "
                        "manifest image,label[,label_value]")
    p.add_argument("--model", default="default", help="registry name, checkpoint path, or 'none' (baseline only)")
    p.add_argument("--clicks", type=int, default=10,
                   help="prompts per target in the clicks, lasso and scribbles protocols (lasso: the lasso and "
                        "CLICKS-1 clicks; scribbles: CLICKS scribbles)")
    _add_output(p, Path("samvolseg-eval"), "output folder")
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
    p.add_argument("--protocol", choices=list(EVALUATE_PROTOCOLS), default="clicks",
                   help="clicks: --clicks clicks from the target's deepest point (clicks.csv, summary.json); "
                        "cvpr25: the CVPR 2025 interactive challenge's box + 5 clicks with DSC/NSD (2 mm) per step "
                        "and their AUCs (cvpr25_steps.csv, cvpr25_cases.csv, cvpr25_summary.json); both: clicks and "
                        "cvpr25; lasso: a lasso on the target's largest axial cross-section, then clicks "
                        "(lasso.csv, lasso_summary.json); scribbles: a scribble inside the target, then scribbles "
                        "in the largest error (scribbles.csv, scribbles_summary.json); strokes: lasso and scribbles; "
                        "all: all four. Region growing gets a stroke's clicks as seeds and its drawn voxels as "
                        "fixed")
    p.add_argument("--lasso-margin", type=int, default=0,
                   help="lasso protocol: outline the cross-section dilated (> 0) or eroded (< 0) by this many voxels "
                        "(a user who draws outside or inside the border; default 0: the exact outline)")
    p.add_argument("--lasso-jitter", type=float, default=0.0, metavar="MM",
                   help="lasso protocol: move every vertex by in-plane Gaussian noise of this standard deviation (mm; "
                        "seeded per target, reproducible; default 0)")
    p.add_argument("--box-mode", choices=["clip", "initial"], default="clip",
                   help="cvpr25: the session clips the mask to the challenge's box; clip: for every step (default; "
                        "the challenge keeps its box in the input), initial: lift the clip before the first click")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--coarse-context", action="store_true",
                   help="sessions with coarse_context: the first prompt also runs on a 3 mm ROI (384 mm field) for "
                        "structures larger than one ROI (an experiment of issue 22)")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=cmd_evaluate)

    p = add("demo", help="segment a generated CT phantom with simulated clicks (no data needed)",
            description="Generate a CT-like abdominal phantom with its reference label map (deterministic, "
                        "offline), segment the target with clicks simulated from the reference, print Dice per "
                        "click next to a region-growing baseline on the same clicks, and write the mask, the "
                        "per-click CSV/JSON, a Dice-vs-clicks plot and an overlay PNG. --sample NAME does the same "
                        "on a public labelled case (downloaded once, SHA-256 checked, cached); --image/--label on "
                        "your own case.")
    p.add_argument("--model", default="default", help="registry name or checkpoint path")
    p.add_argument("--clicks", type=int, default=5, help="1 click, then up to this many in total (1-20)")
    _add_output(p, Path("samvolseg-demo"), f"output folder for the phantom, {DEMO_MASK}, the plots and tables")
    p.add_argument("--target", default=None,
                   help=f"phantom structure to segment: {', '.join(sorted(PHANTOM_LABELS))} (default "
                        f"{DEFAULT_TARGET}); with --sample: one of its segments (default: the sample's)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (surface shapes, bowel, noise)")
    p.add_argument("--sample", default=None, metavar="NAME",
                   help="a public labelled case instead of the phantom, downloaded on first use into the cache "
                        "($SAMVOLSEG_CACHE, default ~/.cache/samvolsegment); see --list-samples")
    p.add_argument("--list-samples", action="store_true", help="list the registered samples and exit")
    p.add_argument("--image", default=None, help="your own image instead of the phantom (file or DICOM folder)")
    p.add_argument("--label", default=None, help="with --image: its reference label map on the same grid")
    p.add_argument("--label-value", type=int, default=None,
                   help="with --label: the target's label value (default: label > 0)")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=cmd_demo)

    p = add("models", help="list or download models")
    models = p.add_subparsers(dest="action", metavar="ACTION")
    models.required = True
    models.add_parser("list", help="registered models and whether they are on this machine")
    download = models.add_parser("download", help="download a registered model into the cache dir")
    download.add_argument("name", help="e.g. sam-med3d-turbo (samvolseg models list)")
    p.set_defaults(func=cmd_models)

    _add_training_commands(sub)
    from .teach import register_cli as register_teach  # teach: adapters + proposals for one structure

    register_teach(sub)
    from ..remote.cli import register_cli as register_serve  # serve: options live with the server code

    register_serve(sub)
    return parser


def version_text() -> str:
    """``samvolseg X (torch Y, Python Z)``; torch's version read without importing it (fast)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return f"samvolseg {__version__} (torch {torch_version}, Python {sys.version.split()[0]})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 error with a message on stderr, 130 interrupted, 143 / 129
    stopped by SIGTERM / SIGHUP).

    Called without ``argv`` (the ``samvolseg`` program), an interrupt or stop signal unwinds the work (a batch
    stops its workers, temporaries are removed) and ends the process with exit code 128 + signal and one line, also during start-up and after the work: the interpreter would otherwise wait for
    background threads at exit, or print a traceback for a Ctrl-C that lands while it shuts down.
    """
    program = argv is None and _take_interrupts()
    try:
        _work_running[0] = True  # from here a Ctrl-C unwinds the work (temporaries are removed) to the except
        args = build_parser().parse_args(argv)
        apply_threads(getattr(args, "threads", None))  # before any model: every Predictor reads it
        return int(args.func(args) or 0)
    except (SAMVolSegmentError, OSError) as exc:  # OSError: a file vanished or a disk filled up meanwhile
        _work_running[0] = False  # first statement: no Ctrl-C can be raised between the try and here
        print(f"samvolseg: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        _work_running[0] = False
        if exc.name != "torch":
            raise
        # A client-only install (pip install 'samvolsegment[client]') has no torch: only --server runs there.
        print("samvolseg: error: this command runs a model on this machine and needs torch, which is not installed: "
              "pip install 'samvolsegment[torch]' (install torch for your platform first, see the README), or "
              "run on a server with --server URL (segment, batch).", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or StopRequested (SIGTERM, SIGHUP): the work has unwound
        _work_running[0] = False
        signum = int(getattr(exc, "signum", 2))
        if program:
            _exit_interrupted(signum)
        print(_stop_line(signum), file=sys.stderr)
        return 128 + signum
    finally:
        _work_running[0] = False  # the work is done or refused: a Ctrl-C from here on exits at once


#: Whether the program's work is running (a Ctrl-C raises KeyboardInterrupt) or over (a Ctrl-C exits at once).
_work_running = [False]


def _take_interrupts() -> bool:
    """Install the program's SIGINT handler (main thread only, and not where SIGINT is ignored); True if done.

    Installed before the work rather than after it: ``signal.signal`` raises a KeyboardInterrupt still pending
    from the work, which then escaped ``main`` as a traceback (exit -2).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False
    # SIGTERM (kill, a scheduler) and SIGHUP (the terminal closed) unwind the work like a Ctrl-C, so a batch
    # stops its worker processes and removes its temporaries; where they are not at their default action (an
    # embedding program's handler, nohup) they are left alone.
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            signal.signal(number, _on_stop)
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False  # ignored (a background job) or the embedding program's own handler: leave it
    signal.signal(signal.SIGINT, _on_interrupt)
    return True


def _on_interrupt(signum: int, frame: object) -> None:
    """The program's SIGINT handler: unwind the running work, or exit at once when there is none."""
    if _work_running[0]:
        raise KeyboardInterrupt
    _exit_interrupted()


def _on_stop(signum: int, frame: object) -> None:
    """The program's SIGTERM/SIGHUP handler: unwind the running work, or exit at once when there is none."""
    from ..errors import StopRequested

    if _work_running[0]:
        _work_running[0] = False  # a second signal while the work unwinds exits at once
        raise StopRequested(signum)
    _exit_interrupted(signum)


def _stop_line(signum: int) -> str:
    """``samvolseg: interrupted`` (Ctrl-C) or ``samvolseg: stopped (SIGTERM)``."""
    from ..errors import StopRequested

    return "samvolseg: interrupted" if signum == 2 else f"samvolseg: stopped ({StopRequested(signum).name})"


def _exit_interrupted(signum: int = 2) -> None:
    """One line on stderr and exit 128 + signum (130 for Ctrl-C) now, without waiting for threads (the program
    only, never a caller)."""
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say on it
            pass
    try:
        print(_stop_line(signum), file=sys.stderr, flush=True)
    finally:
        os._exit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
