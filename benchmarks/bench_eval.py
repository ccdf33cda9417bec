"""Evaluation speed, as ratios to baselines measured in the same process.

1. The full verification report (ROC, AUC, EER, TAR at three FARs, best accuracy, 10-fold accuracy)
   for 1,000,000 pairs, as a ratio to scikit-learn's `roc_auc_score` alone on the same data.
2. Pair scoring throughput at dim 512 (`indexed_pair_scores`: gather, normalise, dot, in chunks)
   against the floor of a row-wise dot product of already gathered, already normalised rows.
3. With `--data DIR` (an image folder): what `facemargin evaluate` does, `evaluate_pair_sets` on
   `--eval-pairs` pairs of the folder's images (each unique image read, decoded and embedded once,
   in batches, then scored), in images/s of unique images, against `model.predict` alone on the
   same images already decoded into memory (target >= 0.9x); with and without the flip test, for
   the Keras embedder and for the exported SavedModel as the CLI loads it. Interleaved repeats.
   A control row feeds `model.predict` the same array through a dataset without tf.data's
   autotuning, which Keras's own pipeline for an array keeps on (its calls then stall at times).
   A last line gives what reading, decoding, batching and scoring cost alone (an embedder that
   costs nothing), in ms and as a share of the control's time.

    python benchmarks/bench_eval.py [--pairs 1000000] [--dim 512] [--repeats 5]
    python benchmarks/bench_eval.py --data tests/data/faces --backbone iresnet18 --image-size 112
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from keras_facemargin import evaluation as ev

BASELINE = "model.predict, decoded images (baseline)"
CONTROL = "the same, tf.data autotuning off (control)"
FIXED = "our fixed costs (evaluate_pair_sets with an embedder that costs nothing)"


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_embedding(args):
    import tempfile

    from keras_facemargin import cli, data, models
    from keras_facemargin.export import export_embedder

    index = data.ImageIndex.from_directory(args.data)
    if args.max_images and len(index) > args.max_images:
        index = index.subset(np.arange(args.max_images))
    a, b, same = index.sample_pairs(args.eval_pairs, seed=0)
    pairs = data.VerificationPairs(index.paths[a], index.paths[b], same, name="bench")
    sets = ev.PairSets({"bench": pairs})
    size = (args.image_size, args.image_size)
    backbone = models.get_backbone(args.backbone, input_shape=(*size, 3), embedding_dim=args.embedding_dim)
    _, embedder = models.build_recognizer(backbone, 10)
    images = sets.images(size, args.batch_size).astype(np.float32)
    print(f"\n(3) evaluate_pair_sets vs model.predict: {len(pairs)} pairs of {len(sets)} unique images "
          f"({2 * len(pairs)} per-pair embeddings before) of {args.data}; {args.backbone} at "
          f"{size[0]}x{size[1]}, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        export_embedder(embedder, os.path.join(tmp, "saved_model"))
        served = cli.load_embedder(os.path.join(tmp, "saved_model"))

        # The control: the same images through a dataset with tf.data's autotuning off. Keras's
        # own pipeline for an array keeps it on, and on this VM about half of its `predict` calls
        # then stall for about a second (BENCHMARKS.md, "Evaluation, each image once").
        import tensorflow as tf

        options = tf.data.Options()
        options.autotune.enabled = False
        steady = {flip: tf.data.Dataset.from_tensor_slices(images[:, :, ::-1] if flip else images)
                  .batch(args.batch_size).prefetch(2).with_options(options)
                  for flip in (False, True)}

        def predict(flip, control=False):
            def once(mirror):
                x = steady[mirror] if control else images[:, :, ::-1] if mirror else images
                return embedder.predict(x, batch_size=None if control else args.batch_size,
                                        verbose=0)

            return once(False) + once(True) if flip else once(False)

        def free(batch):  # an embedder that costs nothing: what is left is our fixed costs
            return np.asarray(batch)[:, :8, 0, 0] + 1.0

        free.image_size = size
        runs = {
            BASELINE: lambda flip: predict(flip),
            CONTROL: lambda flip: predict(flip, control=True),
            "evaluate_pair_sets, Keras model": lambda flip: ev.evaluate_pair_sets(
                embedder, sets, flip=flip, batch_size=args.batch_size),
            "evaluate_pair_sets, SavedModel (CLI)": lambda flip: ev.evaluate_pair_sets(
                served, sets, flip=flip, batch_size=args.batch_size),
            FIXED: lambda flip: ev.evaluate_pair_sets(free, sets, flip=flip,
                                                      batch_size=args.batch_size),
        }
        for flip in (False, True):
            for fn in runs.values():  # warm-up: tracing, page cache
                fn(flip)
            times = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn(flip)
                    times[name].append(time.perf_counter() - start)
            print(f"{'flip test' if flip else 'no flip':<46}{'seconds':>9}{'images/s':>10}"
                  f"{'ratio':>8}{'/ctrl':>7}  seconds of each repeat")
            fixed = times.pop(FIXED)
            for name, values in times.items():
                ratios = [statistics.median(b / t for t, b in zip(values, times[base], strict=True))
                          for base in (BASELINE, CONTROL)]
                seconds = statistics.median(values)
                print(f"  {name:<44}{seconds:>9.3f}{len(sets) / seconds:>10.1f}{ratios[0]:>8.2f}"
                      f"{ratios[1]:>7.2f}  {' '.join(f'{v:.2f}' for v in values)}")
            share = statistics.median(f / c for f, c in zip(fixed, times[CONTROL], strict=True))
            print(f"  {FIXED}: {statistics.median(fixed) * 1e3:.0f} ms, {share:.1%} of the "
                  f"control's time  {' '.join(f'{v * 1e3:.0f}' for v in fixed)}")
    print("  (ratio: images/s over the baseline's, /ctrl: over the control's; target >= 0.9;\n"
          "   ours also reads, decodes and scores)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", help="an image folder (one sub-folder per identity) for part (3)")
    parser.add_argument("--eval-pairs", type=int, default=550)
    parser.add_argument("--max-images", type=int, default=0, help="use only the first N images")
    parser.add_argument("--backbone", default="iresnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64, help="as facemargin evaluate's default")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one repeat")
    args = parser.parse_args()
    if args.dry_run:
        args.pairs, args.images, args.dim, args.repeats = 1000, 100, 16, 1
        args.eval_pairs, args.backbone, args.image_size, args.embedding_dim = 40, "simple_cnn", 32, 16
        args.max_images = 20
    rng = np.random.default_rng(0)
    print(f"# bench_eval: {args.pairs:,} pairs; {os.cpu_count()} CPUs, {platform.machine()}; "
          f"{time.strftime('%Y-%m-%d')}")

    labels = rng.integers(0, 2, size=args.pairs)
    scores = (rng.normal(size=args.pairs) + 1.5 * labels).astype(np.float32)
    base = timed(lambda: roc_auc_score(labels, scores), args.repeats)
    full = timed(lambda: ev.verification_report(labels, scores), args.repeats)
    print(f"roc_auc_score alone            {base * 1e3:9.1f} ms")
    print(f"verification_report (all)      {full * 1e3:9.1f} ms   ratio {full / base:.2f}  (target <= 3)")

    emb = rng.normal(size=(args.images, args.dim)).astype(np.float32)
    ia = rng.integers(0, args.images, size=args.pairs)
    ib = rng.integers(0, args.images, size=args.pairs)
    unit = ev.normalize_rows(emb)
    chunk = 65536

    def floor():
        for s in range(0, args.pairs, chunk):
            np.einsum("ij,ij->i", unit[ia[s:s + chunk]], unit[ib[s:s + chunk]])

    floor_t = timed(floor, args.repeats)
    ours = timed(lambda: ev.indexed_pair_scores(emb, ia, ib), args.repeats)
    dist = timed(lambda: ev.indexed_pair_scores(emb, ia, ib, "squared_euclidean"), args.repeats)
    print(f"floor: gather + row dot        {args.pairs / floor_t / 1e6:9.2f} M pairs/s")
    print(f"indexed_pair_scores cosine     {args.pairs / ours / 1e6:9.2f} M pairs/s   "
          f"ratio {ours / floor_t:.2f}")
    print(f"indexed_pair_scores sq. eucl.  {args.pairs / dist / 1e6:9.2f} M pairs/s   "
          f"ratio {dist / floor_t:.2f}")
    if args.data:
        bench_embedding(args)
    print(f"# load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
