"""A real local run: 2 Ray workers, the shipped MNIST digits, every model, 2 epochs, metrics on (the `sample_run`
fixture, which the metrics suite reads too)."""

import csv
import re

import numpy as np
import pytest

from job import data, models
from job.config import DISPLAY_NAMES

from support import JOB_LINES, TF_LINE, run_job

ERROR_BOUND = {"mlp": 0.15, "cnn": 0.20, "large_cnn": 0.30}  # 2 epochs on 4,000 digits; chance is 0.90


def test_results_json_holds_the_run_and_its_provenance(sample_run) -> None:
    results = sample_run.results
    assert results["status"] == "succeeded" and results["run_name"] == "sample-run"
    assert results["workers"] == 2 and results["gpu"] is False and results["seed"] == 7
    sample = data.mnist_sample()
    assert results["dataset"] == {**results["dataset"], "name": "mnist-sample", "sha256": sample.sha256,
                                  "train_samples": 4000, "test_samples": 1000}  # fmt: skip
    assert set(results["versions"]) >= {"tensorflow", "tf_keras", "ray", "python", "mnist_train"}
    assert results["versions"]["ray"] == "2.60.0" and results["versions"]["tf_keras"].startswith("2.21")
    assert list(results["models"]) == ["mlp", "cnn", "large_cnn"]
    # What TensorFlow trained on, per worker: two workers mirror under MWMS with the CPU ring; whether on oneDNN
    # (its value is test_devices.py's: it depends on the TensorFlow build).
    devices = results["models"]["mlp"]["devices"]
    assert devices == {"type": "CPU", "name": "cpu", "count": 1, "onednn": devices["onednn"], "collective": "ring"}
    assert isinstance(devices["onednn"], bool)


@pytest.mark.parametrize("name", ["mlp", "cnn", "large_cnn"])
def test_each_model_trained_every_epoch_once_with_a_sane_error(sample_run, name) -> None:
    model = sample_run.results["models"][name]
    assert [r["epoch"] for r in model["history"]] == [1, 2]
    for record in model["history"]:  # counted from the batches the steps of both workers consumed
        assert (record["examples"], record["distinct_examples"], record["max_uses"]) == (4000, 4000, 1), record
        assert record["global_batch_min"] == record["global_batch_max"] == 200 and record["steps"] == 20, record
    assert model["history"][1]["loss"] < model["history"][0]["loss"]
    assert 0 < model["test_error"] < ERROR_BOUND[name]
    assert model["test_error_percent"] == pytest.approx(model["test_error"] * 100, abs=1e-3)
    assert model["params"] == {"mlp": 623_290, "cnn": 592_074, "large_cnn": 59_933}[name]
    # Validation runs on the full test set, so after the last epoch it equals the reported test error.
    assert 1 - model["history"][-1]["val_accuracy"] == pytest.approx(model["test_error"], abs=1e-6)


@pytest.mark.parametrize("name", ["mlp", "large_cnn"])
def test_saved_models_reload_and_reproduce_the_reported_error(sample_run, name) -> None:
    import tensorflow as tf
    import tf_keras

    sample = data.mnist_sample()
    reported = sample_run.results["models"][name]["test_error"]
    keras_model = tf_keras.models.load_model(sample_run.output / name / "model.keras")
    x = models.features(sample.x_test, keras_model)
    assert models.evaluate(keras_model, x, sample.y_test)[1] == pytest.approx(reported, abs=1e-9)
    serving = tf.saved_model.load(str(sample_run.output / name / "saved_model"))
    probs = np.concatenate([serving.serve(tf.constant(x[i : i + 500])).numpy() for i in range(0, len(x), 500)])
    assert float((probs.argmax(axis=1) != sample.y_test).mean()) == pytest.approx(reported, abs=1e-9)


def test_history_csv_and_curves(sample_run) -> None:
    rows = list(csv.DictReader((sample_run.output / "cnn" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["val_accuracy"]) == pytest.approx(
        sample_run.results["models"]["cnn"]["history"][1]["val_accuracy"]
    )
    assert (sample_run.output / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_lines_and_summary_table(sample_run) -> None:
    out = sample_run.text
    epoch_lines = re.findall(r"(mlp|cnn|large_cnn)\s+epoch\s+(\d)/2 +loss [\d.]+ +acc [\d.]+ .*samples/s$", out, re.M)
    assert sorted(epoch_lines) == sorted((m, e) for m in ("mlp", "cnn", "large_cnn") for e in "12")
    for name in ("mlp", "cnn", "large_cnn"):
        label, percent = DISPLAY_NAMES[name], sample_run.results["models"][name]["test_error_percent"]
        assert out.count(f"{label} error: {percent:.2f}%") == 1  # one owner of the console prints it once
    assert re.search(r"^large_cnn +[\d.]+% +[\d.]+ +59,933 +2 ", out, re.M)


def test_finished_run_is_not_overwritten_without_flag(sample_run) -> None:
    before = (sample_run.output / "results.json").read_bytes()
    out = run_job("train", "--dataset", "mnist-sample", "--epochs", "1", "--output", str(sample_run.output),
                  "--run-name", "sample-run")  # fmt: skip
    assert out.returncode == 2
    assert "already holds a finished run (results.json); pass --overwrite" in out.stderr
    assert (sample_run.output / "results.json").read_bytes() == before


def test_nothing_is_left_in_the_temp_folder(sample_run) -> None:
    assert sorted(p.name for p in sample_run.tmpdir.iterdir()) == []


def test_a_local_ray_starts_no_process_the_run_does_not_use(sample_run) -> None:
    """Every Ray worker process of the run served an actor: no prestarted idle workers, and no DatasetManager (no Ray
    Datasets here), PreemptionWatcher or autoscaling coordinator (one machine, no autoscaler). Each is a process to
    start on the way to the first step."""
    logs = sample_run.ray_tmp.glob("ray/session_latest/logs/worker-*.out")
    actors = sorted(re.search(r":actor_name:(\S+)", path.read_text()[:300] + ":actor_name:-")[1] for path in logs)
    assert actors == ["RayTrainWorker", "RayTrainWorker", "SynchronizationActor", "TrainController"]


def test_evaluate_command_prints_the_same_error(sample_run, tmp_path) -> None:
    env = {"TMPDIR": str(tmp_path)}
    out = run_job("evaluate", "--model-uri", f"file://{sample_run.output}/cnn", "--dataset", "mnist-sample", env=env)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # its staging folder is gone
    percent = sample_run.results["models"]["cnn"]["test_error_percent"]
    assert out.returncode == 0, out.stderr
    assert f"error {percent:.2f}%" in out.stdout
    missing = run_job("evaluate", "--model-uri", str(sample_run.output / "nope"))
    assert missing.returncode == 2 and "no model.keras at" in missing.stderr


def test_the_console_shows_only_the_jobs_own_lines_and_the_log_file_has_the_rest(sample_run) -> None:
    lines = sample_run.lines
    foreign = [line for line in lines if not any(re.fullmatch(p, line) for p in JOB_LINES)]
    assert not foreign, foreign
    log = (sample_run.output / "run.log").read_text()
    assert re.search(rf"\(RayTrainWorker pid=\d+\) .*{TF_LINE}", log)  # TensorFlow's C++ output went to the log
    assert re.search(r"\(RayTrainWorker pid=\d+\) mlp +epoch +2/2", log)
