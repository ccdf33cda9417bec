"""A VGG-style CNN for small images (32–64 px), fast on a CPU."""

import keras

from keras_facemargin import registry
from keras_facemargin.models import _common


@registry.register("backbone", "small_vgg")
def small_vgg(input_shape=(48, 48, 3), embedding_dim=128, filters=(32, 64, 128, 256), width=1.0,
              dropout=0.2, name="small_vgg"):
    """Blocks of two 3×3 Conv-BN-ReLU and a 2×2 max pooling, then Flatten-Dropout-Dense-BN.

    The network a Keras user writes for small images, and on a CPU the right capacity for them:
    on 48 px emoji it trained as fast as it runs and as well as the half-width IR-ResNet-18
    (`small_resnet`), which was slower (BENCHMARKS.md, "quality"). Flatten keeps the spatial
    layout in the embedding, as IR-ResNet's output block does.

    Args:
        input_shape: `(height, width, channels)`; height and width at least `2 ** len(filters)`.
        embedding_dim: size of the embedding, > 0.
        filters: channels of each block; each block halves the height and width.
        width: multiplier of `filters`.
        dropout: dropout rate before the embedding layer, in [0, 1).
        name: model name.

    Returns:
        A functional `keras.Model` from images to embeddings `[batch, embedding_dim]` (float32
        even under a mixed-precision policy).

    Example:

    ```python
    backbone = keras_facemargin.models.small_vgg(input_shape=(48, 48, 3), embedding_dim=128)
    ```
    """
    filters = tuple(filters)
    if not filters or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters):
        raise ValueError(f"filters must be a non-empty sequence of integers > 0; got {filters!r}")
    input_shape = _common.check_input_shape(input_shape, name, 2 ** len(filters))
    embedding_dim = _common.check_embedding_dim(embedding_dim)
    dropout = _common.check_dropout(dropout)
    width = _common.check_width(width)

    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for block, f in enumerate(filters, start=1):
        f = _common.channels(f, width)
        for conv in (1, 2):
            x = keras.layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = _common.batch_norm(f"block{block}_bn{conv}")(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{conv}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(embedding_dim, use_bias=False, name="embedding")(x)
    outputs = _common.embedding_batch_norm("embedding_bn")(x)
    return keras.Model(inputs, outputs, name=name)
