"""SphereFace-20, the residual CNN of the SphereFace paper."""

import keras

from keras_facemargin import registry
from keras_facemargin.models import _common

_STAGES = ((64, 1), (128, 2), (256, 4), (512, 1))
_DOWNSAMPLING = 16


@registry.register("backbone", "sphereface20")
def sphereface20(input_shape=(112, 96, 3), embedding_dim=512, width=1.0, name="sphereface20"):
    """SphereFace-20: four stride-2 convs, each followed by 1, 2, 4 and 1 residual units.

    The 20-layer CNN that SphereFace and CosFace train with A-Softmax/CosFace: 4 downsampling
    convs + 8 residual units of two 3×3 convs, PReLU everywhere, no batch normalisation, and a
    fully connected embedding layer on the flattened last feature map. As in the paper, the
    residual convs start from a Gaussian with σ = 0.01 so that each unit starts close to
    the identity, which is what lets this BN-free network train.

    Args:
        input_shape: `(height, width, channels)` of the preprocessed images (the paper uses
            112×96); height and width at least 16 (the network downsamples by 16).
        embedding_dim: size of the embedding, > 0 (the paper uses 512).
        width: multiplier of the stage widths (64, 128, 256, 512); below 1 for quick tests.
        name: model name.

    Returns:
        A functional `keras.Model` from images `[batch, height, width, channels]` to embeddings
        `[batch, embedding_dim]` (float32 even under a mixed-precision policy).

    Example:

    ```python
    backbone = keras_facemargin.models.sphereface20(input_shape=(112, 96, 3))
    ```

    Reference:
        Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017.
    """
    input_shape = _common.check_input_shape(input_shape, name, _DOWNSAMPLING)
    embedding_dim = _common.check_embedding_dim(embedding_dim)
    width = _common.check_width(width)

    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for stage, (base, units) in enumerate(_STAGES, start=1):
        filters = _common.channels(base, width)
        prefix = f"stage{stage}"
        x = _common.padded_conv(
            x, filters, 3, 2, f"{prefix}_conv", use_bias=True, kernel_initializer="glorot_uniform"
        )
        x = _common.prelu(f"{prefix}_prelu")(x)
        for unit in range(1, units + 1):
            y = x
            for conv in (1, 2):
                y = keras.layers.Conv2D(
                    filters,
                    3,
                    padding="same",
                    kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                    name=f"{prefix}_unit{unit}_conv{conv}",
                )(y)
                y = _common.prelu(f"{prefix}_unit{unit}_prelu{conv}")(y)
            x = keras.layers.Add(name=f"{prefix}_unit{unit}_add")([x, y])
    x = keras.layers.Flatten(name="output_flatten")(x)
    x = keras.layers.Dense(embedding_dim, name="embedding")(x)
    outputs = keras.layers.Activation("linear", dtype="float32", name="embedding_float32")(x)
    return keras.Model(inputs, outputs, name=name)
