import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import FACES
from PIL import Image
from sklearn.metrics import roc_curve
from test_alignment import HAND_MARKED, apply

from keras_facemargin import data
from keras_facemargin import evaluation as ev

SIZE = 56


# ---- independent references -------------------------------------------------------------------


def insightface_templates(features, templates, medias):
    """eval_ijbc.py's image2template_feature, as loops in float64."""
    unique_templates = np.unique(templates)
    out = np.zeros((len(unique_templates), features.shape[1]))
    for k, template in enumerate(unique_templates):
        rows = np.where(templates == template)[0]
        media_features = []
        for media in np.unique(medias[rows]):
            own = rows[medias[rows] == media]
            media_features.append(features[own].mean(axis=0))
        pooled = np.sum(media_features, axis=0)
        out[k] = pooled / np.linalg.norm(pooled)
    return unique_templates, out


def tar_at_far_reference(labels, scores, target):
    """TAR at the smallest threshold (over +inf and every score) whose FAR <= target."""
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    best = 0.0
    for t in np.unique(scores):
        if np.mean(impostor >= t) <= target:
            return max(best, np.mean(genuine >= t))
    return best


def insightface_table_value(labels, scores, target):
    """eval_ijbc.py's TPR@FPR table cell, as its code computes it."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, min_index = min(list(zip(abs(fpr - target), range(len(fpr)))))
    return tpr[min_index]


# ---- pooling, scoring and the report ----------------------------------------------------------


def test_template_features_match_insightface_loops(rng):
    faces = 300
    templates = rng.integers(0, 40, faces) * 7 + 3  # sparse, unordered ids
    medias = rng.integers(0, 5, faces) + 1000 * (templates % 3)  # shared media ids, many faces
    features = rng.normal(size=(faces, 8))
    weights = rng.uniform(0.5, 1.0, faces)
    ids, pooled = ev.template_features(features, templates, medias, weights)
    ref_ids, ref = insightface_templates(features * weights[:, None], templates, medias)
    np.testing.assert_array_equal(ids, ref_ids)
    assert pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, ref, atol=1e-6)
    with pytest.raises(ValueError, match="weights must be one per face"):
        ev.template_features(features, templates, medias, weights[:5])
    with pytest.raises(ValueError, match=r"features must be \[faces, dim\] with one template"):
        ev.template_features(features, templates[:5], medias)


def test_score_template_pairs_in_chunks(rng):
    ids = np.array([40, 3, 17, 8])
    feats = ev.normalize_rows(rng.normal(size=(4, 6)))
    a = rng.choice(ids, 101)
    b = rng.choice(ids, 101)
    scores = ev.score_template_pairs(ids, feats, a, b, chunk_size=7)
    row = {t: i for i, t in enumerate(ids)}
    expected = [float(np.dot(feats[row[x]].astype(np.float64), feats[row[y]])) for x, y in zip(a, b)]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    with pytest.raises(ValueError, match="template_b holds template 5, which has no features"):
        ev.score_template_pairs(ids, feats, a[:3], np.array([3, 5, 5]))


def test_report_matches_the_definitions_and_insightface_table(rng):
    labels = (rng.random(3000) < 0.1).astype(int)
    scores = (rng.normal(size=3000) + 2.0 * labels).astype(np.float32)
    scores[:40] = np.round(scores[:40], 1)  # some ties
    fars = (1e-3, 1e-2, 1e-1)
    report = ev.ijb_report(labels, scores, fars, target="IJBC", num_templates=77)
    for far in fars:
        assert report.tar_at_far[far] == pytest.approx(tar_at_far_reference(labels, scores, far))
        assert report.tar_at_far_insightface[far] == pytest.approx(
            insightface_table_value(labels, scores, far))
    text = str(report)
    assert "IJBC 1:1: 77 templates, 3000 pairs" in text and "1e-2" in text
    saved = json.loads(report.to_json())
    assert saved["tar_at_far"]["1e-2"] == report.tar_at_far[1e-2] and "curve" not in saved
    with pytest.raises(ValueError, match="labels must be 0/1 with both genuine"):
        ev.ijb_report(np.ones(5), np.zeros(5))
    with pytest.raises(ValueError, match="scores must be finite"):
        ev.ijb_report(labels[:3], np.array([0.1, np.nan, 0.2]))


# ---- a miniature IJB-C release in the exact file formats --------------------------------------


def mini_release(tmp_path):
    """5 people × 11 faces as loose crops (some rotated and scaled into a larger canvas), 2
    templates per person with shared media, one face in two templates; all 45 template pairs."""
    root = tmp_path / "IJBC"
    os.makedirs(root / "meta")
    os.makedirs(root / "loose_crop")
    index = data.ImageIndex.from_directory(FACES)
    mean_marks = np.mean([HAND_MARKED[k] for k in HAND_MARKED], axis=0)
    rng = np.random.default_rng(7)
    face_lines, point_lines = [], []
    number = 0

    def add(path, landmarks, template, media, score):
        nonlocal number
        number += 1
        name = f"{number}.jpg"
        if number % 4 == 0:  # a loose crop: the face turned and scaled in a larger picture
            angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(0.8, 1.3)
            c, s = scale * np.cos(angle), scale * np.sin(angle)
            turn = np.array([[c, -s, 40.0], [s, c, 30.0]])
            inverse = np.linalg.inv(np.vstack([turn, [0, 0, 1]]))[:2].reshape(-1)
            Image.open(path).transform((230, 230), Image.AFFINE, tuple(inverse),
                                       Image.BILINEAR).save(root / "loose_crop" / name, quality=95)
            landmarks = apply(turn, landmarks)
        else:
            shutil.copy(path, root / "loose_crop" / name)
        face_lines.append(f"{name} {template} {media}")
        points = " ".join(f"{v:.3f}" for v in np.asarray(landmarks).reshape(-1))
        point_lines.append(f"{name} {points} {score:.3f}")

    for c in range(5):
        paths = index.paths[index.labels == c]
        for i, path in enumerate(paths):
            rel = os.path.relpath(path, FACES)
            marks = HAND_MARKED.get(rel, mean_marks)
            template = 10 * c + (1 if i < 5 else 2)
            media = 500 + 100 * c + (1 if i < 3 else i)  # faces 0-2 of a template: one video
            add(path, marks, template, media, rng.uniform(0.6, 1.0))
        add(paths[0], HAND_MARKED.get(os.path.relpath(paths[0], FACES), mean_marks),
            10 * c + 2, 999, 0.9)  # the same picture in the second template too
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(face_lines) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(point_lines) + "\n")
    templates = sorted({int(line.split()[1]) for line in face_lines})
    pairs = [(a, b, int(a // 10 == b // 10)) for i, a in enumerate(templates)
             for b in templates[i + 1:]]
    (root / "meta" / "ijbc_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {y}\n" for a, b, y in pairs))
    return root


class Embedder:
    """A fixed random projection of the pixels, standing in for a model."""

    image_size = (SIZE, SIZE)

    def __init__(self):
        self.projection = np.random.default_rng(0).normal(size=(SIZE * SIZE * 3, 16))

    def __call__(self, images):
        images = np.asarray(images, np.float64)
        return (images.reshape(len(images), -1) / 255.0 - 0.5) @ self.projection


def test_read_ijb_reads_the_release(tmp_path):
    root = mini_release(tmp_path)
    protocol = ev.read_ijb(root)
    assert protocol.target == "IJBC" and len(protocol.image_paths) == 60
    assert protocol.image_paths[0] == os.path.join(str(root), "loose_crop", "1.jpg")
    assert protocol.landmarks.shape == (60, 5, 2) and protocol.landmarks.dtype == np.float32
    first = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().split("\n")[0].split()
    np.testing.assert_allclose(protocol.landmarks[0].reshape(-1), [float(v) for v in first[1:11]])
    assert protocol.detector_scores[0] == pytest.approx(float(first[11]))
    assert len(protocol.labels) == 45 and protocol.labels.sum() == 5
    assert len(np.unique(protocol.templates)) == 10


def test_ijb_verification_matches_insightface_on_a_miniature(tmp_path):
    root = mini_release(tmp_path)
    embedder = Embedder()
    out = tmp_path / "out"
    report = ev.ijb_verification(embedder, root, far_targets=(1e-1, 0.2), batch_size=8,
                                 chunk_size=4, out_dir=out)
    protocol = ev.read_ijb(root)
    # Reference: each face aligned on its own, embedded with its mirror, weighted by its
    # detector score, pooled by InsightFace's loops, templates compared by cosine.
    features = []
    for path, marks in zip(protocol.image_paths, protocol.landmarks):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        crop = data.align_face(image, marks, SIZE).numpy()[None]
        features.append(embedder(crop)[0] + embedder(crop[:, :, ::-1])[0])
    features = np.array(features) * protocol.detector_scores[:, None]
    ids, pooled = insightface_templates(features, protocol.templates, protocol.medias)
    row = {t: i for i, t in enumerate(ids)}
    expected = np.array([pooled[row[a]] @ pooled[row[b]]
                         for a, b in zip(protocol.template_a, protocol.template_b)])
    scores = np.load(out / "scores.npy")
    np.testing.assert_allclose(scores, expected, atol=2e-5)
    assert report.num_templates == 10 and report.num_pairs == 45 and report.num_genuine == 5
    for far in (1e-1, 0.2):
        assert report.tar_at_far[far] == pytest.approx(
            tar_at_far_reference(protocol.labels, expected, far))
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text())["num_pairs"] == 45
    # Without the detector scores and the flip, other scores (the options do something).
    plain = ev.ijb_verification(embedder, root, flip=False, detector_scores=False,
                                far_targets=(0.2,), out_dir=tmp_path / "plain")
    assert plain.num_pairs == 45
    assert not np.allclose(np.load(tmp_path / "plain" / "scores.npy"), scores, atol=1e-4)


def test_read_ijb_errors(tmp_path):
    root = mini_release(tmp_path)
    meta = root / "meta"
    with pytest.raises(ValueError, match="root must be an IJB release folder with a meta/"):
        ev.read_ijb(tmp_path)
    with pytest.raises(ValueError, match="target must be one of .*got 'IJBA'"):
        ev.read_ijb(root, "IJB-A")
    with pytest.raises(ValueError, match="root must hold IJBB's metadata"):
        ev.read_ijb(root, "IJBB")
    points = (meta / "ijbc_name_5pts_score.txt").read_text().splitlines()
    swapped = [points[1], points[0]] + points[2:]
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(swapped) + "\n")
    with pytest.raises(ValueError, match="line 1: expected face '1.jpg' .*got '2.jpg'"):
        ev.read_ijb(root)
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(points[:-1]) + "\n")
    with pytest.raises(ValueError, match="must list the same faces; got 60 and 59 lines"):
        ev.read_ijb(root)
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    pairs = (meta / "ijbc_template_pair_label.txt").read_text().splitlines()
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs[:2] + ["1 2 maybe"]) + "\n")
    with pytest.raises(ValueError, match="line 3: expected 'template_a template_b label'; got '1 2 maybe'"):
        ev.read_ijb(root)
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs[:2] + ["11 12 2"]) + "\n")
    with pytest.raises(ValueError, match="line 3: label must be 0 or 1; got 2"):
        ev.read_ijb(root)
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs[:2] + ["11 77 0"]) + "\n")
    with pytest.raises(ValueError, match="line 3: template 77 has no face"):
        ev.read_ijb(root)
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    os.remove(root / "loose_crop" / "7.jpg")
    with pytest.raises(ValueError, match="1 of the 60 face images do not exist, the first .*7.jpg"):
        ev.read_ijb(root)
    shutil.copy(meta / "ijbc_face_tid_mid.txt", meta / "ijbb_face_tid_mid.txt")
    with pytest.raises(ValueError, match="target must be given .* holds both"):
        ev.read_ijb(root)
