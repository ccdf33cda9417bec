"""IR-ResNet, the "improved residual network" that ArcFace trains (InsightFace's iresnet)."""

import keras

from keras_facemargin import registry
from keras_facemargin.models import _common

_STAGES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
_WIDTHS = (64, 128, 256, 512)
_DOWNSAMPLING = 16


def _unit(x, filters, strides, name):
    """BN-Conv-BN-PReLU-Conv-BN with the stride in the second conv, plus the shortcut."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_downsample_conv"
        )(x)
        shortcut = _common.batch_norm(f"{name}_downsample_bn")(shortcut)
    y = _common.batch_norm(f"{name}_bn1")(x)
    y = _common.padded_conv(y, filters, 3, 1, f"{name}_conv1")
    y = _common.batch_norm(f"{name}_bn2")(y)
    y = _common.prelu(f"{name}_prelu")(y)
    y = _common.padded_conv(y, filters, 3, strides, f"{name}_conv2")
    y = _common.batch_norm(f"{name}_bn3")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def iresnet(depth, input_shape=(112, 112, 3), embedding_dim=512, width=1.0, dropout=0.0, name=None):
    """IR-ResNet: the ResNet variant of ArcFace, mapping face crops to embeddings.

    Compared with the ImageNet ResNet it keeps a stride-1 stem (faces are small, 112×112), puts
    BN before the first conv of each unit and the stride in the second conv (the "IR" unit,
    BN-Conv-BN-PReLU-Conv-BN), and replaces global pooling with the "E" output block
    BN-Dropout-Flatten-Dense-BN, which keeps the spatial layout of the face in the embedding.
    The layout follows InsightFace's `iresnet.py` (symmetric padding, BN epsilon 1e-5, PReLU
    slopes starting at 0.25); the embedding Dense has no bias, since the BN after it removes one.

    Args:
        depth: 18, 34, 50 or 100; units per stage (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 14, 3) or
            (3, 13, 30, 3).
        input_shape: `(height, width, channels)` of the preprocessed images; height and width
            at least 16 (the network downsamples by 16).
        embedding_dim: size of the embedding, > 0.
        width: multiplier of the stage widths (64, 128, 256, 512); below 1 for quick tests.
        dropout: dropout rate before the embedding layer, in [0, 1).
        name: model name; `iresnet{depth}` by default.

    Returns:
        A functional `keras.Model` from images `[batch, height, width, channels]` to embeddings
        `[batch, embedding_dim]` (float32 even under a mixed-precision policy).

    Example:

    ```python
    backbone = keras_facemargin.models.iresnet(50, input_shape=(112, 112, 3))
    embeddings = backbone(images)  # [batch, 512]
    ```

    Reference:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    """
    if depth not in _STAGES:
        raise ValueError(f"depth must be one of {sorted(_STAGES)}; got {depth!r}")
    name = name or f"iresnet{depth}"
    input_shape = _common.check_input_shape(input_shape, name, _DOWNSAMPLING)
    embedding_dim = _common.check_embedding_dim(embedding_dim)
    width = _common.check_width(width)
    dropout = _common.check_dropout(dropout)

    inputs = keras.Input(input_shape, name="images")
    x = _common.padded_conv(inputs, _common.channels(64, width), 3, 1, "stem_conv")
    x = _common.batch_norm("stem_bn")(x)
    x = _common.prelu("stem_prelu")(x)
    for stage, (units, base) in enumerate(zip(_STAGES[depth], _WIDTHS, strict=True), start=1):
        filters = _common.channels(base, width)
        for unit in range(units):
            x = _unit(x, filters, 2 if unit == 0 else 1, f"stage{stage}_unit{unit + 1}")
    x = _common.batch_norm("output_bn")(x)
    x = keras.layers.Dropout(dropout, name="output_dropout")(x)
    x = keras.layers.Flatten(name="output_flatten")(x)
    x = keras.layers.Dense(embedding_dim, use_bias=False, name="embedding")(x)
    outputs = _common.embedding_batch_norm("embedding_bn")(x)
    return keras.Model(inputs, outputs, name=name)


def _variant(depth):
    def build(input_shape=(112, 112, 3), embedding_dim=512, width=1.0, dropout=0.0, name=None):
        return iresnet(depth, input_shape, embedding_dim, width=width, dropout=dropout, name=name)

    build.__name__ = build.__qualname__ = f"iresnet{depth}"
    build.__doc__ = f"""IR-ResNet-{depth}, ArcFace's backbone: `iresnet({depth}, ...)`.

    Stages of {', '.join(map(str, _STAGES[depth]))} IR units; see `iresnet` for the architecture.

    Args:
        input_shape: `(height, width, channels)` of the preprocessed images; height and width
            at least 16 (the network downsamples by 16).
        embedding_dim: size of the embedding, > 0.
        width: multiplier of the stage widths (64, 128, 256, 512); below 1 for quick tests.
        dropout: dropout rate before the embedding layer, in [0, 1).
        name: model name; `iresnet{depth}` by default.

    Returns:
        A functional `keras.Model` from images `[batch, height, width, channels]` to embeddings
        `[batch, embedding_dim]` (float32 even under a mixed-precision policy).

    Example:

    ```python
    backbone = keras_facemargin.models.iresnet{depth}(input_shape=(112, 112, 3))
    ```

    Reference:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    """
    return build


iresnet18 = registry.register("backbone", "iresnet18")(_variant(18))
iresnet34 = registry.register("backbone", "iresnet34")(_variant(34))
iresnet50 = registry.register("backbone", "iresnet50")(_variant(50))
iresnet100 = registry.register("backbone", "iresnet100")(_variant(100))


@registry.register("backbone", "small_resnet")
def small_resnet(input_shape=(48, 48, 3), embedding_dim=128, width=0.5, dropout=0.2, name="small_resnet"):
    """IR-ResNet-18 at half width (stages of 32, 64, 128 and 256 channels) for 32–64 px images.

    The same units and output block as `iresnet18`, with a quarter of its multiply-adds: at
    48×48 about as many as a plain four-block VGG-style CNN of the same widths, so it trains as
    fast on a CPU, and the residual units train deeper and better. Images down to 16×16.

    Args:
        input_shape: `(height, width, channels)`; height and width at least 16.
        embedding_dim: size of the embedding, > 0.
        width: multiplier of IR-ResNet's stage widths (64, 128, 256, 512).
        dropout: dropout rate before the embedding layer, in [0, 1).
        name: model name.

    Returns:
        A functional `keras.Model` from images to embeddings `[batch, embedding_dim]`.

    Example:

    ```python
    backbone = keras_facemargin.models.small_resnet(input_shape=(48, 48, 3), embedding_dim=128)
    ```
    """
    return iresnet(18, input_shape, embedding_dim, width=width, dropout=dropout, name=name)
