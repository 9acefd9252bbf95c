"""Helpers shared by the tests (import as `from support import ...`)."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
