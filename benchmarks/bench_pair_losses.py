"""Loss + gradient time of each pair loss, as a ratio to the batch × batch similarity matmul.

Every pair loss pays at least for S = E·Eᵀ and its gradient (two more matmuls of the same size):
that is the floor. Each configuration runs in its own subprocess, which times the floor and the
loss in the same process (median of repeated calls, after compilation) and reports its peak
resident memory (VmHWM), so that one configuration's allocations cannot hide another's.

On TensorFlow the step is `tf.function(jit_compile=True)` (what `Model.fit` uses on a GPU), or
with `--no-xla` a plain `tf.function` (what `Model.fit` uses by default on a CPU-only machine).

    python benchmarks/bench_pair_losses.py            # batch 128, 512, 2048; dim 512
    python benchmarks/bench_pair_losses.py --batches 128 512 --losses triplet_all supcon
"""

import argparse
import json
import os
import subprocess
import sys
import time

import _machine

XLA = True  # set by --no-xla

LOSSES = {
    "triplet_all": ("triplet", dict(mining="all")),
    "triplet_batch_hard": ("triplet", dict(mining="batch_hard")),
    "triplet_semi_hard": ("triplet", dict(mining="semi_hard")),
    "contrastive": ("contrastive", {}),
    "npair": ("npair", {}),
    "unified_pair": ("unified_pair", {}),
    "circle": ("circle", {}),
    "supcon": ("supcon", {}),
    "multi_similarity": ("multi_similarity", {}),
}


def _median_time(fn, args, min_seconds):
    fn(*args)  # compile
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def run_one(loss_key, batch, dim, min_seconds):
    """In a fresh process: floor time, loss time, peak RSS; printed as one JSON line."""

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    import keras_facemargin as kf

    rng = np.random.default_rng(0)
    per_class = 4
    labels = tf.constant(np.repeat(np.arange(batch // per_class), per_class), tf.float32)
    embeddings = tf.constant(rng.normal(size=(batch, dim)), tf.float32)
    weights = tf.constant(rng.normal(size=(batch, batch)), tf.float32)

    @tf.function(jit_compile=XLA)
    def floor(e):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = tf.reduce_sum(tf.matmul(e, e, transpose_b=True) * weights)
        return value, tape.gradient(value, e)

    def finish(fn):
        def timed(*args):
            value, grad = fn(*args)
            return float(value), grad.numpy()
        return timed

    rss_before = _peak_rss_kib()
    floor_s = _median_time(finish(floor), (embeddings,), min_seconds)
    rss_floor = _peak_rss_kib()
    result = dict(loss=loss_key, batch=batch, floor_ms=1e3 * floor_s,
                  rss_floor_mb=rss_floor / 1024, rss_start_mb=rss_before / 1024)
    if loss_key != "floor":
        name, kwargs = LOSSES[loss_key]
        loss = kf.losses.get(name, **kwargs)

        @tf.function(jit_compile=XLA)
        def step(y, e):
            with tf.GradientTape() as tape:
                tape.watch(e)
                value = loss(y, e)
            return value, tape.gradient(value, e)

        loss_s = _median_time(finish(step), (labels, embeddings), min_seconds)
        result.update(loss_ms=1e3 * loss_s, ratio=loss_s / floor_s)
    result["rss_peak_mb"] = _peak_rss_kib() / 1024
    print(json.dumps(result), flush=True)


def _peak_rss_kib():
    """VmHWM of this process (ru_maxrss would carry the parent's peak over across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))



def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES))
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--no-xla", action="store_true", help="plain tf.function, no XLA")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="batch 16, two losses, minimal timing")
    args = parser.parse_args()
    if args.dry_run:
        args.batches, args.dim, args.min_seconds = [16], 16, 0.0
        args.losses = ["triplet_semi_hard", "circle"]
    global XLA
    XLA = not args.no_xla
    if args.one:
        run_one(args.one[0], int(args.one[1]), args.dim, args.min_seconds)
        return

    import tensorflow as tf

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {when}, {_machine.cpu_model()}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
          f"tf.function(jit_compile={XLA}), dim {args.dim}, P×K batches with K = 4")
    print(f"{'loss':<20}{'batch':>6}{'floor ms':>10}{'loss ms':>10}{'ratio':>8}{'peak RSS MB':>13}")
    for batch in args.batches:
        for key in ["floor", *args.losses]:
            out = subprocess.run(
                [sys.executable, __file__, "--one", key, str(batch), "--dim", str(args.dim),
                 "--min-seconds", str(args.min_seconds), *(["--no-xla"] if args.no_xla else [])],
                capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
            if out.returncode or not lines:
                print(f"{key:<20}{batch:>6}  failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(lines[-1])
            loss_ms = f"{r['loss_ms']:10.2f}" if "loss_ms" in r else f"{'':>10}"
            ratio = f"{r['ratio']:8.2f}" if "ratio" in r else f"{'':>8}"
            print(f"{key:<20}{batch:>6}{r['floor_ms']:10.2f}{loss_ms}{ratio}{r['rss_peak_mb']:13.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
