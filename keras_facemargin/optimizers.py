"""`LazySGD`: SGD with momentum that keeps sparse updates sparse, for `heads.PartialFC`."""

import keras
from keras import ops


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
        Those of `keras.optimizers.SGD`.

    Example:

    ```python
    model.compile(optimizer=keras_facemargin.optimizers.LazySGD(0.1, momentum=0.9))
    ```

    Reference:
        An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face
        Recognition CNNs by Partial FC", CVPR 2022.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or not _is_indexed_slices(gradient):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        rows, positions = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(
            ops.cast(gradient.values, variable.dtype), positions, ops.shape(rows)[0]
        )
        learning_rate = ops.cast(learning_rate, variable.dtype)
        momentum = ops.convert_to_tensor(self.momentum, dtype=variable.dtype)
        m = self.momentums[self._get_variable_index(variable)]
        new_m = tf.gather(_tensor(m), rows) * momentum - grad * learning_rate
        self.assign(m, tf.IndexedSlices(new_m, rows, m.shape))
        step = new_m * momentum - grad * learning_rate if self.nesterov else new_m
        self.assign_add(variable, tf.IndexedSlices(step, rows, variable.shape))


def _is_indexed_slices(value):
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(value, tf.IndexedSlices)


def _tensor(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable
