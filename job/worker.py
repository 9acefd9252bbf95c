"""What every Ray Train worker runs: each model under MultiWorkerMirroredStrategy, checkpointed and reported per epoch.

TensorFlow is imported inside the functions, so that unpickling `train_loop_per_worker` in Ray's Train controller does
not import it.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job import checkpoint, devices, storage
from job.checkpoint import RunState
from job.config import TrainConfig, is_ensemble, model_of
from job.data import Dataset, epoch_indices
from job.metrics import WorkerMetrics

# Epochs per `model.fit` call: each call costs about 0.6 s of set-up on a 2-core CPU (bench/README.md), a third of an
# MLP epoch; a call's data is built ahead, one index array per epoch.
EPOCHS_PER_FIT = 10


@dataclass
class Worker:
    """What one worker's functions share for the whole run."""

    config: TrainConfig
    dataset: Dataset
    strategy: Any  # MultiWorkerMirroredStrategy; the default strategy for one worker on one device
    rank: int
    size: int  # workers training together (1 in this process)
    workdir: Path  # removed when the worker's loop ends
    state: RunState
    restored: Path | None  # the checkpoint this run resumed from, until the model it holds is loaded
    exporter: WorkerMetrics
    device_info: dict[str, Any]

    @property
    def chief(self) -> bool:
        return self.rank == 0


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    previous = tempfile.tempdir  # in this process (--workers 0), the driver's own
    with tempfile.TemporaryDirectory(prefix="mnist-worker-", dir=loop_config.get("tmp")) as workdir:
        tempfile.tempdir = workdir  # TensorFlow's autograph writes a .py file per traced function to the temp folder
        try:
            _train_all(loop_config, Path(workdir))
        finally:
            tempfile.tempdir = previous


def _train_all(loop_config: dict[str, Any], workdir: Path) -> None:
    """loop_config: the run's `config`; its `data`, the Dataset itself in this process (--workers 0), else its Ray
    object reference; with parallel members, `only` the members this group trains, or `start` the checkpoint that
    holds every finished member (the run then builds the ensembles)."""
    import ray
    import ray.train

    config, data = loop_config["config"], loop_config["data"]
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    strategy, device_info = devices.make_strategy(config, size)  # before any other TensorFlow op
    if not config.in_process:
        _quiet_logs()
    dataset: Dataset = data if isinstance(data, Dataset) else ray.get(data)
    saved = ray.train.get_checkpoint()
    state, restored = _restore(saved, workdir) if saved or "start" not in loop_config else _start(loop_config, workdir)
    exporter = WorkerMetrics(config, rank, size, dataset.name, device_info)
    worker = Worker(config, dataset, strategy, rank, size, workdir, state, restored, exporter, device_info)
    try:
        for name in loop_config.get("only") or config.outputs:
            if name not in state.finished:
                (_build_ensemble if is_ensemble(name) else _train_model)(worker, name)
    finally:
        exporter.close()


def _quiet_logs() -> None:
    """In a Ray worker: the job's log lines go to stdout, which the driver shows; Ray's and TF's go to stderr, which it
    only logs."""
    import tensorflow as tf

    logging.getLogger().setLevel(logging.WARNING)
    tf.get_logger().setLevel(logging.ERROR)
    ours = logging.getLogger("job")
    handler = logging.StreamHandler(sys.__stdout__)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    ours.handlers[:], ours.propagate = [handler], False
    ours.setLevel(logging.INFO)


def _restore(saved: Any, workdir: Path) -> tuple[RunState, Path | None]:
    if saved is None:
        return RunState(), None
    folder = storage.download_checkpoint(saved, workdir / "restored")
    state = RunState.load(folder)
    done = {name: len(info["history"]) for name, info in state.finished.items()}
    say(f"resuming from checkpoint: finished {done or 'none'}, {state.current or '-'} at epoch {len(state.history)}")
    return state, folder


def _start(loop_config: dict[str, Any], workdir: Path) -> tuple[RunState, None]:
    """The finished members that the member groups trained (parallel members): nothing is in progress."""
    return RunState.load(storage.download_checkpoint(loop_config["start"], workdir / "members")), None


def _train_model(worker: Worker, name: str) -> None:
    import tensorflow as tf

    from job import ledger, models

    config, dataset = worker.config.for_model(name), worker.dataset  # this model's epochs and batch size
    models.seed(config.seed)
    steps = len(dataset.y_train) // config.batch_size
    with worker.strategy.scope():
        model = models.build(name, config, steps_per_epoch=steps)
        tf_checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        consumed = ledger.Ledger(len(dataset.y_train), steps)
    consumed.attach(model)
    if worker.state.current == name and worker.restored is not None:
        tf_checkpoint.read(str(worker.restored / checkpoint.CURRENT)).expect_partial()
    else:
        worker.state.start(name)
    worker.restored = None
    pixels = tf.constant(dataset.x_train.reshape(-1, *model.input_shape[1:]))  # as stored: uint8 is 4x smaller
    val = _validation_data(models.features(dataset.x_test, model), dataset.y_test, config.batch_size)
    each_epoch = _each_epoch(worker, name, config, tf_checkpoint, consumed.close_epoch, steps)
    for first in range(len(worker.state.history), config.epochs, EPOCHS_PER_FIT):
        span = range(first, min(first + EPOCHS_PER_FIT, config.epochs))
        model.fit(_train_data(worker, config, name, pixels, span), validation_data=val, steps_per_epoch=steps,
                  initial_epoch=span.start, epochs=span.stop, callbacks=[each_epoch], verbose=0)  # fmt: skip
    # The last epoch is reported once `fit` has returned, with the exported model and its test error.
    _report(worker, name, worker.state.history[-1], None, model)


def _each_epoch(
    worker: Worker, name: str, config: TrainConfig, tf_checkpoint: Any, close_epoch: Any, steps: int
) -> Any:
    """The Keras callback that closes each epoch: the ledger's check, the record, metrics, and (but for the last
    epoch, reported once `fit` returns) the report with a checkpoint every --checkpoint-interval."""
    import tf_keras

    progress = {"saved": time.perf_counter()}

    def epoch_begin(epoch: int, logs: Any = None) -> None:
        progress.update(started=time.perf_counter(), started_at=time.time())

    def epoch_end(epoch: int, logs: dict[str, Any]) -> None:
        seconds = time.perf_counter() - progress["started"]
        used = close_epoch(epoch + 1, expected=steps * config.batch_size, global_batch=config.batch_size)
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}, "seconds": round(seconds, 3),
                  "started_at": round(progress["started_at"], 3), **used.summary(seconds)}  # fmt: skip
        worker.state.history.append(record)
        worker.exporter.record_epoch(name, record, local_examples=used.local_examples)
        if epoch + 1 < config.epochs:
            save = _chief_seconds_since(worker, progress["saved"]) >= config.checkpoint_interval
            _report(worker, name, record, tf_checkpoint if save else None, None)
            progress["saved"] = time.perf_counter() if save else progress["saved"]

    return tf_keras.callbacks.LambdaCallback(on_epoch_begin=epoch_begin, on_epoch_end=epoch_end)


def _build_ensemble(worker: Worker, name: str) -> None:
    """The chief averages the finished members into one model, scores and saves it; every worker reports (a barrier).

    The members are loaded from their exported files, outside the strategy: plain variables, so scoring the ensemble
    is no collective and the other workers need not take part.
    """
    import ray.train

    from job import models

    with tempfile.TemporaryDirectory(prefix="ckpt-", dir=worker.workdir) as tmp:
        saved = None
        if worker.chief:
            members = worker.config.members(model_of(name))
            ensemble = models.ensemble({m: models.load(worker.state.model_dirs[m] / checkpoint.MODEL_FILE)
                                        for m in members}, name)  # fmt: skip
            loss, error = models.evaluate(ensemble, models.features(worker.dataset.x_test, ensemble),
                                          worker.dataset.y_test)  # fmt: skip
            model_dir = worker.workdir / "models" / name
            models.export(ensemble, model_dir)
            seconds = sum(worker.state.finished[m]["train_seconds"] for m in members)
            results = {"params": int(ensemble.count_params()), "test_loss": loss, "test_error": error,
                       "train_seconds": seconds, "devices": worker.device_info, "members": list(members)}  # fmt: skip
            worker.state.start(name)
            worker.state.finish(name, results, model_dir)
            worker.exporter.record_test(name, test_loss=loss, test_error=error)
            worker.state.save(Path(tmp))
            saved = ray.train.Checkpoint.from_directory(tmp)
            say(f"{name:<9} {len(members)} members averaged: test error {error * 100:.2f}%")
        ray.train.report({"model": name}, checkpoint=saved)


def _chief_seconds_since(worker: Worker, started: float) -> float:
    """The chief's clock, the same on every worker (saving is a collective, so all must decide alike)."""
    import tensorflow as tf

    mine = time.perf_counter() - started if worker.chief else 0.0
    strategy = worker.strategy
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(mine)), axis=None)
    return float(total)


def _train_data(worker: Worker, config: TrainConfig, name: str, pixels: Any, epochs: range) -> Any:
    """This worker's shards of `epochs`, one after the other, as (image, label, example id) in per-replica batches of
    fixed shape.

    The batches are gathered by index from the training set, held once per model as stored (uint8: a quarter of the
    float32 size), and scaled to 0-1 per batch.
    """
    import tensorflow as tf

    y = worker.dataset.y_train
    shards = {e: epoch_indices(len(y), e, config.seed, worker.rank, worker.size, config.batch_size) for e in epochs}
    labels = tf.constant(y)

    def gather(ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        x = tf.gather(pixels, ids)
        x = tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else x
        return x, tf.gather(labels, ids), ids

    def one_epoch(epoch: int, batch: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(shards[epoch]).batch(batch, drop_remainder=True)
        ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        if config.recipe(name).augment:
            from job.augment import augment, epoch_seed, policy

            ds = augment(ds, epoch_seed(config.seed, epoch, worker.rank), policy(worker.dataset.name))
        return ds

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        # The global batch: the context divides it by the replicas in sync (workers x devices per worker).
        batch = input_context.get_per_replica_batch_size(config.batch_size)
        parts = [one_epoch(epoch, batch) for epoch in epochs]
        while len(parts) > 1:  # pairwise, so the nesting stays shallow
            pairs = [parts[i : i + 2] for i in range(0, len(parts), 2)]
            parts = [pair[0].concatenate(pair[1]) if len(pair) == 2 else pair[0] for pair in pairs]
        return parts[0].prefetch(tf.data.AUTOTUNE).with_options(devices.data_options())

    return worker.strategy.distribute_datasets_from_function(dataset_fn)


def _validation_data(x: Any, y: Any, global_batch: int) -> Any:
    """The full test set; Keras shards it by element across workers and handles the partial last batch."""
    import tensorflow as tf

    options = devices.data_options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch).with_options(options)


def _report(worker: Worker, name: str, record: dict[str, Any], tf_checkpoint: Any, final_model: Any) -> None:
    """One report per epoch on every worker (it is a barrier), with a checkpoint when `tf_checkpoint` or `final_model`
    is given; only the chief's checkpoint is kept."""
    import ray.train

    from job import models

    with tempfile.TemporaryDirectory(prefix="ckpt-", dir=worker.workdir) as tmp:
        folder = Path(tmp)
        # Every worker must write (MWMS); the others write to a folder that is thrown away.
        if final_model is not None:
            model_dir = worker.workdir / "models" / name if worker.chief else folder / name
            models.export(final_model, model_dir)
            # Every worker evaluates: under MWMS, reading batch norm's moving statistics is a collective.
            x_test = models.features(worker.dataset.x_test, final_model)
            loss, error = models.evaluate(final_model, x_test, worker.dataset.y_test)
            if worker.chief:
                worker.state.finish(name, _results(worker, final_model, loss, error), model_dir)
                worker.exporter.record_test(name, test_loss=loss, test_error=error)
        elif tf_checkpoint is not None:
            tf_checkpoint.write(str(folder / checkpoint.CURRENT))
        saving = final_model is not None or tf_checkpoint is not None
        if worker.chief:
            print_epoch(name, record, worker.config.recipe(name).epochs)
            if saving:
                worker.state.save(folder)
        saved = ray.train.Checkpoint.from_directory(str(folder)) if worker.chief and saving else None
        ray.train.report({"model": name, **record}, checkpoint=saved)


def _results(worker: Worker, model: Any, loss: float, error: float) -> dict[str, Any]:
    history = worker.state.history
    return {
        "params": int(model.count_params()),
        "test_loss": loss,
        "test_error": error,
        "train_seconds": round(sum(r["seconds"] for r in history), 3),
        "devices": worker.device_info,
    }


def say(line: str) -> None:
    """Progress for the user. Bypasses Ray Train's print patch, which would print each line twice."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def print_epoch(name: str, record: dict[str, Any], epochs: int) -> None:
    say(
        f"{name:<9} epoch {record['epoch']:>3}/{epochs}  loss {record['loss']:.4f}  acc {record['accuracy']:.4f}  "
        f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}  {record['seconds']:6.1f}s  "
        f"{record['samples_per_second']:8.0f} samples/s"
    )
