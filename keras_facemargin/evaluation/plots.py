"""ROC, DET and score-histogram figures as PNG files (matplotlib, Agg backend: no display needed)."""

import numpy as np

from keras_facemargin.evaluation.verification import _check, roc


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(labels, scores, path, greater_is_same=True, title="ROC"):
    """TAR against FAR, FAR on a log axis (where face verification is read)."""
    plt = _pyplot()
    far, tar, _ = roc(labels, scores, greater_is_same)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    keep = far > 0
    ax.plot(far[keep], tar[keep])
    ax.set(xscale="log", xlabel="false accept rate (FAR)", ylabel="true accept rate (TAR)",
           title=title, ylim=(0, 1.01))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc_curves(curves, path, greater_is_same=True, title="ROC", far_range=None,
                    precomputed=False):
    """Several ROC curves in one figure: `curves` maps a name to `(labels, scores)`, or with
    `precomputed=True` to an already computed `(far, tar)`.

    `far_range` `(low, high)` limits the FAR axis (IJB's plots use `(1e-6, 1e-1)`).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for name, (first, second) in curves.items():
        if precomputed:
            far, tar = np.asarray(first), np.asarray(second)
        else:
            far, tar, _ = roc(first, second, greater_is_same)
        keep = far > 0
        ax.plot(far[keep], tar[keep], label=name)
    ax.set(xscale="log", xlabel="false accept rate (FAR)", ylabel="true accept rate (TAR)",
           title=title, ylim=(0, 1.01))
    if far_range is not None:
        ax.set_xlim(*far_range)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_det(labels, scores, path, greater_is_same=True, title="DET"):
    """False reject against false accept rate on normal-deviate axes (Martin et al. 1997)."""
    from scipy.stats import norm

    plt = _pyplot()
    far, tar, _ = roc(labels, scores, greater_is_same)
    frr = 1.0 - tar
    keep = (far > 0) & (far < 1) & (frr > 0) & (frr < 1)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot(norm.ppf(far[keep]), norm.ppf(frr[keep]))
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5])
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set(xlabel="false accept rate", ylabel="false reject rate", title=title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_score_histogram(labels, scores, path, threshold=None, greater_is_same=True,
                         title="Genuine and impostor scores"):
    """Histograms of genuine and impostor scores, with the chosen threshold if given."""
    plt = _pyplot()
    same, _ = _check(labels, scores, greater_is_same)
    scores = np.asarray(scores, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    bins = np.linspace(scores.min(), scores.max(), 60)
    ax.hist(scores[~same], bins=bins, alpha=0.6, density=True, label="impostor")
    ax.hist(scores[same], bins=bins, alpha=0.6, density=True, label="genuine")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="score", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
