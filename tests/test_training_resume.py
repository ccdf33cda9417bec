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

import keras_facemargin as kf
from keras_facemargin.training import fit_resumable, latest_state

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="subprocess on TF")

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_script.py")


def test_sigkill_mid_epoch_then_same_command_resumes_and_finishes(tmp_path):
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, SCRIPT, run_dir], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    state = None
    while time.time() < deadline:  # wait for a backup taken in the middle of the second epoch
        state = latest_state(os.path.join(run_dir, "backup")) if os.path.isdir(run_dir) else None
        if state and state["epoch"] >= 1 and state["batch"] > 0:
            break
        time.sleep(0.05)
    assert state and state["epoch"] >= 1 and state["batch"] > 0, "no mid-epoch backup appeared"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    killed_at = state["epoch"]
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))

    again = subprocess.run([sys.executable, SCRIPT, run_dir], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "finished" in again.stdout
    assert f"after {latest_resume_epoch(again.stderr)} epoch(s)" in again.stderr
    assert latest_resume_epoch(again.stderr) >= killed_at
    rows = list(csv.DictReader(open(os.path.join(run_dir, "log.csv"))))
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 3 and set(epochs) == {0, 1, 2, 3}
    assert latest_state(os.path.join(run_dir, "backup"))["epoch"] == 4
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert isinstance(model.loss, kf.losses.CosFaceLoss)


def latest_resume_epoch(text):
    marker = "from its backup after "
    assert marker in text, text[-2000:]
    return int(text.rsplit(marker, 1)[1].split(" ")[0])


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), kf.heads.CosineHead(3)])
    model.compile(optimizer="adam", loss=kf.losses.NormFaceLoss())
    return model


def test_resume_restores_weights_and_optimizer_state(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    first = _model()
    fit_resumable(first, x, epochs=2, run_dir=str(tmp_path), y=y, verbose=0)
    second = _model()
    fit_resumable(second, x, epochs=2, run_dir=str(tmp_path), y=y, verbose=0)  # nothing left to do
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(second.optimizer.iterations) == int(first.optimizer.iterations) > 0


def test_a_different_configuration_is_refused(tmp_path):
    x = np.zeros((8, 4), "float32")
    y = np.arange(8) % 3
    fit_resumable(_model(), x, epochs=1, run_dir=str(tmp_path), config={"lr": 0.1}, y=y, verbose=0)
    with pytest.raises(ValueError, match=r"different configuration \(lr: 0.1 -> 0.2\)"):
        fit_resumable(_model(), x, epochs=1, run_dir=str(tmp_path), config={"lr": 0.2}, y=y, verbose=0)
    assert json.load(open(tmp_path / "config.json")) == {"lr": 0.1}


def test_resume_under_a_strategy_as_the_command_line_passes_one(tmp_path):
    # The CLI always hands fit_resumable a strategy; entering one scope() object twice crashed.
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    with strategy.scope():
        first = _model()
    fit_resumable(first, x, epochs=2, run_dir=str(tmp_path), strategy=strategy, y=y, verbose=0)
    with strategy.scope():
        second = _model()
    fit_resumable(second, x, epochs=3, run_dir=str(tmp_path), strategy=strategy, y=y, verbose=0)
    assert int(second.optimizer.iterations) == int(first.optimizer.iterations) * 3 // 2
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]


def test_a_diverged_run_keeps_its_last_finite_backup(tmp_path):
    from keras_facemargin.training import TrainingDiverged

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    model = _model()
    fit_resumable(model, x, epochs=1, run_dir=str(tmp_path), y=y, batch_size=8, verbose=0)
    finite_weights = [np.asarray(w).copy() for w in model.weights]
    saved_at = os.path.getmtime(tmp_path / "model.keras")
    bad = x.copy()
    bad[20] = np.nan
    with pytest.raises(TrainingDiverged, match=r"training diverged \(loss NaN at epoch 2, step 3\)"):
        fit_resumable(model, bad, epochs=3, run_dir=str(tmp_path), y=y, batch_size=8, shuffle=False,
                      verbose=0)
    assert latest_state(str(tmp_path / "backup"))["epoch"] == 1
    assert os.path.getmtime(tmp_path / "model.keras") == saved_at  # not replaced by a NaN model
    restored = _model()
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(latest_state(str(tmp_path / "backup"))["weights"])
    for a, b in zip(restored.weights, finite_weights):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_log_rows_after_the_last_backup_are_written_once(tmp_path):
    from keras_facemargin.training import _truncate_log

    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n0,1.5\n1,1.2\n2,1.1\n")
    _truncate_log(str(path), 2)  # killed after the row of epoch 2 but before its backup
    assert path.read_text() == "epoch,loss\n0,1.5\n1,1.2\n"
@pytest.mark.parametrize("name", ["adaface", "elasticface"])
def test_sigkill_then_resume_gives_the_statistics_of_an_uninterrupted_run(name, tmp_path):
    """A stateful loss's statistics (and ElasticFace's random state) live in the head's weights,
    so a run killed mid-epoch and resumed from its last epoch backup ends exactly where an
    uninterrupted run ends."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    done = subprocess.run([sys.executable, SCRIPT, whole, name, "epoch"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    process = subprocess.Popen([sys.executable, SCRIPT, split, name, "epoch"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    state = None
    while time.time() < deadline:
        state = latest_state(os.path.join(split, "backup")) if os.path.isdir(split) else None
        if state and state["epoch"] >= 1:
            break
        time.sleep(0.02)
    assert state and state["epoch"] >= 1, "no epoch backup appeared"
    time.sleep(0.3)  # into the next epoch (40 batches of >= 20 ms each)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert latest_state(os.path.join(split, "backup"))["epoch"] < 4
    again = subprocess.run([sys.executable, SCRIPT, split, name, "epoch"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "from its backup after" in again.stderr
    expected = keras.models.load_model(os.path.join(whole, "model.keras"))
    resumed = keras.models.load_model(os.path.join(split, "model.keras"))
    head = resumed.layers[-1]
    assert head.loss_state.variables_by_name
    for a, b in zip(expected.weights, resumed.weights, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=a.path)


class _Scripted(keras.callbacks.Callback):
    """Logs a given value of `key` at each epoch's end (None: no key) and records the weights."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values, self.weights_at = key, values, {}

    def on_epoch_end(self, epoch, logs=None):
        if self.values[epoch] is not None:
            logs[self.key] = self.values[epoch]
        self.weights_at[epoch + 1] = [np.asarray(w).copy() for w in self.model.weights]


@pytest.mark.parametrize("key, values, kept", [
    ("val_auc", [0.6, 0.9, 0.7, 0.8], 2),
    ("val_auc", [0.6, None, 0.9, 0.9, 0.5], 3),  # epochs without the key are passed over; a tie keeps the first
    ("val_eer", [0.3, 0.2, 0.25, 0.1, 0.4], 4),  # an EER is best lowest
    ("val_tar@far=1e-3", [float("nan"), 0.1, 0.05], 2),
])
def test_keep_best_ends_with_the_best_epochs_weights(tmp_path, key, values, kept):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    model = _model()
    script = _Scripted(key, values)
    fit_resumable(model, x, epochs=len(values), run_dir=str(tmp_path), y=y, verbose=0,
                  callbacks=[script], keep_best=key)
    assert not np.allclose(script.weights_at[kept][0], script.weights_at[len(values)][0])
    for a, b in zip(model.weights, script.weights_at[kept]):
        np.testing.assert_array_equal(np.asarray(a), b)
    saved = keras.models.load_model(tmp_path / "model.keras")
    for a, b in zip(saved.weights, script.weights_at[kept]):
        np.testing.assert_array_equal(np.asarray(a), b)
    best = json.load(open(tmp_path / "backup" / "best.json"))
    assert best["epoch"] == kept and best["value"] == values[kept - 1] and best["monitor"] == key
    assert sorted(f for f in os.listdir(tmp_path / "backup") if f.startswith("best-")) == [best["weights"]]
    # The backup keeps the last epoch's state, for resuming and extending.
    assert latest_state(str(tmp_path / "backup"))["epoch"] == len(values)


def test_keep_best_survives_a_resume_and_an_extension(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    values = [0.5, 0.9, 0.6, 0.7, 0.95, 0.1]
    first = _Scripted("val_auc", values)
    fit_resumable(_model(), x, epochs=3, run_dir=str(tmp_path), y=y, verbose=0, callbacks=[first],
                  keep_best="val_auc")
    # New processes resume the finished run and extend it: to epoch 4 (0.7, worse than epoch 2's
    # 0.9, which it must remember), then to 6 (epoch 5 is best).
    for epochs, kept in ((4, 2), (6, 5)):
        script = _Scripted("val_auc", values)
        model = _model()
        fit_resumable(model, x, epochs=epochs, run_dir=str(tmp_path), y=y, verbose=0, callbacks=[script],
                      keep_best="val_auc")
        recorded = first.weights_at[kept] if kept <= 3 else script.weights_at[kept]
        for a, b in zip(model.weights, recorded):
            np.testing.assert_array_equal(np.asarray(a), b)
        assert json.load(open(tmp_path / "backup" / "best.json"))["epoch"] == kept


def test_keep_best_without_the_metric_keeps_the_last_weights(tmp_path, caplog):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    model = _model()
    script = _Scripted("val_auc", [None, None])
    fit_resumable(model, x, epochs=2, run_dir=str(tmp_path), y=y, verbose=0, callbacks=[script],
                  keep_best="val_auc")
    for a, b in zip(model.weights, script.weights_at[2]):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert "No epoch logged val_auc; the model keeps its last weights." in caplog.text
