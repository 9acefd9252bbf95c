"""A private Ray head (`ray start --head --block`) on free loopback ports with token auth, for tests that join a
cluster. Stopped by killing its own process group, never with `ray stop` (which would stop every Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support import free_port, remove_ray_tmp

VENV_BIN = str(Path(sys.executable).parent)
# `ray start --block` drains for up to 30 s after SIGTERM; nothing is asserted after the teardown, so it is cut short.
STOP_GRACE_S = 5


@dataclass(frozen=True)
class RayHead:
    gcs_address: str  # host:port, for --address
    dashboard: str  # http://host:port, for `ray job submit`
    env: dict[str, str]  # token auth on, with this head's token


@contextlib.contextmanager
def ray_head(*extra: str, num_cpus: int = 2) -> Iterator[RayHead]:
    # TMPDIR, Ray's sessions included, for the head and the jobs run against it: removed at the end, whatever was
    # killed. Short, for Ray's socket paths.
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "TMPDIR": tmp, "RAY_TMPDIR": tmp}  # fmt: skip
    port, dashboard = free_port(), free_port()
    head = subprocess.Popen(
        ["ray", "start", "--head", "--block", "--num-cpus", str(num_cpus), "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_until_jobs_api_answers(url, env, head)
        yield RayHead(f"127.0.0.1:{port}", url, env)
    finally:
        stop_node(head)
        remove_ray_tmp(tmp)


def stop_node(node: subprocess.Popen) -> None:
    """Stop a `ray start --block` started in its own session: SIGTERM to its process group, SIGKILL after a grace."""
    os.killpg(node.pid, signal.SIGTERM)
    try:
        node.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=30)


def _wait_until_jobs_api_answers(address: str, env: dict, head: subprocess.Popen) -> None:
    for _ in range(90):
        assert head.poll() is None, "ray start --head exited"
        if subprocess.run(["ray", "job", "list", "--address", address], env=env, capture_output=True).returncode == 0:
            return
        time.sleep(1)
    raise TimeoutError("the Ray jobs API did not come up in 90 s")
