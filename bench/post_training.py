"""Benchmark (not a test): test-time augmentation and batch norm recomputed, on the models a finished run saved.

    .venv/bin/python bench/post_training.py --run OUTPUT --data-uri DIR_OR_NPZ [--json out.json]

Nothing is trained; one invocation scores every model in OUTPUT/results.json on the clean test set and on the
perturbed one (benchlib/perturb.py: each digit turned within ±10° and moved within ±2 px, seed 0):

- `saved`: as the run saved it; `bn`: a copy with each batch norm layer's statistics recomputed, layer after layer,
  as the mean and variance of its inputs over the clean training images (training saw augmented images and kept a
  moving average of them);
- each with its class probabilities from the image alone (`none`) or averaged over views of it (test-time
  augmentation): `shift`, the image and its four one-pixel shifts (5 views); `shift+turn`, those and the image
  turned by ±5° (7 views).

An ensemble is scored as the mean of its members' probabilities, as the saved ensemble computes them, for each
variant and view. The seconds are those of scoring the 10,000 clean test images on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import REPO, save_runs
from benchlib.machine import headline, machine
from benchlib.perturb import perturb
from PIL import Image

sys.path.insert(0, str(REPO))
from job.data import load  # noqa: E402
from job.evaluate import load_model, read_model  # noqa: E402

SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
TURNS = (5.0, -5.0)


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images moved by (dy, dx) pixels, the border filled with background (0)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def turned(x: np.ndarray, degrees: float) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(i).rotate(degrees, resample=Image.BILINEAR, fillcolor=0)) for i in x])


def views(x: np.ndarray) -> dict[str, list[np.ndarray]]:
    moved = [shifted(x, dy, dx) for dy, dx in SHIFTS]
    return {"none": moved[:1], "shift": moved, "shift+turn": moved + [turned(x, d) for d in TURNS]}


def probabilities(model, x: np.ndarray) -> np.ndarray:
    from job import models

    return models.predict(model, models.features(x, model))


def error_percent(probs: np.ndarray, y: np.ndarray) -> float:
    return round(float((probs.argmax(axis=1) != y).mean() * 100), 2)


def recomputed_bn(model, x_train: np.ndarray):
    """A copy of `model` whose batch norm layers hold the exact mean and variance of their inputs over x_train, each
    layer computed with the layers before it already recomputed."""
    import tf_keras as keras

    from job import models

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    inputs = models.features(x_train, copy)
    for layer in copy.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        head = keras.Model(copy.inputs, layer.input)
        total, squares, count = 0.0, 0.0, 0
        for i in range(0, len(inputs), models.EVAL_BATCH):
            a = head(inputs[i : i + models.EVAL_BATCH], training=False).numpy().astype(np.float64)
            a = a.reshape(-1, a.shape[-1])
            total, squares, count = total + a.sum(axis=0), squares + (a * a).sum(axis=0), count + len(a)
        mean = total / count
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign((squares / count - mean * mean).astype(np.float32))
    return copy


def member_probabilities(model, x_train: np.ndarray, sets: dict) -> tuple[dict, dict]:
    """{variant: {set: {view: probabilities}}} and the seconds each view of the clean set took, as saved."""
    variants = {"saved": model}
    if any(type(layer).__name__ == "BatchNormalization" for layer in model.layers):
        variants["bn"] = recomputed_bn(model, x_train)
    probs: dict = {}
    seconds: dict = {}
    for variant, m in variants.items():
        for set_name, by_view in sets.items():
            for view, images in by_view.items():
                start = time.perf_counter()
                probs.setdefault(variant, {}).setdefault(set_name, {})[view] = np.mean(
                    [probabilities(m, v) for v in images], axis=0
                )
                if variant == "saved" and set_name == "clean":
                    seconds[view] = round(time.perf_counter() - start, 2)
    return probs, seconds


def errors(probs: dict, y: np.ndarray) -> dict:
    """{variant: {"<set> <view>": error %}}."""
    return {
        variant: {f"{s} {v}": error_percent(p, y) for s, by in sets.items() for v, p in by.items()}
        for variant, sets in probs.items()
    }


def averaged(members: list[dict]) -> dict:
    """The ensemble's probabilities: the mean of its members', for each variant all of them have."""
    shared = sorted(set.intersection(*(set(m) for m in members)), reverse=True)  # "saved" first

    def mean(variant: str, s: str, v: str) -> np.ndarray:
        return np.mean([m[variant][s][v] for m in members], axis=0)

    return {
        variant: {s: {v: mean(variant, s, v) for v in by} for s, by in members[0][variant].items()}
        for variant in shared
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run's --output (holds results.json)")
    parser.add_argument("--data-uri", required=True, help="full MNIST: a folder of the four IDX .gz files, or .npz")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = json.loads((args.run / "results.json").read_text())
    data = load(results["dataset"]["name"], args.data_uri)
    sets = {"clean": views(data.x_test), "perturbed": views(perturb(data.x_test))}
    info = machine()
    print(f"{headline(info)}  {args.run}: {len(data.y_test)} test images, clean and perturbed", flush=True)
    probs: dict = {}
    runs: dict = {}
    for name, figures in results["models"].items():
        if "members" in figures:
            probs[name] = averaged([probs[m] for m in figures["members"]])
            runs[name] = {"errors": errors(probs[name], data.y_test)}
        else:
            model = load_model(read_model(str(args.run / name)))
            probs[name], seconds = member_probabilities(model, data.x_train, sets)
            runs[name] = {"errors": errors(probs[name], data.y_test), "seconds": seconds}
        print(f"{name}: {json.dumps(runs[name])}", flush=True)
    columns = [f"{s}, {v}" for s, by in sets.items() for v in by]
    print(f"\n| model | variant | {' | '.join(columns)} |\n|---|---|{'---|' * len(columns)}")
    for name, figures in runs.items():
        for variant, e in figures["errors"].items():
            print(f"| {name} | {variant} | {' | '.join(f'{value:.2f}%' for value in e.values())} |")
    for name, figures in runs.items():
        if "seconds" in figures:
            print(f"{name}: seconds for 10,000 images, by view: {figures['seconds']}")
    save_runs(args, info, runs)


if __name__ == "__main__":
    main()
