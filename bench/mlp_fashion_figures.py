"""bench/mlp_fashion.py's figures: one run's (Result), read from what it left, merged from the timing and memory
passes, and printed as a table and against the targets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import fmt
from benchlib.processes import TreeSampler


@dataclass
class Result:
    name: str
    workers: str | int
    wall_s: float = 0.0
    epoch_s: float | None = None  # mean training-loop seconds of epochs 2..E (fit incl. validation)
    cycle_s: float | None = None  # mean gap between consecutive epoch ends, 2..E (adds checkpoint + report)
    first_step_s: float | None = None  # process start -> first epoch begins
    exit_s: float | None = None  # last epoch ends -> process exits (artifacts written)
    peak_rss_mb: float = 0.0  # sum of VmRSS over the process tree (counts shared pages once per process)
    peak_pss_mb: float = 0.0  # sum of Pss (shared pages split between processes): closer to real use
    peak_processes: int = 0
    test_error_percent: float | None = None
    cpu_s: float = 0.0  # CPU seconds used by the run's process tree (last utime+stime seen of every process)
    others_cores: float = 0.0  # mean cores busy with anything else meanwhile (machine busy time minus cpu_s): noise
    machine_cores: float = 0.0  # mean cores busy on the whole machine during the run, the run included
    returncode: int = 0
    epoch_seconds: list[float] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)


def take_peaks(result: Result, sampler: TreeSampler, out: Path) -> float:
    """Fold one sampled process tree's peaks into the run's (its processes at the peak into peak_pss_mb.json);
    returns the CPU seconds the tree used."""
    if sampler.pss_kb / 1024 > result.peak_pss_mb:
        (out / "peak_pss_mb.json").write_text(json.dumps(sampler.peak, indent=1))
    result.peak_rss_mb = max(result.peak_rss_mb, sampler.rss_kb / 1024)
    result.peak_pss_mb = max(result.peak_pss_mb, sampler.pss_kb / 1024)
    result.peak_processes = max(result.peak_processes, sampler.processes)
    return sum(sampler.cpu.values())


def _mean_after_first(values: list[float]) -> float | None:
    rest = values[1:] or values
    return sum(rest) / len(rest) if rest else None


def read_figures(result: Result, benches: list[dict[str, Any]], run: Path, start: float, exited: float,
                 epochs: int) -> None:  # fmt: skip
    """A finished run's epochs, errors, start-up and exit: from the tutorial scripts' BENCH lines (`benches`), or
    from the job's results.json in `run`; `start` and `exited` are when the first command started, the last ended."""
    if result.workers in ("tutorial", "tutorial-3"):
        result.epoch_seconds = [s for b in benches for s in b["epoch_seconds"]]
        result.first_step_s = benches[0]["first_epoch_begin"] - start
        result.exit_s = exited - benches[-1]["epoch_ends"][-1]
        result.errors = {m: b["test_error_percent"] for m, b in zip(("mlp", "cnn", "large_cnn"), benches, strict=False)}
        ends = benches[0]["epoch_ends"]
    else:
        models = json.loads((run / "results.json").read_text())["models"]
        history = [r for m in models.values() for r in m["history"]]
        result.epoch_seconds = [r["seconds"] for r in history]
        result.first_step_s = history[0]["started_at"] - start
        result.exit_s = exited - (history[-1]["started_at"] + history[-1]["seconds"])
        result.errors = {m: v["test_error_percent"] for m, v in models.items()}
        first = next(iter(models.values()))["history"]
        ends = [r["started_at"] + r["seconds"] for r in first]
    result.test_error_percent = next(iter(result.errors.values()))
    result.epoch_s = _mean_after_first(result.epoch_seconds[:epochs])
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]  # epochs 2..E
    result.cycle_s = sum(gaps) / len(gaps) if gaps else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def merged(timing: Result | None, memory: Result | None) -> Result:
    """Timings from the pass without the sampler, memory (and the others' load) from the sampled pass."""
    base = timing or memory
    assert base is not None
    if memory is not None and timing is not None:
        for attr in ("peak_rss_mb", "peak_pss_mb", "peak_processes", "cpu_s", "others_cores"):
            setattr(base, attr, getattr(memory, attr))
    return base


def table(results: dict[str, Result]) -> str:
    cols = [
        ("wall s", "wall_s"),
        ("epoch s (2..E)", "epoch_s"),
        ("start->1st step s", "first_step_s"),
        ("last epoch->exit s", "exit_s"),
        ("peak PSS MB", "peak_pss_mb"),
    ]
    head = (
        f"| run | {' | '.join(c for c, _ in cols)} | test error % | machine cores (timing) | others' cores (memory) |"
    )
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for r in results.values():
        base = results.get("tutorial-3" if r.name == "make-train" else "tutorial")
        cells = []
        for _, attr in cols:
            value, ref = getattr(r, attr), getattr(base, attr) if base else None
            ratio = _ratio(value, ref) if base is not None and r is not base and attr != "exit_s" else None
            cells.append(fmt(value, ".0f" if "mb" in attr else ".2f") + (f" (x{ratio:.2f})" if ratio else ""))
        errors = ", ".join(f"{m} {e:.2f}" for m, e in r.errors.items())
        lines.append(f"| {r.name} | {' | '.join(cells)} | {errors} | {r.machine_cores:.2f} | {r.others_cores:.2f} |")
    return "\n".join(lines)


def targets(results: dict[str, Result]) -> list[tuple[str, float | None, str]]:
    """(what, measured, target) for the goals the job aims at; printed, never asserted."""
    names = ("tutorial", "job-0w", "job-1w", "job-2w", "tutorial-3", "make-train")
    tut, zero, one, two, tut3, make = (results.get(n) for n in names)
    rows: list[tuple[str, float | None, str]] = []
    for job in (zero, one, two):
        if job:
            rows.append((f"{job.name} start to first step (s)", job.first_step_s, "<= 10"))
            rows.append((f"{job.name} last epoch to exit (s)", job.exit_s, "<= 3"))
    for job in (zero, one):
        if job and tut:
            rows.append((f"{job.name} wall / tutorial wall", _ratio(job.wall_s, tut.wall_s), "<= 1.15"))
            rows.append((f"{job.name} epoch / tutorial epoch", _ratio(job.epoch_s, tut.epoch_s), "<= 1.00"))
    if one and two:
        rows.append(("job-2w epoch / job-1w epoch", _ratio(two.epoch_s, one.epoch_s), "<= 1.25 (aim 1.0)"))
    if make and tut3:
        rows.append(("make-train wall / tutorial's 3 scripts wall", _ratio(make.wall_s, tut3.wall_s), "<= 1.3"))
    for job in (zero, one, two):
        if job and tut and job.peak_pss_mb:
            rows.append((f"{job.name} peak PSS / tutorial", _ratio(job.peak_pss_mb, tut.peak_pss_mb), "<= 2"))
    return rows


def report(results: dict[str, Result]) -> list[tuple[str, float | None, str]]:
    """Print the table and the targets; returns the targets' rows."""
    print(
        "\nPSS: peak of the sum over the process tree, from the sampled pass (psutil every 0.2 s). Ratios (xN) are "
        "against the tutorial (make-train: against the tutorial's three scripts back to back).\n"
        "machine cores: mean busy cores during the timing pass, the run included (2 = the whole box); "
        "others' cores: other work during the memory pass. Above 0.2 others' cores the figures are noisy.\n"
    )
    print(table(results))
    rows = targets(results)
    print("\n| target | measured | aim |\n|---|---|---|")
    for what, value, aim in rows:
        print(f"| {what} | {fmt(value, '.2f')} | {aim} |")
    return rows
