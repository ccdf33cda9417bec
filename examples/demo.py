"""The keras-facemargin story on an embedded default: open-set verification of handwritten digits.

1. Train the same small CNN on the digits 0-6 (scikit-learn's bundled, real handwritten data)
   twice: with plain softmax (Dense + cross-entropy) and with a CosineHead + ArcFace.
2. Verify pairs of the digits 7-9, which neither model has seen (the open-set setting of face
   verification: are these two images the same identity?), and print both reports side by side.
3. Export the ArcFace embedder as a SavedModel to saved_models/demo, reload it in a fresh process
   that has only TensorFlow, embed the unseen digits there and compare with Keras.
4. Write the ROC curves to runs/demo/roc.png.

    python examples/demo.py [--epochs 30] [--loss arcface] [--out saved_models/demo]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_facemargin as kf  # noqa: E402
from keras_facemargin import evaluation as ev  # noqa: E402
from keras_facemargin.export import export_embedder  # noqa: E402
from keras_facemargin.models.recognizer import build_recognizer  # noqa: E402

TRAIN_DIGITS = 7  # digits 0-6 train, 7-9 are the unseen identities
SIZE = 32


def digit_images():
    """The 8x8 digits as 32x32 RGB uint8 images, the format a face pipeline works with."""
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((SIZE // 8, SIZE // 8)))
    images = np.repeat((images * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    return images, digits.target


def backbone():
    return kf.models.get_backbone("simple_cnn", input_shape=(SIZE, SIZE, 3), embedding_dim=32)


def train(objective, images, labels, epochs, seed):
    keras.utils.set_random_seed(seed)
    if objective == "softmax":
        _, embedder = build_recognizer(backbone())
        model = keras.Model(embedder.input, keras.layers.Dense(TRAIN_DIGITS)(embedder.output))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        model, embedder = build_recognizer(backbone(), num_classes=TRAIN_DIGITS)
        loss = kf.losses.get(objective, scale=16.0)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss)
    start = time.perf_counter()
    model.fit(images.astype("float32"), labels, epochs=epochs, batch_size=64, verbose=0)
    return embedder, time.perf_counter() - start


CLIENT = textwrap.dedent("""
    import sys
    sys.modules["keras_facemargin"] = None  # the client has TensorFlow only
    import numpy as np, tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    np.save(sys.argv[3], serve(images=tf.constant(np.load(sys.argv[2])))["embeddings"].numpy())
""")


def embed_in_fresh_process(path, images):
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "images.npy"), images)
        out = os.path.join(tmp, "embeddings.npy")
        subprocess.run([sys.executable, "-c", CLIENT, path, os.path.join(tmp, "images.npy"), out],
                       check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        return np.load(out)


def plot_rocs(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, (labels, scores) in curves.items():
        far, tar, _ = ev.roc(labels, scores)
        ax.plot(far[far > 0], tar[far > 0], label=name)
    ax.set(xscale="log", xlabel="false accept rate", ylabel="true accept rate",
           title="Unseen digits 7-9: verification ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loss", default="arcface", choices=kf.losses.names())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="saved_models/demo", help="SavedModel export folder")
    parser.add_argument("--plot", default="runs/demo/roc.png")
    args = parser.parse_args()

    images, labels = digit_images()
    seen = labels < TRAIN_DIGITS
    unseen_images, unseen_labels = images[~seen], labels[~seen]
    rng = np.random.default_rng(args.seed)
    index_a = rng.integers(0, len(unseen_labels), 6000)
    index_b = rng.integers(0, len(unseen_labels), 6000)
    keep = index_a != index_b
    index_a, index_b = index_a[keep], index_b[keep]
    is_same = (unseen_labels[index_a] == unseen_labels[index_b]).astype(int)
    print(f"Training on the digits 0-6 ({seen.sum()} images, {SIZE}x{SIZE}); verifying "
          f"{len(is_same)} pairs of the unseen digits 7-9 ({is_same.sum()} genuine).\n")

    reports, curves, embedders = {}, {}, {}
    for objective in ("softmax", args.loss):
        embedder, seconds = train(objective, images[seen], labels[seen], args.epochs, args.seed)
        embeddings = ev.embed(embedder, unseen_images.astype("float32"), verbose=0)
        scores = ev.indexed_pair_scores(embeddings, index_a, index_b)
        reports[objective] = (ev.verification_report(is_same, scores, far_targets=(1e-3, 1e-2)),
                              seconds)
        curves[objective] = (is_same, scores)
        embedders[objective] = (embedder, embeddings)

    names = list(reports)
    print(f"{'':<18}" + "".join(f"{n:>12}" for n in names))
    rows = [("AUC", lambda r: r.auc), ("EER", lambda r: r.eer),
            ("TAR@FAR=1e-3", lambda r: r.tar_at_far[1e-3]),
            ("TAR@FAR=1e-2", lambda r: r.tar_at_far[1e-2]),
            ("10-fold accuracy", lambda r: r.accuracy_10fold)]
    for label, get in rows:
        print(f"{label:<18}" + "".join(f"{get(reports[n][0]):>12.4f}" for n in names))
    print(f"{'train seconds':<18}" + "".join(f"{reports[n][1]:>12.1f}" for n in names))

    embedder, embeddings = embedders[args.loss]
    export_embedder(embedder, args.out)
    served = embed_in_fresh_process(args.out, unseen_images)
    difference = float(np.abs(served - embeddings).max())
    print(f"\nExported the {args.loss} embedder to {args.out}; a fresh TensorFlow-only process "
          f"embedded the {len(served)} unseen images with max |difference| {difference:.2e} "
          "from Keras.")
    plot_rocs(curves, args.plot)
    print(f"ROC curves: {args.plot}")
    if difference > 1e-5:
        sys.exit("the exported model disagrees with the Keras model")


if __name__ == "__main__":
    main()
