"""`training.recalibrate_batch_norm` against a float64 loop over the batches, on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_facemargin.training import recalibrate_batch_norm

pytestmark = pytest.mark.multibackend

EPSILON = 1e-3


def _model(rng):
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="dense1")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=EPSILON, name="bn1")(x)
    x = keras.layers.Dense(2, name="dense2")(x)
    outputs = keras.layers.BatchNormalization(momentum=0.8, epsilon=EPSILON, name="bn2")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        for variable in layer.trainable_weights:
            variable.assign(rng.normal(size=variable.shape).astype("float32"))
    for name in ("bn1", "bn2"):  # statistics of "other weights", which the recalibration replaces
        model.get_layer(name).moving_mean.assign(np.full(model.get_layer(name).moving_mean.shape, 7.0, "float32"))
        model.get_layer(name).moving_variance.assign(np.full(model.get_layer(name).moving_mean.shape, 9.0, "float32"))
    return model


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), dtype=np.float64)


def _expected(model, batches):
    """Per layer, the mean of the batch means and of the batch variances, in training mode."""
    w1, b1 = (_numpy(v) for v in model.get_layer("dense1").weights)
    g1, beta1 = (_numpy(v) for v in model.get_layer("bn1").trainable_weights)
    w2, b2 = (_numpy(v) for v in model.get_layer("dense2").weights)
    stats = {"bn1": ([], []), "bn2": ([], [])}
    for x in batches:
        z1 = x.astype(np.float64) @ w1 + b1
        means, variances = np.zeros(4), np.zeros(4)
        for j in range(4):  # population variance of each unit over the batch
            means[j] = sum(z1[:, j]) / len(z1)
            variances[j] = sum((z1[:, j] - means[j]) ** 2) / len(z1)
        stats["bn1"][0].append(means)
        stats["bn1"][1].append(variances)
        z2 = ((z1 - means) / np.sqrt(variances + EPSILON) * g1 + beta1) @ w2 + b2
        stats["bn2"][0].append(z2.mean(axis=0))
        stats["bn2"][1].append(z2.var(axis=0))
    return {name: (np.mean(m, axis=0), np.mean(v, axis=0)) for name, (m, v) in stats.items()}


def _batches(rng, n=5):
    return [(rng.normal(size=(8, 3)) * (k + 1) + k).astype("float32") for k in range(n)]


def test_the_statistics_become_the_average_of_the_batch_statistics_and_nothing_else_changes():
    rng = np.random.default_rng(0)
    model = _model(rng)
    batches = _batches(rng)
    weights = [_numpy(v) for v in model.trainable_weights]
    expected = _expected(model, batches)
    labels = np.zeros(8, "int32")
    assert recalibrate_batch_norm(model, [(x, labels) for x in batches]) == 5  # (images, labels) batches
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        np.testing.assert_allclose(_numpy(layer.moving_mean), expected[name][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_numpy(layer.moving_variance), expected[name][1], rtol=1e-5, atol=1e-5)
    assert (model.get_layer("bn1").momentum, model.get_layer("bn2").momentum) == (0.9, 0.8)
    for before, after in zip(weights, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, _numpy(after))


def test_steps_limits_the_batches_and_nested_models_and_frozen_layers_are_handled():
    rng = np.random.default_rng(1)
    inner = _model(rng)
    outer = keras.Sequential([keras.Input((3,)), inner])  # the layers are found inside the nested model
    batches = _batches(rng)
    inner.get_layer("bn2").trainable = False
    frozen = (_numpy(inner.get_layer("bn2").moving_mean), _numpy(inner.get_layer("bn2").moving_variance))
    expected = _expected(inner, batches[:2])
    assert recalibrate_batch_norm(outer, iter(batches), steps=2) == 2
    np.testing.assert_allclose(_numpy(inner.get_layer("bn1").moving_mean), expected["bn1"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_numpy(inner.get_layer("bn1").moving_variance), expected["bn1"][1], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(_numpy(inner.get_layer("bn2").moving_mean), frozen[0])
    np.testing.assert_array_equal(_numpy(inner.get_layer("bn2").moving_variance), frozen[1])


def test_bad_steps_and_empty_data_are_refused_and_leave_the_statistics():
    model = _model(np.random.default_rng(2))
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1 or None; got 0$"):
        recalibrate_batch_norm(model, [np.zeros((8, 3), "float32")], steps=0)
    with pytest.raises(ValueError, match="data yielded no batch"):
        recalibrate_batch_norm(model, [])
    np.testing.assert_array_equal(_numpy(model.get_layer("bn1").moving_mean), np.full(4, 7.0))
    no_bn = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert recalibrate_batch_norm(no_bn, []) == 0  # nothing to recompute: the data are not read
