"""Real Prometheus and Pushgateway processes on loopback, on free ports, and how a test points them at a run."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import free_port  # tests/ is on sys.path (tests/conftest.py)

INSTALL_HINT = "install it with tools/install-test-deps.sh (Debian packages prometheus, prometheus-pushgateway)"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; {INSTALL_HINT}", pytrace=False)
    return path


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


# Between Ray's worker ports (10002-19999) and the kernel's ephemeral ports (32768-60999), where Ray's other processes
# and every port-0 server land: a job's /metrics ports here are not taken by a Ray process while its run starts.
QUIET_PORTS = range(20000, 32000)


def free_port_range(count: int) -> int:
    """A base port P such that P..P+count-1 are all free right now, in QUIET_PORTS."""
    for _ in range(200):
        base = random.randrange(QUIET_PORTS.start, QUIET_PORTS.stop - count)
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports in {QUIET_PORTS}")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            http_get(url, timeout=1)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s:\n{log.read_text()[-2000:]}")


class Server:
    """One server process; `stop()` and `start()` again reuse the same port (for outage tests)."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv, self.port, self.log = argv, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        wait_ready(self.url + "/-/ready", self.process, self.log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def start_pushgateway(tmp: Path) -> Server:
    port = free_port()
    # Debian's default --persistence.file is a shared file under /var/lib; keep each test gateway in memory.
    argv = [binary("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    return Server(argv, port, tmp / f"pushgateway-{port}.log").start()


def start_prometheus(tmp: Path, scrape_configs: list[dict[str, Any]]) -> Prometheus:
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape_configs}
    config_file = tmp / f"prometheus-{port}.yml"
    config_file.write_text(json.dumps(config, indent=1))  # JSON is YAML
    argv = [
        binary("prometheus"),
        f"--config.file={config_file}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={tmp / f'tsdb-{port}'}",
    ]
    return Prometheus(argv, port, tmp / f"prometheus-{port}.log").start()


class Prometheus(Server):
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        return self._api("query", params)

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        return self._api("query_range", params)

    def _api(self, endpoint: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            body = json.loads(http_get(url, timeout=30))
        except urllib.error.HTTPError as err:
            raise AssertionError(f"Prometheus rejected {params['query']!r}: {err.read().decode()}") from err
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if check(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"{expr!r} did not reach the expected state in {timeout:.0f}s; last result: {result}")


def scrape_configs(base_port: int, gateway: str, sd_file: Path) -> list[dict[str, Any]]:
    """The job's ports base_port..+3 (job mnist-train), the Pushgateway, and Ray's own port (file SD, see feed_ray)."""
    workers = [f"127.0.0.1:{base_port + i}" for i in range(4)]
    return [
        {"job_name": "mnist-train", "static_configs": [{"targets": workers}]},
        {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [gateway]}]},
        {"job_name": "ray", "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}]},
    ]


def ray_metrics_port(ray_tmp: str) -> int | None:
    """Ray's own Prometheus port for a run's private local Ray (found in its session folder)."""
    found = glob.glob(os.path.join(ray_tmp, "ray", "session_latest", "metrics_export_port_*"))
    return int(Path(found[0]).read_text().strip()) if found else None


def feed_ray(running: Callable[[], bool], ray_tmp: str, sd_file: Path) -> None:
    """File-based service discovery for Ray's metrics port, like Ray's prom_metrics_service_discovery.json."""
    while running():
        port = ray_metrics_port(ray_tmp)
        if port is not None:
            tmp = sd_file.with_suffix(".tmp")
            tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": {"source": "ray"}}]))
            tmp.replace(sd_file)
            return
        time.sleep(0.2)


def fill(expr: str, **values: str) -> str:
    """A dashboard query with its Grafana variables replaced (catch-alls unless given)."""
    defaults = {"namespace": ".*", "job": ".*", "run": ".*", "model": ".*", "__range": "1h"}
    for name, value in {**defaults, **values}.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr
