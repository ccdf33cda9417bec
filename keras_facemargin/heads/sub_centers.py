"""Sub-center ArcFace's cleaning tools: dominant sub-centres, outliers, one centre per class.

After training a head with K sub-centres per class on noisy data, the paper (and InsightFace's
`drop.py`) takes, for every class, the sub-centre that most of the class's images are closest
to (the dominant one), drops the images more than 75° from it, and retrains with K = 1 on what
is left, starting from the dominant sub-centres.
"""

import dataclasses
import math

import keras
import numpy as np


@dataclasses.dataclass
class SubCenterReport:
    """What `sub_center_report` finds.

    Attributes:
        dominant: `[num_classes]`, each class's dominant sub-centre (most of its images closest;
            ties to the lower index, as `np.argmax` in InsightFace's `drop.py`).
        counts: `[num_classes, K]`, how many images of the class are closest to each sub-centre.
        cosine_to_dominant: `[N]`, each image's cosine to its class's dominant sub-centre.
        outliers: `[N]` bool, the images at more than `threshold_degrees` from it.
        threshold_degrees: the angle used.
        classes_without_inliers: the classes with images but no inlier (InsightFace's `drop.py`
            leaves them out of the cleaned data, renumbering the others).
    """

    dominant: np.ndarray
    counts: np.ndarray
    cosine_to_dominant: np.ndarray
    outliers: np.ndarray
    threshold_degrees: float
    classes_without_inliers: np.ndarray

    @property
    def angle_degrees(self):
        """`[N]`, each image's angle to its class's dominant sub-centre, in degrees."""
        return np.degrees(np.arccos(np.clip(self.cosine_to_dominant, -1.0, 1.0)))


def _centers(head):
    centres = np.asarray(keras.ops.convert_to_numpy(head.centers), np.float64)
    return centres[:, None, :] if centres.ndim == 2 else centres


def sub_center_report(head, embeddings, labels, threshold_degrees=75.0, chunk=65536):
    """Dominant sub-centres and outlier images of a trained head with K sub-centres.

    Args:
        head: a `CosineHead` or `PartialFC` (any K; K = 1 gives one "dominant" centre per class).
        embeddings: `[N, dim]` features of the training images (normalised here).
        labels: `[N]` their integer class labels.
        threshold_degrees: images farther than this from their class's dominant sub-centre are
            outliers. The paper: 75.
        chunk: images processed at a time (memory: chunk × K × dim floats).

    Returns:
        A `SubCenterReport`.

    Example:

    ```python
    report = keras_facemargin.heads.sub_center_report(head, embedder.predict(images), labels)
    keep = ~report.outliers
    clean_head = keras_facemargin.heads.drop_non_dominant_sub_centers(head, report.dominant)
    ```

    Reference:
        Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
        Faces", ECCV 2020.
    """
    if not (isinstance(threshold_degrees, (int, float)) and 0 < threshold_degrees <= 180):
        raise ValueError(f"threshold_degrees must be a number in (0, 180]; got {threshold_degrees!r}")
    centres = _centers(head)
    num_classes, k, dim = centres.shape
    x = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if x.ndim != 2 or x.shape[1] != dim or len(x) != len(labels):
        raise ValueError(
            f"embeddings must be [N, dim={dim}] with one label each; got embeddings of shape {x.shape} "
            f"and {len(labels)} labels"
        )
    integral = np.all(labels == labels.round())
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes or not integral):
        raise ValueError(f"labels must be integers in [0, num_classes={num_classes}); got values in "
                         f"[{labels.min()}, {labels.max()}]")
    labels = labels.astype(np.int64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    nearest = np.empty(len(x), np.int64)
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        similarities = np.einsum("nd,nkd->nk", x[part], centres[labels[part]])
        nearest[part] = np.argmax(similarities, axis=1)
    counts = np.zeros((num_classes, k), np.int64)
    np.add.at(counts, (labels, nearest), 1)
    dominant = np.argmax(counts, axis=1)
    cosine = np.einsum("nd,nd->n", x, centres[labels, dominant[labels]])
    outliers = cosine <= math.cos(math.radians(threshold_degrees))  # drop.py keeps cos > threshold
    inliers = np.zeros(num_classes, bool)
    inliers[labels[~outliers]] = True
    empty = np.flatnonzero(~inliers & (counts.sum(axis=1) > 0))
    return SubCenterReport(dominant, counts, cosine, outliers, float(threshold_degrees), empty)


def drop_non_dominant_sub_centers(head, dominant):
    """A copy of `head` with one centre per class: each class's dominant sub-centre.

    Args:
        head: a built `CosineHead` or `PartialFC` with K sub-centres.
        dominant: `[num_classes]` sub-centre indices (`SubCenterReport.dominant`).

    Returns:
        A new, built layer of the same class and configuration with `sub_centers=1`, its
        centres the dominant sub-centres (unnormalised, as trained). A loss that asked for K
        sub-centres (`SubCenterArcFaceLoss`) becomes the `ArcFaceLoss` with its other settings.
    """
    from keras_facemargin import losses

    k = head.sub_centers
    dominant = np.asarray(dominant).reshape(-1)
    if len(dominant) != head.num_classes or dominant.min() < 0 or dominant.max() >= k:
        raise ValueError(
            f"dominant must hold one sub-centre index in [0, {k}) per class ({head.num_classes}); got "
            f"{len(dominant)} values in [{dominant.min()}, {dominant.max()}]"
        )
    config = head.get_config()
    config["sub_centers"] = 1
    loss = head.loss
    if loss is not None and loss.sub_centers > 1:
        arc = {key: v for key, v in loss.get_config().items() if key != "sub_centers"}
        config["loss"] = keras.saving.serialize_keras_object(losses.ArcFaceLoss(**arc))
    clean = type(head).from_config(config)
    kernel = np.asarray(keras.ops.convert_to_numpy(head.kernel))
    columns = np.arange(head.num_classes) * k + dominant
    if isinstance(head, _partial_fc_class()):
        clean.build((None, kernel.shape[1]))
        clean.kernel.assign(kernel[columns])
    else:
        clean.build((None, kernel.shape[0]))
        clean.kernel.assign(kernel[:, columns])
    return clean


def _partial_fc_class():
    from keras_facemargin.heads.partial_fc import PartialFC

    return PartialFC
