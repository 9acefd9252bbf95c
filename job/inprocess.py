"""--workers 0: Ray Train's local mode. The workers' training function runs in this process, with no Ray instance.

Ray Train runs a trainer with `ScalingConfig(num_workers=0)` this way: `ray.train.report`, `get_context` and
`get_checkpoint` go to its `LocalTrainFnUtils` instead of a controller. On one machine that saves Ray's start-up
(GCS, raylet, controller and worker actors) and exit, most of the job's fixed cost (bench/README.md).

Ray's local mode keeps only the last reported checkpoint, in memory, and always starts from none. Here each reported
checkpoint is written under <output>/checkpoints/<run>/ as Ray Train does for its workers, and a rerun resumes from
the newest, so a killed run resumes in both modes alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ray.train import Checkpoint
from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils, set_train_fn_utils

from job import storage

LATEST = "in-process-latest.json"  # the complete checkpoints kept, newest last; rewritten (atomically) after each
KEEP = 2  # as the Ray path's CheckpointConfig(num_to_keep=2)


class _PersistingFnUtils(LocalTrainFnUtils):
    """Ray Train's local-mode utilities, with each reported checkpoint persisted to `run_uri` before report returns."""

    def __init__(self, run_uri: str, experiment_name: str) -> None:
        super().__init__(experiment_name=experiment_name)
        self._run_uri = run_uri
        self._kept: list[str] = []  # checkpoint_000001, ...: the complete checkpoints, newest last
        pointer = storage.join(run_uri, LATEST)
        if storage.exists(pointer):
            self._kept = json.loads(storage.read_bytes(pointer))["kept"]
            self._last_checkpoint = storage.checkpoint_at(storage.join(run_uri, self._kept[-1]))

    def report(self, metrics: dict[str, Any], checkpoint: Checkpoint | None = None, **kwargs: Any) -> None:
        if checkpoint is not None:
            checkpoint = self._persist(checkpoint)
        super().report(metrics, checkpoint=checkpoint, **kwargs)

    def _persist(self, checkpoint: Checkpoint) -> Checkpoint:
        index = int(self._kept[-1].rpartition("_")[2]) + 1 if self._kept else 1
        name = f"checkpoint_{index:06d}"
        uri = storage.join(self._run_uri, name)
        storage.delete(uri)  # what a killed run left half-written under this name
        storage.upload_dir(checkpoint.path, uri)
        kept = [*self._kept, name]
        pointer = json.dumps({"kept": kept[-KEEP:]}).encode()
        storage.write_bytes(storage.join(self._run_uri, LATEST), pointer)  # only now is it the one to resume from
        for old in kept[:-KEEP]:
            storage.delete(storage.join(self._run_uri, old))
        self._kept = kept[-KEEP:]
        return storage.checkpoint_at(uri)


def fit(train_loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], run_uri: str, name: str) -> Any:
    """Run `train_loop` here as Ray Train's local mode does; return the last checkpoint it reported (persisted)."""
    utils = _PersistingFnUtils(run_uri, experiment_name=name)
    set_train_fn_utils(utils)
    try:
        train_loop(loop_config)
    finally:
        set_train_fn_utils(None)
    return utils.get_checkpoint()
