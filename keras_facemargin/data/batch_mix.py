"""`BatchMix`: one of Keras's MixUp, CutMix or RandomErasing (cutout) per batch, or none."""

import keras
import numpy as np
import tensorflow as tf


def _probability(name, value):
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}")
    return float(value)


class BatchMix:
    """Applies to each batch one of `keras.layers.MixUp`, `keras.layers.CutMix` and
    `keras.layers.RandomErasing` (cutout), chosen with the given probabilities, or nothing.

    It runs inside `tf.data` on batches of `images` `[batch, height, width, 3]` (float, in
    `value_range`) and dense one-hot `labels` `[batch, num_classes]`; mixup and cutmix turn the
    labels into mixtures (rows that sum to 1), which every margin-softmax loss accepts as
    `y_true`. Cutout leaves the labels as they are. The layers are Keras's own; this class only
    picks one per batch. Use it through `classification_dataset(..., mix=BatchMix(...))`, which
    makes the labels one-hot. It cannot be used with P×K batches: pair losses need one identity
    per image.

    Args:
        mixup: probability of mixup for a batch.
        cutmix: probability of cutmix.
        cutout: probability of random erasing (every image of the batch gets one patch erased).
        mixup_alpha: `alpha` of `keras.layers.MixUp`.
        cutmix_factor: `factor` of `keras.layers.CutMix`.
        cutout_scale: `scale` of `keras.layers.RandomErasing` (the erased area fraction).
        cutout_fill_value: `fill_value` of `keras.layers.RandomErasing` (None: noise).
        value_range: the images' value range, `(0, 255)` for this package's pipelines.
        seed: seed of the choice and of the layers.

    Example:

    ```python
    mix = BatchMix(mixup=0.3, cutmix=0.3, cutout=0.2)
    ds = classification_dataset(index, batch_size=128, mix=mix)
    model.compile(loss=keras_facemargin.losses.ArcFaceLoss(), optimizer="sgd")
    ```
    """

    def __init__(
        self,
        mixup=0.0,
        cutmix=0.0,
        cutout=0.0,
        mixup_alpha=0.2,
        cutmix_factor=1.0,
        cutout_scale=(0.02, 0.33),
        cutout_fill_value=None,
        value_range=(0, 255),
        seed=0,
    ):
        self.mixup = _probability("mixup", mixup)
        self.cutmix = _probability("cutmix", cutmix)
        self.cutout = _probability("cutout", cutout)
        total = self.mixup + self.cutmix + self.cutout
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"mixup + cutmix + cutout must be <= 1 (one per batch at most); got {total:g}"
            )
        self.seed = int(seed)
        self.mixup_alpha = mixup_alpha
        self.cutmix_factor = cutmix_factor
        self.cutout_scale = cutout_scale
        self.cutout_fill_value = cutout_fill_value
        self.value_range = value_range
        self.layers = [
            keras.layers.MixUp(alpha=mixup_alpha, seed=self.seed),
            keras.layers.CutMix(factor=cutmix_factor, seed=self.seed + 1),
            keras.layers.RandomErasing(
                factor=(1.0, 1.0),
                scale=cutout_scale,
                fill_value=cutout_fill_value,
                value_range=value_range,
                seed=self.seed + 2,
            ),
        ]
        self._logits = np.log(
            np.maximum([self.mixup, self.cutmix, self.cutout, max(1.0 - total, 0.0)], 1e-30)
        ).astype(np.float32)

    def __repr__(self):
        return f"BatchMix(mixup={self.mixup}, cutmix={self.cutmix}, cutout={self.cutout})"

    def __call__(self, images, labels, batch_number=0):
        """`(images, labels)` of one batch → mixed `(images, labels)`; `batch_number` (with the
        seed) decides which layer, so the choice does not depend on the pipeline's timing."""
        if len(labels.shape) != 2 or not labels.dtype.is_floating:
            raise ValueError(
                "labels must be dense one-hot rows [batch, num_classes] (float) for "
                "mixup/cutmix/cutout, as classification_dataset(..., mix=...) makes them; got "
                f"{labels.dtype.name} labels of shape {labels.shape}. P×K batches for pair "
                "losses cannot be mixed: a pair loss needs one identity per image."
            )
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(batch_number, tf.int64)])
        choice = tf.random.stateless_categorical(self._logits[None], 1, seed=seed)[0, 0]

        def branch(layer):
            def run():
                out = layer({"images": images, "labels": labels}, training=True)
                return (tf.cast(out["images"], images.dtype), tf.cast(out["labels"], labels.dtype))

            return run

        branches = [branch(layer) for layer in self.layers] + [lambda: (images, labels)]
        images_out, labels_out = tf.switch_case(tf.cast(choice, tf.int32), branches)
        images_out.set_shape(images.shape)
        labels_out.set_shape(labels.shape)
        return images_out, labels_out
