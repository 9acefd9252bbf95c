"""Benchmark (not a test): `mnist-train serve` under load on loopback, with and without batching, beside a plain
TensorFlow loop in one process (the floor).

    .venv/bin/python bench/serve_load.py --model-uri RUN/<model> [--seconds 10] [--requests 400] [--rounds 3]
                                         [--json out.json]

For each server setting (batching: the defaults, HAProxy in front; no batching: --max-batch-size 1; batching behind
Serve's Python proxy: --no-haproxy), one server is started, warmed up, and loaded by 1, 8 and 32 client threads
(keep-alive HTTP connections), each posting requests of 1 digit and then of 100 digits until --requests are answered
or --seconds have passed; all of that --rounds times. Printed: the median over the rounds of p50/p99 latency, requests
and digits per second, and the failed requests of all rounds. The floor: the same model called on the same batches in
a loop in this process, one batch at a time. Targets (printed, never asserted): p50 <= 10 ms for one digit at 1
client; batching >= 3x the throughput of no batching at 32 clients (with each round's ratio); no failed request.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from benchlib import REPO
from benchlib.ports import free_ports

sys.path.insert(0, str(REPO))
CLIENTS, SIZES = (1, 8, 32), (1, 100)
# The server's defaults (HAProxy in front, batching), then without batching, then batching behind Serve's Python proxy.
MODES = {"batching": [], "no batching": ["--max-batch-size", "1"], "batching, Python proxy": ["--no-haproxy"]}


def start_server(model_uri: str, flags: list[str], ray_tmp: str) -> tuple[subprocess.Popen, int]:
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [sys.executable, "-m", "job", "serve", "--model-uri", model_uri, "--port", str(port), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, start_new_session=True,
        env={**os.environ, "RAY_TMPDIR": ray_tmp},
    )  # fmt: skip
    for line in server.stdout:
        if line.startswith("serving "):
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return server, port
    raise RuntimeError(f"the server exited ({server.wait()}) before serving")


def load(port: int, body: bytes, clients: int, requests: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    failed = [0]
    deadline, lock = time.monotonic() + seconds, threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline and len(latencies) < requests:
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok, connection = False, http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failed[0] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": len(ms), "failed": failed[0], "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "rps": len(ms) / wall}  # fmt: skip


def floor(model_uri: str, batches: dict[int, np.ndarray], seconds: float) -> dict[int, dict[str, float]]:
    """The model called on the same batches, one after the other, in this process: no HTTP, no Ray."""
    from job.evaluate import load_model, read_model
    from job.serve import _compiled

    predict = _compiled(load_model(read_model(model_uri)), gpu=False)
    found = {}
    for size, x in batches.items():
        predict(x)
        times, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            predict(x)
            times.append(time.perf_counter() - started)
        found[size] = {"p50_ms": statistics.median(times) * 1000, "rps": len(times) / sum(times)}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="at most this long per load step")
    parser.add_argument("--requests", type=int, default=400, help="at most this many requests per load step")
    parser.add_argument("--rounds", type=int, default=3, help="load every step this many times; medians are printed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, got {args.rounds}")
    rng = np.random.default_rng(0)
    batches = {size: rng.integers(0, 256, (size, 28, 28)).astype(np.float32) for size in SIZES}
    bodies = {size: json.dumps(x.astype(int).tolist()).encode() for size, x in batches.items()}
    figures: dict[str, dict] = {"floor": floor(args.model_uri, batches, args.seconds)}
    for mode, flags in MODES.items():
        with tempfile.TemporaryDirectory(prefix="rs", dir="/tmp") as ray_tmp:
            server, port = start_server(args.model_uri, flags, ray_tmp)
            try:
                load(port, bodies[1], 4, 50, args.seconds)  # warm-up: traces, connections
                rounds = [{f"{size}x{clients}": load(port, bodies[size], clients, args.requests, args.seconds)
                           for size in SIZES for clients in CLIENTS} for _ in range(args.rounds)]  # fmt: skip
                figures[mode] = {step: [r[step] for r in rounds] for step in rounds[0]}
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(60)
    report(figures, args.model_uri)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def report(figures: dict[str, dict], model_uri: str) -> None:
    rounds = len(figures["batching"]["1x1"])
    print(f"model {model_uri}; {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"medians of {rounds} rounds\n")  # fmt: skip
    print("| digits/request | clients | mode | p50 ms | p99 ms | requests/s | digits/s | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for size in SIZES:
        f = figures["floor"][size]
        rate = f"{f['rps']:.0f} | {f['rps'] * size:.0f}"
        print(f"| {size} | - | plain TF loop (floor) | {f['p50_ms']:.2f} | | {rate} | |")
        for clients in CLIENTS:
            for mode in MODES:
                r = median(figures[mode][f"{size}x{clients}"])
                print(f"| {size} | {clients} | {mode} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rps']:.0f} | "
                      f"{r['rps'] * size:.0f} | {r['failed']} |")  # fmt: skip
    one = median(figures["batching"]["1x1"])["p50_ms"]
    gains = [
        b["rps"] / n["rps"] for b, n in zip(figures["batching"]["1x32"], figures["no batching"]["1x32"], strict=True)
    ]
    gain = median(figures["batching"]["1x32"])["rps"] / median(figures["no batching"]["1x32"])["rps"]
    failed = sum(r["failed"] for mode in MODES for runs in figures[mode].values() for r in runs)
    print(
        f"\ntargets: p50 one digit, 1 client {one:.1f} ms (<= 10); batching at 32 clients, one digit: {gain:.2f}x "
        f"no batching (>= 3; each round: {', '.join(f'{g:.2f}' for g in gains)}); failed requests {failed} (0)"
    )


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds; failed requests added up."""
    return {key: sum(r[key] for r in runs) if key == "failed" else statistics.median(r[key] for r in runs)
            for key in runs[0]}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
