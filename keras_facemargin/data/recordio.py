"""InsightFace's MXNet RecordIO training sets (`train.rec`, `train.idx`, `property`), without MXNet.

The format, as dmlc-core's `RecordIOWriter`/`RecordIOReader` (src/recordio.cc, include/dmlc/
recordio.h) and MXNet's `python/mxnet/recordio.py` write and read it:

- A `.rec` file is a sequence of parts, each a little-endian uint32 magic `0xCED7230A`, a uint32
  `lrec` (upper 3 bits cflag, lower 29 bits the part's length), the part's bytes and zero padding
  to a multiple of 4. A record whose bytes hold the magic at a 4-aligned position is written as
  several parts cut at those positions, the magic left out: cflag 1 starts it, 2 continues it,
  3 ends it (0: a whole record); the reader puts the magic back between the parts.
- A record's bytes start with MXNet's `IRHeader`, `struct 'IfQQ'` (flag, label, id, id2); when
  flag > 0, `flag` float32 labels follow it (and the header's own label is unused). Then the
  encoded image.
- The `.idx` beside it has one `key<TAB>byte offset` line per record (`MXIndexedRecordIO`).
- InsightFace's layout (`recognition/arcface_torch/dataset.py` `MXFaceDataset`, the older
  `image_iter.py` `FaceImageIter`): when record 0's flag is > 0 its labels `(a, b)` say that
  records `1 .. a-1` are images and records `a .. b-1` are identities, identity `i` (record
  `a + i`) holding the image range `[start, end)` as its two labels. When record 0's flag is 0,
  every record is a labelled image.
"""

import functools
import logging
import os
import re
import struct
import tempfile
import threading
import weakref

import numpy as np

from keras_facemargin.data import text_tables

logger = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_PART = struct.Struct("<II")
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes, as MXNet's 'IfQQ'
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
# float32 holds every integer up to 2^24 exactly: beyond it, InsightFace's float record ranges
# cannot address records one by one.
_EXACT_FLOAT_KEYS = 1 << 24
LAYOUTS = ("insightface", "list")
LABEL_SOURCES = ("auto", "identities", "headers")
_NAME = re.compile(r"^(?P<rec>.*)\[(?P<key>\d+)\]$")


class RecordError(Exception):
    """A record that cannot be read; the message says where and why."""


def idx_path_for(rec_path):
    """The `.idx` file beside a `.rec` file."""
    root, _ = os.path.splitext(os.fspath(rec_path))
    return root + ".idx"


def record_name(rec_path, key):
    """How an image of a `.rec` file is named in an index and in corrupt-file reports."""
    return f"{rec_path}[{key}]"


# ---- reading one record ----------------------------------------------------------------------


def _pread(fd, size, offset):
    if size == 0:
        return b""
    return os.pread(fd, size, offset)


def read_record_at(fd, offset, file_size):
    """The bytes of the record that starts at `offset` of the open file `fd`, its parts joined.

    Raises `RecordError` (bad magic, a part's flags out of order, a truncated file).
    """
    parts = []
    position = offset
    first = True
    while True:
        head = _pread(fd, _PART.size, position)
        if len(head) < _PART.size:
            raise RecordError(
                f"truncated file: it ends at byte {file_size}, inside the 8-byte header of the "
                f"record part at offset {position}"
            )
        magic, lrec = _PART.unpack(head)
        if magic != MAGIC:
            raise RecordError(
                f"bad magic 0x{magic:08X} at offset {position} (expected 0x{MAGIC:08X})"
            )
        cflag, length = lrec >> _LENGTH_BITS, lrec & _MAX_LENGTH
        if cflag > 3 or (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
            expected = "0 or 1 (a record's first part)" if first else "2 or 3 (a continuation)"
            raise RecordError(f"part flag {cflag} at offset {position}, expected {expected}")
        available = max(file_size - position - _PART.size, 0)
        data = _pread(fd, min(length, available), position + _PART.size)
        if len(data) < length:
            raise RecordError(
                f"truncated file: the part at offset {position} announces {length} bytes, the "
                f"file ends after {len(data)} of them (at byte {file_size})"
            )
        parts.append(data)
        position += _PART.size + ((length + 3) & ~3)
        if cflag in (0, 3):
            return b"".join(parts)
        parts.append(_MAGIC_BYTES)
        first = False


def unpack_record(record):
    """`(flag, labels, id, image bytes)` of a record's bytes, as MXNet's `recordio.unpack`.

    `labels` is the header's label as a float32 array of one value when flag is 0, else the
    `flag` float32 labels that follow the header.
    """
    if len(record) < IR_HEADER.size:
        raise RecordError(
            f"the record holds {len(record)} bytes, fewer than its {IR_HEADER.size}-byte IRHeader"
        )
    flag, label, record_id, _ = IR_HEADER.unpack_from(record)
    body = IR_HEADER.size
    if flag == 0:
        return flag, np.array([label], np.float32), record_id, record[body:]
    if body + 4 * flag > len(record):
        raise RecordError(
            f"the IRHeader announces {flag} labels ({4 * flag} bytes) but the record holds only "
            f"{len(record) - body} bytes after the header"
        )
    labels = np.frombuffer(record, "<f4", flag, body).astype(np.float32)
    return flag, labels, record_id, record[body + 4 * flag :]


def pack_record(image, label, record_id=0):
    """A record's bytes: MXNet's `recordio.pack(IRHeader(0, label, id, 0), image)`; a sequence
    of labels is written as `flag = len(labels)` float32 values after the header."""
    if np.ndim(label) == 0:
        return IR_HEADER.pack(0, float(label), int(record_id), 0) + bytes(image)
    labels = np.asarray(label, "<f4").reshape(-1)
    return IR_HEADER.pack(len(labels), 0.0, int(record_id), 0) + labels.tobytes() + bytes(image)


def encode_parts(record):
    """The bytes dmlc-core's `RecordIOWriter::WriteRecord` writes for one record."""
    if len(record) > _MAX_LENGTH:
        raise ValueError(
            f"a RecordIO record must be shorter than 2^29 bytes; got {len(record)} bytes"
        )
    aligned = len(record) // 4 * 4
    words = np.frombuffer(record, "<u4", aligned // 4)
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    out = []
    start = 0
    for cut in cuts:
        out.append(_PART.pack(MAGIC, ((1 if start == 0 else 2) << _LENGTH_BITS) | (cut - start)))
        out.append(record[start:cut])
        start = cut + 4
    out.append(_PART.pack(MAGIC, ((3 if cuts else 0) << _LENGTH_BITS) | (len(record) - start)))
    out.append(record[start:])
    out.append(b"\0" * (-len(record) % 4))
    return b"".join(out)


# ---- the .idx file and vectorised header reads -----------------------------------------------


def read_idx(idx_path):
    """`(keys, offsets)` int64 arrays of an `.idx` file, in file order.

    Raises a `ValueError` naming the line of the first malformed entry.
    """
    table = text_tables.read_int_columns(idx_path, 2, "'key<TAB>offset' (two integers >= 0)")
    if len(table) == 0:
        raise ValueError(f"{idx_path} lists no record; expected 'key<TAB>offset' lines")
    negative = np.flatnonzero((table < 0).any(axis=1))
    if len(negative):
        raise ValueError(
            f"{idx_path}, line {negative[0] + 1}: expected 'key<TAB>offset' (two integers >= 0); "
            f"got {table[negative[0]].tolist()}"
        )
    return table[:, 0].copy(), table[:, 1].copy()


class _KeyTable:
    """key -> byte offset, vectorised; refuses repeated keys."""

    def __init__(self, keys, offsets, idx_path):
        self.idx_path = idx_path
        if len(keys) > 1 and not np.all(keys[1:] > keys[:-1]):
            order = np.argsort(keys, kind="stable")
            keys, offsets = keys[order], offsets[order]
            repeated = np.flatnonzero(keys[1:] == keys[:-1])
            if len(repeated):
                raise ValueError(f"{idx_path}: key {keys[repeated[0]]} appears more than once")
        self.keys, self.offsets = keys, offsets
        # The usual .idx lists keys 0..n-1 in order: look them up by position.
        self.contiguous = keys[0] == 0 and keys[-1] == len(keys) - 1

    def __contains__(self, key):
        i = np.searchsorted(self.keys, key)
        return i < len(self.keys) and self.keys[i] == key

    def lookup(self, keys, what):
        keys = np.asarray(keys, np.int64)
        if self.contiguous:
            i = np.clip(keys, 0, len(self.keys) - 1)
        else:
            i = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        missing = self.keys[i] != keys
        if missing.any():
            raise ValueError(
                f"{self.idx_path} has no entry for record {keys[missing][0]} ({what}; "
                f"{int(missing.sum())} such records missing)"
            )
        return self.offsets[i]


class _Headers:
    """Part headers and IRHeaders of many records, gathered through a uint32 memory map.

    Records are 4-byte aligned, so each field is one uint32 gather. Records that need more than
    the fast path (split records, bad magic, a file end, a short record) are read one by one.
    """

    WORDS = 10  # part header (2) + IRHeader (6) + the first two extra labels (2)

    def __init__(self, rec_path, file_size):
        self.rec_path = rec_path
        self.file_size = file_size
        self.words = (
            np.memmap(rec_path, "<u4", "r", shape=(file_size // 4,)) if file_size >= 4 else None
        )

    def labels(self, keys, offsets, count):
        """`(labels [n, count] float32, errors)`: the first `count` (1 or 2) labels of each
        record, and `{position: reason}` for the records that could not be read."""
        n = len(offsets)
        out = np.zeros((n, count), np.float32)
        errors = {}
        fast = (offsets % 4 == 0) & (offsets + 4 * self.WORDS <= self.file_size)
        if self.words is not None and fast.any():
            where = np.flatnonzero(fast)
            w = offsets[where] // 4
            magic = self.words[w]
            lrec = self.words[w + 1]
            length = lrec & _MAX_LENGTH
            flag = self.words[w + 2]
            ok = (magic == MAGIC) & ((lrec >> _LENGTH_BITS) == 0)
            ok &= length >= IR_HEADER.size + 4 * np.minimum(flag, 2).astype(np.int64)
            ok &= (flag == 0) | (flag >= count)
            if count == 1:
                value = np.where(flag == 0, self.words[w + 3], self.words[w + 8])
                out[where[ok], 0] = value[ok].view("<f4")
            else:
                ok &= flag >= 2
                out[where[ok], 0] = self.words[w[ok] + 8].view("<f4")
                out[where[ok], 1] = self.words[w[ok] + 9].view("<f4")
            fast[where[~ok]] = False
        slow = np.flatnonzero(~fast)
        if len(slow):
            fd = os.open(self.rec_path, os.O_RDONLY)
            try:
                for position in slow:
                    try:
                        flag, labels, _, _ = unpack_record(
                            read_record_at(fd, int(offsets[position]), self.file_size)
                        )
                        if len(labels) < count:
                            raise RecordError(f"expected {count} labels, got {len(labels)}")
                        out[position] = labels[:count]
                    except RecordError as error:
                        errors[int(position)] = (
                            f"record {keys[position]} at offset {offsets[position]}: {error}"
                        )
            finally:
                os.close(fd)
        return out, errors


def _as_keys(values, what, rec_path):
    keys = np.asarray(values, np.float64)
    if not np.all(np.isfinite(keys)) or np.any(keys != np.round(keys)) or np.any(keys < 0):
        raise ValueError(f"{rec_path}: {what} must be integers >= 0; got {values[:4]}")
    return keys.astype(np.int64)


def _first_error(errors, what, rec_path, count):
    shown = "; ".join(list(errors.values())[:3])
    raise ValueError(
        f"{rec_path}: {len(errors)} of {count} {what} cannot be read, so the index cannot be "
        f"built: {shown}"
    )


def read_property(folder):
    """The class count and image size an InsightFace RecordIO folder declares.

    InsightFace writes them to a one-line `property` file beside `train.rec` (`85742,112,112`);
    a malformed one is a `ValueError` that quotes it.

    Args:
        folder: the folder that holds the `.rec`/`.idx` pair.

    Returns:
        `(num_classes, height, width)` as ints, or None when the folder has no `property` file.
    """
    path = os.path.join(os.fspath(folder), "property")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise ValueError(
            f"{path} must read 'num_classes,height,width' (e.g. '85742,112,112'); got {text!r}"
        )
    return values


def index_arrays(rec_path, label_source="auto"):
    """What `ImageIndex.from_recordio` builds an index from: `(names, labels, class_names,
    offsets, layout)`, see there."""
    rec_path = os.fspath(rec_path)
    if not os.path.isfile(rec_path):
        raise ValueError(f"rec_path must be an existing .rec file; got {rec_path!r}")
    idx_path = idx_path_for(rec_path)
    if not os.path.isfile(idx_path):
        raise ValueError(
            f"rec_path needs its index {idx_path!r} beside it (MXNet's MXIndexedRecordIO); "
            f"it does not exist"
        )
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}; got {label_source!r}")
    keys, offsets = read_idx(idx_path)
    file_size = os.path.getsize(rec_path)
    beyond = offsets >= file_size
    if beyond.any():
        raise ValueError(
            f"{idx_path}: record {keys[beyond][0]} has offset {offsets[beyond][0]}, beyond the end "
            f"of {rec_path} ({file_size} bytes; {int(beyond.sum())} such records)"
        )
    table = _KeyTable(keys, offsets, idx_path)
    headers = _Headers(rec_path, file_size)
    layout = "list"
    if 0 in table:
        fd = os.open(rec_path, os.O_RDONLY)
        try:
            offset0 = int(table.lookup([0], "record 0")[0])
            try:
                flag0, labels0, _, _ = unpack_record(read_record_at(fd, offset0, file_size))
            except RecordError as error:
                raise ValueError(
                    f"{rec_path}: record 0 (the header record) at offset {offset0} cannot be "
                    f"read: {error}"
                ) from None
        finally:
            os.close(fd)
        if flag0 > 0:
            layout = "insightface"
            if len(labels0) < 2:
                raise ValueError(
                    f"{rec_path}: record 0 has flag {flag0} but InsightFace's header record "
                    f"holds two labels (first identity record, end); got {labels0.tolist()}"
                )
            first_identity, end = _as_keys(labels0[:2], "record 0's labels", rec_path)
            if not 1 <= first_identity <= end:
                raise ValueError(
                    f"{rec_path}: record 0 must hold 1 <= first identity record <= end; got "
                    f"{labels0[:2].tolist()}"
                )
    if layout == "list":
        if label_source == "identities":
            raise ValueError(
                f"label_source='identities' needs InsightFace's layout (record 0 with flag > 0); "
                f"{rec_path} is a plain list of images (record 0 has flag 0 or is absent)"
            )
        image_keys = table.keys
        source = "headers"
    else:
        source = label_source
        if source == "auto":
            source = "identities" if end <= _EXACT_FLOAT_KEYS else "headers"
        if source == "headers":
            image_keys = table.keys[(table.keys >= 1) & (table.keys < first_identity)]
    if source == "identities":
        identity_keys = np.arange(first_identity, end, dtype=np.int64)
        identity_offsets = table.lookup(identity_keys, "an identity record that record 0 lists")
        ranges, errors = headers.labels(identity_keys, identity_offsets, 2)
        if errors:
            _first_error(errors, "identity records", rec_path, len(identity_keys))
        ranges = _as_keys(ranges.reshape(-1), "identity records' image ranges", rec_path)
        starts, ends = ranges[0::2], ranges[1::2]
        bad = (starts < 1) | (ends < starts) | (ends > first_identity)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{rec_path}: identity record {identity_keys[i]} holds the image range "
                f"[{starts[i]}, {ends[i]}); expected 1 <= start <= end <= {first_identity} "
                f"(record 0's first identity record)"
            )
        counts = ends - starts
        labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        image_keys = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(
            counts.sum(), dtype=np.int64
        )
        class_names = [str(i) for i in range(len(counts))]
        empty = int((counts == 0).sum())
        if empty:
            logger.info("%s: %d identities hold no image (their labels are kept)", rec_path, empty)
        image_offsets = table.lookup(image_keys, "an image of an identity record's range")
    else:
        if len(image_keys) == 0:
            raise ValueError(f"{rec_path} holds no image record")
        image_offsets = table.lookup(image_keys, "an image record")
        raw, errors = headers.labels(image_keys, image_offsets, 1)
        if errors:
            _first_error(errors, "image records", rec_path, len(image_keys))
        values = _as_keys(raw[:, 0], "image records' labels", rec_path)
        unique = np.unique(values)
        if unique[0] == 0 and unique[-1] == len(unique) - 1:
            labels = values
        else:
            labels = np.searchsorted(unique, values)
        class_names = [str(u) for u in unique]
    declared = read_property(os.path.dirname(os.path.abspath(rec_path)))
    if declared is not None and declared[0] != len(class_names):
        logger.warning(
            "%s: the property file beside it declares %d classes; the records hold %d",
            rec_path, declared[0], len(class_names),
        )
    template = rec_path.replace("{", "{{").replace("}", "}}") + "[{}]"
    names = list(map(template.format, image_keys.tolist()))  # = record_name(rec_path, key)
    return names, labels, class_names, image_offsets, layout


# ---- reading images in a pipeline, and reporting corrupt ones --------------------------------


class RecordReader:
    """Reads the image bytes of records by byte offset, for `tf.numpy_function` in a pipeline.

    A record that cannot be read gives empty bytes (which then fail to decode, so the sample
    becomes a blank image and is reported with the reason that `describe_record` finds).
    """

    def __init__(self, rec_path):
        self.rec_path = os.fspath(rec_path)
        self._opened = None  # (fd, size), set once; a parallel map calls images() from many threads
        self._lock = threading.Lock()

    def _open(self):
        with self._lock:
            if self._opened is None:
                fd = os.open(self.rec_path, os.O_RDONLY)
                weakref.finalize(self, os.close, fd)
                self._opened = (fd, os.fstat(fd).st_size)
        return self._opened

    def images(self, offsets):
        fd, size = self._open()
        out = np.empty(len(offsets), dtype=object)
        for i, offset in enumerate(np.asarray(offsets).tolist()):
            try:
                out[i] = unpack_record(read_record_at(fd, offset, size))[3]
            except (RecordError, OSError):
                out[i] = b""
        return out


@functools.lru_cache(maxsize=4)
def _cached_table(idx_path, mtime_ns, size):
    return _KeyTable(*read_idx(idx_path), idx_path)


def describe_record(name):
    """Why the record called `name` (`path.rec[key]`) does not give an image, or None when
    `name` is not a record's name."""
    match = _NAME.match(name)
    if match is None:
        return None
    rec_path, key = match["rec"], int(match["key"])
    idx_path = idx_path_for(rec_path)
    if not (os.path.isfile(rec_path) and os.path.isfile(idx_path)):
        return None
    try:
        stat = os.stat(idx_path)
        table = _cached_table(idx_path, stat.st_mtime_ns, stat.st_size)
        offset = int(table.lookup([key], "the record reported")[0])
    except (OSError, ValueError) as error:
        return f"record {key}: its offset cannot be looked up in {idx_path}: {error}"
    where = f"record {key} at offset {offset}"
    try:
        fd = os.open(rec_path, os.O_RDONLY)
    except OSError as error:
        return f"{where}: {error}"
    try:
        image = unpack_record(read_record_at(fd, offset, os.fstat(fd).st_size))[3]
    except (RecordError, OSError) as error:
        return f"{where}: {error}"
    finally:
        os.close(fd)
    from keras_facemargin.data import decoding

    reason = decoding.decode_error(image)
    if reason is None:
        return f"{where}: failed in the pipeline but decodes now (was the file replaced?)"
    return f"{where}: the image does not decode: {reason}"


# ---- writing ---------------------------------------------------------------------------------


def _write_atomically(path, write):
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _image_size(path, decoding):
    """(height, width) of an image file for the `property` file; (0, 0) if it does not decode."""
    with open(path, "rb") as f:
        contents = f.read()
    if decoding.decode_error(contents) is not None:
        logger.warning("%s does not decode: no property file is written", path)
        return 0, 0
    return tuple(int(v) for v in decoding.decode_rgb(contents).shape[:2])


def pack_recordio(source, rec_path, layout="insightface"):
    """Writes an image set as a RecordIO training set: `rec_path`, the `.idx` beside it and
    InsightFace's `property` file in the same folder.

    The image files' bytes go in unchanged (no re-encoding). With `layout="insightface"`, the
    layout InsightFace's own sets use: record 0 holds `(first identity record, end)`, records
    `1..N` the images grouped by identity, then one record per identity with its image range.
    With `layout="list"` every record is an image with its label. Each file is written to a
    temporary file and renamed, so no half-written set is left behind.

    Args:
        source: an image folder (one sub-folder per identity) or an `ImageIndex` of files.
        rec_path: the `.rec` file to write.
        layout: `"insightface"` or `"list"`.

    Returns:
        The `ImageIndex` of the written set (`ImageIndex.from_recordio(rec_path)`).

    Example:

    ```python
    pack_recordio("casia-webface", "casia/train.rec")
    index = ImageIndex.from_recordio("casia/train.rec")
    ```
    """
    from keras_facemargin.data import decoding
    from keras_facemargin.data.image_index import ImageIndex

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    rec_path = os.fspath(rec_path)
    if not rec_path.endswith(".rec"):
        raise ValueError(f"rec_path must end in .rec; got {rec_path!r}")
    if isinstance(source, ImageIndex):
        index = source
    elif isinstance(source, (str, os.PathLike)):
        index = ImageIndex.from_directory(source)
    else:
        raise ValueError(
            f"source must be an image folder or an ImageIndex; got {type(source).__name__}"
        )
    if index.record_file is not None:
        raise ValueError(
            f"source must be an index of image files; got an index of {index.record_file}"
        )
    if len(index) == 0:
        raise ValueError(f"source must hold at least one image; got {index}")
    folder = os.path.dirname(os.path.abspath(rec_path))
    if not os.path.isdir(folder):
        raise ValueError(f"rec_path must be in an existing folder; got {rec_path!r}")
    missing = [p for p in index.paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(
            f"source must list existing image files; {len(missing)} do not exist, the first "
            f"{missing[0]!r}"
        )
    order = np.argsort(index.labels, kind="stable")
    counts = index.class_counts()
    num_images, num_classes = len(index), index.num_classes
    if layout == "insightface" and num_images + num_classes + 1 > _EXACT_FLOAT_KEYS:
        raise ValueError(
            f"layout='insightface' stores record numbers as float32, exact only up to 2^24; "
            f"{num_images} images + {num_classes} identities is too many: use layout='list'"
        )
    height, width = _image_size(index.paths[order[0]], decoding)
    entries = []

    def write(f):
        position = 0

        def put(key, record):
            nonlocal position
            entries.append(f"{key}\t{position}\n")
            data = encode_parts(record)
            f.write(data)
            position += len(data)

        first_key = 0
        if layout == "insightface":
            first_identity = num_images + 1
            put(0, pack_record(b"", [first_identity, first_identity + num_classes]))
            first_key = 1
        for key, i in enumerate(order.tolist(), first_key):
            with open(index.paths[i], "rb") as image:
                put(key, pack_record(image.read(), index.labels[i], key))
        if layout == "insightface":
            starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
            for c in range(num_classes):
                key = first_identity + c
                put(key, pack_record(b"", [starts[c], starts[c] + counts[c]], key))

    _write_atomically(rec_path, write)
    _write_atomically(idx_path_for(rec_path), lambda f: f.write("".join(entries).encode()))
    if height:
        text = f"{num_classes},{height},{width}\n".encode()
        _write_atomically(os.path.join(folder, "property"), lambda f: f.write(text))
    logger.info("packed %d images of %d identities into %s", num_images, num_classes, rec_path)
    return ImageIndex.from_recordio(rec_path)
