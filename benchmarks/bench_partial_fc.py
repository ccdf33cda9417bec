"""Training step time and peak memory of PartialFC vs the full CosineHead, as ratios to a 10k full head.

One training step (`model.train_on_batch`, as `fit` runs it) of features [batch, dim] → head →
ArcFaceLoss, optimizer `keras.optimizers.SGD(0.01)` without momentum (the variant that keeps
PartialFC's update sparse on TensorFlow), for:

- `full`: `CosineHead(classes)` + `ArcFaceLoss()` (the loss on all classes);
- `pfc`: `PartialFC(classes, sample_rate)` with the same loss on the sampled classes;
- `pfc+momentum`: the same with `SGD(0.01, momentum=0.9)`, whose momentum update is dense.
- `pfc+lazy`: the same with `keras_facemargin.optimizers.LazySGD(0.01, momentum=0.9)`, whose
  momentum update touches the sampled rows only.

Every step time is a ratio to the baseline, the full head at `--baseline-classes` (10,000), timed
in the same process, interleaved with each configuration (medians over `--repeats`), so that the
ratios survive a noisy machine. Peak memory: each configuration runs alone in a fresh subprocess
that reports its peak resident set size (VmHWM, TensorFlow's own ~0.8 GB included) twice: while
building the model ("build": Keras's random initializers hold about three copies of a weight
matrix for a moment) and, after resetting the counter, over three training steps ("train"); a
configuration whose subprocess fails (out of memory) is reported and not timed. "FLOPs" is the
ratio of the step's matmul FLOPs (forward and both gradients: 6 · batch · dim · classes used) to the
baseline's: the floor of the time ratio wherever the matmuls dominate.

    python benchmarks/bench_partial_fc.py [--classes 10000 100000 1000000] [--quick]
"""

import argparse
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIGS = ["full", "pfc", "pfc+momentum", "pfc+lazy"]


def build(config, classes, dim, sample_rate):
    import keras

    import keras_facemargin as kf

    momentum = 0.9 if config.endswith(("+momentum", "+lazy")) else 0.0
    features = keras.Input((dim,))
    if config == "full":
        model = keras.Model(features, kf.heads.CosineHead(classes)(features))
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=kf.losses.ArcFaceLoss())
        return model
    labels = keras.Input((), dtype="int32")
    head = kf.heads.PartialFC(classes, loss=kf.losses.ArcFaceLoss(), sample_rate=sample_rate, seed=0)
    model = keras.Model([features, labels], head(features, labels))
    optimizer = kf.optimizers.LazySGD if config.endswith("+lazy") else keras.optimizers.SGD
    model.compile(optimizer=optimizer(0.01, momentum=momentum))
    return model


def step_fn(config, model, classes, size, dim):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(size, dim)).astype("float32")
    labels = rng.integers(0, classes, size=size).astype("int32")
    if config == "full":
        return lambda: model.train_on_batch(x, labels)
    return lambda: model.train_on_batch([x, labels])


def time_steps(step, steps):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def steps_for(seconds_per_step, budget=1.0):
    return max(1, round(budget / max(seconds_per_step, 1e-6)))


def used_classes(config, classes, sample_rate):
    return classes if config == "full" else min(classes, math.ceil(sample_rate * classes))


def peak_memory(config, classes, args):
    """Runs one configuration alone in a subprocess: ((build, train) peak RSS in MiB, failure or "")."""
    command = [sys.executable, os.path.abspath(__file__), "--memory-of", config, "--classes", str(classes),
               "--batch", str(args.batch), "--dim", str(args.dim), "--sample-rate", str(args.sample_rate)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        killed = ", killed: out of memory?" if out.returncode < 0 else ""
        return None, f"failed (exit {out.returncode}{killed})"
    return tuple(float(v) for v in out.stdout.split()[-2:]), ""


def vm_hwm_mib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_alone(config, classes, args):
    model = build(config, classes, args.dim, args.sample_rate)
    step = step_fn(config, model, classes, args.batch, args.dim)
    build_peak = vm_hwm_mib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    time_steps(step, 3)
    print(build_peak, vm_hwm_mib())


def label_of(config, sample_rate):
    return {"full": "full CosineHead (SGD)", "pfc": f"PartialFC {sample_rate:g} (SGD)",
            "pfc+momentum": f"PartialFC {sample_rate:g} (SGD mom. 0.9)",
            "pfc+lazy": f"PartialFC {sample_rate:g} (LazySGD 0.9)"}[config]


def measure(config, classes, args, baseline):
    """One table row: step time and its ratio to the baseline, timed interleaved; peak memory."""
    base_step, base_steps, base_memory, base_times = baseline
    used = used_classes(config, classes, args.sample_rate)
    row = f"{classes:>10,}  {label_of(config, args.sample_rate):<30}{used:>10,}"
    memory, failure = (None, "") if args.no_memory else peak_memory(config, classes, args)
    if failure:
        return f"{row}  not timed: memory run {failure}"
    model = build(config, classes, args.dim, args.sample_rate)
    step = step_fn(config, model, classes, args.batch, args.dim)
    steps = steps_for(time_steps(step, 2))
    seconds, ratios = [], []
    for _ in range(args.repeats):
        base_times.append(time_steps(base_step, base_steps))
        seconds.append(time_steps(step, steps))
        ratios.append(seconds[-1] / base_times[-1])
    row += f"{statistics.median(seconds) * 1e3:>10.1f}{statistics.median(ratios):>8.2f}"
    row += f"{used / args.baseline_classes:>7.1f}"
    if memory is not None:
        row += f"{memory[0]:>11.0f}{memory[1]:>11.0f}{memory[1] / base_memory[1]:>7.2f}"
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--baseline-classes", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--quick", action="store_true", help="10k and 30k classes, 2 repeats")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one repeat, no memory runs")
    args = parser.parse_args()
    if args.dry_run:
        args.classes, args.baseline_classes, args.batch, args.dim = [200], 100, 8, 16
        args.sample_rate, args.repeats, args.no_memory, args.configs = 0.5, 1, True, ["full", "pfc"]
    if args.memory_of:
        return run_alone(args.memory_of, args.classes[0], args)
    if args.quick:
        args.classes, args.repeats = [10_000, 30_000], 2

    import keras
    import tensorflow as tf

    print(f"# bench_partial_fc: batch {args.batch}, dim {args.dim}, ArcFaceLoss, "
          f"sample_rate {args.sample_rate}; keras {keras.__version__}, tensorflow {tf.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, load average {os.getloadavg()[0]:.1f}; "
          "XLA: Keras default (off on CPU-only machines)")
    base_classes = args.baseline_classes
    model = build("full", base_classes, args.dim, args.sample_rate)
    base_step = step_fn("full", model, base_classes, args.batch, args.dim)
    base_steps = steps_for(time_steps(base_step, 3))
    base_memory, _ = ((0, 0), "") if args.no_memory else peak_memory("full", base_classes, args)
    baseline = (base_step, base_steps, base_memory, [])
    print(f"\n{'classes':>10}  {'head (optimizer)':<30}{'used':>10}{'step ms':>10}{'ratio':>8}{'FLOPs':>7}"
          f"{'build MiB':>11}{'train MiB':>11}{'ratio':>7}", flush=True)
    for classes in args.classes:
        for config in args.configs:
            print(measure(config, classes, args, baseline), flush=True)
            gc.collect()
    times = baseline[3]
    print(f"\n# baseline (full head, {base_classes:,} classes): median step "
          f"{statistics.median(times) * 1e3:.1f} ms over the run (min {min(times) * 1e3:.1f}), peak RSS "
          f"{base_memory[0]:.0f} MiB building, {base_memory[1]:.0f} MiB training; "
          f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
