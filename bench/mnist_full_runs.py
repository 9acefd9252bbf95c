"""bench/mnist_full.py's runs, each measured in subprocesses: the job's training runs, the tutorial's scripts, the
kill-and-resume run, the perturbed test set (`robust`) and the compute peak (`peak`). Each returns its figures."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import REPO
from benchlib.perturb import ROTATION_DEG, SHIFT_PX
from benchlib.perturb import SEED as PERTURB_SEED
from benchlib.processes import job_env
from benchlib.tutorial import bench_figures, tutorial_scripts

TUTORIAL_MODELS = ("mlp", "cnn", "large_cnn")
DEEP = "deep_bn_cnn"
SEEDS = 3
JOB_RUNS = {  # name -> the job's flags beyond --output, --run-name and --data-uri
    "deep-0w": ["--models", DEEP, "--ensemble", str(SEEDS)],
    "job-0w": ["--models", ",".join(TUTORIAL_MODELS), "--workers", "0"],
    "job-1w": ["--models", ",".join(TUTORIAL_MODELS), "--workers", "1"],
    "job-2w": ["--models", ",".join(TUTORIAL_MODELS), "--workers", "2"],
    "deep-1w": ["--models", DEEP, "--workers", "1"],
    "deep-2w": ["--models", DEEP, "--workers", "2"],
}
EPOCH_LINE = re.compile(rf"^{DEEP}\s+epoch\s+(\d+)/(\d+)")
RESUMED_LINE = re.compile(r"resuming from checkpoint: .* at epoch (\d+)")


def environment(workdir: Path) -> dict[str, str]:
    """A run's environment (benchlib.processes.job_env), its Ray temp dir in the workdir; TMPDIR too: what a run
    killed on purpose (the resume run) cannot clean up stays in the workdir."""
    ray_tmp, tmp = workdir / "ray-tmp", workdir / "tmp"
    ray_tmp.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(exist_ok=True)
    return job_env(ray_tmp, TMPDIR=str(tmp))


def launch(cmd: list[str], log: Any, env: dict[str, str], watch: Any = None) -> tuple[int, float]:
    """Run `cmd` in its own process group, its output timestamped into `log`; `watch(line, proc)` sees each line.
    Returns (exit code, wall seconds from Popen to exit); the Popen time is the log's first line."""
    start = time.time()
    log.write(f"$ {' '.join(cmd)}  # at {start:.3f}\n")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    for line in proc.stdout:  # type: ignore[union-attr]
        log.write(f"+{time.time() - start:8.2f}s {line}")
        log.flush()
        if watch:
            watch(line, proc)
    return proc.wait(), time.time() - start


def job_command(name: str, out: Path, data_uri: str, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "job", "train", "--output", str(out / "run"), "--run-name", f"bench-{name}",
            "--data-uri", data_uri, *flags]  # fmt: skip


def run_job(name: str, out: Path, data_uri: str, env: dict[str, str]) -> dict[str, Any]:
    """One job run; a rerun after a cut-off invocation resumes it (the job's own resume)."""
    resumed = (out / "run" / "checkpoints").exists()
    with open(out / "log.txt", "a") as log:
        started = time.time()
        code, wall = launch(job_command(name, out, data_uri, JOB_RUNS[name]), log, env)
    if code != 0:
        raise RuntimeError(f"{name} failed (exit {code}); log: {out / 'log.txt'}")
    figures = read_results(out / "run", wall)
    first_step = next(iter(figures["models"].values()))["history"][0]["started_at"]
    return {"resumed": resumed, "startup_s": first_step - started, **figures}


def read_results(run: Path, wall: float) -> dict[str, Any]:
    """Per model: test error, train seconds, s/epoch (epochs 2..E), history; the start-up before epoch 1."""
    results = json.loads((run / "results.json").read_text())
    models = {}
    for name, m in results["models"].items():
        history = m["history"]
        epochs = [r["seconds"] for r in history[1:]] or [r["seconds"] for r in history]
        models[name] = {"test_error_percent": m["test_error_percent"], "train_seconds": m["train_seconds"],
                        "epoch_s": statistics.mean(epochs) if epochs else None, "epochs": len(history),
                        "history": [{k: r[k] for k in ("epoch", "val_accuracy", "seconds", "started_at")}
                                    for r in history]}  # fmt: skip
    return {"models": models, "seed": results["seed"], "workers": results["workers"], "run_wall_s": wall}


def run_tutorial(out: Path, data_uri: str, env: dict[str, str]) -> dict[str, Any]:
    models, wall_all = {}, 0.0
    with open(out / "log.txt", "w") as log:
        for name, script in zip(TUTORIAL_MODELS, tutorial_scripts(10, "mnist", data_uri), strict=True):
            bench: dict[str, Any] = {}

            def grab(line: str, _proc: Any, bench: dict[str, Any] = bench) -> None:
                if figures := bench_figures(line):
                    bench.update(figures)

            code, wall = launch([sys.executable, "-c", script], log, env, grab)
            if code != 0:
                raise RuntimeError(f"tutorial {name} failed (exit {code}); log: {out / 'log.txt'}")
            epochs = bench["epoch_seconds"]
            models[name] = {"test_error_percent": bench["test_error_percent"], "wall_s": wall,
                            "epoch_s": statistics.mean(epochs[1:]), "train_seconds": sum(epochs)}  # fmt: skip
            wall_all += wall
    return {"models": models, "wall_s": wall_all}


def run_resume(out: Path, data_uri: str, env: dict[str, str]) -> dict[str, Any]:
    """Kill the run half an epoch after epoch ceil(E/2)+1 has begun, then rerun the same command."""
    cmd = job_command("resume", out, data_uri, ["--models", DEEP])
    state: dict[str, Any] = {}

    def kill_mid_epoch(line: str, proc: subprocess.Popen) -> None:
        match = EPOCH_LINE.match(line)
        if not match or "killed_at" in state:
            return
        epoch, epochs = int(match.group(1)), int(match.group(2))
        state.setdefault("first_line_at", time.time())
        state["last_epoch"], state["last_line_at"] = epoch, time.time()
        if epoch == epochs // 2 + 1:
            per_epoch = (time.time() - state["first_line_at"]) / max(epoch - 1, 1)
            time.sleep(per_epoch / 2)
            state["killed_at"] = time.time()
            os.killpg(proc.pid, signal.SIGKILL)

    with open(out / "log.txt", "a") as log:
        code, first_wall = launch(cmd, log, env, kill_mid_epoch)
        if "killed_at" not in state:
            raise RuntimeError(f"resume: the first attempt ended (exit {code}) before it could be killed")
        resumed_at: dict[str, int] = {}

        def grab(line: str, _proc: Any) -> None:
            if match := RESUMED_LINE.search(line):
                resumed_at["epoch"] = int(match.group(1))

        code, second_wall = launch(cmd, log, env, grab)
    if code != 0:
        raise RuntimeError(f"resume: the rerun failed (exit {code}); log: {out / 'log.txt'}")
    results = read_results(out / "run", second_wall)
    return {"killed_after_s": first_wall, "killed_in_epoch": state["last_epoch"],
            "seconds_since_last_epoch_line": state["killed_at"] - state["last_line_at"],
            "resumed_at_epoch": resumed_at.get("epoch"), "rerun_wall_s": second_wall, **results}  # fmt: skip


PERTURB = """
import sys
import numpy as np
sys.path.insert(0, BENCH)
from benchlib.perturb import perturb
from job.data import load
d = load("mnist", DATA_URI)
x = perturb(d.x_test, SEED, DEG, PX)
np.savez_compressed(OUT, x_train=d.x_train, y_train=d.y_train, x_test=x, y_test=d.y_test)
"""


def run_robust(workdir: Path, out: Path, data_uri: str, env: dict[str, str]) -> dict[str, Any]:
    """Write the perturbed test set once; evaluate every model deep-0w and job-0w saved, clean and perturbed."""
    npz = out / "mnist-perturbed.npz"
    values = {"DATA_URI": repr(data_uri), "SEED": str(PERTURB_SEED), "DEG": str(ROTATION_DEG), "PX": str(SHIFT_PX),
              "OUT": repr(str(npz)), "BENCH": repr(str(REPO / "bench"))}  # fmt: skip
    script = PERTURB
    for key, value in values.items():
        script = script.replace(key, value)
    errors: dict[str, dict[str, float]] = {}
    with open(out / "log.txt", "w") as log:
        code, _ = launch([sys.executable, "-c", script], log, env)
        if code != 0:
            raise RuntimeError(f"robust: writing the perturbed test set failed; log: {out / 'log.txt'}")
        for run in ("job-0w", "deep-0w"):
            results = json.loads((workdir / run / "run" / "results.json").read_text())
            for name, m in results["models"].items():
                found: dict[str, str] = {}

                def grab(line: str, _proc: Any, found: dict[str, str] = found) -> None:
                    if match := re.search(r"error ([0-9.]+)%", line):
                        found["error"] = match.group(1)

                evaluate = [sys.executable, "-m", "job", "evaluate", "--model-uri", str(workdir / run / "run" / name),
                            "--data-uri", str(npz)]  # fmt: skip
                code, _ = launch(evaluate, log, env, grab)
                if code != 0 or "error" not in found:
                    raise RuntimeError(f"robust: evaluate {name} failed; log: {out / 'log.txt'}")
                errors[name] = {"clean": m["test_error_percent"], "perturbed": float(found["error"])}
    return {"npz": str(npz), "rotation_deg": ROTATION_DEG, "shift_px": SHIFT_PX, "seed": PERTURB_SEED,
            "errors": errors}  # fmt: skip


PEAK = """
import json, time
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
from job import models
flops = {}
for name in models.BUILDERS:
    model = models.build(name)
    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    forward = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph = convert_variables_to_constants_v2(forward).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    flops[name] = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
n = 2048
a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
matmul = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
matmul(a, b).numpy()
best = 0.0
for _ in range(5):
    t = time.perf_counter()
    for _ in range(10):
        matmul(a, b).numpy()
    best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
print("PEAK " + json.dumps({"forward_flop_per_image": flops, "matmul_gflops": best, "matmul_n": n}))
"""


def run_peak(out: Path, env: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def grab(line: str, _proc: Any) -> None:
        if line.startswith("PEAK "):
            found.update(json.loads(line[5:]))

    with open(out / "log.txt", "w") as log:
        code, _ = launch([sys.executable, "-c", PEAK], log, env, grab)
    if code != 0 or not found:
        raise RuntimeError(f"peak failed (exit {code}); log: {out / 'log.txt'}")
    return found
