"""Every registered backbone: shapes, finiteness, a gradient for every weight, mixed precision."""

import json
import os
import re

import keras
import numpy as np
import pytest
from helpers import finite
from keras import ops

import keras_facemargin as kf

# Small and fast: the smallest height the backbones accept (16), an odd width (the last feature
# map is 1×2), an eighth of the widths, a short embedding.
INPUT_SHAPE = (16, 21, 3)
SMALL = dict(input_shape=INPUT_SHAPE, embedding_dim=8, width=0.125)
# The deep IR-ResNets repeat iresnet18's units; their mixed-precision tests are marked slow.
DEEP = ("iresnet34", "iresnet50", "iresnet100")


def images(batch=3, shape=INPUT_SHAPE, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def gradients(model, x, target):
    """Loss and the gradient of every trainable weight (training mode), as NumPy arrays."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_sum(tf.square(tf.cast(out, "float32") - target))
    grads = tape.gradient(loss, model.trainable_weights)
    return out, [None if g is None else np.asarray(g) for g in grads]


def test_registry_lists_every_architecture():
    assert kf.models.backbone_names() == [
        "iresnet100", "iresnet18", "iresnet34", "iresnet50", "mobilefacenet", "simple_cnn", "small_resnet",
        "small_vgg", "sphereface20",
    ]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.GradientTape")
@pytest.mark.parametrize("name", kf.models.backbone_names())
def test_shape_finite_and_every_weight_gets_a_gradient(name):
    model = kf.models.get_backbone(name, **SMALL)
    x = images()
    target = np.random.default_rng(1).normal(size=(3, 8)).astype("float32")
    out, grads = gradients(model, x, target)
    assert tuple(out.shape) == (3, 8)
    assert finite(out)
    assert model.trainable_weights
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        assert np.all(np.isfinite(grad)), weight.path
        assert np.any(grad != 0), weight.path
    inference = model(x, training=False)
    assert tuple(inference.shape) == (3, 8) and finite(inference)


def mixed_cases():
    """mixed_float16 for every backbone, mixed_bfloat16 for iresnet18; the other cases are slow."""
    for policy in ("mixed_float16", "mixed_bfloat16"):
        for name in kf.models.backbone_names():
            cheap = name not in DEEP and (policy == "mixed_float16" or name == "iresnet18")
            yield pytest.param(name, policy, marks=() if cheap else pytest.mark.slow)


@pytest.mark.parametrize("name, policy", list(mixed_cases()))
def test_mixed_precision(name, policy):
    keras.config.set_dtype_policy(policy)
    model = kf.models.get_backbone(name, **SMALL)
    half = policy.removeprefix("mixed_")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == half for layer in convs)
    out = model(images(), training=True)
    assert tuple(out.shape) == (3, 8)
    assert out.dtype == "float32"
    assert finite(out)
    assert finite(model(images() * 100.0, training=False))


@pytest.mark.slow
def test_iresnet18_full_size_parameter_count():
    """A regression check of the layout at 112×112 with a 512-d embedding (about 24M weights)."""
    model = kf.models.iresnet18(input_shape=(112, 112, 3))
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 24_024_576


def test_mobilefacenet_at_full_size_matches_the_paper():
    """About one million parameters with a 128-d embedding; the GDConv covers the last map."""
    mobile = kf.models.mobilefacenet(input_shape=(112, 96, 3), embedding_dim=128)
    assert 0.95e6 < mobile.count_params() < 1.05e6
    assert mobile.get_layer("gdconv").kernel_size == (7, 6)
    assert mobile.get_layer("gdconv").output.shape[1:3] == (1, 1)


def same_config(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # tuples vs lists


def test_config_round_trip_and_save_load(tmp_path):
    model = kf.models.iresnet18(**SMALL, dropout=0.2)
    x = images()
    expected = np.asarray(ops.convert_to_numpy(model(x)))
    clone = keras.Model.from_config(model.get_config())
    assert same_config(clone.get_config(), model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(ops.convert_to_numpy(clone(x))), expected, atol=1e-6)
    path = os.path.join(tmp_path, "backbone.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert same_config(loaded.get_config(), model.get_config())
    np.testing.assert_allclose(np.asarray(ops.convert_to_numpy(loaded(x))), expected, atol=1e-6)


def test_get_backbone_normalises_names_and_forwards_arguments():
    model = kf.models.get_backbone("IResNet-18", input_shape=(16, 16, 3), embedding_dim=4, width=0.125, dropout=0.4)
    assert model.name == "iresnet18"
    assert model.get_layer("output_dropout").rate == 0.4
    assert kf.models.get_backbone("simple-cnn", input_shape=(8, 8, 1), embedding_dim=4).name == "simple_cnn"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet50'; known names: iresnet100, iresnet18"):
        kf.models.get_backbone("resnet50")
    with pytest.raises(ValueError, match="Unknown backbone None"):
        kf.models.get_backbone(None)


@pytest.mark.parametrize("name", kf.models.backbone_names())
def test_too_small_input_is_refused(name):
    factor = 8 if name == "simple_cnn" else 16  # simple_cnn: three stride-2 convs by default
    for shape in [(factor - 1, 64, 3), (64, factor - 1, 3)]:
        message = (
            f"input_shape {shape} is too small for {name}: it downsamples by {factor}, "
            f"so height and width must be at least {factor}"
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            kf.models.get_backbone(name, input_shape=shape)


@pytest.mark.parametrize("embedding_dim", [0, -3, 2.5, True, None])
def test_bad_embedding_dim_is_refused(embedding_dim):
    with pytest.raises(ValueError, match=rf"embedding_dim must be an integer > 0; got {embedding_dim!r}"):
        kf.models.get_backbone("simple_cnn", input_shape=(8, 8, 1), embedding_dim=embedding_dim)


@pytest.mark.parametrize("input_shape", [(32, 32), (32, 32, 3, 1), (32, None, 3), (32, 32, 0), 32])
def test_bad_input_shape_is_refused(input_shape):
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\) with positive integers"):
        kf.models.get_backbone("iresnet18", input_shape=input_shape)


def test_bad_builder_arguments_are_refused():
    with pytest.raises(ValueError, match=r"width must be a finite number > 0; got 0"):
        kf.models.get_backbone("mobilefacenet", width=0)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\); got 1.0"):
        kf.models.get_backbone("iresnet18", dropout=1.0)
    with pytest.raises(ValueError, match=r"depth must be one of \[18, 34, 50, 100\]; got 101"):
        kf.models.iresnet(101)
    with pytest.raises(ValueError, match=r"filters must be a non-empty sequence of integers > 0; got \(\)"):
        kf.models.simple_cnn(filters=())
