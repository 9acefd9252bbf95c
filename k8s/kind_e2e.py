"""The whole local Kubernetes flow on kind: cluster, KubeRay, image, S3 + Prometheus, the chart, and the checks.

    python k8s/kind_e2e.py up     # kind cluster, KubeRay operator, CPU image loaded, S3 store, Prometheus, Pushgateway
    python k8s/kind_e2e.py run    # a new release of the chart (k8s/values-kind.yaml), wait for its RayJob, check it
    python k8s/kind_e2e.py down   # delete the kind cluster
    python k8s/kind_e2e.py all    # up, run, down (down also when a step fails; --keep to leave the cluster)

It needs Docker, kind, helm and kubectl on PATH; every step says which one is missing. The Kubernetes work (objects,
RayJob status, logs) goes through the `kubernetes` client; the CLIs are used only for what has no API: building and
loading the image, creating the cluster, Helm releases, and reading Prometheus through the API server proxy. Every
helm and kubectl call and the client use the kubeconfig context kind-mnist-train, never the current context.

This file is the steps, top to bottom; what each does is in k8s/e2e/, a module per concern.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sys
from collections.abc import Sequence

from e2e.checks import check_metrics, check_results
from e2e.cluster import create_cluster, delete_cluster, install_kuberay
from e2e.commands import E2EError, connect, engine, one_line, require, sh, up_hint
from e2e.images import build_and_load_image
from e2e.runs import install_argv, new_run_name, uninstall_argv, wait_for_training
from e2e.services import deploy_services, require_store
from e2e.settings import CLUSTER, NAMESPACE

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def namespace_arg(value: str) -> str:
    """argparse type for --namespace: a Kubernetes namespace name."""
    if not DNS_LABEL.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a namespace name; use 1-63 lowercase letters, digits, '-'")
    return value


def up(namespace: str = NAMESPACE) -> None:
    require(engine(), "kind", "helm", "kubectl")
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
