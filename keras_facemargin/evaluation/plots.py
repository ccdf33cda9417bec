"""ROC, DET and score-histogram figures as PNG files (matplotlib, Agg backend: no display needed).

`plot_roc` and `plot_det` take one model's `(labels, scores, path)` or several models at once as
a dict `{name: (labels, scores)}` and a path, drawn on one figure with a legend.
"""

import numpy as np
from sklearn import metrics as sk_metrics

from keras_facemargin.evaluation.verification import check_pairs, roc


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(labels_or_curves, scores_or_path, path):
    """`({name: (labels, scores)}, path)` from either calling form."""
    if isinstance(labels_or_curves, dict):
        if path is not None:
            raise ValueError("with a dict of curves, pass the path second: plot_roc(curves, path)")
        curves, path = labels_or_curves, scores_or_path
        if not curves:
            raise ValueError("curves must name at least one (labels, scores) pair; got an empty dict")
    else:
        if path is None:
            raise ValueError("plot_roc/plot_det take (labels, scores, path) or (curves dict, path)")
        curves = {None: (labels_or_curves, scores_or_path)}
    return curves, path


def plot_roc(labels_or_curves, scores_or_path, path=None, greater_is_same=True, title="ROC"):
    """TAR against FAR, FAR on a log axis (where face verification is read), with the chance line.

    Args:
        labels_or_curves: `labels` `[pairs]` (1 = same), or a dict `{name: (labels, scores)}` of
            several models to draw together.
        scores_or_path: `scores` `[pairs]`, or the path when the first argument is a dict.
        path: the PNG to write (with labels and scores).
        greater_is_same: whether a higher score means "same identity".
        title: the figure title; with one model its AUC is added.

    Returns:
        The path.

    Example:

    ```python
    plot_roc({"softmax": (is_same, s1), "arcface": (is_same, s2)}, "roc.png")
    ```
    """
    curves, path = _curves(labels_or_curves, scores_or_path, path)
    if len(curves) == 1 and None in curves:
        labels, scores = curves[None]
        title = f"{title} (AUC {_auc(labels, scores, greater_is_same):.4f})"
        curves = {"": (labels, scores)}
    return plot_roc_curves(curves, path, greater_is_same, title)


def _auc(labels, scores, greater_is_same):
    same, similarities = check_pairs(labels, scores, greater_is_same)
    return sk_metrics.roc_auc_score(same, similarities)


def plot_roc_curves(curves, path, greater_is_same=True, title="ROC", far_range=None, precomputed=False):
    """Several ROC curves in one figure, FAR on a log axis, with the chance line.

    Args:
        curves: a dict from a curve's name (its legend entry, which adds the AUC) to
            `(labels, scores)`, `[pairs]` each; or, with `precomputed=True`, to an already
            computed `(far, tar)`.
        path: the PNG to write.
        greater_is_same: whether a higher score means "same identity" (ignored when precomputed).
        title: the figure title.
        far_range: `(low, high)` limits of the FAR axis (IJB's plots use `(1e-6, 1e-1)`); None:
            from the smallest non-zero FAR of the curves (at most 1e-2) to 1.
        precomputed: whether the values of `curves` are `(far, tar)` rather than labels and scores.

    Returns:
        The path.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    smallest = 1.0
    for name, (first, second) in curves.items():
        if precomputed:
            far, tar = np.asarray(first), np.asarray(second)
            label = name
        else:
            far, tar, _ = roc(first, second, greater_is_same)
            auc = _auc(first, second, greater_is_same)
            label = f"{name} (AUC {auc:.4f})" if name else f"AUC {auc:.4f}"
        keep = far > 0
        smallest = min(smallest, far[keep].min() if keep.any() else 1.0)
        ax.plot(far[keep], tar[keep], label=label)
    low, high = far_range if far_range is not None else (min(smallest, 1e-2), 1.0)
    chance = np.logspace(np.log10(low), np.log10(high), 50)
    ax.plot(chance, chance, color="grey", linestyle=":", label="chance")
    ax.set(xscale="log", xlabel="false accept rate (FAR)", ylabel="true accept rate (TAR)",
           title=title, ylim=(0, 1.01), xlim=(low, high))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


_DET_TICKS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.999)


def _det_ticks(low, high, min_gap=0.45):
    """Probabilities to label on a normal-deviate axis over [low, high] (deviates), no two closer
    than `min_gap` deviates, so that no labels overlap."""
    from scipy.stats import norm

    chosen = []
    for t in _DET_TICKS:
        d = norm.ppf(t)
        if low - 1e-9 <= d <= high + 1e-9 and (not chosen or d - norm.ppf(chosen[-1]) >= min_gap):
            chosen.append(t)
    return chosen


def _percent(t):
    text = f"{100 * t:.4f}".rstrip("0").rstrip(".")
    return text + "%"


def plot_det(labels_or_curves, scores_or_path, path=None, greater_is_same=True, title="DET"):
    """False reject against false accept rate on normal-deviate (probit) axes, as NIST's DET
    curves (Martin et al. 1997): the axes span the curves, ticks in percent.

    Args:
        labels_or_curves: `labels` `[pairs]` (1 = same), or a dict `{name: (labels, scores)}` of
            several models to draw together.
        scores_or_path: `scores` `[pairs]`, or the path when the first argument is a dict.
        path: the PNG to write (with labels and scores).
        greater_is_same: whether a higher score means "same identity".
        title: the figure title.

    Returns:
        The path.
    """
    from scipy.stats import norm

    curves, path = _curves(labels_or_curves, scores_or_path, path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    xs, ys = [], []
    for name, (labels, scores) in curves.items():
        far, tar, _ = roc(labels, scores, greater_is_same)
        frr = 1.0 - tar
        keep = (far > 0) & (far < 1) & (frr > 0) & (frr < 1)
        x, y = norm.ppf(far[keep]), norm.ppf(frr[keep])
        xs.append(x)
        ys.append(y)
        ax.plot(x, y, label=name)
    x = np.concatenate(xs) if xs else np.zeros(1)
    y = np.concatenate(ys) if ys else np.zeros(1)
    x_low, x_high = (x.min(), x.max()) if x.size else (-3, 0)
    y_low, y_high = (y.min(), y.max()) if y.size else (-3, 0)
    pad = 0.15
    x_low, x_high = min(x_low, norm.ppf(0.01)) - pad, max(x_high, norm.ppf(0.5)) + pad
    y_low, y_high = min(y_low, norm.ppf(0.01)) - pad, max(y_high, norm.ppf(0.5)) + pad
    for axis, (low, high) in ((ax.xaxis, (x_low, x_high)), (ax.yaxis, (y_low, y_high))):
        ticks = _det_ticks(low, high)
        axis.set_ticks(norm.ppf(ticks), [_percent(t) for t in ticks])
    ax.set(xlim=(x_low, x_high), ylim=(y_low, y_high), xlabel="false accept rate",
           ylabel="false reject rate", title=title)
    ax.grid(True, alpha=0.3)
    if any(name is not None for name in curves):
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_score_histogram(labels, scores, path, threshold=None, greater_is_same=True,
                         title="Genuine and impostor scores", threshold_label="threshold"):
    """Histograms of genuine and impostor scores, with a marked threshold if given.

    Args:
        labels, scores: `[pairs]` (1 = same identity) and their scores.
        path: the PNG to write.
        threshold: a score to mark, or None.
        greater_is_same: whether a higher score means "same identity".
        title: the figure title.
        threshold_label: what the threshold is (the legend reads `"{label} 0.412"`), for
            example "best-accuracy threshold" or "threshold at FAR=1e-3".

    Returns:
        The path.
    """
    plt = _pyplot()
    same, _ = check_pairs(labels, scores, greater_is_same)
    scores = np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    bins = np.linspace(scores.min(), scores.max(), 60)
    ax.hist(scores[~same], bins=bins, alpha=0.6, density=True, label=f"impostor ({int((~same).sum())})")
    ax.hist(scores[same], bins=bins, alpha=0.6, density=True, label=f"genuine ({int(same.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"{threshold_label} {threshold:.3f}")
    ax.set(xlabel="score", ylabel="density", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
