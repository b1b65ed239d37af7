"""``samvolseg teach``: teach the model one structure from a folder of labelled cases.

One resumable command, in an output folder:

1. ``split.json``: the cases matching ``--cases``, split once (seeded) into training and held-out cases; a rerun
   reuses it, so reported cases never leak into training.
2. The embeddings of the training cases' proposal ROIs, computed once with the frozen base model.
3. A prompt-free proposal head (:mod:`.proposals`) trained on them (``head.pt``, ``head.json``).
4. A decoder adapter (:mod:`.model.adapters`) trained on the same embeddings with simulated clicks: from
   scratch and correcting the head's proposals (``--adapter-scope all``, the default), or only the latter
   (``corrections``: it then runs only on clicks that correct a proposal, and clicks from scratch stay exactly
   the base model's).
5. ``structure.pt``: one small file with both, naming its base model; load it as any model
   (``--model structure.pt``, ``load_model``), ``segment --auto CLASS`` and ``InteractiveSession.propose``.
6. ``results.json`` and ``card.md``: base vs adapted Dice after 1 and 3 clicks, proposal Dice with 0, 1 and 2
   corrective clicks (with and without the adapter), proposal time, on the held-out cases plus any
   ``--report`` cases. Each stage writes its file, so a rerun skips finished stages.

Heavy imports (numpy, torch) happen inside the functions so that ``samvolseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..progress import make_progress

SPLIT_FILE = "split.json"
HEAD_FILE = "head.pt"
STRUCTURE_FILE = "structure.pt"


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
def evaluation_case(folder: str, label: Optional[int]):
    """The :class:`~SAMVolSegmentLib.tools.evaluation.Case` of a case folder (``image.*``, ``label.*``)."""
    from .evaluation import Case

    folder_path = Path(folder)
    return Case(folder_path.name, sorted(folder_path.glob("image.*"))[0], sorted(folder_path.glob("label.*"))[0],
                label)


def read_case(folder: str, label: Optional[int]):
    """(Volume, binary label (k, j, i)) of a case folder, the label checked to lie on the image's grid."""
    from ..engine.preprocessing import load_volume
    from .evaluation import load_target

    image, target = load_target(evaluation_case(folder, label))
    return load_volume(image), target.astype(bool)


def train_stages(args: argparse.Namespace, train_folders: Sequence[str]) -> Dict[str, Any]:
    """Proposal head, then decoder adapter, on cached embeddings of the training cases' proposal ROIs.

    Each stage ends with a file (``head.pt``: the head alone; ``structure.pt``: head + adapter) and its JSON
    log, so a rerun skips finished stages. Returns the stages' logs.
    """
    import numpy as np
    import torch

    from ..model import load_model
    from ..model.adapters import save_adapters
    from .proposal_training import build_samples, train_decoder_adapter, train_proposal_head

    def with_progress(what: str, run):
        """``run(progress)`` with the CLI's progress display (a bar on a terminal, a line per 10 % in logs)."""
        progress, close = make_progress(f"teach: {what}")
        try:
            return run(progress)
        finally:
            close()

    head_file, structure_file = args.output / HEAD_FILE, args.output / STRUCTURE_FILE
    logs = {name: json.loads((args.output / f"{name}.json").read_text())
            for name in ("head", "adapter") if (args.output / f"{name}.json").is_file()}
    if "adapter" in logs and structure_file.is_file():
        print("teach: head and adapter already trained (structure.pt)", flush=True)
        return logs
    resume_head = "head" in logs and head_file.is_file()
    model = load_model(str(head_file) if resume_head else args.model, device=args.device)
    rng = np.random.default_rng(args.seed)
    cases = [read_case(f, args.label) for f in train_folders]
    print(f"teach: embedding {len(cases)} training cases × {args.repeats} proposal ROIs", flush=True)
    samples = with_progress("embedding", lambda progress, cases=cases: build_samples(model, cases, args.repeats,
                                                                                    rng, progress))
    del cases  # the embeddings are all training needs: free the volumes
    if not resume_head:
        print(f"teach: proposal head, {args.proposal_minutes:g} min on {len(samples)} ROIs", flush=True)
        logs["head"] = with_progress("proposal head", lambda progress: train_proposal_head(
            model, samples, args.class_name, minutes=args.proposal_minutes, seed=args.seed, progress=progress))
        save_adapters(model, head_file, meta={"class": args.class_name, **logs["head"]})
        (args.output / "head.json").write_text(json.dumps(logs["head"]))
    if args.adapter_minutes > 0:
        print(f"teach: decoder adapter, {args.adapter_minutes:g} min (scope: {args.adapter_scope})", flush=True)
        torch.manual_seed(args.seed)
        logs["adapter"] = with_progress("adapter", lambda progress: train_decoder_adapter(
            model, samples, minutes=args.adapter_minutes, seed=args.seed, scope=args.adapter_scope,
            progress=progress))
    else:
        logs["adapter"] = {"steps": 0.0, "minutes": 0.0}
    save_adapters(model, structure_file, meta={"class": args.class_name, **logs["adapter"]})
    (args.output / "adapter.json").write_text(json.dumps(logs["adapter"]))
    return logs


# ---------------------------------------------------------------- report
def click_dice(model: Any, folder: str, label: Optional[int], clicks: int) -> List[float]:
    """Dice after 1..clicks simulated clicks on one case: the evaluation's click protocol, model only."""
    from ..engine.session import InteractiveSession
    from .evaluation import simulate_case

    with InteractiveSession(model) as session:
        rows = simulate_case(session, evaluation_case(folder, label), clicks, with_baseline=False)
    return [float(row.dice) for row in rows]


def proposal_dice(model: Any, folder: str, label: Optional[int], class_name: str, corrections: int = 2):
    """(Dice after the proposal and after each corrective click, proposal seconds) on one case."""
    from ..engine.clicks import next_click
    from ..engine.metrics import dice
    from ..engine.session import InteractiveSession
    from ..errors import InvalidPromptError

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
                session.add_click(volume.geometry.index_to_ras(click[0]), click[1])
                mask = session.mask_array_kji() > 0
            scores.append(float(dice(mask, target)))
    return scores, propose_s


def report(args: argparse.Namespace, split: Dict[str, List[str]]) -> Dict[str, Any]:
    """Dice per reported case: the base model's clicks, the adapted model's clicks, and the proposal with
    corrective clicks, without (``head.pt``) and with the adapter (``structure.pt``)."""
    import numpy as np

    from ..model import load_model

    folders = [*split["heldout"], *(str(p) for p in args.report)]
    base = load_model(args.model, device=args.device)
    head_only = load_model(str(args.output / HEAD_FILE), device=args.device)
    structure = load_model(str(args.output / STRUCTURE_FILE), device=args.device)
    adapted = args.adapter_minutes > 0
    rows = []
    for index, folder in enumerate(folders):
        row: Dict[str, Any] = {"case": Path(folder).name, "heldout": folder in split["heldout"],
                               "base_dice": click_dice(base, folder, args.label, 3)}
        row["head_proposal_dice"], row["propose_s"] = proposal_dice(head_only, folder, args.label, args.class_name)
        if adapted:
            row["adapted_dice"] = click_dice(structure, folder, args.label, 3)
            row["proposal_dice"], _ = proposal_dice(structure, folder, args.label, args.class_name)
        rows.append(row)
        proposal = row.get("proposal_dice", row["head_proposal_dice"])
        print(f"teach: reported {index + 1}/{len(folders)} {row['case']}: base@1 {row['base_dice'][0]:.3f}"
              + (f", adapted@1 {row['adapted_dice'][0]:.3f}" if adapted else "")
              + f", proposal {proposal[0]:.3f} → {proposal[-1]:.3f} after 2 corrections", flush=True)

    def mean(key: str, index: int) -> Optional[float]:
        values = [r[key][index] for r in rows if key in r]
        return float(np.mean(values)) if values else None

    times = [r["propose_s"] for r in rows if np.isfinite(r["propose_s"])]  # NaN: nothing proposed on that case
    summary = {"cases": len(rows), "propose_s_median": float(np.median(times)) if times else None}
    for key, clicks in (("base_dice", (1, 3)), ("adapted_dice", (1, 3)), ("head_proposal_dice", (0, 1, 2)),
                        ("proposal_dice", (0, 1, 2))):
        first = 0 if "proposal" in key else 1  # proposal lists start at 0 clicks, click lists at 1
        for n in clicks:
            summary[f"{key}@{n}"] = mean(key, n - first)
    return {"summary": summary, "cases": rows}


def _sizes(args: argparse.Namespace) -> Dict[str, Any]:
    """Parameter counts (trained vs base) and file sizes."""
    from ..model import load_model
    from ..model.adapters import is_adapter_parameter
    from ..model.registry import resolve_model_path

    base = load_model(args.model)
    structure = load_model(str(args.output / STRUCTURE_FILE))
    base_count = sum(p.numel() for p in base.parameters())
    adapter = sum(p.numel() for n, p in structure.named_parameters() if is_adapter_parameter(n))
    head = sum(p.numel() for n, p in structure.named_parameters() if n.startswith("proposal_head."))
    # The scope the file was trained with, whatever a rerun's options say (None: no adapter).
    scope = getattr(getattr(structure, "adapter_config", None), "clicknet2_decoder_scope", None)
    return {"base_parameters": base_count, "adapter_parameters": adapter, "head_parameters": head,
            "adapter_scope": scope,
            "trained_fraction": (adapter + head) / base_count,
            "structure_file_bytes": (args.output / STRUCTURE_FILE).stat().st_size,
            "base_file_bytes": resolve_model_path(args.model).stat().st_size}


def write_card(args: argparse.Namespace, split: Dict[str, List[str]], results: Dict[str, Any]) -> Path:
    """``card.md``: data, split, budgets, sizes and the results table."""
    s, sizes, logs = results["summary"], results["sizes"], results["training"]

    def fmt(value: Optional[float]) -> str:
        return "—" if value is None else f"{value:.3f}"

    def row(name: str, key: str, clicks: Sequence[int]) -> str:
        return f"| {name} | " + " | ".join(fmt(s.get(f"{key}@{n}")) if n in clicks else "" for n in range(4)) + " |"

    lines = [
        f"# {args.class_name}: proposal head + decoder adapter on {args.model}", "",
        f"Made by `samvolseg teach` ({time.strftime('%Y-%m-%d %H:%M')}); seed {args.seed}.", "",
        "## Data", "",
        f"* training: {len(split['train'])} cases ({', '.join(Path(f).name for f in split['train'][:6])}"
        f"{', …' if len(split['train']) > 6 else ''}), {args.repeats} jittered proposal ROIs each",
        f"* held out (never trained on): {', '.join(Path(f).name for f in split['heldout'])}",
        f"* extra report cases: {', '.join(p.name for p in args.report) or 'none'}",
        f"* target: {'label > 0' if args.label is None else f'label == {args.label}'}", "",
        "## Budget and size", "",
        f"* proposal head {args.proposal_minutes:g} min ({logs['head']['steps']:.0f} steps), decoder adapter "
        f"{args.adapter_minutes:g} min ({logs['adapter']['steps']:.0f} steps, scope {sizes['adapter_scope']}), "
        f"{args.threads} thread(s)",
        f"* trained parameters: {sizes['head_parameters']:,} (head) + {sizes['adapter_parameters']:,} (adapter) = "
        f"{100 * sizes['trained_fraction']:.1f} % of the base's {sizes['base_parameters']:,}; structure file "
        f"{sizes['structure_file_bytes'] / 1e3:.0f} kB, base file {sizes['base_file_bytes'] / 1e3:.0f} kB", "",
        f"## Results ({s['cases']} reported cases, mean Dice after N clicks)", "",
        "| | 0 | 1 | 2 | 3 |", "|---|---|---|---|---|",
        row("base model, clicks", "base_dice", (1, 3)),
        row("with the adapter, clicks", "adapted_dice", (1, 3)),
        row("proposal (head only) + corrections", "head_proposal_dice", (0, 1, 2)),
        row("proposal + corrections with the adapter", "proposal_dice", (0, 1, 2)), "",
        (f"Proposal time once the embedding exists: median {1000 * s['propose_s_median']:.0f} ms. "
         if s["propose_s_median"] is not None else "The head proposed nothing on any reported case. ")
        + "Per-case numbers: results.json.", "",
    ]
    path = args.output / "card.md"
    path.write_text("\n".join(lines))
    return path


# ---------------------------------------------------------------- the whole run
def run(args: argparse.Namespace) -> Tuple[Dict[str, Any], Path]:
    """Split, train (or resume), report and write the card in ``args.output`` (the options of ``samvolseg
    teach``). Returns the results (also written to ``results.json``) and the card's path."""
    args.output.mkdir(parents=True, exist_ok=True)
    split = load_or_make_split(args.output, case_folders(args.data, args.cases), args.holdout, args.seed)
    print(f"teach: {len(split['train'])} training cases, {len(split['heldout'])} held out ({args.output / SPLIT_FILE})",
          flush=True)
    logs = train_stages(args, split["train"])
    results = report(args, split)
    results["training"] = logs
    results["sizes"] = _sizes(args)
    (args.output / "results.json").write_text(json.dumps(results, indent=1))
    return results, write_card(args, split, results)
