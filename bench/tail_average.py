"""Benchmark (not a test): a model's weights averaged over its last K epochs (SWA's average over the tail of the
one-cycle), scored against the last epoch's weights alone.

    # while a run trains (it keeps its last two checkpoints only): copy every epoch's model in progress
    .venv/bin/python bench/tail_average.py watch --checkpoints OUTPUT/checkpoints/RUN_NAME --into EPOCHS_DIR
    # after it: score each member's average over its last K epochs
    .venv/bin/python bench/tail_average.py score --into EPOCHS_DIR --model deep_bn_cnn-3 --data-uri DIR_OR_NPZ

`watch` copies each checkpoint's model in progress (`current/`) to EPOCHS_DIR/<model>-<epoch>/ and each finished
model to EPOCHS_DIR/<model>-final/, until stopped. `score` averages every weight (batch norm's moving statistics
too) over the last K epochs, K in --last, and prints the test error as averaged and with batch norm recomputed over
the clean training images (post_training.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import REPO
from post_training import error_percent, probabilities, recomputed_bn

sys.path.insert(0, str(REPO))
from job.checkpoint import CURRENT, MODEL_FILE, STATE_FILE  # noqa: E402


def copy_once(checkpoints: Path, into: Path) -> None:
    for folder in sorted(checkpoints.glob("checkpoint_*")):
        try:
            state = json.loads((folder / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue  # being written or removed
        copies = {f"{name}-final": folder / name for name in state["finished"]}
        if state["current"]:
            copies[f"{state['current']}-{len(state['history'])}"] = (folder / CURRENT).parent
        for key, source in copies.items():
            if not (into / key).exists():
                try:
                    shutil.copytree(source, into / f"{key}.tmp", dirs_exist_ok=True)
                except (OSError, shutil.Error):
                    continue
                (into / f"{key}.tmp").rename(into / key)


def watch(args: argparse.Namespace) -> None:
    args.into.mkdir(parents=True, exist_ok=True)
    while True:
        copy_once(args.checkpoints, args.into)
        time.sleep(5)


def score(args: argparse.Namespace) -> None:
    import tensorflow as tf

    from job import models
    from job.data import load

    data = load("mnist", args.data_uri)
    final = models.load(args.into / f"{args.model}-final" / MODEL_FILE)
    model = models.build(final.name)
    last = max(int(p.name.rsplit("-", 1)[1]) for p in args.into.glob(f"{args.model}-[0-9]*")) + 1  # the final's epoch

    def weights(epoch: int) -> list[np.ndarray]:
        if epoch == last:
            return final.get_weights()
        tf.train.Checkpoint(model=model).read(str(args.into / f"{args.model}-{epoch}" / Path(CURRENT).name))
        return [w.copy() for w in model.get_weights()]

    def error(m) -> float:
        return error_percent(probabilities(m, data.x_test), data.y_test)

    for k in args.last:
        stack = [weights(e) for e in range(last - k + 1, last + 1)]
        model.set_weights([np.mean(w, axis=0) for w in zip(*stack, strict=True)])
        figures = {"as averaged": error(model), "bn recomputed": error(recomputed_bn(model, data.x_train))}
        print(f"{args.model}: the last {k} of {last} epochs averaged: {json.dumps(figures)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    w = modes.add_parser("watch", help="copy every epoch's model in progress while a run trains")
    w.add_argument("--checkpoints", type=Path, required=True, help="OUTPUT/checkpoints/RUN_NAME")
    w.add_argument("--into", type=Path, required=True)
    s = modes.add_parser("score", help="score a model's average over its last epochs")
    s.add_argument("--into", type=Path, required=True)
    s.add_argument("--model", required=True, help="a model or member, e.g. deep_bn_cnn-3")
    s.add_argument("--data-uri", required=True, help="full MNIST: a folder of the four IDX .gz files, or .npz")
    s.add_argument("--last", type=lambda v: [int(k) for k in v.split(",")], default=[1, 3, 5, 10, 15])
    args = parser.parse_args()
    watch(args) if args.mode == "watch" else score(args)


if __name__ == "__main__":
    main()
