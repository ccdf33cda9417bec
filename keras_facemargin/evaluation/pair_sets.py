"""Several verification sets at once (LFW, CFP-FP, AgeDB-30, ...): each unique image decoded and
embedded once, one report per set, one table for all."""

import logging
import os

import numpy as np

from keras_facemargin.evaluation.scores import embed, indexed_pair_scores
from keras_facemargin.evaluation.verification import (
    JsonReport,
    far_name,
    kfold_accuracy_insightface,
    verification_report,
)

logger = logging.getLogger(__name__)


def _set_name(pairs):
    base = os.path.basename(str(pairs.name))
    stem, extension = os.path.splitext(base)
    return stem if extension.lower() in (".bin", ".txt", ".csv", ".lst") else base


class PairSets:
    """Several named verification sets over one table of their unique images.

    An image that appears in several pairs (or several sets) is decoded and embedded once: a
    path counts once whatever the set; the encoded images of `.bin` sets count once per distinct
    content. Each set keeps its pairs as indices into that table.

    Args:
        sets: `VerificationPairs`, a sequence of them, or a mapping `name -> VerificationPairs`.
        names: the sets' names (keys of the logs and rows of the table); by default each set's
            file name without its extension (`lfw` for `lfw.bin`).

    Example:

    ```python
    sets = read_pair_sets(["lfw.bin", "cfp_fp.bin", "agedb_30.bin"])
    print(evaluate_pair_sets(embedder, sets, flip=True).table())
    ```
    """

    def __init__(self, sets, names=None):
        from keras_facemargin.data import VerificationPairs

        if isinstance(sets, VerificationPairs):
            sets = [sets]
        if isinstance(sets, dict):
            names, sets = list(sets) if names is None else names, list(sets.values())
        sets = list(sets)
        if not sets:
            raise ValueError("sets must hold at least one VerificationPairs; got none")
        for item in sets:
            if not isinstance(item, VerificationPairs):
                raise ValueError(f"sets must be VerificationPairs; got {type(item).__name__}")
        names = [_set_name(item) for item in sets] if names is None else [str(n) for n in names]
        if len(names) != len(sets):
            raise ValueError(f"names must give one name per set ({len(sets)}); got {len(names)}")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"the sets' names must be unique; got {repeated} more than once "
                             "(pass names=...)")
        bad = [n for n in names if not n or any(c.isspace() or c in ",/" for c in n)]
        if bad:
            raise ValueError(
                f"names must be non-empty, without spaces, commas or '/' (they become log keys "
                f"val_<name>_auc); got {bad}"
            )
        self.names = tuple(names)
        tables = {False: {}, True: {}}  # from_bytes -> {source: (position, report name)}
        positions = []
        for item in sets:
            table = tables[item.from_bytes]
            slots = []
            for side, column in enumerate((item.images_a, item.images_b)):
                out = np.empty(len(item), np.int64)
                for i, source in enumerate(column):
                    key = source if item.from_bytes else os.path.normpath(str(source))
                    if key not in table:
                        label = f"{item.name}[{2 * i + side}]" if item.from_bytes else str(source)
                        table[key] = (len(table), label)
                    out[i] = table[key][0]
                slots.append(out)
            positions.append((item.from_bytes, slots))
        self._files = [(k, v[1]) for k, v in tables[False].items()]
        self._encoded = [(k, v[1]) for k, v in tables[True].items()]
        self.sets = {}
        for name, item, (from_bytes, (a, b)) in zip(names, sets, positions, strict=True):
            shift = len(self._files) if from_bytes else 0
            self.sets[name] = (a + shift, b + shift, item.is_same.copy(), item.folds)

    def __len__(self):
        """The number of unique images."""
        return len(self._files) + len(self._encoded)

    def __repr__(self):
        sizes = ", ".join(f"{n}: {len(s[2])} pairs" for n, s in self.sets.items())
        return f"PairSets({len(self)} unique images; {sizes})"

    def batches(self, image_size=(112, 112), batch_size=256, resize_mode="resize",
                corrupt_files=None):
        """The unique images in table order, decoded for evaluation (`data.ImageBatches`).

        Args:
            image_size: `(height, width)`.
            batch_size: images per batch.
            resize_mode: `"resize"` or `"center_crop"`.
            corrupt_files: a `CorruptFileLog`, or None (failures are printed to stderr).

        Returns:
            An `ImageBatches` of float32 arrays `[batch, height, width, 3]` in [0, 255],
            `len(self)` images in all; an image that does not decode is blank.
        """
        from keras_facemargin.data import ImageBatches

        parts = [
            ImageBatches([s for s, _ in entries], batch_size, image_size, from_bytes=from_bytes,
                         names=[n for _, n in entries], resize_mode=resize_mode,
                         corrupt_files=corrupt_files)
            for entries, from_bytes in ((self._files, False), (self._encoded, True))
            if entries
        ]
        return parts[0] if len(parts) == 1 else parts[0].concatenate(parts[1])

    def images(self, image_size=(112, 112), batch_size=256, corrupt_files=None):
        """The unique images in memory, in table order (what `VerificationCallback` keeps).

        Args:
            image_size: `(height, width)`.
            batch_size: images decoded at a time.
            corrupt_files: a `CorruptFileLog`, or None (failures are printed to stderr).

        Returns:
            uint8 `[len(self), height, width, 3]`, the decoded pixels rounded.
        """
        out = [np.clip(np.round(batch), 0, 255).astype(np.uint8)
               for batch in self.batches(image_size, batch_size, corrupt_files=corrupt_files)]
        return np.concatenate(out)

    def evaluate(self, embeddings, far_targets=(1e-4, 1e-3, 1e-2), folds=10):
        """Every set's verification metrics from the embeddings of the unique images.

        Args:
            embeddings: `[len(self), dim]`, one row per unique image in table order (as
                `batches` gives them); cosine scores are used.
            far_targets: FARs in (0, 1) at which TAR is reported.
            folds: the k of the k-fold accuracy for sets without folds of their own (LFW's
                pairs.txt has them), lowered to the number of pairs of a smaller set.

        Returns:
            A `PairSetsReport`.
        """
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(embeddings) != len(self):
            raise ValueError(
                f"embeddings must be [unique images={len(self)}, dim]; got shape {embeddings.shape}"
            )
        reports, insightface, curves = {}, {}, {}
        for name, (a, b, same, folds_of_set) in self.sets.items():
            scores = indexed_pair_scores(embeddings, a, b)
            fold_spec = min(folds, len(same)) if folds_of_set is None else folds_of_set
            reports[name] = verification_report(same.astype(int), scores, far_targets,
                                                folds=fold_spec)
            insightface[name] = kfold_accuracy_insightface(same.astype(int), scores,
                                                           fold_spec)[:2]
            curves[name] = (same.astype(int), scores)
        return PairSetsReport(reports, insightface, curves)


def read_pair_sets(paths, root=None, names=None, check_files=True, argument="pairs"):
    """A `PairSets` of pair files in any mix of formats (`.bin`, LFW `pairs.txt`, pair lists).

    Args:
        paths: the pair files (see `data.read_pairs` for how each format is recognised).
        root: LFW's image folder, for any `pairs.txt` among them, and the root of relative paths
            in pair lists.
        names: the sets' names; by default the file names without extension.
        check_files: whether to check that every image file exists.
        argument: what the files are called in error messages (a flag, say `--val-pairs`).

    Returns:
        A `PairSets`, one set per file in order.
    """
    from keras_facemargin.data import read_pairs

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return PairSets([read_pairs(p, root, argument=argument, check_files=check_files) for p in paths],
                    names=names)


def embedder_image_size(embedder, image_size):
    """`image_size` if given, else the embedder's input `(height, width)`."""
    if image_size is not None:
        return image_size
    size = getattr(embedder, "image_size", None)
    if size is None and getattr(embedder, "input_shape", None) is not None:
        size = tuple(embedder.input_shape[1:3])
    if size is None or None in tuple(size):
        raise ValueError(
            "image_size must be given when the embedder does not say its input size; got None"
        )
    return tuple(int(s) for s in size)


def evaluate_pair_sets(embedder, pair_sets, image_size=None, flip=False,
                       far_targets=(1e-4, 1e-3, 1e-2), batch_size=256, corrupt_files=None, folds=10,
                       verbose=0):
    """Verification metrics on several pair sets, with every unique image embedded once.

    Args:
        embedder: a Keras model, or a function from float32 image batches in [0, 255] to
            embeddings (with an `image_size` attribute, as the CLI's exported-model loader).
        pair_sets: a `PairSets` (or what `PairSets` takes).
        image_size: `(height, width)`; by default the embedder's input size.
        flip: the flip test (an image's embedding plus its mirror's).
        far_targets: FARs at which TAR is reported.
        batch_size: images decoded and embedded at a time.
        corrupt_files: a `CorruptFileLog` for images that do not decode (they are scored blank).
        folds: k of the k-fold accuracy of sets without their own folds (at most their pairs).
        verbose: the progress bar of the embedding (as `model.predict`'s).

    Returns:
        A `PairSetsReport`: `.reports[name]` (a `VerificationReport`), `.table()`, `.save(dir)`.

    Example:

    ```python
    result = evaluate_pair_sets(embedder, read_pair_sets(["lfw.bin", "cfp_fp.bin"]), flip=True)
    print(result.table())
    result.save("eval/")
    ```
    """
    if not isinstance(pair_sets, PairSets):
        pair_sets = PairSets(pair_sets)
    size = embedder_image_size(embedder, image_size)
    images = pair_sets.batches(size, batch_size, corrupt_files=corrupt_files)
    embeddings = embed(embedder, images, batch_size=batch_size, flip=flip, verbose=verbose)
    return pair_sets.evaluate(embeddings, far_targets, folds=folds)


class PairSetsReport(JsonReport):
    """The reports of several verification sets: one row each in `table()`, one JSON, plots.

    Made by `PairSets.evaluate` (and so `evaluate_pair_sets`); the first two arguments are kept
    as attributes of the same names.

    Args:
        reports: `name -> VerificationReport`.
        insightface: `name -> (mean, std)` of `kfold_accuracy_insightface`, the figure
            InsightFace prints (`Accuracy-Flip: 0.99817+-0.00229`).
        curves: `name -> (labels, scores)`, `[pairs]` each, for the figures `save` draws.
    """

    def __init__(self, reports, insightface, curves):
        self.reports = reports
        self.insightface = insightface
        self._curves = curves

    @property
    def names(self):
        """The sets' names, in order."""
        return tuple(self.reports)

    def as_logs(self, prefix="val_"):
        """Every set's metrics as Keras logs, for a callback's `logs`.

        Args:
            prefix: the start of every key.

        Returns:
            A dict of floats: each set's `VerificationReport.as_logs` keys under
            `{prefix}{set}_` (`val_lfw_auc`, `val_lfw_tar@far=1e-3`, ...), plus
            `{prefix}{set}_accuracy_10fold_insightface`.
        """
        logs = {}
        for name, report in self.reports.items():
            logs.update(report.as_logs(f"{prefix}{name}_"))
            logs[f"{prefix}{name}_accuracy_10fold_insightface"] = self.insightface[name][0]
        return logs

    def to_dict(self):
        """The reports in plain JSON types.

        Returns:
            A dict from each set's name to its `VerificationReport.to_dict()`, with
            `accuracy_10fold_insightface` and `accuracy_10fold_insightface_std` added.
        """
        out = {}
        for name, report in self.reports.items():
            out[name] = report.to_dict()
            mean, std = self.insightface[name]
            out[name]["accuracy_10fold_insightface"] = mean
            out[name]["accuracy_10fold_insightface_std"] = std
        return out

    def table(self):
        """The reports as a text table.

        Returns:
            A string with a header line and one row per set: pairs, 10-fold accuracy ± std
            (InsightFace's protocol), AUC, EER and TAR at each FAR target.
        """
        fars = list(next(iter(self.reports.values())).tar_at_far)
        header = ["set", "pairs", "10-fold acc ± std", "AUC", "EER"]
        header += [f"TAR@FAR={far_name(f)}" for f in fars]
        rows = []
        for name, report in self.reports.items():
            mean, std = self.insightface[name]
            rows.append([name, str(report.num_pairs), f"{mean:.5f} ± {std:.5f}",
                         f"{report.auc:.4f}", f"{report.eer:.4f}"]
                        + [f"{report.tar_at_far[f]:.4f}" for f in fars])
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                 for r in [header] + rows]
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def save(self, out_dir):
        """Writes the JSON report and the figures of every set.

        Args:
            out_dir: the folder to write into (created if needed).

        Returns:
            The paths written: `report.json`, `roc.png` (every set in one figure), then each
            set's `<set>_det.png` and `<set>_scores.png` (scores with the best-accuracy threshold).
        """
        from keras_facemargin.evaluation import plots

        os.makedirs(out_dir, exist_ok=True)
        written = [os.path.join(out_dir, "report.json")]
        self.to_json(written[0])
        written.append(plots.plot_roc_curves(self._curves, os.path.join(out_dir, "roc.png")))
        for name, (labels, scores) in self._curves.items():
            written.append(plots.plot_det(labels, scores, os.path.join(out_dir, f"{name}_det.png"),
                                          title=f"DET: {name}"))
            written.append(plots.plot_score_histogram(
                labels, scores, os.path.join(out_dir, f"{name}_scores.png"),
                threshold=self.reports[name].best_threshold, title=f"Scores: {name}"))
        return written
