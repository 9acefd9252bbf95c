"""The Grafana dashboard: the JSON in the chart is the generator's output, and its queries are valid PromQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import promlib
from promlib import binary

from job import dashboard, metrics

REPO = Path(__file__).resolve().parents[2]
IN_CHART = REPO / "charts" / "mnist-train-dashboard" / "dashboards" / "training.json"


def panels() -> list[dict]:
    return [p for p in dashboard.build()["panels"] if p["type"] != "row"]


def fill(expr: str) -> str:
    return promlib.fill(expr, run="some-run", model="(mlp|cnn)")


def test_the_json_in_the_chart_is_what_the_generator_writes() -> None:
    assert IN_CHART.exists(), "generate it: python -m job.dashboard --output " + str(IN_CHART.relative_to(REPO))
    assert IN_CHART.read_text() == dashboard.render(), "stale: run python -m job.dashboard --output <chart json>"


def test_cli_writes_the_same_json_to_stdout_and_to_output(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    cmd = [sys.executable, "-m", "job.dashboard"]
    stdout = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO).stdout
    subprocess.run([*cmd, "--output", str(out)], check=True, cwd=REPO)
    assert stdout == out.read_text() == IN_CHART.read_text()


def test_variables_and_panels_are_the_ones_users_asked_for() -> None:
    built = dashboard.build()
    assert [v["name"] for v in built["templating"]["list"]] == ["datasource", "namespace", "job", "run", "model"]
    titles = {p["title"] for p in panels()}
    wanted = {"Loss per epoch", "Accuracy per epoch", "Final test error", "Epoch duration", "Throughput per worker",
              "Epochs done / total", "Run status", "Ray Train controller state"}  # fmt: skip
    assert wanted <= titles
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]


def test_per_epoch_panels_plot_against_the_epoch_label() -> None:
    per_epoch = [p for p in panels() if p["type"] == "trend"]
    assert {p["title"] for p in per_epoch} == {"Loss per epoch", "Accuracy per epoch", "Epoch duration"}
    for panel in per_epoch:
        target = panel["targets"][0]
        assert (target["instant"], target["format"]) == (True, "table")
        assert "max by (epoch, model" in target["expr"]
        assert panel["options"]["xField"] == "epoch"
        ids = [t["id"] for t in panel["transformations"]]
        assert ids == ["groupingToMatrix", "organize", "convertFieldType", "sortBy"]


def test_every_query_uses_known_metrics_and_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule); each mnist_train_* name is one job.metrics exports."""
    known = set(metrics.WORKER_GAUGES) | set(metrics.RUN_GAUGES) | {n + "_total" for n in metrics.WORKER_COUNTERS}
    exprs = [fill(t["expr"]) for p in panels() for t in p["targets"]]
    for expr in exprs:
        names = {w for w in expr.replace("(", " ").replace("{", " ").split() if w.startswith("mnist_train_")}
        assert names <= known, names - known
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"q{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(json.dumps(rules))
    check = subprocess.run([binary("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


def test_the_serving_row_queries_the_metrics_the_model_server_exports() -> None:
    """Ray exports a replica's metric `name` as ray_<name>, with _total for counters and _bucket for histograms."""
    import re

    from job import serve

    source = Path(serve.__file__).read_text()
    exported = set(re.findall(r'(?:Counter|Histogram)\(\s*"(mnist_serve_\w+)"', source))
    assert exported == {"mnist_serve_requests", "mnist_serve_request_duration_seconds", "mnist_serve_batch_size"}
    serving = [p for p in panels() if "ray_mnist_serve_" in p["targets"][0]["expr"]]
    assert {p["title"] for p in serving} == {
        "Requests per second by status", "Request latency p50", "Digits per model call (p50)"}  # fmt: skip
    for panel in serving:
        names = set(re.findall(r"ray_(mnist_serve_\w+?)(?:_total|_bucket)\b", panel["targets"][0]["expr"]))
        assert names and names <= exported, (panel["title"], names)
