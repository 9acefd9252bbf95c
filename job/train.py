"""The Ray Train driver: check inputs, start or join Ray, run the workers, then write the run's artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from job import artifacts, storage
from job.config import ConfigError, TrainConfig
from job.data import DataError, Dataset, load

log = logging.getLogger("mnist-train")

# Every process that may import TensorFlow needs these before it does (see job/__init__.py).
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def run(config: TrainConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.time()
    try:
        check_reachable(config.address)
        dataset = load(config.dataset, config.data_uri)
        _check_batch(config, dataset)
        artifacts.prepare_output(config)  # last: with --overwrite it deletes the old run, so only once inputs are good
        artifacts.claim_run(config, dataset)
    except (ConfigError, DataError, storage.StorageError) as err:
        print(f"mnist-train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_plan(config, dataset)
    try:
        with _ray_session(config):
            checkpoint_dir = _fit(config, dataset)
        results = artifacts.write(config, dataset, checkpoint_dir, started=started)
    except ConfigError as err:
        print(f"mnist-train: error: {err}", file=sys.stderr)
        _push_end(config, "failed", {}, started)
        return EXIT_BAD_INPUT
    except Exception as err:  # training or upload failed for good: one clear line, no results.json
        print(f"mnist-train: error: run failed: {storage.redact(_one_line(err))}", file=sys.stderr)
        _push_end(config, "failed", {}, started)
        return EXIT_FAILED
    artifacts.print_summary(results)
    _push_end(config, "succeeded", results["models"], started)
    return 0


def _fit(config: TrainConfig, dataset: Dataset) -> Path:
    """Run train_loop_per_worker on the Ray Train workers; return the final checkpoint, downloaded."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from job.worker import train_loop_per_worker

    _check_resources(config, ray.cluster_resources())
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "data": ray.put(dataset)},
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.gpu, resources_per_worker=_worker_resources(config)
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=_storage_path(config.output),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": WORKER_ENV},
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    return Path(result.checkpoint.to_directory(tempfile.mkdtemp(prefix="mnist-final-")))


def _check_batch(config: TrainConfig, dataset: Dataset) -> None:
    name = max(config.models, key=lambda name: config.recipe(name).batch_size)
    batch_size = config.recipe(name).batch_size
    if batch_size > len(dataset.y_train):
        what = "--batch-size" if config.batch_size else f"{name}'s default global batch"
        raise ConfigError(
            f"{what} {batch_size} is larger than the {len(dataset.y_train)} training examples of "
            f"{dataset.name}; lower --batch-size"
        )


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail at once when --address names a host:port nothing answers on; ray.init would retry for minutes."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/@]+?)\]?:(\d+)", address or "")
    if not match:
        return  # "auto" or another form Ray resolves itself
    try:
        socket.create_connection((match[1], int(match[2])), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"cannot reach the Ray cluster at --address {address} ({err.strerror or type(err).__name__}); "
            "check the address, or leave --address out to start a local Ray"
        ) from None


def _worker_resources(config: TrainConfig) -> dict[str, float]:
    resources = {"CPU": config.cpus_per_worker}
    if config.gpu:
        resources["GPU"] = 1
    return resources


def _storage_path(output: str) -> str:
    uri = storage.join(output, "checkpoints")
    return os.path.abspath(uri) if "://" not in uri else uri


def _check_resources(config: TrainConfig, cluster: dict[str, float]) -> None:
    """Fail at once, not after a placement timeout, when the cluster can never fit the workers."""
    if config.gpu and cluster.get("GPU", 0) < config.workers:
        raise ConfigError(
            f"--gpu asks for {config.workers} GPUs but the Ray cluster has {cluster.get('GPU', 0):g}; "
            "run on GPU nodes or drop --gpu"
        )
    needed = config.workers * config.cpus_per_worker
    if cluster.get("CPU", 0) < needed and not config.address:
        raise ConfigError(
            f"{config.workers} workers x {config.cpus_per_worker:g} CPUs need {needed:g} CPUs, this machine has "
            f"{cluster.get('CPU', 0):g}; lower --workers or --cpus-per-worker"
        )


@contextlib.contextmanager
def _ray_session(config: TrainConfig) -> Iterator[None]:
    """Join the cluster at --address, or start a private local Ray; shut it down afterwards."""
    import ray

    os.environ.update(WORKER_ENV)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(config.start_timeout))
    if config.address:
        log.info("joining the Ray cluster at %s", config.address)
        # No runtime_env here: a submitted job's own runtime_env must not be overridden (Ray refuses the merge);
        # the workers get WORKER_ENV through RunConfig.worker_runtime_env.
        ray.init(address=config.address, log_to_driver=True)
    else:
        cpus = max(os.cpu_count() or 1, int(config.workers * config.cpus_per_worker + 0.999))
        log.info("starting a local Ray instance with %d CPUs for %d workers", cpus, config.workers)
        # address="local": always a private instance, even when another Ray runs on this machine.
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def _print_plan(config: TrainConfig, dataset: Dataset) -> None:
    where = f"Ray cluster {config.address}" if config.address else "a local Ray instance"
    plans: dict[tuple[int, int], list[str]] = {}  # models that share epochs and batch size, in one phrase
    for name in config.models:
        plans.setdefault((config.recipe(name).epochs, config.recipe(name).batch_size), []).append(name)
    plan = "; ".join(f"{', '.join(names)} for {e} epochs, global batch {b}" for (e, b), names in plans.items())
    print(
        f"run {config.run_name}: {plan}"
        f" on {config.workers} {'GPU' if config.gpu else 'CPU'} workers ({where})\n"
        f"data {dataset.name}: {len(dataset.y_train)} train / {len(dataset.y_test)} test; "
        f"output {storage.redact(config.output)}",
        flush=True,
    )
    for batch_size in sorted({config.recipe(name).batch_size for name in config.models}):
        dropped = len(dataset.y_train) % batch_size
        if dropped:
            log.warning(
                "%d training examples do not fill a last global batch of %d; each epoch leaves out a different %d",
                dropped,
                batch_size,
                dropped,
            )


def _push_end(config: TrainConfig, status: str, models: dict, started: float) -> None:
    from job import metrics

    tests = {name: (m["test_loss"], m["test_error"]) for name, m in models.items()}
    metrics.push_run_end(config, status=status, test_results=tests, started_at=started, finished_at=time.time())


def _one_line(err: BaseException) -> str:
    """The root cause in one line; for a worker failure, the last line of the first worker's traceback."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        rank, cause = sorted(failures.items())[0]
        lines = [line for line in str(cause).strip().splitlines() if line.strip()]
        return f"worker {rank}: {lines[-1].strip() if lines else type(cause).__name__}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
