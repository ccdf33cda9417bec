"""Near-duplicate identities: classes whose mean embeddings a trained model puts (almost) together.

Training sets gathered from several sources name some people twice; a margin loss then pushes
apart images it cannot tell apart, and data-cleaning recipes merge or drop the classes whose
centres are closest before training again. The centre of a class here is the unit mean of its
images' unit embeddings, so the check works for every model, with or without a classifier head.
"""

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from keras_facemargin import _checks


def identity_centres(embeddings, labels, num_classes=None):
    """The unit mean embedding of each class.

    Args:
        embeddings: `[num_images, dim]`; rows with a NaN (images that did not decode) are left
            out.
        labels: int labels in `[0, num_classes)`; `[num_images]`.
        num_classes: the number of classes; default `max(labels) + 1`.

    Returns:
        float64 `[num_classes, dim]`; a class left without images gets a row of NaN.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be [num_images, dim] and labels [num_images]; got "
                         f"{embeddings.shape} and {labels.shape}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    good = ~np.isnan(embeddings).any(axis=1)
    rows = embeddings[good] / np.linalg.norm(embeddings[good], axis=1, keepdims=True)
    sums = np.zeros((num_classes, embeddings.shape[1]))
    np.add.at(sums, labels[good], rows)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, sums / norms, np.nan)


def near_duplicate_identities(embeddings, labels, threshold, num_classes=None, block=2048):
    """The pairs of classes whose centres' cosine reaches `threshold`, and the groups they link.

    Args:
        embeddings: `[num_images, dim]` embeddings of a training set (NaN rows are skipped).
        labels: their int labels; `[num_images]`.
        threshold: the cosine in (0, 1] from which two classes count as one.
        num_classes: default `max(labels) + 1`.
        block: centres compared at a time (memory `block × num_classes`).

    Returns:
        `(pairs, groups)`: `pairs` a list of `(a, b, cosine)` with `a < b`, highest cosine
        first; `groups` the connected sets of classes those pairs link, each a sorted list of
        labels, ordered by their first label. Merging a group trusts every link in it.
    """
    threshold = _checks.check_number("threshold", threshold, 0.0, 1.0, low_open=True)
    centres = identity_centres(embeddings, labels, num_classes)
    centres = np.nan_to_num(centres, nan=0.0)
    found = []
    for start in range(0, len(centres), block):
        cosines = centres[start:start + block] @ centres.T
        a, b = np.nonzero(cosines >= threshold)
        a = a + start
        keep = a < b
        found.append((a[keep], b[keep], cosines[a[keep] - start, b[keep]]))
    a, b, cosine = (np.concatenate(parts) for parts in zip(*found, strict=True))
    order = np.lexsort((b, a, -cosine))
    pairs = [(int(a[k]), int(b[k]), float(cosine[k])) for k in order]
    linked = scipy.sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(len(centres),) * 2)
    _, component = scipy.sparse.csgraph.connected_components(linked, directed=False)
    members = {}
    for x in np.unique(np.concatenate([a, b])):
        members.setdefault(component[x], []).append(int(x))
    groups = sorted(members.values())
    return pairs, groups
