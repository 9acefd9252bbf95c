"""Data augmentation for the training pipeline: small random rotations and translations, as in An et al. 2020.

Imported only inside Ray Train workers (it imports TensorFlow). Each worker augments its own shard; the random
stream is seeded from (run seed, epoch, rank), so a run is reproducible, workers differ, epochs differ, and a run
resumed at epoch e augments exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

MAX_DEGREES = 20.0  # the paper's RandomRotation(20)
MAX_SHIFT = 0.2  # the paper's RandomAffine(translate=(0.2, 0.2)): up to 20% of the height / width


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One seed per (run seed, epoch, worker), well mixed: nearby inputs give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def augment(dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Rotate and shift every image of a batched dataset whose elements are (x, ...): x is (batch, 28, 28, 1) in
    0-1; the other components (labels, ids) pass through untouched. Empty borders are filled with 0 (background)."""
    rotate = tf_keras.layers.RandomRotation(MAX_DEGREES / 360, fill_mode="constant", seed=seed)
    shift = tf_keras.layers.RandomTranslation(MAX_SHIFT, MAX_SHIFT, fill_mode="constant", seed=seed + 1)

    def images_only(x, *rest):
        return (shift(rotate(x, training=True), training=True), *rest)

    # Sequential map (no num_parallel_calls): the layers draw from one stateful generator, so order is fixed.
    return dataset.map(images_only)
