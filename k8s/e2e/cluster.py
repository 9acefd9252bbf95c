"""The kind cluster and the KubeRay operator in it."""

from __future__ import annotations

from e2e.commands import engine, helm_argv, require, sh
from e2e.settings import CLUSTER, KIND_CONFIG, KUBERAY_NAMESPACE, KUBERAY_REPO, KUBERAY_VERSION


def create_cluster() -> None:
    require(engine(), "kind")
    if CLUSTER in sh("kind", "get", "clusters", capture=True, hint=f"is {engine()} running?").split():
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


def delete_cluster() -> None:
    require("kind")
    sh("kind", "delete", "cluster", "--name", CLUSTER)
