import math

import keras
import numpy as np
from keras import ops

from keras_facemargin import _backend, _checks, _loss_state, _maths, registry
from keras_facemargin._replicas import replica_context
from keras_facemargin.heads.cosine_head import (
    check_features_shape,
    check_num_classes,
    cosine_to_rows,
    float32_under_half_policy,
    l2_normalize,
    loss_state_for,
    margin_loss,
    max_over_sub_centers,
    signature,
    sub_centers_for,
)

# Sampling scores are uniform in [0, 1); a positive class scores this, so top-k always keeps it.
_POSITIVE_SCORE = 2.0
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def _check_one_replica_per_process():
    import tensorflow as tf

    local = len(tf.distribute.get_strategy().extended.worker_devices)
    if local > 1:
        raise ValueError(
            "PartialFC under tf.distribute needs one replica per process (MultiWorkerMirroredStrategy "
            f"with one device per worker); got {local} replicas in this process. Keras 3 collects "
            "add_loss values in one list that the replicas of a process share, so their losses would "
            "mix. Start one worker per GPU, or use JAX with keras.distribution.ModelParallel."
        )


def _margin_loss(loss):
    from keras_facemargin import losses

    return margin_loss(loss, default=losses.ArcFaceLoss())


@registry.register("head", "partial_fc")
@keras.saving.register_keras_serializable(package="keras_facemargin")
class PartialFC(keras.layers.Layer):
    """Margin-softmax head that trains on the batch's classes plus a random sample of the others.

    With millions of identities, the full head's `[batch, num_classes]` cosines, their gradient
    and the dense update of every class centre dominate a training step. Partial FC computes, at
    each training step, cos θ only for S = ⌈sample_rate × num_classes⌉ classes: every class that
    occurs in the batch (the positives) and S − (distinct positives) other classes drawn uniformly
    without replacement. The margin loss is applied to those S cosines with the labels remapped to
    positions in the sampled set, and the layer adds it with `add_loss`, so the model is compiled
    without a loss. An et al. find sample_rate = 0.1 as accurate as the full softmax.

    Why a layer that takes the labels and adds the loss: the sampled classes depend on the labels,
    and the remapped labels exist only inside the step, so no `compile(loss=...)` can see them
    (InsightFace's `PartialFC_V2` likewise takes `(embeddings, labels)` and returns the loss).

    Memory: the centres `[num_classes, dim]` (and an optimizer's slots for them) are the only
    O(num_classes × dim) state; the cosines and their gradients are `[batch, S]`, and the step also
    touches an O(num_classes) score vector for sampling. The centres are stored with one row per
    class so that the sampled rows are a gather along axis 0, whose gradient TensorFlow keeps as
    `tf.IndexedSlices` of S rows: `keras.optimizers.SGD` *without momentum* then updates only the
    sampled centres with a scatter. Optimizers with per-weight state (SGD with momentum, Adam,
    AdamW) and weight decay or a `kernel_regularizer` touch the whole matrix every step (Keras
    densifies the sparse gradient in the slot updates): correct, but a dense gradient and
    O(num_classes × dim) memory traffic per step, which dominates the step at a million classes
    (step times and memory: BENCHMARKS.md, "Partial FC"). `keras_facemargin.optimizers.LazySGD`
    keeps momentum sparse: only the sampled rows and their momentum change. On JAX every
    gradient is dense. Only the sampled rows are normalised.

    Sampling is static-shaped (random scores, positives scored 2, `top_k` of S), so the step
    compiles under `tf.function`, XLA and `jax.jit`. S must be at least the number of distinct
    classes in a batch (in practice: S >= batch size); where a batch has more, a positive cannot
    be kept: eager calls raise a `ValueError`, TensorFlow graphs a `tf.debugging.Assert` error,
    and under XLA or `jax.jit` the loss is NaN. With training=False, or when S = num_classes,
    every class is used and no sampling is done.

    The layer computes in float32 even under a half-precision policy, and casts half-precision
    embeddings itself with a saturating backward pass, like `CosineHead`. As `CosineHead` does, it
    keeps the running statistics of its loss (AdaFace, CurricularFace, AdaCos, ElasticFace) as
    weights, hands a loss that needs them the feature norms, and supports K sub-centres per class
    (the sampled classes bring all K of their centres; rows c·K + k of the centre matrix).

    Not done: the paper's model parallelism (each replica holding a shard of the centres, the
    embeddings all-gathered, a softmax reduced across shards). Under a data-parallel
    `tf.distribute` strategy every replica would hold all the centres (untested here).

    Args:
        num_classes: number of classes (identities), at least 2.
        loss: the margin loss applied to the sampled cosines: a
            `keras_facemargin.losses.MarginSoftmaxLoss` (`ArcFaceLoss`, `CosFaceLoss`, ...), its
            registered name, or None for `ArcFaceLoss()`. Its reduction should give a scalar.
        sample_rate: fraction of the classes used per training step, in (0, 1].
        sub_centers: K >= 1 centres per class (default: what `loss` needs, else 1).
        seed: seed of the negative sampling (int or None).
        kernel_initializer: initializer of the `[num_classes × K, dim]` centre matrix. InsightFace's
            N(0, 0.01²) by default: the scale matters only through the gradient (∝ 1 / norm).
        kernel_regularizer: optional regularizer of that matrix (makes the update dense).
        epsilon: floor of the squared norms, so zero vectors give zero cosines, not NaN.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        embeddings: features `[batch, dim]`.
        labels: integer class labels `[batch]` or `[batch, 1]`; None computes the cosines only.
        training: whether to sample (Keras sets it: True in `fit`, False in `predict`/`evaluate`).

    Returns:
        cos θ: `[batch, S]` over the sampled classes when training with sampling (see
        `sampled_cosines` for which classes), `[batch, num_classes]` otherwise. With labels, the
        loss is added to `layer.losses` (and to the model's training loss).

    Example:

    ```python
    images = keras.Input((112, 112, 3))
    labels = keras.Input((), dtype="int32")
    embeddings = backbone(images)
    partial_fc = keras_facemargin.heads.PartialFC(
        1_000_000, loss=keras_facemargin.losses.ArcFaceLoss(), sample_rate=0.1)
    model = keras.Model([images, labels], partial_fc(embeddings, labels))
    model.compile(optimizer=keras.optimizers.SGD(0.1))  # no loss: PartialFC adds it
    # The labels are an input: a dataset of (images, labels) becomes ((images, labels),).
    model.fit(dataset.map(lambda x, y: ((x, y),)), epochs=20)
    embedder = keras.Model(images, embeddings)  # for verification
    ```

    Reference:
        An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face
        Recognition CNNs by Partial FC", CVPR 2022.
    """

    def __init__(
        self,
        num_classes,
        loss=None,
        sample_rate=0.1,
        seed=None,
        sub_centers=None,
        kernel_initializer=None,
        kernel_regularizer=None,
        epsilon=1e-12,
        **kwargs,
    ):
        kwargs.pop("autocast", None)
        super().__init__(
            dtype=float32_under_half_policy(kwargs.pop("dtype", None)), autocast=False, **kwargs
        )
        check_num_classes(num_classes)
        number = isinstance(sample_rate, (int, float, np.integer, np.floating)) and not isinstance(
            sample_rate, bool
        )
        if not number or not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be a number in (0, 1]; got {sample_rate!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None; got {seed!r}")
        epsilon = _checks.check_positive("epsilon", epsilon)
        self.num_classes = num_classes
        self.loss = _margin_loss(loss)
        self.sub_centers = sub_centers_for(sub_centers, self.loss)
        self.feature_norms = self.loss.needs_feature_norms
        self.sample_rate = float(sample_rate)
        self.seed = None if seed is None else int(seed)
        if kernel_initializer is None:
            kernel_initializer = keras.initializers.RandomNormal(stddev=0.01)
        self.kernel_initializer = _checks.keras_object(
            "kernel_initializer", kernel_initializer, keras.initializers.get, "a Keras initializer"
        )
        self.kernel_regularizer = _checks.keras_object(
            "kernel_regularizer", kernel_regularizer, keras.regularizers.get, "a Keras regularizer or None"
        )
        self.epsilon = epsilon
        self.num_sampled = min(num_classes, math.ceil(self.sample_rate * num_classes))
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.loss_state = None

    def build(self, embeddings_shape, labels_shape=None):
        dim = check_features_shape("PartialFC", "embeddings", embeddings_shape)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_classes * self.sub_centers, dim),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.loss_state = loss_state_for(self.loss, self.num_classes)

    def loss_signature(self):
        """What this layer hands its loss, which the loss checks against what it needs.

        Returns:
            `(feature_norms, statistic_names, seeded)`: whether a column of feature norms
            follows the cosines, the names of the running statistics it keeps for the loss (a
            tuple), and whether it keeps a random state; `(False, (), False)` without a loss.
        """
        return signature(self.loss, self.num_classes)

    def _apply_loss(self, labels, embeddings, cosines, training):
        """The loss on `cosines` (with the feature norms appended for a loss that needs them)."""
        if self.feature_norms:
            norms = _maths.norm(embeddings, axis=-1, dtype=self.compute_dtype, keepdims=True)
            cosines = ops.concatenate([cosines, norms], axis=-1)
        _loss_state.record(self, cosines, training)
        return self.loss(labels, cosines)

    def call(self, embeddings, labels=None, training=None):
        if labels is None:
            return self.cosines(embeddings)
        if not training or self.num_sampled == self.num_classes:
            cosines = self.cosines(embeddings)
            self.add_loss(self._unscaled(self._apply_loss(labels, embeddings, cosines, training)))
            return cosines
        class_ids, remapped, found = self._sample(labels)
        cosines = self.cosines(embeddings, class_ids)
        loss = self._apply_loss(remapped, embeddings, cosines, training)
        if found is not None:
            loss = ops.where(ops.all(found), loss, ops.full_like(loss, math.nan))
        self.add_loss(self._unscaled(loss))
        return cosines

    def _unscaled(self, loss):
        # Under tf.distribute, Keras divides a mean loss by the number of replicas, and again
        # every loss passed to add_loss: undo the first, or the gradients shrink R-fold.
        _, replicas = replica_context()
        if replicas > 1 and self.loss.reduction in _MEAN_REDUCTIONS:
            loss = loss * replicas
        return loss

    def cosines(self, embeddings, class_ids=None):
        """cos θ between the embeddings and the centres of the given classes.

        With K sub-centres, each class's cosine is that of its nearest sub-centre.

        Args:
            embeddings: features `[batch, dim]` (L2-normalised here).
            class_ids: int class ids `[n]` (as `sample` draws them), or None for every class.

        Returns:
            `[batch, n]` (`[batch, num_classes]` without `class_ids`), in the layer's compute
            dtype (float32 under a half-precision policy).
        """
        features = l2_normalize(embeddings, axis=-1, epsilon=self.epsilon, dtype=self.compute_dtype)
        if class_ids is None:
            centers = _backend.read(self.kernel)
        else:
            rows = class_ids if self.sub_centers == 1 else ops.reshape(
                ops.cast(class_ids, "int32")[:, None] * self.sub_centers
                + ops.arange(self.sub_centers, dtype="int32")[None, :], (-1,))
            centers = self._gather(rows)
        return max_over_sub_centers(cosine_to_rows(features, centers, self.epsilon), self.sub_centers)

    def _gather(self, class_ids):
        return _backend.gather_rows(self.kernel, class_ids)

    def sample(self, labels):
        """Draws the classes of one training step (advancing the seed).

        Args:
            labels: integer class labels `[batch]` or `[batch, 1]`.

        Returns:
            `(class_ids, remapped_labels)`: the S sampled class ids `[S]`, ascending, including every
            label; and each label's position in `class_ids`, `[batch]`
            (`class_ids[remapped_labels] == labels`).
        """
        class_ids, remapped, _ = self._sample(labels)
        return class_ids, remapped

    def sampled_cosines(self, embeddings, labels):
        """What one training step computes: the classes it samples and their cosines.

        Args:
            embeddings: features `[batch, dim]`.
            labels: integer class labels `[batch]` or `[batch, 1]`.

        Returns:
            `(cosines, remapped_labels, class_ids)`: cos θ `[batch, S]` over the sampled classes,
            each label's position among them `[batch]`, and the S sampled class ids `[S]`,
            ascending (as `sample`, which this advances).
        """
        class_ids, remapped = self.sample(labels)
        return self.cosines(embeddings, class_ids), remapped, class_ids

    def _sample(self, labels):
        check = self.loss.check_inputs
        labels = ops.reshape(labels, (-1,))
        labels, valid = _checks.sparse_labels(labels, self.num_classes, check)
        if valid is not None:
            labels = ops.where(valid, labels, 0)
        num_sampled = self.num_sampled
        values = _checks.concrete(labels) if check else None
        if values is not None and len(np.unique(values)) > num_sampled:
            raise ValueError(
                f"PartialFC samples S = ceil(sample_rate={self.sample_rate} × num_classes="
                f"{self.num_classes}) = {num_sampled} classes, fewer than the {len(np.unique(values))} "
                "distinct labels of this batch; S must be at least the batch size (raise "
                "sample_rate or lower the batch size)"
            )
        scores = keras.random.uniform((self.num_classes,), seed=self.seed_generator)
        positives = labels
        context, _ = replica_context()
        if context is not None:
            _check_one_replica_per_process()
            # Data-parallel: every replica samples the same classes, those of the global batch
            # (the seed state is mirrored, so the random scores agree too).
            positives = context.all_gather(labels, axis=0)
        positive = ops.full(ops.shape(positives), _POSITIVE_SCORE, dtype=scores.dtype)
        scores = ops.scatter_update(scores, positives[:, None], positive)
        # Ascending ids: the gather and the optimizer's scatter walk memory in order, and the
        # labels are remapped by binary search.
        class_ids = ops.sort(ops.top_k(scores, num_sampled, sorted=False)[1])
        remapped = ops.minimum(ops.cast(ops.searchsorted(class_ids, labels), "int32"), num_sampled - 1)
        if not check or values is not None:
            return class_ids, remapped, None
        found = ops.equal(ops.take(class_ids, remapped), labels)
        _checks.graph_assert(
            ops.all(found),
            f"PartialFC: a batch has more distinct labels than the S={num_sampled} sampled classes "
            "(S must be at least the batch size); labels not sampled:",
            ops.sum(ops.cast(ops.logical_not(found), "int32")),
        )
        if valid is not None:
            found = ops.logical_and(found, valid)
        return class_ids, remapped, found

    def save_own_variables(self, store):
        # Keras does not save seed generators; saving this one makes a resumed run draw the
        # negatives it would have drawn without the interruption.
        super().save_own_variables(store)
        store["seed_state"] = self.seed_generator.state

    def load_own_variables(self, store):
        if "seed_state" in store:
            self.seed_generator.state.assign(store["seed_state"])
        self.kernel.assign(store["0"])

    @property
    def centers(self):
        """The L2-normalised class centres, `[num_classes, dim]` (`[num_classes, K, dim]` with K
        sub-centres)."""
        centres = l2_normalize(self.kernel, axis=1, epsilon=self.epsilon)
        if self.sub_centers == 1:
            return centres
        return ops.reshape(centres, (self.num_classes, self.sub_centers, -1))

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (embeddings_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            loss=keras.saving.serialize_keras_object(self.loss),
            sample_rate=self.sample_rate,
            seed=self.seed,
            sub_centers=self.sub_centers,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            epsilon=self.epsilon,
        )
        return config
