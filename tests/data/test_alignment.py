import os

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import FACES

from keras_facemargin.data import (
    ARCFACE_TEMPLATE,
    ImageIndex,
    align_face,
    alignment_matrix,
    arcface_template,
    classification_dataset,
    pk_dataset,
)

# Five landmarks marked by hand (x, y pixels: left eye, right eye, nose tip, left and right mouth
# corner as seen in the image) on one 150×150 face of each person in tests/data/faces.
HAND_MARKED = {
    "John_Salley/000179_02159509.jpg": [[44, 47], [102, 47], [74, 75], [49, 104], [99, 103]],
    "John_Savage/000264_01099001.jpg": [[46, 45], [102.5, 45], [74, 77.5], [50, 101], [101, 101]],
    "John_Schneider/000288_00925786.jpg": [[45, 49], [101, 49], [74, 76], [51, 102.5],
                                           [97.5, 102.5]],
    "John_Shimkus/000373_03228153.jpg": [[46, 44.5], [99, 44.5], [75, 80], [54, 104], [94, 103]],
    "John_Simm/000288_00470387.jpg": [[45, 45], [101, 46], [74, 77.5], [56, 104], [90, 104]],
}


def load(rel):
    """The face as the pipelines decode it (TensorFlow's JPEG decoder, not PIL's)."""
    return tf.io.decode_jpeg(tf.io.read_file(os.path.join(FACES, rel)), channels=3).numpy()


def reference_similarity(source, target):
    """Least-squares similarity as complex numbers, float64: d ≈ c·s + t with c = a + ib."""
    s = source[:, 0] + 1j * source[:, 1]
    d = target[:, 0] + 1j * target[:, 1]
    sc, dc = s - s.mean(), d - d.mean()
    c = np.sum(np.conj(sc) * dc) / np.sum(np.abs(sc) ** 2)
    t = d.mean() - c * s.mean()
    return np.array([[c.real, -c.imag, t.real], [c.imag, c.real, t.imag]])


def reference_warp(image, matrix, size):
    """float64 inverse-mapping bilinear warp, each of the 4 neighbours 0 outside the image."""
    a = np.vstack([matrix, [0, 0, 1]])
    inverse = np.linalg.inv(a)
    h, w = image.shape[:2]
    out = np.zeros((size, size, image.shape[2]))
    for y in range(size):
        for x in range(size):
            sx, sy, _ = inverse @ [x, y, 1.0]
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            value = np.zeros(image.shape[2])
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    yy, xx = y0 + dy, x0 + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        value += wy * wx * image[yy, xx]
            out[y, x] = value
    return out


def apply(matrix, points):
    points = np.asarray(points, np.float64)
    return points @ np.asarray(matrix, np.float64)[:, :2].T + np.asarray(matrix)[:, 2]


def random_similarity(rng):
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 2.0)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, rng.uniform(-30, 30)], [s, c, rng.uniform(-30, 30)]])


def test_matrix_matches_the_float64_reference_and_scikit_image(rng):
    skimage = pytest.importorskip("skimage.transform")
    landmarks = rng.uniform(20, 130, size=(16, 5, 2))
    got = alignment_matrix(landmarks).numpy()
    assert got.shape == (16, 2, 3) and got.dtype == np.float32
    for lm, matrix in zip(landmarks, got):
        expected = reference_similarity(lm, ARCFACE_TEMPLATE)
        np.testing.assert_allclose(matrix, expected, rtol=1e-5, atol=1e-4)
        # What InsightFace's estimate_norm calls (SimilarityTransform().estimate before 0.26).
        if hasattr(skimage.SimilarityTransform, "from_estimate"):
            tform = skimage.SimilarityTransform.from_estimate(lm, ARCFACE_TEMPLATE)
        else:
            tform = skimage.SimilarityTransform()
            tform.estimate(lm, ARCFACE_TEMPLATE)
        np.testing.assert_allclose(matrix, tform.params[:2], rtol=1e-5, atol=1e-4)


def test_matrix_recovers_an_exact_similarity(rng):
    for _ in range(5):
        truth = random_similarity(rng)
        inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
        landmarks = apply(inverse, ARCFACE_TEMPLATE)  # the template seen through `truth`
        got = alignment_matrix(landmarks).numpy()
        np.testing.assert_allclose(got, truth, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(apply(got, landmarks), ARCFACE_TEMPLATE, atol=1e-3)


def test_template_sizes_follow_insightface():
    np.testing.assert_allclose(arcface_template(112), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(arcface_template(224), 2 * ARCFACE_TEMPLATE)
    np.testing.assert_allclose(arcface_template(128), ARCFACE_TEMPLATE + [8.0, 0.0])
    np.testing.assert_allclose(arcface_template(256), 2 * ARCFACE_TEMPLATE + [16.0, 0.0])
    np.testing.assert_allclose(arcface_template(56), ARCFACE_TEMPLATE / 2)
    with pytest.raises(ValueError, match="image_size must be an integer >= 1 .*got 0"):
        arcface_template(0)


def test_warp_matches_the_float64_bilinear_reference(rng):
    image = rng.uniform(0, 255, size=(40, 50, 3))
    for _ in range(3):
        matrix = random_similarity(rng)
        matrix[:, 2] -= [10, 10]  # part of the crop falls outside the image
        got = align_face_with(image, matrix, 32)
        np.testing.assert_allclose(got, reference_warp(image, matrix, 32), atol=2e-3)


def align_face_with(image, matrix, size):
    from keras_facemargin.data import alignment

    return alignment.warp_affine(tf.constant(image, tf.float32), matrix, size).numpy()


@pytest.mark.parametrize("rel", sorted(HAND_MARKED))
def test_hand_marked_dlib_faces_align_to_the_template(rel):
    image, landmarks = load(rel), np.array(HAND_MARKED[rel], np.float64)
    matrix = alignment_matrix(landmarks).numpy()
    moved = apply(matrix, landmarks)
    # Five hand-marked points on real faces do not fit the template exactly, but closely.
    rms = np.sqrt(np.mean(np.sum((moved - ARCFACE_TEMPLATE) ** 2, axis=1)))
    assert rms < 4.0, rms
    assert np.all(np.abs(moved - ARCFACE_TEMPLATE) < 7.0)
    crop = align_face(image, landmarks).numpy()
    assert crop.shape == (112, 112, 3) and crop.dtype == np.float32
    np.testing.assert_allclose(crop, reference_warp(image.astype(np.float64), matrix, 112),
                               atol=2e-2)


def test_alignment_undoes_a_rotation_of_a_real_face(rng):
    """The same face rotated and scaled, with its landmarks moved alike, aligns to the same crop."""
    rel = "John_Savage/000264_01099001.jpg"
    image, landmarks = load(rel).astype(np.float64), np.array(HAND_MARKED[rel], np.float64)
    angle, scale = 0.45, 1.3
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    turn = np.array([[c, -s, 60.0], [s, c, -20.0]])
    turned = reference_warp(image, turn, 220)
    turned_landmarks = apply(turn, landmarks)
    straight = align_face(image, landmarks).numpy()
    again = align_face(turned, turned_landmarks).numpy()
    inside = (slice(25, 90), slice(25, 90))  # away from the borders the warps fill with 0
    assert np.abs(again[inside] - straight[inside]).mean() < 1.0  # two bilinear resamplings
    unaligned = tf.image.resize(turned, (112, 112)).numpy()
    assert np.abs(unaligned[inside] - straight[inside]).mean() > 15.0


def test_batches_and_bad_landmarks():
    rels = sorted(HAND_MARKED)
    images = np.stack([load(r) for r in rels])
    landmarks = np.array([HAND_MARKED[r] for r in rels], np.float32)
    batch = align_face(images, landmarks, 64).numpy()
    assert batch.shape == (5, 64, 64, 3)
    for i in range(5):
        np.testing.assert_allclose(batch[i], align_face(images[i], landmarks[i], 64), atol=1e-4)
    with pytest.raises(ValueError, match=r"landmarks must have shape \[..., 5, 2\]; got shape \(4, 2\)"):
        alignment_matrix(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="landmarks must be finite"):
        alignment_matrix(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="landmarks must not all be at one point"):
        alignment_matrix(np.ones((5, 2)))


def test_an_index_with_landmarks_aligns_in_the_pipelines():
    rels = sorted(HAND_MARKED)
    paths = [os.path.join(FACES, r) for r in rels]
    landmarks = np.array([HAND_MARKED[r] for r in rels], np.float32)
    index = ImageIndex(paths, np.arange(5), [r.split("/")[0] for r in rels]).with_landmarks(
        landmarks
    )
    images, labels = next(iter(classification_dataset(index, 5, image_size=112, training=False)))
    np.testing.assert_array_equal(labels, np.arange(5))
    for i, rel in enumerate(rels):
        np.testing.assert_allclose(images[i], align_face(load(rel), landmarks[i]), atol=1e-3)
    # Subsets keep the landmarks of their own images.
    second = index.subset([3, 1])
    np.testing.assert_array_equal(second.landmarks, landmarks[[3, 1]])
    pk_images, pk_labels = next(iter(pk_dataset(second, 2, 1, image_size=112, augment=False)))
    original = {0: 1, 1: 3}  # subset relabels the kept classes 1 and 3 as 0 and 1
    for image, label in zip(pk_images.numpy(), pk_labels.numpy()):
        i = original[int(label)]
        np.testing.assert_allclose(image, align_face(load(rels[i]), landmarks[i]), atol=1e-3)
    with pytest.raises(ValueError, match="image_size must be square to align faces"):
        classification_dataset(index, 5, image_size=(112, 96), training=False)
    with pytest.raises(ValueError, match=r"landmarks must be numbers of shape \[num_images=5, 5, 2\]"):
        index.with_landmarks(landmarks[:4])
    bad = landmarks.copy()
    bad[2] = 7.0
    with pytest.raises(ValueError, match="not all at one point; got 1 such image.*position 2"):
        index.with_landmarks(bad)
