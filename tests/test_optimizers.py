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


def warmup_reference(step, peak, total, warmup, kind):
    """The schedule written out for one step, in float64."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * peak * (1 + np.cos(np.pi * p))
    if kind == "step":
        return peak * 0.1 ** sum(p >= edge for edge in (0.5, 0.75, 0.9))
    return peak


@pytest.mark.multibackend
@pytest.mark.parametrize("kind", ["cosine", "step", "constant"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_warmup_schedule_against_the_written_out_schedule(kind, warmup):
    from keras_facemargin.optimizers import WarmupSchedule

    schedule = WarmupSchedule(0.3, total_steps=50, warmup_steps=warmup, kind=kind)
    for step in range(0, 60):
        got = float(keras.ops.convert_to_numpy(schedule(step)))
        assert got == pytest.approx(warmup_reference(step, 0.3, 50, warmup, kind), rel=1e-5, abs=1e-7), step
    clone = WarmupSchedule.from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()


def test_warmup_schedule_refuses_bad_arguments():
    from keras_facemargin.optimizers import WarmupSchedule

    for kwargs, message in [({"peak": 0}, "peak must be a finite number > 0; got 0"),
                            ({"total_steps": 0}, "total_steps must be an integer >= 1; got 0"),
                            ({"warmup_steps": 10}, r"warmup_steps must be an integer in \[0, 9\]; got 10"),
                            ({"kind": "linear"}, "kind must be one of cosine, step, constant; got 'linear'")]:
        args = {"peak": 0.1, "total_steps": 10, "warmup_steps": 0, "kind": "cosine", **kwargs}
        with pytest.raises(ValueError, match=message):
            WarmupSchedule(**args)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a .keras round trip of the optimizer")
def test_a_model_with_the_schedule_saves_and_resumes(tmp_path):
    from keras_facemargin.optimizers import WarmupSchedule

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.AdamW(WarmupSchedule(1e-3, 100, 10)), loss="mse")
    x = np.ones((8, 3), "float32")
    model.fit(x, np.zeros((8, 2)), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.learning_rate.numpy() == pytest.approx(
        warmup_reference(int(loaded.optimizer.iterations), 1e-3, 100, 10, "cosine"), rel=1e-5)
