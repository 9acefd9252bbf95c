"""--workers 0, the local default: Ray Train's local mode, training in the job's own process with no Ray instance.

A real run on the shipped digits, and a real SIGKILL mid-run followed by a rerun that resumes from the checkpoint
this mode persists itself (Ray's local mode keeps none)."""

from __future__ import annotations

import json
import re

import pytest
from live_run import LiveRun

from support import JOB_LINES, TF_LINE, TF_LINE_ENV, run_job

RUN = ("--dataset", "mnist-sample", "--models", "mlp,cnn", "--run-name", "in-process", "--checkpoint-interval", "0")


@pytest.fixture(scope="module")
def in_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("in-process")
    env = {"TMPDIR": str(tmp / "tmp"), "RAY_TMPDIR": str(tmp / "ray"), **TF_LINE_ENV}
    (tmp / "tmp").mkdir()
    out = run_job("train", *RUN, "--epochs", "2", "--output", str(tmp / "out"), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return tmp, out


def test_trains_every_model_in_this_process_without_ray(in_process_run) -> None:
    tmp, out = in_process_run
    results = json.loads((tmp / "out" / "results.json").read_text())
    assert results["workers"] == 0 and results["status"] == "succeeded"
    for name in ("mlp", "cnn"):
        history = results["models"][name]["history"]
        assert [r["epoch"] for r in history] == [1, 2]
        assert all((r["examples"], r["distinct_examples"], r["max_uses"]) == (4000, 4000, 1) for r in history)
        assert 0 < results["models"][name]["test_error"] < 0.2
        # One worker on one device: TF's default strategy, no MWMS (whose multi-device iterator stalled `fit`'s end).
        devices = results["models"][name]["devices"]
        assert devices == {"type": "CPU", "name": "cpu", "count": 1, "onednn": devices["onednn"], "collective": "none"}
        assert isinstance(devices["onednn"], bool)  # its value: test_devices.py
    assert "in this process on CPU (Ray Train's local mode" in out.stdout
    # No Ray instance was started (it makes its session folder there), and no lock file of Ray Train's was left.
    assert sorted(p.name for p in (tmp / "ray").glob("*")) == []
    assert sorted((tmp / "tmp").iterdir()) == []


def test_console_is_the_jobs_own_lines_and_tensorflow_goes_to_the_log(in_process_run) -> None:
    tmp, out = in_process_run
    lines = (out.stdout + out.stderr).splitlines()
    foreign = [line for line in lines if not any(re.fullmatch(p, line) for p in JOB_LINES)]
    assert not foreign, foreign
    log = (tmp / "out" / "run.log").read_text()
    assert TF_LINE in log  # written by TensorFlow's C++ code to file descriptor 2
    assert "starting a local Ray instance" not in log


def test_keeps_two_checkpoints_and_evaluate_reproduces_the_error(in_process_run) -> None:
    tmp, _ = in_process_run
    run_dir = tmp / "out" / "checkpoints" / "in-process"
    kept = json.loads((run_dir / "in-process-latest.json").read_text())["kept"]
    assert sorted(p.name for p in run_dir.glob("checkpoint_*")) == kept and len(kept) == 2
    percent = json.loads((tmp / "out" / "results.json").read_text())["models"]["cnn"]["test_error_percent"]
    evaluated = run_job("evaluate", "--model-uri", str(tmp / "out" / "cnn"), "--dataset", "mnist-sample")
    assert evaluated.returncode == 0 and f"error {percent:.2f}%" in evaluated.stdout


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path) -> None:
    args = (*RUN, "--epochs", "3", "--output", str(tmp_path / "out"))
    with LiveRun(*args) as first:  # LiveRun keeps a run's temp folders in pytest's: a killed one leaves them
        first.wait_for(r"^cnn +epoch +2/3")  # epoch 1 of cnn was reported (and persisted) before epoch 2 began
        first.kill()
    with LiveRun(*args) as second:
        assert second.finish() == 0, second.tail()
    resumed = second.matching(r"^resuming from checkpoint")
    assert len(resumed) == 1 and re.search(r"finished \{'mlp': 3\}, cnn at epoch [12]$", resumed[0]), resumed
    assert not second.matching(r"^mlp +epoch")  # the finished model is not trained again
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["epoch"] for r in results["models"]["cnn"]["history"]] == [1, 2, 3]
    assert [r["epoch"] for r in results["models"]["mlp"]["history"]] == [1, 2, 3]
