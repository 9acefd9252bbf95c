"""What every Ray Train worker runs: train each model under MultiWorkerMirroredStrategy; checkpoint, report per epoch.

A checkpoint folder holds `state.json` (finished models with their history and test results, the model in progress
and its last finished epoch), a tf.train.Checkpoint of the model in progress (weights and optimizer), and
`<model>/model.keras` for every finished model. The driver builds the final artifacts from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job import data as datamod
from job.config import DISPLAY_NAMES, TrainConfig

STATE_FILE = "state.json"


@dataclass
class RunState:
    """Progress that survives a restart: finished models and the epochs done on the current one."""

    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    current: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    model_files: dict[str, bytes] = field(default_factory=dict, repr=False)  # finished models' model.keras

    @classmethod
    def load(cls, folder: Path) -> RunState:
        state = cls(**json.loads((folder / STATE_FILE).read_text()))
        state.model_files = {name: (folder / name / "model.keras").read_bytes() for name in state.finished}
        return state

    def save(self, folder: Path) -> None:
        """Write state.json and every finished model, so each checkpoint folder is complete on its own."""
        for name, raw in self.model_files.items():
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / "model.keras").write_bytes(raw)
        fields = {"finished": self.finished, "current": self.current, "history": self.history}
        (folder / STATE_FILE).write_text(json.dumps(fields, indent=1))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import tensorflow as tf

    _quiet_logs(tf)
    # The strategy must exist before any other TF op; Ray has set TF_CONFIG for this worker.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    config: TrainConfig = loop_config["config"]
    context = ray.train.get_context()
    dataset: datamod.Dataset = ray.get(loop_config["data"])
    state, restored = _restore(ray.train.get_checkpoint())

    from job import metrics

    exporter = metrics.WorkerMetrics(
        config, rank=context.get_world_rank(), world_size=context.get_world_size(), dataset_name=dataset.name
    )
    try:
        for name in config.models:
            if name not in state.finished:
                _train_model(name, config, dataset, strategy, state, restored, exporter)
                restored = None
    finally:
        exporter.close()


def _quiet_logs(tf) -> None:
    """Keep the console to our progress lines: Ray Train logs every report and TF every checkpoint shard at INFO."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("job").setLevel(logging.INFO)
    tf.get_logger().setLevel(logging.ERROR)


def _restore(checkpoint: Any) -> tuple[RunState, Path | None]:
    if checkpoint is None:
        return RunState(), None
    folder = Path(tempfile.mkdtemp(prefix="mnist-restore-"))
    checkpoint.to_directory(str(folder))
    state = RunState.load(folder)
    done = {name: len(info["history"]) for name, info in state.finished.items()}
    say(f"resuming from checkpoint: finished {done or 'none'}, {state.current or '-'} at epoch {len(state.history)}")
    return state, folder


def _train_model(name, config, dataset, strategy, state, restored, exporter) -> None:
    import ray.train
    import tensorflow as tf
    import tf_keras

    from job.models import build

    rank = ray.train.get_context().get_world_rank()
    recipe, config = config.recipe(name), config.for_model(name)  # this model's epochs, batch size, schedule
    tf_keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build(name, config.steps_per_execution, recipe, len(dataset.y_train) // config.batch_size)
        tf_checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    if state.current == name and restored is not None:
        tf_checkpoint.read(str(restored / "current" / "ckpt")).expect_partial()
    else:
        state.current, state.history = name, []
    x_train = datamod.features(dataset.x_train, name)
    x_test = datamod.features(dataset.x_test, name)
    val = _validation_data(tf, x_test, dataset.y_test, config.batch_size)
    steps = len(dataset.y_train) // config.batch_size
    callback = exporter.callback(name, samples_per_epoch=steps * config.per_worker_batch)
    for epoch in range(len(state.history), config.epochs):
        started = time.perf_counter()
        train = _train_data(tf, strategy, x_train, dataset.y_train, epoch, rank, config, recipe.augment)
        logs = model.fit(
            train,
            validation_data=val,
            steps_per_epoch=steps,
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=[callback],
            verbose=0,
        ).history
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            **{k: float(v[-1]) for k, v in logs.items()},
            "seconds": round(seconds, 3),
            "samples_per_second": round(steps * config.per_worker_batch / seconds, 1),
        }
        state.history.append(record)
        last = epoch + 1 == config.epochs
        if last:
            _finish(name, model, x_test, dataset.y_test, state, exporter, rank)
        _report(config, state, record, name, tf_checkpoint, model if last else None, rank)


def _train_data(tf, strategy, x, y, epoch, rank, config, augmented=False):
    """This worker's shard of the epoch, in per-worker batches of fixed shape."""
    idx = datamod.epoch_indices(len(y), epoch, config.seed, rank, config.workers, config.batch_size)

    def dataset_fn(input_context):
        batch = input_context.get_per_replica_batch_size(config.batch_size)  # takes the global batch (GUIDE 17)
        ds = tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).batch(batch, drop_remainder=True)
        if augmented:
            from job.augment import augment, epoch_seed

            ds = augment(ds, epoch_seed(config.seed, epoch, rank))
        return ds.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _validation_data(tf, x, y, global_batch):
    """The full test set; Keras shards it by element across workers and handles the partial last batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(global_batch).with_options(options)


def _finish(name, model, x_test, y_test, state, exporter, rank) -> None:
    """After the last epoch: the chief measures the error on the full test set, as the tutorial does."""
    from job.models import evaluate

    # Every worker evaluates: under MWMS, reading batch norm's moving statistics is an all-reduce over the workers.
    loss, error = evaluate(model, x_test, y_test)
    if rank != 0:
        return
    state.finished[name] = {
        "history": state.history,
        "test_loss": loss,
        "test_error": error,
        "train_seconds": round(sum(r["seconds"] for r in state.history), 3),
    }
    state.current, state.history = None, []
    exporter.record_test(name, test_loss=loss, test_error=error)
    say(f"{DISPLAY_NAMES[name]} error: {error * 100:.2f}%")


def _report(config, state, record, name, tf_checkpoint, final_model, rank) -> None:
    """One report per epoch on every worker (it is a barrier); only the chief's checkpoint is kept."""
    import ray.train

    folder = Path(tempfile.mkdtemp(prefix="mnist-ckpt-"))
    try:
        # Every worker must write (MWMS); the others write to a temp folder that is thrown away.
        if final_model is not None:
            (folder / name).mkdir()
            # Explicit format: tf_keras' .keras detection breaks after the first save in a non-main thread.
            final_model.save(str(folder / name / "model.keras"), save_format="keras_v3")
        else:
            tf_checkpoint.write(str(folder / "current" / "ckpt"))
        if rank == 0:
            _print_epoch(name, record, config.epochs)
            if final_model is not None:
                state.model_files[name] = (folder / name / "model.keras").read_bytes()
            state.save(folder)
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if rank == 0 else None
        ray.train.report({"model": name, **record}, checkpoint=checkpoint)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def say(line: str) -> None:
    """Progress for the user. Bypasses Ray Train's print patch, which would print each line twice."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def _print_epoch(name: str, record: dict[str, float], epochs: int) -> None:
    say(
        f"{name:<9} epoch {record['epoch']:>3}/{epochs}  loss {record['loss']:.4f}  acc {record['accuracy']:.4f}  "
        f"val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}  {record['seconds']:6.1f}s  "
        f"{record['samples_per_second']:8.0f} samples/s/worker"
    )
