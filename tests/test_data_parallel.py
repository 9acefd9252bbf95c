"""Data parallelism on real Ray Train workers, proven from what the training steps consumed (job/ledger.py counts it
from the batches) rather than from the sharding arithmetic: with 1, 2 (tests/test_train_local.py) and 3 workers, and a
global batch that leaves a remainder, every step trains on the global batch and every epoch uses each example at most
once: all of them but the remainder. The epochs trained after a restart are checked in tests/test_resume.py."""

from __future__ import annotations

import json

import pytest

from support import run_job

TRAIN = 4000  # training examples in the shipped sample


@pytest.mark.parametrize(("workers", "batch"), [(1, 300), (3, 240)])
def test_every_step_trains_on_the_global_batch_and_every_epoch_on_each_example_once(tmp_path, workers, batch):
    out = run_job("train", "--dataset", "mnist-sample", "--models", "mlp", "--epochs", "2", "--workers", str(workers),
                  "--batch-size", str(batch), "--output", str(tmp_path), "--run-name", f"dp-{workers}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["workers"] == workers and results["batch_size"] == batch
    usable = TRAIN - TRAIN % batch
    for record in results["models"]["mlp"]["history"]:
        assert record["examples"] == record["distinct_examples"] == usable, record
        assert record["max_uses"] == 1 and record["steps"] == TRAIN // batch, record
        assert record["global_batch_min"] == record["global_batch_max"] == batch, record
        assert record["samples_per_second"] == pytest.approx(usable / record["seconds"], rel=0.01)
    assert f"{TRAIN % batch} training examples do not fill a last global batch of {batch}" in out.stderr
    # Epochs of a second or two, far below the default --checkpoint-interval of 30 s: one checkpoint, the final one.
    assert len([p for p in (tmp_path / "checkpoints" / f"dp-{workers}").glob("checkpoint_*") if p.is_dir()]) == 1
