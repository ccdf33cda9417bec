import math
import warnings

import keras
import numpy as np
import pair_reference as ref
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

PAIR_NAMES = ["triplet", "contrastive", "npair", "unified_pair", "circle", "supcon", "multi_similarity"]

# case -> (loss name, constructor kwargs, reference function with its kwargs); scales kept moderate
# for float64 tolerances (the defaults get their own test).
CASES = {
    "triplet_all_cosine": ("triplet", dict(margin=0.3, mining="all")),
    "triplet_all_euclidean_nonzero": (
        "triplet", dict(margin=0.5, mining="all", distance="euclidean", average_nonzero=True)),
    "triplet_all_squared": ("triplet", dict(margin=0.8, mining="all", distance="squared_euclidean")),
    "triplet_hard_cosine": ("triplet", dict(margin=0.3, mining="batch_hard")),
    "triplet_hard_euclidean_soft": (
        "triplet", dict(margin=0.0, mining="batch_hard", distance="euclidean", soft=True)),
    "triplet_hard_squared_nonzero": (
        "triplet", dict(margin=0.4, mining="batch_hard", distance="squared_euclidean",
                        average_nonzero=True)),
    "triplet_semi_cosine": ("triplet", dict(margin=0.3, mining="semi_hard")),
    "triplet_semi_euclidean": ("triplet", dict(margin=0.5, mining="semi_hard", distance="euclidean")),
    "triplet_semi_squared_soft_nonzero": (
        "triplet", dict(margin=0.2, mining="semi_hard", distance="squared_euclidean", soft=True,
                        average_nonzero=True)),
    "contrastive_euclidean": ("contrastive", dict(positive_margin=0.2, negative_margin=1.5)),
    "contrastive_squared": ("contrastive", dict(distance="squared_euclidean")),
    "contrastive_cosine": ("contrastive", dict(distance="cosine", positive_margin=0.9,
                                               negative_margin=0.1)),
    "npair_dot": ("npair", dict(margin=0.1)),
    "npair_cosine": ("npair", dict(margin=0.2, similarity="cosine")),
    "unified_pair": ("unified_pair", dict(gamma=8.0, margin=0.25)),
    "circle": ("circle", dict(margin=0.25, gamma=16.0)),
    "supcon": ("supcon", dict(temperature=0.5)),
    "multi_similarity": ("multi_similarity", dict(alpha=2.0, beta=10.0, base=0.3, epsilon=0.1)),
}

TRIPLET_DEFAULTS = dict(margin=0.2, distance="cosine", mining="semi_hard", soft=False,
                        average_nonzero=False)
CONTRASTIVE_MARGINS = {"euclidean": (0.0, 1.0), "squared_euclidean": (0.0, 1.0), "cosine": (1.0, 0.0)}


def make_loss(case, **extra):
    name, kwargs = CASES[case]
    return kf.losses.get(name, **kwargs, **extra)


def reference(case, x, labels, weights_from=None):
    """The reference loss; Circle's self-paced weights α are taken at `weights_from` if given."""
    name, kwargs = CASES[case]
    if name == "circle":
        return ref.circle(x, labels, **kwargs, weights_from=weights_from)
    if name == "triplet":
        return ref.triplet(x, labels, **{**TRIPLET_DEFAULTS, **kwargs})
    if name == "contrastive":
        distance = kwargs.get("distance", "euclidean")
        positive, negative = CONTRASTIVE_MARGINS[distance]
        return ref.contrastive(x, labels, kwargs.get("positive_margin", positive),
                               kwargs.get("negative_margin", negative), distance)
    if name == "npair":
        return ref.npair(x, labels, kwargs["margin"], kwargs.get("similarity", "dot"))
    return {"unified_pair": ref.unified, "circle": ref.circle, "supcon": ref.supcon,
            "multi_similarity": ref.multi_similarity}[name](x, labels, **kwargs)


# All of size 9 (and embeddings of dim 4): on JAX every new shape compiles each op anew.
BATCHES = {
    "pk": np.repeat(np.arange(3), 3),                       # P = 3 identities × K = 3
    "unbalanced": np.array([4, 4, 4, 4, 1, 1, 7, 7, 9]),    # 9 has one sample: no positive
    "singletons": np.array([0, 5, 0, 2, 3, 3, 6, 3, 8]),    # several identities of one sample
}


def embeddings(rng, labels, dim=4):
    """Clustered embeddings, so that every mining rule meets easy, hard and semi-hard cases."""
    centres = rng.normal(size=(int(labels.max()) + 1, dim))
    return 0.6 * centres[labels] + rng.normal(size=(len(labels), dim))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_loss_matches_float64_reference(case, batch, rng):
    labels = BATCHES[batch]
    x = embeddings(rng, labels)
    got = float(make_loss(case, dtype="float64")(labels.astype("float64"), x))
    assert got == pytest.approx(reference(case, x, labels), **TOL)
    if batch != "singletons":  # only 4 valid anchors there: some losses are legitimately 0
        assert got > 0


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_defaults_match_reference_with_column_labels(name, rng):
    labels = BATCHES["pk"]
    x = embeddings(rng, labels)
    loss = kf.losses.get(name, dtype="float64")
    config = {k: v for k, v in loss.get_config().items()
              if k not in ("name", "reduction", "dtype", "check_inputs", "cross_replica")}
    if name == "triplet":
        expected = ref.triplet(x, labels, **config)
    elif name == "contrastive":
        expected = ref.contrastive(x, labels, **config)
    else:
        expected = reference_by_name(name, x, labels, config)
    assert float(loss(labels[:, None], x)) == pytest.approx(expected, **TOL)


def reference_by_name(name, x, labels, config):
    return {"npair": ref.npair, "unified_pair": ref.unified, "circle": ref.circle,
            "supcon": ref.supcon, "multi_similarity": ref.multi_similarity}[name](x, labels, **config)


# A hand-made batch on a line (euclidean distances 1, 2, 3, with ties) where each rule's choice
# can be checked by hand: a = 0, p = 3 (label 0); n1 = 1, n2 = 2 (label 1); margin 0.5.
LINE = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
LINE_LABELS = np.array([0, 0, 1, 1])


@pytest.mark.parametrize(
    "mining, average_nonzero, expected",
    [
        # a and p: no negative is farther than the positive (3): the farthest (2) → 1.5 each;
        # n1 and n2: positive at 1, the negative at the same distance 1 is not farther, so the
        # one at 2 is taken → hinge 0.
        ("semi_hard", False, (1.5 + 1.5 + 0 + 0) / 4),
        ("batch_hard", False, (2.5 + 2.5 + 0.5 + 0.5) / 4),
        ("all", False, (2.5 + 1.5 + 2.5 + 1.5 + 0.5 + 0 + 0.5 + 0) / 8),
        ("all", True, 9.0 / 6),
    ],
)
def test_mining_rules_by_hand(mining, average_nonzero, expected):
    loss = kf.losses.TripletLoss(margin=0.5, distance="euclidean", mining=mining,
                                 average_nonzero=average_nonzero, dtype="float64")
    assert float(loss(LINE_LABELS, LINE)) == pytest.approx(expected, abs=1e-12)
    assert ref.triplet(LINE, LINE_LABELS, 0.5, "euclidean", mining,
                       average_nonzero=average_nonzero) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_reference(case, rng):
    """The implementation's gradient vs central differences of the loop-based reference."""
    labels = BATCHES["unbalanced"]
    x = embeddings(rng, labels)
    loss = make_loss(case, dtype="float64")
    value, (grad,) = value_and_grad(lambda e: loss(labels, e), x)
    numerical = numerical_gradient(lambda e: reference(case, e, labels, weights_from=x), x)
    assert value == pytest.approx(reference(case, x, labels), **TOL)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, numerical, **GRAD_TOL)


@pytest.mark.skipif(not FLOAT64, reason="needs float64 throughout (TensorFlow backend)")
@pytest.mark.parametrize("case", list(CASES))
def test_finite_difference_gradient_of_the_implementation(case, rng):
    """Circle's α are held constant in its gradient (as the paper defines it): compared separately."""
    if case == "circle":
        pytest.skip("the gradient of Circle loss is not the derivative of its value, by design")
    labels = np.array([0, 0, 0, 1, 1, 2])
    x = embeddings(rng, labels, dim=2)
    loss = make_loss(case, dtype="float64")
    _, (grad,) = value_and_grad(lambda e: loss(labels, e), x)
    numerical = numerical_gradient(lambda e: float(loss(labels, e)), x, step=1e-6)
    np.testing.assert_allclose(grad, numerical, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", list(CASES))
def test_duplicate_embeddings_give_finite_values_and_gradients(case, rng):
    """Zero distances (duplicates within and across identities, and zero vectors): no NaN."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 1])
    x = embeddings(rng, labels)
    x[1] = x[0]        # positive pair at distance 0
    x[3] = x[0]        # negative pair at distance 0
    x[6] = x[5]
    x[7] = 0.0         # a zero embedding
    loss = make_loss(case, dtype="float64")
    value, (grad,) = value_and_grad(lambda e: loss(labels, e), x)
    assert math.isfinite(value) and finite(grad)
    assert value == pytest.approx(reference(case, x, labels), rel=1e-6, abs=1e-6)
    f32 = make_loss(case)
    value32, (grad32,) = value_and_grad(lambda e: f32(labels, e), x.astype("float32"))
    assert math.isfinite(value32) and finite(grad32)


@pytest.mark.parametrize("name", PAIR_NAMES)
@pytest.mark.parametrize("labels", [np.arange(9), np.zeros(9)], ids=["all_distinct", "one_identity"])
def test_no_valid_pair_gives_zero_loss_and_zero_gradients(name, labels, rng):
    x = rng.normal(size=(9, 4))
    loss = kf.losses.get(name, dtype="float64")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value, (grad,) = value_and_grad(lambda e: loss(labels, e), x)
        value_and_grad(lambda e: loss(labels, e), x)
    assert value == 0.0
    assert np.all(grad == 0.0)
    distinct = [w for w in caught if "every label in this batch" in str(w.message)]
    if labels[1] != labels[0] and keras.backend.backend() == "tensorflow":
        assert len(distinct) == 1, "warns once per loss object"
    if labels[1] == labels[0]:
        assert not distinct


def test_all_distinct_labels_warn_once_with_the_advice():
    loss = kf.losses.TripletLoss()
    x = np.random.default_rng(0).normal(size=(9, 4)).astype("float32")
    with pytest.warns(UserWarning, match=r"TripletLoss: every label in this batch of 9 is distinct.*P×K"):
        assert float(loss(np.arange(9), x)) == 0.0
    with warnings.catch_warnings():
        # Ours only: Keras's torch convert_to_numpy raises NumPy 2's copy-keyword DeprecationWarning.
        warnings.simplefilter("error", UserWarning)
        loss(np.arange(9), x)


def test_anchors_without_positive_are_left_out_of_the_mean(rng):
    """A one-sample identity is no anchor (value 0, out of the mean) but a negative for the others."""
    labels = np.append(BATCHES["pk"][:8], 9)
    x = embeddings(rng, labels)
    loss = kf.losses.SupConLoss(temperature=0.5, dtype="float64")
    with_single = float(loss(labels, x))
    # The lone sample is left out as an anchor but enters the others' denominators.
    assert with_single == pytest.approx(ref.supcon(x, labels, 0.5), **TOL)
    per_anchor = kf.losses.SupConLoss(temperature=0.5, reduction="none", dtype="float64")
    values = np.asarray(ops.convert_to_numpy(per_anchor(labels, x)))
    assert values[-1] == 0.0 and values.sum() / len(values) == pytest.approx(with_single, **TOL)


def test_sample_weight_weighs_anchors(rng):
    labels = BATCHES["pk"]
    x = embeddings(rng, labels)
    loss = kf.losses.TripletLoss(mining="batch_hard", dtype="float64")
    per_anchor = np.asarray(ops.convert_to_numpy(
        kf.losses.TripletLoss(mining="batch_hard", reduction="none", dtype="float64")(labels, x)))
    weights = np.linspace(0.0, 2.0, len(labels))
    got = float(loss(labels, x, sample_weight=weights))
    assert got == pytest.approx(float(np.mean(per_anchor * weights)), **TOL)


# ---- the unified view ----------------------------------------------------------------------


def _split_target(cosines, labels):
    positive = cosines[np.arange(len(labels)), labels][:, None]
    others = np.stack([np.delete(row, y) for row, y in zip(cosines, labels)])
    return positive, others


@pytest.mark.parametrize(
    "margin_loss, gamma, margin",
    [
        (kf.losses.NormFaceLoss(scale=16.0, reduction="none", dtype="float64"), 16.0, 0.0),
        (kf.losses.CosFaceLoss(scale=30.0, margin=0.35, reduction="none", dtype="float64"), 30.0, 0.35),
    ],
    ids=["normface", "cosface"],
)
def test_unified_with_class_centres_is_the_margin_softmax(margin_loss, gamma, margin, rng):
    """Positive: the true class centre; negatives: the other centres; γ = scale, γm = scale·margin."""
    labels = rng.integers(0, 7, size=9)
    features = kf.heads.l2_normalize(rng.normal(size=(9, 4)))
    centres = kf.heads.l2_normalize(rng.normal(size=(7, 4)))
    cosines = np.asarray(ops.convert_to_numpy(ops.matmul(features, ops.transpose(centres))))
    positive, negatives = _split_target(cosines, labels)
    unified = kf.losses.unified_pair_loss(positive, negatives, gamma=gamma, margin=margin)
    expected = margin_loss(labels, cosines)
    np.testing.assert_allclose(ops.convert_to_numpy(unified), ops.convert_to_numpy(expected),
                               rtol=TOL["rel"], atol=TOL["abs"])


def test_unified_with_one_positive_and_gamma_1_is_npair(rng):
    """A batch of N pairs (one positive per anchor): unified, γ = 1, equals multi-class N-pair."""
    labels = np.append(np.repeat(np.arange(4), 2), 4)  # and a lone sample, a negative only
    x = embeddings(rng, labels)
    for margin in (0.0, 0.3):
        unified = kf.losses.UnifiedPairLoss(gamma=1.0, margin=margin, dtype="float64")
        npair = kf.losses.NPairLoss(margin=margin, similarity="cosine", dtype="float64")
        assert float(unified(labels, x)) == pytest.approx(float(npair(labels, x)), **TOL)


def test_unified_over_gamma_tends_to_the_triplet_hinge(rng):
    """One positive and one negative: (1/γ)·softplus(γ(s_n − s_p + m)) → max(s_n − s_p + m, 0)."""
    labels = np.array([0, 0, 1])
    x = rng.normal(size=(3, 4))
    x[2] = x[0] + 0.3 * rng.normal(size=4)  # a hard negative: the hinge is active for anchor 0
    margin = 0.3
    triplet = ref.triplet(x, labels, margin, "cosine", "all")
    assert triplet > 0
    gaps = []
    for gamma in (1.0, 10.0, 100.0, 1000.0):
        unified = kf.losses.UnifiedPairLoss(gamma=gamma, margin=margin, dtype="float64")
        value = float(unified(labels, x))
        # Keras's torch backend returns a float64 loss rounded to float32 (the reduction's
        # divide_no_nan demotes 64-bit floats there): allow that rounding, over γ.
        rounding = np.spacing(np.float32(value)) / gamma if keras.backend.backend() == "torch" else 0.0
        gap = value / gamma - triplet
        assert -1e-12 - rounding <= gap <= math.log(2.0) / gamma + 1e-9
        gaps.append(gap)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3
    s_p, s_n = np.array([[0.4]]), np.array([[0.5]])
    value = float(kf.losses.unified_pair_loss(s_p, s_n, gamma=1e4, margin=margin)[0]) / 1e4
    assert value == pytest.approx(0.4, abs=1e-4)


def test_unified_pair_loss_is_stable_for_large_gamma():
    s_p = np.array([[0.9, -0.8]])
    s_n = np.array([[0.95, -1.0, 0.2]])
    value = kf.losses.unified_pair_loss(s_p, s_n, gamma=1e4, margin=0.1)
    assert finite(value)
    expected = 1e4 * (0.95 + 0.8 + 0.1)
    assert float(value[0]) == pytest.approx(expected, rel=1e-6)


# ---- memory: no [batch, batch, batch] tensor -----------------------------------------------


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_no_intermediate_grows_like_batch_cubed(name):
    """Every tensor of the loss and its gradient holds at most a few batch² elements."""
    batch, dim = 48, 4
    labels = np.repeat(np.arange(12), 4).astype("float32")
    x = np.random.default_rng(0).normal(size=(batch, dim)).astype("float32")
    losses = [kf.losses.get(name)]
    if name == "triplet":
        losses = [kf.losses.TripletLoss(mining=m) for m in ("all", "batch_hard", "semi_hard")]
    for loss in losses:
        sizes = _intermediate_sizes(lambda e, loss=loss: loss(labels, e), x)
        assert max(sizes) <= 4 * batch * batch < batch**3, (loss.get_config(), max(sizes))


def _intermediate_sizes(fn, x):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.extend as jax_extend

        jaxpr = jax.make_jaxpr(jax.value_and_grad(fn))(x)
        sizes = []

        def visit(jpr):
            for eqn in jpr.eqns:
                sizes.extend(int(np.prod(v.aval.shape)) for v in eqn.outvars)
                for sub in jax_extend.core.jaxprs_in_params(eqn.params):
                    visit(sub)

        visit(jaxpr.jaxpr)
        return sizes
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(e):
            with tf.GradientTape() as tape:
                tape.watch(e)
                value = fn(e)
            return value, tape.gradient(value, e)

        graph = step.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
        return [int(np.prod(t.shape.as_list())) for op in graph.get_operations()
                for t in op.outputs if t.shape.rank is not None and None not in t.shape.as_list()]
    pytest.skip("no graph to inspect")


# ---- compiled code -------------------------------------------------------------------------


# Every loss once, and every mining rule and distance of the triplet loss. On JAX, whose eager
# ops are already jitted one by one, only the triplet mining rules (each jit costs seconds).
COMPILED_CASES = ["triplet_all_euclidean_nonzero", "triplet_hard_cosine", "triplet_semi_squared_soft_nonzero"]
if keras.backend.backend() == "tensorflow":
    COMPILED_CASES += ["contrastive_cosine", "npair_dot", "unified_pair", "circle", "supcon",
                       "multi_similarity"]


@pytest.mark.parametrize("case", COMPILED_CASES)
def test_compiled_equals_eager(case, rng):
    """Under XLA (TensorFlow, with an unknown batch size at trace time) and jax.jit."""
    labels = BATCHES["unbalanced"]
    x = embeddings(rng, labels).astype("float32")
    loss = make_loss(case)
    eager = float(loss(labels, x))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda y, e: loss(y, e), jit_compile=True,
                         input_signature=[tf.TensorSpec([None]), tf.TensorSpec([None, 4])])
        compiled = float(fn(labels.astype("float32"), x))
    elif keras.backend.backend() == "jax":
        import jax

        compiled = float(jax.jit(lambda y, e: loss(y, e))(labels, x))
    else:
        pytest.skip("no compiler")
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", PAIR_NAMES)
def test_half_precision_embeddings_are_computed_in_float32(name, policy, rng):
    keras.config.set_dtype_policy(policy)
    labels = BATCHES["pk"]
    x = embeddings(rng, labels).astype("float32")
    half = "float16" if policy == "mixed_float16" else "bfloat16"
    value = kf.losses.get(name)(labels, ops.cast(x, half))
    assert "float32" in str(value.dtype) and finite(value)
    assert float(value) == pytest.approx(float(kf.losses.get(name)(labels, x)), rel=0.05, abs=0.05)


# ---- training ------------------------------------------------------------------------------


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="compiling the train step dominates on JAX; test_compiled_equals_eager covers jit")
def test_semi_hard_triplet_training_on_digits_lowers_the_loss():
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target.astype("int32")
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(16),
        keras.layers.UnitNormalization(),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=kf.losses.TripletLoss(margin=0.2, mining="semi_hard"))
    x, y = x[:1792], y[:1792]  # 14 full batches of 128: one compiled step for fit and evaluate
    before = model.evaluate(x, y, batch_size=128, verbose=0)
    history = model.fit(x, y, epochs=4, batch_size=128, verbose=0).history["loss"]
    after = model.evaluate(x, y, batch_size=128, verbose=0)
    assert np.all(np.isfinite(history))
    assert after < 0.5 * before, (before, history, after)
    # The embedding now separates the digits: 1-nearest-neighbour accuracy on cosine similarity.
    e = np.asarray(ops.convert_to_numpy(model.predict(x, verbose=0)), dtype=np.float64)
    similarity = e @ e.T
    np.fill_diagonal(similarity, -np.inf)
    assert np.mean(y[np.argmax(similarity, axis=1)] == y) > 0.85


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        (np.array([0, 1, 1]), np.zeros((2, 4), "float32"),
         r"y_true and y_pred must have the same batch size; got y_true shape \(3,\) and y_pred shape \(2, 4\)"),
        (np.array([0, 1]), np.zeros((2,), "float32"), r"y_pred must have shape \[batch, dim\] \(embeddings\); got shape \(2,\)"),
        (np.array([0, 1]), np.zeros((2, 3, 4), "float32"), r"y_pred must have shape \[batch, dim\]"),
        (np.zeros((2, 2)), np.zeros((2, 4), "float32"), r"y_true must be integer identity labels \[batch\] or \[batch, 1\]; got shape \(2, 2\)"),
        (np.array([0.0, 1.5]), np.zeros((2, 4), "float32"), "y_true must hold integer identity labels; got 1.5"),
    ],
)
@pytest.mark.parametrize("name", PAIR_NAMES)
def test_bad_inputs(name, y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        kf.losses.get(name)(y_true, y_pred)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function graph")
def test_non_integer_labels_raise_in_a_graph_and_poison_under_xla():
    import tensorflow as tf

    loss = kf.losses.TripletLoss()
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 3)), tf.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="integer labels"):
        tf.function(lambda y, e: loss(y, e))(tf.constant([0.0, 0.0, 1.5, 1.5]), x)
    jit = tf.function(lambda y, e: loss(y, e), jit_compile=True)
    assert math.isnan(float(jit(tf.constant([0.0, 0.0, 1.5, 1.5]), x)))
    assert math.isfinite(float(jit(tf.constant([0.0, 0.0, 1.0, 1.0]), x)))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: kf.losses.TripletLoss(margin=-0.1), r"margin must be a finite number >= 0; got -0.1"),
        (lambda: kf.losses.TripletLoss(distance="manhattan"),
         r"distance must be one of 'cosine', 'euclidean', 'squared_euclidean'; got 'manhattan'"),
        (lambda: kf.losses.TripletLoss(mining="hard"),
         r"mining must be one of 'all', 'batch_hard', 'semi_hard'; got 'hard'"),
        (lambda: kf.losses.TripletLoss(mining="all", soft=True), r"soft=True needs mining='batch_hard' or 'semi_hard'"),
        (lambda: kf.losses.ContrastiveLoss(negative_margin=-1.0), r"negative_margin must be a finite number > 0; got -1.0"),
        (lambda: kf.losses.ContrastiveLoss(positive_margin=-0.5), r"positive_margin must be a finite number >= 0"),
        (lambda: kf.losses.ContrastiveLoss(positive_margin=2.0, negative_margin=1.0),
         r"negative_margin must be >= positive_margin \(a distance\); got negative_margin=1.0"),
        (lambda: kf.losses.ContrastiveLoss(distance="cosine", positive_margin=0.1, negative_margin=0.5),
         r"negative_margin must be <= positive_margin \(a similarity\)"),
        (lambda: kf.losses.ContrastiveLoss(distance="cosine", positive_margin=1.5), r"positive_margin must be in \[-1, 1\]"),
        (lambda: kf.losses.NPairLoss(margin=-1.0), "margin must be a finite number >= 0"),
        (lambda: kf.losses.NPairLoss(similarity="euclidean"), r"similarity must be one of 'dot', 'cosine'"),
        (lambda: kf.losses.UnifiedPairLoss(gamma=0.0), r"gamma must be a finite number > 0; got 0.0"),
        (lambda: kf.losses.UnifiedPairLoss(margin=-0.2), "margin must be a finite number >= 0"),
        (lambda: kf.losses.CircleLoss(margin=1.5), r"margin must be in \[0.0, 1.0\]; got 1.5"),
        (lambda: kf.losses.CircleLoss(gamma=-256), r"gamma must be a finite number > 0; got -256"),
        (lambda: kf.losses.SupConLoss(temperature=0.0), r"temperature must be a finite number > 0; got 0.0"),
        (lambda: kf.losses.SupConLoss(temperature=-0.1), "temperature must be a finite number > 0"),
        (lambda: kf.losses.MultiSimilarityLoss(alpha=0), "alpha must be a finite number > 0"),
        (lambda: kf.losses.MultiSimilarityLoss(beta=-50), "beta must be a finite number > 0"),
        (lambda: kf.losses.MultiSimilarityLoss(base=2.0), r"base must be in \[-1.0, 1.0\]"),
        (lambda: kf.losses.MultiSimilarityLoss(epsilon=-0.1), "epsilon must be a finite number >= 0"),
        (lambda: kf.losses.get("tripplet"), "Unknown loss 'tripplet'; known names: .*triplet"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- registry and serialization ------------------------------------------------------------


def test_registry_lists_the_pair_losses():
    assert set(PAIR_NAMES) <= set(kf.losses.names())
    for name in PAIR_NAMES:
        assert isinstance(kf.losses.get(name), kf.losses.PairLoss)
    assert isinstance(kf.losses.get("multi-similarity"), kf.losses.MultiSimilarityLoss)


@pytest.mark.parametrize("case", list(CASES))
def test_config_round_trip(case):
    loss = make_loss(case, check_inputs=False, reduction="sum", name="my_loss")
    clone = check_config_round_trip(loss)
    _, kwargs = CASES[case]
    for key, value in kwargs.items():
        assert getattr(clone, key) == value
    assert not clone.check_inputs and clone.reduction == "sum"
    assert kf.losses.get(keras.losses.serialize(loss)).get_config() == loss.get_config()
    assert keras.losses.get(keras.losses.serialize(loss)).get_config() == loss.get_config()


def test_contrastive_defaults_depend_on_the_distance():
    assert kf.losses.ContrastiveLoss().get_config()["negative_margin"] == 1.0
    cosine = kf.losses.ContrastiveLoss(distance="cosine")
    assert (cosine.positive_margin, cosine.negative_margin) == (1.0, 0.0)
    check_config_round_trip(cosine)


@pytest.mark.parametrize("inclusive", [False, True])
def test_count_below_matches_loops_on_every_path(inclusive, rng):
    """The batched search (TensorFlow's native search outside XLA, binary-search rounds elsewhere)
    against a loop, with ties."""
    from keras_facemargin.losses import pairwise

    rows = np.sort(rng.integers(0, 5, size=(6, 9)).astype("float32"), axis=-1)
    thresholds = rng.integers(-1, 6, size=(6, 9)).astype("float32")
    expected = [[sum(v <= t if inclusive else v < t for v in rows[i]) for t in thresholds[i]]
                for i in range(6)]
    # Tensors, as the losses pass them (Keras's torch stop_gradient refuses a NumPy array).
    rows, thresholds = ops.convert_to_tensor(rows), ops.convert_to_tensor(thresholds)
    paths = [lambda r, t: pairwise._count_below(r, t, inclusive)]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        paths.append(tf.function(paths[0], jit_compile=True))
    for path in paths:
        np.testing.assert_array_equal(np.asarray(path(rows, thresholds)), expected)


# ---- triplet mining: positive slots and sort/search, against loops ---------------------------


def _force_mining_path(monkeypatch, path):
    """Make every anchor take the slot loop ("slots"), or the sort and search ("sort")."""
    from keras_facemargin.losses import pairwise

    limit = {"slots": 10**6, "sort": -1}[path]
    monkeypatch.setattr(pairwise, "SLOT_LIMIT", limit)
    monkeypatch.setattr(pairwise, "SLOT_LIMIT_WITHOUT_XLA", limit)


# name -> (labels of all candidates, offset of this replica's anchors, number of anchors)
MINING_BATCHES = {
    # P×K with two one-sample identities: the slot loop's batch.
    "pk": (np.concatenate([np.repeat(np.arange(4), 3), [7, 8]]), 0, 14),
    # The anchors are the second replica's: scores [12, 24] against every replica's samples.
    "cross_replica": (np.concatenate([np.repeat(np.arange(4), 3), np.repeat(np.arange(2, 6), 3)]),
                      12, 12),
    # 35 samples of one identity: 34 positives, more than any slot limit, so the sort runs.
    "big_class": (np.concatenate([np.zeros(35, int), [1, 1, 2, 3, 9]]), 0, 40),
}


def _mining_loops(scores, candidate_labels, offset, margin):
    """Semi-hard choices and violating-triplet counts by loops, with the documented tie rules:
    the last of equal most similar negatives below the positive, else the first least similar."""
    rows, others = scores.shape
    chosen = np.zeros((rows, others))
    per_positive = np.zeros((rows, others))
    per_negative = np.zeros((rows, others))
    for a in range(rows):
        label = candidate_labels[offset + a]
        positives = [p for p in range(others) if candidate_labels[p] == label and p != offset + a]
        negatives = [n for n in range(others) if candidate_labels[n] != label]
        for p in positives:
            for n in negatives:
                if scores[a, n] > scores[a, p] - margin:
                    per_positive[a, p] += 1
                    per_negative[a, n] += 1
            if not negatives:
                continue
            below = [n for n in negatives if scores[a, n] < scores[a, p]]
            if below:
                best = max(scores[a, n] for n in below)
                column = max(n for n in below if scores[a, n] == best)
            else:
                worst = min(scores[a, n] for n in negatives)
                column = min(n for n in negatives if scores[a, n] == worst)
            chosen[a, column] += 1
    return chosen, per_positive, per_negative


def _mining_functions(margin):
    """{mode: fn(scores, positive, negative, weight) -> (d Σ weight·semi-hard / d scores,
    per_positive, per_negative)}: eager and compiled (a TensorFlow graph, XLA; jax.jit)."""
    from keras_facemargin.losses import pairwise

    def mined(scores, positive, negative, weight):
        def total(s):
            chosen = pairwise.semi_hard_negative_scores(s, positive, negative)
            return ops.sum(ops.where(weight, chosen, 0.0))

        counts = pairwise.violating_triplet_counts(scores, positive, negative, margin)
        return (grad_of(total, scores), *counts)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def grad_of(fn, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x)
            return tf.convert_to_tensor(tape.gradient(value, x))

        def eager(*args):
            return mined(*[tf.constant(a) for a in args])

        # Static shapes: unknown ones cost XLA 10 s more here (test_compiled_equals_eager has them).
        return {"eager": eager, "graph": tf.function(mined), "xla": tf.function(mined, jit_compile=True)}
    if backend == "jax":
        import jax

        def grad_of(fn, x):
            return jax.grad(fn)(x)

        return {"eager": mined, "jit": jax.jit(mined)}
    pytest.skip("no compiler")


@pytest.mark.parametrize("path", ["auto", "slots", "sort"])
@pytest.mark.parametrize("batch", list(MINING_BATCHES))
def test_mining_paths_match_loops_with_ties(batch, path, monkeypatch, rng):
    """Semi-hard choices (read from the gradient: how often each negative is chosen) and the
    triplet counts of `"all"`, on scores with many exact ties, eager and compiled."""
    from keras_facemargin.losses import pairwise

    if path != "auto":
        _force_mining_path(monkeypatch, path)
    candidate_labels, offset, rows = MINING_BATCHES[batch]
    margin = 0.25
    # Multiples of 1/4: exact in float32, s − m included, and full of equal scores.
    scores = (rng.integers(-4, 5, size=(rows, len(candidate_labels))) / 4).astype("float32")
    positive, negative = (np.asarray(ops.convert_to_numpy(m)) for m in pairwise.label_masks(
        candidate_labels[offset:offset + rows], candidate_labels, offset))
    weight = positive & negative.any(axis=-1, keepdims=True)
    expected = _mining_loops(scores.astype("float64"), candidate_labels, offset, margin)
    assert expected[0].sum() == weight.sum() > 0 and expected[1].sum() > 0
    if path == "auto":
        use_slots = bool(ops.convert_to_numpy(pairwise._use_slots(positive)[0]))
        assert use_slots == (batch != "big_class")
    for mode, fn in _mining_functions(margin).items():
        got = fn(scores, positive, negative, weight)
        for name, want, value in zip(("semi-hard", "per_positive", "per_negative"), expected, got):
            np.testing.assert_array_equal(np.asarray(value), want, err_msg=f"{mode}: {name}")


TRIPLET_MINING_CASES = ["triplet_all_cosine", "triplet_all_euclidean_nonzero", "triplet_semi_euclidean",
                        "triplet_semi_squared_soft_nonzero"]


@pytest.mark.parametrize("case", TRIPLET_MINING_CASES)
def test_both_mining_paths_match_the_reference_on_a_big_class(case, monkeypatch, rng):
    """34 positives per anchor: the sort path by default; the slot loop forced gives the same."""
    labels = MINING_BATCHES["big_class"][0]
    x = embeddings(rng, labels)
    x[5] = x[4]                      # a tie between positives
    x[36] = x[3]                     # and between a negative and a positive
    loss = make_loss(case, dtype="float64")
    value, (grad,) = value_and_grad(lambda e: loss(labels, e), x)
    assert value == pytest.approx(reference(case, x, labels), **TOL) and value > 0
    _force_mining_path(monkeypatch, "slots")
    slots_value, (slots_grad,) = value_and_grad(lambda e: loss(labels, e), x)
    assert slots_value == pytest.approx(value, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(slots_grad, grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", TRIPLET_MINING_CASES)
def test_sort_path_gradient_matches_reference(case, monkeypatch, rng):
    """The small batches take the slot loop (`test_gradients_match_reference`); here the sort."""
    _force_mining_path(monkeypatch, "sort")
    labels = BATCHES["unbalanced"]
    x = embeddings(rng, labels)
    loss = make_loss(case, dtype="float64")
    value, (grad,) = value_and_grad(lambda e: loss(labels, e), x)
    numerical = numerical_gradient(lambda e: reference(case, e, labels), x)
    assert value == pytest.approx(reference(case, x, labels), **TOL)
    np.testing.assert_allclose(grad, numerical, **GRAD_TOL)


# ---- extreme embedding rows in every precision (issue 13) -------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["zero", "tiny", "huge"])
@pytest.mark.parametrize("case", ["triplet_all_cosine", "triplet_semi_cosine", "contrastive_cosine",
                                  "npair_cosine", "unified_pair", "circle", "supcon", "multi_similarity",
                                  "triplet_semi_euclidean"])
def test_gradients_stay_finite_for_zero_tiny_and_huge_rows(case, kind, dtype, rng):
    """Cosine-based pair losses share l2_normalize with the heads. (Euclidean distances of float32
    embeddings near 1e30 overflow float32 in the loss value itself: not covered.)"""
    if "euclidean" in case and kind == "huge" and dtype != "float16":
        pytest.skip("squared distances of ~1e30 overflow float32")
    labels = np.array([0, 0, 1, 1, 2, 2])
    x = rng.normal(size=(6, 4))
    x[1] = {"zero": 0.0, "tiny": 1e-7 if dtype == "float16" else 1e-30,
            "huge": 6e4 / 3 if dtype == "float16" else 1e30}[kind] * np.array([1.0, -2.0, 0.5, 3.0])
    embeddings = ops.cast(x.astype("float32"), dtype)
    loss = make_loss(case)
    value, (grad,) = value_and_grad(lambda e: loss(labels, e), embeddings)
    assert np.isfinite(value) and str(grad.dtype) == dtype
    assert np.all(np.isfinite(grad.astype("float64")))


# ---- empty batches and non-finite embeddings (issue 13) ---------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_empty_batch_gives_zero_loss_and_zero_gradients(case):
    loss = make_loss(case)
    value, (grad,) = value_and_grad(lambda e: loss(np.zeros((0,), "int32"), e), np.zeros((0, 4), "float32"))
    assert value == 0.0 and grad.shape == (0, 4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function with an unknown batch")
@pytest.mark.parametrize("case", list(CASES))
def test_empty_batch_in_a_graph_with_unknown_batch_size(case):
    import tensorflow as tf

    loss = make_loss(case)
    fn = tf.function(lambda y, e: loss(y, e), input_signature=[
        tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None, 4), tf.float32)])
    assert float(fn(tf.zeros((0,), tf.int32), tf.zeros((0, 4)))) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name", PAIR_NAMES)
def test_non_finite_embeddings_are_named_as_such(name, bad, rng):
    x = rng.normal(size=(6, 4)).astype("float32")
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"y_pred must be finite embeddings; got NaN or Inf in 1 of 6 rows"):
        kf.losses.get(name)(np.array([0, 0, 1, 1, 2, 2]), x)
