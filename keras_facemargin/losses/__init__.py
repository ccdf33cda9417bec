"""Losses for face recognition and other identity embeddings.

Every loss is a `keras.losses.Loss`, so it plugs into `model.compile(loss=...)`. Pick one by class
or by name: `model.compile(loss=keras_facemargin.losses.get("arcface", margin=0.5))`. (Keras's own
`compile(loss="...")` resolves only Keras's built-in names, so our names go through `get`.)

The margin-softmax losses take cosines from a `CosineHead`; the pair losses (`PairLoss`
subclasses) take embeddings `[batch, dim]` and integer identity labels of a P×K batch.
"""

import keras

from keras_facemargin.losses.adaptive_margins import (
    AdaCosLoss,
    AdaFaceLoss,
    CurricularFaceLoss,
    ElasticFaceLoss,
    MagFaceLoss,
    SubCenterArcFaceLoss,
)
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
    "adaface": AdaFaceLoss,
    "magface": MagFaceLoss,
    "curricularface": CurricularFaceLoss,
    "subcenter_arcface": SubCenterArcFaceLoss,
    "elasticface": ElasticFaceLoss,
    "adacos": AdaCosLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "npair": NPairLoss,
    "unified_pair": UnifiedPairLoss,
    "circle": CircleLoss,
    "supcon": SupConLoss,
    "multi_similarity": MultiSimilarityLoss,
}


def names(kind=None):
    """The registered loss names, sorted; `kind="margin_softmax"` or `"pair"` for one family."""
    if kind is None:
        return sorted(_REGISTRY)
    families = {"margin_softmax": MarginSoftmaxLoss, "pair": PairLoss}
    if kind not in families:
        raise ValueError(f"kind must be None, 'margin_softmax' or 'pair'; got {kind!r}")
    return sorted(n for n, cls in _REGISTRY.items() if issubclass(cls, families[kind]))


def get_class(name):
    """The loss class registered as `name`, without building it.

    Its class attributes say what it needs: a `MarginSoftmaxLoss` subclass trains with a head
    (`needs_feature_norms`, `uses_seed`, `state_variables`), a `PairLoss` subclass on embeddings.

    Example:

    ```python
    cls = keras_facemargin.losses.get_class("adaface")
    issubclass(cls, keras_facemargin.losses.MarginSoftmaxLoss), cls.needs_feature_norms  # True, True
    ```
    """
    key = name.lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"Unknown loss {name!r}; known names: {', '.join(names())}")
    return _REGISTRY[key]


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
            cls = _REGISTRY[key]
            try:
                return cls(**kwargs)
            except TypeError as error:
                if "unexpected keyword argument" not in str(error):
                    raise
                unknown = str(error).split("argument", 1)[1].strip()
                raise ValueError(
                    f"{key} ({cls.__name__}) takes no argument {unknown}; its arguments are those of "
                    f"{cls.__name__}(...) and {cls.__mro__[1].__name__}; got {kwargs}"
                ) from None
    raise ValueError(f"Unknown loss {identifier!r}; known names: {', '.join(names())}")

__all__ = [
    "AdaCosLoss",
    "AdaFaceLoss",
    "ArcFaceLoss",
    "CircleLoss",
    "CombinedMarginLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "CurricularFaceLoss",
    "ElasticFaceLoss",
    "MagFaceLoss",
    "MarginSoftmaxLoss",
    "MultiSimilarityLoss",
    "NPairLoss",
    "NormFaceLoss",
    "PairLoss",
    "SphereFaceLoss",
    "SubCenterArcFaceLoss",
    "SupConLoss",
    "TripletLoss",
    "UnifiedPairLoss",
    "unified_pair_loss",
    "get",
    "get_class",
    "names",
]
