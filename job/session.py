"""A command that starts a local Ray runs it in a session of its own, under a parent that only passes signals on.

SIGTERM to the user's process group (CI, `timeout`, a process manager) would otherwise reach every process the local
Ray started: they die at once, and the driver, waiting inside a Ray call, can be ended by Ray's core worker (exit 1,
no message) before its own handler runs. With Ray's processes in another session, only the parent gets the signal;
it passes it to the driver, which stops as on Ctrl-C and shuts Ray down in order. If the parent is killed outright,
the kernel kills the driver, and Ray's processes go with it, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def detach() -> int | None:
    """Fork. In the child (the driver, in a new session): return None and go on. In the parent: pass SIGINT, SIGTERM
    and SIGHUP to the child, wait for it and return its exit code. Elsewhere than Linux: None, nothing forked."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.setsid()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would pass signals on
            os._exit(128 + signal.SIGKILL)
        return None

    def pass_on(received: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # it has just ended
            os.kill(child, received)

    for signum in PASSED_ON:
        signal.signal(signum, pass_on)
    _, status = os.waitpid(child, 0)  # retried by Python after each handler (PEP 475)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
