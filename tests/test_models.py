"""The three tutorial models and deep_bn_cnn: exact architectures (by parameter count), compile settings and
learning-rate schedules, input shapes."""

import numpy as np
import pytest
import tf_keras

from job import models
from job.config import RECIPES

TUTORIAL_PARAMS = {"mlp": 623_290, "cnn": 592_074, "large_cnn": 59_933}
PARAMS = {**TUTORIAL_PARAMS, "deep_bn_cnn": 310_872}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_matches_the_tutorial_and_the_paper(name: str) -> None:
    assert models.build(name).count_params() == PARAMS[name]


def test_deep_bn_cnn_is_ten_unpadded_3x3_convolutions_with_batch_norm_and_no_pooling() -> None:
    model = models.deep_bn_cnn()
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [16, 24, 32, 40, 48, 56, 64, 72, 80, 88]  # the paper's M3 at half width
    assert all(c.kernel_size == (3, 3) and c.padding == "valid" and not c.use_bias for c in convs)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[1:4] == ["Conv2D", "BatchNormalization", "ReLU"] and kinds.count("BatchNormalization") == 11
    assert not any("Pool" in kind or "Dropout" in kind for kind in kinds)
    assert model.layers[-4].output_shape == (None, 8 * 8 * 88)  # each conv trims 2 pixels: 28 -> 8
    assert model.layers[-1].dtype == "float32" and model.layers[-2].dtype == "float32"  # for mixed precision


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
        assert recipe.final_lr_ratio == 1.0 and not recipe.augment


def test_deep_bn_cnn_learning_rate_decays_once_per_epoch_to_the_papers_final_rate() -> None:
    recipe = RECIPES["deep_bn_cnn"]
    assert (recipe.epochs, recipe.batch_size, recipe.augment) == (30, 120, True)
    optimizer = models.build("deep_bn_cnn", steps_per_epoch=33).optimizer
    schedule = tf_keras.optimizers.schedules.deserialize(optimizer.get_config()["learning_rate"])
    rate = [float(schedule(step)) for step in (0, 32, 33, 33 * 29, 33 * 30)]
    assert rate[0] == rate[1] == pytest.approx(1e-3)  # constant within an epoch
    assert rate[2] == pytest.approx(1e-3 * recipe.lr_decay_per_epoch())
    assert rate[3] == pytest.approx(1e-3 * 0.98 ** (150 * 29 / 30), rel=1e-4)  # the last epoch
    assert rate[4] == pytest.approx(1e-3 * 0.98**150, rel=1e-4)  # where the paper's 150 epochs end


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
