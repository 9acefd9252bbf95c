"""The output contract: a resumed run must train what the first attempt trained."""

import dataclasses
import json

import pytest

from job import artifacts, data
from job.config import ConfigError, TrainConfig

from support import run_job


def test_claim_run_records_settings_and_refuses_a_changed_resume(tmp_path) -> None:
    sample = data.mnist_sample()
    config = TrainConfig(output=str(tmp_path), run_name="r1", epochs=4, models=("mlp",))
    artifacts.claim_run(config, sample)
    recorded = json.loads((tmp_path / "checkpoints" / "r1" / artifacts.RUN_SETTINGS).read_text())
    assert recorded == {"models": ["mlp"], "epochs": 4, "batch_size": 200, "seed": 7, "ensemble": 1,
                        "dataset_sha256": sample.sha256}  # fmt: skip
    artifacts.claim_run(TrainConfig(output=str(tmp_path), run_name="r1", epochs=4, models=("mlp",), workers=1), sample)
    with pytest.raises(ConfigError, match=r"would resume with other settings \(epochs 4 -> 6\)"):
        artifacts.claim_run(TrainConfig(output=str(tmp_path), run_name="r1", epochs=6, models=("mlp",)), sample)
    with pytest.raises(ConfigError, match=r"\(ensemble 1 -> 3\)"):
        artifacts.claim_run(TrainConfig(output=str(tmp_path), run_name="r1", epochs=4, models=("mlp",), ensemble=3),
                            sample)  # fmt: skip
    other = data.Dataset("x", "x", sample.x_train[:400], sample.y_train[:400], sample.x_test, sample.y_test)
    with pytest.raises(ConfigError, match=r"dataset_sha256 "):
        artifacts.claim_run(config, other)


def test_resume_compares_what_each_model_trains_with_not_how_it_was_spelled(tmp_path) -> None:
    sample = data.mnist_sample()
    config = TrainConfig(output=str(tmp_path), run_name="r1", models=("mlp", "deep_bn_cnn"))  # the recipes' defaults
    artifacts.claim_run(config, sample)
    recorded = json.loads((tmp_path / "checkpoints" / "r1" / artifacts.RUN_SETTINGS).read_text())
    assert recorded["epochs"] == {"mlp": 10, "deep_bn_cnn": 40}
    assert recorded["batch_size"] == {"mlp": 200, "deep_bn_cnn": 120}
    with pytest.raises(ConfigError, match=r"epochs \{'mlp': 10, 'deep_bn_cnn': 40\} -> 30"):
        artifacts.claim_run(TrainConfig(output=str(tmp_path), run_name="r1", models=config.models, epochs=30), sample)
    artifacts.claim_run(TrainConfig(output=str(tmp_path / "b"), run_name="r2", models=("deep_bn_cnn",)), sample)
    restated = TrainConfig(
        output=str(tmp_path / "b"), run_name="r2", models=("deep_bn_cnn",), epochs=40, batch_size=120
    )
    artifacts.claim_run(restated, sample)  # the same training, spelled out: resumes


def test_an_overwrite_starts_afresh_without_the_finished_runs_member_groups(tmp_path) -> None:
    """The member groups' own runs (parallel members) are checkpoints of the run: an --overwrite must not resume
    them, or a rerun would skip training members it was asked to train anew."""
    sample = data.mnist_sample()
    config = TrainConfig(output=str(tmp_path), run_name="r1", models=("mlp",), ensemble=2, workers=2)
    artifacts.claim_run(config, sample)
    groups = tmp_path / "checkpoints" / "r1-members" / "group-1"
    groups.mkdir(parents=True)
    (tmp_path / artifacts.RESULTS).write_text(json.dumps({"run_name": "r1", "finished_at": "then", "models": {}}))
    artifacts.claim_run(dataclasses.replace(config, overwrite=True), sample)
    assert not groups.parent.exists() and (tmp_path / "checkpoints" / "r1" / artifacts.RUN_SETTINGS).exists()


def test_cli_refuses_to_resume_with_other_epochs_before_starting_ray(tmp_path) -> None:
    settings = tmp_path / "checkpoints" / "r1" / artifacts.RUN_SETTINGS
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"models": ["mlp"], "epochs": 4, "batch_size": 200, "seed": 7,
                                    "dataset_sha256": data.mnist_sample().sha256}))  # fmt: skip
    out = run_job("train", "--dataset", "mnist-sample", "--models", "mlp", "--epochs", "2", "--output", str(tmp_path),
                  "--run-name", "r1")  # fmt: skip
    assert out.returncode == 2
    assert "run r1 at" in out.stderr and "(epochs 4 -> 2); rerun with the same settings" in out.stderr
    assert not (tmp_path / "results.json").exists()


def test_the_git_sha_is_the_images_build_argument_where_there_is_no_git(monkeypatch) -> None:
    assert artifacts.git_sha() and len(artifacts.git_sha()) == 40  # this checkout's
    monkeypatch.setenv("MNIST_TRAIN_GIT_SHA", "0123abc")  # the Dockerfile's ENV from --build-arg GIT_SHA
    assert artifacts.git_sha() == "0123abc"
