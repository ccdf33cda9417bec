"""Verification (1:1) metrics: ROC, AUC, EER, TAR@FAR, accuracy and the LFW 10-fold protocol.

Every function takes `labels` (1 = same identity, 0 = different) and `scores`, with
`greater_is_same=True` for similarities (cosine) and `False` for distances (squared Euclidean);
distances are negated internally, so every definition below reads "accept when score >= t".
"""

import dataclasses
import json
import math

import numpy as np
from sklearn import metrics as sk_metrics


def check_pairs(labels, scores, greater_is_same):
    """`(labels as booleans, scores as similarities)`, or a ValueError naming what is wrong."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D; got shapes {labels.shape} and {scores.shape}"
        )
    if len(labels) != len(scores):
        raise ValueError(
            f"labels and scores must have the same length; got {len(labels)} and {len(scores)}"
        )
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise ValueError(f"scores must be finite; got {bad} NaN or Inf value(s)")
    unique = np.unique(labels)
    if not np.all(np.isin(unique, [0, 1])):
        raise ValueError(f"labels must be 0 (different) or 1 (same); got values {unique[:5]}")
    if len(unique) < 2:
        kind = "genuine (1)" if len(unique) and unique[0] == 1 else "impostor (0)"
        raise ValueError(
            f"labels must contain both genuine (1) and impostor (0) pairs; got only {kind} pairs "
            f"({len(labels)} in all), for which ROC, AUC and EER are undefined"
        )
    return labels.astype(bool), scores if greater_is_same else -scores


def far_name(far):
    """`1e-3` for 0.001, `5e-2` for 0.05: the short form used in log keys."""
    mantissa, exponent = f"{far:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _check_fars(far_targets):
    fars = tuple(float(f) for f in far_targets)
    for far in fars:
        if not 0.0 < far < 1.0:
            raise ValueError(f"far_targets must be in (0, 1); got {far!r}")
    return fars


def roc(labels, scores, greater_is_same=True):
    """FAR, TAR and thresholds at every distinct score (scikit-learn's `roc_curve`, no dropping).

    Args:
        labels: `[pairs]`, 1 for same identity, 0 for different; both must occur.
        scores: `[pairs]` finite similarities (`greater_is_same=True`) or distances (False).
        greater_is_same: whether a higher score means "same identity" (False for distances).

    Returns:
        Arrays `(far, tar, thresholds)`, one point per distinct score, FAR non-decreasing; thresholds
        are in the caller's units (distances stay distances) and the first point is the
        reject-all threshold.
    """
    labels, scores = check_pairs(labels, scores, greater_is_same)
    far, tar, thresholds = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    return far, tar, thresholds if greater_is_same else -thresholds


def _eer(far, tar):
    """FAR = FRR by linear interpolation between the two ROC points that bracket the crossing."""
    diff = far - (1.0 - tar)  # increases along the curve, from -1 to +1
    i = int(np.searchsorted(diff, 0.0))
    if i == 0:
        return float(far[0])
    d0, d1 = diff[i - 1], diff[i]
    t = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def _tar_at_far(far, tar, thresholds, target):
    """TAR and threshold at the smallest threshold whose FAR <= target."""
    i = int(np.searchsorted(far, target, side="right")) - 1
    return float(tar[i]), float(thresholds[i])


def eer(labels, scores, greater_is_same=True):
    """Equal error rate: where FAR = FRR, interpolated linearly between ROC points.

    Args:
        labels: `[pairs]`, 1 for same identity, 0 for different; both must occur.
        scores: `[pairs]` finite similarities (`greater_is_same=True`) or distances (False).
        greater_is_same: whether a higher score means "same identity" (False for distances).

    Returns:
        The EER, a float in [0, 1].
    """
    far, tar, _ = roc(labels, scores, greater_is_same)
    return _eer(far, tar)


def tar_at_far(labels, scores, far_targets=(1e-3,), greater_is_same=True):
    """TAR at each FAR target, each at the smallest threshold whose FAR does not exceed it.

    Args:
        labels: `[pairs]`, 1 for same identity, 0 for different; both must occur.
        scores: `[pairs]` finite similarities (`greater_is_same=True`) or distances (False).
        far_targets: FARs in (0, 1).
        greater_is_same: whether a higher score means "same identity" (False for distances).

    Returns:
        A dict `{far_target: tar}` (floats), in the order of `far_targets`. A target below
        1 / (impostor pairs) gets the TAR of FAR = 0 (too few impostors to resolve it).
    """
    fars = _check_fars(far_targets)
    far, tar, thresholds = roc(labels, scores, greater_is_same)
    return {f: _tar_at_far(far, tar, thresholds, f)[0] for f in fars}


def _best_threshold(sorted_scores, sorted_labels):
    """Best-accuracy threshold over scores sorted in decreasing order.

    Accepting the first k pairs is correct for the genuine pairs among them and the impostors
    after them; k runs over the boundaries between distinct scores. The threshold is the midpoint
    between the last accepted and the first rejected score (one unit beyond the range at the ends).
    Returns `(threshold, accuracy)`.
    """
    n = len(sorted_scores)
    genuine = np.concatenate([[0], np.cumsum(sorted_labels)])
    impostor_total = n - genuine[-1]
    impostor_accepted = np.arange(n + 1) - genuine
    correct = genuine + (impostor_total - impostor_accepted)
    # Only cut between distinct scores (ties are accepted or rejected together).
    boundary = np.ones(n + 1, dtype=bool)
    boundary[1:n] = sorted_scores[:-1] != sorted_scores[1:]
    correct = np.where(boundary, correct, -1)
    k = int(np.argmax(correct))
    if k == 0:
        threshold = sorted_scores[0] + 1.0 if n else 0.0
    elif k == n:
        threshold = sorted_scores[-1] - 1.0
    else:
        threshold = (sorted_scores[k - 1] + sorted_scores[k]) / 2.0
    return threshold, correct[k] / n


class _Sorted:
    """Labels, scores (as similarities) and fold ids sorted once by decreasing score."""

    def __init__(self, labels, scores, folds):
        n = len(labels)
        if np.ndim(folds) == 0:
            count = int(folds)
            if count < 2 or count > n:
                raise ValueError(
                    f"folds must be between 2 and the number of pairs ({n}); got {folds}"
                )
            fold_ids = np.arange(n) * count // n
        else:
            fold_ids = np.asarray(folds)
            if fold_ids.shape != (n,):
                raise ValueError(
                    f"folds must have one id per pair, shape ({n},); got shape {fold_ids.shape}"
                )
        order = np.argsort(-scores, kind="stable")
        self.scores, self.labels, self.folds = scores[order], labels[order], fold_ids[order]

    def best(self):
        return _best_threshold(self.scores, self.labels)

    def kfold(self):
        accuracies = []
        for fold in np.unique(self.folds):
            train = self.folds != fold
            threshold, _ = _best_threshold(self.scores[train], self.labels[train])
            test = ~train
            accuracies.append(np.mean((self.scores[test] >= threshold) == self.labels[test]))
        return np.array(accuracies, dtype=np.float64)


def best_accuracy(labels, scores, greater_is_same=True):
    """The single threshold that classifies the pairs best, and its accuracy.

    The threshold is the midpoint between two distinct scores (ties are accepted or rejected
    together); where several cuts are equally good, the highest-scoring one.

    Args:
        labels: `[pairs]`, 1 for same identity, 0 for different; both must occur.
        scores: `[pairs]` finite similarities (`greater_is_same=True`) or distances (False).
        greater_is_same: whether a higher score means "same identity" (False for distances).

    Returns:
        `(accuracy, threshold)` as floats, the threshold in the caller's units ("same" when the
        score is >= it for similarities, <= it for distances).
    """
    labels, scores = check_pairs(labels, scores, greater_is_same)
    threshold, accuracy = _Sorted(labels, scores, 2).best()
    return float(accuracy), float(threshold if greater_is_same else -threshold)


def kfold_accuracy(labels, scores, folds=10, greater_is_same=True):
    """The LFW protocol: for each fold, the best threshold on the other folds, accuracy on it.

    The threshold is the midpoint between distinct training scores that maximises training
    accuracy (the highest-scoring such cut if several tie).

    Args:
        labels: `[pairs]`, 1 for same identity, 0 for different; both must occur.
        scores: `[pairs]` finite similarities (`greater_is_same=True`) or distances (False).
        folds: the number of contiguous folds, between 2 and the number of pairs (LFW's
            pairs.txt lists its ten folds in order), or an array of fold ids, one per pair.
        greater_is_same: whether a higher score means "same identity" (False for distances).

    Returns:
        `(mean, std, per_fold_accuracies)`: two floats and a float64 array with one accuracy per
        fold (in order of fold id).
    """
    labels, scores = check_pairs(labels, scores, greater_is_same)
    accuracies = _Sorted(labels, scores, folds).kfold()
    return float(accuracies.mean()), float(accuracies.std()), accuracies


def kfold_accuracy_insightface(labels, scores, folds=10, thresholds=None):
    """10-fold accuracy exactly as InsightFace's `verification.py` computes it for `.bin` sets.

    The pairs' squared distance `‖a − b‖² = 2 − 2·cos` (unit embeddings) is thresholded on a grid
    (`np.arange(0, 4, 0.01)`, "same" when the distance is below the threshold); each fold takes
    the grid threshold with the best accuracy on the other folds (the first one if several tie)
    and measures accuracy on itself. Folds are contiguous, as scikit-learn's `KFold(10)` without
    shuffling cuts them (the first `n % folds` one pair longer), or given as one fold id per pair.

    Args:
        labels: `[pairs]`, 1 for same identity, 0 for different.
        scores: `[pairs]` cosine similarities of unit-length embeddings.
        folds: the number of contiguous folds, or one fold id per pair.
        thresholds: the distance grid; default InsightFace's.

    Returns:
        `(mean, std, per_fold_accuracies)`, what InsightFace prints as `Accuracy-Flip: mean+-std`.
    """
    labels, similarities = check_pairs(labels, scores, True)
    distances = 2.0 - 2.0 * similarities
    grid = np.arange(0, 4, 0.01) if thresholds is None else np.asarray(thresholds, np.float64)
    n = len(labels)
    if np.ndim(folds) == 0:
        count = int(folds)
        if count < 2 or count > n:
            raise ValueError(f"folds must be between 2 and the number of pairs ({n}); got {folds}")
        fold_ids = np.repeat(np.arange(count), [len(p) for p in np.array_split(np.arange(n), count)])
    else:
        fold_ids = np.asarray(folds)
        if fold_ids.shape != (n,):
            raise ValueError(f"folds must have one id per pair, shape ({n},); got shape {fold_ids.shape}")

    def accuracies(dist, same):
        genuine, impostor = np.sort(dist[same]), np.sort(dist[~same])
        accepted_genuine = np.searchsorted(genuine, grid, side="left")  # distance < threshold
        accepted_impostor = np.searchsorted(impostor, grid, side="left")
        return (accepted_genuine + len(impostor) - accepted_impostor) / len(dist)

    out = []
    for fold in np.unique(fold_ids):
        test = fold_ids == fold
        best = grid[int(np.argmax(accuracies(distances[~test], labels[~test])))]
        out.append(np.mean((distances[test] < best) == labels[test]))
    out = np.array(out, dtype=np.float64)
    return float(out.mean()), float(out.std()), out


class JsonReport:
    """`to_json` for a report class that has `to_dict`."""

    def to_json(self, path=None):
        """The report as indented JSON text (`to_dict`), also written to `path` if given.

        Args:
            path: a file to write the JSON to (with a final newline), or None.

        Returns:
            The JSON text.
        """
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text


@dataclasses.dataclass
class VerificationReport(JsonReport):
    """What a verification benchmark reports; prints as a table, serialises to JSON.

    Made by `verification_report`; FAR targets are the float keys of the two dicts.

    Attributes:
        num_pairs: pairs scored.
        num_genuine: of which same-identity pairs (`num_impostors` is the rest).
        auc: area under the ROC curve.
        eer: equal error rate.
        tar_at_far: `{far_target: tar}`.
        thresholds_at_far: `{far_target: threshold}`, in the scores' units; ±inf where the
            threshold accepts nothing.
        best_accuracy: the accuracy of the best single threshold over all pairs.
        best_threshold: that threshold.
        accuracy_10fold: mean accuracy of the k-fold protocol (`kfold_accuracy`).
        accuracy_10fold_std: its standard deviation over the folds.
        greater_is_same: whether the scores were similarities (True) or distances (False).
    """

    num_pairs: int
    num_genuine: int
    auc: float
    eer: float
    tar_at_far: dict
    thresholds_at_far: dict
    best_accuracy: float
    best_threshold: float
    accuracy_10fold: float
    accuracy_10fold_std: float
    greater_is_same: bool = True

    @property
    def num_impostors(self):
        return self.num_pairs - self.num_genuine

    def unresolved_fars(self):
        """The FAR targets too small for the number of impostor pairs to measure.

        Below 1 / (impostor pairs) no impostor can be accepted, so the TAR reported is that of
        FAR = 0 (with 275 impostors, TAR@FAR=1e-4 equals TAR@FAR=1e-3).

        Returns:
            A list of those FAR targets (floats), in the order of `tar_at_far`.
        """
        return [far for far in self.tar_at_far if far * self.num_impostors < 1]

    def to_dict(self):
        """The report in plain JSON types.

        Returns:
            A dict of the fields, with `num_impostors` and `unresolved_fars` added, FAR keys as
            short strings (`"1e-3"`), and None for a threshold that accepts nothing (±inf).
        """
        data = dataclasses.asdict(self)
        data["num_impostors"] = self.num_impostors
        data["unresolved_fars"] = [far_name(k) for k in self.unresolved_fars()]
        data["tar_at_far"] = {far_name(k): v for k, v in self.tar_at_far.items()}
        data["thresholds_at_far"] = {
            far_name(k): (v if math.isfinite(v) else None) for k, v in self.thresholds_at_far.items()
        }
        return data

    def as_logs(self, prefix="val_"):
        """The metrics as Keras logs, for a callback's `logs`.

        Args:
            prefix: the start of every key.

        Returns:
            A dict `{prefix}auc`, `{prefix}eer`, `{prefix}accuracy_10fold`,
            `{prefix}best_accuracy` and `{prefix}tar@far=1e-3` (one per FAR target) to floats.
        """
        logs = {
            f"{prefix}auc": self.auc,
            f"{prefix}eer": self.eer,
            f"{prefix}accuracy_10fold": self.accuracy_10fold,
            f"{prefix}best_accuracy": self.best_accuracy,
        }
        for far, tar in self.tar_at_far.items():
            logs[f"{prefix}tar@far={far_name(far)}"] = tar
        return logs

    def __str__(self):
        rows = [
            ("pairs", f"{self.num_pairs} ({self.num_genuine} genuine)"),
            ("AUC", f"{self.auc:.4f}"),
            ("EER", f"{self.eer:.4f}"),
        ]
        unresolved = self.unresolved_fars()
        for far, tar in self.tar_at_far.items():
            threshold = self.thresholds_at_far[far]
            note = f", too few impostors: needs {math.ceil(1 / far)}" if far in unresolved else ""
            rows.append((f"TAR@FAR={far_name(far)}", f"{tar:.4f}  (threshold {threshold:.4f}{note})"))
        rows.append(("best accuracy", f"{self.best_accuracy:.4f}  (threshold {self.best_threshold:.4f})"))
        rows.append(("10-fold accuracy", f"{self.accuracy_10fold:.4f} ± {self.accuracy_10fold_std:.4f}"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def verification_report(
    labels, scores, far_targets=(1e-4, 1e-3, 1e-2), folds=10, greater_is_same=True
):
    """Every verification metric, from one ROC curve and one sort, as a `VerificationReport`.

    Args:
        labels: `[pairs]`, 1 for same identity, 0 for different.
        scores: `[pairs]` similarities (`greater_is_same=True`) or distances (False).
        far_targets: FARs in (0, 1) at which to report TAR.
        folds: folds of the k-fold accuracy (an int: contiguous folds; or one fold id per pair).
        greater_is_same: whether a higher score means "same identity".

    Returns:
        A `VerificationReport`.

    Example:

    ```python
    report = verification_report(is_same, cosine_scores)
    print(report)                 # a table
    report.to_json("report.json")
    ```
    """
    fars = _check_fars(far_targets)
    checked_labels, similarities = check_pairs(labels, scores, greater_is_same)
    far, tar, thresholds = sk_metrics.roc_curve(checked_labels, similarities, drop_intermediate=False)
    sign = 1.0 if greater_is_same else -1.0
    ordered = _Sorted(checked_labels, similarities, folds)
    threshold, accuracy = ordered.best()
    fold_accuracies = ordered.kfold()
    at_far = {f: _tar_at_far(far, tar, sign * thresholds, f) for f in fars}
    return VerificationReport(
        num_pairs=len(checked_labels),
        num_genuine=int(checked_labels.sum()),
        auc=float(sk_metrics.auc(far, tar)),
        eer=_eer(far, tar),
        tar_at_far={f: v[0] for f, v in at_far.items()},
        thresholds_at_far={f: v[1] for f, v in at_far.items()},
        best_accuracy=float(accuracy),
        best_threshold=float(sign * threshold),
        accuracy_10fold=float(fold_accuracies.mean()),
        accuracy_10fold_std=float(fold_accuracies.std()),
        greater_is_same=greater_is_same,
    )
