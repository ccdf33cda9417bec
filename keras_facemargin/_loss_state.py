"""How a margin loss finds what its head keeps for it: running statistics and the head's shape.

Keras losses own no weights (a model tracks, saves and, on JAX, threads through `jit` only the
variables of its layers), yet AdaFace, CurricularFace, AdaCos and ElasticFace keep state from
step to step. So the head built for such a loss (`CosineHead(num_classes, loss=...)`,
`PartialFC(..., loss=...)`) holds that state in a `LossState` sublayer, as non-trainable
weights: `.keras` files, `model.save_weights` (the backups of `fit_resumable`) and
`tf.distribute` see them like any other weight.

The loss reaches them through the tensor it is given. Each call of a head records, per thread
(each `tf.distribute` replica runs in its own thread), its output tensor, its `LossState` and the
`training` flag; a loss called on exactly that tensor (`y_pred is output`, which holds for
`compile(loss=...)` on every backend) uses that head's state, and updates it only when the head
ran with `training=True`. A loss called on any other tensor (a direct call, Keras's shape-only
build pass) computes with the loss's initial state and updates nothing.
"""

import threading
import weakref

import keras

from keras_facemargin import _backend

_local = threading.local()


class _Record:
    __slots__ = ("output", "head", "training")

    def __init__(self, output, head, training):
        try:
            self.output = weakref.ref(output)
        except TypeError:  # some tracers take no weak references; they die with their trace
            self.output = lambda output=output: output
        self.head = head
        self.training = training


def record(head, output, training):
    """Called by a head on its own output: what a loss called on `output` may use."""
    _local.record = _Record(output, head, bool(training))


def head_of(y_pred):
    """`(head, training)` of the head whose latest call in this thread returned `y_pred`, or None."""
    latest = getattr(_local, "record", None)
    if latest is None or latest.output() is not y_pred:
        return None
    return latest.head, latest.training


@keras.saving.register_keras_serializable(package="keras_facemargin")
class LossState(keras.layers.Layer):
    """The running statistics of a margin loss, kept (and saved) by the head built for it.

    Created by `CosineHead`/`PartialFC` from `loss.state_variables(num_classes)`; not meant to be
    built by hand. Each statistic is a non-trainable float32 scalar weight whose replicas agree
    (`aggregation="mean"` of identical values: the losses reduce their batch statistics over all
    replicas before they update); a loss that draws random numbers (`loss.uses_seed`) also gets a
    `seed` weight, the `[2]` state of a counter-based generator, advanced once per training step.

    Args:
        initial_values: `{name: initial value}`.
        num_classes: the number of classes of the head (all of them, also under `PartialFC`).
        seed: the initial seed (int), or None for no random state.
        **kwargs: base layer arguments.
    """

    def __init__(self, initial_values, num_classes, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.initial_values = {str(k): float(v) for k, v in dict(initial_values).items()}
        self.num_classes = int(num_classes)
        self.seed = None if seed is None else int(seed)
        self.variables_by_name = {}

    def build(self, input_shape=None):
        for name, value in self.initial_values.items():
            self.variables_by_name[name] = self.add_weight(
                name=name, shape=(), initializer=keras.initializers.Constant(value),
                trainable=False, dtype="float32", aggregation="mean",
            )
        if self.seed is not None:
            self.variables_by_name["seed"] = self.add_weight(
                name="seed", shape=(2,), dtype=_backend.random_seed_dtype(), trainable=False,
                aggregation="only_first_replica",
                initializer=keras.initializers.Constant([self.seed % 2**31, 0]),
            )
        self.built = True

    def values(self):
        """The current values of the statistics (and the `seed` state, if any).

        Returns:
            A dict `{name: tensor}`, float32 scalars (the seed `[2]`).
        """
        return {name: variable.value for name, variable in self.variables_by_name.items()}

    def assign(self, new_values):
        """Sets statistics after a training step (the loss calls it with its new state).

        Args:
            new_values: `{name: value}` for some or all of the names of `values()`; each is cast
                to its weight's dtype.
        """
        for name, value in new_values.items():
            variable = self.variables_by_name[name]
            variable.assign(keras.ops.cast(value, variable.dtype))

    def get_config(self):
        return {**super().get_config(), "initial_values": self.initial_values,
                "num_classes": self.num_classes, "seed": self.seed}
