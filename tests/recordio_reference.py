"""An independent RecordIO writer and reader for the tests, written from the format description
(dmlc-core's recordio.h / recordio.cc and MXNet's recordio.py), not from the package's code.

Byte by byte, in the style of dmlc-core's C++ loop: scan the payload 4 bytes at a time for the
magic, cut there, write each part as magic + lrec + bytes, pad the last part with zeros.
"""

import struct

MAGIC = 0xCED7230A


def lrec(cflag, length):
    return (cflag << 29) | length


def record_parts(payload):
    """The bytes of one record as dmlc-core's RecordIOWriter::WriteRecord writes them."""
    magic = struct.pack("<I", MAGIC)
    out = bytearray()
    size = len(payload)
    lower_align = (size >> 2) << 2
    upper_align = ((size + 3) >> 2) << 2
    dptr = 0
    i = 0
    while i < lower_align:
        if payload[i : i + 4] == magic:
            out += magic + struct.pack("<I", lrec(1 if dptr == 0 else 2, i - dptr))
            out += payload[dptr:i]
            dptr = i + 4
        i += 4
    out += magic + struct.pack("<I", lrec(3 if dptr != 0 else 0, size - dptr))
    out += payload[dptr:]
    out += bytes(upper_align - size)
    return bytes(out)


def ir_header(label, record_id=0, id2=0):
    """MXNet's recordio.pack header: a number -> flag 0; a list -> flag = len, floats after."""
    if isinstance(label, (int, float)):
        return struct.pack("IfQQ", 0, float(label), record_id, id2)
    floats = b"".join(struct.pack("f", float(v)) for v in label)
    return struct.pack("IfQQ", len(label), 0.0, record_id, id2) + floats


class Writer:
    """MXIndexedRecordIO('w'): write_idx(key, record) appends to .rec and a line to .idx."""

    def __init__(self, rec_path, idx_path=None):
        self.rec = open(rec_path, "wb")
        self.idx = open(idx_path or rec_path[:-4] + ".idx", "w")
        self.offsets = {}

    def write_idx(self, key, record):
        position = self.rec.tell()
        self.rec.write(record_parts(record))
        self.idx.write(f"{key}\t{position}\n")
        self.offsets[key] = position

    def close(self):
        self.rec.close()
        self.idx.close()


def read_all(rec_path):
    """Every record of a .rec file, sequentially, as dmlc-core's RecordIOReader reads them."""
    data = open(rec_path, "rb").read()
    records, position, current = [], 0, bytearray()
    while position < len(data):
        magic, word = struct.unpack_from("<II", data, position)
        assert magic == MAGIC, f"bad magic at {position}"
        cflag, length = word >> 29, word & ((1 << 29) - 1)
        current += data[position + 8 : position + 8 + length]
        position += 8 + ((length + 3) >> 2 << 2)
        if cflag in (0, 3):
            records.append(bytes(current))
            current = bytearray()
        else:
            current += struct.pack("<I", MAGIC)
    return records


def unpack(record):
    """MXNet's recordio.unpack: (flag, label or labels, id, image bytes)."""
    flag, label, record_id, _ = struct.unpack_from("IfQQ", record)
    body = record[24:]
    if flag > 0:
        labels = list(struct.unpack_from(f"{flag}f", body))
        return flag, labels, record_id, body[4 * flag :]
    return flag, label, record_id, body


def read_idx(idx_path):
    out = {}
    for line in open(idx_path):
        key, offset = line.strip().split("\t")
        out[int(key)] = int(offset)
    return out


def write_insightface(rec_path, images_by_identity, image_label_extra=None):
    """InsightFace's layout: record 0 = (first identity record, end), images 1..N, then one
    record per identity with its [start, end) image range.

    `images_by_identity` is a list (per identity) of lists of encoded images;
    `image_label_extra(key, identity)` may return a list of labels (a multi-label header).
    """
    writer = Writer(rec_path)
    num_images = sum(len(images) for images in images_by_identity)
    first_identity = num_images + 1
    end = first_identity + len(images_by_identity)
    writer.write_idx(0, ir_header([float(first_identity), float(end)]))
    key = 1
    ranges = []
    for identity, images in enumerate(images_by_identity):
        start = key
        for image in images:
            label = identity if image_label_extra is None else image_label_extra(key, identity)
            writer.write_idx(key, ir_header(label, key) + image)
            key += 1
        ranges.append((start, key))
    for identity, (start, stop) in enumerate(ranges):
        writer.write_idx(first_identity + identity, ir_header([float(start), float(stop)]))
    writer.close()
    return writer.offsets


def write_list(rec_path, labelled_images, first_key=0):
    """A plain list: every record an image with its label (a number or a list of labels)."""
    writer = Writer(rec_path)
    for key, (label, image) in enumerate(labelled_images, first_key):
        writer.write_idx(key, ir_header(label, key) + image)
    writer.close()
    return writer.offsets
