"""One line from an error, for the console: the first line of its message, or a worker's root cause."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def root_cause(err: BaseException) -> str:
    """For a Ray Train worker failure, the last line of the first failed worker's traceback; else the first line."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        rank, cause = sorted(failures.items())[0]
        lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
        return f"worker {rank}: {lines[-1] if lines else type(cause).__name__}"
    return first_line(err)
