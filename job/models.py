"""The three models of the Keras MNIST tutorial, layer for layer, and a fourth close to the state of the art."""

from __future__ import annotations

import numpy as np
import tf_keras as keras
from tf_keras import layers

# DISPLAY_NAMES and RECIPES are re-exported; they live in config so that the driver need not import TF.
from job.config import DISPLAY_NAMES, RECIPES, Recipe  # noqa: F401

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


def deep_bn_cnn() -> keras.Model:
    """Ten 3x3 convolutions, each with batch norm and ReLU, no pooling: model M3 of An et al. 2020 at half its width.

    S. An, M. Lee, S. Park, H. Yang, J. So, "An Ensemble of Simple Convolutional Neural Network Models for MNIST Digit
    Recognition", arXiv:2008.10400 (code: github.com/ansh941/MnistSimpleCNN). Their M3 (32, 48, ..., 176 filters)
    gets 0.2-0.3% error alone and 0.09-0.13% in ensembles; this one has 16, 24, ..., 88 filters, a quarter of the
    compute, so it trains on CPUs. Each unpadded convolution trims 2 pixels: 28x28 becomes 8x8x88 before the
    classifier. Batch norm momentum 0.9 and epsilon 1e-5 are PyTorch's defaults, as in the paper.
    """

    def conv_bn_relu(filters: int) -> list[layers.Layer]:
        return [
            layers.Conv2D(filters, (3, 3), use_bias=False),
            layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
            layers.ReLU(),
        ]

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Rescaling(2.0, offset=-1.0),  # pixels to -1..1, as the paper feeds them
            *[layer for filters in range(16, 89, 8) for layer in conv_bn_relu(filters)],
            layers.Flatten(),
            layers.Dense(NUM_CLASSES, use_bias=False),
            layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float32"),
            layers.Softmax(dtype="float32"),  # float32 under mixed precision too, for a stable softmax
        ],
        name="deep_bn_cnn",
    )


BUILDERS = {"mlp": mlp, "cnn": cnn, "large_cnn": large_cnn, "deep_bn_cnn": deep_bn_cnn}


def build(name: str, steps_per_execution: int = 1, recipe: Recipe | None = None, steps_per_epoch: int = 1):
    """Build and compile a model as the tutorial does (Adam, cross-entropy, accuracy), with its recipe's learning rate.

    The schedule lives in the optimizer and counts its steps (`optimizer.iterations`, saved in every checkpoint), so
    a resumed run goes on at the rate where it stopped.
    """
    recipe = recipe or RECIPES[name]
    learning_rate = recipe.learning_rate
    if recipe.final_lr_ratio != 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            recipe.learning_rate, steps_per_epoch, recipe.lr_decay_per_epoch(), staircase=True
        )
    model = BUILDERS[name]()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def input_shape(name: str) -> tuple[int, ...]:
    """The shape one example must have for this model: flat pixels for the MLP, channels-last images for the CNNs."""
    return (NUM_PIXELS,) if name == "mlp" else (28, 28, 1)


def evaluate(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test loss and error (0-1) on every example, computed locally. Under MWMS every worker must call it when the
    model has batch norm: reading the moving statistics averages them over the workers (a collective)."""
    probs = np.concatenate([model(x[i : i + EVAL_BATCH], training=False).numpy() for i in range(0, len(x), EVAL_BATCH)])
    picked = np.clip(probs[np.arange(len(y)), y.astype(np.int64)], 1e-7, 1.0)
    return float(-np.log(picked).mean()), float((probs.argmax(axis=1) != y).mean())
