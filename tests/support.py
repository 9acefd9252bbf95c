"""Helpers shared by the tests (import as `from support import ...`)."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

# Every line the job itself may print on the console (stdout and stderr); anything else is Ray's or TensorFlow's.
JOB_LINES = [
    r"log: \S+",
    r"run \S+: [\w, ]+ for \d+ epochs, global batch \d+ (on \d+ (CPU|GPU) workers?|in this process on (CPU|GPU))"
    r" \(.*\)",
    r"data \S+: \d+ train / \d+ test; output \S+",
    r"INFO: starting a local Ray instance with \d+ CPUs for \d+ workers",
    r"\w+ +epoch +\d+/\d+  loss [\d.]+  acc [\d.]+  val_loss [\d.]+  val_acc [\d.]+ +[\d.]+s +\d+ samples/s",
    r"(MLP|Simple CNN|Large CNN) error: [\d.]+%",
    r"model +test error +test loss +params +epochs +train s +s/epoch",
    r"\w+ +[\d.]+% +[\d.]+ +[\d,]+ +\d+ +[\d.]+ +[\d.]+",
    r"data \S+ \(\d+ train / \d+ test\), (on \d+ (CPU|GPU) workers?|in this process on (CPU|GPU)), wall [\d.]+s",
    r"results: \S+",
    r"INFO: rank \d+: (serving /metrics on :\d+|port \d+ is in use, took the next free one)",
    r"",
]

# A line TensorFlow's C++ code writes to file descriptor 2 on every machine, when asked: a verbose log of the XLA CPU
# device's creation (TensorFlow's own banners depend on the CPU: the oneDNN one needs AVX-512 VNNI/BF16 or AMX).
TF_LINE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "xla_cpu_device=1"}
TF_LINE = "Not creating XLA devices"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def remove_ray_tmp(folder: str | Path, grace: float = 15) -> None:
    """Remove a RAY_TMPDIR of ours once the Ray processes that name it (in their --session-dir, --log-dir, ...) are
    gone, killing those still there after `grace` s: one that outlives the others by a moment (the runtime-env agent)
    would otherwise write its logs into the folder again after it was removed."""
    deadline = time.monotonic() + grace
    while (left := _naming(str(folder))) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


def _naming(folder: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and any(folder in arg for arg in process.info["cmdline"] or ()):
            found.append(process)
    return found


def run_job(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m job ARGS` as a user would; stdout and stderr are captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "job", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def write_idx_folder(folder: Path, dataset) -> None:
    """The four MNIST IDX .gz files of `dataset` (a job.data.Dataset) in `folder`, as yann.lecun.com serves them."""
    from job import data

    folder.mkdir(parents=True, exist_ok=True)
    for split, filename in data.IDX_FILES.items():
        array = getattr(dataset, split)
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        (folder / filename).write_bytes(gzip.compress(header + array.astype("uint8").tobytes()))
