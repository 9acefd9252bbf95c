"""Data loading and checking (npz, IDX, built-in sets) and the per-epoch sharding across workers."""

import io
import subprocess
import sys

import numpy as np
import pytest

from job import data

from support import ROOT, write_idx_folder


@pytest.fixture(scope="module")
def sample() -> data.Dataset:
    return data.mnist_sample()


def test_shipped_sample_is_real_balanced_mnist(sample: data.Dataset) -> None:
    assert (len(sample.y_train), len(sample.y_test)) == (4000, 1000)
    assert np.bincount(sample.y_train).tolist() == [400] * 10
    assert np.bincount(sample.y_test).tolist() == [100] * 10
    assert sample.x_train.dtype == np.uint8 and sample.x_train.shape[1:] == (28, 28)
    assert sample.name == "mnist-sample"


def test_mnist_offline_falls_back_to_the_sample_and_says_so(tmp_path) -> None:
    code = "from job import data; d = data.load('mnist'); print('NAME', d.name, len(d.y_train))"
    dead_proxy = "http://127.0.0.1:9"  # offline even on a machine that can reach Keras' URL
    env = {"KERAS_HOME": str(tmp_path), "HOME": str(tmp_path), "https_proxy": dead_proxy, "HTTPS_PROXY": dead_proxy}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert "NAME mnist-sample 4000" in out.stdout
    assert "Falling back to the 5,000-digit MNIST sample" in out.stderr
    assert "NOT comparable" in out.stderr


def test_a_cluster_run_never_falls_back_to_the_sample(tmp_path) -> None:
    """With --address, unreachable MNIST fails fast with one line that says how to provide it (train.check_inputs)."""
    code = ("from job import cli, train; c = cli.parse(['train', '--address', 'auto', '--output', {!r}]); "
            "train.check_inputs(c)").format(str(tmp_path / "out"))  # fmt: skip
    dead_proxy = "http://127.0.0.1:9"
    env = {"KERAS_HOME": str(tmp_path), "HOME": str(tmp_path), "https_proxy": dead_proxy, "HTTPS_PROXY": dead_proxy}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("job.data.DataError: full MNIST could not be loaded"), out.stderr[-2000:]
    assert "a cluster run never falls back to the 5,000-digit sample: pass --data-uri s3://" in last
    assert "--dataset mnist-sample" in last and "Falling back" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_fashion_mnist_from_debian_package() -> None:
    fashion = data.load("fashion_mnist")
    assert (len(fashion.y_train), len(fashion.y_test)) == (60000, 10000)
    assert fashion.name == "fashion_mnist" and fashion.x_train.shape == (60000, 28, 28)


def test_npz_and_idx_folder_give_the_same_data(tmp_path, sample: data.Dataset) -> None:
    np.savez_compressed(tmp_path / "digits.npz", **{k: getattr(sample, k) for k in data.SPLITS})
    write_idx_folder(tmp_path / "idx", sample)
    from_npz = data.load("mnist", str(tmp_path / "digits.npz"))
    from_idx = data.load("mnist", f"file://{tmp_path / 'idx'}")
    assert from_npz.sha256 == from_idx.sha256 == sample.sha256
    assert from_npz.name == "digits" and from_idx.name == "idx"


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _good(sample: data.Dataset, **override) -> dict:
    arrays = {k: getattr(sample, k)[:50] for k in data.SPLITS}
    return {**arrays, **override}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: _good(s, x_train=np.zeros((50, 32, 32), np.uint8)), "x_train has shape (50, 32, 32)"),
        (lambda s: _good(s, y_test=np.full(50, 12)), "labels in 12..12; labels must be digits 0-9"),
        (lambda s: _good(s, x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0)), "x_test is empty"),
        (lambda s: _good(s, x_train=np.full((50, 28, 28), np.nan, np.float32)), "NaN or infinite pixels"),
        (lambda s: _good(s, x_train=s.x_train[:50].astype(np.float32)), "float pixels must be scaled to 0-1"),
        (lambda s: _good(s, y_train=np.zeros(49)), "y_train has shape (49,); expected (50,)"),
        (lambda s: {k: v for k, v in _good(s).items() if k != "y_test"}, "missing arrays y_test"),
    ],
)
def test_bad_npz_is_rejected_with_file_and_reason(tmp_path, sample, change, message) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(_npz(**change(sample)))
    with pytest.raises(data.DataError) as err:
        data.load("mnist", str(path))
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_float_pixels_in_0_1_are_accepted(tmp_path, sample) -> None:
    path = tmp_path / "float.npz"
    path.write_bytes(_npz(**_good(sample, x_train=sample.x_train[:50] / 255.0)))
    assert data.load("mnist", str(path)).x_train.dtype == np.float32


def test_truncated_npz_and_corrupt_gzip(tmp_path, sample) -> None:
    raw = _npz(**_good(sample))
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match=r"cut.npz: not a readable .npz file"):
        data.load("mnist", str(tmp_path / "cut.npz"))
    write_idx_folder(tmp_path / "idx", sample)
    (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte.gz: not a valid gzip file"):
        data.load("mnist", str(tmp_path / "idx"))


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(data.DataError, match=r"--data-uri .*nope.npz does not exist"):
        data.load("mnist", str(tmp_path / "nope.npz"))


@pytest.mark.parametrize(("n", "workers", "batch"), [(4000, 2, 200), (60000, 2, 200), (1200, 4, 40), (600, 1, 200)])
def test_every_training_example_is_used_exactly_once_per_epoch(n: int, workers: int, batch: int) -> None:
    for epoch in range(3):
        shards = [data.epoch_indices(n, epoch, 7, rank, workers, batch) for rank in range(workers)]
        assert all(len(s) == n // workers for s in shards)
        assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(n))


def test_shards_form_global_batches_and_reshuffle_each_epoch() -> None:
    shards = [data.epoch_indices(4000, 0, 7, r, 2, 200) for r in range(2)]
    first_global_batch = np.concatenate([s[:100] for s in shards])
    assert len(set(first_global_batch)) == 200
    assert not np.array_equal(shards[0], data.epoch_indices(4000, 1, 7, 0, 2, 200))
    assert np.array_equal(shards[0], data.epoch_indices(4000, 0, 7, 0, 2, 200))  # same seed, same order


def test_partial_last_batch_is_left_out_and_rotates() -> None:
    used = [np.concatenate([data.epoch_indices(1050, e, 7, r, 2, 200) for r in range(2)]) for e in range(2)]
    assert all(len(u) == len(set(u)) == 1000 for u in used)
    assert set(range(1050)) - set(used[0]) != set(range(1050)) - set(used[1])
