"""`make demo`'s script on real data (--data) so that it cannot rot; the digits default runs in `make demo`."""

import importlib.util
import os

import keras
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data + SavedModel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_on_an_image_folder(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "examples", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.main(["--data", os.path.join(ROOT, "tests", "data", "faces"), "--image-size", "32",
               "--epochs", "1", "--out", str(tmp_path / "export"), "--plot", str(tmp_path / "roc.png"),
               "--work", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert "AUC" in printed and "max |difference|" in printed
    assert (tmp_path / "export" / "saved_model.pb").exists()
    assert (tmp_path / "roc.png").stat().st_size > 1000
