"""Input checks shared by heads and losses.

A check runs eagerly when its tensor holds concrete values (a `ValueError` that names the argument);
inside a TensorFlow graph it becomes a cheap `tf.debugging.Assert`; where neither can raise (XLA,
`jax.jit`) the callers turn the offending samples' losses into NaN so that training stops visibly
(`keras.callbacks.TerminateOnNaN`) instead of optimising garbage.
"""

import keras
import numpy as np
from keras import ops

from keras_facemargin import _maths


def concrete(x):
    """Returns `x` as a NumPy array when its values are known now, else None."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly() or not hasattr(x, "numpy"):
            return None
    elif backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    elif backend == "torch":
        import torch

        if torch.compiler.is_compiling():
            return None
    return np.asarray(keras.ops.convert_to_numpy(x))


def graph_assert(condition, message, value):
    """`tf.debugging.Assert` in a TensorFlow graph; nothing on other backends (see module doc)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            tf.debugging.Assert(condition, [message, value])


def is_number(value):
    numeric = isinstance(value, (int, float, np.integer, np.floating))
    return numeric and not isinstance(value, (bool, np.bool_))


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_integer(name, value, low, doc=""):
    """An integer >= low (an integral float such as 4.0 counts; a bool or a string does not)."""
    integral = is_number(value) and np.isfinite(value) and float(value).is_integer()
    if not integral or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{doc}; got {value!r}")
    return int(value)


def keras_object(name, value, getter, what):
    """`getter(value)` (keras.initializers.get, ...) with its errors in the house form."""
    try:
        return getter(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{name} must be {what} (a name, a config dict or an instance); got {value!r}"
        ) from None


def check_finite(name, value):
    if not is_number(value) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def check_positive(name, value, allow_zero=False):
    number = is_number(value) and np.isfinite(value)
    if not number or not (value >= 0 if allow_zero else value > 0):
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    return float(value)


def check_range(name, value, low, high, high_inclusive=True, doc=""):
    if not is_number(value) or not np.isfinite(value):
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be a finite number in [{low}, {high}{bracket}; got {value!r}")
    ok = low <= value <= high if high_inclusive else low <= value < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}{doc}; got {value!r}")
    return float(value)


def check_rank(name, x, rank, shape_doc):
    if len(x.shape) != rank:
        raise ValueError(f"{name} must have shape {shape_doc}; got shape {tuple(x.shape)}")


def check_finite_rows(name, x, what):
    """Eagerly: a ValueError naming NaN/Inf rows of `x` `[batch, ...]` (in graphs: nothing)."""
    values = concrete(x)
    if values is None or not values.size:
        return
    finite = np.isfinite(values)
    if not finite.all():
        kinds = " or ".join(k for k, bad in (("NaN", np.isnan(values).any()), ("Inf", np.isinf(values).any()))
                            if bad)
        rows = int((~finite.reshape(len(values), -1).all(axis=-1)).sum())
        raise ValueError(f"{name} must be finite {what}; got NaN or Inf in {rows} of {len(values)} rows "
                         f"({kinds})")


def check_same_batch(y_true, y_pred):
    batch, batch_pred = y_true.shape[0], y_pred.shape[0]
    if batch is not None and batch_pred is not None and batch != batch_pred:
        raise ValueError(
            f"y_true and y_pred must have the same batch size; got y_true shape "
            f"{tuple(y_true.shape)} and y_pred shape {tuple(y_pred.shape)}"
        )


def sparse_labels(y_true, num_classes, check):
    """Integer labels `[batch]` from `[batch]` or `[batch, 1]`, plus a validity mask (or None)."""
    if len(y_true.shape) == 2:
        y_true = ops.squeeze(y_true, axis=-1)
    values = concrete(y_true) if check else None
    if values is not None:
        if values.size and not np.all(np.isfinite(values)):
            raise ValueError("y_true must hold integer class labels; got NaN or Inf")
        if values.size and np.any(values != np.round(values)):
            bad = values[values != np.round(values)][0]
            raise ValueError(f"y_true must hold integer class labels; got {bad:g}")
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"labels must be in [0, num_classes={num_classes}); got min label "
                f"{values.min():g}, max label {values.max():g}"
            )
    labels = ops.cast(y_true, "int32")
    if not check or values is not None:
        return labels, None
    in_range = ops.logical_and(labels >= 0, labels < num_classes)
    valid = in_range
    if "float" in str(y_true.dtype):
        # Casting would truncate 2.9 to 2 (and NaN to anything): refuse non-integral values first.
        integral = ops.equal(y_true, ops.round(y_true))
        graph_assert(
            ops.all(integral),
            "y_true must hold integer class labels; got a non-integral (or NaN) label among",
            y_true,
        )
        valid = ops.logical_and(in_range, integral)
    graph_assert(
        ops.all(in_range),
        f"labels must be in [0, num_classes={num_classes}); got min/max label",
        ops.stack([ops.min(labels), ops.max(labels)]),
    )
    return labels, valid


def loss_dtype(dtype):
    """A loss's computation dtype: float32 where `dtype` (or the global default) is half precision."""
    policy = keras.dtype_policies.get(dtype or keras.backend.floatx())
    return "float32" if policy.compute_dtype in _maths.HALF else dtype


def to_loss_dtype(y_pred, dtype):
    """`y_pred` as a tensor in the loss's dtype; half precision through `_maths.saturating_cast`."""
    if not hasattr(y_pred, "dtype") or keras.backend.standardize_dtype(y_pred.dtype) not in _maths.HALF:
        return y_pred
    return _maths.saturating_cast(ops.convert_to_tensor(y_pred), dtype)


def reduce_empty(loss, reduction):
    """Keras returns the per-sample values unreduced when a batch is statically empty (shape
    `(0,)`); a reduced loss of an empty batch is 0 (with zero gradients)."""
    if reduction not in (None, "none") and tuple(loss.shape) == (0,):
        return ops.sum(loss)
    return loss
