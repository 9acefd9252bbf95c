"""A real 2-worker Ray Train run (mnist-sample) watched by a real Prometheus and Pushgateway on loopback.

The session's shared run (`sample_run`, tests/conftest.py) answers most questions; a second run checks a Pushgateway
outage.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import promlib
import pytest
from live_run import FinishedRun as Run
from live_run import LiveRun
from promlib import Server, http_get, start_pushgateway

from job import dashboard

from support import remove_ray_tmp

REPO = Path(__file__).resolve().parents[2]
MODELS = ("mlp", "cnn", "large_cnn")  # the shared run trains every model
OUTAGE_MODELS = ("mlp", "cnn")  # long enough for the outage to span epochs
RUN_TIMEOUT_S = 600


def start_training(args: list[str], ray_tmp: str) -> LiveRun:
    return LiveRun(*args, env={"RAY_TMPDIR": ray_tmp, "RAY_DEDUP_LOGS": "0"})


@pytest.fixture(scope="module")
def run(sample_run: Run) -> Run:
    return sample_run


def test_the_run_succeeds_and_each_worker_logs_its_metrics_port(run: Run) -> None:
    assert run.code == 0, "\n".join(run.lines[-40:])
    ports = {}
    for line in run.lines:
        if found := re.search(r"rank (\d+): serving /metrics on :(\d+)", line):
            ports[int(found[1])] = int(found[2])
    assert sorted(ports) == [0, 1]
    assert len(set(ports.values())) == 2 and set(ports.values()) <= set(range(run.base_port, run.base_port + 4))


def test_prometheus_scraped_both_workers(run: Run) -> None:
    scraped = run.at_end(f'count by (rank, instance) (last_over_time(mnist_train_info{{run="{run.name}", '
                         f'job="mnist-train", instance!=""}}[{run.range}]))')  # fmt: skip
    assert sorted(r["metric"]["rank"] for r in scraped) == ["0", "1"]


def panel_expr(title: str) -> str:
    panel = next(p for p in dashboard.build()["panels"] if p.get("title") == title)
    return panel["targets"][0]["expr"]


def fill(expr: str, run: Run) -> str:
    return promlib.fill(expr, job="mnist-train", run=run.name, model="(" + "|".join(MODELS) + ")", __range=run.range)


def per_epoch(run: Run, title: str) -> dict[tuple[str, str, int], float]:
    result = run.at_end(fill(panel_expr(title), run))
    return {
        (r["metric"]["model"], r["metric"]["split"], int(r["metric"]["epoch"])): float(r["value"][1]) for r in result
    }


def test_every_epochs_loss_and_accuracy_equal_results_json(run: Run) -> None:
    """Read through the dashboard's own per-epoch queries: one point per model, split and epoch."""
    loss, accuracy = per_epoch(run, "Loss per epoch"), per_epoch(run, "Accuracy per epoch")
    expected_loss, expected_accuracy = {}, {}
    for model in MODELS:
        history = run.results["models"][model]["history"]
        assert [h["epoch"] for h in history] == [1, 2]
        for h in history:
            for split, prefix in (("train", ""), ("val", "val_")):
                expected_loss[(model, split, h["epoch"])] = pytest.approx(h[prefix + "loss"], rel=1e-12)
                expected_accuracy[(model, split, h["epoch"])] = pytest.approx(h[prefix + "accuracy"], rel=1e-12)
    assert loss == expected_loss
    assert accuracy == expected_accuracy


def test_epoch_durations_are_there_for_every_epoch(run: Run) -> None:
    result = run.at_end(fill(panel_expr("Epoch duration"), run))
    durations = {(r["metric"]["model"], int(r["metric"]["epoch"])): float(r["value"][1]) for r in result}
    assert sorted(durations) == [(m, e) for m in sorted(MODELS) for e in (1, 2)]
    for (model, epoch), seconds in durations.items():
        reported = run.results["models"][model]["history"][epoch - 1]["seconds"]
        assert 0 < seconds <= reported + 0.5, (model, epoch)


def test_final_test_error_and_loss_equal_results_json(run: Run) -> None:
    error = {r["metric"]["model"]: float(r["value"][1]) for r in run.at_end(fill(panel_expr("Final test error"), run))}
    loss = {r["metric"]["model"]: float(r["value"][1]) for r in run.at_end(fill(panel_expr("Final test loss"), run))}
    models = run.results["models"]
    assert error == {m: pytest.approx(models[m]["test_error"], rel=1e-12) for m in MODELS}
    assert loss == {m: pytest.approx(models[m]["test_loss"], rel=1e-12) for m in MODELS}
    assert all(0 <= e <= 1 for e in error.values())


def test_throughput_is_there_for_both_ranks(run: Run) -> None:
    result = run.prometheus.query_range(
        f'mnist_train_samples_per_second{{run="{run.name}"}}', run.started, run.finished
    )
    seen = {(r["metric"]["model"], r["metric"]["rank"]) for r in result}
    assert seen == {(m, rank) for m in MODELS for rank in ("0", "1")}
    assert all(float(v) > 0 for r in result for _, v in r["values"])


def test_the_run_outcome_was_pushed(run: Run) -> None:
    status = run.at_end(f'mnist_train_run_status{{run="{run.name}"}} == 1')
    assert [r["metric"]["status"] for r in status] == ["succeeded"]
    success = run.at_end(f'mnist_train_last_success_timestamp_seconds{{run="{run.name}"}}')
    assert run.started <= float(success[0]["value"][1]) <= run.finished


def test_every_dashboard_panel_query_returns_data(run: Run) -> None:
    """Every training panel; the Serving row's metrics come from `mnist-train serve`, which a training run does not
    start (tests/test_serve.py reads them from a real server's Ray /metrics; test_dashboard.py checks the names)."""
    empty = []
    for panel in dashboard.build()["panels"]:
        for target in panel.get("targets", []):
            if "ray_mnist_serve_" in target["expr"]:
                continue
            expr = fill(target["expr"], run)
            if target.get("instant"):
                result = run.at_end(expr)
            else:
                result = run.prometheus.query_range(expr, run.started, run.finished, step=2)
            if not result:
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def gateway_has(gateway: Server, text: str) -> bool:
    try:
        return text in http_get(gateway.url + "/metrics").decode()
    except OSError:
        return False


def test_a_pushgateway_outage_mid_run_costs_one_warning_per_worker_and_nothing_else(tmp_path: Path) -> None:
    gateway = start_pushgateway(tmp_path)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    args = [
        "--dataset",
        "mnist-sample",
        "--epochs",
        "3",
        "--workers",
        "2",
        "--models",
        ",".join(OUTAGE_MODELS),
        "--output",
        str(tmp_path / "out"),
        "--run-name",
        f"outage-{os.getpid()}",
        "--pushgateway",
        gateway.url,
    ]
    training = start_training(args, ray_tmp)
    try:
        deadline = time.monotonic() + 300
        while not gateway_has(gateway, 'mnist_train_epochs_completed{instance="",job="mnist-train",model="mlp"'):
            assert training.process.poll() is None and time.monotonic() < deadline, "\n".join(training.lines[-40:])
            time.sleep(0.2)
        gateway.stop()  # after the first pushed epoch
        training.wait_for(r"rank \d: push to Pushgateway .* failed", count=2)
        gateway.start()
        code = training.finish(timeout=RUN_TIMEOUT_S)
        after = http_get(gateway.url + "/metrics").decode()  # what the restarted gateway received
    finally:
        training.stop()
        gateway.stop()
        remove_ray_tmp(ray_tmp)
    assert code == 0, "\n".join(training.lines[-40:])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for model in OUTAGE_MODELS:
        assert [h["epoch"] for h in results["models"][model]["history"]] == [1, 2, 3]
        assert 0 <= results["models"][model]["test_error"] <= 1
    for rank in (0, 1):
        assert len(training.matching(rf"rank {rank}: push to Pushgateway .* failed")) == 1
        assert len(training.matching(rf"rank {rank}: pushes to Pushgateway .* recovered")) == 1
    assert training.matching(r"driver: push to Pushgateway") == []
    assert re.search(r'mnist_train_run_status\{[^}]*status="succeeded"\} 1', after)
    for model in OUTAGE_MODELS:
        assert re.search(rf'mnist_train_test_error_ratio\{{[^}}]*model="{model}",rank="0"[^}}]*\}} ', after)
