"""`facemargin train / evaluate / embed` end to end on the real faces in tests/data/faces."""

import itertools
import json
import logging
import os

import keras
import numpy as np
import pytest
from helpers import conv_channels, leaf_layers

from keras_facemargin import cli

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data + SavedModel")

FACES = os.path.join(os.path.dirname(__file__), "data", "faces")


def pair_list(path):
    """`a b label` lines over the faces: every genuine pair of the first 4 images, and impostors."""
    people = sorted(p for p in os.listdir(FACES) if os.path.isdir(os.path.join(FACES, p)))
    images = {p: sorted(os.listdir(os.path.join(FACES, p)))[:4] for p in people}
    lines = []
    for p in people:
        for a, b in itertools.combinations(images[p], 2):
            lines.append(f"{p}/{a} {p}/{b} 1")
    for p, q in itertools.combinations(people, 2):
        lines.append(f"{p}/{images[p][0]} {q}/{images[q][1]} 0")
        lines.append(f"{p}/{images[p][2]} {q}/{images[q][3]} 0")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = tmp / "config.yaml"
    config.write_text(
        "loss: arcface\nscale: 16.0\nbackbone: simple_cnn\nimage_size: 32\nembedding_dim: 16\n"
        "epochs: 2\nbatch_size: 10\nlearning_rate: 0.01\noptimizer: adam\n"
    )
    run_dir, export = str(tmp / "run"), str(tmp / "export")
    code = cli.main(["train", "--config", str(config), "--data", FACES, "--run-dir", run_dir,
                     "--export", export, "--mixup", "0.5", "--augment", "color,translate", "--width", "2"])
    assert code == 0
    return tmp, run_dir, export


def test_train_writes_the_run_folder_and_the_export(trained):
    _, run_dir, export = trained
    saved = json.load(open(os.path.join(run_dir, "config.json")))
    assert saved["loss"] == "arcface" and saved["scale"] == 16.0 and saved["mixup"] == 0.5
    assert saved["augment"] == ["translate", "color"]
    assert saved["epochs"] == 2 and saved["data"] == FACES and saved["width"] == 2.0
    for name in ("log.csv", "model.keras", "backup/state.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    assert conv_channels(model) == [32, 64, 128]  # simple_cnn's 16, 32, 64 at --width 2
    assert os.path.exists(os.path.join(export, "saved_model.pb"))


@pytest.mark.parametrize("which", ["savedmodel", "keras"])
def test_evaluate_prints_the_report_and_writes_json_and_plots(trained, which, capsys):
    tmp, run_dir, export = trained
    model = export if which == "savedmodel" else os.path.join(run_dir, "model.keras")
    pairs = pair_list(tmp / "pairs.txt")
    out = tmp / f"eval-{which}"
    assert cli.main(["evaluate", "--model", model, "--pairs", str(pairs), "--root", FACES,
                     "--out", str(out), "--flip"]) == 0
    printed = capsys.readouterr().out
    assert "AUC" in printed and "10-fold accuracy" in printed
    report = json.load(open(out / "report.json"))["pairs"]
    assert report["num_pairs"] == 50 and report["num_genuine"] == 30 and 0 <= report["auc"] <= 1
    for name in ("roc.png", "pairs_det.png", "pairs_scores.png"):
        assert (out / name).stat().st_size > 1000


def test_embed_writes_npz(trained):
    tmp, _, export = trained
    out = tmp / "emb.npz"
    assert cli.main(["embed", "--model", export, "--images", FACES, "--out", str(out)]) == 0
    data = np.load(out)
    assert data["embeddings"].shape == (55, 16) and len(data["paths"]) == 55
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-5)


def test_embed_rows_against_the_exported_signature_with_and_without_flip(trained):
    # Images stored at the model's size (decoding only casts them), 7 of them in batches of 3
    # (the last one short); the reference calls the SavedModel's signature directly, in float64.
    import tensorflow as tf
    from PIL import Image

    tmp, _, export = trained
    folder = tmp / "at-size"
    folder.mkdir()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    serve = tf.saved_model.load(export).signatures["serving_default"]

    def signature(x):
        return serve(images=tf.constant(x))["embeddings"].numpy().astype(np.float64)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    expected = {False: unit(signature(images)),
                True: unit(signature(images) + signature(images[:, :, ::-1].copy()))}
    assert np.abs(expected[False] - expected[True]).max() > 1e-3  # the flip changes the rows
    for flip in (False, True):
        out = tmp / f"at-size-{flip}.npz"
        argv = ["embed", "--model", export, "--images", str(folder), "--out", str(out),
                "--batch-size", "3"]
        assert cli.main(argv + (["--flip"] if flip else [])) == 0
        saved = np.load(out)
        assert [os.path.basename(p) for p in saved["paths"]] == [f"{i}.png" for i in range(7)]
        np.testing.assert_allclose(saved["embeddings"], expected[flip], atol=1e-5)


def test_resume_with_another_configuration_is_refused(trained, capsys):
    _, run_dir, _ = trained
    code = cli.main(["train", "--data", FACES, "--run-dir", run_dir, "--image-size", "32",
                     "--backbone", "simple_cnn", "--epochs", "3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "facemargin train: error: --run-dir" in err and "different configuration" in err
    assert "use a new --run-dir" in err


@pytest.mark.parametrize("argv, expected", [
    (["train", "--data", FACES, "--image-size", "7", "--run-dir", "RUN"],
     "facemargin train: error: --backbone small_vgg at --image-size 7: input_shape (7, 7, 3) is too "
     "small for small_vgg: it downsamples by 16, so height and width must be at least 16"),
    (["train", "--data", FACES, "--loss", "cosface", "--margin", "5", "--run-dir", "RUN"],
     "facemargin train: error: --margin must be in [0.0, 1.0]; got 5.0 (--loss cosface)"),
    (["train", "--data", FACES, "--epochs", "2", "--bogus", "3", "--run-dir", "RUN"],
     "facemargin train: error: unrecognized arguments: --bogus 3 (see facemargin train --help)"),
    (["pack", FACES, "RUN.rec", "--data", "x"],
     "facemargin pack: error: unrecognized arguments: --data x (see facemargin pack --help)"),
])
def test_a_mistake_found_after_parsing_names_the_flag_and_its_command(tmp_path, capsys, argv, expected):
    # The backbone's and the loss's own checks speak of input_shape and margin, and argparse
    # reports a command's unknown flags as the top-level `facemargin`: the user typed flags.
    run = str(tmp_path / "run")
    assert cli.main([a.replace("RUN", run) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == expected and "Traceback" not in err
    assert not os.listdir(tmp_path)  # no run folder, no .rec


def test_bad_inputs_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--data", str(empty), "--run-dir", str(tmp_path / "r")]) == 2
    assert "--data" in capsys.readouterr().err
    one = tmp_path / "one" / "person"
    one.mkdir(parents=True)
    src = os.path.join(FACES, "John_Salley")
    for name in sorted(os.listdir(src))[:2]:
        (one / name).write_bytes(open(os.path.join(src, name), "rb").read())
    assert cli.main(["train", "--data", str(tmp_path / "one"), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "at least 2 identities" in capsys.readouterr().err
    assert cli.main(["train", "--data", FACES, "--loss", "arcfce", "--run-dir", str(tmp_path / "r3")]) == 2
    assert "invalid choice: 'arcfce'" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", str(tmp_path), "--pairs", "x"]) == 2
    assert "SavedModel folder" in capsys.readouterr().err
    assert cli.main(["train", "--data", FACES, "--embedding-dim", "0", "--run-dir", str(tmp_path / "r4")]) == 2
    assert "--embedding-dim must be an integer >= 1; got 0" in capsys.readouterr().err
    assert cli.main(["train", "--data", FACES, "--width", "-2", "--run-dir", str(tmp_path / "r5")]) == 2
    assert "--width must be a finite number > 0; got -2.0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r5")
    assert cli.main(["train", "--data", FACES, "--dropout", "1", "--run-dir", str(tmp_path / "r6")]) == 2
    assert "--dropout must be a number in [0, 1); got 1.0" in capsys.readouterr().err
    assert cli.main(["train", "--data", FACES, "--backbone", "mobilefacenet", "--dropout", "0.3",
                     "--run-dir", str(tmp_path / "r7")]) == 2
    err = capsys.readouterr().err
    assert "--dropout applies to the backbones with a dropout layer" in err and "got --backbone mobilefacenet" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.path.exists(tmp_path / "r6") and not os.path.exists(tmp_path / "r7")


def test_train_with_a_pair_loss_on_pk_batches(tmp_path):
    run_dir = str(tmp_path / "run")
    code = cli.main(["train", "--data", FACES, "--loss", "triplet", "--backbone", "simple_cnn",
                     "--image-size", "32", "--embedding-dim", "8", "--epochs", "1",
                     "--classes-per-batch", "5", "--samples-per-class", "4", "--optimizer", "adam",
                     "--learning-rate", "0.001", "--run-dir", run_dir,
                     "--export", str(tmp_path / "export")])
    assert code == 0
    assert os.path.exists(os.path.join(run_dir, "model.keras"))
    assert os.path.exists(tmp_path / "export" / "saved_model.pb")


def test_mixup_with_a_pair_loss_is_refused(tmp_path, capsys):
    code = cli.main(["train", "--data", FACES, "--loss", "triplet", "--mixup", "0.5",
                     "--image-size", "32", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert "--mixup/--cutmix need softmax or a margin loss" in capsys.readouterr().err


def _fifteen_identities(root):
    """15 identities × 3 images: each real person's first 9 faces split into three 'identities'."""
    people = sorted(p for p in os.listdir(FACES) if os.path.isdir(os.path.join(FACES, p)))
    for person in people:
        images = sorted(os.listdir(os.path.join(FACES, person)))[:9]
        for part in range(3):
            folder = root / f"{person}_{part}"
            folder.mkdir(parents=True)
            for name in images[3 * part:3 * part + 3]:
                (folder / name).write_bytes(open(os.path.join(FACES, person, name), "rb").read())
    return str(root)


def test_train_with_partial_fc(tmp_path):
    import keras_facemargin as kf

    data = _fifteen_identities(tmp_path / "data")
    run_dir = str(tmp_path / "run")
    code = cli.main(["train", "--data", data, "--loss", "cosface", "--scale", "16", "--sample-rate", "0.5",
                     "--image-size", "32", "--embedding-dim", "8", "--epochs", "2", "--batch-size", "6",
                     "--optimizer", "sgd", "--learning-rate", "0.05", "--run-dir", run_dir,
                     "--export", str(tmp_path / "export")])
    assert code == 0
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    head = model.get_layer("partial_fc")
    assert isinstance(head, kf.heads.PartialFC) and head.num_sampled == 8 and head.num_classes == 15
    assert isinstance(head.loss, kf.losses.CosFaceLoss)
    rows = open(os.path.join(run_dir, "log.csv")).read().strip().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(row.split(",")[1])) for row in rows)


def test_partial_fc_needs_integer_labels(tmp_path, capsys):
    code = cli.main(["train", "--data", FACES, "--sample-rate", "0.5", "--mixup", "0.2",
                     "--image-size", "32", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert "--sample-rate 0.5 (Partial FC) needs integer labels" in capsys.readouterr().err


def _first_bn_statistics_and_input_mean(run_dir):
    """conv1_bn's moving mean in model.keras, and the mean over every training image and position
    of conv1's output under the same weights (float64)."""
    import keras_facemargin as kf

    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    backbone = model.get_layer("simple_cnn")
    conv = keras.Model(backbone.inputs, backbone.get_layer("conv1").output)
    paths = sorted(os.path.join(FACES, p, f) for p in os.listdir(FACES) if os.path.isdir(os.path.join(FACES, p))
                   for f in os.listdir(os.path.join(FACES, p)))
    images = np.concatenate([b.numpy() for b in kf.data.image_dataset(paths, image_size=(32, 32))])
    outputs = np.asarray(conv(model.get_layer("scale_pixels")(images)), dtype=np.float64)
    return np.asarray(backbone.get_layer("conv1_bn").moving_mean), outputs.reshape(-1, outputs.shape[-1]).mean(0)


def test_ema_exports_the_averaged_weights_with_batch_norm_statistics_recomputed_for_them(tmp_path):
    # 55 faces in 5 batches of 11, no augmentation: one pass sees every image once, so conv1_bn's
    # mean (the average of the batch means) is the mean of conv1's output over the images.
    flags = ["train", "--data", FACES, "--backbone", "simple_cnn", "--image-size", "32", "--embedding-dim", "8",
             "--epochs", "2", "--batch-size", "11", "--augment", "none", "--optimizer", "adam",
             "--learning-rate", "0.01"]
    assert cli.main([*flags, "--ema", "0.9", "--run-dir", str(tmp_path / "ema")]) == 0
    moving, expected = _first_bn_statistics_and_input_mean(tmp_path / "ema")
    np.testing.assert_allclose(moving, expected, rtol=1e-4, atol=1e-4)
    assert cli.main([*flags, "--run-dir", str(tmp_path / "raw")]) == 0  # without EMA: Keras's running mean
    moving, expected = _first_bn_statistics_and_input_mean(tmp_path / "raw")
    assert not np.allclose(moving, expected, rtol=1e-2, atol=1e-2)


class _Interrupted(Exception):
    pass


class _InterruptAfter(keras.callbacks.Callback):
    """Raises at the end of epoch `epoch` (0-based), before that epoch's backup is written."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupted()


def test_an_interrupted_ema_run_resumed_ends_as_an_uninterrupted_one(tmp_path):
    """The batch-norm statistics after EMA come from one pass over epoch 0's batches, in a resumed
    run too: a resumed run's training pipeline starts at its resume epoch, the recalibration's
    does not."""
    from keras_facemargin import recipe
    from keras_facemargin.config import TrainConfig

    def config(run_dir):
        return TrainConfig(data=FACES, backbone="simple_cnn", image_size=32, embedding_dim=8, epochs=4,
                           batch_size=11, augment="flip,translate", optimizer="adam", learning_rate=0.01,
                           ema=0.9, run_dir=str(run_dir))

    recipe.train(config(tmp_path / "whole"), verbose=0, export=False)
    with pytest.raises(_Interrupted):
        recipe.train(config(tmp_path / "split"), callbacks=[_InterruptAfter(1)], verbose=0, export=False)
    assert not os.path.exists(tmp_path / "split" / "model.keras")
    recipe.train(config(tmp_path / "split"), verbose=0, export=False)  # resumes after epoch 1
    expected = keras.saving.load_model(tmp_path / "whole" / "model.keras", compile=False).get_weights()
    resumed = keras.saving.load_model(tmp_path / "split" / "model.keras", compile=False).get_weights()
    for a, b in zip(expected, resumed, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def _conv_policies(run_dir):
    """The dtype policies of the convolutions of a run's model.keras, nested models included."""
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    return {layer.dtype_policy.name for layer in leaf_layers(model) if isinstance(layer, keras.layers.Conv2D)}


def test_mixed_precision_applies_to_its_own_run_only(tmp_path):
    # `--mixed-precision mixed_bfloat16` trains and exports in bfloat16, and the next run in the same
    # process (as in the demo, the loss table or a notebook) is float32 again, as its config.json says.
    flags = ["train", "--data", FACES, "--backbone", "simple_cnn", "--image-size", "32", "--embedding-dim", "8",
             "--epochs", "1", "--batch-size", "11", "--augment", "none"]
    before = keras.config.dtype_policy().name
    assert cli.main([*flags, "--mixed-precision", "mixed_bfloat16", "--run-dir", str(tmp_path / "bf16")]) == 0
    assert _conv_policies(tmp_path / "bf16") == {"mixed_bfloat16"}
    assert keras.config.dtype_policy().name == before
    out = tmp_path / "bf16.npz"
    assert cli.main(["embed", "--model", str(tmp_path / "bf16" / "saved_model"), "--images", FACES,
                     "--out", str(out)]) == 0
    embeddings = np.load(out)["embeddings"]
    assert embeddings.dtype == np.float32 and embeddings.shape == (55, 8) and np.isfinite(embeddings).all()
    assert cli.main([*flags, "--run-dir", str(tmp_path / "f32")]) == 0
    assert _conv_policies(tmp_path / "f32") == {"float32"}
    assert json.load(open(tmp_path / "f32" / "config.json"))["mixed_precision"] == "float32"


@pytest.mark.parametrize("layout", ["folder", "rec"])
def test_duplicates_finds_an_identity_filed_twice_and_train_merges_it(trained, tmp_path, capsys, caplog, layout):
    # The user's loop: a folder that holds one person under two names; `duplicates` finds them
    # with a trained model and writes the group, `train --merge-identities` trains them as one.
    # Packed as an InsightFace RecordIO set, the identities are named by their numbers.
    _, _, export = trained
    folder = tmp_path / "faces"
    folder.mkdir()
    people = sorted(p for p in os.listdir(FACES) if os.path.isdir(os.path.join(FACES, p)))
    names = sorted([*people, "John_Salley_again"])
    for name in names:
        source = os.path.join(FACES, name.replace("_again", ""))
        (folder / name).mkdir()
        for image in sorted(os.listdir(source)):
            (folder / name / image).write_bytes(open(os.path.join(source, image), "rb").read())
    images, twins = str(folder), ("John_Salley", "John_Salley_again")
    if layout == "rec":
        images = str(tmp_path / "rec" / "train.rec")
        assert cli.main(["pack", str(folder), images]) == 0
        twins = tuple(str(names.index(name)) for name in twins)
    groups = tmp_path / "groups.txt"
    capsys.readouterr()
    assert cli.main(["duplicates", "--model", export, "--images", images, "--out", str(groups),
                     "--threshold", "0.999"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"1.000\t{twins[0]}\t{twins[1]}"
    assert printed[-1].startswith("1 pairs of identities at cosine >= 0.999 link 2 of the 6 identities "
                                  "into 1 groups; wrote them to ")
    lines = [line for line in open(groups).read().splitlines() if not line.startswith("#")]
    assert lines == ["\t".join(twins)]

    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="keras_facemargin")
    assert cli.main(["train", "--data", images, "--merge-identities", str(groups),
                     "--backbone", "simple_cnn", "--image-size", "32", "--embedding-dim", "8",
                     "--epochs", "1", "--batch-size", "11", "--augment", "none",
                     "--run-dir", str(run_dir)]) == 0
    model = keras.saving.load_model(run_dir / "model.keras", compile=False)
    assert model.get_layer("cosine_head").weights[0].shape == (8, 5)  # 6 folders, 5 identities
    assert json.load(open(run_dir / "config.json"))["merge_identities"] == str(groups)
    assert "--merge-identities: 1 groups join 2 identities; 5 of 6 identities train" in caplog.messages


def test_merge_identities_mistakes_are_one_line_before_any_work(tmp_path, capsys):
    groups = tmp_path / "groups.txt"
    groups.write_text("John_Salley\tNobody\n")
    run_dir = tmp_path / "run"
    flags = ["train", "--data", FACES, "--run-dir", str(run_dir), "--image-size", "32"]
    assert cli.main([*flags, "--merge-identities", str(groups)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"facemargin train: error: --merge-identities {str(groups)!r}: group 1 names "
                          "'Nobody', which is not a class of ImageIndex(55 images, 5 classes)")
    assert err.count("\n") == 1 and not run_dir.exists()
    assert cli.main([*flags, "--merge-identities", str(tmp_path / "none.txt")]) == 2
    assert "--merge-identities must be an existing text file of identity groups; got" in capsys.readouterr().err
    assert cli.main(["duplicates", "--model", str(tmp_path), "--images", FACES, "--out",
                     str(tmp_path / "g.txt"), "--threshold", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("facemargin duplicates: error: argument --threshold: expected a cosine in "
                           "(0, 1]; got '1.5' (see facemargin duplicates --help)")


def test_duplicates_names_an_image_that_does_not_decode_and_refuses_a_folder_as_out(trained, tmp_path, capsys):
    _, _, export = trained
    folder = tmp_path / "faces"
    for name in ("John_Salley", "John_Simm"):
        (folder / name).mkdir(parents=True)
        for image in sorted(os.listdir(os.path.join(FACES, name)))[:3]:
            (folder / name / image).write_bytes(open(os.path.join(FACES, name, image), "rb").read())
    broken = sorted((folder / "John_Simm").iterdir())[0]
    broken.write_bytes(b"this is not an image")
    groups = tmp_path / "groups.txt"
    assert cli.main(["duplicates", "--model", export, "--images", str(folder), "--out", str(groups)]) == 0
    captured = capsys.readouterr()
    assert f"warning: 1 image(s) could not be decoded and were left out: {broken} (" in captured.err
    assert "of the 2 identities" in captured.out and groups.exists()
    assert cli.main(["duplicates", "--model", export, "--images", str(folder), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"facemargin duplicates: error: --out must be a file; got the "
                                               f"folder {str(tmp_path)!r}")
    missing = str(tmp_path / "none.rec")
    assert cli.main(["duplicates", "--model", export, "--images", missing, "--out", str(groups)]) == 2
    assert capsys.readouterr().err.strip() == ("facemargin duplicates: error: --images must be an existing "
                                               f"RecordIO .rec file; got {missing!r} (no such file)")
