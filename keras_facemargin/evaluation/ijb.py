"""IJB-B / IJB-C 1:1 verification (template against template), as InsightFace evaluates it.

Follows `recognition/arcface_torch/eval_ijbc.py`: the release's `meta/<target>_face_tid_mid.txt`
(`image template media` per face), `meta/<target>_name_5pts_score.txt` (`image x1 y1 ... x5 y5
detector_score`, the same faces in the same order) and `meta/<target>_template_pair_label.txt`
(`template_a template_b label`); each loose crop (`loose_crop/<image>`) aligned from its five
landmarks to ArcFace's 112×112 template; image features (flip test: the image's plus its
mirror's, not normalised, so that their norm weighs them, and times the detector score);
media features the mean of a media's images, template features the sum of its media's,
L2-normalised; each pair scored by the cosine of its templates; TAR at FAR 1e-6 … 1e-1.
"""

import dataclasses
import logging
import math
import os

import numpy as np
from sklearn import metrics as sk_metrics

from keras_facemargin.evaluation.scores import embed, indexed_pair_scores, normalize_rows
from keras_facemargin.evaluation.verification import JsonReport, far_name

logger = logging.getLogger(__name__)

TARGETS = ("IJBB", "IJBC")
FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclasses.dataclass
class IJBProtocol:
    """One IJB release's 1:1 protocol, read by `read_ijb`.

    Attributes:
        target: `"IJBB"` or `"IJBC"`.
        image_paths: each face's loose crop, `[faces]`.
        landmarks: `[faces, 5, 2]` float32 (x, y) pixels.
        detector_scores: `[faces]` float32, the face detector's score of each face.
        templates, medias: `[faces]` int64 ids: the template and the media of each face.
        template_a, template_b: `[pairs]` int64 template ids of the pairs to score.
        labels: `[pairs]` int8, 1 where the two templates are the same person, else 0.
    """

    target: str
    image_paths: np.ndarray
    landmarks: np.ndarray
    detector_scores: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    template_a: np.ndarray
    template_b: np.ndarray
    labels: np.ndarray


def _meta(root, target, kind):
    return os.path.join(root, "meta", f"{target.lower()}_{kind}.txt")


def _read_lines(path, columns, description):
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != columns:
                raise ValueError(f"{path}, line {number}: expected {description}; got {line.strip()!r}")
            rows.append((number, fields))
    return rows


def read_ijb(root, target=None, check_files=True):
    """Reads an IJB-B or IJB-C release's 1:1 protocol (see the module doc for the files).

    Args:
        root: the release's folder (`IJBC/`, holding `meta/` and `loose_crop/`).
        target: `"IJBB"` or `"IJBC"`; None: whichever the meta folder holds.
        check_files: whether to check that every face's image exists.

    Returns:
        An `IJBProtocol`.
    """
    root = os.fspath(root)
    if not os.path.isdir(os.path.join(root, "meta")):
        raise ValueError(f"root must be an IJB release folder with a meta/ folder; got {root!r}")
    if target is None:
        found = [t for t in TARGETS if os.path.isfile(_meta(root, t, "face_tid_mid"))]
        if len(found) != 1:
            raise ValueError(
                f"target must be given ({TARGETS}) when {root}/meta holds "
                f"{'both' if found else 'neither'} ijbb_face_tid_mid.txt and ijbc_face_tid_mid.txt"
            )
        target = found[0]
    target = str(target).upper().replace("-", "")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
    paths = {kind: _meta(root, target, kind)
             for kind in ("face_tid_mid", "name_5pts_score", "template_pair_label")}
    for path in paths.values():
        if not os.path.isfile(path):
            raise ValueError(f"root must hold {target}'s metadata; {path!r} does not exist")
    faces = _read_lines(paths["face_tid_mid"], 3, "'image template_id media_id'")
    points = _read_lines(paths["name_5pts_score"], 12,
                         "'image x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 detector_score'")
    if len(faces) != len(points):
        raise ValueError(
            f"{paths['face_tid_mid']} and {paths['name_5pts_score']} must list the same faces; "
            f"got {len(faces)} and {len(points)} lines"
        )
    names = []
    for (number, face), (_, point) in zip(faces, points, strict=True):
        if face[0] != point[0]:
            raise ValueError(
                f"{paths['name_5pts_score']}, line {number}: expected face {face[0]!r} (line "
                f"{number} of {os.path.basename(paths['face_tid_mid'])}); got {point[0]!r}"
            )
        names.append(face[0])
    try:
        ids = np.array([[int(f[1]), int(f[2])] for _, f in faces], dtype=np.int64)
    except ValueError:
        bad = next(n for n, f in faces if not (f[1].isdigit() and f[2].isdigit()))
        raise ValueError(f"{paths['face_tid_mid']}, line {bad}: template and media ids must be "
                         "integers") from None
    try:
        values = np.array([[float(v) for v in f[1:]] for _, f in points], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{paths['name_5pts_score']}: landmarks and scores must be numbers") from None
    from keras_facemargin.data import text_tables

    pairs = text_tables.read_int_columns(paths["template_pair_label"], 3,
                                         "'template_a template_b label'")
    if len(pairs) == 0:
        raise ValueError(f"{paths['template_pair_label']} lists no template pair")
    bad = np.flatnonzero((pairs[:, 2] != 0) & (pairs[:, 2] != 1))
    if len(bad):
        raise ValueError(f"{paths['template_pair_label']}, line {bad[0] + 1}: label must be 0 or "
                         f"1; got {pairs[bad[0], 2]}")
    image_paths = np.array([os.path.join(root, "loose_crop", n) for n in names], dtype=object)
    if check_files:
        missing = [p for p in image_paths if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"{len(missing)} of the {len(image_paths)} face images do not exist, "
                             f"the first {missing[0]!r}")
    known = np.unique(ids[:, 0])
    unknown = ~np.isin(pairs[:, :2], known)
    if unknown.any():
        row = int(np.flatnonzero(unknown.any(axis=1))[0])
        raise ValueError(
            f"{paths['template_pair_label']}, line {row + 1}: template {pairs[row, :2][unknown[row]][0]}"
            f" has no face in {os.path.basename(paths['face_tid_mid'])}"
        )
    return IJBProtocol(
        target=target,
        image_paths=image_paths,
        landmarks=values[:, :10].reshape(-1, 5, 2).astype(np.float32),
        detector_scores=values[:, 10].astype(np.float32),
        templates=ids[:, 0],
        medias=ids[:, 1],
        template_a=pairs[:, 0].copy(),
        template_b=pairs[:, 1].copy(),
        labels=pairs[:, 2].astype(np.int8),
    )


def template_features(features, templates, medias, weights=None):
    """Template features from image features, as `eval_ijbc.py`'s `image2template_feature`.

    Each image's features times its weight (the detector score, or 1); a media's feature is the
    mean of its images'; a template's the sum of its media's, L2-normalised.

    Args:
        features: `[faces, dim]` image features.
        templates, medias: `[faces]` ids.
        weights: optional `[faces]` weights.

    Returns:
        `(template_ids [templates], features float32 [templates, dim])`, ids in increasing order.
    """
    features = np.asarray(features, np.float64)
    templates, medias = np.asarray(templates), np.asarray(medias)
    if features.ndim != 2 or templates.shape != (len(features),) or medias.shape != templates.shape:
        raise ValueError(
            f"features must be [faces, dim] with one template and media id per face; got "
            f"features {features.shape}, templates {templates.shape}, medias {medias.shape}"
        )
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if weights.shape != templates.shape:
            raise ValueError(f"weights must be one per face {templates.shape}; got {weights.shape}")
        features = features * weights[:, None]
    order = np.lexsort((medias, templates))
    t, m = templates[order], medias[order]
    new_media = np.r_[True, (t[1:] != t[:-1]) | (m[1:] != m[:-1])]
    starts = np.flatnonzero(new_media)
    counts = np.diff(np.r_[starts, len(t)])
    media = np.add.reduceat(features[order], starts, axis=0) / counts[:, None]
    media_template = t[starts]
    new_template = np.r_[True, media_template[1:] != media_template[:-1]]
    template_starts = np.flatnonzero(new_template)
    pooled = np.add.reduceat(media, template_starts, axis=0)
    norms = np.sqrt(np.sum(pooled * pooled, axis=1, keepdims=True))
    return media_template[template_starts], (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def score_template_pairs(template_ids, features, template_a, template_b, chunk_size=65536):
    """Cosine scores of template pairs, `chunk_size` pairs at a time.

    The gathered rows of one chunk take `2 · chunk_size · dim · 4` bytes (256 MiB at 65,536 ×
    512): IJB-C's 15.6M pairs are scored in that much memory beyond the scores themselves.

    Args:
        template_ids: `[templates]` ids, one per row of `features` (as `template_features`
            returns them; any order).
        features: `[templates, dim]` template features (L2-normalised: their dot is the cosine).
        template_a, template_b: `[pairs]` template ids; an id without features is a `ValueError`.
        chunk_size: pairs scored at a time.

    Returns:
        float32 cosine scores `[pairs]`.
    """
    template_ids = np.asarray(template_ids)
    order = np.argsort(template_ids)
    sorted_ids = template_ids[order]
    rows = []
    for name, ids in (("template_a", template_a), ("template_b", template_b)):
        ids = np.asarray(ids)
        at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        missing = sorted_ids[at] != ids
        if missing.any():
            raise ValueError(f"{name} holds template {ids[missing][0]}, which has no features "
                             f"({int(missing.sum())} such pairs)")
        rows.append(order[at])
    return indexed_pair_scores(features, rows[0], rows[1], chunk_size=chunk_size)


def _nearest_far_tar(far, tar, target):
    """eval_ijbc.py's table: the TAR of the ROC point whose FAR is nearest the target (of
    equally near points, the one with the largest TAR)."""
    distance = np.abs(far - target)
    return float(tar[np.flatnonzero(distance == distance.min())[-1]])


@dataclasses.dataclass
class IJBReport(JsonReport):
    """TAR at each FAR target of an IJB 1:1 evaluation; prints as a table, saves as JSON.

    `tar_at_far` uses the smallest threshold whose FAR does not exceed the target (as
    `verification_report`); `tar_at_far_insightface` reads the ROC point nearest the target,
    as the table of `eval_ijbc.py` that published IJB figures come from. FAR targets are the
    float keys of the three dicts.

    Attributes:
        target: `"IJBB"`, `"IJBC"`, or the name given to `ijb_report`.
        num_templates: templates that were pooled (0 where unknown).
        num_pairs: template pairs scored.
        num_genuine: of which same-identity pairs.
        auc: area under the ROC curve.
        tar_at_far: `{far_target: tar}`.
        thresholds_at_far: `{far_target: threshold}` (cosines; ±inf where nothing is accepted).
        tar_at_far_insightface: `{far_target: tar}` at the ROC point nearest each target.
        curve: the ROC `(far, tar)` that `plot_ijb_roc` draws, or None; not saved in JSON.
    """

    target: str
    num_templates: int
    num_pairs: int
    num_genuine: int
    auc: float
    tar_at_far: dict
    thresholds_at_far: dict
    tar_at_far_insightface: dict
    curve: tuple = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self):
        """The report in plain JSON types, without the ROC curve.

        Returns:
            A dict of the fields but `curve`, FAR keys as short strings (`"1e-3"`), and None for
            a threshold that accepts nothing (±inf).
        """
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "curve"}
        for key in ("tar_at_far", "tar_at_far_insightface"):
            data[key] = {far_name(k): v for k, v in data[key].items()}
        data["thresholds_at_far"] = {far_name(k): (v if math.isfinite(v) else None)
                                     for k, v in self.thresholds_at_far.items()}
        return data

    def __str__(self):
        lines = [f"{self.target} 1:1: {self.num_templates} templates, {self.num_pairs} pairs "
                 f"({self.num_genuine} genuine), AUC {self.auc:.6f}",
                 f"{'FAR':>6}  {'TAR':>8}  {'TAR (nearest FAR)':>17}  {'threshold':>9}"]
        for far, tar in self.tar_at_far.items():
            lines.append(f"{far_name(far):>6}  {tar:8.4f}  {self.tar_at_far_insightface[far]:17.4f}"
                         f"  {self.thresholds_at_far[far]:9.4f}")
        return "\n".join(lines)


def ijb_report(labels, scores, far_targets=FAR_TARGETS, target="IJB", num_templates=0):
    """TAR at each FAR target of template-pair scores, both ways the IJB protocol is reported.

    Args:
        labels: `[pairs]`, 1 = same identity, 0 = different; both must occur.
        scores: `[pairs]` finite cosine scores (higher is same).
        far_targets: FARs at which TAR is reported.
        target: the name of the set in the report (`"IJBC"`, ...).
        num_templates: how many templates the scores came from, for the report.

    Returns:
        An `IJBReport`, whose `curve` holds the ROC `(far, tar)` with scikit-learn's
        `drop_intermediate`, as eval_ijbc.py plots it.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of equal length; got {labels.shape} and "
                         f"{scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; got {int((~np.isfinite(scores)).sum())} NaN/Inf")
    genuine = int(np.count_nonzero(labels == 1))
    if genuine == 0 or genuine == len(labels) or np.count_nonzero(labels == 0) + genuine != len(labels):
        raise ValueError("labels must be 0/1 with both genuine (1) and impostor (0) pairs")
    fars = tuple(float(f) for f in far_targets)
    far, tar, thresholds = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    at = {}
    for f in fars:
        i = int(np.searchsorted(far, f, side="right")) - 1
        at[f] = (float(tar[i]), float(thresholds[i]))
    auc = float(sk_metrics.auc(far, tar))
    del far, tar, thresholds
    # eval_ijbc.py calls roc_curve with its default drop_intermediate=True.
    far, tar, _ = sk_metrics.roc_curve(labels, scores)
    nearest = {f: _nearest_far_tar(far, tar, f) for f in fars}
    return IJBReport(target, int(num_templates), len(labels), genuine, auc,
                     {f: v[0] for f, v in at.items()}, {f: v[1] for f, v in at.items()}, nearest,
                     curve=(far, tar))


def plot_ijb_roc(report, path):
    """The ROC of an `IJBReport` on eval_ijbc.py's axes (FAR 1e-6 … 1e-1, log scale).

    Args:
        report: an `IJBReport` with its `curve` (as `ijb_report` makes it).
        path: the PNG to write.

    Returns:
        The path.
    """
    from keras_facemargin.evaluation.plots import plot_roc_curves

    far, tar = report.curve
    return plot_roc_curves({report.target: (far, tar)}, path, title=f"ROC on {report.target}",
                           far_range=(1e-6, 1e-1), precomputed=True)


def ijb_verification(embedder, root, target=None, image_size=None, flip=True,
                     detector_scores=True, normalize_images=False, far_targets=FAR_TARGETS,
                     batch_size=128, chunk_size=65536, corrupt_files=None, out_dir=None):
    """IJB-B / IJB-C 1:1 verification of an embedding model, as InsightFace's `eval_ijbc.py`.

    Reads the release (`read_ijb`), aligns every face from its landmarks as it decodes it,
    embeds it (with its mirror: `flip`), pools images into media and templates
    (`template_features`, weighted by the detector scores with `detector_scores`), scores every
    template pair in chunks (`score_template_pairs`) and reports TAR at each FAR target.

    Args:
        embedder: a Keras model, or a function from float32 image batches in [0, 255] to
            embeddings (with an `image_size` attribute, as the CLI's exported-model loader).
        root: the release folder (holding `meta/` and `loose_crop/`).
        target: `"IJBB"` or `"IJBC"`; None: found from the meta files.
        image_size: side of the aligned crops; by default the embedder's input size.
        flip: add each image's mirror's features to its own (InsightFace's F2 mode).
        detector_scores: weight each image by its detector score (InsightFace's D1 mode).
        normalize_images: L2-normalise image features before pooling (False: InsightFace's N1
            mode, the norm weighs each image).
        far_targets: FARs at which TAR is reported.
        batch_size: images embedded at a time.
        chunk_size: template pairs scored at a time.
        corrupt_files: a `CorruptFileLog` for faces whose images do not decode.
        out_dir: if given, writes `report.json`, `scores.npy` and `roc.png` there.

    Returns:
        An `IJBReport`.

    Example:

    ```python
    report = ijb_verification(embedder, "IJB_release/IJBC")
    print(report)        # TAR at FAR 1e-6 ... 1e-1
    ```
    """
    from keras_facemargin.data import ImageIndex, classification_dataset
    from keras_facemargin.evaluation.pair_sets import embedder_image_size

    protocol = read_ijb(root, target)
    size = embedder_image_size(embedder, image_size)
    if size[0] != size[1]:
        raise ValueError(f"image_size must be square for aligned faces; got {size}")
    faces = len(protocol.image_paths)
    index = ImageIndex(protocol.image_paths, np.zeros(faces, np.int64), ["face"],
                       landmarks=protocol.landmarks)
    images = classification_dataset(index, batch_size, image_size=size, training=False,
                                    corrupt_files=corrupt_files)
    features = embed(embedder, images, batch_size, flip=flip, normalize=False, verbose=0)
    if normalize_images:
        features = normalize_rows(features)
    weights = protocol.detector_scores if detector_scores else None
    ids, pooled = template_features(features, protocol.templates, protocol.medias, weights)
    del features
    scores = score_template_pairs(ids, pooled, protocol.template_a, protocol.template_b,
                                  chunk_size)
    report = ijb_report(protocol.labels, scores, far_targets, protocol.target, len(ids))
    logger.info("%s", report)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        report.to_json(os.path.join(out_dir, "report.json"))
        np.save(os.path.join(out_dir, "scores.npy"), scores)
        plot_ijb_roc(report, os.path.join(out_dir, "roc.png"))
    return report
