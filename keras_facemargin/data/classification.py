"""`classification_dataset`: shuffled image batches with class labels, for margin-softmax losses."""

import numpy as np
import tensorflow as tf

from keras_facemargin import _checks
from keras_facemargin._replicas import replica_share
from keras_facemargin.data import decoding
from keras_facemargin.data.batch_mix import BatchMix
from keras_facemargin.data.image_index import ImageIndex


def classification_dataset(
    index,
    batch_size,
    image_size=(112, 112),
    resize_mode="resize",
    training=True,
    augment=None,
    mix=None,
    seed=0,
    drop_remainder=None,
    corrupt_files=None,
    prefetch=True,
    input_context=None,
    one_hot=False,
    initial_epoch=0,
):
    """A `tf.data.Dataset` of `(images, labels)` batches over every image of `index`.

    For training (`training=True`) the images are reshuffled every epoch (deterministically from
    `seed`: epoch e of a dataset is the same every run), augmented, and the last partial batch is
    dropped; for evaluation they come in index order, resized only, every image once.
    `images` are float32 `[batch, height, width, 3]` in [0, 255]; `labels` are int32 `[batch]`,
    or, with `mix`, float32 one-hot rows `[batch, num_classes]` (mixtures after mixup/cutmix),
    both of which the margin-softmax losses take as `y_true`.

    A file that does not decode becomes a blank image with its label and is recorded in
    `corrupt_files` (a `CorruptFileLog`); so does a record of a RecordIO index
    (`ImageIndex.from_recordio`) that cannot be read. An index with landmarks
    (`ImageIndex.with_landmarks`) has every face aligned to ArcFace's template as it is decoded.

    Distributed training: with `tf.distribute`, call this inside
    `strategy.distribute_datasets_from_function(lambda ctx: classification_dataset(...,
    input_context=ctx))`. `batch_size` is then the *global* batch, a multiple of the number of
    replicas R; replica r gets images [r·B/R, (r+1)·B/R) of each global batch, so together the
    replicas of one step see exactly the batch of an undistributed run (mixing, if any, then
    pairs images within each replica's part).

    Args:
        index: an `ImageIndex`.
        batch_size: images per batch.
        image_size: `(height, width)`.
        resize_mode: `"resize"` or `"center_crop"` (without augmentation).
        training: shuffle, augment and drop the remainder (see above).
        augment: True, False or an `Augmentation`; None: True when training.
        mix: a `BatchMix` (training only), or None.
        seed: seed of the shuffling, augmentations and mixing.
        drop_remainder: None: the same as `training`.
        corrupt_files: a `CorruptFileLog`, or None (failures are then printed to stderr).
        prefetch: whether to end with `prefetch(AUTOTUNE)`.
        input_context: a `tf.distribute.InputContext`, see above.
        one_hot: labels as float32 one-hot rows `[batch, num_classes]` (as with `mix`), for
            Keras's `CategoricalCrossentropy(label_smoothing=...)`.
        initial_epoch: the epoch (0-based) that the first iteration draws. A resumed run passes
            the epoch it resumes at, as to `fit(initial_epoch=...)`, and so sees the epochs an
            uninterrupted run would have seen.

    Returns:
        A finite `tf.data.Dataset` of `(images, labels)` batches as above, one epoch of them
        (with `input_context`, per-replica batches of `batch_size / R` images: this pipeline's
        replicas' share of each global batch).

    Example:

    ```python
    train, val = ImageIndex.from_directory("train").split_images(test_fraction=0.05)
    model.compile(optimizer="sgd", loss=keras_facemargin.losses.ArcFaceLoss())
    model.fit(
        classification_dataset(train, 128, mix=BatchMix(mixup=0.2, cutmix=0.2)),
        validation_data=classification_dataset(val, 128, training=False),
        epochs=20,
    )
    ```
    """
    if not isinstance(index, ImageIndex):
        raise ValueError(f"index must be an ImageIndex; got {type(index).__name__}")
    if len(index) == 0:
        raise ValueError(f"index must hold at least one image; got {index}")
    batch_size = _checks.check_int("batch_size", batch_size, 1)
    if mix is not None and not isinstance(mix, BatchMix):
        raise ValueError(f"mix must be a BatchMix or None; got {mix!r}")
    if mix is not None and not training:
        raise ValueError("mix must be None when training=False: evaluation images are not mixed")
    augment = training if augment is None else augment
    drop_remainder = training if drop_remainder is None else bool(drop_remainder)
    if drop_remainder and len(index) < batch_size:
        raise ValueError(
            f"batch_size must be <= the number of images ({len(index)}) when the remainder is "
            f"dropped; got batch_size={batch_size}"
        )
    num = len(index)
    steps = num // batch_size if drop_remainder else -(-num // batch_size)
    replicas, local_replicas, first_replica = replica_share(input_context, "batch_size", batch_size)
    if replicas > 1 and not drop_remainder:
        raise ValueError("input_context needs drop_remainder=True (equal batches on every replica)")
    # This pipeline feeds `local_replicas` replicas, one per-replica batch each per step.
    per_replica = batch_size // replicas
    local, first = local_replicas * per_replica, first_replica * per_replica
    source = decoding.IndexSource(index)
    labels = index.labels.astype(np.int32)
    state = {"epoch": _checks.check_int("initial_epoch", initial_epoch, 0)}

    def make_epoch():
        epoch = state["epoch"]
        state["epoch"] += 1
        if training:
            order = np.random.default_rng([seed, epoch]).permutation(num)
        else:
            order = np.arange(num)
        order = order[: steps * batch_size] if drop_remainder else order
        ids = epoch * num + np.arange(len(order))
        if local != batch_size:
            # This pipeline's part [first, first + local) of every global batch.
            part = (slice(None), slice(first, first + local))
            order = order.reshape(steps, batch_size)[part].reshape(-1)
            ids = ids.reshape(steps, batch_size)[part].reshape(-1)
        return source.values(order), labels[order], ids

    ds = decoding.epochs_dataset(
        make_epoch,
        (source.spec([None]), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64)),
    )
    ds = ds.unbatch().batch(per_replica, drop_remainder=drop_remainder)
    ds = ds.map(lambda s, y, i: (*source.read(s), i, y))
    preprocess = source.preprocess(image_size, resize_mode, decoding.as_augmentation(augment), seed)
    ds = decoding.decode_batches(ds, preprocess, corrupt_files)
    if one_hot and mix is None:
        ds = ds.map(lambda images, labels: (images, tf.one_hot(labels, index.num_classes)))
    if mix is not None:
        num_classes = index.num_classes
        ds = ds.enumerate().map(
            lambda step, batch: mix(
                batch[0], tf.one_hot(batch[1], num_classes, dtype=tf.float32), step
            )
        )
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps * (local // per_replica)))
    return ds.prefetch(decoding.AUTOTUNE) if prefetch else ds
