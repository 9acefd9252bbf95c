"""One notion of where a path is: `~`, relative paths, file://, s3:// and gs:// are resolved once, in the config, and
mean the same for the artifacts, Ray's checkpoints and the run log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.config import EvaluateConfig, ServeConfig, TrainConfig, location

from support import ROOT


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("~/runs", str(Path.home() / "runs")),
        ("runs/a", os.path.join(os.getcwd(), "runs", "a")),
        ("/data/../data/runs", "/data/runs"),
        ("file:///data/runs", "file:///data/runs"),
        ("s3://bucket/runs", "s3://bucket/runs"),
        ("gs://bucket/runs", "gs://bucket/runs"),
    ],
)
def test_a_location_means_one_thing(given: str, meant: str) -> None:
    assert location(given) == meant
    assert TrainConfig(output=given).output == meant
    assert EvaluateConfig(model_uri=given, data_uri=given).data_uri == meant
    assert ServeConfig(model_uri=given).model_uri == meant


def test_the_log_follows_the_output_and_a_log_file_is_located_too() -> None:
    assert TrainConfig(output="~/runs").log_path == str(Path.home() / "runs" / "run.log")
    assert TrainConfig(output="s3://b/r", log_file="~/r.log").log_path == str(Path.home() / "r.log")
    assert TrainConfig(output="s3://b/r", run_name="r").log_path == "r.log"  # beside the user, as before


def test_a_home_relative_output_holds_the_artifacts_the_checkpoints_and_the_log(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    args = ("--dataset", "mnist-sample", "--models", "mlp", "--epochs", "1", "--run-name", "r", "--output=~/runs")
    done = subprocess.run(
        [sys.executable, "-m", "job", "train", *args],
        cwd=cwd,
        env={**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    runs = home / "runs"
    assert (runs / "results.json").is_file() and (runs / "run.log").is_file() and (runs / "mlp").is_dir()
    assert (runs / "checkpoints" / "r").is_dir()
    assert sorted(cwd.iterdir()) == []  # no ./~ folder
    assert f"log: {runs}/run.log" in done.stdout
