"""Data augmentation for the training pipeline: for digits, small random rotations, zooms and shifts, as Deotte's
MNIST net trains (job/models.py); for clothes (Fashion-MNIST), horizontal flips and small translations, as its
leaderboard's models train.

Imported only inside Ray Train workers (it imports TensorFlow). Each worker augments its own shard; the random
stream is seeded from (run seed, epoch, rank), so a run is reproducible, workers differ, epochs differ, and a run
resumed at epoch e augments exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

MAX_DEGREES = 10.0  # Deotte's ImageDataGenerator(rotation_range=10, zoom_range=0.1, width/height_shift_range=0.1)
MAX_ZOOM = 0.1
MAX_SHIFT = 0.1  # up to 10% of the height / width: 2.8 pixels
CLOTHES_SHIFT = 0.1  # about 3 pixels: a garment stays in its frame


def policy(dataset_name: str) -> str:
    """'clothes' for Fashion-MNIST, whose classes a mirror image keeps and a 20° turn or a 6-pixel shift distorts;
    'digits' for everything else (a mirrored digit is another symbol)."""
    return "clothes" if dataset_name == "fashion_mnist" else "digits"


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One seed per (run seed, epoch, worker), well mixed: nearby inputs give unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _layers(kind: str, seed: int) -> list[tf_keras.layers.Layer]:
    if kind == "clothes":
        return [
            tf_keras.layers.RandomFlip("horizontal", seed=seed),
            tf_keras.layers.RandomTranslation(CLOTHES_SHIFT, CLOTHES_SHIFT, fill_mode="constant", seed=seed + 1),
        ]
    return [
        tf_keras.layers.RandomRotation(MAX_DEGREES / 360, fill_mode="constant", seed=seed),
        tf_keras.layers.RandomZoom(MAX_ZOOM, fill_mode="constant", seed=seed + 2),
        tf_keras.layers.RandomTranslation(MAX_SHIFT, MAX_SHIFT, fill_mode="constant", seed=seed + 1),
    ]


def augment(dataset: tf.data.Dataset, seed: int, kind: str = "digits") -> tf.data.Dataset:
    """Transform every image of a batched dataset whose elements are (x, ...): x is (batch, 28, 28, 1) in 0-1; the
    other components (labels, ids) pass through untouched. Empty borders are filled with 0 (background)."""
    transforms = _layers(kind, seed)

    def images_only(x, *rest):
        for layer in transforms:
            x = layer(x, training=True)
        return (x, *rest)

    # Sequential map (no num_parallel_calls): the layers draw from one stateful generator, so order is fixed.
    return dataset.map(images_only)
