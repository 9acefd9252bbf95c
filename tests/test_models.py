"""The three tutorial models and deep_bn_cnn: exact architectures (by parameter count), compile settings and
learning-rate schedules, input shapes."""

import numpy as np
import pytest
import tf_keras

from job import models
from job.config import RECIPES, TrainConfig

TUTORIAL_PARAMS = {"mlp": 623_290, "cnn": 592_074, "large_cnn": 59_933}
PARAMS = {**TUTORIAL_PARAMS, "deep_bn_cnn": 326_826}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_the_tutorial_and_the_paper(name: str) -> None:
    assert models.build(name).count_params() == PARAMS[name]


def test_deep_bn_cnn_is_deottes_strided_net_with_batch_norm_and_dropout() -> None:
    model = models.deep_bn_cnn()
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    # 32C3-32C3-32C5S2-64C3-64C3-64C5S2-128C4
    assert [(c.filters, c.kernel_size[0], c.strides[0]) for c in convs] == [
        (32, 3, 1), (32, 3, 1), (32, 5, 2), (64, 3, 1), (64, 3, 1), (64, 5, 2), (128, 4, 1)
    ]  # fmt: skip
    assert [c.output_shape[1] for c in convs] == [26, 24, 12, 10, 8, 4, 1]
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[:3] == ["Conv2D", "BatchNormalization", "ReLU"] and kinds.count("BatchNormalization") == 7
    assert [layer.rate for layer in model.layers if type(layer).__name__ == "Dropout"] == [0.4, 0.4, 0.4]
    assert not any("Pool" in kind for kind in kinds)
    assert model.layers[-1].dtype == "float32"  # the softmax, for mixed precision


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
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)  # Keras' Adam default, constant


def test_tutorial_models_keep_the_tutorials_recipe() -> None:
    for name in TUTORIAL_PARAMS:
        recipe = RECIPES[name]
        assert (recipe.epochs, recipe.batch_size, recipe.learning_rate) == (10, 200, 1e-3)
        assert recipe.schedule == "constant" and not recipe.augment


def test_deep_bn_cnn_learning_rate_is_one_cycle_over_the_whole_run() -> None:
    recipe = RECIPES["deep_bn_cnn"]
    assert (recipe.epochs, recipe.batch_size, recipe.augment, recipe.schedule) == (40, 120, True, "one-cycle")
    steps = 50
    total, warmup = steps * recipe.epochs, int(steps * recipe.epochs * recipe.warmup)
    optimizer = models.build("deep_bn_cnn", steps_per_epoch=steps).optimizer
    schedule = tf_keras.optimizers.schedules.deserialize(optimizer.get_config()["learning_rate"])
    rate = [float(schedule(step)) for step in range(total + 1)]
    assert rate[0] == pytest.approx(recipe.learning_rate / 10)
    assert max(rate) == pytest.approx(recipe.learning_rate) and rate.index(max(rate)) == warmup
    assert all(a < b for a, b in zip(rate[:warmup], rate[1 : warmup + 1], strict=True))  # linear warm-up
    assert all(a >= b for a, b in zip(rate[warmup:], rate[warmup + 1 :], strict=False))  # then only down
    assert rate[(warmup + total) // 2] == pytest.approx(recipe.learning_rate / 2, rel=1e-2)  # cosine: half, halfway
    assert rate[total] == pytest.approx(0.0, abs=1e-9)


def test_a_shorter_run_keeps_the_whole_cycle() -> None:
    """--epochs 3 compresses the schedule: warm-up and decay to zero within the 3 epochs."""
    config = TrainConfig(models=("deep_bn_cnn",), epochs=3, output="unused")
    optimizer = models.build("deep_bn_cnn", config.for_model("deep_bn_cnn"), steps_per_epoch=10).optimizer
    schedule = tf_keras.optimizers.schedules.deserialize(optimizer.get_config()["learning_rate"])
    assert float(schedule(30)) == pytest.approx(0.0, abs=1e-9) and float(schedule(4)) == pytest.approx(3e-3)


@pytest.mark.parametrize("name", sorted(PARAMS))
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
