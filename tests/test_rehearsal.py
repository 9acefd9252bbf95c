"""A rehearsal of the RayJob without Kubernetes: its pieces started the way KubeRay 1.7 starts them, on this machine.

The chart is rendered with k8s/values-rehearsal.yaml. From the rendered RayJob: a head from the head group's
rayStartParams and container env, two worker nodes from the worker group's (`ray start --address`), then the
`entrypoint` submitted with the submitter's env, as KubeRay's submitter Job does. Output and checkpoints go to a moto
S3 server on loopback through the Secret the chart references. One worker node is SIGKILLed after the first epoch's
checkpoint and replaced (KubeRay recreates a lost pod); the run must still end complete. What KubeRay fixes per pod
but one machine cannot share (the GCS, dashboard, metrics and agent ports) gets free ports here; everything else is
taken from the rendered objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from live_run import SNAPSHOT, MotoServer, alive, descendants, wait_registered
from ray_head import STOP_GRACE_S
from rehearse import pods

from support import ROOT, free_port

VALUES = yaml.safe_load((ROOT / "k8s" / "values-rehearsal.yaml").read_text())
BUCKET, RUN = "rehearsal", VALUES["train"]["runName"]
PREFIX = f"{BUCKET}/runs/{RUN}"
VENV_BIN = str(Path(sys.executable).parent)
# Variables of this test process that a pod would not have: the rendered env alone must carry the run.
FOREIGN_ENV = ("AWS_", "RAY_", "MNIST_TRAIN_", "GOOGLE_", "TF_", "NVIDIA_")


def render(endpoint: str) -> dict[str, Any]:
    values = {**VALUES, "storage": {**VALUES["storage"], "endpointUrl": endpoint}}
    with helm_python.Chart.load(ROOT / "charts" / "mnist-train") as chart:
        rendered = chart.render(values, name="rehearsal", namespace="ml", is_install=True)
    (rayjob,) = [yaml.safe_load(text) for path, text in rendered.items() if path.endswith("/rayjob.yaml")]
    return rayjob


def ray_start_argv(group: dict[str, Any], head_address: str | None, ports: dict[str, int]) -> list[str]:
    """`ray start` as KubeRay builds it (k8s/rehearse/pods.py), workers joining `head_address`; `ports` replaces the
    per-pod fixed ports."""
    host, _, port = (head_address or "").rpartition(":")
    params = pods.ray_start_params(group, head_address is None, head_service=host, head_port=port)
    params.update({key: str(number) for key, number in ports.items()})
    return ["ray", "start", *(["--head"] if head_address is None else []), *pods.ray_start_flags(params)]


class Node:
    """One Ray node (`ray start --block`) in its own process group: a pod."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv, self.seen = argv, set()
        with log.open("a") as out:  # cwd: the driver runs in the head's folder and leaves its log file there
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent,
                                            start_new_session=True)  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the node and everything it started, as a lost pod."""
        self.seen.update(descendants(self.process.pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self.seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.seen.update(descendants(self.process.pid))
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_GRACE_S)
        if any(alive(pid) for pid in [self.process.pid, *self.seen]):
            self.kill()


def ray(env: dict[str, str], *args: str, timeout: float = 60) -> str:
    done = subprocess.run(["ray", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"ray {shlex.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    moto = MotoServer()
    moto.filesystem().create_dir(BUCKET)
    s3_secret = {"AWS_ACCESS_KEY_ID": "admin", "AWS_SECRET_ACCESS_KEY": "admin"}  # the Secret `storage.existingSecret`
    rayjob = render(moto.endpoint)
    spec = rayjob["spec"]
    head_group, (worker_group,) = spec["rayClusterSpec"]["headGroupSpec"], spec["rayClusterSpec"]["workerGroupSpecs"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV)}
    base["PATH"] = f"{VENV_BIN}:{base['PATH']}"
    # The pods' temp folder, Ray's sessions included: a killed node cannot clean up after itself. Short, for Ray's
    # socket paths.
    base["TMPDIR"] = base["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # KubeRay's token Secret, in every pod
    secrets_ = {VALUES["storage"]["existingSecret"]: s3_secret}
    gcs, dashboard = free_port(), free_port()
    head_env = {**base, **pods.container_env(head_group["template"]["spec"]["containers"][0], secrets_), **auth,
                "RAY_ADDRESS": f"127.0.0.1:{gcs}"}  # fmt: skip
    worker_env = {**base, **pods.container_env(worker_group["template"]["spec"]["containers"][0], secrets_), **auth}

    def node_ports() -> dict[str, int]:
        return {"metrics-export-port": free_port(), "dashboard-agent-listen-port": free_port()}

    def start_worker() -> Node:
        return Node(ray_start_argv(worker_group, f"127.0.0.1:{gcs}", node_ports()), worker_env, tmp_path / "nodes.log")

    nodes: list[Node] = []
    try:
        head_ports = {"port": gcs, "dashboard-port": dashboard, **node_ports()}
        nodes.append(Node(ray_start_argv(head_group, None, head_ports), head_env, tmp_path / "nodes.log"))
        url = f"http://127.0.0.1:{dashboard}"
        _wait_for_nodes(head_env, url, 1)
        for count in range(2, 2 + worker_group["replicas"]):  # one at a time: concurrent raylets race for ports
            nodes.append(start_worker())
            _wait_for_nodes(head_env, url, count)
        submitter = pods.container_env(spec["submitterPodTemplate"]["spec"]["containers"][0], {})
        yield {"rayjob": rayjob, "moto": moto, "url": url, "env": head_env, "nodes": nodes,
               "start_worker": start_worker, "submitter_env": {**base, **submitter, **auth}}  # fmt: skip
    finally:
        for node in reversed(nodes):
            node.stop()
        moto.stop()
        shutil.rmtree(base["TMPDIR"], ignore_errors=True)


def _wait_for_nodes(env: dict[str, str], url: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired, ValueError):
            alive_nodes = ["list", "nodes", "--address", url, "--format", "json", "--filter", "state=ALIVE"]
            nodes = json.loads(ray(env, *alive_nodes))
            if len(nodes) >= count:
                return nodes
        assert time.monotonic() < deadline, f"fewer than {count} Ray nodes alive after {timeout:.0f} s"
        time.sleep(1)


def test_the_rendered_rayjob_runs_on_three_ray_nodes_and_survives_losing_a_worker_node(cluster, tmp_path) -> None:
    url, env, moto = cluster["url"], cluster["env"], cluster["moto"]
    spec = cluster["rayjob"]["spec"]
    submission = f"rehearsal-{secrets.token_hex(4)}"
    submitter_env = {**cluster["submitter_env"], "RAY_DASHBOARD_ADDRESS": url.removeprefix("http://"),
                     "RAY_JOB_SUBMISSION_ID": submission}  # fmt: skip
    # KubeRay's submitter runs this script in a shell; the entrypoint is pasted into it as rendered.
    submit = 'ray job submit --address "http://$RAY_DASHBOARD_ADDRESS" --submission-id "$RAY_JOB_SUBMISSION_ID"'
    script = f"{submit} --no-wait -- {spec['entrypoint']}"
    subprocess.run(["bash", "-c", script], env=submitter_env, check=True, capture_output=True, timeout=120)

    snapshot = f"{PREFIX}/checkpoints/{RUN}/{SNAPSHOT}"
    wait_registered(lambda: moto.filesystem().open_input_stream(snapshot).read(), 1, timeout=300)
    workers_before = _train_worker_nodes(env, url)
    cluster["nodes"][2].kill()  # a worker pod is lost ...
    cluster["nodes"].append(cluster["start_worker"]())  # ... and KubeRay creates a new one

    status = _wait_for_job(env, url, submission, timeout=420)
    logs = ray(env, "job", "logs", "--address", url, submission)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "joining the Ray cluster" in logs, "the driver must join the RayJob's cluster, not start a private Ray"

    results = json.loads(moto.filesystem().open_input_stream(f"{PREFIX}/results.json").read())
    assert results["status"] == "succeeded" and results["workers"] == 2
    assert [r["epoch"] for r in results["models"]["mlp"]["history"]] == [1, 2, 3]
    keys = moto.keys(PREFIX)
    assert f"{PREFIX}/mlp/model.keras" in keys and any("/checkpoints/" in key for key in keys)

    listing = ["list", "nodes", "--address", url, "--format", "json", "--detail", "--limit", "100"]
    deadline = time.monotonic() + 90  # the GCS marks a node dead after its health checks fail, which may be after
    while True:  # a short run has finished
        nodes = json.loads(ray(env, *listing))
        lost = [n["node_id"] for n in nodes if n["state"] == "DEAD"]
        if lost or time.monotonic() > deadline:
            break
        time.sleep(2)
    head = [n["node_id"] for n in nodes if n["is_head_node"]]
    newest = max((n for n in nodes if not n["is_head_node"]), key=lambda n: n["start_time_ms"])["node_id"]
    assert len(set(workers_before)) == 2 and not set(workers_before) & set(head), "one worker on each worker node"
    assert len(lost) == 1 and lost[0] in workers_before, "the node killed hosted a Ray Train worker"
    assert newest in _train_worker_nodes(env, url), "the restarted worker group used the new worker node"


def _wait_for_job(env: dict[str, str], url: str, submission: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(ray(env, "list", "jobs", "--address", url, "--format", "json",
                                "--filter", f"submission_id={submission}"))[0]["status"]  # fmt: skip
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        assert time.monotonic() < deadline, f"the job is still {status} after {timeout:.0f} s"
        time.sleep(2)


def _train_worker_nodes(env: dict[str, str], url: str, state: str | None = None) -> list[str]:
    """Node ids of the Ray Train worker actors (alive or dead, or only in `state`)."""
    filters = ["--filter", "class_name=RayTrainWorker"] + (["--filter", f"state={state}"] if state else [])
    actors = json.loads(ray(env, "list", "actors", "--address", url, "--format", "json", "--limit", "1000", *filters))
    return [actor["node_id"] for actor in actors]
