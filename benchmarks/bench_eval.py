"""Evaluation speed, as ratios to baselines measured in the same process.

1. The full verification report (ROC, AUC, EER, TAR at three FARs, best accuracy, 10-fold accuracy)
   for 1,000,000 pairs, as a ratio to scikit-learn's `roc_auc_score` alone on the same data.
2. Pair scoring throughput at dim 512 (`indexed_pair_scores`: gather, normalise, dot, in chunks)
   against the floor of a row-wise dot product of already gathered, already normalised rows.

    python benchmarks/bench_eval.py [--pairs 1000000] [--dim 512] [--repeats 5]
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from keras_facemargin import evaluation as ev


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
