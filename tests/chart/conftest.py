"""Fixtures for the chart tests: the chart rendered in-process by the Helm engine, CRD schemas loaded once."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make chartlib importable for the tests

from chartlib import CHART, NAMESPACE, PLACEHOLDER_DASHBOARD, RELEASE, Manifest, load_crd_schema, parse_manifests  # noqa: E402


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart; it gets a stand-in dashboard if the real one is not generated yet."""
    target = tmp_path_factory.mktemp("chart") / "mnist-train"
    shutil.copytree(CHART, target)
    dashboard = target / "dashboards" / "training.json"
    if not dashboard.exists():
        dashboard.parent.mkdir(exist_ok=True)
        dashboard.write_text(json.dumps(PLACEHOLDER_DASHBOARD))
    return target


@pytest.fixture(scope="session")
def chart(chart_dir: Path) -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(chart_dir) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator for the CRD's openAPIV3Schema; the RayJob CRD takes ~2 s to parse."""
    schemas = {
        ("ray.io/v1", "RayJob"): load_crd_schema("ray.io_rayjobs.yaml"),
        ("monitoring.coreos.com/v1", "PodMonitor"): load_crd_schema("monitoring.coreos.com_podmonitors.yaml"),
    }
    return {key: jsonschema.Draft7Validator(schema) for key, schema in schemas.items()}


@pytest.fixture(scope="session")
def render(chart: helm_python.Chart) -> Callable[[dict[str, Any]], list[Manifest]]:
    def _render(values: dict[str, Any]) -> list[Manifest]:
        return parse_manifests(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))

    return _render
