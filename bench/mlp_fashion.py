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
import contextlib
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

import psutil

REPO = Path(__file__).resolve().parents[1]
RUNS: dict[str, str | int] = {
    "tutorial": "tutorial",
    "job-0w": 0,
    "job-1w": 1,
    "job-2w": 2,
    "tutorial-3": "tutorial-3",
    "make-train": "make-train",
}  # name -> the job's --workers (0: in its own process, Ray Train's local mode), or the kind of run
SAMPLE_S = 0.2
EPOCH_LINE = re.compile(r"\bmlp\s+epoch\s+(\d+)/\d+")
# The tutorial's closing lines, shared by its three scripts (the CNN scripts print "CNN Error" instead).
FIT_AND_SCORE = """model = baseline_model()
model.fit(X_train, y_train, validation_data=(X_test, y_test), epochs=EPOCHS, batch_size=200, verbose=2,
          callbacks=[Timer()])
scores = model.evaluate(X_test, y_test, verbose=0)
print("Baseline Error: %.2f%%" % (100-scores[1]*100))
times["test_error_percent"] = 100 - scores[1] * 100
print("BENCH " + json.dumps(times))"""
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
d = load(DATASET, DATA_URI)
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
FIT_AND_SCORE
"""
# The tutorial's two CNN scripts, verbatim but for the data and the timing callback (same preamble as above).
TUTORIAL_CNN = (
    TUTORIAL.split("num_pixels = ", 1)[0]
    + """
X_train = X_train.reshape((X_train.shape[0], 28, 28, 1)).astype('float32') / 255
X_test = X_test.reshape((X_test.shape[0], 28, 28, 1)).astype('float32') / 255
y_train = to_categorical(y_train)
y_test = to_categorical(y_test)
num_classes = y_test.shape[1]
from tf_keras.layers import Conv2D, MaxPooling2D, Dropout, Flatten
def baseline_model():
    model = Sequential()
    LAYERS
    model.compile(loss='categorical_crossentropy', optimizer='adam', metrics=['accuracy'])
    return model
FIT_AND_SCORE
"""
)
SIMPLE_CNN = """model.add(Conv2D(32, (5, 5), input_shape=(28, 28, 1), activation='relu'))
    model.add(MaxPooling2D())
    model.add(Dropout(0.2))
    model.add(Flatten())
    model.add(Dense(128, activation='relu'))
    model.add(Dense(num_classes, activation='softmax'))"""
LARGE_CNN = """model.add(Conv2D(30, (5, 5), input_shape=(28, 28, 1), activation='relu'))
    model.add(MaxPooling2D())
    model.add(Conv2D(15, (3, 3), activation='relu'))
    model.add(MaxPooling2D())
    model.add(Dropout(0.2))
    model.add(Flatten())
    model.add(Dense(128, activation='relu'))
    model.add(Dense(50, activation='relu'))
    model.add(Dense(num_classes, activation='softmax'))"""


def tutorial_scripts(epochs: int, dataset: str, data_uri: str | None = None) -> list[str]:
    """The tutorial's baseline MLP, simple CNN and large CNN scripts, for this many epochs on this data set (or the
    data at `data_uri`, as the job's --data-uri reads it)."""
    cnn_end = FIT_AND_SCORE.replace("Baseline Error", "CNN Error")
    scripts = [TUTORIAL.replace("FIT_AND_SCORE", FIT_AND_SCORE),
               TUTORIAL_CNN.replace("LAYERS", SIMPLE_CNN).replace("FIT_AND_SCORE", cnn_end),
               TUTORIAL_CNN.replace("LAYERS", LARGE_CNN).replace("FIT_AND_SCORE", cnn_end)]  # fmt: skip
    return [s.replace("EPOCHS", str(epochs)).replace("DATASET", repr(dataset)).replace("DATA_URI", repr(data_uri))
            for s in scripts]  # fmt: skip


def make_train_dataset() -> str:
    """What `make train` trains on here: full MNIST if it loads, else the sample it falls back to."""
    sys.path.insert(0, str(REPO))
    from job.data import mnist

    return mnist().name


@dataclass
class Result:
    name: str
    workers: str | int
    wall_s: float = 0.0
    epoch_s: float | None = None  # mean training-loop seconds of epochs 2..E (fit incl. validation)
    cycle_s: float | None = None  # mean gap between consecutive epoch ends, 2..E (adds checkpoint + report)
    first_step_s: float | None = None  # process start -> first epoch begins
    exit_s: float | None = None  # last epoch ends -> process exits (artifacts written)
    peak_rss_mb: float = 0.0  # sum of VmRSS over the process tree (counts shared pages once per process)
    peak_pss_mb: float = 0.0  # sum of Pss (shared pages split between processes): closer to real use
    peak_processes: int = 0
    test_error_percent: float | None = None
    cpu_s: float = 0.0  # CPU seconds used by the run's process tree (last utime+stime seen of every process)
    others_cores: float = 0.0  # mean cores busy with anything else meanwhile (machine busy time minus cpu_s): noise
    machine_cores: float = 0.0  # mean cores busy on the whole machine during the run, the run included
    returncode: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)


def _tree(root: int) -> list[psutil.Process]:
    try:
        process = psutil.Process(root)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class TreeSampler(threading.Thread):
    """Peak summed RSS / PSS of a process tree, sampled every SAMPLE_S seconds until stop()."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.rss_kb, self.pss_kb, self.processes = pid, 0, 0, 0
        self.peak: dict[str, int] = {}  # "pid command" -> Pss MB at the peak
        self.cpu: dict[int, float] = {}  # pid -> user + system CPU seconds
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            rss, pss, commands = {}, {}, {}
            for process in _tree(self.pid):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    with process.oneshot():
                        times, memory = process.cpu_times(), process.memory_full_info()
                        commands[process.pid] = " ".join(process.cmdline())[:80]
                    self.cpu[process.pid] = max(self.cpu.get(process.pid, 0.0), times.user + times.system)
                    rss[process.pid], pss[process.pid] = memory.rss // 1024, memory.pss // 1024
            self.rss_kb = max(self.rss_kb, sum(rss.values()))
            if sum(pss.values()) > self.pss_kb:
                self.pss_kb = sum(pss.values())
                self.peak = {f"{pid} {commands[pid]}": kb // 1024 for pid, kb in pss.items()}
            self.processes = max(self.processes, len(pss))
            self._done.wait(SAMPLE_S)

    def stop(self) -> None:
        self._done.set()
        self.join()


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_TRAIN_") and k != "RAY_ADDRESS"}
    # A private Ray temp dir: ray.init() would otherwise join whatever /tmp/ray/ray_current_cluster names (see README).
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", RAY_TMPDIR=ray_tmp)
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
                if line.startswith("BENCH "):
                    benches.append(json.loads(line[6:]))
            result.returncode = result.returncode or proc.wait()
            exited = time.time()
            if sampler:
                sampler.stop()
                cpu_s += sum(sampler.cpu.values())
                if sampler.pss_kb / 1024 > result.peak_pss_mb:
                    (out / "peak_pss_mb.json").write_text(json.dumps(sampler.peak, indent=1))
                result.peak_rss_mb = max(result.peak_rss_mb, sampler.rss_kb / 1024)
                result.peak_pss_mb = max(result.peak_pss_mb, sampler.pss_kb / 1024)
                result.peak_processes = max(result.peak_processes, sampler.processes)
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
    if workers in ("tutorial", "tutorial-3"):
        result.epoch_seconds = [s for b in benches for s in b["epoch_seconds"]]
        result.first_step_s = benches[0]["first_epoch_begin"] - start
        result.exit_s = exited - benches[-1]["epoch_ends"][-1]
        result.errors = {m: b["test_error_percent"] for m, b in zip(("mlp", "cnn", "large_cnn"), benches, strict=False)}
        ends = benches[0]["epoch_ends"]
    else:
        models = json.loads((out / "run" / "results.json").read_text())["models"]
        history = [r for m in models.values() for r in m["history"]]
        result.epoch_seconds = [r["seconds"] for r in history]
        result.first_step_s = history[0]["started_at"] - start
        result.exit_s = exited - (history[-1]["started_at"] + history[-1]["seconds"])
        result.errors = {m: v["test_error_percent"] for m, v in models.items()}
        first = next(iter(models.values()))["history"]
        ends = [r["started_at"] + r["seconds"] for r in first]
    result.test_error_percent = next(iter(result.errors.values()))
    result.epoch_s = _mean_after_first(result.epoch_seconds[:epochs])
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]  # epochs 2..E
    result.cycle_s = sum(gaps) / len(gaps) if gaps else None
    print(f"   done in {result.wall_s:.1f}s, errors {result.errors}", flush=True)
    return result


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def merged(timing: Result | None, memory: Result | None) -> Result:
    """Timings from the pass without the sampler, memory (and the others' load) from the sampled pass."""
    base = timing or memory
    assert base is not None
    if memory is not None and timing is not None:
        for attr in ("peak_rss_mb", "peak_pss_mb", "peak_processes", "cpu_s", "others_cores"):
            setattr(base, attr, getattr(memory, attr))
    return base


def table(results: dict[str, Result]) -> str:
    cols = [
        ("wall s", "wall_s"),
        ("epoch s (2..E)", "epoch_s"),
        ("start->1st step s", "first_step_s"),
        ("last epoch->exit s", "exit_s"),
        ("peak PSS MB", "peak_pss_mb"),
    ]
    head = (
        f"| run | {' | '.join(c for c, _ in cols)} | test error % | machine cores (timing) | others' cores (memory) |"
    )
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for r in results.values():
        base = results.get("tutorial-3" if r.name == "make-train" else "tutorial")
        cells = []
        for _, attr in cols:
            value, ref = getattr(r, attr), getattr(base, attr) if base else None
            ratio = _ratio(value, ref) if base is not None and r is not base and attr != "exit_s" else None
            cells.append(_fmt(value, ".0f" if "mb" in attr else ".2f") + (f" (x{ratio:.2f})" if ratio else ""))
        errors = ", ".join(f"{m} {e:.2f}" for m, e in r.errors.items())
        lines.append(f"| {r.name} | {' | '.join(cells)} | {errors} | {r.machine_cores:.2f} | {r.others_cores:.2f} |")
    return "\n".join(lines)


def targets(results: dict[str, Result]) -> list[tuple[str, float | None, str]]:
    """(what, measured, target) for the goals the job aims at; printed, never asserted."""
    tut, zero, one, two, tut3, make = (results.get(n) for n in RUNS)
    rows: list[tuple[str, float | None, str]] = []
    for job in (zero, one, two):
        if job:
            rows.append((f"{job.name} start to first step (s)", job.first_step_s, "<= 10"))
            rows.append((f"{job.name} last epoch to exit (s)", job.exit_s, "<= 3"))
    for job in (zero, one):
        if job and tut:
            rows.append((f"{job.name} wall / tutorial wall", _ratio(job.wall_s, tut.wall_s), "<= 1.15"))
            rows.append((f"{job.name} epoch / tutorial epoch", _ratio(job.epoch_s, tut.epoch_s), "<= 1.00"))
    if one and two:
        rows.append(("job-2w epoch / job-1w epoch", _ratio(two.epoch_s, one.epoch_s), "<= 1.25 (aim 1.0)"))
    if make and tut3:
        rows.append(("make-train wall / tutorial's 3 scripts wall", _ratio(make.wall_s, tut3.wall_s), "<= 1.3"))
    for job in (zero, one, two):
        if job and tut and job.peak_pss_mb:
            rows.append((f"{job.name} peak PSS / tutorial", _ratio(job.peak_pss_mb, tut.peak_pss_mb), "<= 2"))
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
        "rss_source": "psutil memory_full_info: rss and pss",
    }


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
    print(f"{info['date']}  {info['nproc']} x {info['cpu']}  git {info['git']}  epochs {args.epochs}  "
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
    print(
        "\nPSS: peak of the sum over the process tree, from the sampled pass (psutil every 0.2 s). Ratios (xN) are "
        "against the tutorial (make-train: against the tutorial's three scripts back to back).\n"
        "machine cores: mean busy cores during the timing pass, the run included (2 = the whole box); "
        "others' cores: other work during the memory pass. Above 0.2 others' cores the figures are noisy.\n"
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
            "job_flags": args.job_flag,
            "runs": {n: asdict(r) for n, r in results.items()},
            "targets": [{"what": w, "measured": v, "aim": a} for w, v, a in rows],
        }
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if all(r.returncode == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
