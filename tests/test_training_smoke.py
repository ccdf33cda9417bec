"""Each margin loss trains a small model on a real data set: scikit-learn's bundled digits."""

import keras
import numpy as np
import pytest
from keras import ops
from sklearn.datasets import load_digits

import keras_facemargin as kf

pytestmark = pytest.mark.multibackend


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int32")


def mean_angle_to_centre(embedder, head, x, y):
    features = np.asarray(ops.convert_to_numpy(embedder(x)), dtype=np.float64)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    centres = np.asarray(ops.convert_to_numpy(head.centers), dtype=np.float64)
    cos = np.clip(np.sum(features * centres[y], axis=1), -1, 1)
    return float(np.degrees(np.arccos(cos)).mean())


@pytest.mark.parametrize(
    "loss, learning_rate",
    [
        (kf.losses.NormFaceLoss(scale=16.0), 0.01),
        # Without its paper's annealing, SphereFace can stall on a plateau at a high learning
        # rate (features pointing away from every centre); a gentler rate trains reliably.
        (kf.losses.SphereFaceLoss(margin=3, scale=16.0), 0.003),
        (kf.losses.CosFaceLoss(margin=0.2, scale=16.0), 0.01),
        (kf.losses.ArcFaceLoss(margin=0.3, scale=16.0), 0.01),
        (kf.losses.CombinedMarginLoss(m1=1.0, m2=0.2, m3=0.1, scale=16.0, label_smoothing=0.1), 0.01),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, float) else "",
)
def test_training_lowers_loss_and_angle_to_class_centre(loss, learning_rate, digits):
    x, y = digits
    embedder = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(16)]
    )
    head = kf.heads.CosineHead(10)
    model = keras.Sequential([embedder, head])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    angle_before = mean_angle_to_centre(embedder, head, x, y)
    history = model.fit(x, y, epochs=4, batch_size=128, verbose=0).history["loss"]
    angle_after = mean_angle_to_centre(embedder, head, x, y)
    assert np.all(np.isfinite(history))
    assert history[-1] < 0.7 * history[0]
    assert angle_after < angle_before - 20.0, (angle_before, angle_after)
    accuracy = np.mean(np.argmax(ops.convert_to_numpy(model(x)), axis=1) == y)
    assert accuracy > 0.7
