"""Speed of a taught structure's proposal on the CPU (not a test): the time ``InteractiveSession.propose`` spends
once the embedding exists (``last_timing["propose_s"]``: the proposal head and the largest-component step).

For each case folder (``image.*``; no label needed) and each thread count: a fresh session, the volume set and
encoded, then the first proposal (what a user waits for after *Propose*) and ``--repeats`` more (each undone
first, so the embedding is cached and only the head runs). The whole step (paste-back and history included) is
recorded too.

Writes ``benchmarks/results/proposal_speed.json`` and ``.md``. Run::

    python benchmarks/proposal_speed.py runs/hippocampus/structure.pt hippocampus \\
        ../shared/data/mr_msd_hippocampus_003 --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from SAMVolSegmentLib.engine.preprocessing import load_volume, read_image
from SAMVolSegmentLib.engine.session import InteractiveSession
from SAMVolSegmentLib.model import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def time_case(model, folder: Path, class_name: str, repeats: int) -> Dict[str, List[float]]:
    volume = load_volume(read_image(sorted(folder.glob("image.*"))[0]))
    head_s: List[float] = []
    step_s: List[float] = []
    with InteractiveSession(model) as session:
        session.set_volume(volume.array_kji, volume.geometry.ijk_to_ras)
        session.wait_until_ready()
        for _ in range(repeats + 1):
            start = time.perf_counter()
            session.propose(class_name)
            step_s.append(time.perf_counter() - start)
            head_s.append(float(session.last_timing["propose_s"]))
            session.undo()
    return {"propose_s": head_s, "step_s": step_s}  # step_s[0] includes encoding the region


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="structure file written by `samvolseg teach` (or any model with a head)")
    parser.add_argument("class_name", help="the structure to propose")
    parser.add_argument("cases", nargs="+", type=Path, help="case folders with image.*")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--repeats", type=int, default=5, help="proposals after the first, per case")
    args = parser.parse_args()
    model = load_model(args.model)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        first, later, steps = [], [], []
        for folder in args.cases:
            timed = time_case(model, folder, args.class_name, args.repeats)
            first.append(timed["propose_s"][0])
            later.extend(timed["propose_s"][1:])
            steps.extend(timed["step_s"][1:])
        rows.append({"threads": threads, "first_median_s": float(np.median(first)), "first_s": first,
                     "repeat_median_s": float(np.median(later)), "repeat_p95_s": float(np.percentile(later, 95)),
                     "step_median_s": float(np.median(steps))})
        print(f"{threads} thread(s): first proposal median {1000 * rows[-1]['first_median_s']:.0f} ms, repeated "
              f"{1000 * rows[-1]['repeat_median_s']:.0f} ms (p95 {1000 * rows[-1]['repeat_p95_s']:.0f}), whole "
              f"step {1000 * rows[-1]['step_median_s']:.0f} ms", flush=True)
    result = {"model": str(args.model), "model_id": model.model_id, "class": args.class_name,
              "cases": [str(c) for c in args.cases], "machine": platform.platform(),
              "processor": platform.processor(), "torch": torch.__version__, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "proposal_speed.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Proposal speed: {args.class_name} ({model.model_id})", "",
             f"`python benchmarks/proposal_speed.py {args.model} {args.class_name} <{len(args.cases)} cases> "
             f"--threads {args.threads}`; {platform.platform()}, torch {torch.__version__}.", "",
             "| threads | first proposal, median | repeated, median | repeated, p95 | whole step, median |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['threads']} | {1000 * row['first_median_s']:.0f} ms | {1000 * row['repeat_median_s']:.0f} ms"
                     f" | {1000 * row['repeat_p95_s']:.0f} ms | {1000 * row['step_median_s']:.0f} ms |")
    (RESULTS / "proposal_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
