"""The whole local Kubernetes flow on kind: cluster, KubeRay, image, S3 + Prometheus, the chart, and the checks.

    python k8s/kind_e2e.py up     # kind cluster, KubeRay operator, CPU image loaded, S3 store, Prometheus, Pushgateway
    python k8s/kind_e2e.py run    # helm install the chart with k8s/values-kind.yaml, wait for the RayJob, check results
    python k8s/kind_e2e.py down   # delete the kind cluster
    python k8s/kind_e2e.py all    # up, run, down (down also when a step fails; --keep to leave the cluster)

It needs Docker, kind, helm and kubectl on PATH; every step says which one is missing. The Kubernetes work (objects,
RayJob status, logs) goes through the `kubernetes` client; the CLIs are used only for what has no API: building and
loading the image, creating the cluster, Helm releases, and reading Prometheus through the API server proxy.
"""

from __future__ import annotations

import argparse
import base64
import enum
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

REPO = Path(__file__).resolve().parents[1]
KIND_CONFIG = REPO / "k8s" / "kind-config.yaml"
MANIFESTS = REPO / "k8s" / "manifests"
VALUES = REPO / "k8s" / "values-kind.yaml"
CHART = REPO / "charts" / "mnist-train"

CLUSTER = "mnist-train"
NAMESPACE = "mnist-e2e"
RELEASE = "mnist-train"  # the chart's fullname is then "mnist-train": the RayJob and its submitter Job
IMAGE = "mnist-train:0.1.0-cpu"
CPU_BASE_IMAGE = "rayproject/ray:2.60.0-py311"
KUBERAY_REPO = "https://ray-project.github.io/kuberay-helm/"
KUBERAY_VERSION = "1.7.0"
KUBERAY_NAMESPACE = "kuberay-system"
S3_SECRET = "mnist-s3"
# moto accepts any keys; these exist only inside the throw-away kind cluster.
S3_TEST_KEYS = {"AWS_ACCESS_KEY_ID": "mnist-e2e", "AWS_SECRET_ACCESS_KEY": "mnist-e2e-not-a-secret"}
METRICS_QUERY = 'count by (job) (count_over_time({__name__=~"mnist_train_.+"}[1h]))'

INSTALL_HINTS = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "helm": "https://helm.sh/docs/intro/install/",
    "kubectl": "https://kubernetes.io/docs/tasks/tools/",
}


class E2EError(RuntimeError):
    """A step cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------- preconditions and commands


def require(*tools: str) -> None:
    """Fail with one message naming every missing tool and where to get it."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        hints = "; ".join(f"{tool}: {INSTALL_HINTS.get(tool, 'install it')}" for tool in missing)
        raise E2EError(f"missing on PATH: {', '.join(missing)} ({hints})")


def sh(*cmd: str | Path, capture: bool = False, stdin: str | None = None) -> str:
    """Run a command, echoing it; a failure raises E2EError with the command and its exit code."""
    argv = [str(part) for part in cmd]
    print("+ " + shlex.join(argv), flush=True)
    try:
        done = subprocess.run(argv, check=True, text=True, input=stdin, capture_output=capture)
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or "").strip()
        raise E2EError(f"{shlex.join(argv)} exited {err.returncode}{': ' + detail if detail else ''}") from err
    return done.stdout if capture else ""


# ---------------------------------------------------------------- manifests


def secret_manifest(namespace: str) -> dict[str, Any]:
    data = {key: base64.b64encode(value.encode()).decode() for key, value in S3_TEST_KEYS.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": S3_SECRET,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "mnist-train-e2e"},
        },
        "type": "Opaque",
        "data": data,
    }


def render_manifests(namespace: str = NAMESPACE, image: str = IMAGE) -> list[dict[str, Any]]:
    """The namespace, the S3 Secret and every object of k8s/manifests/, placed in `namespace`, run from `image`."""
    objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
    objects.append(secret_manifest(namespace))
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            if obj:
                obj["metadata"]["namespace"] = namespace
                objects.append(obj)
    for obj in objects:
        if obj["kind"] == "Job":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                container["image"] = image
    return objects


def apply(objects: Iterable[dict[str, Any]]) -> None:
    """Create each object, leaving ones that already exist (so `up` can be run again)."""
    from kubernetes import client, utils

    api = client.ApiClient()
    for obj in objects:
        try:
            utils.create_from_dict(api, obj)
            print(f"created {obj['kind']}/{obj['metadata']['name']}")
        except utils.FailToCreateError as err:
            if any(getattr(exc, "status", None) != 409 for exc in err.api_exceptions):
                raise
            print(f"exists  {obj['kind']}/{obj['metadata']['name']}")


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
        summary += f" ({status.get('reason', '')}: {status.get('message', '')})".replace("(: ", "(")
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


# ---------------------------------------------------------------- Prometheus


def prometheus_query_path(query: str, namespace: str = NAMESPACE) -> str:
    """The API-server proxy path of a Prometheus instant query (for `kubectl get --raw`)."""
    return f"/api/v1/namespaces/{namespace}/services/prometheus:9090/proxy/api/v1/query?{urlencode({'query': query})}"


def metric_jobs(response: dict[str, Any]) -> dict[str, int]:
    """Series counts per scrape job from a `count by (job)` answer; raises if Prometheus reported an error."""
    if response.get("status") != "success":
        raise E2EError(f"Prometheus query failed: {response.get('error', response)}")
    return {item["metric"].get("job", ""): int(float(item["value"][1])) for item in response["data"]["result"]}


# ---------------------------------------------------------------- steps


def create_cluster() -> None:
    require("docker", "kind")
    if CLUSTER in sh("kind", "get", "clusters", capture=True).split():
        print(f"kind cluster {CLUSTER} exists")
        return
    sh("kind", "create", "cluster", "--name", CLUSTER, "--config", KIND_CONFIG, "--wait", "180s")


def install_kuberay() -> None:
    require("helm", "kubectl")
    chart = ["kuberay-operator", "--repo", KUBERAY_REPO, "--version", KUBERAY_VERSION]
    target = ["--namespace", KUBERAY_NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m"]
    sh("helm", "upgrade", "--install", "kuberay-operator", *chart, *target)


def build_and_load_image() -> None:
    require("docker", "kind")
    sh("docker", "build", "--tag", IMAGE, "--build-arg", f"BASE_IMAGE={CPU_BASE_IMAGE}", "--build-arg", "EXTRAS=", REPO)
    sh("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)


def wait_ready(namespace: str, timeout: float = 300) -> None:
    """Wait for the store, Prometheus and the Pushgateway to be available and the bucket to exist."""
    require("kubectl")
    wait = ["kubectl", "--namespace", namespace, "wait", f"--timeout={timeout:.0f}s"]
    sh(*wait, "--for=condition=Available", "deployment", "--all")
    sh(*wait, "--for=condition=Complete", "job/s3-bucket")


def deploy_services() -> None:
    require("kubectl")
    load_kube_config()
    apply(render_manifests())
    wait_ready(NAMESPACE)


def install_chart() -> None:
    require("helm")
    sh("helm", "upgrade", "--install", RELEASE, CHART, "--namespace", NAMESPACE, "--values", VALUES)


def wait_for_training(timeout: float) -> None:
    require("kubectl")
    load_kube_config()
    stop = threading.Event()
    logs = threading.Thread(target=stream_submitter_logs, args=(RELEASE, NAMESPACE, stop), daemon=True)
    logs.start()
    try:
        wait_for_rayjob(rayjob_status(RELEASE, NAMESPACE), timeout)
    finally:
        stop.set()


def check_results() -> None:
    """The chart's own `helm test` pod reads <output>/results.json from the store."""
    require("helm")
    sh("helm", "test", RELEASE, "--namespace", NAMESPACE, "--logs", "--timeout", "5m")


def check_metrics() -> None:
    require("kubectl")
    response = json.loads(sh("kubectl", "get", "--raw", prometheus_query_path(METRICS_QUERY), capture=True))
    jobs = metric_jobs(response)
    if not jobs:
        raise E2EError(f"Prometheus has no mnist_train_* series (query: {METRICS_QUERY})")
    print(f"Prometheus has mnist_train_* series from: {jobs}")


def delete_cluster() -> None:
    require("kind")
    sh("kind", "delete", "cluster", "--name", CLUSTER)


def load_kube_config() -> None:
    from kubernetes import config

    try:
        config.load_kube_config(context=f"kind-{CLUSTER}")
    except config.ConfigException as err:
        raise E2EError(f"no kubeconfig context kind-{CLUSTER} ({err}); run `python k8s/kind_e2e.py up` first") from err


def up() -> None:
    require("docker", "kind", "helm", "kubectl")
    create_cluster()
    install_kuberay()
    build_and_load_image()
    deploy_services()


def run(timeout: float) -> None:
    require("helm", "kubectl")
    install_chart()
    wait_for_training(timeout)
    check_results()
    check_metrics()
    print(f"OK: the RayJob {RELEASE} succeeded, results.json is in the store, metrics are in Prometheus")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "run", "down", "all"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the RayJob (default 1800)")
    parser.add_argument("--keep", action="store_true", help="with `all`: leave the cluster running afterwards")
    args = parser.parse_args(argv)
    try:
        try:
            if args.command in ("up", "all"):
                up()
            if args.command in ("run", "all"):
                run(args.timeout)
        finally:
            if args.command == "down" or (args.command == "all" and not args.keep and shutil.which("kind")):
                delete_cluster()
    except E2EError as err:
        print(f"kind_e2e: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
