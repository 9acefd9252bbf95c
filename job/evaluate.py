"""`mnist-train evaluate`: load a saved model from any URI and print its error on a data set's test set."""

from __future__ import annotations

import tempfile
from pathlib import Path

from job import console, storage
from job.checkpoint import MODEL_FILE
from job.config import ConfigError, EvaluateConfig
from job.data import load


def run(config: EvaluateConfig) -> tuple[float, float]:
    """Print and return the model's (test loss, test error)."""
    dataset = load(config.dataset, config.data_uri)
    target = (
        config.model_uri
        if config.model_uri.rstrip("/").endswith(".keras")
        else storage.join(config.model_uri, MODEL_FILE)
    )
    try:
        if not storage.exists(target):
            raise ConfigError(
                f"no {MODEL_FILE} at {storage.redact(target)}; point --model-uri at a run's <model>/ folder or a "
                f"{MODEL_FILE} file"
            )
        raw = storage.read_bytes(target)
    except storage.StorageError as err:
        raise ConfigError(str(err)) from None
    # TensorFlow's C++ banners (oneDNN, CUDA probing) write to file descriptor 2: the one line below is the output.
    with tempfile.TemporaryFile("w+") as chatter, console.stderr_to_log(chatter, verbose=False):
        from job import models

        with tempfile.TemporaryDirectory(prefix="mnist-eval-") as tmp:
            (Path(tmp) / MODEL_FILE).write_bytes(raw)
            model = models.load(Path(tmp) / MODEL_FILE)
        loss, error = models.evaluate(model, models.features(dataset.x_test, model), dataset.y_test, config.batch_size)
    print(
        f"{model.name} on {dataset.name} ({len(dataset.y_test)} test images): error {error * 100:.2f}%, loss {loss:.4f}"
    )
    return loss, error
