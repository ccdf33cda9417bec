"""Backend-specific fast paths, each with a portable `keras.ops` fallback."""

import keras
from keras import ops


def tensorflow_without_xla():
    """Whether this runs on TensorFlow outside an XLA compilation (eager, or a plain tf.function).

    TensorFlow runs every op of a plain graph as its own kernel, so there a single fused op
    (`tf.searchsorted`, `tf.math.reduce_euclidean_norm`) beats a composition of `keras.ops`; XLA
    fuses the composition itself, and lacks some of those ops.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    # TensorFlow's exported (not a private module's) way to ask, as its own losses do; it walks
    # the outer graphs, so a function nested in an XLA one counts as XLA.
    enclosing = getattr(tf.__internal__, "get_enclosing_xla_context", None)
    if enclosing is None:  # a TensorFlow without it: take the portable path
        return False
    return enclosing() is None


def keras_placeholder_call():
    """Whether Keras is calling a function only to learn its output's shape and dtype.

    On PyTorch that call (`compute_output_spec`, as `fit` builds its loss) is eager, on tensors of
    ones: values seen then are placeholders, not inputs to check.
    """
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope  # Keras exports no query

    return in_symbolic_scope()


def matmul(a, b, transpose_a=False, transpose_b=False):
    """`a @ b` with either operand transposed, without materialising the transpose on TensorFlow.

    On PyTorch two float64 operands multiply in float64: Keras's `ops.matmul` there computes
    64-bit floats in float32, which costs a float64 loss its precision (‖a‖² + ‖b‖² − 2ab).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    a = ops.transpose(a) if transpose_a else a
    b = ops.transpose(b) if transpose_b else b
    if backend == "torch":
        a, b = ops.convert_to_tensor(a), ops.convert_to_tensor(b)
        if keras.backend.standardize_dtype(a.dtype) == keras.backend.standardize_dtype(b.dtype) == "float64":
            import torch

            return torch.matmul(a, b)
    return ops.matmul(a, b)


def take_per_row(x, columns):
    """`x[a, columns[a]]` for every row a of a matrix, `[rows]`.

    On TensorFlow a batched gather; `take_along_axis` there first broadcasts the whole matrix.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(x, columns, batch_dims=1)
    return ops.take_along_axis(x, columns[:, None], axis=-1)[:, 0]


def column_norms(x):
    """The Euclidean norm of every column of a matrix: one pass on TensorFlow without XLA."""
    return _norms(x, axis=0)


def row_norms(x):
    """The Euclidean norm of every row of a matrix: one pass on TensorFlow without XLA."""
    return _norms(x, axis=1)


def _norms(x, axis):
    if tensorflow_without_xla():
        import tensorflow as tf

        return tf.math.reduce_euclidean_norm(x, axis=axis)
    return ops.sqrt(ops.sum(ops.square(x), axis=axis))


def read(variable):
    """The current value of a Keras variable as a tensor (on TensorFlow, not the variable itself,
    which `ops.custom_gradient` functions may not receive)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(variable.value)
    return ops.convert_to_tensor(variable)


class _SeedTensor(keras.random.SeedGenerator):
    """A seed tensor with a `SeedGenerator`'s interface, so that `keras.random` draws from an
    explicit state on every backend (its own functions take only generators or ints)."""

    def __init__(self, value):  # deliberately no SeedGenerator.__init__: no variable of its own
        self.value = value

    def next(self, ordered=True):
        return self.value


def normal_from_seed(shape, seed, mean=0.0, stddev=1.0, dtype="float32"):
    """`keras.random.normal` drawn from the seed tensor `seed` (`[2]`, a generator's state)."""
    return keras.random.normal(shape, mean=mean, stddev=stddev, dtype=dtype, seed=_SeedTensor(seed))


def random_seed_dtype():
    """The dtype of a `keras.random.SeedGenerator`'s state on this backend (Keras keeps the
    function itself private)."""
    return {"tensorflow": "int64", "torch": "int32"}.get(keras.backend.backend(), "uint32")


def fused_cross_entropy_available():
    """Whether `sparse_cross_entropy_with_gradient` exists on this backend (TensorFlow)."""
    return keras.backend.backend() == "tensorflow"


def sparse_cross_entropy_with_gradient(logits, labels):
    """`(loss [batch], softmax − one-hot [batch, classes])` from TensorFlow's fused kernel.

    The second output is the whole backward pass of sparse softmax cross-entropy with respect to
    the logits, so a hand-written gradient needs only one multiply. TensorFlow only (see
    `fused_cross_entropy_available`).
    """
    import tensorflow as tf

    return tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=logits, labels=labels)


def searchsorted_rows(sorted_rows, values, side):
    """TensorFlow's native batched search where it is the fast one (a plain graph or eager;
    XLA compiles it into something slower than the portable rounds), else None: the caller runs
    its portable `keras.ops` search."""
    if not tensorflow_without_xla():
        return None
    import tensorflow as tf

    return tf.searchsorted(sorted_rows, values, side=side, out_type=tf.int32)


def gather_rows(variable, rows):
    """Rows of a `[rows, dim]` variable. On TensorFlow a sparse read (ResourceGather): reading the
    whole variable first, as `ops.take` does, makes TensorFlow copy a scatter-updated variable on
    every dense read (2 GB per step at 1M × 512)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.gather(variable.value, rows)
    return ops.take(variable, rows, axis=0)


def is_sparse_gradient(gradient):
    """Whether a gradient holds only some rows (TensorFlow's `tf.IndexedSlices`)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(gradient, tf.IndexedSlices)


def sparse_momentum_step(gradient, momentum_variable, momentum, learning_rate, nesterov):
    """The lazy momentum update of the rows a sparse gradient touches (repeated rows summed).

    Returns `(momentum rows update, weight rows step)` as `tf.IndexedSlices`: m[r] ← μ·m[r] −
    lr·g[r], and the step m[r] (Nesterov: μ·m[r] − lr·g[r]) for the rows r of `gradient`.
    """
    import tensorflow as tf

    dtype = momentum_variable.dtype
    rows, positions = tf.unique(gradient.indices)
    grad = tf.math.unsorted_segment_sum(ops.cast(gradient.values, dtype), positions, ops.shape(rows)[0])
    learning_rate = ops.cast(learning_rate, dtype)
    momentum = ops.convert_to_tensor(momentum, dtype=dtype)
    new_m = tf.gather(momentum_variable.value, rows) * momentum - grad * learning_rate
    step = new_m * momentum - grad * learning_rate if nesterov else new_m
    return (tf.IndexedSlices(new_m, rows, momentum_variable.shape),
            tf.IndexedSlices(step, rows, momentum_variable.shape))
