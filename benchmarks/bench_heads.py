"""One training step of embedding -> head -> loss, as a ratio to Dense + CategoricalCrossentropy.

For each number of classes, every margin loss (with the CosineHead it needs: feature norms for
AdaFace/MagFace, running statistics, K = 3 sub-centres for SubCenter-ArcFace) and the baseline
(`keras.layers.Dense` + `keras.losses.CategoricalCrossentropy(from_logits=True)`) are timed in the
same process, interleaved, so that the ratios survive a noisy machine. The step is Keras's own
train step (`model.train_on_batch`) as `fit` runs it: by default Keras compiles it with XLA on a
GPU and without on a CPU-only machine; `--jit` forces XLA.
Peak memory is measured separately: each configuration runs alone in a fresh subprocess and
reports its peak resident set size (VmHWM), TensorFlow's own ~0.8 GB included.

    python benchmarks/bench_heads.py [--classes 1000 10000 100000] [--batch 256] [--dim 512] [--jit]
                                     [--losses arcface adaface ...]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LOSSES = ["normface", "sphereface", "cosface", "arcface", "combined_margin", "adaface", "magface",
          "curricularface", "subcenter_arcface", "elasticface", "adacos"]


def build(config, classes, dim, jit_compile="auto"):
    import keras

    import keras_facemargin as kf

    if config == "baseline":
        head = keras.layers.Dense(classes)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    else:
        loss = kf.losses.get(config)
        head = kf.heads.CosineHead(classes, loss=loss)  # the head the loss needs (norms, state, K)
    model = keras.Sequential([keras.Input((dim,)), head])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss, jit_compile=jit_compile)
    return model


def batch(config, classes, size, dim):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(size, dim)).astype("float32")
    labels = rng.integers(0, classes, size=size)
    if config == "baseline":
        y = np.zeros((size, classes), "float32")
        y[np.arange(size), labels] = 1.0
        return x, y
    return x, labels.astype("int32")


def time_steps(model, x, y, steps):
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return (time.perf_counter() - start) / steps


def timing(classes, size, dim, repeats, jit_compile, losses=LOSSES):
    configs = ["baseline"] + list(losses)
    models = {c: build(c, classes, dim, jit_compile) for c in configs}
    data = {c: batch(c, classes, size, dim) for c in configs}
    steps = max(2, int(20_000 / classes) + 1)
    for c in configs:  # compile and warm up
        time_steps(models[c], *data[c], 2)
    samples = {c: [] for c in configs}
    for _ in range(repeats):
        for c in configs:
            samples[c].append(time_steps(models[c], *data[c], steps))
    base = statistics.median(samples["baseline"])
    rows = {}
    for c in configs:
        ratios = [t / b for t, b in zip(samples[c], samples["baseline"], strict=False)]
        rows[c] = (statistics.median(samples[c]), statistics.median(ratios))
    return base, rows


def peak_memory(config, classes, size, dim):
    """Runs one configuration alone in a subprocess; returns its peak RSS in MiB."""
    command = [sys.executable, os.path.abspath(__file__), "--memory-of", config,
               "--classes", str(classes), "--batch", str(size), "--dim", str(dim)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_alone(config, classes, size, dim):
    model = build(config, classes, dim)
    time_steps(model, *batch(config, classes, size, dim), 3)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    with open("/proc/self/status") as f:
        peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(peak_kib / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--jit", action="store_true", help="compile every train step with XLA")
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES, help="default: all")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one repeat, no memory runs")
    args = parser.parse_args()
    if args.dry_run:
        args.classes, args.batch, args.dim, args.repeats, args.no_memory = [50], 8, 16, 1, True
    if args.memory_of:
        return run_alone(args.memory_of, args.classes[0], args.batch, args.dim)

    import keras
    import tensorflow as tf

    print(f"# bench_heads: batch {args.batch}, dim {args.dim}; keras {keras.__version__}, "
          f"tensorflow {tf.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"# {time.strftime('%Y-%m-%d')}; baseline = Dense + CategoricalCrossentropy(from_logits=True); "
          f"XLA: {'forced' if args.jit else 'Keras default (off on CPU-only machines)'}")
    for classes in args.classes:
        base, rows = timing(classes, args.batch, args.dim, args.repeats, True if args.jit else "auto",
                            args.losses)
        print(f"\nclasses = {classes:,}   (baseline step {base * 1e3:.1f} ms)")
        print(f"{'head + loss':<28}{'step ms':>10}{'ratio':>8}{'peak RSS MiB':>15}")
        for config, (seconds, ratio) in rows.items():
            label = "Dense + CCE (baseline)" if config == "baseline" else f"CosineHead + {config}"
            memory = "" if args.no_memory else f"{peak_memory(config, classes, args.batch, args.dim):.0f}"
            print(f"{label:<28}{seconds * 1e3:>10.1f}{ratio:>8.2f}{memory:>15}", flush=True)


if __name__ == "__main__":
    main()
