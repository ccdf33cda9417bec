"""Loop-based float64 re-derivations of the margin-softmax formulas, written from the papers.

Deliberately naive: scalar `math` functions, explicit loops, no vectorisation, no clipping, so
that they share nothing with the package's implementation.
"""

import math

import numpy as np


def psi(name, cos_t, **p):
    """The target logit before scaling, for one cosine."""
    theta = math.acos(max(-1.0, min(1.0, cos_t)))
    if name == "normface":
        return cos_t
    if name == "cosface":
        return cos_t - p.get("margin", 0.35)
    if name == "sphereface":
        m = p.get("margin", 4)
        k = min(math.floor(m * theta / math.pi), m - 1)
        return (-1) ** k * math.cos(m * theta) - 2 * k
    if name == "arcface":
        m = p.get("margin", 0.5)
        if p.get("easy_margin", False):
            return math.cos(theta + m) if cos_t > 0 else cos_t
        if theta + m <= math.pi:
            return math.cos(theta + m)
        return cos_t - m * math.sin(m)  # InsightFace's fallback
    if name == "combined_margin":
        m1, m2, m3 = p.get("m1", 1.0), p.get("m2", 0.3), p.get("m3", 0.2)
        if m1 * theta + m2 <= math.pi:
            return math.cos(m1 * theta + m2) - m3
        theta_max = (math.pi - m2) / m1
        # Documented fallback: linear in cos θ, never above the value at θ_max.
        offset = max(m2 * math.sin(m2), 1 + math.cos(theta_max))
        return cos_t - offset - m3
    raise KeyError(name)


def cross_entropy(logits, targets):
    top = max(logits)
    log_z = top + math.log(sum(math.exp(v - top) for v in logits))
    return sum(-t * (v - log_z) for v, t in zip(logits, targets) if t)


def sample_loss(name, cos_row, target, scale, label_smoothing=0.0, **p):
    """Loss of one sample whose true class is `target`."""
    n = len(cos_row)
    logits = [scale * c for c in cos_row]
    logits[target] = scale * psi(name, cos_row[target], **p)
    off = label_smoothing / (n - 1)
    targets = [1.0 - label_smoothing if k == target else off for k in range(n)]
    return cross_entropy(logits, targets)


def loss(name, cosines, y, scale, label_smoothing=0.0, **p):
    """Mean loss over the batch; `y` holds integer labels or dense rows (mixtures)."""
    cosines = np.asarray(cosines, dtype=np.float64)
    y = np.asarray(y)
    total = 0.0
    for i in range(len(cosines)):
        row = [float(c) for c in cosines[i]]
        if y.ndim == 1:
            total += sample_loss(name, row, int(y[i]), scale, label_smoothing, **p)
        else:
            for j in range(len(row)):
                if y[i, j]:
                    weight = float(y[i, j])
                    total += weight * sample_loss(name, row, j, scale, label_smoothing, **p)
    return total / len(cosines)


def head(features, kernel):
    """cos θ between every feature row and every kernel column, by loops."""
    features = np.asarray(features, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    out = np.zeros((features.shape[0], kernel.shape[1]))
    for i in range(features.shape[0]):
        for j in range(kernel.shape[1]):
            dot = sum(features[i, d] * kernel[d, j] for d in range(features.shape[1]))
            nf = math.sqrt(sum(v * v for v in features[i]))
            nw = math.sqrt(sum(kernel[d, j] ** 2 for d in range(kernel.shape[0])))
            out[i, j] = dot / (nf * nw)
    return out
