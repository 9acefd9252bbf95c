"""Benchmark (not a test): the Keras tutorial's scripts against this job, side by side, on the same data.

1. The tutorial's MLP script against the job in its own process (`--workers 0`, the local default) and with 1 and
   2 Ray workers, full Fashion-MNIST, 10 epochs.
2. The tutorial's three scripts run back to back against `mnist-train train` with its defaults (`make train`), on the
   data `make train` uses (full MNIST, or offline the shipped sample).

Each run is a subprocess. Timings come from a pass without the memory sampler (which slows the job more than the
tutorial); peak memory from a second pass where a thread sums VmRSS and Pss over the process tree every 0.2 s.

    .venv/bin/python bench/mlp_fashion.py [--epochs 10] [--skip NAME] [--mode both|timing|memory] [--json out.json]
        [--job-flag=--gpu ...]

`--job-flag` adds a flag to every run of the job (repeatable): on a GPU machine `--job-flag=--gpu`, and
`--job-flag=--steps-per-execution=50`, `--job-flag=--mixed-precision` or `--job-flag=--jit-compile` to compare
settings; the tutorial's scripts use the GPU by themselves when TensorFlow sees one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchlib import REPO
from benchlib.machine import busy_cpu_s, headline, machine, wait_quiet
from benchlib.processes import TreeSampler, job_env
from benchlib.tutorial import bench_figures, tutorial_scripts
from mlp_fashion_figures import Result, merged, read_figures, report, take_peaks

RUNS: dict[str, str | int] = {
    "tutorial": "tutorial",
    "job-0w": 0,
    "job-1w": 1,
    "job-2w": 2,
    "tutorial-3": "tutorial-3",
    "make-train": "make-train",
}  # name -> the job's --workers (0: in its own process, Ray Train's local mode), or the kind of run


def make_train_dataset() -> str:
    """What `make train` trains on here: full MNIST if it loads, else the sample it falls back to."""
    sys.path.insert(0, str(REPO))
    from job.data import mnist

    return mnist().name


def commands(name: str, workers: str | int, epochs: int, out: Path, data: str, flags: list[str]) -> list[list[str]]:
    """The subprocesses of one run, started one after the other; `flags` go to the job's runs."""
    if workers == "tutorial":
        return [[sys.executable, "-c", tutorial_scripts(epochs, "fashion_mnist")[0]]]
    if workers == "tutorial-3":
        return [[sys.executable, "-c", script] for script in tutorial_scripts(epochs, data)]
    job = [sys.executable, "-m", "job", "train", "--output", str(out / "run"), "--run-name", f"bench-{name}", *flags]
    if workers == "make-train":
        return [[*job, "--epochs", str(epochs)]]  # everything else as `make train` has it
    return [[*job, "--models", "mlp", "--epochs", str(epochs), "--batch-size", "200", "--workers", str(workers),
             "--dataset", "fashion_mnist"]]  # fmt: skip


def run_one(
    name: str, workers: str | int, epochs: int, workdir: Path, data: str, sample: bool, flags: list[str]
) -> Result:
    out = workdir / f"{name}-{'memory' if sample else 'timing'}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    env = job_env(ray_tmp)
    result = Result(name, workers)
    print(f"== {name} ({'memory' if sample else 'timing'} pass)", flush=True)
    start, busy0, cpu_s, benches = time.time(), busy_cpu_s(), 0.0, []
    with open(out / "log.txt", "w") as log:
        for cmd in commands(name, workers, epochs, out, data, flags):
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            sampler = TreeSampler(proc.pid) if sample else None
            if sampler:
                sampler.start()
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(f"+{time.time() - start:7.2f}s {line}")
                if (figures := bench_figures(line)) is not None:
                    benches.append(figures)
            result.returncode = result.returncode or proc.wait()
            exited = time.time()
            if sampler:
                sampler.stop()
                cpu_s += take_peaks(result, sampler, out)
    result.wall_s = time.time() - start
    result.cpu_s = cpu_s
    result.machine_cores = (busy_cpu_s() - busy0) / result.wall_s
    if sample:  # the sampler knows the run's own CPU time, so the rest is other work on the machine
        result.others_cores = max(0.0, result.machine_cores - result.cpu_s / result.wall_s)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    if result.returncode != 0:
        print(f"   failed (exit {result.returncode}); log: {out / 'log.txt'}", file=sys.stderr)
        print("".join((out / "log.txt").read_text().splitlines(keepends=True)[-15:]), file=sys.stderr)
        return result
    read_figures(result, benches, out / "run", start, exited, epochs)
    print(f"   done in {result.wall_s:.1f}s, errors {result.errors}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (tutorial: 10)")
    parser.add_argument("--skip", action="append", default=[], choices=list(RUNS), help="leave out a run (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--mode", choices=("both", "timing", "memory"), default="both",
                        help="timing: no sampler; memory: sampled; both: each from its pass")  # fmt: skip
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.0,
        metavar="CORES",
        help="before each run, wait (up to 10 min) until other work uses fewer cores than this",
    )
    parser.add_argument("--workdir", type=Path, help="keep outputs and timestamped logs here (default: temp, deleted)")
    parser.add_argument("--job-flag", action="append", default=[], metavar="FLAG",
                        help="add this flag to every run of the job, e.g. --job-flag=--gpu (repeatable)")  # fmt: skip
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-mlp-"))
    info = machine()
    data = make_train_dataset()
    print(f"{headline(info)}  epochs {args.epochs}  "
          f"make-train data: {data}  job flags: {' '.join(args.job_flag) or 'none'}", flush=True)  # fmt: skip
    passes = {"timing": [False], "memory": [True], "both": [False, True]}[args.mode]
    runs = {name: workers for name, workers in RUNS.items() if name not in args.skip}
    found: dict[bool, dict[str, Result]] = {False: {}, True: {}}
    try:
        for sample in passes:
            for name, workers in runs.items():
                if args.quiet_below:
                    wait_quiet(args.quiet_below)
                found[sample][name] = run_one(name, workers, args.epochs, workdir, data, sample, args.job_flag)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {name: merged(found[False].get(name), found[True].get(name)) for name in runs}
    rows = report(results)
    if args.json:
        figures = {
            "machine": info,
            "epochs": args.epochs,
            "job_flags": args.job_flag,
            "runs": {n: asdict(r) for n, r in results.items()},
            "targets": [{"what": w, "measured": v, "aim": a} for w, v, a in rows],
        }
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if all(r.returncode == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
