"""Worker loss on a real local run: SIGKILL of a Ray Train worker (chief or not) mid-run; the run resumes from its last
checkpoint and finishes with every epoch exactly once. The same run holds the metrics port busy (fallback row of the
bad-input catalogue). The driver-loss case runs against S3 in test_s3_runs.py."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from live_run import SNAPSHOT, LiveRun, epochs_printed, wait_registered

EPOCHS = 8  # the kill after epoch 2 must land mid-run: 4 epochs of 0.6 s can all end before it (test_s3_runs did)
EPOCH_LINE = r"RayTrainWorker pid=(\d+)\)\S*\s+mlp\s+epoch\s+{}/" + str(EPOCHS)


@dataclass
class KilledRun:
    run: LiveRun
    code: int
    output: Path
    victim: int
    chief: int
    printed_at_kill: list[int]
    busy_port: int
    kill_to_end_s: float


@pytest.fixture(scope="module", params=["non-chief", "chief"])
def killed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    output = tmp_path_factory.mktemp("resume") / "out"
    busy = socket.create_server(("0.0.0.0", 0))  # the metrics port is taken: the workers must fall back
    port = busy.getsockname()[1]
    run = LiveRun(
        "--dataset", "mnist-sample", "--models", "mlp", "--epochs", str(EPOCHS), "--workers", "2",
        "--output", str(output), "--run-name", f"kill-{request.param}", "--metrics-port", str(port),
        "--checkpoint-interval", "0",
    )  # fmt: skip
    try:
        run.wait_for(r"mlp\s+epoch\s+2/")
        log = (output / "run.log").read_text()  # the run's log keeps Ray's "(RayTrainWorker pid=...)" prefixes
        chief = int(re.search(EPOCH_LINE.format(r"\s*2"), log)[1])  # rank 0 prints the progress lines
        wait_registered((output / "checkpoints" / f"kill-{request.param}" / SNAPSHOT).read_bytes, 2)
        victim = chief if request.param == "chief" else next(pid for pid in run.train_workers() if pid != chief)
        os.kill(victim, signal.SIGKILL)
        killed_at, printed = time.monotonic(), epochs_printed(run.output, EPOCHS)
        code = run.finish()
        return KilledRun(run, code, output, victim, chief, printed, port, time.monotonic() - killed_at)
    finally:
        run.stop()
        busy.close()


def test_run_survives_a_killed_worker_and_resumes_from_its_checkpoint(killed: KilledRun) -> None:
    assert killed.code == 0, killed.run.tail()
    resumed = re.search(r"resuming from checkpoint: finished none, mlp at epoch (\d)", killed.run.output)
    assert resumed, killed.run.tail()
    at = int(resumed[1])
    printed = epochs_printed(killed.run.output, EPOCHS)
    # Epochs up to the checkpoint are never trained again. Epochs after it may have been printed before the kill (Ray
    # had not yet collected their checkpoint); after the resume exactly the rest is trained, once.
    assert at >= 2
    assert epochs_printed(killed.run.output[resumed.end() :], EPOCHS) == list(range(at + 1, EPOCHS + 1))
    assert all(printed.count(epoch) == 1 for epoch in range(1, at + 1))
    assert sorted(set(printed)) == list(range(1, EPOCHS + 1))
    who = "chief" if killed.victim == killed.chief else "non-chief"
    print(f"\n{who} kill after epochs {killed.printed_at_kill}: resumed at epoch {at}, epochs printed {printed}, "
          f"kill->end {killed.kill_to_end_s:.1f}s, wall {killed.run.seconds:.0f}s")  # fmt: skip


def test_the_optimizers_step_counter_carries_on_from_the_checkpoint(killed: KilledRun) -> None:
    """Restored under MWMS with the weights: restarted from zero it would end at (EPOCHS - resumed epoch) x steps, and
    a schedule on it (deep_bn_cnn's one-cycle, test_deep_bn_cnn_run.py) would start its cycle over."""
    import tf_keras

    model = tf_keras.models.load_model(killed.output / "mlp" / "model.keras")
    assert int(model.optimizer.iterations) == EPOCHS * (4000 // 200)  # the sample's 4,000 digits, batch 200


def test_history_has_every_epoch_once_and_a_normal_error(killed: KilledRun) -> None:
    results = json.loads((killed.output / "results.json").read_text())
    mlp = results["models"]["mlp"]
    assert [r["epoch"] for r in mlp["history"]] == list(range(1, EPOCHS + 1))
    assert results["epochs"] == EPOCHS and 0 < mlp["test_error"] < 0.15  # chance is 0.90
    assert 1 - mlp["history"][-1]["val_accuracy"] == pytest.approx(mlp["test_error"], abs=1e-6)
    # Counted from the batches the steps consumed, also in the epochs after the restart: every example once.
    for record in mlp["history"]:
        assert (record["examples"], record["distinct_examples"], record["max_uses"]) == (4000, 4000, 1), record
        assert record["global_batch_min"] == record["global_batch_max"] == 200 and record["steps"] == 20, record


def test_busy_metrics_port_falls_back_to_the_next_free_one(killed: KilledRun) -> None:
    out = killed.run.output
    assert f"port {killed.busy_port} is in use, took the next free one" in out
    served = {int(p) for p in re.findall(r"rank \d: serving /metrics on :(\d+)", out)}
    assert served and killed.busy_port not in served
