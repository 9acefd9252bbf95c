"""The three models of the Keras MNIST tutorial, layer for layer."""

from __future__ import annotations

import numpy as np
import tf_keras as keras
from tf_keras import layers

from job.config import DISPLAY_NAMES  # noqa: F401 - re-exported; kept in config so the driver need not import TF

EVAL_BATCH = 1000

NUM_PIXELS = 28 * 28
NUM_CLASSES = 10


def mlp() -> keras.Model:
    """Baseline: one hidden layer as wide as the input (tutorial: 1.92% error)."""
    return keras.Sequential(
        [
            keras.Input(shape=(NUM_PIXELS,)),
            layers.Dense(NUM_PIXELS, kernel_initializer="normal", activation="relu"),
            layers.Dense(NUM_CLASSES, kernel_initializer="normal", activation="softmax"),
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
            layers.Dense(NUM_CLASSES, activation="softmax"),
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
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="large_cnn",
    )


BUILDERS = {"mlp": mlp, "cnn": cnn, "large_cnn": large_cnn}


def build(name: str, steps_per_execution: int = 1) -> keras.Model:
    """Build and compile a model as the tutorial does (Adam, cross-entropy, accuracy)."""
    model = BUILDERS[name]()
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def input_shape(name: str) -> tuple[int, ...]:
    """The shape one example must have for this model: flat pixels for the MLP, channels-last images for the CNNs."""
    return (NUM_PIXELS,) if name == "mlp" else (28, 28, 1)


def evaluate(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test loss and error (0-1) on every example, computed locally: no collectives, so one worker can do it."""
    probs = np.concatenate([model(x[i : i + EVAL_BATCH], training=False).numpy() for i in range(0, len(x), EVAL_BATCH)])
    picked = np.clip(probs[np.arange(len(y)), y.astype(np.int64)], 1e-7, 1.0)
    return float(-np.log(picked).mean()), float((probs.argmax(axis=1) != y).mean())
