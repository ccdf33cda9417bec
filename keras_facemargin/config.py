"""`TrainConfig`: everything that defines a training run, checked before any work starts.

Plain Python (no Keras, no TensorFlow): the command line parses and checks it in well under a
second, and a wrong value is refused with one line naming the flag, the value and what is
allowed before a single image is read. `keras_facemargin.recipe.train(config)` turns a checked
configuration into a run; the configuration it resolves (every "auto" value decided from the
data) is saved as `config.json` in the run folder.
"""

import dataclasses
import json
import os

from keras_facemargin import _checks as v

# The names the command line offers. They are the registries' names (tests/test_config.py keeps
# them equal), listed here so that `--help` and the checks need no Keras import.
SOFTMAX = "softmax"
MARGIN_LOSSES = ("normface", "sphereface", "cosface", "arcface", "combined_margin", "adaface", "magface",
                 "curricularface", "subcenter_arcface", "elasticface", "adacos")
PAIR_LOSSES = ("triplet", "contrastive", "npair", "unified_pair", "circle", "supcon", "multi_similarity")
LOSSES = (SOFTMAX, *MARGIN_LOSSES, *PAIR_LOSSES)
BACKBONES = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet", "sphereface20",
             "simple_cnn", "small_resnet", "small_vgg")
# The backbones with a dropout layer before the embedding, which `dropout` sets.
DROPOUT_BACKBONES = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "small_resnet", "small_vgg")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")
AUGMENTATIONS = ("flip", "crop", "translate", "zoom", "contrast", "color", "erase")
AUTO = "auto"

# The loss hyperparameters a flag sets, and which losses take them.
LOSS_FLAGS = {
    "margin": ("sphereface", "cosface", "arcface", "adaface", "curricularface", "subcenter_arcface",
               "elasticface", "triplet", "npair", "unified_pair", "circle"),
    "scale": tuple(name for name in MARGIN_LOSSES if name != "adacos"),  # AdaCos sets its own
    "label_smoothing": MARGIN_LOSSES + (SOFTMAX,),
}


def _field(default, help, check=None, choices=None, many=False):
    return dataclasses.field(
        default=default, metadata={"help": help, "check": check, "choices": choices, "many": many})


def _optional(check):
    # "none" as the command line spells it; a YAML file may say null or none.
    return lambda name, value: None if value is None or value == "none" else check(name, value)


def _auto(check):
    return lambda name, value: AUTO if value == AUTO else check(name, value)


def _positive_int(name, value):
    return v.check_int(name, value, minimum=1)


def _positive(name, value):
    return v.check_number(name, value, low=0, low_open=True)


def _probability(name, value):
    return v.check_number(name, value, 0.0, 1.0)


def _fraction(name, value):
    return v.check_number(name, value, 0.0, 1.0, low_open=True, high_open=True)


def _choice(choices):
    return lambda name, value: v.check_choice(name, value, choices)


def _paths(name, value):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p for p in value):
        v.fail(name, "a list of file paths", value)
    return list(value)


def _augment(name, value):
    if value == AUTO:
        return AUTO
    if isinstance(value, str):
        value = [part for part in value.replace(",", " ").split() if part]
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        v.fail(name, f"'auto', 'none' or a list of {', '.join(AUGMENTATIONS)}", value)
    value = [a for a in value if a != "none"]
    unknown = [a for a in value if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"{name} must be 'auto', 'none' or a list of {', '.join(AUGMENTATIONS)}; "
                         f"got {unknown[0]!r}")
    return sorted(set(value), key=AUGMENTATIONS.index)


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; saved as `config.json` in the run folder.

    Field names are the command line's flags with `_` for `-` (`learning_rate` is
    `--learning-rate`). A value of `"auto"` is decided from the data when the run starts, by
    `recipe.resolve`, with the rules given below; `None` means "not used". "Face scale" below
    means images of at least 96 px and at least 10,000 training identities (`recipe.face_scale`,
    counted after `min_images` and `val_fraction`). `validate` checks each value on its own,
    `check_combination` the values against the chosen loss.

    Attributes:
        data: the training images: a folder with one sub-folder per identity, or an InsightFace
            RecordIO `train.rec` (`train.idx` beside it). Required by `validate`.
        loss: `"softmax"` (a `Dense` head and cross-entropy), a margin loss (`MARGIN_LOSSES`,
            on a `CosineHead`) or a pair loss (`PAIR_LOSSES`, on P×K batches); default
            `"arcface"`.
        margin: the loss's margin, a finite number; None: the loss's own default. Taken by the
            losses in `LOSS_FLAGS["margin"]`.
        scale: the scale s of a margin loss, > 0; None: the loss's own default. auto: 64 at
            face scale, else `recipe.auto_scale(num_classes)`; None for softmax, the pair losses
            and AdaCos (which sets its own).
        label_smoothing: ε in [0, 1) of softmax and the margin losses; default 0.
        backbone: one of `BACKBONES`. auto: `"iresnet50"` at face scale, else `"iresnet18"`
            for images of at least 96 px, else `"small_vgg"`.
        image_size: height and width the images are resized to, >= 1; default 112.
        width: the multiplier of the backbone's channels, > 0 (2 doubles every layer's); None
            (the default): the backbone's own, 1 for every backbone but `small_resnet` (0.5).
        dropout: the rate in [0, 1) of the dropout before the embedding layer, for the backbones
            that have one (`DROPOUT_BACKBONES`); None (the default): the backbone's own, 0.2 for
            `small_vgg` and `small_resnet`, 0 for the IR-ResNets.
        embedding_dim: the embedding size, >= 1. auto: 512 for images of at least 96 px, else
            128.
        epochs: training epochs, >= 1; default 10. A larger value extends a finished run.
        batch_size: images per batch of softmax and the margin losses, >= 1. auto: 128 at face
            scale, else 64, or a quarter of the images (at least 2) when there are fewer than
            256. With a pair loss
            it is always `classes_per_batch * samples_per_class`.
        classes_per_batch: P, identities per batch of a pair loss, >= 1. auto:
            `128 // samples_per_class`, at most the number of identities and at least 2.
        samples_per_class: K, images per identity in a batch of a pair loss, >= 2; default 4.
        optimizer: `"sgd"` (momentum 0.9), `"adam"` or `"adamw"`. auto: `"sgd"` at face
            scale, else `"adam"`.
        learning_rate: the peak learning rate, > 0. auto: 0.1 with SGD, else 1e-3.
        weight_decay: decoupled weight decay, >= 0. auto: 5e-4 with SGD, 5e-2 with AdamW, 0
            with Adam.
        schedule: the learning rate after the warm-up: `"cosine"`, `"step"` or `"constant"`
            (see `optimizers.WarmupSchedule`). auto: `"cosine"` at face scale, else
            `"constant"` (a short run on few identities lost open-set accuracy to the decay).
        ema: momentum in [0, 1) of an exponential moving average of the weights, which replaces
            the weights when training ends, so `model.keras` and the export hold it; default 0
            (none). BatchNormalization's moving statistics are then recomputed for the averaged
            weights over one pass of the training batches (`training.recalibrate_batch_norm`).
        warmup_epochs: epochs of linear learning-rate warm-up, >= 0. auto: 0.
        augment: the training augmentations: a list, or a comma- or space-separated string, of
            `AUGMENTATIONS` (kept in that order, each once); `"none"` or an empty list for none.
            auto: `["flip"]` at face scale, else `["translate", "zoom", "contrast"]`.
        mixup: probability in [0, 1] of mixup for a batch (softmax and margin losses); default 0.
        cutmix: probability in [0, 1] of cutmix for a batch (softmax and margin losses);
            default 0.
        mixed_precision: the dtype policy of the run: `"float32"` (default), `"mixed_float16"` or
            `"mixed_bfloat16"`; `recipe.train` sets it for the run alone, whatever Keras's global
            policy was, and gives the global policy back afterwards.
        val_pairs: pair files scored every epoch (InsightFace `.bin`, LFW `pairs.txt` or
            `a b label` lists; one path is taken as a list of one), or None.
        val_root: the folder the pair lists' paths are relative to, or None.
        val_fraction: share in [0, 0.5) of the identities held out as validation pairs when
            there are no `val_pairs`; default 0 (none).
        keep_best: a validation metric (`recipe.validation_metrics`: `"val_tar@far=1e-3"`,
            `"val_auc"`, `"val_eer"`, ... with `val_fraction`; `"val_<set>_auc"`, ... with
            `val_pairs`), or None (the default): the export and `model.keras` then hold the
            weights of the epoch with its best value (lowest for an EER, else highest) rather
            than the last epoch's (`training.BestEpoch`).
        min_images: identities with fewer images are left out, >= 1; default 1.
        merge_identities: a text file of groups of identity names (`data.read_identity_groups`:
            one group a line, tab-separated), each trained as one identity
            (`ImageIndex.merge_classes`, before `min_images`), or None. `facemargin duplicates`
            writes one from a trained model.
        seed: seed of the weights, the sampling and the augmentations, >= 0; default 0.
        run_dir: the run folder (`config.json`, backups, `log.csv`, `model.keras`); default
            `"runs/train"`.
        export: the SavedModel folder the embedder is exported to; None: `run_dir/saved_model`.
        strategy: the `tf.distribute` strategy: `"default"`, `"mirrored"` or `"multi_worker"`.
        sample_rate: Partial FC's share in (0, 1] of the classes in each step's softmax; 1
            (the default) trains without Partial FC. Below 1 it needs a margin loss.
        tensorboard: write TensorBoard logs to `run_dir/tensorboard` (needs the tensorboard
            package); default False.
    """

    data: str = _field("", "training images: a folder with one sub-folder per identity, or an "
                       "InsightFace RecordIO train.rec (train.idx beside it)")
    loss: str = _field("arcface", "training objective: softmax (Dense + cross-entropy), a margin loss "
                       "(CosineHead) or a pair loss (P×K batches)", _choice(LOSSES), choices=LOSSES)
    margin: float | None = _field(None, "the loss's margin (default: the loss's own)",
                                  _optional(lambda n, x: v.check_number(n, x)))
    scale: float | None = _field(AUTO, "scale s of a margin loss; auto: from the number of identities",
                                 _auto(_optional(_positive)))
    label_smoothing: float = _field(0.0, "label smoothing ε of softmax and the margin losses",
                                    lambda n, x: v.check_number(n, x, 0.0, 1.0, high_open=True))
    backbone: str = _field(AUTO, "network from images to embeddings; auto: from the image size",
                           _choice((AUTO, *BACKBONES)), choices=(AUTO, *BACKBONES))
    image_size: int = _field(112, "height and width the images are resized to", _positive_int)
    width: float | None = _field(None, "multiplier of the backbone's channels (default: the "
                                 "backbone's own, 1, or 0.5 for small_resnet)", _optional(_positive))
    dropout: float | None = _field(None, "dropout rate before the embedding layer (default: the "
                                   "backbone's own, 0.2 for small_vgg and small_resnet, 0 for the "
                                   "IR-ResNets; the other backbones have none)",
                                   _optional(lambda n, x: v.check_number(n, x, 0.0, 1.0, high_open=True)))
    embedding_dim: int = _field(AUTO, "embedding size; auto: from the image size", _auto(_positive_int))
    epochs: int = _field(10, "training epochs (a larger value extends a finished run)", _positive_int)
    batch_size: int = _field(AUTO, "images per batch (softmax and margin losses); auto: 128 at face "
                             "scale, else 64, or a quarter of the images when there are fewer than "
                             "256", _auto(_positive_int))
    classes_per_batch: int = _field(AUTO, "P, identities per batch (pair losses)", _auto(_positive_int))
    samples_per_class: int = _field(4, "K, images per identity in a batch (pair losses)",
                                    lambda n, x: v.check_int(n, x, minimum=2))
    optimizer: str = _field(AUTO, "optimizer; auto: see the README", _choice((AUTO, *OPTIMIZERS)),
                            choices=(AUTO, *OPTIMIZERS))
    learning_rate: float = _field(AUTO, "peak learning rate; auto: from the optimizer",
                                  _auto(_positive))
    weight_decay: float = _field(AUTO, "decoupled weight decay; auto: from the optimizer",
                                 _auto(lambda n, x: v.check_number(n, x, low=0.0)))
    schedule: str = _field(AUTO, "learning-rate schedule after the warm-up; auto: cosine at face "
                           "scale, else constant (README: Training recipe)",
                           _choice((AUTO, *SCHEDULES)), choices=(AUTO, *SCHEDULES))
    ema: float = _field(0.0, "momentum of an exponential moving average of the weights, which "
                        "replaces them when training ends, for the export, with "
                        "BatchNormalization's statistics recomputed for it over one pass of the "
                        "training data (0: none; per-epoch validation sees the raw weights)",
                        lambda n, x: v.check_number(n, x, 0.0, 1.0, high_open=True))
    warmup_epochs: float = _field(AUTO, "epochs of linear learning-rate warm-up; auto: see the README",
                                  _auto(lambda n, x: v.check_number(n, x, low=0.0)))
    augment: list = _field(AUTO, "training augmentations, comma-separated (" + ", ".join(AUGMENTATIONS)
                           + "), none, or auto: flip for faces at scale (>= 96 px and >= 10,000 "
                           "identities), else translate,zoom,contrast",
                           _augment)
    mixup: float = _field(0.0, "probability of mixup for a batch (softmax and margin losses)",
                          _probability)
    cutmix: float = _field(0.0, "probability of cutmix for a batch", _probability)
    mixed_precision: str = _field("float32", "dtype policy", _choice(PRECISIONS), choices=PRECISIONS)
    val_pairs: list | None = _field(None, "verification pairs checked every epoch: .bin, LFW "
                                    "pairs.txt or 'a b label' lists", _optional(_paths), many=True)
    val_root: str | None = _field(None, "folder the pair lists' paths are relative to",
                                  _optional(v.check_str))
    val_fraction: float = _field(0.0, "share of the identities held out as validation pairs "
                                 "when no --val-pairs is given (0: none)",
                                 lambda n, x: v.check_number(n, x, 0.0, 0.5, high_open=True))
    keep_best: str | None = _field(None, "export the epoch with the best value of this validation "
                                   "metric (val_tar@far=1e-3, val_auc, val_eer, ...; needs "
                                   "--val-fraction or --val-pairs) rather than the last",
                                   _optional(v.check_str))
    min_images: int = _field(1, "leave out identities with fewer images", _positive_int)
    merge_identities: str | None = _field(None, "text file of identity groups, one a line, each "
                                          "trained as one identity (facemargin duplicates writes it)",
                                          _optional(v.check_str))
    seed: int = _field(0, "seed of the weights, the sampling and the augmentations",
                       lambda n, x: v.check_int(n, x, minimum=0))
    run_dir: str = _field("runs/train", "run folder: config, backups, log.csv, model.keras",
                          v.check_str)
    export: str | None = _field(None, "SavedModel folder to export the embedder to "
                                "(default: RUN_DIR/saved_model)", _optional(v.check_str))
    strategy: str = _field("default", "tf.distribute strategy", _choice(STRATEGIES), choices=STRATEGIES)
    sample_rate: float = _field(1.0, "Partial FC: share of the classes in each step's softmax",
                                lambda n, x: v.check_number(n, x, 0.0, 1.0, low_open=True))
    tensorboard: bool = _field(False, "write TensorBoard logs to RUN_DIR/tensorboard", v.check_bool)

    @classmethod
    def fields(cls):
        """The fields in flag order, as `dataclasses.fields`.

        Returns:
            A tuple of `dataclasses.Field`; each one's `metadata` holds the flag's `"help"`, its
            `"check"`, its `"choices"` and whether it takes several values (`"many"`).
        """
        return dataclasses.fields(cls)

    @classmethod
    def from_file(cls, path):
        """The configuration in a YAML (`.yaml`/`.yml`) or JSON file; unknown keys are refused.

        Values are checked as `validate(complete=False)` checks them: `data` may be left to the
        command line, and no file is looked for yet.

        Args:
            path: the file; a name ending in `.yaml` or `.yml` is read as YAML, any other as
                JSON. An empty YAML file holds no settings.

        Returns:
            A `TrainConfig` of the file's values, with the defaults for the keys it leaves out.

        Raises:
            ValueError: no such file; a file that is not UTF-8 text, not valid JSON or YAML, or
                not a mapping; unknown keys; a bad value (named `--config 'path': --flag`).
        """
        if not os.path.isfile(path):
            raise ValueError(f"--config must be an existing YAML or JSON file; got {path!r} "
                             f"({'a folder' if os.path.isdir(path) else 'no such file'})")
        try:
            with open(path, encoding="utf-8") as f:
                if path.endswith((".yaml", ".yml")):
                    import yaml

                    values = yaml.safe_load(f)
                else:
                    values = json.load(f)
        except UnicodeDecodeError as error:
            raise ValueError(f"--config {path!r} is not UTF-8 text ({error.reason} at byte "
                             f"{error.start})") from None
        except ValueError as error:  # json.JSONDecodeError
            raise ValueError(f"--config {path!r} is not valid JSON: {error}") from None
        except Exception as error:  # yaml.YAMLError
            if type(error).__module__.startswith("yaml"):
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(error, "problem", None) or str(error).splitlines()[0]
                raise ValueError(f"--config {path!r} is not valid YAML{where}: {problem}") from None
            raise
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ValueError(f"--config {path!r} must hold a mapping of settings; got a "
                             f"{type(values).__name__}")
        known = {field.name for field in cls.fields()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"--config {path!r} has unknown keys {unknown}; known: {sorted(known)}")
        config = cls(**values)
        config.validate(source=f"--config {path!r}: ", complete=False)
        return config

    def validate(self, source="", flags=True, complete=True):
        """Checks every value; returns the configuration with values in canonical types.

        Args:
            source: prefix of the error message (for example the config file's name).
            flags: name the values as command-line flags (`--epochs`) rather than fields.
            complete: also require `data` and check that the named files exist (False for a
                configuration file, which the command line completes).

        Returns:
            This configuration, changed in place: integers as `int`, numbers as `float`,
            `augment` and `val_pairs` as lists ("auto" and None stay as they are).

        Raises:
            ValueError: the first bad value, with its name and what is allowed; with `complete`,
                also a missing `data`, a `data` or pair file that does not exist, or
                `tensorboard` without the tensorboard package.
        """
        for field in self.fields():
            check = field.metadata["check"]
            if check is None:
                continue
            name = source + (flag(field.name) if flags else field.name)
            setattr(self, field.name, check(name, getattr(self, field.name)))
        if not complete:
            return self
        if not isinstance(self.data, str):
            raise ValueError(f"{source}--data must be a path (a string); got {self.data!r}")
        if not self.data:
            raise ValueError(f"{source}--data (an image folder with one sub-folder per identity) is "
                             "required")
        if not os.path.exists(self.data):
            raise ValueError(f"{source}--data must be an image folder with one sub-folder per identity, "
                             f"or a .rec file; got {self.data!r} (no such file or folder)")
        if self.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise ValueError(f"{source}--tensorboard needs the tensorboard package: pip install "
                                 "tensorboard (or 'keras-facemargin[tensorboard]')")
        for path in self.val_pairs or ():
            if not os.path.isfile(path):
                raise ValueError(f"{source}--val-pairs must be existing pair files (.bin, LFW pairs.txt or "
                                 f"'path_a path_b label' lists); got {path!r} "
                                 f"({'a folder' if os.path.isdir(path) else 'no such file'})")
        if self.merge_identities:
            v.check_existing_file(f"{source}--merge-identities", self.merge_identities,
                                  "text file of identity groups")
        return self

    def check_combination(self, given=()):
        """Refuses flags that the chosen loss does not take; returns warnings for ignored ones.


        Args:
            given: the names of the fields the user set (flags and config file), so that a
                default is never blamed.

        Returns:
            A list of warnings, one line each: `batch_size` given with a pair loss,
            `classes_per_batch`/`samples_per_class` given without one, `val_root` without
            `val_pairs`.

        Raises:
            ValueError: a `margin`, `scale` or `label_smoothing` the loss does not take
                (`LOSS_FLAGS`), a `dropout` for a backbone without a dropout layer, mixup or
                cutmix with a pair loss, a `sample_rate` below 1
                without a margin loss or with mixup or cutmix, both `val_pairs` and
                `val_fraction`, `keep_best` without either or with `ema`, or a
                `warmup_epochs` not below `epochs`.
        """
        warnings = []
        if self.val_root and not self.val_pairs:
            warnings.append("--val-root is ignored without --val-pairs")
        if self.val_pairs and self.val_fraction:
            raise ValueError("--val-fraction holds out identities for validation when no "
                             "--val-pairs is given; got both")
        if self.keep_best and not (self.val_pairs or self.val_fraction):
            raise ValueError(f"--keep-best {self.keep_best} needs validation pairs to choose an epoch "
                             "by: give --val-fraction or --val-pairs")
        if self.keep_best and self.ema:
            raise ValueError(f"--keep-best keeps one epoch's weights, and --ema {self.ema} replaces "
                             "them with an average at the end; choose one")
        if self.warmup_epochs not in (None, AUTO) and self.warmup_epochs >= self.epochs:
            raise ValueError(f"--warmup-epochs must be less than --epochs ({self.epochs}); got "
                             f"{self.warmup_epochs}")
        loss = self.loss
        for name, takers in LOSS_FLAGS.items():
            if name in given and getattr(self, name) not in (None, AUTO, 0.0) and loss not in takers:
                takers_text = ", ".join(takers)
                raise ValueError(f"{flag(name)} does not apply to --loss {loss}; it is taken by "
                                 f"{takers_text}")
        if self.dropout is not None and self.backbone not in (AUTO, *DROPOUT_BACKBONES):
            raise ValueError(f"--dropout applies to the backbones with a dropout layer before the "
                             f"embedding ({', '.join(DROPOUT_BACKBONES)}); got --backbone {self.backbone}")
        pair = loss in PAIR_LOSSES
        if pair and (self.mixup or self.cutmix):
            raise ValueError(f"--mixup/--cutmix need softmax or a margin loss (one identity mix per "
                             f"image); got --loss {loss}, a pair loss")
        if self.sample_rate != 1.0 and loss not in MARGIN_LOSSES:
            raise ValueError(f"--sample-rate {self.sample_rate} (Partial FC) needs a margin loss; got "
                             f"--loss {loss}")
        if self.sample_rate != 1.0 and (self.mixup or self.cutmix):
            raise ValueError(f"--sample-rate {self.sample_rate} (Partial FC) needs integer labels; "
                             f"got --mixup {self.mixup}, --cutmix {self.cutmix}")
        if pair and "batch_size" in given:
            warnings.append(f"--batch-size is ignored with the pair loss {loss}: its batch is "
                            "--classes-per-batch × --samples-per-class")
        if not pair and ("classes_per_batch" in given or "samples_per_class" in given):
            warnings.append(f"--classes-per-batch/--samples-per-class are ignored with --loss {loss}: "
                            "they shape the P×K batches of pair losses")
        return warnings

    def to_dict(self):
        """The configuration as plain values, as `config.json` holds it.

        Returns:
            A dict from each field name to its value (`dataclasses.asdict`).
        """
        return dataclasses.asdict(self)


def flag(name):
    """The command-line flag of a field: `--learning-rate` for `learning_rate`.

    Args:
        name: a `TrainConfig` field name.

    Returns:
        The flag, a string.
    """
    return "--" + name.replace("_", "-")
