"""Click and encoder time on a busy machine (not a test): thread policies × competing processes, in one run.

Each thread policy runs in a fresh worker process (OpenMP reads its settings once, at start-up):

* ``today``: the engine before the thread policy: torch's own default (every CPU for encoder and decoder) and
  libgomp's default idle spinning (torch is imported before SAMVolSegmentLib, so nothing is changed);
* ``E,D`` or ``E,D/passive``: encoder E threads, decoder D threads, with libgomp's default spinning or with
  ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep); ``default``: what the engine picks with no settings.

For each number of competing processes (pure-Python busy loops, started and stopped here), every policy times
the encoder on one 128³ ROI (``Predictor.embed``, no cache) and ``--clicks`` clicks on a CT-sized synthetic volume
(the first click, which encodes, is not counted). Then, on a quiet machine, click time at clicks 8–12 against
clicks 96–100 on one mask.

Writes ``benchmarks/results/under_load.json`` and ``.md``. Run::

    python benchmarks/under_load.py                      # all policies, 0/1/2 competing processes
    python benchmarks/under_load.py --policies today,default --loads 0,1 --clicks 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_POLICIES = "today,2,2/passive,2,1,default,1,1/passive"


def split_policies(text: str) -> list:
    """'today,2,2/passive,2,1,default' → ['today', '2,2/passive', '2,1', 'default'] (pairs of numbers rejoined)."""
    parts, out = text.split(","), []
    while parts:
        head = parts.pop(0)
        if head in ("today", "default"):
            out.append(head)
        else:
            out.append(f"{head},{parts.pop(0)}")
    return out


def worker_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SAMVOLSEG_THREADS",
                                                            "OMP_NUM_THREADS")}
    if policy not in ("today", "default"):
        threads, _, wait = policy.partition("/")
        env["SAMVOLSEG_THREADS"] = threads
        env["OMP_WAIT_POLICY"] = "PASSIVE" if wait == "passive" else ""
        if wait != "passive":
            env["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default when OMP_WAIT_POLICY is not set
            del env["OMP_WAIT_POLICY"]
    return env


def run_worker(policy: str, clicks: int, encoder_runs: int, long_mask: bool) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", policy, "--clicks", str(clicks),
               "--encoder-runs", str(encoder_runs)] + (["--long-mask"] if long_mask else [])
    result = subprocess.run(command, env=worker_env(policy), capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"worker {policy} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker(policy: str, clicks: int, encoder_runs: int, long_mask: bool) -> dict:
    if policy == "today":
        import torch
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from click_latency import click_points_ras, synthetic_ct

    from SAMVolSegmentLib import InteractiveSession, load_model
    from SAMVolSegmentLib.engine.predictor import Predictor
    from SAMVolSegmentLib.engine.threads import ThreadPolicy

    threads = ThreadPolicy(torch.get_num_threads(), torch.get_num_threads()) if policy == "today" else None
    model = load_model("default")
    predictor = Predictor(model, cache_bytes=0, threads=threads)
    roi = np.random.default_rng(0).standard_normal((128, 128, 128)).astype(np.float32)
    predictor.embed(roi)  # warm-up
    encode = []
    for _ in range(encoder_runs):
        start = time.perf_counter()
        predictor.embed(roi)
        encode.append(time.perf_counter() - start)
    image = synthetic_ct()
    session = InteractiveSession(Predictor(model, threads=predictor.threads), auto_extend=False)
    session.set_volume(image)
    session.wait_until_ready()
    points = click_points_ras(image, (100 if long_mask else clicks) + 1)
    times = []
    for point, positive in points:
        start = time.perf_counter()
        session.add_click(point, positive)
        times.append(time.perf_counter() - start)
    session.close()
    later = np.asarray(times[1:])  # the first click encodes the ROI
    out = {"policy": policy, "threads": str(predictor.threads), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"), "encoder_s": encode,
           "encoder_median_s": float(np.median(encode)), "click_p50_s": float(np.percentile(later, 50)),
           "click_p95_s": float(np.percentile(later, 95)), "clicks": len(later)}
    if long_mask:
        out["click_8_12_median_s"] = float(np.median(times[8:13]))
        out["click_96_100_median_s"] = float(np.median(times[96:101]))
    return out


def start_busy(count: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes: list) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def load_average() -> list:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default=DEFAULT_POLICIES, help="comma list: today, default, E,D or E,D/passive")
    parser.add_argument("--loads", default="0,1,2", help="numbers of competing busy processes")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--encoder-runs", type=int, default=3)
    parser.add_argument("--long-mask-policies", default="today,default",
                        help="policies timed at click 10 vs 100 on one mask (quiet); empty: skip")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--long-mask", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.clicks, args.encoder_runs, args.long_mask)))
        return 0

    policies, loads = split_policies(args.policies), [int(v) for v in args.loads.split(",")]
    rows = []
    for load in loads:
        busy = start_busy(load)
        try:
            time.sleep(1.0)
            for policy in policies:
                before = load_average()
                row = run_worker(policy, args.clicks, args.encoder_runs, long_mask=False)
                row.update({"competing_processes": load, "load_average_before": before})
                rows.append(row)
                print(f"load {load} {policy:>12}: click p50 {row['click_p50_s'] * 1000:7.1f} ms, p95 "
                      f"{row['click_p95_s'] * 1000:7.1f} ms, encoder {row['encoder_median_s']:.2f} s", flush=True)
        finally:
            stop(busy)
    long_rows = []
    for policy in split_policies(args.long_mask_policies) if args.long_mask_policies else []:
        row = run_worker(policy, args.clicks, 1, long_mask=True)
        long_rows.append(row)
        print(f"one mask {policy:>12}: click 8-12 {row['click_8_12_median_s'] * 1000:.1f} ms, click 96-100 "
              f"{row['click_96_100_median_s'] * 1000:.1f} ms", flush=True)

    machine = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
               "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "under_load.json").write_text(json.dumps({"machine": machine, "rows": rows, "one_mask": long_rows},
                                                         indent=1))
    quiet = {r["policy"]: r["click_p50_s"] for r in rows if r["competing_processes"] == 0}
    lines = ["# Click and encoder time under load", "",
             f"`python benchmarks/under_load.py --policies {args.policies} --loads {args.loads} --clicks {args.clicks}`; "
             f"{machine['platform']}, {machine['cpus']} CPUs.", "",
             "| competing processes | policy (encoder,decoder) | click p50 ms | click p95 ms | p50 / quiet p50 | encoder s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["click_p50_s"] / quiet[r["policy"]] if r["policy"] in quiet else float("nan")
        lines.append(f"| {r['competing_processes']} | {r['policy']} ({r['threads']}) | {r['click_p50_s'] * 1000:.1f} | "
                     f"{r['click_p95_s'] * 1000:.1f} | {ratio:.2f} | {r['encoder_median_s']:.2f} |")
    if long_rows:
        lines += ["", "| policy | click 8–12 median ms | click 96–100 median ms | ratio |", "|---|---|---|---|"]
        for r in long_rows:
            lines.append(f"| {r['policy']} | {r['click_8_12_median_s'] * 1000:.1f} | "
                         f"{r['click_96_100_median_s'] * 1000:.1f} | "
                         f"{r['click_96_100_median_s'] / r['click_8_12_median_s']:.2f} |")
    (args.out / "under_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
