"""Shared maths at the bottom of the package: normalisation, norms and casts that stay finite.

Heads and losses both use these, so they live below both. Every function here has a hand-written
gradient with one property in common: for finite inputs neither the value nor the gradient is Inf
or NaN, whatever the dtype (float32, float16, bfloat16, float64).

- Norms are computed on the row scaled by its largest magnitude, so a row of 1e30s does not
  overflow float32 (its squares would) and keeps its direction.
- Rows shorter than sqrt(epsilon) are treated as zero: they normalise to x / sqrt(epsilon) (zero
  for a zero row) and pass no gradient back. The exact derivative there, 1 / sqrt(epsilon) = 1e6
  for the default epsilon, overflows float16 (largest finite value 65504) as soon as the
  upstream gradient exceeds 0.07, and in any precision it would move the layer before by a
  million times the loss gradient, for a feature that has no direction.
- Half-precision inputs are computed in float32. The gradient that goes back to such an input is
  computed in float32 too and *saturated* to the input dtype's finite range before the cast
  (Keras's plain cast turns, say, the 1e5·g gradient of a float16 row of norm 1e-5 into Inf).
  Saturation changes only gradients that would otherwise be Inf.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_facemargin import _backend

HALF = ("float16", "bfloat16")


def compute_dtype(*dtypes):
    """The dtype to compute in: float64 if any of `dtypes` is, else float32."""
    return "float64" if any(str(d) == "float64" for d in dtypes if d is not None) else "float32"


def _tensor(x):
    """`x` as a tensor; a variable is read here, outside any custom gradient (which TensorFlow
    would otherwise ask for its gradient w.r.t. the variable)."""
    if isinstance(x, keras.Variable):
        return _backend.read(x)
    return ops.convert_to_tensor(x)


def _standard(dtype):
    return keras.backend.standardize_dtype(dtype)


def saturate(x, dtype):
    """`x` cast to `dtype`, with values beyond `dtype`'s finite range clipped to it (not Inf)."""
    dtype = _standard(dtype)
    if dtype in HALF:
        limit = float(np.finfo(np.float16).max) if dtype == "float16" else 3.3895314e38
        x = ops.clip(x, -limit, limit)
    return ops.cast(x, dtype)


def saturating_cast(x, dtype):
    """`ops.cast(x, dtype)` whose gradient is saturated to the dtype of `x` (see module doc)."""
    x = _tensor(x)
    source, dtype = _standard(x.dtype), _standard(dtype)
    if source == dtype:
        return x

    @ops.custom_gradient
    def cast(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return saturate(upstream, source)

        return ops.cast(x, dtype), grad

    return cast(x)


def _scaled(x, axis):
    """`(y, m, n)` with m = max |x| along `axis`, y = x / m (|y| <= 1) and n = ||y||: ||x|| = m·n."""
    m = ops.max(ops.abs(x), axis=axis, keepdims=True)
    y = x / ops.where(m > 0, m, ops.ones_like(m))
    n = ops.sqrt(ops.sum(ops.square(y), axis=axis, keepdims=True))
    return y, m, n


def l2_normalize(x, axis=-1, epsilon=1e-12, dtype=None):
    """`x / max(||x||, sqrt(epsilon))`, finite with finite gradients for every finite `x`.

    Args:
        x: a tensor of any float dtype.
        axis: the axis normalised.
        epsilon: floor of the squared norm: rows shorter than sqrt(epsilon) are divided by
            sqrt(epsilon), so a zero row maps to zero, and get no gradient (see module doc).
        dtype: the output dtype; default that of `x`. Half precision is computed in float32.

    Returns:
        The normalised tensor, in `dtype`.
    """
    x = _tensor(x)
    source = _standard(x.dtype)
    dtype = source if dtype is None else _standard(dtype)
    work = compute_dtype(source, dtype)
    floor = math.sqrt(epsilon)

    @ops.custom_gradient
    def normalize(x):
        x = ops.cast(x, work)
        y, m, n = _scaled(x, axis)
        floored = m * n < floor  # m·n may overflow to Inf for huge rows: then not floored
        unit = ops.where(floored, x / floor, y / ops.where(n > 0, n, ops.ones_like(n)))

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            g = ops.cast(upstream, work)
            radial = ops.sum(unit * g, axis=axis, keepdims=True)
            safe_n = ops.where(n > 0, n, ops.ones_like(n))
            safe_m = ops.where(m > 0, m, ops.ones_like(m))
            # (g − u <u, g>) / ||x||, divided by n then m so that it cannot overflow.
            tangent = (g - unit * radial) / safe_n / safe_m
            return saturate(ops.where(floored, ops.zeros_like(tangent), tangent), source)

        return ops.cast(unit, dtype), grad

    return normalize(x)


def norm(x, axis=-1, dtype=None, keepdims=False):
    """The Euclidean norm along `axis`, without overflow for rows near the dtype's limit, with
    gradient x / ||x|| (0 for a zero row) saturated to the dtype of `x`.

    Args:
        x: a tensor of any float dtype.
        axis: the reduced axis.
        dtype: the output dtype; default float32 for half precision, else that of `x`.
        keepdims: keep the reduced axis (size 1).
    """
    x = _tensor(x)
    source = _standard(x.dtype)
    if dtype is None:
        dtype = "float32" if source in HALF else source
    dtype = _standard(dtype)
    work = compute_dtype(source, dtype)

    @ops.custom_gradient
    def euclidean(x):
        x = ops.cast(x, work)
        y, m, n = _scaled(x, axis)
        value = m * n

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            g = ops.cast(upstream, work)
            if not keepdims:
                g = ops.expand_dims(g, axis)
            direction = y / ops.where(n > 0, n, ops.ones_like(n))
            return saturate(g * direction, source)

        if not keepdims:
            value = ops.squeeze(value, axis=axis)
        return ops.cast(value, dtype), grad

    return euclidean(x)
