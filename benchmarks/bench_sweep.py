"""Sweep throughput: trials per hour with one trial per core (each single-threaded) vs trials
run one after another with every core, on this machine.

Each round runs the same `cnndsl sweep` twice, once per mode, in alternating order (a busy
moment of the machine falls on both); every sweep is a process of its own with a fresh
local Ray and a fresh folder. The clock covers the whole command (Ray's start and the data
load too, which both modes pay alike) and, separately, the span from the first trial's
start to the last one's end as Tune reports them. Prints a table, never asserts.

    python benchmarks/bench_sweep.py                 # 3 rounds, 4 trials of lecture.cnn
    python benchmarks/bench_sweep.py --rounds 5 --limit 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ["examples/lecture.cnn", "--grid", "k=1,2", "--grid", "n=0,1", "--epochs", "1"]


def run_once(threads: int, limit: int, folder: Path) -> dict:
    out = folder / f"t{threads}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cnndsl", "sweep", *SWEEP, "--limit", str(limit), "-o",
         str(out), "--threads-per-trial", str(threads), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"sweep failed:\n{result.stderr[-2000:]}")
    trials = json.loads((out / "results.json").read_text())["trials"]
    done = [t for t in trials if t["status"] == "done"]
    return {"wall": wall, "trials": len(done), "trial_seconds": sum(t["seconds"] for t in done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=10000,
                        help="training images per trial (and test images)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    modes = {"1 trial per core": 1, "one after another": cores}
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as folder:
        for index in range(args.rounds):
            order = list(modes) if index % 2 == 0 else list(reversed(modes))
            for name in order:
                run = run_once(modes[name], args.limit, Path(folder))
                runs[name].append(run)
                print(f"round {index + 1} {name}: {run['wall']:.1f} s for {run['trials']} "
                      f"trials", file=sys.stderr, flush=True)
    print(f"\ncnndsl sweep {' '.join(SWEEP)} --limit {args.limit}: {cores} cores, "
          f"{args.rounds} rounds\n")
    print(f"{'mode':<20} {'threads/trial':>13} {'wall s':>14} {'trials/hour':>16} "
          f"{'ratio':>12}")
    base = [3600 * r["trials"] / r["wall"] for r in runs["one after another"]]
    for name, threads in modes.items():
        walls = [r["wall"] for r in runs[name]]
        rates = [3600 * r["trials"] / r["wall"] for r in runs[name]]
        ratios = [rate / ref for rate, ref in zip(rates, base, strict=True)]
        print(f"{name:<20} {threads:>13} {min(walls):>6.1f}-{max(walls):<6.1f} "
              f"{min(rates):>7.0f}-{max(rates):<7.0f} {min(ratios):>5.2f}-{max(ratios):<5.2f}")
    print("\nmedian trials/hour: " + ", ".join(
        f"{name} {statistics.median(3600 * r['trials'] / r['wall'] for r in rs):.0f}"
        for name, rs in runs.items()))


if __name__ == "__main__":
    main()
