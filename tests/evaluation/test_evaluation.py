import csv
import json
import math

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keras_facemargin as kf
from keras_facemargin import evaluation as ev


def gaussian_scores(rng, n=400, separation=1.5, ties=False):
    labels = rng.integers(0, 2, size=n)
    scores = rng.normal(size=n) + separation * labels
    if ties:
        scores = np.round(scores, 1)
    return labels, scores


# ---- brute-force references: loops over every candidate threshold ------------------------------


def sweep(labels, scores):
    """(threshold, FAR, TAR) for 'accept when score >= t', t over +inf and every distinct score."""
    genuine = [s for s, y in zip(scores, labels) if y == 1]
    impostor = [s for s, y in zip(scores, labels) if y == 0]
    rows = []
    for t in [math.inf] + sorted(set(scores), reverse=True):
        far = sum(1 for s in impostor if s >= t) / len(impostor)
        tar = sum(1 for s in genuine if s >= t) / len(genuine)
        rows.append((t, far, tar))
    return rows


def ref_auc(labels, scores):
    genuine = [s for s, y in zip(scores, labels) if y == 1]
    impostor = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if g > i else 0.5 if g == i else 0.0 for g in genuine for i in impostor)
    return wins / (len(genuine) * len(impostor))


def ref_tar_at_far(labels, scores, target):
    ok = [(t, tar) for t, far, tar in sweep(labels, scores) if far <= target]
    return min(ok)[1]  # smallest threshold with FAR <= target


def ref_eer(labels, scores):
    rows = sweep(labels, scores)
    for (_, far0, tar0), (_, far1, tar1) in zip(rows, rows[1:]):
        d0, d1 = far0 - (1 - tar0), far1 - (1 - tar1)
        if d0 <= 0 <= d1:
            if d1 == d0:
                return far0
            return far0 + (-d0 / (d1 - d0)) * (far1 - far0)
    raise AssertionError("no crossing")


def ref_best(labels, scores):
    """Best accuracy and threshold, cuts at midpoints, ties to the highest threshold."""
    values = sorted(set(scores), reverse=True)
    cuts = [values[0] + 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] - 1.0]
    best = (-1.0, None)
    for t in cuts:
        accuracy = sum((s >= t) == (y == 1) for s, y in zip(scores, labels)) / len(scores)
        if accuracy > best[0]:
            best = (accuracy, t)
    return best


def ref_kfold(labels, scores, folds):
    n = len(scores)
    fold_of = [i * folds // n for i in range(n)]
    accuracies = []
    for f in range(folds):
        train = [i for i in range(n) if fold_of[i] != f]
        test = [i for i in range(n) if fold_of[i] == f]
        _, t = ref_best([labels[i] for i in train], [scores[i] for i in train])
        accuracies.append(sum((scores[i] >= t) == (labels[i] == 1) for i in test) / len(test))
    return float(np.mean(accuracies)), float(np.std(accuracies))


# ---- verification metrics ---------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "tied"])
def test_metrics_match_brute_force(ties, rng):
    labels, scores = gaussian_scores(rng, ties=ties)
    report = ev.verification_report(labels, scores, far_targets=(0.01, 0.1), folds=10)
    assert report.auc == pytest.approx(ref_auc(labels, scores), abs=1e-12)
    assert report.eer == pytest.approx(ref_eer(labels, scores), abs=1e-12)
    for far in (0.01, 0.1):
        assert report.tar_at_far[far] == pytest.approx(ref_tar_at_far(labels, scores, far), abs=1e-12)
    accuracy, threshold = ref_best(labels, scores)
    assert report.best_accuracy == pytest.approx(accuracy) and report.best_threshold == pytest.approx(threshold)
    mean, std = ref_kfold(list(labels), list(scores), 10)
    assert report.accuracy_10fold == pytest.approx(mean) and report.accuracy_10fold_std == pytest.approx(std)


def test_eer_of_two_gaussians_matches_the_closed_form(rng):
    labels, scores = gaussian_scores(rng, n=200_000, separation=2.0)
    # Unit-variance genuine and impostor scores 2 apart cross at 1: EER = Φ(−1).
    assert ev.eer(labels, scores) == pytest.approx(0.5 * math.erfc(1 / math.sqrt(2)), abs=3e-3)


def test_distances_and_cosines_agree_on_normalised_embeddings(rng):
    a = ev.normalize_rows(rng.normal(size=(300, 8)))
    b = ev.normalize_rows(a + rng.normal(size=(300, 8)) * rng.uniform(0.2, 2.0, size=(300, 1)))
    labels = (rng.uniform(size=300) < 0.5).astype(int)
    b[labels == 0] = ev.normalize_rows(rng.normal(size=((labels == 0).sum(), 8)))
    cos = ev.pair_scores(a, b, "cosine")
    dist = ev.pair_scores(a, b, "squared_euclidean")
    np.testing.assert_allclose(dist, 2 - 2 * cos, atol=1e-5)
    by_cos = ev.verification_report(labels, cos)
    by_dist = ev.verification_report(labels, dist, greater_is_same=False)
    assert by_cos.auc == pytest.approx(by_dist.auc, abs=1e-4)
    assert by_cos.eer == pytest.approx(by_dist.eer, abs=1e-2)
    assert by_dist.best_threshold == pytest.approx(2 - 2 * by_cos.best_threshold, abs=1e-3)


def test_report_prints_and_serialises(tmp_path, rng):
    labels, scores = gaussian_scores(rng)
    report = ev.verification_report(labels, scores, far_targets=(1e-3, 1e-2))
    text = str(report)
    for key in ("AUC", "EER", "TAR@FAR=1e-3", "TAR@FAR=1e-2", "10-fold accuracy"):
        assert key in text
    path = tmp_path / "report.json"
    report.to_json(path)
    data = json.loads(path.read_text())
    assert data["auc"] == pytest.approx(report.auc) and "1e-3" in data["tar_at_far"]
    assert set(report.as_logs()) >= {"val_auc", "val_eer", "val_tar@far=1e-3", "val_accuracy_10fold"}


@pytest.mark.parametrize(
    "labels, scores, kwargs, message",
    [
        ([0, 1, 1], [0.1, np.nan, 0.3], {}, "scores must be finite; got 1 NaN or Inf"),
        ([1, 1, 1], [0.1, 0.2, 0.3], {}, "only genuine"),
        ([0, 0], [0.1, 0.2], {}, "only impostor"),
        ([0, 2, 1], [0.1, 0.2, 0.3], {}, "labels must be 0 .* or 1"),
        ([0, 1], [0.1, 0.2, 0.3], {}, "same length; got 2 and 3"),
        ([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], {"far_targets": (1.5,)}, r"far_targets must be in \(0, 1\); got 1.5"),
        ([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], {"folds": 1}, "folds must be between 2"),
    ],
)
def test_bad_verification_input(labels, scores, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ev.verification_report(labels, scores, **kwargs)


def test_embeddings_of_different_widths():
    with pytest.raises(ValueError, match=r"same shape; got \(2, 3\) and \(2, 4\)"):
        ev.pair_scores(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="same width; got 3 and 4"):
        ev.retrieval_metrics(np.ones((2, 3)), [0, 1], np.ones((2, 4)), [0, 1])


def test_indexed_pair_scores_in_chunks(rng):
    emb = rng.normal(size=(50, 6))
    ia, ib = rng.integers(0, 50, 1000), rng.integers(0, 50, 1000)
    for metric in ("cosine", "squared_euclidean"):
        got = ev.indexed_pair_scores(emb, ia, ib, metric, chunk_size=77)
        for k in range(0, 1000, 97):
            x, y = emb[ia[k]], emb[ib[k]]
            want = x @ y / np.linalg.norm(x) / np.linalg.norm(y) if metric == "cosine" else np.sum((x - y) ** 2)
            assert got[k] == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_embed_shows_a_progress_bar_for_an_embedding_function_too(capsys):
    """An exported model (a function of a batch, as the CLI loads it) gets model.predict's bar."""
    images = np.arange(10 * 2 * 2 * 3, dtype=np.float32).reshape(10, 2, 2, 3)
    calls = []

    def embedder(batch):
        calls.append(len(batch))
        return np.asarray(batch).reshape(len(batch), -1)[:, :4] + 1.0

    quiet = ev.embed(embedder, images, batch_size=4, flip=True, verbose=0)
    assert capsys.readouterr().out == ""
    shown = ev.embed(embedder, images, batch_size=4, flip=True, verbose=1)
    assert "3/3" in capsys.readouterr().out
    np.testing.assert_array_equal(quiet, shown)
    assert calls == [4, 4, 4, 4, 2, 2] * 2  # a batch, then its mirror


@pytest.mark.multibackend  # each backend has its own branch in `embed`
def test_embed_a_keras_model_against_its_float64_weights(rng):
    """An array and a dataset of uneven batches, with and without the flip test."""
    images = rng.uniform(0, 255, size=(10, 3, 4, 3)).astype(np.float32)
    model = keras.Sequential([keras.Input((3, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_weights())

    def reference(x, flip, normalize):
        out = x.reshape(len(x), -1).astype(np.float64) @ kernel + bias
        if flip:
            out = out + x[:, :, ::-1].reshape(len(x), -1).astype(np.float64) @ kernel + bias
        return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize else out

    inputs = {"array": images}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        inputs["dataset"] = tf.data.Dataset.from_tensor_slices(images).batch(4)
    for name, x in inputs.items():
        for flip in (False, True):
            for normalize in (False, True):
                got = ev.embed(model, x, batch_size=4, flip=flip, normalize=normalize, verbose=0)
                assert got.dtype == np.float32 and got.shape == (10, 5), name
                np.testing.assert_allclose(got, reference(images, flip, normalize), rtol=1e-4,
                                           atol=1e-3, err_msg=f"{name} flip={flip}")


# ---- identification ---------------------------------------------------------------------------


def ref_retrieval(query, qlab, ref, rlab, same_set, ks):
    results = {"p1": [], "r_prec": [], "map": [], **{k: [] for k in ks}}
    for i in range(len(query)):
        candidates = [j for j in range(len(ref)) if not (same_set and j == i)]
        sims = {j: float(np.dot(query[i], ref[j]) / np.linalg.norm(query[i]) / np.linalg.norm(ref[j]))
                for j in candidates}
        ranked = sorted(candidates, key=lambda j: -sims[j])
        r = sum(1 for j in candidates if rlab[j] == qlab[i])
        if r == 0:
            continue
        rel = [rlab[j] == qlab[i] for j in ranked]
        results["p1"].append(rel[0])
        for k in ks:
            results[k].append(any(rel[:k]))
        results["r_prec"].append(sum(rel[:r]) / r)
        ap, hits = 0.0, 0
        for pos in range(r):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        results["map"].append(ap / r)
    return results


@pytest.mark.parametrize("same_set", [True, False], ids=["leave-one-out", "gallery"])
def test_retrieval_metrics_match_loops(same_set, rng):
    query = rng.normal(size=(60, 5)) + np.repeat(rng.normal(size=(6, 5)) * 2, 10, axis=0)
    qlab = np.repeat(np.arange(6), 10)
    if same_set:
        ref, rlab = query, qlab
        got = ev.retrieval_metrics(query, qlab, ks=(1, 3), memory_mb=0.001)
    else:
        ref = rng.normal(size=(40, 5)) + np.repeat(rng.normal(size=(8, 5)) * 2, 5, axis=0)
        rlab = np.repeat(np.arange(8), 5)
        got = ev.retrieval_metrics(query, qlab, ref, rlab, ks=(1, 3), memory_mb=0.001)
    want = ref_retrieval(query, qlab, ref, rlab, same_set, (1, 3))
    assert got["precision_at_1"] == pytest.approx(np.mean(want["p1"]))
    assert got["recall_at_k"][3] == pytest.approx(np.mean(want[3]))
    assert got["r_precision"] == pytest.approx(np.mean(want["r_prec"]))
    assert got["map_at_r"] == pytest.approx(np.mean(want["map"]))
    assert got["queries_without_match"] == 60 - len(want["p1"])


# ---- plots and the training callback ----------------------------------------------------------


def test_plots_write_png(tmp_path, rng):
    labels, scores = gaussian_scores(rng)
    for plot, name in ((ev.plot_roc, "roc.png"), (ev.plot_det, "det.png")):
        path = plot(labels, scores, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = ev.plot_score_histogram(labels, scores, tmp_path / "hist.png", threshold=0.7)
    assert path.stat().st_size > 1000


def test_verification_callback_feeds_keras_logs(tmp_path):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target
    train, held = y < 7, y >= 7
    rng = np.random.default_rng(0)
    xh, yh = x[held], y[held]
    a, b = rng.integers(0, len(xh), 400), rng.integers(0, len(xh), 400)
    pairs = (xh[a], xh[b], (yh[a] == yh[b]).astype(int))
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(16),
        kf.heads.CosineHead(7),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=kf.losses.CosFaceLoss(scale=16.0))
    log_path = tmp_path / "log.csv"
    callback = ev.VerificationCallback(pairs, far_targets=(1e-2,))
    history = model.fit(
        x[train], y[train], epochs=3, batch_size=128, verbose=0,
        callbacks=[callback, keras.callbacks.CSVLogger(str(log_path)),
                   keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=5)],
    )
    assert {"val_auc", "val_eer", "val_tar@far=1e-2", "val_accuracy_10fold"} <= set(history.history)
    assert all(0.5 < v <= 1.0 for v in history.history["val_auc"])
    rows = list(csv.DictReader(log_path.open()))
    assert len(rows) == 3 and float(rows[-1]["val_auc"]) == pytest.approx(history.history["val_auc"][-1])
    assert isinstance(callback.last_report, ev.VerificationReport)


def test_embedding_model_strips_the_head():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), kf.heads.CosineHead(5)])
    assert ev.embedding_model(model).output.shape == (None, 3)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert ev.embedding_model(plain) is plain
