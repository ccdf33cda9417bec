"""Verification pair lists: the course format, LFW's pairs.txt, InsightFace's .bin sets.

An InsightFace `.bin` file is a pickle, and unpickling runs whatever functions the file names.
`read_insightface_bin` therefore uses an unpickler that resolves no name at all (bar one
bytes constructor that Python 3 writes into protocol-2 pickles): lists, tuples, bytes, booleans
and numbers load, anything else is refused before it can run.
"""

import io
import os
import pickle
import shlex

import numpy as np
import tensorflow as tf

from keras_facemargin.data import decoding

_TRUE = ("1", "true", "same")
_FALSE = ("0", "-1", "false", "diff", "different")


class VerificationPairs:
    """Pairs of images and whether they show the same person.

    Args:
        images_a, images_b: file paths, or encoded image bytes when `from_bytes`; `[num_pairs]`.
        is_same: booleans, `[num_pairs]`.
        folds: optional fold of each pair (LFW's 10 folds), `[num_pairs]` int.
        from_bytes: whether the images are encoded bytes rather than paths.
        name: what the pairs are called in messages.
    """

    def __init__(self, images_a, images_b, is_same, folds=None, from_bytes=False, name="pairs"):
        self.images_a = np.asarray(images_a, dtype=object)
        self.images_b = np.asarray(images_b, dtype=object)
        self.is_same = np.asarray(is_same, dtype=bool)
        self.folds = None if folds is None else np.asarray(folds, dtype=np.int64)
        self.from_bytes = bool(from_bytes)
        self.name = name
        n = len(self.is_same)
        if len(self.images_a) != n or len(self.images_b) != n:
            raise ValueError(
                f"images_a, images_b and is_same must have the same length; got "
                f"{len(self.images_a)}, {len(self.images_b)} and {n}"
            )
        if n == 0:
            raise ValueError(f"{name} must hold at least one pair; got none")

    def __len__(self):
        return len(self.is_same)

    def __repr__(self):
        return (
            f"VerificationPairs({self.name!r}, {len(self)} pairs, {int(self.is_same.sum())} same)"
        )


def _split(path, number, line):
    """A line's fields: tab-separated when it has a tab, shell-quoted when it has quotes (so
    paths may hold spaces), else split on whitespace."""
    if "\t" in line:
        return [field.strip() for field in line.rstrip("\r\n").split("\t") if field.strip()]
    if '"' in line or "'" in line:
        try:
            return shlex.split(line, comments=False, posix=True)
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: {error} (quote paths that hold spaces as "
                             f"\"a b.jpg\", or separate the fields by tabs)") from None
    return line.split()


def _lines(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(f"{path} is not UTF-8 text: byte 0x{raw[error.start]:02x} at offset "
                         f"{error.start} (line {line}); save the list as UTF-8") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, line in enumerate(text.splitlines(), 1):
        fields = _split(path, number, line)
        if fields and not fields[0].startswith("#"):
            yield number, fields


def _check_exists(list_path, number, path):
    if not os.path.isfile(path):
        raise ValueError(f"{list_path}, line {number}: image file not found: {path!r}")


def read_pair_list(list_path, root=None, check_files=True):
    """Reads `path_a path_b label` lines (label 1/0, true/false or same/diff).

    Relative paths are relative to `root`, by default the list's folder. Paths that hold spaces
    are quoted (`"a b.jpg" c.jpg 1`) or the three fields separated by tabs; the file is UTF-8.
    A malformed line or (with `check_files`) a missing image is a `ValueError` naming the line
    and the path.

    Args:
        list_path: the pair list, a UTF-8 text file; `#` starts a comment line.
        root: the folder that relative image paths are relative to; None: the list's folder.
        check_files: whether to check that every image file exists.

    Returns:
        `VerificationPairs` of image paths, named after the list's file name.
    """
    list_path = os.fspath(list_path)
    if not os.path.isfile(list_path):
        raise ValueError(f"list_path must be an existing file; got {list_path!r}")
    root = os.path.dirname(os.path.abspath(list_path)) if root is None else os.fspath(root)
    a, b, same = [], [], []
    for number, fields in _lines(list_path):
        label = fields[-1].lower() if len(fields) == 3 else None
        if label not in _TRUE + _FALSE:
            raise ValueError(
                f"{list_path}, line {number}: expected 'path_a path_b label' with label 1/0; "
                f"got {' '.join(fields)!r}"
            )
        pair = [p if os.path.isabs(p) else os.path.join(root, p) for p in fields[:2]]
        if check_files:
            for path in pair:
                _check_exists(list_path, number, path)
        a.append(pair[0])
        b.append(pair[1])
        same.append(label in _TRUE)
    return VerificationPairs(a, b, same, name=os.path.basename(list_path))


def read_lfw_pairs(pairs_path, images_root, check_files=True):
    """Reads LFW's `pairs.txt` (or `pairsDevTest.txt`): images at `root/name/name_%04d.jpg`.

    The header is `folds pairs_per_fold` (pairs.txt: `10 300`, each fold 300 same then 300
    different pairs) or a single count (pairsDevTrain/DevTest). Lines are `name n1 n2` (same
    person) or `name1 n1 name2 n2` (different people).

    Args:
        pairs_path: LFW's pair file.
        images_root: the LFW image folder, with one folder per person (`lfw-deepfunneled`, ...).
        check_files: whether to check that every image file exists.

    Returns:
        `VerificationPairs` of image paths whose `folds` holds each pair's fold (0-based, in
        file order), named after the pair file's name.
    """
    pairs_path = os.fspath(pairs_path)
    if not os.path.isfile(pairs_path):
        raise ValueError(f"pairs_path must be an existing file; got {pairs_path!r}")
    lines = list(_lines(pairs_path))
    if not lines:
        raise ValueError(f"pairs_path {pairs_path!r} is empty; expected LFW's pairs.txt")
    header_number, header = lines[0]
    try:
        counts = [int(v) for v in header]
    except ValueError:
        counts = []
    if len(counts) not in (1, 2) or min(counts) < 1:
        raise ValueError(
            f"{pairs_path}, line {header_number}: expected the header 'folds pairs_per_fold' "
            f"(e.g. '10 300') or a pair count; got {' '.join(header)!r}"
        )
    num_folds, per_fold = (1, counts[0]) if len(counts) == 1 else counts
    # pairs.txt counts pairs per class (same/different) and fold; pairsDevTest.txt the same.
    expected = num_folds * per_fold * 2
    body = lines[1:]
    if len(body) != expected:
        raise ValueError(
            f"{pairs_path}: header {' '.join(header)!r} announces {expected} pairs; got "
            f"{len(body)} pair lines"
        )
    root = os.fspath(images_root)

    def image(name, number, line):
        try:
            n = int(number)
        except ValueError:
            raise ValueError(
                f"{pairs_path}, line {line}: expected an image number; got {number!r}"
            ) from None
        return os.path.join(root, name, f"{name}_{n:04d}.jpg")

    a, b, same, folds = [], [], [], []
    for i, (number, fields) in enumerate(body):
        if len(fields) == 3:
            pair = image(fields[0], fields[1], number), image(fields[0], fields[2], number)
        elif len(fields) == 4:
            pair = image(fields[0], fields[1], number), image(fields[2], fields[3], number)
        else:
            raise ValueError(
                f"{pairs_path}, line {number}: expected 'name n1 n2' or 'name1 n1 name2 n2'; got "
                f"{' '.join(fields)!r}"
            )
        if check_files:
            for path in pair:
                _check_exists(pairs_path, number, path)
        a.append(pair[0])
        b.append(pair[1])
        same.append(len(fields) == 3)
        folds.append(i // (2 * per_fold))
    return VerificationPairs(a, b, same, folds=folds, name=os.path.basename(pairs_path))


class _Refused(pickle.UnpicklingError):
    pass


class _RefusingUnpickler(pickle.Unpickler):
    """Resolves no global: a pickle that names any function or class is refused."""

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
            return _latin1_bytes
        raise _Refused(
            f"refused to load {module}.{name}: an InsightFace .bin file holds only lists, bytes "
            "and booleans, and loading anything else could run code from the file"
        )


def _latin1_bytes(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("refused _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


def read_insightface_bin(bin_path):
    """Reads an InsightFace verification set (lfw.bin, cfp_fp.bin, agedb_30.bin, ...).

    The file is a pickle of `(images, is_same)`: a list of 2·N encoded images (pairs are
    consecutive) and a list of N booleans. It is loaded with an unpickler that refuses every
    function or class (see the module doc), so a malicious file raises a `ValueError` before
    anything runs.

    Args:
        bin_path: the `.bin` file.

    Returns:
        `VerificationPairs` of encoded images (`from_bytes=True`), named after the file's name;
        a failure to decode reports an image as `name[i]`, its position in the file.
    """
    bin_path = os.fspath(bin_path)
    if not os.path.isfile(bin_path):
        raise ValueError(f"bin_path must be an existing file; got {bin_path!r}")
    with open(bin_path, "rb") as f:
        data = f.read()
    try:
        loaded = _RefusingUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as error:
        raise ValueError(f"{bin_path} is not a safe InsightFace .bin file: {error}") from None
    except Exception as error:
        raise ValueError(
            f"{bin_path} is not a readable InsightFace .bin file: {type(error).__name__}: {error}"
        ) from None
    ok = isinstance(loaded, (tuple, list)) and len(loaded) == 2
    images, is_same = loaded if ok else (None, None)
    if not (ok and isinstance(images, (list, tuple)) and isinstance(is_same, (list, tuple))):
        raise ValueError(
            f"{bin_path} must hold a pickled (list of encoded images, list of is_same); got "
            f"{type(loaded).__name__}"
        )
    if len(images) != 2 * len(is_same):
        raise ValueError(
            f"{bin_path} must hold 2 images per is_same entry; got {len(images)} images and "
            f"{len(is_same)} is_same entries"
        )
    for i, item in enumerate(images):
        if not isinstance(item, (bytes, bytearray)):
            raise ValueError(
                f"{bin_path}: image {i} must be encoded bytes; got {type(item).__name__}"
            )
    for i, item in enumerate(is_same):
        if not isinstance(item, (bool, int, np.integer)):
            raise ValueError(f"{bin_path}: is_same {i} must be a boolean; got {item!r}")
    images = [bytes(item) for item in images]
    return VerificationPairs(
        images[0::2],
        images[1::2],
        [bool(s) for s in is_same],
        from_bytes=True,
        name=os.path.basename(bin_path),
    )


def read_pairs(path, root=None, argument="pairs", check_files=True):
    """Verification pairs from any of the three formats, told apart by their content.

    An InsightFace `.bin` (by its extension), an LFW `pairs.txt` (its first line is a pair count
    or `folds pairs_per_fold`; `root` is then the LFW image folder and required), or a
    `path_a path_b label` list (relative to `root`, by default the list's folder).

    Args:
        path: the pair file.
        root: the image folder (see above).
        argument: what the file is called in error messages (a flag, say `--val-pairs`).
        check_files: whether to check that every image file of a list exists.

    Returns:
        `VerificationPairs`.
    """
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(path, str) or not os.path.isfile(path):
        reason = "a folder" if isinstance(path, str) and os.path.isdir(path) else "no such file"
        raise ValueError(f"{argument} must be an existing pair file (.bin, LFW pairs.txt or a "
                         f"'path_a path_b label' list); got {path!r} ({reason})")
    try:
        if path.lower().endswith(".bin"):
            return read_insightface_bin(path)
        first = next(iter(_lines(path)), (0, []))[1]
        if len(first) in (1, 2) and all(token.isdigit() for token in first):
            if root is None:
                raise ValueError("the LFW image folder (--root / --val-root) is needed for an "
                                 "LFW pairs file")
            return read_lfw_pairs(path, root, check_files=check_files)
        return read_pair_list(path, root, check_files=check_files)
    except ValueError as error:
        text = str(error)
        raise ValueError(text if text.startswith(path) else f"{argument} {path!r}: {text}") from None


def pair_dataset(
    pairs,
    batch_size=64,
    image_size=(112, 112),
    resize_mode="resize",
    corrupt_files=None,
    prefetch=True,
):
    """A `tf.data.Dataset` of `(images_a, images_b, is_same)` batches, in the pairs' order.

    `images_a`, `images_b` are float32 `[batch, height, width, 3]` in [0, 255] with the same
    evaluation preprocessing as `classification_dataset(training=False)`; `is_same` is bool
    `[batch]`. An image that does not decode is blank and recorded in `corrupt_files` (a
    `CorruptFileLog`; without one, failures are printed to stderr).

    Args:
        pairs: `VerificationPairs`.
        batch_size: pairs per batch.
        image_size: `(height, width)`.
        resize_mode: `"resize"` or `"center_crop"`.
        corrupt_files: a `CorruptFileLog`, or None (failures are printed to stderr).
        prefetch: whether to end with `prefetch(AUTOTUNE)`.

    Returns:
        A `tf.data.Dataset` of `(images_a, images_b, is_same)`, the last batch partial.

    Example:

    ```python
    pairs = read_lfw_pairs("lfw/pairs.txt", "lfw/lfw-deepfunneled")  # or read_insightface_bin
    for images_a, images_b, is_same in pair_dataset(pairs, batch_size=256):
        similarity = cosine(embedder(images_a), embedder(images_b))
    ```
    """
    if not isinstance(pairs, VerificationPairs):
        raise ValueError(f"pairs must be VerificationPairs; got {type(pairs).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    if pairs.from_bytes:
        a, b = list(pairs.images_a), list(pairs.images_b)
        names_a = [f"{pairs.name}[{2 * i}]" for i in range(len(pairs))]
        names_b = [f"{pairs.name}[{2 * i + 1}]" for i in range(len(pairs))]
    else:
        a, b = pairs.images_a.astype(str), pairs.images_b.astype(str)
        names_a, names_b = a, b
    ds = tf.data.Dataset.from_tensor_slices(
        tuple(tf.constant(x, tf.string) for x in (a, b, names_a, names_b)) + (pairs.is_same,)
    )
    # Images a and b of a batch are decoded together, a first.
    ds = ds.batch(batch_size).map(
        lambda a, b, na, nb, same: (
            tf.concat([a, b], 0),
            tf.concat([na, nb], 0),
            tf.zeros([2 * tf.shape(a)[0]], tf.int64),
            same,
        )
    )
    preprocess = decoding.make_preprocess(
        image_size, resize_mode, None, from_bytes=pairs.from_bytes
    )
    ds = decoding.decode_batches(ds, preprocess, corrupt_files)
    ds = ds.map(lambda images, same: (*tf.split(images, 2), same))
    return ds.prefetch(decoding.AUTOTUNE) if prefetch else ds


def pair_arrays(pairs, image_size=(112, 112), dtype="float32", batch_size=256):
    """The decoded images of `pairs` as NumPy arrays, in the pairs' order.

    For evaluation sets that fit in memory (a `VerificationCallback`, a model export check);
    larger sets stream through `pair_dataset`.

    Args:
        pairs: `VerificationPairs`.
        image_size: `(height, width)`.
        dtype: `"float32"` (pixels in [0, 255] as `pair_dataset` gives them) or `"uint8"`
            (rounded: a quarter of the memory, and what an exported model takes).
        batch_size: images decoded at a time.

    Returns:
        `(images_a, images_b, is_same)`: `[pairs, height, width, 3]` twice and int `[pairs]`.
    """
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"dtype must be 'float32' or 'uint8'; got {dtype!r}")
    images_a, images_b = [], []
    for a, b, _ in pair_dataset(pairs, batch_size=batch_size, image_size=image_size):
        for out, batch in ((images_a, a), (images_b, b)):
            batch = batch.numpy()
            out.append(np.clip(batch.round(), 0, 255).astype(np.uint8) if dtype == "uint8" else batch)
    return np.concatenate(images_a), np.concatenate(images_b), pairs.is_same.astype(int)

