"""Face verification with Partial FC, for training sets with very many identities.

**The task.** As in `train_margin_softmax.py`: train an embedding network through a
margin-softmax classifier over the training identities, and verify people it never saw by the
cosine of their embeddings. The difference is scale: public face sets hold from 10,000
(CASIA-WebFace) to 360,000 (Glint360K) and millions (WebFace42M) of identities.

**Why Partial FC.** With C identities, the full classifier computes `[batch, C]` cosines every
step, and their gradient updates all C class centres. `heads.PartialFC` computes the cosines of
the batch's own identities plus random others, S = ⌈sample_rate × C⌉ in all, and applies the
margin loss to those; An et al. (CVPR 2022) find sample_rate = 0.1 as accurate as the full
softmax. Three things change against the plain head:

- *The labels are a model input.* Which classes are sampled depends on the labels, so the head
  takes `(embeddings, labels)` and adds the loss to the model itself: the dataset yields
  `((images, labels),)` and `compile` takes no loss. For the same reason no mixup: the head
  needs one identity per image.
- *The optimizer is `optimizers.LazySGD`.* On TensorFlow the centres' gradient is the S sampled
  rows only; Keras's SGD with momentum (or Adam) would still update every centre and its
  momentum each step, gigabytes of memory traffic at a million identities. LazySGD updates only
  the sampled rows and their momentum, as the paper's implementation does. Weight decay is kept
  for the backbone and left off the centres (they are normalised, so their length does not
  matter, and decaying them would touch every row again).
- *S must hold every identity of a batch*: at least the batch size (the script checks it before
  any work; `--sample-rate 1` is exactly the full `CosineHead` + loss).

The defaults follow ArcFace's recipe for large face sets: an IR-ResNet-50 on 112×112 crops,
ArcFace with s = 64 and m = 0.5, a peak rate of 0.1, momentum 0.9 and weight decay 5e-4 (the
paper's batch is 512: raise `--batch-size` as memory allows). The rest is as in the
margin-softmax example: an open-set split (`--held-out` identities, 1% by default, their pairs
verified after every epoch by a `VerificationCallback` and at the end on the exported
SavedModel), a linear warm-up then cosine decay (`WarmupSchedule`), images as float32 pixels in
[0, 255] scaled inside the model, so that the export takes raw uint8 images.

    python examples/train_partial_fc.py --data webface/train --sample-rate 0.1 --out runs/pfc

For InsightFace's RecordIO sets (MS1MV2, Glint360K), build the training index with
`data.ImageIndex.from_recordio("faces_emore/train.rec")` and verify on their `.bin` sets:
`evaluation.VerificationCallback(evaluation.read_pair_sets(["lfw.bin", "cfp_fp.bin"]),
image_size=(112, 112))`, and `examples/evaluate_bin.py` on the export. On the five people that
ship with the tests (a smoke test, not a result: three training identities, so S = 2 of 3 and
batches of 2):

    python examples/train_partial_fc.py --data tests/data/faces --backbone simple_cnn \\
        --image-size 32 --embedding-dim 16 --epochs 2 --batch-size 2 --sample-rate 0.5 \\
        --held-out 0.4 --scale 16 --out runs/pfc-tiny

It writes, under `--out`: `saved_model/`, `model.keras` (the training model, labels input
included), `log.csv`, `report.json` and `roc.png`.
"""

import argparse
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_facemargin as kf  # noqa: E402
from keras_facemargin import data  # noqa: E402
from keras_facemargin import evaluation as ev  # noqa: E402
from keras_facemargin.export import export_embedder  # noqa: E402
from keras_facemargin.optimizers import LazySGD, WarmupSchedule  # noqa: E402

MARGIN_LOSSES = [name for name in kf.losses.names()
                 if isinstance(kf.losses.get(name), kf.losses.MarginSoftmaxLoss)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image folder, one sub-folder per identity")
    parser.add_argument("--image-size", type=int, default=112, help="square input size in pixels")
    parser.add_argument("--backbone", default="iresnet50", choices=kf.models.backbone_names())
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--loss", default="arcface", choices=MARGIN_LOSSES)
    parser.add_argument("--margin", type=float, help="default: the loss's own (ArcFace: 0.5 rad)")
    parser.add_argument("--scale", type=float, help="s; default: the loss's own (ArcFace: 64)")
    parser.add_argument("--sample-rate", type=float, default=0.1,
                        help="fraction of the identities whose cosines each step computes")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.1, help="peak, after the warm-up")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="of the backbone")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--held-out", type=float, default=0.01,
                        help="fraction of the identities held out for open-set verification")
    parser.add_argument("--num-pairs", type=int, default=3000,
                        help="verification pairs of the held-out identities (decoded into memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/partial_fc", help="output folder")
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
    # Every identity of a batch must be among the S sampled classes.
    sampled = math.ceil(args.sample_rate * train.num_classes)
    needed = min(args.batch_size, train.num_classes)
    if sampled < needed:
        parser.error(f"argument --sample-rate: {args.sample_rate} samples {sampled} of the "
                     f"{train.num_classes} training identities per step, fewer than the up to {needed} "
                     f"identities of a batch of {args.batch_size}; expected --sample-rate >= "
                     f"{needed / train.num_classes:.3g}, or a smaller --batch-size")
    pairs = data.VerificationPairs(held_out.paths[a], held_out.paths[b], is_same, name="held_out")
    size = (args.image_size, args.image_size)
    print(f"Training on {train.num_classes} identities ({len(train)} images), {sampled} sampled per "
          f"step; verifying {len(pairs)} pairs of {held_out.num_classes} held-out identities "
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

    # ---- data: an open-set split; the labels go into the model as its second input ----------
    train, held_out_pairs = open_set_split(parser, args)
    corrupt_files = data.CorruptFileLog()  # undecodable files become blank images, named here
    dataset = data.classification_dataset(train, args.batch_size, image_size=size,
                                          augment=data.Augmentation(), seed=args.seed,
                                          corrupt_files=corrupt_files)
    steps_per_epoch = int(dataset.cardinality())
    dataset = dataset.map(lambda images, labels: ((images, labels),))

    # ---- model: backbone -> embeddings -> PartialFC, which holds the margin loss -------------
    backbone = kf.models.get_backbone(args.backbone, input_shape=(*size, 3),
                                      embedding_dim=args.embedding_dim)
    loss_args = {key: value for key, value in (("margin", args.margin), ("scale", args.scale))
                 if value is not None}
    head = kf.heads.PartialFC(train.num_classes, loss=kf.losses.get(args.loss, **loss_args),
                              sample_rate=args.sample_rate, seed=args.seed, name="partial_fc")
    model, embedder = kf.models.build_recognizer(backbone, partial_fc=head)  # inputs [images, labels]
    schedule = WarmupSchedule(args.learning_rate, total_steps=steps_per_epoch * args.epochs,
                              warmup_steps=round(args.warmup_epochs * steps_per_epoch))
    optimizer = LazySGD(schedule, momentum=args.momentum, weight_decay=args.weight_decay or None)
    optimizer.exclude_from_weight_decay(var_list=[head.kernel])  # the centres stay sparse
    model.compile(optimizer=optimizer)  # no loss: PartialFC adds it

    # ---- training, verifying the held-out identities after every epoch ---------------------
    callbacks = [
        corrupt_files,
        ev.VerificationCallback(held_out_pairs, far_targets=(1e-3, 1e-2), embedding_model=embedder),
        keras.callbacks.CSVLogger(os.path.join(args.out, "log.csv")),
    ]
    # shuffle=False: the dataset reshuffles itself every epoch, reproducibly from --seed.
    model.fit(dataset, epochs=args.epochs, callbacks=callbacks, shuffle=False, verbose=2)
    model.save(os.path.join(args.out, "model.keras"))

    # ---- export: only the embedder; the centres are not needed to verify -------------------
    export_path = export_embedder(embedder, os.path.join(args.out, "saved_model"))
    print(f"Exported the embedder to {export_path}")
    return report_on_export(export_path, held_out_pairs, args.out)


if __name__ == "__main__":
    main()
