"""Batch throughput (not a test): serial vs 2 local worker processes vs a 2-worker Dask LocalCluster in three set-ups:

* ``dask-before``: Dask's default settings, and the batch leaves the workers' profiler running (the engine
  before ``DASK_BATCH_CONFIG``);
* ``dask-defaults``: Dask's default settings (a cluster of your own); the batch pauses the profiler;
* ``dask``: the cluster ``SAMVolSegmentLib.batch.local_cluster`` starts (``DASK_BATCH_CONFIG``).

At equal total torch threads (``--threads T``: serial runs T threads in one process, the two parallel modes
run 2 processes × T/2 threads), on the development cases of ``../shared/data`` with one positive click at
each target's deepest point (prompt files written to a temporary folder, masks to a fresh folder per mode):

* cases/minute per mode (wall time from the first case submitted to the last mask written; process start
  and model loading inside it, the Dask cluster's own start-up reported apart);
* model-load seconds per worker against seconds per case (the model is loaded once per worker);
* where a case's time goes: read (prompts + image), resample (to the model grid), encode, decode, paste
  (logits back onto the image grid), write, score (Dice), as means over the serial run;
* how many mask voxels differ between the modes (none at equal threads per process);
* CPU seconds per case in its worker process (``CaseResult.cpu_s``: every thread of the process during the case,
  so a Dask worker's own work beside the case counts; model loading excluded; the median over the cases), which a
  busy machine distorts much less than wall time.

The serial mode runs once; the parallel modes take turns ``--rounds`` times (order rotated each round, a fresh
pool or cluster each time), so a change in the machine's load hits them alike; medians over the rounds are
reported, and each Dask mode's overhead is the median of its per-round ratio to the local processes.

The default model is a snapshot copy (it may be retrained while this runs). The machine's load average is
recorded with the results: numbers from a shared machine are distorted and are marked so. Writes
``benchmarks/results/batch_throughput.json`` and ``.md``. Run::

    python benchmarks/batch_throughput.py --threads 2 [--cases mr_sct_t2_spinalcord,...] [--repeat 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional
from unittest import mock

import numpy as np
import SimpleITK as sitk

from SAMVolSegmentLib import batch
from SAMVolSegmentLib.batch import BatchCase, CaseResult, local_cluster, segment_cases
from SAMVolSegmentLib.engine.geometry import VolumeGeometry
from SAMVolSegmentLib.io_utils import atomic_path, write_json
from SAMVolSegmentLib.model.registry import resolve_model_path
from SAMVolSegmentLib.tools.evaluation import deepest_point, index_to_ras

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
STAGES = ("read_s", "resample_s", "encode_s", "decode_s", "paste_s", "write_s", "score_s")
PARALLEL_MODES = ("processes", "dask-before", "dask-defaults", "dask")


def target_value(label: np.ndarray) -> Optional[int]:
    """The target: label > 0 for one-structure cases; the largest structure of a multi-label map."""
    values, counts = np.unique(label[label > 0], return_counts=True)
    return None if len(values) <= 1 else int(values[int(np.argmax(counts))])


def make_cases(names: List[str], repeat: int, work: Path) -> List[BatchCase]:
    """Prompt files (one click at the target's deepest point) and cases writing into ``work/<mode>/``."""
    cases = []
    for name in names:
        image = sitk.ReadImage(str(DATA / name / "image.nii.gz"))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / name / "label.nii.gz")))
        value = target_value(label)
        index = deepest_point(label > 0 if value is None else label == value, image.GetSpacing()[::-1])
        ras = index_to_ras(VolumeGeometry.from_sitk(image), index)
        prompts = work / f"{name}.json"
        prompts.write_text(json.dumps({"points": [{"ras": ras.tolist(), "positive": True}]}))
        for copy in range(repeat):
            cases.append(BatchCase(str(DATA / name / "image.nii.gz"), str(prompts), f"{name}_{copy}.nii.gz",
                                   str(DATA / name / "label.nii.gz"), value))
    return cases


def restore_environ(saved: Dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(saved)


def run_mode(mode: str, cases: List[BatchCase], out: Path, model: str, threads: int) -> Dict:
    """One run of ``mode`` (:data:`PARALLEL_MODES` or serial) writing into ``out``; a Dask mode starts its
    cluster first (``cluster_start_s``, not in the wall time)."""
    out.mkdir(parents=True)
    placed = [BatchCase(c.image, c.prompts, str(out / c.output), c.label, c.label_value, n + 2)
              for n, c in enumerate(cases)]
    workers = 1 if mode == "serial" else 2
    per_worker = threads if mode == "serial" else max(1, threads // 2)
    cluster_start = 0.0
    with contextlib.ExitStack() as stack:
        scheduler = None
        if mode.startswith("dask"):
            started = time.perf_counter()
            if mode == "dask":
                cluster = stack.enter_context(local_cluster(workers, 1))
            else:
                from distributed import LocalCluster

                if mode == "dask-before":  # the batch as it was: the workers' profiler left running
                    stack.enter_context(mock.patch.object(batch, "_profiler_paused",
                                                          lambda client: contextlib.nullcontext()))

                stack.callback(restore_environ, dict(os.environ))  # Dask's nannies write into os.environ
                cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                           dashboard_address=None))
            scheduler = cluster.scheduler_address
            cluster_start = time.perf_counter() - started
        start = time.perf_counter()
        results: List[CaseResult] = list(segment_cases(placed, model, workers=workers, scheduler=scheduler,
                                                       threads=per_worker))
        wall = time.perf_counter() - start
    failed = [f"{r.name}: {r.error}" for r in results if r.status != "done"]
    done = [r for r in results if r.status == "done"]
    loads = [r.model_load_s for r in results if r.model_load_s > 0]
    return {
        "mode": mode, "processes": workers, "threads_per_process": per_worker, "cases": len(placed),
        "done": len(done), "failed": failed, "wall_s": wall,
        "cases_per_minute": 60.0 * len(done) / wall if wall > 0 else None,
        "mean_case_s": float(np.mean([r.seconds for r in done])) if done else None,
        "model_loads": len(loads), "model_load_s_per_worker": float(np.mean(loads)) if loads else None,
        "stage_mean_s": {s: float(np.mean([r.timings.get(s, 0.0) for r in done])) for s in STAGES} if done else {},
        "workers_seen": len({r.worker for r in done}), "cluster_start_s": cluster_start,
        "cpu_s_per_case": float(np.median([r.cpu_s for r in done])) if done else 0.0,
        "cpu_s_cases": [r.cpu_s for r in done],
    }


def mask_differences(folders: Dict[str, Path]) -> Dict[str, Dict[str, int]]:
    """Per mode against the first (serial): cases whose masks differ, voxels that differ, mask voxels."""
    modes = list(folders)
    first = folders[modes[0]]
    names = sorted(p.name for p in first.glob("*.nii.gz"))
    arrays = {name: sitk.GetArrayFromImage(sitk.ReadImage(str(first / name))) for name in names}
    differences = {}
    for mode in modes[1:]:
        counts = []
        for name in names:
            other = folders[mode] / name
            if not other.is_file():
                counts.append(-1)
                continue
            counts.append(int(np.count_nonzero(arrays[name] != sitk.GetArrayFromImage(sitk.ReadImage(str(other))))))
        differences[mode] = {"cases_differing": sum(c != 0 for c in counts), "voxels_differing": sum(max(c, 0) for c in counts),
                             "mask_voxels": int(sum(int(a.sum()) for a in arrays.values()))}
    return differences


def summarise_mode(runs: List[Dict]) -> Dict:
    """One row per mode: medians over its rounds (the first run's stage means and counts)."""
    walls = [r["wall_s"] for r in runs]
    wall = statistics.median(walls)
    first = runs[0]
    return {**first, "rounds": len(runs), "wall_s": wall, "wall_s_rounds": walls,
            "cases_per_minute": 60.0 * first["done"] / wall if wall > 0 else None,
            "mean_case_s": statistics.median(r["mean_case_s"] or 0.0 for r in runs),
            "cpu_s_cases": [c for r in runs for c in r["cpu_s_cases"]],
            "cpu_s_per_case": float(np.median([c for r in runs for c in r["cpu_s_cases"]])),
            "cluster_start_s": statistics.median(r["cluster_start_s"] for r in runs),
            "failed": sorted({f for r in runs for f in r["failed"]})}


def overheads(by_round: List[Dict[str, Dict]], mode: str) -> Dict[str, float]:
    """``mode`` against the local processes, as medians of the per-round ratios (wall, CPU per case) − 1."""
    pairs = [r for r in by_round if mode in r and "processes" in r]
    if not pairs:
        return {}
    return {"wall": statistics.median(r[mode]["wall_s"] / r["processes"]["wall_s"] for r in pairs) - 1.0,
            "cpu": statistics.median(r[mode]["cpu_s_per_case"] / r["processes"]["cpu_s_per_case"] for r in pairs) - 1.0}


def markdown(report: Dict) -> str:
    machine = report["machine"]
    lines = ["# Batch throughput", "",
             f"{report['cases']} cases ({', '.join(report['case_names'])}; ×{report['repeat']}), "
             f"{report['threads']} torch threads in total per mode, model `{report['model_id']}`; "
             f"{machine['platform']}, {machine['cpus']} CPUs; load average at start {machine['loadavg_start']}, "
             f"at end {machine['loadavg_end']}. Serial once, then {report['rounds']} round(s) of the parallel modes "
             "taking turns (order rotated); medians over the rounds. Absolute times are this machine's at that "
             "moment; compare modes by their ratios, which come from the same run.", ""]
    if report["note"]:
        lines += [f"**{report['note']}**", ""]
    lines += ["Modes: `processes`: local worker processes (`--workers 2`); `dask-before`: a LocalCluster with Dask's "
              "default settings, its workers' profiler left running (the batch before `DASK_BATCH_CONFIG`); "
              "`dask-defaults`: the same cluster, the profiler paused by the batch while its cases run (a cluster of "
              "your own); `dask`: `SAMVolSegmentLib.batch.local_cluster` (`DASK_BATCH_CONFIG`). *CPU s per case*: "
              "median over every case of every round of the CPU time of its worker process during the case (all its "
              "threads; model loading excluded), which other programs' load distorts much less than wall time.", "",
              "| mode | processes × threads | cases/min | × serial | wall s | mean case s | CPU s per case | "
              "model loads | load s per worker |", "|---|---|---|---|---|---|---|---|---|"]
    serial = report["modes"][0]["cases_per_minute"] or 0.0
    for m in report["modes"]:
        rate = m["cases_per_minute"] or 0.0
        load = f"{m['model_load_s_per_worker']:.2f}" if m["model_load_s_per_worker"] is not None else "-"
        lines.append(f"| {m['mode']} | {m['processes']} × {m['threads_per_process']} | {rate:.1f} | "
                     f"{rate / serial if serial else 0:.2f} | {m['wall_s']:.1f} | {m['mean_case_s'] or 0:.2f} | "
                     f"{m['cpu_s_per_case']:.3f} | {m['model_loads']} | {load} |")
    lines.append("")
    for mode, label in (("dask-before", "Dask with its default settings, profiler running (before)"),
                        ("dask-defaults", "Dask with its default settings, profiler paused by the batch"),
                        ("dask", "Dask as `batch.local_cluster` sets it up (`DASK_BATCH_CONFIG`)")):
        over = report["dask_overheads_vs_processes"].get(mode)
        if over:
            start = next(m["cluster_start_s"] for m in report["modes"] if m["mode"] == mode)
            lines.append(f"{label} vs local processes: wall time {over['wall'] * 100:+.1f} %, CPU per case "
                         f"{over['cpu'] * 100:+.1f} % (cluster start-up, not in the wall time: {start:.1f} s).")
    lines += ["", "Masks against serial (round 1): " + "; ".join(
                  f"{mode}: {d['cases_differing']} case(s), {d['voxels_differing']} of {d['mask_voxels']} mask voxels "
                  "differ" for mode, d in report["mask_differences_vs_serial"].items())
              + f" (serial runs {report['threads']} thread(s) per process, the others {max(1, report['threads'] // 2)}: "
              "float sums in another order can move a voxel "
              "that sits at the threshold; at equal threads per process the masks are identical, see "
              "Testing/test_batch.py).", "",
              "Where a serial case's time goes (mean seconds):", "", "| " + " | ".join(STAGES) + " |",
              "|" + "---|" * len(STAGES),
              "| " + " | ".join(f"{report['modes'][0]['stage_mean_s'].get(s, 0.0):.3f}" for s in STAGES) + " |", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="total torch threads per mode")
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: every case)")
    parser.add_argument("--repeat", type=int, default=1, help="run each case this many times (more work per mode)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each parallel mode (serial runs once)")
    parser.add_argument("--model", default="default", help="registry name or checkpoint path (snapshot-copied)")
    parser.add_argument("--modes", default="serial," + ",".join(PARALLEL_MODES),
                        help="comma-separated subset of the modes (serial first when given)")
    parser.add_argument("--note", default="", help="a remark stored with the results (e.g. the machine was shared)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    names = args.cases.split(",") if args.cases else sorted(p.name for p in DATA.iterdir() if (p / "label.nii.gz").is_file())
    modes = args.modes.split(",")
    parallel = [m for m in modes if m != "serial"]
    loadavg_start = [round(v, 2) for v in os.getloadavg()]
    runs: Dict[str, List[Dict]] = {m: [] for m in modes}
    by_round: List[Dict[str, Dict]] = []
    with tempfile.TemporaryDirectory(prefix="samvolseg-batch-bench-") as tmp:
        work = Path(tmp)
        model = work / "model_snapshot.pt"
        shutil.copyfile(resolve_model_path(args.model), model)
        from SAMVolSegmentLib.model import load_model

        model_id = getattr(load_model(str(model)), "model_id", "?")
        cases = make_cases(names, args.repeat, work)
        plan = [(0, "serial")] if "serial" in modes else []
        for index in range(args.rounds):
            shift = index % max(1, len(parallel))
            plan += [(index, mode) for mode in parallel[shift:] + parallel[:shift]]
        for index, mode in plan:
            print(f"round {index + 1} {mode}: {len(cases)} cases ...", flush=True)
            result = run_mode(mode, cases, work / f"{mode}_{index}", str(model), args.threads)
            runs[mode].append(result)
            if mode != "serial":
                while len(by_round) <= index:
                    by_round.append({})
                by_round[index][mode] = result
            print(f"  {result['cases_per_minute'] or 0:.1f} cases/min, wall {result['wall_s']:.1f} s, CPU "
                  f"{result['cpu_s_per_case']:.3f} s per case, failed {len(result['failed'])}", flush=True)
        differences = mask_differences({m: work / f"{m}_0" for m in modes})
    results = [summarise_mode(runs[m]) for m in modes if runs[m]]
    by_mode = {r["mode"]: r for r in results}
    report = {
        "benchmark": "batch_throughput", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "model_id": model_id,
        "threads": args.threads, "case_names": names, "repeat": args.repeat, "cases": len(cases),
        "rounds": args.rounds, "note": args.note, "modes": results, "mask_differences_vs_serial": differences,
        "dask_overheads_vs_processes": {m: overheads(by_round, m) for m in PARALLEL_MODES[1:] if m in by_mode},
        "speedup_processes": (by_mode["processes"]["cases_per_minute"] / by_mode["serial"]["cases_per_minute"])
        if {"serial", "processes"} <= set(by_mode) and by_mode["serial"]["cases_per_minute"] else None,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "loadavg_start": loadavg_start, "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "batch_throughput.json")
    with atomic_path(args.out / "batch_throughput.md") as tmp:
        Path(tmp).write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
