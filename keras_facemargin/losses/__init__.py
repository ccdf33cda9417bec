"""Losses for face recognition and other identity embeddings.

Every loss is a `keras.losses.Loss`, so it plugs into `model.compile(loss=...)`. Pick one by class
or by name: `model.compile(loss=keras_facemargin.losses.get("arcface", margin=0.5))`. (Keras's own
`compile(loss="...")` resolves only Keras's built-in names, so our names go through `get`.)

The margin-softmax losses take cosines from a `CosineHead`; the pair losses (`PairLoss`
subclasses) take embeddings `[batch, dim]` and integer identity labels of a P×K batch.
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
from keras_facemargin.losses.pair_losses import (
    CircleLoss,
    ContrastiveLoss,
    MultiSimilarityLoss,
    NPairLoss,
    PairLoss,
    SupConLoss,
    TripletLoss,
    UnifiedPairLoss,
    unified_pair_loss,
)

_REGISTRY = {
    "normface": NormFaceLoss,
    "sphereface": SphereFaceLoss,
    "cosface": CosFaceLoss,
    "arcface": ArcFaceLoss,
    "combined_margin": CombinedMarginLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "npair": NPairLoss,
    "unified_pair": UnifiedPairLoss,
    "circle": CircleLoss,
    "supcon": SupConLoss,
    "multi_similarity": MultiSimilarityLoss,
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
    "CircleLoss",
    "CombinedMarginLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "MarginSoftmaxLoss",
    "MultiSimilarityLoss",
    "NPairLoss",
    "NormFaceLoss",
    "PairLoss",
    "SphereFaceLoss",
    "SupConLoss",
    "TripletLoss",
    "UnifiedPairLoss",
    "unified_pair_loss",
    "get",
    "names",
]
