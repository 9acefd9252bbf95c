"""Benchmark (not a test): does data-parallel training learn as well as one process? Test error of the three tutorial
models on the shipped 5,000-digit sample over several seeds: the tutorial's single-process fit, the job with 1 worker,
and the job with 2 workers, side by side.

    .venv/bin/python bench/parallel_quality.py [--seeds 7,1,2,3] [--epochs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO

MODELS = ("mlp", "cnn", "large_cnn")
# The tutorial's recipe in one process: model.fit on the whole training set, batch 200, validation on the test set.
TUTORIAL = """
import json, sys
import tf_keras as keras
from job import models
from job.data import mnist_sample
seed, epochs = int(sys.argv[1]), int(sys.argv[2])
d = mnist_sample()
errors = {}
for name in ("mlp", "cnn", "large_cnn"):
    keras.utils.set_random_seed(seed)
    model = models.build(name)
    x_train, x_test = models.features(d.x_train, model), models.features(d.x_test, model)
    model.fit(x_train, d.y_train, validation_data=(x_test, d.y_test), epochs=epochs, batch_size=200, verbose=0)
    errors[name] = 100 * models.evaluate(model, x_test, d.y_test)[1]
print("BENCH " + json.dumps(errors))
"""


def tutorial(seed: int, epochs: int) -> dict[str, float]:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", TUTORIAL, str(seed), str(epochs)], capture_output=True, text=True,
                         cwd=REPO, env=env, check=True)  # fmt: skip
    return json.loads(out.stdout.split("BENCH ", 1)[1])


def job(seed: int, epochs: int, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        cmd = [sys.executable, "-m", "job", "train", "--dataset", "mnist-sample", "--epochs", str(epochs),
               "--workers", str(workers), "--seed", str(seed), "--output", tmp,
               "--run-name", f"q-{workers}w-{seed}"]  # fmt: skip
        subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
        results = json.loads((Path(tmp) / "results.json").read_text())
    return {name: m["test_error_percent"] for name, m in results["models"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="7,1,2,3")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {"tutorial": lambda s: tutorial(s, args.epochs), "job-1w": lambda s: job(s, args.epochs, 1),
            "job-2w": lambda s: job(s, args.epochs, 2)}  # fmt: skip
    errors: dict[str, dict[int, dict[str, float]]] = {name: {} for name in runs}
    for seed in seeds:
        for name, fn in runs.items():
            started = time.time()
            errors[name][seed] = fn(seed)
            print(f"seed {seed} {name:<8} {time.time() - started:6.1f}s  {errors[name][seed]}", flush=True)
    print(
        f"\nTest error % on the MNIST sample (4,000 train / 1,000 test), {args.epochs} epochs, batch 200, seeds {seeds}"
    )
    print("| model | " + " | ".join(f"{n} (mean ± sd)" for n in runs) + " | 2w − 1w | 2w − tutorial |")
    print("|---|" + "---|" * (len(runs) + 2))
    for model in MODELS:
        cells, means = [], {}
        for name in runs:
            values = [errors[name][s][model] for s in seeds]
            means[name] = statistics.mean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{means[name]:.2f} ± {sd:.2f} ({', '.join(f'{v:.1f}' for v in values)})")
        gaps = [means["job-2w"] - means["job-1w"], means["job-2w"] - means["tutorial"]]
        print(f"| {model} | " + " | ".join(cells) + " | " + " | ".join(f"{g:+.2f}" for g in gaps) + " |")
    print("target: |2w − 1w| and |2w − tutorial| <= 0.30 points for each model")
    if args.json:
        Path(args.json).write_text(json.dumps(errors, indent=1))


if __name__ == "__main__":
    main()
