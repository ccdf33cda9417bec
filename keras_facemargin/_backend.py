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
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # a TensorFlow without this (internal) helper: take the portable path
        return False
    return not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def matmul(a, b, transpose_a=False, transpose_b=False):
    """`a @ b` with either operand transposed, without materialising the transpose on TensorFlow."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    a = ops.transpose(a) if transpose_a else a
    b = ops.transpose(b) if transpose_b else b
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
