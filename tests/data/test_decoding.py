import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import FACES, first_image
from PIL import Image

from keras_facemargin.data import (
    Augmentation,
    CorruptFileLog,
    ImageIndex,
    VerificationPairs,
    classification_dataset,
    decoding,
    pair_dataset,
    pk_dataset,
)


def write(tmp_path, name, array, mode):
    path = str(tmp_path / name)
    Image.fromarray(array, mode=mode).save(path)
    return path


@pytest.fixture
def pixels():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 10, 4), dtype=np.uint8)


@pytest.mark.parametrize(
    "name, mode, channels",
    [
        ("grey.png", "L", 1),
        ("rgb.png", "RGB", 3),
        ("rgba.png", "RGBA", 4),
        ("rgb.bmp", "RGB", 3),
        ("grey.gif", "L", 1),
    ],
)
def test_decode_rgb_lossless_formats(tmp_path, pixels, name, mode, channels):
    array = pixels[..., :channels] if channels > 1 else pixels[..., 0]
    image = decoding.decode_rgb(tf.io.read_file(write(tmp_path, name, array, mode))).numpy()
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    expected = np.repeat(array[..., None], 3, -1) if channels == 1 else array[..., :3]
    np.testing.assert_array_equal(image, expected)


def test_decode_real_jpegs():
    image = decoding.decode_rgb(tf.io.read_file(first_image(FACES, "John_Simm"))).numpy()
    assert image.shape == (150, 150, 3) and 40 < image.mean() < 220
    grey = decoding.decode_rgb(tf.io.encode_jpeg(image[..., :1])).numpy()
    assert grey.shape == (150, 150, 3) and (grey[..., 0] == grey[..., 2]).all()


def test_resize_modes():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 200
    resized = decoding.resize(tf.constant(image), (50, 50), "resize").numpy()
    cropped = decoding.resize(tf.constant(image), (50, 50), "center_crop").numpy()
    assert resized.shape == cropped.shape == (50, 50, 3)
    assert resized[:, 2].max() == 0, "resize squeezes the whole image, black borders included"
    np.testing.assert_allclose(cropped, 200, atol=1e-3)
    with pytest.raises(ValueError, match="resize_mode must be one of .*got 'pad'"):
        decoding.make_preprocess((8, 8), "pad")
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\).*got \(0, 4\)"):
        decoding.make_preprocess((0, 4))


def test_an_image_already_at_the_size_is_only_cast(pixels):
    """The shortcut gives what bilinear resampling to the same size gives (the identity), in a
    graph where the decoded size is unknown as well as eagerly."""
    image = tf.constant(pixels[:, :, :3])
    expected = tf.image.resize(image, (12, 10)).numpy()
    np.testing.assert_array_equal(expected, pixels[:, :, :3].astype(np.float32))
    np.testing.assert_array_equal(decoding.resize(image, (12, 10)).numpy(), expected)
    unknown = tf.function(lambda x: decoding.resize(x, (12, 10)),
                          input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    np.testing.assert_array_equal(unknown(image).numpy(), expected)
    other = unknown(tf.constant(pixels[:8, :8, :3])).numpy()
    np.testing.assert_allclose(other, tf.image.resize(pixels[:8, :8, :3], (12, 10)).numpy())


def bilinear_resize_reference(image, height, width):
    """Bilinear resampling with half-pixel centres, as the papers' pipelines (and
    `tf.image.resize`) resize: output row y samples input row (y + ½)·in/out − ½, clamped to the
    edge rows; the same for columns. Float64 loops."""
    in_h, in_w = image.shape[:2]

    def taps(i, n_in, n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        low = int(np.floor(x))
        frac = x - low
        return min(max(low, 0), n_in - 1), min(max(low + 1, 0), n_in - 1), frac

    out = np.zeros((height, width, image.shape[2]))
    for y in range(height):
        y0, y1, fy = taps(y, in_h, height)
        for x in range(width):
            x0, x1, fx = taps(x, in_w, width)
            top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
            bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


def as_arrays(batches):
    return [np.asarray(b) for b in batches]


@pytest.mark.parametrize("read", [decoding.image_dataset, decoding.ImageBatches])
@pytest.mark.parametrize(
    "sizes",
    [
        [(12, 10)] * 5,  # stored at the training size: only cast
        [(7, 9)] * 5,  # one other size
        [(12, 10), (7, 9), (20, 16), (12, 10), (5, 5)],  # several sizes
    ],
    ids=["at-size", "one-other-size", "mixed-sizes"],
)
def test_pipeline_images_against_a_float64_bilinear_reference(tmp_path, sizes, read):
    rng = np.random.default_rng(4)
    paths, expected = [], []
    for i, (h, w) in enumerate(sizes):
        array = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        paths.append(write(tmp_path, f"{i}.png", array, "RGB"))
        expected.append(array.astype(np.float64) if (h, w) == (12, 10)
                        else bilinear_resize_reference(array.astype(np.float64), 12, 10))
    np.testing.assert_allclose(
        np.concatenate(as_arrays(read(paths, batch_size=3, image_size=(12, 10)))),
        expected, rtol=0, atol=1e-3)
    # A file that does not decode, in the first batch: it becomes a blank, and every other image
    # is still what it is alone.
    with open(tmp_path / "bad.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nbroken")
    paths.insert(1, str(tmp_path / "bad.png"))
    expected.insert(1, np.zeros((12, 10, 3)))
    batches = as_arrays(read(paths, batch_size=3, image_size=(12, 10)))
    assert [b.shape for b in batches] == [(3, 12, 10, 3)] * 2
    assert all(b.dtype == np.float32 for b in batches)
    np.testing.assert_allclose(np.concatenate(batches), expected, rtol=0, atol=1e-3)


def test_imagebatches_blank_and_report_what_does_not_decode(tmp_path):
    faces = [first_image(FACES, person) for person in ("John_Simm", "John_Salley", "John_Savage")]
    broken = str(tmp_path / "broken.jpg")
    with open(broken, "wb") as f:
        f.write(b"\xff\xd8\xff not really")
    missing = str(tmp_path / "missing.jpg")
    paths = [faces[0], broken, faces[1], missing, faces[2]]
    encoded = [open(faces[2], "rb").read(), b"\x89PNG\r\n\x1a\nbroken", open(faces[0], "rb").read()]
    log = CorruptFileLog()
    batches = decoding.ImageBatches(paths, 2, (16, 16), names=[f"n{i}" for i in range(5)],
                                     corrupt_files=log)
    both = batches.concatenate(decoding.ImageBatches(encoded, 2, (16, 16), from_bytes=True))
    assert (len(batches), batches.size, len(both), both.size) == (3, 5, 4, 8)
    out = as_arrays(both)
    assert [len(b) for b in out] == [2, 2, 2, 2]  # the parts run on in the first one's batches
    images = np.concatenate(out)
    # Each good image is what the per-image reader gives alone, wherever the failures are.
    alone = decoding.make_preprocess((16, 16))
    for row, path in ((0, faces[0]), (2, faces[1]), (4, faces[2]), (5, faces[2]), (7, faces[0])):
        np.testing.assert_allclose(images[row], alone(tf.constant(path), 0).numpy(), atol=1e-4)
        assert images[row].max() > 0
    for row in (1, 3, 6):
        assert not images[row].any()
    # Failures go to the first part's log, named as asked, each with its reason.
    reasons = dict(log.collect())
    assert list(reasons) == ["n1", "n3", "image[1]"] and log.count == 3
    assert reasons["image[1]"].startswith("InvalidArgumentError")
    # Iterating again reads the images again, and counts their failures again.
    np.testing.assert_array_equal(np.concatenate(as_arrays(both)), images)
    assert log.count == 6
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        decoding.ImageBatches(paths, 0)
    with pytest.raises(ValueError, match="sources must hold at least one image; got none"):
        decoding.ImageBatches([])
    with pytest.raises(ValueError, match=r"names must give one name per source \(5\); got 2"):
        decoding.ImageBatches(paths, names=["a", "b"])
    with pytest.raises(ValueError, match=r"other must be an ImageBatches of images \(16, 16, 3\); "
                                         r"got \(8, 8, 3\)"):
        batches.concatenate(decoding.ImageBatches(paths, 2, (8, 8)))


def test_augmentation_is_a_function_of_seed_and_sample_id():
    path = tf.constant(first_image(FACES, "John_Simm"))
    augment = Augmentation(color_jitter=0.2)
    preprocess = decoding.make_preprocess((64, 64), augmentation=augment, seed=1)
    plain = decoding.make_preprocess((64, 64))(path, 0).numpy()
    views = [preprocess(path, i).numpy() for i in (0, 0, 1)]
    np.testing.assert_array_equal(views[0], views[1])
    assert not np.array_equal(views[0], views[2])
    assert not np.array_equal(views[0], plain)
    for view in views:
        assert view.shape == (64, 64, 3) and view.min() >= 0 and view.max() <= 255
    with pytest.raises(ValueError, match=r"crop_scale must be \(low, high\).*got \(0.5, 2.0\)"):
        Augmentation(crop_scale=(0.5, 2.0))
    with pytest.raises(ValueError, match=r"color_jitter must be a number in \[0, 1\); got 1.5"):
        Augmentation(color_jitter=1.5)


def test_flip_only_view_is_the_image_or_its_mirror():
    path = tf.constant(first_image(FACES, "John_Salley"))
    plain = decoding.make_preprocess((48, 48))(path, 0).numpy()
    flip_only = decoding.make_preprocess((48, 48), augmentation=Augmentation(crop_scale=None))
    seen = set()
    for i in range(8):
        view = flip_only(path, i).numpy()
        if np.allclose(view, plain):
            seen.add("same")
        else:
            np.testing.assert_allclose(view, plain[:, ::-1], atol=1e-4)
            seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_classification_dataset_epochs_and_eval_order():
    index = ImageIndex.from_directory(FACES)
    train = classification_dataset(index, batch_size=16, image_size=(24, 24), seed=0)
    assert int(train.cardinality()) == 3 and train.element_spec[0].shape == (16, 24, 24, 3)
    epoch1 = np.concatenate([y.numpy() for _, y in train])
    epoch2 = np.concatenate([y.numpy() for _, y in train])
    assert len(epoch1) == 48 and not np.array_equal(epoch1, epoch2)
    evaluation = classification_dataset(index, batch_size=16, image_size=(24, 24), training=False)
    labels = np.concatenate([y.numpy() for _, y in evaluation])
    np.testing.assert_array_equal(labels, index.labels)
    with pytest.raises(
        ValueError, match=r"batch_size must be <= the number of images \(55\).*got batch_size=64"
    ):
        classification_dataset(index, batch_size=64)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        classification_dataset(index, batch_size=0)


def test_classification_dataset_initial_epoch_starts_where_a_resumed_run_does():
    index = ImageIndex.from_directory(FACES)
    whole = classification_dataset(index, batch_size=16, image_size=(24, 24), seed=1)
    epochs = [[(x.numpy(), y.numpy()) for x, y in whole] for _ in range(3)]
    resumed = classification_dataset(index, batch_size=16, image_size=(24, 24), seed=1, initial_epoch=2)
    for (x, y), (xr, yr) in zip(epochs[2], resumed, strict=True):
        np.testing.assert_array_equal(yr, y)
        np.testing.assert_array_equal(xr, x)  # the augmentations too
    assert not np.array_equal(epochs[0][0][1], epochs[2][0][1])  # epochs differ, so the check can fail
    with pytest.raises(ValueError, match="initial_epoch must be an integer >= 0; got -1"):
        classification_dataset(index, batch_size=16, initial_epoch=-1)


def test_the_pipelines_run_without_tf_data_autotuning():
    # With tf.data's autotuning thread, about one iterator in four took 220-290 ms to be destroyed
    # at the end of an epoch (BENCHMARKS.md, "Training input pipeline"); every pipeline built on
    # `decode_batches` turns it off, and what a user chains after it keeps the option.
    index = ImageIndex.from_directory(FACES)
    built = {
        "classification_dataset": classification_dataset(index, 16, image_size=(8, 8)),
        "pk_dataset": pk_dataset(index, 2, 4, image_size=(8, 8)),
        "image_dataset": decoding.image_dataset(index.paths[:3], 2, image_size=(8, 8)),
        "pair_dataset": pair_dataset(
            VerificationPairs(index.paths[:2], index.paths[11:13], [False, False]),
            image_size=(8, 8)),
    }
    for name, ds in built.items():
        for chained in (ds, ds.map(lambda *x: x).batch(2)):
            assert chained.options().autotune.enabled is False, name
    assert classification_dataset(index, 16).with_options(tf.data.Options()).options(
    ).autotune.enabled is False
    # The control: a dataset of our own without `decode_batches` leaves autotuning as it is.
    assert tf.data.Dataset.range(3).options().autotune.enabled is None


def test_a_batch_where_every_file_fails_is_all_blank(tmp_path):
    paths = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    for path in paths[:2]:
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\nbroken")
    index = ImageIndex(paths, [0, 1, 1], ["a", "b"])
    log = CorruptFileLog()
    ds = classification_dataset(index, 3, image_size=(8, 8), training=False, corrupt_files=log)
    ((images, labels),) = list(ds)
    assert images.shape == (3, 8, 8, 3) and float(tf.reduce_max(images)) == 0.0
    np.testing.assert_array_equal(labels, [0, 1, 1])
    reasons = [r.reason for r in log.collect()]
    assert log.count == 3 and reasons[2].startswith("NotFoundError")


def test_without_a_log_failures_go_to_stderr(tmp_path, capfd):
    good = first_image(FACES, "John_Simm")
    bad = str(tmp_path / "bad.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff not really")
    index = ImageIndex([good, bad], [0, 1], ["a", "b"])
    ((images, _),) = list(classification_dataset(index, 2, image_size=(8, 8), training=False))
    assert float(tf.reduce_max(images[1])) == 0.0 and float(tf.reduce_max(images[0])) > 0
    err = capfd.readouterr().err
    assert "1 images could not be decoded and were replaced by blanks" in err and bad in err
    (images,) = list(decoding.ImageBatches([good, bad], 2, image_size=(8, 8)))
    assert images[1].max() == 0.0 and images[0].max() > 0
    err = capfd.readouterr().err
    assert "1 images could not be decoded and were replaced by blanks" in err and bad in err


def bilinear_reflect_reference(image, factor, shift_x, shift_y):
    """Output pixel (x, y) samples input (factor·x + ox, factor·y + oy) bilinearly, the image
    reflected at its edges (d c b a | a b c d | d c b a), in float64 loops."""
    height, width = image.shape[:2]
    ox = (1 - factor) * (width - 1) / 2 - shift_x
    oy = (1 - factor) * (height - 1) / 2 - shift_y

    def reflect(i, n):
        period = 2 * n
        i = i % period
        return i if i < n else period - 1 - i

    out = np.zeros_like(image, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            sx, sy = factor * x + ox, factor * y + oy
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            fx, fy = sx - x0, sy - y0
            value = 0.0
            for dy, wy in ((0, 1 - fy), (1, fy)):
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    value = value + wy * wx * image[reflect(y0 + dy, height), reflect(x0 + dx, width)]
            out[y, x] = value
    return out


def test_shift_and_zoom_against_a_float64_bilinear_reference():
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, size=(9, 11, 3)).astype(np.float32)
    seed = tf.constant([5, 9], tf.int64)
    draw = tf.random.stateless_uniform([3], seed, -1.0, 1.0).numpy().astype(np.float64)
    translate, zoom = 0.2, 0.15
    got = decoding._shift_and_zoom(tf.constant(image), translate, zoom, seed).numpy()
    expected = bilinear_reflect_reference(image.astype(np.float64), 1 + zoom * draw[0],
                                          translate * draw[1] * 11, translate * draw[2] * 9)
    np.testing.assert_allclose(got, expected, atol=1e-3)
    same = decoding._shift_and_zoom(tf.constant(image), 0.0, 0.0, seed).numpy()
    np.testing.assert_allclose(same, image, atol=1e-4)  # the identity transform


def test_erase_puts_one_noise_rectangle_of_the_documented_size():
    image = tf.fill([40, 50, 3], 128.0)
    erased = 0
    for k in range(200):
        out = decoding._erase(image, 0.5, tf.constant([k, 1], tf.int64)).numpy()
        changed = np.any(out != 128.0, axis=-1)
        if not changed.any():
            continue
        erased += 1
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.015 <= box / (40 * 50) <= 0.21  # 2-20% of the area, rounded to whole pixels
        assert changed.sum() >= 0.9 * box  # one rectangle (noise can equal 128 only by chance)
        assert out.min() >= 0 and out.max() <= 255
    assert 70 <= erased <= 130  # probability 0.5 over 200 draws


def test_augmentation_fields_are_checked():
    for kwargs, message in [({"translate": 1.0}, r"translate must be a number in \[0, 1\); got 1.0"),
                            ({"zoom": -0.1}, r"zoom must be a number in \[0, 1\); got -0.1"),
                            ({"contrast": "x"}, r"contrast must be a number in \[0, 1\); got 'x'"),
                            ({"erase": 1.5}, r"erase must be a probability in \[0, 1\]; got 1.5"),
                            ({"flip": 1}, "flip must be True or False; got 1")]:
        with pytest.raises(ValueError, match=message):
            Augmentation(**kwargs)


def test_glyph_augmentations_are_deterministic_per_sample_and_keep_the_range():
    augmentation = Augmentation(flip=False, crop_scale=None, translate=0.08, zoom=0.1, contrast=0.2,
                                erase=0.5)
    preprocess = decoding.make_preprocess((32, 32), augmentation=augmentation, seed=3)
    path = tf.constant(first_image(FACES, "John_Simm"))
    a = preprocess(path, tf.constant(7, tf.int64)).numpy()
    b = preprocess(path, tf.constant(7, tf.int64)).numpy()
    c = preprocess(path, tf.constant(8, tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (32, 32, 3) and a.min() >= 0 and a.max() <= 255


def test_paths_outside_ascii_decode(tmp_path):
    from keras_facemargin.data import pk_dataset

    for name, person in (("Zoë", "John_Simm"), ("José Ñúñez", "John_Salley")):
        folder = tmp_path / name
        folder.mkdir()
        for file in sorted(os.listdir(os.path.join(FACES, person)))[:4]:
            shutil.copy(os.path.join(FACES, person, file), folder / f"é{file}")
    index = ImageIndex.from_directory(str(tmp_path))
    images, labels = next(iter(classification_dataset(index, 8, image_size=(16, 16), training=False)))
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1])
    assert float(tf.reduce_min(tf.reduce_max(images, axis=[1, 2, 3]))) > 0  # none is a blank
    images, labels = next(iter(pk_dataset(index, 2, 2, image_size=(16, 16), augment=False)))
    assert sorted(labels.numpy().tolist()) == [0, 0, 1, 1]
    assert float(tf.reduce_min(tf.reduce_max(images, axis=[1, 2, 3]))) > 0


# The training pipelines run in a fresh process, then `Dataset.from_generator` (the control): its
# kernel sets glibc's M_TRIM_THRESHOLD for the whole process and logs that it did, which costs
# every pipeline of the process more CPU per decoded image: 25% for a plain pipeline at 64 px,
# and the old pipelines used about twice Keras's at 112 px (BENCHMARKS.md).
_MALLOC_SCRIPT = """
import sys
from keras_facemargin import cli
import tensorflow as tf
from keras_facemargin.data import ImageIndex, classification_dataset, pk_dataset
faces, run_dir = sys.argv[1:]
index = ImageIndex.from_directory(faces)
for ds in (classification_dataset(index, 8, image_size=(16, 16)),
           pk_dataset(index, 2, 2, image_size=(16, 16))):
    for _ in range(2):
        list(ds)
assert cli.main(["train", "--data", faces, "--run-dir", run_dir, "--image-size", "32",
                 "--backbone", "simple_cnn", "--epochs", "1"]) == 0
print("PIPELINES DONE", file=sys.stderr, flush=True)
list(tf.data.Dataset.from_generator(lambda: iter([1]), output_signature=tf.TensorSpec([], tf.int32)))
"""


def test_training_pipelines_leave_the_process_malloc_settings_alone(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    result = subprocess.run(
        [sys.executable, "-c", _MALLOC_SCRIPT, FACES, str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    before, marker, after = result.stderr.partition("PIPELINES DONE")
    assert marker, result.stderr[-3000:]
    assert "Memory patch applied" not in before
    assert "Memory patch applied" in after  # the control: the check can see the patch
