"""What one model call of `mnist-train serve` may hold: a batch of many large requests is cut into calls of at most
DIGITS_PER_CALL digits (32 requests of --max-digits 1000 were one call of 32,000 digits, 2.4 GB for the CNN's first
activation). In-process, with a real tf_keras model; tests/test_serve.py sends the same through a real server."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from job import serve


def bounded_model(limit: int) -> tf_keras.Model:
    """A model that fails (in the graph, at every call) when a call holds more than `limit` digits."""

    def at_most(x: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies([tf.debugging.assert_less_equal(tf.shape(x)[0], limit)]):
            return tf.identity(x)

    inputs = tf_keras.Input((serve.SIDE, serve.SIDE))
    hidden = tf_keras.layers.Flatten()(tf_keras.layers.Lambda(at_most)(inputs))
    return tf_keras.Model(inputs, tf_keras.layers.Dense(10, activation="softmax")(hidden))


def test_a_large_batch_is_cut_into_calls_of_at_most_digits_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    model = bounded_model(7)
    digits = np.random.default_rng(0).integers(0, 256, (25, serve.SIDE, serve.SIDE)).astype(np.float32)
    monkeypatch.setattr(serve, "DIGITS_PER_CALL", 7)
    answers = serve._compiled(model, gpu=False)(digits)
    expected = np.concatenate([model(digits[i : i + 7] / 255.0).numpy() for i in range(0, 25, 7)])
    np.testing.assert_allclose(answers, expected, atol=1e-6)
    monkeypatch.setattr(serve, "DIGITS_PER_CALL", 30)  # the check is live: a call of 25 digits fails it
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve._compiled(model, gpu=False)(digits)
