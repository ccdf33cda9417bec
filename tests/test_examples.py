"""The examples/ scripts, run through their `main(argv)` on a copy of the 5 × 11 test faces.

Each training example holds out 2 of the 5 people (`--held-out 0.4`) and trains on the other 3
(33 images) for 2 epochs at 32 px, so the assertions are about what the scripts produce, not how
well they train: the export embeds unit vectors equal to the Keras model's, the report counts the
held-out pairs and its metrics are rates, the callback logged every epoch.
"""

import contextlib
import csv
import importlib.util
import io
import json
import os
import pickle

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data + SavedModel")

from data_helpers import NAMES, copy_faces  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, DIM, EPOCHS = 32, 16, 2
TINY = ["--backbone", "simple_cnn", "--image-size", str(SIZE), "--embedding-dim", str(DIM),
        "--epochs", str(EPOCHS), "--held-out", "0.4"]
# 2 held-out people × C(11, 2) = 55 genuine pairs each, and as many impostor pairs.
HELD_OUT_PAIRS, HELD_OUT_GENUINE = 220, 110


def example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, argv):
    """`(what main returns, what it printed)`."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = example(name).main(argv)
    return result, printed.getvalue()


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return copy_faces(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def margin_run(faces, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("margin_softmax"))
    report, printed = run("train_margin_softmax", ["--data", faces, *TINY, "--batch-size", "8",
                                                   "--scale", "16", "--out", out])
    return out, report, printed


@pytest.fixture(scope="module")
def pair_run(faces, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pair_loss"))
    report, printed = run("train_pair_loss", ["--data", faces, *TINY, "--loss", "triplet",
                                              "--classes-per-batch", "3", "--samples-per-class", "4",
                                              "--steps-per-epoch", "3", "--out", out])
    return out, report, printed


@pytest.fixture(scope="module")
def partial_fc_run(faces, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("partial_fc"))
    # 3 training identities at sample rate 0.5: 2 sampled per step, so batches of 2.
    report, printed = run("train_partial_fc", ["--data", faces, *TINY, "--batch-size", "2",
                                               "--sample-rate", "0.5", "--scale", "16", "--out", out])
    return out, report, printed


def face_batch(faces):
    """The first image of each of the 5 people, uint8 `[5, SIZE, SIZE, 3]`."""
    import tensorflow as tf

    images = []
    for name in NAMES:
        folder = os.path.join(faces, name)
        with open(os.path.join(folder, sorted(os.listdir(folder))[0]), "rb") as f:
            image = tf.image.resize(tf.io.decode_jpeg(f.read(), channels=3), (SIZE, SIZE))
        images.append(np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8))
    return np.stack(images)


def check_export(out, faces):
    """The SavedModel embeds unit vectors, the same as the saved Keras model's (normalised)."""
    import tensorflow as tf

    from keras_facemargin import evaluation as ev

    images = face_batch(faces)
    serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    served = serve(images=tf.constant(images))["embeddings"].numpy()
    assert served.shape == (len(NAMES), DIM)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    model = keras.models.load_model(os.path.join(out, "model.keras"), compile=False)
    keras_embeddings = ev.embedding_model(model).predict(images.astype("float32"), verbose=0)
    np.testing.assert_allclose(served, ev.normalize_rows(keras_embeddings), atol=1e-5)
    return model


def check_report(out, report, printed):
    """report.json: the held-out pairs and rates in [0, 1]; log.csv: one validation row per epoch."""
    with open(os.path.join(out, "report.json")) as f:
        saved = json.load(f)
    assert (saved["num_pairs"], saved["num_genuine"]) == (HELD_OUT_PAIRS, HELD_OUT_GENUINE)
    assert saved["num_impostors"] == HELD_OUT_PAIRS - HELD_OUT_GENUINE
    for key in ("auc", "eer", "best_accuracy", "accuracy_10fold"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert set(saved["tar_at_far"]) == {"1e-4", "1e-3", "1e-2"}
    assert all(0.0 <= tar <= 1.0 for tar in saved["tar_at_far"].values())
    assert saved["unresolved_fars"] == ["1e-4", "1e-3"]  # 110 impostors measure FAR >= 1/110 only
    assert saved["auc"] == pytest.approx(report.auc)
    assert f"verifying {HELD_OUT_PAIRS} pairs of 2 held-out identities" in printed
    assert str(report) in printed
    assert os.path.getsize(os.path.join(out, "roc.png")) > 1000
    with open(os.path.join(out, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == list(range(EPOCHS))
    for row in rows:
        assert np.isfinite(float(row["loss"]))
        assert 0.0 <= float(row["val_auc"]) <= 1.0
        assert 0.0 <= float(row["val_tar@far=1e-2"]) <= 1.0


def test_train_margin_softmax(margin_run, faces):
    out, report, printed = margin_run
    check_report(out, report, printed)
    model = check_export(out, faces)
    assert model.get_layer("cosine_head").num_classes == 3  # the 2 held-out people were not trained on
    assert "ArcFaceLoss: {'scale': 16.0, 'margin': 0.5}" in printed


def test_train_pair_loss(pair_run, faces):
    out, report, printed = pair_run
    check_report(out, report, printed)
    model = check_export(out, faces)
    assert model.output_shape == (None, DIM)  # the embedding model itself, no head
    assert "TripletLoss: {'margin': 0.2, 'distance': 'cosine', 'mining': 'semi_hard'" in printed


def test_train_partial_fc(partial_fc_run, faces):
    out, report, printed = partial_fc_run
    check_report(out, report, printed)
    model = check_export(out, faces)
    head = model.get_layer("partial_fc")
    assert (head.num_classes, head.num_sampled) == (3, 2)
    assert [tuple(i.shape) for i in model.inputs] == [(None, SIZE, SIZE, 3), (None,)]  # labels go in
    assert "3 identities (33 images), 2 sampled per step" in printed


@pytest.fixture(scope="module")
def pair_files(faces, tmp_path_factory):
    """`faces.bin` in InsightFace's format, a protocol-2 pickle of (encoded JPEGs, is_same): 25
    genuine and 25 impostor pairs, shuffled; and an LFW `pairs.txt` (2 folds of 10 same and 10
    different pairs) over an LFW-named copy of the faces. Returns the paths and unique images."""
    folder = tmp_path_factory.mktemp("pairs")
    files = {name: sorted(os.path.join(faces, name, f) for f in os.listdir(os.path.join(faces, name)))
             for name in NAMES}

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    pairs = [(files[name][i], files[name][i + 1], True) for name in NAMES for i in range(0, 10, 2)]
    pairs += [(files[NAMES[i]][j], files[NAMES[(i + 1 + j % 4) % 5]][j + 5], False)
              for i in range(5) for j in range(5)]
    pairs = [pairs[i] for i in np.random.default_rng(0).permutation(len(pairs))]
    bin_path = str(folder / "faces.bin")
    with open(bin_path, "wb") as f:
        pickle.dump(([read(p) for a, b, _ in pairs for p in (a, b)], [same for _, _, same in pairs]), f,
                    protocol=2)

    lfw = folder / "lfw"
    for name in NAMES:
        os.makedirs(lfw / name)
        for n, path in enumerate(files[name], 1):
            with open(lfw / name / f"{name}_{n:04d}.jpg", "wb") as f:
                f.write(read(path))
    lines, lfw_images = ["2\t10"], set()
    for fold in range(2):
        for i in range(10):
            name, n1, n2 = NAMES[i % 5], 2 * fold + 1, 2 * fold + 2 + i // 5
            lines.append(f"{name}\t{n1}\t{n2}")
            lfw_images |= {(name, n1), (name, n2)}
        for i in range(10):
            name_a, name_b = NAMES[i % 5], NAMES[(i + 1 + i // 5) % 5]
            lines.append(f"{name_a}\t{fold + 1}\t{name_b}\t{fold + 3}")
            lfw_images |= {(name_a, fold + 1), (name_b, fold + 3)}
    pairs_txt = str(folder / "pairs.txt")
    with open(pairs_txt, "w") as f:
        f.write("\n".join(lines) + "\n")
    # A .bin image counts once per distinct content (John_Shimkus has two files of equal bytes).
    unique = len({read(p) for a, b, _ in pairs for p in (a, b)}) + len(lfw_images)
    return bin_path, pairs_txt, str(lfw), unique


def test_evaluate_bin_on_the_export_and_the_keras_model(margin_run, pair_files, tmp_path):
    out, _, _ = margin_run
    bin_path, pairs_txt, lfw, unique_images = pair_files
    saved_model = os.path.join(out, "saved_model")
    result, printed = run("evaluate_bin", ["--model", saved_model, bin_path, pairs_txt, "--root", lfw,
                                           "--flip", "--out", str(tmp_path / "eval")])
    # One table, a row per set named after its file; each unique image embedded once.
    assert f"PairSets({unique_images} unique images; faces: 50 pairs, pairs: 40 pairs)" in printed
    assert f"embedding at {SIZE}×{SIZE} with the flip test" in printed
    header, *rows = result.table().splitlines()
    assert result.table() in printed
    assert header.split()[:2] == ["set", "pairs"]
    assert [row.split()[:2] for row in rows] == [["faces", "50"], ["pairs", "40"]]
    assert "note: faces has 25 impostor pairs, too few to measure TAR at FAR = 0.0001, 0.001, 0.01" \
        in printed

    with open(tmp_path / "eval" / "report.json") as f:
        saved = json.load(f)
    assert set(saved) == {"faces", "pairs"}
    assert (saved["faces"]["num_pairs"], saved["faces"]["num_genuine"]) == (50, 25)
    assert (saved["pairs"]["num_pairs"], saved["pairs"]["num_genuine"]) == (40, 20)
    for report in saved.values():
        for key in ("auc", "eer", "best_accuracy", "accuracy_10fold", "accuracy_10fold_insightface"):
            assert 0.0 <= report[key] <= 1.0, key
        assert all(0.0 <= tar <= 1.0 for tar in report["tar_at_far"].values())
    for name in ("roc.png", "faces_det.png", "faces_scores.png", "pairs_det.png", "pairs_scores.png"):
        assert os.path.getsize(tmp_path / "eval" / name) > 1000, name

    # The same model as its .keras training model (the head cut off) scores the pairs alike; the
    # export only rounds the resized images to uint8 first.
    keras_result, printed = run("evaluate_bin", ["--model", os.path.join(out, "model.keras"), bin_path,
                                                 pairs_txt, "--root", lfw, "--flip", "--out", str(tmp_path / "k")])
    for name in ("faces", "pairs"):
        assert keras_result.reports[name].auc == pytest.approx(result.reports[name].auc, abs=0.02)


def test_evaluate_bin_on_a_partial_fc_keras_model(partial_fc_run, pair_files, tmp_path):
    """A PartialFC training model takes [images, labels]; the evaluation uses its embedder."""
    out, _, _ = partial_fc_run
    bin_path = pair_files[0]
    result, printed = run("evaluate_bin", ["--model", os.path.join(out, "model.keras"), bin_path,
                                           "--out", str(tmp_path)])
    assert result.names == ("faces",)
    assert 0.0 <= result.reports["faces"].auc <= 1.0
    assert os.path.getsize(tmp_path / "report.json") > 100


@pytest.mark.parametrize("name, argv, message", [
    ("train_margin_softmax", ["--batch-size", "40"],
     "argument --batch-size: must be <= the 33 training images; got 40"),
    ("train_margin_softmax", ["--warmup-epochs", "2"], "argument --warmup-epochs: must be in [0, --epochs=2)"),
    ("train_pair_loss", ["--classes-per-batch", "4"], "classes_per_batch must be <= the number of usable classes (3"),
    ("train_partial_fc", ["--batch-size", "8", "--sample-rate", "0.1"],
     "argument --sample-rate: 0.1 samples 1 of the 3 training identities per step, fewer than the up to 3"),
])
def test_training_examples_refuse_bad_arguments_before_training(name, argv, message, faces, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(name, ["--data", faces, *TINY, *argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "saved_model")


def test_examples_name_a_missing_data_folder_or_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run("train_margin_softmax", ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert "argument --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("evaluate_bin", ["--model", str(tmp_path / "nowhere"), str(tmp_path / "x.bin")])
    assert "argument --model must be a SavedModel folder (with saved_model.pb) or a .keras file" \
        in capsys.readouterr().err
