"""Shared helpers of the chart tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mnist-train"
CRDS = REPO.parent / "shared" / "crds"
K8S_VERSION = "1.30.0"
RELEASE = "demo"
NAMESPACE = "ml"
# Another engineer generates the dashboard; until it lands, the tests' copy of the chart gets a stand-in.
PLACEHOLDER_DASHBOARD = {
    "title": "mnist-train (test stand-in)",
    "uid": "mnist-train",
    "panels": [],
    "schemaVersion": 39,
}

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

    return merge(copy.deepcopy(values), overrides)
