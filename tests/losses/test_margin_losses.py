import math

import keras
import margin_reference as ref
import numpy as np
import pytest
from helpers import (
    FLOAT64,
    GRAD_TOL,
    TOL,
    check_config_round_trip,
    finite,
    numerical_gradient,
    value_and_grad,
)
from keras import ops

import keras_facemargin as kf

pytestmark = pytest.mark.multibackend

MARGIN_NAMES = [n for n in kf.losses.names() if isinstance(kf.losses.get(n), kf.losses.MarginSoftmaxLoss)]

# name -> (constructor kwargs, the reference's kwargs); scales kept moderate for float64 tolerances.
CASES = {
    "normface": dict(scale=16.0),
    "sphereface": dict(margin=4, scale=8.0),
    "cosface": dict(margin=0.35, scale=16.0),
    "arcface": dict(margin=0.5, scale=16.0),
    "arcface_easy": dict(margin=0.5, scale=16.0, easy_margin=True),
    "combined_margin": dict(m1=1.0, m2=0.3, m3=0.2, scale=16.0),
    "combined_margin_m1": dict(m1=1.35, m2=0.25, m3=0.15, scale=16.0),
    "combined_margin_cm2": dict(m1=0.9, m2=0.4, m3=0.15, scale=16.0),  # the ArcFace paper's CM2
}


def case_name(case):
    """The registered name a case is built from: the longest name that the case starts with."""
    return max((n for n in kf.losses.names() if case == n or case.startswith(n + "_")), key=len)


def make_loss(case, **extra):
    name = case_name(case)
    return kf.losses.get(name, **CASES[case], **extra), name


def ref_kwargs(case):
    return {k: v for k, v in CASES[case].items() if k != "scale"}


def random_cosines(rng, batch, classes, labels):
    """Cosines of random unit features/centres, with some targets pushed close to θ = π."""
    features = rng.normal(size=(batch, 8))
    centres = rng.normal(size=(8, classes))
    for i in range(0, batch, 3):
        features[i] = -centres[:, labels[i]] + 0.05 * rng.normal(size=8)
    return ref.head(features, centres)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("labels_kind", ["sparse", "sparse_column", "dense_mixture"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_matches_float64_reference(case, labels_kind, smoothing, rng):
    batch, classes = 9, 6
    labels = rng.integers(0, classes, size=batch)
    cosines = random_cosines(rng, batch, classes, labels)
    if labels_kind == "sparse":
        y = labels
    elif labels_kind == "sparse_column":
        y = labels[:, None]
    else:  # mixup-style rows: λ on one class, 1 − λ on another
        y = np.zeros((batch, classes))
        lam = rng.uniform(0.2, 0.8, size=batch)
        y[np.arange(batch), labels] = lam
        y[np.arange(batch), (labels + 1) % classes] += 1 - lam
    loss, name = make_loss(case, label_smoothing=smoothing, dtype="float64")
    expected = ref.loss(name, cosines, y if labels_kind != "sparse_column" else labels,
                        CASES[case]["scale"], smoothing, **ref_kwargs(case))
    got = float(loss(y.astype("float64"), cosines))
    assert got == pytest.approx(expected, **TOL)


def test_reference_covers_the_fallback_region(rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    theta = np.arccos(cosines[np.arange(9), labels])
    assert np.any(theta + 0.5 > math.pi)


@pytest.mark.parametrize(
    "loss",
    [
        kf.losses.CosFaceLoss(margin=0.0, scale=20.0),
        kf.losses.ArcFaceLoss(margin=0.0, scale=20.0),
        kf.losses.CombinedMarginLoss(m1=1.0, m2=0.0, m3=0.0, scale=20.0),
        kf.losses.SphereFaceLoss(margin=1, scale=20.0),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_zero_margin_is_normface(loss, rng):
    labels = rng.integers(0, 7, size=12)
    cosines = random_cosines(rng, 12, 7, labels)
    expected = ref.loss("normface", cosines, labels, 20.0)
    assert float(loss(labels, cosines)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "combined, reference",
    [
        (dict(m1=1.0, m2=0.5, m3=0.0), ("arcface", dict(margin=0.5))),
        (dict(m1=1.0, m2=0.0, m3=0.35), ("cosface", dict(margin=0.35))),
    ],
)
def test_combined_margin_special_cases(combined, reference, rng):
    labels = rng.integers(0, 6, size=12)
    cosines = random_cosines(rng, 12, 6, labels)
    loss = kf.losses.CombinedMarginLoss(**combined, scale=32.0, dtype="float64")
    name, kwargs = reference
    assert float(loss(labels, cosines)) == pytest.approx(
        ref.loss(name, cosines, labels, 32.0, **kwargs), **TOL
    )


def test_label_smoothing_targets_from_the_gradient():
    """d(loss)/d(logits) = p − t, so the targets can be read off the gradient: ε = 0.1, 5 classes."""
    cosines = np.array([[0.1, -0.3, 0.2, 0.5, 0.0]])
    scale = 10.0
    loss = kf.losses.NormFaceLoss(scale=scale, label_smoothing=0.1, dtype="float64")
    _, (grad,) = value_and_grad(lambda c: loss(np.array([3]), c), cosines)
    logits = scale * cosines[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    targets = probs - grad[0] / scale
    np.testing.assert_allclose(targets, [0.025, 0.025, 0.025, 0.9, 0.025], atol=1e-12 if FLOAT64 else 1e-6)


def test_mixup_row_is_lambda_weighted_sum(rng):
    labels_a, labels_b, lam = np.array([0, 2]), np.array([1, 0]), 0.3
    cosines = random_cosines(rng, 2, 4, labels_a)
    y = lam * np.eye(4)[labels_a] + (1 - lam) * np.eye(4)[labels_b]
    loss = kf.losses.ArcFaceLoss(scale=16.0, dtype="float64")
    expected = lam * ref.loss("arcface", cosines, labels_a, 16.0) + (1 - lam) * ref.loss(
        "arcface", cosines, labels_b, 16.0
    )
    assert float(loss(y, cosines)) == pytest.approx(expected, **TOL)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_gradients_through_the_head_match_reference(case, dense, rng):
    """Gradients w.r.t. features and class weights vs central differences of the reference."""
    batch, dim, classes = 5, 4, 3
    labels = np.array([0, 1, 2, 1, 0])
    kernel = rng.normal(size=(dim, classes))
    features = rng.normal(size=(batch, dim))
    features[1] = -kernel[:, 1] + 0.1 * rng.normal(size=dim)  # θ + m > π for the arc margins
    y = np.eye(classes)[labels] if dense else labels
    if dense:
        y = 0.7 * y + 0.3 * np.eye(classes)[(labels + 1) % classes]
    loss, name = make_loss(case, dtype="float64")

    def fn(f, w):
        return loss(y, _cosine(f, w))

    value, (g_features, g_kernel) = value_and_grad(fn, features, kernel)

    def ref_fn_features(f):
        return ref.loss(name, ref.head(f, kernel), y, CASES[case]["scale"], **ref_kwargs(case))

    def ref_fn_kernel(w):
        return ref.loss(name, ref.head(features, w), y, CASES[case]["scale"], **ref_kwargs(case))

    assert value == pytest.approx(ref_fn_features(features), **TOL)
    np.testing.assert_allclose(g_features, numerical_gradient(ref_fn_features, features),
                               **GRAD_TOL)
    np.testing.assert_allclose(g_kernel, numerical_gradient(ref_fn_kernel, kernel), **GRAD_TOL)


def _cosine(features, kernel):
    """The CosineHead's computation with an explicit kernel, so gradients reach it on any backend."""
    f = kf.heads.l2_normalize(features, axis=-1)
    w = kf.heads.l2_normalize(kernel, axis=0)
    return ops.matmul(f, w)


@pytest.mark.skipif(not FLOAT64, reason="needs float64 throughout (TensorFlow backend)")
@pytest.mark.parametrize("case", list(CASES))
def test_finite_difference_gradient_of_the_implementation(case, rng):
    labels = rng.integers(0, 5, size=6)
    cosines = np.clip(random_cosines(rng, 6, 5, labels), -0.999, 0.999)
    loss, _ = make_loss(case, label_smoothing=0.05, dtype="float64")
    _, (grad,) = value_and_grad(lambda c: loss(labels, c), cosines)

    def numeric(c):
        return float(loss(labels, c))

    # A kink of the fallback/piecewise margins can sit between the two probes: skip those entries.
    theta = np.arccos(cosines)
    numerical = numerical_gradient(numeric, cosines, step=1e-7)
    near_kink = np.zeros_like(cosines, dtype=bool)
    if "arcface" in case or "combined" in case:
        p = CASES[case]
        kink = (math.pi - p.get("margin", p.get("m2", 0.0))) / p.get("m1", 1.0)
        for i, y in enumerate(labels):
            near_kink[i, y] = abs(theta[i, y] - kink) < 1e-4
    np.testing.assert_allclose(grad[~near_kink], numerical[~near_kink], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", [c for c in CASES if c != "arcface_easy"])
def test_margin_is_monotonic_in_theta(case):
    loss, _ = make_loss(case, dtype="float64")
    theta = np.linspace(0.0, math.pi, 20001)
    psi = np.asarray(ops.convert_to_numpy(loss.apply_margin(np.cos(theta))))
    assert np.all(np.diff(psi) <= 1e-12), "ψ must not increase with θ"
    assert np.all(psi <= np.cos(theta) + 1e-12), "a margin never makes the target easier"


def test_sphereface_extension_is_continuous():
    loss = kf.losses.SphereFaceLoss(margin=4, dtype="float64")
    theta = np.linspace(1e-6, math.pi - 1e-6, 100001)
    psi = np.asarray(ops.convert_to_numpy(loss.apply_margin(np.cos(theta))))
    assert np.max(np.abs(np.diff(psi))) < 1e-3
    assert psi[0] == pytest.approx(1.0, abs=1e-6) and psi[-1] == pytest.approx(-7.0, abs=1e-6)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", MARGIN_NAMES)
def test_no_nan_at_zero_features_and_theta_0_and_pi(name, policy):
    """A training step from features at zero, at θ = 0 and at θ = π leaves every weight finite."""
    keras.config.set_dtype_policy(policy)
    loss = kf.losses.get(name)
    head = kf.heads.CosineHead(3, loss=loss)  # the head each loss needs (norms, state, sub-centres)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(4, kernel_initializer="identity", bias_initializer="zeros"),
        head,
    ])
    kernel = np.asarray(ops.convert_to_numpy(head.kernel))
    features = np.stack([
        np.zeros(4),           # zero feature
        kernel[:, 0],          # θ = 0 to its class
        -kernel[:, 1],         # θ = π to its class
        kernel[:, 2] * 1e-30,  # tiny but non-zero
    ]).astype("float32")
    labels = np.array([0, 0, 1, 2])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    value = model.train_on_batch(features, labels)
    assert math.isfinite(float(value))
    for weight in model.weights:
        assert finite(weight), weight.path


def test_head_and_loss_under_mixed_precision_stay_float32():
    keras.config.set_dtype_policy("mixed_float16")
    head = kf.heads.CosineHead(4)
    out = head(np.random.randn(3, 5).astype("float16"))
    assert head.compute_dtype == "float32" and head.kernel.dtype == "float32"
    assert "float32" in str(out.dtype)
    assert finite(kf.losses.ArcFaceLoss()(np.array([0, 1, 2]), ops.cast(out, "float16")))


# ---- bad input -------------------------------------------------------------------------------


def test_labels_out_of_range_raise_eagerly():
    loss = kf.losses.ArcFaceLoss()
    cos = np.zeros((3, 10), "float32")
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=10\); got .*max label 12"):
        loss(np.array([1, 2, 12]), cos)
    with pytest.raises(ValueError, match="labels must be in"):
        loss(np.array([-1, 2, 3]), cos)
    with pytest.raises(ValueError, match="integer class labels; got 1.5"):
        loss(np.array([1.5, 2, 3]), cos)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function graph")
def test_labels_out_of_range_raise_in_a_graph():
    import tensorflow as tf

    loss = kf.losses.CosFaceLoss()
    fn = tf.function(lambda y, c: loss(y, c))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be in"):
        fn(tf.constant([1, 2, 12]), tf.zeros((3, 10)))
    fn_off = tf.function(lambda y, c: kf.losses.CosFaceLoss(check_inputs=False)(y, c))
    fn_off(tf.constant([1, 2, 3]), tf.zeros((3, 10)))


def test_invalid_labels_give_nan_where_nothing_can_raise():
    """Under XLA (TensorFlow) or jax.jit, bad labels poison the loss with NaN instead."""
    loss = kf.losses.ArcFaceLoss()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda y, c: loss(y, c), jit_compile=True)
    elif keras.backend.backend() == "jax":
        import jax

        fn = jax.jit(lambda y, c: loss(y, c))
    else:
        pytest.skip("no compiler")
    good = float(fn(np.array([1, 2, 3]), np.zeros((3, 10), "float32")))
    bad = float(fn(np.array([1, 2, 12]), np.zeros((3, 10), "float32")))
    assert math.isfinite(good) and math.isnan(bad)
    raw = float(fn(np.array([1, 2, 3]), np.full((3, 10), 5.0, "float32")))
    assert math.isnan(raw)


def test_raw_logits_are_refused():
    with pytest.raises(ValueError, match=r"cosines in \[-1, 1\].*got values in \[-3, 7\].*CosineHead"):
        kf.losses.ArcFaceLoss()(np.array([0, 1]), np.array([[7.0, -3.0], [0.0, 1.0]], "float32"))


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        (np.array([0, 1]), np.zeros((2,), "float32"), r"y_pred must have shape \[batch, num_classes\]"),
        (np.array([0, 1]), np.zeros((2, 3, 4), "float32"), "y_pred must have shape"),
        (np.array([0]), np.zeros((1, 1), "float32"), "num_classes >= 2"),
        (np.array([0, 1, 2]), np.zeros((2, 4), "float32"), "same batch size"),
        (np.zeros((2, 3)), np.zeros((2, 4), "float32"), r"dense y_true must have shape \[batch, num_classes=4\]"),
        (np.full((2, 4), 0.5), np.zeros((2, 4), "float32"), "sum to 1"),
        (np.zeros((2, 4, 1)), np.zeros((2, 4), "float32"), "y_true must be integer labels"),
    ],
)
def test_bad_shapes_and_dense_rows(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        kf.losses.CosFaceLoss()(y_true, y_pred)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: kf.losses.SphereFaceLoss(margin=2.5), "margin must be a positive integer.*got 2.5"),
        (lambda: kf.losses.SphereFaceLoss(margin=0), "margin must be a positive integer"),
        (lambda: kf.losses.ArcFaceLoss(scale=-1.0), r"scale must be a finite number > 0; got -1.0"),
        (lambda: kf.losses.ArcFaceLoss(margin=2.0), r"margin must be in \[0.0, 1.57.*radians; got 2.0"),
        (lambda: kf.losses.CosFaceLoss(margin=-0.1), r"margin must be in \[0.0, 1.0\]; got -0.1"),
        (lambda: kf.losses.CombinedMarginLoss(m1=0.0), r"m1 must be a finite number > 0; got 0.0"),
        (lambda: kf.losses.NormFaceLoss(label_smoothing=1.0), r"label_smoothing must be in \[0.0, 1.0\)"),
        (lambda: kf.losses.get("arcfce"), "Unknown loss 'arcfce'; known names: adacos, adaface, arcface, circle"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- registry and serialization ------------------------------------------------------------


@pytest.mark.parametrize("name", MARGIN_NAMES)
def test_registry_and_config_round_trip(name):
    scaled = "scale" in kf.losses.get(name).get_config()  # AdaCos sets its own
    loss = kf.losses.get(name, label_smoothing=0.1, **({"scale": 12.0} if scaled else {}))
    clone = check_config_round_trip(loss)
    assert clone.label_smoothing == 0.1 and (clone.scale == 12.0 or not scaled)
    assert kf.losses.get(keras.losses.serialize(loss)).get_config() == loss.get_config()
    assert keras.losses.get(keras.losses.serialize(loss)).get_config() == loss.get_config()


@pytest.mark.parametrize("case", list(CASES))
def test_margin_slope_is_the_derivative_of_the_margin(case):
    """The backward pass's dψ/d cos θ vs central differences of ψ, over all of θ in (0, π):
    every SphereFace piece and the arc margins' fallback beyond θ + m = π."""
    loss, _ = make_loss(case, dtype="float64" if FLOAT64 else None)
    # In float32 the probes need a coarse step, which must not cross cos θ = ±1.
    edge = 0.01 if FLOAT64 else 0.1
    theta = np.linspace(edge, math.pi - edge, 997)
    cosine = np.cos(theta)
    step = 1e-6 if FLOAT64 else 1e-3

    def psi(c):
        return np.asarray(ops.convert_to_numpy(loss.apply_margin(ops.convert_to_tensor(c))), "float64")

    numeric = (psi(cosine + step) - psi(cosine - step)) / (2 * step)
    slope = np.asarray(ops.convert_to_numpy(loss.margin_slope(ops.convert_to_tensor(cosine))))
    # Skip probes that straddle a kink (piece boundaries, the fallback's start, easy margin's 90°).
    smooth = np.abs(numeric - np.roll(numeric, 1)) < 0.5 * (1 + np.abs(numeric))
    smooth &= np.abs(numeric - np.roll(numeric, -1)) < 0.5 * (1 + np.abs(numeric))
    assert smooth.mean() > 0.95
    np.testing.assert_allclose(slope[smooth], numeric[smooth], rtol=1e-4 if FLOAT64 else 2e-2,
                               atol=1e-5 if FLOAT64 else 2e-2)


class _QuadraticMargin(kf.losses.ArcFaceLoss):
    """A user's margin that overrides ψ only (and inherits ArcFace's ψ', which does not fit)."""

    def apply_margin(self, cosine):
        return cosine - 0.3 * (1.0 - cosine) ** 2 - 0.1


@pytest.mark.skipif(not FLOAT64, reason="needs float64 throughout (TensorFlow backend)")
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_subclass_overriding_only_the_margin_gets_exact_gradients(label_smoothing, rng):
    labels = rng.integers(0, 5, size=6)
    cosines = np.clip(random_cosines(rng, 6, 5, labels), -0.999, 0.999)
    loss = _QuadraticMargin(scale=8.0, label_smoothing=label_smoothing, dtype="float64")
    _, (grad,) = value_and_grad(lambda c: loss(labels, c), cosines)

    def reference(c):  # softmax cross-entropy written out, ψ on the target
        total = 0.0
        on, off = 1.0 - label_smoothing, label_smoothing / 4
        for row, y in zip(c, labels, strict=True):
            logits = [8.0 * (v - 0.3 * (1 - v) ** 2 - 0.1 if j == y else v) for j, v in enumerate(row)]
            lse = math.log(sum(math.exp(z) for z in logits))
            total += sum((on if j == y else off) * (lse - z) for j, z in enumerate(logits))
        return total / len(labels)

    assert float(loss(labels, cosines)) == pytest.approx(reference(cosines), rel=1e-9)
    np.testing.assert_allclose(grad, numerical_gradient(reference, cosines), rtol=1e-5, atol=1e-7)


# ---- float labels (issue 13) ------------------------------------------------------------------


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function graph")
def test_non_integral_float_labels_raise_in_a_graph():
    import tensorflow as tf

    loss = kf.losses.ArcFaceLoss()
    fn = tf.function(lambda y, c: loss(y, c))
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true must hold integer class labels"):
        fn(tf.constant([1.0, 2.9, 3.0]), tf.zeros((3, 10)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true must hold integer class labels"):
        fn(tf.constant([1.0, math.nan, 3.0]), tf.zeros((3, 10)))
    assert math.isfinite(float(fn(tf.constant([1.0, 2.0, 3.0]), tf.zeros((3, 10)))))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="Keras's compiled train step on TF")
def test_float_labels_in_fit_are_refused_not_truncated(rng):
    """CosineHead + margin loss in Keras's (graph-mode) train step: 2.9 must not train as 2."""
    import tensorflow as tf

    x = rng.normal(size=(4, 5)).astype("float32")
    model = keras.Sequential([keras.Input((5,)), kf.heads.CosineHead(3)])
    model.compile(optimizer="sgd", loss=kf.losses.CosFaceLoss())
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true must hold integer class labels"):
        model.fit(x, np.array([0.0, 2.9, 1.0, 2.0], "float32"), epochs=1, batch_size=4, verbose=0)
    history = model.fit(x, np.array([0.0, 2.0, 1.0, 2.0], "float32"), epochs=1, batch_size=4, verbose=0)
    assert math.isfinite(history.history["loss"][0])


def test_non_integral_float_labels_give_nan_where_nothing_can_raise():
    loss = kf.losses.ArcFaceLoss()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda y, c: loss(y, c), jit_compile=True)
    elif keras.backend.backend() == "jax":
        import jax

        fn = jax.jit(lambda y, c: loss(y, c))
    else:
        pytest.skip("no compiler")
    cos = np.zeros((3, 10), "float32")
    assert math.isfinite(float(fn(np.array([1.0, 2.0, 3.0], "float32"), cos)))
    assert math.isnan(float(fn(np.array([1.0, 2.9, 3.0], "float32"), cos)))
    assert math.isnan(float(fn(np.array([1.0, -0.5, 3.0], "float32"), cos)))  # would cast to 0


# ---- the combined margin's admissible range (issue 13) --------------------------------------

# (m1, m2, m3) of the combined-margin literature: InsightFace's README table and scripts
# (SphereFace-like 1.5 and 1.35, (1.2, 0.4, 0), (1.1, 0, 0.35), CM1 (1, 0.3, 0.2), CM2 (0.9, 0.4,
# 0.15), (0.9, 0.5, 0)), and the ArcFace paper's CM1/CM2.
LITERATURE = [(1.0, 0.3, 0.2), (0.9, 0.4, 0.15), (1.2, 0.4, 0.0), (1.1, 0.0, 0.35), (1.5, 0.0, 0.0),
              (1.35, 0.0, 0.0), (0.9, 0.5, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (4.0, 0.0, 0.0)]


@pytest.mark.parametrize("m1, m2, m3", LITERATURE)
def test_combined_margins_of_the_literature_are_accepted_monotonic_and_margins(m1, m2, m3):
    loss = kf.losses.CombinedMarginLoss(m1=m1, m2=m2, m3=m3, dtype="float64" if FLOAT64 else None)
    # Within 1e-3 rad of 0 and π the package reads θ from a clipped cosine (finite arccos slope).
    theta = np.linspace(1e-3, math.pi - 1e-3, 4001)
    psi = np.asarray(ops.convert_to_numpy(loss.apply_margin(np.cos(theta))), "float64")
    expected = [ref.psi("combined_margin", math.cos(t), m1=m1, m2=m2, m3=m3) for t in theta]
    np.testing.assert_allclose(psi, expected, atol=1e-9 if FLOAT64 else 2e-5)
    tol = 1e-12 if FLOAT64 else 1e-5
    assert np.all(np.diff(psi) <= tol), "ψ must not increase with θ"
    assert np.all(psi <= np.cos(theta) + tol), "ψ(θ) <= cos θ"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(m1=0.5, m2=0.1, m3=0.0), r"\(m1, m2, m3\) = \(0.5, 0.1, 0.0\) is not a margin: ψ\(θ\) = "
                                       r"cos\(m1·θ \+ m2\) − m3 exceeds cos θ .* at θ = "),
        (dict(m1=0.9, m2=0.0, m3=0.0), r"is not a margin: ψ\(θ\).*exceeds cos θ"),
        (dict(m1=1.0, m2=0.5, m3=-0.2), r"is not a margin"),
        (dict(m1=-1.0), r"m1 must be a finite number > 0; got -1.0"),
        (dict(m1=math.inf), r"m1 must be a finite number > 0; got inf"),
        (dict(m2=-0.1), r"m2 must be in \[0.0, 3.14159.*\) radians.*; got -0.1"),
        (dict(m2=math.pi), r"m2 must be in \[0.0, 3.14159"),
        (dict(m3=math.nan), r"m3 must be a finite number; got nan"),
        (dict(m1="1"), r"m1 must be a finite number > 0; got '1'"),
    ],
)
def test_combined_margin_refuses_only_what_is_not_a_margin(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kf.losses.CombinedMarginLoss(**kwargs)


def test_combined_margin_accepts_negative_m3_where_the_angle_margin_covers_it():
    """ψ = cos(θ + 0.5) + 0.1 stays below cos θ (their gap is at least 2 sin²(0.25) = 0.122)."""
    loss = kf.losses.CombinedMarginLoss(m1=1.0, m2=0.5, m3=-0.1)
    assert loss.m3 == -0.1


# ---- empty batches, non-finite cosines (issue 13) --------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_empty_batch_gives_zero_loss_and_zero_gradients(case, dense):
    loss, _ = make_loss(case)
    y = np.zeros((0, 5), "float32") if dense else np.zeros((0,), "int32")
    value, (grad,) = value_and_grad(lambda c: loss(y, c), np.zeros((0, 5), "float32"))
    assert value == 0.0 and grad.shape == (0, 5)


@pytest.mark.parametrize("bad, shown", [(math.nan, "NaN"), (math.inf, "Inf"), (-math.inf, "Inf")])
def test_non_finite_cosines_are_named_as_such_not_as_raw_logits(bad, shown):
    cos = np.array([[0.1, 0.2, 0.3], [0.0, bad, 0.5]], "float32")
    with pytest.raises(ValueError, match=rf"y_pred must be finite cosines; got {shown} in 1 of 2 rows") as info:
        kf.losses.ArcFaceLoss()(np.array([0, 1]), cos)
    assert "Raw logits" not in str(info.value)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function graph")
def test_non_finite_cosines_in_a_graph():
    """Inf trips the graph's range assertion, whose message names it; NaN (a diverged run's
    features) passes it and makes the loss NaN, which stops training as a NaN loss
    (`training.DivergenceGuard`, `keras.callbacks.TerminateOnNaN`) rather than as a TensorFlow
    error from inside the graph."""
    import tensorflow as tf

    fn = tf.function(lambda y, c: kf.losses.CosFaceLoss()(y, c))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"finite cosines .*NaN/Inf"):
        fn(tf.constant([0, 1]), tf.constant([[0.1, math.inf], [0.2, 0.3]]))
    assert math.isnan(float(fn(tf.constant([0, 1]), tf.constant([[0.1, math.nan], [0.2, 0.3]]))))
