"""Prometheus metrics of a training run: per-epoch records, a /metrics server per worker, Pushgateway pushes.

Two routes, both optional: every worker serves /metrics while it trains (`--metrics-port`), and every worker pushes its
series to a Pushgateway after each epoch (`--pushgateway`). The driver publishes the run's outcome at the end: pushed,
and with `--metrics-linger` served until scraped (scrape-only setups). A metric problem never fails training. The
design (why per-epoch gauges carry an `epoch` label) is in docs/metrics.md.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import HTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server
from prometheus_client.metrics_core import Metric

from job import versions
from job.config import TrainConfig

log = logging.getLogger(__name__)

JOB = "mnist-train"
BIND_ADDRESS = "0.0.0.0"
PORT_ATTEMPTS = 100
PUSH_TIMEOUT_S = 5.0
STATUSES = ("succeeded", "failed")
SPLIT_KEYS = {"train": ("loss", "accuracy"), "val": ("val_loss", "val_accuracy")}

# name -> (help, extra labels beyond run/rank). One table, so every process exports a name with the same help and type.
WORKER_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist_train_info": (
        "Run metadata; always 1.",
        ("dataset", "workers", "gpu", "device_type", "device_name", "devices", "version", "python_version")
        + ("tensorflow_version", "tf_keras_version", "ray_version"),
    ),
    "mnist_train_run_start_timestamp_seconds": ("Unix time the run (as seen by this process) started.", ()),
    "mnist_train_epoch_loss": ("Loss at the end of an epoch (chief only).", ("model", "split", "epoch")),
    "mnist_train_epoch_accuracy_ratio": (
        "Accuracy 0-1 at the end of an epoch (chief only).",
        ("model", "split", "epoch"),
    ),
    "mnist_train_epoch_duration_seconds": ("Wall time of an epoch incl. validation (chief only).", ("model", "epoch")),
    "mnist_train_samples_per_second": (
        "Training examples per second of this worker in its last epoch, counted from its batches.",
        ("model",),
    ),
    "mnist_train_epochs_completed": ("Epochs finished so far (1-based, counts resumed epochs).", ("model",)),
    "mnist_train_epochs_planned": ("Epochs this run trains per model.", ("model",)),
    "mnist_train_test_loss": ("Loss on the full test set after training.", ("model",)),
    "mnist_train_test_error_ratio": ("Error (0-1) on the full test set after training.", ("model",)),
}
WORKER_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist_train_samples": ("Training examples this worker's steps consumed, counted from its batches.", ("model",)),
}
RUN_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist_train_run_start_timestamp_seconds": WORKER_GAUGES["mnist_train_run_start_timestamp_seconds"],
    "mnist_train_run_end_timestamp_seconds": ("Unix time the run ended.", ()),
    "mnist_train_run_status": ("1 for the run's final status (succeeded or failed), else 0.", ("status",)),
    "mnist_train_last_success_timestamp_seconds": ("Unix time the run ended successfully.", ()),
    "mnist_train_test_loss": WORKER_GAUGES["mnist_train_test_loss"],
    "mnist_train_test_error_ratio": WORKER_GAUGES["mnist_train_test_error_ratio"],
}


class _Subset:
    """A read-only view of a registry that keeps the samples whose labels pass `keep` (one Pushgateway group)."""

    def __init__(self, registry: CollectorRegistry, keep: Callable[[Mapping[str, str]], bool]) -> None:
        self._registry, self._keep = registry, keep

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            samples = [s for s in family.samples if self._keep(s.labels)]
            if samples:
                kept = Metric(family.name, family.documentation, family.type, family.unit)
                kept.samples = samples
                yield kept


def _group(registry: CollectorRegistry, key: dict[str, str]) -> tuple[dict[str, str], _Subset]:
    """The Pushgateway group `key`: series that carry `model` only in a per-model group, and the rest without it."""
    model = key.get("model")
    return key, _Subset(registry, lambda labels: labels.get("model") == model)


class _Pusher:
    """Pushes groups to a Pushgateway; logs one warning per failure streak and one info line on recovery."""

    def __init__(self, url: str, who: str) -> None:
        self.url, self.who, self.failures = url, who, 0

    def push(self, groups: Iterable[tuple[dict[str, str], _Subset]]) -> bool:
        try:
            for key, subset in groups:
                push_to_gateway(self.url, job=JOB, registry=subset, grouping_key=key, timeout=PUSH_TIMEOUT_S)
        except Exception as err:  # a failed push must never fail training
            if not self.failures:
                log.warning(
                    "%s: push to Pushgateway %s failed (%s); training goes on, retrying after each epoch",
                    self.who,
                    self.url,
                    err,
                )
            self.failures += 1
            return False
        if self.failures:
            log.info(
                "%s: pushes to Pushgateway %s recovered after %d failed attempt(s)", self.who, self.url, self.failures
            )
            self.failures = 0
        return True


def _serve(registry: CollectorRegistry, port: int, who: str) -> tuple[HTTPServer | None, int | None]:
    """Serve /metrics on `port` or the next free port above it; (server, port), or (None, None) if none is free."""
    for candidate in range(port, min(port + PORT_ATTEMPTS, 65536)):
        try:
            server, _ = start_http_server(candidate, addr=BIND_ADDRESS, registry=registry)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            continue
        if candidate != port:
            log.info("%s: port %d is in use, took the next free one", who, port)
        log.info("%s: serving /metrics on :%d", who, candidate)
        return server, candidate
    log.warning("%s: ports %d-%d are all in use; not serving /metrics", who, port, port + PORT_ATTEMPTS - 1)
    return None, None


def _metrics(registry: CollectorRegistry, labels: tuple[str, ...]) -> dict[str, Gauge | Counter]:
    made: dict[str, Gauge | Counter] = {}
    for name, (doc, extra) in WORKER_GAUGES.items():
        made[name] = Gauge(name, doc, labels + extra, registry=registry)
    for name, (doc, extra) in WORKER_COUNTERS.items():
        made[name] = Counter(name, doc, labels + extra, registry=registry)
    return made


class WorkerMetrics:
    """The metrics of one worker process: its own registry, optional /metrics server and optional Pushgateway pushes."""

    def __init__(
        self, config: TrainConfig, rank: int, world_size: int, dataset_name: str, device: Mapping[str, object]
    ) -> None:
        self.config, self.rank, self.chief = config, rank, rank == 0
        self.who = f"rank {rank}"
        self.registry = CollectorRegistry()
        self._m = _metrics(self.registry, ("run", "rank"))
        self._ids = {"run": config.run_name, "rank": str(rank)}
        self._models: list[str] = []
        info = {
            "dataset": dataset_name,
            "workers": str(world_size),
            "gpu": str(device["type"] == "GPU").lower(),
            "device_type": str(device["type"]),
            "device_name": str(device["name"]),
            "devices": str(device["count"]),
            **{f"{k}_version" if k != "mnist_train" else "version": v for k, v in versions().items()},
        }
        self._m["mnist_train_info"].labels(**self._ids, **info).set(1)
        self._m["mnist_train_run_start_timestamp_seconds"].labels(**self._ids).set(time.time())
        self._pusher = _Pusher(config.pushgateway, self.who) if config.pushgateway else None
        self._server, self.port = None, None
        if config.metrics_port > 0:
            self._server, self.port = _serve(self.registry, config.metrics_port, self.who)

    def record_epoch(self, model: str, record: Mapping[str, float], local_examples: int) -> None:
        """Record a finished epoch (`record` as in the history: 1-based epoch, Keras logs, seconds) and push it.

        `local_examples` is what this worker's steps trained on, counted from the batches.
        """
        ids, epoch, seconds = {**self._ids, "model": model}, int(record["epoch"]), float(record["seconds"])
        self._known(model)
        if self.chief:
            for split, (loss_key, accuracy_key) in SPLIT_KEYS.items():
                labels = {**ids, "split": split, "epoch": str(epoch)}
                if loss_key in record:
                    self._m["mnist_train_epoch_loss"].labels(**labels).set(float(record[loss_key]))
                if accuracy_key in record:
                    self._m["mnist_train_epoch_accuracy_ratio"].labels(**labels).set(float(record[accuracy_key]))
            self._m["mnist_train_epoch_duration_seconds"].labels(**ids, epoch=str(epoch)).set(seconds)
        self._m["mnist_train_samples_per_second"].labels(**ids).set(local_examples / seconds if seconds > 0 else 0.0)
        self._m["mnist_train_samples"].labels(**ids).inc(local_examples)
        self._m["mnist_train_epochs_completed"].labels(**ids).set(epoch)
        self._m["mnist_train_epochs_planned"].labels(**ids).set(self.config.recipe(model).epochs)
        self.push(model)

    def record_test(self, model_name: str, test_loss: float, test_error: float) -> None:
        """Record the final test loss and error (ratio 0-1) of a model, and push them."""
        ids = {**self._ids, "model": model_name}
        self._known(model_name)  # an ensemble has no epochs: its first series are these
        self._m["mnist_train_test_loss"].labels(**ids).set(test_loss)
        self._m["mnist_train_test_error_ratio"].labels(**ids).set(test_error)
        self.push(model_name)

    def _known(self, model: str) -> None:
        if model not in self._models:
            self._models.append(model)

    def push(self, model: str | None = None) -> bool:
        """Push this worker's run-level group and `model`'s group (all models if None); False if a push failed."""
        if self._pusher is None:
            return True
        models = self._models if model is None else [model]
        keys = [self._ids] + [{**self._ids, "model": m} for m in models]
        return self._pusher.push(_group(self.registry, key) for key in keys)

    def close(self) -> None:
        """Push the final state and stop serving /metrics. Safe to call twice."""
        self.push()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _run_registry(
    config: TrainConfig,
    status: str,
    test_results: Mapping[str, tuple[float, float]],
    started_at: float,
    finished_at: float,
) -> CollectorRegistry:
    registry = CollectorRegistry()
    g = {name: Gauge(name, doc, ("run",) + extra, registry=registry) for name, (doc, extra) in RUN_GAUGES.items()}
    run = config.run_name
    g["mnist_train_run_start_timestamp_seconds"].labels(run=run).set(started_at)
    g["mnist_train_run_end_timestamp_seconds"].labels(run=run).set(finished_at)
    for name in STATUSES:
        g["mnist_train_run_status"].labels(run=run, status=name).set(1 if name == status else 0)
    if status == "succeeded":
        g["mnist_train_last_success_timestamp_seconds"].labels(run=run).set(finished_at)
    for model, (test_loss, test_error) in test_results.items():
        g["mnist_train_test_loss"].labels(run=run, model=model).set(test_loss)
        g["mnist_train_test_error_ratio"].labels(run=run, model=model).set(test_error)
    return registry


def publish_run_end(
    config: TrainConfig,
    status: str,
    test_results: Mapping[str, tuple[float, float]],
    started_at: float,
    finished_at: float,
) -> bool:
    """Driver: publish the run's outcome (status, timestamps, test results) once, through each route configured.

    With --pushgateway it is pushed; with --metrics-linger it is also served on --metrics-port until one scrape has
    read it (so a scrape-only Prometheus always gets it), for at most that many seconds. A failed push logs one
    warning and returns False; nothing here raises for a metrics problem.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    registry = _run_registry(config, status, test_results, started_at, finished_at)
    pushed = True
    if config.pushgateway is not None:
        keys = [{"run": config.run_name}] + [{"run": config.run_name, "model": m} for m in test_results]
        pushed = _Pusher(config.pushgateway, "driver").push(_group(registry, key) for key in keys)
    if config.metrics_linger > 0 and config.metrics_port > 0:
        _serve_until_scraped(registry, config.metrics_port, config.metrics_linger)
    return pushed


class _ScrapeWatch:
    """Serves a registry and notes when a scrape has read it whole."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry, self.scraped = registry, threading.Event()

    def collect(self) -> Iterable[Metric]:
        yield from self._registry.collect()
        self.scraped.set()


def _serve_until_scraped(registry: CollectorRegistry, port: int, linger: float) -> None:
    watch = _ScrapeWatch(registry)
    served = CollectorRegistry(auto_describe=False)
    served.register(watch)
    server, bound = _serve(served, port, "driver")
    if server is None:
        return
    print(
        f"serving the run's outcome on :{bound}/metrics until Prometheus scrapes it (at most {linger:g} s)", flush=True
    )
    started = time.monotonic()
    try:
        if watch.scraped.wait(linger):
            print(f"outcome scraped after {time.monotonic() - started:.1f} s", flush=True)
        else:
            log.warning("the run's outcome was not scraped in %g s; is Prometheus scraping port %d?", linger, bound)
    finally:
        server.shutdown()
        server.server_close()
