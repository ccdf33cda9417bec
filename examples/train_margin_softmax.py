"""Face verification with a margin-softmax loss (ArcFace), from an image folder to an exported model.

**The task.** Face *verification* asks whether two images show the same person, usually people
the model never saw in training (an open set). We train an embedding network as a classifier
over the training identities, throw the classifier away, and compare two faces by the cosine of
their embeddings.

**Why a margin.** Plain softmax separates the training classes but lets the features of a class
spread; a margin-softmax loss normalises features and class centres, so that the logits are
cosines, and demands a margin on the target class: ArcFace asks for cos(θ + m), with θ the angle
to the true centre. The features of one person are pulled into a tight cone, which is what a
cosine threshold between unseen people needs. Any margin loss works here by name (`--loss
cosface`, `sphereface`, `normface`, `combined_margin`), through `keras_facemargin.losses.get`.

**The choices.**

- *Open-set split*: `ImageIndex.split_identities` holds out whole identities (`--held-out`, a
  fraction of the people); their pairs, half genuine and half impostor
  (`ImageIndex.sample_pairs`), are verified after every epoch by a `VerificationCallback`, which
  writes `val_auc`, `val_eer`, `val_tar@far=...` into the Keras logs (so `EarlyStopping` or
  `ModelCheckpoint` can watch them), and once more at the end on the exported model.
- *Mixup* (`BatchMix(mixup=0.2)`): a batch is sometimes blended pairwise, and its labels become
  mixtures. The margin losses take such dense label rows: the margin goes on each target in turn,
  so a mixed image's loss is λ·L(a) + (1 − λ)·L(b).
- *Optimizer*: SGD with momentum 0.9 and weight decay 5e-4 at a peak rate of 0.1, ArcFace's
  recipe for large face sets, after a linear warm-up (`WarmupSchedule`, then cosine decay).
  For a few thousand identities trained from scratch, AdamW often converges faster:
  `--optimizer adamw --learning-rate 1e-3 --weight-decay 0.05`.
- *Images* enter the model as float32 pixels in [0, 255]: `build_recognizer` scales them
  inside, so the exported SavedModel takes raw uint8 images and returns unit-length embeddings,
  and a client needs TensorFlow only (`tf.saved_model.load`).

The data folder holds one sub-folder per identity (`DATA/<person>/<image>.jpg`), aligned face
crops ideally (see `data.align_face`). On a real set (thousands of people), the defaults train
an IR-ResNet-18 on 112×112 crops:

    python examples/train_margin_softmax.py --data faces/train --out runs/arcface

and on the five people that ship with the tests, in seconds (a smoke test, not a result):

    python examples/train_margin_softmax.py --data tests/data/faces --backbone simple_cnn \\
        --image-size 32 --embedding-dim 16 --epochs 2 --batch-size 8 --held-out 0.4 --scale 16 \\
        --out runs/arcface-tiny

It writes, under `--out`: `saved_model/` (the export), `model.keras` (the training model, to
resume or fine-tune), `log.csv` (loss and validation metrics per epoch), `report.json` and
`roc.png` (the exported model on the held-out pairs). Evaluate the export on LFW, CFP-FP or
AgeDB `.bin` sets with `examples/evaluate_bin.py`.
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

MARGIN_LOSSES = [name for name in kf.losses.names()
                 if isinstance(kf.losses.get(name), kf.losses.MarginSoftmaxLoss)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image folder, one sub-folder per identity")
    parser.add_argument("--image-size", type=int, default=112, help="square input size in pixels")
    parser.add_argument("--backbone", default="iresnet18", choices=kf.models.backbone_names())
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--loss", default="arcface", choices=MARGIN_LOSSES)
    parser.add_argument("--margin", type=float, help="default: the loss's own (ArcFace: 0.5 rad)")
    parser.add_argument("--scale", type=float, help="s; default: the loss's own (ArcFace: 64)")
    parser.add_argument("--mixup", type=float, default=0.2, help="probability of mixup per batch")
    parser.add_argument("--cutmix", type=float, default=0.0, help="probability of cutmix per batch")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    parser.add_argument("--learning-rate", type=float, default=0.1, help="peak, after the warm-up")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--held-out", type=float, default=0.1,
                        help="fraction of the identities held out for open-set verification")
    parser.add_argument("--num-pairs", type=int, default=3000,
                        help="verification pairs of the held-out identities (decoded into memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/margin_softmax", help="output folder")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_epochs < args.epochs:
        parser.error(f"argument --warmup-epochs: must be in [0, --epochs={args.epochs}); got "
                     f"{args.warmup_epochs}")
    if args.loss == "combined_margin" and args.margin is not None:
        parser.error("argument --margin: combined_margin has three margins (m1, m2, m3) and keeps "
                     f"its defaults; got --margin {args.margin}")
    return parser, args


def open_set_split(parser, args):
    """`(training index, held-out verification pairs)`: disjoint people, pairs as uint8 arrays."""
    try:
        index = data.ImageIndex.from_directory(args.data)
        train, held_out = index.split_identities(test_fraction=args.held_out, seed=args.seed)
        a, b, is_same = held_out.sample_pairs(args.num_pairs, seed=args.seed)
    except ValueError as error:
        parser.error(f"argument --data {args.data!r} / --held-out {args.held_out}: {error}")
    if args.batch_size > len(train):
        parser.error(f"argument --batch-size: must be <= the {len(train)} training images; got "
                     f"{args.batch_size}")
    pairs = data.VerificationPairs(held_out.paths[a], held_out.paths[b], is_same, name="held_out")
    size = (args.image_size, args.image_size)
    print(f"Training on {train.num_classes} identities ({len(train)} images); verifying "
          f"{len(pairs)} pairs of {held_out.num_classes} held-out identities "
          f"({int(is_same.sum())} genuine).")
    return train, data.pair_arrays(pairs, image_size=size, dtype="uint8")


def make_optimizer(args, steps_per_epoch):
    schedule = WarmupSchedule(args.learning_rate, total_steps=steps_per_epoch * args.epochs,
                              warmup_steps=round(args.warmup_epochs * steps_per_epoch))
    if args.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=args.weight_decay or None)
    return keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)


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

    # ---- data: an open-set split, shuffled batches with mixup ------------------------------
    train, held_out_pairs = open_set_split(parser, args)
    corrupt_files = data.CorruptFileLog()  # undecodable files become blank images, named here
    try:
        mix = data.BatchMix(mixup=args.mixup, cutmix=args.cutmix, seed=args.seed)
    except ValueError as error:
        parser.error(f"argument --mixup/--cutmix: {error}")
    augment = data.Augmentation()  # a flip and a mild crop, for aligned faces
    dataset = data.classification_dataset(train, args.batch_size, image_size=size, augment=augment, mix=mix,
                                          seed=args.seed, corrupt_files=corrupt_files)
    steps_per_epoch = int(dataset.cardinality())

    # ---- model: backbone -> embeddings -> CosineHead (cos θ to every identity's centre) ----
    backbone = kf.models.get_backbone(args.backbone, input_shape=(*size, 3),
                                      embedding_dim=args.embedding_dim)
    model, embedder = kf.models.build_recognizer(backbone, train.num_classes)
    loss_args = {key: value for key, value in (("margin", args.margin), ("scale", args.scale))
                 if value is not None}
    loss = kf.losses.get(args.loss, **loss_args)
    model.compile(optimizer=make_optimizer(args, steps_per_epoch), loss=loss)
    settings = {key: value for key, value in loss.get_config().items()
                if key in ("margin", "m1", "m2", "m3", "scale")}
    print(f"{type(loss).__name__}: {settings}")

    # ---- training, verifying the held-out identities after every epoch ---------------------
    callbacks = [
        corrupt_files,
        ev.VerificationCallback(held_out_pairs, far_targets=(1e-3, 1e-2), embedding_model=embedder),
        keras.callbacks.CSVLogger(os.path.join(args.out, "log.csv")),
    ]
    # shuffle=False: the dataset reshuffles itself every epoch, reproducibly from --seed.
    model.fit(dataset, epochs=args.epochs, callbacks=callbacks, shuffle=False, verbose=2)
    model.save(os.path.join(args.out, "model.keras"))

    # ---- export: uint8 images in, unit-length embeddings out ---------------------------------
    export_path = export_embedder(embedder, os.path.join(args.out, "saved_model"))
    print(f"Exported the embedder to {export_path}")
    return report_on_export(export_path, held_out_pairs, args.out)


if __name__ == "__main__":
    main()
