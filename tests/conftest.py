"""Shared fixtures: a real 2-worker training run, and a real S3 endpoint (moto server) on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: let tests import support.py

from live_run import MotoServer  # noqa: E402

from support import run_job  # noqa: E402


@dataclass
class Run:
    output: Path
    process: subprocess.CompletedProcess
    tmpdir: Path  # the run's TMPDIR, which must be empty after it

    @property
    def results(self) -> dict:
        return json.loads((self.output / "results.json").read_text())


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One real local run shared by the tests that only read its outputs: 2 workers, every model, 2 epochs."""
    output = tmp_path_factory.mktemp("sample-run") / "out"
    tmpdir = tmp_path_factory.mktemp("sample-run-tmp")
    # Ray keeps its session logs under RAY_TMPDIR (its own, on purpose); everything else must leave TMPDIR empty.
    env = {"TMPDIR": str(tmpdir), "RAY_TMPDIR": str(tmp_path_factory.mktemp("ray-tmp"))}
    process = run_job(
        "train", "--dataset", "mnist-sample", "--epochs", "2", "--workers", "2", "--output", str(output),
        "--run-name", "sample-run", env=env,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    return Run(output, process, tmpdir)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A real S3 API (moto server, its own virtualenv) on a free loopback port; credentials in the standard env vars."""
    server = MotoServer()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    try:
        yield server
    finally:
        server.stop()
