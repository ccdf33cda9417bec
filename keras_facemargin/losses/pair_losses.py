"""Pair-based losses: each computed from the pairs of embeddings inside one batch.

Every loss here takes `y_true` = integer identity labels `[batch]` (or `[batch, 1]`) and
`y_pred` = embeddings `[batch, dim]`, as produced by a P×K sampler (P identities, K images each),
and differs from the others only in `anchor_terms`: what each anchor contributes, given the
`[batch, batch]` scores and the positive/negative masks. Memory is O(batch²) for all of them.
"""

import math
import warnings

import keras
from keras import ops

from keras_facemargin import _backend, _checks, registry
from keras_facemargin._replicas import replica_context
from keras_facemargin.losses import pairwise

_HALF = ("float16", "bfloat16")
_MININGS = ("all", "batch_hard", "semi_hard")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def unified_pair_loss(positive_scores, negative_scores, gamma, margin=0.0, positive_mask=None,
                      negative_mask=None):
    """log(1 + Σ_i Σ_j exp(γ(s_nj − s_pi + m))) for each row, from precomputed similarities.

    Computed stably as softplus(logsumexp_j(γ s_nj) + logsumexp_i(−γ s_pi) + γm), in
    O(rows × (P + N)) instead of O(rows × P × N). The choice of positives, negatives, γ and m gives
    the other losses: the true class centre as the only positive and the other centres as the
    negatives is the normalised softmax (m = 0, γ = scale) or CosFace (m = its margin); one positive
    and the other pairs' positives as negatives with γ = 1 is N-pair; one positive and one negative,
    divided by γ, tends to the triplet hinge as γ grows.

    Args:
        positive_scores: s_p, `[rows, num_positives]`.
        negative_scores: s_n, `[rows, num_negatives]`.
        gamma: γ > 0, the scale.
        margin: m >= 0.
        positive_mask, negative_mask: optional boolean masks of the same shapes; a row with an
            empty set gets a placeholder the caller should mask out.

    Returns:
        The loss of each row, `[rows]`.

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
        CVPR 2020, eq. 1.
    """
    if positive_mask is None:
        positive_mask = ops.ones_like(positive_scores, dtype="bool")
    if negative_mask is None:
        negative_mask = ops.ones_like(negative_scores, dtype="bool")
    negatives = pairwise.masked_logsumexp(gamma * negative_scores, negative_mask)
    positives = pairwise.masked_logsumexp(-gamma * positive_scores, positive_mask)
    return ops.softplus(negatives + positives + gamma * margin)


@keras.saving.register_keras_serializable(package="keras_facemargin")
class PairLoss(keras.losses.Loss):
    """Base class: a loss over the pairs of a batch of embeddings.

    Subclasses override `anchor_terms(embeddings, positive, negative, candidates)`, which
    scores each anchor against the candidates (the batch itself unless `cross_replica`) and
    returns, for every
    anchor, the sum of its loss terms and how many terms it has (`[batch]` each). The loss is the
    mean over the terms of all valid anchors: for most losses one term per anchor, for the triplet
    loss one per triplet or anchor–positive pair.

    An anchor is valid when the batch holds at least one other sample of its identity and one
    sample of another identity; other anchors are left out of the mean. A batch without any valid
    anchor (for example one where every label is distinct) gives a loss of 0 and zero gradients;
    in an eager call this warns once per loss object, as it usually means the batches were not
    drawn with a P×K sampler.

    `call` returns one value per anchor, scaled so that Keras's default reduction
    (`"sum_over_batch_size"`) gives the mean described above: anchor a's value is its term sum
    times batch / (number of terms), and 0 for anchors left out. A `sample_weight` weighs anchors.

    Bad inputs raise a `ValueError` when their values are known (eager calls); non-integer labels
    inside a TensorFlow graph raise through `tf.debugging.Assert`, and under XLA or `jax.jit` make
    the loss NaN. `check_inputs=False` turns the label checks off.

    With `cross_replica=True`, under a `tf.distribute` strategy with several replicas, each
    replica's anchors are compared with the embeddings of *all* replicas (gathered with
    `all_gather`, whose gradient flows back to the replica that computed them): R times more
    negatives per anchor at the cost of a `[batch, R·batch]` score matrix. The mean is then over
    the terms of all replicas, so the loss equals the undistributed loss on the global batch.
    Elsewhere (one replica, JAX, PyTorch) it changes nothing.

    Args:
        check_inputs: whether to validate the labels (cheap; see above).
        cross_replica: compare with the embeddings of all replicas (see above).
        reduction: as for every `keras.losses.Loss`.
        name: loss name.
        dtype: dtype of the loss computation; half precision is computed in float32.

    Call arguments:
        y_true: integer identity labels, `[batch]` or `[batch, 1]`.
        y_pred: embeddings, `[batch, dim]`.
        sample_weight: optional per-anchor weights `[batch]`.
    """

    def __init__(self, check_inputs=True, cross_replica=False, reduction="sum_over_batch_size",
                 name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=_checks.loss_dtype(dtype))
        self.check_inputs = _checks.check_bool("check_inputs", check_inputs)
        self.cross_replica = _checks.check_bool("cross_replica", cross_replica)
        self._warned_no_pairs = False

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Half-precision embeddings are cast here, with a backward pass that saturates instead
        # of overflowing (Keras's own cast would turn a large float32 gradient into Inf).
        loss = super().__call__(y_true, _checks.to_loss_dtype(y_pred, self.dtype), sample_weight)
        return _checks.reduce_empty(loss, self.reduction)

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        """Each anchor's loss terms, summed, and how many there are: what a subclass defines.

        `call` divides the sums by the batch's total count, so the loss is the mean over all
        terms of the batch; anchors without a positive or a negative are left out.

        Args:
            embeddings: the batch's embeddings `[batch, dim]`, the anchors.
            positive: bool `[batch, others]`: same identity as the anchor (itself excluded).
            negative: bool `[batch, others]`: another identity.
            candidates: the embeddings `[others, dim]` the masks are over (every replica's,
                with `cross_replica`), or None: `embeddings` themselves.

        Returns:
            `(sums, counts)`, `[batch]` each.
        """
        raise NotImplementedError

    def call(self, y_true, y_pred):
        embeddings = y_pred
        if embeddings.dtype in _HALF:
            embeddings = ops.cast(embeddings, "float32")
        labels, labels_ok = self._labels(y_true, embeddings)
        if embeddings.shape[0] == 0:  # an empty batch: no anchors, loss 0 (reductions need rows)
            return ops.sum(embeddings, axis=-1)
        context, replicas = replica_context() if self.cross_replica else (None, 1)
        candidates = None
        if context is None:
            positive, negative = pairwise.label_masks(labels)
        else:
            candidates = context.all_gather(embeddings, axis=0)
            offset = context.replica_id_in_sync_group * ops.shape(labels)[0]
            all_labels = context.all_gather(ops.stop_gradient(labels), axis=0)
            positive, negative = pairwise.label_masks(labels, all_labels, offset)
        valid = ops.logical_and(ops.any(positive, axis=-1), ops.any(negative, axis=-1))
        sums, counts = self.anchor_terms(embeddings, positive, negative, candidates)
        zero = ops.zeros_like(sums)
        sums = ops.where(valid, sums, zero)
        counts = ops.where(valid, ops.cast(counts, sums.dtype), zero)
        batch = ops.cast(ops.shape(sums)[0], sums.dtype)
        total = ops.sum(counts)
        if context is not None:
            # Keras averages the replicas' losses: divide by the mean count over replicas.
            total = context.all_reduce("sum", ops.stop_gradient(total)) / replicas
        loss = sums * ops.divide_no_nan(batch, total)
        if labels_ok is not None:
            loss = ops.where(labels_ok, loss, ops.full_like(loss, math.nan))
        return loss

    def _labels(self, y_true, embeddings):
        _checks.check_rank("y_pred", embeddings, 2, "[batch, dim] (embeddings)")
        if len(y_true.shape) == 2 and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        if len(y_true.shape) != 1:
            raise ValueError(
                "y_true must be integer identity labels [batch] or [batch, 1]; got shape "
                f"{tuple(y_true.shape)}"
            )
        _checks.check_same_batch(y_true, embeddings)
        if not self.check_inputs:
            return y_true, None
        _checks.check_finite_rows("y_pred", embeddings, "embeddings")
        values = _checks.concrete(y_true)
        if values is None:
            is_integer = ops.equal(y_true, ops.round(y_true))
            _checks.graph_assert(
                ops.all(is_integer), "y_true must hold integer labels; got", y_true
            )
            return y_true, is_integer
        if values.size and not (values == values.round()).all():
            bad = values[~(values == values.round())][0]
            raise ValueError(f"y_true must hold integer identity labels; got {bad:g}")
        if values.size > 1 and len(set(values.tolist())) == values.size and not (
            self._warned_no_pairs
        ):
            self._warned_no_pairs = True
            warnings.warn(
                f"{type(self).__name__}: every label in this batch of {values.size} is distinct, "
                "so no anchor has a positive and the loss is 0. Draw batches with a P×K sampler "
                "(P identities, K >= 2 images each).",
                stacklevel=4,
            )
        return y_true, None

    def get_config(self):
        return {**super().get_config(), "check_inputs": self.check_inputs,
                "cross_replica": self.cross_replica}


def _cosine_scores(embeddings, candidates):
    return pairwise.pairwise_scores(embeddings, "cosine", candidates)


def _one_term_each(per_anchor):
    return per_anchor, ops.ones_like(per_anchor)


@registry.register("loss", "triplet")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class TripletLoss(PairLoss):
    """Triplet loss max(d_ap − d_an + m, 0), with the triplets mined inside the batch.

    In similarity form (`distance="cosine"`) the hinge is max(s_an − s_ap + m, 0). Mining:
    - `"all"`: every valid triplet (anchor, positive, negative) of the batch.
    - `"batch_hard"`: per anchor, its least similar positive and most similar negative
      (Hermans et al. 2017): one term per anchor.
    - `"semi_hard"`: per anchor–positive pair, FaceNet's semi-hard negative: the closest negative
      still farther than the positive, or the farthest negative where none is: one term per pair.

    The loss is the mean of the terms. By default the mean is over all terms, zeros included:
    it is then a fixed-denominator function of the embeddings that falls as the model learns and
    is comparable between batches. `average_nonzero=True` divides by the number of non-zero terms
    instead (Hermans et al.'s "batch all"), which keeps the gradient from vanishing late in
    training when most triplets are already satisfied, at the price of a loss value that can rise
    while the model improves.

    Nothing of size batch³ is built: `"all"` and `"semi_hard"` take O(batch²) memory and, in P×K
    batches, O(batch² × K) time (one pass over the row per positive); where some anchor has more
    positives than `pairwise.SLOT_LIMIT` allows, they sort each anchor's row once and
    binary-search it instead (O(batch² log batch)), which is then the faster.

    Args:
        margin: m >= 0.
        distance: `"cosine"` (the embeddings are L2-normalised here), `"euclidean"` or
            `"squared_euclidean"`.
        mining: `"all"`, `"batch_hard"` or `"semi_hard"`.
        soft: replace the hinge max(x + m, 0) by softplus(x + m), the soft margin of
            Hermans et al. (who use it with m = 0); `"batch_hard"` or `"semi_hard"` only, as
            `"all"` would need one softplus per triplet.
        average_nonzero: average over the non-zero terms only (see above).
        check_inputs, reduction, name, dtype: see `PairLoss`.

    Example:

    ```python
    model = keras.Sequential([backbone, keras.layers.UnitNormalization()])
    model.compile(optimizer="adam",
                  loss=keras_facemargin.losses.TripletLoss(margin=0.2, mining="semi_hard"))
    ```

    Reference:
        Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and Clustering",
        CVPR 2015; Hermans et al., "In Defense of the Triplet Loss for Person
        Re-Identification", 2017.
    """

    def __init__(self, margin=0.2, distance="cosine", mining="semi_hard", soft=False,
                 average_nonzero=False, **kwargs):
        super().__init__(**kwargs)
        self.margin = _checks.check_positive("margin", margin, allow_zero=True)
        self.distance = _check_choice("distance", distance, pairwise.DISTANCES)
        self.mining = _check_choice("mining", mining, _MININGS)
        self.soft = _checks.check_bool("soft", soft)
        if self.soft and self.mining == "all":
            raise ValueError(
                "soft=True needs mining='batch_hard' or 'semi_hard'; got mining='all' (a softplus "
                "per triplet would cost batch³)"
            )
        self.average_nonzero = _checks.check_bool("average_nonzero", average_nonzero)

    def _hinge(self, x):
        return ops.softplus(x) if self.soft else ops.relu(x)

    def _count(self, terms, mask):
        keep = ops.logical_and(mask, terms > 0) if self.average_nonzero else mask
        return ops.sum(ops.cast(keep, terms.dtype), axis=-1)

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        scores = pairwise.pairwise_scores(embeddings, self.distance, candidates)
        if self.mining == "all":
            per_positive, per_negative = pairwise.violating_triplet_counts(
                scores, positive, negative, self.margin
            )
            # Σ per_negative = Σ per_positive, so centring each row changes nothing but rounding.
            centred = scores - ops.stop_gradient(ops.mean(scores, axis=-1, keepdims=True))
            sums = ops.sum(centred * per_negative - (centred - self.margin) * per_positive, axis=-1)
            if self.average_nonzero:
                return sums, ops.sum(per_positive, axis=-1)
            num_pos = ops.sum(ops.cast(positive, sums.dtype), axis=-1)
            return sums, num_pos * ops.sum(ops.cast(negative, sums.dtype), axis=-1)
        if self.mining == "batch_hard":
            hardest_positive, hardest_negative = pairwise.hardest(scores, positive, negative)
            terms = self._hinge(hardest_negative - hardest_positive + self.margin)
            if self.average_nonzero:
                return terms, ops.cast(terms > 0, terms.dtype)
            return _one_term_each(terms)
        negative_scores = pairwise.semi_hard_negative_scores(scores, positive, negative)
        hinge = self._hinge(negative_scores - scores + self.margin)
        terms = ops.where(positive, hinge, 0.0)
        return ops.sum(terms, axis=-1), self._count(terms, positive)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "distance": self.distance,
            "mining": self.mining,
            "soft": self.soft,
            "average_nonzero": self.average_nonzero,
        }


# (positive_margin, negative_margin) when not given: distances pull positives to 0 and push
# negatives beyond 1; cosines pull positives towards 1 and push negatives below 0.
_CONTRASTIVE_DEFAULTS = {
    "euclidean": (0.0, 1.0),
    "squared_euclidean": (0.0, 1.0),
    "cosine": (1.0, 0.0),
}


@registry.register("loss", "contrastive")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class ContrastiveLoss(PairLoss):
    """Contrastive loss: positive pairs pulled within one margin, negatives pushed beyond another.

    Per pair, with distances: max(d − positive_margin, 0) for a positive pair and
    max(negative_margin − d, 0) for a negative pair. With `distance="cosine"` the same thresholds
    apply to similarities: max(positive_margin − s, 0) and max(s − negative_margin, 0). Each
    anchor's term is the mean over its positive pairs plus the mean over its negative pairs, so
    identities with many images in the batch do not outweigh the others. Hadsell et al.'s original
    form squares the hinges and uses positive_margin = 0; `distance="squared_euclidean"` with the
    defaults is its margin on squared distances.

    Args:
        positive_margin: distances (similarities, for cosine) beyond which a positive pair costs.
            Default: 0 for distances, 1 for cosine.
        negative_margin: distances (similarities) within which a negative pair costs.
            Default: 1 for distances, 0 for cosine.
        distance: `"euclidean"`, `"squared_euclidean"` or `"cosine"`.
        check_inputs, reduction, name, dtype: see `PairLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.ContrastiveLoss(negative_margin=0.8, distance="euclidean")
    ```

    Reference:
        Hadsell et al., "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.
    """

    def __init__(self, positive_margin=None, negative_margin=None, distance="euclidean", **kwargs):
        super().__init__(**kwargs)
        self.distance = _check_choice("distance", distance, pairwise.DISTANCES)
        default_positive, default_negative = _CONTRASTIVE_DEFAULTS[self.distance]
        if positive_margin is None:
            positive_margin = default_positive
        if negative_margin is None:
            negative_margin = default_negative
        if self.distance == "cosine":
            self.positive_margin = _checks.check_range("positive_margin", positive_margin, -1, 1)
            self.negative_margin = _checks.check_range("negative_margin", negative_margin, -1, 1)
            if self.negative_margin > self.positive_margin:
                raise ValueError(
                    "with distance='cosine', negative_margin must be <= positive_margin (a "
                    f"similarity); got negative_margin={negative_margin!r} and "
                    f"positive_margin={positive_margin!r}"
                )
        else:
            self.positive_margin = _checks.check_positive(
                "positive_margin", positive_margin, allow_zero=True
            )
            self.negative_margin = _checks.check_positive("negative_margin", negative_margin)
            if self.negative_margin < self.positive_margin:
                raise ValueError(
                    "negative_margin must be >= positive_margin (a distance); got "
                    f"negative_margin={negative_margin!r} and positive_margin={positive_margin!r}"
                )

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        scores = pairwise.pairwise_scores(embeddings, self.distance, candidates)
        if self.distance == "cosine":
            positive_cost = ops.relu(self.positive_margin - scores)
            negative_cost = ops.relu(scores - self.negative_margin)
        else:
            positive_cost = ops.relu(-scores - self.positive_margin)
            negative_cost = ops.relu(self.negative_margin + scores)
        per_anchor = pairwise.masked_mean(positive_cost, positive) + pairwise.masked_mean(
            negative_cost, negative
        )
        return _one_term_each(per_anchor)

    def get_config(self):
        return {
            **super().get_config(),
            "positive_margin": self.positive_margin,
            "negative_margin": self.negative_margin,
            "distance": self.distance,
        }


@registry.register("loss", "npair")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class NPairLoss(PairLoss):
    """Multi-class N-pair loss: log(1 + Σ_n exp(s_an − s_ap + m)) per anchor–positive pair.

    Every negative of the batch competes with the positive at once, as in a softmax over the
    other identities. With several positives per anchor (a P×K batch with K > 2) each positive
    gets its own term and the anchor's loss is their mean; a batch of N pairs (K = 2) is the
    paper's setting. The paper uses unnormalised inner products plus an L2 penalty on the
    embeddings (add one with `activity_regularizer`); `similarity="cosine"` normalises instead.

    Args:
        margin: m >= 0, added to every negative's score difference.
        similarity: `"dot"` (inner product, the paper's) or `"cosine"`.
        check_inputs, reduction, name, dtype: see `PairLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.NPairLoss(similarity="cosine")
    ```

    Reference:
        Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
        NeurIPS 2016.
    """

    def __init__(self, margin=0.0, similarity="dot", **kwargs):
        super().__init__(**kwargs)
        self.margin = _checks.check_positive("margin", margin, allow_zero=True)
        self.similarity = _check_choice("similarity", similarity, ("dot", "cosine"))

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        if self.similarity == "cosine":
            scores = _cosine_scores(embeddings, candidates)
        else:
            scores = _backend.matmul(embeddings, embeddings if candidates is None else candidates,
                                     transpose_b=True)
        negatives = pairwise.masked_logsumexp(scores, negative)
        per_pair = ops.softplus(negatives[:, None] - scores + self.margin)
        return _one_term_each(pairwise.masked_mean(per_pair, positive))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "similarity": self.similarity}


@registry.register("loss", "unified_pair")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class UnifiedPairLoss(PairLoss):
    """The unified pair loss: log(1 + Σ_i Σ_j exp(γ(s_nj − s_pi + m))) per anchor.

    Over all of an anchor's positives i and negatives j (cosine similarities), computed stably in
    O(batch²) as softplus(logsumexp_j(γ s_nj) + logsumexp_i(−γ s_pi) + γm). With the class
    centres in place of the batch's pairs it is the normalised softmax or CosFace, with one
    positive and γ = 1 it is N-pair, and (1/γ)·loss tends to the triplet hinge as γ grows:
    see `unified_pair_loss`, the same formula on precomputed similarities.

    Args:
        gamma: γ > 0, the scale (the inverse temperature).
        margin: m >= 0.
        check_inputs, reduction, name, dtype: see `PairLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.UnifiedPairLoss(gamma=64.0, margin=0.35)
    ```

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
        CVPR 2020, eq. 1.
    """

    def __init__(self, gamma=64.0, margin=0.35, **kwargs):
        super().__init__(**kwargs)
        self.gamma = _checks.check_positive("gamma", gamma)
        self.margin = _checks.check_positive("margin", margin, allow_zero=True)

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        scores = _cosine_scores(embeddings, candidates)
        per_anchor = unified_pair_loss(
            scores, scores, self.gamma, self.margin, positive_mask=positive, negative_mask=negative
        )
        return _one_term_each(per_anchor)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "margin": self.margin}


@registry.register("loss", "circle")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class CircleLoss(PairLoss):
    """Circle loss: the unified pair loss with a self-paced weight on every similarity.

    Per anchor: softplus(logsumexp_j(γ α_nj (s_nj − Δ_n)) + logsumexp_i(−γ α_pi (s_pi − Δ_p))),
    with Δ_p = 1 − m, Δ_n = m, α_p = max(1 + m − s_p, 0) and α_n = max(s_n + m, 0) on cosine
    similarities. The weights α are held constant in the gradient (`stop_gradient`), as the paper
    defines them: they re-weight each pair's gradient by how far it is from its optimum.

    Args:
        margin: m in [0, 1], the relaxation. The paper uses 0.25.
        gamma: γ > 0, the scale. The paper uses 256 for face recognition.
        check_inputs, reduction, name, dtype: see `PairLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.CircleLoss(margin=0.25, gamma=256.0)
    ```

    Reference:
        Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
        CVPR 2020.
    """

    def __init__(self, margin=0.25, gamma=256.0, **kwargs):
        super().__init__(**kwargs)
        self.margin = _checks.check_range("margin", margin, 0.0, 1.0)
        self.gamma = _checks.check_positive("gamma", gamma)

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        scores = _cosine_scores(embeddings, candidates)
        m = self.margin
        alpha_positive = ops.stop_gradient(ops.relu(1.0 + m - scores))
        alpha_negative = ops.stop_gradient(ops.relu(scores + m))
        negatives = pairwise.masked_logsumexp(
            self.gamma * alpha_negative * (scores - m), negative
        )
        positives = pairwise.masked_logsumexp(
            -self.gamma * alpha_positive * (scores - (1.0 - m)), positive
        )
        return _one_term_each(ops.softplus(negatives + positives))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "gamma": self.gamma}


@registry.register("loss", "supcon")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class SupConLoss(PairLoss):
    """Supervised contrastive loss: −mean_p log(exp(s_ap/τ) / Σ_{k≠a} exp(s_ak/τ)) per anchor.

    The "L_out" form: the log-probability of each of the anchor's positives among all the other
    samples of the batch, averaged over its positives (several per anchor), on cosine similarities.

    Args:
        temperature: τ > 0. The paper uses 0.1.
        check_inputs, reduction, name, dtype: see `PairLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.SupConLoss(temperature=0.1)
    ```

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.
    """

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        self.temperature = _checks.check_positive("temperature", temperature)

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        logits = _cosine_scores(embeddings, candidates) / self.temperature
        others = ops.logical_or(positive, negative)
        log_partition = pairwise.masked_logsumexp(logits, others)
        per_anchor = log_partition - pairwise.masked_mean(logits, positive)
        return _one_term_each(per_anchor)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@registry.register("loss", "multi_similarity")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class MultiSimilarityLoss(PairLoss):
    """Multi-Similarity loss, with its pair mining, on cosine similarities.

    Per anchor, over the mined pairs: (1/α) log(1 + Σ_p exp(−α(s_p − λ))) +
    (1/β) log(1 + Σ_n exp(β(s_n − λ))). Mining keeps a negative when s_n + ε is above the
    anchor's least similar positive, and a positive when s_p − ε is below its most similar
    negative; an empty mined set contributes 0.

    Args:
        alpha: α > 0, the scale of the positive term.
        beta: β > 0, the scale of the negative term.
        base: λ, the similarity threshold, in [-1, 1].
        epsilon: ε >= 0, the mining margin.
        check_inputs, reduction, name, dtype: see `PairLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    ```

    Reference:
        Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
        Learning", CVPR 2019.
    """

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _checks.check_positive("alpha", alpha)
        self.beta = _checks.check_positive("beta", beta)
        self.base = _checks.check_range("base", base, -1.0, 1.0)
        self.epsilon = _checks.check_positive("epsilon", epsilon, allow_zero=True)

    def anchor_terms(self, embeddings, positive, negative, candidates=None):
        scores = _cosine_scores(embeddings, candidates)
        keep_positive, keep_negative = pairwise.multi_similarity_pairs(
            scores, positive, negative, self.epsilon
        )
        positives = pairwise.masked_logsumexp(
            -self.alpha * (scores - self.base), keep_positive, include_zero=True
        )
        negatives = pairwise.masked_logsumexp(
            self.beta * (scores - self.base), keep_negative, include_zero=True
        )
        return _one_term_each(positives / self.alpha + negatives / self.beta)

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "beta": self.beta,
            "base": self.base,
            "epsilon": self.epsilon,
        }
