"""What machine a benchmark ran on, and how busy it is: the box is shared, so a run can wait for it to go quiet."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil

from benchlib import REPO


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "git": git.stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "rss_source": "psutil memory_full_info: rss and pss",
    }


def headline(info: dict[str, str]) -> str:
    """The start of a benchmark's first line: when, on what, at which commit."""
    return f"{info['date']}  {info['nproc']} x {info['cpu']}  git {info['git']}"


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def wait_quiet(max_cores: float, timeout_s: float = 600) -> None:
    """Wait until other work on the machine uses under max_cores cores over 5 s (the box is shared)."""
    deadline = time.time() + timeout_s
    while True:
        before = busy_cpu_s()
        time.sleep(5)
        cores = (busy_cpu_s() - before) / 5
        if cores < max_cores or time.time() > deadline:
            print(f"   machine busy: {cores:.2f} cores {'(gave up waiting)' if cores >= max_cores else ''}", flush=True)
            return
