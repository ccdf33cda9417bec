"""Training that survives being killed: atomic backups, resume with the same command, run folders.

A run folder holds `config.json` (the resolved configuration), `backup/` (the latest training
state: weights and optimizer), `log.csv` (one row per finished epoch) and, at the end,
`model.keras`; with `keep_best`, also `backup/best.json` and the weights of the best epoch.
Running the same command again resumes from the latest state; a different configuration in the
same folder is refused rather than mixed in, except a larger number of epochs, which extends the
run.
"""

import contextlib
import csv
import json
import logging
import math
import os
import tempfile

import keras

logger = logging.getLogger(__name__)

_STATE = "state.json"
_BEST = "best.json"
_LOG = "log.csv"


class TrainingDiverged(RuntimeError):
    """Raised by `fit_resumable` when the loss became NaN or infinite; no state was saved after it."""


def atomic_write_text(path, text):
    """Writes `text` to `path` through a temporary file and a rename: never a half-written file.

    The temporary file is in the same folder (so the rename is atomic) and is synced to disk
    before the rename; on any error it is removed and the error raised, leaving `path` as it was.

    Args:
        path: the file to write; its folder must exist.
        text: the whole new content.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_model_atomically(model, path):
    """`model.save(path)` through a temporary file and a rename: never a half-written file.

    Args:
        model: the `keras.Model` to save.
        path: the `.keras` file to write; its folder is created if needed.

    Returns:
        `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def _batch_norm_layers(layer):
    found = []
    for sub in getattr(layer, "layers", ()):
        if isinstance(sub, keras.layers.BatchNormalization):
            found.append(sub)
        else:
            found += _batch_norm_layers(sub)
    return found


def recalibrate_batch_norm(model, data, steps=None):
    """Recomputes the moving statistics of `model`'s BatchNormalization layers for its weights.

    After a moving average of the weights (`use_ema`, `--ema`) replaces them, the moving means
    and variances still belong to the raw weights. This runs the model in training mode over
    `data` and sets every trainable BatchNormalization layer's statistics to the plain average
    of the batch means and batch variances it saw (each layer's `momentum` set to k/(k + 1) at
    the k-th batch, counted from 0, and restored after), as PyTorch's `update_bn` does for
    stochastic weight averaging. The weights are not changed; frozen layers keep theirs.

    Args:
        model: a built Keras model (the embedder: images to embeddings).
        data: an iterable of batches: image batches, or tuples whose first item is (or starts
            with) the images, such as the `(images, labels)` of a training `tf.data.Dataset`.
        steps: at most this many batches; None: all of `data`.

    Returns:
        The number of batches used, >= 1 (0 when the model has no trainable BatchNormalization
        layer; `data` is then not read).

    Raises:
        ValueError: `steps` is not a positive integer or None, or `data` yields no batch (the
            statistics are then left as they were).
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1 or None; got {steps!r}")
    layers = [layer for layer in _batch_norm_layers(model) if layer.trainable]
    if not layers:
        return 0

    def images(element):
        while isinstance(element, (tuple, list)):
            element = element[0]
        return element

    batches = iter(data)
    first = next(batches, None)
    if first is None:
        raise ValueError("data yielded no batch to recompute BatchNormalization's statistics on")
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(keras.ops.zeros(layer.moving_mean.shape, layer.moving_mean.dtype))
        layer.moving_variance.assign(keras.ops.ones(layer.moving_variance.shape, layer.moving_variance.dtype))
    seen = 0
    try:
        element = first
        while element is not None:
            for layer in layers:
                layer.momentum = seen / (seen + 1)
            model(images(element), training=True)
            seen += 1
            element = None if steps is not None and seen >= steps else next(batches, None)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return seen


def latest_state(backup_dir):
    """The newest complete backup that `TrainingBackup` wrote in `backup_dir`.

    Args:
        backup_dir: the folder of the backups.

    Returns:
        A dict: `"epoch"` (completed epochs), `"batch"` (batches of the next epoch done, 0 for a
        backup at an epoch's end), `"weights"` (the path of the weights file, with the optimizer's
        state) and `"counter"` (the backup's number); None when there is no backup yet.
    """
    path = os.path.join(backup_dir, _STATE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        state = json.load(f)
    state["weights"] = os.path.join(backup_dir, state["weights"])
    return state


def resume_epoch(run_dir):
    """The epoch that `fit_resumable` starts `run_dir`'s run at.

    A pipeline that draws a new order every epoch (`pk_dataset`, `classification_dataset`) starts
    there too (`initial_epoch=`), so that a resumed run sees what an uninterrupted one would.

    Args:
        run_dir: the run folder given to `fit_resumable`.

    Returns:
        The number of epochs its newest backup holds, or 0 without one.
    """
    state = latest_state(os.path.join(run_dir, "backup"))
    return 0 if state is None else state["epoch"]


class TrainingBackup(keras.callbacks.Callback):
    """Writes the training state (weights with the optimizer's state) every epoch or n batches.

    Each backup goes to a new file; `state.json`, rewritten by an atomic rename only after that
    file is complete, names the newest one, so a process killed at any moment leaves a loadable
    state behind. Older files are removed after the switch.

    Args:
        backup_dir: folder of the backups.
        save_freq: `"epoch"`, or an integer number of batches.
    """

    def __init__(self, backup_dir, save_freq="epoch"):
        super().__init__()
        if save_freq != "epoch" and (not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive integer; got {save_freq!r}")
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self._epoch = 0
        self._batches = 0
        self._counter = 0

    def on_train_begin(self, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        state = latest_state(self.backup_dir)
        self._counter = state["counter"] + 1 if state else 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches % self.save_freq == 0 and _finite_loss(logs):
            self._save(completed_epochs=self._epoch, batch=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        # An epoch cut short by a diverged loss is not a state to resume from.
        if _finite_loss(logs):
            self._save(completed_epochs=epoch + 1, batch=0)

    def _save(self, completed_epochs, batch):
        name = f"backup-{self._counter:06d}.weights.h5"
        self.model.save_weights(os.path.join(self.backup_dir, name))
        state = {"epoch": completed_epochs, "batch": batch, "weights": name, "counter": self._counter}
        atomic_write_text(os.path.join(self.backup_dir, _STATE), json.dumps(state))
        for old in os.listdir(self.backup_dir):
            if old.startswith("backup-") and old != name:
                os.remove(os.path.join(self.backup_dir, old))
        self._counter += 1


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best value of a logged metric, and puts them back
    in the model when training ends (as `EarlyStopping(restore_best_weights=True)` would, but
    without stopping, and kept on disk so that a killed run that resumes still knows its best).

    Each new best is written to a new file; `best.json`, rewritten by an atomic rename only after
    that file is complete, names it with its epoch and value, and older files are then removed.
    A run that resumes or is extended with more epochs goes on from the `best.json` it finds.
    Epochs without the metric in their logs (a validation callback that skips them) or with a
    loss that is not finite are passed over.

    Args:
        directory: folder of the files.
        monitor: the key in the epoch's logs, as a callback before this one writes it
            (`"val_tar@far=1e-3"`, `"val_auc"`, ...).
        mode: `"max"`, `"min"`, or `"auto"`: `"min"` for a key that ends in `eer` or `loss`,
            else `"max"`.
    """

    def __init__(self, directory, monitor, mode="auto"):
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be the name of a logged metric; got {monitor!r}")
        if mode not in ("auto", "max", "min"):
            raise ValueError(f"mode must be 'auto', 'max' or 'min'; got {mode!r}")
        if mode == "auto":
            mode = "min" if monitor.endswith(("eer", "loss")) else "max"
        self.directory = directory
        self.monitor = monitor
        self.mode = mode
        self.best = None

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        self.best = best_state(self.directory)
        if self.best is not None and self.best["monitor"] != self.monitor:
            logger.warning("%s: the best epoch kept there was chosen by %s; choosing again by %s.",
                           self.directory, self.best["monitor"], self.monitor)
            self.best = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not _finite_loss(logs) or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.best is not None and not (value > self.best["value"] if self.mode == "max"
                                          else value < self.best["value"]):
            return
        name = f"best-epoch-{epoch + 1:06d}.weights.h5"
        self.model.save_weights(os.path.join(self.directory, name))
        self.best = {"monitor": self.monitor, "mode": self.mode, "epoch": epoch + 1, "value": value,
                     "weights": name}
        atomic_write_text(os.path.join(self.directory, _BEST), json.dumps(self.best))
        for old in os.listdir(self.directory):
            if old.startswith("best-epoch-") and old != name:
                os.remove(os.path.join(self.directory, old))

    def on_train_end(self, logs=None):
        if self.best is None:
            logger.warning("No epoch logged %s; the model keeps its last weights.", self.monitor)
            return
        self.model.load_weights(os.path.join(self.directory, self.best["weights"]))
        logger.info("Kept epoch %d, the best by %s (%.4f).", self.best["epoch"], self.monitor,
                    self.best["value"])


def best_state(directory):
    """What `BestEpoch` kept in `directory`.

    Args:
        directory: the folder `BestEpoch` wrote to (`run_dir/backup` for `fit_resumable`).

    Returns:
        A dict with `"monitor"`, `"mode"`, `"epoch"` (1-based), `"value"` and `"weights"` (the
        file's name in `directory`); None when it kept nothing.
    """
    path = os.path.join(directory, _BEST)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _finite_loss(logs):
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, and remembers where.

    `fit_resumable` raises `TrainingDiverged` with that place; `TrainingBackup` saves nothing
    after it, so the latest backup is the last state with a finite loss.
    """

    def __init__(self):
        super().__init__()
        self.diverged = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.diverged is None and not _finite_loss(logs):
            self.diverged = (float(logs["loss"]), self._epoch + 1, batch + 1)
            self.model.stop_training = True

    def message(self):
        """What `TrainingDiverged` says, once `diverged` is set.

        Returns:
            A sentence with the loss, the epoch and the step where it diverged (both 1-based)
            and what to try.
        """
        loss, epoch, step = self.diverged
        return (f"training diverged (loss {'NaN' if math.isnan(loss) else loss} at epoch {epoch}, "
                f"step {step}); lower the learning rate or the scale, or use a warm-up")


def check_run_config(run_dir, config, write=True, may_change=("epochs",), name="run_dir"):
    """Saves `config` in `run_dir`, or refuses if the folder holds a run with another one.

    Args:
        run_dir: the run folder.
        config: a JSON-serialisable dict.
        write: save it (the chief); `False` only checks (the other workers of a multi-worker
            run, and checks before any work starts).
        may_change: keys whose value may differ from the saved one (a larger `epochs` extends a
            run); the saved configuration is then updated.
        name: what the messages call the folder (the command line's `--run-dir`).
    """
    path = os.path.join(run_dir, "config.json")
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    current = json.loads(text)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{name} {run_dir!r} holds a config.json that is not valid JSON "
                             f"({error}); use a new {name}") from None
        keys = sorted(k for k in set(saved) | set(current)
                      if saved.get(k) != current.get(k) and k not in may_change)
        if keys:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys)
            raise ValueError(
                f"{name} {run_dir!r} holds a run with a different configuration ({details}); "
                f"use a new {name}, or the same configuration to resume"
            )
        if saved == current or not write:
            return
    elif not write:
        return
    os.makedirs(run_dir, exist_ok=True)
    atomic_write_text(path, text + "\n")


def _truncate_log(path, epochs):
    """Keeps the rows of the first `epochs` epochs of a CSV log (rows written after the last
    backup by a process that was then killed are written again on resume)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    column = header.index("epoch") if "epoch" in header else 0
    kept = [row for row in body if row and row[column].isdigit() and int(row[column]) < epochs]
    if len(kept) != len(body):
        lines = [",".join(header)] + [",".join(row) for row in kept]
        atomic_write_text(path, "\n".join(lines) + "\n")


def fit_resumable(model, data, epochs, run_dir, config=None, save_freq="epoch", callbacks=(),
                  strategy=None, keep_best=None, **fit_kwargs):
    """`model.fit` that resumes from `run_dir` when the same run was interrupted.

    Args:
        model: a compiled Keras model.
        data: what `fit` takes as `x` (a `tf.data.Dataset`, or arrays with `y=` in fit_kwargs).
        epochs: total number of epochs of the run.
        run_dir: the run folder (see the module docstring).
        config: a JSON-serialisable dict describing the run (saved; checked on resume).
        save_freq: `"epoch"` or a number of batches between backups.
        callbacks: further Keras callbacks. They run before the CSV log and the backup, so
            the metrics they add to the logs (`val_auc`, ...) reach `log.csv`.
        strategy: the `tf.distribute.Strategy` the model was built under, or None. In a
            multi-worker run every worker resumes from the same backup (`run_dir` must be on a
            file system they share) and only the chief writes to `run_dir`.
        keep_best: a metric that `callbacks` log (`"val_tar@far=1e-3"`), or None. When given,
            the model ends with the weights of the epoch with its best value (`BestEpoch`,
            `mode="auto"`), and `model.keras` holds them; the backup keeps the last epoch's
            state, from which a run is resumed or extended.
        **fit_kwargs: passed on to `fit` (`steps_per_epoch`, `validation_data`, `verbose`, ...).

    Returns:
        The `History` of this process's part of the run.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (the run folder keeps the last
            finite backup, and no `model.keras` is written).
    """
    chief = True

    def scope():
        return contextlib.nullcontext()

    def write_path(path, strategy):
        return contextlib.nullcontext(path)

    if strategy is not None:  # TensorFlow only
        from keras_facemargin import distribute

        chief, scope, write_path = distribute.is_chief(strategy), strategy.scope, distribute.write_path
        distribute.prepare_model(model, strategy)
    check_run_config(run_dir, config or {}, write=chief)
    backup_dir = os.path.join(run_dir, "backup")
    log_path = os.path.join(run_dir, _LOG)
    state = latest_state(backup_dir)
    initial_epoch = 0
    if state is not None:
        with scope():
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(state["weights"])
        initial_epoch = state["epoch"]
        logger.warning("Resuming %s from its backup after %d epoch(s).", run_dir, initial_epoch)
    if chief:
        _truncate_log(log_path, initial_epoch)
    if initial_epoch >= epochs:
        logger.warning("%s already finished its %d epochs.", run_dir, epochs)
    guard = DivergenceGuard()
    # Every worker of a multi-worker run saves (saving may need collectives); only the chief
    # saves into run_dir.
    with write_path(backup_dir, strategy) as write_dir, scope():
        all_callbacks = [guard, *callbacks]
        if chief:
            all_callbacks.append(keras.callbacks.CSVLogger(log_path, append=True))
        # The best epoch is saved before the backup: a run killed between the two redoes that
        # epoch, rather than losing a best that its log.csv shows.
        if keep_best is not None:
            all_callbacks.append(BestEpoch(write_dir, keep_best))
        all_callbacks.append(TrainingBackup(write_dir, save_freq))
        history = model.fit(
            data, epochs=epochs, initial_epoch=initial_epoch, callbacks=all_callbacks, **fit_kwargs
        )
    if guard.diverged is not None:
        raise TrainingDiverged(guard.message())
    with write_path(os.path.join(run_dir, "model.keras"), strategy) as path:
        save_model_atomically(model, path)
    return history
