"""``samvolseg teach``: teach the model one structure from a folder of labelled cases.

One resumable command, in an output folder:

1. ``split.json``: the cases matching ``--cases``, split once (seeded) into training and held-out cases; a rerun
   reuses it, so reported cases never leak into training.
2. Adapters (3DSAM-adapter style, :mod:`.model.adapters`) trained with simulated clicks on the training cases
   (``adapters/``: checkpoint and log; resumes).
3. A prompt-free proposal head (:mod:`.proposals`) trained on the adapted model's cached embeddings.
4. ``structure.pt``: one small file with both, naming its base model; load it as any model
   (``--model structure.pt``, ``load_model``), ``segment --auto CLASS`` and ``InteractiveSession.propose``.
5. ``results.json`` and ``card.md``: base vs adapted Dice after 1 and 3 clicks, proposal Dice with 0, 1 and 2
   corrective clicks, proposal time, on the held-out cases plus any ``--report`` cases.

Heavy imports (numpy, torch) happen inside the functions so that ``samvolseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SPLIT_FILE = "split.json"
STRUCTURE_FILE = "structure.pt"


def register_cli(sub: Any) -> None:
    """Add ``teach`` to the CLI's subparsers."""
    p = sub.add_parser(
        "teach", help="teach the model one structure: adapters + a prompt-free proposal head (resumable)",
        description="Train adapters and a proposal head for one structure on labelled cases, keeping a held-out "
                    "split for the report. Writes split.json, structure.pt (load it with --model), results.json "
                    "and card.md in --output; rerun the same command to resume.")
    p.add_argument("--data", type=Path, action="append", required=True,
                   help="folder of <case>/image.* + label.* folders; repeat for several")
    p.add_argument("--cases", default="*", help="shell pattern of the case folder names to use (e.g. "
                                                "'mr_msd_hippocampus_*')")
    p.add_argument("--class", dest="class_name", required=True, help="name of the structure (e.g. hippocampus)")
    p.add_argument("--label", type=int, default=None,
                   help="label value of the structure (default: every non-zero voxel)")
    p.add_argument("--model", default="default", help="base model: registry name or checkpoint path (clicknet2)")
    p.add_argument("--output", "-o", type=Path, required=True, help="output folder (resumes what is there)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of the cases kept out of training")
    p.add_argument("--report", type=Path, action="append", default=[],
                   help="extra labelled case folder(s) to report on (never trained on); repeat for several")
    p.add_argument("--adapter-minutes", type=float, default=8.0, help="adapter training budget (0: no adapters)")
    p.add_argument("--proposal-minutes", type=float, default=5.0, help="proposal head training budget")
    p.add_argument("--repeats", type=int, default=4, help="jittered proposal ROIs per training case")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of every random choice")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    from .cli import _add_device  # the CLI's one --device option (cli imports this module to register it)

    _add_device(p)
    p.set_defaults(func=cmd_teach)


# ---------------------------------------------------------------- split
def case_folders(data_dirs: Sequence[Path], pattern: str) -> List[Path]:
    """Case folders (``image.*`` + ``label.*``) under ``data_dirs`` whose name matches ``pattern``, sorted."""
    folders: List[Path] = []
    for data_dir in data_dirs:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"{data_dir} is not a folder of case folders.")
        for folder in sorted(p for p in Path(data_dir).iterdir() if p.is_dir()):
            if fnmatch.fnmatch(folder.name, pattern) and any(folder.glob("image.*")) and any(folder.glob("label.*")):
                folders.append(folder)
    if not folders:
        raise FileNotFoundError(f"No case folder matching {pattern!r} (with image.* and label.*) in "
                                f"{', '.join(str(d) for d in data_dirs)}.")
    return folders


def load_or_make_split(output: Path, folders: Sequence[Path], holdout: float, seed: int) -> Dict[str, List[str]]:
    """``{"train": [...], "heldout": [...]}`` of case folder paths; made once and reused by later runs.

    Raises:
        ValueError: fewer than two cases, or a holdout fraction outside (0, 1).
    """
    import numpy as np

    path = output / SPLIT_FILE
    if path.is_file():
        return json.loads(path.read_text())
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"--holdout must be between 0 and 1, got {holdout}.")
    if len(folders) < 2:
        raise ValueError(f"Only {len(folders)} case matches: teaching needs at least two (one to hold out).")
    order = np.random.default_rng(seed).permutation(len(folders))
    count = min(len(folders) - 1, max(1, int(round(holdout * len(folders)))))
    heldout = sorted(str(folders[i]) for i in order[:count])
    split = {"train": sorted(str(f) for f in folders if str(f) not in heldout), "heldout": heldout}
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1))
    return split


# ---------------------------------------------------------------- stages
def train_adapters(base: str, train_folders: Sequence[str], label: Optional[int], output: Path, minutes: float,
                   seed: int, device: str) -> Path:
    """Adapters on the training cases (their structure as the only target); returns the adapter file."""
    import numpy as np

    from .model import load_model
    from .training import train
    from .training_data import SampleSource, load_cases

    cases = load_cases([Path(f) for f in train_folders], allow_non_commercial=True)
    for case in cases:  # the structure is the one target: the union of its values, or the chosen one
        values = tuple(int(v) for v in np.unique(case.labels_model) if v != 0 and (label is None or v == label))
        case.targets = [(f"{case.name}:target", values)] if values else []
    cases = [c for c in cases if c.targets]
    model = load_model(base)
    export = output / "adapters.pt"
    train(model, SampleSource(cases, synthesis_fraction=0.0, blob_fraction=0.0), output / "adapters", minutes,
          seed, export=export, resume=True, trainable="adapters", lr=1e-3, device=device)
    return export


def read_case(folder: str, label: Optional[int]):
    """(Volume, binary label (k, j, i)) of a case folder."""
    import SimpleITK as sitk

    from .preprocessing import load_volume, read_image

    folder_path = Path(folder)
    volume = load_volume(read_image(sorted(folder_path.glob("image.*"))[0]))
    label_kji = sitk.GetArrayFromImage(read_image(sorted(folder_path.glob("label.*"))[0]))
    return volume, (label_kji > 0) if label is None else (label_kji == label)


def train_head(model_source: str, train_folders: Sequence[str], args: argparse.Namespace) -> Dict[str, float]:
    """Proposal head on the (adapted) model; writes ``structure.pt``."""
    import numpy as np

    from .model import load_model
    from .model.adapters import save_adapters
    from .proposals import build_samples, train_proposal_head

    model = load_model(model_source, device=args.device)  # base (+ adapters): save_adapters names that base
    rng = np.random.default_rng(args.seed)
    cases = [read_case(f, args.label) for f in train_folders]
    print(f"teach: embedding {len(cases)} training cases × {args.repeats} proposal ROIs", flush=True)
    samples = build_samples(model, cases, args.repeats, rng)
    print(f"teach: training the proposal head for {args.proposal_minutes:g} min on {len(samples)} ROIs", flush=True)
    result = train_proposal_head(model, samples, args.class_name, minutes=args.proposal_minutes, seed=args.seed)
    save_adapters(model, args.output / STRUCTURE_FILE, meta={"class": args.class_name, **result})
    return result


# ---------------------------------------------------------------- report
def click_dice(model: Any, folder: str, label: Optional[int], clicks: int) -> List[float]:
    """Dice after 1..clicks simulated clicks (deepest point, then largest error) on one case."""
    import numpy as np

    from .evaluation import first_click, index_to_ras, next_click
    from .metrics import dice
    from .session import InteractiveSession

    volume, target = read_case(folder, label)
    spacing_kji = tuple(float(v) for v in volume.geometry.spacing[::-1])
    scores: List[float] = []
    with InteractiveSession(model) as session:
        session.set_volume(volume.array_kji, volume.geometry.ijk_to_ras)
        mask = np.zeros_like(target)
        for n in range(clicks):
            click = first_click(target, spacing_kji) if n == 0 else next_click(target, mask, spacing_kji)
            if click is None:
                scores.append(scores[-1])
                continue
            session.add_click(index_to_ras(volume.geometry, click[0]), click[1])
            mask = session.mask_array_kji() > 0
            scores.append(float(dice(mask, target)))
    return scores


def proposal_dice(model: Any, folder: str, label: Optional[int], class_name: str, corrections: int = 2):
    """(Dice after the proposal and after each corrective click, proposal seconds) on one case."""
    from .errors import InvalidPromptError
    from .evaluation import index_to_ras, next_click
    from .metrics import dice
    from .session import InteractiveSession

    volume, target = read_case(folder, label)
    spacing_kji = tuple(float(v) for v in volume.geometry.spacing[::-1])
    with InteractiveSession(model) as session:
        session.set_volume(volume.array_kji, volume.geometry.ijk_to_ras)
        session.wait_until_ready()
        try:
            session.propose(class_name)
        except InvalidPromptError:  # nothing proposed: the user starts from an empty mask
            pass
        propose_s = float(session.last_timing.get("propose_s", float("nan")))
        mask = session.mask_array_kji() > 0
        scores = [float(dice(mask, target))]
        for _ in range(corrections):
            click = next_click(target, mask, spacing_kji)
            if click is not None:
                session.add_click(index_to_ras(volume.geometry, click[0]), click[1])
                mask = session.mask_array_kji() > 0
            scores.append(float(dice(mask, target)))
    return scores, propose_s


def report(args: argparse.Namespace, split: Dict[str, List[str]], adapter_file: Optional[Path]) -> Dict[str, Any]:
    import numpy as np

    from .model import load_model

    folders = [*split["heldout"], *(str(p) for p in args.report)]
    base = load_model(args.model, device=args.device)
    structure = load_model(str(args.output / STRUCTURE_FILE), device=args.device)
    adapted = structure if adapter_file is not None else None  # clicks never use the head
    rows = []
    for index, folder in enumerate(folders):
        row: Dict[str, Any] = {"case": Path(folder).name, "heldout": folder in split["heldout"],
                               "base_dice": click_dice(base, folder, args.label, 3)}
        if adapted is not None:
            row["adapted_dice"] = click_dice(adapted, folder, args.label, 3)
        row["proposal_dice"], row["propose_s"] = proposal_dice(structure, folder, args.label, args.class_name)
        rows.append(row)
        print(f"teach: reported {index + 1}/{len(folders)} {row['case']}: base@1 {row['base_dice'][0]:.3f}"
              + (f", adapted@1 {row['adapted_dice'][0]:.3f}" if adapted is not None else "")
              + f", proposal {row['proposal_dice'][0]:.3f} → {row['proposal_dice'][-1]:.3f}", flush=True)

    def mean(key: str, index: int) -> Optional[float]:
        values = [r[key][index] for r in rows if key in r]
        return float(np.mean(values)) if values else None

    summary = {
        "cases": len(rows),
        "base_dice@1": mean("base_dice", 0), "base_dice@3": mean("base_dice", 2),
        "adapted_dice@1": mean("adapted_dice", 0), "adapted_dice@3": mean("adapted_dice", 2),
        "proposal_dice@0": mean("proposal_dice", 0), "proposal_dice@1": mean("proposal_dice", 1),
        "proposal_dice@2": mean("proposal_dice", 2),
        "propose_s_median": float(np.nanmedian([r["propose_s"] for r in rows])) if rows else None,
    }
    return {"summary": summary, "cases": rows}


def _parameter_counts(args: argparse.Namespace, adapter_file: Optional[Path]) -> Dict[str, Any]:
    from .model import load_model

    base = load_model(args.model)
    structure = load_model(str(args.output / STRUCTURE_FILE))
    base_count = sum(p.numel() for p in base.parameters())
    trained = sum(p.numel() for n, p in structure.named_parameters() if "adapter" in n.split(".")
                  or n.startswith("proposal_head."))
    from .weights import resolve_model_path

    return {"base_parameters": base_count, "trained_parameters": trained,
            "trained_fraction": trained / base_count,
            "structure_file_bytes": (args.output / STRUCTURE_FILE).stat().st_size,
            "base_file_bytes": resolve_model_path(args.model).stat().st_size,
            "adapter_file_bytes": adapter_file.stat().st_size if adapter_file is not None else None}


def write_card(args: argparse.Namespace, split: Dict[str, List[str]], results: Dict[str, Any]) -> Path:
    """``card.md``: data, split, budgets, sizes and the results table."""
    s, sizes = results["summary"], results["sizes"]

    def fmt(value: Optional[float]) -> str:
        return "—" if value is None else f"{value:.3f}"

    lines = [
        f"# {args.class_name}: adapters + proposal head on {args.model}", "",
        f"Made by `samvolseg teach` ({time.strftime('%Y-%m-%d %H:%M')}); seed {args.seed}.", "",
        "## Data", "",
        f"* training: {len(split['train'])} cases ({', '.join(Path(f).name for f in split['train'][:6])}"
        f"{', …' if len(split['train']) > 6 else ''})",
        f"* held out (never trained on): {', '.join(Path(f).name for f in split['heldout'])}",
        f"* extra report cases: {', '.join(p.name for p in args.report) or 'none'}",
        f"* target: {'label > 0' if args.label is None else f'label == {args.label}'}", "",
        "## Budget and size", "",
        f"* adapters {args.adapter_minutes:g} min, proposal head {args.proposal_minutes:g} min "
        f"({results['head']['steps']:.0f} steps), threads {args.threads}",
        f"* trained parameters: {sizes['trained_parameters']:,} of the base's {sizes['base_parameters']:,} "
        f"({100 * sizes['trained_fraction']:.2f} %); structure file {sizes['structure_file_bytes'] / 1e3:.0f} kB, "
        f"base file {sizes['base_file_bytes'] / 1e3:.0f} kB", "",
        f"## Results ({s['cases']} reported cases, mean Dice)", "",
        "| | click 0 | click 1 | click 2 | click 3 |", "|---|---|---|---|---|",
        f"| base model, clicks only | — | {fmt(s['base_dice@1'])} | | {fmt(s['base_dice@3'])} |",
        f"| with adapters, clicks only | — | {fmt(s['adapted_dice@1'])} | | {fmt(s['adapted_dice@3'])} |",
        f"| proposal + corrective clicks | {fmt(s['proposal_dice@0'])} | {fmt(s['proposal_dice@1'])} | "
        f"{fmt(s['proposal_dice@2'])} | |", "",
        f"Proposal time after the embedding exists: median {1000 * (s['propose_s_median'] or float('nan')):.0f} ms.",
        "Per-case numbers: results.json.", "",
    ]
    path = args.output / "card.md"
    path.write_text("\n".join(lines))
    return path


def cmd_teach(args: argparse.Namespace) -> int:
    import torch

    from .cli import _check_device

    _check_device(args.device)
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    split = load_or_make_split(args.output, case_folders(args.data, args.cases), args.holdout, args.seed)
    print(f"teach: {len(split['train'])} training cases, {len(split['heldout'])} held out ({args.output / SPLIT_FILE})",
          flush=True)
    adapter_file: Optional[Path] = None
    if args.adapter_minutes > 0:
        print(f"teach: adapters for {args.adapter_minutes:g} min", flush=True)
        adapter_file = train_adapters(args.model, split["train"], args.label, args.output, args.adapter_minutes,
                                      args.seed, args.device)
    head_path = args.output / "head.json"
    if head_path.is_file() and (args.output / STRUCTURE_FILE).is_file():
        head = json.loads(head_path.read_text())
        print("teach: proposal head already trained (structure.pt); reporting", flush=True)
    else:
        head = train_head(str(adapter_file) if adapter_file is not None else args.model, split["train"], args)
        head_path.write_text(json.dumps(head))
    results = report(args, split, adapter_file)
    results["head"] = head
    results["sizes"] = _parameter_counts(args, adapter_file)
    (args.output / "results.json").write_text(json.dumps(results, indent=1))
    card = write_card(args, split, results)
    print(f"teach: wrote {args.output / STRUCTURE_FILE}, {card}; summary {json.dumps(results['summary'])}")
    return 0
