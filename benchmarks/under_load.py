"""Click and encoder time on a busy machine (not a test): thread policies × competing processes, in one run.

Each thread policy runs in a fresh worker process (OpenMP reads its settings once, at start-up):

* ``today``: the engine before the thread policy: torch's own default (every CPU for encoder and decoder) and
  libgomp's default idle spinning (torch is imported before SAMVolSegmentLib, so nothing is changed);
* ``E,D``, ``E,D/passive`` or ``E,D/spinN``: encoder E threads, decoder D threads, with libgomp's default
  spinning (300,000 iterations), ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once) or
  ``GOMP_SPINCOUNT=N`` (spin N iterations, then sleep); ``default``: what the engine picks with no settings.

Every policy's worker loads the model and encodes its ROI once; then, for each number of competing processes
(pure-Python busy loops, started and stopped here), the policies take turns (``--rounds`` rounds, the order
rotated each round, so a change in the machine's load hits them alike): ``--clicks`` clicks on a CT-sized
synthetic volume after a reset of the mask (the embedding stays cached) and one encoder run on a 128³ ROI
(``Predictor.embed``, no cache). Then, with no competing process, click time at clicks 8–12 against clicks
96–100 on one mask.

Writes ``benchmarks/results/under_load.json`` and ``.md``. Run::

    python benchmarks/under_load.py                      # all policies, 0/1/2 competing processes
    python benchmarks/under_load.py --policies today,default --loads 0,1 --rounds 2
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
        if wait == "passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        elif wait.startswith("spin"):
            env["GOMP_SPINCOUNT"] = str(int(wait[len("spin"):]))
        else:
            env["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default when OMP_WAIT_POLICY is not set
    return env


class Worker:
    """One policy's process: it loads the model once, then times clicks and encoder runs on request, so the
    policies take turns (interleaved rounds) and a change in the machine's load hits them alike."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", policy],
                                        env=worker_env(policy), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.policy} ended (exit {self.process.wait()}); run it alone to see why")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def worker(policy: str) -> None:
    """Serve requests on stdin, one JSON line each on stdout: ``clicks K`` (reset, then K clicks on the cached
    embedding: their times), ``encode R`` (R encoder runs without the cache), ``long N`` (reset, N clicks on one
    mask)."""
    import importlib

    if policy == "today":
        importlib.import_module("torch")  # first: the engine then leaves OpenMP's settings alone
    # Otherwise the engine first (its import sets OMP_WAIT_POLICY), then torch and what imports it (click_latency).
    engine = importlib.import_module("SAMVolSegmentLib")
    import numpy as np
    import torch

    from SAMVolSegmentLib.engine.predictor import Predictor
    from SAMVolSegmentLib.engine.threads import ThreadPolicy

    sys.path.insert(0, str(HERE))
    from click_latency import click_points_ras, synthetic_ct

    InteractiveSession, load_model = engine.InteractiveSession, engine.load_model
    threads = ThreadPolicy(torch.get_num_threads(), torch.get_num_threads()) if policy == "today" else None
    model = load_model("default")
    encoder = Predictor(model, cache_bytes=0, threads=threads)
    roi = np.random.default_rng(0).standard_normal((128, 128, 128)).astype(np.float32)
    encoder.embed(roi)  # warm-up
    image = synthetic_ct()
    session = InteractiveSession(Predictor(model, threads=encoder.threads), auto_extend=False)
    session.set_volume(image)
    session.wait_until_ready()
    points = click_points_ras(image, 100)
    session.add_click(*points[0])  # encodes the ROI once; every later click decodes on the cached embedding
    print(json.dumps({"threads": str(encoder.threads), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                      "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}), flush=True)

    def timed_clicks(count: int) -> list:
        session.reset()
        times = []
        for point, positive in points[:count]:
            start = time.perf_counter()
            session.add_click(point, positive)
            times.append(time.perf_counter() - start)
        return times

    def encodes(runs: int) -> list:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            encoder.embed(roi)
            times.append(time.perf_counter() - start)
        return times

    for line in sys.stdin:
        command, count = line.split()
        if command == "encode":
            print(json.dumps({"encoder_s": encodes(int(count))}), flush=True)
        else:  # "clicks" and "long" differ only in how the parent reads them
            print(json.dumps({"clicks_s": timed_clicks(int(count))}), flush=True)
    session.close()


def start_busy(count: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes: list) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load_average() -> list:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default=DEFAULT_POLICIES,
                        help="comma list: today, default, E,D, E,D/passive or E,D/spinN")
    parser.add_argument("--loads", default="0,1,2", help="numbers of competing busy processes")
    parser.add_argument("--clicks", type=int, default=10, help="clicks per turn (after a reset of the mask)")
    parser.add_argument("--rounds", type=int, default=4, help="turns of every policy per load level")
    parser.add_argument("--long-mask-policies", default="today,default",
                        help="policies timed at click 10 vs 100 on one mask (quiet); empty: skip")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0

    policies, loads = split_policies(args.policies), [int(v) for v in args.loads.split(",")]
    workers = {policy: Worker(policy) for policy in policies}
    rows, long_rows = [], []
    try:
        for load in loads:
            busy = start_busy(load)
            try:
                time.sleep(1.0)
                before = load_average()
                clicks = {p: [] for p in policies}
                encodes = {p: [] for p in policies}
                for round_index in range(args.rounds):
                    order = policies[round_index % len(policies):] + policies[:round_index % len(policies)]
                    for policy in order:
                        clicks[policy] += workers[policy].ask(f"clicks {args.clicks}")["clicks_s"]
                        encodes[policy] += workers[policy].ask("encode 1")["encoder_s"]
                for policy in policies:
                    row = {"policy": policy, **workers[policy].info, "competing_processes": load,
                           "load_average_before": before, "clicks": len(clicks[policy]),
                           "click_p50_s": percentile(clicks[policy], 50), "click_p95_s": percentile(clicks[policy], 95),
                           "encoder_median_s": percentile(encodes[policy], 50), "encoder_s": encodes[policy]}
                    rows.append(row)
                    print(f"load {load} {policy:>12}: click p50 {row['click_p50_s'] * 1000:7.1f} ms, p95 "
                          f"{row['click_p95_s'] * 1000:7.1f} ms, encoder {row['encoder_median_s']:.2f} s", flush=True)
            finally:
                stop(busy)
        for policy in split_policies(args.long_mask_policies) if args.long_mask_policies else []:
            times = workers[policy].ask("long 100")["clicks_s"]
            row = {"policy": policy, "click_8_12_median_s": percentile(times[7:12], 50),
                   "click_96_100_median_s": percentile(times[95:100], 50)}
            long_rows.append(row)
            print(f"one mask {policy:>12}: click 8-12 {row['click_8_12_median_s'] * 1000:.1f} ms, click 96-100 "
                  f"{row['click_96_100_median_s'] * 1000:.1f} ms", flush=True)
    finally:
        for w in workers.values():
            w.close()

    machine = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
               "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "under_load.json").write_text(json.dumps({"machine": machine, "rows": rows, "one_mask": long_rows},
                                                         indent=1))
    quiet = {r["policy"]: r["click_p50_s"] for r in rows if r["competing_processes"] == 0}
    lines = ["# Click and encoder time under load", "",
             f"`python benchmarks/under_load.py --policies {args.policies} --loads {args.loads} --clicks {args.clicks} "
             f"--rounds {args.rounds}`; "
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
