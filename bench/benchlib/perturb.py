"""The perturbed MNIST test set the benchmarks score models on: each digit rotated within ±10° and shifted within
±2 px (bilinear, background fill), drawn from a fixed seed, so every benchmark sees the same images."""

from __future__ import annotations

import numpy as np
from PIL import Image

ROTATION_DEG, SHIFT_PX, SEED = 10.0, 2.0, 0


def perturb(x: np.ndarray, seed: int = SEED, deg: float = ROTATION_DEG, px: float = SHIFT_PX) -> np.ndarray:
    """uint8 images (n, 28, 28), each turned and moved at random."""
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-deg, deg, len(x))
    shifts = rng.uniform(-px, px, (len(x), 2))
    moved = (
        Image.fromarray(image).rotate(angle, resample=Image.BILINEAR, translate=tuple(shift), fillcolor=0)
        for image, angle, shift in zip(x, angles, shifts, strict=True)
    )
    return np.stack([np.asarray(image) for image in moved])
