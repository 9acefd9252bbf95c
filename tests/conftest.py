"""Shared fixtures: a real 2-worker training run with real metrics servers, and a real S3 endpoint on loopback."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: let tests import support.py
# k8s/ holds scripts, not a package: on sys.path, as running them puts it, the tests import kind_e2e, e2e and
# rehearse by those names.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))

from live_run import FinishedRun, LiveRun, MotoServer  # noqa: E402
from promlib import (  # noqa: E402
    feed_ray,
    free_port_range,
    scrape_configs,
    start_prometheus,
    start_pushgateway,
)

from support import TF_LINE_ENV, remove_ray_tmp  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _temp_files_in_pytests_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """TensorFlow in this process (autograph writes a .py file per traced function) and every in-process temp file go
    to pytest's own folder, which it prunes, not the system's. Processes the tests start keep their own TMPDIR."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _ray_sessions_in_a_folder_of_ours() -> Iterator[None]:
    """Every Ray the tests start, in this process or another, keeps its session logs in one folder of ours, removed
    at the end, instead of Ray's default /tmp/ray, where they would stay. Short: Ray's socket paths must stay under
    107 bytes. A test that needs its own sets RAY_TMPDIR itself."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_TMPDIR", ray_tmp)
            yield
    finally:
        remove_ray_tmp(ray_tmp)


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    """One real local run for every test that reads a finished run: 2 workers, every model, 2 epochs, its /metrics
    scraped by a real Prometheus and pushed to a real Pushgateway (the metrics suite reads the same run)."""
    tmp = tmp_path_factory.mktemp("sample-run")
    tmpdir = tmp_path_factory.mktemp("sample-run-tmp")
    # Ray keeps its session logs under RAY_TMPDIR (its own, on purpose; short: Ray's socket paths must stay under 107
    # bytes); everything else must leave TMPDIR empty.
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    gateway = start_pushgateway(tmp)
    base_port, sd_file = free_port_range(4), tmp / "ray-targets.json"
    sd_file.write_text("[]")
    prometheus = start_prometheus(tmp, scrape_configs(base_port, gateway.url.removeprefix("http://"), sd_file))
    run = None
    try:
        started = time.time()
        run = LiveRun("--dataset", "mnist-sample", "--epochs", "2", "--workers", "2", "--output", str(tmp / "out"),
                      "--run-name", "sample-run", "--metrics-port", str(base_port), "--pushgateway", gateway.url,
                      env={"TMPDIR": str(tmpdir), "RAY_TMPDIR": ray_tmp, "RAY_DEDUP_LOGS": "0",
                           **TF_LINE_ENV})  # fmt: skip
        threading.Thread(
            target=feed_ray, args=(lambda: run.process.poll() is None, ray_tmp, sd_file), daemon=True
        ).start()
        code = run.finish()
        assert code == 0, run.tail()
        prometheus.wait_for('mnist_train_run_status{run="sample-run"}', bool)  # the driver's push, one scrape later
        yield FinishedRun("sample-run", tmp / "out", code, run.lines, tmpdir, Path(ray_tmp), prometheus, base_port,
                          started, time.time())  # fmt: skip
    finally:
        if run is not None:
            run.stop()
        prometheus.stop()
        gateway.stop()
        remove_ray_tmp(ray_tmp)


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


# The files that take a minute or more (real runs, a Ray Serve, S3 faults), in the order `make test` starts them: its
# two processes take a file at a time in collection order, so the long ones go first and the short ones fill the end.
LONG_FILES = ("test_serve.py", "test_s3_runs.py", "test_deep_bn_cnn_run.py", "test_resume.py", "test_integration.py",
              "test_rehearsal.py", "test_data_parallel.py", "test_train_local.py",
              "test_node_local_paths.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: each file keeps its order
