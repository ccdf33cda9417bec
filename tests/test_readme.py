"""The README's runnable code blocks run as they are written (on a copy of tests/data/faces)."""

import os
import re
import shutil
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACES = os.path.join(ROOT, "tests", "data", "faces")
MARK = "<!-- runnable: faces -->"


def runnable_blocks():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_runnable_blocks():
    assert len(runnable_blocks()) >= 1


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data pipelines and export")
@pytest.mark.parametrize("number", range(len(runnable_blocks())))
def test_a_readme_block_runs_on_a_tiny_folder(tmp_path, number):
    shutil.copytree(FACES, tmp_path / "faces", ignore=shutil.ignore_patterns("*.md"))
    script = tmp_path / "block.py"
    script.write_text(runnable_blocks()[number])
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    if "verification_report" in runnable_blocks()[number]:
        assert "AUC" in done.stdout and "10-fold accuracy" in done.stdout
    if "export_embedder" in runnable_blocks()[number]:
        assert (tmp_path / "saved_models" / "faces" / "saved_model.pb").exists()
