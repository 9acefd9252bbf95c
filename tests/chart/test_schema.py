"""values.schema.json: strict everywhere, shipped values pass, every bad values file fails with a clear message."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml
from chartlib import CHART, DASHBOARD_CHART, REPO

BAD_VALUES = sorted((Path(__file__).parent / "bad-values").glob("*.yaml"))
GOOD_VALUES = [CHART / "values.yaml", REPO / "k8s" / "values-kind.yaml", REPO / "k8s" / "values-gpu.yaml",
               REPO / "k8s" / "values-best-model.yaml"]  # fmt: skip
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ")


def loose_objects(node: Any, where: str = "$") -> list[str]:
    """Object schemas that would accept unknown keys: every object must close with additionalProperties."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "additionalProperties" not in node:
            found.append(where)
        for key, value in node.items():
            found += loose_objects(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += loose_objects(value, f"{where}[{index}]")
    return found


def test_schema_closes_every_object() -> None:
    assert loose_objects(SCHEMA) == []
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_there_are_at_least_ten_bad_values_files() -> None:
    assert len(BAD_VALUES) >= 10


@pytest.mark.parametrize("path", BAD_VALUES, ids=lambda p: p.stem)
def test_bad_values_are_rejected_with_a_clear_message(chart: helm_python.Chart, path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert expected_message(path) in str(caught.value)
    with pytest.raises(helm_python.HelmError) as at_render:  # an install checks the same schema first
        chart.render(values, name="demo", namespace="ml")
    assert expected_message(path) in str(at_render.value)


@pytest.mark.parametrize("path", GOOD_VALUES, ids=lambda p: p.name)
def test_shipped_values_pass(chart: helm_python.Chart, path: Path) -> None:
    chart.validate_schema(yaml.safe_load(path.read_text()))


def test_app_version_is_the_package_version() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_yaml["appVersion"] == pyproject["project"]["version"]
    assert chart_yaml["apiVersion"] == "v2"


LINTED = [(CHART, path) for path in GOOD_VALUES] + [(DASHBOARD_CHART, DASHBOARD_CHART / "values.yaml")]


@pytest.mark.parametrize(("chart_path", "path"), LINTED, ids=lambda p: p.name)
def test_charts_lint_strictly(chart_path: Path, path: Path) -> None:
    report = helm_python.lint(chart_path, yaml.safe_load(path.read_text()), strict=True)
    assert report["errors"] == []
    # Helm's severities: 1 info, 2 warning, 4 error. Only the "icon is recommended" info is tolerated.
    assert [m for m in report["messages"] if m["severity"] > 1] == []
