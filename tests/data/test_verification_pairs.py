import os
import pickle
import shutil

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import FACES, NAMES

from keras_facemargin.data import (
    ImageIndex,
    VerificationPairs,
    classification_dataset,
    pair_arrays,
    pair_dataset,
    read_insightface_bin,
    read_lfw_pairs,
    read_pair_list,
)


def eval_images(paths, size=(32, 32)):
    index = ImageIndex(paths, np.zeros(len(paths), np.int64), ["x"])
    ds = classification_dataset(index, len(paths), image_size=size, training=False)
    return next(iter(ds))[0].numpy()


@pytest.fixture
def pair_list(tmp_path):
    """A generated pair list over the real faces: a same pair and a different pair per person."""
    index = ImageIndex.from_directory(FACES)
    lines = []
    for c in range(5):
        own = index.paths[index.labels == c]
        other = index.paths[index.labels == (c + 1) % 5]
        lines.append(f"{own[0]} {own[1]} 1")
        lines.append(f"{os.path.relpath(own[2], tmp_path)} {os.path.relpath(other[0], tmp_path)} 0")
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pair_list_to_dataset(pair_list):
    pairs = read_pair_list(pair_list)
    assert len(pairs) == 10
    np.testing.assert_array_equal(pairs.is_same, [True, False] * 5)
    ds = pair_dataset(pairs, batch_size=4, image_size=(32, 32))
    batches = list(ds)
    assert [len(s) for _, _, s in batches] == [4, 4, 2]
    a = np.concatenate([x.numpy() for x, _, _ in batches])
    b = np.concatenate([x.numpy() for _, x, _ in batches])
    same = np.concatenate([s.numpy() for _, _, s in batches])
    np.testing.assert_array_equal(same, pairs.is_same)
    np.testing.assert_allclose(a, eval_images(pairs.images_a), atol=1e-4)
    np.testing.assert_allclose(b, eval_images(pairs.images_b), atol=1e-4)


def test_pair_arrays(pair_list):
    pairs = read_pair_list(pair_list)
    a, b, same = pair_arrays(pairs, image_size=(32, 32), batch_size=3)
    assert a.shape == b.shape == (10, 32, 32, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, eval_images(pairs.images_a), atol=1e-4)
    np.testing.assert_allclose(b, eval_images(pairs.images_b), atol=1e-4)
    np.testing.assert_array_equal(same, [1, 0] * 5)
    a8, b8, _ = pair_arrays(pairs, image_size=(32, 32), dtype="uint8")
    assert a8.dtype == np.uint8 and np.abs(a8.astype(np.float32) - a).max() <= 0.5 + 1e-4
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'uint8'; got 'int8'"):
        pair_arrays(pairs, dtype="int8")


def test_pair_list_errors(tmp_path, pair_list):
    bad = tmp_path / "bad.txt"
    lines = pair_list.read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + ["a.jpg b.jpg maybe"]) + "\n")
    with pytest.raises(
        ValueError, match="bad.txt, line 3: expected 'path_a path_b label'.*'a.jpg b.jpg maybe'"
    ):
        read_pair_list(bad)
    bad.write_text("\n".join(lines[:3] + [lines[3].replace(".jpg 0", "_gone.jpg 0")]) + "\n")
    with pytest.raises(ValueError, match="bad.txt, line 4: image file not found: '.*_gone.jpg'"):
        read_pair_list(bad)
    assert len(read_pair_list(bad, check_files=False)) == 4


def lfw_layout(tmp_path):
    """The faces copied into LFW's layout: root/name/name_0001.jpg ..."""
    root = tmp_path / "lfw"
    for name in NAMES[:3]:
        files = sorted(os.listdir(os.path.join(FACES, name)))[:3]
        os.makedirs(root / name)
        for i, f in enumerate(files, 1):
            shutil.copy(os.path.join(FACES, name, f), root / name / f"{name}_{i:04d}.jpg")
    return root


def test_lfw_pairs(tmp_path):
    root = lfw_layout(tmp_path)
    text = (
        "2\t1\n"
        "John_Salley\t1\t2\n"
        "John_Salley\t3\tJohn_Savage\t1\n"
        "John_Schneider\t2\t3\n"
        "John_Savage\t2\tJohn_Schneider\t1\n"
    )
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", root)
    np.testing.assert_array_equal(pairs.is_same, [True, False, True, False])
    np.testing.assert_array_equal(pairs.folds, [0, 0, 1, 1])
    assert pairs.images_a[1] == str(root / "John_Salley" / "John_Salley_0003.jpg")
    assert pairs.images_b[1] == str(root / "John_Savage" / "John_Savage_0001.jpg")
    ((a, b, same),) = list(pair_dataset(pairs, batch_size=4, image_size=(32, 32)))
    assert a.shape == b.shape == (4, 32, 32, 3)

    (tmp_path / "short.txt").write_text(text.replace("2\t1", "3\t1"))
    with pytest.raises(ValueError, match="header '3 1' announces 6 pairs; got 4 pair lines"):
        read_lfw_pairs(tmp_path / "short.txt", root)
    (tmp_path / "gone.txt").write_text(text.replace("John_Schneider\t2\t3", "John_Schneider\t2\t9"))
    with pytest.raises(
        ValueError, match="gone.txt, line 4: image file not found: .*John_Schneider_0009.jpg"
    ):
        read_lfw_pairs(tmp_path / "gone.txt", root)
    (tmp_path / "odd.txt").write_text(text.replace("John_Salley\t1\t2", "John_Salley\t1"))
    with pytest.raises(
        ValueError, match="odd.txt, line 2: expected 'name n1 n2' or 'name1 n1 name2 n2'"
    ):
        read_lfw_pairs(tmp_path / "odd.txt", root)
    (tmp_path / "head.txt").write_text(text.replace("2\t1", "ten"))
    with pytest.raises(ValueError, match="head.txt, line 1: expected the header"):
        read_lfw_pairs(tmp_path / "head.txt", root)


def face_bytes(n):
    index = ImageIndex.from_directory(FACES)
    return [open(p, "rb").read() for p in index.paths[:n]], index.paths[:n]


@pytest.mark.parametrize("protocol", [2, 4])
def test_insightface_bin(tmp_path, protocol):
    images, paths = face_bytes(6)
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps((images, [True, False, True]), protocol=protocol))
    pairs = read_insightface_bin(path)
    assert pairs.from_bytes and len(pairs) == 3
    np.testing.assert_array_equal(pairs.is_same, [True, False, True])
    ((a, b, same),) = list(pair_dataset(pairs, batch_size=8, image_size=(32, 32)))
    np.testing.assert_allclose(a.numpy(), eval_images(paths[0::2]), atol=1e-4)
    np.testing.assert_allclose(b.numpy(), eval_images(paths[1::2]), atol=1e-4)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_bin_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([b"x", Exploit(marker)], [True]), protocol=2)
    # Sanity check of the exploit itself: plain pickle would run it.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(
        ValueError,
        match=r"evil.bin is not a safe InsightFace .bin file: refused to load (posix|nt)\.system",
    ):
        read_insightface_bin(path)
    assert not marker.exists()


def test_bin_with_other_globals_or_shapes_is_refused(tmp_path):
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps(([np.zeros(3, np.uint8)] * 2, [True])))
    with pytest.raises(ValueError, match="refused to load numpy"):
        read_insightface_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match="2 images per is_same entry; got 3 images and 1"):
        read_insightface_bin(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable InsightFace .bin file"):
        read_insightface_bin(path)


def test_corrupt_image_in_pairs_is_blank_and_counted(tmp_path):
    from keras_facemargin.data import CorruptFileLog

    images, _ = face_bytes(4)
    images[3] = b"\xff\xd8\xff garbage"
    pairs = VerificationPairs(
        images[0::2], images[1::2], [True, False], from_bytes=True, name="set.bin"
    )
    log = CorruptFileLog()
    ((a, b, _),) = list(pair_dataset(pairs, image_size=(16, 16), corrupt_files=log))
    assert float(tf.reduce_max(b[1])) == 0.0 and float(tf.reduce_max(a[1])) > 0
    assert log.count == 1
    assert [r.path for r in log.collect()] == ["set.bin[3]"]


def test_pair_lists_with_spaces_quoted_or_tab_separated(tmp_path):
    from keras_facemargin.data import read_pairs

    folder = tmp_path / "my faces"
    folder.mkdir()
    for name in ("a one.jpg", "b two.jpg", "c.jpg"):
        (folder / name).write_bytes(b"x")
    quoted = tmp_path / "quoted.txt"
    quoted.write_text('"my faces/a one.jpg" "my faces/b two.jpg" 1\n\'my faces/c.jpg\' "my faces/a one.jpg" 0\n')
    tabbed = tmp_path / "tabbed.txt"
    tabbed.write_text("my faces/a one.jpg\tmy faces/b two.jpg\t1\nmy faces/c.jpg\tmy faces/a one.jpg\t0\n")
    for path in (quoted, tabbed):
        pairs = read_pairs(str(path))
        assert [os.path.basename(p) for p in pairs.images_a] == ["a one.jpg", "c.jpg"]
        assert [os.path.basename(p) for p in pairs.images_b] == ["b two.jpg", "a one.jpg"]
        assert list(pairs.is_same) == [True, False]
    unclosed = tmp_path / "unclosed.txt"
    unclosed.write_text('"my faces/a one.jpg my faces/c.jpg 1\n')
    with pytest.raises(ValueError, match=r"unclosed.txt, line 1: No closing quotation"):
        read_pairs(str(unclosed))


def test_a_non_utf8_pair_file_is_named_as_such(tmp_path):
    from keras_facemargin.data import read_pairs

    path = tmp_path / "latin1.txt"
    path.write_bytes("a.jpg b.jpg 1\nJos\xe9.jpg b.jpg 0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text: byte 0xe9 at offset 17 \(line 2\)"):
        read_pairs(str(path))
    with pytest.raises(ValueError, match=r"--val-pairs must be an existing pair file .* \(no such file\)"):
        read_pairs(str(tmp_path / "missing.txt"), argument="--val-pairs")
