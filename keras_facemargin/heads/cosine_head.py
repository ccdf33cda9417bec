import math

import keras
from keras import ops

from keras_facemargin import _backend, _checks
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
    """
    floor = math.sqrt(epsilon)

    @ops.custom_gradient
    def cosine(features, kernel):
        norms = _backend.column_norms(kernel)
        inverse = 1.0 / ops.maximum(norms, floor)
        cos = ops.matmul(features, kernel) * inverse

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            scaled = upstream * inverse
            d_features = _backend.matmul(scaled, kernel, transpose_b=True)
            radial = ops.sum(upstream * cos, axis=0) * ops.square(inverse)
            radial = ops.where(norms > floor, radial, ops.zeros_like(radial))
            d_kernel = _backend.matmul(features, scaled, transpose_a=True) - kernel * radial
            return d_features, d_kernel

        return cos, grad

    return cosine(features, kernel)


def cosine_to_rows(features, centres, epsilon=1e-12):
    """`cosine_to_columns` for centres stored as rows, `[classes, dim]` (as in `PartialFC`).

    Computed as `[classes, batch]` and transposed: on TensorFlow's CPU kernels that product is
    faster than `features @ centresᵀ` at 100k classes. Same hand-written gradient, by rows.
    """
    floor = math.sqrt(epsilon)

    @ops.custom_gradient
    def cosine(features, centres):
        norms = _backend.row_norms(centres)
        inverse = (1.0 / ops.maximum(norms, floor))[:, None]
        transposed = _backend.matmul(centres, features, transpose_b=True) * inverse

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.transpose(upstream)
            scaled = upstream * inverse
            d_features = _backend.matmul(scaled, centres, transpose_a=True)
            radial = ops.sum(upstream * transposed, axis=1, keepdims=True) * ops.square(inverse)
            radial = ops.where(norms[:, None] > floor, radial, ops.zeros_like(radial))
            d_centres = ops.matmul(scaled, features) - centres * radial
            return d_features, d_centres

        return ops.transpose(transposed), grad

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


@keras.saving.register_keras_serializable(package="keras_facemargin")
class CosineHead(keras.layers.Layer):
    """Cosine similarity between features and learned class centres.

    The head of every margin-softmax model: both the features and the class weights are
    L2-normalised, so the output is cos θ between each feature and each class centre. The margin
    losses (`ArcFaceLoss`, `CosFaceLoss`, ...) take this output as `y_pred`, add their margin to the
    target class and scale it; keeping the scale in the loss means the head's output stays
    interpretable (a cosine) and the same trained model works with any margin.

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
        kernel_initializer: initializer of the `[dim, num_classes]` class-centre matrix.
        kernel_regularizer: optional regularizer of that matrix.
        epsilon: floor of the squared norm: features shorter than sqrt(epsilon) give zero cosines
            and no gradient.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: features `[batch, dim]`.

    Returns:
        cos θ, `[batch, num_classes]`, in [-1, 1] up to float rounding.

    Example:

    ```python
    model = keras.Sequential([backbone, keras_facemargin.heads.CosineHead(num_classes)])
    model.compile(optimizer="sgd", loss=keras_facemargin.losses.ArcFaceLoss())
    ```

    Reference:
        Wang et al., "NormFace: L2 Hypersphere Embedding for Face Verification", 2017.
    """

    def __init__(
        self,
        num_classes,
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
        self.kernel_initializer = _checks.keras_object(
            "kernel_initializer", kernel_initializer, keras.initializers.get, "a Keras initializer"
        )
        self.kernel_regularizer = _checks.keras_object(
            "kernel_regularizer", kernel_regularizer, keras.regularizers.get, "a Keras regularizer or None"
        )
        self.epsilon = epsilon

    def build(self, input_shape):
        dim = check_features_shape("CosineHead", "features", input_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(dim, self.num_classes),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )

    def call(self, inputs):
        features = l2_normalize(inputs, axis=-1, epsilon=self.epsilon, dtype=self.compute_dtype)
        return cosine_to_columns(features, _backend.read(self.kernel), self.epsilon)

    @property
    def centers(self):
        """The L2-normalised class centres, `[num_classes, dim]`."""
        return ops.transpose(l2_normalize(self.kernel, axis=0, epsilon=self.epsilon))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            epsilon=self.epsilon,
        )
        return config
