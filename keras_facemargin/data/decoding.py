"""Image decoding and augmentation in `tf.data`, and what happens to files that will not decode.

TensorFlow graphs cannot catch an error: one corrupt JPEG raises inside the input pipeline and
ends the epoch (and `Dataset.ignore_errors` drops the sample, which silently changes the batch).
Here every batch is decoded by its own small inner dataset,
`from_tensor_slices(batch).map(decode).batch(n, drop_remainder=True).ignore_errors()`: a batch
that decodes comes out whole (the usual case, at the cost of a plain parallel `map`); a batch
with a bad file is dropped there, and only then is it decoded again sample by sample, with
`ignore_errors` on each sample and the survivors scattered back into their positions. A sample
that failed becomes a blank (all-zero) image with its label kept, so the batch keeps its shape
and its P×K structure. The failures are recorded, in the pipeline, in a `CorruptFileLog` (a
counter and the names, held in `tf.Variable`s), which a Keras callback reads at the end of each
epoch to log every file with the reason it failed. Evaluation reads its images in a Python loop,
which can see which positions are missing: `ImageBatches` decodes image by image, leaves out the
failures, and needs no second path.
"""

import copy
import dataclasses
import logging
import math
import sys
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from keras_facemargin.data import alignment, recordio

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# tf.data's autotuning thread is off in these pipelines. With it, about one iterator in four took
# 220-290 ms to be destroyed (Keras's own pipelines too): a stall at the end of every such epoch
# of `fit`, longer than decoding a small epoch. Without it the interleave decodes min(16, CPUs)
# batches at a time, the value autotuning starts from, and `prefetch(AUTOTUNE)` still sizes its
# buffer by itself (BENCHMARKS.md, "Training input pipeline").
_PIPELINE_OPTIONS = tf.data.Options()
_PIPELINE_OPTIONS.autotune.enabled = False
RESIZE_MODES = ("resize", "center_crop")


class CorruptFile(NamedTuple):
    """One image that did not decode, as a `CorruptFileLog` reports it.

    Attributes:
        path: the file's path, or the name the pipeline gave the source (`file.rec[key]` for a
            RecordIO record, `file[i]` for an image of an InsightFace `.bin`).
        reason: why it failed: TensorFlow's error when it is decoded again, eagerly.
    """

    path: str
    reason: str


def check_image_size(image_size):
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    ok = (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
            for s in image_size
        )
    )
    if not ok:
        raise ValueError(
            f"image_size must be (height, width) with positive integers; got {image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def check_resize_mode(resize_mode):
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}; got {resize_mode!r}")
    return resize_mode


def _check_range(name, value, low, high):
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        and low < value[0] <= value[1] <= high
    )
    if not ok:
        raise ValueError(
            f"{name} must be (low, high) with {low} < low <= high <= {high}; got {value!r}"
        )
    return float(value[0]), float(value[1])


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The training augmentations, each drawn per image from `(seed, sample id)`.

    The defaults (flip and a mild crop) suit aligned face crops. For glyph-like identities
    (emoji, letters, arrows, hands), a flip changes the identity: use translation, zoom and
    contrast instead (`Augmentation(flip=False, crop_scale=None, translate=0.08, zoom=0.1,
    contrast=0.2)`).

    Args:
        flip: random left-right flip with probability 0.5.
        crop_scale: `(low, high)` fraction of the image area to crop, or None for no crop.
        crop_ratio: `(low, high)` aspect ratio (width / height) of the crop.
        color_jitter: j in [0, 1): brightness ±j·255, contrast and saturation in [1 − j, 1 + j].
        translate: t in [0, 1): a shift of up to ±t of the height and width (as
            `keras.layers.RandomTranslation(t, t)`), reflecting the image at its edges.
        zoom: z in [0, 1): a zoom by a factor in [1 − z, 1 + z] about the centre (as
            `keras.layers.RandomZoom(z)`); translation and zoom are one resampling.
        contrast: c in [0, 1): each channel's contrast times a factor in [1 − c, 1 + c] (as
            `keras.layers.RandomContrast(c)`).
        erase: probability in [0, 1] of erasing one rectangle (2–20% of the area, aspect ratio
            1/3–3) with uniform noise (as `keras.layers.RandomErasing`).
    """

    flip: bool = True
    crop_scale: tuple | None = (0.8, 1.0)
    crop_ratio: tuple = (0.9, 1.0 / 0.9)
    color_jitter: float = 0.0
    translate: float = 0.0
    zoom: float = 0.0
    contrast: float = 0.0
    erase: float = 0.0

    def __post_init__(self):
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be True or False; got {self.flip!r}")
        if self.crop_scale is not None:
            object.__setattr__(
                self, "crop_scale", _check_range("crop_scale", self.crop_scale, 0.0, 1.0)
            )
        object.__setattr__(
            self, "crop_ratio", _check_range("crop_ratio", self.crop_ratio, 0.0, math.inf)
        )
        for name in ("color_jitter", "translate", "zoom", "contrast"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1); got {value!r}")
        if isinstance(self.erase, bool) or not isinstance(self.erase, (int, float)) or not (
                0.0 <= self.erase <= 1.0):
            raise ValueError(f"erase must be a probability in [0, 1]; got {self.erase!r}")


def as_augmentation(augment):
    """`True` → the default `Augmentation()`; `False`/None → none; an `Augmentation` as is."""
    if augment is True:
        return Augmentation()
    if augment is False or augment is None:
        return None
    if isinstance(augment, Augmentation):
        return augment
    raise ValueError(f"augment must be True, False or an Augmentation; got {augment!r}")


def decode_rgb(contents):
    """Encoded JPEG/PNG/BMP/GIF bytes → uint8 `[height, width, 3]` (grey and RGBA become RGB;
    a GIF gives its first frame)."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def resize(image, image_size, resize_mode="resize"):
    """`image` → float32 `[height, width, 3]` in [0, 255].

    `"resize"` scales the whole image to `image_size` (aligned face crops are already framed);
    `"center_crop"` scales the shorter side to fit and crops the centre, keeping the aspect ratio.
    An image that already has the size is only cast: bilinear resampling to the same size (half-
    pixel centres) is the identity, and face sets are usually stored at the size they train at.
    """
    height, width = image_size
    if resize_mode == "center_crop":
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.maximum(height / shape[0], width / shape[1])
        new = tf.maximum(tf.cast(tf.math.ceil(shape * scale), tf.int32), [height, width])
        image = tf.image.resize(image, new)
        top = (new[0] - height) // 2
        left = (new[1] - width) // 2
        image = image[top : top + height, left : left + width]
    elif image.shape[:2].as_list() == [height, width]:
        image = tf.cast(image, tf.float32)
    else:
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [height, width]))
        image = tf.cond(same, lambda: tf.cast(image, tf.float32),
                        lambda: tf.image.resize(image, (height, width)))
    # Bilinear weights are convex: the values stay in [0, 255] without clipping.
    image.set_shape([height, width, 3])
    return image


def _shift_and_zoom(image, translate, zoom, seed):
    """One bilinear resampling of a float `[height, width, 3]` image: a zoom by a factor in
    [1 − zoom, 1 + zoom] about the centre and a shift of up to ±translate of each side."""
    height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    draw = tf.random.stateless_uniform([3], seed, -1.0, 1.0)
    factor = 1.0 + zoom * draw[0]
    shift_x, shift_y = translate * draw[1] * width, translate * draw[2] * height
    # Output pixel (x, y) reads input (factor·x + offset_x, factor·y + offset_y).
    offset_x = (1.0 - factor) * (width - 1.0) / 2.0 - shift_x
    offset_y = (1.0 - factor) * (height - 1.0) / 2.0 - shift_y
    transform = tf.stack([factor, 0.0, offset_x, 0.0, factor, offset_y, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]


def _erase(image, probability, seed):
    """With `probability`, one rectangle of 2–20% of the area (aspect 1/3–3) set to uniform noise."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    height, width = tf.unstack(tf.shape(image)[:2])
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draw = tf.random.stateless_uniform([5], seeds[0])
    area = (0.02 + 0.18 * draw[0]) * h * w
    ratio = tf.exp(math.log(1 / 3) + (math.log(3) - math.log(1 / 3)) * draw[1])
    box_h = tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1.0, h)
    box_w = tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1.0, w)
    top = tf.floor(draw[2] * (h - box_h + 1.0))
    left = tf.floor(draw[3] * (w - box_w + 1.0))
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    inside = inside & (draw[4] < probability)
    noise = tf.random.stateless_uniform(tf.shape(image), seeds[1], 0.0, 255.0)
    return tf.where(inside[:, :, None], noise, image)


def augment_image(image, image_size, augmentation, seed):
    """A random training view of a uint8 `image`, drawn from the stateless `seed` `[2]`."""
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    if augmentation.crop_scale is not None:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=augmentation.crop_ratio,
            area_range=augmentation.crop_scale,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
    image = resize(image, image_size, "resize")
    if augmentation.translate or augmentation.zoom:
        image = _shift_and_zoom(image, augmentation.translate, augmentation.zoom, seeds[5])
    if augmentation.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    jitter = augmentation.color_jitter
    if jitter > 0:
        image = tf.image.stateless_random_brightness(image, jitter * 255.0, seed=seeds[2])
        image = tf.image.stateless_random_contrast(image, 1 - jitter, 1 + jitter, seed=seeds[3])
        image = tf.image.stateless_random_saturation(image, 1 - jitter, 1 + jitter, seed=seeds[4])
    if augmentation.contrast:
        c = augmentation.contrast
        image = tf.image.stateless_random_contrast(image, 1 - c, 1 + c, seed=seeds[6])
    if jitter > 0 or augmentation.contrast:
        image = tf.clip_by_value(image, 0.0, 255.0)
    if augmentation.erase:
        image = _erase(image, augmentation.erase, seeds[7])
    return image


def make_preprocess(
    image_size, resize_mode="resize", augmentation=None, seed=0, from_bytes=False, align=False
):
    """`fn(source, sample_id)` → float32 image `[height, width, 3]` in [0, 255].

    `source` is a file path (or encoded bytes when `from_bytes`); with `align`, it is a pair
    `(path or bytes, landmarks [5, 2])` and the face is aligned to ArcFace's template
    (`align_face`) instead of resized, before any augmentation. `sample_id` (int64) makes the
    augmentation of every sample a function of `(seed, sample_id)` only, so that a pipeline is
    deterministic whatever its parallelism.
    """
    image_size = check_image_size(image_size)
    resize_mode = check_resize_mode(resize_mode)
    augmentation = as_augmentation(augmentation)
    if align and image_size[0] != image_size[1]:
        raise ValueError(
            f"image_size must be square to align faces to ArcFace's template; got {image_size}"
        )

    def preprocess(source, sample_id):
        if align:
            source, landmarks = source
        image = decode_rgb(source if from_bytes else tf.io.read_file(source))
        if align:
            image = alignment.align_face(image, landmarks, image_size[0])
        if augmentation is None:
            return image if align else resize(image, image_size, resize_mode)
        pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(sample_id, tf.int64)])
        return augment_image(image, image_size, augmentation, pair)

    return preprocess


def epochs_dataset(make_epoch, signature):
    """A dataset of one element, `make_epoch()`, called again on every new iteration.

    It does what `tf.data.Dataset.from_generator` does for a generator of one element, through
    `tf.numpy_function`. `from_generator` is avoided on purpose: its kernel sets glibc's
    `M_TRIM_THRESHOLD` for the whole process (TensorFlow logs "Memory patch applied"), which also
    stops glibc raising its mmap threshold, so every batch-sized buffer of every pipeline in the
    process is mapped and unmapped again: our pipelines took about twice the CPU per decoded image
    (BENCHMARKS.md, "Training input pipeline").

    Args:
        make_epoch: a function of no arguments returning NumPy arrays, one per `signature` entry.
        signature: a tuple of `tf.TensorSpec`.

    Returns:
        A `tf.data.Dataset` of one `signature`-shaped element per iteration.
    """
    dtypes = [spec.dtype for spec in signature]

    def call(_):
        out = tf.numpy_function(lambda: tuple(make_epoch()), [], dtypes, stateful=True)
        for tensor, spec in zip(out, signature, strict=True):
            tensor.set_shape(spec.shape)
        return tuple(out)

    return tf.data.Dataset.from_tensors(np.int64(0)).map(call)


class IndexSource:
    """How the pipelines read the images of an `ImageIndex`, one batch at a time.

    An index of image files without landmarks goes through a pipeline as file paths (read by
    `tf.io.read_file`). Otherwise (a RecordIO index, or one with landmarks) it goes as int64
    positions into the index, and `read` turns a batch of positions into the record bytes or
    paths, the landmarks and the names, through one `tf.numpy_function` per batch.
    """

    def __init__(self, index):
        self.index = index
        self.from_bytes = index.record_file is not None
        self.align = index.landmarks is not None
        self.by_position = self.from_bytes or self.align
        self._reader = recordio.RecordReader(index.record_file) if self.from_bytes else None
        self._paths = None

    def values(self, positions):
        """What an epoch's `epochs_dataset` element holds for `positions` (any shape)."""
        if self.by_position:
            return np.asarray(positions, np.int64)
        if self._paths is None:  # UTF-8 bytes: `tf.numpy_function` takes str as ASCII only
            self._paths = np.char.encode(self.index.paths.astype(str), "utf-8")
        return self._paths[positions]

    def spec(self, shape):
        return tf.TensorSpec(shape, tf.int64 if self.by_position else tf.string)

    def _read(self, positions):
        names = self.index.paths[positions]
        if self.from_bytes:
            contents = self._reader.images(self.index.offsets[positions])
        else:
            contents = names
        out = [contents, names]
        if self.align:
            out.append(self.index.landmarks[positions])
        return tuple(out)

    def read(self, values):
        """In a pipeline: a batch of `values` `[n]` → `(sources, names)` for `decode_batches`."""
        if not self.by_position:
            return values, values
        types = [tf.string, tf.string] + ([tf.float32] if self.align else [])
        out = tf.numpy_function(self._read, [values], types, stateful=False)
        n = values.shape[0]
        out[0].set_shape([n])
        out[1].set_shape([n])
        if self.align:
            out[2].set_shape([n, 5, 2])
            return (out[0], out[2]), out[1]
        return out[0], out[1]

    def preprocess(self, image_size, resize_mode="resize", augmentation=None, seed=0):
        return make_preprocess(
            image_size, resize_mode, augmentation, seed, from_bytes=self.from_bytes,
            align=self.align,
        )


def _decode_one_batch(preprocess, spec):
    # Every function in here is instantiated again by each new iterator (each epoch of `fit`), at
    # a cost of milliseconds each: the fast path has one (`flagged`), and the batch's other parts
    # join by `zip`, which needs none (BENCHMARKS.md, "Training input pipeline").
    def flagged(source, sample_id):
        return preprocess(source, sample_id), False

    def decode(sources, names, sample_ids, *rest):
        n = tf.shape(names)[0]
        size = tf.cast(n, tf.int64)
        # Fast path: the whole batch decodes, or one error drops it (and the slow path runs).
        fast = (
            tf.data.Dataset.from_tensor_slices((sources, sample_ids))
            .map(flagged)
            .batch(size, drop_remainder=True)
            .ignore_errors()
        )
        # Slow path, run only when the fast one yields nothing: sample by sample, the
        # survivors scattered back to their positions (all zeros if none survives).
        slow = (
            tf.data.Dataset.from_tensor_slices((tf.range(n), sources, sample_ids))
            .map(lambda i, s, k: (i, preprocess(s, k)))
            .ignore_errors()
            .batch(size)
            .concatenate(
                tf.data.Dataset.from_tensors(
                    (tf.zeros([0], tf.int32), tf.zeros([0, *spec.shape], spec.dtype))
                )
            )
            .take(1)
            .map(
                lambda done, images: (
                    tf.scatter_nd(done[:, None], images, tf.concat([[n], spec.shape], 0)),
                    tf.logical_not(tf.scatter_nd(done[:, None], tf.ones_like(done, tf.bool), [n])),
                )
            )
        )
        decoded = fast.concatenate(slow).take(1)
        return tf.data.Dataset.zip((decoded, tf.data.Dataset.from_tensors((names, sources, *rest))))

    return decode


def decode_batches(dataset, preprocess, log=None, cycle_length=AUTOTUNE):
    """Decodes a dataset of batches without ever failing on a file.

    Args:
        dataset: elements `(sources [n], names [n], sample_ids [n], *rest)`: `sources` the paths
            or encoded bytes that `preprocess` takes (or a tuple of such batches, such as
            `(bytes, landmarks)`), `names` what a failure is reported as.
        preprocess: `fn(source, sample_id)` → a tensor of fully known shape.
        log: a `CorruptFileLog` that records the failures; None: they are printed to stderr.

    Returns:
        A dataset of `(images [n, ...], *rest)`, or of `images` where there is no rest, with a
        zero image for every sample that failed.
    """
    source_spec = dataset.element_spec[0]
    # Traced once, here, for its output's shape and for both paths of `_decode_one_batch`, which
    # call it; tracing it in each was a third of the time to build a pipeline.
    traced = tf.function(preprocess, autograph=False).get_concrete_function(
        tf.nest.map_structure(lambda s: tf.TensorSpec(s.shape[1:], s.dtype), source_spec),
        tf.TensorSpec([], tf.int64),
    )
    spec = tf.TensorSpec.from_tensor(traced.structured_outputs)
    preprocess = traced
    if not spec.shape.is_fully_defined():
        raise ValueError(f"preprocess must return a tensor of known shape; got {spec.shape}")
    decoded = dataset.interleave(
        _decode_one_batch(preprocess, spec),
        cycle_length=cycle_length,
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if log is None:
        log = _STDERR_LOG

    def record(decoded, batch):
        (images, failed), (names, sources, *rest) = decoded, batch
        images.set_shape([names.shape[0], *spec.shape])
        failed.set_shape(names.shape[:1])
        # Encoded images are kept for the diagnosis; positions (RecordIO) and paths are not needed.
        encoded = isinstance(sources, tf.Tensor) and sources.dtype == tf.string

        def write():
            log.record(names, failed, sources if encoded else None)
            return tf.constant(True)

        # The log's ops run only for a batch with a failure (almost never), not for every batch.
        tf.cond(tf.reduce_any(failed), write, lambda: tf.constant(False))
        return (images, *rest) if rest else images

    # Sequential on purpose: the log's variables are updated by one batch at a time.
    return decoded.map(record).with_options(_PIPELINE_OPTIONS)


def _checked_sources(sources, batch_size, from_bytes, names):
    """`(sources, names)` as lists of bytes or str and of str, or the error of a bad argument."""
    sources = [bytes(s) if from_bytes else str(s) for s in sources]
    if not sources:
        raise ValueError("sources must hold at least one image; got none")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    if names is None:
        names = [f"image[{i}]" for i in range(len(sources))] if from_bytes else sources
    names = [str(n) for n in names]
    if len(names) != len(sources):
        raise ValueError(f"names must give one name per source ({len(sources)}); got {len(names)}")
    return sources, names


def image_dataset(sources, batch_size=64, image_size=(112, 112), from_bytes=False, names=None,
                  resize_mode="resize", corrupt_files=None, prefetch=True):
    """Batches of images `[batch, height, width, 3]` (float32 in [0, 255]) in the given order.

    For embedding a list of images once each (evaluation): no shuffling, no augmentation, the
    last batch partial. A source that does not decode becomes a blank image, recorded in
    `corrupt_files`.

    Args:
        sources: file paths, or encoded images with `from_bytes`.
        batch_size: images per batch.
        image_size: `(height, width)`.
        from_bytes: whether `sources` are encoded images.
        names: what each source is called in reports (default: the path, or `image[i]`).
        resize_mode: `"resize"` or `"center_crop"`.
        corrupt_files: a `CorruptFileLog`, or None (failures are printed to stderr).
        prefetch: whether to end with `prefetch(AUTOTUNE)`.

    Returns:
        A `tf.data.Dataset` of float32 image batches `[batch, height, width, 3]` (no labels), one
        image per source in order, the last batch partial.
    """
    sources, names = _checked_sources(sources, batch_size, from_bytes, names)
    ds = tf.data.Dataset.from_tensor_slices((
        tf.constant(sources, tf.string),
        tf.constant(names, tf.string),
        tf.zeros([len(sources)], tf.int64),  # sample ids: no augmentation draws from them
    ))
    preprocess = make_preprocess(image_size, resize_mode, None, from_bytes=from_bytes)
    ds = decode_batches(ds.batch(batch_size), preprocess, corrupt_files)
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(sources) // batch_size)))
    return ds.prefetch(AUTOTUNE) if prefetch else ds


class ImageBatches:
    """Batches of decoded images as NumPy arrays, each source once and in order, for embedding.

    What `image_dataset` gives, for a Python loop (`embed`, the evaluation): `tf.data` decodes
    the images one by one in parallel, each with its position, and leaves out any that fails
    (`ignore_errors`); Python gathers them into batches, where a missing position is a source that
    did not decode: it becomes a blank image, recorded in `corrupt_files`. `image_dataset` must do
    this inside the graph, with a second pipeline in every batch for a batch with a failure; without
    it this one starts in a third of the time, which counts when a small set is evaluated
    (BENCHMARKS.md, "Evaluation, each image once").

    Iterating gives float32 arrays `[batch, height, width, 3]` in [0, 255], the last one partial;
    `len()` is the number of batches. Each iteration reads the images again.

    Args:
        sources: file paths, or encoded images with `from_bytes`.
        batch_size: images per batch.
        image_size: `(height, width)`.
        from_bytes: whether `sources` are encoded images.
        names: what each source is called in reports (default: the path, or `image[i]`).
        resize_mode: `"resize"` or `"center_crop"`.
        corrupt_files: a `CorruptFileLog`, or None (failures are printed to stderr).

    Example:

    ```python
    embeddings = evaluation.embed(embedder, ImageBatches(paths, image_size=(112, 112)))
    ```
    """

    def __init__(self, sources, batch_size=64, image_size=(112, 112), from_bytes=False,
                 names=None, resize_mode="resize", corrupt_files=None):
        sources, names = _checked_sources(sources, batch_size, from_bytes, names)
        self.batch_size = batch_size
        self.image_shape = (*check_image_size(image_size), 3)
        self._log = _STDERR_LOG if corrupt_files is None else corrupt_files
        preprocess = make_preprocess(image_size, resize_mode, None, from_bytes=from_bytes)
        # The encoded image is kept for the diagnosis where the source is not a file.
        self._parts = [(sources, names, sources if from_bytes else [b""] * len(sources),
                        preprocess)]

    def __len__(self):
        """The number of batches."""
        return -(-self.size // self.batch_size)

    @property
    def size(self):
        """The number of images."""
        return sum(len(part[0]) for part in self._parts)

    def concatenate(self, other):
        """These images, then `other`'s (same image size), in this one's batches and log.

        Args:
            other: an `ImageBatches`.

        Returns:
            A new `ImageBatches`.
        """
        if not isinstance(other, ImageBatches) or other.image_shape != self.image_shape:
            raise ValueError(
                f"other must be an ImageBatches of images {self.image_shape}; got "
                f"{getattr(other, 'image_shape', type(other).__name__)}"
            )
        out = copy.copy(self)
        out._parts = self._parts + other._parts
        return out

    def _dataset(self):
        """`(position, image)` for every source that decodes, in order; the others are left out."""
        dataset, offset = None, 0
        for sources, _, _, preprocess in self._parts:
            part = tf.data.Dataset.from_tensor_slices(
                (tf.range(offset, offset + len(sources), dtype=tf.int64), tf.constant(sources)))
            part = part.map(lambda i, s, f=preprocess: (i, f(s, 0)),
                            num_parallel_calls=AUTOTUNE, deterministic=True)
            dataset = part if dataset is None else dataset.concatenate(part)
            offset += len(sources)
        # A batch's worth decoded ahead, while the caller embeds the last one.
        return dataset.ignore_errors().prefetch(self.batch_size).with_options(_PIPELINE_OPTIONS)

    def __iter__(self):
        names = [n for part in self._parts for n in part[1]]
        encoded = [s for part in self._parts for s in part[2]]
        decoded = ((int(position), image) for position, image in self._dataset())
        ahead = next(decoded, None)
        for start in range(0, len(names), self.batch_size):
            stop = min(start + self.batch_size, len(names))
            batch = np.zeros((stop - start, *self.image_shape), np.float32)
            failed = np.ones(stop - start, bool)
            # A position missing from the dataset is a source that did not decode: it stays blank.
            while ahead is not None and ahead[0] < stop:
                position, image = ahead
                batch[position - start] = image.numpy()
                failed[position - start] = False
                ahead = next(decoded, None)
            if failed.any():
                self._log.record(tf.constant(names[start:stop]), tf.constant(failed),
                                 tf.constant(encoded[start:stop]) if any(encoded[start:stop])
                                 else None)
            yield batch


class CorruptFileLog(keras.callbacks.Callback):
    """Counts and names the files a pipeline could not decode; a Keras callback that logs them.

    Pass one to a dataset builder (`pk_dataset(..., corrupt_files=log)`) and to `model.fit`
    (`callbacks=[log]`): at the end of every epoch each new failure is logged as a warning with
    its path and the reason (the error TensorFlow gives when the file is decoded again), and
    `log.count` / `log.records` say how many and which. Each failed sample became a blank image,
    so training went on. Prefetching may decode a few batches of the next epoch early: their
    failures show up one epoch early.

    Create it outside any `tf.distribute` strategy scope: its counters belong to the input
    pipeline, not to the replicas.

    Images given as encoded bytes (an InsightFace `.bin`) are named `file[i]`; the bytes of the
    first `max_sources` failures are kept, so that their reason is that of the bytes.

    Args:
        max_paths: how many failing names are kept (the count goes on beyond it).
        max_sources: how many failing encoded images are kept for their diagnosis.
    """

    def __init__(self, max_paths=10_000, max_sources=100):
        super().__init__()
        for name, value in (("max_paths", max_paths), ("max_sources", max_sources)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
        self.max_paths = max_paths
        self.max_sources = max_sources
        with tf.device("/cpu:0"):
            self._count = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._names = tf.Variable(
                tf.zeros([0], tf.string), shape=tf.TensorShape([None]), trainable=False
            )
            # Aligned with _names: the encoded image where the source is not the name (a path).
            self._sources = tf.Variable(
                tf.zeros([0], tf.string), shape=tf.TensorShape([None]), trainable=False
            )
        self.records = []

    def record(self, names, failed, sources=None):
        """Records the failures of one batch; called inside the pipeline, in TensorFlow ops.

        Args:
            names: string `[n]`, what each sample is reported as.
            failed: bool `[n]`, which samples failed to decode.
            sources: string `[n]`, the encoded images (kept for the diagnosis of the first
                `max_sources` failures), or None where the names are the files' paths.
        """
        where = tf.where(failed)[:, 0]
        failed_names = tf.gather(names, where)
        room = tf.maximum(self.max_paths - tf.size(self._names), 0)
        kept = failed_names[:room]
        if sources is None:
            kept_sources = tf.fill(tf.shape(kept), "")
        else:
            failed_sources = tf.gather(sources, where)[:room]
            position = tf.size(self._names) + tf.range(tf.size(kept))
            keep = tf.logical_and(tf.not_equal(failed_sources, kept), position < self.max_sources)
            kept_sources = tf.where(keep, failed_sources, tf.fill(tf.shape(kept), ""))
        self._names.assign(tf.concat([self._names, kept], 0))
        self._sources.assign(tf.concat([self._sources, kept_sources], 0))
        self._count.assign_add(tf.size(failed_names, out_type=tf.int64))

    @property
    def count(self):
        """Samples that failed to decode so far (a file that fails twice counts twice)."""
        return int(self._count.numpy())

    def collect(self):
        """Diagnoses and logs the failures recorded since the last call.

        Returns:
            The new failures as a list of `CorruptFile(path, reason)` (also appended to
            `records`).
        """
        start = len(self.records)
        names = [n.decode("utf-8", "replace") for n in self._names.numpy()[start:]]
        sources = list(self._sources.numpy()[start:])
        new = [CorruptFile(name, diagnose(name, source or None))
               for name, source in zip(names, sources, strict=True)]
        for item in new:
            logger.warning(
                "corrupt or unreadable image replaced by a blank: %s (%s)", item.path, item.reason
            )
        self.records.extend(new)
        return new

    def reset(self):
        """Forgets every failure recorded so far: the count, the names and `records`."""
        self._count.assign(0)
        self._names.assign(tf.zeros([0], tf.string))
        self._sources.assign(tf.zeros([0], tf.string))
        self.records = []

    def on_epoch_end(self, epoch, logs=None):
        new = self.collect()
        if new or self.count > len(self.records):
            logger.warning(
                "epoch %d: %d samples so far could not be decoded and were blank",
                epoch + 1,
                self.count,
            )


class _StderrLog:
    """Without a `CorruptFileLog`, failures still show: one line on stderr per batch with one.

    `decode_batches` calls `record` only for a batch where a sample failed."""

    def record(self, names, failed, sources=None):
        failed_names = tf.gather(names, tf.where(failed)[:, 0])
        tf.print(
            "keras_facemargin.data:",
            tf.size(failed_names),
            "images could not be decoded and were replaced by blanks (pass a CorruptFileLog "
            "to count them and see why):",
            failed_names,
            summarize=-1,
            output_stream=sys.stderr,
        )


_STDERR_LOG = _StderrLog()


def decode_error(contents):
    """TensorFlow's error for encoded image bytes that do not decode, or None if they do."""
    try:
        decode_rgb(contents)
    except tf.errors.OpError as error:
        return f"{type(error).__name__}: {error.message}"
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def diagnose_bytes(contents):
    """Why encoded image bytes do not decode (TensorFlow's error); for reports only."""
    reason = decode_error(contents)
    return reason or "failed in the pipeline but decodes now"


def diagnose(path, contents=None):
    """Why `path` (a file, or a record `file.rec[key]`) does not decode, found eagerly; for
    reports only. `contents`: the encoded image the pipeline had, where it is not a file (an
    InsightFace `.bin`'s images)."""
    record = recordio.describe_record(path)
    if record is not None:
        return record
    if contents is not None:
        return diagnose_bytes(contents)
    try:
        contents = tf.io.read_file(path)
    except tf.errors.OpError as error:
        return f"{type(error).__name__}: {error.message}"
    reason = decode_error(contents)
    if reason is None:
        return "failed in the pipeline but decodes now (was the file replaced?)"
    return reason


def find_corrupt_files(paths, batch_size=256, num_parallel_calls=None):
    """The files among `paths` that do not decode, each logged as a warning.

    Every file is read and decoded once in `tf.data` (decoding only, no resizing), so a large
    folder is checked at the speed of the input pipeline; use it before training to clean a set.

    Args:
        paths: image file paths.
        batch_size: files decoded per batch of the pipeline.
        num_parallel_calls: how many batches are decoded at once; None: `tf.data.AUTOTUNE`.

    Returns:
        A list of `CorruptFile(path, reason)`, in the order of `paths`; empty if every file decodes.
    """
    paths = np.asarray(paths, dtype=object)
    if paths.size == 0:
        return []
    log = CorruptFileLog(max_paths=len(paths))

    def shape_only(source, sample_id):
        return tf.shape(decode_rgb(tf.io.read_file(source)))

    ds = tf.data.Dataset.from_tensor_slices(paths.astype(str)).batch(batch_size)
    ds = ds.map(lambda p: (p, p, tf.zeros_like(p, tf.int64)))
    cycle = AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    for _ in decode_batches(ds, shape_only, log, cycle_length=cycle):
        pass
    return log.collect()


def find_corrupt_records(index, batch_size=256, num_parallel_calls=None):
    """The images of a RecordIO `index` that cannot be read or decoded, as `CorruptFile`s
    `(name, reason)` with each record's key and byte offset in the reason, each logged."""
    if len(index) == 0:
        return []
    source = IndexSource(index)
    log = CorruptFileLog(max_paths=len(index))

    def shape_only(contents, sample_id):
        return tf.shape(decode_rgb(contents))

    ds = tf.data.Dataset.from_tensor_slices(np.arange(len(index), dtype=np.int64)).batch(batch_size)
    ds = ds.map(lambda p: (*_contents_only(source.read(p)), tf.zeros_like(p)))
    cycle = AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    for _ in decode_batches(ds, shape_only, log, cycle_length=cycle):
        pass
    return log.collect()


def _contents_only(read):
    sources, names = read
    return (sources[0] if isinstance(sources, tuple) else sources), names
