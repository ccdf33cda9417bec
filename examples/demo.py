"""The keras-facemargin story on an embedded default: open-set verification of handwritten digits.

1. Train on the digits 0-6 (scikit-learn's bundled, real handwritten data, written as PNG files
   to runs/demo/digits) twice, through the package's training recipe (what `facemargin train`
   runs): with plain softmax (Dense + cross-entropy) and with the recipe's default objective.
2. Verify pairs of the digits 7-9, which neither model has seen (the open-set setting of face
   verification: are these two images the same identity?), and print both reports side by side.
3. Export the second embedder as a SavedModel to saved_models/demo, reload it in a fresh process
   that has only TensorFlow, embed the unseen digits there and compare with Keras.
4. Write both ROC curves to runs/demo/roc.png.

The same story runs on real data: `--data DIR` (one sub-folder per identity) trains on 70% of the
identities and verifies pairs drawn from the other 30% (or the pairs of `--val-pairs FILE`: a
`path_a path_b label` list relative to DIR, an LFW pairs.txt or an InsightFace .bin).

    python examples/demo.py [--epochs 15] [--loss arcface] [--out saved_models/demo]
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


def train(objective, task, args):
    """One objective through the package's training recipe (what `facemargin train` runs)."""
    trained = experiments.train_objective(objective, task["index"], args.epochs, seed=args.seed,
                                          image_size=task["size"])
    return trained


def digits_task(args):
    from keras_facemargin import data

    index = experiments.digit_folder(os.path.join(args.work, "digits"), size=32)
    seen = index.labels < TRAIN_DIGITS
    unseen = index.subset(~seen)
    rng = np.random.default_rng(args.seed)
    a = rng.integers(0, len(unseen), 6000)
    b = rng.integers(0, len(unseen), 6000)
    keep = a != b
    pairs = data.VerificationPairs(unseen.paths[a[keep]], unseen.paths[b[keep]],
                                   unseen.labels[a[keep]] == unseen.labels[b[keep]], name="unseen digits")
    return {
        "size": 32,
        "index": index.subset(seen),
        "pairs": data.pair_arrays(pairs, image_size=(32, 32), dtype="uint8"),
        "what": f"the digits 0-6 ({seen.sum()} images, 32x32)",
        "unseen": "the unseen digits 7-9",
    }


def folder_task(args, num_pairs=6000):
    from keras_facemargin import data

    split = experiments.open_set_split(data.ImageIndex.from_directory(args.data), unseen_fraction=0.3,
                                       num_pairs=num_pairs, seed=args.seed)
    pairs = (data.read_pairs(args.val_pairs, args.data, argument="--val-pairs") if args.val_pairs
             else split.verification_pairs())
    size = args.image_size
    return {
        "size": size,
        "index": split.train,
        "pairs": data.pair_arrays(pairs, image_size=(size, size), dtype="uint8"),
        "what": (f"{split.train.num_classes} identities of {args.data} ({len(split.train)} images, "
                 f"{size}x{size})"),
        "unseen": "identities never seen in training" if not args.val_pairs else args.val_pairs,
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=experiments.positive_int, default=15)
    parser.add_argument("--loss", default="arcface", choices=kf.losses.names(),
                        help="the objective compared with softmax (the recipe's default: arcface)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="saved_models/demo", help="SavedModel export folder")
    parser.add_argument("--plot", default="runs/demo/roc.png")
    parser.add_argument("--work", default="runs/demo", help="folder of the digit images")
    parser.add_argument("--data", help="an image folder, one sub-folder per identity")
    parser.add_argument("--val-pairs", help="pairs to verify (default: drawn from unseen identities)")
    parser.add_argument("--image-size", type=experiments.positive_int, default=64, help="with --data")
    args = parser.parse_args(argv)
    if args.val_pairs and not args.data:
        parser.error("--val-pairs needs --data")

    try:
        task = folder_task(args) if args.data else digits_task(args)
    except ValueError as error:
        parser.error(f"argument --data: {args.data!r}: {error}")
    images_a, images_b, is_same = task["pairs"]
    print(f"Training on {task['what']}; verifying {len(is_same)} pairs of {task['unseen']} "
          f"({is_same.sum()} genuine).\n", flush=True)

    reports, curves, embedders = {}, {}, {}
    for objective in ("softmax", args.loss):
        trained = train(objective, task, args)
        name = objective
        embeddings = ev.embed(trained.embedder, images_a.astype("float32"), verbose=0)
        scores = ev.pair_scores(embeddings, ev.embed(trained.embedder, images_b.astype("float32"), verbose=0))
        reports[name] = (ev.verification_report(is_same, scores, far_targets=(1e-3, 1e-2)), trained.seconds)
        curves[name] = (is_same, scores)
        embedders[name] = (trained.embedder, embeddings)
        print(f"trained {name}: {trained.seconds:.0f} s", flush=True)

    names = list(reports)
    print(f"\n{'':<18}" + "".join(f"{n:>14}" for n in names))
    rows = [("AUC", lambda r: r.auc), ("EER", lambda r: r.eer),
            ("TAR@FAR=1e-3", lambda r: r.tar_at_far[1e-3]),
            ("TAR@FAR=1e-2", lambda r: r.tar_at_far[1e-2]),
            ("10-fold accuracy", lambda r: r.accuracy_10fold)]
    for label, get in rows:
        print(f"{label:<18}" + "".join(f"{get(reports[n][0]):>14.4f}" for n in names))
    print(f"{'train seconds':<18}" + "".join(f"{reports[n][1]:>14.1f}" for n in names))

    margin = names[-1]
    embedder, embeddings = embedders[margin]
    export_embedder(embedder, args.out)
    served = embed_in_fresh_process(args.out, images_a)
    difference = float(np.abs(served - embeddings).max())
    print(f"\nExported the {margin} embedder to {args.out}; a fresh TensorFlow-only process "
          f"embedded {len(served)} verification images with max |difference| {difference:.2e} "
          "from Keras.")
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    ev.plot_roc(curves, args.plot, title="Open-set verification ROC")
    print(f"ROC curves: {args.plot}")
    if difference > 1e-5:
        sys.exit("the exported model disagrees with the Keras model")


if __name__ == "__main__":
    main()
