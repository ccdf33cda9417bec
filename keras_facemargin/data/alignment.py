"""Five-point face alignment to ArcFace's 112×112 template, in TensorFlow ops (usable in `tf.data`).

InsightFace aligns a face (`python-package/insightface/utils/face_align.py` `estimate_norm`/
`norm_crop`, and `eval_ijbc.py`) with scikit-image's `SimilarityTransform.estimate` (Umeyama's
least-squares similarity) from the five detected landmarks to `arcface_dst`, then
`cv2.warpAffine` with bilinear interpolation and black borders. Here the same transform is the
closed form of that least-squares problem in two dimensions (Umeyama 1991 without reflection:
the scale-rotation `a + ib = Σ conj(s)·d / Σ |s|²` over centred points as complex numbers), and
the warp is TensorFlow's `ImageProjectiveTransformV3` (bilinear, constant 0 outside), so the
whole alignment runs in a graph, on batches, inside an input pipeline, without OpenCV.
"""

import numpy as np
import tensorflow as tf

# InsightFace's `arcface_dst`: left eye, right eye, nose tip, left and right mouth corner (as
# seen in the image) in a 112×112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def _check_size(image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1 (a square crop); got {image_size!r}")
    return int(image_size)


def arcface_template(image_size=112):
    """ArcFace's five landmark positions in a square crop of `image_size` pixels, `[5, 2]`.

    As InsightFace's `estimate_norm`: a multiple of 112 scales the 112 template; a multiple of
    128 (that is not one of 112) scales it by `image_size / 128` and shifts it right by
    `8 · image_size / 128` (the face centred in the wider crop); any other size scales by
    `image_size / 112`.

    Args:
        image_size: side of the square crop in pixels, an integer >= 1 (112 for ArcFace models).

    Returns:
        float64 `[5, 2]` (x, y) pixel positions: left eye, right eye, nose tip, left and right
        mouth corner, as seen in the image.
    """
    size = _check_size(image_size)
    if size % 112 != 0 and size % 128 == 0:
        ratio = size / 128.0
        return ARCFACE_TEMPLATE * ratio + [8.0 * ratio, 0.0]
    return ARCFACE_TEMPLATE * (size / 112.0)


def _check_concrete_landmarks(landmarks):
    values = np.asarray(landmarks, dtype=np.float64)
    if values.shape[-2:] != (5, 2):
        raise ValueError(f"landmarks must have shape [..., 5, 2]; got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("landmarks must be finite; got NaN or Inf")
    if values.size and (np.ptp(values, axis=-2).max(axis=-1) == 0).any():
        raise ValueError(f"landmarks must not all be at one point; got {values.tolist()}")


def alignment_matrix(landmarks, image_size=112, template=None):
    """The least-squares similarity transform from `landmarks` to the template, `[..., 2, 3]`.

    Maps (x, y) image pixels to crop pixels: `crop = M[:, :2] @ (x, y) + M[:, 2]`, the matrix
    `cv2.warpAffine` takes. Rotation, uniform scale and translation only (no reflection, no
    shear), fitted to all five points (scikit-image's `SimilarityTransform.estimate`).

    Args:
        landmarks: `[..., 5, 2]` (x, y) pixel positions; a tensor or an array.
        image_size: side of the square crop whose `arcface_template` is the target.
        template: `[5, 2]` target positions instead of ArcFace's.

    Returns:
        float32 `[..., 2, 3]`.
    """
    if template is None:
        template = arcface_template(image_size)
    if not isinstance(landmarks, tf.Tensor) or tf.executing_eagerly():
        _check_concrete_landmarks(landmarks)
    source = tf.cast(landmarks, tf.float64)
    target = tf.constant(np.asarray(template, np.float64).reshape(5, 2))
    source_mean = tf.reduce_mean(source, axis=-2, keepdims=True)
    target_mean = tf.reduce_mean(target, axis=-2, keepdims=True)
    s = source - source_mean
    d = target - target_mean
    sx, sy, dx, dy = s[..., 0], s[..., 1], d[..., 0], d[..., 1]
    variance = tf.reduce_sum(sx * sx + sy * sy, axis=-1)
    a = tf.reduce_sum(sx * dx + sy * dy, axis=-1) / variance
    b = tf.reduce_sum(sx * dy - sy * dx, axis=-1) / variance
    mx, my = source_mean[..., 0, 0], source_mean[..., 0, 1]
    tx = target_mean[..., 0, 0] - (a * mx - b * my)
    ty = target_mean[..., 0, 1] - (b * mx + a * my)
    rows = tf.stack([tf.stack([a, -b, tx], -1), tf.stack([b, a, ty], -1)], -2)
    return tf.cast(rows, tf.float32)


def warp_affine(images, matrix, image_size):
    """`images` `[..., H, W, C]` warped by `matrix` `[..., 2, 3]` (image → output pixels) into
    float32 `[..., size, size, C]`, bilinear, 0 outside the image (as `cv2.warpAffine`)."""
    size = _check_size(image_size)
    images = tf.convert_to_tensor(images)
    single = images.shape.rank == 3
    if single:
        images = images[None]
    m = tf.reshape(tf.cast(matrix, tf.float64), [-1, 2, 3])
    a, b, tx = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    c, d, ty = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * d - b * c
    # TensorFlow's transform maps output pixels to input pixels: the inverse of `matrix`.
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    inverse = tf.stack(
        [ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty), tf.zeros_like(a),
         tf.zeros_like(a)],
        axis=1,
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=tf.cast(inverse, tf.float32),
        output_shape=tf.constant([size, size], tf.int32),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0] if single else out


def align_face(image, landmarks, image_size=112):
    """A face cropped and aligned to ArcFace's template from its five landmarks.

    The similarity transform that best maps the landmarks (least squares, `alignment_matrix`)
    onto ArcFace's standard positions, then a bilinear warp into a square crop with black
    borders: what InsightFace does to every training and test face (`norm_crop`). TensorFlow
    ops only, so it runs inside `tf.data` and on batches.

    Args:
        image: `[H, W, 3]` (or a batch `[N, H, W, 3]`) pixels, any numeric dtype.
        landmarks: `[5, 2]` (or `[N, 5, 2]`) (x, y) pixels: left eye, right eye, nose tip, left
            and right mouth corner, as seen in the image.
        image_size: side of the output crop (112 for ArcFace models).

    Returns:
        float32 `[image_size, image_size, 3]` (or `[N, ...]`), in the input's value range.

    Example:

    ```python
    crop = align_face(image, [[38, 52], [74, 51], [56, 72], [42, 92], [71, 92]])
    ```
    """
    return warp_affine(image, alignment_matrix(landmarks, image_size), image_size)
