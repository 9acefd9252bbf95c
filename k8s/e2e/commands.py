"""The CLIs (docker, kind, helm, kubectl) and the Kubernetes client, every cluster call pinned to the kind context.

A step that cannot go on raises E2EError with one message saying why and what to do.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from e2e.settings import CONTEXT, NAMESPACE

INSTALL_HINTS = {
    "docker": "https://docs.docker.com/engine/install/",
    "podman": "https://podman.io/docs/installation (kind's podman provider: KIND_EXPERIMENTAL_PROVIDER=podman)",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "helm": "https://helm.sh/docs/intro/install/",
    "kubectl": "https://kubernetes.io/docs/tasks/tools/",
}
UP_FIRST = "run `python k8s/kind_e2e.py up` first"


def engine() -> str:
    """The container engine kind runs its nodes on: podman with kind's KIND_EXPERIMENTAL_PROVIDER=podman, else
    Docker. The same engine builds the image."""
    return "podman" if os.environ.get("KIND_EXPERIMENTAL_PROVIDER", "").lower() == "podman" else "docker"


class E2EError(RuntimeError):
    """A step cannot go on; the message says why and what to do."""


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
