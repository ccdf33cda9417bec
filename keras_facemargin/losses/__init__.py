"""Losses for face recognition and other identity embeddings.

Every loss is a `keras.losses.Loss`, so it plugs into `model.compile(loss=...)`. Pick one by class
or by name: `model.compile(loss=keras_facemargin.losses.get("arcface", margin=0.5))`. (Keras's own
`compile(loss="...")` resolves only Keras's built-in names, so our names go through `get`.)
"""

import keras

from keras_facemargin.losses.margin_losses import (
    ArcFaceLoss,
    CombinedMarginLoss,
    CosFaceLoss,
    MarginSoftmaxLoss,
    NormFaceLoss,
    SphereFaceLoss,
)

_REGISTRY = {
    "normface": NormFaceLoss,
    "sphereface": SphereFaceLoss,
    "cosface": CosFaceLoss,
    "arcface": ArcFaceLoss,
    "combined_margin": CombinedMarginLoss,
}


def names():
    """The registered loss names, sorted."""
    return sorted(_REGISTRY)


def get(identifier, **kwargs):
    """A loss from a registered name (with constructor arguments), a config dict, or a loss.

    Example:

    ```python
    loss = keras_facemargin.losses.get("cosface", margin=0.35, scale=64.0)
    ```
    """
    if isinstance(identifier, keras.losses.Loss):
        if kwargs:
            raise ValueError(f"get() takes no keyword arguments with a loss object; got {kwargs}")
        return identifier
    if isinstance(identifier, dict):
        return keras.losses.deserialize(identifier)
    if isinstance(identifier, str):
        key = identifier.lower().replace("-", "_")
        if key in _REGISTRY:
            return _REGISTRY[key](**kwargs)
    raise ValueError(f"Unknown loss {identifier!r}; known names: {', '.join(names())}")

__all__ = [
    "ArcFaceLoss",
    "CombinedMarginLoss",
    "CosFaceLoss",
    "MarginSoftmaxLoss",
    "NormFaceLoss",
    "SphereFaceLoss",
    "get",
    "names",
]
