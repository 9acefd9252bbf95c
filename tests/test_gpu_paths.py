"""The GPU error path, here on a CPU machine: a Ray node started with `--num-gpus 2` gives Ray GPUs that TensorFlow
cannot see. With --gpu the job must refuse to train on CPU, fast, with one line that says why."""

from __future__ import annotations

import re
import time

from ray_head import ray_head

from support import run_job


def test_gpu_that_tensorflow_cannot_see_fails_fast_with_one_line(tmp_path) -> None:
    with ray_head("--num-gpus", "2") as head:
        started = time.monotonic()
        out = run_job("train", "--address", head.gcs_address, "--gpu", "--workers", "2", "--dataset", "mnist-sample",
                      "--models", "mlp", "--epochs", "1", "--output", str(tmp_path / "out"), env=head.env)  # fmt: skip
        seconds = time.monotonic() - started
    errors = [line for line in out.stderr.splitlines() if line.startswith("mnist-train: error:")]
    assert out.returncode == 1, out.stderr[-3000:]
    assert len(errors) == 1 and re.search(r"Ray assigned GPU \d to this worker but TensorFlow sees no GPU", errors[0])
    assert "refusing to train on CPU" in errors[0]
    assert seconds < 60, f"took {seconds:.0f}s"
    assert not (tmp_path / "out" / "results.json").exists()
