"""IJB-C-sized template-pair scoring: time and memory, as ratios to eval_ijbc.py's own code.

IJB-C's 1:1 protocol has 23,124 templates and 15,658,489 template pairs (19,557 genuine).
On synthetic template features of that size (dim 512):

1. `score_template_pairs` (chunks of `--chunk` pairs, float32) against the `verification()`
   loop of InsightFace's `eval_ijbc.py` re-run here (a `template2id` table, 100,000 pairs at a
   time, float64 features as its `sklearn.preprocessing.normalize` leaves them).
2. `ijb_report` (two ROC curves: ours exact, and eval_ijbc.py's `drop_intermediate` one for its
   table) against one `sklearn.metrics.roc_curve` call, as eval_ijbc.py does.

Peak memory is what `tracemalloc` sees NumPy allocate during each step, beyond its inputs.

    python benchmarks/bench_ijb.py [--pairs 15658489] [--templates 23124] [--dim 512]
"""

import argparse
import os
import platform
import time
import tracemalloc

import numpy as np
from sklearn.metrics import roc_curve

from keras_facemargin import evaluation as ev


def measured(fn):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def insightface_verification(template_norm_feats, unique_templates, p1, p2):
    """eval_ijbc.py's verification(), as written there (without its progress prints)."""
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    sublists = [total_pairs[i:i + batchsize] for i in range(0, len(p1), batchsize)]
    for s in sublists:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        similarity_score = np.sum(feat1 * feat2, -1)
        score[s] = similarity_score.flatten()
    return score


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15_658_489)
    parser.add_argument("--genuine", type=int, default=19_557)
    parser.add_argument("--templates", type=int, default=23_124)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=65_536)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="10,000 pairs of 400 templates")
    args = parser.parse_args()
    if args.dry_run:
        args.pairs, args.genuine, args.templates, args.dim, args.chunk = 10_000, 100, 400, 16, 1000
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# bench_ijb: {args.pairs:,} pairs of {args.templates:,} templates, dim {args.dim}; "
          f"{os.cpu_count()} CPUs, {platform.machine()}; {when}")
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10 * args.templates, args.templates, replace=False)) + 1
    people = rng.integers(0, args.templates // 4, args.templates)
    centres = rng.normal(size=(args.templates // 4, args.dim)).astype(np.float32)
    feats = ev.normalize_rows(centres[people] + 2.5 * rng.normal(size=(args.templates, args.dim)))
    a = np.sort(rng.integers(0, args.templates, args.pairs))
    b = rng.integers(0, args.templates, args.pairs)
    labels = (people[a] == people[b]).astype(np.int8)
    extra = args.genuine - int(labels.sum())
    if extra > 0:  # make the genuine count IJB-C's
        same = np.flatnonzero(labels == 0)[:extra]
        partner = {}
        for t, p in enumerate(people):
            partner.setdefault(p, []).append(t)
        b[same] = [partner[people[t]][0] for t in a[same]]
        labels[same] = 1
    ta, tb = ids[a], ids[b]
    del a, b
    print(f"pairs: {len(labels):,} ({int(labels.sum()):,} genuine)")

    scores, ours, ours_peak = measured(
        lambda: ev.score_template_pairs(ids, feats, ta, tb, chunk_size=args.chunk))
    print(f"score_template_pairs      {ours:7.2f} s  {len(ta) / ours / 1e6:6.2f} M pairs/s  "
          f"peak {ours_peak:7.0f} MiB (the scores: {scores.nbytes / 2**20:.0f} MiB)")
    if not args.skip_baseline:
        feats64 = feats.astype(np.float64)
        reference, theirs, theirs_peak = measured(
            lambda: insightface_verification(feats64, ids, ta, tb))
        np.testing.assert_allclose(scores, reference, atol=1e-5)
        print(f"eval_ijbc.py verification {theirs:7.2f} s  {len(ta) / theirs / 1e6:6.2f} M pairs/s  "
              f"peak {theirs_peak:7.0f} MiB   time ratio ours / theirs {ours / theirs:.2f}")
        del reference, feats64
    fars = ev.ijb.FAR_TARGETS
    report, ours_roc, roc_peak = measured(lambda: ev.ijb_report(labels, scores, fars, "synthetic", len(ids)))
    print(f"ijb_report (2 ROCs)       {ours_roc:7.2f} s  peak {roc_peak:7.0f} MiB")
    _, base_roc, base_peak = measured(lambda: roc_curve(labels, scores))
    print(f"one sklearn roc_curve     {base_roc:7.2f} s  peak {base_peak:7.0f} MiB   ratio "
          f"{ours_roc / base_roc:.2f}")
    print(report)
    print(f"inputs: pair ids {(ta.nbytes + tb.nbytes) / 2**20:.0f} MiB, labels "
          f"{labels.nbytes / 2**20:.0f} MiB, features {feats.nbytes / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
