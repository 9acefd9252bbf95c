"""job.metrics without Ray: epochs of a tiny tf_keras model, /metrics, promtool, ports, real Pushgateway."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tf_keras
from prometheus_client.parser import text_string_to_metric_families
from promlib import Prometheus, Server, binary, free_port_range, http_get

from job import dashboard, metrics
from job.config import ConfigError, TrainConfig

from support import free_port

RUN = "unit-run"


def make_config(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(
        **{"output": str(tmp_path / "out"), "run_name": RUN, "models": ("mlp", "cnn"), "epochs": 3, **kw}
    )


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label items: value} of one metric family in exposition text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    matches = [v for k, v in samples(text, name).items() if labels.items() <= dict(k).items()]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} matching samples in\n{text}"
    return matches[0]


CPU = {"type": "CPU", "name": "cpu", "count": 1}


def exporter(tmp_path: Path, rank: int, workers: int, dataset: str = "x", **kw) -> metrics.WorkerMetrics:
    return metrics.WorkerMetrics(make_config(tmp_path, **kw), rank, workers, dataset, CPU)


def fit_tiny_model(worker: metrics.WorkerMetrics, model_name: str, epochs: int) -> list[dict[str, float]]:
    """Fit epoch by epoch and record each epoch like job/worker.py does (64 examples an epoch); return the records."""
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 4), dtype=np.float32), rng.integers(0, 3, 64)
    model = tf_keras.Sequential([tf_keras.layers.Input((4,)), tf_keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        fit = model.fit(x, y, validation_data=(x[:16], y[:16]), batch_size=16, initial_epoch=epoch, epochs=epoch + 1,
                        verbose=0)  # fmt: skip
        record = {"epoch": epoch + 1, **{k: float(v[-1]) for k, v in fit.history.items()},
                  "seconds": time.perf_counter() - started}  # fmt: skip
        worker.record_epoch(model_name, record, local_examples=64)
        history.append(record)
    return history


@pytest.fixture
def chief(tmp_path: Path):
    chief = exporter(tmp_path, 0, 2, "mnist-sample", metrics_port=free_port())
    yield chief
    chief.close()


def scrape(exporter: metrics.WorkerMetrics) -> str:
    return http_get(f"http://127.0.0.1:{exporter.port}/metrics").decode()


def test_every_epoch_of_a_real_fit_is_exported(chief: metrics.WorkerMetrics) -> None:
    history = fit_tiny_model(chief, "mlp", epochs=3)
    text = scrape(chief)
    for epoch, logs in enumerate(history, start=1):
        for split, (loss_key, acc_key) in metrics.SPLIT_KEYS.items():
            labels = {"model": "mlp", "split": split, "epoch": str(epoch), "run": RUN, "rank": "0"}
            assert value(text, "mnist_train_epoch_loss", **labels) == logs[loss_key]
            assert value(text, "mnist_train_epoch_accuracy_ratio", **labels) == logs[acc_key]
        assert value(text, "mnist_train_epoch_duration_seconds", model="mlp", epoch=str(epoch)) > 0
    assert value(text, "mnist_train_epochs_completed", model="mlp") == 3
    assert value(text, "mnist_train_epochs_planned", model="mlp") == 3
    assert value(text, "mnist_train_samples_total", model="mlp", rank="0") == 3 * 64
    assert value(text, "mnist_train_samples_per_second", model="mlp", rank="0") > 0


def test_epochs_planned_follow_each_models_recipe(tmp_path: Path) -> None:
    worker = exporter(tmp_path, 0, 1, "mnist-sample", models=("mlp", "deep_bn_cnn"), epochs=None,
                      metrics_port=free_port())  # fmt: skip
    try:
        for name in ("mlp", "deep_bn_cnn"):
            worker.record_epoch(name, {"epoch": 1, "loss": 1.0, "seconds": 0.1}, local_examples=64)
        text = scrape(worker)
        assert value(text, "mnist_train_epochs_planned", model="mlp") == 10
        assert value(text, "mnist_train_epochs_planned", model="deep_bn_cnn") == 40
    finally:
        worker.close()


def test_info_start_time_and_test_results(chief: metrics.WorkerMetrics) -> None:
    chief.record_test("cnn", test_loss=0.03, test_error=0.0101)
    text = scrape(chief)
    info = dict(next(iter(samples(text, "mnist_train_info"))))
    assert info | {"dataset": "mnist-sample", "workers": "2", "gpu": "false", "run": RUN, "rank": "0"} == info
    assert {"tensorflow_version", "tf_keras_version", "ray_version", "python_version", "version"} <= info.keys()
    assert abs(value(text, "mnist_train_run_start_timestamp_seconds") - time.time()) < 60
    assert value(text, "mnist_train_test_error_ratio", model="cnn") == 0.0101
    assert value(text, "mnist_train_test_loss", model="cnn") == 0.03


def test_non_chief_exports_throughput_but_not_the_global_loss(tmp_path: Path) -> None:
    worker = exporter(tmp_path, 1, 2, "mnist-sample", metrics_port=free_port())
    try:
        record = {"epoch": 1, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.7, "seconds": 0.05}
        worker.record_epoch("cnn", record, local_examples=500)
        text = scrape(worker)
    finally:
        worker.close()
    assert samples(text, "mnist_train_epoch_loss") == {}
    assert samples(text, "mnist_train_epoch_duration_seconds") == {}
    rate = value(text, "mnist_train_samples_per_second", model="cnn", rank="1")
    assert rate == pytest.approx(500 / 0.05)
    assert value(text, "mnist_train_epochs_completed", model="cnn", rank="1") == 1


def test_promtool_finds_nothing_to_complain_about(chief: metrics.WorkerMetrics) -> None:
    fit_tiny_model(chief, "mlp", epochs=2)
    chief.record_test("mlp", 0.1, 0.02)
    text = scrape(chief)
    assert "mnist_train_epoch_loss{" in text
    lint = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


def test_port_in_use_takes_the_next_free_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = free_port_range(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        caplog.set_level(logging.INFO, logger="job.metrics")
        exporters = [exporter(tmp_path, r, 2, metrics_port=base) for r in (0, 1)]
        try:
            assert [e.port for e in exporters] == [base + 1, base + 2]
            for rank, each in enumerate(exporters):
                assert f'rank="{rank}"' in scrape(each)
                assert f"rank {rank}: serving /metrics on :{base + 1 + rank}" in caplog.messages
        finally:
            for each in exporters:
                each.close()


def test_port_zero_serves_nothing_and_close_frees_the_port(tmp_path: Path) -> None:
    off = exporter(tmp_path, 0, 1)
    assert off.port is None
    off.close()
    port = free_port()
    on = exporter(tmp_path, 0, 1, metrics_port=port)
    assert on.port == port
    on.close()
    on.close()
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))  # fails if the server still holds it


def gateway_text(gateway: Server) -> str:
    return http_get(gateway.url + "/metrics").decode()


def test_each_epoch_is_pushed_under_job_run_model_rank(tmp_path: Path, pushgateway: Server) -> None:
    workers = [exporter(tmp_path, r, 2, pushgateway=pushgateway.url) for r in (0, 1)]
    for worker in workers:
        record = {"epoch": 1, "loss": 0.25, "accuracy": 0.5, "val_loss": 0.3, "val_accuracy": 0.4, "seconds": 0.1}
        worker.record_epoch("mlp", record, local_examples=100)
        assert worker.flush()
    text = gateway_text(pushgateway)
    group = {"job": "mnist-train", "run": RUN, "model": "mlp"}
    assert value(text, "mnist_train_epoch_loss", **group, rank="0", split="val", epoch="1") == 0.3
    for rank in ("0", "1"):  # ranks do not overwrite each other
        assert value(text, "mnist_train_samples_total", **group, rank=rank) == 100
        assert value(text, "mnist_train_info", job="mnist-train", run=RUN, rank=rank) == 1
    assert value(text, "push_failure_time_seconds", **group, rank="0") == 0
    workers[0].record_test("mlp", 0.2, 0.05)
    assert workers[0].flush()
    assert value(gateway_text(pushgateway), "mnist_train_test_error_ratio", **group, rank="0") == 0.05


def push_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "push to Pushgateway" in r.msg]


def recoveries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "recovered" in r.msg]


def epoch_end(worker: metrics.WorkerMetrics, epoch: int) -> None:
    record = {"epoch": epoch + 1, "loss": 1.0 / (epoch + 1), "accuracy": 0.5, "seconds": 0.01}
    worker.record_epoch("mlp", record, local_examples=10)
    worker.flush()


def test_outage_logs_one_warning_per_outage_and_recovers(
    tmp_path: Path, pushgateway: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="job.metrics")
    worker = exporter(tmp_path, 0, 1, pushgateway=pushgateway.url)
    epoch_end(worker, 0)
    for outage in (1, 2):
        pushgateway.stop()
        for epoch in range(3):
            epoch_end(worker, epoch)  # training goes on: nothing raises
        assert len(push_warnings(caplog)) == outage
        assert "rank 0: push to Pushgateway" in push_warnings(caplog)[-1]
        pushgateway.start()
        assert len(recoveries(caplog)) == outage - 1
        epoch_end(worker, 2)
        assert len(recoveries(caplog)) == outage
        assert "after 3 failed attempt(s)" in recoveries(caplog)[-1]
    assert len(push_warnings(caplog)) == 2
    worker.close()
    text = gateway_text(pushgateway)  # the restarted gateway has the state again (it keeps nothing across restarts)
    assert value(text, "mnist_train_epoch_loss", epoch="3", split="train", rank="0") == pytest.approx(1 / 3)


def test_driver_pushes_the_run_outcome(tmp_path: Path, pushgateway: Server) -> None:
    config = make_config(tmp_path, pushgateway=pushgateway.url)
    results = {"mlp": (0.07, 0.021), "cnn": (0.03, 0.0101)}
    assert metrics.publish_run_end(config, "succeeded", results, started_at=1000.0, finished_at=1090.5)
    text = gateway_text(pushgateway)
    run = {"job": "mnist-train", "run": RUN}
    assert value(text, "mnist_train_run_status", **run, status="succeeded") == 1
    assert value(text, "mnist_train_run_status", **run, status="failed") == 0
    assert value(text, "mnist_train_run_start_timestamp_seconds", **run) == 1000.0
    assert value(text, "mnist_train_run_end_timestamp_seconds", **run) == 1090.5
    assert value(text, "mnist_train_last_success_timestamp_seconds", **run) == 1090.5
    for model, (loss, error) in results.items():
        assert value(text, "mnist_train_test_error_ratio", **run, model=model) == error
        assert value(text, "mnist_train_test_loss", **run, model=model) == loss


def test_a_failed_run_pushes_failed_and_no_success_time(tmp_path: Path, pushgateway: Server) -> None:
    config = make_config(tmp_path, pushgateway=pushgateway.url)
    assert metrics.publish_run_end(config, "failed", {}, started_at=1000.0, finished_at=1001.0)
    text = gateway_text(pushgateway)
    assert value(text, "mnist_train_run_status", status="failed") == 1
    assert value(text, "mnist_train_run_status", status="succeeded") == 0
    assert samples(text, "mnist_train_last_success_timestamp_seconds") == {}


def test_driver_push_to_a_dead_gateway_warns_once_and_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, pushgateway=f"http://127.0.0.1:{free_port()}")
    assert metrics.publish_run_end(config, "succeeded", {"mlp": (0.1, 0.02)}, 1.0, 2.0) is False
    assert len(push_warnings(caplog)) == 1 and push_warnings(caplog)[0].startswith("driver: ")
    assert metrics.publish_run_end(make_config(tmp_path), "succeeded", {}, 1.0, 2.0) is True  # no --pushgateway: no-op


def loss_panel_query() -> str:
    panel = next(p for p in dashboard.build()["panels"] if p.get("title") == "Loss per epoch")
    return panel["targets"][0]["expr"]


def test_epochs_shorter_than_the_scrape_interval_all_reach_prometheus(
    tmp_path: Path, prometheus_factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten epochs end between two scrapes; the dashboard's loss query still returns every one of them."""
    port = free_port()
    prom: Prometheus = prometheus_factory(
        [{"job_name": "mnist-train", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]
    )
    worker = exporter(tmp_path, 0, 1, metrics_port=port, epochs=10)
    try:
        for epoch in range(10):
            epoch_end(worker, epoch)  # all within a few milliseconds, far below the 1 s scrape interval
        expr = loss_panel_query().replace("$namespace", ".*").replace("$job", ".*").replace("$run", RUN)
        expr = expr.replace("$model", "mlp").replace("$__range", "5m")
        result = prom.wait_for(expr, lambda r: len(r) == 10)
    finally:
        worker.close()
    by_epoch = {int(r["metric"]["epoch"]): float(r["value"][1]) for r in result}
    assert by_epoch == {e: pytest.approx(1.0 / e) for e in range(1, 11)}
    assert {r["metric"]["series"] for r in result} == {"mlp train"}


def test_without_a_pushgateway_the_outcome_is_served_until_prometheus_scrapes_it(
    tmp_path: Path, prometheus_factory, capsys: pytest.CaptureFixture
) -> None:
    port = free_port()
    config = make_config(tmp_path, metrics_port=port, metrics_linger=60)
    prometheus = prometheus_factory([{"job_name": "head", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}])
    started = time.monotonic()
    assert metrics.publish_run_end(config, "succeeded", {"mlp": (0.07, 0.021)}, started_at=1000.0, finished_at=1090.5)
    assert time.monotonic() - started < 30, "it lingered although Prometheus scrapes every second"
    assert "outcome scraped after" in capsys.readouterr().out
    assert not port_is_open(port), "the outcome server must stop once scraped"
    status = prometheus.wait_for(f'mnist_train_run_status{{run="{RUN}",status="succeeded"}}', lambda r: len(r) == 1)
    assert status[0]["value"][1] == "1"
    error = prometheus.query(f'mnist_train_test_error_ratio{{run="{RUN}",model="mlp"}}')
    assert [float(e["value"][1]) for e in error] == [0.021]


def test_an_unscraped_outcome_lingers_only_as_long_as_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    config = make_config(tmp_path, metrics_port=port, metrics_linger=1.5)
    started = time.monotonic()
    metrics.publish_run_end(config, "failed", {}, started_at=1.0, finished_at=2.0)
    assert 1.4 < time.monotonic() - started < 5
    assert any(f"not scraped in 1.5 s; is Prometheus scraping port {port}" in r.getMessage() for r in caplog.records)
    assert not port_is_open(port)


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_pushgateway_that_never_answers_does_not_hold_up_training(tmp_path: Path) -> None:
    """A gateway that accepts connections and never answers: each push waits its whole timeout (5 s), on the push
    thread; the epochs go on at once, and close() waits a bounded time for the last push."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        worker = exporter(tmp_path, 0, 1, pushgateway=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        for epoch in range(3):
            worker.record_epoch("mlp", {"epoch": epoch + 1, "loss": 1.0, "seconds": 0.01}, local_examples=10)
        recorded = time.monotonic() - started
        assert not worker.flush(timeout=0.5)  # the first push is still waiting for the silent gateway
        worker.close()
        closed = time.monotonic() - started
    print(f"\n3 epochs recorded in {recorded * 1000:.1f} ms against a silent Pushgateway; close() after {closed:.1f} s")
    assert recorded < 1.0 and closed < 3 * metrics.PUSH_TIMEOUT_S


def test_a_pushgateway_url_with_credentials_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--pushgateway http://<hidden>@\.\.\. carries credentials"):
        make_config(tmp_path, pushgateway="http://user:secret@gateway:9091")


def test_on_a_cluster_the_driver_is_a_target_that_is_up_for_the_whole_run(
    tmp_path: Path, prometheus_factory, capsys: pytest.CaptureFixture
) -> None:
    """The head pod's train-metrics port, which the PodMonitor declares: up while the run trains (status running),
    then the outcome, served until scraped. Locally the driver serves nothing while it trains (the workers do)."""
    port = free_port()
    config = make_config(tmp_path, address="10.0.0.1:6379", metrics_port=port, metrics_linger=60)
    assert metrics.DriverEndpoint.start(make_config(tmp_path, metrics_port=port), 1000.0) is None
    prometheus = prometheus_factory([{"job_name": "head", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}])
    endpoint = metrics.DriverEndpoint.start(config, started_at=1000.0)
    try:
        prometheus.wait_for('up{job="head"}', lambda r: len(r) == 1 and r[0]["value"][1] == "1")
        running = prometheus.wait_for(f'mnist_train_run_status{{run="{RUN}"}} == 1', lambda r: len(r) == 1)
        assert running[0]["metric"]["status"] == "running"
    finally:
        metrics.publish_run_end(config, "succeeded", {"mlp": (0.07, 0.021)}, 1000.0, 1090.5, endpoint=endpoint)
    assert "outcome scraped after" in capsys.readouterr().out and not port_is_open(port)
    done = prometheus.wait_for(f'mnist_train_run_status{{run="{RUN}"}} == 1', lambda r: len(r) == 1)
    assert done[0]["metric"]["status"] == "succeeded"
