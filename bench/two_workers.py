"""Benchmark (not a test): the tutorial's MLP epoch under MultiWorkerMirroredStrategy with N local CPU processes,
with no Ray and no job around it, to see what TensorFlow's own collective costs and which settings change it.

    .venv/bin/python bench/two_workers.py [--workers 2] [--batch 200] [--threads 0] [--steps-per-execution 1]
                                          [--no-partial-batch-check]

Random data, 60,000 examples, 300 steps an epoch of the global batch, 4 epochs; rank 0 prints each epoch's seconds.
`--workers 1 --batch 100` run twice at once gives the compute floor of two workers sharing the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchlib.ports import free_ports


def worker(args: argparse.Namespace, rank: int, ports: list[int]) -> None:
    cluster = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": rank}}
    os.environ.update(TF_CONFIG=json.dumps(cluster), TF_CPP_MIN_LOG_LEVEL="2")
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    ring = tf.distribute.experimental.CommunicationImplementation.RING
    options = tf.distribute.experimental.CommunicationOptions(implementation=ring)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # Every step all-reduces a flag saying whether each worker still has data, unless told all shards are equal.
    strategy.extended.experimental_enable_get_next_as_optional = not args.no_partial_batch_check
    rng = np.random.default_rng(rank)
    x, y = rng.random((60000, 784), dtype=np.float32), rng.integers(0, 10, 60000)
    with strategy.scope():
        model = keras.Sequential([keras.layers.Dense(784, activation="relu", input_shape=(784,)),
                                  keras.layers.Dense(10, activation="softmax")])  # fmt: skip
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      steps_per_execution=args.steps_per_execution)  # fmt: skip

    def shard(context: tf.distribute.InputContext) -> tf.data.Dataset:
        data = tf.data.Dataset.from_tensor_slices((x, y)).shard(context.num_input_pipelines, context.input_pipeline_id)
        return data.batch(context.get_per_replica_batch_size(args.batch), drop_remainder=True).repeat().prefetch(2)

    times = {}

    def epoch_end(epoch: int, logs: dict) -> None:
        if rank == 0:
            print(f"epoch {epoch + 1}: {time.perf_counter() - times['start']:.2f} s", flush=True)

    clock = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: times.update(start=time.perf_counter()), on_epoch_end=epoch_end
    )
    model.fit(strategy.distribute_datasets_from_function(shard), epochs=4, steps_per_epoch=300, verbose=0,
              callbacks=[clock])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=200, help="global batch")
    parser.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TF's default)")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--no-partial-batch-check", action="store_true")
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        worker(args, args.rank, [int(p) for p in args.ports.split(",")])
        return
    ports = ",".join(map(str, free_ports(args.workers)))
    argv = [sys.executable, __file__, *sys.argv[1:], "--ports", ports, "--rank"]
    for process in [subprocess.Popen([*argv, str(rank)]) for rank in range(args.workers)]:
        process.wait()


if __name__ == "__main__":
    main()
