"""The replica context of a `tf.distribute` step, without importing TensorFlow elsewhere."""

import keras


def replica_context():
    """`(replica context, number of replicas)` inside a distributed TensorFlow step, else
    `(None, 1)`. TensorFlow is imported only on its backend."""
    if keras.backend.backend() != "tensorflow":
        return None, 1
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None, 1
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None, 1
    return context, context.num_replicas_in_sync
