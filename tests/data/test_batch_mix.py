import keras
import numpy as np
import pytest
import tensorflow as tf
from data_helpers import FACES

import keras_facemargin as kf
from keras_facemargin.data import BatchMix, ImageIndex, classification_dataset


def batch(rng, n=8, classes=5):
    images = tf.constant(rng.uniform(0, 255, size=(n, 16, 16, 3)).astype("float32"))
    labels = tf.one_hot(np.arange(n) % classes, classes)
    return images, labels


def test_uses_keras_layers():
    mix = BatchMix(mixup=0.2, cutmix=0.3, cutout=0.1)
    assert [type(layer) for layer in mix.layers] == [
        keras.layers.MixUp,
        keras.layers.CutMix,
        keras.layers.RandomErasing,
    ]


def test_each_choice(rng):
    images, labels = batch(rng)
    x, y = BatchMix()(images, labels, 0)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    for kind in ("mixup", "cutmix"):
        x, y = BatchMix(**{kind: 1.0}, seed=1)(images, labels, 0)
        y = y.numpy()
        np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
        assert (y >= 0).all() and (y.max(1) < 1.0 - 1e-3).any(), f"{kind} mixes labels"
        assert not np.array_equal(x, images)
    x, y = BatchMix(cutout=1.0, cutout_fill_value=0.0, seed=1)(images, labels, 0)
    np.testing.assert_array_equal(y, labels)
    changed = (x.numpy() != images.numpy()).any(-1)
    assert changed.any(axis=(1, 2)).all(), "every image has an erased patch"
    assert (x.numpy()[x.numpy() != images.numpy()] == 0).all()


def test_choice_follows_probabilities(rng):
    images, labels = batch(rng, n=4)
    mix = BatchMix(mixup=0.5, cutout=0.5, cutout_fill_value=0.0, seed=3)
    kinds = []
    for step in range(16):
        _, y = mix(images, labels, step)
        kinds.append("mixup" if not np.array_equal(y, labels) else "cutout")
    assert 3 <= kinds.count("mixup") <= 13


def test_errors(rng):
    with pytest.raises(ValueError, match="mixup \\+ cutmix \\+ cutout must be <= 1.*got 1.2"):
        BatchMix(mixup=0.6, cutmix=0.6)
    with pytest.raises(ValueError, match=r"cutout must be a probability in \[0, 1\]; got -0.1"):
        BatchMix(cutout=-0.1)
    images, _ = batch(rng)
    with pytest.raises(
        ValueError, match="labels must be dense one-hot rows.*int32 labels of shape \\(8,\\).*P×K"
    ):
        BatchMix(mixup=1.0)(images, tf.range(8), 0)
    index = ImageIndex.from_directory(FACES)
    with pytest.raises(ValueError, match="mix must be None when training=False"):
        classification_dataset(index, 8, mix=BatchMix(mixup=1.0), training=False)


def test_mixed_batches_train_a_margin_loss():
    index = ImageIndex.from_directory(FACES)
    ds = classification_dataset(
        index,
        batch_size=11,
        image_size=(24, 24),
        seed=0,
        mix=BatchMix(mixup=0.4, cutmix=0.4, cutout=0.2, seed=0),
    )
    x, y = next(iter(ds))
    assert x.shape == (11, 24, 24, 3) and y.shape == (11, 5) and y.dtype == tf.float32
    np.testing.assert_allclose(y.numpy().sum(1), 1.0, atol=1e-5)
    model = keras.Sequential(
        [
            keras.Input((24, 24, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Flatten(),
            keras.layers.Dense(16),
            kf.heads.CosineHead(5),
        ]
    )
    model.compile(optimizer="adam", loss=kf.losses.ArcFaceLoss(margin=0.2, scale=16.0))
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
