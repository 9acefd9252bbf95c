"""The three models of the Keras MNIST tutorial, layer for layer, and a fourth close to the state of the art; how they
are compiled, fed, saved and scored.

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
from job.config import RECIPES, Recipe, TrainConfig, model_of

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


def deep_bn_cnn() -> keras.Model:
    """Seven convolutions with batch norm and ReLU, downsampled twice by strided 5x5 convolutions, and 40% dropout:
    C. Deotte's "32C3-32C3-32C5S2-64C3-64C3-64C5S2-128C4" MNIST net (Kaggle, 2018; docs/models.md).

    About 30 MFLOP forward per image, a third of An et al. 2020's M3 at half width (the model this one replaced):
    the strided convolutions halve the map twice where M3 trims two pixels a layer. Batch norm sits between each
    convolution and its ReLU (Deotte puts it after the ReLU); the first two convolutions are unpadded (28 -> 24),
    the strided ones padded (24 -> 12 -> 4 after two more unpadded), and the last, 4x4, leaves one 128-vector.
    """

    def conv_bn_relu(filters: int, size: int = 3, strides: int = 1) -> list[layers.Layer]:
        padding = "same" if strides > 1 else "valid"
        return [
            layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
        ]

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            *conv_bn_relu(32),
            *conv_bn_relu(32),
            *conv_bn_relu(32, 5, strides=2),
            layers.Dropout(0.4),
            *conv_bn_relu(64),
            *conv_bn_relu(64),
            *conv_bn_relu(64, 5, strides=2),
            layers.Dropout(0.4),
            *conv_bn_relu(128, 4),
            layers.Flatten(),
            layers.Dropout(0.4),
            layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32"),  # float32 under mixed precision too
        ],
        name="deep_bn_cnn",
    )


BUILDERS = {"mlp": mlp, "cnn": cnn, "large_cnn": large_cnn, "deep_bn_cnn": deep_bn_cnn}


def build(name: str, config: TrainConfig | None = None, steps_per_epoch: int = 1) -> keras.Model:
    """Build and compile a model as the tutorial does (Adam, cross-entropy, accuracy), with its recipe's learning rate
    and the run's speed settings.

    The schedule lives in the optimizer and counts its steps (`optimizer.iterations`, saved in every checkpoint), so
    a resumed run goes on at the rate where it stopped.
    """
    recipe = config.recipe(name) if config else RECIPES[name]
    model = BUILDERS[model_of(name)]()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(recipe, steps_per_epoch)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=config.steps_per_execution if config else 1,
        jit_compile=config.jit_compile if config else False,
    )
    return model


def learning_rate(recipe: Recipe, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The recipe's rate: a number, or for "one-cycle" Keras' cosine decay with its linear warm-up."""
    if recipe.schedule == "constant":
        return recipe.learning_rate
    total = steps_per_epoch * recipe.epochs
    warmup = int(total * recipe.warmup)
    return keras.optimizers.schedules.CosineDecay(
        recipe.learning_rate / 10, total - warmup, warmup_target=recipe.learning_rate, warmup_steps=warmup
    )


def ensemble(members: dict[str, keras.Model], name: str) -> keras.Model:
    """One model whose output is the mean of the members' class probabilities (An et al. average them too)."""
    first = next(iter(members.values()))
    inputs = keras.Input(shape=first.input_shape[1:])
    # Each member renamed (they share their model's name), so the ensemble's layers are unique and say which is which.
    outputs = [keras.Model(m.inputs, m.outputs, name=member)(inputs) for member, m in members.items()]
    return keras.Model(inputs, layers.Average(dtype="float32")(outputs), name=name)


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


def predict(model: keras.Model, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities of every example (x as `features` gives it), in inference mode, `batch` at a time."""
    return np.concatenate([model(x[i : i + batch], training=False).numpy() for i in range(0, len(x), batch)])


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, batch: int = EVAL_BATCH) -> tuple[float, float]:
    """Test loss and error (0-1) on every example. Under MWMS every worker must call it when the model has batch norm:
    reading the moving statistics averages them over the workers (a collective)."""
    probs = predict(model, x, batch)
    picked = np.clip(probs[np.arange(len(y)), y.astype(np.int64)], 1e-7, 1.0)
    return float(-np.log(picked).mean()), float((probs.argmax(axis=1) != y).mean())
