"""The whole local Kubernetes flow on kind: cluster, KubeRay, image, S3 + Prometheus, the chart, and the checks.

    python k8s/kind_e2e.py up     # kind cluster, KubeRay operator, CPU image loaded, S3 store, Prometheus, Pushgateway
    python k8s/kind_e2e.py run    # a new release of the chart (k8s/values-kind.yaml), wait for its RayJob, check it
    python k8s/kind_e2e.py down   # delete the kind cluster
    python k8s/kind_e2e.py all    # up, run, down (down also when a step fails; --keep to leave the cluster)

It needs Docker, kind, helm and kubectl on PATH; every step says which one is missing. The Kubernetes work (objects,
RayJob status, logs) goes through the `kubernetes` client; the CLIs are used only for what has no API: building and
loading the image, creating the cluster, Helm releases, and reading Prometheus through the API server proxy. Every
helm and kubectl call and the client use the kubeconfig context kind-mnist-train, never the current context.
"""

from __future__ import annotations

import argparse
import base64
import enum
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
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
CONTEXT = f"kind-{CLUSTER}"  # what `kind create cluster` names the cluster's kubeconfig context
NAMESPACE = "mnist-e2e"
# Each run is a new release, named <prefix>-<UTC time>-<4 hex>. The name contains the chart's name, so the chart's
# fullname, the RayJob and its submitter Job are all named exactly like the release (it stays under the 40
# characters the chart truncates to).
RELEASE_PREFIX = "mnist-train"
IMAGE = "mnist-train:0.1.0-cpu"
CPU_BASE_IMAGE = "rayproject/ray:2.60.0-py311"  # x86-64 only; Ray's arm64 images carry the suffix -aarch64
KUBERAY_REPO = "https://ray-project.github.io/kuberay-helm/"
KUBERAY_VERSION = "1.7.0"
KUBERAY_NAMESPACE = "kuberay-system"
S3_SECRET = "mnist-s3"
# moto accepts any keys; these exist only inside the throw-away kind cluster.
S3_TEST_KEYS = {"AWS_ACCESS_KEY_ID": "mnist-e2e", "AWS_SECRET_ACCESS_KEY": "mnist-e2e-not-a-secret"}

INSTALL_HINTS = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "helm": "https://helm.sh/docs/intro/install/",
    "kubectl": "https://kubernetes.io/docs/tasks/tools/",
}
UP_FIRST = "run `python k8s/kind_e2e.py up` first"
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class E2EError(RuntimeError):
    """A step cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------- preconditions and commands


def require(*tools: str) -> None:
    """Fail with one message naming every missing tool and where to get it."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        hints = "; ".join(f"{tool}: {INSTALL_HINTS.get(tool, 'install it')}" for tool in missing)
        raise E2EError(f"missing on PATH: {', '.join(missing)} ({hints})")


# The flag that pins each cluster CLI to the kind cluster; `sh` refuses a helm or kubectl call without it.
CONTEXT_FLAGS = {"helm": ("--kube-context", CONTEXT), "kubectl": ("--context", CONTEXT)}


def helm_argv(*args: str | Path) -> list[str]:
    """A helm command line for the kind cluster."""
    return ["helm", *CONTEXT_FLAGS["helm"], *(str(arg) for arg in args)]


def kubectl_argv(*args: str | Path) -> list[str]:
    """A kubectl command line for the kind cluster."""
    return ["kubectl", *CONTEXT_FLAGS["kubectl"], *(str(arg) for arg in args)]


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def sh(*cmd: str | Path, capture: bool = False, hint: str = "") -> str:
    """Run a command, echoing it; a failure raises E2EError with the command, its exit code and what to do."""
    argv = [str(part) for part in cmd]
    pinned = CONTEXT_FLAGS.get(argv[0])
    if pinned and tuple(argv[1:3]) != pinned:
        raise E2EError(f"{argv[0]} without {' '.join(pinned)}: build the command with {argv[0]}_argv()")
    print("+ " + shlex.join(argv), flush=True)
    try:
        done = subprocess.run(argv, check=True, text=True, capture_output=capture)
    except subprocess.CalledProcessError as err:
        detail = one_line(err.stderr or "")
        raise E2EError(
            f"{shlex.join(argv)} exited {err.returncode}{': ' + detail if detail else ''}{'; ' + hint if hint else ''}"
        ) from err
    return done.stdout if capture else ""


def connect(hint: str = UP_FIRST) -> None:
    """Point the kubernetes client at the kind cluster's context; refuse if the kubeconfig lacks it.

    The kubeconfig is $KUBECONFIG or ~/.kube/config, the same files helm and kubectl read.
    """
    from kubernetes import config

    # Read $KUBECONFIG now: the client's own default is the value it had when the client was first imported.
    kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError, yaml.YAMLError):
        contexts = []
    if CONTEXT not in {context["name"] for context in contexts or []}:
        raise E2EError(f"no kubeconfig context {CONTEXT}: {hint}")
    config.load_kube_config(config_file=kubeconfig, context=CONTEXT)


def up_hint(namespace: str) -> str:
    option = "" if namespace == NAMESPACE else f" --namespace {namespace}"
    return f"run `python k8s/kind_e2e.py up{option}` first"


def namespace_arg(value: str) -> str:
    """argparse type for --namespace: a Kubernetes namespace name."""
    if not DNS_LABEL.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a namespace name; use 1-63 lowercase letters, digits, '-'")
    return value


# ---------------------------------------------------------------- image


# A machine architecture (`platform.machine()`'s or Docker's name) -> Docker's platform, Ray's image tag suffix.
ARCHES = {
    "x86_64": ("linux/amd64", ""),
    "amd64": ("linux/amd64", ""),
    "aarch64": ("linux/arm64", "-aarch64"),
    "arm64": ("linux/arm64", "-aarch64"),
}


def _arch(machine: str) -> tuple[str, str]:
    try:
        return ARCHES[machine.lower()]
    except KeyError:
        raise E2EError(f"Ray publishes images for x86_64 and aarch64 only, not {machine!r}: use such a host") from None


def base_image(machine: str) -> str:
    """The Ray base image for a machine architecture: rayproject/ray:<version>-py311, with -aarch64 on arm64."""
    return CPU_BASE_IMAGE + _arch(machine)[1]


def docker_platform(machine: str) -> str:
    """Docker's platform (linux/amd64, linux/arm64) for a machine architecture."""
    return _arch(machine)[0]


def api_at_least(version: str, minimum: tuple[int, int]) -> bool:
    """Whether a Docker API version such as "1.48" is at least `minimum`."""
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def image_commands(arch: str, api_version: str, archive: Path) -> list[list[str]]:
    """Build the CPU image for `arch` and load it into the kind nodes through an image archive.

    `kind load docker-image` fails under Docker's containerd image store (kubernetes-sigs/kind#3795): the archive
    it saves has an index naming content it lacks (other platforms, build attestations), which the nodes' containerd
    refuses. kind's documented way round: save one platform (`--platform`, Docker API 1.48+; older Dockers, on the
    classic store, save just the one anyway) and load that with `kind load image-archive`.
    """
    platform = docker_platform(arch)
    build = ["docker", "build", "--platform", platform, "--tag", IMAGE]
    build += ["--build-arg", f"BASE_IMAGE={base_image(arch)}", "--build-arg", "EXTRAS=", str(REPO)]
    save = ["docker", "save", "--output", str(archive)]
    if api_at_least(api_version, (1, 48)):
        save += ["--platform", platform]
    return [build, [*save, IMAGE], ["kind", "load", "image-archive", str(archive), "--name", CLUSTER]]


# ---------------------------------------------------------------- runs


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


def metrics_query(run_name: str) -> str:
    """Series of this run only (every mnist_train_* series carries a `run` label), counted per scrape job."""
    return f'count by (job) (count_over_time({{__name__=~"mnist_train_.+", run="{run_name}"}}[1h]))'


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
    if CLUSTER in sh("kind", "get", "clusters", capture=True, hint="is Docker running?").split():
        print(f"kind cluster {CLUSTER} exists")
        return
    sh(
        "kind", "create", "cluster", "--name", CLUSTER, "--config", KIND_CONFIG, "--wait", "180s",
        hint="check that Docker runs and has about 4 CPUs and 8 GiB of memory free",
    )  # fmt: skip


def install_kuberay() -> None:
    require("helm", "kubectl")
    chart = ["kuberay-operator", "--repo", KUBERAY_REPO, "--version", KUBERAY_VERSION]
    target = ["--namespace", KUBERAY_NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m"]
    install = helm_argv("upgrade", "--install", "kuberay-operator", *chart, *target)
    sh(*install, hint=f"can this host reach {KUBERAY_REPO}?")


def docker_server() -> tuple[str, str]:
    """The Docker daemon's architecture (what it builds and the kind nodes run) and API version."""
    answer = sh("docker", "version", "--format", "{{.Server.Arch}} {{.Server.APIVersion}}", capture=True,
                hint="start Docker")  # fmt: skip
    arch, _, api_version = answer.strip().partition(" ")
    return arch, api_version


def build_and_load_image() -> None:
    require("docker", "kind")
    arch, api_version = docker_server()
    # The archive (a few GB) lives in a temporary directory that goes away whatever happens.
    with tempfile.TemporaryDirectory(prefix="mnist-train-image-") as tmp:
        build, save, load = image_commands(arch, api_version, Path(tmp) / "image.tar")
        sh(*build, hint="the build output above says which step failed")
        sh(*save, capture=True, hint=f"is there room for the image in {tempfile.gettempdir()}? else set TMPDIR")
        sh(*load, capture=True, hint=f"is the kind cluster {CLUSTER} up? `kind get clusters`")


def wait_ready(namespace: str, timeout: float = 300) -> None:
    """Wait for the store, Prometheus and the Pushgateway to be available and the bucket to exist."""
    require("kubectl")
    wait = kubectl_argv("--namespace", namespace, "wait", f"--timeout={timeout:.0f}s")
    look = shlex.join(kubectl_argv("--namespace", namespace, "get", "pods,jobs"))
    sh(*wait, "--for=condition=Available", "deployment", "--all", hint=f"see why with `{look}`")
    sh(*wait, "--for=condition=Complete", "job/s3-bucket", hint=f"see why with `{look}`")


def deploy_services(namespace: str) -> None:
    require("kubectl")
    apply(render_manifests(namespace))
    wait_ready(namespace)


def require_store(namespace: str) -> None:
    """Refuse to install into a namespace that `up` has not prepared (the S3 Secret is the chart's dependency)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        client.CoreV1Api().read_namespaced_secret(S3_SECRET, namespace)
    except ApiException as err:
        what = up_hint(namespace) if err.status == 404 else f"reading it failed: {err.status} {err.reason}"
        raise E2EError(f"no Secret {S3_SECRET} in namespace {namespace}: {what}") from err


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


def check_results(release: str, namespace: str) -> None:
    """The chart's own `helm test` pod reads <output>/results.json from the store."""
    sh(*helm_argv("test", release, "--namespace", namespace, "--logs", "--timeout", "5m"),
       hint="the test pod's log above says what is missing")  # fmt: skip


def check_metrics(release: str, namespace: str) -> None:
    query = metrics_query(release)
    response = json.loads(sh(*kubectl_argv("get", "--raw", prometheus_query_path(query, namespace)), capture=True))
    jobs = metric_jobs(response)
    if not jobs:
        look = shlex.join(kubectl_argv("--namespace", namespace, "port-forward", "svc/prometheus", "9090"))
        raise E2EError(f"Prometheus has no mnist_train_* series of run {release} (query: {query}); look with `{look}`")
    print(f"Prometheus has mnist_train_* series of run {release} from: {jobs}")


def delete_cluster() -> None:
    require("kind")
    sh("kind", "delete", "cluster", "--name", CLUSTER)


def up(namespace: str = NAMESPACE) -> None:
    require("docker", "kind", "helm", "kubectl")
    create_cluster()
    connect(f"the kind cluster exists; add its context with `kind export kubeconfig --name {CLUSTER}`")
    install_kuberay()
    build_and_load_image()
    deploy_services(namespace)


def run(timeout: float, namespace: str = NAMESPACE, release: str | None = None) -> str:
    """Install a new release, wait for its RayJob, check its results and metrics; returns the release name."""
    require("helm", "kubectl")
    connect(up_hint(namespace))
    require_store(namespace)
    release = release or new_run_name()
    sh(*install_argv(release, namespace), hint="`helm lint charts/mnist-train -f k8s/values-kind.yaml` may say more")
    uninstall = shlex.join(uninstall_argv(release, namespace))
    remove = f"release {release} in namespace {namespace}; uninstall it with: {uninstall}"
    print(remove, flush=True)
    wait_for_training(release, namespace, timeout)
    check_results(release, namespace)
    check_metrics(release, namespace)
    print(f"OK: run {release} succeeded, results.json is in the store, metrics are in Prometheus")
    print(remove)
    return release


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        choices=["up", "run", "down", "all"],
        help="up: cluster, KubeRay, image, S3 store, Prometheus; run: a new training run and its checks; "
        "down: delete the cluster; all: up, run, down",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the RayJob (default 1800)")
    parser.add_argument("--keep", action="store_true", help="with `all`: leave the cluster running afterwards")
    parser.add_argument(
        "--namespace",
        type=namespace_arg,
        default=NAMESPACE,
        help=f"namespace of the S3 store, Prometheus and the runs; give `up` and `run` the same (default {NAMESPACE})",
    )
    args = parser.parse_args(argv)
    try:
        try:
            if args.command in ("up", "all"):
                up(args.namespace)
            if args.command in ("run", "all"):
                run(args.timeout, args.namespace)
        finally:
            if args.command == "down" or (args.command == "all" and not args.keep and shutil.which("kind")):
                delete_cluster()
    except E2EError as err:
        print(f"kind_e2e: error: {one_line(str(err))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
