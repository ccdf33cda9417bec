"""Sub-centres in CosineHead and PartialFC (issue 17), with every margin loss, and the cleaning tools,
against loop references."""

import math

import adaptive_reference as aref
import keras
import margin_reference as ref
import numpy as np
import pytest
from helpers import FLOAT64, GRAD_TOL, TOL, numerical_gradient, value_and_grad
from keras import ops

import keras_facemargin as kf

pytestmark = pytest.mark.multibackend
DTYPE = "float64" if FLOAT64 else None


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def test_output_is_the_best_sub_centre_of_each_class(rng):
    head = kf.heads.CosineHead(4, sub_centers=3, dtype=DTYPE)
    features = rng.normal(size=(5, 6))
    out = numpy(head(features))
    kernel = numpy(head.kernel)
    assert kernel.shape == (6, 12) and out.shape == (5, 4)
    np.testing.assert_allclose(out, aref.sub_center_head(features, kernel, 3), **dict(rtol=1e-9, atol=1e-9)
                               if FLOAT64 else dict(atol=1e-6))
    centres = numpy(head.centers)
    assert centres.shape == (4, 3, 6)
    np.testing.assert_allclose(centres[2, 1], kernel[:, 7] / np.linalg.norm(kernel[:, 7]), atol=1e-6)


def test_sub_center_arcface_with_one_sub_centre_is_arcface(rng):
    labels = rng.integers(0, 5, size=8)
    features, kernel = rng.normal(size=(8, 4)), rng.normal(size=(4, 5))
    loss = kf.losses.SubCenterArcFaceLoss(sub_centers=1, scale=16.0, dtype=DTYPE)
    head = kf.heads.CosineHead(5, loss=loss, dtype=DTYPE)
    head.build((None, 4))
    got = float(loss(labels, head.stateless_call([kernel], [], features)[0]))
    assert got == pytest.approx(ref.loss("arcface", ref.head(features, kernel), labels, 16.0), **TOL)


MARGIN_LOSSES = kf.losses.names(kind="margin_softmax")


@pytest.mark.parametrize("name", MARGIN_LOSSES)
def test_every_margin_loss_trains_through_sub_centres(name, rng):
    """A few fit steps through a K-sub-centre head stay finite with every registered margin loss."""
    loss = kf.losses.get(name)
    k = loss.sub_centers if loss.sub_centers > 1 else 2
    head = kf.heads.CosineHead(4, sub_centers=k, loss=loss)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6), head])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    x = (rng.normal(size=(16, 6)) * 10).astype("float32")
    y = rng.integers(0, 4, size=16)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert all(map(math.isfinite, history.history["loss"]))
    assert np.all(np.isfinite(numpy(head.kernel)))


@pytest.mark.parametrize("name, kwargs", [("cosface", dict(margin=0.35, scale=8.0)),
                                          ("subcenter_arcface", dict(scale=8.0, sub_centers=3))])
def test_gradients_through_sub_centres_match_finite_differences(name, kwargs, rng):
    labels = np.array([0, 1, 2, 1, 0])
    features = rng.normal(size=(5, 4))
    kernel = rng.normal(size=(4, 9))
    loss = kf.losses.get(name, **kwargs, dtype=DTYPE)
    head = kf.heads.CosineHead(3, sub_centers=3, loss=loss, dtype=DTYPE)
    head.build((None, 4))

    def fn(f, w):
        return loss(labels, head.stateless_call([w], [], f)[0])

    value, (g_features, g_kernel) = value_and_grad(fn, features, kernel)
    reference = "cosface" if name == "cosface" else "arcface"
    margin = kwargs.get("margin", 0.5)

    def reference_loss(f, w):
        return ref.loss(reference, aref.sub_center_head(f, w, 3), labels, 8.0, margin=margin)

    assert value == pytest.approx(reference_loss(features, kernel), **TOL)
    np.testing.assert_allclose(g_features, numerical_gradient(lambda f: reference_loss(f, kernel), features),
                               **GRAD_TOL)
    np.testing.assert_allclose(g_kernel, numerical_gradient(lambda w: reference_loss(features, w), kernel),
                               **GRAD_TOL)


def test_sub_center_arcface_asks_for_its_number_of_sub_centres():
    loss = kf.losses.SubCenterArcFaceLoss(sub_centers=3)
    assert kf.heads.CosineHead(5, loss=loss).sub_centers == 3
    with pytest.raises(ValueError, match=r"sub_centers must be 3 for SubCenterArcFaceLoss\(sub_centers=3\); got 2"):
        kf.heads.CosineHead(5, sub_centers=2, loss=loss)
    head = kf.heads.CosineHead(5, sub_centers=2)
    head.build((None, 4))
    with pytest.raises(ValueError, match="needs a head with sub_centers=3"):
        loss(np.array([0, 1]), head(np.ones((2, 4), "float32")))


@pytest.mark.parametrize("loss_name", ["arcface", "adaface", "curricularface"])
def test_partial_fc_with_sub_centres_at_sample_rate_one_equals_the_cosine_head(loss_name, rng):
    loss = kf.losses.get(loss_name, scale=8.0, dtype=DTYPE)
    layer = kf.heads.PartialFC(5, loss=loss, sample_rate=1.0, sub_centers=2, dtype=DTYPE)
    layer.build((None, 4))
    head = kf.heads.CosineHead(5, sub_centers=2, loss=loss, dtype=DTYPE)
    head.build((None, 4))
    centres = rng.normal(size=(10, 4))
    layer.kernel.assign(centres)
    embeddings = rng.normal(size=(6, 4)) * 20.0
    labels = np.array([0, 1, 2, 4, 1, 0])
    state = [v.value for v in layer.non_trainable_variables]

    def pfc(e, w):
        return layer.stateless_call([w], state, e, labels, training=False, return_losses=True)[2][0]

    def cosine_head(e, w):
        return loss(labels, head.stateless_call([w], [v.value for v in head.non_trainable_variables], e)[0])

    value, (g_e, g_w) = value_and_grad(pfc, embeddings, centres)
    head_value, (h_e, h_w) = value_and_grad(cosine_head, embeddings, centres.T)
    assert value == pytest.approx(head_value, **TOL)
    np.testing.assert_allclose(g_e, h_e, **GRAD_TOL)
    np.testing.assert_allclose(g_w, h_w.T, **GRAD_TOL)


def test_partial_fc_samples_all_sub_centres_of_the_sampled_classes(rng):
    layer = kf.heads.PartialFC(40, sample_rate=0.2, sub_centers=3, seed=2, dtype=DTYPE,
                               loss=kf.losses.ArcFaceLoss(scale=8.0, dtype=DTYPE))
    layer.build((None, 4))
    layer.kernel.assign(rng.normal(size=(120, 4)))
    embeddings = rng.normal(size=(6, 4))
    labels = np.array([3, 17, 3, 39, 0, 22])
    state = [v.value for v in layer.non_trainable_variables]

    def fn(e, w):
        return layer.stateless_call([w], state, e, labels, training=True, return_losses=True)[2][0]

    value, (_, g_w) = value_and_grad(fn, embeddings, numpy(layer.kernel))
    class_ids, remapped = (numpy(t).astype(int) for t in layer.sample(labels))
    rows = (class_ids[:, None] * 3 + np.arange(3)).reshape(-1)
    sampled = aref.sub_center_head(embeddings, numpy(layer.kernel)[rows].T, 3)
    assert value == pytest.approx(ref.loss("arcface", sampled, remapped, 8.0), **TOL)
    others = np.setdiff1d(np.arange(120), rows)
    assert np.all(g_w[others] == 0) and np.any(g_w[rows] != 0)


# ---- the cleaning tools ----------------------------------------------------------------------


def test_sub_center_report_and_drop_match_loops(rng):
    head = kf.heads.CosineHead(3, sub_centers=3)
    head.build((None, 5))
    head.kernel.assign(rng.normal(size=(5, 9)).astype("float32"))
    kernel = numpy(head.kernel)
    labels = np.repeat(np.arange(3), 7)
    # Most images of each class near sub-centre (class + 1) % 3; some far away.
    x = np.stack([kernel[:, c * 3 + (c + 1) % 3] for c in labels]) + 0.05 * rng.normal(size=(21, 5))
    x[[2, 9, 16]] = rng.normal(size=(3, 5))
    x[5] = -kernel[:, 0 * 3 + 1]  # 180° from its class's dominant sub-centre
    report = kf.heads.sub_center_report(head, x, labels, threshold_degrees=75.0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centres = (kernel / np.linalg.norm(kernel, axis=0)).T.reshape(3, 3, 5)
    counts = np.zeros((3, 3), int)
    for i, c in enumerate(labels):
        counts[c, int(np.argmax([unit[i] @ centres[c, k] for k in range(3)]))] += 1
    np.testing.assert_array_equal(report.counts, counts)
    np.testing.assert_array_equal(report.dominant, [1, 2, 0])
    for i, c in enumerate(labels):
        cos = unit[i] @ centres[c, report.dominant[c]]
        assert report.cosine_to_dominant[i] == pytest.approx(cos, abs=1e-6)
        assert report.outliers[i] == (math.degrees(math.acos(min(1.0, cos))) >= 75.0)
    assert report.outliers[5] and report.angle_degrees[5] == pytest.approx(180.0, abs=0.1)
    assert len(report.classes_without_inliers) == 0

    clean = kf.heads.drop_non_dominant_sub_centers(head, report.dominant)
    assert clean.sub_centers == 1 and clean.num_classes == 3
    np.testing.assert_array_equal(numpy(clean.kernel), kernel[:, [1, 5, 6]])


def test_drop_turns_sub_center_arcface_into_arcface():
    loss = kf.losses.SubCenterArcFaceLoss(margin=0.4, scale=32.0, sub_centers=2)
    layer = kf.heads.PartialFC(6, loss=loss, sample_rate=0.5)
    layer.build((None, 3))
    clean = kf.heads.drop_non_dominant_sub_centers(layer, np.zeros(6, int))
    assert type(clean.loss) is kf.losses.ArcFaceLoss
    assert clean.loss.margin == 0.4 and clean.loss.scale == 32.0 and clean.sub_centers == 1
    np.testing.assert_array_equal(numpy(clean.kernel), numpy(layer.kernel)[::2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(sub_centers=0), r"sub_centers must be an integer >= 1; got 0"),
    (dict(sub_centers=2.5), r"sub_centers must be an integer >= 1; got 2.5"),
    (dict(sub_centers="3"), r"sub_centers must be an integer >= 1; got '3'"),
])
def test_bad_sub_centers(kwargs, message):
    for layer in (kf.heads.CosineHead, kf.heads.PartialFC):
        with pytest.raises(ValueError, match=message):
            layer(10, **kwargs)
