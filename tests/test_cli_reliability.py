"""What a user runs: `facemargin` as a subprocess (SIGKILL included) and through `main([...])`.

Every mistake is one line, `facemargin <command>: error: ...`, exit 2, before any work starts
and before anything is written; a killed run resumes with the same command.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_facemargin import cli
from keras_facemargin.training import latest_state

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data + SavedModel")

FACES = os.path.join(os.path.dirname(__file__), "data", "faces")
# The installed `facemargin` script: argument errors must come before TensorFlow loads.
SCRIPT = os.path.join(os.path.dirname(sys.executable), "facemargin")
# A margin loss, so that --batch-size and --scale apply (the automatic loss on 5 classes is a pair loss).
SMALL = ["--loss", "arcface", "--image-size", "32", "--backbone", "simple_cnn", "--embedding-dim", "8", "--batch-size", "5",
         "--optimizer", "adam", "--learning-rate", "0.001"]


def facemargin(*args, timeout=300, pythonpath=None):
    """Runs the `facemargin` command; returns (exit status, stdout, stderr)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    done = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)
    return done.returncode, done.stdout, done.stderr


def one_error_line(err, command="train"):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"facemargin {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- a killed run resumes -------------------------------------------------------------------


def log_epochs(run_dir):
    return [int(row["epoch"]) for row in csv.DictReader(open(os.path.join(run_dir, "log.csv")))]


def kill_after_three_epochs(command, run_dir):
    """Starts `command`, SIGKILLs it once `run_dir` holds a backup of 3 or more epochs."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    state = None
    while time.time() < deadline and process.poll() is None:
        state = latest_state(os.path.join(run_dir, "backup")) if os.path.isdir(run_dir) else None
        if state and state["epoch"] >= 3:
            break
        time.sleep(0.02)
    assert state and state["epoch"] >= 3, "no backup after 3 epochs appeared"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def test_sigkill_mid_run_then_the_same_command_finishes(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [SCRIPT, "train", "--data", FACES, *SMALL, "--epochs", "12", "--run-dir", run_dir]
    kill_after_three_epochs(command, run_dir)
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))

    code, out, err = facemargin(*command[1:])
    assert code == 0, err
    assert "Resuming" in err and "from its backup after" in err
    assert log_epochs(run_dir) == list(range(12))  # one row per epoch, none twice
    assert latest_state(os.path.join(run_dir, "backup"))["epoch"] == 12
    assert os.path.exists(os.path.join(run_dir, "model.keras"))
    assert os.path.exists(os.path.join(run_dir, "saved_model", "saved_model.pb"))
    assert "Traceback" not in err
    # It ends where an uninterrupted run ends: the resumed epochs drew the same orders and
    # augmentations (the kill came after 3 epochs or more, so epoch 3 onwards was redone).
    whole = str(tmp_path / "whole")
    code, _, err = facemargin(*command[1:-1], whole)
    assert code == 0, err
    expected = keras.models.load_model(os.path.join(whole, "model.keras")).get_weights()
    resumed = keras.models.load_model(os.path.join(run_dir, "model.keras")).get_weights()
    for a, b in zip(expected, resumed, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)

    # A finished run: the same command does no training and exports again.
    code, out, err = facemargin(*command[1:])
    assert code == 0, err
    assert "already finished its 12 epochs" in err
    assert log_epochs(run_dir) == list(range(12))
    # A larger --epochs extends it.
    extended = [*command[1:-4], "--epochs", "14", "--run-dir", run_dir]
    code, out, err = facemargin(*extended)
    assert code == 0, err
    assert log_epochs(run_dir) == list(range(14))
    assert json.load(open(os.path.join(run_dir, "config.json")))["epochs"] == 14


def test_keep_best_exports_the_best_epoch_of_a_killed_and_resumed_run(tmp_path):
    pairs = tmp_path / "pairs.txt"
    code, _, err = facemargin("pairs", "--images", FACES, "--out", str(pairs), "--num-pairs", "200")
    assert code == 0, err
    run_dir = str(tmp_path / "run")
    command = [SCRIPT, "train", "--data", FACES, *SMALL[:-2], "--learning-rate", "0.01", "--epochs", "10",
               "--val-pairs", str(pairs), "--val-root", FACES, "--keep-best", "val_pairs_tar@far=1e-3",
               "--run-dir", run_dir]
    kill_after_three_epochs(command, run_dir)

    code, out, err = facemargin(*command[1:])
    assert code == 0, err
    assert "Resuming" in err
    # 200 pairs hold 100 impostors: FAR=1e-3 cannot be measured on them, and the user is told.
    assert ("warning: --keep-best val_pairs_tar@far=1e-3: the validation pairs hold 100 impostor pairs, "
            "fewer than the 1000 that FAR=1e-3 needs") in err
    rows = list(csv.DictReader(open(os.path.join(run_dir, "log.csv"))))
    tars = [float(row["val_pairs_tar@far=1e-3"]) for row in rows]
    assert len(tars) == 10
    kept = int(np.argmax(tars)) + 1  # the first of equal bests
    assert f"Kept epoch {kept}, the best by val_pairs_tar@far=1e-3 ({tars[kept - 1]:.4f})" in err
    # The export holds that epoch: `evaluate` gives the AUC the run's validation logged for it.
    code, out, err = facemargin("evaluate", "--model", os.path.join(run_dir, "saved_model"), "--pairs",
                                str(pairs), "--root", FACES, "--out", str(tmp_path / "eval"))
    assert code == 0, err
    report = json.load(open(tmp_path / "eval" / "report.json"))
    assert report["pairs"]["auc"] == pytest.approx(float(rows[kept - 1]["val_pairs_auc"]), abs=1e-4)


# ---- mistakes are refused before any work, and leave nothing behind ---------------------------


@pytest.mark.parametrize("args, expected", [
    (["--epochs", "-3"], "--epochs must be an integer >= 1; got -3"),
    (["--epochs", "0"], "--epochs must be an integer >= 1; got 0"),
    (["--learning-rate", "-1"], "--learning-rate must be a finite number > 0; got -1.0"),
    (["--loss", "arcfase"], "argument --loss: invalid choice: 'arcfase'"),
    (["--mixed-precision", "float8"], "argument --mixed-precision: invalid choice: 'float8'"),
    (["--loss", "triplet", "--scale", "30"], "--scale does not apply to --loss triplet"),
    (["--val-pairs", "/no/such/pairs.txt"], "--val-pairs must be existing pair files"),
    (["--augment", "flip,rotate"], "--augment must be 'auto', 'none' or a list of"),
    (["--epochs", "three"], "argument --epochs: expected an integer; got 'three'"),
    (["--sample-rate", "0"], "--sample-rate must be a number in (0, 1]; got 0.0"),
    (["--epochs", "2", "--warmup-epochs", "2"], "--warmup-epochs must be less than --epochs (2); got 2.0"),
    (["--val-pairs", __file__, "--val-fraction", "0.2"],  # any existing file: refused before reading
     "--val-fraction holds out identities for validation when no --val-pairs is given; got both"),
    (["--keep-best", "val_auc"],
     "--keep-best val_auc needs validation pairs to choose an epoch by: give --val-fraction or --val-pairs"),
    (["--keep-best", "val_auc", "--val-fraction", "0.2", "--ema", "0.9"],
     "--keep-best keeps one epoch's weights, and --ema 0.9 replaces them with an average at the end"),
])
def test_bad_flags_are_one_line_before_tensorflow_loads(tmp_path, args, expected):
    # A `tensorflow` that cannot be imported comes first on the path: the check must not need it.
    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    run_dir = tmp_path / "run"
    code, out, err = facemargin("train", "--data", FACES, "--run-dir", str(run_dir), *args,
                                pythonpath=str(tmp_path / "fake"))
    assert code == 2
    assert expected in one_error_line(err)
    assert "TensorFlow was imported" not in err
    assert not run_dir.exists()


def test_config_file_mistakes_are_one_line(tmp_path):
    cases = {
        "string.yaml": ("epochs: \"1\"\n", "epochs must be an integer >= 1; got '1' (a string)"),
        "syntax.yaml": ("epochs: [1\nloss: arcface\n", "is not valid YAML at line"),
        "unknown.yaml": ("epoch: 3\n", "has unknown keys ['epoch']"),
        "list.yaml": ("- 1\n- 2\n", "must hold a mapping of settings; got a list"),
        "bad.json": ("{\"epochs\": }", "is not valid JSON"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = facemargin("train", "--data", FACES, "--config", str(tmp_path / name),
                                  "--run-dir", str(tmp_path / "run"))
        assert code == 2, name
        assert expected in one_error_line(err), (name, err)
    code, _, err = facemargin("train", "--data", FACES, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2
    assert "--config must be an existing YAML or JSON file" in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_a_failed_start_does_not_lock_its_run_folder(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--data", FACES, *SMALL[:-6], "--batch-size", "1000", "--epochs", "1",
                     "--run-dir", run_dir]) == 2
    assert "--batch-size must be <= the 55 training images of --data; got 1000" in capsys.readouterr().err
    assert not os.path.exists(run_dir)
    assert cli.main(["train", "--data", FACES, *SMALL, "--epochs", "1", "--run-dir", run_dir]) == 0
    saved = json.load(open(os.path.join(run_dir, "config.json")))
    assert saved["batch_size"] == 5 and saved["epochs"] == 1


def test_data_and_folder_mistakes_before_training(tmp_path, capsys):
    def error(*args):
        assert cli.main(["train", *args]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "--sample-rate 0.1 samples 1 of 5 classes per step" in error(
        "--data", FACES, *SMALL, "--sample-rate", "0.1", "--run-dir", str(tmp_path / "a"))
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in sorted(os.listdir(os.path.join(FACES, "John_Simm")))[:3]:
        (flat / name).write_bytes(open(os.path.join(FACES, "John_Simm", name), "rb").read())
    assert "put each identity's images in a sub-folder of its own" in error(
        "--data", str(flat), "--run-dir", str(tmp_path / "b"))
    file_in_the_way = tmp_path / "file"
    file_in_the_way.write_text("x")
    assert "--run-dir must be a folder that can be written" in error(
        "--data", FACES, *SMALL, "--run-dir", str(file_in_the_way / "run"))
    assert "--export must be a folder that can be written" in error(
        "--data", FACES, *SMALL, "--run-dir", str(tmp_path / "c"), "--export", str(file_in_the_way / "x"))
    assert error("--data", FACES, *SMALL, "--val-fraction", "0.4", "--keep-best", "val_acc", "--run-dir",
                 str(tmp_path / "d")).endswith(
        "--keep-best must be one of the validation metrics val_auc, val_eer, val_accuracy_10fold, "
        "val_best_accuracy, val_tar@far=1e-3, val_tar@far=1e-2; got 'val_acc'")
    for name in "abcd":
        assert not (tmp_path / name).exists()


def _read_only(folder):
    """Makes `folder` unwritable (chmod, and chattr +i for root); False if that is impossible here."""
    os.chmod(folder, 0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return True
    os.remove(folder / "probe")
    return False


def _writable_again(folder):
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    os.chmod(folder, 0o755)


def test_read_only_run_and_export_folders_are_refused_before_training(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _read_only(locked):
        _writable_again(locked)
        pytest.skip("no way to make a folder read-only on this file system")
    try:
        assert cli.main(["train", "--data", FACES, *SMALL, "--run-dir", str(locked / "run")]) == 2
        assert "--run-dir must be a folder that can be written" in capsys.readouterr().err
        assert cli.main(["train", "--data", FACES, *SMALL, "--run-dir", str(tmp_path / "run"),
                         "--export", str(locked)]) == 2
        assert "--export must be a folder that can be written" in capsys.readouterr().err
        assert not (tmp_path / "run").exists()
    finally:
        _writable_again(locked)


def test_a_diverging_run_stops_with_one_line(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    code = cli.main(["train", "--data", FACES, *SMALL[:-2], "--learning-rate", "1e30", "--schedule",
                     "constant", "--warmup-epochs", "0", "--epochs", "3", "--run-dir", run_dir])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("facemargin train: error: training diverged (loss ")
    assert "at epoch 1, step" in err
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))
    assert not os.path.exists(os.path.join(run_dir, "saved_model"))


def test_two_runs_do_not_share_an_export(tmp_path, capsys):
    a, b = str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")
    for run_dir in (a, b):
        assert cli.main(["train", "--data", FACES, *SMALL, "--epochs", "1", "--run-dir", run_dir]) == 0
    for run_dir in (a, b):  # each in its own run folder
        assert os.path.exists(os.path.join(run_dir, "saved_model", "saved_model.pb"))
    shared = str(tmp_path / "shared")
    assert cli.main(["train", "--data", FACES, *SMALL, "--epochs", "1", "--run-dir", a, "--export",
                     shared]) == 2  # a's configuration now names another export: refused
    capsys.readouterr()
    c = str(tmp_path / "c")
    assert cli.main(["train", "--data", FACES, *SMALL, "--epochs", "1", "--run-dir", c, "--export",
                     shared]) == 0
    d = str(tmp_path / "d")
    assert cli.main(["train", "--data", FACES, *SMALL, "--epochs", "1", "--run-dir", d, "--export",
                     shared]) == 2
    assert "holds the export of another run" in capsys.readouterr().err
    assert not os.path.exists(d)


def test_ignored_batch_size_with_a_pair_loss_is_a_warning(tmp_path, caplog):
    run_dir = str(tmp_path / "run")
    with caplog.at_level("WARNING"):
        assert cli.main(["train", "--data", FACES, *SMALL, "--loss", "triplet", "--classes-per-batch", "5",
                         "--samples-per-class", "2", "--epochs", "1", "--run-dir", run_dir]) == 0
    assert "--batch-size is ignored with the pair loss triplet" in caplog.text


# ---- evaluate and embed ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    assert cli.main(["train", "--data", FACES, *SMALL, "--epochs", "1", "--run-dir", run_dir]) == 0
    return run_dir


def test_models_that_are_not_models_are_named_as_such(tmp_path, capsys, trained):
    fake = tmp_path / "m.keras"
    fake.write_bytes(os.urandom(2000))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("John_Simm/a.jpg John_Simm/b.jpg 1\n")
    assert cli.main(["evaluate", "--model", str(fake), "--pairs", str(pairs)]) == 2
    assert f"--model {str(fake)!r} is not a valid Keras file" in capsys.readouterr().err
    garbage = tmp_path / "sm"
    garbage.mkdir()
    (garbage / "saved_model.pb").write_bytes(os.urandom(2000))
    assert cli.main(["evaluate", "--model", str(garbage), "--pairs", str(pairs)]) == 2
    assert f"--model {str(garbage)!r} is not a valid SavedModel" in capsys.readouterr().err


def test_evaluate_with_fewer_pairs_than_folds_adapts(tmp_path, capsys, trained):
    people = sorted(p for p in os.listdir(FACES) if os.path.isdir(os.path.join(FACES, p)))
    images = {p: sorted(os.listdir(os.path.join(FACES, p))) for p in people}
    lines = [f"{people[0]}/{images[people[0]][0]}\t{people[0]}/{images[people[0]][1]}\t1",
             f"{people[1]}/{images[people[1]][0]}\t{people[1]}/{images[people[1]][1]}\t1",
             f"{people[0]}/{images[people[0]][2]}\t{people[1]}/{images[people[1]][2]}\t0",
             f"{people[2]}/{images[people[2]][0]}\t{people[3]}/{images[people[3]][0]}\t0"]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", os.path.join(trained, "saved_model"), "--pairs", str(pairs),
                     "--root", FACES, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "pairs: 4 pairs are too few for 10 folds; the k-fold accuracy uses 4" in captured.err
    assert "pairs: TAR@FAR=0.0001 needs at least 10000 impostor pairs; got 2" in captured.err
    report = json.load(open(out / "report.json"))["pairs"]
    assert report["num_pairs"] == 4 and "1e-4" in report["unresolved_fars"]


def test_a_bin_with_undecodable_images_names_the_reason(tmp_path, capsys, trained):
    import pickle

    good = open(os.path.join(FACES, "John_Simm", sorted(os.listdir(os.path.join(FACES, "John_Simm")))[0]),
                "rb").read()
    images = [good, b"not a jpeg at all", good, good]
    path = tmp_path / "sets.bin"
    path.write_bytes(pickle.dumps((images, [True, False]), protocol=2))
    assert cli.main(["evaluate", "--model", os.path.join(trained, "saved_model"), "--pairs", str(path),
                     "--out", str(tmp_path / "eval")]) == 0
    err = capsys.readouterr().err
    assert "sets.bin[1]" in err
    assert "No such file" not in err and "InvalidArgumentError" in err


def test_embed_flags_corrupt_files_in_the_npz(tmp_path, trained, capsys):
    folder = tmp_path / "gallery"
    folder.mkdir()
    source = os.path.join(FACES, "John_Simm")
    for name in sorted(os.listdir(source))[:3]:
        (folder / name).write_bytes(open(os.path.join(source, name), "rb").read())
    (folder / "broken1.jpg").write_bytes(b"garbage" * 20)
    (folder / "broken2.jpg").write_bytes(b"")
    out = tmp_path / "emb.npz"
    assert cli.main(["embed", "--model", os.path.join(trained, "saved_model"), "--images", str(folder),
                     "--out", str(out)]) == 0
    data = np.load(out)
    corrupt = dict(zip((os.path.basename(p) for p in data["paths"]), data["corrupt"]))
    assert corrupt == {"broken1.jpg": True, "broken2.jpg": True, **{n: False for n in sorted(
        os.listdir(source))[:3]}}
    assert np.isnan(data["embeddings"][data["corrupt"]]).all()
    assert np.isfinite(data["embeddings"][~data["corrupt"]]).all()
    assert all(reason for reason in data["reasons"][data["corrupt"]])
    assert "2 image(s) could not be decoded" in capsys.readouterr().err


# ---- the field's own formats through the command line (issue 18) ------------------------------


def test_pack_then_train_on_the_rec_with_several_validation_sets(tmp_path, capsys):
    import pickle

    rec = str(tmp_path / "faces" / "train.rec")
    assert cli.main(["pack", FACES, rec]) == 0
    assert "packed 55 images of 5 identities" in capsys.readouterr().out
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "faces" / name).exists()
    people = sorted(p for p in os.listdir(FACES) if os.path.isdir(os.path.join(FACES, p)))
    images = {p: sorted(os.listdir(os.path.join(FACES, p))) for p in people}
    listed = tmp_path / "faces_pairs.txt"
    listed.write_text("".join(f"{p}/{images[p][0]}\t{p}/{images[p][1]}\t1\n{p}/{images[p][2]}\t"
                              f"{q}/{images[q][2]}\t0\n" for p, q in zip(people, people[1:] + people[:1])))
    encoded = []
    for p, q in zip(people, people[1:] + people[:1]):
        for a, b in ((images[p][3], images[p][4]), (images[p][5], images[q][5])):
            encoded += [open(os.path.join(FACES, p, a), "rb").read(),
                        open(os.path.join(FACES, p if b in images[p] else q, b), "rb").read()]
    with open(tmp_path / "agedb_30.bin", "wb") as f:
        pickle.dump((encoded, [True, False] * len(people)), f, protocol=2)
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--data", rec, *SMALL, "--epochs", "2", "--run-dir", run_dir, "--val-pairs",
                     str(listed), str(tmp_path / "agedb_30.bin"), "--val-root", FACES]) == 0
    rows = list(csv.DictReader(open(os.path.join(run_dir, "log.csv"))))
    assert len(rows) == 2
    for key in ("val_faces_pairs_auc", "val_agedb_30_auc", "val_agedb_30_accuracy_10fold"):
        assert all(0 <= float(row[key]) <= 1 for row in rows), key
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", os.path.join(run_dir, "saved_model"), "--pairs", str(listed),
                     str(tmp_path / "agedb_30.bin"), "--root", FACES, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "faces_pairs" in printed and "agedb_30" in printed and "10-fold acc" in printed
    report = json.load(open(out / "report.json"))
    assert set(report) == {"faces_pairs", "agedb_30"} and report["agedb_30"]["num_pairs"] == 10


def test_evaluate_ijb_on_a_miniature_release(tmp_path, capsys, trained):
    from test_ijb import mini_release

    root = mini_release(tmp_path)
    out = tmp_path / "ijb"
    assert cli.main(["evaluate-ijb", "--model", os.path.join(trained, "saved_model"), "--root", str(root),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TAR" in printed and "1e-" in printed
    report = json.load(open(out / "report.json"))
    assert report["num_pairs"] > 0
    assert (out / "roc.png").stat().st_size > 1000


def test_pack_mistakes_are_one_line(tmp_path, capsys):
    assert cli.main(["pack", FACES, str(tmp_path / "out.txt")]) == 2
    assert "OUT must be a .rec file" in capsys.readouterr().err
    assert cli.main(["pack", str(tmp_path / "missing"), str(tmp_path / "x.rec")]) == 2
    assert "FOLDER" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, name", [("saved_model", "sm"), ("onnx", "e.onnx"), ("litert", "e.tflite")])
def test_export_a_keras_file_in_every_format(tmp_path, capsys, trained, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
    out = str(tmp_path / name)
    assert cli.main(["export", "--model", os.path.join(trained, "model.keras"), "--format", fmt,
                     "--out", out]) == 0
    assert f"to {out} ({fmt})" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "saved_model.pb") if fmt == "saved_model" else out)
    if fmt == "saved_model":  # the same embeddings as the run's own export
        images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        ours = cli.load_embedder(out)(images.astype("float32"))
        theirs = cli.load_embedder(os.path.join(trained, "saved_model"))(images.astype("float32"))
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_pairs_writes_a_balanced_list_that_evaluate_reads(tmp_path, capsys, trained):
    out = tmp_path / "pairs.txt"
    assert cli.main(["pairs", "--images", FACES, "--out", str(out), "--num-pairs", "40"]) == 0
    lines = out.read_text().strip().splitlines()
    assert len(lines) == 40 and sum(line.endswith("\t1") for line in lines) == 20
    for line in lines:
        a, b, label = line.split("\t")
        same = a.split("/")[0] == b.split("/")[0]
        assert (label == "1") == same and a != b
    assert cli.main(["evaluate", "--model", os.path.join(trained, "saved_model"), "--pairs", str(out),
                     "--root", FACES, "--out", str(tmp_path / "eval")]) == 0


def test_tensorboard_writes_scalars_and_the_projector(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--data", FACES, *SMALL, "--epochs", "1", "--tensorboard", "--val-fraction",
                     "0.4", "--run-dir", str(run_dir)]) == 0
    board = run_dir / "tensorboard"
    assert list((board / "train").glob("events.out.tfevents.*"))
    projector = board / "projector"
    config = (projector / "projector_config.pbtxt").read_text()
    assert 'metadata_path: "metadata.tsv"' in config and "single_image_dim: 32" in config
    labels = (projector / "metadata.tsv").read_text().splitlines()
    assert len(labels) == 22 and len(set(labels)) == 2  # the 2 held-out identities' 22 images
    import tensorflow as tf

    vectors = tf.train.load_variable(str(projector / "embeddings.ckpt"), "embeddings/.ATTRIBUTES/VARIABLE_VALUE")
    assert vectors.shape == (22, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    from PIL import Image

    assert Image.open(projector / "sprite.png").size == (5 * 32, 5 * 32)
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert 0 <= float(rows[0]["val_auc"]) <= 1


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [SCRIPT, "train", "--data", FACES, *SMALL, "--epochs", "1000", "--run-dir", run_dir]
    # (so many epochs that the run cannot finish before the signal arrives)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        state = latest_state(os.path.join(run_dir, "backup")) if os.path.isdir(run_dir) else None
        if state and state["epoch"] >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "facemargin train: interrupted (the same command resumes from the last backup)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("loss", ["adaface", "magface", "curricularface", "subcenter_arcface", "elasticface",
                                  "adacos"])
def test_the_recent_margin_losses_train_from_the_command_line(tmp_path, loss):
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--data", FACES, *SMALL, "--loss", loss, "--epochs", "1", "--run-dir",
                     run_dir]) == 0
    rows = list(csv.DictReader(open(os.path.join(run_dir, "log.csv"))))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))
    export = os.path.join(run_dir, "saved_model")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    embeddings = cli.load_embedder(export)(images.astype("float32"))
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    if loss == "magface":  # the feature norm is served as a quality score
        import tensorflow as tf

        served = tf.saved_model.load(export).signatures["serving_default"](images=tf.constant(images))
        assert served["quality"].shape == (3,) and np.all(served["quality"].numpy() > 0)
        again = str(tmp_path / "again")  # `facemargin export` of the .keras serves it too
        assert cli.main(["export", "--model", os.path.join(run_dir, "model.keras"), "--out", again]) == 0
        served = tf.saved_model.load(again).signatures["serving_default"](images=tf.constant(images))
        assert served["quality"].shape == (3,)


def test_every_numeric_flag_parses_numbers_and_auto(tmp_path):
    import dataclasses

    from keras_facemargin import config as config_lib

    parser = cli._parser()
    for field in dataclasses.fields(config_lib.TrainConfig):
        kind = cli._kind(field)
        if kind not in (int, float):
            continue
        args = parser.parse_args(["train", config_lib.flag(field.name), "2"])
        assert getattr(args, field.name) == kind(2) and type(getattr(args, field.name)) is kind, field.name
        if getattr(config_lib.TrainConfig(), field.name) == config_lib.AUTO:
            assert getattr(parser.parse_args(["train", config_lib.flag(field.name), "auto"]), field.name) == "auto"


def test_the_other_commands_check_their_paths_before_tensorflow_loads(tmp_path):
    fake = tmp_path / "fake" / "tensorflow"  # importing TensorFlow would fail the command
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    work = tmp_path / "work"
    work.mkdir()
    file_in_the_way = work / "file"
    file_in_the_way.write_text("x")
    missing = str(work / "none")
    cases = [
        (["embed", "--model", missing, "--images", FACES, "--out", "e.npz"],
         "--model must be a SavedModel folder or a .keras file; got"),
        (["embed", "--model", str(file_in_the_way), "--images", missing, "--out", "e.npz"],
         "--images must be an existing folder; got"),
        (["embed", "--model", str(file_in_the_way), "--images", FACES, "--out", str(file_in_the_way / "e")],
         "--out's folder must be a folder that can be written"),
        (["pairs", "--images", FACES, "--out", str(file_in_the_way / "pairs.txt")],
         "--out's folder must be a folder that can be written"),
        (["pairs", "--images", FACES, "--out", str(work)], "--out must be a file; got the folder"),
        (["export", "--model", missing + ".keras", "--out", str(work / "x")],
         "--model must be a SavedModel folder or a .keras file; got"),
        (["export", "--model", str(file_in_the_way), "--format", "onnx", "--out", str(work)],
         "--out must be a file; got the folder"),
        (["pack", missing, str(work / "x.rec")], "FOLDER must be an existing folder"),
        (["evaluate", "--model", str(file_in_the_way), "--pairs", "p.txt", "--out", str(file_in_the_way / "r")],
         "--out must be a folder that can be written"),
    ]
    for argv, expected in cases:
        code, _, err = facemargin(*argv, pythonpath=str(tmp_path / "fake"))
        assert code == 2, (argv, err)
        assert expected in one_error_line(err, argv[0]), (argv, err)
    assert sorted(os.listdir(work)) == ["file"]  # nothing written


def test_a_run_prints_each_line_once(tmp_path):
    # "Assets written to ..." (TensorFlow's logger) and the per-epoch lines used to come twice.
    code, out, err = facemargin("train", "--data", FACES, *SMALL, "--epochs", "2", "--val-fraction", "0.4",
                                "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    lines = [line.strip() for line in (out + err).splitlines() if line.strip()]
    assert "Assets written to" not in out + err
    assert len(lines) == len(set(lines)), lines
    assert sum("exported the embedding model" in line for line in lines) == 1


def test_verbose_shows_the_whole_traceback_of_a_mistake(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["pairs", "--images", FACES, "--out", str(blocker / "pairs.txt")]
    code, _, err = facemargin(*argv)
    assert code == 2 and "Traceback" not in err
    code, _, err = facemargin("--verbose", *argv)
    assert code != 0 and "Traceback" in err and "--out's folder must be a folder that can be written" in err
