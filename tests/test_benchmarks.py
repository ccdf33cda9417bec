"""The benchmark scripts still run: each one's `--dry-run` (tiny sizes, one step), in a subprocess.

No timings are checked here (timings belong in BENCHMARKS.md); only that each script runs to its
end and prints its table.
"""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
FACES = os.path.join(ROOT, "tests", "data", "faces")
TORCH_PYTHON = os.path.join(BENCH, ".torch-venv", "bin", "python")

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data pipelines")


def run(script, *args, backend=None, python=sys.executable, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    if backend:
        env["KERAS_BACKEND"] = backend
    done = subprocess.run([python, os.path.join(BENCH, script), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{script} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@tensorflow_only
def test_bench_training_in_process():
    out = run("bench_training.py", "--dry-run")
    assert "CosineHead + ArcFaceLoss" in out and "SavedModel serving_default" in out


@tensorflow_only
def test_bench_training_vs_torch():
    """Our side through the worker protocol; PyTorch's too where benchmarks/.torch-venv exists."""
    out = run("bench_training.py", "--vs-torch", "--dry-run", "--configs", "tf")
    assert "\ntf " in out and "ours/theirs" in out
    if os.path.exists(TORCH_PYTHON):
        assert "\ntorch " in out


@pytest.mark.skipif(not os.path.exists(TORCH_PYTHON), reason="no benchmarks/.torch-venv (--setup-torch)")
def test_arcface_torch_step():
    out = run("arcface_torch_step.py", "--dry-run", python=TORCH_PYTHON)
    assert "dry run: one step, loss" in out


def test_bench_gpu_runs_on_jax_without_tensorflow():
    """The GPU script's path never imports TensorFlow (the device image has none)."""
    pytest.importorskip("jax")
    out = run("bench_gpu.py", "--dry-run", "--no-tensorflow", backend="jax")
    assert "CosineHead + ArcFaceLoss" in out and "IR-ResNet-18 training step" in out
    assert "# tensorflow imported: no" in out


def test_gpu_sh_dry_run():
    pytest.importorskip("jax")
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", os.path.join(BENCH, "gpu.sh"), "--dry-run", "--skip-heads"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "# tensorflow imported: no" in done.stdout


def test_bench_cli():
    out = run("bench_cli.py", "--dry-run")
    assert "facemargin --help:" in out


@tensorflow_only
def test_bench_data():
    out = run("bench_data.py", "--dry-run", "--data", FACES)
    assert "ours + translate,zoom,contrast" in out and "input wait" in out
    out = run("bench_data.py", "--dry-run", "--data", FACES, "--pipelines", "ours", "--epochs-per-round", "2",
              "--wait-backbone", "none", "--fresh-rounds", "1")
    decode, fresh = out.split("(5) each pipeline alone in a fresh process")
    for part in (decode, fresh):
        rows = {line.split()[0]: line.split() for line in part.splitlines()
                if line.startswith("    ") and "img" not in line and "," not in line.split()[0]}
        assert set(rows) >= {"keras", "ours"} and "ours P×K" not in part
        assert float(rows["ours"][-2]) > 0  # a ratio against keras
    assert "input wait" not in out


@tensorflow_only
def test_bench_eval():
    out = run("bench_eval.py", "--dry-run", "--data", FACES)
    assert "verification_report" in out and "model.predict" in out
    rows = [line for line in out.splitlines() if line.startswith("  evaluate_pair_sets")]
    assert len(rows) == 4  # Keras model and SavedModel, without and with the flip test
    for row in rows:  # ratios to the baseline and to the control without autotuning
        ratio, control = (float(v) for v in row[46:].split()[2:4])
        assert ratio > 0 and control > 0
    assert out.count("tf.data autotuning off (control)") == 2
    fixed = [line for line in out.splitlines() if "costs nothing): " in line]
    assert len(fixed) == 2 and all(float(line.split(": ")[1].split(" ms")[0]) > 0 for line in fixed)


@tensorflow_only
def test_bench_heads():
    assert "CosineHead + arcface" in run("bench_heads.py", "--dry-run")


@tensorflow_only
def test_bench_pair_losses():
    out = run("bench_pair_losses.py", "--dry-run")
    assert "circle" in out and "failed" not in out


@tensorflow_only
def test_bench_partial_fc():
    assert "PartialFC" in run("bench_partial_fc.py", "--dry-run")


def test_bench_ijb():
    assert "score_template_pairs" in run("bench_ijb.py", "--dry-run")


@tensorflow_only
def test_quality(tmp_path):
    """plain_keras.py and `facemargin train`/`embed` as subprocesses, on the faces (loss_table.py
    is run by tests/test_experiments.py)."""
    out = run("quality.py", "--dry-run", "--data", FACES, "--out", str(tmp_path))
    assert "| plain_softmax |" in out and "| default " in out and "FAILED" not in out
