"""Benchmark (not a test): every model on full MNIST, the tutorial's scripts beside the job, in one invocation.

    .venv/bin/python bench/mnist_full.py --data-uri DIR_OR_NPZ [--workdir bench-mnist] [--skip RUN] [--json out.json]

Runs, one after the other, each as subprocesses, longest-needed first:

- `deep-0w`: `mnist-train train --models deep_bn_cnn --ensemble 3` with every other default: three seeds of the
  fourth model (7, 8, 9; member 1 is what a run without --ensemble trains) and their ensemble, in this process.
- `tutorial-3`: the tutorial's three scripts (plain tf_keras) back to back.
- `job-0w`, `job-1w`, `job-2w`: the job's three tutorial models in its own process, and on 1 and 2 Ray workers.
- `deep-1w`, `deep-2w`: deep_bn_cnn (seed 7) on 1 and 2 Ray workers.
- `resume`: deep_bn_cnn (seed 7) in this process, killed (SIGKILL, the whole process group) halfway through an
  epoch past the middle of the run, then the same command again, which resumes it.
- `robust`: a seeded perturbation of the test set (rotation within ±10°, shift within ±2 px) written as an .npz, and
  `mnist-train evaluate --data-uri` of every model deep-0w and job-0w saved.
- `peak`: the FLOP of each model (TensorFlow's profiler on its forward graph) and this machine's float32 matmul
  GFLOP/s, the yardstick for the GFLOP/s the training runs reach.

Runs last long (at deep_bn_cnn's former default of 20 epochs: deep-0w 35 min on 2 cores, all of them 1.5 h; its deep
runs take twice that at today's 40), so the invocation can be stopped and started again with
the same --workdir: a finished run is read back from its `bench.json`; a job run that was cut off is resumed by the job
itself (same --output and --run-name) and marked `resumed`, its wall and time-to-accuracy no longer one sitting's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.machine import headline, machine, wait_quiet
from mnist_full_report import report
from mnist_full_runs import JOB_RUNS, environment, run_job, run_peak, run_resume, run_robust, run_tutorial

RUNS = ("deep-0w", "tutorial-3", "job-0w", "job-1w", "job-2w", "deep-1w", "deep-2w", "resume", "robust", "peak")


def run_once(name: str, workdir: Path, data_uri: str, quiet: float) -> dict[str, Any]:
    """A run's figures: read back from bench.json if an earlier invocation finished it, else measured now."""
    out = workdir / name
    saved = out / "bench.json"
    if saved.exists():
        print(f"== {name}: finished earlier, read from {saved}", flush=True)
        return json.loads(saved.read_text())
    out.mkdir(parents=True, exist_ok=True)
    if quiet:
        wait_quiet(quiet)
    print(f"== {name} ({time.strftime('%H:%M:%S')})", flush=True)
    env = environment(workdir)
    if name in JOB_RUNS:
        figures = run_job(name, out, data_uri, env)
    elif name == "tutorial-3":
        figures = run_tutorial(out, data_uri, env)
    elif name == "resume":
        figures = run_resume(out, data_uri, env)
    elif name == "robust":
        figures = run_robust(workdir, out, data_uri, env)
    else:
        figures = run_peak(out, env)
    figures["measured_at"] = time.strftime("%Y-%m-%d %H:%M %Z")
    saved.write_text(json.dumps(figures, indent=1))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-uri", required=True, help="full MNIST: a folder of the four IDX .gz files or an .npz")
    parser.add_argument("--workdir", type=Path, default=Path("bench-mnist"),
                        help="outputs and logs; run again with the same folder to go on where it stopped")  # fmt: skip
    parser.add_argument("--skip", action="append", default=[], choices=RUNS, help="leave out a run (repeatable)")
    parser.add_argument("--quiet-below", type=float, default=0.0, metavar="CORES",
                        help="before each run, wait (up to 10 min) until others use under CORES")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    info = machine()
    print(f"{headline(info)}  data {args.data_uri}", flush=True)
    found: dict[str, dict[str, Any]] = {}
    failed = []
    for name in RUNS:
        if name in args.skip or (name == "robust" and not {"job-0w", "deep-0w"} <= set(found)):
            continue
        try:
            found[name] = run_once(name, args.workdir.resolve(), args.data_uri, args.quiet_below)
        except Exception as err:  # the other runs go on; this one is measured again by the next invocation
            print(f"   {name} failed: {err!r}", file=sys.stderr, flush=True)
            failed.append(name)
    report(found)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "runs": found}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
