"""SIGTERM is a stop, not a crash: Kubernetes, systemd and CI stop a process with it, usually its whole process group.
`mnist-train train` stops as on Ctrl-C: one line, exit 143, no native stack trace, no process and no temp file left,
and the same command resumes the run (before: in this process it died by the signal; with a local Ray it aborted,
exit -6). For `mnist-train serve`, see tests/test_serve.py (a second server on the machine, stopped by SIGTERM)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from live_run import LiveRun, alive, descendants

from support import remove_ray_tmp


# With a local Ray (--workers 1), Ray's processes run in the driver's own session (job.session): before, they got the
# group's SIGTERM too, and under load the driver sometimes ended with exit 1 and no message (2 of 3 clean-clone runs).
@pytest.mark.parametrize("workers", ["0", "1"], ids=["in-process", "local-ray"])
def test_sigterm_to_the_process_group_stops_the_run_and_the_same_command_resumes_it(workers: str, tmp_path: Path):
    args = ("--dataset", "mnist-sample", "--models", "mlp", "--epochs", "40", "--checkpoint-interval", "0",
            "--workers", workers, "--output", str(tmp_path / "out"), "--run-name", "term")  # fmt: skip
    (tmp_path / "tmp").mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths
    env = {"TMPDIR": str(tmp_path / "tmp"), "RAY_TMPDIR": ray_tmp}
    try:
        with LiveRun(*args, env=env) as run:
            run.wait_for(r"^mlp +epoch +2/40")
            group = [run.process.pid, *descendants(run.process.pid)]
            os.killpg(run.process.pid, signal.SIGTERM)
            code = run.finish(timeout=60)
        deadline = time.monotonic() + 20
        while (left := [pid for pid in group if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 128 + signal.SIGTERM, run.tail()
        assert run.matching(r"^mnist-train: stopped \(SIGTERM\); the same command resumes the run$"), run.tail()
        assert not run.matching(r"Traceback|SIGTERM received|\*\*\* "), run.tail()  # no Python or native trace
        assert not run.matching(r"^\S*\(raylet\)|core_worker\.cc"), run.tail()  # Ray's processes were not hit
        assert not left, f"processes left after SIGTERM: {left}"
        assert sorted((tmp_path / "tmp").iterdir()) == []
        if workers == "1":
            return  # resuming is the same on both paths; tests/test_resume.py resumes Ray runs
        with LiveRun(*args, env=env) as rerun:
            assert rerun.finish() == 0, rerun.tail()
            assert rerun.matching(r"^resuming from checkpoint: finished none, mlp at epoch ([1-9]|[1-3]\d)$"), (
                rerun.tail()
            )
    finally:
        remove_ray_tmp(ray_tmp)
