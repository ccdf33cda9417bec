"""Face backbones: functional Keras models from preprocessed images to embeddings.

Pick one by function or by name: `keras_facemargin.models.get_backbone("iresnet50")`. Every
backbone maps images `[batch, height, width, channels]` to embeddings `[batch, embedding_dim]`,
accepts any input size its downsampling supports and any embedding size, and is built from
`keras.layers` only (no backend-specific code; checked on TensorFlow and JAX), so it also runs
under a mixed-precision policy, with float32 embeddings.
"""

from keras_facemargin import registry
from keras_facemargin.models.iresnet import (
    iresnet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    small_resnet,
)
from keras_facemargin.models.mobilefacenet import mobilefacenet
from keras_facemargin.models.recognizer import build_recognizer
from keras_facemargin.models.simple_cnn import simple_cnn
from keras_facemargin.models.small_vgg import small_vgg
from keras_facemargin.models.sphereface import sphereface20


def backbone_names():
    """The registered backbone names, sorted.

    Returns:
        A sorted list of the names `get_backbone` takes (`["iresnet100", "iresnet18", ...]`).
    """
    return registry.names("backbone")


def get_backbone(name, input_shape=(112, 112, 3), embedding_dim=512, **kwargs):
    """A new backbone from its registered name.

    Args:
        name: one of `backbone_names()`; case and `-` for `_` do not matter (`"IResNet50"`).
        input_shape: `(height, width, channels)` of the preprocessed images.
        embedding_dim: size of the embedding, > 0.
        **kwargs: the builder's other arguments, such as `width` or `dropout` (see each builder).

    Returns:
        A `keras.Model` from images `[batch, height, width, channels]` to embeddings
        `[batch, embedding_dim]`.

    Example:

    ```python
    backbone = keras_facemargin.models.get_backbone("iresnet50", input_shape=(112, 112, 3))
    ```
    """
    if not isinstance(name, str):
        raise ValueError(f"Unknown backbone {name!r}; known names: {', '.join(backbone_names())}")
    return registry.get("backbone", name, input_shape=input_shape, embedding_dim=embedding_dim, **kwargs)


__all__ = [
    "backbone_names",
    "build_recognizer",
    "get_backbone",
    "iresnet",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "mobilefacenet",
    "simple_cnn",
    "small_resnet",
    "small_vgg",
    "sphereface20",
]
