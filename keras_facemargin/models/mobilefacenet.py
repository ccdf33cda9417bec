"""MobileFaceNet: a MobileNetV2-style face backbone of about one million parameters."""

import keras

from keras_facemargin import registry
from keras_facemargin.models import _common

# (expansion t, output channels c, repeats n, first stride s), Table 1 of the paper.
_BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
_DOWNSAMPLING = 16


def _depthwise(x, strides, name):
    if strides > 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="valid" if strides > 1 else "same", use_bias=False, name=name
    )(x)


def _bottleneck(x, expansion, filters, strides, name):
    """1×1 expand - BN - PReLU - 3×3 depthwise - BN - PReLU - 1×1 linear project - BN (+ x)."""
    y = keras.layers.Conv2D(x.shape[-1] * expansion, 1, use_bias=False, name=f"{name}_expand")(x)
    y = _common.batch_norm(f"{name}_expand_bn")(y)
    y = _common.prelu(f"{name}_expand_prelu")(y)
    y = _depthwise(y, strides, f"{name}_depthwise")
    y = _common.batch_norm(f"{name}_depthwise_bn")(y)
    y = _common.prelu(f"{name}_depthwise_prelu")(y)
    y = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = _common.batch_norm(f"{name}_project_bn")(y)
    if strides == 1 and x.shape[-1] == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


@registry.register("backbone", "mobilefacenet")
def mobilefacenet(input_shape=(112, 112, 3), embedding_dim=512, width=1.0, name="mobilefacenet"):
    """MobileFaceNet: depthwise-separable bottlenecks and a global depthwise conv (GDConv).

    Global average pooling weighs every position of the last feature map equally, but on an
    aligned face the centre units matter more than the corners. MobileFaceNet replaces the
    pooling by a global depthwise convolution whose kernel covers the whole last feature map
    (7×7 at 112×112), so the network learns one weight per position and channel, followed by a
    linear 1×1 conv to the embedding and BN. Here the GDConv kernel follows the last feature
    map's size, so any input size works. The paper's embedding is 128-dimensional; InsightFace
    uses 512, the default here as for the other backbones.

    Args:
        input_shape: `(height, width, channels)` of the preprocessed images; height and width
            at least 16 (the network downsamples by 16).
        embedding_dim: size of the embedding, > 0.
        width: multiplier of every channel count; below 1 for quick tests.
        name: model name.

    Returns:
        A functional `keras.Model` from images `[batch, height, width, channels]` to embeddings
        `[batch, embedding_dim]` (float32 even under a mixed-precision policy).

    Example:

    ```python
    backbone = keras_facemargin.models.mobilefacenet(input_shape=(112, 112, 3), embedding_dim=128)
    ```

    Reference:
        Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
        Mobile Devices", CCBR 2018.
    """
    input_shape = _common.check_input_shape(input_shape, name, _DOWNSAMPLING)
    embedding_dim = _common.check_embedding_dim(embedding_dim)
    width = _common.check_width(width)

    inputs = keras.Input(input_shape, name="images")
    x = _common.padded_conv(inputs, _common.channels(64, width), 3, 2, "stem_conv")
    x = _common.batch_norm("stem_bn")(x)
    x = _common.prelu("stem_prelu")(x)
    x = _depthwise(x, 1, "stem_depthwise")
    x = _common.batch_norm("stem_depthwise_bn")(x)
    x = _common.prelu("stem_depthwise_prelu")(x)
    for block, (expansion, base, repeats, strides) in enumerate(_BOTTLENECKS, start=1):
        for unit in range(repeats):
            x = _bottleneck(
                x,
                expansion,
                _common.channels(base, width),
                strides if unit == 0 else 1,
                f"block{block}_unit{unit + 1}",
            )
    x = keras.layers.Conv2D(_common.channels(512, width), 1, use_bias=False, name="head_conv")(x)
    x = _common.batch_norm("head_bn")(x)
    x = _common.prelu("head_prelu")(x)
    x = keras.layers.DepthwiseConv2D(x.shape[1:3], use_bias=False, name="gdconv")(x)
    x = _common.batch_norm("gdconv_bn")(x)
    x = keras.layers.Conv2D(embedding_dim, 1, use_bias=False, name="embedding")(x)
    x = keras.layers.Flatten(name="output_flatten")(x)
    outputs = _common.embedding_batch_norm("embedding_bn")(x)
    return keras.Model(inputs, outputs, name=name)
