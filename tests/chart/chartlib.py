"""Shared helpers of the chart tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import yaml
from helm_python import _native

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mnist-train"
DASHBOARD_CHART = REPO / "charts" / "mnist-train-dashboard"
CRDS = Path(__file__).resolve().parent / "crds"  # copies inside the repo, with their sources (crds/README.md)
K8S_VERSION = "1.30.0"
RELEASE = "demo"
NAMESPACE = "ml"
# What a cluster with the prometheus-operator CRDs reports in .Capabilities.APIVersions.
OPERATOR_APIS = ("monitoring.coreos.com/v1/PodMonitor",)
Manifest = dict[str, Any]


def strict(schema: Any) -> Any:
    """Forbid unknown fields the way `kubectl apply --validate=strict` does: a CRD schema prunes them silently."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def load_crd_schema(filename: str, version: str = "v1") -> dict[str, Any]:
    crd = yaml.load((CRDS / filename).read_text(), Loader=yaml.CSafeLoader)
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return strict(entry["schema"]["openAPIV3Schema"])
    raise LookupError(f"{filename} has no version {version}")


def parse_manifests(rendered: dict[str, str]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def schema_errors(obj: Manifest, crd_validators: dict) -> list[str]:
    """Every schema error of one object as 'json_path: message' (never str(error), which dumps the schema)."""
    key = (obj["apiVersion"], obj["kind"])
    if key in crd_validators:
        return [f"{err.json_path}: {err.message}" for err in crd_validators[key].iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{err.json_path}: {err.message}"]
    return []


def merged(overrides: dict[str, Any]) -> dict[str, Any]:
    """Chart defaults with `overrides` deep-merged in (for computing what a render should contain)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(base: dict, extra: dict) -> dict:
        for key, value in extra.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and value else value
        return base

    def drop_nulls(node: Any) -> Any:  # Helm removes keys whose value is null
        if isinstance(node, dict):
            return {key: drop_nulls(value) for key, value in node.items() if value is not None}
        return node

    values["mnist-common"] = {"global": {}}  # Helm's place for the library chart's values (it has none)
    return drop_nulls(merge(copy.deepcopy(values), overrides))


def render_chart(
    chart: helm_python.Chart, values: dict[str, Any], api_versions: tuple[str, ...] = OPERATOR_APIS, **options: Any
) -> dict[str, str]:
    """Chart.render with .Capabilities.APIVersions set, as `helm install` on a cluster serving those APIs would.

    helm-python-sdk 0.2.2's Chart.render does not expose the engine's api_versions option; its native call does.
    """
    options = {
        "name": RELEASE,
        "namespace": NAMESPACE,
        "is_install": True,
        **options,
        "api_versions": list(api_versions),
    }
    chart.validate_schema(values)
    return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(options)))
