"""Every registered loss, head and backbone through the shared harness (tests/keras_harness.py):
config round trip, `.keras` save/load that keeps training, float16/bfloat16, finite outputs and
every weight's gradient. A newly registered member is tested here without a new test."""

import keras
import numpy as np
import pytest
from keras_harness import POLICIES, run_keras_object_test

import keras_facemargin as kf
from keras_facemargin import registry

CLASSES, DIM, BATCH = 4, 8, 8


def _data(rng, size=16):
    x = rng.uniform(0, 255, (BATCH, size, size, 3)).astype("float32")
    y = np.arange(BATCH) % CLASSES  # P×K: 4 identities × 2 images
    return x, y


def _backbone(size=16):
    return kf.models.get_backbone("simple_cnn", input_shape=(size, size, 3), embedding_dim=DIM)


@pytest.mark.multibackend
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", registry.names("loss"))
def test_every_registered_loss(name, policy, tmp_path, rng):
    keras.config.set_dtype_policy(policy)
    loss = kf.losses.get(name)
    margin = isinstance(loss, kf.losses.MarginSoftmaxLoss)
    model, _ = kf.models.build_recognizer(_backbone(), CLASSES if margin else None, loss=loss)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
    x, y = _data(rng)
    objects = [loss] + [layer for layer in model.layers if isinstance(layer, kf.heads.CosineHead)]
    out = run_keras_object_test(model, x, y, tmp_path, objects, policy, save=policy == "float32")
    if margin and policy != "float32":
        assert keras.backend.standardize_dtype(model(x).dtype) == "float32"  # the head's cosines
    assert out is not None


@pytest.mark.multibackend
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", registry.names("head"))
def test_every_registered_head(name, policy, tmp_path, rng):
    keras.config.set_dtype_policy(policy)
    x, y = _data(rng)
    if name == "partial_fc":
        head = kf.heads.PartialFC(CLASSES, loss=kf.losses.CosFaceLoss(scale=16.0), sample_rate=1.0,
                                  name="partial_fc")
        model, _ = kf.models.build_recognizer(_backbone(), CLASSES, partial_fc=head)
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        inputs = (x, y.astype("int32"))
        run_keras_object_test(model, inputs, None, tmp_path, [head], policy, save=policy == "float32")
        return
    head = registry.get("head", name, num_classes=CLASSES)
    model = keras.Sequential([_backbone(), head])
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=kf.losses.ArcFaceLoss(scale=16.0))
    run_keras_object_test(model, x, y, tmp_path, [head], policy, save=policy == "float32")
    assert keras.backend.standardize_dtype(model(x).dtype) == "float32"


@pytest.mark.multibackend
@pytest.mark.parametrize("name", registry.names("backbone"))
def test_every_registered_backbone(name, tmp_path, rng):
    size = 16 if name != "sphereface20" else 16
    width = {} if name in ("simple_cnn",) else {"width": 0.125}
    backbone = kf.models.get_backbone(name, input_shape=(size, size, 3), embedding_dim=DIM, **width)
    model, _ = kf.models.build_recognizer(backbone, CLASSES)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=kf.losses.CosFaceLoss(scale=16.0))
    x, y = _data(rng, size)
    run_keras_object_test(model, x, y, tmp_path, [], "float32", save=name in ("simple_cnn", "small_vgg"))
