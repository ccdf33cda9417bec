"""The shared test of a Keras object, as Keras's own `run_layer_test`: every registered loss,
head and backbone goes through `run_keras_object_test`, so a newly registered one is tested."""

import os

import keras
import numpy as np
from helpers import check_config_round_trip

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def _finite(x):
    return bool(np.all(np.isfinite(np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64))))


def run_keras_object_test(model, x, y, tmp_path, objects=(), policy="float32", save=True):
    """One compiled model that holds the objects under test.

    Checks: each object's `get_config` round trip (through Keras's serializer); the training
    step's loss is finite and every trainable weight gets a finite, non-zero gradient; the outputs
    are finite; `.keras` save/load keeps the predictions and the optimizer's state, and training
    continues with a finite, falling loss.

    Args:
        model: a compiled `keras.Model` (built under `policy`).
        x, y: one batch for it.
        tmp_path: a folder for the `.keras` file.
        objects: the layers and losses whose configs are checked.
        policy: the dtype policy the model was built under.
        save: whether to check the `.keras` round trip (once per object is enough).
    """
    for obj in objects:
        check_config_round_trip(obj)
    outputs = model(x, training=False)
    for out in keras.tree.flatten(outputs):
        assert _finite(out), "non-finite outputs"
    weights = model.trainable_weights
    grads = _gradients(model, x, y)
    for weight, grad in zip(weights, grads, strict=True):
        assert grad is not None, f"{weight.path} gets no gradient"
        grad = np.asarray(keras.ops.convert_to_numpy(grad), dtype=np.float64)
        assert np.all(np.isfinite(grad)), f"{weight.path}: non-finite gradient under {policy}"
        assert np.any(grad != 0), f"{weight.path} gets a zero gradient"
    if not save:
        return model
    model.fit(x, y, epochs=1, batch_size=len(x), verbose=0, shuffle=False)  # builds the optimizer
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)

    def first_output(m):
        return np.asarray(keras.ops.convert_to_numpy(keras.tree.flatten(m(x, training=False))[0]), np.float64)

    np.testing.assert_allclose(first_output(loaded), first_output(model), atol=1e-5)
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    # The training loss (batch statistics, as fit sees it) keeps falling after the round trip.
    losses = [loaded.train_on_batch(x, y) for _ in range(6)]
    losses = [float(v[0] if isinstance(v, list) else v) for v in losses]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    return loaded


def _gradients(model, x, y):
    """Gradients of the compiled loss (and the model's own losses) w.r.t. every trainable weight."""
    backend = keras.backend.backend()

    def loss_value(outputs):
        total = model.compute_loss(x=x, y=y, y_pred=outputs, training=True)
        return keras.ops.cast(total, "float32")

    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss_value(model(x, training=True))
        assert _finite(value), "non-finite training loss"
        return [None if g is None else tf.convert_to_tensor(g)
                for g in tape.gradient(value, model.trainable_weights)]
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        others = [v.value for v in model.non_trainable_variables]

        def fn(trainable):
            outputs, _, added = model.stateless_call(trainable, others, x, training=True,
                                                     return_losses=True)
            # Losses the layers add (PartialFC's) come back beside the outputs here.
            return loss_value(outputs) + sum(keras.ops.cast(v, "float32") for v in added)

        value, grads = jax.value_and_grad(fn)(trainable)
        assert _finite(value), "non-finite training loss"
        return grads
    if backend == "torch":
        model.zero_grad()
        value = loss_value(model(x, training=True))
        assert _finite(value), "non-finite training loss"
        value.backward()
        return [v.value.grad for v in model.trainable_variables]
    raise NotImplementedError(backend)
