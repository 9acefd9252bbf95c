"""The run's outputs under --output: models, histories, curves, and results.json, which is written last.

results.json exists only for a finished run, so its presence means "complete".
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from job import storage, versions
from job.checkpoint import MODEL_FILE, SAVED_MODEL, RunState
from job.config import MEMBERS_SUFFIX, ConfigError, TrainConfig, defaults, display_name, placement
from job.data import Dataset

RESULTS = "results.json"
HISTORY_FIELDS = (
    "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "samples_per_second",
    "examples", "distinct_examples", "max_uses", "steps", "global_batch_min", "global_batch_max",
)  # fmt: skip


def prepare_output(config: TrainConfig) -> None:
    """Refuse to clobber a finished run without --overwrite; then probe writability. With --overwrite the finished run
    stays whole until this one is final (`write`)."""
    if not config.overwrite and storage.exists(storage.join(config.output, RESULTS)):
        raise ConfigError(
            f"{storage.redact(config.output)} already holds a finished run ({RESULTS}); "
            "pass --overwrite to replace it, or choose another --output"
        )
    storage.probe_writable(config.output)


def finished_run(output: str) -> dict[str, Any] | None:
    """results.json of the finished run at `output`, or None."""
    uri = storage.join(output, RESULTS)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def _identity(results: dict[str, Any]) -> str:
    return f"{results['run_name']} finished at {results['finished_at']}"


RUN_SETTINGS = "run-settings.json"
RESUME_KEYS = ("models", "epochs", "batch_size", "seed", "ensemble")
FIELD_DEFAULTS = defaults(TrainConfig)


def _effective(config: TrainConfig) -> dict[str, Any]:
    """Epochs and batch size as trained: one number when every model shares it, else one per model."""
    found = {}
    for key in ("epochs", "batch_size"):
        values = {name: getattr(config.recipe(name), key) for name in config.models}
        found[key] = next(iter(values.values())) if len(set(values.values())) == 1 else values
    return found


def claim_run(config: TrainConfig, dataset: Dataset) -> None:
    """Record what this run trains; a rerun that would resume it with other settings or data is refused. A run that
    replaces a finished one (--overwrite) records which; checkpoints under its name that do not are the finished
    run's own (or an older attempt's), so it starts afresh instead of resuming them."""
    run_dir = storage.join(config.output, "checkpoints", config.run_name)
    uri = storage.join(run_dir, RUN_SETTINGS)
    settings = {**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items() if k in RESUME_KEYS},
                **_effective(config), "dataset_sha256": dataset.sha256}  # fmt: skip
    replaced = finished_run(config.output) if config.overwrite else None
    if replaced:
        settings["replaces"] = _identity(replaced)
    if storage.exists(uri):
        before = json.loads(storage.read_bytes(uri))
        if replaced and before.get("replaces") != settings["replaces"]:
            storage.delete(run_dir)
            storage.delete(run_dir + MEMBERS_SUFFIX)
        else:
            _refuse_changes(config, before, settings)
            return
    storage.write_bytes(uri, json.dumps(settings, indent=1).encode())


def _refuse_changes(config: TrainConfig, before: dict[str, Any], settings: dict[str, Any]) -> None:
    # A setting added since the run began (e.g. ensemble) had its default then.
    recorded = {k: before.get(k, FIELD_DEFAULTS.get(k)) for k in settings}
    changed = [f"{k} {recorded[k]} -> {v}" for k, v in settings.items() if recorded[k] != v]
    if changed:
        raise ConfigError(
            f"run {config.run_name} at {storage.redact(config.output)} is unfinished and would resume with other "
            f"settings ({'; '.join(changed)}); rerun with the same settings, or use another --run-name"
        )


def write(config: TrainConfig, dataset: Dataset, checkpoint: Path, started: float) -> dict[str, Any]:
    """Upload models, histories and curves from the final checkpoint, then results.json. A finished run this one
    replaces (--overwrite) loses its results.json first, so no results.json ever describes a mix of the two, and
    afterwards whatever of it the new results.json does not describe."""
    state = RunState.load(checkpoint)
    missing = [name for name in config.outputs if name not in state.finished]
    if missing:
        raise RuntimeError(f"the final checkpoint lacks finished models: {', '.join(missing)}")
    histories = {name: state.finished[name]["history"] for name in config.outputs}
    replaced = finished_run(config.output) if config.overwrite else None
    if replaced:
        storage.delete(storage.join(config.output, RESULTS))
    with tempfile.TemporaryDirectory(prefix="mnist-artifacts-") as tmp:
        staging = Path(tmp)
        for name in config.outputs:
            _stage_model(checkpoint / name, staging / name, histories[name])
        _plot_curves({name: history for name, history in histories.items() if history}, staging / "curves.png")
        storage.upload_dir(staging, config.output)
    models = {name: {**_model_results(state.finished[name]), "recipe": asdict(config.recipe(name))}
              for name in config.outputs}  # fmt: skip
    results = _results(config, dataset, models, started)
    storage.write_bytes(storage.join(config.output, RESULTS), json.dumps(results, indent=2).encode())
    if replaced:
        _remove_leftovers(config, replaced)
    return results


def _remove_leftovers(config: TrainConfig, replaced: dict[str, Any]) -> None:
    """What the replaced run wrote that this one did not overwrite: its other models and its checkpoints."""
    leftovers = [name for name in replaced["models"] if name not in config.outputs]
    if replaced["run_name"] != config.run_name:
        leftovers += [f"checkpoints/{replaced['run_name']}", f"checkpoints/{replaced['run_name']}{MEMBERS_SUFFIX}"]
    for part in leftovers:
        storage.delete(storage.join(config.output, part))


def _stage_model(exported: Path, folder: Path, history: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True)
    shutil.copy(exported / MODEL_FILE, folder / MODEL_FILE)
    shutil.copytree(exported / SAVED_MODEL, folder / SAVED_MODEL)
    if history:  # an ensemble trains no epochs of its own
        (folder / "history.csv").write_text(history_csv(history))


def _model_results(finished: dict[str, Any]) -> dict[str, Any]:
    return {
        "test_error": finished["test_error"],
        "test_error_percent": round(finished["test_error"] * 100, 4),
        "test_loss": finished["test_loss"],
        "params": finished["params"],
        "train_seconds": finished["train_seconds"],
        "devices": finished["devices"],
        "history": finished["history"],
        **({"members": finished["members"]} if "members" in finished else {}),
    }


def history_csv(history: list[dict[str, float]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


def _plot_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(histories), figsize=(4.5 * len(histories), 6.5), squeeze=False)
    for col, (name, history) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in history]
        for row, metric in enumerate(("loss", "accuracy")):
            ax = axes[row][col]
            ax.plot(epochs, [r[metric] for r in history], "o-", label="train")
            ax.plot(epochs, [r[f"val_{metric}"] for r in history], "s--", label="validation")
            ax.set_title(f"{display_name(name)}: {metric}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _results(config: TrainConfig, dataset: Dataset, models: dict, started: float) -> dict[str, Any]:
    finished = time.time()
    devices = next(iter(models.values()))["devices"]  # what the chief trained on, as TensorFlow saw it
    return {
        "run_name": config.run_name,
        "status": "succeeded",
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "wall_seconds": round(finished - started, 3),
        "dataset": dataset.describe(),
        "workers": config.workers,
        "gpu": devices["type"] == "GPU",
        "devices": devices,
        "seed": config.seed,
        **_effective(config),
        "config": {k: storage.redact(v) if isinstance(v, str) else v for k, v in asdict(config).items()},
        "versions": versions(),
        "git_sha": git_sha(),
        "models": models,
    }


def git_sha() -> str | None:
    """The commit the job was built from: the image's (its GIT_SHA build argument, which has no .git), else git's."""
    if os.environ.get("MNIST_TRAIN_GIT_SHA"):
        return os.environ["MNIST_TRAIN_GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def print_summary(results: dict[str, Any]) -> None:
    """The tutorial's closing lines, then one table for all models (an ensemble trains no epochs: '-')."""
    rows = results["models"]
    width = max(11, *map(len, rows))
    print()
    for name, m in rows.items():
        print(f"{display_name(name)} error: {m['test_error_percent']:.2f}%")
    print(
        f"\n{'model':<{width}} {'test error':>10} {'test loss':>10} {'params':>9} {'epochs':>6} {'train s':>8} "
        f"{'s/epoch':>8}"
    )
    for name, m in rows.items():
        epochs = len(m["history"])
        per_epoch = f"{m['train_seconds'] / epochs:>8.2f}" if epochs else f"{'-':>8}"
        print(
            f"{name:<{width}} {m['test_error_percent']:>9.2f}% {m['test_loss']:>10.4f} {m['params']:>9,} "
            f"{epochs or '-':>6} {m['train_seconds']:>8.1f} {per_epoch}"
        )
    ds = results["dataset"]
    print(
        f"\ndata {ds['name']} ({ds['train_samples']} train / {ds['test_samples']} test), "
        f"{placement(results['workers'], results['gpu'])}, wall {results['wall_seconds']:.1f}s"
    )
    print(f"results: {storage.join(results['config']['output'], RESULTS)}")
