"""Benchmark (not a test): every model on full MNIST, the tutorial's scripts beside the job, in one invocation.

    .venv/bin/python bench/mnist_full.py --data-uri DIR_OR_NPZ [--workdir bench-mnist] [--skip RUN] [--json out.json]

Runs, one after the other, each as subprocesses, longest-needed first:

- `deep-0w`: `mnist-train train --models deep_bn_cnn --ensemble 3` with every other default: three seeds of the
  fourth model (7, 8, 9; member 1 is what a run without --ensemble trains) and their ensemble, in this process.
- `tutorial-3`: the tutorial's three scripts (plain tf_keras) back to back.
- `job-0w`, `job-1w`, `job-2w`: the job's three tutorial models in its own process, and on 1 and 2 Ray workers.
- `deep-1w`, `deep-2w`: deep_bn_cnn (seed 7) on 1 and 2 Ray workers.
- `resume`: deep_bn_cnn (seed 7) in this process, killed (SIGKILL, the whole process group) halfway through an
  epoch past the middle of the run, then the same command again, which resumes it.
- `robust`: a seeded perturbation of the test set (rotation within ±10°, shift within ±2 px) written as an .npz, and
  `mnist-train evaluate --data-uri` of every model deep-0w and job-0w saved.
- `peak`: the FLOP of each model (TensorFlow's profiler on its forward graph) and this machine's float32 matmul
  GFLOP/s, the yardstick for the GFLOP/s the training runs reach.

Runs last long (deep-0w 35 min on 2 cores, all of them 1.5 h), so the invocation can be stopped and started again with
the same --workdir: a finished run is read back from its `bench.json`; a job run that was cut off is resumed by the job
itself (same --output and --run-name) and marked `resumed`, its wall and time-to-accuracy no longer one sitting's.
"""

from __future__ import annotations

import argparse
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
from benchlib.machine import headline, machine, wait_quiet
from benchlib.processes import job_env
from benchlib.tutorial import bench_figures, tutorial_scripts

TUTORIAL_MODELS = ("mlp", "cnn", "large_cnn")
DEEP = "deep_bn_cnn"
SEEDS = 3
THRESHOLDS = (0.005, 0.0035)  # time to accuracy: until the test error first reaches 0.5%, and 0.35%
ROTATION_DEG, SHIFT_PX, PERTURB_SEED = 10.0, 2.0, 0
JOB_RUNS = {  # name -> the job's flags beyond --output, --run-name and --data-uri
    "deep-0w": ["--models", DEEP, "--ensemble", str(SEEDS)],
    "job-0w": ["--models", ",".join(TUTORIAL_MODELS), "--workers", "0"],
    "job-1w": ["--models", ",".join(TUTORIAL_MODELS), "--workers", "1"],
    "job-2w": ["--models", ",".join(TUTORIAL_MODELS), "--workers", "2"],
    "deep-1w": ["--models", DEEP, "--workers", "1"],
    "deep-2w": ["--models", DEEP, "--workers", "2"],
}
RUNS = ("deep-0w", "tutorial-3", "job-0w", "job-1w", "job-2w", "deep-1w", "deep-2w", "resume", "robust", "peak")
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


def time_to_accuracy(run: dict[str, Any], popen_at_first_step: float) -> dict[str, dict[str, float | None]]:
    """Per trained model: seconds from the command's start until the test error first reaches each threshold.

    For member i of an ensemble, the start-up of the run (command start -> epoch 1 of member 1) plus member i's own
    training up to that epoch: what `--seed` of that member alone would take."""
    found = {}
    for name, m in run["models"].items():
        history = m["history"]
        if not history:
            continue
        t0 = history[0]["started_at"]
        found[name] = {}
        for threshold in THRESHOLDS:
            hit = next((r for r in history if 1 - r["val_accuracy"] <= threshold + 1e-9), None)
            found[name][f"{threshold * 100:.2f}%"] = (
                None if hit is None else popen_at_first_step + hit["started_at"] + hit["seconds"] - t0
            )
    return found


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
import io, sys
import numpy as np
from PIL import Image
from job.data import load
d = load("mnist", DATA_URI)
rng = np.random.default_rng(SEED)
angles = rng.uniform(-DEG, DEG, len(d.x_test))
shifts = rng.uniform(-PX, PX, (len(d.x_test), 2))
def moved(x, angle, shift):
    image = Image.fromarray(x).rotate(angle, resample=Image.BILINEAR, translate=tuple(shift), fillcolor=0)
    return np.asarray(image)
x = np.stack([moved(x, a, s) for x, a, s in zip(d.x_test, angles, shifts)])
np.savez_compressed(OUT, x_train=d.x_train, y_train=d.y_train, x_test=x, y_test=d.y_test)
"""


def run_robust(workdir: Path, out: Path, data_uri: str, env: dict[str, str]) -> dict[str, Any]:
    """Write the perturbed test set once; evaluate every model deep-0w and job-0w saved, clean and perturbed."""
    npz = out / "mnist-perturbed.npz"
    values = {"DATA_URI": repr(data_uri), "SEED": str(PERTURB_SEED), "DEG": str(ROTATION_DEG), "PX": str(SHIFT_PX),
              "OUT": repr(str(npz))}  # fmt: skip
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


def run_once(name: str, workdir: Path, data_uri: str, quiet: float) -> dict[str, Any]:
    """A run's figures: read back from bench.json if an earlier invocation finished it, else measured now."""
    out = workdir / name
    saved = out / "bench.json"
    if saved.exists():
        print(f"== {name}: finished earlier, read from {saved}", flush=True)
        return json.loads(saved.read_text())
    out.mkdir(parents=True, exist_ok=True)
    if quiet:
        wait_quiet(quiet)
    print(f"== {name} ({time.strftime('%H:%M:%S')})", flush=True)
    env = environment(workdir)
    if name in JOB_RUNS:
        figures = run_job(name, out, data_uri, env)
    elif name == "tutorial-3":
        figures = run_tutorial(out, data_uri, env)
    elif name == "resume":
        figures = run_resume(out, data_uri, env)
    elif name == "robust":
        figures = run_robust(workdir, out, data_uri, env)
    else:
        figures = run_peak(out, env)
    figures["measured_at"] = time.strftime("%Y-%m-%d %H:%M %Z")
    saved.write_text(json.dumps(figures, indent=1))
    return figures


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _s(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def quality_table(found: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| run | model | seeds | test error | wall s | s/epoch |", "|---|---|---|---|---|---|"]
    if tut := found.get("tutorial-3"):
        for name, m in tut["models"].items():
            rows.append(f"| tutorial's scripts | {name} | - | {_pct(m['test_error_percent'])} | {_s(m['wall_s'])} | "
                        f"{_s(m['epoch_s'], '.2f')} |")  # fmt: skip
        rows.append(f"| tutorial's scripts | all three | | | {_s(tut['wall_s'])} | |")
    for run in ("job-0w", "job-1w", "job-2w", "deep-0w", "deep-1w", "deep-2w"):
        if not (r := found.get(run)):
            continue
        members = [n for n in r["models"] if n.startswith(f"{DEEP}-") and n[-1].isdigit()]
        for name, m in r["models"].items():
            if name in members:
                continue
            if name == f"{DEEP}-ensemble":
                errors = [r["models"][n]["test_error_percent"] for n in members]
                seeds = ", ".join(str(r["seed"] + i) for i in range(len(members)))
                each = ", ".join(f"{e:.2f}" for e in errors)
                spread = f"mean {statistics.mean(errors):.3f}%, sd {statistics.stdev(errors):.3f}"
                per_epoch = statistics.mean(r["models"][n]["epoch_s"] for n in members)
                train = statistics.mean(r["models"][n]["train_seconds"] for n in members)
                rows.append(f"| {run} | {DEEP} (single) | {seeds} | {each} ({spread}) | {train:.0f} train each | "
                            f"{per_epoch:.1f} |")  # fmt: skip
                rows.append(f"| {run} | {name} | {seeds} | {_pct(m['test_error_percent'])} | {_s(r['run_wall_s'])} "
                            "(whole run) | |")  # fmt: skip
            else:
                rows.append(f"| {run} | {name} | {r['seed']} | {_pct(m['test_error_percent'])} | "
                            f"{_s(m['train_seconds'])} train | {_s(m['epoch_s'], '.2f')} |")  # fmt: skip
        if run.startswith("job"):
            rows.append(f"| {run} | all three | | | {_s(r['run_wall_s'])} | |")
        if r.get("resumed"):
            rows.append(f"| {run} | (resumed by a later invocation: its wall is not one sitting's) | | | | |")
    return rows


def speed_rows(found: dict[str, dict[str, Any]]) -> list[str]:
    peak = found.get("peak")
    if not peak:
        return []
    rows = [f"matmul float32 {peak['matmul_n']}x{peak['matmul_n']}: {peak['matmul_gflops']:.0f} GFLOP/s", "",
            "| model | forward MFLOP/image | training GFLOP/s (3 x forward x 60k + forward x 10k test, per epoch) | "
            "of matmul peak |", "|---|---|---|---|"]  # fmt: skip
    for run, model in (("job-0w", "mlp"), ("job-0w", "cnn"), ("job-0w", "large_cnn"), ("deep-0w", f"{DEEP}-1")):
        flop = peak["forward_flop_per_image"][model.split("-")[0]]
        epoch_s = found.get(run, {}).get("models", {}).get(model, {}).get("epoch_s")
        rate = (3 * flop * 60_000 + flop * 10_000) / epoch_s / 1e9 if epoch_s else None
        share = f"{rate / peak['matmul_gflops'] * 100:.0f}%" if rate else "-"
        rows.append(f"| {model} | {flop / 1e6:.1f} | {_s(rate)} | {share} |")
    return rows


def accuracy_rows(found: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for run in ("deep-0w", "deep-1w", "deep-2w"):
        r = found.get(run)
        if not r or r["resumed"]:
            continue
        for name, hits in time_to_accuracy(r, r["startup_s"]).items():
            cells = " | ".join(_s(hits[k], ".0f") for k in hits)
            rows.append(f"| {run} | {name} | {cells} | {_pct(r['models'][name]['test_error_percent'])} |")
    if rows:
        head = " | ".join(f"s to {t * 100:.2f}%" for t in THRESHOLDS)
        rows = [f"| run | model | {head} | final |", "|---|---|" + "---|" * len(THRESHOLDS) + "---|", *rows]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-uri", required=True, help="full MNIST: a folder of the four IDX .gz files or an .npz")
    parser.add_argument("--workdir", type=Path, default=Path("bench-mnist"),
                        help="outputs and logs; run again with the same folder to go on where it stopped")  # fmt: skip
    parser.add_argument("--skip", action="append", default=[], choices=RUNS, help="leave out a run (repeatable)")
    parser.add_argument("--quiet-below", type=float, default=0.0, metavar="CORES",
                        help="before each run, wait (up to 10 min) until others use under CORES")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    info = machine()
    print(f"{headline(info)}  data {args.data_uri}", flush=True)
    found: dict[str, dict[str, Any]] = {}
    failed = []
    for name in RUNS:
        if name in args.skip or (name == "robust" and not {"job-0w", "deep-0w"} <= set(found)):
            continue
        try:
            found[name] = run_once(name, args.workdir.resolve(), args.data_uri, args.quiet_below)
        except Exception as err:  # the other runs go on; this one is measured again by the next invocation
            print(f"   {name} failed: {err!r}", file=sys.stderr, flush=True)
            failed.append(name)
    report(found)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "runs": found}, indent=1))
    return 1 if failed else 0


def report(found: dict[str, dict[str, Any]]) -> None:
    print("\n## Quality on full MNIST (10k test digits); s/epoch is the mean of epochs 2..E\n")
    print("\n".join(quality_table(found)))
    if rows := accuracy_rows(found):
        print("\n## Time to accuracy: command start -> the end of the first epoch at or under the test error\n")
        print("\n".join(rows))
    if r := found.get("resume"):
        same_seed = found.get("deep-0w", {}).get("models", {}).get(f"{DEEP}-1", {}).get("test_error_percent")
        print(f"\n## Resume\n\nkilled {r['seconds_since_last_epoch_line']:.1f} s after epoch {r['killed_in_epoch']}'s "
              f"line, {r['killed_after_s']:.0f} s in; the rerun resumed at epoch {r['resumed_at_epoch']} and finished "
              f"in {r['rerun_wall_s']:.0f} s: test error {_pct(r['models'][DEEP]['test_error_percent'])} "
              f"(seed 7 uninterrupted, deep-0w's member 1: {_pct(same_seed)})")  # fmt: skip
    if r := found.get("robust"):
        print(f"\n## Perturbed test set (rotation within ±{r['rotation_deg']:g}°, shift within ±{r['shift_px']:g} px, "
              f"seed {r['seed']})\n\n| model | clean | perturbed |\n|---|---|---|")  # fmt: skip
        for name, e in r["errors"].items():
            print(f"| {name} | {_pct(e['clean'])} | {_pct(e['perturbed'])} |")
    if rows := speed_rows(found):
        print("\n## Compute\n")
        print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
