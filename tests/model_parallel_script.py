"""PartialFC with its class centres sharded over two devices by Keras's own model parallelism
(`keras.distribution.ModelParallel`, JAX backend, two host CPU devices); for
tests/test_distribute.py. Trains the same model for two steps unsharded and sharded and writes
both results to OUT.npz.

    python tests/model_parallel_script.py OUT.npz
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_facemargin as kf  # noqa: E402

CLASSES, DIM = 64, 16


def train(x, y):
    keras.utils.set_random_seed(1)
    images, labels = keras.Input((8,)), keras.Input((), dtype="int32")
    head = kf.heads.PartialFC(CLASSES, loss=kf.losses.ArcFaceLoss(scale=16.0), sample_rate=0.5,
                              seed=3, name="partial_fc")
    model = keras.Model([images, labels], head(keras.layers.Dense(DIM)(images), labels))
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    history = model.fit((x, y), epochs=2, batch_size=len(x), shuffle=False, verbose=0)
    return head, model, history.history["loss"]


def main(out):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8)).astype("float32")
    y = rng.integers(0, CLASSES, 16).astype("int32")
    head, _, plain_losses = train(x, y)
    plain = np.asarray(head.kernel.value)

    devices = keras.distribution.list_devices("cpu")
    mesh = keras.distribution.DeviceMesh((1, 2), axis_names=("batch", "model"), devices=devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout["partial_fc/kernel"] = ("model", None)  # rows = classes, split over "model"
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    head, _, sharded_losses = train(x, y)
    value = head.kernel.value
    np.savez(out, devices=len(devices), plain=plain, sharded=np.asarray(value),
             shard_shapes=np.array([shard.data.shape for shard in value.addressable_shards]),
             plain_losses=plain_losses, sharded_losses=sharded_losses)


if __name__ == "__main__":
    main(sys.argv[1])
