"""benchmarks/quality.py on a tiny folder, so that the quality benchmark cannot rot."""

import importlib.util
import json
import os

import keras
import numpy as np
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
                            "--flip-test", "--out", str(out)])
    # --flip-test adds default+flip (the same training embedded with `embed --flip`), not plain+flip
    assert [r["row"] for r in results] == ["plain_softmax", "default", "default+flip"]
    for r in results:
        assert r["exit"] == 0 and 0 <= r["auc"] <= 1 and 0 <= r["tar_1e2"] <= 1 and r["seconds"] > 0
        assert r["peak_mib"] > 100
    table = (out / "table.md").read_text()
    assert "plain_keras.py --head softmax" in table and "facemargin train --data TRAIN" in table
    assert "| default+flip " in table and "facemargin embed --flip" in table
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["epochs"] == 1 and len(saved["results"]) == 3
    # the machine and versions, since the same seed trains another model on another CPU
    machine = saved["machine"]
    assert machine["packages"]["keras"] == keras.__version__ and machine["cpus"] == os.cpu_count()
    header = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# quality:")]
    assert machine["cpu"] in header[0] and f"keras {keras.__version__}" in header[0]
    run = out / "runs" / "default-seed0"
    plain, flipped = np.load(run / "embeddings.npz"), np.load(run / "embeddings_flip.npz")
    assert list(plain["paths"]) == list(flipped["paths"])
    assert not np.allclose(plain["embeddings"], flipped["embeddings"], atol=1e-5)  # the mirrors count


def write_embeddings(path, paths, embeddings):
    np.savez(path, embeddings=embeddings.astype(np.float32), paths=np.array(paths),
             corrupt=np.zeros(len(paths), bool), reasons=np.array([""] * len(paths)))


def loop_auc(genuine, impostor):
    """P(genuine score > impostor score) + half the ties, over every pair of the two."""
    total = 0.0
    for g in genuine:
        for i in impostor:
            total += 1.0 if g > i else 0.5 if g == i else 0.0
    return total / (len(genuine) * len(impostor))


def test_fuse_scores_each_file_and_the_mean_of_their_cosines(tmp_path):
    quality = load()
    _, unseen = quality.split_identities(FACES, 3, 2, seed=0)
    paths = sorted(os.path.join(FACES, n, f) for n in unseen for f in os.listdir(os.path.join(FACES, n)))
    rng = np.random.default_rng(0)
    identity = np.array([unseen.index(os.path.basename(os.path.dirname(p))) for p in paths])
    files, tables = [], []
    for k in range(2):
        centres = rng.normal(size=(2, 8))
        table = centres[identity] + 1.5 * rng.normal(size=(len(paths), 8))
        order = rng.permutation(len(paths))  # stored in another order than the protocol's
        files.append(str(tmp_path / f"e{k}.npz"))
        write_embeddings(files[-1], [paths[i] for i in order], table[order])
        tables.append(table)
    out = tmp_path / "q"
    results = quality.main(["--data", FACES, "--train-identities", "3", "--unseen", "2",
                            "--out", str(out), "--fuse", *files])
    assert [r["row"] for r in results] == [*files, "fused"]
    a, b, same = quality.verification_pairs(
        sorted(os.path.join(out, "unseen", n, f) for n in unseen for f in os.listdir(os.path.join(FACES, n))), 0)
    for k, expected in enumerate([[0], [1], [0, 1]]):
        scores = []
        for i, j in zip(a, b, strict=True):
            cosines = [float(np.dot(tables[t][i], tables[t][j]) /
                             (np.linalg.norm(tables[t][i]) * np.linalg.norm(tables[t][j]))) for t in expected]
            scores.append(sum(cosines) / len(cosines))
        scores = np.array(scores)
        assert results[k]["auc"] == pytest.approx(loop_auc(scores[same], scores[~same]), abs=1e-6)
    assert results[2]["auc"] not in (results[0]["auc"], results[1]["auc"])
    assert (out / "fuse.md").read_text().startswith("| embeddings |")


def test_fuse_refuses_a_missing_file_and_another_split_in_one_line(tmp_path, capsys):
    quality = load()
    common = ["--data", FACES, "--train-identities", "3", "--unseen", "2", "--out", str(tmp_path / "q")]
    with pytest.raises(SystemExit):
        quality.main([*common, "--fuse", str(tmp_path / "none.npz")])
    assert "argument --fuse: expected embeddings.npz files of earlier runs; got" in capsys.readouterr().err
    other = str(tmp_path / "other.npz")
    write_embeddings(other, [os.path.join(FACES, "x.png")], np.ones((1, 4)))
    with pytest.raises(SystemExit):
        quality.main([*common, "--fuse", other])
    err = capsys.readouterr().err
    assert "lacks finite embeddings of this split's unseen images" in err and "Traceback" not in err


def test_misses_lists_the_errors_at_the_strictest_threshold(tmp_path, capsys):
    quality = load()
    data = tmp_path / "ids"  # 61 identities x 4 "vendors": --misses reads names, never pixels
    vendors = ["apple.png", "facebook.png", "google.png", "twitter.png"]
    for k in range(61):
        os.makedirs(data / f"id{k:02d}")
        for v in vendors:
            (data / f"id{k:02d}" / v).write_bytes(b"")
    _, unseen = quality.split_identities(str(data), 1, 60, seed=0)
    paths = sorted(str(data / n / v) for n in unseen for v in vendors)
    rng = np.random.default_rng(1)
    identity = np.array([unseen.index(os.path.basename(os.path.dirname(p))) for p in paths])
    table = rng.normal(size=(60, 16))[identity] + 1.2 * rng.normal(size=(len(paths), 16))
    npz = str(tmp_path / "e.npz")
    write_embeddings(npz, paths, table)
    out = tmp_path / "q"
    result = quality.main(["--data", str(data), "--train-identities", "1", "--unseen", "60", "--out", str(out),
                           "--misses", npz])
    a, b, same = quality.verification_pairs(paths, 0)
    scores = np.array([float(np.dot(table[i], table[j]) / (np.linalg.norm(table[i]) * np.linalg.norm(table[j])))
                       for i, j in zip(a, b, strict=True)])
    impostors = [s for s, g in zip(scores, same, strict=True) if not g]
    # the lowest threshold among the scores that accepts at most 1e-3 of the impostors
    threshold = min(t for t in scores if sum(s >= t for s in impostors) <= 1e-3 * len(impostors))
    accepted = sorted(((s, i, j) for s, i, j, g in zip(scores, a, b, same, strict=True) if not g and s >= threshold),
                      reverse=True)
    assert len(accepted) == 3  # 3,600 impostors
    name = [f"{os.path.basename(os.path.dirname(p))}/{os.path.basename(p)}" for p in paths]
    assert [(r["a"], r["b"]) for r in result["impostors_accepted"]] == [(name[i], name[j]) for _, i, j in accepted]
    assert [r["score"] for r in result["impostors_accepted"]] == pytest.approx([s for s, _, _ in accepted], abs=1e-6)
    rejected = [(i, j) for s, i, j, g in zip(scores, a, b, same, strict=True) if g and s < threshold]
    assert result["genuine_rejected"] == len(rejected) and result["genuine"] == 360
    assert result["tar"] == pytest.approx(1 - len(rejected) / 360, abs=1e-9)
    by_files = {}
    for i, j in rejected:
        key = " & ".join(sorted((os.path.basename(paths[i]), os.path.basename(paths[j]))))
        by_files[key] = by_files.get(key, 0) + 1
    assert result["rejected_by_file_names"] == by_files
    assert sum(result["rejected_by_identity"].values()) == len(rejected)
    text = (out / "misses.md").read_text()
    assert text.startswith(f"# {npz} at FAR=1e-3: threshold") and name[accepted[0][1]] in text
    assert json.loads((out / "misses.json").read_text())["genuine_rejected"] == len(rejected)
    with pytest.raises(SystemExit):
        quality.main(["--data", str(data), "--train-identities", "1", "--unseen", "60", "--out", str(out),
                      "--misses", str(tmp_path / "none.npz")])
    err = capsys.readouterr().err
    assert "argument --misses: expected embeddings.npz files of earlier runs; got" in err and "Traceback" not in err
