"""Experiments: objectives trained and measured the same way wherever objectives are compared.

`examples/demo.py`, `examples/feature_space.py` and `benchmarks/loss_table.py` compare training
objectives; this module is what they share, so that a comparison differs only in the objective.
Every run goes through the one training assembly, `keras_facemargin.recipe.train`.

- `open_set_split`: training identities, held-out images of them (closed set), and balanced
  verification pairs of other identities that training never sees (open set, as in face
  verification).
- `train_objective`: a fresh model trained by `recipe.train` with one objective: plain softmax
  (a `Dense` head and cross-entropy), a margin-softmax loss (a `CosineHead`) or a pair loss (on
  the embeddings), by name.
- `digit_images` / `digit_folder`: scikit-learn's bundled handwritten digits, a real data set
  that needs no download, as arrays or as an image folder.

It needs TensorFlow (`tf.data`) for the image folders.
"""

import argparse
import dataclasses
import math
import os
import tempfile

import keras
import numpy as np

from keras_facemargin import config as config_lib

SOFTMAX = config_lib.SOFTMAX


def objective_names():
    """The objectives `train_objective` takes.

    Returns:
        A tuple: `"softmax"` (Dense + cross-entropy), then the margin-softmax losses' names,
        then the pair losses' names.
    """
    return config_lib.LOSSES


def is_classifier(objective):
    """Whether `objective` trains a classifier over the training identities.

    Args:
        objective: one of `objective_names()`.

    Returns:
        True for softmax and the margin-softmax losses (a head over the identities), False for
        the pair losses (trained on the embeddings of P×K batches).
    """
    if objective not in objective_names():
        raise ValueError(f"objective must be one of {', '.join(objective_names())}; got {objective!r}")
    return objective not in config_lib.PAIR_LOSSES


def _check_objective(objective):
    if objective not in objective_names():
        raise ValueError(f"objective must be one of {', '.join(objective_names())}; got {objective!r}")


@dataclasses.dataclass
class TrainedObjective:
    """What `train_objective` returns.

    Attributes:
        objective: the objective's name, as given.
        model: the trained model (with its head, if any); None if training diverged.
        embedder: the model from images to embeddings; None if training diverged.
        seconds: the wall time of `fit`; NaN if training diverged.
        final_loss: the last epoch's training loss; NaN if training diverged.
        config: the run's `TrainConfig`, with every "auto" resolved (as given, if training
            diverged).
    """

    objective: str
    model: keras.Model
    embedder: keras.Model
    seconds: float
    final_loss: float
    config: object = None

    @property
    def is_classifier(self):
        return is_classifier(self.config.loss if self.config is not None else self.objective)


def train_objective(objective, index, epochs, seed=0, run_dir=None, make_backbone=None, verbose=0,
                    **settings):
    """Trains one objective on `index` from a fresh model, through `recipe.train`.

    Every objective of a comparison goes through here, so they differ only in the objective and
    in what `settings` give: the same seed (initial weights, sampling, augmentation), the same
    recipe for everything left "auto".

    Args:
        objective: one of `objective_names()`.
        index: the `data.ImageIndex` to train on.
        epochs: training epochs.
        seed: the run's seed.
        run_dir: the run folder; None: a temporary folder, removed afterwards.
        make_backbone: a function of no arguments that builds the backbone, instead of the
            recipe's (or `settings["backbone"]`'s) registered one.
        verbose: `fit`'s verbosity.
        **settings: further `TrainConfig` fields (`image_size`, `learning_rate`, `scale`, ...).

    Returns:
        A `TrainedObjective`: the models, the `fit` wall time in seconds, the last epoch's loss
        (NaN if training diverged) and the resolved `TrainConfig`.

    Example:

    ```python
    split = open_set_split(data.ImageIndex.from_directory("faces"), seed=0)
    trained = train_objective("cosface", split.train, epochs=10, image_size=64, scale=30.0)
    ```
    """
    from keras_facemargin import recipe
    from keras_facemargin.training import TrainingDiverged

    _check_objective(objective)
    data_root = os.path.commonpath([os.path.dirname(str(p)) for p in index.paths[:1000]])
    config = config_lib.TrainConfig(data=data_root, loss=objective, epochs=epochs, seed=seed, **settings)
    with tempfile.TemporaryDirectory() as tmp:
        config.run_dir = run_dir or os.path.join(tmp, "run")
        try:
            run = recipe.train(config, given={"loss"}, verbose=verbose, export=False, index=index,
                               backbone=make_backbone)
        except TrainingDiverged:
            return TrainedObjective(objective, None, None, math.nan, math.nan, config)
    losses = run.history.history.get("loss") if run.history is not None else None
    final_loss = float(losses[-1]) if losses else math.nan
    return TrainedObjective(objective, run.model, run.embedder, run.seconds, final_loss, run.config)


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
        """The verification pairs as a `data.VerificationPairs`.

        Returns:
            `VerificationPairs` of the unseen identities' file paths, named "unseen pairs".
        """
        from keras_facemargin import data

        a, b, is_same = self.pairs
        paths = self.unseen.paths
        return data.VerificationPairs(paths[a], paths[b], is_same, name="unseen pairs")

    def describe(self):
        """The split in one line, for logs and reports.

        Returns:
            A string with the identities, images and pairs of each part.
        """
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


def digit_folder(root, size=32):
    """scikit-learn's digits written as PNG files, `root/<digit>/<n>.png`, and their ImageIndex.

    An existing folder with all 1,797 images is reused.

    Args:
        root: the folder to write.
        size: height and width, a multiple of 8 (see `digit_images`).

    Returns:
        The `data.ImageIndex` of the folder (labels 0-9 are the digits).
    """
    from PIL import Image

    from keras_facemargin.data import ImageIndex

    images, labels = digit_images(size)
    paths = [os.path.join(root, str(label), f"{n:04d}.png") for n, label in enumerate(labels)]
    if not all(os.path.exists(p) for p in paths):
        for path, image in zip(paths, images, strict=True):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(image).save(path)
    index = ImageIndex.from_directory(root)
    if len(index) != len(paths):
        raise ValueError(f"root {root!r} holds other images besides the digits; use an empty folder")
    return index


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
    """An `argparse` type for the experiment scripts: an integer >= 1.

    Args:
        text: the command-line value.

    Returns:
        The int; anything else is an `argparse.ArgumentTypeError`, which argparse reports.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}")
    return value


def fraction(text):
    """An `argparse` type for the experiment scripts: a number in (0, 1).

    Args:
        text: the command-line value.

    Returns:
        The float; anything else is an `argparse.ArgumentTypeError`, which argparse reports.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {text!r}")
    return value
