"""A small CNN for tests, demos and tiny images."""

import keras

from keras_facemargin import registry
from keras_facemargin.models import _common


@registry.register("backbone", "simple_cnn")
def simple_cnn(
    input_shape=(32, 32, 3), embedding_dim=64, filters=(16, 32, 64), width=1.0, name="simple_cnn"
):
    """A few stride-2 Conv-BN-ReLU layers, global average pooling, Dense and BN.

    Not a face-recognition architecture: a backbone that trains in seconds on a CPU, for
    tests, the demo and data sets of small images (such as 8×8 digits).

    Args:
        input_shape: `(height, width, channels)`; height and width at least `2 ** len(filters)`.
        embedding_dim: size of the embedding, > 0.
        filters: channels of each conv layer, each of which halves the height and width.
        width: multiplier of `filters`.
        name: model name.

    Returns:
        A functional `keras.Model` from images `[batch, height, width, channels]` to embeddings
        `[batch, embedding_dim]` (float32 even under a mixed-precision policy).

    Example:

    ```python
    backbone = keras_facemargin.models.simple_cnn(input_shape=(8, 8, 1), filters=(32, 64))
    ```
    """
    filters = tuple(filters)
    if not filters or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters):
        raise ValueError(f"filters must be a non-empty sequence of integers > 0; got {filters!r}")
    input_shape = _common.check_input_shape(input_shape, name, 2 ** len(filters))
    embedding_dim = _common.check_embedding_dim(embedding_dim)
    width = _common.check_width(width)

    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = _common.padded_conv(x, _common.channels(f, width), 3, 2, f"conv{i}")
        x = _common.batch_norm(f"conv{i}_bn")(x)
        x = keras.layers.ReLU(name=f"conv{i}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(embedding_dim, use_bias=False, name="embedding")(x)
    outputs = _common.embedding_batch_norm("embedding_bn")(x)
    return keras.Model(inputs, outputs, name=name)
