"""`mnist-train evaluate`: load a saved model from any URI and print its error on a data set's test set."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from job import console, storage
from job.checkpoint import MODEL_FILE
from job.config import ConfigError, EvaluateConfig
from job.data import load


def read_model(model_uri: str) -> bytes:
    """The bytes of the model.keras at `model_uri` (the file, or a run's <model>/ folder); a missing or unreadable
    one is a ConfigError that names it."""
    target = model_uri if model_uri.rstrip("/").endswith(".keras") else storage.join(model_uri, MODEL_FILE)
    try:
        if not storage.exists(target):
            raise ConfigError(
                f"no {MODEL_FILE} at {storage.redact(target)}; point --model-uri at a run's <model>/ folder or a "
                f"{MODEL_FILE} file"
            )
        return storage.read_bytes(target)
    except storage.StorageError as err:
        raise ConfigError(str(err)) from None


def load_model(raw: bytes) -> Any:
    """A Keras model from read_model's bytes. TensorFlow's C++ banners (oneDNN, CUDA probing) write to file
    descriptor 2; they go to a temporary file, not the console."""
    with tempfile.TemporaryFile("w+") as chatter, console.stderr_to_log(chatter, verbose=False):
        from job import models

        with tempfile.TemporaryDirectory(prefix="mnist-model-") as tmp:
            (Path(tmp) / MODEL_FILE).write_bytes(raw)
            try:
                return models.load(Path(tmp) / MODEL_FILE)
            except Exception as err:
                raise ConfigError(f"{MODEL_FILE} could not be loaded as a Keras model: {err}".splitlines()[0]) from None


def run(config: EvaluateConfig) -> tuple[float, float]:
    """Print and return the model's (test loss, test error)."""
    dataset = load(config.dataset, config.data_uri)
    model = load_model(read_model(config.model_uri))
    with tempfile.TemporaryFile("w+") as chatter, console.stderr_to_log(chatter, verbose=False):
        from job import models

        loss, error = models.evaluate(model, models.features(dataset.x_test, model), dataset.y_test, config.batch_size)
    print(
        f"{model.name} on {dataset.name} ({len(dataset.y_test)} test images): error {error * 100:.2f}%, loss {loss:.4f}"
    )
    return loss, error
