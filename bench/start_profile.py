"""Benchmark (not a test): where a run's start-up and exit go, per process.

    .venv/bin/python bench/start_profile.py [--runs 3] [--procs] [-- extra mnist-train flags]

Runs `python -m job train --models mlp --dataset mnist-sample --workers 1 --epochs 2` (plus the extra flags, e.g.
`-- --workers 2`) and samples the process tree every 0.2 s with psutil. For each run it prints the seconds from the
command's start to the first step and from the last epoch's end to the process's exit (both from results.json's
epoch timestamps), and the CPU time the whole tree spent before the first step; `--procs` adds each process's share
and when it was born. Compare commits with alternating runs: this box's speed drifts by tens of percent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchlib.processes import process_tree

BASE = ["-m", "job", "train", "--models", "mlp", "--dataset", "mnist-sample", "--workers", "1", "--epochs", "2"]


def sample(pid: int, series: dict[int, list[tuple[float, float]]], born: dict[int, tuple[float, str]]) -> None:
    now = time.time()
    for proc in process_tree(pid):
        try:
            times = proc.cpu_times()
            series.setdefault(proc.pid, []).append((now, times.user + times.system))
            born.setdefault(proc.pid, (now, " ".join(proc.cmdline())[:100]))
        except psutil.Error:
            pass


def one_run(extra: list[str], out: Path, procs: bool) -> str:
    start = time.time()
    command = [sys.executable, *BASE, "--output", str(out), *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    series: dict[int, list[tuple[float, float]]] = {}
    born: dict[int, tuple[float, str]] = {}
    while process.poll() is None:
        sample(process.pid, series, born)
        time.sleep(0.2)
    end = time.time()
    if process.returncode != 0:
        return f"failed with exit code {process.returncode}: {' '.join(command)}"
    history = next(iter(json.loads((out / "results.json").read_text())["models"].values()))["history"]
    first, last = history[0]["started_at"], history[-1]["started_at"] + history[-1]["seconds"]
    before = {pid: max((c for t, c in s if t <= first), default=0.0) for pid, s in series.items()}
    lines = [
        f"start -> first step {first - start:5.2f} s   last epoch -> exit {end - last:4.2f} s   "
        f"CPU before the first step {sum(before.values()):5.1f} core-s"
    ]
    if procs:
        for pid, cpu in sorted(before.items(), key=lambda kv: -kv[1]):
            if cpu >= 0.05:
                lines.append(f"    {cpu:5.2f} core-s  born at {born[pid][0] - start:5.1f} s  {born[pid][1]}")
    return "\n".join(lines)


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--procs", action="store_true", help="each process's CPU time before the first step")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    workdir = Path(tempfile.mkdtemp(prefix="start-profile-"))
    try:
        for run in range(args.runs):
            print(f"run {run + 1}: {one_run(extra, workdir / f'run{run}', args.procs)}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
