"""The strategy a worker trains under, built by the job in a fresh process (MWMS configures TensorFlow's runtime once).

Every tf.data iterator that `fit` creates under MWMS must run without the autotuner: with it, the end of an iterator
could leave `fit` idle for up to 60 s (bench/README.md). That includes the per-device copies MWMS makes, which take no
options from the input. And a worker's training pipeline must not copy the training set (tf.data's default
optimizations did, once per epoch).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

PROBE = """
import json, sys
import tensorflow as tf
from job import devices
from job.config import TrainConfig

strategy, info = devices.make_strategy(TrainConfig(), workers=int(sys.argv[1]))
train = strategy.distribute_datasets_from_function(
    lambda context: tf.data.Dataset.range(8).batch(2).with_options(devices.data_options()))
test = strategy.experimental_distribute_dataset(tf.data.Dataset.range(8).batch(2).with_options(devices.data_options()))

def autotune(iterator):
    '''The autotune setting of each tf.data iterator behind a distributed iterator, host first, then per device.'''
    if not hasattr(iterator, "_iterators"):  # the default strategy hands out the plain tf.data iterator
        return [iterator._dataset.options().autotune.enabled]
    found = []
    for worker in iterator._iterators:
        found.append(worker._dataset.options().autotune.enabled)
        found += [d._dataset.options().autotune.enabled for d in worker._iterator._device_iterators]
    return found

print(json.dumps({"mwms": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), "info": info,
                  "train": autotune(iter(train)), "test": autotune(iter(test))}))
"""


def probe(code: str, *args: str) -> dict:
    """Run `code` in a fresh Python process; the JSON object its last line prints."""
    process = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.splitlines()[-1])


def test_mwms_iterates_every_pipeline_and_its_per_device_copies_without_the_autotuner() -> None:
    found = probe(PROBE, "2")  # workers
    assert found["mwms"] and found["info"]["collective"] == "ring"
    assert found["train"] == [False, False] and found["test"] == [False, False]


def test_one_worker_on_one_device_trains_under_the_default_strategy_without_the_autotuner() -> None:
    found = probe(PROBE, "1")  # workers
    assert not found["mwms"] and found["info"]["collective"] == "none"
    assert found["train"] == [False] and found["test"] == [False]


ONEDNN_PROBE = """
import json, os
import job
import numpy as np, tensorflow as tf
from job import devices

x = np.random.default_rng(0).random((8, 28, 28, 32), dtype=np.float32)
out = tf.nn.conv2d(x, np.ones((3, 3, 32, 4), dtype=np.float32), 1, "SAME")
print(json.dumps({"onednn": devices.describe([])["onednn"], "shape": out.shape.as_list(),
                  "env": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}))
"""


def test_the_job_runs_tensorflow_on_onednn_unless_the_user_turned_it_off(monkeypatch) -> None:
    """On by default, whatever TensorFlow would pick for this CPU: the same as asking for it; a user's
    TF_ENABLE_ONEDNN_OPTS wins, and a convolution runs either way (the speed per model is bench/onednn.py's)."""
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    default = probe(ONEDNN_PROBE)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    asked = probe(ONEDNN_PROBE)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    off = probe(ONEDNN_PROBE)
    # The job sets it, so the CPUs where TensorFlow would leave oneDNN off (no AVX-512 VNNI/BF16, no AMX) get it too.
    assert (default["env"], off["env"]) == ("1", "0")
    assert default["onednn"] == asked["onednn"] and off["onednn"] is False, (default, asked, off)
    if platform.machine() in ("x86_64", "AMD64"):  # TensorFlow's x86 wheels are built with oneDNN
        assert default["onednn"] is True
    assert default["shape"] == off["shape"] == [8, 28, 28, 4]


MEMORY_PROBE = """
import json, types
import numpy as np, psutil, tensorflow as tf
from job import devices, worker
from job.config import TrainConfig
from job.data import Dataset

config = TrainConfig(models=("mlp",), epochs=10).for_model("mlp")  # the recipe: batch 200
strategy, _ = devices.make_strategy(config, workers=1)
x = np.random.default_rng(0).integers(0, 256, (60_000, 784), dtype=np.uint8)  # Fashion-MNIST's size: 47 MB
y = np.zeros(60_000, dtype=np.uint8)
data = Dataset("probe", "probe", x, y, x[:10], y[:10])
me = types.SimpleNamespace(dataset=data, strategy=strategy, rank=0, size=1)
pixels = tf.constant(x)
before = psutil.Process().memory_info().rss
batch = next(iter(worker._train_data(me, config, "mlp", pixels, range(10))))
print(json.dumps({"grew": psutil.Process().memory_info().rss - before, "pixels": x.nbytes}))
"""


def test_ten_epochs_of_training_data_add_no_copy_of_the_training_set() -> None:
    """A fit call's pipeline gathers ten epochs of batches from the training set. tf.data's default optimizations
    rewrite a pipeline through a serialized graph, which copied the set into it once per epoch: +470 MB of memory
    per worker on Fashion-MNIST."""
    found = probe(MEMORY_PROBE)
    assert found["grew"] < found["pixels"], found
