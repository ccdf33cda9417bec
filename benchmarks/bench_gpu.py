"""GPU throughput under JAX in mixed bfloat16: the head + loss step and an IR-ResNet-50 training step.

For a machine with an NVIDIA GPU and JAX (PyTorch optional, TensorFlow not needed: nothing here
imports it, and `--no-tensorflow` makes sure of that). Two measurements, each printed with its
rate and its fraction of the GPU's bfloat16 peak:

1. Heads and losses: one compiled training step (`train_on_batch`) of features `[batch, 512]` →
   `CosineHead(classes)` → `ArcFaceLoss`, against `Dense` + softmax cross-entropy in the same
   process (the ratio of bench_heads.py), at 10k and 100k classes.
2. IR-ResNet-50 at 112×112: the whole training step (forward, ArcFace loss, backward, SGD with
   momentum and weight decay) of `build_recognizer(iresnet50) + CosineHead + ArcFaceLoss`, at
   each `--batches` (128–512), images/s.

FLOPs are counted analytically (2·MACs of every convolution and dense layer and of the head's
matmul, a training step = 3× the forward pass), and divided by the time: the achieved FLOP/s as a
fraction of (a) the GPU's dense bfloat16 tensor-core peak from its datasheet, when the device name
is in `PEAK_BF16_TFLOPS` (or `--peak-tflops`), and (b) a bf16 matmul of 8192² timed here
(the peak this GPU actually reaches on the simplest kernel). Inputs are placed on the device once,
so the steps time the GPU, not the host copy. Medians of `--repeats` timed blocks of `--steps`.

    KERAS_BACKEND=jax python benchmarks/bench_gpu.py [--batches 128 256 512] [--classes 10000 100000]
    bash benchmarks/gpu.sh            # the same, with the environment checked first

`--dry-run`: tiny sizes, one step each, on whatever JAX device there is (the test suite runs it
on CPU with `--no-tensorflow`).
"""

import argparse
import importlib.abc
import os
import statistics
import sys
import time

# Dense (no sparsity) bfloat16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets; matched in order
# against the device name, so the more specific names come first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    """Makes `import tensorflow` fail, as on a machine without it."""

    def find_spec(self, name, path, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (bench_gpu.py --no-tensorflow)", name=name)
        return None


def peak_tflops(device_name):
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def blocks(fn, steps, repeats):
    """Median seconds per call of `fn` over `repeats` blocks of `steps` calls (fn syncs)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def matmul_tflops(n, repeats):
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    seconds = blocks(lambda: f(a).block_until_ready(), 5, repeats)
    return 2 * n**3 / seconds / 1e12


def train_step_fn(model, x, y):
    import numpy as np

    def step():
        return float(np.asarray(model.train_on_batch(x, y)))

    return step


def bench_heads(args, report):
    import jax
    import keras
    import numpy as np

    import keras_facemargin as kf

    print(f"\n(1) head + loss, features [{args.head_batch}, {args.dim}] ({keras.config.dtype_policy().name})")
    print(f"{'classes':>10}  {'head + loss':<26}{'step ms':>9}{'ratio':>8}{'TFLOP/s':>9}{'of peak':>9}"
          f"{'of matmul':>11}")
    rng = np.random.default_rng(0)
    for classes in args.classes:
        x = jax.device_put(rng.normal(size=(args.head_batch, args.dim)).astype("float32"))
        y = jax.device_put(rng.integers(0, classes, size=args.head_batch).astype("int32"))
        models = {}
        for name in ("dense", "arcface"):
            keras.utils.set_random_seed(0)
            inputs = keras.Input((args.dim,))
            if name == "dense":
                out = keras.layers.Dense(classes, dtype="float32")(inputs)
                loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            else:
                out = kf.heads.CosineHead(classes)(inputs)
                loss = kf.losses.ArcFaceLoss()
            model = keras.Model(inputs, out)
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
            step = train_step_fn(model, x, y)
            step()
            models[name] = step
        times = {name: [] for name in models}
        for _ in range(args.repeats):  # interleaved
            for name, step in models.items():
                times[name].append(blocks(step, args.steps, 1))
        flops = 6 * args.head_batch * args.dim * classes
        for name, label in (("dense", "Dense + softmax CE"), ("arcface", "CosineHead + ArcFaceLoss")):
            t = statistics.median(times[name])
            ratio = statistics.median(a / b for a, b in zip(times[name], times["dense"], strict=True))
            report(f"{classes:>10,}  {label:<26}{t * 1e3:>9.2f}{ratio:>8.2f}", flops / t)


def bench_backbone(args, report):
    import jax
    import keras
    import numpy as np
    from bench_training import forward_flops

    from keras_facemargin import losses, models

    depth = args.depth
    print(f"\n(2) IR-ResNet-{depth} training step at {args.size}x{args.size}, {args.train_classes} classes, "
          f"embedding {args.dim}, ArcFace, SGD momentum 0.9 wd 5e-4 ({keras.config.dtype_policy().name})")
    print(f"{'batch':>10}  {'':<26}{'step ms':>9}{'img/s':>8}{'TFLOP/s':>9}{'of peak':>9}{'of matmul':>11}")
    keras.utils.set_random_seed(0)
    backbone = models.iresnet(depth, (args.size, args.size, 3), args.dim, width=args.width)
    model, _ = models.build_recognizer(backbone, args.train_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4),
                  loss=losses.ArcFaceLoss(margin=0.5, scale=64.0))
    forward = forward_flops(backbone, 2 * args.dim * args.train_classes)
    rng = np.random.default_rng(0)
    for batch in args.batches:
        x = jax.device_put(rng.uniform(0, 255, (batch, args.size, args.size, 3)).astype("float32"))
        y = jax.device_put(rng.integers(0, args.train_classes, size=batch).astype("int32"))
        step = train_step_fn(model, x, y)
        step()  # compiles for this batch size
        t = blocks(step, args.steps, args.repeats)
        report(f"{batch:>10}  {'':<26}{t * 1e3:>9.1f}{batch / t:>8.0f}", 3 * forward * batch / t)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000], help="head step")
    parser.add_argument("--head-batch", type=int, default=512)
    parser.add_argument("--train-classes", type=int, default=10_000, help="backbone step's head")
    parser.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 100))
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="mixed_bfloat16", choices=("mixed_bfloat16", "float32"))
    parser.add_argument("--peak-tflops", type=float, help="the GPU's bf16 peak, if not in the table")
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--skip-heads", action="store_true")
    parser.add_argument("--skip-backbone", action="store_true")
    parser.add_argument("--no-tensorflow", action="store_true", help="fail any import of tensorflow")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one step each")
    args = parser.parse_args()
    if args.no_tensorflow:
        sys.meta_path.insert(0, _NoTensorFlow())
    if args.dry_run:
        args.batches, args.classes, args.head_batch, args.train_classes = [2], [16], 4, 10
        args.size, args.dim, args.width, args.steps, args.repeats, args.matmul_n = 32, 16, 0.125, 1, 1, 64
        args.depth = 18
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit(f"bench_gpu.py runs under KERAS_BACKEND=jax; got {keras.backend.backend()!r}")
    import jax

    keras.config.set_dtype_policy(args.precision)
    device = jax.devices()[0]
    name = getattr(device, "device_kind", str(device))
    peak = args.peak_tflops or peak_tflops(name)
    measured = matmul_tflops(args.matmul_n, args.repeats)
    print(f"# bench_gpu: {name} ({device.platform}, {jax.device_count()} device(s)); jax {jax.__version__}, "
          f"keras {keras.__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# bf16 peak: {f'{peak:.0f} TFLOP/s (datasheet, dense)' if peak else 'unknown (--peak-tflops)'}; "
          f"bf16 matmul {args.matmul_n}^2 measured {measured:.1f} TFLOP/s"
          f"{f' = {measured / peak:.2f} of peak' if peak else ''}")

    def report(prefix, flops_per_s):
        tflops = flops_per_s / 1e12
        of_peak = f"{tflops / peak:>9.3f}" if peak else f"{'-':>9}"
        print(f"{prefix}{tflops:>9.2f}{of_peak}{tflops / measured:>11.3f}", flush=True)

    if not args.skip_heads:
        bench_heads(args, report)
    if not args.skip_backbone:
        bench_backbone(args, report)
    leaked = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    print(f"\n# tensorflow imported: {'yes (' + leaked[0] + ')' if leaked else 'no'}")


if __name__ == "__main__":
    main()
