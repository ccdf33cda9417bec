"""Loop-based float64 re-derivations of AdaFace, MagFace, CurricularFace, ElasticFace and AdaCos,
written from the papers' equations (and, where a paper leaves a detail open, from its official
code: each such place says so). Scalar `math` functions and explicit loops only, sharing nothing
with the package's implementation.

Every `*_step` function takes cosines `[batch][classes]` (nested lists or arrays), targets (integer
labels or dense rows), the running state and `training`, and returns (mean loss, new state).
`frozen` lets a finite-difference probe keep the batch statistics of the unperturbed batch (the
implementation holds them constant in the gradient, as the official codes do with no_grad).
"""

import math

import numpy as np


def _rows(y, classes):
    """Each row's targets as [(class, weight), ...]: a label, or a dense row's non-zero entries."""
    y = np.asarray(y)
    if y.ndim == 1:
        return [[(int(label), 1.0)] for label in y]
    return [[(j, float(w)) for j, w in enumerate(row) if w] for row in y]


def _cross_entropy(logits, target, label_smoothing):
    n = len(logits)
    top = max(logits)
    log_z = top + math.log(sum(math.exp(v - top) for v in logits))
    total = 0.0
    for k, v in enumerate(logits):
        t = 1.0 - label_smoothing if k == target else label_smoothing / (n - 1)
        if t:
            total -= t * (v - log_z)
    return total


def _theta(c):
    return math.acos(max(-1.0, min(1.0, c)))


def arcface_psi(c, m):
    """cos(θ + m); InsightFace's fallback cos θ − m·sin m where θ + m > π."""
    if _theta(c) + m <= math.pi:
        return math.cos(_theta(c) + m)
    return c - m * math.sin(m)


def _mean(values):
    return sum(values) / len(values)


def _unbiased_std(values):
    mu = _mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def _target_cosine(row, targets):
    return sum(w * row[j] for j, w in targets)


# ---- AdaFace (Kim et al. 2022, eq. 11-13; the EMA and its order from the official head.py) -----


def adaface_step(cosines, norms, y, state, m=0.4, h=0.333, alpha=0.01, s=64.0, label_smoothing=0.0,
                 training=True, frozen=None):
    mu, sigma = state["norm_mean"], state["norm_std"]
    clipped = [min(max(float(a), 0.001), 100.0) for a in norms]
    if frozen is not None:  # official: the norms are detached, in ĝ as in the statistics
        clipped = frozen
    if training:
        stats = clipped
        mu = alpha * _mean(stats) + (1 - alpha) * mu  # official: update, then use
        if len(stats) > 1:
            sigma = alpha * _unbiased_std(stats) + (1 - alpha) * sigma
    total = 0.0
    rows = _rows(y, len(cosines[0]))
    for i, row in enumerate(cosines):
        g = max(-1.0, min(1.0, h * (clipped[i] - mu) / (sigma + 1e-3)))
        for target, weight in rows[i]:
            logits = [s * float(c) for c in row]
            # θ − m·ĝ clipped to [0, π] (the package's documented choice; official: [1e-3, π − 1e-3]).
            shifted = min(max(_theta(row[target]) - m * g, 0.0), math.pi)
            logits[target] = s * (math.cos(shifted) - (m + m * g))
            total += weight * _cross_entropy(logits, target, label_smoothing)
    return total / len(cosines), {"norm_mean": mu, "norm_std": sigma}


# ---- MagFace (Meng et al. 2021, eq. 5-6; the fallback and clip from the official code) -------


def magface_step(cosines, norms, y, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0, s=64.0,
                 label_smoothing=0.0):
    total = 0.0
    rows = _rows(y, len(cosines[0]))
    for i, row in enumerate(cosines):
        a = min(max(float(norms[i]), l_a), u_a)
        margin = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        for target, weight in rows[i]:
            logits = [s * float(c) for c in row]
            logits[target] = s * arcface_psi(float(row[target]), margin)
            total += weight * _cross_entropy(logits, target, label_smoothing)
        total += lambda_g * (a / u_a**2 + 1.0 / a)
    return total / len(cosines)


# ---- CurricularFace (Huang et al. 2020, eq. 6-9; the mask threshold from the official code) --


def curricular_step(cosines, y, state, m=0.5, alpha=0.01, s=64.0, label_smoothing=0.0, training=True,
                    frozen=None):
    rows = _rows(y, len(cosines[0]))
    t = state["t"]
    if training:
        targets = frozen if frozen is not None else [
            _target_cosine(row, rows[i]) for i, row in enumerate(cosines)]
        t = alpha * _mean(targets) + (1 - alpha) * t  # official: update, then use
    total = 0.0
    for i, row in enumerate(cosines):
        for target, weight in rows[i]:
            # official: a negative is hard when cos θ_j > cos(θ_y + m), with cos(θ_y + m) itself.
            threshold = math.cos(_theta(row[target]) + m)
            logits = []
            for k, c in enumerate(row):
                c = float(c)
                if k == target:
                    logits.append(s * arcface_psi(c, m))
                elif c > threshold:
                    logits.append(s * c * (t + c))
                else:
                    logits.append(s * c)
            total += weight * _cross_entropy(logits, target, label_smoothing)
    return total / len(cosines), {"t": t}


# ---- ElasticFace (Boutros et al. 2022, eq. 4-5; "+" by rank as the paper states) -------------


def elastic_loss(cosines, y, margins, kind="arc", s=64.0, label_smoothing=0.0):
    """The loss with given per-sample margins (the draw is tested on its own)."""
    total = 0.0
    rows = _rows(y, len(cosines[0]))
    for i, row in enumerate(cosines):
        for target, weight in rows[i]:
            logits = [s * float(c) for c in row]
            c = float(row[target])
            logits[target] = s * (arcface_psi(c, margins[i]) if kind == "arc" else c - margins[i])
            total += weight * _cross_entropy(logits, target, label_smoothing)
    return total / len(cosines)


def elastic_plus_assignment(target_cosines, draws):
    """The paper's ElasticFace+: sorted draws assigned so that a lower target cosine (a harder
    sample) gets a larger margin."""
    order = sorted(range(len(target_cosines)), key=lambda i: -target_cosines[i])  # easiest first
    ascending = sorted(draws)
    margins = [0.0] * len(draws)
    for rank, i in enumerate(order):
        margins[i] = ascending[rank]
    return margins


# ---- AdaCos (Zhang et al. 2019, eq. 15-16 and Algorithm 1) -------------------------------------


def adacos_step(cosines, y, state, num_classes=None, label_smoothing=0.0, training=True, frozen=None):
    rows = _rows(y, len(cosines[0]))
    width = len(cosines[0])
    num_classes = width if num_classes is None else num_classes
    s = state["scale"]
    if training:
        if frozen is not None:
            b_values, angles = frozen
        else:
            b_values, angles = [], []
            for i, row in enumerate(cosines):
                weights = [0.0] * width
                for j, w in rows[i]:
                    weights[j] = w
                b = sum((1.0 - weights[k]) * math.exp(s * float(c)) for k, c in enumerate(row))
                b_values.append(b * (num_classes - 1) / (width - 1))
                angles.append(sum(w * _theta(row[j]) for j, w in rows[i]))
        b_avg = _mean(b_values)
        ordered = sorted(angles)
        n = len(ordered)
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        s = math.log(b_avg) / math.cos(min(math.pi / 4, median))  # update, then use (Algorithm 1)
    total = 0.0
    for i, row in enumerate(cosines):
        for target, weight in rows[i]:
            logits = [s * float(c) for c in row]
            total += weight * _cross_entropy(logits, target, label_smoothing)
    return total / len(cosines), {"scale": s}


def adacos_statistics(cosines, y, scale, num_classes=None):
    """(B values, target angles) of a batch, to freeze for finite differences."""
    rows = _rows(y, len(cosines[0]))
    width = len(cosines[0])
    num_classes = width if num_classes is None else num_classes
    b_values, angles = [], []
    for i, row in enumerate(cosines):
        weights = [0.0] * width
        for j, w in rows[i]:
            weights[j] = w
        b = sum((1.0 - weights[k]) * math.exp(scale * float(c)) for k, c in enumerate(row))
        b_values.append(b * (num_classes - 1) / (width - 1))
        angles.append(sum(w * _theta(row[j]) for j, w in rows[i]))
    return b_values, angles


# ---- heads ---------------------------------------------------------------------------------------


def sub_center_head(features, kernel, sub_centers):
    """max over each class's K sub-centres (kernel columns c·K + k) of the cosine, by loops."""
    features = np.asarray(features, np.float64)
    kernel = np.asarray(kernel, np.float64)
    classes = kernel.shape[1] // sub_centers
    out = np.zeros((len(features), classes))
    for i, f in enumerate(features):
        nf = math.sqrt(sum(v * v for v in f))
        for c in range(classes):
            best = -math.inf
            for k in range(sub_centers):
                w = kernel[:, c * sub_centers + k]
                nw = math.sqrt(sum(v * v for v in w))
                best = max(best, sum(a * b for a, b in zip(f, w)) / (nf * nw))
            out[i, c] = best
    return out


def norms(features):
    return [math.sqrt(sum(float(v) ** 2 for v in f)) for f in np.asarray(features, np.float64)]
