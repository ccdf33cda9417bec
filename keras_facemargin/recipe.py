"""The one way a training run is put together: a `TrainConfig` in, a trained, exported run out.

    config = TrainConfig(data="faces/train", image_size=112, epochs=20)
    run = recipe.train(config)          # what `facemargin train` does
    run.embedder, run.export_path, run.config   # the resolved configuration

`train` checks everything it can before any work starts (the flags, the data, the pair files,
the run and export folders, batch sizes against the data), then builds the dataset, the model,
the optimizer with its schedule and the callbacks, trains through `fit_resumable` (a killed run
resumes with the same call) and exports the embedder. The command line, the loss table, the
quality benchmark and `make demo` all train through it, so a change of recipe reaches each.

The "auto" values of a `TrainConfig` are decided from the data by `resolve`, in the rules the
README lists under "Training recipe".
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil

import numpy as np

from keras_facemargin import config as config_lib
from keras_facemargin.config import AUTO, PAIR_LOSSES, SOFTMAX, TrainConfig

logger = logging.getLogger(__name__)

_EXPORT_MARK = "facemargin_run.json"
_VALIDATION_FARS = (1e-3, 1e-2)

# Face-scale training: the published ArcFace recipe (Deng et al. 2019; InsightFace arcface_torch).
FACE_SCALE_IMAGE_SIZE = 96
FACE_SCALE_IDENTITIES = 10_000


@dataclasses.dataclass
class Run:
    """What `train` returns.

    Attributes:
        config: the resolved `TrainConfig` (no "auto" left), as saved in `run_dir/config.json`.
        model: the trained training model (backbone and head).
        embedder: the model from images (float32 in [0, 255]) to embeddings.
        history: the `keras.callbacks.History` of this process's part of the run.
        export_path: the SavedModel folder written, or None.
        index: the `ImageIndex` trained on.
        validation: the validation `VerificationPairs` (or None).
        seconds: wall time of `fit` in this process.
        warnings: the notes about ignored flags.
    """

    config: TrainConfig
    model: object
    embedder: object
    history: object
    export_path: str | None
    index: object
    validation: object
    seconds: float
    warnings: list


def face_scale(image_size, num_classes):
    """Whether the published face recipe applies: images of >= 96 px and >= 10,000 identities.

    At face scale `resolve` follows the published ArcFace recipe (iresnet50, SGD, scale 64,
    cosine decay, flips only); below it, choices that suit small data sets. The rule
    looks at the size and the number of identities only: it cannot tell faces from other images.

    Args:
        image_size: height and width of the training images (`TrainConfig.image_size`).
        num_classes: identities in the training data.

    Returns:
        A bool.
    """
    return image_size >= FACE_SCALE_IMAGE_SIZE and num_classes >= FACE_SCALE_IDENTITIES


def auto_scale(num_classes):
    """The scale s of a margin loss when none is given, below face scale.

    AdaCos's fixed rule √2·ln(C − 1), raised to at least 16 and rounded to two decimals (C − 1 is
    taken as at least 2). At face scale `resolve` uses the published 64 instead.

    Args:
        num_classes: C, identities in the training data.

    Returns:
        The scale, a float >= 16.
    """
    return round(max(16.0, math.sqrt(2.0) * math.log(max(num_classes - 1, 2))), 2)


def resolve(config, num_classes, num_images):
    """A copy of `config` with every "auto" value decided from the data.

    The rules are given field by field in `TrainConfig`'s docstring. Most follow `face_scale`;
    the scale and the batch also depend on the loss. A value that is not
    "auto" is kept, except that a pair loss's `batch_size` is always `classes_per_batch *
    samples_per_class`.

    Args:
        config: a checked `TrainConfig`.
        num_classes: identities in the training data.
        num_images: images in the training data.

    Returns:
        A new `TrainConfig` with no "auto" left; `config` is not changed.
    """
    config = dataclasses.replace(config)
    faces = face_scale(config.image_size, num_classes)

    def auto(name, value):
        if getattr(config, name) == AUTO:
            setattr(config, name, value)

    pair = config.loss in PAIR_LOSSES
    auto("backbone", "iresnet50" if faces else ("iresnet18" if config.image_size >= 96 else "small_vgg"))
    auto("embedding_dim", 512 if config.image_size >= 96 else 128)
    takes_scale = config.loss in config_lib.LOSS_FLAGS["scale"]
    auto("scale", (64.0 if faces else auto_scale(num_classes)) if takes_scale else None)
    if not takes_scale:
        config.scale = None if config.scale == AUTO else config.scale
    # Below face scale, 64: a short run on few images gains from the extra steps.
    auto("batch_size", 128 if faces else (64 if num_images >= 256 else max(2, num_images // 4)))
    auto("classes_per_batch", max(2, min(128 // config.samples_per_class, num_classes)))
    auto("optimizer", "sgd" if faces else "adam")
    auto("learning_rate", 0.1 if config.optimizer == "sgd" else 1e-3)
    auto("weight_decay", {"sgd": 5e-4, "adamw": 5e-2, "adam": 0.0}[config.optimizer])
    auto("warmup_epochs", 0.0)
    auto("schedule", "cosine" if faces else "constant")
    auto("augment", ["flip"] if faces else ["translate", "zoom", "contrast"])
    if pair:
        config.batch_size = config.classes_per_batch * config.samples_per_class
    return config


# ---- checks before any work ------------------------------------------------------------------


def _load_index(config):
    from keras_facemargin.data import ImageIndex

    try:
        if config.data.endswith(".rec"):
            index = ImageIndex.from_recordio(config.data)
        else:
            index = ImageIndex.from_directory(config.data)
    except ValueError as error:
        raise ValueError(f"--data {config.data!r}: {error}") from None
    if config.merge_identities:
        from keras_facemargin.data import read_identity_groups

        groups = read_identity_groups(config.merge_identities, argument="--merge-identities")
        try:
            merged = index.merge_classes(groups)
        except ValueError as error:
            raise ValueError(f"--merge-identities {config.merge_identities!r}: {error}") from None
        logger.info("--merge-identities: %d groups join %d identities; %d of %d identities train",
                    len(groups), sum(len(g) for g in groups), merged.num_classes, index.num_classes)
        index = merged
    if config.min_images > 1:
        index = index.filter_min_images(config.min_images)
    if index.num_classes < 2:
        raise ValueError(f"--data {config.data!r} must hold at least 2 identities; got {index.num_classes}")
    return index


def _read_validation(config, index):
    """`(training index, validation pairs or None)`: a `PairSets` of the --val-pairs files, or
    `VerificationPairs` of held-out identities."""
    if config.val_pairs:
        from keras_facemargin.evaluation import read_pair_sets

        return index, read_pair_sets(config.val_pairs, root=config.val_root, argument="--val-pairs")
    if not config.val_fraction:
        return index, None
    from keras_facemargin.data import VerificationPairs

    train, held = index.split_identities(test_fraction=config.val_fraction, seed=config.seed)
    if train.num_classes < 2 or held.class_counts().max() < 2:
        raise ValueError(
            f"--val-fraction {config.val_fraction} leaves {train.num_classes} training identities and "
            f"{held.num_classes} validation identities with at most {held.class_counts().max()} images "
            "each; expected at least 2 of each and an identity with 2 images")
    a, b, same = held.sample_pairs(6000, seed=config.seed)
    return train, VerificationPairs(held.paths[a], held.paths[b], same, name="validation identities")


def validation_metrics(validation):
    """The keys that a run's validation writes into each epoch's logs (and `log.csv`), the
    values `TrainConfig.keep_best` may take.

    Args:
        validation: what `prepare` returns for it: `VerificationPairs` of held-out identities
            (`--val-fraction`), a `PairSets` (`--val-pairs`), or None.

    Returns:
        A list of names: `val_auc`, `val_eer`, `val_accuracy_10fold`, `val_best_accuracy`,
        `val_tar@far=1e-3` and `val_tar@far=1e-2` for held-out identities; the same per set,
        `val_<set>_auc`, ..., plus `val_<set>_accuracy_10fold_insightface`, for pair files;
        none without validation.
    """
    from keras_facemargin.data import VerificationPairs
    from keras_facemargin.evaluation.verification import far_name

    if validation is None:
        return []
    metrics = ["auc", "eer", "accuracy_10fold", "best_accuracy",
               *(f"tar@far={far_name(far)}" for far in _VALIDATION_FARS)]
    if isinstance(validation, VerificationPairs):
        return [f"val_{m}" for m in metrics]
    return [f"val_{name}_{m}" for name in validation.names
            for m in (*metrics, "accuracy_10fold_insightface")]


def _keep_best_warnings(metric, validation):
    """A warning when `--keep-best` is a TAR at a FAR below one impostor pair of its set: the
    TAR is then that of FAR 0, set by the single highest-scoring impostor."""
    from keras_facemargin.data import VerificationPairs
    from keras_facemargin.evaluation.verification import far_name

    if not metric or "_tar@far=" not in metric:
        return []
    if isinstance(validation, VerificationPairs):
        is_same = validation.is_same
    else:
        is_same = next(same for name, (_, _, same, _) in validation.sets.items()
                       if metric.startswith(f"val_{name}_tar@far="))
    far = float(metric.rsplit("=", 1)[1])
    impostors = int(np.sum(~is_same))
    if far * impostors >= 1:
        return []
    return [f"--keep-best {metric}: the validation pairs hold {impostors} impostor pairs, fewer than "
            f"the {math.ceil(1 / far)} that FAR={far_name(far)} needs; the epochs are then ranked by "
            "the single highest-scoring impostor pair (an AUC or EER, or more pairs, ranks them "
            "better)"]


def _check_data_fits(config, index):
    if config.loss in PAIR_LOSSES:
        usable = int((index.class_counts() >= 1).sum())
        if config.classes_per_batch > usable:
            raise ValueError(f"--classes-per-batch must be <= the {usable} identities of --data; got "
                             f"{config.classes_per_batch}")
    elif config.batch_size > len(index):
        raise ValueError(f"--batch-size must be <= the {len(index)} training images of --data; got "
                         f"{config.batch_size}")
    if config.sample_rate != 1.0:
        sampled = math.ceil(config.sample_rate * index.num_classes)
        needed = min(config.batch_size, index.num_classes)
        if sampled < needed:
            raise ValueError(
                f"--sample-rate {config.sample_rate} samples {sampled} of {index.num_classes} classes per "
                f"step, fewer than the up to {needed} distinct identities of a batch of {config.batch_size}; "
                f"expected --sample-rate >= {needed / index.num_classes:.3g}")


def default_export_path(config):
    """The folder `train` exports the embedder to: `config.export`, else `run_dir/saved_model`.

    Args:
        config: a `TrainConfig`.

    Returns:
        The path, as given (not made absolute).
    """
    return config.export or os.path.join(config.run_dir, "saved_model")


def _check_folders(config, saved_config):
    from keras_facemargin import _checks
    from keras_facemargin.training import check_run_config

    _checks.check_writable_dir("--run-dir", config.run_dir)
    check_run_config(config.run_dir, saved_config, write=False, name="--run-dir")
    export = default_export_path(config)
    _checks.check_writable_dir("--export", export)
    mark = os.path.join(export, _EXPORT_MARK)
    if os.path.isdir(export) and os.listdir(export):
        owner = None
        if os.path.isfile(mark):
            with open(mark, encoding="utf-8") as f:
                owner = json.load(f).get("run_dir")
        if owner is None:
            raise ValueError(f"--export {export!r} is a folder that holds other files; choose an empty "
                             "or new folder")
        if os.path.abspath(owner) != os.path.abspath(config.run_dir):
            raise ValueError(f"--export {export!r} holds the export of another run ({owner!r}); choose "
                             "another --export, or remove it")


def prepare(config, given=(), index=None):
    """Checks a configuration against the data and the file system, before any training work.

    Args:
        config: a `TrainConfig`.
        given: the names of the fields the user set (see `TrainConfig.check_combination`).
        index: an `ImageIndex` to train on instead of reading `config.data`.

    Returns:
        `(resolved config, training ImageIndex, validation pairs or None, warnings)`.
    """
    config = dataclasses.replace(config).validate()
    warnings = config.check_combination(given)
    if index is None:
        index = _load_index(config)
    elif index.num_classes < 2:
        raise ValueError(f"index must hold at least 2 identities; got {index}")
    index, validation = _read_validation(config, index)
    if config.keep_best and config.keep_best not in validation_metrics(validation):
        raise ValueError(f"--keep-best must be one of the validation metrics "
                         f"{', '.join(validation_metrics(validation))}; got {config.keep_best!r}")
    resolved = resolve(config, index.num_classes, len(index))
    warnings += [w for w in resolved.check_combination(given) if w not in warnings]
    warnings += _keep_best_warnings(config.keep_best, validation)
    _check_data_fits(resolved, index)
    _check_folders(resolved, resolved.to_dict())
    return resolved, index, validation, warnings


# ---- assembly ---------------------------------------------------------------------------------


def make_augmentation(names):
    """The `data.Augmentation` of a list of augmentation names (see `config.AUGMENTATIONS`).

    Each name turns on one transformation at the recipe's strength: `flip`; `crop`, a random
    resized crop of 80–100% of the area; `translate`, shifts of up to 8% of the height and width;
    `zoom` by up to 10%; `contrast` by up to 20%; `color`, brightness by up to ±20% of the range
    and contrast and saturation by up to 20%; `erase`, a rectangle of noise in a quarter of the
    images. Other names are ignored (`TrainConfig.validate` has refused them already).

    Args:
        names: augmentation names, such as a resolved `TrainConfig.augment`; empty for none.

    Returns:
        A `data.Augmentation`.
    """
    from keras_facemargin.data import Augmentation

    names = set(names)
    return Augmentation(
        flip="flip" in names,
        crop_scale=(0.8, 1.0) if "crop" in names else None,
        translate=0.08 if "translate" in names else 0.0,
        zoom=0.1 if "zoom" in names else 0.0,
        contrast=0.2 if "contrast" in names else 0.0,
        color_jitter=0.2 if "color" in names else 0.0,
        erase=0.25 if "erase" in names else 0.0,
    )


def _datasets(config, index, log):
    from keras_facemargin import data

    size = (config.image_size, config.image_size)
    augment = make_augmentation(config.augment)
    pair = config.loss in PAIR_LOSSES
    mix = None
    if config.mixup or config.cutmix:
        mix = data.BatchMix(mixup=config.mixup, cutmix=config.cutmix, seed=config.seed)
    one_hot = config.loss == SOFTMAX and (config.label_smoothing > 0 or mix is not None)

    def make_dataset(input_context=None, initial_epoch=0):
        if pair:
            ds = data.pk_dataset(index, config.classes_per_batch, config.samples_per_class, image_size=size,
                                 augment=augment, seed=config.seed, corrupt_files=log,
                                 input_context=input_context, initial_epoch=initial_epoch)
        else:
            ds = data.classification_dataset(index, config.batch_size, image_size=size, augment=augment,
                                             mix=mix, seed=config.seed, corrupt_files=log,
                                             input_context=input_context, one_hot=one_hot,
                                             initial_epoch=initial_epoch)
        if config.sample_rate != 1.0:  # PartialFC takes the labels as an input
            ds = ds.map(lambda images, labels: ((images, labels),))
        return ds

    return make_dataset


def _loss(config):
    import keras

    from keras_facemargin import losses

    if config.loss == SOFTMAX:
        if config.label_smoothing or config.mixup or config.cutmix:
            return keras.losses.CategoricalCrossentropy(from_logits=True,
                                                        label_smoothing=config.label_smoothing)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    kwargs = {}
    if config.margin is not None:
        kwargs["margin"] = config.margin
    if config.scale is not None:
        kwargs["scale"] = config.scale
    if config.label_smoothing:
        kwargs["label_smoothing"] = config.label_smoothing
    try:
        return losses.get(config.loss, **kwargs)
    except ValueError as error:  # the loss's own range check: name the flag, not the argument
        message = str(error)
        for name in kwargs:
            if message.startswith(f"{name} "):
                message = config_lib.flag(name) + message[len(name):]
        raise ValueError(f"{message} (--loss {config.loss})") from None


def make_schedule(config, steps_per_epoch):
    """The learning rate: linear warm-up, then cosine, step (÷10 at 50%, 75% and 90%) or constant.

    An `optimizers.WarmupSchedule` that peaks at `config.learning_rate`, over `config.epochs`
    epochs (at least one step), with `round(config.warmup_epochs * steps_per_epoch)` warm-up
    steps; the step schedule's fractions count the steps after the warm-up.

    Args:
        config: a resolved `TrainConfig` (`learning_rate`, `epochs`, `warmup_epochs`,
            `schedule`).
        steps_per_epoch: optimizer steps in one epoch.

    Returns:
        An `optimizers.WarmupSchedule`.

    Raises:
        ValueError: the warm-up is not shorter than the run (the message names
            `warmup_steps`).
    """
    from keras_facemargin.optimizers import WarmupSchedule

    total = max(1, steps_per_epoch * config.epochs)
    return WarmupSchedule(config.learning_rate, total, round(config.warmup_epochs * steps_per_epoch),
                          config.schedule)


def make_optimizer(config, steps_per_epoch, sparse_variables=()):
    """The optimizer of a resolved configuration, on the schedule of `make_schedule`.

    `"sgd"` is `keras.optimizers.SGD` with momentum 0.9, `"adam"` and `"adamw"` Keras's own. Each
    takes `config.weight_decay` (none when it is 0) and, when `config.ema` is not 0, Keras's
    moving average of the weights (`use_ema`), which replaces the weights when `fit` ends.

    `sparse_variables` (Partial FC's centres) get sparse updates: SGD becomes `LazySGD`, and
    weight decay leaves them out (decaying every centre every step is the dense update that
    Partial FC exists to avoid). Adam and AdamW keep dense moments for them.

    Args:
        config: a resolved `TrainConfig`.
        steps_per_epoch: optimizer steps in one epoch, for the schedule.
        sparse_variables: the variables that get sparse gradients (`PartialFC`'s kernel);
            empty for none.

    Returns:
        A `keras.optimizers.Optimizer`, not yet built.
    """
    import keras

    from keras_facemargin.optimizers import LazySGD

    lr = make_schedule(config, steps_per_epoch)
    # The moving average of the weights replaces them at the end of training (Keras's EMA).
    ema = {"use_ema": True, "ema_momentum": config.ema} if config.ema else {}
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        sgd = LazySGD if sparse_variables else keras.optimizers.SGD
        optimizer = sgd(lr, momentum=0.9, weight_decay=decay, **ema)
    elif config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(lr, weight_decay=config.weight_decay, **ema)
    else:
        optimizer = keras.optimizers.Adam(lr, weight_decay=decay, **ema)
    if sparse_variables and optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=list(sparse_variables))
    return optimizer


def _check_backbone_function(config, backbone):
    if backbone is None:
        return
    if config.width is not None:
        raise ValueError(
            f"width applies to the registry's backbones; got width={config.width} with a backbone "
            "function, which builds its own network (leave width None, or build it wider)"
        )
    if config.dropout is not None:
        raise ValueError(
            f"dropout applies to the registry's backbones; got dropout={config.dropout} with a "
            "backbone function, which builds its own network (leave dropout None, or build it in)"
        )


def build_model(config, num_classes, backbone=None):
    """`(training model, embedder, loss)` of a resolved configuration (inside a strategy's scope).

    The head follows the loss: a `Dense` head for `"softmax"`, none for a pair loss (the training
    model is the embedder), a `heads.PartialFC` when `sample_rate` is below 1, and otherwise the
    `CosineHead` the margin loss needs (feature norms, running statistics, sub-centres).

    Args:
        config: a resolved `TrainConfig`.
        num_classes: identities in the training data, the head's classes.
        backbone: a function of no arguments that builds the backbone; None: the registry's
            `config.backbone` at `config.image_size`, `config.embedding_dim` and
            `config.width` and `config.dropout` (which must then be None: the function builds
            its own network).

    Returns:
        `(model, embedder, loss)`: the model to compile and fit, the model from images in
        [0, 255] to embeddings `[batch, dim]` (sharing its weights), and the loss to compile
        with: cross-entropy for softmax, `losses.get(config.loss, ...)` otherwise, None for
        Partial FC, which holds its loss and adds it to the model.
    """
    from keras_facemargin import heads, models

    _check_backbone_function(config, backbone)
    if backbone is not None:
        backbone = backbone()
    else:
        given = {name: getattr(config, name) for name in ("width", "dropout")
                 if getattr(config, name) is not None}
        try:
            backbone = models.get_backbone(config.backbone,
                                           input_shape=(config.image_size, config.image_size, 3),
                                           embedding_dim=config.embedding_dim, **given)
        except ValueError as error:  # the backbone's own check, e.g. an image too small for it
            raise ValueError(f"--backbone {config.backbone} at --image-size {config.image_size}: "
                             f"{error}") from None
    loss = _loss(config)
    if config.loss == SOFTMAX:
        return (*models.build_recognizer(backbone, num_classes, head="dense"), loss)
    if config.loss in PAIR_LOSSES:
        return (*models.build_recognizer(backbone), loss)
    if config.sample_rate != 1.0:
        partial_fc = heads.PartialFC(num_classes, loss=loss, sample_rate=config.sample_rate,
                                     seed=config.seed, name="partial_fc")
        return (*models.build_recognizer(backbone, num_classes, partial_fc=partial_fc), None)
    # The head the loss needs: feature norms (AdaFace, MagFace), running statistics, sub-centres.
    return (*models.build_recognizer(backbone, num_classes, loss=loss), loss)


def _projector_sample(config, index, validation, limit=1000):
    """Up to `limit` images and labels for TensorBoard's projector: the validation identities'
    (with --val-fraction), else the first unique images of --val-pairs, else training images."""
    from keras_facemargin import data

    size = (config.image_size, config.image_size)
    rng = np.random.default_rng(config.seed)
    if isinstance(validation, data.VerificationPairs):
        paths = np.unique(np.concatenate([validation.images_a, validation.images_b]).astype(str))
        labels = [os.path.basename(os.path.dirname(p)) for p in paths]
    elif validation is not None:
        return None  # --val-pairs: pair files name no identities
    else:
        paths, labels = index.paths.astype(str), [index.class_names[k] for k in index.labels]
    keep = np.sort(rng.permutation(len(paths))[:limit])
    images = np.concatenate(list(data.ImageBatches(
        [paths[i] for i in keep], image_size=size, names=[str(paths[i]) for i in keep])))
    return images, [labels[i] for i in keep]


def _write_export(embedder, path, config, strategy):
    from keras_facemargin import distribute
    from keras_facemargin.export import export_embedder
    from keras_facemargin.training import atomic_write_text

    with distribute.write_path(path, strategy) as target:
        if os.path.isdir(target) and os.path.isfile(os.path.join(target, _EXPORT_MARK)):
            shutil.rmtree(target)  # this run's earlier export: replaced whole
        # After MagFace the feature norm is a quality score: the export serves it too.
        export_embedder(embedder, target, quality=config.loss == "magface")
        atomic_write_text(os.path.join(target, _EXPORT_MARK),
                           json.dumps({"run_dir": os.path.abspath(config.run_dir)}) + "\n")


def _recalibrate(model, embedder, dataset, steps, config, strategy):
    """After the moving average replaced the weights: BatchNormalization's statistics for them,
    from one pass over the training batches, and `model.keras` saved again with them."""
    from keras_facemargin import distribute
    from keras_facemargin.training import recalibrate_batch_norm, save_model_atomically

    with strategy.scope():
        recalibrate_batch_norm(embedder, dataset, steps)
    with distribute.write_path(os.path.join(config.run_dir, "model.keras"), strategy) as path:
        save_model_atomically(model, path)


def train(config, given=(), callbacks=(), verbose="auto", export=True, index=None, backbone=None):
    """Trains, resumably, the run that `config` describes; see the module docstring.

    Args:
        config: a `TrainConfig` (checked here; "auto" values are resolved from the data).
        given: the names of the fields the user set; flags that a default would not explain
            are refused or warned about (see `TrainConfig.check_combination`).
        callbacks: further Keras callbacks.
        verbose: `fit`'s verbosity.
        export: write the SavedModel to `config.export` (default `run_dir/saved_model`).
        index: an `ImageIndex` to train on instead of reading `config.data` (a split made in
            Python; `config.data` then only names the data set in `config.json`).
        backbone: a function of no arguments that builds the backbone (a Keras model from scaled
            images to `[batch, dim]`) instead of `config.backbone`, for models the registry does
            not have; `config.width` and `config.dropout` must then be None.

    Returns:
        A `Run`.

    Raises:
        ValueError: a bad value, data that do not fit the configuration, an unwritable folder, a
            run folder that holds another configuration; all before any training work.
        keras_facemargin.training.TrainingDiverged: the loss became NaN or infinite.
    """
    _check_backbone_function(config, backbone)
    config, index, validation, warnings = prepare(config, given, index)
    for warning in warnings:
        logger.warning("warning: %s", warning)

    from keras_facemargin import distribute

    # Before any other TensorFlow work: a multi-worker strategy must be created first.
    strategy = distribute.get_strategy(config.strategy)
    with _dtype_policy(config.mixed_precision):
        return _train(config, index, validation, warnings, strategy, backbone, callbacks, export, verbose)


@contextlib.contextmanager
def _dtype_policy(name):
    """Keras's global dtype policy set to `name` for one run, and given back after it: the run is built
    as its `config.json` says whatever policy was set before, and the next model in the same process
    (a second run, a notebook's next cell) is not built in this run's precision."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _train(config, index, validation, warnings, strategy, backbone, callbacks, export, verbose):
    import time

    import keras

    from keras_facemargin import data, distribute, evaluation
    from keras_facemargin.training import fit_resumable, resume_epoch

    keras.utils.set_random_seed(config.seed)
    log = data.CorruptFileLog()
    make_dataset = _datasets(config, index, log)
    # A resumed run draws the epochs' orders and augmentations an uninterrupted run would have.
    first = resume_epoch(config.run_dir)
    dataset = make_dataset(initial_epoch=first)
    steps = int(dataset.cardinality().numpy())
    if strategy.num_replicas_in_sync > 1 or distribute.is_multi_worker(strategy):
        dataset = strategy.distribute_datasets_from_function(lambda context: make_dataset(context, first))
    with strategy.scope():
        model, embedder, loss = build_model(config, index.num_classes, backbone)
        sparse = [model.get_layer("partial_fc").kernel] if config.sample_rate != 1.0 else []
        model.compile(optimizer=make_optimizer(config, steps, sparse), loss=loss)
    all_callbacks = [log]
    if validation is not None:
        size = (config.image_size, config.image_size)
        pairs = validation
        if isinstance(pairs, data.VerificationPairs):  # held-out identities: keys val_auc, ...
            pairs = data.pair_arrays(pairs, image_size=size)
        all_callbacks.append(evaluation.VerificationCallback(
            pairs, far_targets=_VALIDATION_FARS, embedding_model=embedder, image_size=size))
    if config.tensorboard:
        log_dir = os.path.join(config.run_dir, "tensorboard")
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir))
        sample = _projector_sample(config, index, validation)
        if sample is not None:
            all_callbacks.append(evaluation.EmbeddingProjector(*sample, os.path.join(log_dir, "projector"),
                                                               embedding_model=embedder))
    all_callbacks += list(callbacks)
    start = time.perf_counter()
    history = fit_resumable(model, dataset, config.epochs, config.run_dir, config=config.to_dict(),
                            callbacks=all_callbacks, strategy=strategy, keep_best=config.keep_best,
                            verbose=verbose, shuffle=False)
    if config.ema:
        # Epoch 0's batches, in a resumed run too, so that it ends as an uninterrupted one.
        _recalibrate(model, embedder, make_dataset(), steps if steps > 0 else None, config, strategy)
    seconds = time.perf_counter() - start
    export_path = None
    if export:
        export_path = default_export_path(config)
        _write_export(embedder, export_path, config, strategy)
        if not distribute.is_chief(strategy):  # it saved into a temporary folder
            export_path = None
    return Run(config, model, embedder, history, export_path, index, validation, seconds, warnings)


__all__ = ["Run", "TrainConfig", "auto_scale", "build_model", "default_export_path", "face_scale",
           "make_augmentation", "make_optimizer", "make_schedule", "prepare", "resolve", "train",
           "validation_metrics"]
