import math

import numpy as np
import pytest

from keras_facemargin import evaluation as ev


def reference(embeddings, labels, num_classes, threshold):
    """Loops in float64: each class's unit mean of unit rows, every pair of classes, and the
    groups by a breadth-first walk over the pairs."""
    centres = []
    for c in range(num_classes):
        total = [0.0] * len(embeddings[0])
        count = 0
        for row, y in zip(embeddings, labels):
            if y != c or any(math.isnan(x) for x in row):
                continue
            norm = math.sqrt(sum(x * x for x in row))
            total = [t + x / norm for t, x in zip(total, row)]
            count += 1
        norm = math.sqrt(sum(t * t for t in total))
        centres.append([t / norm for t in total] if count else None)
    pairs = []
    for a in range(num_classes):
        for b in range(a + 1, num_classes):
            if centres[a] is None or centres[b] is None:
                continue
            cosine = sum(x * y for x, y in zip(centres[a], centres[b]))
            if cosine >= threshold:
                pairs.append((a, b, cosine))
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    neighbours = {}
    for a, b, _ in pairs:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    groups, seen = [], set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            x = todo.pop()
            if x not in group:
                group.add(x)
                todo.extend(neighbours[x])
        seen |= group
        groups.append(sorted(group))
    return pairs, groups


def planted(seed=0, num_classes=12, per_class=5, dim=8):
    """Classes around random directions; 3 is a copy of 7's direction, 9 and 10 of 2's (a chain
    of three), and one of class 5's images does not decode (NaN)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(num_classes, dim))
    directions[3] = directions[7]
    directions[9] = directions[2] + 0.05 * rng.normal(size=dim)
    directions[10] = directions[9] + 0.05 * rng.normal(size=dim)
    labels = np.repeat(np.arange(num_classes), per_class)
    embeddings = directions[labels] * rng.uniform(0.5, 3.0, size=(len(labels), 1))
    embeddings += 0.2 * rng.normal(size=embeddings.shape)
    embeddings[np.flatnonzero(labels == 5)[0]] = np.nan
    return embeddings.astype(np.float32), labels


@pytest.mark.parametrize("threshold", [0.95, 0.8, 0.5, 0.2])
def test_pairs_and_groups_match_a_loop_reference(threshold):
    embeddings, labels = planted()
    pairs, groups = ev.near_duplicate_identities(embeddings, labels, threshold, block=5)
    want_pairs, want_groups = reference(embeddings.astype(np.float64).tolist(), labels.tolist(), 12,
                                        threshold)
    assert [(a, b) for a, b, _ in pairs] == [(a, b) for a, b, _ in want_pairs]
    np.testing.assert_allclose([c for *_, c in pairs], [c for *_, c in want_pairs], atol=1e-6)
    assert groups == want_groups
    if threshold == 0.95:  # only the planted copies
        assert groups == [[2, 9, 10], [3, 7]]


def test_a_class_without_images_is_never_a_duplicate():
    embeddings, labels = planted()
    keep = labels != 4
    pairs, _ = ev.near_duplicate_identities(embeddings[keep], labels[keep], 0.01, num_classes=12)
    assert all(4 not in (a, b) for a, b, _ in pairs)
    assert np.isnan(ev.identity_centres(embeddings[keep], labels[keep], num_classes=12)[4]).all()


@pytest.mark.parametrize("threshold", [0, -0.5, 1.5, float("nan")])
def test_threshold_must_be_a_cosine_above_zero(threshold):
    embeddings, labels = planted()
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
        ev.near_duplicate_identities(embeddings, labels, threshold)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"embeddings must be \[num_images, dim\] and labels "
                       r"\[num_images\]; got \(4, 3\) and \(5,\)"):
        ev.identity_centres(np.ones((4, 3)), np.zeros(5, dtype=int))
