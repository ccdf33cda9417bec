"""Losses for face recognition and other identity embeddings.

Every loss is a `keras.losses.Loss`, so it plugs into `model.compile(loss=...)`. Pick one by class
or by name: `model.compile(loss=keras_facemargin.losses.get("arcface", margin=0.5))`. (Keras's own
`compile(loss="...")` resolves only Keras's built-in names, so our names go through `get`.)

The margin-softmax losses take cosines from a `CosineHead`; the pair losses (`PairLoss`
subclasses) take embeddings `[batch, dim]` and integer identity labels of a P×K batch.
"""

import keras

from keras_facemargin import registry
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


def names(kind=None):
    """The registered loss names, sorted.

    Args:
        kind: None for every loss, `"margin_softmax"` for the `MarginSoftmaxLoss` subclasses
            (trained with a head on cosines), or `"pair"` for the `PairLoss` subclasses (trained
            on embeddings).

    Returns:
        A sorted list of names, each one that `get` takes (`["adacos", "adaface", ...]`).
    """
    if kind is None:
        return registry.names("loss")
    families = {"margin_softmax": MarginSoftmaxLoss, "pair": PairLoss}
    if kind not in families:
        raise ValueError(f"kind must be None, 'margin_softmax' or 'pair'; got {kind!r}")
    return [n for n in registry.names("loss") if issubclass(registry.get_class("loss", n), families[kind])]


def get_class(name):
    """The loss class registered as `name`, without building it.

    Its class attributes say what it needs: a `MarginSoftmaxLoss` subclass trains with a head
    (`needs_feature_norms`, `uses_seed`, `state_variables`), a `PairLoss` subclass on embeddings.

    Args:
        name: a registered name (`names()`); case and `-` for `_` do not matter.

    Returns:
        The loss class; an unknown name is a `ValueError` that lists the known ones.

    Example:

    ```python
    cls = keras_facemargin.losses.get_class("adaface")
    issubclass(cls, keras_facemargin.losses.MarginSoftmaxLoss), cls.needs_feature_norms  # True, True
    ```
    """
    return registry.get_class("loss", name)


def get(identifier, **kwargs):
    """A loss from a registered name (with constructor arguments), a config dict, or a loss.

    Args:
        identifier: a registered name (`names()`), a config dict as `keras.losses.serialize`
            writes it, or a `keras.losses.Loss`, returned as it is.
        **kwargs: constructor arguments for a name (an argument that loss does not take is a
            `ValueError`); a `ValueError` with a loss object, ignored with a config dict.

    Returns:
        A `keras.losses.Loss`.

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
    return registry.get("loss", identifier, **kwargs)


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
