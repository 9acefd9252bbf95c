"""--overwrite loses nothing: the finished run at --output stays whole until the new run is final, and afterwards
nothing of it remains that the new results.json does not describe. Real runs in this process on the shipped sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from live_run import LiveRun

from support import run_job

FIRST = ("--dataset", "mnist-sample", "--models", "mlp,cnn", "--epochs", "1", "--run-name", "first")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("finished") / "out"
    done = run_job("train", *FIRST, "--output", str(output))
    assert done.returncode == 0, done.stderr
    return output


@pytest.fixture
def output(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run (mlp and cnn, run name 'first') for one test to replace."""
    shutil.copytree(finished_run, tmp_path / "out")
    return tmp_path / "out"


def snapshot(output: Path) -> dict[str, bytes]:
    """Every file of the finished run but its checkpoints and log: what its results.json describes."""
    return {
        str(p.relative_to(output)): p.read_bytes()
        for p in sorted(output.rglob("*"))
        if p.is_file() and p.parts[len(output.parts)] not in ("checkpoints", "run.log")
    }


def test_an_overwrite_that_fails_leaves_the_finished_run_whole(output: Path) -> None:
    before = snapshot(output)
    failed = run_job("train", *FIRST, "--output", str(output), "--overwrite", "--gpu")  # no GPU here
    assert failed.returncode == 2 and "GPU" in failed.stderr, failed.stderr
    assert snapshot(output) == before


def test_an_overwrite_killed_mid_way_keeps_the_finished_run_until_its_rerun_is_final(output: Path) -> None:
    before = snapshot(output)
    again = ("--dataset", "mnist-sample", "--models", "mlp", "--epochs", "3", "--run-name", "first",
             "--checkpoint-interval", "0", "--output", str(output), "--overwrite")  # fmt: skip
    with LiveRun(*again) as killed:
        killed.wait_for(r"^mlp +epoch +2/3")  # epoch 1 is checkpointed before epoch 2 starts
        killed.kill()
    assert snapshot(output) == before
    with LiveRun(*again) as rerun:
        assert rerun.finish() == 0, rerun.tail()
    assert rerun.matching(r"^resuming from checkpoint: finished none, mlp at epoch [12]$"), rerun.tail()
    results = json.loads((output / "results.json").read_text())
    assert list(results["models"]) == ["mlp"] and results["epochs"] == 3
    assert not (output / "cnn").exists()  # the replaced run's other model went once the new run was final
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["first"]


def test_an_overwrite_under_another_run_name_leaves_nothing_of_the_old_run(output: Path) -> None:
    done = run_job("train", "--dataset", "mnist-sample", "--models", "cnn", "--epochs", "1", "--run-name", "second",
                   "--output", str(output), "--overwrite")  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((output / "results.json").read_text())
    assert results["run_name"] == "second" and list(results["models"]) == ["cnn"]
    assert sorted(p.name for p in output.iterdir()) == ["checkpoints", "cnn", "curves.png", "results.json", "run.log"]
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["second"]
