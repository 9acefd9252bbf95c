"""Benchmark (not a test): an ensemble's members trained at once in worker groups (the default with Ray workers)
against one after the other on all the workers (--no-parallel-members), in one invocation, side by side.

    .venv/bin/python bench/ensemble_members.py --data-uri /data/mnist [--models cnn] [--ensemble 2] [--workers 2]
                                               [--epochs E] [--rounds 1] [--json out.json]

Each way is the job's own command with a local Ray; the two alternate, round by round. Per way: the wall from the
command's start to its exit, each member's error, its s/epoch (mean of epochs 2..E) and the sum of its epochs, and
the time outside the members' epochs (Ray's start, the worker groups, the ensemble, the artifacts).
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

WAYS = {"parallel": "--parallel-members", "sequential": "--no-parallel-members"}


def run_once(args: argparse.Namespace, way: str, workdir: Path) -> dict:
    output = workdir / f"{way}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "job", "train", "--models", args.models, "--ensemble", str(args.ensemble),
               "--workers", str(args.workers), "--data-uri", args.data_uri, "--output", str(output),
               "--run-name", way, WAYS[way], *(["--epochs", str(args.epochs)] if args.epochs else [])]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, env=job_env(workdir / "ray"), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{way} run failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    results = json.loads((output / "results.json").read_text())
    members = {name: m for name, m in results["models"].items() if m["history"]}
    epochs = {name: [r["seconds"] for r in m["history"]] for name, m in members.items()}
    first = min(r["started_at"] for m in members.values() for r in m["history"])
    last = max(r["started_at"] + r["seconds"] for m in members.values() for r in m["history"])
    return {
        "wall_s": round(wall, 2),
        "members_span_s": round(last - first, 2),  # from the first member epoch's start to the last one's end
        "errors_percent": {name: m["test_error_percent"] for name, m in results["models"].items()},
        "s_per_epoch": {name: round(statistics.mean(s[1:] or s), 2) for name, s in epochs.items()},
        "epoch_sum_s": round(sum(sum(s) for s in epochs.values()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-uri", required=True, help="full MNIST: a folder of the four IDX .gz files, or .npz")
    parser.add_argument("--models", default="cnn")
    parser.add_argument("--ensemble", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="default: each model's own")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    info = machine()
    print(f"{headline(info)}  --models {args.models} --ensemble {args.ensemble} --workers {args.workers}", flush=True)
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="bench-members-") as tmp:
        for round_ in range(1, args.rounds + 1):
            for way in WAYS:
                wait_quiet(0.3)
                runs[way].append(run_once(args, way, Path(tmp)))
                r = runs[way][-1]
                print(f"round {round_} {way:<10} wall {r['wall_s']:7.1f} s  members {r['members_span_s']:7.1f} s  "
                      f"errors {r['errors_percent']}  s/epoch {r['s_per_epoch']}", flush=True)  # fmt: skip
    print("\n| way | wall s | members' span s | sum of member epochs s | wall - span s |\n|---|---|---|---|---|")
    for way, rs in runs.items():
        wall, span = statistics.mean(r["wall_s"] for r in rs), statistics.mean(r["members_span_s"] for r in rs)
        print(f"| {way} | {fmt(wall, '.1f')} | {fmt(span, '.1f')} | "
              f"{fmt(statistics.mean(r['epoch_sum_s'] for r in rs), '.1f')} | {fmt(wall - span, '.1f')} |")  # fmt: skip
    ratio = statistics.mean(r["wall_s"] for r in runs["sequential"]) / statistics.mean(
        r["wall_s"] for r in runs["parallel"]
    )
    print(f"sequential / parallel wall: {ratio:.2f}x")
    save_runs(args, info, runs)


if __name__ == "__main__":
    main()
