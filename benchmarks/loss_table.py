"""The loss comparison table: every objective, the same backbone, budget and seed, open-set verification.

Splits the identities of an image folder (one sub-folder per identity) into training identities
and disjoint unseen identities, holds out a quarter of each training identity's images (closed
set), and draws balanced verification pairs among the unseen identities (all from --seed). Then,
for each objective, trains a fresh backbone from the same seed through the package's one
training assembly (`recipe.train`, what `facemargin train` runs) with the same optimizer,
schedule and number of optimizer steps on batches of the same size (softmax and the
margin-softmax losses on shuffled batches with the head; the pair losses on P×K batches of the
same number of images), and measures the embeddings on the unseen pairs and, for the
classifiers, the accuracy on the held-out images. Prints one table and writes it, with every
setting, to --out (table.md and results.json).

    python benchmarks/loss_table.py --data ../shared/data/emoji-4vendor [--epochs 15] [--backbone simple_cnn]
"""

import argparse
import datetime
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_facemargin import data, experiments, models  # noqa: E402
from keras_facemargin import evaluation as ev  # noqa: E402

OBJECTIVES = ("softmax", "normface", "sphereface", "cosface", "arcface", "combined_margin",
              "triplet", "npair", "circle", "supcon")
# The margin losses of issue 17. They need the head their loss declares (feature norms, running
# statistics, sub-centres), which `experiments.build_objective` builds once it passes the loss to
# `build_recognizer(..., loss=...)`; until then, name them with --objectives.
RECENT_OBJECTIVES = ("adaface", "magface", "curricularface", "subcenter_arcface", "elasticface",
                     "adacos")
FARS = (1e-2, 1e-3)


def loss_settings(objective, scale):
    """The `TrainConfig` loss settings of each objective: the papers' margins (the losses' own
    defaults), one scale for the whole margin family."""
    from keras_facemargin import config

    return {"scale": scale} if objective in config.LOSS_FLAGS["scale"] else {}


def _objectives(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in experiments.objective_names()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown objective(s) {unknown or [text]}; expected a comma-separated list of "
            f"{', '.join(experiments.objective_names())}")
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an image folder, one sub-folder per identity")
    parser.add_argument("--epochs", type=experiments.positive_int, default=15)
    parser.add_argument("--backbone", default="simple_cnn", choices=models.backbone_names())
    parser.add_argument("--image-size", type=experiments.positive_int, default=64)
    parser.add_argument("--embedding-dim", type=experiments.positive_int, default=64)
    parser.add_argument("--objectives", type=_objectives, default=list(OBJECTIVES),
                        help="comma-separated; default: " + ",".join(OBJECTIVES))
    parser.add_argument("--classes-per-batch", type=experiments.positive_int, default=20,
                        help="P of the pair losses' P×K batches; every objective's batch is P×K images")
    parser.add_argument("--samples-per-class", type=experiments.positive_int, default=3, help="K (>= 2)")
    parser.add_argument("--scale", type=float, default=30.0, help="s of the margin-softmax losses")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam, cosine-decayed to 0")
    parser.add_argument("--augment", default="auto", help="the recipe's --augment (default: its rule)")
    parser.add_argument("--unseen-fraction", type=experiments.fraction, default=0.3,
                        help="fraction of the identities kept for the verification pairs")
    parser.add_argument("--held-out-fraction", type=experiments.fraction, default=0.25,
                        help="fraction of each training identity's images kept for closed-set accuracy")
    parser.add_argument("--num-pairs", type=experiments.positive_int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/loss_table", help="folder for table.md and results.json")
    args = parser.parse_args(argv)
    if args.samples_per_class < 2:
        parser.error(f"argument --samples-per-class: expected an integer >= 2 (a pair loss needs two "
                     f"images of an identity in a batch); got {args.samples_per_class}")
    if args.classes_per_batch < 2:
        parser.error(f"argument --classes-per-batch: expected an integer >= 2 (a pair loss needs "
                     f"another identity in a batch); got {args.classes_per_batch}")
    for flag, value in (("--scale", args.scale), ("--learning-rate", args.learning_rate)):
        if not value > 0:
            parser.error(f"argument {flag}: expected a number > 0; got {value}")
    try:
        models.get_backbone(args.backbone, input_shape=(args.image_size, args.image_size, 3),
                            embedding_dim=args.embedding_dim)
    except ValueError as error:
        parser.error(f"arguments --backbone {args.backbone} / --image-size {args.image_size} / "
                     f"--embedding-dim {args.embedding_dim}: {error}")
    try:
        index = data.ImageIndex.from_directory(args.data)
        split = experiments.open_set_split(index, args.unseen_fraction, args.held_out_fraction,
                                           args.num_pairs, seed=args.seed)
    except ValueError as error:
        parser.error(f"argument --data: {args.data!r}: {error}")
    if min(args.classes_per_batch, split.train.num_classes, len(split.train) // args.samples_per_class) < 2:
        parser.error(f"argument --data: {args.data!r} has {len(split.train)} training images of "
                     f"{split.train.num_classes} identities; expected enough for a batch of 2 identities x "
                     f"K={args.samples_per_class} images")
    return args, split


def _images(images, labels):
    return images


def evaluation_images(index, image_size):
    """The images of `index` in order, resized only: built once, predicted by every objective."""
    if index is None:
        return None
    return data.classification_dataset(index, 256, image_size=image_size, training=False).map(_images)


def evaluate(trained, split, unseen_images, held_out_images):
    """The open-set verification report, and the closed-set accuracy of a classifier (else None)."""
    embeddings = ev.embed(trained.embedder, unseen_images, verbose=0)
    if not np.isfinite(embeddings).all():
        return None, None
    a, b, is_same = split.pairs
    report = ev.verification_report(is_same, ev.indexed_pair_scores(embeddings, a, b), far_targets=FARS)
    accuracy = None
    if trained.is_classifier and held_out_images is not None:
        outputs = trained.model.predict(held_out_images, verbose=0)
        classes = outputs[:, :split.train.num_classes]  # AdaFace/MagFace heads append the feature norm
        accuracy = float(np.mean(np.argmax(classes, axis=1) == split.held_out.labels))
    return report, accuracy


def format_table(rows):
    """The rows as a Markdown table (also readable as printed text)."""
    header = ["objective", "AUC", "EER", "TAR@FAR=1e-2", "TAR@FAR=1e-3", "10-fold acc.",
              "closed-set acc.", "train s", "settings"]

    def number(value):
        return "-" if value is None else f"{value:.4f}"

    lines = []
    for row in rows:
        lines.append([row["objective"], number(row["auc"]), number(row["eer"]),
                      number(row["tar_at_far"].get("1e-2")), number(row["tar_at_far"].get("1e-3")),
                      number(row["accuracy_10fold"]), number(row["closed_set_accuracy"]),
                      f"{row['train_seconds']:.0f}", row["settings"]])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]

    def cells(values):
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([cells(header), rule, *(cells(line) for line in lines)])


def main(argv=None):
    args, split = parse_args(argv)
    size = (args.image_size, args.image_size)
    k = args.samples_per_class
    p = min(args.classes_per_batch, split.train.num_classes, len(split.train) // k)
    batch = p * k
    steps = max(1, len(split.train) // batch)
    started = datetime.datetime.now(datetime.timezone.utc)
    header = [
        f"# loss_table: {args.data}",
        f"# {split.describe()}",
        f"# backbone {args.backbone} {args.image_size}x{args.image_size}, {args.embedding_dim}-d; "
        f"{args.epochs} epochs x {steps} steps of {batch} images for every objective "
        f"(pair losses: P={p} identities x K={k}); Adam {args.learning_rate:g}, cosine decay; "
        f"seed {args.seed}",
        f"# {started:%Y-%m-%d %H:%M} UTC; keras {keras.__version__}, tensorflow {tf.__version__}; "
        f"{os.cpu_count()} CPUs, {platform.machine()}",
    ]
    print("\n".join(header), flush=True)

    common = {"image_size": args.image_size, "backbone": args.backbone, "embedding_dim": args.embedding_dim,
              "batch_size": batch, "classes_per_batch": p, "samples_per_class": k, "optimizer": "adam",
              "learning_rate": args.learning_rate, "weight_decay": 0.0, "warmup_epochs": 0.0,
              "schedule": "cosine", "augment": args.augment}
    unseen_images = evaluation_images(split.unseen, size)
    held_out_images = evaluation_images(split.held_out, size)
    rows = []
    for number, objective in enumerate(args.objectives, start=1):
        settings = loss_settings(objective, args.scale)
        trained = experiments.train_objective(objective, split.train, args.epochs, seed=args.seed,
                                              **common, **settings)
        report, accuracy = evaluate(trained, split, unseen_images, held_out_images) if trained.model \
            else (None, None)
        nan = float("nan")
        rows.append({
            "objective": objective,
            "settings": ", ".join(f"{key}={value}" for key, value in settings.items()) or "Dense head",
            "auc": report.auc if report else nan,
            "eer": report.eer if report else nan,
            "tar_at_far": report.to_dict()["tar_at_far"] if report else {},
            "accuracy_10fold": report.accuracy_10fold if report else nan,
            "closed_set_accuracy": accuracy,
            "train_seconds": trained.seconds,
            "final_loss": trained.final_loss,
        })
        print(f"[{number}/{len(args.objectives)}] {objective}: AUC {rows[-1]['auc']:.4f}, "
              f"{trained.seconds:.0f} s, final loss {trained.final_loss:.4f}", flush=True)

    table = format_table(rows)
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(header) + "\n\n" + table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"command": [os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])],
                   "settings": {key: value for key, value in vars(args).items()},
                   "split": split.describe(), "steps_per_epoch": steps, "batch_size": batch,
                   "classes_per_batch": p, "started_utc": started.isoformat(), "rows": rows}, f, indent=2)
    print(f"\nWritten to {args.out}/table.md and {args.out}/results.json")
    return rows


if __name__ == "__main__":
    main()
