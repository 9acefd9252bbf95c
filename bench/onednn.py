"""Benchmark (not a test): TensorFlow's oneDNN CPU kernels, per model, the job's default (on, unless the user set
TF_ENABLE_ONEDNN_OPTS) against TF_ENABLE_ONEDNN_OPTS=0, interleaved in one invocation.

    .venv/bin/python bench/onednn.py --data-uri /data/mnist [--models mlp,cnn,large_cnn,deep_bn_cnn] [--epochs E]
                                     [--rounds 1] [--json out.json]

Each run is the job's own command in this process (`--workers 0`), same seed both ways. Per model and way: s/epoch
(mean of epochs 2..E), the test error, and whether the run recorded oneDNN on (results.json `devices.onednn`).
Where TensorFlow already turns oneDNN on by itself (x86 CPUs with AVX-512 VNNI/BF16 or AMX), "default" is what it
would do anyway, and the comparison is oneDNN forced off against it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import fmt, save_runs
from benchlib.machine import headline, machine, wait_quiet
from benchlib.processes import job_env

WAYS = ("off", "default")


def run_once(args: argparse.Namespace, model: str, way: str, workdir: Path) -> dict:
    output = workdir / f"{model}-{way}-{time.monotonic_ns()}"
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    command = [sys.executable, "-m", "job", "train", "--models", model, "--data-uri", args.data_uri,
               "--output", str(output), "--run-name", way, *epochs]  # fmt: skip
    env = job_env(workdir / "ray")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if way == "off":
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{model} {way} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    results = json.loads((output / "results.json").read_text())
    m = results["models"][model]
    seconds = [r["seconds"] for r in m["history"]]
    return {"s_per_epoch": round(statistics.mean(seconds[1:] or seconds), 3), "error_percent": m["test_error_percent"],
            "onednn": results["devices"].get("onednn"), "epochs": len(seconds)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-uri", required=True, help="full MNIST: a folder of the four IDX .gz files, or .npz")
    parser.add_argument("--models", default="mlp,cnn,large_cnn,deep_bn_cnn")
    parser.add_argument("--epochs", type=int, default=None, help="default: each model's own")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    info = machine()
    print(f"{headline(info)}  oneDNN off vs the job's default, --epochs {args.epochs or 'each model own'}", flush=True)
    runs: dict[str, dict[str, list[dict]]] = {m: {way: [] for way in WAYS} for m in args.models.split(",")}
    with tempfile.TemporaryDirectory(prefix="bench-onednn-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for model, ways in runs.items():
                for way in WAYS:
                    wait_quiet(0.3)
                    ways[way].append(r := run_once(args, model, way, Path(tmp)))
                    print(f"round {round_} {model:<11} {way:<7} oneDNN {r['onednn']}  {r['s_per_epoch']:7.2f} s/epoch  "
                          f"error {r['error_percent']:.2f}%", flush=True)  # fmt: skip
    print("\n| model | s/epoch, oneDNN off | s/epoch, default | off / default | error off | error default |")
    print("|---|---|---|---|---|---|")
    for model, ways in runs.items():
        off, on = (statistics.mean(r["s_per_epoch"] for r in ways[w]) for w in WAYS)
        errors = {w: ", ".join(f"{r['error_percent']:.2f}%" for r in ways[w]) for w in WAYS}
        speeds = f"{fmt(off, '.2f')} | {fmt(on, '.2f')} | {off / on:.2f}x"
        print(f"| {model} | {speeds} | {errors['off']} | {errors['default']} |")
    save_runs(args, info, runs)


if __name__ == "__main__":
    main()
