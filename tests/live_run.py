"""Fault-test helpers: a training run streamed line by line, its Ray processes, moto, a TCP proxy that can go dark."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import promlib
import psutil

from support import ROOT, free_port


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def epochs_printed(text: str, epochs: int, model: str = "mlp") -> list[int]:
    """The epoch numbers of the per-epoch lines a run printed for `model` (out of `epochs`)."""
    return [int(n) for n in re.findall(rf"{model}\s+epoch\s+(\d+)/{epochs}\b", text)]


class LiveRun:
    """`python -m job train ARGS` in its own process group; stdout and stderr merged and read as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        env = dict(env or {})
        if "TMPDIR" not in env:
            # A worker the test kills cannot remove its temp folder: keep them in pytest's, which pytest prunes. Ray's
            # sessions stay in the tests' RAY_TMPDIR (conftest), not in this TMPDIR (its socket paths must stay short).
            env["TMPDIR"] = tempfile.mkdtemp(prefix="run-")
        self.lines: list[str] = []
        self.seen: set[int] = set()  # every process of this run ever seen, to stop the ones a SIGKILL orphans
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "job", "train", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, **env}, start_new_session=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.process.stdout:  # closed when the run's output ends
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def matching(self, pattern: str) -> list[str]:
        return [line for line in list(self.lines) if re.search(pattern, line)]

    def wait_for(self, pattern: str, timeout: float = 300, count: int = 1) -> re.Match:
        """The `count`-th match of `pattern` in the output, waited for as lines come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.seen.update(descendants(self.process.pid))
            if len(found := self.matching(pattern)) >= count:
                return re.search(pattern, found[count - 1])
            assert self.process.poll() is None or self._reader.is_alive(), (
                f"run ended before {count}x {pattern!r}:\n{self.tail()}"
            )
            time.sleep(0.2)
        raise TimeoutError(f"not {count}x {pattern!r} in {timeout}s:\n{self.tail()}")

    def train_workers(self) -> list[int]:
        return [pid for pid in descendants(self.process.pid) if cmdline(pid).startswith("ray::RayTrainWorker")]

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def finish(self, timeout: float = 600) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    def kill(self) -> None:
        """SIGKILL the driver's whole process group, as a node loss or `kill -9` of the job would."""
        self.seen.update(descendants(self.process.pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Teardown: stop the driver and every Ray process of this run that is still alive."""
        if self.process.poll() is None:
            self.kill()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) and cmdline(p) for p in self.seen):
            time.sleep(0.5)
        for pid in self.seen:
            if alive(pid) and ("ray" in cmdline(pid) or "python" in cmdline(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._reader.join(timeout=30)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@dataclass
class FinishedRun:
    """A finished run, with the Prometheus that scraped it and the Pushgateway it pushed to."""

    name: str
    output: Path
    code: int
    lines: list[str]
    tmpdir: Path  # the run's TMPDIR, which must be empty after it
    ray_tmp: Path  # the run's RAY_TMPDIR, with its Ray session's logs
    prometheus: promlib.Prometheus
    base_port: int
    started: float
    finished: float

    @property
    def results(self) -> dict:
        return json.loads((self.output / "results.json").read_text())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def at_end(self, expr: str) -> list[dict]:
        return self.prometheus.query(expr, at=self.finished)

    @property
    def range(self) -> str:
        return f"{math.ceil(self.finished - self.started) + 60}s"


class CuttableProxy:
    """A TCP proxy on loopback in front of a real server; `cut_on` makes it go dark (connections refused) at once
    when a request line matching the pattern arrives, so a client fails mid-way as it would in an outage."""

    def __init__(self, upstream_port: int, cut_on: str | None = None, port: int = 0) -> None:
        self.upstream_port, self.cut_on = upstream_port, re.compile(cut_on.encode()) if cut_on else None
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.cut_request: bytes | None = None
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, inspect: bool) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if inspect and self.cut_on is not None and (found := self.cut_on.search(chunk)):
                    self.cut_request = found.group(0)
                    self.close()
                    return
                target.sendall(chunk)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.cut.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


MOTO = ROOT / ".venv-s3" / "bin" / "moto_server"
_IAM_SETUP = """
import json, sys, boto3
endpoint, buckets = sys.argv[1], sys.argv[2:]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="trainer")
arns = [f"arn:aws:s3:::{b}{s}" for b in buckets for s in ("", "/*")]
actions = {"Effect": "Allow", "Action": "s3:*", "Resource": arns}
iam.put_user_policy(UserName="trainer", PolicyName="one-bucket",
                    PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [actions]}))
key = iam.create_access_key(UserName="trainer")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
"""


class MotoServer:
    """A real S3 API (moto server, in its own virtualenv) on a free loopback port."""

    def __init__(self) -> None:
        assert MOTO.exists(), f"{MOTO} is missing; run tools/install-test-deps.sh (make test does)"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(MOTO), "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, "moto_server exited at start-up"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not listen within 30 s"
                time.sleep(0.1)

    def filesystem(self, key: str = "admin", secret: str = "admin"):
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}", scheme="http", access_key=key, secret_key=secret,
            region="us-east-1", allow_bucket_creation=True,
        )  # fmt: skip

    def keys(self, prefix: str, key: str = "admin", secret: str = "admin") -> list[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
        infos = self.filesystem(key, secret).get_file_info(selector)
        return sorted(info.path for info in infos if info.type == pafs.FileType.File)

    def enable_auth(self, *buckets: str) -> tuple[str, str]:
        """Create an IAM user allowed only `buckets`, then turn on moto's IAM checks; returns the user's key pair."""
        python = MOTO.parent / "python"
        out = subprocess.run(
            [str(python), "-c", _IAM_SETUP, self.endpoint, *buckets], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        key, secret = out.stdout.split()
        import urllib.request

        url, headers = f"{self.endpoint}/moto-api/reset-auth", {"Content-Type": "text/plain"}  # a form body reads empty
        urllib.request.urlopen(urllib.request.Request(url, b"0", headers=headers, method="POST"), timeout=10)
        return key, secret

    def env(self, key: str = "admin", secret: str = "admin") -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


SNAPSHOT = "checkpoint_manager_snapshot.json"


def registered_epoch(read: Callable[[], bytes]) -> int:
    """The epoch of the latest checkpoint Ray Train has registered (0 if none yet). Ray Train collects reports when it
    polls the workers (every 2 s); reports not yet collected when a worker dies are lost, so a test kills only after
    the checkpoint it means to resume from is registered."""
    try:
        latest = json.loads(read()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return 0
    return int(latest.get("metrics", {}).get("epoch", 0))


def wait_registered(read: Callable[[], bytes], epoch: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (found := registered_epoch(read)) < epoch:
        assert time.monotonic() < deadline, f"Ray Train never registered epoch {epoch}'s checkpoint"
        time.sleep(0.2)
    return found
