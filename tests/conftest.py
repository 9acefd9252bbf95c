"""Shared fixtures: a real 2-worker training run, and a real S3 endpoint (moto server) on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: let tests import support.py

from support import ROOT, free_port, run_job  # noqa: E402

MOTO = ROOT / ".venv-s3" / "bin" / "moto_server"
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key-0123",
    "AWS_REGION": "us-east-1",
}


@dataclass
class Run:
    output: Path
    process: subprocess.CompletedProcess

    @property
    def results(self) -> dict:
        return json.loads((self.output / "results.json").read_text())


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One real local run shared by the tests that only read its outputs: 2 workers, every model, 2 epochs."""
    output = tmp_path_factory.mktemp("sample-run") / "out"
    process = run_job(
        "train", "--dataset", "mnist-sample", "--epochs", "2", "--workers", "2", "--output", str(output),
        "--run-name", "sample-run",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    return Run(output, process)


@dataclass
class S3:
    endpoint: str
    env: dict[str, str]

    def filesystem(self):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint.removeprefix("http://"), scheme="http",
            access_key=S3_KEYS["AWS_ACCESS_KEY_ID"], secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
            allow_bucket_creation=True,
        )  # fmt: skip

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A real S3 API (moto server, its own virtualenv) on a free loopback port; credentials in the standard env vars."""
    assert MOTO.exists(), f"{MOTO} is missing; run tools/install-test-deps.sh (make test does)"
    port = free_port()
    server = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    _wait_for_port(port, server)
    env = {**S3_KEYS, "AWS_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        yield S3(endpoint, env)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited at start-up"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} after {timeout}s")
