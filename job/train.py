"""The Ray Train driver: check inputs, start or join Ray, run the workers, then write the run's artifacts."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from job import artifacts, cluster, console, storage
from job.checkpoint import RunState
from job.config import MEMBERS_SUFFIX, ConfigError, TrainConfig, placement
from job.data import Dataset, load
from job.errors import stop_on_sigterm

log = logging.getLogger("mnist-train")

# Every process that may import TensorFlow needs these before it does (see job/__init__.py).
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
# TensorFlow's logging and oneDNN settings: the driver's (the user's where set) reach every worker.
USER_TF_ENV = ("TF_CPP_MIN_LOG_LEVEL", "TF_CPP_VMODULE", "TF_ENABLE_ONEDNN_OPTS")


def worker_env() -> dict[str, str]:
    return {**WORKER_ENV, **{name: os.environ[name] for name in USER_TF_ENV if name in os.environ}}


def check_inputs(config: TrainConfig) -> Dataset:
    """Everything that can be checked before training, fast; a problem raises ConfigError or DataError."""
    try:
        cluster.check(config.address)
        dataset = load(config.dataset, config.data_uri, fallback=not config.address)
        _check_batch(config, dataset)
        artifacts.prepare_output(config)
        artifacts.claim_run(config, dataset)
    except storage.StorageError as err:
        raise ConfigError(str(err)) from None
    return dataset


def run(config: TrainConfig, dataset: Dataset, log_stream: TextIO) -> dict[str, Any]:
    """Train on Ray and write the artifacts; return results.json's content. Errors propagate to the CLI."""
    started = time.time()
    _print_plan(config, dataset)
    os.environ.update(worker_env())  # this process trains (--workers 0), or local Ray workers inherit it
    session = (
        console.stderr_to_log(log_stream, config.verbose) if config.in_process else _ray_session(config, log_stream)
    )
    # The local Ray workers' temp folders go in `scratch`, removed after Ray stops: a worker stopped by SIGTERM (sent to
    # the whole process group) exits without unwinding the thread that trains, so it cannot remove its own.
    scratch = contextlib.nullcontext() if config.in_process or config.address else _scratch()
    with scratch as worker_tmp, session, tempfile.TemporaryDirectory(prefix="mnist-final-") as final:
        saved = _fit_in_process(config, dataset) if config.in_process else _fit_on_ray(config, dataset, worker_tmp)
        if saved is None:
            raise RuntimeError("training ended without a checkpoint")
        storage.download_checkpoint(saved, final)
        results = artifacts.write(config, dataset, Path(final), started=started)
    artifacts.print_summary(results)
    return results


def _fit_in_process(config: TrainConfig, dataset: Dataset) -> Any:
    """--workers 0: train_loop_per_worker in this process (Ray Train's local mode); its last checkpoint."""
    from job import inprocess
    from job.devices import DeviceError
    from job.worker import train_loop_per_worker

    run_uri = storage.join(config.output, "checkpoints", config.run_name)
    try:
        return inprocess.fit(train_loop_per_worker, {"config": config, "data": dataset}, run_uri, config.run_name)
    except DeviceError as err:  # --gpu without a GPU: raised before the first step, a bad input as on the Ray path
        raise ConfigError(str(err)) from None


def _scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="mnist-workers-", ignore_cleanup_errors=True)


def _fit_on_ray(config: TrainConfig, dataset: Dataset, worker_tmp: str | None) -> Any:
    """Run train_loop_per_worker on the Ray Train workers; the final checkpoint."""
    import ray

    _check_resources(config, ray.cluster_resources())
    if config.address:
        _check_output_is_shared(config.output)
    if config.gpu:
        _check_gpu_visible()
    loop_config = {"config": config, "data": ray.put(dataset), "tmp": worker_tmp}
    if config.member_groups > 1:
        loop_config["start"] = _fit_member_groups(config, loop_config)
    # Every model, or with parallel members the ensembles only: the members are finished in loop_config["start"].
    return _fit(config, config.run_name, _storage_path(storage.join(config.output, "checkpoints")), loop_config)


def _fit(config: TrainConfig, name: str, storage_path: str, loop_config: dict[str, Any]) -> Any:
    """One Ray Train run of train_loop_per_worker on config.workers workers, named `name`; its final checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from job.backend import TensorflowConfig
    from job.raytrain import trainer_class
    from job.worker import train_loop_per_worker

    trainer = trainer_class(local=not config.address)(
        train_loop_per_worker,
        train_loop_config=loop_config,
        backend_config=TensorflowConfig(),
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpu,
            resources_per_worker=_worker_resources(config),
            # On a cluster each worker on a node of its own where there are enough: a KubeRay worker pod declares all
            # its CPUs to Ray, and Ray's default (PACK) put two workers on the first pod, leaving the second idle.
            placement_strategy="SPREAD" if config.address else "PACK",
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Locally the workers inherit worker_env() from the driver, and Ray can reuse its prestarted processes.
            worker_runtime_env={"env_vars": worker_env()} if config.address else None,
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    return trainer.fit().checkpoint


def _fit_member_groups(config: TrainConfig, loop_config: dict[str, Any]) -> Any:
    """--ensemble K with N Ray workers: the members train at once, in min(K, N) Ray Train runs of N // groups workers
    each (Ray places them; a thread waits on each, as Ray Tune runs trials), each run a member group's members one
    after the other; then one checkpoint holds every finished member, from which the run builds the ensembles.
    Each group run resumes on its own, under <output>/checkpoints/<run>-members/."""
    folder = storage.join(config.output, "checkpoints", config.run_name + MEMBERS_SUFFIX)
    group_config = replace(config, workers=config.group_workers)
    pool = ThreadPoolExecutor(config.member_groups, thread_name_prefix="members")
    runs = [
        pool.submit(_fit, group_config, f"group-{g + 1}", _storage_path(folder),
                    {**loop_config, "config": group_config, "only": config.group_members(g)})
        for g in range(config.member_groups)
    ]  # fmt: skip
    done, _ = wait(runs, return_when=FIRST_EXCEPTION)
    pool.shutdown(wait=False, cancel_futures=True)
    for run in done:
        if run.exception():
            raise run.exception()  # the other groups stop with the local Ray, or with this driver on a cluster
    return _merge_members([run.result() for run in runs], storage.join(folder, "merged"))


def _merge_members(checkpoints: list[Any], uri: str) -> Any:
    """One checkpoint with the finished members of every group's final checkpoint, written to `uri`."""
    with tempfile.TemporaryDirectory(prefix="mnist-members-") as tmp:
        merged = RunState()
        for i, saved in enumerate(checkpoints):
            state = RunState.load(storage.download_checkpoint(saved, Path(tmp) / f"group-{i + 1}"))
            merged.finished.update(state.finished)
            merged.model_dirs.update(state.model_dirs)
        merged.save(Path(tmp) / "merged")
        storage.delete(uri)
        storage.upload_dir(Path(tmp) / "merged", uri)
    return storage.checkpoint_at(uri)


def _check_output_is_shared(output: str) -> None:
    """The workers write the checkpoints (Ray's storage path) and the models under --output themselves."""
    probe = storage.join(output, f".node-probe-{uuid.uuid4().hex[:8]}")
    storage.write_bytes(probe, b"")
    try:
        cluster.check_every_node_sees(probe, f"--output {output}")
    finally:
        storage.delete(probe)


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


def _worker_resources(config: TrainConfig) -> dict[str, float]:
    resources = {"CPU": config.cpus_per_worker}
    if config.gpu:
        resources["GPU"] = 1
    return resources


def _storage_path(uri: str) -> str:
    """Ray Train's storage_path for the checkpoints at `uri`."""
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
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(config.start_timeout))
    # Ray Train's controller collects each worker's report every 2 s by default, and a worker's next report waits
    # for it: with epochs of a second that cost up to 1.7 s per epoch. Ray passes this on to its controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # Imported while ray.init waits for Ray's processes to start: Ray Train and the worker's module are needed right
    # after it (about 1 s), pyplot for the curves after the last epoch (0.5 s).
    preload = _import_in_background("job.raytrain", "job.worker", "matplotlib.pyplot")
    if config.address:
        log.info("joining the Ray cluster at %s", config.address)
        # No runtime_env here: a submitted job's own runtime_env must not be overridden (Ray refuses the merge);
        # the workers get worker_env() through RunConfig.worker_runtime_env.
        ray.init(address=config.address, log_to_driver=True)
    else:
        cpus = max(os.cpu_count() or 1, int(config.workers * config.cpus_per_worker + 0.999))
        log.info("starting a local Ray instance with %d CPUs for %d workers", cpus, config.workers)
        # address="local": always a private instance, even when another Ray runs on this machine.
        # Ray's own metrics (ray_train_*) every 2 s instead of 10 s: local runs are short, and a worker's last
        # values would otherwise often never reach Prometheus. No prestarted workers: none served a run (they idle
        # and exit), and starting them took CPU from the Train actors. No preemption watcher (one more actor): one
        # machine that ends with the driver has no node to lose.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        system = {"metrics_report_interval_ms": 2000, "enable_worker_prestart": False,
                  "prestart_worker_first_driver": False}  # fmt: skip
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True, configure_logging=False,
                 _system_config=system)  # fmt: skip
    preload.join()
    stop_on_sigterm()
    console.route_worker_output(log_stream, config.verbose)
    try:
        yield
    finally:
        ray.shutdown()


def _import_in_background(*modules: str) -> threading.Thread:
    """A failed import here is raised again where the module is imported for use."""

    def run() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=run, name="preload", daemon=True)
    thread.start()
    return thread


def _print_plan(config: TrainConfig, dataset: Dataset) -> None:
    where = (
        "Ray Train's local mode; --workers 1 or more for Ray workers" if config.in_process
        else f"Ray cluster {config.address}" if config.address else "a local Ray instance"
    )  # fmt: skip
    plans: dict[tuple[int, int], list[str]] = {}  # models that share epochs and batch size, in one phrase
    for name in config.models:
        plans.setdefault((config.recipe(name).epochs, config.recipe(name).batch_size), []).append(name)
    plan = "; ".join(f"{', '.join(names)} for {e} epochs, global batch {b}" for (e, b), names in plans.items())
    if config.ensemble > 1:
        plan += f"; {config.ensemble} members each (seeds {config.seed}..{config.seed + config.ensemble - 1}), averaged"
    if config.member_groups > 1:
        plan += f"; members train at once in {config.member_groups} groups of {config.group_workers} worker"
        plan += "s" * (config.group_workers > 1)
    print(
        f"run {config.run_name}: {plan} {placement(config.workers, config.gpu)} ({where})\n"
        f"data {dataset.name}: {len(dataset.y_train)} train / {len(dataset.y_test)} test; "
        f"output {storage.redact(config.output)}",
        flush=True,
    )
    if config.member_groups > 1 and (idle := config.workers - config.member_groups * config.group_workers):
        log.warning(
            "%d of %d workers idle: %d member groups of %d; pass --workers a multiple of %d",
            *(idle, config.workers, config.member_groups, config.group_workers, config.member_groups),
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
