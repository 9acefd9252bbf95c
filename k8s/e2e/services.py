"""The services a run needs in its namespace: the S3 store (and its Secret), Prometheus and the Pushgateway."""

from __future__ import annotations

import base64
import shlex
from collections.abc import Iterable
from typing import Any

import yaml

from e2e.commands import E2EError, kubectl_argv, require, sh, up_hint
from e2e.settings import IMAGE, MANIFESTS, NAMESPACE, S3_SECRET, S3_TEST_KEYS


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
