"""Building blocks shared by the pair-based losses: pairwise scores, label masks, mining rules.

Everything here works on `[batch, batch]` tensors, so every pair loss costs O(batch²) memory;
none of them builds a `[batch, batch, batch]` tensor of triplets. The triplet mining rules sort
each anchor's row instead (O(batch² log batch) time).

Scores follow one convention: higher means more similar. A cosine similarity is its own score;
a distance d enters as the score −d, so that `max(s_an − s_ap + m, 0)` is both the similarity
form and the distance form `max(d_ap − d_an + m, 0)` of the triplet hinge.
"""

from keras import ops

from keras_facemargin.heads.cosine_head import l2_normalize

DISTANCES = ("cosine", "euclidean", "squared_euclidean")
_TINY = 1e-30


def safe_sqrt(x):
    """`sqrt(x)` for x >= 0 whose gradient is 0 (not inf, not NaN) at x = 0."""
    positive = x > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), 0.0)


def pairwise_squared_distance(embeddings):
    """‖a‖² + ‖b‖² − 2ab for every pair of rows of `[batch, dim]`, clamped at 0, `[batch, batch]`.

    One matmul instead of a `[batch, batch, dim]` difference tensor.
    """
    squared_norms = ops.sum(ops.square(embeddings), axis=-1)
    dots = ops.matmul(embeddings, ops.transpose(embeddings))
    return ops.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * dots, 0.0)


def pairwise_scores(embeddings, distance="cosine"):
    """Scores `[batch, batch]`, higher = more similar: cos θ, −‖a − b‖ or −‖a − b‖²."""
    if distance == "cosine":
        unit = l2_normalize(embeddings, axis=-1)
        return ops.matmul(unit, ops.transpose(unit))
    squared = pairwise_squared_distance(embeddings)
    if distance == "squared_euclidean":
        return -squared
    if distance == "euclidean":
        return -safe_sqrt(squared)
    raise ValueError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")


def label_masks(labels):
    """Boolean `[batch, batch]` masks (positive, negative) from labels `[batch]`.

    Positives share the anchor's label and exclude the anchor itself; negatives do not share it.
    """
    same = ops.equal(labels[:, None], labels[None, :])
    batch = ops.shape(labels)[0]
    not_self = ops.logical_not(ops.cast(ops.eye(batch), "bool"))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def masked_logsumexp(x, mask, include_zero=False):
    """`log Σ_{j in mask} exp(x_j)` along the last axis, `log(1 + Σ ...)` with `include_zero`.

    Stable (shifted by the masked maximum) and safe to differentiate: masked-out entries never
    reach `exp`, so they cannot overflow and poison the gradient with inf × 0. An empty set gives
    0 with `include_zero`, else a large negative finite value that the caller must mask out.
    """
    low = ops.stop_gradient(ops.min(x))
    shift = ops.stop_gradient(ops.max(ops.where(mask, x, low), axis=-1, keepdims=True))
    if include_zero:
        shift = ops.maximum(shift, 0.0)
    safe = ops.where(mask, x, shift)
    total = ops.sum(ops.where(mask, ops.exp(safe - shift), 0.0), axis=-1, keepdims=True)
    if include_zero:
        total = total + ops.exp(-shift)
    return ops.squeeze(shift + ops.log(ops.maximum(total, _TINY)), axis=-1)


def masked_mean(x, mask, axis=-1):
    """Mean of the entries in `mask` along `axis`; 0 for an empty set."""
    mask = ops.cast(mask, x.dtype)
    return ops.divide_no_nan(ops.sum(x * mask, axis=axis), ops.sum(mask, axis=axis))


def hardest(scores, positive, negative):
    """Batch-hard mining: per anchor the least similar positive and the most similar negative.

    Rows without a positive (or negative) get a finite placeholder; the caller masks them out.
    """
    top = ops.stop_gradient(ops.max(scores))
    bottom = ops.stop_gradient(ops.min(scores))
    hardest_positive = ops.min(ops.where(positive, scores, top), axis=-1)
    hardest_negative = ops.max(ops.where(negative, scores, bottom), axis=-1)
    return hardest_positive, hardest_negative


def _sorted_descending(values, k):
    """Values and order of each row, sorted descending; ties keep their column order.

    `top_k` is stable (the lower index first among equal values) on TensorFlow, XLA and JAX,
    which the mining rules below rely on to decide ties.
    """
    order = ops.top_k(values, k).indices
    return ops.take_along_axis(values, order, axis=-1), order


def semi_hard_triplets(scores, positive, negative):
    """FaceNet's semi-hard negative for every anchor–positive pair.

    Per pair (a, p): the most similar negative that is still less similar than p (in distances:
    the closest negative farther than the positive); where no such negative exists, the least
    similar negative.

    Returns `(positive_scores, negative_scores, is_pair)`, each `[batch, 2 * batch]`: row a lists
    s_ap and the score of its semi-hard negative for every pair where `is_pair` is true, in no
    particular order (other entries are placeholders).

    O(batch²) memory: each anchor's row, the negatives' scores followed by the positives' scores,
    is sorted once; a positive preceded by c negatives (ties count, as a negative as close as
    the positive is not farther) takes the (c + 1)-th most similar negative, or the last one.
    """
    batch = ops.shape(scores)[0]
    bottom = ops.stop_gradient(ops.min(scores)) - 1.0
    sorted_negatives, _ = _sorted_descending(ops.where(negative, scores, bottom), batch)
    merged = ops.concatenate([scores, scores], axis=-1)
    is_negative = ops.concatenate([negative, ops.zeros_like(negative)], axis=-1)
    is_positive = ops.concatenate([ops.zeros_like(positive), positive], axis=-1)
    positive_scores, order = _sorted_descending(merged, 2 * batch)
    is_negative = ops.cast(ops.take_along_axis(is_negative, order, axis=-1), "int32")
    is_positive = ops.take_along_axis(is_positive, order, axis=-1)
    count = ops.cumsum(is_negative, axis=-1)
    num_negatives = ops.sum(ops.cast(negative, "int32"), axis=-1, keepdims=True)
    index = ops.maximum(ops.minimum(count, num_negatives - 1), 0)
    negative_scores = ops.take_along_axis(sorted_negatives, index, axis=-1)
    return positive_scores, negative_scores, is_positive


def all_triplet_hinge(scores, positive, negative, margin):
    """Σ_p Σ_n max(s_an − s_ap + m, 0) per anchor, and the number of non-zero terms.

    Returns `(sums, nonzero)`, both `[batch]`. Without a `[batch, batch, batch]` tensor: in each
    anchor's row, the thresholds t_p = s_ap − m and the negatives' scores are sorted together;
    a threshold preceded by c negatives whose scores sum to S contributes S − c·t_p.
    Thresholds come first among ties, where the hinge is 0 and the term does not count as non-zero.
    """
    batch = ops.shape(scores)[0]
    thresholds = scores - margin
    merged = ops.concatenate([thresholds, scores], axis=-1)
    is_threshold = ops.concatenate([positive, ops.zeros_like(positive)], axis=-1)
    is_negative = ops.concatenate([ops.zeros_like(negative), negative], axis=-1)
    values, order = _sorted_descending(merged, 2 * batch)
    is_threshold = ops.take_along_axis(is_threshold, order, axis=-1)
    is_negative = ops.cast(ops.take_along_axis(is_negative, order, axis=-1), scores.dtype)
    # Centring on each row's mean keeps the running sums small, so S − c·t does not cancel badly.
    centre = ops.stop_gradient(ops.mean(values, axis=-1, keepdims=True))
    values = values - centre
    count = ops.cumsum(is_negative, axis=-1)
    total = ops.cumsum(is_negative * values, axis=-1)
    terms = ops.where(is_threshold, total - count * values, 0.0)
    nonzero = ops.where(is_threshold, count, 0.0)
    return ops.sum(terms, axis=-1), ops.sum(nonzero, axis=-1)


def multi_similarity_pairs(scores, positive, negative, epsilon):
    """Multi-Similarity mining: the informative positive and negative pairs, `[batch, batch]` each.

    A negative is kept when it is more similar than the anchor's least similar positive minus ε;
    a positive is kept when it is less similar than the anchor's most similar negative plus ε.
    """
    scores = ops.stop_gradient(scores)
    hardest_positive, hardest_negative = hardest(scores, positive, negative)
    keep_negative = ops.logical_and(negative, scores + epsilon > hardest_positive[:, None])
    keep_positive = ops.logical_and(positive, scores - epsilon < hardest_negative[:, None])
    return keep_positive, keep_negative


__all__ = [
    "DISTANCES",
    "all_triplet_hinge",
    "hardest",
    "label_masks",
    "masked_logsumexp",
    "masked_mean",
    "multi_similarity_pairs",
    "pairwise_scores",
    "pairwise_squared_distance",
    "safe_sqrt",
    "semi_hard_triplets",
]
