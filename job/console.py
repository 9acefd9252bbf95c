"""What reaches the terminal: the job's own lines. Ray's and TensorFlow's chatter goes to the run's log file.

The workers' progress lines and the job's warnings are written to the workers' stdout; Ray forwards every worker's and
actor's output to the driver, and here the driver keeps on the console only the Train workers' stdout, without Ray's
`(RayTrainWorker pid=...)` prefix. Everything else (TensorFlow's C++ banners, Ray Train's actors, Ray's own logs) goes
to the log file, or to the console too with --verbose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

JOB_LOGGERS = ("mnist-train", "job")
WORKER_ACTOR = "RayTrainWorker"


def setup(log_file: Path, verbose: bool) -> TextIO:
    """Log the job's lines to stderr and everything (Ray's loggers included) to `log_file`; return the open file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stream = log_file.open("a", buffering=1)
    to_file = logging.StreamHandler(stream)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    if not verbose:
        to_console.addFilter(lambda record: record.name.split(".")[0] in JOB_LOGGERS or record.levelno >= logging.ERROR)
    root = logging.getLogger()
    root.handlers[:] = [to_file, to_console]
    root.setLevel(logging.INFO)
    for noisy in ("tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return stream


@contextlib.contextmanager
def stderr_to_log(log: TextIO, verbose: bool) -> Iterator[None]:
    """Training in this process (--workers 0): TensorFlow's C++ logs write to file descriptor 2 directly, so point it
    at the log file (unless --verbose); the job's console handler keeps writing to the terminal."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = os.fdopen(terminal_fd, "w", buffering=1)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is sys.stderr and _on_fd2(h.stream)]
    for handler in ours:
        handler.setStream(terminal)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal_fd, 2)
        for handler in ours:
            handler.setStream(sys.stderr)
        terminal.close()


def _on_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (OSError, ValueError):  # a stream with no descriptor (a test's capture) does not go through fd 2
        return False


def adopt_ray_logger() -> None:
    """Ray gives its logger a console handler of its own when imported; send its records through ours instead."""
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers[:] = []
    ray_logger.propagate = True


def route_worker_output(log: TextIO, verbose: bool) -> None:
    """Replace Ray's printing of forwarded worker output by the routing described above. Call after ray.init."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    def route(batch: dict[str, Any]) -> None:
        ours = not batch.get("is_err") and batch.get("actor_name") == WORKER_ACTOR
        who = f"({batch.get('actor_name') or batch.get('task_name') or ''} pid={batch.get('pid')})"
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        for line in batch.get("lines", []):
            log.write(f"{stamp} {who} {line}\n")
            if ours:
                print(line, flush=True)
            elif verbose:
                print(f"{who} {line}", file=sys.stderr, flush=True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", route)
