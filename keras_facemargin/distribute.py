"""Data-parallel and multi-worker training with TensorFlow's own engine, `tf.distribute`.

The same training code runs on one device, on several devices of one machine
(`MirroredStrategy`) and on several machines (`MultiWorkerMirroredStrategy`, one process per
machine, each told the cluster by the `TF_CONFIG` environment variable):

```python
strategy = keras_facemargin.distribute.get_strategy("multi_worker")
with strategy.scope():
    model = ...                       # build and compile inside the scope
    model.compile(optimizer="sgd", loss=keras_facemargin.losses.ArcFaceLoss())
keras_facemargin.distribute.prepare_model(model, strategy)
data = strategy.distribute_datasets_from_function(
    lambda context: classification_dataset(index, global_batch, input_context=context))
with strategy.scope():
    model.fit(data, epochs=10)
```

`prepare_model` works around Keras 3's `fit` under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585): Keras reduces a nest of per-replica batches, and scalar logs along axis
0, with strategy calls that the multi-worker strategy refuses. It makes Keras defer building to
the first traced step and hands the logs over with a replica axis, so that they come back as
their mean over all replicas. It changes nothing for other strategies.
"""

import contextlib
import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def get_strategy(name="default", devices=None):
    """A `tf.distribute.Strategy` by name.

    Args:
        name: `"default"` (no distribution: the current default strategy), `"mirrored"` (every
            local GPU, or `devices`) or `"multi_worker"` (the cluster of `TF_CONFIG`).
        devices: for `"mirrored"`, the device names to replicate on (default: all GPUs, else
            the CPU).

    Returns:
        The strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}; got {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if "TF_CONFIG" not in os.environ:
        raise ValueError(
            "strategy 'multi_worker' needs the TF_CONFIG environment variable (the cluster's "
            'workers and this task, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}); got no TF_CONFIG'
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except ValueError as error:
        raise ValueError(f"TF_CONFIG must be JSON; got {os.environ['TF_CONFIG']!r} ({error})") from None
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_multi_worker(strategy):
    """Whether `strategy` spans several worker processes.

    Args:
        strategy: a `tf.distribute.Strategy`.

    Returns:
        True for a `MultiWorkerMirroredStrategy` whose cluster has more than one task (chief and
        workers together); False otherwise (a one-worker cluster included).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker")) > 1


def is_chief(strategy=None):
    """Whether this process writes the run's files.

    Args:
        strategy: a `tf.distribute.Strategy`; None: the current one.

    Returns:
        True for the chief of a multi-worker cluster (worker 0 where the cluster has no chief
        task) and for the only process of a single-machine run; False for the other workers.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


@contextlib.contextmanager
def write_path(path, strategy=None):
    """Where this worker writes `path`: `path` itself on the chief, a temporary path elsewhere.

    Saving reads distributed variables, which can take collective operations that every worker
    must join; so every worker saves, and all but the chief save into a temporary folder that is
    removed when the `with` block ends.

    Args:
        path: the file or folder the run writes.
        strategy: a `tf.distribute.Strategy`; None: the current one.

    Yields:
        `path` on the chief (`is_chief`); on every other worker a path with the same base name
        in a temporary folder, deleted with what was written there when the block ends.

    Example:

    ```python
    with write_path("runs/a/model.keras", strategy) as path:
        model.save(path)
    ```
    """
    if is_chief(strategy):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="facemargin-worker-")
    try:
        yield os.path.join(folder, os.path.basename(os.path.normpath(path)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def prepare_model(model, strategy=None):
    """Makes `model.fit` work under `MultiWorkerMirroredStrategy` (see the module docstring).

    Call it once after building and compiling the model inside `strategy.scope()`, then call
    `fit` inside `strategy.scope()` too. A no-op for every other strategy.

    Args:
        model: a compiled `keras.Model`, built inside `strategy.scope()`.
        strategy: the strategy (default: the current one).

    Returns:
        The model.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not is_multi_worker(strategy) or getattr(model, "_facemargin_multi_worker", False):
        return model
    # Keras then builds at the first traced step instead of reducing a nested PerReplica batch.
    model._distribute_strategy = None
    train_step, test_step = model.train_step, model.test_step

    def with_replica_axis(logs):
        return {key: keras.ops.expand_dims(value, 0) for key, value in logs.items()}

    model.train_step = lambda data: with_replica_axis(train_step(data))
    model.test_step = lambda data: with_replica_axis(test_step(data))
    model._facemargin_multi_worker = True
    return model
