"""The consumption ledger in-process: it counts what the training steps take from the batches, and catches bad feeds."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from job import models
from job.ledger import ConsumptionError, Ledger

N, BATCH, STEPS = 1000, 200, 5


def fit_one_epoch(feed: tf.data.Dataset, steps: int = STEPS) -> Ledger:
    with tf.distribute.get_strategy().scope():
        model = models.build("mlp")
        ledger = Ledger(N, STEPS)
    ledger.attach(model)
    model.fit(feed, steps_per_epoch=steps, epochs=1, verbose=0)
    return ledger


def feed(ids: np.ndarray, batch: int) -> tf.data.Dataset:
    x = np.random.default_rng(0).random((N, 784), dtype=np.float32)
    y = np.arange(N) % 10
    return tf.data.Dataset.from_tensor_slices((x[ids], y[ids], ids)).batch(batch, drop_remainder=True)


def test_an_epoch_that_uses_every_example_once_in_global_batches_passes() -> None:
    ids = np.random.default_rng(1).permutation(N)
    used = fit_one_epoch(feed(ids, BATCH)).close_epoch(1, expected=N, global_batch=BATCH)
    assert (used.examples, used.distinct, used.max_uses, used.steps) == (N, N, 1, STEPS)
    assert used.batch_min == used.batch_max == BATCH and used.local_examples == N


def test_half_size_batches_are_caught() -> None:
    """The old bug: per-replica batches half the intended size, so an epoch of STEPS steps saw half the data."""
    ledger = fit_one_epoch(feed(np.arange(N), BATCH // 2))
    with pytest.raises(ConsumptionError, match=r"epoch 1 trained on 500 examples .* steps of 100-100; expected 1000"):
        ledger.close_epoch(1, expected=N, global_batch=BATCH)


def test_an_example_used_twice_is_caught() -> None:
    ids = np.concatenate([np.arange(N - BATCH), np.arange(BATCH)])  # the first batch again instead of the last
    ledger = fit_one_epoch(feed(ids, BATCH))
    with pytest.raises(ConsumptionError, match=r"1000 examples \(800 distinct, up to 2 uses each\)"):
        ledger.close_epoch(1, expected=N, global_batch=BATCH)


def test_counts_start_again_each_epoch() -> None:
    ids = np.arange(N)
    ledger = fit_one_epoch(feed(ids, BATCH))
    ledger.close_epoch(1, expected=N, global_batch=BATCH)
    with pytest.raises(ConsumptionError, match="trained on 0 examples"):
        ledger.close_epoch(2, expected=N, global_batch=BATCH)
