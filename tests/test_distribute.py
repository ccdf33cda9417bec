"""tf.distribute: MirroredStrategy over two logical CPUs, and two worker processes on 127.0.0.1.

The distributed runs happen in subprocesses (tests/distributed_script.py): logical devices and
a multi-worker strategy must be set up before TensorFlow starts, which in the test process it
already has. Each compares with a single-process run on the same global batch.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "distributed_script.py")
FACES = os.path.join(HERE, "data", "faces")
TIMEOUT = 600


def _env(**extra):
    root = os.path.dirname(HERE)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _run(args, **env):
    done = subprocess.run([sys.executable, SCRIPT, *args], env=_env(**env), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(args, tmp_path, workers=2):
    """Starts `workers` processes of one cluster; returns their (returncode, output)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(workers)]}
    procs = []
    for i in range(workers):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        log = open(tmp_path / f"worker{i}.log", "w+")
        procs.append((subprocess.Popen([sys.executable, SCRIPT, *args(i)], env=_env(TF_CONFIG=config),
                                       stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    try:
        for proc, _ in procs:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.seek(0)
            results.append((proc.returncode, log.read()))
            log.close()
    for code, output in results:
        assert code == 0, output[-4000:]
    return results


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "single.npz"
    _run(["single", str(out)])
    return dict(np.load(out))


def _check_matches_single(got, single):
    assert int(got["replicas"]) == 2
    for name in ("adaface", "curricularface", "adacos", "elasticface_plus"):
        assert bool(got[f"{name}_local_copies_agree"]), name
    for key, value in single.items():
        if key == "replicas" or key.startswith("triplet_local"):  # differs by design
            continue
        if key.startswith("partial_fc") and "partial_fc_error" in got:
            continue
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    # The step moved the weights, and gathering mattered: local-only triplets give another loss.
    assert abs(float(got["triplet_loss"]) - float(got["triplet_local_loss"])) > 1e-3


def test_single_process_step_moves_the_weights(single):
    assert int(single["replicas"]) == 1
    for name in ("arcface", "triplet", "adaface", "curricularface", "adacos", "elasticface_plus"):
        assert np.isfinite(single[f"{name}_loss"]) and single[f"{name}_loss"] > 0
    # One row per input: the replicated runs must match it (`_check_matches_single`).
    assert single["arcface_embed"].shape == (11, 4)


def test_mirrored_two_cpus_first_step_equals_single_process(single, tmp_path):
    out = tmp_path / "mirrored.npz"
    _run(["mirrored", str(out)])
    got = dict(np.load(out))
    _check_matches_single(got, single)
    # Two replicas in one process would share Keras's add_loss list: refused, clearly.
    assert "PartialFC under tf.distribute needs one replica per process" in str(got["partial_fc_error"])


def test_two_workers_first_step_equals_single_process(single, tmp_path):
    _run_workers(lambda i: ["worker", str(tmp_path / f"w{i}.npz")], tmp_path)
    for i in range(2):
        got = dict(np.load(tmp_path / f"w{i}.npz"))
        assert "partial_fc_error" not in got and "partial_fc_loss" in got  # compared above
        _check_matches_single(got, single)


def test_two_worker_cli_training_writes_once_from_the_chief(tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"

    def args(i):
        return ["cli-worker", "--", "train", "--data", FACES, "--strategy", "multi_worker",
                "--run-dir", str(run), "--export", str(export), "--loss", "arcface", "--image-size", "32",
                "--embedding-dim", "16", "--batch-size", "10", "--epochs", "2", "--scale", "16",
                "--optimizer", "adam", "--learning-rate", "0.01"]

    results = _run_workers(args, tmp_path)
    assert "exported the embedding model" in results[0][1]
    assert "exported the embedding model" not in results[1][1]  # worker 1 wrote to a temp dir
    rows = (run / "log.csv").read_text().strip().splitlines()[1:]
    losses = [float(row.split(",")[1]) for row in rows]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
    assert json.loads((run / "config.json").read_text())["strategy"] == "multi_worker"
    assert json.loads((run / "backup" / "state.json").read_text())["epoch"] == 2
    assert (run / "model.keras").exists() and (export / "saved_model.pb").exists()
    assert sorted(os.listdir(run / "backup")) == ["backup-000001.weights.h5", "state.json"]


def test_mirrored_cli_training_on_two_cpus(tmp_path):
    run = tmp_path / "run"
    done = _run(["cli-mirrored", "--", "train", "--data", FACES, "--strategy", "mirrored",
                 "--loss", "triplet", "--classes-per-batch", "4", "--samples-per-class", "2",
                 "--run-dir", str(run), "--export", str(tmp_path / "export"), "--image-size", "32",
                 "--embedding-dim", "16", "--epochs", "1", "--optimizer", "adam",
                 "--learning-rate", "0.01"])
    assert "exported the embedding model" in done.stdout
    rows = (run / "log.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 1 and np.isfinite(float(rows[0].split(",")[1]))


# ---- in-process pieces ------------------------------------------------------------------------


def test_get_strategy_errors(monkeypatch):
    from keras_facemargin import distribute

    with pytest.raises(ValueError, match="strategy must be one of 'default', 'mirrored', 'multi_worker'; got 'tpu'"):
        distribute.get_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON; got '{not json'"):
        distribute.get_strategy("multi_worker")


def test_single_process_is_chief_and_writes_in_place(tmp_path):
    from keras_facemargin import distribute

    strategy = distribute.get_strategy("default")
    assert distribute.is_chief(strategy) and not distribute.is_multi_worker(strategy)
    with distribute.write_path(str(tmp_path / "a.keras"), strategy) as path:
        assert path == str(tmp_path / "a.keras")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    assert distribute.prepare_model(model, strategy) is model
    assert "train_step" not in vars(model)


def test_cli_rejects_an_unknown_strategy(tmp_path, capsys):
    from keras_facemargin import cli

    code = cli.main(["train", "--data", FACES, "--strategy", "parameter_server",
                     "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert "argument --strategy: invalid choice: 'parameter_server'" in capsys.readouterr().err


def _contexts(pipelines, replicas):
    import tensorflow as tf

    return [tf.distribute.InputContext(pipelines, i, replicas) for i in range(pipelines)]


@pytest.mark.parametrize("pipelines", [1, 2])
def test_classification_dataset_splits_each_global_batch_across_replicas(pipelines):
    from keras_facemargin import data

    index = data.ImageIndex.from_directory(FACES)
    kwargs = dict(image_size=(16, 16), augment=False, seed=3)
    whole = [(x.numpy(), y.numpy()) for x, y in data.classification_dataset(index, 8, **kwargs)]
    parts = [list(data.classification_dataset(index, 8, input_context=c, **kwargs))
             for c in _contexts(pipelines, 2)]
    # Each pipeline yields one batch of 4 per local replica and step, in replica order.
    replica_batches = [b for step in zip(*[iter(p) for p in parts]) for b in step] if pipelines == 2 \
        else parts[0]
    assert len(replica_batches) == 2 * len(whole)
    for step, (x, y) in enumerate(whole):
        first, second = replica_batches[2 * step], replica_batches[2 * step + 1]
        np.testing.assert_array_equal(np.concatenate([first[1], second[1]]), y)
        np.testing.assert_allclose(np.concatenate([first[0], second[0]]), x)


def test_classification_dataset_input_context_errors():
    from keras_facemargin import data

    index = data.ImageIndex.from_directory(FACES)
    with pytest.raises(ValueError, match="batch_size must be a multiple of the number of replicas"):
        data.classification_dataset(index, 9, input_context=_contexts(1, 2)[0])
    with pytest.raises(ValueError, match="input_context needs drop_remainder=True"):
        data.classification_dataset(index, 8, training=False, input_context=_contexts(1, 2)[0])


def test_label_masks_and_scores_against_candidates_match_loops(rng):
    from keras_facemargin.losses import pairwise

    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    embeddings = rng.normal(size=(8, 5))
    anchors = slice(4, 8)  # replica 1 of 2: anchors are candidates 4..7
    positive, negative = (np.asarray(m) for m in pairwise.label_masks(labels[anchors], labels, 4))
    scores = np.asarray(pairwise.pairwise_scores(embeddings[anchors], "squared_euclidean", embeddings))
    for i, a in enumerate(range(4, 8)):
        for j in range(8):
            assert positive[i, j] == (labels[a] == labels[j] and a != j)
            assert negative[i, j] == (labels[a] != labels[j])
            expected = -sum((embeddings[a, k] - embeddings[j, k]) ** 2 for k in range(5))
            assert scores[i, j] == pytest.approx(expected, abs=1e-9)


def test_partial_fc_centres_sharded_over_two_devices_train_like_unsharded(tmp_path):
    """Model parallel: keras.distribution.ModelParallel (JAX) splits the centres' class axis."""
    pytest.importorskip("jax")
    out = tmp_path / "mp.npz"
    script = os.path.join(HERE, "model_parallel_script.py")
    done = subprocess.run([sys.executable, script, str(out)], env=_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = np.load(out)
    assert int(got["devices"]) == 2
    np.testing.assert_array_equal(got["shard_shapes"], [[32, 16], [32, 16]])  # half the classes each
    np.testing.assert_allclose(got["sharded"], got["plain"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["sharded_losses"], got["plain_losses"], rtol=1e-5)
    assert got["plain_losses"][1] < got["plain_losses"][0]
