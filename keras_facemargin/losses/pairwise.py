"""Building blocks shared by the pair-based losses: pairwise scores, label masks, mining rules.

Everything here works on `[batch, batch]` tensors, so every pair loss costs O(batch²) memory;
none of them builds a `[batch, batch, batch]` tensor of triplets. The triplet mining rules make
one pass over each anchor's negatives per positive while anchors have few positives, as in P×K
batches (O(batch² × K) time), and otherwise sort each anchor's negatives once and binary-search
them (O(batch² log batch)).

Scores follow one convention: higher means more similar. A cosine similarity is its own score;
a distance d enters as the score −d, so that `max(s_an − s_ap + m, 0)` is both the similarity
form and the distance form `max(d_ap − d_an + m, 0)` of the triplet hinge.
"""

import math

from keras import ops

from keras_facemargin import _backend
from keras_facemargin._maths import l2_normalize

DISTANCES = ("cosine", "euclidean", "squared_euclidean")
_TINY = 1e-30


def safe_sqrt(x):
    """`sqrt(x)` for x >= 0 whose gradient is 0 (not inf, not NaN) at x = 0."""
    positive = x > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))), 0.0)


def pairwise_squared_distance(embeddings, candidates=None):
    """‖a‖² + ‖b‖² − 2ab for every row a of `embeddings` `[batch, dim]` and b of `candidates`
    `[others, dim]` (default: `embeddings`), clamped at 0, `[batch, others]`.

    One matmul instead of a `[batch, others, dim]` difference tensor.
    """
    candidates = embeddings if candidates is None else candidates
    squared_norms = ops.sum(ops.square(embeddings), axis=-1)
    candidate_norms = ops.sum(ops.square(candidates), axis=-1)
    dots = _backend.matmul(embeddings, candidates, transpose_b=True)
    return ops.maximum(squared_norms[:, None] + candidate_norms[None, :] - 2.0 * dots, 0.0)


def pairwise_scores(embeddings, distance="cosine", candidates=None):
    """Scores `[batch, others]` of every embedding against every candidate (default: the
    embeddings themselves), higher = more similar: cos θ, −‖a − b‖ or −‖a − b‖²."""
    if distance == "cosine":
        unit = l2_normalize(embeddings, axis=-1)
        others = unit if candidates is None else l2_normalize(candidates, axis=-1)
        return _backend.matmul(unit, others, transpose_b=True)
    squared = pairwise_squared_distance(embeddings, candidates)
    if distance == "squared_euclidean":
        return -squared
    if distance == "euclidean":
        return -safe_sqrt(squared)
    raise ValueError(f"distance must be one of {', '.join(DISTANCES)}; got {distance!r}")


def label_masks(labels, candidate_labels=None, offset=0):
    """Boolean `[batch, others]` masks (positive, negative) from labels `[batch]`.

    Positives share the anchor's label and exclude the anchor itself; negatives do not share it.
    The candidates default to the anchors; otherwise anchor i is candidate `offset + i`.
    """
    candidate_labels = labels if candidate_labels is None else candidate_labels
    same = ops.equal(labels[:, None], candidate_labels[None, :])
    rows = ops.arange(ops.shape(labels)[0])[:, None] + offset
    not_self = ops.not_equal(rows, ops.arange(ops.shape(candidate_labels)[0])[None, :])
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


def _count_below(sorted_rows, thresholds, inclusive):
    """Per entry, how many of its row's sorted values are < (or <=) it: a batched binary search.

    `sorted_rows` and `thresholds` are `[batch, batch]`; every entry of row a is searched for in
    row a. ceil(log2(batch + 1)) rounds of one `[batch, batch]` gather each.
    """
    sorted_rows = ops.stop_gradient(sorted_rows)
    thresholds = ops.stop_gradient(thresholds)
    native = _backend.searchsorted_rows(sorted_rows, thresholds, "right" if inclusive else "left")
    if native is not None:
        return native
    width = sorted_rows.shape[-1]
    rounds = math.ceil(math.log2(width + 1)) if width is not None else 32
    length = ops.shape(sorted_rows)[-1]
    lo = ops.zeros_like(thresholds, dtype="int32")
    hi = ops.full_like(thresholds, length, dtype="int32")
    for _ in range(rounds):
        mid = (lo + hi) // 2
        value = ops.take_along_axis(sorted_rows, ops.minimum(mid, length - 1), axis=-1)
        below = value <= thresholds if inclusive else value < thresholds
        active = lo < hi
        lo = ops.where(ops.logical_and(active, below), mid + 1, lo)
        hi = ops.where(ops.logical_and(active, ops.logical_not(below)), mid, hi)
    return lo


# Mining loops over each anchor's positives while the anchor with the most has at most this
# many (a P×K batch: K − 1), and sorts beyond: the loop costs O(batch² × positives), the sort
# O(batch² log batch) with a larger constant. Each limit is about where the loop stops being the
# faster (lower without XLA, where the sort uses TensorFlow's native search); the timings are
# in BENCHMARKS.md, "Pair losses".
SLOT_LIMIT = 32
SLOT_LIMIT_WITHOUT_XLA = 16


def _use_slots(positive):
    """(whether to mine by positive slots, the most positives of any anchor), as tensors."""
    count = ops.max(ops.sum(ops.cast(positive, "int32"), axis=-1))
    limit = SLOT_LIMIT_WITHOUT_XLA if _backend.tensorflow_without_xla() else SLOT_LIMIT
    return count <= limit, count


def _over_positive_slots(positive, count, body, state):
    """`state = body(column, is_column, state)` for slot j = 0 .. count − 1.

    `column` `[batch]` is each anchor's j-th positive (in column order), `others` past its last;
    `is_column` `[batch, others]` marks it. `count` may be a tensor: the trip count is dynamic.
    """
    others = ops.shape(positive)[-1]
    iota = ops.arange(others, dtype="int32")[None, :]

    def step(_, carry):
        remaining, state = carry
        column = ops.min(ops.where(remaining, iota, others), axis=-1)
        is_column = ops.equal(iota, column[:, None])
        remaining = ops.logical_and(remaining, ops.logical_not(is_column))
        return remaining, body(column, is_column, state)

    return ops.fori_loop(0, count, step, (positive, state))[1]


def _read_rows(x, column):
    """x[a, column[a]] for every row a, `[batch]`; `column` is clamped into range."""
    return _backend.take_per_row(x, ops.minimum(column, ops.shape(x)[-1] - 1))


def _by_slots_or_sort(positive, by_slots, by_sort):
    """`by_slots(count)` while every anchor has at most `SLOT_LIMIT` positives, else `by_sort()`."""
    use_slots, count = _use_slots(positive)
    return ops.cond(use_slots, lambda: by_slots(count), by_sort)


def _semi_hard_columns_by_slots(scores, positive, negative, count):
    """`_semi_hard_columns_by_sort` one positive slot at a time (same columns, ties included)."""
    others = ops.shape(scores)[-1]
    iota = ops.arange(others, dtype="int32")[None, :]
    low = ops.min(scores) - 1.0
    high = ops.max(scores) + 1.0
    # Where no negative is less similar than the positive: the first least similar negative.
    least = ops.min(ops.where(negative, scores, high), axis=-1, keepdims=True)
    fallback = ops.min(
        ops.where(ops.logical_and(negative, scores == least), iota, others), axis=-1
    )

    def body(column, is_column, table):
        below = ops.logical_and(negative, scores < _read_rows(scores, column)[:, None])
        best = ops.max(ops.where(below, scores, low), axis=-1, keepdims=True)
        # The last of equal scores, as a stable sort puts it last among those below.
        chosen = ops.max(ops.where(ops.logical_and(below, scores == best), iota, -1), axis=-1)
        chosen = ops.where(chosen >= 0, chosen, fallback)
        return ops.where(is_column, ops.cast(chosen, "int32")[:, None], table)

    table = ops.zeros_like(positive, dtype="int32")
    return _over_positive_slots(positive, count, body, table)


def _semi_hard_columns_by_sort(scores, negative):
    others = ops.shape(scores)[-1]
    low = ops.min(scores) - 1.0
    masked = ops.where(negative, scores, low)
    order = ops.argsort(masked, axis=-1)
    sorted_negatives = ops.take_along_axis(masked, order, axis=-1)
    first = others - ops.sum(ops.cast(negative, "int32"), axis=-1, keepdims=True)
    below = _count_below(sorted_negatives, scores, inclusive=False)
    index = ops.where(below - 1 >= first, below - 1, first)
    return ops.cast(ops.take_along_axis(order, ops.minimum(index, others - 1), axis=-1), "int32")


def semi_hard_negative_scores(scores, positive, negative):
    """FaceNet's semi-hard negative for every anchor–positive pair: its score, `[batch, others]`.

    For the pair (a, p): the most similar negative that is still less similar than p (in
    distances: the closest negative farther than the positive); where no such negative exists,
    the least similar negative. Among equal scores the last (first, for the least similar)
    column is chosen. Entries where p is not a positive of a are placeholders.

    O(batch²) memory. The negative is chosen outside the gradient and its score then read from
    `scores`, so the gradient flows only through the chosen scores. While every anchor has at
    most `SLOT_LIMIT` positives (P×K batches) the choice loops over each anchor's positives,
    O(batch² × positives) time; otherwise each anchor's negatives are sorted once and every
    positive's score binary-searched among them, O(batch² log batch).
    """
    fixed = ops.stop_gradient(scores)
    column = _by_slots_or_sort(
        positive,
        lambda count: _semi_hard_columns_by_slots(fixed, positive, negative, count),
        lambda: _semi_hard_columns_by_sort(fixed, negative),
    )
    column = ops.minimum(ops.stop_gradient(column), ops.shape(scores)[-1] - 1)
    return ops.take_along_axis(scores, column, axis=-1)


def _violating_counts_by_slots(scores, positive, negative, margin, count):
    """`_violating_counts_by_sort` one positive slot at a time (same counts)."""
    thresholds = scores - margin
    others = ops.shape(scores)[-1]

    def body(column, is_column, counts):
        per_positive, per_negative = counts
        violating = ops.logical_and(negative, scores > _read_rows(thresholds, column)[:, None])
        violating = ops.logical_and(violating, (column < others)[:, None])
        total = ops.cast(ops.sum(ops.cast(violating, "int32"), axis=-1, keepdims=True), "int32")
        per_positive = ops.where(is_column, total, per_positive)
        return per_positive, per_negative + ops.cast(violating, "int32")

    zero = ops.zeros_like(positive, dtype="int32")
    return _over_positive_slots(positive, count, body, (zero, zero))


def _violating_counts_by_sort(scores, positive, negative, margin):
    others = ops.shape(scores)[-1]
    thresholds = scores - margin
    low = ops.min(thresholds) - 1.0
    high = ops.max(scores) + 1.0
    sorted_negatives = ops.sort(ops.where(negative, scores, low), axis=-1)
    sorted_thresholds = ops.sort(ops.where(positive, thresholds, high), axis=-1)
    above = others - _count_below(sorted_negatives, thresholds, inclusive=True)
    below = _count_below(sorted_thresholds, scores, inclusive=False)
    return (ops.cast(ops.where(positive, above, 0), "int32"),
            ops.cast(ops.where(negative, below, 0), "int32"))


def violating_triplet_counts(scores, positive, negative, margin):
    """Per anchor, in how many triplets with a non-zero hinge each positive and negative appears.

    Returns `(per_positive, per_negative)`, `[batch, others]` each: for anchor a,
    per_positive[a, p] = #{negatives n : s_an > s_ap − m} and per_negative[a, n] =
    #{positives p : s_ap − m < s_an}; zero where p (n) is not a positive (negative) of a. Then
    Σ_p Σ_n max(s_an − s_ap + m, 0) = Σ_n s_an·per_negative − Σ_p (s_ap − m)·per_positive, and,
    as the counts are piecewise constant, that expression also has the hinge's gradient.

    Without a `[batch, batch, batch]` tensor: while every anchor has at most `SLOT_LIMIT`
    positives, one pass over the negatives per positive slot (O(batch² × positives));
    otherwise each anchor's negative scores and its thresholds s_ap − m are sorted once and each
    side is binary-searched in the other (O(batch² log batch)).
    """
    scores = ops.stop_gradient(scores)
    per_positive, per_negative = _by_slots_or_sort(
        positive,
        lambda count: _violating_counts_by_slots(scores, positive, negative, margin, count),
        lambda: _violating_counts_by_sort(scores, positive, negative, margin),
    )
    return (ops.stop_gradient(ops.cast(per_positive, scores.dtype)),
            ops.stop_gradient(ops.cast(per_negative, scores.dtype)))


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
        "hardest",
    "label_masks",
    "masked_logsumexp",
    "masked_mean",
    "multi_similarity_pairs",
    "pairwise_scores",
    "pairwise_squared_distance",
    "safe_sqrt",
        "semi_hard_negative_scores",
    "violating_triplet_counts",
]
