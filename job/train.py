"""The Ray Train driver: check inputs, start or join Ray, run the workers, then write the run's artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from job import artifacts, console, storage
from job.config import ConfigError, TrainConfig
from job.data import Dataset, load

log = logging.getLogger("mnist-train")

# Every process that may import TensorFlow needs these before it does (see job/__init__.py).
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def check_inputs(config: TrainConfig) -> Dataset:
    """Everything that can be checked before training, fast; a problem raises ConfigError or DataError."""
    try:
        check_reachable(config.address)
        dataset = load(config.dataset, config.data_uri, fallback=not config.address)
        _check_batch(config, dataset)
        artifacts.prepare_output(config)  # last: with --overwrite it deletes the old run, so only once inputs are good
        artifacts.claim_run(config, dataset)
    except storage.StorageError as err:
        raise ConfigError(str(err)) from None
    return dataset


def run(config: TrainConfig, dataset: Dataset, log_stream: TextIO) -> dict[str, Any]:
    """Train on Ray and write the artifacts; return results.json's content. Errors propagate to the CLI."""
    started = time.time()
    _print_plan(config, dataset)
    with _ray_session(config, log_stream), tempfile.TemporaryDirectory(prefix="mnist-final-") as final:
        _fit(config, dataset, Path(final))
        results = artifacts.write(config, dataset, Path(final), started=started)
    artifacts.print_summary(results)
    return results


def _fit(config: TrainConfig, dataset: Dataset, final: Path) -> None:
    """Run train_loop_per_worker on the Ray Train workers; download the final checkpoint into `final`."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from job.backend import TensorflowConfig
    from job.worker import train_loop_per_worker

    _check_resources(config, ray.cluster_resources())
    if config.gpu:
        _check_gpu_visible()
    trainer_cls = DataParallelTrainer if config.address else _local_trainer(DataParallelTrainer)
    trainer = trainer_cls(
        train_loop_per_worker,
        train_loop_config={"config": config, "data": ray.put(dataset)},
        backend_config=TensorflowConfig(),
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.gpu, resources_per_worker=_worker_resources(config)
        ),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=_storage_path(config.output),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Locally the workers inherit WORKER_ENV from the driver, and Ray can reuse its prestarted processes.
            worker_runtime_env={"env_vars": WORKER_ENV} if config.address else None,
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    result.checkpoint.to_directory(str(final))


def _local_trainer(base: type) -> type:
    """Ray Train without its PlacementGroupCleaner, for the private local Ray only.

    The cleaner removes a run's placement group if the Train controller dies while the cluster lives on. A private
    local Ray ends with the driver, so it has nothing to guard; and it polls the State API, which lives in the Ray
    dashboard: without one it logged a warning every second, and stopping it took 12 s at the end of every run.
    """
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class LocalTrainer(base):
        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]

    return LocalTrainer


def _check_gpu_visible() -> None:
    """One task on a GPU, placed as a worker would be, checks that TensorFlow sees it. The workers check again, but a
    failure there is retried by Ray Train (--max-failures times) before the run fails."""
    import ray

    from job import devices

    try:
        ray.get(ray.remote(num_gpus=1, num_cpus=0, max_retries=0)(devices.preflight).remote())
    except ray.exceptions.RayTaskError as err:
        raise err.cause from None


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
    """Fail at once when --address names a host:port nothing answers on, or a cluster that rejects this machine's
    token: ray.init would retry for minutes, or for about 25 s and then blame the network."""
    match = re.fullmatch(r"(ray://)?\[?([^\[\]/@]+?)\]?:(\d+)", address or "")
    if not match:
        return  # "auto" or another form Ray resolves itself
    try:
        socket.create_connection((match[2], int(match[3])), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"cannot reach the Ray cluster at --address {address} ({err.strerror or type(err).__name__}); "
            "check the address, or leave --address out to start a local Ray"
        ) from None
    if not match[1]:  # the GCS itself; a Ray Client server (ray://) checks tokens its own way
        _check_token(address)


def _check_token(address: str) -> None:
    """Ask the cluster's GCS once, with the token ray.init would send: a rejected token fails in a fraction of a
    second, with where the token came from; an endpoint that is not a GCS fails in about 11 s instead of 40."""
    from ray._private.authentication import authentication_token_setup as token_setup
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError, RpcError

    quiet = logging.getLogger(token_setup.__name__)
    level, quiet.level = quiet.level, logging.ERROR  # its "token auth is enabled" notice is not for this user
    try:
        token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # as ray.init does
    finally:
        quiet.setLevel(level)
    try:
        # The GCS client logs a refusal to stderr from C++; the ConfigError below says it once.
        with _no_stderr(), _ray_config(py_gcs_connect_timeout_s="1"):
            GcsClient(address=address)
    except AuthenticationError:
        raise ConfigError(
            f"the Ray cluster at --address {address} rejected {_token_source()}; set RAY_AUTH_TOKEN to that "
            "cluster's token (`ray get-auth-token` on its head; on KubeRay: kubectl get secret <ray-cluster> "
            "-o jsonpath='{.data.auth_token}' | base64 -d)"
        ) from None
    except RpcError:
        raise ConfigError(
            f"--address {address} answers, but not as a Ray cluster (no reply from a GCS); give the head's GCS "
            "address, port 6379 unless changed (the dashboard's 8265 is for `ray job submit`)"
        ) from None


@contextlib.contextmanager
def _ray_config(**settings: str) -> Iterator[None]:
    """Ray's C++ settings for this process, for the duration only (RAY_<name> variables, read by Config)."""
    from ray._raylet import Config

    saved = {name: os.environ.get(f"RAY_{name}") for name in settings}
    os.environ.update({f"RAY_{name}": value for name, value in settings.items()})
    Config.initialize("")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(f"RAY_{name}")
            else:
                os.environ[f"RAY_{name}"] = value
        Config.initialize("")


@contextlib.contextmanager
def _no_stderr() -> Iterator[None]:
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _token_source() -> str:
    """Where Ray takes the token from, in its order, never the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the token in RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"the token in {os.environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    default = Path.home() / ".ray" / "auth_token"
    if default.exists():
        return f"the token in {default}"
    return "this machine's request: it has no token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"


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
            f"--gpu asks for {config.workers} GPU{'s' if config.workers > 1 else ''} but the Ray cluster has "
            f"{cluster.get('GPU', 0):g}; "
            "run on GPU nodes or drop --gpu"
        )
    needed = config.workers * config.cpus_per_worker
    if cluster.get("CPU", 0) < needed and not config.address:
        raise ConfigError(
            f"{config.workers} workers x {config.cpus_per_worker:g} CPUs need {needed:g} CPUs, this machine has "
            f"{cluster.get('CPU', 0):g}; lower --workers or --cpus-per-worker"
        )


@contextlib.contextmanager
def _ray_session(config: TrainConfig, log_stream: TextIO) -> Iterator[None]:
    """Join the cluster at --address, or start a private local Ray; shut it down afterwards."""
    import ray

    console.adopt_ray_logger()
    os.environ.update(WORKER_ENV)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(config.start_timeout))
    # Ray Train's controller collects each worker's report every 2 s by default, and a worker's next report waits
    # for it: with epochs of a second that cost up to 1.7 s per epoch. Ray passes this on to its controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    if config.address:
        log.info("joining the Ray cluster at %s", config.address)
        # No runtime_env here: a submitted job's own runtime_env must not be overridden (Ray refuses the merge);
        # the workers get WORKER_ENV through RunConfig.worker_runtime_env.
        ray.init(address=config.address, log_to_driver=True)
    else:
        cpus = max(os.cpu_count() or 1, int(config.workers * config.cpus_per_worker + 0.999))
        log.info("starting a local Ray instance with %d CPUs for %d workers", cpus, config.workers)
        # address="local": always a private instance, even when another Ray runs on this machine.
        # Ray's own metrics (ray_train_*) every 2 s instead of 10 s: local runs are short, and a worker's last
        # values would otherwise often never reach Prometheus.
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True, configure_logging=False,
                 _system_config={"metrics_report_interval_ms": 2000})  # fmt: skip
    console.route_worker_output(log_stream, config.verbose)
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
        f"run {config.run_name}: {plan} on {config.workers} {'GPU' if config.gpu else 'CPU'} workers ({where})\n"
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
