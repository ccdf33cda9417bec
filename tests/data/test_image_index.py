import os

import numpy as np
import pytest
from data_helpers import FACES, NAMES, copy_faces, corrupt, first_image

from keras_facemargin.data import ImageIndex


def touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def test_from_directory_on_real_faces():
    index = ImageIndex.from_directory(FACES)
    assert index.class_names == NAMES
    assert len(index) == 55 and index.num_classes == 5
    np.testing.assert_array_equal(index.class_counts(), [11] * 5)
    for path, label in zip(index.paths, index.labels):
        assert os.path.basename(os.path.dirname(path)) == NAMES[label]
    assert list(index.paths) == sorted(index.paths)


def test_from_directory_extensions_nesting_and_order(tmp_path):
    for rel in [
        "b/1.JPG",
        "b/2.jpeg",
        "b/sub/3.Png",
        "b/4.bmp",
        "b/5.GIF",
        "a/x.png",
        "b/notes.txt",
        "b/6.webp",
        "empty/readme.md",
        ".hidden/7.png",
    ]:
        touch(str(tmp_path / rel))
    index = ImageIndex.from_directory(tmp_path)
    assert index.class_names == ("a", "b")
    names = [os.path.relpath(p, tmp_path) for p in index.paths]
    assert names == ["a/x.png", "b/1.JPG", "b/2.jpeg", "b/4.bmp", "b/5.GIF", "b/sub/3.Png"]
    np.testing.assert_array_equal(index.labels, [0, 1, 1, 1, 1, 1])


def test_from_directory_bad_roots(tmp_path):
    with pytest.raises(ValueError, match="root must be an existing folder; got .*missing"):
        ImageIndex.from_directory(tmp_path / "missing")
    with pytest.raises(ValueError, match="got 0 sub-folders and no image"):
        ImageIndex.from_directory(tmp_path)
    touch(str(tmp_path / "a" / "notes.txt"))
    with pytest.raises(ValueError, match="got 1 sub-folders and no image"):
        ImageIndex.from_directory(tmp_path)


def test_from_list_text_and_csv(tmp_path):
    (tmp_path / "list.txt").write_text(
        "# comment\nimgs/a1.jpg bob\n\nimgs/a2.jpg bob\n/abs/c.jpg alice\n"
    )
    index = ImageIndex.from_list(tmp_path / "list.txt")
    assert index.class_names == ("alice", "bob")
    np.testing.assert_array_equal(index.labels, [1, 1, 0])
    assert index.paths[0] == os.path.join(str(tmp_path), "imgs/a1.jpg")
    assert index.paths[2] == "/abs/c.jpg"

    (tmp_path / "list.csv").write_text("path,label\nx.jpg,7\ny.jpg,3\nz.jpg,7\n")
    index = ImageIndex.from_list(tmp_path / "list.csv", root="/data")
    assert index.class_names == ("3", "7")
    np.testing.assert_array_equal(index.labels, [1, 0, 1])
    assert index.paths[0] == "/data/x.jpg"

    (tmp_path / "ids.txt").write_text("x.jpg 1\ny.jpg 0\nz.jpg 2\n")
    np.testing.assert_array_equal(ImageIndex.from_list(tmp_path / "ids.txt").labels, [1, 0, 2])


def test_from_list_errors_name_the_line(tmp_path):
    (tmp_path / "bad.txt").write_text("a.jpg 0\nb.jpg\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: expected 'path label'.*\['b.jpg'\]"):
        ImageIndex.from_list(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="at least one 'path label' line"):
        ImageIndex.from_list(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="list_path must be an existing file"):
        ImageIndex.from_list(tmp_path / "nope.txt")


def test_constructor_checks():
    with pytest.raises(
        ValueError, match=r"labels must be in \[0, len\(class_names\)=2\); got .*max label 2"
    ):
        ImageIndex(["a", "b"], [0, 2], ["x", "y"])
    with pytest.raises(ValueError, match="same length"):
        ImageIndex(["a", "b"], [0], ["x"])


def synthetic(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    return ImageIndex(
        [f"c{c}/{i}.jpg" for i, c in enumerate(labels)],
        labels,
        [f"c{c}" for c in range(len(counts))],
    )


def test_filter_min_images_relabels():
    index = synthetic([3, 1, 5, 2])
    kept = index.filter_min_images(3)
    assert kept.class_names == ("c0", "c2")
    np.testing.assert_array_equal(kept.class_counts(), [3, 5])
    assert all(p.startswith(kept.class_names[y]) for p, y in zip(kept.paths, kept.labels))
    with pytest.raises(ValueError, match="min_images must be an integer >= 1; got 0"):
        index.filter_min_images(0)
    with pytest.raises(
        ValueError, match="min_images=6 leaves no class: the largest class .* has 5"
    ):
        index.filter_min_images(6)


def test_merge_classes_relabels_each_group_as_its_first_class():
    index = synthetic([3, 1, 5, 2, 4])
    merged = index.merge_classes([["c3", "c1"], ["c4", "c0"]])
    assert merged.class_names == ("c0", "c1", "c2")
    # every image keeps its path; c3's images are now c1's, c4's now c0's
    old_to_new = {"c0": "c0", "c1": "c1", "c2": "c2", "c3": "c1", "c4": "c0"}
    for path, label in zip(merged.paths, merged.labels):
        assert merged.class_names[label] == old_to_new[path.split("/")[0]]
    np.testing.assert_array_equal(merged.paths, index.paths)
    np.testing.assert_array_equal(merged.class_counts(), [3 + 4, 1 + 2, 5])
    assert index.merge_classes([]).class_names == index.class_names


@pytest.mark.parametrize("groups, message", [
    ([["c0"]], "group 1 must name at least 2 distinct classes; got ['c0']"),
    ([["c0", "c0"]], "group 1 must name at least 2 distinct classes; got ['c0', 'c0']"),
    ([["c0", "c1"], ["c2", "c9"]], "group 2 names 'c9', which is not a class of ImageIndex(10 images, 4 classes)"),
    ([["c0", "c1"], ["c2", "c0"]], "group 2 names 'c0', which an earlier group also names; expected disjoint"),
])
def test_merge_classes_errors(groups, message):
    with pytest.raises(ValueError) as error:
        synthetic([3, 1, 5, 1]).merge_classes(groups)
    assert str(error.value).startswith(message)


def test_split_identities_is_open_set_and_deterministic():
    index = synthetic([4] * 20)
    train, test = index.split_identities(test_fraction=0.25, seed=3)
    assert len(test.class_names) == 5 and len(train.class_names) == 15
    assert not set(train.class_names) & set(test.class_names)
    assert sorted(train.paths.tolist() + test.paths.tolist()) == sorted(index.paths.tolist())
    np.testing.assert_array_equal(test.class_counts(), [4] * 5)
    again = index.split_identities(test_fraction=0.25, seed=3)[1]
    assert again.class_names == test.class_names
    assert index.split_identities(num_test_classes=5, seed=4)[1].class_names != test.class_names
    with pytest.raises(ValueError, match="needs an index with >= 2 classes; got 1"):
        synthetic([4]).split_identities(test_fraction=0.5)
    with pytest.raises(
        ValueError, match=r"num_test_classes must be in \[1, num_classes=20\); got 20"
    ):
        index.split_identities(num_test_classes=20)
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\); got 1.5"):
        index.split_identities(test_fraction=1.5)
    with pytest.raises(ValueError, match="exactly one of"):
        index.split_identities()


def test_split_images_is_stratified():
    index = synthetic([10, 5, 1, 2])
    train, test = index.split_images(test_fraction=0.2, seed=0)
    assert train.class_names == test.class_names == index.class_names
    np.testing.assert_array_equal(test.class_counts(), [2, 1, 0, 0])
    np.testing.assert_array_equal(train.class_counts(), [8, 4, 1, 2])
    assert not set(train.paths) & set(test.paths)
    for part in (train, test):
        assert all(p.startswith(part.class_names[y] + "/") for p, y in zip(part.paths, part.labels))
    same = index.split_images(test_fraction=0.2, seed=0)[1]
    assert same.paths.tolist() == test.paths.tolist()


def test_sample_pairs_is_balanced_distinct_and_deterministic():
    index = synthetic([6] * 30 + [1, 2])  # 451 genuine pairs
    a, b, same = index.sample_pairs(400, seed=5)
    assert len(a) == 400 and same.sum() == 200
    np.testing.assert_array_equal(index.labels[a] == index.labels[b], same)
    assert (a != b).all()
    genuine = {tuple(sorted(p)) for p in zip(a[same], b[same])}
    assert len(genuine) == 200  # drawn without replacement
    assert 0.3 < same[:200].mean() < 0.7  # shuffled, not genuine first
    again = index.sample_pairs(400, seed=5)
    for x, y in zip((a, b, same), again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(index.sample_pairs(400, seed=6)[0], a)


def test_sample_pairs_takes_every_genuine_pair_when_there_are_few():
    index = synthetic([3, 3, 1])  # 3 + 3 genuine pairs
    a, b, same = index.sample_pairs(100, seed=0)
    assert len(a) == 12 and same.sum() == 6
    assert {tuple(sorted(p)) for p in zip(a[same], b[same])} == {
        (0, 1), (0, 2), (1, 2), (3, 4), (3, 5), (4, 5)}
    np.testing.assert_array_equal(index.labels[a] == index.labels[b], same)


def test_sample_pairs_errors():
    with pytest.raises(ValueError, match="needs >= 2 classes and a class with >= 2 images"):
        synthetic([1, 1, 1]).sample_pairs(10)
    with pytest.raises(ValueError, match="needs >= 2 classes"):
        synthetic([5]).sample_pairs(10)
    with pytest.raises(ValueError, match="num_pairs must be an integer >= 2; got 1"):
        synthetic([2, 2]).sample_pairs(1)


def test_verify_reports_corrupt_files(tmp_path, caplog):
    root = copy_faces(str(tmp_path))
    bad = first_image(root, "John_Simm")
    truncated = first_image(root, "John_Savage")
    corrupt(bad, "garbage")
    corrupt(truncated, "truncated")
    index = ImageIndex.from_directory(root)
    with caplog.at_level("WARNING"):
        found = index.verify()
    assert sorted(f.path for f in found) == sorted([bad, truncated])
    for item in found:
        assert item.reason.startswith("InvalidArgumentError")
        assert item.path in caplog.text
    clean = index.remove_paths([f.path for f in found])
    assert len(clean) == 53 and clean.num_classes == 5


def test_symlink_loops_and_links_are_reported_not_duplicated(tmp_path, caplog):
    import logging

    root = tmp_path / "data"
    for person in ("alice", "bob"):
        (root / person).mkdir(parents=True)
    (root / "alice" / "a.jpg").write_bytes(b"x")
    (root / "bob" / "b.jpg").write_bytes(b"x")
    (root / "alice" / "loop").symlink_to(root / "alice")     # a loop
    (root / "bob" / "to_alice").symlink_to(root / "alice")   # alice's images under bob
    (root / "carol").symlink_to(root / "bob", target_is_directory=True)  # an identity folder by link
    with caplog.at_level(logging.WARNING):
        followed = ImageIndex.from_directory(root, follow_links=True)
    assert sorted(os.path.relpath(p, root) for p in followed.paths) == ["alice/a.jpg", "bob/b.jpg"]
    assert followed.class_names == ("alice", "bob")
    assert "reached a second time through symbolic links" in caplog.text
    assert str(root / "alice" / "loop") in caplog.text and str(root / "carol") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plain = ImageIndex.from_directory(root)
    assert sorted(os.path.relpath(p, root) for p in plain.paths) == ["alice/a.jpg", "bob/b.jpg"]
    assert "symbolic links to folders" in caplog.text and "are not followed" in caplog.text
    assert str(root / "carol") in caplog.text and str(root / "bob" / "to_alice") in caplog.text


def test_a_flat_folder_says_it_needs_identity_folders(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="it holds 2 images directly: put each identity's images in a "
                                         "sub-folder of its own"):
        ImageIndex.from_directory(tmp_path)
