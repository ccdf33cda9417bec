"""The keras-facemargin story in one minute, on a real data set that ships with scikit-learn.

Trains the same small network on the handwritten digits 0-6 twice, once with plain softmax
(Dense + cross-entropy) and once with a CosineHead + ArcFace, then verifies pairs drawn from the
digits 7-9, classes neither model has seen (the open-set setting of face verification): are two
images the same digit? Pairs are scored by the cosine similarity of their embeddings.

    python examples/demo.py [--epochs 30] [--loss arcface] [--seed 0]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

import keras_facemargin as kf  # noqa: E402

TRAIN_CLASSES = list(range(7))


def backbone(embedding_dim):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(embedding_dim),
            keras.layers.BatchNormalization(),
        ],
        name="embedder",
    )


def train(loss_name, x, y, epochs, seed):
    keras.utils.set_random_seed(seed)
    embedder = backbone(32)
    num_classes = len(TRAIN_CLASSES)
    if loss_name == "softmax":
        head = keras.layers.Dense(num_classes, name="softmax_head")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        head = kf.heads.CosineHead(num_classes)
        loss = kf.losses.get(loss_name, scale=16.0)
    model = keras.Sequential([embedder, head])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return embedder, time.perf_counter() - start


def verification_pairs(y, rng, count=4000):
    a = rng.integers(0, len(y), size=count)
    b = rng.integers(0, len(y), size=count)
    keep = a != b
    return a[keep], b[keep], (y[a] == y[b])[keep]


def evaluate(embedder, x, pairs):
    a, b, same = pairs
    emb = np.asarray(embedder.predict(x, verbose=0), dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
    scores = np.sum(emb[a] * emb[b], axis=1)
    far, tar, _ = roc_curve(same, scores)
    eer_index = np.argmin(np.abs((1 - tar) - far))
    tar_at = float(np.interp(1e-2, far, tar))
    return roc_auc_score(same, scores), (far[eer_index] + 1 - tar[eer_index]) / 2, tar_at


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loss", default="arcface", choices=kf.losses.names())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target
    seen = np.isin(y, TRAIN_CLASSES)
    x_train, y_train, x_open, y_open = x[seen], y[seen], x[~seen], y[~seen]
    pairs = verification_pairs(y_open, np.random.default_rng(args.seed))
    print(f"Training on digits 0-6 ({len(x_train)} images); verifying {len(pairs[0])} pairs of the "
          f"unseen digits 7-9 ({pairs[2].sum()} genuine).")
    print(f"{'objective':<12}{'AUC':>8}{'EER':>8}{'TAR@FAR=1e-2':>14}{'train s':>9}")
    for name in ["softmax", args.loss]:
        embedder, seconds = train(name, x_train, y_train, args.epochs, args.seed)
        auc, eer, tar = evaluate(embedder, x_open, pairs)
        print(f"{name:<12}{auc:>8.4f}{eer:>8.4f}{tar:>14.4f}{seconds:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
