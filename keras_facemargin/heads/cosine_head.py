import math
import random

import keras
from keras import ops

from keras_facemargin import _backend, _checks, _loss_state, _maths, registry
from keras_facemargin._loss_state import LossState
from keras_facemargin._maths import HALF, l2_normalize

__all__ = ["CosineHead", "cosine_to_columns", "cosine_to_rows", "l2_normalize"]


def cosine_to_columns(features, kernel, epsilon=1e-12):
    """cos θ between unit `features` `[batch, dim]` and every column of `kernel` `[dim, classes]`.

    `features @ kernel` scaled by the inverse column norms (floored at sqrt(epsilon)): cheaper
    than normalising the `[dim, classes]` kernel whenever batch < dim, and equal in value. The
    gradient is written out: autodiff of the same expression makes TensorFlow materialise the
    norm's gradient as several unfused passes over the kernel. With g the upstream gradient and
    r_j = 1 / ||w_j||:

        d features = (g · r) @ kernelᵀ
        d w_j      = featuresᵀ (g_:j r_j) − w_j · r_j² Σ_b g_bj cos_bj   (0 for floored columns)

    the second term removing the radial part, as the cosine does not depend on a column's norm.

    Args:
        features: unit-length features `[batch, dim]` (normalised by the caller: only the
            columns are normalised here).
        kernel: class centres as columns, `[dim, classes]`, of any norm.
        epsilon: floor of the squared column norms, so a zero column gives cosines of 0, not NaN.

    Returns:
        cos θ `[batch, classes]`, in the dtype of `features @ kernel`.
    """
    return _cosine(features, kernel, rows=False, epsilon=epsilon)


def cosine_to_rows(features, centres, epsilon=1e-12):
    """`cosine_to_columns` for centres stored as rows, `[classes, dim]` (as in `PartialFC`).

    Computed as `[classes, batch]` and transposed: on TensorFlow's CPU kernels that product is
    faster than `features @ centresᵀ` at 100k classes. The same hand-written gradient (one
    implementation serves both layouts).
    """
    return _cosine(features, centres, rows=True, epsilon=epsilon)


def _cosine(features, centres, rows, epsilon):
    """Both layouts' cosine and its hand-written gradient, written once.

    P is the product in the layout's own orientation: `features @ kernel` `[batch, classes]` for
    columns, `centres @ featuresᵀ` `[classes, batch]` for rows (transposed at the end). The
    classes run along `class_axis` of P and of the centres alike, so the scaling by the inverse
    norms and the radial term broadcast the same way in both; only the three products differ.
    """
    floor = math.sqrt(epsilon)
    class_axis = 0 if rows else 1
    batch_axis = 1 - class_axis

    @ops.custom_gradient
    def cosine(features, centres):
        norms = _backend.row_norms(centres) if rows else _backend.column_norms(centres)
        inverse = ops.expand_dims(1.0 / ops.maximum(norms, floor), batch_axis)
        if rows:
            product = _backend.matmul(centres, features, transpose_b=True) * inverse
        else:
            product = ops.matmul(features, centres) * inverse

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if rows:
                upstream = ops.transpose(upstream)
            scaled = upstream * inverse
            radial = ops.sum(upstream * product, axis=batch_axis, keepdims=True) * ops.square(inverse)
            radial = ops.where(ops.expand_dims(norms, batch_axis) > floor, radial, ops.zeros_like(radial))
            if rows:
                d_features = _backend.matmul(scaled, centres, transpose_a=True)
                d_centres = ops.matmul(scaled, features)
            else:
                d_features = _backend.matmul(scaled, centres, transpose_b=True)
                d_centres = _backend.matmul(features, scaled, transpose_a=True)
            return d_features, d_centres - centres * radial

        return (ops.transpose(product) if rows else product), grad

    return cosine(features, centres)


def float32_under_half_policy(dtype):
    """The layer dtype for a head: "float32" where `dtype` (or the global policy) is half precision."""
    policy = keras.config.dtype_policy() if dtype is None else keras.dtype_policies.get(dtype)
    if policy.compute_dtype in HALF or policy.variable_dtype in HALF:
        return "float32"
    return dtype


def check_features_shape(owner, what, shape):
    """The feature dimension of a `[batch, dim]` input shape, or a ValueError naming the layer."""
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            f"{owner} expects {what} of shape [batch, dim] with a known dim; got input shape {tuple(shape)}"
        )
    return shape[-1]


def check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")


def margin_loss(loss, default=None):
    """A margin-softmax loss from an instance, a registered name or a config dict (or `default`)."""
    from keras_facemargin import losses  # heads build from a loss's declared needs

    if loss is None:
        return default
    given = loss
    if isinstance(loss, (str, dict)):
        try:
            loss = losses.get(loss)
        except ValueError:
            loss = None
    if not isinstance(loss, losses.MarginSoftmaxLoss):
        raise ValueError(
            "loss must be a keras_facemargin.losses.MarginSoftmaxLoss (ArcFaceLoss, AdaFaceLoss, ...), "
            f"its registered name ({', '.join(losses.names(kind='margin_softmax'))}), or None; got {given!r}"
        )
    return loss


def sub_centers_for(sub_centers, loss):
    """The number of sub-centres per class: `sub_centers`, or what `loss` needs (default 1)."""
    needed = loss.sub_centers if loss is not None else 1
    if sub_centers is None:
        return needed
    sub_centers = _checks.check_integer("sub_centers", sub_centers, 1)
    if needed > 1 and sub_centers != needed:
        raise ValueError(
            f"sub_centers must be {needed} for {type(loss).__name__}(sub_centers={needed}); got {sub_centers}"
        )
    return sub_centers


def loss_state_for(loss, num_classes):
    """The `LossState` a head keeps for `loss` (its running statistics and random state)."""
    seed = None
    if loss.uses_seed:
        seed = loss.seed if loss.seed is not None else random.randint(1, 2**31 - 1)
    state = LossState(loss.state_variables(num_classes), num_classes, seed=seed, name="loss_state",
                      dtype="float32")
    state.build()
    return state


def signature(loss, num_classes):
    """What a head built for `loss` hands over: (feature norms, statistics, random state)."""
    if loss is None:
        return (False, (), False)
    return (loss.needs_feature_norms, tuple(loss.state_variables(num_classes)), loss.uses_seed)


def max_over_sub_centers(cosines, sub_centers):
    """`[batch, classes × K]` cosines (class-major: column c·K + k) → the best of each class's K."""
    if sub_centers == 1:
        return cosines
    classes = cosines.shape[-1] // sub_centers
    return ops.max(ops.reshape(cosines, (-1, classes, sub_centers)), axis=-1)


@registry.register("head", "cosine")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class CosineHead(keras.layers.Layer):
    """Cosine similarity between features and learned class centres.

    The head of every margin-softmax model: both the features and the class weights are
    L2-normalised, so the output is cos θ between each feature and each class centre. The margin
    losses (`ArcFaceLoss`, `CosFaceLoss`, ...) take this output as `y_pred`, add their margin to the
    target class and scale it; keeping the scale in the loss means the head's output stays
    interpretable (a cosine) and the same trained model works with any margin.

    Sub-centres (`sub_centers=K`, SubCenter-ArcFace): each class has K centres and its cosine is
    the largest of the K, so a class's noisy images can gather around a non-dominant sub-centre
    instead of pulling the dominant one; it works with every margin loss. The centres are stored
    class-major (column c·K + k of the kernel). `sub_center_report` and
    `drop_non_dominant_sub_centers` (in `keras_facemargin.heads`) find the outliers and keep one
    centre per class after training.

    Built for a loss (`loss=...`), the head hands that loss what it declares it needs: the
    feature norm of each sample as a last output column (`AdaFaceLoss`, `MagFaceLoss`:
    `[batch, num_classes + 1]`), and it keeps the loss's running statistics (AdaFace's norm
    mean/std, CurricularFace's t, AdaCos's scale, ElasticFace's random state) as non-trainable
    weights of a `LossState` sublayer, so that they are saved, restored and mirrored with the
    model. The statistics are updated only in a training call (`training=True`, as `fit` makes it).
    The compiled loss must be of the same class (its hyperparameters are the ones used).

    The head computes in float32 even under a `mixed_float16`/`mixed_bfloat16` policy: cosines close
    to ±1 and the scale of 64 that the losses apply need more than half precision. It casts
    half-precision features itself (Keras's input autocast is off), with a backward pass that
    saturates instead of overflowing; features shorter than sqrt(epsilon) count as zero and pass
    no gradient back (their exact gradient, g / sqrt(epsilon) ≈ 1e6·g, became Inf in float16, so
    the loss-scale optimizer skipped every step of a batch with a zero feature row). For every
    finite input, huge rows included, the output and the gradients w.r.t. the features and the
    centres are finite.

    Args:
        num_classes: number of classes (identities), at least 2.
        sub_centers: K >= 1 centres per class (default: what `loss` needs, else 1).
        loss: the margin loss this head is built for (an instance, a registered name or a config),
            or None for any loss that needs nothing but the cosines.
        kernel_initializer: initializer of the `[dim, num_classes × K]` class-centre matrix.
        kernel_regularizer: optional regularizer of that matrix.
        epsilon: floor of the squared norm: features shorter than sqrt(epsilon) give zero cosines
            and no gradient.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: features `[batch, dim]`.
        training: whether this is a training step (the loss's statistics are updated).

    Returns:
        cos θ, `[batch, num_classes]`, in [-1, 1] up to float rounding; with the feature norm as
        one more column, `[batch, num_classes + 1]`, for a loss that needs it.

    Example:

    ```python
    model = keras.Sequential([backbone, keras_facemargin.heads.CosineHead(num_classes)])
    model.compile(optimizer="sgd", loss=keras_facemargin.losses.ArcFaceLoss())

    loss = keras_facemargin.losses.AdaFaceLoss()
    model = keras.Sequential([backbone, keras_facemargin.heads.CosineHead(num_classes, loss=loss)])
    model.compile(optimizer="sgd", loss=loss)
    ```

    Reference:
        Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", 2017;
        Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
        Faces", ECCV 2020.
    """

    def __init__(
        self,
        num_classes,
        sub_centers=None,
        loss=None,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        epsilon=1e-12,
        **kwargs,
    ):
        kwargs.pop("autocast", None)
        super().__init__(
            dtype=float32_under_half_policy(kwargs.pop("dtype", None)), autocast=False, **kwargs
        )
        check_num_classes(num_classes)
        epsilon = _checks.check_positive("epsilon", epsilon)
        self.num_classes = num_classes
        self.loss = margin_loss(loss)
        self.sub_centers = sub_centers_for(sub_centers, self.loss)
        self.feature_norms = bool(self.loss is not None and self.loss.needs_feature_norms)
        self.kernel_initializer = _checks.keras_object(
            "kernel_initializer", kernel_initializer, keras.initializers.get, "a Keras initializer"
        )
        self.kernel_regularizer = _checks.keras_object(
            "kernel_regularizer", kernel_regularizer, keras.regularizers.get, "a Keras regularizer or None"
        )
        self.epsilon = epsilon
        self.loss_state = None

    def build(self, input_shape):
        dim = check_features_shape("CosineHead", "features", input_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(dim, self.num_classes * self.sub_centers),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.loss is not None:
            self.loss_state = loss_state_for(self.loss, self.num_classes)

    def call(self, inputs, training=None):
        features = l2_normalize(inputs, axis=-1, epsilon=self.epsilon, dtype=self.compute_dtype)
        cosines = cosine_to_columns(features, _backend.read(self.kernel), self.epsilon)
        out = max_over_sub_centers(cosines, self.sub_centers)
        if self.feature_norms:
            norms = _maths.norm(inputs, axis=-1, dtype=self.compute_dtype, keepdims=True)
            out = ops.concatenate([out, norms], axis=-1)
        _loss_state.record(self, out, training)
        return out

    def loss_signature(self):
        """What this head hands its loss, which the loss checks against what it needs.

        Returns:
            `(feature_norms, statistic_names, seeded)`: whether a column of feature norms
            follows the cosines, the names of the running statistics it keeps for the loss (a
            tuple), and whether it keeps a random state; `(False, (), False)` without a loss.
        """
        return signature(self.loss, self.num_classes)

    @property
    def centers(self):
        """The L2-normalised class centres, `[num_classes, dim]` (`[num_classes, K, dim]` with K
        sub-centres)."""
        centres = ops.transpose(l2_normalize(self.kernel, axis=0, epsilon=self.epsilon))
        if self.sub_centers == 1:
            return centres
        return ops.reshape(centres, (self.num_classes, self.sub_centers, -1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes + (1 if self.feature_norms else 0))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            sub_centers=self.sub_centers,
            loss=None if self.loss is None else keras.saving.serialize_keras_object(self.loss),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            epsilon=self.epsilon,
        )
        return config
