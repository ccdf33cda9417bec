"""Argument checks and building blocks shared by the backbones."""

import math

import keras

# PyTorch's BatchNorm defaults, which the reference implementations (and their weights) use.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def check_embedding_dim(embedding_dim):
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim <= 0:
        raise ValueError(f"embedding_dim must be an integer > 0; got {embedding_dim!r}")
    return embedding_dim


def check_width(width):
    number = isinstance(width, (int, float)) and not isinstance(width, bool)
    if not number or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0; got {width!r}")
    return float(width)


def check_dropout(dropout):
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
    return float(dropout)


def check_input_shape(input_shape, name, downsampling):
    """`input_shape` as a tuple `(height, width, channels)` that `downsampling` can reduce.

    The minimum side is the total stride, so the last feature map is at least 1×1 without any
    padding-only rows or columns.
    """
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ValueError(
            f"input_shape must be (height, width, channels) with positive integers; got {input_shape!r}"
        )
    if min(shape[:2]) < downsampling:
        raise ValueError(
            f"input_shape {shape} is too small for {name}: it downsamples by {downsampling}, "
            f"so height and width must be at least {downsampling}"
        )
    return shape


def channels(base, width):
    """`base` channels scaled by the width multiplier, at least 1."""
    return max(1, int(round(base * width)))


def batch_norm(name, **kwargs):
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name, **kwargs
    )


def prelu(name):
    # One slope per channel, initialised at 0.25 as in He et al. (2015) and PyTorch.
    return keras.layers.PReLU(
        alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name
    )


def padded_conv(x, filters, kernel_size, strides, name, use_bias=False, **kwargs):
    """A conv with symmetric zero padding of `kernel_size // 2`, like PyTorch's `padding=1`.

    Keras's `padding="same"` pads only the bottom/right for an even input and stride 2, which
    shifts the sampling grid relative to the reference implementations (and their weights).
    """
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=name, **kwargs
    )(x)


def embedding_batch_norm(name):
    """The final BN of the embedding: no learned scale (as in InsightFace), output in float32.

    A learned scale after a linear layer is redundant; the float32 output keeps embeddings full
    precision under a mixed policy (the cosines and the margin are computed from them).
    """
    return keras.layers.BatchNormalization(
        epsilon=BN_EPSILON, momentum=BN_MOMENTUM, scale=False, dtype="float32", name=name
    )
