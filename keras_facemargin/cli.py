"""`facemargin`: train, evaluate, embed and export face (and other identity) recognizers.

    facemargin train --data DIR [--loss arcface] [--image-size 112] [--epochs 10] ...
    facemargin evaluate --model PATH --pairs FILE [FILE ...] [--root DIR] [--flip] [--out DIR]
    facemargin evaluate-ijb --model PATH --root IJBC [--out DIR]
    facemargin pack FOLDER OUT.rec
    facemargin embed --model PATH --images DIR --out embeddings.npz [--flip]
    facemargin export --model RUN/model.keras --format saved_model|onnx|litert --out PATH
    facemargin pairs --images DIR --out pairs.txt [--num-pairs 6000]
    facemargin duplicates --model PATH --images DIR|train.rec --out groups.txt [--threshold 0.9]

`--model` is a SavedModel written by `facemargin train`/`export` or a `.keras` file. Arguments
are checked before TensorFlow loads; a user's mistake is one line, `facemargin <command>: error:
...`, and exit status 2 (1 for a run that fails, such as a diverged loss).
"""

import argparse
import dataclasses
import logging
import os
import sys

from keras_facemargin import _checks
from keras_facemargin import config as config_lib

logger = logging.getLogger("keras_facemargin")


class UsageError(ValueError):
    """A mistake in the command line, reported as one line."""


# ---- TensorFlow, quietly --------------------------------------------------------------------


def _load_tensorflow(verbose=False):
    """Imports TensorFlow (and Keras) with its start-up log lines silenced unless `verbose`.

    TensorFlow's C++ start-up messages (oneDNN, CPU features) go to the process's stderr before
    any log level applies, so stderr is pointed at a temporary file during the import and the
    captured text is shown only if the import fails.
    """
    if "tensorflow" not in sys.modules:
        _import_tensorflow(verbose)
    if not verbose:
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)  # "Assets written to ...", once per logger
        logging.getLogger("absl").setLevel(logging.ERROR)


def _import_tensorflow(verbose):
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise UsageError("TensorFlow is not installed: pip install 'keras-facemargin[cpu]' (or [gpu] "
                         "on a machine with an NVIDIA GPU)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    if verbose:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# ---- models -----------------------------------------------------------------------------------


def load_embedder(path):
    """`evaluation.load_embedder`, its mistakes named as `--model`'s.

    Args:
        path: the `--model` value: a SavedModel folder or a `.keras` file.

    Returns:
        The embedding function of `evaluation.load_embedder`, with an `image_size` attribute.

    Raises:
        UsageError: `path` is neither a SavedModel folder nor a `.keras` file that loads.
    """
    from keras_facemargin import evaluation

    try:
        return evaluation.load_embedder(path)
    except ValueError as error:
        raise UsageError(f"--{error}") from None


def load_keras_model(path):
    """`evaluation.load_keras_model`, its mistakes named as `--model`'s.

    Args:
        path: the `--model` value, a `.keras` file.

    Returns:
        The `keras.Model`, not compiled.

    Raises:
        UsageError: `path` is not a Keras file that loads.
    """
    from keras_facemargin import evaluation

    try:
        return evaluation.load_keras_model(path)
    except ValueError as error:
        raise UsageError(f"--{error}") from None


def _embed_images(embedder, images, batch_size, flip):
    """`(embeddings, corrupt, bad)` of `images` (image file paths, or an `ImageIndex` of a folder
    or a RecordIO set, read in its order), each embedded once with a progress bar: the rows of
    the images that do not decode are NaN and marked in `corrupt`; `bad` their `CorruptFile`s."""
    import numpy as np

    from keras_facemargin import data
    from keras_facemargin import evaluation as ev

    index = images if isinstance(images, data.ImageIndex) else None
    paths = list(index.paths) if index is not None else images
    log = data.CorruptFileLog(max_paths=len(paths))
    if index is not None:
        batches = data.classification_dataset(index, batch_size, embedder.image_size,
                                              training=False, corrupt_files=log)
    else:
        batches = data.ImageBatches(paths, batch_size, embedder.image_size, corrupt_files=log)
    embeddings = ev.embed(embedder, batches, flip=flip, verbose=1 if sys.stderr.isatty() else 0)
    bad = log.collect()
    corrupt = np.isin(np.array(paths, dtype=object), np.array([f.path for f in bad], dtype=object))
    embeddings[corrupt] = np.nan
    return embeddings, corrupt, bad


# ---- evaluate ---------------------------------------------------------------------------------


def evaluate(args):
    """`facemargin evaluate`: verification metrics of a model on one or several pair files.

    Embeds each unique image once (`evaluation.evaluate_pair_sets`), prints the report of a
    single set and a table of every set, notes on stderr the sets with fewer pairs than folds,
    the FAR targets that need more impostor pairs than a set has and the images that did not
    decode, and writes `report.json` and the plots to `--out`.

    Args:
        args: the parsed command line: `model`, `pairs`, `root`, `flip`, `batch_size`, `folds`
            and `out`.

    Returns:
        The `evaluation.PairSetsReport` (`main` does not use it).

    Raises:
        ValueError: a `--model` (as a `UsageError`) or `--pairs` file that cannot be read.
    """
    from keras_facemargin import data
    from keras_facemargin import evaluation as ev

    embedder = load_embedder(args.model)
    sets = ev.read_pair_sets(args.pairs, root=args.root, argument="--pairs")
    log = data.CorruptFileLog()
    result = ev.evaluate_pair_sets(embedder, sets, flip=args.flip, batch_size=args.batch_size,
                                   corrupt_files=log, folds=args.folds,
                                   verbose=1 if sys.stderr.isatty() else 0)
    if len(result.reports) == 1:
        print(next(iter(result.reports.values())))
        print()
    print(result.table())
    for name, report in result.reports.items():
        pairs = len(sets.sets[name][2])
        if sets.sets[name][3] is None and pairs < args.folds:
            print(f"note: {name}: {pairs} pairs are too few for {args.folds} folds; the k-fold accuracy "
                  f"uses {pairs}", file=sys.stderr)
        for far in report.unresolved_fars():
            print(f"warning: {name}: TAR@FAR={far:g} needs at least {round(1 / far)} impostor pairs; got "
                  f"{report.num_impostors}, so it is the TAR at FAR=0", file=sys.stderr)
    if log.count:
        bad = log.collect()
        print(f"warning: {log.count} image(s) could not be decoded and were scored as blank images: "
              + "; ".join(f"{f.path} ({f.reason})" for f in bad[:5]), file=sys.stderr)
    written = result.save(args.out)
    print(f"\nwrote {', '.join(os.path.relpath(p, args.out) for p in written)} to {args.out}")
    return result


def evaluate_ijb(args):
    """`facemargin evaluate-ijb`: IJB-B/IJB-C 1:1 template verification of a model.

    Runs `evaluation.ijb_verification` (with the flip test and detector-score weights unless
    `--no-flip`/`--no-detector-scores`), prints the report, warns on stderr about faces that did
    not decode, and writes `report.json`, `scores.npy` and `roc.png` to `--out`.

    Args:
        args: the parsed command line: `model`, `root`, `target`, `no_flip`,
            `no_detector_scores`, `batch_size` and `out`.

    Returns:
        The `evaluation.IJBReport` (`main` does not use it).

    Raises:
        ValueError: a `--model` (as a `UsageError`) or `--root` release that cannot be read.
    """
    from keras_facemargin import data
    from keras_facemargin import evaluation as ev

    embedder = load_embedder(args.model)
    log = data.CorruptFileLog()
    report = ev.ijb_verification(embedder, args.root, target=args.target, flip=not args.no_flip,
                                 detector_scores=not args.no_detector_scores, batch_size=args.batch_size,
                                 corrupt_files=log, out_dir=args.out)
    print(report)
    if log.count:
        print(f"warning: {log.count} face image(s) could not be decoded and were scored as blank images",
              file=sys.stderr)
    print(f"\nwrote report.json, scores.npy and roc.png to {args.out}")
    return report


def pack(args):
    """`facemargin pack`: an image folder as an InsightFace RecordIO training set.

    Writes `OUT.rec`, with its `.idx` and `property` beside it (`data.pack_recordio`), and
    prints how many images and identities it packed.

    Args:
        args: the parsed command line: `folder`, `out` and `layout`.

    Raises:
        UsageError: `OUT` does not end in `.rec`, `FOLDER` is not a folder, or `OUT`'s folder
            cannot be written.
    """
    from keras_facemargin import data

    if not args.out.endswith(".rec"):
        raise UsageError(f"OUT must be a .rec file (the .idx and property are written beside it); got "
                         f"{args.out!r}")
    if not os.path.isdir(args.folder):
        raise UsageError(f"FOLDER must be an image folder with one sub-folder per identity; got "
                         f"{args.folder!r} (no such folder)")
    _checks.check_writable_dir("OUT.rec's folder", os.path.dirname(os.path.abspath(args.out)))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    index = data.pack_recordio(args.folder, args.out, layout=args.layout)
    print(f"packed {len(index)} images of {index.num_classes} identities into {args.out} "
          f"(and {os.path.splitext(args.out)[0]}.idx, property)")


# ---- embed ------------------------------------------------------------------------------------


def embed(args):
    """`facemargin embed`: the embedding of every image under a folder, into an `.npz`.

    Images are found recursively and taken in sorted path order. The file holds `embeddings`
    (unit rows `[N, dim]`; with `--flip`, of the sum of each image's and its mirror's), `paths`,
    `corrupt` (images that did not decode: their rows are NaN) and `reasons` (why, or "").

    Args:
        args: the parsed command line: `model`, `images`, `out`, `flip` and `batch_size`.

    Raises:
        UsageError: a `--model` that cannot be loaded, or `--images` holds no images.
    """
    import numpy as np

    from keras_facemargin import data

    embedder = load_embedder(args.model)
    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(args.images)
        for name in names
        if name.lower().endswith(data.IMAGE_EXTENSIONS)
    )
    if not paths:
        raise UsageError(f"--images {args.images!r} holds no images ({', '.join(data.IMAGE_EXTENSIONS)})")
    embeddings, corrupt, bad = _embed_images(embedder, paths, args.batch_size, args.flip)
    reasons = np.array([""] * len(paths), dtype=object)
    for item in bad:
        reasons[paths.index(item.path)] = item.reason
    np.savez(args.out, embeddings=embeddings, paths=np.array(paths), corrupt=corrupt,
             reasons=reasons.astype(str))
    print(f"wrote {len(paths)} embeddings of size {embeddings.shape[1]} to {args.out}")
    if corrupt.any():
        print(f"warning: {int(corrupt.sum())} image(s) could not be decoded; their rows are NaN and "
              f"marked in 'corrupt': " + "; ".join(f"{f.path} ({f.reason})" for f in bad[:5]),
              file=sys.stderr)


# ---- export -----------------------------------------------------------------------------------


def export(args):
    """`facemargin export`: the embedder of a `.keras` model as a SavedModel, ONNX or LiteRT.

    The head is cut off (`evaluation.embedding_model`) and the embedder written by
    `export.export_embedder`, `export_onnx` or `export_litert`, as `--format` says.

    Args:
        args: the parsed command line: `model`, `format` and `out`.

    Raises:
        UsageError: `--model` is not an existing `.keras` file that loads, or `--out` is a
            folder where `--format` writes a file.
    """
    from keras_facemargin.evaluation import embedding_model
    from keras_facemargin.export import export_embedder, export_litert, export_onnx

    if not (args.model.endswith(".keras") and os.path.isfile(args.model)):
        raise UsageError(f"--model must be a .keras file (such as RUN_DIR/model.keras); got {args.model!r}")
    embedder = embedding_model(load_keras_model(args.model))
    if args.format == "saved_model":
        # After MagFace the feature norm is a quality score: served too, as at the end of `train`.
        export_embedder(embedder, args.out, quality=_trained_with_magface(args.model))
    else:
        {"onnx": export_onnx, "litert": export_litert}[args.format](embedder, args.out)
    print(f"exported the embedder of {args.model} to {args.out} ({args.format})")


def _trained_with_magface(path):
    """Whether the `.keras` file at `path` was compiled with MagFace (its config.json says)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            compiled = json.loads(archive.read("config.json")).get("compile_config") or {}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return "MagFaceLoss" in json.dumps(compiled.get("loss"))


# ---- pairs ------------------------------------------------------------------------------------


def pairs(args):
    """`facemargin pairs`: balanced genuine and impostor pairs of an image folder, as a list.

    Draws `--num-pairs` pairs (`ImageIndex.sample_pairs`, seeded by `--seed`) and writes one
    tab-separated line `path_a path_b 1|0` each, the paths relative to `--images`.

    Args:
        args: the parsed command line: `images`, `out`, `num_pairs` and `seed`.

    Raises:
        UsageError: `--images` is not an image folder with one sub-folder per identity.
    """
    from keras_facemargin.data import ImageIndex

    try:
        index = ImageIndex.from_directory(args.images)
    except ValueError as error:
        raise UsageError(f"--images {args.images!r}: {error}") from None
    a, b, same = index.sample_pairs(args.num_pairs, seed=args.seed)
    root = os.path.abspath(args.images)
    with open(args.out, "w", encoding="utf-8") as f:
        for i, j, s in zip(a, b, same, strict=True):
            cells = [os.path.relpath(index.paths[k], root) for k in (i, j)]
            f.write("\t".join([*cells, "1" if s else "0"]) + "\n")
    print(f"wrote {len(same)} pairs ({int(same.sum())} genuine) of {index.num_classes} identities to "
          f"{args.out} (tab-separated, relative to {args.images})")


# ---- duplicates -------------------------------------------------------------------------------


def duplicates(args):
    """`facemargin duplicates`: identities of a training set that a trained model puts together.

    Embeds every image of `--images` (a folder, or an InsightFace RecordIO `.rec`) once, takes
    each identity's unit mean embedding (`evaluation.near_duplicate_identities`), prints the
    pairs of identities whose cosine reaches `--threshold`, highest first, and writes the groups
    they link to `--out`, one group a line, which `facemargin train --merge-identities` reads.
    Images that do not decode are left out of their identity's mean and named on stderr.

    Args:
        args: the parsed command line: `model`, `images`, `out`, `threshold`, `batch_size` and
            `show`.

    Raises:
        UsageError: `--images` is neither an image folder with one sub-folder per identity nor
            a readable `.rec` with its `.idx`, or `--model` does not load.
    """
    from keras_facemargin import data
    from keras_facemargin import evaluation as ev

    try:
        if args.images.endswith(".rec"):
            index = data.ImageIndex.from_recordio(args.images)
        else:
            index = data.ImageIndex.from_directory(args.images)
    except ValueError as error:
        raise UsageError(f"--images {args.images!r}: {error}") from None
    embeddings, _, bad = _embed_images(load_embedder(args.model), index, args.batch_size, flip=False)
    pairs, groups = ev.near_duplicate_identities(embeddings, index.labels, args.threshold,
                                                 num_classes=index.num_classes)
    names = index.class_names
    data.write_identity_groups(
        args.out, [[names[k] for k in group] for group in groups],
        comment=f"facemargin duplicates --threshold {args.threshold:g}: {len(pairs)} pairs of "
        f"{index.num_classes} identities of {args.images}; one group a line")
    for a, b, cosine in pairs[:args.show]:
        print(f"{cosine:.3f}\t{names[a]}\t{names[b]}")
    if len(pairs) > args.show:
        print(f"... and {len(pairs) - args.show} more pairs")
    merged = sum(len(group) for group in groups)
    print(f"{len(pairs)} pairs of identities at cosine >= {args.threshold:g} link {merged} of the "
          f"{index.num_classes} identities into {len(groups)} groups; wrote them to {args.out} "
          f"(facemargin train --merge-identities {args.out} trains each group as one identity)")
    if bad:
        print(f"warning: {len(bad)} image(s) could not be decoded and were left out: "
              + "; ".join(f"{f.path} ({f.reason})" for f in bad[:5]), file=sys.stderr)


# ---- train ------------------------------------------------------------------------------------


def train(config, given=(), verbose=2):
    """`facemargin train`: trains, or resumes, the run that `config` describes.

    Unlike the other commands it takes the configuration, not the parsed command line: `main`
    builds and checks it from the flags and `--config` before TensorFlow loads. Trains through
    `recipe.train` and prints where the embedder was exported.

    Args:
        config: a checked `TrainConfig`.
        given: the names of the fields the user set (see `TrainConfig.check_combination`).
        verbose: `fit`'s verbosity (`main` passes 1 on a terminal, else 2).

    Returns:
        The `recipe.Run` (`main` does not use it).

    Raises:
        ValueError, keras_facemargin.training.TrainingDiverged: as `recipe.train`.
    """
    from keras_facemargin import recipe

    with _InterruptBetweenSteps() as interrupt:
        run = recipe.train(config, given=given, verbose=verbose, callbacks=[interrupt.callback()])
    if run.export_path:
        print(f"exported the embedding model to {run.export_path}")
    return run


def _parse_value(kind, name):
    """An argparse type: `kind` values, plus 'auto' and 'none' where the field allows them."""

    def parse(text):
        word = text.strip().lower()
        if word == config_lib.AUTO:
            return config_lib.AUTO
        if word == "none":
            return None
        if kind is bool:
            if word in ("true", "yes", "1"):
                return True
            if word in ("false", "no", "0"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}; got {text!r}") from None

    parse.__name__ = name
    return parse


def _kind(field):
    """The value type of a field, from its annotation (`float | None` → float)."""
    annotation = field.type.__name__ if isinstance(field.type, type) else str(field.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if annotation.split("|")[0].strip() == name:
            return kind
    return str


class _Parser(argparse.ArgumentParser):
    """One line for a mistake, `facemargin <command>: error: ...`, not the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS, False) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_train_flags(p):
    p.add_argument("--config", help="YAML or JSON file of these settings; flags given win")
    defaults = config_lib.TrainConfig()
    for field in config_lib.TrainConfig.fields():
        meta = field.metadata
        default = getattr(defaults, field.name)
        kind = _kind(field)
        shown = default is not None and default is not False and default != ""
        options = {"help": meta["help"] + (f" (default: {default})" if shown else ""),
                   "default": argparse.SUPPRESS}
        if field.name == "augment":
            options["type"] = str
        elif field.name == "tensorboard":
            options["action"] = "store_true"
        elif meta["many"]:
            options["nargs"] = "+"
        elif meta["choices"]:
            options["choices"] = meta["choices"]
        else:
            options["type"] = _parse_value(kind, field.name)
        p.add_argument(config_lib.flag(field.name), **options)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}")
    return value


def _cosine(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a cosine in (0, 1]; got {text!r}")
    return value


def _parser():
    from keras_facemargin import __version__

    parser = _Parser(prog="facemargin", description=__doc__.splitlines()[0].replace("`", ""),
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"facemargin {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own log lines, and an error's whole traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", formatter_class=_Formatter,
                       help="train on an image folder (one sub-folder per identity), resumably",
                       description="Train a recognizer on an image folder; the same command resumes an "
                       "interrupted run. 'auto' values are decided from the data (README: Training "
                       "recipe).")
    _add_train_flags(p)

    p = sub.add_parser("evaluate", formatter_class=_Formatter,
                       help="verification report, JSON and plots for one or several pair files")
    p.add_argument("--model", required=True, help="SavedModel folder or .keras file")
    p.add_argument("--pairs", required=True, nargs="+",
                   help="pair files: lists, LFW pairs.txt or InsightFace .bin (lfw.bin cfp_fp.bin ...)"),
    p.add_argument("--root", help="folder the pair list's paths are relative to (LFW: the image folder)")
    p.add_argument("--flip", action="store_true", help="flip test: add each image's mirror's embedding")
    p.add_argument("--out", default="runs/evaluate", help="folder of report.json and the plots")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images embedded at a time")
    p.add_argument("--folds", type=_positive_int, default=10,
                   help="folds of the k-fold accuracy (LFW's pairs.txt brings its own)")

    p = sub.add_parser("evaluate-ijb", formatter_class=_Formatter,
                       help="IJB-B/IJB-C 1:1 template verification (TAR at FAR 1e-6 ... 1e-1)")
    p.add_argument("--model", required=True, help="SavedModel folder or .keras file")
    p.add_argument("--root", required=True, help="the release folder (meta/ and loose_crop/)")
    p.add_argument("--target", choices=("IJBB", "IJBC"), help="default: found from the meta files")
    p.add_argument("--no-flip", action="store_true", help="without the flip test")
    p.add_argument("--no-detector-scores", action="store_true",
                   help="pool images unweighted (default: weighted by detector score)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="faces embedded at a time")
    p.add_argument("--out", default="runs/evaluate-ijb", help="folder of report.json, scores and roc.png")

    p = sub.add_parser("pack", formatter_class=_Formatter,
                       help="pack an image folder into an InsightFace RecordIO training set")
    p.add_argument("folder", metavar="FOLDER", help="one sub-folder per identity")
    p.add_argument("out", metavar="OUT.rec", help="the .rec to write (.idx and property beside it)")
    p.add_argument("--layout", choices=("insightface", "list"), default="insightface",
                   help="insightface: identity records after the images; list: labelled images")

    p = sub.add_parser("embed", formatter_class=_Formatter,
                       help="embed every image under a folder into an .npz")
    p.add_argument("--model", required=True, help="SavedModel folder or .keras file")
    p.add_argument("--images", required=True, help="folder searched recursively for images")
    p.add_argument("--out", required=True, help="the .npz: embeddings, paths, corrupt, reasons")
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images embedded at a time")

    p = sub.add_parser("export", formatter_class=_Formatter,
                       help="export the embedder of a .keras model as a SavedModel, ONNX or LiteRT")
    p.add_argument("--model", required=True, help="a .keras file, such as RUN_DIR/model.keras")
    p.add_argument("--format", choices=("saved_model", "onnx", "litert"), default="saved_model",
                   help="saved_model (TensorFlow serving), onnx (needs the [onnx] extra) or litert "
                   "(TensorFlow Lite, for phones)")
    p.add_argument("--out", required=True, help="the SavedModel folder, .onnx or .tflite file")

    p = sub.add_parser("duplicates", formatter_class=_Formatter,
                       help="identities of a training set that a trained model puts together, "
                       "as groups for train --merge-identities")
    p.add_argument("--model", required=True, help="SavedModel folder or .keras file")
    p.add_argument("--images", required=True, help="the training set: a folder with one sub-folder per "
                   "identity, or an InsightFace RecordIO train.rec (train.idx beside it)")
    p.add_argument("--out", required=True, help="the groups file: one group a line, names tab-separated")
    p.add_argument("--threshold", type=_cosine, default=0.9,
                   help="cosine of two identities' mean embeddings from which they count as one")
    p.add_argument("--show", type=_positive_int, default=20, help="pairs printed, highest first")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images embedded at a time")

    p = sub.add_parser("pairs", formatter_class=_Formatter,
                       help="write balanced genuine/impostor pairs of an image folder")
    p.add_argument("--images", required=True, help="one sub-folder per identity")
    p.add_argument("--out", required=True, help="the pair list (tab-separated 'a b label' lines)")
    p.add_argument("--num-pairs", type=_positive_int, default=6000, help="pairs wanted, half genuine")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.commands = sub.choices  # so that `main` reports a command's unknown flags as that command
    return parser


class _InterruptBetweenSteps:
    """Ctrl-C during `fit` stops training after the current step, as a KeyboardInterrupt.

    Python runs a signal handler in the main thread whenever that thread runs Python, which
    during `fit` includes the code TensorFlow calls back into (a `tf.data` generator): a
    KeyboardInterrupt raised there became a TensorFlow error inside the pipeline and could be
    lost, and training went on. So while training, the handler only sets a flag, and a callback
    raises the KeyboardInterrupt at the end of the step, in Keras's own loop. A second Ctrl-C
    raises at once.
    """

    def __init__(self):
        self.requested = False
        self.active = False

    def __enter__(self):
        import signal

        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        signal.signal(signal.SIGINT, self._previous)
        return False

    def _handle(self, signum, frame):
        if self.active and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt

    def callback(self):
        import keras

        owner = self

        class StopOnInterrupt(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                owner.active = True

            def on_train_batch_end(self, batch, logs=None):
                if owner.requested:
                    raise KeyboardInterrupt

            def on_epoch_end(self, epoch, logs=None):
                if owner.requested:
                    raise KeyboardInterrupt

            def on_train_end(self, logs=None):
                owner.active = False

        return StopOnInterrupt()


def _check_paths(args):
    """The paths of a command other than `train`, checked before TensorFlow loads."""
    model = getattr(args, "model", None)
    if model is not None and not os.path.exists(model):
        raise UsageError(f"--model must be a SavedModel folder or a .keras file; got {model!r} "
                         f"(no such file or folder)")
    for name in ("images", "folder", "root"):
        value = getattr(args, name, None)
        if name == "images" and args.command == "duplicates" and str(value).endswith(".rec"):
            try:
                _checks.check_existing_file("--images", value, "RecordIO .rec file")
            except ValueError as error:
                raise UsageError(str(error)) from None
        elif value is not None:
            try:
                _checks.check_existing_dir("FOLDER" if name == "folder" else f"--{name}", value)
            except ValueError as error:
                raise UsageError(str(error)) from None
    if args.command == "embed" and not args.out.endswith(".npz"):
        args.out += ".npz"  # what np.savez writes; the message then names the real file
    writes_a_file = args.command in ("embed", "pairs", "pack", "duplicates") or (
        args.command == "export" and args.format != "saved_model")
    if writes_a_file:
        flag = "OUT.rec" if args.command == "pack" else "--out"
        if os.path.isdir(args.out):
            raise UsageError(f"{flag} must be a file; got the folder {args.out!r}")
        _checks.check_writable_dir(f"{flag}'s folder", os.path.dirname(os.path.abspath(args.out)))
    elif getattr(args, "out", None) is not None:
        _checks.check_writable_dir("--out", args.out)


def _train_config(args):
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "verbose")}
    given = set(flags)
    if args.config:
        config = config_lib.TrainConfig.from_file(args.config)
        given |= {k for k, v in dataclasses.asdict(config).items()
                  if v != getattr(config_lib.TrainConfig(), k)}
    else:
        config = config_lib.TrainConfig()
    config = dataclasses.replace(config, **flags).validate()
    config.check_combination(given)  # refusals now; warnings come when the run is prepared
    return config, given


def main(argv=None):
    """The `facemargin` command; returns its exit status.

    A mistake is printed on stderr as one line, `facemargin <command>: error: ...`. The `train`
    flags and `--config` file are checked before TensorFlow loads.

    Args:
        argv: the arguments after the program's name; None: `sys.argv[1:]`.

    Returns:
        0 when the command succeeded, and after `--help` or `--version`; 2 for a mistake in the
        command line or any `ValueError` the command raised (a bad value, a file that cannot be
        read, data that do not fit the configuration); 1 when training diverged
        (`TrainingDiverged`); 130 when interrupted (a `train` run then resumes with the same
        command). Any other exception propagates.
    """
    parser = _parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # `facemargin pack: error: ...`, not argparse's `facemargin: error: ...`
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit:  # --help, --version, or a mistake already reported in one line
        return exit.code
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "train":
            config, given = _train_config(args)  # every flag checked before TensorFlow loads
            _load_tensorflow(args.verbose)
            train(config, given, verbose=1 if sys.stdout.isatty() else 2)
        else:
            _check_paths(args)
            _load_tensorflow(args.verbose)
            commands = {"evaluate": evaluate, "evaluate-ijb": evaluate_ijb, "embed": embed,
                        "export": export, "pairs": pairs, "pack": pack, "duplicates": duplicates}
            commands[args.command](args)
    except (ValueError, OSError) as error:
        if args.verbose:
            raise  # --verbose: the whole traceback, for a report
        print(f"facemargin {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = " (the same command resumes from the last backup)" if args.command == "train" else ""
        print(f"facemargin {args.command}: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as error:
        from keras_facemargin.training import TrainingDiverged

        if isinstance(error, TrainingDiverged):
            print(f"facemargin {args.command}: error: {error}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
