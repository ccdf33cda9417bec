"""benchmarks/quality.py on a tiny folder, so that the quality benchmark cannot rot."""

import importlib.util
import json
import os

import keras
import pytest

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data + SavedModel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACES = os.path.join(ROOT, "tests", "data", "faces")


def load():
    spec = importlib.util.spec_from_file_location("quality", os.path.join(ROOT, "benchmarks", "quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_pairs_every_genuine_pair_and_ten_times_as_many_impostors():
    quality = load()
    paths = [os.path.join("x", f"id{i // 4}", f"{i % 4}.png") for i in range(40)]  # 10 × 4
    a, b, same = quality.verification_pairs(paths, seed=0)
    assert same.sum() == 10 * 6 and (~same).sum() == 600
    identity = [os.path.dirname(p) for p in paths]
    assert all((identity[i] == identity[j]) == s for i, j, s in zip(a, b, same, strict=True))
    assert len({(min(i, j), max(i, j)) for i, j in zip(a, b, strict=True)}) == len(same)  # distinct
    train, unseen = quality.split_identities(FACES, 3, 2, seed=0)
    assert len(train) == 3 and len(unseen) == 2 and not set(train) & set(unseen)


def test_quality_runs_the_plain_script_and_the_command_line_on_a_tiny_folder(tmp_path, capsys):
    quality = load()
    out = tmp_path / "q"
    results = quality.main(["--data", FACES, "--train-identities", "3", "--unseen", "2", "--epochs", "1",
                            "--image-size", "32", "--seeds", "0", "--rows", "plain_softmax,default",
                            "--out", str(out)])
    assert [r["row"] for r in results] == ["plain_softmax", "default"]
    for r in results:
        assert r["exit"] == 0 and 0 <= r["auc"] <= 1 and 0 <= r["tar_1e2"] <= 1 and r["seconds"] > 0
        assert r["peak_mib"] > 100
    table = (out / "table.md").read_text()
    assert "plain_keras.py --head softmax" in table and "facemargin train --data TRAIN" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["epochs"] == 1 and len(saved["results"]) == 2
