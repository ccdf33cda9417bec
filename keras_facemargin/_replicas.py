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


def global_rows(x):
    """`(rows of every replica, offset of this replica's first row)` inside a distributed
    TensorFlow step (the replicas' `x` concatenated in replica order: the global batch), else
    `(x, 0)`. Statistics of the global batch computed from it agree on every replica."""
    context, _ = replica_context()
    if context is None:
        return x, 0
    import tensorflow as tf

    return context.all_gather(x, axis=0), context.replica_id_in_sync_group * tf.shape(x)[0]


def replica_share(input_context, name, total):
    """`(replicas, local replicas, first local replica)` of the pipeline of `input_context`
    (None: one replica); `total` (argument `name`) must split evenly across the replicas."""
    if input_context is None:
        return 1, 1, 0
    replicas = input_context.num_replicas_in_sync
    pipelines = input_context.num_input_pipelines
    if total % replicas or replicas % pipelines:
        raise ValueError(
            f"{name} must be a multiple of the number of replicas (num_replicas_in_sync={replicas}, "
            f"input pipelines={pipelines}); got {name}={total}"
        )
    local = replicas // pipelines
    return replicas, local, input_context.input_pipeline_id * local
