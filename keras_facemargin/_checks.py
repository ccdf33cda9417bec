"""Every argument and input check of the package, in one vocabulary and one message form.

A check takes the argument's name and value and returns the value in its canonical type, or
raises `ValueError("{name} must be {what is expected}; got {value!r}")`. A string where a number
is expected is refused, not converted (a configuration file that says `epochs: "1"` is a mistake
the user should hear about).

Value checks are plain Python, so the command line checks its flags before Keras (and TensorFlow)
load. Tensor checks (labels, cosines) run eagerly when their tensor holds concrete values; inside a
TensorFlow graph they become a cheap `tf.debugging.Assert`; where neither can raise (XLA,
`jax.jit`) the callers turn the offending samples' losses into NaN so that training stops visibly
(a NaN loss) instead of optimising garbage.
"""

import math
import numbers
import os
import tempfile

import numpy as np

# ---- values (plain Python) --------------------------------------------------------------------


def _got(value):
    text = repr(value)
    if isinstance(value, str):
        text += " (a string)"
    return text


def fail(name, expected, value):
    """Raises the house `ValueError`: `{name} must be {expected}; got {value!r}`."""
    raise ValueError(f"{name} must be {expected}; got {_got(value)}")


def is_integer(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value):
    numeric = isinstance(value, (numbers.Real, np.floating, np.integer))
    return numeric and not isinstance(value, (bool, np.bool_))


def check_int(name, value, minimum=None, maximum=None):
    """An integer in [minimum, maximum] (either bound may be None)."""
    if not is_integer(value) or (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            expected = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            expected = f"an integer >= {minimum}"
        elif maximum is not None:
            expected = f"an integer <= {maximum}"
        else:
            expected = "an integer"
        fail(name, expected, value)
    return int(value)


def check_number(name, value, low=None, high=None, low_open=False, high_open=False, unit=""):
    """A finite number in the interval from `low` to `high` (open ends where asked)."""
    ok = is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        low, high = (None if b is None else f"{b:g}" for b in (low, high))
        if low is not None and high is not None:
            expected = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            expected = f"a finite number {'>' if low_open else '>='} {low}"
        elif high is not None:
            expected = f"a finite number {'<' if high_open else '<='} {high}"
        else:
            expected = "a finite number"
        fail(name, expected + unit, value)
    return float(value)


def check_choice(name, value, choices):
    """One of `choices` (compared as given)."""
    if value not in choices:
        fail(name, "one of " + ", ".join(map(str, choices)), value)
    return value


def check_str(name, value, allow_empty=False):
    if not isinstance(value, str) or (not allow_empty and not value):
        fail(name, "a non-empty string" if not allow_empty else "a string", value)
    return value


def check_existing_file(name, path, what="file"):
    """A path to an existing file; `what` names the kind of file in the message."""
    check_str(name, path)
    if not os.path.isfile(path):
        reason = "a folder" if os.path.isdir(path) else "no such file"
        raise ValueError(f"{name} must be an existing {what}; got {path!r} ({reason})")
    return path


def check_existing_dir(name, path):
    """A path to an existing folder."""
    check_str(name, path)
    if not os.path.isdir(path):
        reason = "a file" if os.path.exists(path) else "no such folder"
        raise ValueError(f"{name} must be an existing folder; got {path!r} ({reason})")
    return path


def check_writable_dir(name, path):
    """A folder that exists and can be written, or can be created: checked before any work.

    Nothing is left behind: a temporary file is created and removed in the nearest existing
    ancestor, which must be a folder.
    """
    check_str(name, path)
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ValueError(f"{name} must be a folder that can be written; got {path!r} "
                         f"({probe!r} is a file)")
    try:  # a real probe: permission bits say nothing to root, nor of a read-only mount
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        where = "it" if probe == os.path.abspath(path) else repr(probe)
        raise ValueError(f"{name} must be a folder that can be written; got {path!r} ({where} "
                         f"cannot be written: {error.strerror})") from None
    return path




def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        fail(name, "True or False", value)
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



# ---- tensors -----------------------------------------------------------------------------------


def concrete(x):
    """Returns `x` as a NumPy array when its values are known now, else None."""
    import keras

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

        from keras_facemargin import _backend

        if torch.compiler.is_compiling() or _backend.keras_placeholder_call():
            return None
    return np.asarray(keras.ops.convert_to_numpy(x))


def graph_assert(condition, message, value):
    """`tf.debugging.Assert` in a TensorFlow graph; nothing on other backends (see module doc)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly():
            tf.debugging.Assert(condition, [message, value])


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
    from keras import ops

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
    import keras

    from keras_facemargin import _maths

    policy = keras.dtype_policies.get(dtype or keras.backend.floatx())
    return "float32" if policy.compute_dtype in _maths.HALF else dtype


def to_loss_dtype(y_pred, dtype):
    """`y_pred` as a tensor in the loss's dtype; half precision through `_maths.saturating_cast`."""
    import keras
    from keras import ops

    from keras_facemargin import _maths

    if not hasattr(y_pred, "dtype") or keras.backend.standardize_dtype(y_pred.dtype) not in _maths.HALF:
        return y_pred
    return _maths.saturating_cast(ops.convert_to_tensor(y_pred), dtype)


def reduce_empty(loss, reduction):
    """Keras returns the per-sample values unreduced when a batch is statically empty (shape
    `(0,)`); a reduced loss of an empty batch is 0 (with zero gradients)."""
    from keras import ops

    if reduction not in (None, "none") and tuple(loss.shape) == (0,):
        return ops.sum(loss)
    return loss


# ---- data and scores ---------------------------------------------------------------------------


def check_fraction(name, value):
    """A number in (0, 1)."""
    return check_number(name, value, 0.0, 1.0, low_open=True, high_open=True)


def check_matrix(name, x):
    """`x` as a 2-D NumPy array `[n, dim]`."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [n, dim]; got shape {x.shape}")
    return x
