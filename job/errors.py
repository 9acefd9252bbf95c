"""One line from an error, for the console: the first line of its message, or a worker's root cause; and SIGTERM as
an error like Ctrl-C."""

from __future__ import annotations

import signal


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


class Stopped(KeyboardInterrupt):
    """SIGTERM, as Kubernetes, systemd and CI stop a process: the job stops as on Ctrl-C, with the same clean-up."""


def stop_on_sigterm() -> None:
    """Raise Stopped in the main thread on SIGTERM. Call again after ray.init, whose native handler for SIGTERM
    prints a stack trace and aborts, skipping every clean-up."""
    signal.signal(signal.SIGTERM, _stop)


_received: list[int] = []


def sigterm_received() -> bool:
    """Whether SIGTERM arrived (code on the way out, Ray Train's fit, may turn Stopped into a KeyboardInterrupt)."""
    return bool(_received)


def _stop(signum: int, frame: object) -> None:
    _received.append(signum)
    raise Stopped
