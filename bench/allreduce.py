"""Benchmark (not a test): the cost of one MultiWorkerMirroredStrategy all-reduce between two local CPU processes.

Starts two worker processes with a TF_CONFIG on loopback; each runs `all_reduce(SUM)` of N float32 values per step,
with no model around it, and prints milliseconds per step, for several sizes. The MLP's gradient is 623,290 floats.

    .venv/bin/python bench/allreduce.py [--sizes 1000,62329,623290,6232900] [--bytes-per-pack 0] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchlib.ports import free_ports


def worker(rank: int, ports: list[int], size: int, steps: int, bytes_per_pack: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": rank}}
    )
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf

    implementation = tf.distribute.experimental.CommunicationImplementation.RING
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation,
                                                              bytes_per_pack=bytes_per_pack)  # fmt: skip
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    values = tf.random.uniform([size])

    @tf.function
    def step() -> tf.Tensor:
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("SUM", values))

    for _ in range(20):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    ms = (time.perf_counter() - started) / steps * 1000
    if rank == 0:
        print(f"{size:>10,} floats ({size * 4 / 1e6:6.2f} MB): {ms:7.2f} ms/step", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,62329,623290,6232900")
    parser.add_argument("--bytes-per-pack", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        worker(args.rank, [int(p) for p in args.ports.split(",")], int(args.sizes), args.steps, args.bytes_per_pack)
        return
    print(f"MWMS ring all-reduce, 2 local processes, bytes_per_pack={args.bytes_per_pack}, {args.steps} steps")
    for size in args.sizes.split(","):
        ports = ",".join(map(str, free_ports(2)))
        common = [
            "--sizes",
            size,
            "--ports",
            ports,
            "--steps",
            str(args.steps),
            "--bytes-per-pack",
            str(args.bytes_per_pack),
        ]
        procs = [subprocess.Popen([sys.executable, __file__, "--rank", str(r), *common]) for r in (0, 1)]
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    main()
