"""`ImageIndex`: the file paths, integer labels and class names of an image data set.

An index holds no pixels: it is three NumPy arrays, so a million images index in seconds and the
samplers work on integer positions. Every method that derives an index returns a new one; none
touches the files except `from_directory` (which lists them) and `verify` (which decodes them).
"""

import csv
import logging
import os

import numpy as np

from keras_facemargin import _checks

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _walk_images(top, extensions, follow_links, seen, repeated, links):
    """The image files under `top`, sorted, walking each real folder once (see from_directory)."""
    real = os.path.realpath(top)
    if real in seen:
        repeated.append(top)
        return []
    seen.add(real)
    found = []
    for folder, subfolders, files in os.walk(top, followlinks=follow_links):
        kept = []
        for sub in sorted(subfolders):
            path = os.path.join(folder, sub)
            if not follow_links:
                if os.path.islink(path):
                    links.append(path)
                    continue
            else:
                target = os.path.realpath(path)
                if target in seen:
                    repeated.append(path)
                    continue
                seen.add(target)
            kept.append(sub)
        subfolders[:] = kept
        found.extend(os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(extensions))
    return found


def _check_landmarks(landmarks, num_images):
    landmarks = np.asarray(landmarks)
    ok = landmarks.shape == (num_images, 5, 2) and np.issubdtype(landmarks.dtype, np.number)
    if not ok:
        raise ValueError(
            f"landmarks must be numbers of shape [num_images={num_images}, 5, 2] (x, y of the "
            f"eyes, nose and mouth corners); got shape {landmarks.shape} and dtype "
            f"{landmarks.dtype}"
        )
    landmarks = landmarks.astype(np.float32)
    if num_images == 0:
        return landmarks
    finite = np.isfinite(landmarks).all(axis=(1, 2))
    spread = np.ptp(landmarks, axis=1).max(axis=1) > 0
    bad = np.flatnonzero(~finite | ~spread)
    if len(bad):
        raise ValueError(
            f"landmarks must be finite and not all at one point; got {len(bad)} such image(s), "
            f"the first at position {bad[0]}: {landmarks[bad[0]].tolist()}"
        )
    return landmarks


class ImageIndex:
    """File paths, integer labels `[0, num_classes)` and the class names they stand for.

    Build one with `from_directory` (one folder per identity) or `from_list` (a `path label`
    text or CSV file); restrict it with `filter_min_images`, join identities filed under
    several names with `merge_classes`, split it with `split_identities`
    (open set: disjoint people) or `split_images` (closed set: stratified images), check the
    files with `verify`. Labels are always contiguous: a method that drops classes relabels the
    rest in their previous order.

    An index may also read its images from a RecordIO file (`from_recordio`: then `paths` are
    the records' names, `path.rec[key]`, and `offsets` their byte offsets) and may carry five
    face landmarks per image (`with_landmarks`), which the pipelines use to align each face as
    they decode it (`align_face`).

    Args:
        paths: sequence of file paths (or encoded images' names); `[num_images]`.
        labels: integer labels in `[0, len(class_names))`; `[num_images]`.
        class_names: one name per label.
        landmarks: optional `[num_images, 5, 2]` (x, y) pixel positions of the eyes, the nose
            and the mouth corners, as `align_face` takes them.
        record_file: the `.rec` file the images are read from, or None for image files.
        offsets: with `record_file`, each image record's byte offset; `[num_images]`.

    Example:

    ```python
    index = ImageIndex.from_directory("casia-webface").filter_min_images(4)
    train, test = index.split_identities(test_fraction=0.1, seed=0)
    ```
    """

    def __init__(self, paths, labels, class_names, landmarks=None, record_file=None, offsets=None):
        self.paths = np.asarray(paths, dtype=object)
        self.labels = np.asarray(labels)
        self.class_names = tuple(str(name) for name in class_names)
        if self.paths.ndim != 1 or self.labels.shape != self.paths.shape:
            raise ValueError(
                "paths and labels must be 1-D and of the same length; got "
                f"{self.paths.shape} paths and {self.labels.shape} labels"
            )
        if self.labels.size and not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"labels must be integers; got dtype {self.labels.dtype}")
        self.labels = self.labels.astype(np.int64)
        if self.labels.size and (
            self.labels.min() < 0 or self.labels.max() >= len(self.class_names)
        ):
            raise ValueError(
                f"labels must be in [0, len(class_names)={len(self.class_names)}); got min label "
                f"{self.labels.min()}, max label {self.labels.max()}"
            )
        self.landmarks = None if landmarks is None else _check_landmarks(landmarks, len(self))
        if (record_file is None) != (offsets is None):
            raise ValueError(
                "record_file and offsets must be given together; got "
                f"record_file={record_file!r} and offsets={'None' if offsets is None else '...'}"
            )
        self.record_file = None if record_file is None else os.fspath(record_file)
        self.offsets = None
        if offsets is not None:
            self.offsets = np.asarray(offsets)
            if self.offsets.shape != self.paths.shape or (
                self.offsets.size and not np.issubdtype(self.offsets.dtype, np.integer)
            ):
                raise ValueError(
                    f"offsets must be integers, one per image ({len(self)}); got shape "
                    f"{self.offsets.shape} and dtype {self.offsets.dtype}"
                )
            self.offsets = self.offsets.astype(np.int64)

    def _derived(self, positions, labels, class_names):
        """A new index of the images at `positions`, with their landmarks and offsets."""
        return ImageIndex(
            self.paths[positions],
            labels,
            class_names,
            landmarks=None if self.landmarks is None else self.landmarks[positions],
            record_file=self.record_file,
            offsets=None if self.offsets is None else self.offsets[positions],
        )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_directory(cls, root, extensions=IMAGE_EXTENSIONS, follow_links=False):
        """An index of `root/<class name>/**/<image>`: one sub-folder per identity.

        Class names are the sub-folder names in sorted order, so the labels do not depend on the
        file system's listing order. Files are matched on `extensions`, case-insensitively;
        nested folders inside a class folder belong to that class; other files are ignored.
        Class folders without any image are left out (with a log message).

        Symbolic links to folders are followed only with `follow_links`; without it each one is
        named in a warning. With it, a folder reached a second time (a link loop, or two links
        to one folder) is walked once, and the others are named in a warning, so no image is
        indexed twice or under two identities.

        Args:
            root: the data set folder.
            extensions: the file name endings that count as images.
            follow_links: whether to follow symbolic links to folders.

        Returns:
            An `ImageIndex` of the image files, class by class in sorted order.
        """
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"root must be an existing folder; got {root!r}")
        extensions = tuple(e.lower() for e in extensions)
        entries = sorted((entry for entry in os.scandir(root) if not entry.name.startswith(".")),
                         key=lambda entry: entry.name)
        folders = [entry.name for entry in entries if entry.is_dir(follow_symlinks=follow_links)]
        links = [entry.path for entry in entries if not follow_links and entry.is_symlink()
                 and entry.is_dir(follow_symlinks=True)]
        loose = sum(1 for entry in entries if entry.is_file() and entry.name.lower().endswith(extensions))
        seen = {os.path.realpath(root)}
        repeated = []
        paths, labels, names, empty = [], [], [], []
        for name in folders:
            found = _walk_images(os.path.join(root, name), extensions, follow_links, seen, repeated,
                                 links)
            if not found:
                empty.append(name)
                continue
            paths.extend(found)
            labels.extend([len(names)] * len(found))
            names.append(name)
        if links:
            logger.warning("%d symbolic links to folders under %s are not followed (pass "
                           "follow_links=True to include them): %s", len(links), root,
                           ", ".join(links[:10]))
        if repeated:
            logger.warning("%d folders under %s are reached a second time through symbolic links "
                           "(a loop, or two links to one folder) and are indexed once: %s",
                           len(repeated), root, ", ".join(repeated[:10]))
        if empty:
            logger.info("%d class folders in %s hold no image and are left out", len(empty), root)
        if not paths:
            hint = (f"; it holds {loose} images directly: put each identity's images in a "
                    "sub-folder of its own") if loose else ""
            raise ValueError(
                f"root must hold one sub-folder per identity with images ({', '.join(extensions)}); "
                f"got {len(folders)} sub-folders and no image in them in {root!r}{hint}"
            )
        return cls(paths, np.asarray(labels, dtype=np.int64), names)

    @classmethod
    def from_list(cls, list_path, root=None, delimiter=None):
        """An index from a text or CSV file with one `path label` line per image.

        A label is a class name or an integer. Integer labels that are exactly `0..C-1` are kept;
        any other labels are sorted (numerically when all are integers) and numbered in that
        order. Blank lines and lines starting with `#` are skipped; in a CSV file a first line
        whose label column is `label` is a header.

        Args:
            list_path: the list file.
            root: folder that relative paths are relative to; defaults to the list's folder.
            delimiter: the column separator; by default `,` for `.csv` files, else whitespace.

        Returns:
            An `ImageIndex` of the listed files, in list order (the files are not checked: see
            `verify`).
        """
        list_path = os.fspath(list_path)
        if not os.path.isfile(list_path):
            raise ValueError(f"list_path must be an existing file; got {list_path!r}")
        root = os.path.dirname(os.path.abspath(list_path)) if root is None else os.fspath(root)
        if delimiter is None and list_path.lower().endswith(".csv"):
            delimiter = ","
        paths, raw_labels = [], []
        with open(list_path, newline="", encoding="utf-8") as f:
            if delimiter is None:
                rows = ((n, line.split()) for n, line in enumerate(f, 1))
            else:
                rows = enumerate(csv.reader(f, delimiter=delimiter), 1)
            for number, row in rows:
                row = [c.strip() for c in row]
                if not row or not any(row) or row[0].startswith("#"):
                    continue
                if number == 1 and len(row) == 2 and row[1].lower() == "label":
                    continue
                if len(row) != 2 or not row[0] or not row[1]:
                    raise ValueError(
                        f"{list_path}, line {number}: expected 'path label' (2 columns); got "
                        f"{row!r}"
                    )
                path = row[0] if os.path.isabs(row[0]) else os.path.join(root, row[0])
                paths.append(path)
                raw_labels.append(row[1])
        if not paths:
            raise ValueError(
                f"list_path must list at least one 'path label' line; {list_path!r} has none"
            )
        try:
            as_int = [int(label) for label in raw_labels]
        except ValueError:
            as_int = None
        if as_int is not None:
            values = np.asarray(as_int, dtype=np.int64)
            unique = np.unique(values)
            if unique[0] == 0 and unique[-1] == len(unique) - 1:
                return cls(paths, values, [str(u) for u in unique])
            return cls(paths, np.searchsorted(unique, values), [str(u) for u in unique])
        names, labels = np.unique(np.asarray(raw_labels, dtype=object), return_inverse=True)
        return cls(paths, labels, names)

    @classmethod
    def from_recordio(cls, rec_path, label_source="auto"):
        """An index of an MXNet RecordIO training set (InsightFace's `train.rec` + `train.idx`).

        The `.idx` beside the `.rec` gives every record's byte offset, so the pipelines read any
        image directly (and decode it inside `tf.data`). In InsightFace's layout (record 0's
        header flag > 0) the identity records give each identity's image range and the labels
        are the identities' numbers, `0..C-1`, as InsightFace trains with them; when record 0
        has flag 0, every record is an image and its header's label (the first one when it has
        several) is its class, numbered as in `from_list`. `paths` are the records' names,
        `path.rec[key]`. Reading is by byte offset, without MXNet (format notes:
        `keras_facemargin.data.recordio`).

        Args:
            rec_path: the `.rec` file; its `.idx` must be beside it.
            label_source: `"identities"` (InsightFace's identity records), `"headers"` (each
                image record's own label), or `"auto"`: identities, unless the set has more
                than 2^24 records, which float32 record ranges cannot address exactly.

        Returns:
            An `ImageIndex` whose `record_file` is `rec_path` and `offsets` the records' byte
            offsets.

        Example:

        ```python
        index = ImageIndex.from_recordio("faces_emore/train.rec")  # MS1MV2: 85,742 identities
        model.fit(classification_dataset(index, 512), epochs=20)
        ```
        """
        from keras_facemargin.data import recordio

        names, labels, class_names, offsets, _ = recordio.index_arrays(rec_path, label_source)
        return cls(names, labels, class_names, record_file=rec_path, offsets=offsets)

    def with_landmarks(self, landmarks):
        """The same index carrying five face landmarks per image; the pipelines then align every
        face to ArcFace's template as they decode it.

        Args:
            landmarks: `[num_images, 5, 2]` finite (x, y) pixels: left eye, right eye, nose tip,
                left and right mouth corner as they appear in the image (InsightFace's order),
                not all at one point.

        Returns:
            A new `ImageIndex`, the same images and labels with these landmarks.
        """
        return ImageIndex(
            self.paths,
            self.labels,
            self.class_names,
            landmarks=landmarks,
            record_file=self.record_file,
            offsets=self.offsets,
        )

    # -- queries ------------------------------------------------------------------------------

    def __len__(self):
        return len(self.paths)

    @property
    def num_classes(self):
        return len(self.class_names)

    def class_counts(self):
        """Images per class.

        Returns:
            int64 counts `[num_classes]`, indexed by label.
        """
        return np.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self):
        return f"ImageIndex({len(self)} images, {self.num_classes} classes)"

    # -- derived indices ----------------------------------------------------------------------

    def subset(self, positions, relabel=True):
        """The images at `positions`, as a new index.

        Args:
            positions: int positions into this index, or a boolean mask `[num_images]`.
            relabel: drop the classes left without images and number the rest `0..C'-1`, in
                their previous order; False keeps every class and label.

        Returns:
            A new `ImageIndex` (with the images' landmarks and record offsets, if any).
        """
        positions = np.asarray(positions)
        labels = self.labels[positions]
        if not relabel:
            return self._derived(positions, labels, self.class_names)
        kept = np.unique(labels)
        return self._derived(
            positions, np.searchsorted(kept, labels), [self.class_names[k] for k in kept]
        )

    def filter_min_images(self, min_images):
        """Only the classes with at least `min_images` images, relabelled `0..C'-1`.

        Args:
            min_images: the fewest images a class must have to stay, >= 1.

        Returns:
            A new `ImageIndex`; one with no class left is a `ValueError`.
        """
        min_images = _checks.check_int("min_images", min_images, 1)
        keep = self.class_counts() >= min_images
        if not keep.any():
            raise ValueError(
                f"min_images={min_images} leaves no class: the largest class of {self} has "
                f"{self.class_counts().max() if len(self) else 0} images"
            )
        dropped = int((~keep).sum())
        if dropped:
            logger.info(
                "filter_min_images(%d) drops %d of %d classes",
                min_images,
                dropped,
                self.num_classes,
            )
        return self.subset(keep[self.labels])

    def merge_classes(self, groups):
        """The index with each group of classes trained as one class.

        A dataset gathered from several sources often holds one person (or one drawing) under
        two names; a margin loss then pushes apart images that cannot be told apart.
        `evaluation.near_duplicate_identities` finds such groups with a trained model.

        Args:
            groups: sequences of class names; each group, of at least two distinct names of
                this index and sharing none with another group, becomes one class, named and
                placed as its member that comes first in `class_names`.

        Returns:
            A new `ImageIndex` of the same images with `num_classes - sum(len(g) - 1)` classes,
            in their previous order.
        """
        position = {name: label for label, name in enumerate(self.class_names)}
        target = np.arange(self.num_classes)
        seen = set()
        for number, group in enumerate(groups):
            group = list(group)
            if len(set(group)) < 2:
                raise ValueError(f"group {number + 1} must name at least 2 distinct classes; got {group!r}")
            for name in group:
                if name not in position:
                    raise ValueError(f"group {number + 1} names {name!r}, which is not a class of {self}")
                if name in seen:
                    raise ValueError(f"group {number + 1} names {name!r}, which an earlier group also "
                                     "names; expected disjoint groups")
            seen.update(group)
            target[[position[name] for name in group]] = min(position[name] for name in group)
        kept = np.unique(target)
        return self._derived(np.arange(len(self)), np.searchsorted(kept, target[self.labels]),
                             [self.class_names[k] for k in kept])

    def split_identities(self, test_fraction=None, num_test_classes=None, seed=0):
        """Open-set split: `(train, test)` indices over disjoint sets of classes (people).

        Verification is measured on people the model never saw; this split gives them. Exactly
        one of `test_fraction` or `num_test_classes` must be given.

        Args:
            test_fraction: fraction of the classes for the test part, in (0, 1); rounded, and at
                least 1 class in each part.
            num_test_classes: the number of test classes instead, in [1, num_classes).
            seed: seed of which classes are drawn for the test part.

        Returns:
            `(train, test)`, two `ImageIndex`es, each relabelled `0..C-1` in the previous order.
        """
        if (test_fraction is None) == (num_test_classes is None):
            raise ValueError(
                "split_identities needs exactly one of test_fraction or num_test_classes; got "
                f"test_fraction={test_fraction!r}, num_test_classes={num_test_classes!r}"
            )
        if self.num_classes < 2:
            raise ValueError(
                f"split_identities needs an index with >= 2 classes; got {self.num_classes}"
            )
        if num_test_classes is None:
            fraction = _checks.check_fraction("test_fraction", test_fraction)
            num_test = min(max(1, round(fraction * self.num_classes)), self.num_classes - 1)
        else:
            num_test = _checks.check_int("num_test_classes", num_test_classes, 1)
            if num_test >= self.num_classes:
                raise ValueError(
                    f"num_test_classes must be in [1, num_classes={self.num_classes}); got "
                    f"{num_test}"
                )
        rng = np.random.default_rng(seed)
        is_test = np.zeros(self.num_classes, dtype=bool)
        is_test[rng.permutation(self.num_classes)[:num_test]] = True
        in_test = is_test[self.labels]
        return self.subset(~in_test), self.subset(in_test)

    def split_images(self, test_fraction, seed=0):
        """Closed-set split: `(train, test)` with the same classes and labels, stratified.

        Each class puts `round(test_fraction × n)` of its n images in the test part, but always
        keeps at least one in the training part (so a 1-image class stays all in training).

        Args:
            test_fraction: fraction of each class's images for the test part, in (0, 1).
            seed: seed of which images are drawn.

        Returns:
            `(train, test)`, two `ImageIndex`es with this index's classes and labels (a class
            may have no test image).
        """
        fraction = _checks.check_fraction("test_fraction", test_fraction)
        rng = np.random.default_rng(seed)
        counts = self.class_counts()
        # Shuffle, then stably sort by class: a random order within each class, in one pass.
        order = rng.permutation(len(self))
        order = order[np.argsort(self.labels[order], kind="stable")]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(self)) - starts[self.labels[order]]
        num_test = np.minimum(np.round(fraction * counts), np.maximum(counts - 1, 0))
        in_test = np.zeros(len(self), dtype=bool)
        in_test[order] = rank < num_test[self.labels[order]]
        train = np.flatnonzero(~in_test)
        test = np.flatnonzero(in_test)
        return self.subset(train, relabel=False), self.subset(test, relabel=False)

    def sample_pairs(self, num_pairs, seed=0):
        """Balanced verification pairs over this index: half genuine, half impostor, shuffled.

        Genuine pairs are two different images of one class, drawn without replacement from all
        such pairs (so with n images in a class, at most n·(n − 1)/2 of them); when the index has
        fewer genuine pairs than `num_pairs // 2`, it takes them all and as many impostors, so the
        result stays balanced. An impostor pair is an image and an image of another class, both
        uniform; impostor pairs repeat only when the index has few of them. The pairs are a
        function of `seed` and the index only.

        Args:
            num_pairs: the number of pairs wanted, >= 2.
            seed: seed of the draw.

        Returns:
            `(positions_a, positions_b, is_same)`: int64 positions into this index and booleans,
            each `[pairs]`. Score them with `evaluation.indexed_pair_scores` on the embeddings
            of the index's images, or take `index.paths[positions_a]` for a pair list.

        Example:

        ```python
        train, unseen = index.split_identities(test_fraction=0.3, seed=0)
        a, b, is_same = unseen.sample_pairs(6000, seed=0)
        pairs = VerificationPairs(unseen.paths[a], unseen.paths[b], is_same)
        ```
        """
        num_pairs = _checks.check_int("num_pairs", num_pairs, 2)
        counts = self.class_counts()
        within = counts * (counts - 1) // 2
        if self.num_classes < 2 or within.sum() == 0:
            raise ValueError(
                f"sample_pairs needs >= 2 classes and a class with >= 2 images; got {self} with "
                f"at most {counts.max() if len(self) else 0} images per class"
            )
        rng = np.random.default_rng(seed)
        num_genuine = int(min(num_pairs // 2, within.sum()))
        order = np.argsort(self.labels, kind="stable")  # positions grouped by class
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

        # Genuine: rank r among all within-class pairs -> class c, then the pair (i < j) of c.
        ends = np.cumsum(within)
        rank = rng.choice(int(ends[-1]), size=num_genuine, replace=False)
        c = np.searchsorted(ends, rank, side="right")
        t = rank - (ends[c] - within[c])
        j = np.floor((1 + np.sqrt(1 + 8 * t.astype(np.float64))) / 2).astype(np.int64)
        j -= j * (j - 1) // 2 > t  # guard the float square root at exact triangle numbers
        j += (j + 1) * j // 2 <= t
        i = t - j * (j - 1) // 2
        genuine = order[starts[c] + i], order[starts[c] + j]

        # Impostor: a uniform image, then a uniform image among those of the other classes.
        draws = 2 * num_genuine
        a_sorted = rng.integers(0, len(self), draws)
        class_a = self.labels[order][a_sorted]
        other = rng.integers(0, len(self) - counts[class_a])
        b_sorted = np.where(other < starts[class_a], other, other + counts[class_a])
        keys = np.minimum(a_sorted, b_sorted) * len(self) + np.maximum(a_sorted, b_sorted)
        _, first = np.unique(keys, return_index=True)
        keep = np.sort(first)[:num_genuine]
        if len(keep) < num_genuine:  # few distinct impostors: repeat some
            keep = np.concatenate([keep, np.setdiff1d(np.arange(draws), keep)[: num_genuine - len(keep)]])
        impostor = order[a_sorted[keep]], order[b_sorted[keep]]

        positions_a = np.concatenate([genuine[0], impostor[0]]).astype(np.int64)
        positions_b = np.concatenate([genuine[1], impostor[1]]).astype(np.int64)
        is_same = np.arange(2 * num_genuine) < num_genuine
        shuffle = rng.permutation(2 * num_genuine)
        return positions_a[shuffle], positions_b[shuffle], is_same[shuffle]

    def remove_paths(self, paths):
        """The index without the given paths, for example the corrupt files `verify` found.

        Args:
            paths: the paths to drop, as they appear in `self.paths`; others are ignored.

        Returns:
            A new `ImageIndex`; classes left empty are dropped and the rest relabelled. Removing
            every image is a `ValueError`.
        """
        drop = np.isin(self.paths, np.asarray(list(paths), dtype=object))
        if drop.all():
            raise ValueError(f"remove_paths would remove every image of {self}")
        return self.subset(~drop)

    def verify(self, num_parallel_calls=None):
        """Decodes every image and returns the unreadable ones, each also logged as a warning.

        The decoding runs in a `tf.data` pipeline (in parallel) with the same decoder as the
        training pipelines; only the failures are decoded again, eagerly, to get the reason. A
        RecordIO index has its records read and decoded the same way.

        Args:
            num_parallel_calls: how many batches are decoded at once; None: `tf.data.AUTOTUNE`.

        Returns:
            A list of `CorruptFile(path, reason)` (for a RecordIO index, the record's name with
            its key and byte offset in the reason); empty if every image decodes.
        """
        from keras_facemargin.data import decoding

        if self.record_file is not None:
            return decoding.find_corrupt_records(self, num_parallel_calls=num_parallel_calls)
        return decoding.find_corrupt_files(self.paths, num_parallel_calls=num_parallel_calls)
