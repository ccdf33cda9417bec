"""The keras-facemargin story on an embedded default: open-set verification of handwritten digits.

1. Train the same small CNN on the digits 0-6 (scikit-learn's bundled, real handwritten data)
   twice: with plain softmax (Dense + cross-entropy) and with a CosineHead + ArcFace.
2. Verify pairs of the digits 7-9, which neither model has seen (the open-set setting of face
   verification: are these two images the same identity?), and print both reports side by side.
3. Export the ArcFace embedder as a SavedModel to saved_models/demo, reload it in a fresh process
   that has only TensorFlow, embed the unseen digits there and compare with Keras.
4. Write the ROC curves to runs/demo/roc.png.

The same story runs on real data: `--data DIR` (one sub-folder per identity) trains on 70% of the
identities and verifies pairs drawn from the other 30% (or the pairs of `--val-pairs FILE`: a
`path_a path_b label` list relative to DIR, an LFW pairs.txt or an InsightFace .bin).

    python examples/demo.py [--epochs 30] [--loss arcface] [--out saved_models/demo]
    python examples/demo.py --data ../shared/data/emoji-4vendor --image-size 64 --epochs 10
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras_facemargin as kf  # noqa: E402
from keras_facemargin import evaluation as ev  # noqa: E402
from keras_facemargin import experiments  # noqa: E402
from keras_facemargin.export import export_embedder  # noqa: E402

TRAIN_DIGITS = 7  # digits 0-6 train, 7-9 are the unseen identities
SIZE = 32


def backbone(size):
    return kf.models.get_backbone("simple_cnn", input_shape=(size, size, 3), embedding_dim=32)


def train(objective, task, epochs, seed):
    trained = experiments.train_objective(
        objective, lambda: backbone(task["size"]), task["num_classes"], task["fit"], epochs, seed=seed,
        learning_rate=2e-3, loss_kwargs=None if objective == experiments.SOFTMAX else {"scale": 16.0})
    return trained.embedder, trained.seconds


def digits_task(seed):
    images, labels = experiments.digit_images(SIZE)
    seen = labels < TRAIN_DIGITS
    unseen_images, unseen_labels = images[~seen], labels[~seen]
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(unseen_labels), 6000)
    b = rng.integers(0, len(unseen_labels), 6000)
    keep = a != b
    a, b = a[keep], b[keep]
    return {
        "size": SIZE,
        "num_classes": TRAIN_DIGITS,
        "fit": {"x": images[seen].astype("float32"), "y": labels[seen], "batch_size": 64},
        "pairs": (unseen_images[a], unseen_images[b], (unseen_labels[a] == unseen_labels[b]).astype(int)),
        "what": f"the digits 0-6 ({seen.sum()} images, {SIZE}x{SIZE})",
        "unseen": "the unseen digits 7-9",
    }


def folder_task(root, val_pairs, size, seed, num_pairs=6000):
    from keras_facemargin import data

    split = experiments.open_set_split(data.ImageIndex.from_directory(root), unseen_fraction=0.3,
                                       num_pairs=num_pairs, seed=seed)
    pairs = (data.read_pairs(val_pairs, root, argument="--val-pairs") if val_pairs
             else split.verification_pairs())
    train_index = split.train
    return {
        "size": size,
        "num_classes": train_index.num_classes,
        "fit": {"shuffle": False, "x": data.classification_dataset(train_index, min(64, len(train_index)),
                                                 image_size=(size, size), seed=seed)},
        "pairs": data.pair_arrays(pairs, image_size=(size, size), dtype="uint8"),
        "what": f"{train_index.num_classes} identities of {root} ({len(train_index)} images, {size}x{size})",
        "unseen": "identities never seen in training" if not val_pairs else val_pairs,
    }


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
           title="Open-set verification ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loss", default="arcface", choices=kf.losses.names())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="saved_models/demo", help="SavedModel export folder")
    parser.add_argument("--plot", default="runs/demo/roc.png")
    parser.add_argument("--data", help="an image folder, one sub-folder per identity")
    parser.add_argument("--val-pairs", help="pairs to verify (default: drawn from unseen identities)")
    parser.add_argument("--image-size", type=int, default=64, help="with --data")
    args = parser.parse_args(argv)
    if args.val_pairs and not args.data:
        parser.error("--val-pairs needs --data")

    try:
        task = folder_task(args.data, args.val_pairs, args.image_size, args.seed) if args.data \
            else digits_task(args.seed)
    except ValueError as error:
        parser.error(f"argument --data: {args.data!r}: {error}")
    images_a, images_b, is_same = task["pairs"]
    print(f"Training on {task['what']}; verifying {len(is_same)} pairs of {task['unseen']} "
          f"({is_same.sum()} genuine).\n")

    reports, curves, embedders = {}, {}, {}
    for objective in ("softmax", args.loss):
        embedder, seconds = train(objective, task, args.epochs, args.seed)
        embeddings = ev.embed(embedder, images_a.astype("float32"), verbose=0)
        scores = ev.pair_scores(embeddings, ev.embed(embedder, images_b.astype("float32"), verbose=0))
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
    served = embed_in_fresh_process(args.out, images_a)
    difference = float(np.abs(served - embeddings).max())
    print(f"\nExported the {args.loss} embedder to {args.out}; a fresh TensorFlow-only process "
          f"embedded {len(served)} verification images with max |difference| {difference:.2e} "
          "from Keras.")
    plot_rocs(curves, args.plot)
    print(f"ROC curves: {args.plot}")
    if difference > 1e-5:
        sys.exit("the exported model disagrees with the Keras model")


if __name__ == "__main__":
    main()
