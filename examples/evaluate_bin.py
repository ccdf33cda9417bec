"""Evaluate an exported face embedder on InsightFace `.bin` verification sets (LFW, CFP-FP, AgeDB).

**The task.** Face-recognition results are reported as verification accuracy on a few public pair
sets: LFW (6,000 pairs), CFP-FP (7,000 frontal–profile pairs), AgeDB-30 (6,000 pairs 30 years
apart), CALFW, CPLFW. InsightFace distributes them as `.bin` files: a pickle of
`(list of encoded JPEG images, list of is_same)`, two consecutive images per pair, aligned
112×112 crops. This script embeds every image of one or several such sets with a trained model
and prints one row per set.

**How.**

- `evaluation.read_pair_sets` reads any mix of `.bin` files, LFW `pairs.txt` files (with
  `--root`, the LFW image folder) and `path_a path_b label` lists, telling them apart by their
  content. A `.bin` is unpickled by a loader that refuses every function and class, so a
  malicious file cannot run code.
- `evaluation.evaluate_pair_sets` decodes and embeds each *unique* image once, across all the
  sets, and scores the pairs by cosine. `--flip` adds each image's mirror to its embedding (the
  "flip test" that published numbers use).
- The table's 10-fold accuracy is InsightFace's protocol (thresholds on a grid, ten contiguous
  folds), comparable with the `Accuracy-Flip: 0.99817+-0.00229` that its training logs print;
  `report.json` also holds the exact midpoint-threshold 10-fold accuracy, AUC, EER and TAR at
  FAR = 1e-4, 1e-3, 1e-2. A set of 6,000 pairs has 3,000 impostors, too few to measure
  FAR = 1e-4 (it needs 10,000): the script says so rather than print it silently.
- The model is a SavedModel from `export.export_embedder` (uint8 images in, unit embeddings
  out, loaded with TensorFlow alone), or a `.keras` file: a training model's head is cut off by
  `evaluation.embedding_model`. Images are decoded at the model's own input size; a model
  trained on differently aligned or sized crops than the sets' will score poorly.

    python examples/evaluate_bin.py --model runs/arcface/saved_model \\
        lfw.bin cfp_fp.bin agedb_30.bin --flip --out eval/arcface
    python examples/evaluate_bin.py --model runs/arcface/model.keras \\
        lfw/pairs.txt --root lfw/lfw-deepfunneled --out eval/lfw

It writes, under `--out`: `report.json` (every metric of every set), `roc.png` (all sets on one
figure), `<set>_det.png` and `<set>_scores.png` (genuine and impostor score histograms).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


from keras_facemargin import data  # noqa: E402
from keras_facemargin import evaluation as ev  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help=".bin sets, LFW pairs.txt files or pair lists")
    parser.add_argument("--model", required=True, help="a SavedModel folder or a .keras file")
    parser.add_argument("--root", help="the LFW image folder (pairs.txt), the root of pair lists")
    parser.add_argument("--flip", action="store_true", help="add each image's mirror's embedding")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--folds", type=int, default=10, help="k of the k-fold accuracy")
    parser.add_argument("--out", default="eval", help="output folder")
    return parser, parser.parse_args(argv)


def main(argv=None):
    parser, args = parse_args(argv)
    try:  # a SavedModel folder or a .keras file, as one function of image batches
        embed = ev.load_embedder(args.model)
    except ValueError as error:
        parser.error(f"argument --{error}")
    size = embed.image_size
    try:
        sets = ev.read_pair_sets(args.pairs, root=args.root, argument="pairs")
    except ValueError as error:
        parser.error(str(error))
    print(f"{sets}; embedding at {size[0]}×{size[1]}{' with the flip test' if args.flip else ''}")

    corrupt_files = data.CorruptFileLog()  # an undecodable image is scored as a blank one
    result = ev.evaluate_pair_sets(embed, sets, image_size=size, flip=args.flip,
                                   batch_size=args.batch_size, corrupt_files=corrupt_files,
                                   folds=args.folds)
    print(result.table())
    for name, report in result.reports.items():
        unresolved = ", ".join(f"{far:g}" for far in report.unresolved_fars())
        if unresolved:
            print(f"note: {name} has {report.num_impostors} impostor pairs, too few to measure TAR "
                  f"at FAR = {unresolved}: those columns are the TAR at FAR = 0")
    if corrupt_files.count:
        bad = corrupt_files.collect()
        print(f"warning: {corrupt_files.count} image(s) did not decode and were scored as blank: "
              + "; ".join(f"{f.path} ({f.reason})" for f in bad[:5]))

    written = result.save(args.out)
    print(f"Wrote {', '.join(os.path.basename(p) for p in written)} to {args.out}")
    return result


if __name__ == "__main__":
    main()
