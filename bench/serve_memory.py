"""Benchmark (not a test): the memory of `mnist-train serve`'s replica under the largest requests it allows.

    .venv/bin/python bench/serve_memory.py --model-uri RUN/<model> [--clients 32] [--requests 96] [--seconds 120]

One server with the defaults (HAProxy, batches of up to 32 requests, --max-digits 1000) is started and warmed up;
then --clients keep-alive clients post requests of --max-digits digits each until --requests are answered. The
replica's resident memory (RSS, every process Ray named ServeReplica) is sampled every 50 ms. Printed beside it: the
model's largest activation for one model call of DIGITS_PER_CALL digits (what a call may hold now) and for a whole
batch in one call (--clients x --max-digits digits, what it could hold before calls were cut), from the model itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
from benchlib import REPO
from serve_load import load, start_server

sys.path.insert(0, str(REPO))
MAX_DIGITS = 1000  # mnist-train serve's default --max-digits


def replica_rss(server: psutil.Process) -> int:
    total = 0
    for child in server.children(recursive=True):
        try:
            if "ServeReplica" in " ".join(child.cmdline()):
                total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


def largest_activation_bytes(model_uri: str, digits: int) -> int:
    """Bytes of the model's largest layer output (float32) for `digits` digits in one call."""
    from job.evaluate import load_model, read_model

    model = load_model(read_model(model_uri))
    per_digit = max(int(np.prod(layer.output.shape[1:])) for layer in model.layers)
    return per_digit * 4 * digits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96, help="answered requests of --max-digits digits")
    parser.add_argument("--seconds", type=float, default=120.0, help="at most this long under load")
    args = parser.parse_args()
    from job.serve import DIGITS_PER_CALL

    body = json.dumps(np.random.default_rng(0).integers(0, 256, (MAX_DIGITS, 28, 28)).tolist()).encode()
    with tempfile.TemporaryDirectory(prefix="rs", dir="/tmp") as ray_tmp:
        server, port = start_server(args.model_uri, [], ray_tmp)
        try:
            process = psutil.Process(server.pid)
            load(port, body, 2, 4, args.seconds)  # warm-up: every replica has traced and answered a large request
            idle, peak, stop = replica_rss(process), [0], threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    peak[0] = max(peak[0], replica_rss(process))

            sampler = threading.Thread(target=sample)
            sampler.start()
            figures = load(port, body, args.clients, args.requests, args.seconds)
            stop.set()
            sampler.join()
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
    mib = 1 << 20
    print(f"model {args.model_uri}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{args.clients} clients x {MAX_DIGITS} digits a request: {figures['requests']} answered, "
          f"{figures['failed']} failed, {figures['rps']:.1f} requests/s, p50 {figures['p50_ms']:.0f} ms")  # fmt: skip
    print(f"replica RSS: {idle / mib:,.0f} MiB after warm-up, {peak[0] / mib:,.0f} MiB at its peak under load")
    now = largest_activation_bytes(args.model_uri, DIGITS_PER_CALL)
    before = largest_activation_bytes(args.model_uri, args.clients * MAX_DIGITS)
    print(f"largest activation of one model call: {now / mib:,.0f} MiB now ({DIGITS_PER_CALL} digits a call), "
          f"{before / mib:,.0f} MiB for a whole batch in one call ({args.clients * MAX_DIGITS:,} digits)")  # fmt: skip
    return 0 if figures["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
