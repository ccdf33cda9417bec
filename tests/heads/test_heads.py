import math

import keras
import margin_reference as ref
import numpy as np
import pytest
from helpers import (
    FLOAT64,
    GRAD_TOL,
    check_config_round_trip,
    check_save_load_keeps_training,
    finite,
    numerical_gradient,
    value_and_grad,
)
from keras import ops

import keras_facemargin as kf

pytestmark = pytest.mark.multibackend


def test_output_is_the_cosine_between_features_and_centres(rng):
    head = kf.heads.CosineHead(7, dtype="float64")
    features = rng.normal(size=(5, 6))
    out = np.asarray(ops.convert_to_numpy(head(features)))
    kernel = np.asarray(ops.convert_to_numpy(head.kernel))
    assert out.shape == (5, 7)
    np.testing.assert_allclose(out, ref.head(features, kernel), atol=1e-12 if FLOAT64 else 1e-6)
    assert np.all(np.abs(out) <= 1 + 1e-6)


def test_output_is_independent_of_feature_and_centre_norms(rng):
    head = kf.heads.CosineHead(4)
    features = rng.normal(size=(3, 5)).astype("float32")
    before = np.asarray(ops.convert_to_numpy(head(features)))
    head.kernel.assign(head.kernel * 17.0)
    after = np.asarray(ops.convert_to_numpy(head(features * 0.01)))
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_centers_are_unit_rows(rng):
    head = kf.heads.CosineHead(6)
    head.build((None, 3))
    centers = np.asarray(ops.convert_to_numpy(head.centers))
    assert centers.shape == (6, 3)
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1.0, atol=1e-6)
    kernel = np.asarray(ops.convert_to_numpy(head.kernel))
    np.testing.assert_allclose(centers, (kernel / np.linalg.norm(kernel, axis=0)).T, atol=1e-6)


def test_zero_features_give_zero_cosines_and_finite_gradients():
    head = kf.heads.CosineHead(3)
    head.build((None, 4))
    out = head(np.zeros((2, 4), "float32"))
    assert np.all(np.asarray(ops.convert_to_numpy(out)) == 0)
    _, (grad,) = value_and_grad(lambda f: ops.sum(kf.heads.l2_normalize(f)), np.zeros((2, 4), "float32"))
    assert finite(grad)


def test_gradient_matches_reference(rng):
    features = rng.normal(size=(3, 4))
    kernel = rng.normal(size=(4, 5))
    weights = rng.normal(size=(3, 5))

    def fn(f):
        cosines = ops.matmul(kf.heads.l2_normalize(f), kf.heads.l2_normalize(kernel, axis=0))
        return ops.sum(ops.multiply(weights, cosines))  # a NumPy array times a torch tensor fails

    _, (grad,) = value_and_grad(fn, features)
    numeric = numerical_gradient(lambda f: float(np.sum(weights * ref.head(f, kernel))), features)
    np.testing.assert_allclose(grad, numeric, **GRAD_TOL)


def _head_value_and_grads(head, features, kernel, weights):
    """sum(weights * head(features)) and its gradient w.r.t. features and the kernel, through the
    layer's own call (stateless, so the kernel is an argument on every backend)."""

    def fn(f, w):
        out, _ = head.stateless_call([w], [], f)
        return ops.sum(ops.multiply(weights, out))

    return value_and_grad(fn, features, kernel)


def test_layer_gradients_match_reference(rng):
    """The head's hand-written gradient vs central differences of the loop reference, w.r.t.
    both the features and the class centres, including a short centre and a long feature."""
    features = rng.normal(size=(4, 5))
    features[2] *= 50.0
    kernel = rng.normal(size=(5, 6))
    kernel[:, 2] *= 1e-3
    weights = rng.normal(size=(4, 6))
    head = kf.heads.CosineHead(6, dtype="float64" if FLOAT64 else None)
    head.build((None, 5))
    value, (g_features, g_kernel) = _head_value_and_grads(head, features, kernel, weights)

    def reference(f, w):
        return float(np.sum(weights * ref.head(f, w)))

    assert value == pytest.approx(reference(features, kernel), rel=1e-5)
    np.testing.assert_allclose(
        g_features, numerical_gradient(lambda f: reference(f, kernel), features), **GRAD_TOL
    )
    # A centre's gradient scales as 1 / its norm: compare them scaled back to unit norm, with a
    # step small against the short centre's norm (1e-3).
    norms = np.linalg.norm(kernel, axis=0)
    numeric = numerical_gradient(lambda w: reference(features, w), kernel, step=1e-8)
    np.testing.assert_allclose(g_kernel * norms, numeric * norms, **GRAD_TOL)
    # The cosine ignores a centre's norm, so its gradient has no radial part.
    radial = np.sum(g_kernel * kernel, axis=0)
    np.testing.assert_allclose(radial, 0.0, atol=1e-4 if FLOAT64 else 1e-2)


def test_zero_centre_gives_zero_cosines_and_finite_gradients(rng):
    kernel = rng.normal(size=(4, 3))
    kernel[:, 1] = 0.0
    features = rng.normal(size=(2, 4))
    head = kf.heads.CosineHead(3)
    head.build((None, 4))
    out, _ = head.stateless_call([kernel.astype("float32")], [], features.astype("float32"))
    assert np.all(np.asarray(ops.convert_to_numpy(out))[:, 1] == 0)
    _, grads = _head_value_and_grads(
        head, features.astype("float32"), kernel.astype("float32"), np.ones((2, 3), "float32")
    )
    assert all(finite(g) for g in grads)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "float16", "bfloat16"])
def test_head_computes_in_float32_under_half_precision(policy):
    keras.config.set_dtype_policy(policy)
    head = kf.heads.CosineHead(3)
    out = head(np.ones((2, 4), "float32"))
    assert head.compute_dtype == "float32" and head.variable_dtype == "float32"
    assert "float32" in str(out.dtype)


def test_config_round_trip():
    head = kf.heads.CosineHead(12, kernel_initializer="he_normal", kernel_regularizer="l2", name="h")
    clone = check_config_round_trip(head)
    assert clone.num_classes == 12 and clone.name == "h"


@pytest.mark.parametrize("num_classes", [1, 0, 2.5, "10", True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2; got"):
        kf.heads.CosineHead(num_classes)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"features of shape \[batch, dim\].*got input shape \(None, 4, 4\)"):
        kf.heads.CosineHead(3).build((None, 4, 4))


def test_model_with_head_and_arcface_saves_loads_and_keeps_training(rng, tmp_path):
    x = rng.normal(size=(32, 6)).astype("float32")
    y = rng.integers(0, 4, size=32)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), kf.heads.CosineHead(4)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=kf.losses.ArcFaceLoss(scale=16.0))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    loaded = check_save_load_keeps_training(model, x, y, tmp_path)
    assert isinstance(loaded.layers[-1], kf.heads.CosineHead)
    assert loaded.loss.margin == 0.5 and loaded.loss.scale == 16.0


# ---- extreme feature rows in every precision (issue 13) ---------------------------------------

# The largest finite magnitudes used for "huge" rows: near each dtype's limit, with room for the
# four entries' squares to overflow the dtype itself.
_HUGE = {"float32": 1e30, "float16": 6e4, "bfloat16": 1e30}
_TINY = {"float32": 1e-30, "float16": 1e-7, "bfloat16": 1e-30}  # 1e-7 is subnormal in float16


def extreme_rows(kind, dtype, rng, dim=4):
    """An ordinary row, then a zero, tiny or huge one, as `dtype`."""
    direction = np.array([1.0, -2.0, 0.5, 3.0])[:dim]
    special = {"zero": 0.0 * direction, "tiny": _TINY[dtype] * direction,
               "huge": _HUGE[dtype] * direction / 3.0}[kind]
    rows = np.stack([rng.normal(size=dim), special, rng.normal(size=dim)])
    return ops.cast(rows.astype("float32"), dtype), direction


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["zero", "tiny", "huge"])
def test_gradients_stay_finite_for_zero_tiny_and_huge_rows(kind, dtype, rng):
    """No Inf or NaN in the gradient w.r.t. the features (in their own dtype) or the centres."""
    head = kf.heads.CosineHead(3)
    head.build((None, 4))
    kernel = np.asarray(ops.convert_to_numpy(head.kernel))
    features, direction = extreme_rows(kind, dtype, rng)
    loss = kf.losses.ArcFaceLoss()

    def fn(f, w):
        return loss(np.array([0, 1, 2]), head.stateless_call([w], [], f)[0])

    value, (g_features, g_kernel) = value_and_grad(fn, features, kernel)
    assert np.isfinite(value)
    assert str(g_features.dtype) == dtype
    assert finite(g_features) and finite(g_kernel)
    out = np.asarray(ops.convert_to_numpy(head.stateless_call([kernel], [], features)[0]))
    if kind == "huge":  # the direction counts, not the magnitude (no overflow to cos = 0)
        expected = ref.head(direction[None], kernel)[0]
        np.testing.assert_allclose(out[1], expected, atol=1e-2 if dtype != "float32" else 1e-6)


@pytest.mark.parametrize("kind", ["zero", "tiny", "huge"])
def test_l2_normalize_of_extreme_rows_matches_the_reference(kind, rng):
    features, direction = extreme_rows(kind, "float32", rng)
    out = np.asarray(ops.convert_to_numpy(kf.heads.l2_normalize(features)))
    values = np.asarray(ops.convert_to_numpy(features), "float64")
    # x / max(||x||, 1e-6), in float64 with the norm computed without overflow.
    for got, row in zip(out, values):
        scale = np.max(np.abs(row))
        norm = scale * np.sqrt(np.sum((row / scale) ** 2)) if scale else 0.0
        np.testing.assert_allclose(got, row / max(norm, 1e-6), rtol=1e-5, atol=1e-30)


def test_mixed_float16_fit_step_with_a_zero_feature_row_updates_every_weight():
    """Before: the zero row's gradient g/sqrt(epsilon) ≈ 1e6·g overflowed float16 in the input
    cast's backward pass, whatever the loss scale, so the loss-scale optimizer skipped the step
    (and every later one: the row's gradient does not shrink with the scale below ~1e-3)."""
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(4, kernel_initializer="identity", bias_initializer="zeros"),
        kf.heads.CosineHead(3),
    ])
    # A loss scale at which the ordinary rows' gradients fit float16, so that only the zero row
    # could overflow (Keras's default starts at 32768 and skips steps until it has adapted).
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01), initial_scale=1.0)
    model.compile(optimizer=optimizer, loss=kf.losses.ArcFaceLoss())
    x = np.array([[0, 0, 0, 0], [1, 2, 3, 4], [-1, 0.5, 2, 1], [3, -1, 0, 2]], "float32")
    y = np.array([0, 1, 2, 1])
    before = [np.asarray(w) for w in model.trainable_weights]
    scale_before = float(model.optimizer.scale_loss(1.0))
    loss = model.train_on_batch(x, y)
    assert math.isfinite(float(loss))
    for old, weight in zip(before, model.trainable_weights):
        new = np.asarray(weight)
        assert np.all(np.isfinite(new)), weight.path
        assert not np.array_equal(old, new), f"{weight.path} did not move: the step was skipped"
    assert float(model.optimizer.scale_loss(1.0)) == scale_before  # no overflow seen
