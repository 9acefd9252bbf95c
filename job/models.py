"""The three models of the Keras MNIST tutorial, layer for layer; how they are compiled, fed, saved and scored.

Workers only (TensorFlow). Output layers compute in float32, as mixed precision needs for a stable softmax.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import tf_keras as keras
from tf_keras import layers

from job.checkpoint import MODEL_FILE, SAVED_MODEL
from job.config import TrainConfig

EVAL_BATCH = 1000

NUM_PIXELS = 28 * 28
NUM_CLASSES = 10


def mlp() -> keras.Model:
    """Baseline: one hidden layer as wide as the input (tutorial: 1.92% error)."""
    return keras.Sequential(
        [
            keras.Input(shape=(NUM_PIXELS,)),
            layers.Dense(NUM_PIXELS, kernel_initializer="normal", activation="relu"),
            layers.Dense(NUM_CLASSES, kernel_initializer="normal", activation="softmax", dtype="float32"),
        ],
        name="mlp",
    )


def cnn() -> keras.Model:
    """Simple CNN (tutorial: about 1.0% error)."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, (5, 5), activation="relu"),
            layers.MaxPooling2D(),
            layers.Dropout(0.2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32"),
        ],
        name="cnn",
    )


def large_cnn() -> keras.Model:
    """Larger CNN (tutorial: about 0.8% error)."""
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(30, (5, 5), activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(15, (3, 3), activation="relu"),
            layers.MaxPooling2D(),
            layers.Dropout(0.2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(50, activation="relu"),
            layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32"),
        ],
        name="large_cnn",
    )


BUILDERS = {"mlp": mlp, "cnn": cnn, "large_cnn": large_cnn}


def build(name: str, config: TrainConfig | None = None) -> keras.Model:
    """Build and compile a model as the tutorial does (Adam, cross-entropy, accuracy), with the run's speed settings."""
    model = BUILDERS[name]()
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=config.steps_per_execution if config else 1,
        jit_compile=config.jit_compile if config else False,
    )
    return model


def seed(value: int) -> None:
    keras.utils.set_random_seed(value)


def features(x: np.ndarray, model: keras.Model) -> np.ndarray:
    """Scale pixels to 0-1 and shape them as `model` takes them (each model declares its input shape once)."""
    scaled = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return scaled.reshape((-1, *model.input_shape[1:]))


def export(model: keras.Model, folder: Path) -> None:
    """Save `model.keras` (for Keras) and a SavedModel (for TF Serving and other runtimes) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    # Explicit format: tf_keras' .keras detection breaks after the first save in a non-main thread.
    model.save(str(folder / MODEL_FILE), save_format="keras_v3")
    with contextlib.redirect_stdout(io.StringIO()):  # export() prints every captured tensor
        model.export(str(folder / SAVED_MODEL))


def load(path: Path) -> keras.Model:
    return keras.models.load_model(path)


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH) -> tuple[float, float]:
    """Test loss and error (0-1) on every example, computed locally: no collectives, so one worker can do it."""
    probs = np.concatenate([model(x[i : i + batch], training=False).numpy() for i in range(0, len(x), batch)])
    picked = np.clip(probs[np.arange(len(y)), y.astype(np.int64)], 1e-7, 1.0)
    return float(-np.log(picked).mean()), float((probs.argmax(axis=1) != y).mean())
