"""Benchmark (not a test): the Keras tutorial's MLP against this job with 1 and 2 Ray workers, on full Fashion-MNIST.

Each run is a subprocess; a sampler thread sums VmRSS (and Pss) over the whole process tree from /proc every 0.2 s.

    .venv/bin/python bench/mlp_fashion.py [--epochs 10] [--skip tutorial] [--json out.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {"tutorial": 0, "job-1w": 1, "job-2w": 2}  # name -> Ray workers (0: the tutorial's single process)
SAMPLE_S = 0.2
EPOCH_LINE = re.compile(r"\bmlp\s+epoch\s+(\d+)/\d+")
# The tutorial's baseline MLP script, verbatim but for the data (Fashion-MNIST via job.data) and a timing callback.
TUTORIAL = """
import json, sys, time
import numpy as np
import tf_keras as keras
from tf_keras.models import Sequential
from tf_keras.layers import Dense
from tf_keras.utils import to_categorical
from job.data import load

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        times.setdefault("first_epoch_begin", time.time())
        self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times["epoch_seconds"].append(time.perf_counter() - self.t)
        times["epoch_ends"].append(time.time())

times = {"epoch_seconds": [], "epoch_ends": []}
d = load("fashion_mnist")
(X_train, y_train), (X_test, y_test) = (d.x_train, d.y_train), (d.x_test, d.y_test)
num_pixels = X_train.shape[1] * X_train.shape[2]
X_train = X_train.reshape((X_train.shape[0], num_pixels)).astype('float32')
X_test = X_test.reshape((X_test.shape[0], num_pixels)).astype('float32')
X_train = X_train / 255
X_test = X_test / 255
y_train = to_categorical(y_train)
y_test = to_categorical(y_test)
num_classes = y_test.shape[1]
def baseline_model():
    model = Sequential()
    model.add(Dense(num_pixels, input_shape=(num_pixels,), kernel_initializer='normal', activation='relu'))
    model.add(Dense(num_classes, kernel_initializer='normal', activation='softmax'))
    model.compile(loss='categorical_crossentropy', optimizer='adam', metrics=['accuracy'])
    return model
model = baseline_model()
model.fit(X_train, y_train, validation_data=(X_test, y_test), epochs=EPOCHS, batch_size=200, verbose=2,
          callbacks=[Timer()])
scores = model.evaluate(X_test, y_test, verbose=0)
print("Baseline Error: %.2f%%" % (100-scores[1]*100))
times["test_error_percent"] = 100 - scores[1] * 100
print("BENCH " + json.dumps(times))
"""


@dataclass
class Result:
    name: str
    workers: int
    wall_s: float = 0.0
    epoch_s: float | None = None  # mean training-loop seconds of epochs 2..E (fit incl. validation)
    cycle_s: float | None = None  # mean gap between consecutive epoch ends, 2..E (adds checkpoint + report)
    first_step_s: float | None = None  # process start -> first epoch begins
    peak_rss_mb: float = 0.0  # sum of VmRSS over the process tree (counts shared pages once per process)
    peak_pss_mb: float = 0.0  # sum of Pss (shared pages split between processes): closer to real use
    peak_processes: int = 0
    test_error_percent: float | None = None
    cpu_s: float = 0.0  # CPU seconds used by the run's process tree (last utime+stime seen of every process)
    others_cores: float = 0.0  # mean cores busy with anything else meanwhile (/proc/stat busy minus cpu_s): noise
    returncode: int = 0
    epoch_seconds: list[float] = field(default_factory=list)


def _tree(root: int) -> list[int]:
    """root and all its descendants, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _kb(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak summed VmRSS / Pss of a process tree, sampled every SAMPLE_S seconds until stop()."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.rss_kb, self.pss_kb, self.processes = pid, 0, 0, 0
        self.peak: dict[str, int] = {}  # "pid command" -> Pss MB at the peak
        self.ticks: dict[int, int] = {}  # pid -> utime + stime, clock ticks
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            pids = _tree(self.pid)
            for pid in pids:
                self.ticks[pid] = max(self.ticks.get(pid, 0), _cpu_ticks(pid))
            self.rss_kb = max(self.rss_kb, sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in pids))
            pss = {p: _kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids}
            if sum(pss.values()) > self.pss_kb:
                self.pss_kb, self.peak = sum(pss.values()), {f"{p} {_comm(p)}": kb // 1024 for p, kb in pss.items()}
            self.processes = max(self.processes, len(pids))
            self._done.wait(SAMPLE_S)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:80]
    except OSError:
        return "?"


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def wait_quiet(max_cores: float, timeout_s: float = 600) -> None:
    """Wait until other work on the machine uses under max_cores cores over 5 s (the box is shared)."""
    deadline = time.time() + timeout_s
    while True:
        before = busy_cpu_s()
        time.sleep(5)
        cores = (busy_cpu_s() - before) / 5
        if cores < max_cores or time.time() > deadline:
            print(f"   machine busy: {cores:.2f} cores {'(gave up waiting)' if cores >= max_cores else ''}", flush=True)
            return


def _mean_after_first(values: list[float]) -> float | None:
    rest = values[1:] or values
    return sum(rest) / len(rest) if rest else None


def run_one(name: str, workers: int, epochs: int, workdir: Path) -> Result:
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_TRAIN_") and k != "RAY_ADDRESS"}
    # A private Ray temp dir: ray.init() would otherwise join whatever /tmp/ray/ray_current_cluster names (see README).
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", RAY_TMPDIR=ray_tmp)
    if workers == 0:
        cmd = [sys.executable, "-c", TUTORIAL.replace("EPOCHS", str(epochs))]
    else:
        cmd = [
            sys.executable,
            "-m",
            "job",
            "train",
            "--models",
            "mlp",
            "--epochs",
            str(epochs),
            "--batch-size",
            "200",
            "--workers",
            str(workers),
            "--dataset",
            "fashion_mnist",
            "--output",
            str(out / "run"),
            "--run-name",
            f"bench-{name}",
            "--overwrite",
        ]
    result = Result(name, workers)
    print(f"== {name}: {' '.join(cmd[:2])} {'<tutorial script>' if workers == 0 else ' '.join(cmd[2:])}", flush=True)
    epoch_ends: dict[int, float] = {}
    bench_line = ""
    start, busy0 = time.time(), busy_cpu_s()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    with open(out / "log.txt", "w") as log:
        for line in proc.stdout:  # type: ignore[union-attr]
            now = time.time()
            log.write(f"+{now - start:7.2f}s {line}")
            if match := EPOCH_LINE.search(line):
                epoch_ends.setdefault(int(match.group(1)), now)
            elif line.startswith("BENCH "):
                bench_line = line[6:]
    result.returncode = proc.wait()
    result.wall_s = time.time() - start
    sampler.stop()
    result.cpu_s = sum(sampler.ticks.values()) / os.sysconf("SC_CLK_TCK")
    result.others_cores = max(0.0, (busy_cpu_s() - busy0 - result.cpu_s) / result.wall_s)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    (out / "peak_pss_mb.json").write_text(json.dumps(sampler.peak, indent=1))
    result.peak_rss_mb, result.peak_pss_mb = sampler.rss_kb / 1024, sampler.pss_kb / 1024
    result.peak_processes = sampler.processes
    if result.returncode != 0:
        print(f"   failed (exit {result.returncode}); log: {out / 'log.txt'}", file=sys.stderr)
        print("".join((out / "log.txt").read_text().splitlines(keepends=True)[-15:]), file=sys.stderr)
        return result
    if workers == 0:
        times = json.loads(bench_line)
        result.epoch_seconds = times["epoch_seconds"]
        result.first_step_s = times["first_epoch_begin"] - start
        result.test_error_percent = times["test_error_percent"]
        ends = times["epoch_ends"]
    else:
        mlp = json.loads((out / "run" / "results.json").read_text())["models"]["mlp"]
        result.epoch_seconds = [r["seconds"] for r in mlp["history"]]
        result.test_error_percent = mlp["test_error_percent"]
        # The chief prints epoch k's line right after that epoch's fit; it reaches us via Ray's log forwarding
        # (a few hundred ms late at most). Epoch 1 began its own duration before its line arrived.
        ends = [epoch_ends[k] for k in sorted(epoch_ends)]
        if 1 in epoch_ends:
            result.first_step_s = epoch_ends[1] - result.epoch_seconds[0] - start
    result.epoch_s = _mean_after_first(result.epoch_seconds)
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]  # epochs 2..E
    result.cycle_s = sum(gaps) / len(gaps) if gaps else None
    print(f"   done in {result.wall_s:.1f}s, epochs {[round(s, 2) for s in result.epoch_seconds]}", flush=True)
    return result


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(results: dict[str, Result]) -> str:
    base = results.get("tutorial")
    cols = [
        ("wall s", "wall_s"),
        ("epoch s (2..E)", "epoch_s"),
        ("epoch cycle s", "cycle_s"),
        ("start->1st epoch s", "first_step_s"),
        ("peak RSS MB", "peak_rss_mb"),
        ("peak PSS MB", "peak_pss_mb"),
    ]
    head = f"| run | {' | '.join(c for c, _ in cols)} | test error % | procs | CPU s | others' cores |"
    lines = [head, "|" + "---|" * (len(cols) + 5)]
    for r in results.values():
        cells = []
        for _, attr in cols:
            value, ref = getattr(r, attr), getattr(base, attr) if base else None
            ratio = _ratio(value, ref) if r is not base else None
            cells.append(_fmt(value, ".1f" if "mb" in attr else ".2f") + (f" (x{ratio:.2f})" if ratio else ""))
        lines.append(
            f"| {r.name} | {' | '.join(cells)} | {_fmt(r.test_error_percent)} | {r.peak_processes} "
            f"| {r.cpu_s:.0f} | {r.others_cores:.2f} |"
        )
    return "\n".join(lines)


def targets(results: dict[str, Result]) -> list[tuple[str, float | None, str]]:
    """(what, measured, target) for the goals the job aims at; printed, never asserted."""
    tut, one, two = (results.get(n) for n in RUNS)
    rows: list[tuple[str, float | None, str]] = []
    for job in (one, two):
        if job and tut:
            rows.append((f"{job.name} wall / tutorial wall", _ratio(job.wall_s, tut.wall_s), "<= 1.15"))
    if one and two:
        rows.append(("job-2w epoch / job-1w epoch", _ratio(two.epoch_s, one.epoch_s), "<= 1.00"))
    for job in (one, two):
        if job:
            rows.append((f"{job.name} start to first epoch (s)", job.first_step_s, "<= 10"))
    return rows


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "git": git.stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "rss_source": "/proc/<pid>/status VmRSS + smaps_rollup Pss",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (tutorial: 10)")
    parser.add_argument("--skip", action="append", default=[], choices=list(RUNS), help="leave out a run (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.0,
        metavar="CORES",
        help="before each run, wait (up to 10 min) until other work uses fewer cores than this",
    )
    parser.add_argument("--workdir", type=Path, help="keep outputs and timestamped logs here (default: temp, deleted)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-mlp-"))
    info = machine()
    print(f"{info['date']}  {info['nproc']} x {info['cpu']}  git {info['git']}  epochs {args.epochs}", flush=True)
    try:
        results = {}
        for name, workers in RUNS.items():
            if name not in args.skip:
                if args.quiet_below:
                    wait_quiet(args.quiet_below)
                results[name] = run_one(name, workers, args.epochs, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        "\nRSS/PSS: peak of the sum over the process tree (read from /proc every 0.2 s; psutil is not in the venv). "
        "Ratios (xN) are against the tutorial.\n"
        "others' cores: mean CPU use outside the run (other people's jobs); above 0.2 the figures are noisy.\n"
    )
    print(table(results))
    rows = targets(results)
    print("\n| target | measured | aim |\n|---|---|---|")
    for what, value, aim in rows:
        print(f"| {what} | {_fmt(value)} | {aim} |")
    if args.json:
        figures = {
            "machine": info,
            "epochs": args.epochs,
            "runs": {n: asdict(r) for n, r in results.items()},
            "targets": [{"what": w, "measured": v, "aim": a} for w, v, a in rows],
        }
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if all(r.returncode == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
