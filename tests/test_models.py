"""The three tutorial models: exact architectures (by parameter count), compile settings, input shapes."""

import numpy as np
import pytest
import tf_keras

from job import models

TUTORIAL_PARAMS = {"mlp": 623_290, "cnn": 592_074, "large_cnn": 59_933}


@pytest.mark.parametrize("name", sorted(TUTORIAL_PARAMS))
def test_parameter_count_matches_the_tutorial(name: str) -> None:
    assert models.build(name).count_params() == TUTORIAL_PARAMS[name]


def test_layers_read_like_the_tutorial() -> None:
    kinds = [type(layer).__name__ for layer in models.large_cnn().layers]
    assert kinds == [
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dense",
        "Dense",
    ]
    assert [layer.units for layer in models.large_cnn().layers if hasattr(layer, "units")] == [128, 50, 10]
    assert models.cnn().layers[0].filters == 32 and models.cnn().layers[0].kernel_size == (5, 5)


def test_compiled_as_the_tutorial() -> None:
    model = models.build("mlp")
    assert type(model.optimizer).__name__ == "Adam"
    assert model.loss == "sparse_categorical_crossentropy"


@pytest.mark.parametrize("name", sorted(TUTORIAL_PARAMS))
def test_outputs_are_class_probabilities(name: str) -> None:
    model = models.build(name)
    probs = model(np.zeros((3, *model.input_shape[1:]), np.float32)).numpy()
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_evaluate_counts_errors_on_every_example() -> None:
    model = models.build("mlp")
    x = np.random.default_rng(0).random((2500, 784), dtype=np.float32)  # not a multiple of the eval batch
    predicted = model(x).numpy().argmax(axis=1)
    y = predicted.copy()
    y[:250] = (y[:250] + 1) % 10  # exactly 250 wrong
    loss, error = models.evaluate(model, x, y)
    assert error == pytest.approx(0.1)
    expected = tf_keras.losses.sparse_categorical_crossentropy(y, model(x)).numpy().mean()
    assert loss == pytest.approx(float(expected), rel=1e-4)


def test_features_follow_the_models_input_shape() -> None:
    x = np.full((2, 28, 28), 255, np.uint8)
    flat, image = models.features(x, models.build("mlp")), models.features(x, models.build("cnn"))
    assert flat.shape == (2, 784) and flat.dtype == np.float32 and flat.max() == 1.0
    assert image.shape == (2, 28, 28, 1)
