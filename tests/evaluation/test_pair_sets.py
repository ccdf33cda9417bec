import csv
import json
import os
import pickle
import shutil

import keras
import numpy as np
import pytest
from data_helpers import FACES, NAMES

import keras_facemargin as kf
from keras_facemargin import data
from keras_facemargin import evaluation as ev

SIZE = (24, 24)


# ---- InsightFace's 10-fold protocol -----------------------------------------------------------


def insightface_reference(embeddings_a, embeddings_b, same, folds=10):
    """InsightFace's verification.py calculate_roc, re-derived with loops in float64."""
    dist = np.sum((embeddings_a - embeddings_b) ** 2, axis=1)
    n = len(same)
    sizes = [n // folds + (1 if f < n % folds else 0) for f in range(folds)]
    bounds = np.cumsum([0] + sizes)
    thresholds = np.arange(0, 4, 0.01)
    accuracies = []
    for f in range(folds):
        test = list(range(bounds[f], bounds[f + 1]))
        train = [i for i in range(n) if not bounds[f] <= i < bounds[f + 1]]

        def accuracy(t, rows):
            return sum((dist[i] < t) == bool(same[i]) for i in rows) / len(rows)

        best_index, best = 0, -1.0
        for k, t in enumerate(thresholds):
            a = accuracy(t, train)
            if a > best:  # the first maximum, as np.argmax
                best_index, best = k, a
        accuracies.append(accuracy(thresholds[best_index], test))
    return np.mean(accuracies), np.std(accuracies), accuracies


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("pairs", [600, 307])
def test_insightface_kfold_matches_the_loop_reference(rng, pairs):
    same = rng.integers(0, 2, pairs)
    a = unit(rng.normal(size=(pairs, 16)))
    b = unit(a + rng.normal(size=(pairs, 16)) * np.where(same, 0.6, 3.0)[:, None])
    mean, std, per_fold = ev.kfold_accuracy_insightface(same, np.sum(a * b, axis=1))
    ref_mean, ref_std, ref_folds = insightface_reference(a, b, same)
    np.testing.assert_allclose(per_fold, ref_folds, atol=1e-12)
    assert mean == pytest.approx(ref_mean, abs=1e-12) and std == pytest.approx(ref_std, abs=1e-12)
    assert 0.6 < mean < 1.0
    with pytest.raises(ValueError, match="folds must be between 2 and the number of pairs"):
        ev.kfold_accuracy_insightface(same, np.sum(a * b, axis=1), folds=1)


# ---- reading several sets ---------------------------------------------------------------------


def face_paths():
    index = data.ImageIndex.from_directory(FACES)
    return {name: list(index.paths[index.labels == c]) for c, name in enumerate(NAMES)}


@pytest.fixture
def three_sets(tmp_path):
    """A pair list, an LFW pairs.txt and an InsightFace .bin over the real faces."""
    paths = face_paths()
    lines = []
    for c, name in enumerate(NAMES):
        own, other = paths[name], paths[NAMES[(c + 1) % 5]]
        lines += [f"{own[0]} {own[1]} 1", f"{own[0]} {other[0]} 0", f"{own[2]} {own[1]} 1",
                  f"{own[3]} {other[4]} 0"]
    (tmp_path / "faces_pairs.txt").write_text("\n".join(lines) + "\n")
    lfw = tmp_path / "lfw"
    for name in NAMES:
        os.makedirs(lfw / name)
        for i, p in enumerate(paths[name][:4], 1):
            shutil.copy(p, lfw / name / f"{name}_{i:04d}.jpg")
    lfw_lines = ["2 3"]
    for fold in range(2):
        for k in range(3):
            name = NAMES[(fold + k) % 5]
            lfw_lines.append(f"{name}\t1\t{2 + k % 3}")
        for k in range(3):
            lfw_lines.append(f"{NAMES[k]}\t{1 + fold}\t{NAMES[k + 1]}\t{2 + fold}")
    (tmp_path / "pairs.txt").write_text("\n".join(lfw_lines) + "\n")
    encoded, same = [], []
    for c, name in enumerate(NAMES):
        own, other = paths[name], paths[NAMES[(c + 2) % 5]]
        for x, y, s in ((own[5], own[6], True), (own[5], other[7], False)):
            encoded += [open(x, "rb").read(), open(y, "rb").read()]
            same.append(s)
    with open(tmp_path / "agedb_30.bin", "wb") as f:
        pickle.dump((encoded, same), f, protocol=2)
    return tmp_path


def test_read_pairs_tells_the_formats_apart(three_sets):
    assert data.read_pairs(three_sets / "agedb_30.bin").from_bytes
    assert data.read_pairs(three_sets / "pairs.txt", three_sets / "lfw").folds is not None
    assert len(data.read_pairs(three_sets / "faces_pairs.txt")) == 20
    with pytest.raises(ValueError, match="the LFW image folder .* is needed for an LFW pairs file"):
        data.read_pairs(three_sets / "pairs.txt")
    with pytest.raises(ValueError, match="pairs must be an existing pair file.*got '.*nope.bin'"):
        data.read_pairs(three_sets / "nope.bin")


def test_pair_sets_hold_each_unique_image_once(three_sets):
    sets = ev.read_pair_sets(
        [three_sets / "faces_pairs.txt", three_sets / "pairs.txt", three_sets / "agedb_30.bin"],
        root=three_sets / "lfw",
    )
    assert sets.names == ("faces_pairs", "pairs", "agedb_30")
    lists = [data.read_pair_list(three_sets / "faces_pairs.txt"),
             data.read_lfw_pairs(three_sets / "pairs.txt", three_sets / "lfw")]
    files = {os.path.normpath(p) for pairs in lists for p in [*pairs.images_a, *pairs.images_b]}
    binary = data.read_insightface_bin(three_sets / "agedb_30.bin")
    contents = {bytes(x) for x in [*binary.images_a, *binary.images_b]}
    assert len(sets) == len(files) + len(contents) < 20 * 2 + 12 * 2 + 10 * 2
    # Every pair points at its own two images.
    table = sets.images(SIZE)
    assert table.shape == (len(sets), *SIZE, 3) and table.dtype == np.uint8
    for name, pairs in zip(sets.names, lists + [binary]):
        a, b, same, _ = sets.sets[name]
        np.testing.assert_array_equal(same, pairs.is_same)
        reference = data.pair_arrays(pairs, image_size=SIZE, dtype="uint8")
        np.testing.assert_array_equal(table[a], reference[0])
        np.testing.assert_array_equal(table[b], reference[1])


def test_pair_sets_argument_errors(three_sets):
    pairs = data.read_pair_list(three_sets / "faces_pairs.txt")
    with pytest.raises(ValueError, match=r"names must be unique; got \['faces_pairs'\]"):
        ev.PairSets([pairs, pairs])
    with pytest.raises(ValueError, match=r"names must be non-empty, without spaces.*\['my set'\]"):
        ev.PairSets({"my set": pairs})
    with pytest.raises(ValueError, match="names must give one name per set"):
        ev.PairSets([pairs], names=["a", "b"])
    with pytest.raises(ValueError, match="sets must be VerificationPairs; got tuple"):
        ev.PairSets([(1, 2, 3)])
    sets = ev.PairSets(pairs)
    with pytest.raises(ValueError, match=r"embeddings must be \[unique images=.*, dim\]"):
        sets.evaluate(np.zeros((3, 4)))


# ---- evaluation -------------------------------------------------------------------------------


class CountingEmbedder:
    """A fixed random projection of the pixels; counts the images it embeds."""

    def __init__(self):
        self.image_size = SIZE
        self.projection = np.random.default_rng(0).normal(size=(SIZE[0] * SIZE[1] * 3, 12))
        self.seen = 0

    def __call__(self, images):
        images = np.asarray(images, np.float64)
        self.seen += len(images)
        return (images.reshape(len(images), -1) / 255.0 - 0.5) @ self.projection


def ref_auc(same, scores):
    genuine, impostor = scores[same], scores[~same]
    wins = (genuine[:, None] > impostor[None]).sum() + 0.5 * (genuine[:, None] == impostor[None]).sum()
    return wins / (len(genuine) * len(impostor))


def test_evaluate_pair_sets_embeds_each_image_once_and_scores_every_set(three_sets, tmp_path):
    paths = [three_sets / "faces_pairs.txt", three_sets / "pairs.txt", three_sets / "agedb_30.bin"]
    sets = ev.read_pair_sets(paths, root=three_sets / "lfw", names=["faces", "lfw", "agedb_30"])
    embedder = CountingEmbedder()
    result = ev.evaluate_pair_sets(embedder, sets, flip=True, far_targets=(1e-2, 1e-1),
                                   batch_size=16)
    assert embedder.seen == 2 * len(sets)  # each unique image once, and its mirror once
    for name, path in zip(("faces", "lfw", "agedb_30"), paths):
        pairs = data.read_pairs(path, three_sets / "lfw")
        a, b, same = data.pair_arrays(pairs, image_size=SIZE)
        fa = embedder(a) + embedder(a[:, :, ::-1])
        fb = embedder(b) + embedder(b[:, :, ::-1])
        cosine = np.sum(unit(fa) * unit(fb), axis=1)
        report = result.reports[name]
        assert report.num_pairs == len(pairs) and report.num_genuine == int(same.sum())
        assert report.auc == pytest.approx(ref_auc(same.astype(bool), cosine), abs=1e-6)
        folds = pairs.folds if pairs.folds is not None else 10
        if len(pairs) >= 10:
            expected = ev.kfold_accuracy_insightface(same, cosine, folds)[:2]
            assert result.insightface[name] == pytest.approx(expected, abs=1e-9)
    logs = result.as_logs()
    assert {"val_lfw_auc", "val_lfw_accuracy_10fold", "val_agedb_30_eer",
            "val_faces_tar@far=1e-1", "val_lfw_accuracy_10fold_insightface"} <= set(logs)
    table = result.table().splitlines()
    assert table[0].split()[:3] == ["set", "pairs", "10-fold"]
    assert [row.split()[0] for row in table[1:]] == ["faces", "lfw", "agedb_30"]
    mean, std = result.insightface["lfw"]
    assert f"{mean:.5f} ± {std:.5f}" in table[2] and f"{result.reports['lfw'].auc:.4f}" in table[2]
    written = result.save(tmp_path / "out")
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted(["report.json", "roc.png", "faces_det.png", "faces_scores.png",
                            "lfw_det.png", "lfw_scores.png", "agedb_30_det.png",
                            "agedb_30_scores.png"])
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["lfw"]["auc"] == pytest.approx(result.reports["lfw"].auc)
    assert saved["agedb_30"]["accuracy_10fold_insightface"] == pytest.approx(
        result.insightface["agedb_30"][0])


def test_a_keras_model_and_a_corrupt_image(three_sets):
    pairs = data.read_pair_list(three_sets / "faces_pairs.txt")
    broken = three_sets / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    pairs.images_b[1] = str(broken)
    model = keras.Sequential([keras.Input((*SIZE, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(8)])
    log = data.CorruptFileLog()
    result = ev.evaluate_pair_sets(model, ev.PairSets({"faces": pairs}), corrupt_files=log)
    assert result.reports["faces"].num_pairs == 20
    assert [item.path for item in log.collect()] == [str(broken)]


def test_callback_logs_every_named_set(three_sets, tmp_path):
    sets = ev.read_pair_sets([three_sets / "faces_pairs.txt", three_sets / "agedb_30.bin"])
    train = data.ImageIndex.from_directory(FACES)
    backbone = keras.Sequential([keras.Input((*SIZE, 3)), keras.layers.Rescaling(1 / 255.0),
                                 keras.layers.Flatten(), keras.layers.Dense(8)])
    model = keras.Sequential([backbone, kf.heads.CosineHead(5)])
    model.compile(optimizer="adam", loss=kf.losses.CosFaceLoss(scale=16.0))
    log_path = tmp_path / "log.csv"
    callback = ev.VerificationCallback(sets, far_targets=(1e-1,))
    history = model.fit(
        data.classification_dataset(train, 11, image_size=SIZE), epochs=2, verbose=0,
        callbacks=[callback, keras.callbacks.CSVLogger(str(log_path)),
                   keras.callbacks.EarlyStopping(monitor="val_agedb_30_auc", mode="max",
                                                 patience=3)],
    )
    keys = {"val_faces_pairs_auc", "val_faces_pairs_accuracy_10fold", "val_agedb_30_auc",
            "val_agedb_30_tar@far=1e-1", "val_agedb_30_eer"}
    assert keys <= set(history.history)
    rows = list(csv.DictReader(log_path.open()))
    assert len(rows) == 2 and float(rows[-1]["val_agedb_30_auc"]) == pytest.approx(
        history.history["val_agedb_30_auc"][-1])
    # The logged value is the report of the trained embedder's scores.
    last = callback.last_report.reports["agedb_30"]
    a, b, same = data.pair_arrays(data.read_insightface_bin(three_sets / "agedb_30.bin"),
                                  image_size=SIZE, dtype="uint8")
    fa, fb = (unit(np.asarray(backbone.predict(x.astype("float32"), verbose=0))) for x in (a, b))
    assert last.auc == pytest.approx(ref_auc(same.astype(bool), np.sum(fa * fb, axis=1)),
                                     abs=1e-6)
    assert history.history["val_agedb_30_auc"][-1] == pytest.approx(last.auc)


def test_callback_with_named_decoded_arrays(rng):
    images = rng.uniform(0, 1, size=(40, 6)).astype("float32")
    same = rng.integers(0, 2, 20)
    named = {"a": (images[:20], images[20:], same), "b": (images[:10], images[10:20], same[:10])}
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    callback = ev.VerificationCallback(named, far_targets=(1e-1,))
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    emb = unit(np.asarray(model.predict(images, verbose=0), np.float64))
    assert logs["val_a_auc"] == pytest.approx(
        ref_auc(same.astype(bool), np.sum(emb[:20] * emb[20:], axis=1)), abs=1e-6)
    assert logs["val_b_auc"] == pytest.approx(
        ref_auc(same[:10].astype(bool), np.sum(emb[:10] * emb[10:20], axis=1)), abs=1e-6)
    with pytest.raises(ValueError, match=r"pairs\['a'\] must hold as many images_a"):
        ev.VerificationCallback({"a": (images[:3], images[:2], same[:2])})
    with pytest.raises(ValueError, match="pairs must be \\(images_a, images_b, is_same\\), a PairSets"):
        ev.VerificationCallback((images, images))

