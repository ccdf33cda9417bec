"""AdaFace, MagFace, CurricularFace, SubCenterArcFace, ElasticFace and AdaCos (issue 17) against the
float64 loop references of tests/adaptive_reference.py: values, state updates over several
steps, gradients w.r.t. features and centres (finite differences of the references), the
papers' limiting cases, and the Keras side (heads built for the loss, saving, resuming)."""

import math

import adaptive_reference as aref
import margin_reference as ref
import numpy as np
import pytest
from helpers import FLOAT64, GRAD_TOL, TOL, numerical_gradient, value_and_grad
from keras import ops
from test_margin_losses import random_cosines

import keras_facemargin as kf

pytestmark = pytest.mark.multibackend
DTYPE = "float64" if FLOAT64 else None
STEP_TOL = dict(rtol=1e-9, atol=1e-9) if FLOAT64 else dict(rtol=2e-5, atol=2e-5)


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def targets(kind, labels, classes, rng):
    """Integer labels, a column of them, or mixup rows (λ on one class, 1 − λ on another)."""
    if kind == "sparse":
        return labels
    if kind == "sparse_column":
        return labels[:, None]
    y = np.zeros((len(labels), classes))
    lam = rng.uniform(0.2, 0.8, size=len(labels))
    y[np.arange(len(labels)), labels] = lam
    y[np.arange(len(labels)), (labels + 1) % classes] += 1 - lam
    return y


def ref_targets(y):
    return y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y


def run(loss, y, y_pred, state, training=True, num_classes=None):
    """One stateless step: (mean loss, new state as floats)."""
    per_sample, new_state = loss.stateless_call(y, y_pred, state, training=training, num_classes=num_classes)
    return float(np.mean(numpy(per_sample))), {k: numpy(v) for k, v in new_state.items()}


def packed(cosines, norms):
    return np.concatenate([cosines, np.asarray(norms, np.float64)[:, None]], axis=1)


LABEL_KINDS = ["sparse", "sparse_column", "dense_mixture"]


# ---- AdaFace -------------------------------------------------------------------------------


@pytest.mark.parametrize("labels_kind", LABEL_KINDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_adaface_matches_reference_over_several_steps(labels_kind, smoothing, rng):
    loss = kf.losses.AdaFaceLoss(margin=0.4, h=0.333, momentum=0.3, scale=16.0,
                                 label_smoothing=smoothing, dtype=DTYPE)
    state = {"norm_mean": 20.0, "norm_std": 100.0}
    expected_state = dict(state)
    for _ in range(3):
        labels = rng.integers(0, 6, size=9)
        cosines = random_cosines(rng, 9, 6, labels)
        norms = rng.uniform(5.0, 60.0, size=9)
        norms[0] = 250.0  # above the 100 clip
        y = targets(labels_kind, labels, 6, rng)
        got, state = run(loss, y, packed(cosines, norms), state)
        want, expected_state = aref.adaface_step(cosines, norms, ref_targets(y), expected_state, m=0.4,
                                                 h=0.333, alpha=0.3, s=16.0, label_smoothing=smoothing)
        assert got == pytest.approx(want, **TOL)
        for key in expected_state:
            assert float(state[key]) == pytest.approx(expected_state[key], **TOL)
    assert expected_state["norm_mean"] != 20.0 and expected_state["norm_std"] != 100.0


def test_adaface_with_every_norm_at_the_running_mean_is_cosface(rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    loss = kf.losses.AdaFaceLoss(margin=0.35, scale=16.0, dtype=DTYPE)
    state = {"norm_mean": 31.0, "norm_std": 4.0}
    for training in (False, True):  # training: batch mean 31 and std 0 leave ĝ = 0
        got, _ = run(loss, labels, packed(cosines, np.full(9, 31.0)), state, training=training)
        assert got == pytest.approx(ref.loss("cosface", cosines, labels, 16.0, margin=0.35), **TOL)


def test_adaface_batch_of_one_keeps_the_std_and_evaluation_updates_nothing(rng):
    loss = kf.losses.AdaFaceLoss(momentum=0.5, scale=16.0, dtype=DTYPE)
    state = {"norm_mean": 20.0, "norm_std": 10.0}
    cosines = random_cosines(rng, 1, 4, np.array([2]))
    _, new = run(loss, np.array([2]), packed(cosines, [40.0]), state)
    assert float(new["norm_mean"]) == pytest.approx(30.0) and float(new["norm_std"]) == pytest.approx(10.0)
    _, new = run(loss, np.array([2]), packed(cosines, [40.0]), state, training=False)
    assert new == {}


# ---- MagFace -------------------------------------------------------------------------------


@pytest.mark.parametrize("labels_kind", LABEL_KINDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_magface_matches_reference(labels_kind, smoothing, rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    norms = rng.uniform(5.0, 130.0, size=9)  # some below l_a = 10 and above u_a = 110
    y = targets(labels_kind, labels, 6, rng)
    loss = kf.losses.MagFaceLoss(scale=16.0, label_smoothing=smoothing, dtype=DTYPE)
    got, state = run(loss, y, packed(cosines, norms), {})
    assert state == {}
    want = aref.magface_step(cosines, norms, ref_targets(y), s=16.0, label_smoothing=smoothing)
    assert got == pytest.approx(want, **TOL)


def test_magface_with_every_norm_at_the_lower_bound_is_arcface_plus_the_regulariser(rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    loss = kf.losses.MagFaceLoss(scale=16.0, dtype=DTYPE)
    got, _ = run(loss, labels, packed(cosines, np.full(9, 10.0)), {})
    arcface = ref.loss("arcface", cosines, labels, 16.0, margin=0.45)
    assert got == pytest.approx(arcface + 35.0 * (10.0 / 110.0**2 + 1.0 / 10.0), **TOL)


# ---- CurricularFace ------------------------------------------------------------------------


@pytest.mark.parametrize("labels_kind", LABEL_KINDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_curricularface_matches_reference_over_several_steps(labels_kind, smoothing, rng):
    loss = kf.losses.CurricularFaceLoss(margin=0.5, scale=16.0, momentum=0.2, label_smoothing=smoothing,
                                        dtype=DTYPE)
    state, expected_state = {"t": 0.0}, {"t": 0.0}
    hard = 0
    for _ in range(3):
        labels = rng.integers(0, 6, size=9)
        cosines = random_cosines(rng, 9, 6, labels)
        y = targets(labels_kind, labels, 6, rng)
        got, state = run(loss, y, cosines, state)
        want, expected_state = aref.curricular_step(cosines, ref_targets(y), expected_state, m=0.5,
                                                    alpha=0.2, s=16.0, label_smoothing=smoothing)
        assert got == pytest.approx(want, **TOL)
        assert float(state["t"]) == pytest.approx(expected_state["t"], **TOL)
        theta = np.arccos(cosines[np.arange(9), labels])
        hard += int(np.sum(cosines > np.cos(theta + 0.5)[:, None]) - 9)
    assert hard > 0, "the batches must contain hard negatives"


def test_curricularface_with_t_0_and_no_hard_negatives_is_arcface(rng):
    labels = np.array([0, 1, 2, 3])
    cosines = np.full((4, 5), -0.6)
    cosines[np.arange(4), labels] = [0.95, 0.9, 0.8, 0.99]  # cos(θ + 0.5) stays above -0.6
    loss = kf.losses.CurricularFaceLoss(scale=16.0, momentum=0.0, dtype=DTYPE)
    got, state = run(loss, labels, cosines, {"t": 0.0})
    assert float(state["t"]) == 0.0
    assert got == pytest.approx(ref.loss("arcface", cosines, labels, 16.0, margin=0.5), **TOL)


def test_curricularface_refuses_dense_rows_with_more_than_two_targets():
    y = np.array([[0.5, 0.3, 0.2, 0.0]])
    with pytest.raises(ValueError, match="at most 2 non-zero entries"):
        kf.losses.CurricularFaceLoss()(y, np.zeros((1, 4), "float32"))


# ---- ElasticFace ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind, reference, margin", [("arc", "arcface", 0.5), ("cos", "cosface", 0.35)])
def test_elasticface_with_sigma_0_is_arcface_or_cosface(kind, reference, margin, rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    loss = kf.losses.ElasticFaceLoss(kind=kind, sigma=0.0, scale=16.0, dtype=DTYPE)
    for plus in (False, True):
        loss.plus = plus
        got, state = run(loss, labels, cosines, loss.initial_state(6, seed=3))
        assert got == pytest.approx(ref.loss(reference, cosines, labels, 16.0, margin=margin), **TOL)
        np.testing.assert_array_equal(state["seed"], [3, 1])


def _batch(loss, y, cosines):
    labels = y if np.ndim(y) == 1 else None
    dense = None if labels is not None else ops.convert_to_tensor(y, cosines.dtype)
    return kf.losses.margin_losses.Batch(
        ops.convert_to_tensor(cosines), labels=None if labels is None else ops.convert_to_tensor(labels),
        dense=dense)


@pytest.mark.parametrize("kind", ["arc", "cos"])
@pytest.mark.parametrize("labels_kind", ["sparse", "dense_mixture"])
def test_elasticface_loss_and_plus_assignment_match_the_reference(kind, labels_kind, rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    y = targets(labels_kind, labels, 6, rng)
    state = {"seed": ops.convert_to_tensor(np.array([11, 4]), kf._backend.random_seed_dtype())}
    plain = kf.losses.ElasticFaceLoss(kind=kind, sigma=0.1, scale=16.0, dtype=DTYPE)
    plus = kf.losses.ElasticFaceLoss(kind=kind, sigma=0.1, scale=16.0, plus=True, dtype=DTYPE)
    draws = numpy(plain.prepare(_batch(plain, y, cosines), state, True)[0]["margin"])
    margins = numpy(plus.prepare(_batch(plus, y, cosines), state, True)[0]["margin"])
    target = [float(sum(w * c for w, c in zip(row_y, row_c))) if np.ndim(y) == 2 else float(row_c[t])
              for row_y, row_c, t in zip(y if np.ndim(y) == 2 else labels, cosines, labels)]
    np.testing.assert_allclose(margins, aref.elastic_plus_assignment(target, list(draws)), rtol=1e-12)
    for loss, used in ((plain, draws), (plus, margins)):
        got, new = run(loss, y, cosines, state)
        assert got == pytest.approx(aref.elastic_loss(cosines, ref_targets(y), list(used), kind, 16.0), **TOL)
        np.testing.assert_array_equal(new["seed"], [11, 5])


def test_elasticface_plus_ranks_a_batch_larger_than_two_as_the_paper_says():
    """The hardest sample gets the largest margin. The official code's margin[argsort(-cos)]
    would not: for this order it gives the largest margin to the second-hardest sample."""
    cosines = np.array([[0.2, 0.0], [0.9, 0.0], [0.5, 0.0], [0.7, 0.0]])
    labels = np.zeros(4, "int64")
    loss = kf.losses.ElasticFaceLoss(sigma=0.2, plus=True, dtype=DTYPE)
    state = {"seed": ops.convert_to_tensor(np.array([5, 0]), kf._backend.random_seed_dtype())}
    margins = numpy(loss.prepare(_batch(loss, labels, cosines), state, True)[0]["margin"])
    assert np.argmax(margins) == 0 and np.argmin(margins) == 1
    np.testing.assert_array_equal(np.argsort(margins), np.argsort(-cosines[:, 0]))
    official = np.sort(margins)[np.argsort(-cosines[:, 0])]
    assert np.argmax(official) != 0


def test_elasticface_draws_have_mean_m_and_std_sigma():
    loss = kf.losses.ElasticFaceLoss(margin=0.5, sigma=0.05)
    cosines = np.zeros((20_000, 2), "float32")
    state = {"seed": ops.convert_to_tensor(np.array([7, 0]), kf._backend.random_seed_dtype())}
    margins = numpy(loss.prepare(_batch(loss, np.zeros(20_000, "int64"), cosines), state, True)[0]["margin"])
    assert abs(margins.mean() - 0.5) < 4 * 0.05 / math.sqrt(20_000)
    assert abs(margins.std() - 0.05) < 0.002
    again = numpy(loss.prepare(_batch(loss, np.zeros(20_000, "int64"), cosines), state, True)[0]["margin"])
    np.testing.assert_array_equal(margins, again)  # the draw is a function of the state


def test_elasticface_evaluation_uses_the_mean_margin(rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    loss = kf.losses.ElasticFaceLoss(sigma=0.3, scale=16.0, dtype=DTYPE)
    got, state = run(loss, labels, cosines, loss.initial_state(6, seed=1), training=False)
    assert state == {} and got == pytest.approx(ref.loss("arcface", cosines, labels, 16.0, margin=0.5), **TOL)


# ---- AdaCos --------------------------------------------------------------------------------


@pytest.mark.parametrize("labels_kind", LABEL_KINDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_adacos_dynamic_matches_reference_over_several_steps(labels_kind, smoothing, rng):
    loss = kf.losses.AdaCosLoss(label_smoothing=smoothing, dtype=DTYPE)
    state = loss.initial_state(6)
    assert float(numpy(state["scale"])) == pytest.approx(math.sqrt(2) * math.log(5))
    expected = {"scale": float(np.float32(math.sqrt(2) * math.log(5)))}  # the state is float32
    for batch in (9, 8, 9):  # an even batch: the median is the mean of the two middle angles
        labels = rng.integers(0, 6, size=batch)
        cosines = random_cosines(rng, batch, 6, labels)
        y = targets(labels_kind, labels, 6, rng)
        got, state = run(loss, y, cosines, state)
        want, expected = aref.adacos_step(cosines, ref_targets(y), expected, label_smoothing=smoothing)
        assert got == pytest.approx(want, **TOL)
        assert float(state["scale"]) == pytest.approx(expected["scale"], **TOL)


def test_adacos_fixed_scale_and_partial_fc_correction(rng):
    labels = rng.integers(0, 6, size=9)
    cosines = random_cosines(rng, 9, 6, labels)
    fixed = kf.losses.AdaCosLoss(dynamic=False, dtype=DTYPE)
    got, state = run(fixed, labels, cosines, {}, num_classes=1000)
    assert state == {}
    assert got == pytest.approx(ref.loss("normface", cosines, labels, math.sqrt(2) * math.log(999)), **TOL)
    dynamic = kf.losses.AdaCosLoss(dtype=DTYPE)  # 6 sampled of 1000 classes
    got, state = run(dynamic, labels, cosines, {"scale": 5.0}, num_classes=1000)
    want, expected = aref.adacos_step(cosines, labels, {"scale": 5.0}, num_classes=1000)
    assert got == pytest.approx(want, **TOL) and float(state["scale"]) == pytest.approx(expected["scale"], **TOL)


# ---- gradients through the head, vs finite differences of the references -------------------

GRADIENT_CASES = {
    "adaface": dict(margin=0.4, h=0.333, momentum=0.3, scale=8.0),
    "magface": dict(scale=8.0),
    "curricularface": dict(margin=0.5, scale=8.0, momentum=0.3),
    "elasticface": dict(sigma=0.0, scale=8.0),
    "adacos": dict(),
    "subcenter_arcface": dict(margin=0.5, scale=8.0, sub_centers=2),
}


def _reference_loss(name, features, kernel, y, state, frozen, ls):
    """The reference's loss of a head (features, kernel), with the batch statistics frozen."""
    params = GRADIENT_CASES[name]
    k = params.get("sub_centers", 1)
    cosines = aref.sub_center_head(features, kernel, k)
    if name == "adaface":
        return aref.adaface_step(cosines, aref.norms(features), y, state, m=0.4, h=0.333, alpha=0.3, s=8.0,
                                 frozen=frozen, label_smoothing=ls)[0]
    if name == "magface":
        return aref.magface_step(cosines, aref.norms(features), y, s=8.0, label_smoothing=ls)
    if name == "curricularface":
        return aref.curricular_step(cosines, y, state, m=0.5, alpha=0.3, s=8.0, frozen=frozen,
                                    label_smoothing=ls)[0]
    if name == "elasticface":
        return aref.elastic_loss(cosines, y, [0.5] * len(features), "arc", 8.0, label_smoothing=ls)
    if name == "adacos":
        return aref.adacos_step(cosines, y, state, frozen=frozen, label_smoothing=ls)[0]
    return ref.loss("arcface", cosines, y, 8.0, ls, margin=0.5)


def _frozen(name, features, kernel, y, state):
    k = GRADIENT_CASES[name].get("sub_centers", 1)
    cosines = aref.sub_center_head(features, kernel, k)
    if name == "adaface":
        return [min(max(a, 0.001), 100.0) for a in aref.norms(features)]
    if name == "curricularface":
        return [cosines[i][y[i]] for i in range(len(y))]
    if name == "adacos":
        return aref.adacos_statistics(cosines, y, state["scale"])
    return None


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_gradients_through_the_head_match_finite_differences_of_the_reference(name, smoothing, rng):
    batch, dim, classes = 6, 4, 4
    labels = np.array([0, 1, 2, 3, 1, 0])
    loss = kf.losses.get(name, **GRADIENT_CASES[name], label_smoothing=smoothing, dtype=DTYPE)
    head = kf.heads.CosineHead(classes, loss=loss, dtype=DTYPE)
    head.build((None, dim))
    kernel = rng.normal(size=(dim, classes * head.sub_centers))
    features = rng.normal(size=(batch, dim)) * rng.uniform(5.0, 40.0, size=(batch, 1))
    features[1] = -kernel[:, 1 * head.sub_centers] * 20.0 + rng.normal(size=dim)  # θ + m > π
    state = {k: float(numpy(v)) for k, v in loss.initial_state(classes, seed=0).items() if k != "seed"}
    if name == "elasticface":
        state = loss.initial_state(classes, seed=0)

    def fn(f, w):
        out, _ = head.stateless_call([w], [v.value for v in head.non_trainable_variables], f, training=True)
        per_sample, _ = loss.stateless_call(labels, out, state, training=True, num_classes=classes)
        return ops.mean(per_sample)

    value, (g_features, g_kernel) = value_and_grad(fn, features, kernel)
    frozen = _frozen(name, features, kernel, labels, state)

    def reference_features(f):
        return _reference_loss(name, f, kernel, labels, state, frozen, smoothing)

    def reference_kernel(w):
        return _reference_loss(name, features, w, labels, state, frozen, smoothing)

    assert value == pytest.approx(reference_features(features), **TOL)
    np.testing.assert_allclose(g_features, numerical_gradient(reference_features, features), **GRAD_TOL)
    np.testing.assert_allclose(g_kernel, numerical_gradient(reference_kernel, kernel), **GRAD_TOL)
