import os
import struct

import numpy as np
import pytest
import recordio_reference as ref
import tensorflow as tf
from data_helpers import FACES

from keras_facemargin.data import (
    CorruptFileLog,
    ImageIndex,
    align_face,
    classification_dataset,
    pack_recordio,
    pk_dataset,
    read_property,
    recordio,
)

MAGIC = struct.pack("<I", ref.MAGIC)


def face_bytes():
    """The 5 × 11 real faces as encoded JPEG bytes, per identity, in sorted order."""
    index = ImageIndex.from_directory(FACES)
    return [[open(p, "rb").read() for p in index.paths[index.labels == c]] for c in range(5)]


def decoded(index, size=(48, 48), batch=64):
    images, labels = [], []
    for x, y in classification_dataset(index, batch, image_size=size, training=False):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def with_comment(jpeg, data):
    """A JPEG with a COM segment holding `data` right after SOI (decoders skip comments)."""
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(data) + 2) + data + jpeg[2:]


# ---- the format -------------------------------------------------------------------------------


def test_parts_are_byte_identical_to_the_reference_writer(rng):
    payloads = [
        b"",
        b"abc",
        MAGIC,
        b"xy" + MAGIC + b"zz",  # not 4-aligned: no split
        b"abcd" + MAGIC + MAGIC + b"tail!",  # a zero-length middle part
        MAGIC + b"1234" + MAGIC,
        rng.integers(0, 256, 1001, dtype=np.uint8).tobytes(),
    ]
    for payload in payloads:
        assert recordio.encode_parts(payload) == ref.record_parts(payload)


def test_split_records_and_multi_label_headers_read_back(tmp_path):
    jpeg = face_bytes()[0][0]
    # The IRHeader's id (bytes 8-11), an extra label's bits (bytes 24-27) and the image's
    # comment (bytes 36.. and 40..) all hold the magic at 4-aligned positions.
    magic_float = struct.unpack("<f", MAGIC)[0]
    header = ref.ir_header([3.0, magic_float], record_id=ref.MAGIC)
    image = with_comment(jpeg, b"ab" + MAGIC + MAGIC + b"cd")
    record = header + image
    parts = ref.record_parts(record)
    assert parts.count(MAGIC) == 1 + 4  # the part headers: 4 cuts, 5 parts
    path = tmp_path / "one.rec"
    path.write_bytes(parts + ref.record_parts(ref.ir_header(7.0) + jpeg))
    fd = os.open(path, os.O_RDONLY)
    try:
        joined = recordio.read_record_at(fd, 0, len(path.read_bytes()))
        second = recordio.read_record_at(fd, len(parts), len(path.read_bytes()))
    finally:
        os.close(fd)
    assert joined == record
    flag, labels, record_id, body = recordio.unpack_record(joined)
    assert flag == 2 and record_id == ref.MAGIC and body == image
    np.testing.assert_array_equal(labels, np.array([3.0, magic_float], np.float32))
    flag, labels, _, body = recordio.unpack_record(second)
    assert flag == 0 and labels.tolist() == [7.0] and body == jpeg


def test_insightface_layout_reads_as_the_folder(tmp_path, caplog):
    faces = face_bytes()
    rec = str(tmp_path / "train.rec")
    offsets = ref.write_insightface(rec, faces)
    index = ImageIndex.from_recordio(rec)
    folder = ImageIndex.from_directory(FACES)
    assert len(index) == 55 and index.num_classes == 5
    assert index.class_names == ("0", "1", "2", "3", "4")
    np.testing.assert_array_equal(index.labels, folder.labels)
    assert index.paths[0] == f"{rec}[1]" and index.paths[-1] == f"{rec}[55]"
    np.testing.assert_array_equal(index.offsets, [offsets[k] for k in range(1, 56)])
    # The same pixels as the image files, through the same decoder.
    rec_images, rec_labels = decoded(index)
    folder_images, folder_labels = decoded(folder)
    np.testing.assert_array_equal(rec_labels, folder_labels)
    np.testing.assert_array_equal(rec_images, folder_images)
    # A property file that disagrees is reported.
    (tmp_path / "property").write_text("6,112,112\n")
    with caplog.at_level("WARNING"):
        ImageIndex.from_recordio(rec)
    assert "property file beside it declares 6 classes; the records hold 5" in caplog.text
    # The labels of the image headers agree with the identity ranges.
    by_headers = ImageIndex.from_recordio(rec, label_source="headers")
    np.testing.assert_array_equal(by_headers.labels, index.labels)
    assert list(by_headers.paths) == list(index.paths)


def test_training_pipelines_over_a_rec_equal_those_over_the_folder(tmp_path):
    rec = str(tmp_path / "train.rec")
    ref.write_insightface(rec, face_bytes())
    index, folder = ImageIndex.from_recordio(rec), ImageIndex.from_directory(FACES)
    for make in (
        lambda i: classification_dataset(i, 8, image_size=(40, 40), seed=3),
        lambda i: pk_dataset(i, 3, 2, image_size=(40, 40), seed=5),  # augmented, by (seed, id)
    ):
        for (xa, ya), (xb, yb) in zip(make(index), make(folder), strict=True):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb)


def test_a_rec_with_landmarks_aligns_as_the_folder(tmp_path):
    rec = str(tmp_path / "train.rec")
    ref.write_insightface(rec, face_bytes())
    rng = np.random.default_rng(3)
    marks = np.array([[44, 47], [102, 47], [74, 75], [49, 104], [99, 103]], np.float32)
    landmarks = marks + rng.uniform(-4, 4, size=(55, 5, 2)).astype(np.float32)
    index = ImageIndex.from_recordio(rec).with_landmarks(landmarks)
    folder = ImageIndex.from_directory(FACES).with_landmarks(landmarks)
    for (xa, ya), (xb, yb) in zip(classification_dataset(index, 11, image_size=56, seed=1),
                                  classification_dataset(folder, 11, image_size=56, seed=1),
                                  strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    first = next(iter(classification_dataset(index, 5, image_size=56, training=False)))[0][0]
    image = tf.io.decode_jpeg(face_bytes()[0][0], channels=3)
    np.testing.assert_allclose(first, align_face(image, landmarks[0], 56), atol=1e-3)
    assert index.subset([4, 2]).landmarks.tolist() == landmarks[[4, 2]].tolist()


def test_sharded_pipelines_split_a_rec_as_a_folder(tmp_path):
    rec = str(tmp_path / "train.rec")
    ref.write_insightface(rec, face_bytes())
    index = ImageIndex.from_recordio(rec)
    whole = [y.numpy() for _, y in classification_dataset(index, 8, image_size=(16, 16))]
    parts = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(2, pipeline, 2)
        parts.append([y.numpy() for _, y in classification_dataset(
            index, 8, image_size=(16, 16), input_context=context)])
    for step, labels in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), labels)


def test_plain_list_layout_with_multi_labels(tmp_path):
    faces = [image for images in face_bytes() for image in images][:6]
    labels = [3, 7, 7, [12.0, 0.5], 3, [7.0, 9.0, 1.0]]  # two records with several labels
    rec = str(tmp_path / "list.rec")
    ref.write_list(rec, list(zip(labels, faces)))
    index = ImageIndex.from_recordio(rec)
    assert index.class_names == ("3", "7", "12")
    np.testing.assert_array_equal(index.labels, [0, 1, 1, 2, 0, 1])
    assert index.paths[0] == f"{rec}[0]"
    images, _ = decoded(index)
    expected = [tf.image.resize(tf.io.decode_jpeg(f, channels=3), (48, 48)).numpy() for f in faces]
    np.testing.assert_allclose(images, np.stack(expected), atol=1e-4)
    # Labels 0..C-1 are kept as they are.
    ref.write_list(rec, list(zip([1, 0, 2, 1], faces)))
    assert ImageIndex.from_recordio(rec).labels.tolist() == [1, 0, 2, 1]
    with pytest.raises(ValueError, match="label_source='identities' needs InsightFace's layout"):
        ImageIndex.from_recordio(rec, label_source="identities")


def test_pack_writes_what_the_reference_reader_reads(tmp_path):
    out = tmp_path / "packed"
    out.mkdir()
    rec = str(out / "train.rec")
    index = pack_recordio(FACES, rec)
    folder = ImageIndex.from_directory(FACES)
    records = ref.read_all(rec)
    offsets = ref.read_idx(rec[:-4] + ".idx")
    assert sorted(offsets) == list(range(61)) and len(records) == 61
    flag, label, _, _ = ref.unpack(records[0])
    assert flag == 2 and label == [56.0, 61.0]
    for key in range(1, 56):
        flag, label, record_id, image = ref.unpack(records[key])
        assert flag == 0 and record_id == key
        assert label == folder.labels[key - 1]
        assert image == open(folder.paths[key - 1], "rb").read()
    for identity in range(5):
        _, label, _, image = ref.unpack(records[56 + identity])
        assert label == [1.0 + 11 * identity, 12.0 + 11 * identity] and image == b""
    assert read_property(out) == (5, 150, 150)
    assert (out / "property").read_text() == "5,150,150\n"
    np.testing.assert_array_equal(index.labels, folder.labels)
    # The record file's own offsets agree with the reference reader's .idx.
    np.testing.assert_array_equal(index.offsets, [offsets[k] for k in range(1, 56)])

    listed = pack_recordio(folder.subset(np.arange(0, 55, 5)), str(out / "list.rec"), layout="list")
    records = ref.read_all(str(out / "list.rec"))
    assert len(records) == 11 and ref.unpack(records[0])[0] == 0
    np.testing.assert_array_equal(listed.labels, np.repeat(np.arange(5), [3, 2, 2, 2, 2]))
    assert not list(out.glob(".tmp-*"))


def test_pack_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="layout must be one of .*got 'mxnet'"):
        pack_recordio(FACES, str(tmp_path / "a.rec"), layout="mxnet")
    with pytest.raises(ValueError, match="rec_path must end in .rec; got .*a.bin"):
        pack_recordio(FACES, str(tmp_path / "a.bin"))
    with pytest.raises(ValueError, match="source must be an image folder or an ImageIndex; got int"):
        pack_recordio(3, str(tmp_path / "a.rec"))
    with pytest.raises(ValueError, match="rec_path must be in an existing folder"):
        pack_recordio(FACES, str(tmp_path / "missing" / "a.rec"))
    gone = ImageIndex([os.path.join(FACES, "nobody.jpg")], [0], ["x"])
    with pytest.raises(ValueError, match="source must list existing image files; 1 do not exist"):
        pack_recordio(gone, str(tmp_path / "a.rec"))
    assert not os.path.exists(tmp_path / "a.rec")
    rec = str(tmp_path / "a.rec")
    packed = pack_recordio(FACES, rec)
    with pytest.raises(ValueError, match="source must be an index of image files; got an index of"):
        pack_recordio(packed, str(tmp_path / "b.rec"))


# ---- corrupt files ----------------------------------------------------------------------------


def corrupted_set(tmp_path):
    """InsightFace layout over the faces with three broken image records."""
    faces = face_bytes()
    faces[1][2] = b"this is not a jpeg" * 20  # undecodable, record 14
    rec = str(tmp_path / "train.rec")
    offsets = ref.write_insightface(rec, faces)
    data = bytearray(open(rec, "rb").read())
    data[offsets[30] : offsets[30] + 4] = b"\0\0\0\0"  # bad magic
    open(rec, "wb").write(bytes(data))
    return rec, offsets


def test_corrupt_records_become_blanks_and_are_reported(tmp_path, caplog):
    rec, offsets = corrupted_set(tmp_path)
    index = ImageIndex.from_recordio(rec)
    log = CorruptFileLog()
    images, labels = [], []
    for x, y in classification_dataset(index, 16, image_size=(32, 32), training=False,
                                       drop_remainder=False, corrupt_files=log):
        images.append(x.numpy())
        labels.append(y.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert len(images) == 55
    np.testing.assert_array_equal(labels, index.labels)
    blank = np.flatnonzero(images.reshape(55, -1).max(axis=1) == 0)
    np.testing.assert_array_equal(blank, [13, 29])  # records 14 and 30
    with caplog.at_level("WARNING"):
        found = {item.path: item.reason for item in log.collect()}
    assert set(found) == {f"{rec}[14]", f"{rec}[30]"}
    assert found[f"{rec}[30]"] == (
        f"record 30 at offset {offsets[30]}: bad magic 0x00000000 at offset {offsets[30]} "
        "(expected 0xCED7230A)"
    )
    assert found[f"{rec}[14]"].startswith(
        f"record 14 at offset {offsets[14]}: the image does not decode: InvalidArgumentError"
    )
    assert f"{rec}[30]" in caplog.text
    # verify() finds the same two, and remove_paths drops them.
    checked = index.verify()
    assert {item.path: item.reason for item in checked} == found
    clean = index.remove_paths([item.path for item in checked])
    assert len(clean) == 53 and clean.record_file == rec


def test_a_truncated_file_is_reported_not_crashed(tmp_path):
    faces = face_bytes()
    rec = str(tmp_path / "train.rec")
    ref.write_list(rec, [(i % 3, faces[0][i]) for i in range(5)])
    offsets = ref.read_idx(rec[:-4] + ".idx")
    data = open(rec, "rb").read()
    cut = offsets[4] + 200  # inside the last image
    open(rec, "wb").write(data[:cut])
    index = ImageIndex.from_recordio(rec)  # the last header is still whole
    log = CorruptFileLog()
    images = np.concatenate([x.numpy() for x, _ in classification_dataset(
        index, 5, image_size=(16, 16), training=False, corrupt_files=log)])
    assert images[4].max() == 0
    assert images[:4].reshape(4, -1).max(axis=1).min() > 0
    (item,) = log.collect()
    assert item.path == f"{rec}[4]"
    assert item.reason.startswith(f"record 4 at offset {offsets[4]}: truncated file: the part at "
                                  f"offset {offsets[4]} announces")
    assert f"ends after 192 of them (at byte {cut})" in item.reason


def test_a_corrupt_length_reads_nothing_beyond_the_file(tmp_path):
    faces = face_bytes()
    rec = str(tmp_path / "train.rec")
    offsets = ref.write_list(rec, [(0, faces[0][0]), (1, faces[0][1])])
    data = bytearray(open(rec, "rb").read())
    data[offsets[0] + 4 : offsets[0] + 8] = struct.pack("<I", (1 << 29) - 1)  # 512 MB announced
    open(rec, "wb").write(bytes(data))
    fd = os.open(rec, os.O_RDONLY)
    try:
        with pytest.raises(recordio.RecordError, match=f"announces {(1 << 29) - 1} bytes"):
            recordio.read_record_at(fd, offsets[0], len(data))
    finally:
        os.close(fd)


# ---- index errors -----------------------------------------------------------------------------


def test_index_errors_name_the_file_and_the_record(tmp_path):
    faces = face_bytes()
    rec = str(tmp_path / "train.rec")
    idx = rec[:-4] + ".idx"
    with pytest.raises(ValueError, match="rec_path must be an existing .rec file; got .*train.rec"):
        ImageIndex.from_recordio(rec)
    ref.write_insightface(rec, [faces[0][:2], faces[1][:2]])
    lines = open(idx).read().splitlines()
    with pytest.raises(ValueError, match="label_source must be one of .*got 'names'"):
        ImageIndex.from_recordio(rec, label_source="names")

    os.rename(idx, idx + ".bak")
    with pytest.raises(ValueError, match=r"needs its index '.*train.idx' beside it"):
        ImageIndex.from_recordio(rec)
    os.rename(idx + ".bak", idx)

    def with_idx(new_lines):
        open(idx, "w").write("\n".join(new_lines) + "\n")

    with_idx(lines[:2] + ["2 oops"] + lines[3:])
    with pytest.raises(ValueError, match=r"train.idx, line 3: expected 'key<TAB>offset'.*'2 oops'"):
        ImageIndex.from_recordio(rec)
    with_idx(lines + [lines[1]])
    with pytest.raises(ValueError, match="train.idx: key 1 appears more than once"):
        ImageIndex.from_recordio(rec)
    with_idx(lines[:3] + lines[4:])
    with pytest.raises(ValueError, match="train.idx has no entry for record 3 .*identity record's range"):
        ImageIndex.from_recordio(rec)
    size = os.path.getsize(rec)
    with_idx(lines[:1] + [f"1\t{size + 4}"] + lines[2:])
    with pytest.raises(ValueError, match=f"record 1 has offset {size + 4}, beyond the end"):
        ImageIndex.from_recordio(rec)
    with_idx(lines)
    assert len(ImageIndex.from_recordio(rec)) == 4

    # An identity record whose range points past the images.
    ref.write_insightface(rec, [faces[0][:2], faces[1][:2]])
    writer_offsets = ref.read_idx(idx)
    data = bytearray(open(rec, "rb").read())
    start = writer_offsets[6] + 8 + 24  # identity 1's labels (start, end)
    data[start + 4 : start + 8] = struct.pack("<f", 9.0)
    open(rec, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=r"identity record 6 holds the image range \[3, 9\); "
                                         r"expected 1 <= start <= end <= 5"):
        ImageIndex.from_recordio(rec)
    data[writer_offsets[0] : writer_offsets[0] + 4] = b"\1\2\3\4"
    open(rec, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="record 0 .* cannot be read: bad magic 0x04030201"):
        ImageIndex.from_recordio(rec)


def test_unreadable_headers_of_a_list_are_an_error_naming_them(tmp_path):
    faces = face_bytes()
    rec = str(tmp_path / "list.rec")
    offsets = ref.write_list(rec, [(i % 2, faces[0][i]) for i in range(4)])
    data = bytearray(open(rec, "rb").read())
    data[offsets[2] : offsets[2] + 4] = b"\0\0\0\0"
    open(rec, "wb").write(bytes(data))
    with pytest.raises(
        ValueError,
        match=rf"1 of 4 image records cannot be read.*record 2 at offset {offsets[2]}: bad magic",
    ):
        ImageIndex.from_recordio(rec)


def test_property_file(tmp_path):
    assert read_property(tmp_path) is None
    (tmp_path / "property").write_text("85742,112,112\n")
    assert read_property(tmp_path) == (85742, 112, 112)
    (tmp_path / "property").write_text("85742;112\n")
    with pytest.raises(ValueError, match="must read 'num_classes,height,width'.*got '85742;112'"):
        read_property(tmp_path)



def test_a_record_reader_opens_once_under_a_parallel_map(tmp_path, monkeypatch):
    # tf.data's parallel map calls one reader from many threads; the first call opens the file.
    # A slow fstat widens the window in which a second thread used to see the file half-opened
    # (AttributeError: 'RecordReader' object has no attribute '_size').
    import threading
    import time

    rec = str(tmp_path / "train.rec")
    ref.write_insightface(rec, face_bytes())
    index = ImageIndex.from_recordio(rec)
    real_fstat = os.fstat

    def slow_fstat(fd):
        time.sleep(0.05)
        return real_fstat(fd)

    monkeypatch.setattr(recordio.os, "fstat", slow_fstat)
    reader = recordio.RecordReader(rec)
    start = threading.Barrier(8)
    results, errors = [], []

    def work():
        start.wait()
        try:
            results.append(reader.images(index.offsets[:3]))
        except Exception as error:  # noqa: BLE001 - any failure is the test's finding
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    expected = [b for b in face_bytes()[0][:3]]
    assert len(results) == 8 and all(list(r) == expected for r in results)
