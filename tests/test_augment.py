"""Augmentation (job/augment.py) on real digits and clothes: seeded, different per worker and per epoch, images only;
digits turn and shift, clothes mirror and shift less."""

import numpy as np
import pytest
import tensorflow as tf

from job import augment, data, models

BATCH = 50


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    sample = data.mnist_sample()
    return models.features(sample.x_train[:200], models.build("deep_bn_cnn")), sample.y_train[:200]


@pytest.fixture(scope="module")
def clothes() -> tuple[np.ndarray, np.ndarray]:
    fashion = data.load("fashion_mnist", None)
    return models.features(fashion.x_train[:200], models.build("deep_bn_cnn")), fashion.y_train[:200]


def batches(images, seed: int, kind: str = "digits") -> list[tuple[np.ndarray, ...]]:
    """One epoch of (x, y, ids) batches, as the worker's pipeline will hand them over, augmented with `seed`."""
    x, y = images
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.arange(len(y)))).batch(BATCH, drop_remainder=True)
    return [tuple(part.numpy() for part in batch) for batch in augment.augment(ds, seed, kind)]


def centre(img: np.ndarray) -> np.ndarray:
    grid, mass = np.arange(28), img[..., 0]
    return np.array([(mass.sum(axis=1) * grid).sum(), (mass.sum(axis=0) * grid).sum()]) / mass.sum()


def test_same_seed_gives_identical_batches(digits) -> None:
    seed = augment.epoch_seed(7, epoch=3, rank=1)
    first, again = batches(digits, seed), batches(digits, seed)
    assert len(first) == 4
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("other", [(7, 3, 0), (7, 4, 1), (8, 3, 1)], ids=["other-worker", "next-epoch", "other-seed"])
def test_other_worker_epoch_or_seed_gives_other_batches(digits, other) -> None:
    mine = batches(digits, augment.epoch_seed(7, epoch=3, rank=1))
    theirs = batches(digits, augment.epoch_seed(*other))
    for a, b in zip(mine, theirs, strict=True):
        assert np.abs(a[0] - b[0]).mean() > 0.05  # a typical image differs in many pixels, not by round-off


def test_only_images_change_labels_and_ids_pass_through(digits) -> None:
    x, y = digits
    for i, (images, labels, ids) in enumerate(batches(digits, seed=1)):
        rows = slice(i * BATCH, (i + 1) * BATCH)
        np.testing.assert_array_equal(labels, y[rows])
        np.testing.assert_array_equal(ids, np.arange(len(y))[rows])
        assert images.shape == (BATCH, 28, 28, 1) and images.dtype == np.float32
        assert images.min() >= 0.0 and images.max() <= 1.0
        changed = np.abs(images - x[rows]).reshape(BATCH, -1).mean(axis=1) > 1e-3
        assert changed.mean() > 0.9  # nearly every image is moved or turned


def test_transforms_are_small_rotations_and_shifts(digits) -> None:
    """A digit keeps most of its ink (the fill is background) and its centre of mass moves by at most 20% a side."""
    x, _ = digits
    images = np.concatenate([b[0] for b in batches(digits, seed=5)])
    ink_before, ink_after = x.sum(axis=(1, 2, 3)), images.sum(axis=(1, 2, 3))
    assert np.median(ink_after / ink_before) > 0.9
    moves = np.array([np.abs(centre(a) - centre(b)) for a, b in zip(images, x, strict=True)])
    assert moves.max() <= 0.2 * 28 + 1.5  # shift up to 5.6 px, rotation moves the centre a little more
    assert np.median(moves.max(axis=1)) > 0.5  # and they do move


def test_epoch_seeds_are_distinct_and_stable() -> None:
    seeds = {augment.epoch_seed(7, epoch, rank) for epoch in range(50) for rank in range(8)}
    assert len(seeds) == 400
    assert augment.epoch_seed(7, 0, 0) == augment.epoch_seed(7, 0, 0)


def test_clothes_are_mirrored_about_half_the_time_and_shift_at_most_10_percent(clothes) -> None:
    x, y = clothes
    out = batches(clothes, seed=5, kind="clothes")
    images = np.concatenate([b[0] for b in out])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), y)
    mirrored = np.array([np.abs(a - b[:, ::-1]).mean() < np.abs(a - b).mean() for a, b in zip(images, x, strict=True)])
    assert 0.3 < mirrored.mean() < 0.7
    sources = np.where(mirrored[:, None, None, None], x[:, :, ::-1], x)
    moves = np.array([np.abs(centre(a) - centre(b)) for a, b in zip(images, sources, strict=True)])
    assert moves.max() <= 0.1 * 28 + 1.0 and np.median(moves.max(axis=1)) > 0.3
    assert batches(clothes, seed=5, kind="clothes")[0][0].tobytes() == out[0][0].tobytes()


def test_fashion_mnist_gets_the_clothes_policy_and_other_data_the_digits_one() -> None:
    assert augment.policy("fashion_mnist") == "clothes"
    assert {augment.policy(name) for name in ("mnist", "mnist-sample", "digits")} == {"digits"}
