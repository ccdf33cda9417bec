"""Face verification with a pair loss on P×K batches, from an image folder to an exported model.

**The task.** As in `train_margin_softmax.py`: learn embeddings whose cosine tells whether two
faces, of people never seen in training, are the same person. Here no classifier is trained at
all: a *pair loss* works directly on the embeddings of a batch, pulling together the images of
one identity and pushing apart those of different identities.

**Why P×K batches.** A pair loss needs, for every image, another image of the same person (a
positive) and images of other people (negatives) in the same batch. Shuffled batches of a large
set hold almost no positives; `data.pk_dataset` builds every batch from P identities × K images
each (`--classes-per-batch 32 --samples-per-class 4`: 128 images, 3 positives and 124 negatives
per anchor). An epoch visits every identity once (`--steps-per-epoch` asks for more or fewer
batches), and images are not mixed (mixup would blend identities, which no pair loss can use).

**Which loss.** By name, through `keras_facemargin.losses.get`:

- `circle` (the default): Circle loss, every similarity re-weighted by how far it is from its
  optimum (m = 0.25, γ = 256); it came first in the loss table of BENCHMARKS.md.
- `supcon`: supervised contrastive, the log-probability of each positive among all the other
  images of the batch, at temperature 0.1.
- `triplet`: max(s_an − s_ap + 0.2, 0) with FaceNet's semi-hard mining: for each
  anchor–positive pair, the most similar negative that is still less similar than the positive.
- and `contrastive`, `npair`, `multi_similarity`, `unified_pair`.

These three compare embeddings by cosine, so the embedding model `build_recognizer(backbone)`
(no `num_classes`: no head) is trained as it is; its export returns unit-length embeddings.

**The rest** is as in the margin-softmax example: an open-set split (`--held-out` identities
verified after every epoch by a `VerificationCallback` and at the end on the exported
SavedModel), AdamW with a linear warm-up and cosine decay (`WarmupSchedule`), images as float32
pixels in [0, 255] scaled inside the model.

    python examples/train_pair_loss.py --data faces/train --loss circle --out runs/circle

and on the five people that ship with the tests (a smoke test, not a result):

    python examples/train_pair_loss.py --data tests/data/faces --backbone simple_cnn \\
        --image-size 32 --embedding-dim 16 --epochs 2 --classes-per-batch 3 --held-out 0.4 \\
        --steps-per-epoch 4 --out runs/circle-tiny

It writes, under `--out`: `saved_model/`, `model.keras` (the embedding model), `log.csv`,
`report.json` and `roc.png`.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_facemargin as kf  # noqa: E402
from keras_facemargin import data  # noqa: E402
from keras_facemargin import evaluation as ev  # noqa: E402
from keras_facemargin.export import export_embedder  # noqa: E402
from keras_facemargin.optimizers import WarmupSchedule  # noqa: E402

PAIR_LOSSES = [name for name in kf.losses.names() if isinstance(kf.losses.get(name), kf.losses.PairLoss)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image folder, one sub-folder per identity")
    parser.add_argument("--image-size", type=int, default=112, help="square input size in pixels")
    parser.add_argument("--backbone", default="iresnet18", choices=kf.models.backbone_names())
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--loss", default="circle", choices=PAIR_LOSSES)
    parser.add_argument("--classes-per-batch", type=int, default=32, help="P, identities per batch")
    parser.add_argument("--samples-per-class", type=int, default=4, help="K, images per identity")
    parser.add_argument("--steps-per-epoch", type=int, help="default: identities // P")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak, after the warm-up")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--held-out", type=float, default=0.1,
                        help="fraction of the identities held out for open-set verification")
    parser.add_argument("--num-pairs", type=int, default=3000,
                        help="verification pairs of the held-out identities (decoded into memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/pair_loss", help="output folder")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_epochs < args.epochs:
        parser.error(f"argument --warmup-epochs: must be in [0, --epochs={args.epochs}); got "
                     f"{args.warmup_epochs}")
    if args.samples_per_class < 2:
        parser.error(f"argument --samples-per-class: must be >= 2 (an image needs a positive in its "
                     f"batch); got {args.samples_per_class}")
    return parser, args


def open_set_split(parser, args):
    """`(training index, held-out verification pairs)`: disjoint people, pairs as uint8 arrays."""
    try:
        index = data.ImageIndex.from_directory(args.data)
        train, held_out = index.split_identities(test_fraction=args.held_out, seed=args.seed)
        a, b, is_same = held_out.sample_pairs(args.num_pairs, seed=args.seed)
        # An identity with a single image would only ever be its own positive.
        train = train.filter_min_images(2)
    except ValueError as error:
        parser.error(f"argument --data {args.data!r} / --held-out {args.held_out}: {error}")
    pairs = data.VerificationPairs(held_out.paths[a], held_out.paths[b], is_same, name="held_out")
    size = (args.image_size, args.image_size)
    print(f"Training on {train.num_classes} identities ({len(train)} images); verifying "
          f"{len(pairs)} pairs of {held_out.num_classes} held-out identities "
          f"({int(is_same.sum())} genuine).")
    return train, data.pair_arrays(pairs, image_size=size, dtype="uint8")


def report_on_export(export_path, held_out_pairs, out):
    """Verifies the held-out pairs with the exported SavedModel, as a TensorFlow-only client would."""
    serve = tf.saved_model.load(export_path).signatures["serving_default"]

    def embed(uint8_images):  # [N, H, W, 3] uint8 -> [N, dim] unit vectors
        return serve(images=tf.constant(uint8_images))["embeddings"].numpy()

    images_a, images_b, is_same = held_out_pairs
    scores = ev.pair_scores(ev.embed(embed, images_a), ev.embed(embed, images_b))
    report = ev.verification_report(is_same, scores, far_targets=(1e-4, 1e-3, 1e-2))
    print(f"\nThe exported model on the held-out identities:\n{report}")
    report.to_json(os.path.join(out, "report.json"))
    ev.plot_roc(is_same, scores, os.path.join(out, "roc.png"), title="Held-out identities")
    return report


def main(argv=None):
    parser, args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    size = (args.image_size, args.image_size)

    # ---- data: an open-set split, P identities x K images in every batch --------------------
    train, held_out_pairs = open_set_split(parser, args)
    corrupt_files = data.CorruptFileLog()  # undecodable files become blank images, named here
    try:
        dataset = data.pk_dataset(train, args.classes_per_batch, args.samples_per_class, image_size=size,
                                  augment=data.Augmentation(), steps_per_epoch=args.steps_per_epoch,
                                  seed=args.seed, corrupt_files=corrupt_files)
    except ValueError as error:
        parser.error(f"argument --classes-per-batch/--samples-per-class/--steps-per-epoch: {error}")
    steps_per_epoch = int(dataset.cardinality())

    # ---- model: the embedding network itself, no classification head ------------------------
    backbone = kf.models.get_backbone(args.backbone, input_shape=(*size, 3),
                                      embedding_dim=args.embedding_dim)
    embedder, _ = kf.models.build_recognizer(backbone)  # num_classes=None: both are the embedder
    loss = kf.losses.get(args.loss)
    schedule = WarmupSchedule(args.learning_rate, total_steps=steps_per_epoch * args.epochs,
                              warmup_steps=round(args.warmup_epochs * steps_per_epoch))
    embedder.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
                     loss=loss)
    settings = {key: value for key, value in loss.get_config().items()
                if key not in ("name", "reduction", "dtype", "check_inputs", "cross_replica")}
    print(f"{type(loss).__name__}: {settings}")

    # ---- training, verifying the held-out identities after every epoch ---------------------
    callbacks = [
        corrupt_files,
        ev.VerificationCallback(held_out_pairs, far_targets=(1e-3, 1e-2)),
        keras.callbacks.CSVLogger(os.path.join(args.out, "log.csv")),
    ]
    # shuffle=False: every epoch draws new P×K batches itself, reproducibly from --seed.
    embedder.fit(dataset, epochs=args.epochs, callbacks=callbacks, shuffle=False, verbose=2)
    embedder.save(os.path.join(args.out, "model.keras"))

    # ---- export: uint8 images in, unit-length embeddings out ---------------------------------
    export_path = export_embedder(embedder, os.path.join(args.out, "saved_model"))
    print(f"Exported the embedder to {export_path}")
    return report_on_export(export_path, held_out_pairs, args.out)


if __name__ == "__main__":
    main()
