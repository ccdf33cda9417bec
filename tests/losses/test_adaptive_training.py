"""The new losses in Keras (issue 17): the heads built for them, running statistics in fit, evaluate,
`.keras` files, backups and resumes, PartialFC, export, and the errors."""

import math
import os

import keras
import numpy as np
import pytest
from helpers import GRAD_TOL, TOL, check_config_round_trip, value_and_grad
from keras import ops

import keras_facemargin as kf
from keras_facemargin.models import build_recognizer
from keras_facemargin.training import fit_resumable

pytestmark = pytest.mark.multibackend
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow backend only")

NEW = ["adaface", "magface", "curricularface", "subcenter_arcface", "elasticface", "adacos"]
STATEFUL = ["adaface", "curricularface", "elasticface", "adacos"]
SETTINGS = {"adaface": dict(momentum=0.2, scale=16.0), "magface": dict(scale=16.0, regularizer_weight=5.0),
            "curricularface": dict(momentum=0.2, scale=16.0), "subcenter_arcface": dict(scale=16.0),
            "elasticface": dict(plus=True, seed=3, scale=16.0), "adacos": dict()}


def numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def make_loss(name):
    return kf.losses.get(name, **SETTINGS[name])


def tiny_backbone():
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(8)],
                            name="backbone")


def images(rng, n=32, classes=4):
    y = np.arange(n) % classes
    x = rng.uniform(0, 255, size=(n, 4, 4, 3)).astype("float32")
    x[..., 0] += 40.0 * y[:, None, None]
    return x, y


def state_of(model):
    head = model.get_layer("cosine_head")
    return {k: numpy(v) for k, v in head.loss_state.values().items()} if head.loss_state else {}


@pytest.mark.parametrize("name", kf.losses.names())
def test_build_recognizer_builds_the_head_a_loss_declares(name):
    cls = kf.losses.get_class(name)
    model, embedder = build_recognizer(tiny_backbone(), 5, loss=name)
    if not issubclass(cls, kf.losses.MarginSoftmaxLoss):
        assert model is embedder
        return
    head = model.get_layer("cosine_head")
    loss = kf.losses.get(name)
    assert head.feature_norms == cls.needs_feature_norms
    assert head.sub_centers == loss.sub_centers
    assert tuple(model.output_shape) == (None, 5 + int(cls.needs_feature_norms))
    names = set(head.loss_state.variables_by_name)
    assert names == set(loss.state_variables(5)) | ({"seed"} if cls.uses_seed else set())
    assert tuple(embedder.output_shape) == (None, 8)


@pytest.mark.parametrize("name", NEW)
def test_fit_updates_the_statistics_evaluate_and_predict_leave_them(name, rng):
    loss = make_loss(name)
    model, _ = build_recognizer(tiny_backbone(), 4, loss=loss)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=make_loss(name))  # an equal loss object
    x, y = images(rng)
    before = state_of(model)
    history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)
    assert all(map(math.isfinite, history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    trained = state_of(model)
    for key in before:
        assert not np.array_equal(before[key], trained[key]), key
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    for key in trained:
        np.testing.assert_array_equal(state_of(model)[key], trained[key])


@pytest.mark.parametrize("name", NEW)
def test_keras_file_keeps_weights_statistics_and_training(name, rng, tmp_path):
    loss = make_loss(name)
    model, _ = build_recognizer(tiny_backbone(), 4, loss=loss)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    x, y = images(rng)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(loss) and loaded.loss.get_config() == loss.get_config()
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    # The two continue identically, the statistics included.
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)
    for key, value in state_of(model).items():
        np.testing.assert_allclose(state_of(loaded)[key], value, rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


@TF_ONLY
@pytest.mark.parametrize("name", STATEFUL)
def test_resuming_from_a_backup_equals_an_uninterrupted_run(name, rng, tmp_path):
    """fit_resumable's backup (model.save_weights) holds the statistics: a run stopped after two
    epochs and resumed by fresh objects ends where an uninterrupted run ends."""
    x, y = images(rng)

    def fresh():
        keras.utils.set_random_seed(7)
        loss = make_loss(name)
        model, _ = build_recognizer(tiny_backbone(), 4, loss=loss)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
        return model

    whole = fresh()
    fit_resumable(whole, x, epochs=4, run_dir=str(tmp_path / "whole"), y=y, batch_size=8, shuffle=False,
                  verbose=0)
    first = fresh()
    fit_resumable(first, x, epochs=2, run_dir=str(tmp_path / "split"), y=y, batch_size=8, shuffle=False,
                  verbose=0)
    resumed = fresh()
    fit_resumable(resumed, x, epochs=4, run_dir=str(tmp_path / "split"), y=y, batch_size=8, shuffle=False,
                  verbose=0)
    assert int(resumed.optimizer.iterations) == int(whole.optimizer.iterations) == 16
    for a, b in zip(whole.weights, resumed.weights, strict=True):
        np.testing.assert_allclose(numpy(b), numpy(a), rtol=1e-5, atol=1e-6, err_msg=a.path)
    assert state_of(whole) and state_of(whole).keys() == state_of(resumed).keys()


@pytest.mark.parametrize("name", NEW)
def test_partial_fc_at_sample_rate_one_equals_the_cosine_head(name, rng):
    dtype = "float64" if keras.backend.backend() == "tensorflow" else None
    loss = kf.losses.get(name, **SETTINGS[name], dtype=dtype)
    layer = kf.heads.PartialFC(5, loss=loss, sample_rate=1.0, dtype=dtype)
    layer.build((None, 4))
    head = kf.heads.CosineHead(5, loss=loss, dtype=dtype)
    head.build((None, 4))
    centres = rng.normal(size=(5 * layer.sub_centers, 4))
    embeddings = rng.normal(size=(6, 4)) * 20.0
    labels = np.array([0, 1, 2, 4, 1, 0])
    state = [v.value for v in layer.non_trainable_variables]
    head_state = [v.value for v in head.non_trainable_variables]
    assert len(state) == len(head_state) + 1  # PartialFC's own sampling seed

    def pfc(e, w):
        return layer.stateless_call([w], state, e, labels, training=False, return_losses=True)[2][0]

    def cosine_head(e, w):
        return loss(labels, head.stateless_call([w], head_state, e)[0])

    value, (g_e, g_w) = value_and_grad(pfc, embeddings, centres)
    head_value, (h_e, h_w) = value_and_grad(cosine_head, embeddings, centres.T)
    assert value == pytest.approx(head_value, **TOL)
    np.testing.assert_allclose(g_e, h_e, **GRAD_TOL)
    np.testing.assert_allclose(g_w, h_w.T, **GRAD_TOL)


@pytest.mark.parametrize("name", STATEFUL)
def test_partial_fc_training_updates_the_statistics(name, rng):
    images_in, labels_in = keras.Input((6,)), keras.Input((), dtype="int32")
    layer = kf.heads.PartialFC(40, loss=make_loss(name), sample_rate=0.5, seed=0, name="partial_fc")
    model = keras.Model([images_in, labels_in], layer(keras.layers.Dense(8)(images_in), labels_in))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    x = (rng.normal(size=(16, 6)) * 10).astype("float32")
    y = rng.integers(0, 40, size=16).astype("int32")
    before = {k: numpy(v) for k, v in layer.loss_state.values().items()}
    assert math.isfinite(float(model.train_on_batch([x, y])))
    after = {k: numpy(v) for k, v in layer.loss_state.values().items()}
    assert all(not np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", NEW)
def test_half_precision_training_with_mixup_rows_and_smoothing_stays_finite(name, policy, rng):
    keras.config.set_dtype_policy(policy)
    loss = kf.losses.get(name, **SETTINGS[name], label_smoothing=0.1)
    model, _ = build_recognizer(tiny_backbone(), 4, loss=loss)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    x, labels = images(rng, 16)
    y = 0.7 * np.eye(4)[labels] + 0.3 * np.eye(4)[(labels + 1) % 4]
    history = model.fit(x, y.astype("float32"), epochs=2, batch_size=8, verbose=0)
    assert all(map(math.isfinite, history.history["loss"]))
    assert all(np.all(np.isfinite(numpy(w))) for w in model.weights)


@TF_ONLY
def test_magface_export_serves_the_norm_as_quality(rng, tmp_path):
    import tensorflow as tf

    from keras_facemargin.export import export_embedder

    loss = kf.losses.MagFaceLoss()
    _, embedder = build_recognizer(tiny_backbone(), 4, loss=loss)
    export_embedder(embedder, str(tmp_path / "served"), quality=True)
    serve = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
    x = rng.integers(0, 256, size=(3, 4, 4, 3)).astype("uint8")
    out = serve(images=tf.constant(x))
    features = np.asarray(embedder.predict(x.astype("float32"), verbose=0), np.float64)
    np.testing.assert_allclose(out["quality"].numpy(), np.linalg.norm(features, axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["embeddings"].numpy(), axis=1), 1.0, atol=1e-6)


# ---- errors ------------------------------------------------------------------------------------


def test_a_loss_on_a_head_not_built_for_it_is_refused():
    plain = kf.heads.CosineHead(4)
    plain.build((None, 3))
    with pytest.raises(ValueError, match=r"AdaFaceLoss needs a head built for it \(feature norms: True"):
        kf.losses.AdaFaceLoss()(np.array([0, 1]), plain(np.ones((2, 3), "float32")))
    built = kf.heads.CosineHead(4, loss="curricularface")
    built.build((None, 3))
    with pytest.raises(ValueError, match=r"ArcFaceLoss needs a head built for it .*statistics: \['t'\]"):
        kf.losses.ArcFaceLoss()(np.array([0, 1]), built(np.ones((2, 3), "float32")))
    with pytest.raises(ValueError, match=r"needs y_pred = \[cosines \| feature norm\]"):
        kf.losses.MagFaceLoss()(np.array([0, 1]), np.zeros((2, 2), "float32"))


@pytest.mark.parametrize("make, message", [
    (lambda: kf.losses.AdaFaceLoss(margin=1.5), r"margin must be in \[0.0, 1.0\]; got 1.5"),
    (lambda: kf.losses.AdaFaceLoss(h=0.0), r"h must be a finite number > 0; got 0.0"),
    (lambda: kf.losses.AdaFaceLoss(momentum=1.5), r"momentum must be in \[0.0, 1.0\]; got 1.5"),
    (lambda: kf.losses.MagFaceLoss(lower_norm=0.0), r"lower_norm must be a finite number > 0; got 0.0"),
    (lambda: kf.losses.MagFaceLoss(upper_norm=5.0), r"upper_norm must be > lower_norm=10.0; got 5.0"),
    (lambda: kf.losses.MagFaceLoss(lower_margin=0.9), r"upper_margin must be >= lower_margin=0.9; got 0.8"),
    (lambda: kf.losses.MagFaceLoss(upper_margin=2.0), r"upper_margin must be in \[0.0, 1.57.* radians; got 2.0"),
    (lambda: kf.losses.MagFaceLoss(regularizer_weight=-1.0), r"regularizer_weight must be a finite number >= 0"),
    (lambda: kf.losses.CurricularFaceLoss(margin=2.0), r"margin must be in \[0.0, 1.57.* radians; got 2.0"),
    (lambda: kf.losses.CurricularFaceLoss(momentum=-0.1), r"momentum must be in \[0.0, 1.0\]; got -0.1"),
    (lambda: kf.losses.SubCenterArcFaceLoss(sub_centers=0), r"sub_centers must be an integer >= 1; got 0"),
    (lambda: kf.losses.ElasticFaceLoss(kind="sphere"), r"kind must be 'arc' or 'cos'; got 'sphere'"),
    (lambda: kf.losses.ElasticFaceLoss(kind="cos", margin=1.2), r"margin must be in \[0.0, 1.0\]; got 1.2"),
    (lambda: kf.losses.ElasticFaceLoss(sigma=-0.1), r"sigma must be a finite number >= 0; got -0.1"),
    (lambda: kf.losses.ElasticFaceLoss(seed=-1), r"seed must be an integer >= 0 or None; got -1"),
    (lambda: kf.losses.AdaCosLoss(scale=30.0), r"AdaCosLoss sets its own scale; got scale=30.0"),
    (lambda: kf.losses.AdaCosLoss.fixed_scale(2), r"AdaCosLoss needs num_classes >= 3"),
])
def test_hyperparameters_out_of_range(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("name", NEW)
def test_registry_names_classes_and_config_round_trip(name):
    loss = make_loss(name)
    assert kf.losses.get_class(name) is type(loss)
    assert name in kf.losses.names(kind="margin_softmax") and name not in kf.losses.names(kind="pair")
    check_config_round_trip(loss)
    head = kf.heads.CosineHead(7, loss=loss, name="h")
    clone = check_config_round_trip(head)
    assert clone.loss.get_config() == loss.get_config() and clone.sub_centers == head.sub_centers


@TF_ONLY
@pytest.mark.parametrize("name", STATEFUL)
def test_an_empty_batch_of_unknown_size_changes_no_statistic(name):
    """tf.distribute's last, partial step can hand a replica an empty batch inside a graph whose
    batch size is unknown: the state must stay as it is (AdaCos's scale became NaN, ElasticFace's
    draws advanced)."""
    import tensorflow as tf

    loss = make_loss(name)
    state = loss.initial_state(4, seed=3)
    width = 5 if loss.needs_feature_norms else 4

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.int32), tf.TensorSpec((None, width), tf.float32)])
    def step(y, y_pred):
        return loss.stateless_call(y, y_pred, state, training=True, num_classes=4)[1]

    new = step(tf.zeros((0,), tf.int32), tf.zeros((0, width)))
    for key, value in state.items():
        np.testing.assert_array_equal(numpy(new[key]), numpy(value), err_msg=key)
