"""Loop-based float64 re-derivations of the pair losses, written from the papers.

Deliberately naive: scalar `math`, explicit loops over anchors, positives and negatives (triplets
included, O(batch³)), no masks, no sorting, no logsumexp tricks beyond a max shift, so that they
share nothing with the package's implementation. Each returns the mean over the valid anchors'
terms; anchors without a positive or a negative are left out, and no valid anchor gives 0.
"""

import math

import numpy as np


def _dot(a, b):
    return sum(float(u) * float(v) for u, v in zip(a, b))


def score(x, i, j, distance):
    """Higher = more similar: cos θ, −‖a − b‖ or −‖a − b‖²."""
    if distance in ("cosine", "dot"):
        if distance == "dot":
            return _dot(x[i], x[j])
        norms = math.sqrt(_dot(x[i], x[i]) * _dot(x[j], x[j]))
        return _dot(x[i], x[j]) / norms if norms else 0.0  # a zero vector: cos θ = 0 by convention
    squared = sum((float(u) - float(v)) ** 2 for u, v in zip(x[i], x[j]))
    return -squared if distance == "squared_euclidean" else -math.sqrt(squared)


def _split(labels, a):
    positives = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
    negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
    return positives, negatives


def _anchors(labels):
    for a in range(len(labels)):
        positives, negatives = _split(labels, a)
        if positives and negatives:
            yield a, positives, negatives


def _mean(terms, nonzero=False):
    if nonzero:
        terms = [t for t in terms if t > 0]
    return sum(terms) / len(terms) if terms else 0.0


def _logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def triplet(x, labels, margin, distance, mining, soft=False, average_nonzero=False):
    x = np.asarray(x, dtype=np.float64)

    def hinge(v):
        return _softplus(v) if soft else max(v, 0.0)

    terms = []
    for a, positives, negatives in _anchors(labels):
        if mining == "all":
            for p in positives:
                for n in negatives:
                    terms.append(hinge(score(x, a, n, distance) - score(x, a, p, distance) + margin))
        elif mining == "batch_hard":
            s_ap = min(score(x, a, p, distance) for p in positives)
            s_an = max(score(x, a, n, distance) for n in negatives)
            terms.append(hinge(s_an - s_ap + margin))
        elif mining == "semi_hard":
            for p in positives:
                s_ap = score(x, a, p, distance)
                farther = [score(x, a, n, distance) for n in negatives
                           if score(x, a, n, distance) < s_ap]
                if farther:
                    s_an = max(farther)  # the closest of the negatives farther than p
                else:
                    s_an = min(score(x, a, n, distance) for n in negatives)  # the farthest
                terms.append(hinge(s_an - s_ap + margin))
        else:
            raise KeyError(mining)
    return _mean(terms, average_nonzero)


def contrastive(x, labels, positive_margin, negative_margin, distance):
    x = np.asarray(x, dtype=np.float64)
    terms = []
    for a, positives, negatives in _anchors(labels):
        if distance == "cosine":
            pos = [max(positive_margin - score(x, a, p, distance), 0.0) for p in positives]
            neg = [max(score(x, a, n, distance) - negative_margin, 0.0) for n in negatives]
        else:
            pos = [max(-score(x, a, p, distance) - positive_margin, 0.0) for p in positives]
            neg = [max(negative_margin + score(x, a, n, distance), 0.0) for n in negatives]
        terms.append(sum(pos) / len(pos) + sum(neg) / len(neg))
    return _mean(terms)


def npair(x, labels, margin, similarity="dot"):
    x = np.asarray(x, dtype=np.float64)
    terms = []
    for a, positives, negatives in _anchors(labels):
        per_positive = []
        for p in positives:
            inner = sum(math.exp(score(x, a, n, similarity) - score(x, a, p, similarity) + margin)
                        for n in negatives)
            per_positive.append(math.log1p(inner))
        terms.append(sum(per_positive) / len(per_positive))
    return _mean(terms)


def unified(x, labels, gamma, margin):
    """log(1 + Σ_i Σ_j exp(γ(s_nj − s_pi + m))), the double sum written out, with a max shift."""
    x = np.asarray(x, dtype=np.float64)
    terms = []
    for a, positives, negatives in _anchors(labels):
        exponents = [gamma * (score(x, a, n, "cosine") - score(x, a, p, "cosine") + margin)
                     for p in positives for n in negatives]
        terms.append(_softplus(_logsumexp(exponents)))
    return _mean(terms)


def circle(x, labels, margin, gamma, weights_from=None):
    """With `weights_from`, the self-paced weights α come from those embeddings instead of `x`:
    differentiating that function gives the gradient with α held constant, as the paper defines."""
    x = np.asarray(x, dtype=np.float64)
    w = x if weights_from is None else np.asarray(weights_from, dtype=np.float64)
    terms = []
    for a, positives, negatives in _anchors(labels):
        exponents = []
        for p in positives:
            s_p = score(x, a, p, "cosine")
            alpha_p = max(1 + margin - score(w, a, p, "cosine"), 0.0)
            for n in negatives:
                s_n = score(x, a, n, "cosine")
                alpha_n = max(score(w, a, n, "cosine") + margin, 0.0)
                exponents.append(gamma * (alpha_n * (s_n - margin) - alpha_p * (s_p - 1 + margin)))
        terms.append(_softplus(_logsumexp(exponents)))
    return _mean(terms)


def supcon(x, labels, temperature):
    x = np.asarray(x, dtype=np.float64)
    terms = []
    for a, positives, _ in _anchors(labels):
        others = [k for k in range(len(labels)) if k != a]
        log_z = _logsumexp([score(x, a, k, "cosine") / temperature for k in others])
        terms.append(sum(log_z - score(x, a, p, "cosine") / temperature for p in positives)
                     / len(positives))
    return _mean(terms)


def multi_similarity(x, labels, alpha, beta, base, epsilon):
    x = np.asarray(x, dtype=np.float64)
    terms = []
    for a, positives, negatives in _anchors(labels):
        s_pos = [score(x, a, p, "cosine") for p in positives]
        s_neg = [score(x, a, n, "cosine") for n in negatives]
        kept_neg = [s for s in s_neg if s + epsilon > min(s_pos)]
        kept_pos = [s for s in s_pos if s - epsilon < max(s_neg)]
        pos_term = math.log1p(sum(math.exp(-alpha * (s - base)) for s in kept_pos)) / alpha
        neg_term = math.log1p(sum(math.exp(beta * (s - base)) for s in kept_neg)) / beta
        terms.append(pos_term + neg_term)
    return _mean(terms)
