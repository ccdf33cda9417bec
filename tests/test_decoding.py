import numpy as np
import pytest
import tensorflow as tf
from data_helpers import FACES, first_image
from PIL import Image

from keras_facemargin.data import Augmentation, ImageIndex, classification_dataset, decoding


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


def test_a_batch_where_every_file_fails_is_all_blank(tmp_path):
    from keras_facemargin.data import CorruptFileLog

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
