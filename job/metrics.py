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
STATUSES = ("running", "succeeded", "failed")  # the driver serves "running" while a cluster run trains
SPLIT_KEYS = {"train": ("loss", "accuracy"), "val": ("val_loss", "val_accuracy")}

# name -> (help, extra labels beyond run/rank). One table, so every process exports a name with the same help and type.
WORKER_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist_train_info": (
        "Run metadata; always 1.",
        ("dataset", "workers", "gpu", "device_type", "device_name", "devices", "onednn", "version", "python_version")
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
    "mnist_train_run_status": (
        "1 for the run's status (running, on a cluster's driver while it trains; then succeeded or failed), else 0.",
        ("status",),
    ),
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


class _BackgroundPusher:
    """A worker's pushes, off the training thread: a slow or dark Pushgateway must not hold up the next step (and with
    it every other worker, at the next collective). The registry holds the latest values, so the pending groups are
    a set, and a group asked for twice before its push is pushed once."""

    def __init__(self, pusher: _Pusher, registry: CollectorRegistry) -> None:
        self._pusher, self._registry = pusher, registry
        self._pending: dict[tuple[tuple[str, str], ...], None] = {}
        self._busy = False
        self._cv = threading.Condition()
        threading.Thread(target=self._run, name="pushgateway", daemon=True).start()

    def request(self, keys: Iterable[dict[str, str]]) -> None:
        with self._cv:
            self._pending.update((tuple(sorted(key.items())), None) for key in keys)
            self._cv.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until every requested group was pushed (or tried), for at most `timeout` s; True if all were."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pending and not self._busy, timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending)
                keys, self._busy = [dict(key) for key in self._pending], True
                self._pending.clear()
            self._pusher.push(_group(self._registry, key) for key in keys)
            with self._cv:
                self._busy = False
                self._cv.notify_all()


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
            "onednn": str(device.get("onednn")).lower(),
            **{f"{k}_version" if k != "mnist_train" else "version": v for k, v in versions().items()},
        }
        self._m["mnist_train_info"].labels(**self._ids, **info).set(1)
        self._m["mnist_train_run_start_timestamp_seconds"].labels(**self._ids).set(time.time())
        self._pusher = (
            _BackgroundPusher(_Pusher(config.pushgateway, self.who), self.registry) if config.pushgateway else None
        )
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

    def push(self, model: str | None = None) -> None:
        """Push this worker's run-level group and `model`'s group (all models if None), in the background."""
        if self._pusher is None:
            return
        models = self._models if model is None else [model]
        self._pusher.request([self._ids] + [{**self._ids, "model": m} for m in models])

    def flush(self, timeout: float = 2 * PUSH_TIMEOUT_S) -> bool:
        """Wait, at most `timeout` s, until the pushes asked for so far were made (or failed); True if they were."""
        return self._pusher is None or self._pusher.flush(timeout)

    def close(self) -> None:
        """Push the final state (waiting a bounded time for it) and stop serving /metrics. Safe to call twice."""
        self.push()
        self.flush()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _run_registry(
    config: TrainConfig,
    status: str,
    test_results: Mapping[str, tuple[float, float]],
    started_at: float,
    finished_at: float | None,
) -> CollectorRegistry:
    registry = CollectorRegistry()
    g = {name: Gauge(name, doc, ("run",) + extra, registry=registry) for name, (doc, extra) in RUN_GAUGES.items()}
    run = config.run_name
    g["mnist_train_run_start_timestamp_seconds"].labels(run=run).set(started_at)
    if finished_at is not None:
        g["mnist_train_run_end_timestamp_seconds"].labels(run=run).set(finished_at)
    for name in STATUSES:
        g["mnist_train_run_status"].labels(run=run, status=name).set(1 if name == status else 0)
    if status == "succeeded":
        g["mnist_train_last_success_timestamp_seconds"].labels(run=run).set(finished_at)
    for model, (test_loss, test_error) in test_results.items():
        g["mnist_train_test_loss"].labels(run=run, model=model).set(test_loss)
        g["mnist_train_test_error_ratio"].labels(run=run, model=model).set(test_error)
    return registry


class DriverEndpoint:
    """The driver's /metrics on --metrics-port for a whole cluster run (on KubeRay: the head pod's `train-metrics`
    port, which the PodMonitor scrapes): the run's start and status "running" while it trains, then its outcome. A
    declared target that is down for the whole run would fire kube-prometheus-stack's TargetDown alert."""

    def __init__(self, config: TrainConfig, started_at: float) -> None:
        self._watch = _ScrapeWatch(_run_registry(config, "running", {}, started_at, None))
        served = CollectorRegistry(auto_describe=False)
        served.register(self._watch)
        self._server, self.port = _serve(served, config.metrics_port, "driver")

    @classmethod
    def start(cls, config: TrainConfig, started_at: float) -> DriverEndpoint | None:
        """Serve on a cluster (--address) with --metrics-port; locally the workers' ports are enough."""
        return cls(config, started_at) if config.address and config.metrics_port > 0 else None

    def serve_outcome(self, registry: CollectorRegistry, linger: float) -> None:
        """Serve the outcome instead, until a scrape has read it (at most `linger` s); then stop serving."""
        if self._server is None:
            return
        self._watch.show(registry)
        try:
            if linger > 0:
                _wait_for_scrape(self._watch, self.port, linger)
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def publish_run_end(
    config: TrainConfig,
    status: str,
    test_results: Mapping[str, tuple[float, float]],
    started_at: float,
    finished_at: float,
    endpoint: DriverEndpoint | None = None,
) -> bool:
    """Driver: publish the run's outcome (status, timestamps, test results) once, through each route configured.

    With --pushgateway it is pushed; with --metrics-linger it is also served on --metrics-port (by `endpoint`, where
    the driver served the run while it trained) until one scrape has read it (so a scrape-only Prometheus always gets
    it), for at most that many seconds. A failed push logs one warning and returns False; nothing here raises for a
    metrics problem.
    """
    if status not in STATUSES[1:]:
        raise ValueError(f"status must be one of {', '.join(STATUSES[1:])}, got {status!r}")
    registry = _run_registry(config, status, test_results, started_at, finished_at)
    pushed = True
    if config.pushgateway is not None:
        keys = [{"run": config.run_name}] + [{"run": config.run_name, "model": m} for m in test_results]
        pushed = _Pusher(config.pushgateway, "driver").push(_group(registry, key) for key in keys)
    if endpoint is not None:
        endpoint.serve_outcome(registry, config.metrics_linger)
    elif config.metrics_linger > 0 and config.metrics_port > 0:
        _serve_until_scraped(registry, config.metrics_port, config.metrics_linger)
    return pushed


class _ScrapeWatch:
    """Serves a registry and notes when a scrape has read it whole."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry, self.scraped = registry, threading.Event()

    def show(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self.scraped.clear()

    def collect(self) -> Iterable[Metric]:
        registry = self._registry
        yield from registry.collect()
        if registry is self._registry:
            self.scraped.set()


def _serve_until_scraped(registry: CollectorRegistry, port: int, linger: float) -> None:
    watch = _ScrapeWatch(registry)
    served = CollectorRegistry(auto_describe=False)
    served.register(watch)
    server, bound = _serve(served, port, "driver")
    if server is None:
        return
    try:
        _wait_for_scrape(watch, bound, linger)
    finally:
        server.shutdown()
        server.server_close()


def _wait_for_scrape(watch: _ScrapeWatch, port: int, linger: float) -> None:
    print(
        f"serving the run's outcome on :{port}/metrics until Prometheus scrapes it (at most {linger:g} s)", flush=True
    )
    started = time.monotonic()
    if watch.scraped.wait(linger):
        print(f"outcome scraped after {time.monotonic() - started:.1f} s", flush=True)
    else:
        log.warning("the run's outcome was not scraped in %g s; is Prometheus scraping port %d?", linger, port)
