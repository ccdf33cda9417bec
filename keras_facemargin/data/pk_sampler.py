"""The P×K batch sampler: P distinct identities × K images each, for pair and triplet losses.

Sampling is index arithmetic in NumPy, one vectorised pass per epoch: a random order within every
class comes from one argsort of `label + uniform key`, and a class's K picks are the next K
positions of its run (cycling when the class has fewer than K images). There is no per-class
`Dataset` and no Python loop over classes, so 100,000 classes and 1,000,000 images take seconds.
"""

import logging

import numpy as np
import tensorflow as tf

from keras_facemargin import _checks
from keras_facemargin._replicas import replica_share
from keras_facemargin.data import decoding
from keras_facemargin.data.image_index import ImageIndex

logger = logging.getLogger(__name__)

SMALL_CLASSES = ("replace", "skip")


class PKSampler:
    """Draws epochs of P×K batches of positions into an `ImageIndex`.

    An epoch visits the usable classes in a random order, P per batch, so every class appears
    once per epoch by default (`steps_per_epoch = usable classes // P`). A class is drawn again
    only when `steps_per_epoch` asks for more batches than that, and never twice in one batch.
    Within a class the K images are distinct whenever the class has at least K; a smaller class
    is sampled with replacement (`small_classes="replace"`, cycling through all its images in a
    random order) or left out (`"skip"`); `num_small_classes` says how many there are.

    Args:
        index: an `ImageIndex`.
        classes_per_batch: P >= 1 (a pair loss needs P >= 2 for negatives), classes per batch.
        samples_per_class: K >= 1, the images per class and batch (>= 2 for positives).
        small_classes: `"replace"` or `"skip"` for classes with fewer than K images.
        steps_per_epoch: batches per epoch; None: usable classes // P.
        seed: the epochs drawn are a function of `(seed, epoch)` only.
    """

    def __init__(
        self,
        index,
        classes_per_batch,
        samples_per_class,
        small_classes="replace",
        steps_per_epoch=None,
        seed=0,
    ):
        if not isinstance(index, ImageIndex):
            raise ValueError(f"index must be an ImageIndex; got {type(index).__name__}")
        self.index = index
        self.classes_per_batch = _checks.check_int("classes_per_batch", classes_per_batch, 1)
        self.samples_per_class = _checks.check_int("samples_per_class", samples_per_class, 1)
        if small_classes not in SMALL_CLASSES:
            raise ValueError(f"small_classes must be one of {SMALL_CLASSES}; got {small_classes!r}")
        self.small_classes = small_classes
        self.seed = int(seed)
        counts = index.class_counts()
        small = (counts > 0) & (counts < self.samples_per_class)
        self.num_small_classes = int(small.sum())
        usable = counts >= (1 if small_classes == "replace" else self.samples_per_class)
        self.classes = np.flatnonzero(usable)
        if self.num_small_classes:
            action = "sampled with replacement" if small_classes == "replace" else "skipped"
            logger.info(
                "%d of %d classes have fewer than K=%d images and are %s",
                self.num_small_classes,
                index.num_classes,
                self.samples_per_class,
                action,
            )
        if len(self.classes) < self.classes_per_batch:
            raise ValueError(
                f"classes_per_batch must be <= the number of usable classes ({len(self.classes)}"
                f" of {index.num_classes}, small_classes={small_classes!r}, "
                f"K={self.samples_per_class}); got classes_per_batch={self.classes_per_batch}"
            )
        self._counts = counts
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if steps_per_epoch is None:
            steps_per_epoch = len(self.classes) // self.classes_per_batch
        self.steps_per_epoch = _checks.check_int("steps_per_epoch", steps_per_epoch, 1)

    @property
    def batch_size(self):
        return self.classes_per_batch * self.samples_per_class

    def epoch(self, epoch):
        """Positions into the index for one epoch.

        Args:
            epoch: the epoch's number (0-based); the same `(seed, epoch)` gives the same epoch.

        Returns:
            int64 positions `[steps_per_epoch, P × K]`, each row class-major (K consecutive
            images per class).
        """
        p, k, steps = self.classes_per_batch, self.samples_per_class, self.steps_per_epoch
        rng = np.random.default_rng([self.seed, int(epoch)])
        per_round = len(self.classes) // p * p
        rounds = -(-steps * p // per_round)
        chosen = np.concatenate([rng.permutation(self.classes)[:per_round] for _ in range(rounds)])[
            : steps * p
        ]
        repeat = np.arange(steps * p) // per_round
        # A random order within each class: sort by label, ties broken by a uniform key.
        labels = self.index.labels
        within = np.argsort(labels + rng.random(len(labels)), kind="stable")
        offsets = (repeat[:, None] * k + np.arange(k)) % self._counts[chosen][:, None]
        positions = within[self._starts[chosen][:, None] + offsets]
        return positions.reshape(steps, p * k)

    def as_dataset(self, input_context=None, initial_epoch=0):
        """The epochs as a `tf.data.Dataset` of undecoded batches, for a pipeline to decode.

        The dataset is one epoch long; each new iteration draws the next epoch. `sample_ids`
        number the samples of all epochs (the augmentation seeds of `pk_dataset`).

        Args:
            input_context: a `tf.distribute.InputContext`, or None (see `pk_dataset`).
            initial_epoch: the epoch that the first iteration draws (see `pk_dataset`).

        Returns:
            A `tf.data.Dataset` of `(paths, labels, sample_ids)`, each `[P·K]` (or `[P/R·K]` per
            replica with an `input_context`); for a RecordIO index or one with landmarks,
            `paths` are int64 positions into the index.
        """
        p, k = self.classes_per_batch, self.samples_per_class
        replicas, local, first = replica_share(input_context, "classes_per_batch", p)
        per_replica = p // replicas
        source = decoding.IndexSource(self.index)
        labels = self.index.labels.astype(np.int32)
        steps = self.steps_per_epoch
        state = {"epoch": _checks.check_int("initial_epoch", initial_epoch, 0)}

        def make_epoch():
            epoch = state["epoch"]
            state["epoch"] += 1
            positions = self.epoch(epoch)
            ids = epoch * steps * p * k + np.arange(steps * p * k, dtype=np.int64).reshape(
                steps, -1
            )
            if replicas > 1:
                # Replica r of a step takes classes [r·P/R, (r+1)·P/R) of the global batch.
                cut = (
                    slice(None),
                    slice(first * per_replica * k, (first + local) * per_replica * k),
                )
                positions = positions[cut].reshape(steps * local, per_replica * k)
                ids = ids[cut].reshape(steps * local, per_replica * k)
            return source.values(positions), labels[positions], ids

        n = per_replica * k
        ds = decoding.epochs_dataset(
            make_epoch,
            (
                source.spec([None, n]),
                tf.TensorSpec([None, n], tf.int32),
                tf.TensorSpec([None, n], tf.int64),
            ),
        )
        ds = ds.unbatch()
        return ds.apply(tf.data.experimental.assert_cardinality(steps * local))


def pk_dataset(
    index,
    classes_per_batch,
    samples_per_class,
    image_size=(112, 112),
    resize_mode="resize",
    augment=True,
    small_classes="replace",
    steps_per_epoch=None,
    seed=0,
    input_context=None,
    corrupt_files=None,
    mix=None,
    prefetch=True,
    initial_epoch=0,
):
    """A `tf.data.Dataset` of P×K batches `(images, labels)` for pair and triplet losses.

    Every batch holds exactly P distinct classes × K images, class-major: `images`
    `[P·K, height, width, 3]` float32 in [0, 255], `labels` `[P·K]` int32 (the index's labels).
    The dataset is finite, one epoch of `steps_per_epoch` batches, and every new iteration (each
    `fit` epoch) draws the next epoch, deterministically from `seed`. See `PKSampler` for what an
    epoch is and how classes smaller than K are handled; their number is logged (INFO) and is
    `PKSampler(index, P, K).num_small_classes`.

    A file that does not decode becomes a blank image with its label and is recorded in
    `corrupt_files` (a `CorruptFileLog`; also pass it to `fit(callbacks=...)` to have it logged);
    so does an unreadable record of a RecordIO index. An index with landmarks has every face
    aligned to ArcFace's template as it is decoded.

    Distributed training: with `tf.distribute`, call this inside
    `strategy.distribute_datasets_from_function(lambda ctx: pk_dataset(..., input_context=ctx))`.
    `classes_per_batch` is then the *global* P and must be a multiple of the number of replicas
    R; each replica gets whole classes, a local batch of P/R classes × K, and together the
    replicas of one step hold exactly the P classes of the unsharded batch.

    Args:
        index: an `ImageIndex`.
        classes_per_batch: P, the distinct classes per (global) batch.
        samples_per_class: K, the images per class.
        image_size: `(height, width)` of the output images.
        resize_mode: `"resize"` or `"center_crop"` (without augmentation).
        augment: True (the default `Augmentation()`), False, or an `Augmentation`.
        small_classes: `"replace"` (default) or `"skip"`, for classes with fewer than K images.
        steps_per_epoch: batches per epoch; None: usable classes // P.
        seed: seed of the sampling and of the augmentations.
        input_context: a `tf.distribute.InputContext`, see above.
        corrupt_files: a `CorruptFileLog`, or None (failures are then printed to stderr).
        mix: must be None. Mixup/cutmix blend identities, which pair losses cannot use.
        prefetch: whether to end with `prefetch(AUTOTUNE)`.
        initial_epoch: the epoch (0-based) that the first iteration draws. A resumed run passes
            the epoch it resumes at, as to `fit(initial_epoch=...)`, and so sees the epochs an
            uninterrupted run would have seen.

    Returns:
        A finite `tf.data.Dataset` of `(images, labels)` batches as above, `steps_per_epoch` of
        them (with `input_context`, per-replica batches of P/R classes × K, `steps_per_epoch`
        for each replica this pipeline feeds).

    Example:

    ```python
    index = ImageIndex.from_directory("train")
    ds = pk_dataset(index, classes_per_batch=32, samples_per_class=4)
    model.fit(ds, epochs=10)
    ```
    """
    if mix is not None:
        raise ValueError(
            "mix must be None for pk_dataset: mixup/cutmix/cutout produce mixed label rows, but "
            "the pair losses that P×K batches are for need one identity per image; use "
            f"classification_dataset(..., mix=...) with a margin-softmax loss; got mix={mix!r}"
        )
    sampler = PKSampler(
        index, classes_per_batch, samples_per_class, small_classes, steps_per_epoch, seed
    )
    sources = sampler.as_dataset(input_context, initial_epoch)
    steps = int(sources.cardinality())
    source = decoding.IndexSource(index)
    ds = sources.map(lambda s, y, i: (*source.read(s), i, y))
    preprocess = source.preprocess(image_size, resize_mode, decoding.as_augmentation(augment), seed)
    ds = decoding.decode_batches(ds, preprocess, corrupt_files)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(decoding.AUTOTUNE) if prefetch else ds
