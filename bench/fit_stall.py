"""Benchmark (not a test): how long `model.fit` sits idle after its last epoch, with and without what the job changed.

The tutorial's MLP on random 28x28 data, 10 epochs in one `fit`, fed as the job feeds it (ten per-epoch index
pipelines, concatenated, gathered per batch). Prints the seconds between Keras' `on_train_end` and `fit` returning.

    .venv/bin/python bench/fit_stall.py [--runs 3]

Variants, each in a fresh process: `mwms` (one-worker MultiWorkerMirroredStrategy, autotune on: the job before),
`mwms-no-autotune` (tf.data's autotuner off on both pipelines), `mwms-no-autotune-anywhere` (also off on MWMS's
per-device copies: the job now, for several workers), `default-no-autotune` (TF's default strategy, autotuner off: the
job now, for one worker on one device).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

VARIANTS = ("mwms", "mwms-no-autotune", "mwms-no-autotune-anywhere", "default-no-autotune")


def run(variant: str) -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    from job.devices import data_options, per_device_data_without_autotune

    mwms = variant.startswith("mwms")
    if variant == "mwms-no-autotune-anywhere":
        per_device_data_without_autotune()
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if mwms else tf.distribute.get_strategy()
    options = tf.data.Options() if variant == "mwms" else data_options()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (60000, 784), dtype=np.uint8), rng.integers(0, 10, 60000)
    pixels, labels = tf.constant(x), tf.constant(y)
    with strategy.scope():
        model = keras.Sequential([keras.layers.Dense(784, activation="relu", input_shape=(784,)),
                                  keras.layers.Dense(10, activation="softmax")])  # fmt: skip
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      steps_per_execution=10)  # fmt: skip

    def gather(ids: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(tf.gather(pixels, ids), tf.float32) / 255.0, tf.gather(labels, ids)

    def epochs(_: tf.distribute.InputContext) -> tf.data.Dataset:
        parts = [tf.data.Dataset.from_tensor_slices(rng.permutation(60000)).batch(200, drop_remainder=True)
                 .map(gather, num_parallel_calls=tf.data.AUTOTUNE) for _ in range(10)]  # fmt: skip
        data = parts[0]
        for part in parts[1:]:
            data = data.concatenate(part)
        return data.prefetch(tf.data.AUTOTUNE).with_options(options)

    train = strategy.distribute_datasets_from_function(epochs)
    val = tf.data.Dataset.from_tensor_slices((x[:10000] / 255.0, y[:10000])).batch(200).with_options(options)
    ended = {}
    mark = keras.callbacks.LambdaCallback(on_train_end=lambda logs: ended.update(at=time.perf_counter()))
    started = time.perf_counter()
    model.fit(train, validation_data=val, epochs=10, steps_per_epoch=300, verbose=0, callbacks=[mark])
    done = time.perf_counter()
    print(f"{variant:<20} fit {done - started:5.1f} s   on_train_end -> fit returned {done - ended['at']:5.2f} s",
          flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run(args.variant)
        return
    for variant in VARIANTS:
        for _ in range(args.runs):
            subprocess.run([sys.executable, __file__, "--variant", variant], check=True)


if __name__ == "__main__":
    main()
