"""``samvolseg teach``: the command line of :mod:`SAMVolSegmentLib.tools.teach` (options, then the run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import add_device, check_device


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
    # Defaults: the recipe measured in the README (hippocampus, ~1 hour on a 2-core CPU); less gives less.
    p.add_argument("--proposal-minutes", type=float, default=35.0, help="proposal head training budget (default %(default)g)")
    p.add_argument("--adapter-minutes", type=float, default=25.0, help="decoder adapter training budget (0: none; default %(default)g)")
    # The choices are model.adapters.DECODER_SCOPES (that module imports torch, which `--help` must not).
    p.add_argument("--adapter-scope", choices=("all", "corrections"), default="all",
                   help="clicks the adapter runs on: all (trained on clicks from scratch and corrections of a "
                        "proposal) or only corrections of a proposal (clicks from scratch then stay exactly the "
                        "base model's, e.g. when the file also serves other structures)")
    p.add_argument("--repeats", type=int, default=12, help="jittered proposal ROIs per training case (default %(default)d)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of every random choice")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_device(p)
    p.set_defaults(func=cmd_teach)


def cmd_teach(args: argparse.Namespace) -> int:
    import torch

    from ..tools.teach import STRUCTURE_FILE, run

    check_device(args.device)
    torch.set_num_threads(args.threads)
    results, card = run(args)
    print(f"teach: wrote {args.output / STRUCTURE_FILE}, {card}; summary {json.dumps(results['summary'])}")
    return 0
