"""`mnist-train evaluate`: load a saved model from any URI and print its error on a data set's test set."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from job import storage
from job.config import EvaluateConfig
from job.data import DataError, features, load


def run(config: EvaluateConfig) -> int:
    try:
        dataset = load(config.dataset, config.data_uri)
        local = _fetch(config.model_uri)
    except (DataError, storage.StorageError) as err:
        print(f"mnist-train: error: {err}", file=sys.stderr)
        return 2
    import tf_keras

    from job.models import evaluate

    model = tf_keras.models.load_model(local)
    shape = model.input_shape[1:]
    x = features(dataset.x_test, "mlp" if len(shape) == 1 else "cnn")
    loss, error = evaluate(model, x, dataset.y_test)
    print(
        f"{model.name} on {dataset.name} ({len(dataset.y_test)} test images): error {error * 100:.2f}%, loss {loss:.4f}"
    )
    return 0


def _fetch(uri: str) -> Path:
    """Download model.keras (given directly, or inside a run's <model>/ folder) to a local temp file."""
    target = uri if uri.rstrip("/").endswith(".keras") else storage.join(uri, "model.keras")
    if not storage.exists(target):
        raise storage.StorageError(
            f"no model.keras at {storage.redact(target)}; point --model-uri at a run's <model>/ "
            "folder or a model.keras file"
        )
    local = Path(tempfile.mkdtemp(prefix="mnist-eval-")) / "model.keras"
    local.write_bytes(storage.read_bytes(target))
    return local
