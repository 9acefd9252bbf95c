"""Fixtures for the chart tests: the charts rendered in-process by the Helm engine, CRD schemas loaded once."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: make chartlib importable for the tests

from chartlib import CHART, Manifest, load_crd_schema, parse_manifests, render_chart  # noqa: E402


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
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
        return parse_manifests(render_chart(chart, values))

    return _render
