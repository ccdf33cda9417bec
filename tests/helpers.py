"""Test helpers shared by the test modules: gradients on any backend and the Keras harness."""

import os

import keras
import numpy as np
from keras import ops

# Keras computes float64 losses in float64 on TensorFlow only; its JAX and torch backends demote
# several ops to float32. Comparisons with the float64 references use these tolerances.
FLOAT64 = keras.backend.backend() == "tensorflow"
TOL = dict(rel=1e-9, abs=1e-9) if FLOAT64 else dict(rel=2e-6, abs=2e-6)
GRAD_TOL = dict(rtol=1e-5, atol=1e-7) if FLOAT64 else dict(rtol=2e-3, atol=2e-4)


def value_and_grad(fn, *args):
    """`fn(*args)` and its gradient w.r.t. every arg, on the active backend, as NumPy."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors)
        # A gather's gradient is a tf.IndexedSlices; compare it as the dense array it stands for.
        return float(value), [None if g is None else np.asarray(tf.convert_to_tensor(g)) for g in grads]
    if backend == "jax":
        import jax

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
        return float(value), [np.asarray(g) for g in grads]
    if backend == "torch":
        # Through Keras's conversions, which carry bfloat16 (torch's own .numpy() refuses it).
        tensors = [ops.convert_to_tensor(a).detach().clone().requires_grad_(True) for a in args]
        value = fn(*tensors)
        value.backward()
        return float(value.detach()), [np.asarray(ops.convert_to_numpy(t.grad)) for t in tensors]
    raise NotImplementedError(backend)


def check_config_round_trip(obj):
    """`from_config(get_config())` rebuilds an equal object, through Keras' own serializer."""
    config = obj.get_config()
    clone = obj.__class__.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(revived) is type(obj)
    assert revived.get_config() == config
    return clone


def check_save_load_keeps_training(model, x, y, tmp_path):
    """`.keras` save/load keeps predictions, loss and optimizer state, and training continues."""
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        np.asarray(loaded.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0)), atol=1e-6
    )
    assert type(loaded.loss) is type(model.loss)
    assert loaded.loss.get_config() == model.loss.get_config()
    before = loaded.evaluate(x, y, verbose=0)
    loaded.fit(x, y, epochs=3, batch_size=len(x), verbose=0)
    after = loaded.evaluate(x, y, verbose=0)
    assert np.isfinite(after) and after < before
    return loaded


def finite(x):
    return bool(np.all(np.isfinite(np.asarray(ops.convert_to_numpy(x), dtype=np.float64))))


def numerical_gradient(fn, x, step=1e-6):
    """Central differences of a scalar function of an array."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        orig = x[idx]
        x[idx] = orig + step
        up = fn(x)
        x[idx] = orig - step
        down = fn(x)
        x[idx] = orig
        grad[idx] = (up - down) / (2 * step)
    return grad


def leaf_layers(model):
    """The layers of `model` that hold no layers, nested models walked into, in layer order."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from leaf_layers(layer)
        else:
            yield layer


def conv_channels(model):
    """The `filters` of every convolution of `model`, nested models included, in layer order."""
    return [layer.filters for layer in leaf_layers(model) if hasattr(layer, "filters")]
