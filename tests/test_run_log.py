"""A failed run explains itself where the user looks: its traceback is in the run log, and the run log is copied
beside the outputs at the end of every run (with s3:// output the local log stays on a head pod's disk, deleted with
the cluster). A real run in this process against a real S3 API (moto) on loopback."""

from __future__ import annotations

from pathlib import Path

from support import run_job

RUN = ("--dataset", "mnist-sample", "--models", "mlp", "--epochs", "1", "--run-name", "logged")


def test_a_failed_run_leaves_its_traceback_in_the_log_beside_its_outputs(s3, tmp_path: Path) -> None:
    s3.filesystem().create_dir("runs")
    log = tmp_path / "logged.log"
    failed = run_job("train", *RUN, "--gpu", "--output", "s3://runs/logged", "--log-file", str(log))  # no GPU here
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr  # one line on the console
    uploaded = s3.filesystem().open_input_stream("runs/logged/run.log").read().decode()
    assert uploaded == log.read_text()
    assert "ERROR mnist-train: run failed\nTraceback (most recent call last):" in uploaded
    message = failed.stderr.strip().removeprefix("mnist-train: error: ")
    assert f"ConfigError: {message}" in uploaded  # the traceback ends with the error the console showed
    assert "runs/logged/results.json" not in s3.keys("runs/logged")  # a log is never a result


def test_a_finished_runs_log_is_beside_its_results(s3, tmp_path: Path) -> None:
    s3.filesystem().create_dir("runs")
    done = run_job("train", *RUN, "--output", "s3://runs/done", "--log-file", str(tmp_path / "done.log"))
    assert done.returncode == 0, done.stderr
    keys = s3.keys("runs/done")
    assert "runs/done/run.log" in keys and "runs/done/results.json" in keys
