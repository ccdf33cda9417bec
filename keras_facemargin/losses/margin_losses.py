"""Margin-softmax losses: cross-entropy on scaled cosines with a margin on the target class.

Every loss here takes `y_pred = cos θ` from a `CosineHead` and differs from the others only in
`apply_margin`, the function ψ that replaces the target class's cosine before scaling by s.
"""

import math
import threading

import keras
import numpy as np
from keras import ops

from keras_facemargin import _backend, _checks, _loss_state, registry

# arccos is clipped to [-1 + _CLIP, 1 - _CLIP] so that its gradient stays finite at cos θ = ±1.
_CLIP = 1e-7
_RANGE_TOLERANCE = 1e-3
# The head that produced the y_pred of the current call, looked up before Keras converts y_pred.
_calls = threading.local()


def angle(cosine):
    """θ = arccos(cos θ), from the cosine clipped to [−1 + 1e-7, 1 − 1e-7] (finite slope)."""
    return ops.arccos(ops.clip(cosine, -1.0 + _CLIP, 1.0 - _CLIP))


def angle_slope(cosine):
    """−dθ/d cos θ = 1 / sin θ for `angle`: 0 where the cosine is clipped, as autodiff gives."""
    inside = ops.abs(cosine) < 1.0 - _CLIP
    safe = ops.where(inside, cosine, ops.zeros_like(cosine))
    return ops.where(inside, ops.rsqrt(1.0 - ops.square(safe)), ops.zeros_like(cosine))


def _beyond_pi(cosine, margin):
    """Where θ + m > π, for a float margin or a tensor of them."""
    if isinstance(margin, float):
        return cosine <= math.cos(math.pi - margin)
    margin = ops.cast(margin, cosine.dtype)
    return cosine <= ops.cos(math.pi - margin)


def arc_margin(cosine, margin):
    """ArcFace's ψ for a margin that may vary per sample (a tensor broadcasting against `cosine`):
    cos(θ + m), and InsightFace's cos θ − m·sin m where θ + m > π."""
    offset = margin * math.sin(margin) if isinstance(margin, float) else margin * ops.sin(margin)
    return ops.where(_beyond_pi(cosine, margin), cosine - offset, ops.cos(angle(cosine) + margin))


def arc_margin_slope(cosine, margin):
    """dψ/d cos θ of `arc_margin`."""
    slope = ops.sin(angle(cosine) + margin) * angle_slope(cosine)
    return ops.where(_beyond_pi(cosine, margin), ops.ones_like(cosine), slope)


_angle, _angle_slope = angle, angle_slope


def _leave_one_out_logsumexp(z):
    """`log Σ_{k≠j} exp(z_k)` for every column j of `z` `[batch, classes]`, in O(batch × classes).

    Subtracting exp(z_j) from the full sum is exact enough for every column except the row's
    largest, where it would cancel catastrophically; that column gets its own sum with the
    second-largest value as shift.
    """
    num_classes = z.shape[-1]
    is_top = ops.one_hot(ops.argmax(z, axis=-1), num_classes, dtype="bool")
    shift = ops.stop_gradient(ops.max(z, axis=-1, keepdims=True))
    exp = ops.exp(z - shift)
    total = ops.sum(exp, axis=-1, keepdims=True)
    tiny = 1e-30 if z.dtype != "float16" else 1e-7
    others = shift + ops.log(ops.maximum(total - exp, tiny))
    without_top = ops.where(is_top, ops.full_like(z, -math.inf), z)
    shift2 = ops.stop_gradient(ops.max(without_top, axis=-1, keepdims=True))
    top = shift2 + ops.log(ops.sum(ops.exp(without_top - shift2), axis=-1, keepdims=True))
    return ops.where(is_top, top, others)


def _and(a, b):
    if a is None:
        return b
    return a if b is None else ops.logical_and(a, b)


class Batch:
    """What `MarginSoftmaxLoss.prepare` sees of one step.

    Attributes:
        cosine: cos θ, `[batch, num_classes]`.
        norms: the feature norms `[batch]` (None unless the loss `needs_feature_norms`).
        labels: integer labels `[batch]` (None for dense targets).
        dense: dense target rows `[batch, num_classes]` (None for labels).
        valid: rows whose labels and cosines passed the checks, `[batch]` bool (None: all).
        num_classes: the head's number of classes (more than the width under `PartialFC`).
    """

    def __init__(self, cosine, norms=None, labels=None, dense=None, valid=None, num_classes=None):
        self.cosine, self.norms, self.labels, self.dense = cosine, norms, labels, dense
        self.valid = valid
        self.num_classes = cosine.shape[-1] if num_classes is None else num_classes
        self._target = None

    @property
    def target_cosine(self):
        """cos θ of each row's target, `[batch]` (label-weighted over a dense row)."""
        if self._target is None:
            if self.dense is None:
                self._target = _backend.take_per_row(self.cosine, ops.cast(self.labels, "int32"))
            else:
                self._target = ops.sum(self.dense * self.cosine, axis=-1)
        return self._target

    def row_weights(self):
        """1 for the rows that count in batch statistics, 0 for rows that failed a check."""
        ones = ops.ones_like(self.cosine[:, 0])
        return ones if self.valid is None else ops.where(self.valid, ones, ops.zeros_like(ones))


@keras.saving.register_keras_serializable(package="keras_facemargin")
class MarginSoftmaxLoss(keras.losses.Loss):
    """Base class: softmax cross-entropy on s·cos θ with the target cosine replaced by ψ(θ).

    Subclasses override `apply_margin(cosine)`, an elementwise function of cos θ that must decrease
    monotonically over θ in [0, π] (so a larger angle to the target centre always costs more),
    and `margin_slope(cosine)`, its derivative dψ/d cos θ, which the backward pass uses on the
    batch's target cosines. This base applies no margin: ψ(θ) = cos θ, the normalised softmax of
    NormFace. A subclass that overrides `apply_margin` but not `margin_slope` still gets exact
    gradients, by autodiff through ψ (a few more passes over `[batch, classes]` on TensorFlow).

    `y_true` may be integer labels `[batch]` or `[batch, 1]`, or dense rows `[batch, num_classes]`
    that sum to 1, such as the output of mixup or cutmix. A dense row is a mixture of hard targets,
    loss = Σ_j y_j · L(target=j): the margin goes on each target in turn, so for mixup the loss is
    exactly λ·L(a) + (1 − λ)·L(b).

    With `label_smoothing=ε` the margin stays on the true class and the cross-entropy targets
    are 1 − ε on the true class and ε / (num_classes − 1) on every other class (so ε = 0.1 over 5
    classes gives [0.025, 0.025, 0.025, 0.9, 0.025]).

    Bad labels raise a `ValueError` when their values are known (eager calls); inside a TensorFlow
    graph a `tf.debugging.Assert` raises; under XLA or `jax.jit`, which cannot raise, the loss of
    the offending samples is NaN. `check_inputs=False` turns all of this off.

    What a loss needs from its head is declared on the class, so that `build_recognizer` (and the
    command line) can build the head from the loss class alone: `needs_feature_norms` (the head
    appends each feature's norm as a last column of `y_pred`, `[batch, num_classes + 1]`),
    `uses_seed` (random draws), `state_variables(num_classes)` (running statistics, kept by the
    head: see `keras_facemargin.heads.CosineHead(loss=...)`) and `sub_centers` (sub-centres
    per class the head must have; 1: any). Subclasses whose margin depends on the sample (its
    feature norm, a random draw) or on batch statistics override `prepare`, which returns
    per-sample margin parameters, the scale and the updated statistics, and take those
    parameters as `apply_margin(cosine, params)`; `stateless_call` runs one step with an
    explicit state.

    Args:
        scale: s > 0, the norm the cosines are scaled to (the inverse softmax temperature).
        label_smoothing: ε in [0, 1).
        check_inputs: whether to validate labels and the cosine range (cheap; see above).
        reduction: as for every `keras.losses.Loss`.
        name: loss name.
        dtype: dtype of the loss computation; half precision is computed in float32.

    Call arguments:
        y_true: integer labels `[batch]`/`[batch, 1]`, or dense target rows `[batch, num_classes]`.
        y_pred: cos θ from a `CosineHead`, `[batch, num_classes]`.
        sample_weight: optional per-sample weights `[batch]`.

    Reference:
        Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", 2017.
    """

    #: Whether `y_pred` must end with a column of feature norms (the head appends it).
    needs_feature_norms = False
    #: Whether the loss draws random numbers (the head keeps the generator's state).
    uses_seed = False
    #: Sub-centres per class the head must have; 1 means the loss works with any head.
    sub_centers = 1
    # Margin parameters from `prepare` that carry gradients (MagFace's norm-dependent margin); the
    # hand-written backward pass needs `margin_parameter_slope` for each, dψ/d parameter.
    differentiable_parameters = ()

    def __init__(
        self,
        scale=64.0,
        label_smoothing=0.0,
        check_inputs=True,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=_checks.loss_dtype(dtype))
        self.scale = _checks.check_positive("scale", scale)
        self.label_smoothing = _checks.check_range(
            "label_smoothing", label_smoothing, 0.0, 1.0, high_inclusive=False
        )
        self.check_inputs = _checks.check_bool("check_inputs", check_inputs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        _calls.head = _loss_state.head_of(y_pred)
        try:
            loss = super().__call__(y_true, _checks.to_loss_dtype(y_pred, self.dtype), sample_weight)
        finally:
            _calls.head = None
        return _checks.reduce_empty(loss, self.reduction)

    def apply_margin(self, cosine):
        """ψ: the margin-penalised target cosine, elementwise on any shape.

        A subclass whose `prepare` returns margin parameters takes them as a second argument,
        `apply_margin(cosine, params)`, each `[batch]` (or broadcasting against `cosine`).

        Args:
            cosine: target cosines cos θ, any shape (`[batch]` for integer labels).

        Returns:
            ψ(θ), the shape of `cosine`; here cos θ itself (NormFace).
        """
        return cosine

    def margin_slope(self, cosine):
        """dψ/d cos θ, elementwise: the derivative of `apply_margin`.

        Takes `params` as a second argument where `apply_margin` does.

        Args:
            cosine: target cosines cos θ, any shape.

        Returns:
            dψ/d cos θ, the shape of `cosine`; here 1.
        """
        return ops.ones_like(cosine)

    def state_variables(self, num_classes):
        """The running statistics the head keeps for this loss, with their initial values.

        Args:
            num_classes: the head's number of classes (some initial values depend on it).

        Returns:
            A dict `{name: initial value}` (floats); empty here, for a stateless loss.
        """
        return {}

    def prepare(self, batch, state, training):
        """The margin parameters of one step: `(params, scale, new_state)`.

        Args:
            batch: the step's `Batch` (cosines, feature norms, targets).
            state: `{name: value}` of the running statistics (and `"seed"`).
            training: whether this is a training step (statistics are updated, margins drawn).

        Returns:
            `params`, `{name: [batch] tensor}` for `apply_margin(cosine, params)` (empty: the
            loss's fixed ψ); the scale s (a float or a scalar tensor); and the new state.
        """
        return {}, self.scale, {}

    def extra_loss(self, batch, params):
        """A term added to every sample's loss (MagFace's regulariser).

        Args:
            batch: the step's `Batch`.
            params: the margin parameters `prepare` returned.

        Returns:
            `[batch]` terms, or None (here) for none.
        """
        return None

    def initial_state(self, num_classes, seed=None):
        """The statistics before the first step, for `stateless_call`.

        Args:
            num_classes: the head's number of classes.
            seed: the random state's seed for a loss that `uses_seed`; None: 0.

        Returns:
            A dict `{name: float32 scalar tensor}` of `state_variables(num_classes)`, plus a
            `"seed"` `[2]` tensor for a loss that `uses_seed`.
        """
        state = {k: ops.convert_to_tensor(v, "float32") for k, v in self.state_variables(num_classes).items()}
        if self.uses_seed:
            state["seed"] = ops.convert_to_tensor(
                np.array([0 if seed is None else seed, 0]), _backend.random_seed_dtype())
        return state

    def call(self, y_true, y_pred):
        found = getattr(_calls, "head", None)
        head, training = found if found is not None else (None, False)
        owner = self._state_owner(head, y_pred)
        width = y_pred.shape[-1] - (1 if self.needs_feature_norms else 0)
        num_classes = owner.num_classes if owner is not None else width
        state = owner.values() if owner is not None else self.initial_state(num_classes)
        update = training and owner is not None
        loss, new_state = self.stateless_call(y_true, y_pred, state, training=update,
                                              num_classes=num_classes)
        if update and new_state:
            owner.assign(new_state)
        return loss

    def _state_owner(self, head, y_pred):
        """The `LossState` of the head that produced `y_pred` (None: no head, a plain head for a
        stateless loss), after checking that the head hands over what this loss needs."""
        if head is None:
            return None
        needs = (self.needs_feature_norms, tuple(self.state_variables(head.num_classes)), self.uses_seed)
        has = head.loss_signature()
        problem = None
        if needs != has:
            problem = (
                f"needs a head built for it (feature norms: {needs[0]}, running statistics: "
                f"{list(needs[1]) + (['seed'] if needs[2] else [])}); the head {head.name!r} hands over "
                f"feature norms: {has[0]}, statistics: {list(has[1]) + (['seed'] if has[2] else [])}"
            )
        elif self.sub_centers > 1 and head.sub_centers != self.sub_centers:
            problem = (f"needs a head with sub_centers={self.sub_centers}; {head.name!r} has "
                       f"{head.sub_centers}")
        if problem:
            raise ValueError(
                f"{type(self).__name__} {problem}. Build the head from the loss: "
                "keras_facemargin.heads.CosineHead(num_classes, loss=loss) or "
                "build_recognizer(backbone, num_classes, loss=loss)"
            )
        return head.loss_state

    def stateless_call(self, y_true, y_pred, state=None, training=False, num_classes=None):
        """One step with an explicit state: `(per-sample loss [batch], new state)`.

        Args:
            y_true: labels or dense target rows, as for `call`.
            y_pred: cos θ `[batch, num_classes]` (with the norm column for `needs_feature_norms`).
            state: `{name: value}` (see `state_variables`); default `initial_state`.
            training: whether to update the statistics and draw the random margins.
            num_classes: the number of classes of the head (default: y_pred's width).

        Returns:
            `(loss, new_state)`: the per-sample loss `[batch]` (NaN for samples that failed a
            check where it cannot raise: XLA, `jax.jit`) and `{name: value}` of the updated
            statistics (empty when `training` is False or the loss keeps none).
        """
        y_pred = ops.convert_to_tensor(y_pred)
        cosine, norms = self._split(y_pred)
        _checks.check_rank("y_pred", cosine, 2, "[batch, num_classes] (cos θ from a CosineHead)")
        width = cosine.shape[-1]
        if width is None or width < 2:
            raise ValueError(
                f"y_pred must have a known width num_classes >= 2; got shape {tuple(y_pred.shape)}"
            )
        num_classes = width if num_classes is None else num_classes
        if state is None:
            state = self.initial_state(num_classes)
        if cosine.shape[0] == 0:  # an empty batch: loss 0 (the row reductions below need rows)
            return ops.sum(cosine, axis=-1), {}
        valid = self._check_cosine(cosine)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) not in (1, 2):
            raise ValueError(
                "y_true must be integer labels [batch] or [batch, 1], or dense rows "
                f"[batch, num_classes={width}]; got shape {tuple(y_true.shape)}"
            )
        _checks.check_same_batch(y_true, cosine)
        if len(y_true.shape) == 2 and y_true.shape[-1] != 1:
            batch = Batch(cosine, norms, dense=self._dense_targets(y_true, cosine), valid=valid,
                          num_classes=num_classes)
            labels_valid = None
        else:
            labels, labels_valid = _checks.sparse_labels(y_true, width, self.check_inputs)
            safe = labels if labels_valid is None else ops.where(labels_valid, labels, 0)
            rows_valid = _and(valid, labels_valid)
            batch = Batch(cosine, norms, labels=safe, valid=rows_valid, num_classes=num_classes)
        state = {k: ops.cast(v, cosine.dtype) if k != "seed" else v for k, v in state.items()}
        params, scale, new_state = self.prepare(batch, state, training)
        if batch.dense is not None:
            loss = self._dense_loss(batch.dense, cosine, params, scale)
        else:
            loss = self._sparse_loss(batch.labels, cosine, params, scale)
        extra = self.extra_loss(batch, params)
        if extra is not None:
            loss = loss + extra
        for mask in (valid, labels_valid):
            if mask is not None:
                loss = ops.where(mask, loss, ops.full_like(loss, math.nan))
        return loss, new_state

    def _split(self, y_pred):
        """`(cosines, feature norms or None)` from `y_pred`."""
        if not self.needs_feature_norms:
            return y_pred, None
        if len(y_pred.shape) != 2 or y_pred.shape[-1] is None or y_pred.shape[-1] < 3:
            raise ValueError(
                f"{type(self).__name__} needs y_pred = [cosines | feature norm], shape "
                "[batch, num_classes + 1] (CosineHead(num_classes, loss=loss) hands it over); got shape "
                f"{tuple(y_pred.shape)}"
            )
        norms = y_pred[:, -1]
        values = _checks.concrete(norms) if self.check_inputs else None
        if values is not None and values.size and not values.min() >= 0:
            raise ValueError(
                f"the last column of y_pred must be the feature norms (>= 0) for {type(self).__name__}; "
                f"got values down to {values.min():g}. Build the head with CosineHead(num_classes, "
                "loss=loss), which appends them"
            )
        return y_pred[:, :-1], norms

    def _check_cosine(self, cosine):
        if not self.check_inputs:
            return None
        values = _checks.concrete(cosine)
        limit = 1.0 + _RANGE_TOLERANCE
        if values is not None:
            finite = np.isfinite(values)
            if values.size and not finite.all():
                kinds = " and ".join(k for k, bad in (("NaN", np.isnan(values).any()),
                                                      ("Inf", np.isinf(values).any())) if bad)
                raise ValueError(
                    f"y_pred must be finite cosines; got {kinds} in {int((~finite.all(axis=-1)).sum())} "
                    f"of {len(values)} rows (the features reaching the head were NaN/Inf already)"
                )
            if values.size and not (abs(values).max() <= limit):
                raise ValueError(
                    "y_pred must be cosines in [-1, 1] (the output of a CosineHead); got values in "
                    f"[{values.min():g}, {values.max():g}]. Raw logits? Put a "
                    "keras_facemargin.heads.CosineHead before this loss."
                )
            return None
        # In a graph only the upper bound is checked: one pass instead of two, and raw logits
        # (the mistake this guards against) exceed 1 somewhere in practically every row.
        largest = ops.max(cosine, axis=-1)
        # NaN passes the check (its loss is NaN): a diverged run stops as a NaN loss.
        _checks.graph_assert(
            ops.logical_not(ops.any(largest > limit)),
            "y_pred must be finite cosines in [-1, 1] (the output of a CosineHead; NaN/Inf means the "
            "features were NaN/Inf already); got max y_pred",
            ops.max(largest),
        )
        return largest <= limit

    def _smoothed_targets(self, num_classes):
        """The cross-entropy targets (true class, every other class)."""
        return 1.0 - self.label_smoothing, self.label_smoothing / (num_classes - 1)

    def modulate_negatives(self, cosine, target, params):
        """How the non-target cosines enter the logits (CurricularFace's hard negatives).

        Args:
            cosine: cos θ `[batch, classes]`.
            target: each row's target cosine `[batch]`.
            params: the margin parameters `prepare` returned.

        Returns:
            `(values, d values / d cos θ)`, both `[batch, classes]`, or None (here, and for every
            loss but CurricularFace) for unchanged. The target entry of `values` is ignored (ψ
            replaces it).
        """
        return None

    def _psi(self, cosine, params):
        return self.apply_margin(cosine, params) if params else self.apply_margin(cosine)

    def _psi_slope(self, cosine, params):
        return self.margin_slope(cosine, params) if params else self.margin_slope(cosine)

    def margin_parameter_slope(self, cosine, params, name):
        """dψ/d params[name], for the hand-written backward pass of a margin parameter that
        carries a gradient (MagFace's norm-dependent margin).

        Args:
            cosine: target cosines, any shape.
            params: the margin parameters `prepare` returned.
            name: one of `differentiable_parameters`.

        Returns:
            dψ/d params[name], the shape of `cosine`. The base declares no such parameter and
            raises `NotImplementedError`.
        """
        raise NotImplementedError(f"{type(self).__name__} declares no slope for the parameter {name!r}")

    # Whether `margin_slope` is the derivative of the `apply_margin` in use, so that the
    # hand-written backward pass may use it. A subclass that overrides `apply_margin` without
    # `margin_slope` trains with autodiff's gradient instead (set when the class is defined).
    slope_is_exact = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "margin_slope" in vars(cls):
            cls.slope_is_exact = True
        elif "apply_margin" in vars(cls):
            cls.slope_is_exact = False

    def _fast_backward(self):
        return self.slope_is_exact

    def _sparse_loss(self, labels, cosine, params, scale):
        num_classes = cosine.shape[-1]
        fused = self.label_smoothing == 0.0 and _backend.fused_cross_entropy_available()
        if fused and self._fast_backward():
            return self._margin_logits(cosine, labels, params, scale, cross_entropy=True)
        logits = self._margin_logits(cosine, labels, params, scale)
        if self.label_smoothing == 0.0:
            return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        on, off = self._smoothed_targets(num_classes)
        is_target = ops.one_hot(labels, num_classes, dtype=cosine.dtype)
        targets = is_target * (on - off) + off
        return ops.categorical_crossentropy(targets, logits, from_logits=True)

    def _margin_logits(self, cosine, labels, params, scale, cross_entropy=False):
        """s·cos θ with each row's target entry replaced by s·ψ(θ_target), `[batch, classes]`.

        Written with its own gradient: autodiff of a gather and a scatter makes TensorFlow
        materialise several `[batch, classes]` gradients and add them, while the gradient is
        just the upstream one scaled by s, with each target entry times ψ'. Both directions
        are one pass over `[batch, classes]` plus an update of the B target entries (in place,
        as nothing else reads the fresh copy). Margin parameters with gradients (MagFace's
        norm-dependent margin) get theirs from `margin_parameter_slope`.

        With `cross_entropy=True` (TensorFlow only) it returns the sparse softmax cross-entropy
        of those logits, `[batch]`, from TensorFlow's fused kernel, which also returns
        softmax − one-hot: the backward pass is then a single multiply by s·upstream.
        """
        rows = ops.arange(ops.shape(cosine)[0], dtype="int32")
        labels = ops.cast(labels, "int32")
        indices = ops.stack([rows, labels], axis=1)
        if not isinstance(scale, float):
            scale = ops.stop_gradient(ops.cast(scale, cosine.dtype))

        def targets_of(x):
            return _backend.take_per_row(x, labels)

        if not self._fast_backward():
            target = targets_of(cosine)
            modulated = self.modulate_negatives(cosine, target, params)
            values = cosine if modulated is None else modulated[0]
            return ops.scatter_update(scale * values, indices, scale * self._psi(target, params))

        names = tuple(self.differentiable_parameters)

        @ops.custom_gradient
        def margin_logits(cosine, *differentiable):
            params_in = {**params, **dict(zip(names, differentiable, strict=True))}
            target = targets_of(cosine)
            modulated = self.modulate_negatives(cosine, target, params_in)
            values = cosine if modulated is None else modulated[0]
            out = ops.scatter_update(scale * values, indices, scale * self._psi(target, params_in))
            if cross_entropy:
                out, softmax_minus_one_hot = _backend.sparse_cross_entropy_with_gradient(out, labels)

            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                if cross_entropy:  # d loss / d cos θ, before the margin's chain rule
                    scaled = softmax_minus_one_hot * (scale * upstream)[:, None]
                else:
                    scaled = scale * upstream
                target_grad = targets_of(scaled)
                slope = target_grad * self._psi_slope(target, params_in)
                d_params = [target_grad * self.margin_parameter_slope(target, params_in, n) for n in names]
                if modulated is not None:
                    scaled = scaled * modulated[1]
                d_cosine = ops.scatter_update(scaled, indices, slope)
                return (d_cosine, *d_params) if names else d_cosine

            return out, grad

        return margin_logits(cosine, *[params[n] for n in names])

    def _dense_targets(self, y_true, cosine):
        """Dense target rows `[batch, num_classes]`, checked and cast to the cosines' dtype."""
        num_classes = cosine.shape[-1]
        if tuple(y_true.shape)[1:] != (num_classes,):
            raise ValueError(
                f"dense y_true must have shape [batch, num_classes={num_classes}]; got shape "
                f"{tuple(y_true.shape)}"
            )
        if self.check_inputs:
            values = _checks.concrete(y_true)
            if values is not None and values.size:
                sums = values.sum(axis=-1)
                if values.min() < 0 or not abs(sums - 1).max() <= 1e-3:
                    raise ValueError(
                        "dense y_true rows must be non-negative and sum to 1 (a mixture of "
                        f"classes); got values in [{values.min():g}, {values.max():g}] and row "
                        f"sums in [{sums.min():g}, {sums.max():g}]"
                    )
        return ops.cast(y_true, cosine.dtype)

    def _dense_loss(self, y_true, cosine, params, scale):
        num_classes = cosine.shape[-1]
        if not isinstance(scale, float):
            scale = ops.stop_gradient(ops.cast(scale, cosine.dtype))
        columns = {k: v[:, None] for k, v in params.items()}
        logits = scale * cosine
        margin_logits = scale * self._psi(cosine, columns)
        # L_j = logsumexp over (every other class's logit, the margin logit of j) minus the
        # smoothed targets' dot product with those logits; one pass over [batch, classes].
        lse = ops.logaddexp(_leave_one_out_logsumexp(logits), margin_logits)
        on, off = self._smoothed_targets(num_classes)
        per_target = lse - on * margin_logits
        if off:
            others = ops.sum(logits, axis=-1, keepdims=True) - logits
            per_target = per_target - off * others
        return ops.sum(y_true * per_target, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            scale=self.scale,
            label_smoothing=self.label_smoothing,
            check_inputs=self.check_inputs,
        )
        return config


@registry.register("loss", "normface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class NormFaceLoss(MarginSoftmaxLoss):
    """Normalised softmax: cross-entropy on s·cos θ, no margin.

    Args:
        scale: s > 0. NormFace learns or tunes it; 16–64 is usual for cosines.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    model.compile(optimizer="sgd", loss=keras_facemargin.losses.NormFaceLoss(scale=30.0))
    ```

    Reference:
        Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", ACM MM 2017.
    """

    def __init__(self, scale=30.0, **kwargs):
        super().__init__(scale=scale, **kwargs)


def _chebyshev(c, n, first_kind):
    """T_n(c) (first kind) or U_n(c) (second kind), by the recurrence P_{k+1} = 2c·P_k − P_{k−1}
    from T_0 = U_0 = 1, T_1 = c, U_1 = 2c."""
    previous, current = ops.ones_like(c), (c if first_kind else 2.0 * c)
    if n == 0:
        return previous
    for _ in range(n - 1):
        previous, current = current, 2.0 * c * current - previous
    return current


@registry.register("loss", "sphereface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class SphereFaceLoss(MarginSoftmaxLoss):
    """Multiplicative angular margin: ψ(θ) = (−1)^k cos(mθ) − 2k for θ in [kπ/m, (k+1)π/m].

    cos(mθ) alone is not monotonic over [0, π]; SphereFace's piecewise extension is, and it joins
    continuously. cos(mθ) is computed as the Chebyshev polynomial T_m(cos θ), so its gradient is
    exact and finite everywhere, including θ = 0 and π; only the piece index k uses arccos.
    This is the normalised-feature form (features on the unit sphere, scaled by s).

    Args:
        margin: integer m >= 1 (m = 1 is NormFace). The paper uses 4.
        scale: s > 0.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.SphereFaceLoss(margin=4, scale=30.0)
    ```

    Reference:
        Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017.
    """

    def __init__(self, margin=4, scale=30.0, **kwargs):
        if not (_checks.is_number(margin) and np.isfinite(margin) and float(margin).is_integer()
                and margin >= 1):
            raise ValueError(f"margin must be a positive integer (SphereFace's m); got {margin!r}")
        super().__init__(scale=scale, **kwargs)
        self.margin = int(margin)

    def _piece(self, cosine):
        """k, the piece of SphereFace's extension that θ lies in, and its sign (−1)^k."""
        k = ops.clip(ops.floor(ops.stop_gradient(_angle(cosine)) * (self.margin / math.pi)), 0.0,
                     self.margin - 1.0)
        return k, 1.0 - 2.0 * ops.mod(k, 2.0)

    def apply_margin(self, cosine):
        cosine = ops.convert_to_tensor(cosine)  # a NumPy array would meet torch tensors in `-`
        k, sign = self._piece(cosine)
        return sign * _chebyshev(cosine, self.margin, first_kind=True) - 2.0 * k

    def margin_slope(self, cosine):
        # d/dc T_m(c) = m·U_{m−1}(c), U the Chebyshev polynomials of the second kind.
        cosine = ops.convert_to_tensor(cosine)
        _, sign = self._piece(cosine)
        return sign * self.margin * _chebyshev(cosine, self.margin - 1, first_kind=False)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@registry.register("loss", "cosface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class CosFaceLoss(MarginSoftmaxLoss):
    """Additive cosine margin: ψ(θ) = cos θ − m.

    Args:
        margin: m in [0, 1]. The paper uses 0.35.
        scale: s > 0. The paper uses 64.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    model.compile(optimizer="sgd", loss=keras_facemargin.losses.CosFaceLoss(margin=0.35))
    ```

    Reference:
        Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018.
    """

    def __init__(self, margin=0.35, scale=64.0, **kwargs):
        super().__init__(scale=scale, **kwargs)
        self.margin = _checks.check_range("margin", margin, 0.0, 1.0)

    def apply_margin(self, cosine):
        return cosine - self.margin

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


def _combined_margin(cosine, m1, m2, m3):
    """cos(m1·θ + m2) − m3 while m1·θ + m2 <= π, a linear-in-cos θ fallback beyond."""
    if m1 == 1.0 and m2 == 0.0:
        return cosine - m3
    theta_max = (math.pi - m2) / m1
    # Beyond θ_max, cos(m1·θ + m2) would rise again. InsightFace's fallback cos θ − m2·sin(m2)
    # (for m1 = 1) keeps ψ decreasing; where it would not (m1 != 1, or m2 > 2.3), the offset is
    # raised until ψ cannot jump upwards at θ_max.
    offset = max(m2 * math.sin(m2), 1.0 + math.cos(theta_max))
    phi = ops.cos(m1 * _angle(cosine) + m2)
    return ops.where(cosine > math.cos(theta_max), phi, cosine - offset) - m3


def _combined_margin_slope(cosine, m1, m2):
    """The derivative of `_combined_margin` with respect to cos θ."""
    if m1 == 1.0 and m2 == 0.0:
        return ops.ones_like(cosine)
    theta_max = (math.pi - m2) / m1
    slope = m1 * ops.sin(m1 * _angle(cosine) + m2) * _angle_slope(cosine)
    return ops.where(cosine > math.cos(theta_max), slope, ops.ones_like(cosine))


@registry.register("loss", "arcface")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class ArcFaceLoss(MarginSoftmaxLoss):
    """Additive angular margin: ψ(θ) = cos(θ + m).

    Where θ + m > π, cos(θ + m) would increase with θ again; there ψ falls back to cos θ − m·sin m,
    the choice of InsightFace's reference implementation, which keeps ψ decreasing in θ.
    With `easy_margin=True` the margin applies only where cos θ > 0 (ψ = cos θ elsewhere), which
    helps some small models start training; ψ then jumps up at θ = 90°, so it is not monotonic.

    Args:
        margin: m in radians, in [0, π/2]. The paper uses 0.5.
        scale: s > 0. The paper uses 64.
        easy_margin: apply the margin only where cos θ > 0.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    model.compile(optimizer="sgd", loss=keras_facemargin.losses.ArcFaceLoss(margin=0.5, scale=64.0))
    ```

    Reference:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    """

    def __init__(self, margin=0.5, scale=64.0, easy_margin=False, **kwargs):
        super().__init__(scale=scale, **kwargs)
        self.margin = _checks.check_range("margin", margin, 0.0, math.pi / 2, doc=" radians")
        self.easy_margin = _checks.check_bool("easy_margin", easy_margin)

    def apply_margin(self, cosine):
        if self.easy_margin:
            phi = ops.cos(_angle(cosine) + self.margin)
            return ops.where(cosine > 0, phi, cosine)
        return _combined_margin(cosine, 1.0, self.margin, 0.0)

    def margin_slope(self, cosine):
        if self.easy_margin:
            slope = ops.sin(_angle(cosine) + self.margin) * _angle_slope(cosine)
            return ops.where(cosine > 0, slope, ops.ones_like(cosine))
        return _combined_margin_slope(cosine, 1.0, self.margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "easy_margin": self.easy_margin}


def _combined_margin_excess(m1, m2, m3, points=200_001):
    """max over θ in [0, π] of ψ(θ) − cos θ for the combined margin, and the θ where it is largest.

    In float64 on a grid of `points` angles: ψ − cos θ is smooth between the fallback's start and
    the ends, so the grid's maximum is within (1 + m1²)(π / points)² / 8 (about 1e-10 here) of
    the true one.
    """
    theta = np.linspace(0.0, math.pi, points)
    cosine = np.cos(theta)
    theta_max = (math.pi - m2) / m1
    offset = max(m2 * math.sin(m2), 1.0 + math.cos(theta_max))
    psi = np.where(theta <= theta_max, np.cos(m1 * theta + m2), cosine - offset) - m3
    excess = psi - cosine
    worst = int(np.argmax(excess))
    return float(excess[worst]), float(theta[worst]), theta[excess > _MARGIN_TOLERANCE]


# ψ(θ) may exceed cos θ by this much (rounding) and still count as a margin.
_MARGIN_TOLERANCE = 1e-9


@registry.register("loss", "combined_margin")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class CombinedMarginLoss(MarginSoftmaxLoss):
    """All three margins at once: ψ(θ) = cos(m1·θ + m2) − m3.

    m1 = 1, m2 = 0.5, m3 = 0 is ArcFace; m1 = 1, m2 = 0, m3 = 0.35 is CosFace; m1 > 1 is a
    multiplicative margin in the spirit of SphereFace; m1 < 1 shrinks the angle and needs m2 or
    m3 to make up for it (the ArcFace paper's CM2 is (0.9, 0.4, 0.15)). Where m1·θ + m2 > π,
    cos(m1·θ + m2) would rise again; ψ falls back to cos θ − c − m3 there, with
    c = max(m2·sin m2, 1 + cos θ_max) at θ_max = (π − m2) / m1, so that ψ never jumps upwards
    (for m1 = 1 this is InsightFace's ArcFace fallback, c = m2·sin m2). With that fallback ψ
    decreases over all of θ in [0, π] for every m1 > 0 and m2 in [0, π). InsightFace's own
    combined margin (its `loss_type` 5) applies cos(m1·θ + m2) − m3 with no fallback at all.

    Every combination that makes a margin is accepted, the literature's included (CM1 (1, 0.3,
    0.2), CM2 (0.9, 0.4, 0.15), (1.2, 0.4, 0), (1.1, 0, 0.35), SphereFace-like (1.35, 0, 0)). It is
    refused when it cannot: m1 <= 0 (ψ would not decrease), m2 < 0 (ψ would rise near θ = 0),
    m2 >= π (no angle left for the arc), a non-finite value, or a ψ that exceeds cos θ somewhere
    in [0, π] (the "margin" would make some targets easier, as m1 < 1 without enough m2 or m3
    does for large θ).

    Args:
        m1: multiplicative angular margin, > 0.
        m2: additive angular margin in radians, in [0, π).
        m3: additive cosine margin (any finite value that keeps ψ(θ) <= cos θ).
        scale: s > 0.
        label_smoothing, check_inputs, reduction, name, dtype: see `MarginSoftmaxLoss`.

    Example:

    ```python
    loss = keras_facemargin.losses.CombinedMarginLoss(m1=0.9, m2=0.4, m3=0.15)  # CM2
    ```

    Reference:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019,
        section 2.3 (combined margin).
    """

    def __init__(self, m1=1.0, m2=0.3, m3=0.2, scale=64.0, **kwargs):
        super().__init__(scale=scale, **kwargs)
        self.m1 = _checks.check_positive("m1", m1)
        self.m2 = _checks.check_range(
            "m2", m2, 0.0, math.pi, high_inclusive=False,
            doc=" radians (a negative m2 makes ψ rise with θ near θ = 0)",
        )
        self.m3 = _checks.check_finite("m3", m3)
        excess, where, above = _combined_margin_excess(self.m1, self.m2, self.m3)
        if excess > _MARGIN_TOLERANCE:
            raise ValueError(
                f"(m1, m2, m3) = ({self.m1}, {self.m2}, {self.m3}) is not a margin: ψ(θ) = "
                f"cos(m1·θ + m2) − m3 exceeds cos θ for θ in [{math.degrees(above.min()):.1f}°, "
                f"{math.degrees(above.max()):.1f}°] (by {excess:.3g} at θ = {math.degrees(where):.1f}°); "
                "it must stay <= cos θ over [0°, 180°]: raise m2 or m3, or bring m1 closer to 1"
            )

    def apply_margin(self, cosine):
        return _combined_margin(cosine, self.m1, self.m2, self.m3)

    def margin_slope(self, cosine):
        return _combined_margin_slope(cosine, self.m1, self.m2)

    def get_config(self):
        return {**super().get_config(), "m1": self.m1, "m2": self.m2, "m3": self.m3}
