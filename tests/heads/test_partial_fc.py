import math
import os

import keras
import margin_reference as ref
import numpy as np
import pytest
from helpers import GRAD_TOL, TOL, check_config_round_trip, numerical_gradient, value_and_grad
from keras import ops
from test_margin_losses import CASES, make_loss, ref_kwargs

import keras_facemargin as kf

multibackend = pytest.mark.multibackend
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow backend only")


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def layer_loss(layer, labels, training=True):
    """`(embeddings, kernel) -> the loss the layer adds`, with a fixed seed state, on any backend."""
    state = [v.value for v in layer.non_trainable_variables]

    def fn(embeddings, kernel):
        _, _, losses = layer.stateless_call(
            [kernel], state, embeddings, labels, training=training, return_losses=True
        )
        return losses[0]

    return fn


def built_layer(rng, num_classes, dim, dtype="float64", **kwargs):
    layer = kf.heads.PartialFC(num_classes, dtype=dtype, **kwargs)
    layer.build((None, dim))
    layer.kernel.assign(rng.normal(size=(num_classes, dim)))
    return layer


def training_step(case, labels, dim, classes, sample_rate, rng):
    """A float64 layer with random centres, random embeddings, and the step's (loss, gradients)."""
    layer = built_layer(rng, classes, dim, loss=make_loss(case, dtype="float64")[0], sample_rate=sample_rate,
                        seed=3)
    centres = numpy(layer.kernel)
    embeddings = rng.normal(size=(len(labels), dim))
    embeddings[1] = -centres[labels[1]] + 0.1 * rng.normal(size=dim)  # θ + m > π for the arc margins
    return layer, embeddings, centres, value_and_grad(layer_loss(layer, labels), embeddings, centres)


def assert_matches_reference(case, embeddings, centres, labels, value, g_emb, g_centres):
    """Loss and gradients vs the float64 loop reference of the margin loss on cos(embeddings, centre rows)."""
    name, scale = make_loss(case)[1], CASES[case]["scale"]

    def ref_emb(f):
        return ref.loss(name, ref.head(f, centres.T), labels, scale, **ref_kwargs(case))

    def ref_centres(w):
        return ref.loss(name, ref.head(embeddings, w.T), labels, scale, **ref_kwargs(case))

    assert value == pytest.approx(ref_emb(embeddings), **TOL)
    np.testing.assert_allclose(g_emb, numerical_gradient(ref_emb, embeddings), **GRAD_TOL)
    np.testing.assert_allclose(g_centres, numerical_gradient(ref_centres, centres), **GRAD_TOL)


@multibackend
@pytest.mark.parametrize("case", list(CASES))
def test_sample_rate_one_equals_cosine_head_and_reference(case, rng):
    """Loss and gradients equal CosineHead (kernel = centres transposed) + the same margin loss."""
    labels, dim, classes = np.array([0, 1, 2, 4, 1, 0]), 4, 5
    layer, embeddings, centres, (value, (g_emb, g_centres)) = training_step(case, labels, dim, classes, 1.0, rng)
    loss = layer.loss
    head = kf.heads.CosineHead(classes, dtype="float64")
    head.build((None, dim))

    def head_loss(f, kernel):
        return loss(labels, head.stateless_call([kernel], [], f)[0])

    head_value, (h_emb, h_kernel) = value_and_grad(head_loss, embeddings, centres.T)
    assert value == pytest.approx(head_value, **TOL)
    np.testing.assert_allclose(g_emb, h_emb, **GRAD_TOL)
    np.testing.assert_allclose(g_centres, h_kernel.T, **GRAD_TOL)

    assert_matches_reference(case, embeddings, centres, labels, value, g_emb, g_centres)


@multibackend
@pytest.mark.parametrize("case", ["arcface", "cosface", "combined_margin"])
def test_sampled_step_is_the_margin_loss_on_the_sampled_classes(case, rng):
    """Loss = reference on the sampled classes with remapped labels; other centres get zero gradient."""
    labels, dim, classes = np.array([3, 17, 3, 39, 0, 22]), 4, 40
    layer, embeddings, centres, (value, (g_emb, g_centres)) = training_step(case, labels, dim, classes, 0.2, rng)

    class_ids, remapped = (numpy(t) for t in layer.sample(labels))  # the same draw: same seed state
    assert class_ids.shape == (layer.num_sampled,) == (8,)
    np.testing.assert_array_equal(class_ids[remapped], labels)
    sampled = centres[class_ids]
    assert_matches_reference(case, embeddings, sampled, remapped, value, g_emb, g_centres[class_ids])
    others = np.setdiff1d(np.arange(classes), class_ids)
    assert np.all(g_centres[others] == 0)


@multibackend
def test_every_positive_class_is_sampled_in_every_step(rng):
    classes, batch = 1000, 64
    layer = kf.heads.PartialFC(classes, sample_rate=0.1, seed=0)
    seen = np.zeros(classes, bool)
    for step in range(30):
        # Repeated labels, and in one step as many distinct labels as there are sampled classes.
        labels = rng.integers(0, classes, size=batch) if step else rng.permutation(classes)[:100]
        class_ids, remapped = (numpy(t) for t in layer.sample(labels))
        assert class_ids.shape == (100,)
        assert len(np.unique(class_ids)) == 100 and np.all(np.diff(class_ids) > 0)
        assert 0 <= class_ids.min() and class_ids.max() < classes
        assert set(labels) <= set(class_ids)
        np.testing.assert_array_equal(class_ids[remapped], labels)
        seen[class_ids] = True
    assert seen.mean() > 0.9  # the negatives change from step to step


@multibackend
def test_call_adds_the_loss_and_returns_sampled_or_full_cosines(rng):
    classes, dim = 30, 5
    embeddings = rng.normal(size=(4, dim)).astype("float32")
    labels = np.array([1, 2, 3, 29])
    layer = kf.heads.PartialFC(classes, sample_rate=0.3, seed=1, loss=kf.losses.CosFaceLoss())
    train = layer(embeddings, labels, training=True)
    assert tuple(train.shape) == (4, 9) and len(layer.losses) == 1
    full = numpy(layer(embeddings, labels, training=False))
    expected = ref.head(embeddings, numpy(layer.kernel).T)
    np.testing.assert_allclose(full, expected, atol=1e-5)
    expected_loss = ref.loss("cosface", expected, labels, 64.0, margin=0.35)
    assert float(numpy(layer.losses[0])) == pytest.approx(expected_loss, rel=1e-4)
    assert tuple(layer(embeddings).shape) == (4, classes)
    centres = numpy(layer.centers)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-6)


@multibackend
def test_sampling_is_deterministic_with_a_seed():
    labels = np.array([4, 8, 15, 16, 23, 42])

    def draws(seed):
        layer = kf.heads.PartialFC(100, sample_rate=0.2, seed=seed)
        return [numpy(layer.sample(labels)[0]) for _ in range(3)]

    first, again, other = draws(7), draws(7), draws(8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert not np.array_equal(first[0], first[1])


def _model(classes, dim, sample_rate, seed=0, **kwargs):
    features = keras.Input((dim,))
    labels = keras.Input((), dtype="int32")
    embeddings = keras.layers.Dense(8, name="embedding")(features)
    head = kf.heads.PartialFC(classes, sample_rate=sample_rate, seed=seed, name="partial_fc", **kwargs)
    return keras.Model([features, labels], head(embeddings, labels))


def _clustered(rng, classes, per_class, dim):
    """Features around one random mean per class, and their labels."""
    means = rng.normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    x = means[y] + 0.3 * rng.normal(size=(len(y), dim))
    order = rng.permutation(len(y))
    return x[order].astype("float32"), y[order].astype("int32")


@multibackend
def test_sgd_step_moves_only_the_sampled_centres(rng):
    classes, dim = 200, 6
    model = _model(classes, dim, sample_rate=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    x = rng.normal(size=(16, dim)).astype("float32")
    y = rng.integers(0, classes, size=16).astype("int32")
    before = numpy(model.get_layer("partial_fc").kernel)
    model.train_on_batch([x, y])
    after = numpy(model.get_layer("partial_fc").kernel)
    moved = np.flatnonzero(np.any(after != before, axis=1))
    assert len(moved) == 20  # S = 0.1 × 200: every sampled centre has a gradient, no other moves
    assert set(y) <= set(moved)


@multibackend
def test_fit_lowers_the_loss(rng):
    classes, dim = 64, 12
    x, y = _clustered(rng, classes, 8, dim)
    model = _model(classes, dim, sample_rate=0.5, loss=kf.losses.ArcFaceLoss(scale=16.0, margin=0.2))
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    before = model.evaluate([x, y], verbose=0)
    history = model.fit([x, y], epochs=8, batch_size=16, verbose=0)
    after = model.evaluate([x, y], verbose=0)
    assert all(map(math.isfinite, history.history["loss"]))
    assert after < 0.7 * before
    assert history.history["loss"][-1] < history.history["loss"][0]


@TF_ONLY
def test_fit_on_a_dataset_of_images_and_labels(rng):
    import tensorflow as tf

    x, y = _clustered(rng, 32, 4, 12)
    model = _model(32, 12, sample_rate=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(lambda a, b: ((a, b),))
    history = model.fit(dataset, epochs=4, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0]


@TF_ONLY
def test_centre_gradient_is_indexed_slices_of_the_sampled_rows(rng):
    """The memory property: TensorFlow's gradient is S rows, which SGD applies with a scatter."""
    import tensorflow as tf

    layer = kf.heads.PartialFC(10_000, sample_rate=0.01, seed=0)
    embeddings = tf.constant(rng.normal(size=(32, 16)).astype("float32"))
    labels = tf.constant(rng.integers(0, 10_000, size=32))
    layer.build(embeddings.shape)
    with tf.GradientTape() as tape:
        layer(embeddings, labels, training=True)
    (grad,) = tape.gradient(layer.losses[0], layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)
    assert tuple(grad.values.shape) == (100, 16)


@multibackend
def test_too_many_distinct_labels_raise_eagerly():
    layer = kf.heads.PartialFC(50, sample_rate=0.1, seed=0)
    layer.build((None, 3))
    with pytest.raises(ValueError, match=r"S = ceil\(sample_rate=0.1 × num_classes=50\) = 5 classes, fewer "
                                         r"than the 6 distinct labels"):
        layer(np.ones((6, 3), "float32"), np.arange(6), training=True)
    layer(np.ones((8, 3), "float32"), np.array([1, 2, 3, 4, 5, 1, 2, 3]), training=True)  # 5 distinct fit


@TF_ONLY
def test_too_many_distinct_labels_fail_in_graphs_and_give_nan_under_xla(rng):
    import tensorflow as tf

    x = rng.normal(size=(8, 4)).astype("float32")
    y = np.arange(8, dtype="int32")
    model = _model(40, 4, sample_rate=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    with pytest.raises(tf.errors.InvalidArgumentError, match="more distinct labels than the S=4"):
        model.train_on_batch([x, y])
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
    assert math.isnan(model.train_on_batch([x, y]))


@multibackend
def test_config_round_trip_and_loss_options():
    layer = kf.heads.PartialFC(
        1000, loss=kf.losses.CosFaceLoss(margin=0.3), sample_rate=0.25, seed=9,
        kernel_initializer="he_normal", kernel_regularizer="l2", epsilon=1e-10, name="pfc",
    )
    clone = check_config_round_trip(layer)
    assert isinstance(clone.loss, kf.losses.CosFaceLoss) and clone.loss.margin == 0.3
    assert clone.num_sampled == 250 and clone.seed == 9
    assert isinstance(kf.heads.PartialFC(10).loss, kf.losses.ArcFaceLoss)
    assert isinstance(kf.heads.PartialFC(10, loss="sphereface").loss, kf.losses.SphereFaceLoss)


@multibackend
def test_save_load_keeps_weights_seed_and_training(rng, tmp_path):
    classes, dim = 64, 12
    x, y = _clustered(rng, classes, 4, dim)
    model = _model(classes, dim, sample_rate=0.5, loss=kf.losses.CosFaceLoss(scale=16.0))
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.fit([x, y], epochs=1, batch_size=32, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    head, loaded_head = model.get_layer("partial_fc"), loaded.get_layer("partial_fc")
    np.testing.assert_array_equal(numpy(loaded_head.kernel), numpy(head.kernel))
    np.testing.assert_array_equal(numpy(loaded_head.sample(y[:8])[0]), numpy(head.sample(y[:8])[0]))
    assert isinstance(loaded_head.loss, kf.losses.CosFaceLoss) and loaded_head.loss.scale == 16.0
    np.testing.assert_allclose(numpy(loaded.predict([x, y], verbose=0)),
                               numpy(model.predict([x, y], verbose=0)), atol=1e-6)
    before = loaded.evaluate([x, y], verbose=0)
    loaded.fit([x, y], epochs=3, batch_size=32, verbose=0)
    assert loaded.evaluate([x, y], verbose=0) < before


@multibackend
@pytest.mark.parametrize("sample_rate", [0, -0.1, 1.5, math.nan, "0.1", True, None])
def test_bad_sample_rate(sample_rate):
    with pytest.raises(ValueError, match=r"sample_rate must be a number in \(0, 1\]; got"):
        kf.heads.PartialFC(10, sample_rate=sample_rate)


@multibackend
@pytest.mark.parametrize("num_classes", [1, 0, 2.5, "10", True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2; got"):
        kf.heads.PartialFC(num_classes)


@multibackend
@pytest.mark.parametrize("kwargs, message", [
    (dict(loss=keras.losses.MeanSquaredError()), "loss must be a keras_facemargin.losses.MarginSoftmaxLoss"),
    (dict(loss="triplet"), "loss must be a keras_facemargin.losses.MarginSoftmaxLoss"),
    (dict(seed=1.5), "seed must be an integer or None; got 1.5"),
    (dict(epsilon=0), "epsilon must be a finite number > 0; got 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kf.heads.PartialFC(10, **kwargs)


@multibackend
@pytest.mark.parametrize("training", [True, False])
def test_labels_out_of_range(training):
    layer = kf.heads.PartialFC(10, sample_rate=0.5)
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=10\); got min label 0, max label 12"):
        layer(np.ones((3, 4), "float32"), np.array([0, 12, 3]), training=training)


@multibackend
def test_bad_embeddings_shape():
    with pytest.raises(ValueError, match=r"embeddings of shape \[batch, dim\].*got input shape \(None, 4, 4\)"):
        kf.heads.PartialFC(10).build((None, 4, 4))


@multibackend
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_computes_in_float32_under_half_precision(policy):
    keras.config.set_dtype_policy(policy)
    layer = kf.heads.PartialFC(20, sample_rate=0.5)
    out = layer(np.ones((2, 4), "float32"), np.array([1, 2]), training=True)
    assert layer.compute_dtype == "float32" and layer.variable_dtype == "float32"
    assert "float32" in str(out.dtype) and math.isfinite(float(numpy(layer.losses[0])))


@multibackend
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["zero", "tiny", "huge"])
@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_gradients_stay_finite_for_zero_tiny_and_huge_rows(kind, dtype, sample_rate, rng):
    from test_heads import extreme_rows

    layer = kf.heads.PartialFC(6, sample_rate=sample_rate, seed=0)
    layer.build((None, 4))
    embeddings, _ = extreme_rows(kind, dtype, rng)
    value, (g_emb, g_centres) = value_and_grad(
        layer_loss(layer, np.array([0, 3, 5])), embeddings, numpy(layer.kernel))
    assert np.isfinite(value) and str(g_emb.dtype) == dtype
    assert np.all(np.isfinite(g_emb.astype("float64"))) and np.all(np.isfinite(g_centres))
