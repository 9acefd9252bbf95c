"""A training run: a new Helm release of the chart, its RayJob waited for, its submitter's logs streamed meanwhile."""

from __future__ import annotations

import enum
import secrets
import shlex
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from e2e.commands import E2EError, helm_argv, kubectl_argv, one_line
from e2e.settings import CHART, RELEASE_PREFIX, VALUES

# ---------------------------------------------------------------- the release


def new_run_name(now: datetime | None = None, token: str | None = None) -> str:
    """A fresh release and run name, e.g. mnist-train-20250101-120000-3f2a: a DNS label of 32 characters."""
    now = now or datetime.now(UTC)
    token = secrets.token_hex(2) if token is None else token
    return f"{RELEASE_PREFIX}-{now.astimezone(UTC):%Y%m%d-%H%M%S}-{token}"


def install_argv(release: str, namespace: str) -> list[str]:
    """`helm install` of a new release; never an upgrade, which would leave a finished RayJob finished."""
    return helm_argv(
        "install", release, CHART, "--namespace", namespace, "--values", VALUES, "--set", f"train.runName={release}"
    )


def uninstall_argv(release: str, namespace: str) -> list[str]:
    return helm_argv("uninstall", release, "--namespace", namespace)


# ---------------------------------------------------------------- RayJob status


class Phase(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


FAILED_DEPLOYMENTS = {"Failed", "ValidationFailed", "Suspended"}


def interpret(status: dict[str, Any] | None) -> tuple[Phase, str]:
    """Map a RayJob's status to pending/done/failed, with a one-line summary.

    jobDeploymentStatus is KubeRay's view (Initializing, Running, Complete, Failed, Retrying, Suspended, ...);
    jobStatus is Ray's (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED). Only Complete + SUCCEEDED is success.
    """
    status = status or {}
    deployment = status.get("jobDeploymentStatus") or "New"
    job = status.get("jobStatus") or "-"
    summary = f"deployment={deployment} job={job}"
    if status.get("reason") or status.get("message"):
        summary += f" ({status.get('reason', '')}: {one_line(str(status.get('message', '')))})".replace("(: ", "(")
    if deployment == "Complete":
        return (Phase.DONE if job == "SUCCEEDED" else Phase.FAILED), summary
    if deployment in FAILED_DEPLOYMENTS:
        return Phase.FAILED, summary
    return Phase.PENDING, summary


def wait_for_rayjob(
    get_status: Callable[[], dict[str, Any] | None],
    timeout: float,
    poll: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Poll until the RayJob is done (returns its status), failed or out of time (both raise E2EError)."""
    deadline = clock() + timeout
    last = ""
    while True:
        status = get_status() or {}
        phase, summary = interpret(status)
        if summary != last:
            report(f"RayJob: {summary}")
            last = summary
        if phase is Phase.DONE:
            return status
        if phase is Phase.FAILED:
            raise E2EError(f"the RayJob failed: {summary}")
        if clock() >= deadline:
            raise E2EError(f"the RayJob did not finish in {timeout:.0f} s; last status: {summary}")
        sleep(poll)


def rayjob_status(name: str, namespace: str) -> Callable[[], dict[str, Any] | None]:
    from kubernetes import client

    api = client.CustomObjectsApi()

    def get() -> dict[str, Any] | None:
        return api.get_namespaced_custom_object("ray.io", "v1", namespace, "rayjobs", name).get("status")

    return get


# ---------------------------------------------------------------- waiting, with the submitter's logs


def stream_submitter_logs(job_name: str, namespace: str, stop: threading.Event) -> None:
    """Print the logs of each submitter pod (the K8s Job `job_name`) as they come, until `stop` is set."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api()
    followed: set[str] = set()
    while not stop.is_set():
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
        for pod in pods:
            if pod.metadata.name in followed or pod.status.phase not in ("Running", "Succeeded", "Failed"):
                continue
            followed.add(pod.metadata.name)
            try:
                response = core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, follow=True, _preload_content=False
                )
                for line in response.stream():
                    print(f"[submitter] {line.decode(errors='replace').rstrip()}", flush=True)
            except ApiException as err:
                print(f"[submitter] log stream ended: {err.reason}")
        stop.wait(3)


def wait_for_training(release: str, namespace: str, timeout: float) -> None:
    """Wait for the release's RayJob (named like the release), streaming its submitter's logs meanwhile."""
    stop = threading.Event()
    logs = threading.Thread(target=stream_submitter_logs, args=(release, namespace, stop), daemon=True)
    logs.start()
    try:
        wait_for_rayjob(rayjob_status(release, namespace), timeout)
    except E2EError as err:
        look = shlex.join(kubectl_argv("--namespace", namespace, "describe", f"rayjob/{release}"))
        raise E2EError(f"{err}; see why with `{look}`") from err
    finally:
        stop.set()
        logs.join(timeout=10)
