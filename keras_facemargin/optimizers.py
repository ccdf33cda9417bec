"""Optimizers and schedules: `LazySGD` (sparse momentum for `heads.PartialFC`) and
`WarmupSchedule` (linear warm-up, then cosine, step or constant)."""

import math

import keras
from keras import ops

from keras_facemargin import _backend


@keras.saving.register_keras_serializable(package="keras_facemargin")
class LazySGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum touches only the rows a sparse gradient touches.

    With a dense gradient it is exactly `keras.optimizers.SGD`. With a sparse one (a
    `tf.IndexedSlices`, as TensorFlow gives for `heads.PartialFC`'s centres: the rows of the sampled
    classes), plain SGD with momentum decays and adds the momentum of *every* row each step, which
    at 1,000,000 classes × 512 is gigabytes of memory traffic per step. `LazySGD` updates only the
    touched rows and their momentum, m[r] ← μ·m[r] − lr·g[r], w[r] ← w[r] + m[r] (Nesterov:
    w[r] ← w[r] + μ·m[r] − lr·g[r]), and leaves the others as they are, as Partial FC's reference
    implementation does (a centre's momentum then decays only in the steps that sample its class).
    Repeated rows in one gradient are summed first. Weight decay, if set, stays dense, as in
    every Keras optimizer.

    Args:
        learning_rate: a float, a `keras.optimizers.schedules.LearningRateSchedule` (such as
            `WarmupSchedule`) or a callable of no arguments; default 0.01.
        momentum: μ >= 0; 0 (the default) is plain SGD, which is sparse already.
        nesterov: whether to use Nesterov momentum.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
            ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps, name:
            as in `keras.optimizers.SGD`.

    Example:

    ```python
    model.compile(optimizer=keras_facemargin.optimizers.LazySGD(0.1, momentum=0.9))
    ```

    Reference:
        An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face
        Recognition CNNs by Partial FC", CVPR 2022.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or not _backend.is_sparse_gradient(gradient):
            return super().update_step(gradient, variable, learning_rate)
        m = self.momentums[self._get_variable_index(variable)]
        new_m, step = _backend.sparse_momentum_step(gradient, m, self.momentum, learning_rate,
                                                   self.nesterov)
        self.assign(m, new_m)
        self.assign_add(variable, step)


@keras.saving.register_keras_serializable(package="keras_facemargin")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up to `peak`, then cosine decay to 0, steps of ÷10, or a constant.

    The learning rate of step t (0-based) is `peak · (t + 1) / warmup_steps` during the warm-up;
    after it, with p = (t − warmup_steps) / (total_steps − warmup_steps) clipped to [0, 1]:
    `"cosine"`: peak · (1 + cos πp) / 2; `"step"`: peak divided by 10 at p = 0.5, 0.75 and 0.9
    (the shape of InsightFace's step schedules); `"constant"`: peak.

    Args:
        peak: the learning rate after the warm-up, > 0.
        total_steps: optimizer steps of the whole run, >= 1.
        warmup_steps: steps of the linear warm-up, in [0, total_steps).
        kind: `"cosine"`, `"step"` or `"constant"`.

    Example:

    ```python
    lr = WarmupSchedule(1e-3, total_steps=15 * 31, warmup_steps=31)
    model.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=0.05), loss=...)
    ```
    """

    KINDS = ("cosine", "step", "constant")

    def __init__(self, peak, total_steps, warmup_steps=0, kind="cosine"):
        from keras_facemargin import _checks

        self.peak = _checks.check_number("peak", peak, low=0, low_open=True)
        self.total_steps = _checks.check_int("total_steps", total_steps, minimum=1)
        self.warmup_steps = _checks.check_int("warmup_steps", warmup_steps, 0, self.total_steps - 1)
        self.kind = _checks.check_choice("kind", kind, self.KINDS)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(self.warmup_steps)
        rest = float(self.total_steps - self.warmup_steps)
        progress = ops.clip((step - warmup) / rest, 0.0, 1.0)
        if self.kind == "cosine":
            after = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        elif self.kind == "step":
            drops = sum(ops.cast(progress >= edge, "float32") for edge in (0.5, 0.75, 0.9))
            after = self.peak * ops.power(0.1, drops)
        else:
            after = self.peak * ops.ones_like(progress)
        if not self.warmup_steps:
            return after
        ramp = self.peak * (step + 1.0) / warmup
        return ops.where(step < warmup, ramp, after)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind}
