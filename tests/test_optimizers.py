"""LazySGD against a float64 loop re-derivation of lazy (sparse) momentum SGD, and against SGD."""

import keras
import numpy as np
import pytest

import keras_facemargin as kf
from keras_facemargin.optimizers import LazySGD

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="sparse gradients are TensorFlow's IndexedSlices")


def reference_steps(weights, steps, lr, momentum, nesterov):
    """Loops: each step, for every touched row r (repeats summed): m[r] = μ m[r] − lr g[r];
    w[r] += m[r] (or μ m[r] − lr g[r] with Nesterov); untouched rows and their momentum stay."""
    w = weights.astype("float64").copy()
    m = np.zeros_like(w)
    for rows, values in steps:
        summed = {}
        for r, v in zip(rows, values):
            summed[r] = summed.get(r, 0.0) + v.astype("float64")
        for r, g in summed.items():
            m[r] = momentum * m[r] - lr * g
            w[r] += momentum * m[r] - lr * g if nesterov else m[r]
    return w, m


@tensorflow_only
@pytest.mark.parametrize("nesterov", [False, True])
def test_sparse_steps_match_the_loop_reference(nesterov, rng):
    import tensorflow as tf

    weights = rng.normal(size=(10, 3))
    variable = keras.Variable(weights, dtype="float64")
    optimizer = LazySGD(0.1, momentum=0.9, nesterov=nesterov)
    optimizer.build([variable])
    steps = [([1, 4, 4, 7], rng.normal(size=(4, 3))), ([4, 2], rng.normal(size=(2, 3))),
             ([7], rng.normal(size=(1, 3)))]
    for rows, values in steps:
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(rows), tf.constant([10, 3]))
        optimizer.apply_gradients([(gradient, variable)])
    # Keras keeps the learning rate in a float32 variable.
    expected_w, expected_m = reference_steps(weights, steps, float(np.float32(0.1)), 0.9, nesterov)
    np.testing.assert_allclose(variable.numpy(), expected_w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(optimizer.momentums[0].numpy(), expected_m, rtol=1e-12, atol=1e-12)
    untouched = [0, 3, 5, 6, 8, 9]
    np.testing.assert_array_equal(variable.numpy()[untouched], weights[untouched])


@pytest.mark.multibackend
def test_dense_gradients_are_plain_sgd(rng):
    weights = rng.normal(size=(5, 4)).astype("float32")
    gradients = [rng.normal(size=(5, 4)).astype("float32") for _ in range(3)]
    results = []
    for optimizer in (LazySGD(0.05, momentum=0.9), keras.optimizers.SGD(0.05, momentum=0.9)):
        variable = keras.Variable(weights)
        for g in gradients:
            optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), variable)])
        results.append(keras.ops.convert_to_numpy(variable))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


@tensorflow_only
def test_partial_fc_step_with_momentum_moves_only_the_sampled_centres(rng, tmp_path):
    classes, dim = 200, 6
    features, labels = keras.Input((dim,)), keras.Input((), dtype="int32")
    head = kf.heads.PartialFC(classes, sample_rate=0.1, seed=0, name="partial_fc")
    model = keras.Model([features, labels], head(keras.layers.Dense(8)(features), labels))
    model.compile(optimizer=LazySGD(0.5, momentum=0.9))
    x = rng.normal(size=(16, dim)).astype("float32")
    y = rng.integers(0, classes, size=16).astype("int32")
    before = head.kernel.numpy()
    model.train_on_batch([x, y])
    first = np.flatnonzero(np.any(head.kernel.numpy() != before, axis=1))
    assert len(first) == 20 and set(y) <= set(first)
    momentum = model.optimizer.momentums[model.optimizer._get_variable_index(head.kernel)].numpy()
    assert set(np.flatnonzero(np.any(momentum != 0, axis=1))) == set(first)
    # The optimizer round-trips with the model.
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, LazySGD) and loaded.optimizer.momentum == pytest.approx(0.9)
