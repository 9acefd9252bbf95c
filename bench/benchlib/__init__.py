"""What the benchmarks in bench/ share; each script imports it from bench/ on sys.path (it is run as a file).

- tutorial: the Keras tutorial's three scripts, verbatim but for the data and a timing callback
- machine: what machine a benchmark ran on, and waiting until other work on it goes quiet
- processes: the environment of a run's subprocesses, and a run's process tree sampled for memory and CPU
- ports: free loopback ports for local workers and servers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fmt(value: float | None, spec: str) -> str:
    """A figure in a table, "-" where there is none."""
    return "-" if value is None else format(value, spec)


def save_runs(args: argparse.Namespace, info: dict[str, str], runs: object) -> None:
    """With --json PATH: the machine, the benchmark's arguments and its runs, as JSON."""
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"machine": info, "args": settings, "runs": runs}, indent=1))
