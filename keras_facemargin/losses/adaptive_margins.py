"""The margin losses face recognition uses today: margins that adapt to the sample or the batch.

Each is a `MarginSoftmaxLoss` and overrides only what differs from the family: `prepare` (per-
sample margin parameters, the scale, the running statistics), `apply_margin(cosine, params)`,
and, for CurricularFace, the logits of the negatives. Losses that need the feature norm
(AdaFace, MagFace) declare `needs_feature_norms` and get it from the head, as a last column of
`y_pred`; losses with running statistics (AdaFace, CurricularFace, AdaCos) or random draws
(ElasticFace) keep them in the head built for them (`CosineHead(num_classes, loss=loss)`), so
that they are saved, restored and mirrored with the model. Under `tf.distribute` every batch
statistic is taken over the global batch (the replicas' rows gathered), so that the replicas
agree and the step equals an undistributed step on the same global batch.

Where a paper and its official code differ, the docstrings say which is followed.
"""

import math

import keras
from keras import ops

from keras_facemargin import _backend, _checks, registry
from keras_facemargin._replicas import global_rows
from keras_facemargin.losses.margin_losses import (
    ArcFaceLoss,
    MarginSoftmaxLoss,
    angle,
    angle_slope,
    arc_margin,
    arc_margin_slope,
)

# The official AdaFace code's stabilisers: ĝ's denominator and the norms' clip range.
_ADAFACE_EPS = 1e-3
_ADAFACE_NORM_RANGE = (0.001, 100.0)
# CurricularFace's dense rows are decomposed into at most this many hard targets (mixup, cutmix).
_DENSE_TARGETS = 2


def _weighted_mean(x, weights):
    return ops.divide_no_nan(ops.sum(weights * x), ops.sum(weights))


def _ema(batch_value, running, momentum, ok):
    """momentum·batch + (1 − momentum)·running where `ok`, else running."""
    return ops.where(ok, momentum * batch_value + (1.0 - momentum) * running, running)


@registry.register("loss", "adaface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class AdaFaceLoss(MarginSoftmaxLoss):
    """AdaFace: a margin that moves between ArcFace and CosFace with the feature norm.

    The feature norm ‖z‖ stands for image quality. Standardised by running batch statistics and
    clipped, ĝ = clip(h·(‖z‖ − μ) / (σ + 10⁻³), −1, 1), it sets an angular margin −m·ĝ and an
    additive margin m·ĝ + m: ψ(θ) = cos(θ − m·ĝ) − (m + m·ĝ). A high-quality sample (ĝ → 1) gets
    cos(θ − m) − 2m, emphasising hard samples; a low-quality one (ĝ → −1) gets ArcFace's cos(θ + m),
    emphasising easy ones; at the mean norm (ĝ = 0) it is CosFace with margin m. The norms enter
    detached (no gradient through ĝ) and clipped to [0.001, 100], as in the official code.

    Running statistics (kept by the head; initial μ = 20, σ = 100, the official code's): every
    training step first mixes the batch's mean and unbiased (N − 1) standard deviation of the
    clipped norms into them, μ ← α·mean + (1 − α)·μ and σ ← α·std + (1 − α)·σ with α =
    `momentum`, and then the batch uses the updated μ and σ — the official order. A batch of one
    sample leaves σ unchanged (its unbiased std is undefined); evaluation uses μ, σ unchanged.

    Where the official code differs: it clips the shifted angle θ − m·ĝ to [10⁻³, π − 10⁻³] and every
    cosine to [−1 + 10⁻³, 1 − 10⁻³] "for stability"; here θ − m·ĝ is clipped to [0, π] (ψ stays
    continuous and non-increasing, and ĝ = 0 is exactly CosFace) and only the arccos input is
    clipped (to 1 − 10⁻⁷), as for every loss here.

    Args:
        margin: m in [0, 1]. The paper uses 0.4.
        h: the concentration h > 0 of ĝ (about 68% of the samples get |ĝ| < h). The paper: 0.333.
        momentum: α in [0, 1], the weight of the batch in the running statistics (the official
            configuration's `t_alpha` default, 0.01; 1 uses the batch alone, 0 freezes μ and σ).
        scale: s > 0. The paper uses 64.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Call arguments:
        y_true: integer labels `[batch]`/`[batch, 1]`, or dense target rows `[batch, num_classes]`.
        y_pred: `[cosines | feature norm]`, `[batch, num_classes + 1]`, from a head built for
            this loss (`CosineHead(num_classes, loss=loss)`).

    Example:

    ```python
    loss = keras_facemargin.losses.AdaFaceLoss()
    model, embedder = keras_facemargin.models.build_recognizer(backbone, num_classes, loss=loss)
    model.compile(optimizer="sgd", loss=loss)
    ```

    Reference:
        Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022.
    """

    needs_feature_norms = True

    def __init__(self, margin=0.4, h=0.333, momentum=0.01, scale=64.0, **kwargs):
        super().__init__(scale=scale, **kwargs)
        self.margin = _checks.check_range("margin", margin, 0.0, 1.0)
        self.h = _checks.check_positive("h", h)
        self.momentum = _checks.check_range("momentum", momentum, 0.0, 1.0)

    def state_variables(self, num_classes):
        return {"norm_mean": 20.0, "norm_std": 100.0}

    def prepare(self, batch, state, training):
        low, high = _ADAFACE_NORM_RANGE
        norms = ops.stop_gradient(ops.clip(batch.norms, low, high))
        mean, std = state["norm_mean"], state["norm_std"]
        new_state = {}
        if training:
            all_norms, _ = global_rows(norms)
            weights, _ = global_rows(batch.row_weights())
            count = ops.sum(weights)
            batch_mean = _weighted_mean(all_norms, weights)
            variance = ops.divide_no_nan(ops.sum(weights * ops.square(all_norms - batch_mean)),
                                         count - 1.0)
            mean = _ema(batch_mean, mean, self.momentum, count >= 1.0)
            std = _ema(ops.sqrt(variance), std, self.momentum, count >= 2.0)
            new_state = {"norm_mean": mean, "norm_std": std}
        g = ops.clip(self.h * (norms - mean) / (std + _ADAFACE_EPS), -1.0, 1.0)
        return {"g": g}, self.scale, new_state

    def apply_margin(self, cosine, params=None):
        """ψ for per-sample ĝ (`params["g"]`); without params, ĝ = 0 (CosFace with margin m)."""
        g = 0.0 if params is None else params["g"]
        shifted = ops.clip(angle(cosine) - self.margin * g, 0.0, math.pi)
        return ops.cos(shifted) - (self.margin + self.margin * g)

    def margin_slope(self, cosine, params=None):
        g = 0.0 if params is None else params["g"]
        shifted = angle(cosine) - self.margin * g
        inside = ops.logical_and(shifted > 0.0, shifted < math.pi)
        return ops.where(inside, ops.sin(shifted) * angle_slope(cosine), ops.zeros_like(cosine))

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "h": self.h, "momentum": self.momentum}


@registry.register("loss", "magface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class MagFaceLoss(MarginSoftmaxLoss):
    """MagFace: an ArcFace margin that grows with the feature norm, and a norm regulariser.

    With a = ‖z‖ clipped to [l_a, u_a], the margin m(a) = l_m + (u_m − l_m)·(a − l_a) / (u_a − l_a)
    grows linearly from l_m to u_m; the target gets ArcFace's ψ with that margin (and
    InsightFace's fallback cos θ − m(a)·sin m(a) where θ + m(a) > π, as the official code), and
    every sample adds λ_g·g(a) with g(a) = a / u_a² + 1 / a, which pulls the norms up from l_a.
    Both terms reach the features through a, so easy (well-classified) samples end with larger
    norms: after training the feature norm is a quality score (`export_embedder(..., quality=True)`
    serves it). With every norm at l_a, this is ArcFace with margin l_m plus λ_g·g(l_a). Outside
    [l_a, u_a] a gets no gradient (the clip), as in the official code.

    Args:
        lower_norm: l_a > 0. The paper: 10.
        upper_norm: u_a > l_a. The paper: 110.
        lower_margin: l_m in [0, π/2]. The paper: 0.45.
        upper_margin: u_m in [l_m, π/2]. The paper: 0.8.
        regularizer_weight: λ_g >= 0. The paper: 35.
        scale: s > 0. The paper uses 64.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Call arguments:
        y_true: integer labels `[batch]`/`[batch, 1]`, or dense target rows `[batch, num_classes]`.
        y_pred: `[cosines | feature norm]`, `[batch, num_classes + 1]`, from a head built for
            this loss.

    Example:

    ```python
    loss = keras_facemargin.losses.MagFaceLoss()
    model, embedder = keras_facemargin.models.build_recognizer(backbone, num_classes, loss=loss)
    model.compile(optimizer="sgd", loss=loss)
    ```

    Reference:
        Meng et al., "MagFace: A Universal Representation for Face Recognition and Quality
        Assessment", CVPR 2021.
    """

    needs_feature_norms = True
    differentiable_parameters = ("margin",)

    def __init__(self, lower_norm=10.0, upper_norm=110.0, lower_margin=0.45, upper_margin=0.8,
                 regularizer_weight=35.0, scale=64.0, **kwargs):
        super().__init__(scale=scale, **kwargs)
        self.lower_norm = _checks.check_positive("lower_norm", lower_norm)
        self.upper_norm = _checks.check_positive("upper_norm", upper_norm)
        if not self.upper_norm > self.lower_norm:
            raise ValueError(f"upper_norm must be > lower_norm={self.lower_norm}; got {upper_norm!r}")
        self.lower_margin = _checks.check_range("lower_margin", lower_margin, 0.0, math.pi / 2,
                                                doc=" radians")
        self.upper_margin = _checks.check_range("upper_margin", upper_margin, 0.0, math.pi / 2,
                                                doc=" radians")
        if self.upper_margin < self.lower_margin:
            raise ValueError(
                f"upper_margin must be >= lower_margin={self.lower_margin}; got {upper_margin!r}")
        self.regularizer_weight = _checks.check_positive("regularizer_weight", regularizer_weight,
                                                         allow_zero=True)

    def margin_of(self, norms):
        """The margin m(a) of each feature norm a: linear from l_m at l_a to u_m at u_a.

        Args:
            norms: feature norms, already clipped to [l_a, u_a]; any shape.

        Returns:
            The margins, the shape of `norms`.
        """
        slope = (self.upper_margin - self.lower_margin) / (self.upper_norm - self.lower_norm)
        return self.lower_margin + slope * (norms - self.lower_norm)

    def prepare(self, batch, state, training):
        norms = ops.clip(batch.norms, self.lower_norm, self.upper_norm)
        return {"margin": self.margin_of(norms), "norm": norms}, self.scale, {}

    def apply_margin(self, cosine, params=None):
        """ψ for per-sample margins (`params["margin"]`); without params, m = l_m."""
        margin = self.lower_margin if params is None else params["margin"]
        return arc_margin(cosine, margin)

    def margin_slope(self, cosine, params=None):
        margin = self.lower_margin if params is None else params["margin"]
        return arc_margin_slope(cosine, margin)

    def margin_parameter_slope(self, cosine, params, name):
        """dψ/dm: −sin(θ + m), and −(sin m + m·cos m) in the fallback."""
        margin = params["margin"]
        beyond = cosine <= ops.cos(math.pi - margin)
        return ops.where(beyond, -(ops.sin(margin) + margin * ops.cos(margin)),
                         -ops.sin(angle(cosine) + margin))

    def extra_loss(self, batch, params):
        norms = params["norm"]
        return self.regularizer_weight * (norms / self.upper_norm**2 + 1.0 / norms)

    def get_config(self):
        return {**super().get_config(), "lower_norm": self.lower_norm, "upper_norm": self.upper_norm,
                "lower_margin": self.lower_margin, "upper_margin": self.upper_margin,
                "regularizer_weight": self.regularizer_weight}


@registry.register("loss", "curricularface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class CurricularFaceLoss(MarginSoftmaxLoss):
    """CurricularFace: ArcFace on the target, and hard negatives re-weighted by training progress.

    The target gets ArcFace's ψ(θ) = cos(θ + m) (with InsightFace's fallback). A negative j is
    hard when cos θ_j > cos(θ_y + m) (the official code compares with cos(θ_y + m) itself, also
    where the target uses the fallback); its logit becomes s·cos θ_j·(t + cos θ_j), the others
    stay s·cos θ_j. Early in training t ≈ 0 and hard negatives weigh little (easy samples first);
    as t grows towards 1 they weigh more than they would in ArcFace. The threshold and t carry no
    gradient.

    The running statistic t (kept by the head, initially 0) is an exponential moving average of
    the batch's mean target cosine: every training step first sets t ← α·mean(cos θ_y) + (1 − α)·t
    and then the batch uses the new t — the official order. Evaluation uses t unchanged. A dense
    target row contributes its label-weighted target cosine to the mean; its loss is the mixture
    Σ_j y_j L(target = j) over its (at most two: mixup, cutmix) non-zero entries, each with its own
    hard negatives; a row with more non-zero entries raises a ValueError (a
    `tf.debugging.Assert` in graphs, NaN under XLA/`jax.jit`).

    Args:
        margin: m in radians, in [0, π/2]. The paper uses 0.5.
        scale: s > 0. The paper uses 64.
        momentum: α in [0, 1], the weight of the batch in t. The paper: 0.01.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.CurricularFaceLoss()
    model, embedder = keras_facemargin.models.build_recognizer(backbone, num_classes, loss=loss)
    model.compile(optimizer="sgd", loss=loss)
    ```

    Reference:
        Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face
        Recognition", CVPR 2020.
    """

    def __init__(self, margin=0.5, scale=64.0, momentum=0.01, **kwargs):
        super().__init__(scale=scale, **kwargs)
        self.margin = _checks.check_range("margin", margin, 0.0, math.pi / 2, doc=" radians")
        self.momentum = _checks.check_range("momentum", momentum, 0.0, 1.0)

    def state_variables(self, num_classes):
        return {"t": 0.0}

    def prepare(self, batch, state, training):
        t = state["t"]
        new_state = {}
        if training:
            target, _ = global_rows(ops.stop_gradient(batch.target_cosine))
            weights, _ = global_rows(batch.row_weights())
            t = _ema(_weighted_mean(target, weights), t, self.momentum, ops.sum(weights) > 0)
            new_state = {"t": t}
        return {"t": t}, self.scale, new_state

    def apply_margin(self, cosine, params=None):
        """The target's ψ (ArcFace); the negatives' modulation is in the logits."""
        return arc_margin(cosine, self.margin)

    def margin_slope(self, cosine, params=None):
        return arc_margin_slope(cosine, self.margin)

    def modulate_negatives(self, cosine, target, params):
        """Hard negatives (cos θ_j > cos(θ_y + m)) become cos θ_j·(t + cos θ_j), slope t + 2 cos θ_j."""
        threshold = ops.stop_gradient(ops.cos(angle(target) + self.margin))
        hard = cosine > threshold[:, None]
        t = ops.stop_gradient(ops.cast(params["t"], cosine.dtype))
        values = ops.where(hard, cosine * (t + cosine), cosine)
        return values, ops.where(hard, t + 2.0 * cosine, ops.ones_like(cosine))

    def _dense_loss(self, y_true, cosine, params, scale):
        k = min(_DENSE_TARGETS, cosine.shape[-1])
        weights, labels = ops.top_k(y_true, k, sorted=True)
        rest = ops.sum(y_true, axis=-1) - ops.sum(weights, axis=-1)
        values = _checks.concrete(rest) if self.check_inputs else None
        if values is not None and values.size and values.max() > 1e-6:
            raise ValueError(
                f"CurricularFaceLoss takes dense target rows with at most {_DENSE_TARGETS} non-zero "
                f"entries (mixup, cutmix); got rows with {values.max():g} of their weight beyond the "
                f"{_DENSE_TARGETS} largest"
            )
        loss = sum(weights[:, i] * self._sparse_loss(labels[:, i], cosine, params, scale) for i in range(k))
        if self.check_inputs and values is None:
            ok = rest <= 1e-6
            _checks.graph_assert(
                ops.all(ok),
                f"CurricularFaceLoss takes dense target rows with at most {_DENSE_TARGETS} non-zero "
                "entries; got a row whose weight beyond them is",
                ops.max(rest),
            )
            loss = ops.where(ok, loss, ops.full_like(loss, math.nan))
        return loss

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "momentum": self.momentum}


@registry.register("loss", "subcenter_arcface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class SubCenterArcFaceLoss(ArcFaceLoss):
    """Sub-center ArcFace: ArcFace on the best of K sub-centres per class.

    The sub-centres live in the head (`CosineHead(num_classes, sub_centers=K)`, which any margin
    loss can use); this loss is ArcFace that asks for such a head, so that
    `build_recognizer(backbone, num_classes, loss=SubCenterArcFaceLoss())` builds it. Noisy
    images of a class tend to gather at non-dominant sub-centres instead of pulling the dominant
    one; after training, `keras_facemargin.heads.sub_center_report` finds the images more than 75°
    from their class's dominant sub-centre and `drop_non_dominant_sub_centers` keeps one centre
    per class, the paper's clean-and-retrain recipe. With K = 1 it is ArcFace.

    Args:
        margin: m in radians, in [0, π/2]. The paper uses 0.5.
        scale: s > 0. The paper uses 64.
        sub_centers: K >= 1 sub-centres per class. The paper: 3.
        easy_margin, label_smoothing, check_inputs, reduction, name, dtype: see `ArcFaceLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.SubCenterArcFaceLoss(sub_centers=3)
    model, embedder = keras_facemargin.models.build_recognizer(backbone, num_classes, loss=loss)
    model.compile(optimizer="sgd", loss=loss)
    ```

    Reference:
        Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
        Faces", ECCV 2020.
    """

    def __init__(self, margin=0.5, scale=64.0, sub_centers=3, **kwargs):
        super().__init__(margin=margin, scale=scale, **kwargs)
        self.sub_centers = _checks.check_integer("sub_centers", sub_centers, 1)

    def get_config(self):
        return {**super().get_config(), "sub_centers": self.sub_centers}


_ELASTIC_KINDS = {"arc": 0.5, "cos": 0.35}


@registry.register("loss", "elasticface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class ElasticFaceLoss(MarginSoftmaxLoss):
    """ElasticFace: ArcFace or CosFace with a margin drawn per sample from N(m, σ²).

    Every training step draws one margin per sample, m_i ~ N(m, σ²) (clipped at 0 so that ψ keeps
    decreasing; never reached with the defaults), for ψ(θ) = cos(θ + m_i) (`kind="arc"`, with
    InsightFace's fallback where θ + m_i > π) or cos θ − m_i (`kind="cos"`). The "+" variant
    (`plus=True`) sorts the draws and gives the larger margins to the harder samples, by rank of
    the target cosine: the hardest sample gets the largest margin. Evaluation uses m itself.

    Paper and official code differ on "+": the official code indexes the sorted margins with
    the samples' rank order (`margin[argsort(cos, descending)]`), which assigns them by rank only
    when that permutation is its own inverse, as every permutation of at most two samples is;
    here the paper's rule is followed for any batch. Under `tf.distribute` the draws and the ranks
    are those of the global batch, so a distributed step equals an undistributed one. Where
    θ + m_i > π the official code applies cos(θ + m_i) unchanged; here ArcFace's fallback keeps ψ
    decreasing (σ = 0 is then exactly `ArcFaceLoss`).

    The random state (kept by the head, from `seed`) is advanced once per training step, after
    the step's draw.

    Args:
        kind: `"arc"` (ElasticFace-Arc) or `"cos"` (ElasticFace-Cos).
        margin: m, the mean margin: radians in [0, π/2] for arc, in [0, 1] for cos. Default:
            0.5 (arc) or 0.35 (cos), the paper's.
        sigma: σ >= 0. The official configuration: 0.05.
        plus: ElasticFace+ (larger margins to harder samples).
        seed: seed of the draws (int or None for a random one, fixed when the head is built).
        scale: s > 0. The paper uses 64.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.ElasticFaceLoss(kind="arc", plus=True)
    model, embedder = keras_facemargin.models.build_recognizer(backbone, num_classes, loss=loss)
    model.compile(optimizer="sgd", loss=loss)
    ```

    Reference:
        Boutros et al., "ElasticFace: Elastic Margin Loss for Deep Face Recognition",
        CVPR Workshops 2022.
    """

    uses_seed = True

    def __init__(self, kind="arc", margin=None, sigma=0.05, plus=False, seed=None, scale=64.0,
                 **kwargs):
        super().__init__(scale=scale, **kwargs)
        if not isinstance(kind, str) or kind not in _ELASTIC_KINDS:
            raise ValueError(f"kind must be 'arc' or 'cos'; got {kind!r}")
        self.kind = kind
        margin = _ELASTIC_KINDS[kind] if margin is None else margin
        high, doc = (math.pi / 2, " radians") if kind == "arc" else (1.0, "")
        self.margin = _checks.check_range("margin", margin, 0.0, high, doc=doc)
        self.sigma = _checks.check_positive("sigma", sigma, allow_zero=True)
        self.plus = _checks.check_bool("plus", plus)
        if seed is not None:
            seed = _checks.check_integer("seed", seed, 0, " or None")
        self.seed = seed

    def prepare(self, batch, state, training):
        cosine = batch.cosine
        if not training:
            return {"margin": ops.full_like(cosine[:, 0], self.margin)}, self.scale, {}
        seed = state["seed"]
        target, offset = global_rows(ops.stop_gradient(batch.target_cosine))
        draws = _backend.normal_from_seed(ops.shape(target), seed, mean=self.margin,
                                          stddev=self.sigma, dtype=cosine.dtype)
        if self.plus:
            easiest_first = ops.argsort(-target)
            # The r-th easiest sample gets the r-th smallest draw: the hardest, the largest.
            draws = ops.take(ops.sort(draws), ops.argsort(easiest_first))
        margins = ops.maximum(draws, 0.0)
        if not isinstance(offset, int):
            margins = ops.slice(margins, [offset], [ops.shape(cosine)[0]])
        # An empty global batch (tf.distribute's last, partial step can be one) draws nothing.
        drew = ops.cast(ops.shape(target)[0] > 0, seed.dtype)
        step = ops.convert_to_tensor([0, 1], dtype=seed.dtype) * drew
        return {"margin": margins}, self.scale, {"seed": seed + step}

    def apply_margin(self, cosine, params=None):
        """ψ for per-sample margins (`params["margin"]`); without params, m itself."""
        margin = self.margin if params is None else params["margin"]
        if self.kind == "arc":
            return arc_margin(cosine, margin)
        return cosine - margin

    def margin_slope(self, cosine, params=None):
        margin = self.margin if params is None else params["margin"]
        if self.kind == "arc":
            return arc_margin_slope(cosine, margin)
        return ops.ones_like(cosine)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "margin": self.margin, "sigma": self.sigma,
                "plus": self.plus, "seed": self.seed}


@registry.register("loss", "adacos")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class AdaCosLoss(MarginSoftmaxLoss):
    """AdaCos: normalised softmax without margin, with the scale set by the data.

    Fixed (`dynamic=False`): s = √2·ln(C − 1) for C classes, the scale at which the target's
    probability changes fastest around θ = π/4 when the other cosines are 0. Dynamic (the
    default): s starts there and every training step first recomputes it from the batch,
    s ← ln(B_avg) / cos(min(π/4, θ_med)), where B_avg is the batch mean of Σ_{k≠y} exp(s·cos θ_k)
    (with the previous s) and θ_med the median target angle (the mean of the two middle ones for
    an even batch; the widely used unofficial PyTorch code's `torch.median` takes the lower), and
    then the batch uses the new s — the paper's Algorithm 1 (we found no official implementation
    to compare with). s carries no gradient. Under `PartialFC` the sum over the S sampled
    non-target classes is scaled by (C − 1)/(S − 1) to stand for all C − 1 of them (an estimate:
    the sampled classes include the batch's other positives); C is the head's number of classes.
    A dense target row counts Σ_k (1 − y_k)·exp(s·cos θ_k) and its label-weighted target angle.

    The dynamic scale is kept by the head (running statistic "scale").

    Args:
        dynamic: adapt s every step (True) or keep √2·ln(C − 1).
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.AdaCosLoss()
    model, embedder = keras_facemargin.models.build_recognizer(backbone, num_classes, loss=loss)
    model.compile(optimizer="sgd", loss=loss)
    ```

    Reference:
        Zhang et al., "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning Deep
        Face Representations", CVPR 2019.
    """

    def __init__(self, dynamic=True, **kwargs):
        if "scale" in kwargs:
            raise ValueError(f"AdaCosLoss sets its own scale; got scale={kwargs['scale']!r}")
        super().__init__(scale=1.0, **kwargs)
        self.dynamic = _checks.check_bool("dynamic", dynamic)

    @staticmethod
    def fixed_scale(num_classes):
        """AdaCos's fixed scale √2·ln(C − 1), also the dynamic scale's starting value.

        Args:
            num_classes: C >= 3.

        Returns:
            The scale, a float.
        """
        if num_classes < 3:
            raise ValueError(
                f"AdaCosLoss needs num_classes >= 3 (its scale is √2·ln(C − 1)); got {num_classes}")
        return math.sqrt(2.0) * math.log(num_classes - 1)

    def state_variables(self, num_classes):
        return {"scale": self.fixed_scale(num_classes)} if self.dynamic else {}

    def prepare(self, batch, state, training):
        cosine = batch.cosine
        if not self.dynamic:
            return {}, self.fixed_scale(batch.num_classes), {}
        scale = state["scale"]
        if not training:
            return {}, scale, {}
        z = ops.stop_gradient(scale * cosine)
        if batch.dense is None:
            labels = ops.cast(batch.labels, "int32")
            others = ops.where(ops.one_hot(labels, cosine.shape[-1], dtype="bool"), -math.inf, z)
            log_b = ops.logsumexp(others, axis=-1)
        else:
            log_b = ops.logsumexp(z + ops.log(ops.maximum(1.0 - batch.dense, 0.0)), axis=-1)
        width = cosine.shape[-1]
        if width < batch.num_classes:  # PartialFC: S of the C classes were sampled
            log_b = log_b + math.log((batch.num_classes - 1) / (width - 1))
        if batch.dense is None:
            target_angle = angle(ops.stop_gradient(batch.target_cosine))
        else:
            target_angle = ops.sum(batch.dense * angle(ops.stop_gradient(cosine)), axis=-1)
        log_b, _ = global_rows(log_b)
        target_angle, _ = global_rows(target_angle)
        weights, _ = global_rows(batch.row_weights())
        count = ops.shape(log_b)[0]
        log_b_avg = ops.logsumexp(log_b) - ops.log(ops.cast(count, cosine.dtype))
        median = ops.cond(count > 0, lambda: ops.cast(ops.median(target_angle), cosine.dtype),
                          lambda: ops.convert_to_tensor(math.pi / 4, cosine.dtype))
        new = log_b_avg / ops.cos(ops.minimum(math.pi / 4, median))
        # A batch with bad rows, or an empty one (tf.distribute's last step can be), changes nothing.
        scale = ops.where(ops.logical_and(ops.all(weights > 0), count > 0), new, scale)
        return {}, scale, {"scale": scale}

    def get_config(self):
        config = super().get_config()
        config.pop("scale")
        return {**config, "dynamic": self.dynamic}
