"""--mixed-precision (bfloat16 compute on CPU, float16 on GPU; float32 weights and outputs) on real local runs of the
shipped sample: it trains, the saved model records the policy, and the test error stays within 0.1 points of float32's.
(--jit-compile is GPU-only: XLA cannot compile the CPU all-reduce; tests/test_bad_inputs.py has that row.)"""

from __future__ import annotations

import json
import zipfile

from support import run_job

ARGS = ("train", "--dataset", "mnist-sample", "--models", "mlp", "--epochs", "5")  # in this process: the local default


def train(tmp_path, name: str, *extra: str) -> dict:
    out = run_job(*ARGS, "--output", str(tmp_path / name), "--run-name", name, *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp_path / name / "results.json").read_text())


def layer_policies(model_file) -> list[str]:
    with zipfile.ZipFile(model_file) as archive:
        config = json.loads(archive.read("config.json"))
    return [layer["config"]["dtype"]["config"]["name"] if isinstance(layer["config"]["dtype"], dict)
            else layer["config"]["dtype"] for layer in config["config"]["layers"]]  # fmt: skip


def test_mixed_precision_trains_in_bfloat16_on_cpu_within_a_tenth_of_a_point(tmp_path) -> None:
    full = train(tmp_path, "float32")
    mixed = train(tmp_path, "mixed", "--mixed-precision")
    assert mixed["config"]["mixed_precision"] is True
    assert layer_policies(tmp_path / "mixed" / "mlp" / "model.keras") == ["float32", "mixed_bfloat16", "float32"]
    assert layer_policies(tmp_path / "float32" / "mlp" / "model.keras") == ["float32"] * 3
    a, b = full["models"]["mlp"]["test_error_percent"], mixed["models"]["mlp"]["test_error_percent"]
    assert abs(a - b) <= 0.1 + 1e-9, (a, b)
