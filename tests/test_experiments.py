"""The experiment scripts' small configurations (so that they cannot rot) and their shared module."""

import importlib.util
import json
import math
import os
import shutil

import keras
import numpy as np
import pytest
from data_helpers import FACES, NAMES

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(*parts):
    spec = importlib.util.spec_from_file_location(parts[-1][:-3], os.path.join(ROOT, *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loss_table():
    return load_script("benchmarks", "loss_table.py")


@pytest.fixture(scope="module")
def feature_space():
    return load_script("examples", "feature_space.py")


def test_open_set_split_is_disjoint_balanced_and_deterministic():
    from keras_facemargin import data, experiments

    index = data.ImageIndex.from_directory(FACES)
    split = experiments.open_set_split(index, unseen_fraction=0.4, held_out_fraction=0.25, num_pairs=60,
                                       seed=3)
    assert split.train.num_classes == 3 and split.unseen.num_classes == 2
    assert not set(split.train.class_names) & set(split.unseen.class_names)
    assert split.held_out.class_names == split.train.class_names  # same labels: closed set
    assert not set(split.held_out.paths) & set(split.train.paths)
    np.testing.assert_array_equal(split.held_out.class_counts(), [3, 3, 3])
    a, b, same = split.pairs
    assert len(same) == 60 and same.sum() == 30
    np.testing.assert_array_equal(split.unseen.labels[a] == split.unseen.labels[b], same)
    pairs = split.verification_pairs()
    assert all(os.path.basename(os.path.dirname(p)) in split.unseen.class_names for p in pairs.images_a)
    again = experiments.open_set_split(index, unseen_fraction=0.4, held_out_fraction=0.25, num_pairs=60,
                                       seed=3)
    assert again.pairs[0].tolist() == a.tolist() and again.unseen.class_names == split.unseen.class_names


def test_open_set_split_needs_four_identities():
    from keras_facemargin import data, experiments

    index = data.ImageIndex.from_directory(FACES).subset(np.arange(33))  # 3 identities
    with pytest.raises(ValueError, match="at least 4 identities .* got 3"):
        experiments.open_set_split(index)


def test_train_objective_goes_through_the_recipe_for_each_kind(tmp_path):
    from keras_facemargin import data, experiments
    from keras_facemargin.heads import CosineHead

    index = data.ImageIndex.from_directory(FACES)
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    for objective, head in (("softmax", keras.layers.Dense), ("arcface", CosineHead), ("triplet", None)):
        trained = experiments.train_objective(objective, index, 1, image_size=16, embedding_dim=8,
                                              backbone="simple_cnn", samples_per_class=2)
        assert trained.config.loss == objective and trained.seconds > 0
        assert trained.embedder(x).shape == (4, 8) and np.isfinite(trained.final_loss)
        outputs = trained.model(x)
        assert outputs.shape == ((4, 5) if head else (4, 8))
        if head:
            assert isinstance(trained.model.layers[-1], head)
        assert trained.is_classifier == (objective != "triplet")
    with pytest.raises(ValueError, match="objective must be one of softmax, .*; got 'hinge'"):
        experiments.train_objective("hinge", index, 1)


def test_digit_folder_holds_the_digits(tmp_path):
    from keras_facemargin import experiments

    index = experiments.digit_folder(str(tmp_path / "digits"), size=16)
    images, labels = experiments.digit_images(16)
    assert len(index) == 1797 and index.class_names == tuple(str(d) for d in range(10))
    np.testing.assert_array_equal(np.bincount(index.labels), np.bincount(labels))
    from PIL import Image

    first = np.asarray(Image.open(index.paths[0]))
    np.testing.assert_array_equal(first, images[0])  # digit 0's first image, lossless
    assert len(experiments.digit_folder(str(tmp_path / "digits"), size=16)) == 1797  # reused


def test_loss_table_on_the_faces(loss_table, tmp_path, capsys):
    out = tmp_path / "table"
    rows = loss_table.main(["--data", FACES, "--image-size", "16", "--embedding-dim", "16", "--epochs", "1",
                            "--num-pairs", "100", "--out", str(out)])
    printed = capsys.readouterr().out
    assert [row["objective"] for row in rows] == list(loss_table.OBJECTIVES)
    assert len(loss_table.OBJECTIVES) == 10
    classifiers = {"softmax", "normface", "sphereface", "cosface", "arcface", "combined_margin"}
    for row in rows:
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["eer"] <= 1.0, row
        assert set(row["tar_at_far"]) == {"1e-2", "1e-3"}
        assert 0.0 <= row["accuracy_10fold"] <= 1.0 and row["train_seconds"] > 0
        if row["objective"] in classifiers:
            assert 0.0 <= row["closed_set_accuracy"] <= 1.0
        else:
            assert row["closed_set_accuracy"] is None
    table = (out / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 10 and "closed-set acc." in lines[0]
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert (cells[6] == "-") == (cells[0] not in classifiers)
    assert table.split("\n\n", 1)[1].strip() in printed
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 10 and results["settings"]["epochs"] == 1
    assert results["batch_size"] == results["classes_per_batch"] * 3
    assert "3 training identities" in results["split"] and "2 unseen identities" in results["split"]
    assert all(math.isfinite(r["auc"]) for r in results["rows"])


def _error(main, argv, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_loss_table_bad_arguments(loss_table, tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    err = _error(loss_table.main, ["--data", missing], capsys)
    assert "--data" in err and missing in err and "must be an existing folder" in err
    few = tmp_path / "three"
    for name in NAMES[:3]:
        shutil.copytree(os.path.join(FACES, name), few / name)
    err = _error(loss_table.main, ["--data", str(few)], capsys)
    assert "--data" in err and "at least 4 identities" in err and "got 3" in err
    err = _error(loss_table.main, ["--data", FACES, "--backbone", "resnet9000"], capsys)
    assert "--backbone" in err and "resnet9000" in err and "simple_cnn" in err
    err = _error(loss_table.main, ["--data", FACES, "--objectives", "arcface,hinge"], capsys)
    assert "--objectives" in err and "hinge" in err and "supcon" in err
    err = _error(loss_table.main, ["--data", FACES, "--samples-per-class", "1"], capsys)
    assert "--samples-per-class" in err and ">= 2" in err and "got 1" in err
    err = _error(loss_table.main, ["--data", FACES, "--epochs", "0"], capsys)
    assert "--epochs" in err and "'0'" in err
    err = _error(loss_table.main, ["--data", FACES, "--unseen-fraction", "1.5"], capsys)
    assert "--unseen-fraction" in err and "(0, 1)" in err
    err = _error(loss_table.main, ["--data", FACES, "--backbone", "iresnet18", "--image-size", "8"], capsys)
    assert "--image-size 8" in err and "at least 16" in err
    err = _error(loss_table.main, ["--data", FACES, "--learning-rate", "-1"], capsys)
    assert "--learning-rate" in err and "> 0" in err


def check_png(path, min_bytes=5000):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > min_bytes
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 150
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_feature_space_small(feature_space, tmp_path, capsys):
    written = feature_space.main(["--epochs", "1", "--max-images", "120", "--dpi", "40", "--dims", "2",
                                  "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    assert sorted(os.path.basename(p) for p in written) == ["feature_space_2d.png", "scale.png"]
    for path in written:
        check_png(path)
    assert capsys.readouterr().out.count("2-D ") == len(feature_space.OBJECTIVES) == 5


def test_feature_space_3d_figure(feature_space, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 8)
    results = {name: (rng.normal(size=(80, 3)), None) for name in feature_space.OBJECTIVES}
    path = str(tmp_path / "feature_space_3d.png")
    feature_space.plot_3d(results, labels, path, dpi=40)
    check_png(path)


def test_feature_space_bad_arguments(feature_space, tmp_path, capsys):
    err = _error(feature_space.main, ["--dims", "4", "--out", str(tmp_path)], capsys)
    assert "--dims" in err and "'4'" in err and "2,3" in err
    err = _error(feature_space.main, ["--max-images", "5", "--out", str(tmp_path)], capsys)
    assert "--max-images" in err and "at least 40" in err and "got 5" in err
    err = _error(feature_space.main, ["--scale", "-1", "--out", str(tmp_path)], capsys)
    assert "--scale" in err and "> 0" in err


def test_scale_figure_probability(feature_space):
    theta = np.linspace(0, np.pi, 7)
    for s in (1.0, 16.0, 64.0):
        logits = np.zeros((len(theta), 10))
        logits[:, 0] = s * np.cos(theta)
        softmax = np.exp(logits - logits.max(1, keepdims=True))
        softmax /= softmax.sum(1, keepdims=True)
        np.testing.assert_allclose(feature_space.target_probability(np.cos(theta), s, 10), softmax[:, 0],
                                   rtol=1e-10)
        assert feature_space.target_probability(0.0, s, 10) == pytest.approx(0.1)  # θ = 90°: 1/C
