"""A run's subprocesses: the environment they start in, and their process tree sampled for memory and CPU."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import psutil

SAMPLE_S = 0.2


def job_env(ray_tmp: str | Path, **extra: str) -> dict[str, str]:
    """This environment for a run of the job or of the tutorial's scripts, plus `extra`.

    Without the job's own settings (MNIST_TRAIN_*) and without RAY_ADDRESS; legacy Keras (tf_keras), TensorFlow's
    C++ logs quiet, output unbuffered, and a private Ray temp dir: ray.init() would otherwise join whatever
    /tmp/ray/ray_current_cluster names, a Ray started on this machine by someone else.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_TRAIN_") and k != "RAY_ADDRESS"}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", RAY_TMPDIR=str(ray_tmp),
               **extra)  # fmt: skip
    return env


def process_tree(root: int) -> list[psutil.Process]:
    """The process `root` and all its descendants; none if it is gone."""
    try:
        process = psutil.Process(root)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class TreeSampler(threading.Thread):
    """Peak summed RSS / PSS of a process tree, sampled every SAMPLE_S seconds until stop()."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.rss_kb, self.pss_kb, self.processes = pid, 0, 0, 0
        self.peak: dict[str, int] = {}  # "pid command" -> Pss MB at the peak
        self.cpu: dict[int, float] = {}  # pid -> user + system CPU seconds
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            rss, pss, commands = {}, {}, {}
            for process in process_tree(self.pid):
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    with process.oneshot():
                        times, memory = process.cpu_times(), process.memory_full_info()
                        commands[process.pid] = " ".join(process.cmdline())[:80]
                    self.cpu[process.pid] = max(self.cpu.get(process.pid, 0.0), times.user + times.system)
                    rss[process.pid], pss[process.pid] = memory.rss // 1024, memory.pss // 1024
            self.rss_kb = max(self.rss_kb, sum(rss.values()))
            if sum(pss.values()) > self.pss_kb:
                self.pss_kb = sum(pss.values())
                self.peak = {f"{pid} {commands[pid]}": kb // 1024 for pid, kb in pss.items()}
            self.processes = max(self.processes, len(pss))
            self._done.wait(SAMPLE_S)

    def stop(self) -> None:
        self._done.set()
        self.join()
