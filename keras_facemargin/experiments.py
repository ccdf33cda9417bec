"""Experiments: one objective trained and measured the same way wherever objectives are compared.

`examples/demo.py`, `examples/feature_space.py` and `benchmarks/loss_table.py` compare training
objectives; this module is what they share, so that a comparison differs only in the objective.

- `open_set_split`: training identities, held-out images of them (closed set), and balanced
  verification pairs of other identities that training never sees (open set, as in face
  verification).
- `build_objective` / `train_objective`: a fresh backbone trained with plain softmax (a `Dense`
  layer and cross-entropy), a margin-softmax loss (a `CosineHead`) or a pair loss (on the
  embeddings), by name.
- `digit_images`: scikit-learn's bundled handwritten digits as RGB images, a real data set that
  needs no download.

It needs TensorFlow (`tf.data`) for the image folders.
"""

import argparse
import dataclasses
import math
import time

import keras
import numpy as np

from keras_facemargin import losses
from keras_facemargin.models.recognizer import build_recognizer

SOFTMAX = "softmax"


def objective_names():
    """`"softmax"` (Dense + cross-entropy) and every registered loss name."""
    return (SOFTMAX, *losses.names())


def is_classifier(objective):
    """Whether `objective` trains a classifier over the training identities (softmax or a
    margin-softmax loss), as opposed to a pair loss on the embeddings of P×K batches."""
    _check_objective(objective)
    return objective == SOFTMAX or isinstance(losses.get(objective), losses.MarginSoftmaxLoss)


def _check_objective(objective):
    if objective not in objective_names():
        raise ValueError(f"objective must be one of {', '.join(objective_names())}; got {objective!r}")


def build_objective(objective, backbone, num_classes=None, **loss_kwargs):
    """The training model, embedding model and loss of one objective around `backbone`.

    Args:
        objective: one of `objective_names()`. `"softmax"` puts a `keras.layers.Dense` over the
            embedding and trains it with `SparseCategoricalCrossentropy(from_logits=True)`; a
            margin-softmax loss puts a `CosineHead` there; a pair loss trains the embedding itself.
        backbone: a Keras model from scaled images to embeddings (see `build_recognizer`).
        num_classes: training identities; needed by the classifiers, ignored by pair losses.
        **loss_kwargs: the loss's constructor arguments (none for `"softmax"`).

    Returns:
        `(model, embedder, loss)`: `model` for `fit` (images in [0, 255]), `embedder` from images
        to `[batch, dim]` embeddings (sharing weights with `model`), and the loss to compile with.

    Example:

    ```python
    backbone = keras_facemargin.models.get_backbone("simple_cnn", input_shape=(64, 64, 3))
    model, embedder, loss = build_objective("cosface", backbone, num_classes=980, scale=30.0)
    ```
    """
    classifier = is_classifier(objective)
    if classifier and (num_classes is None or num_classes < 2):
        raise ValueError(f"num_classes must be an integer >= 2 for {objective!r}; got {num_classes!r}")
    if objective == SOFTMAX:
        if loss_kwargs:
            raise ValueError(f"the softmax objective takes no loss arguments; got {loss_kwargs}")
        _, embedder = build_recognizer(backbone)
        logits = keras.layers.Dense(num_classes, name="softmax_logits")(embedder.output)
        model = keras.Model(embedder.input, logits, name="softmax_classifier")
        return model, embedder, keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model, embedder = build_recognizer(backbone, num_classes if classifier else None)
    return model, embedder, losses.get(objective, **loss_kwargs)


@dataclasses.dataclass
class TrainedObjective:
    """What `train_objective` returns."""

    objective: str
    model: keras.Model
    embedder: keras.Model
    seconds: float
    final_loss: float

    @property
    def is_classifier(self):
        return is_classifier(self.objective)


def train_objective(objective, make_backbone, num_classes, fit_args, epochs, seed=0, learning_rate=2e-3,
                    loss_kwargs=None):
    """Trains one objective from a fresh backbone with Adam, deterministically from `seed`.

    Every objective of a comparison goes through here, so they differ only in the objective:
    the same seed (the backbone's initial weights), the same optimizer and learning rate, and the
    data and number of steps that `fit_args` and `epochs` give.

    Args:
        objective: one of `objective_names()`.
        make_backbone: a function of no arguments that builds a new backbone (called after the
            seed is set).
        num_classes: training identities (for the classifiers).
        fit_args: the data arguments of `model.fit`: `{"x": dataset}` or `{"x": images, "y":
            labels, "batch_size": n}`.
        epochs: training epochs.
        seed: seeds Keras, NumPy and Python before the backbone is built.
        learning_rate: a float or a `keras.optimizers.schedules.LearningRateSchedule`.
        loss_kwargs: the loss's constructor arguments.

    Returns:
        A `TrainedObjective`: the models, the `fit` wall time in seconds and the last epoch's
        loss (NaN if training diverged; `keras.callbacks.TerminateOnNaN` stops it then).
    """
    keras.utils.set_random_seed(seed)
    model, embedder, loss = build_objective(objective, make_backbone(), num_classes, **(loss_kwargs or {}))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    start = time.perf_counter()
    history = model.fit(**fit_args, epochs=epochs, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    seconds = time.perf_counter() - start
    final_loss = float(history.history["loss"][-1]) if history.history.get("loss") else float("nan")
    return TrainedObjective(objective, model, embedder, seconds, final_loss)


@dataclasses.dataclass
class OpenSetSplit:
    """An image folder split for open-set verification (see `open_set_split`).

    Attributes:
        train: the images to train on, of the training identities (labels `0..C-1`).
        held_out: other images of the training identities, with the same labels (closed-set
            classification), or None when none were held out.
        unseen: the images of the identities that training never sees.
        pairs: `(positions_a, positions_b, is_same)` into `unseen`, balanced (see
            `ImageIndex.sample_pairs`).
    """

    train: object
    held_out: object
    unseen: object
    pairs: tuple

    def verification_pairs(self):
        """The pairs as a `data.VerificationPairs` of file paths."""
        from keras_facemargin import data

        a, b, is_same = self.pairs
        paths = self.unseen.paths
        return data.VerificationPairs(paths[a], paths[b], is_same, name="unseen pairs")

    def describe(self):
        """One line: identities, images and pairs of each part."""
        held = f", {len(self.held_out)} held-out images of them" if self.held_out is not None else ""
        return (f"{self.train.num_classes} training identities ({len(self.train)} images{held}); "
                f"{len(self.pairs[2])} verification pairs ({int(self.pairs[2].sum())} genuine) of "
                f"{self.unseen.num_classes} unseen identities ({len(self.unseen)} images)")


def open_set_split(index, unseen_fraction=0.3, held_out_fraction=None, num_pairs=6000, seed=0):
    """Splits an `ImageIndex` by identity for open-set verification, all from `seed`.

    A fraction of the identities is unseen: no image of theirs is trained on, and the balanced
    verification pairs are drawn among them. Of the training identities' images,
    `held_out_fraction` per identity (at least one image of each identity stays in training) is
    kept back to measure closed-set classification.

    Args:
        index: a `data.ImageIndex`.
        unseen_fraction: fraction of the identities that are unseen, in (0, 1).
        held_out_fraction: fraction of each training identity's images held out, in (0, 1), or
            None for none.
        num_pairs: verification pairs wanted (fewer when the unseen identities have fewer distinct
            genuine pairs: see `ImageIndex.sample_pairs`).
        seed: seed of the split and of the pairs.

    Returns:
        An `OpenSetSplit`.

    Example:

    ```python
    index = keras_facemargin.data.ImageIndex.from_directory("faces")
    split = open_set_split(index, unseen_fraction=0.3, held_out_fraction=0.25, seed=0)
    ```
    """
    counts = index.class_counts()
    if index.num_classes < 4:
        raise ValueError(
            "an open-set split needs at least 4 identities (2 to train on, 2 unseen for the "
            f"verification pairs); got {index.num_classes} in {index}"
        )
    train, unseen = index.split_identities(test_fraction=unseen_fraction, seed=seed)
    if train.num_classes < 2 or unseen.num_classes < 2:
        raise ValueError(
            f"unseen_fraction={unseen_fraction} leaves {train.num_classes} training and "
            f"{unseen.num_classes} unseen identities of {index.num_classes}; expected at least 2 of each"
        )
    if unseen.class_counts().max() < 2:
        raise ValueError(
            f"the unseen identities need an identity with at least 2 images for genuine pairs; got "
            f"{unseen} with one image each (the data set has at most {counts.max()} per identity)"
        )
    held_out = None
    if held_out_fraction is not None:
        train, held_out = train.split_images(held_out_fraction, seed=seed)
        held_out = held_out if len(held_out) else None
    return OpenSetSplit(train, held_out, unseen, unseen.sample_pairs(num_pairs, seed=seed))


def digit_images(size=32):
    """scikit-learn's bundled handwritten digits (1,797 real 8×8 images, classes 0-9) as RGB.

    Args:
        size: output height and width, a multiple of 8 (each pixel is repeated).

    Returns:
        `(images, labels)`: uint8 `[1797, size, size, 3]` and int `[1797]`.
    """
    from sklearn.datasets import load_digits

    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size must be a multiple of 8 (the digits are 8x8); got {size!r}")
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((size // 8, size // 8)))
    images = np.repeat((images * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    return images, digits.target


def positive_int(text):
    """An `argparse` type for the experiment scripts: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}")
    return value


def fraction(text):
    """An `argparse` type for the experiment scripts: a number in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {text!r}")
    return value
