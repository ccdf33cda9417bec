"""Training and serving throughput of IR-ResNet-18, as ratios measured in one process.

Three numbers, each against a baseline timed in the same process with interleaved repeats, so
that they survive a noisy (shared) machine:

1. Training throughput (images/s) of IR-ResNet-18 with a `CosineHead` + `ArcFaceLoss`, as a
   ratio to the same backbone with a `keras.layers.Dense` softmax head +
   `SparseCategoricalCrossentropy(from_logits=True)`. The step is Keras's own compiled train step
   (`model.train_on_batch` after a `compile` with Keras's default `jit_compile="auto"`, which is
   XLA on TensorFlow with an accelerator but a plain `tf.function` graph on a CPU-only machine;
   `--jit-compile true` forces XLA).
2. The FLOP/s that training reaches, as a fraction of this CPU's float32 matmul FLOP/s
   (`tf.matmul` of two n×n matrices, 2·n³ FLOPs, timed in every repeat). Model FLOPs are
   counted analytically from the layer shapes: 2·MACs of every Conv2D, DepthwiseConv2D and Dense
   layer and of the head's matmul (batch norm, PReLU and the other elementwise ops are left
   out), and a training step is counted as 3× the forward pass (forward, gradient w.r.t. the
   inputs, gradient w.r.t. the weights). The forward count is cross-checked against
   `tf.compat.v1.profiler` on the traced inference graph.
3. Serving throughput of the embedding model exported with Keras 3's `model.export(path)` and
   loaded with `tf.saved_model.load` (its `serving_default` signature), as a ratio to
   `model.predict_on_batch` on the same batch.

    python benchmarks/bench_training.py [--size 112] [--batch 8] [--classes 1000] [--repeats 3]
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def forward_flops(model, head_flops=0):
    """2·MACs per image of the model's Conv2D, DepthwiseConv2D and Dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            total += 2 * h * w * c * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            total += 2 * h * w * c * layer.kernel_size[0] * layer.kernel_size[1] * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total + head_flops


def profiler_flops(model):
    """Forward FLOPs per image that `tf.compat.v1.profiler` counts on the inference graph."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec((1, *model.input_shape[1:]), "float32")).graph
    tf.get_logger().setLevel("ERROR")
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def build(config, size, classes, dim, jit_compile):
    import keras

    import keras_facemargin as kf

    backbone = kf.models.get_backbone("iresnet18", input_shape=(size, size, 3), embedding_dim=dim)
    if config == "softmax":
        head = keras.layers.Dense(classes, name="softmax_head")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        head = kf.heads.CosineHead(classes)
        loss = kf.losses.ArcFaceLoss()
    model = keras.Sequential([backbone, head])
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss, jit_compile=jit_compile)
    return backbone, model


def time_calls(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def matmul_seconds(a):
    import tensorflow as tf

    tf.matmul(a, a).numpy()
    return time_calls(lambda: tf.matmul(a, a).numpy(), 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112, help="input height and width")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    parser.add_argument("--steps", type=int, default=1, help="train steps per timed sample")
    parser.add_argument("--serve-calls", type=int, default=1, help="inference calls per timed sample")
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-n", type=int, default=2048)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    started = time.perf_counter()
    print(f"# bench_training: IR-ResNet-18 at {args.size}x{args.size}, batch {args.batch}, "
          f"{args.classes} classes, embedding {args.dim}; keras {keras.__version__} "
          f"({keras.backend.backend()}), tensorflow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; {args.repeats} interleaved repeats, medians; "
          f"load average at start {os.getloadavg()[0]:.1f}")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, args.classes, size=args.batch).astype("int32")
    a = tf.constant(rng.normal(size=(args.matmul_n, args.matmul_n)).astype("float32"))

    configs = ("softmax", "arcface")
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    models = {c: build(c, args.size, args.classes, args.dim, jit) for c in configs}
    for c in configs:  # compile (XLA) and warm up
        models[c][1].train_on_batch(x, y)
    print(f"# train_on_batch jit_compile={args.jit_compile!r} resolves to "
          f"{models['arcface'][1].jit_compile}")

    step = {c: [] for c in configs}
    matmul = []
    for _ in range(args.repeats):
        matmul.append(matmul_seconds(a))
        for c in configs:
            model = models[c][1]
            step[c].append(time_calls(lambda m=model: m.train_on_batch(x, y), args.steps))

    backbone = models["arcface"][0]
    head_flops = 2 * args.dim * args.classes
    forward = forward_flops(backbone, head_flops)
    train_flops = 3 * forward * args.batch
    matmul_rate = 2 * args.matmul_n**3 / statistics.median(matmul)
    print(f"\nmatmul {args.matmul_n}x{args.matmul_n} float32 (tf.matmul): {matmul_rate / 1e9:.1f} GFLOP/s")
    print(f"forward FLOPs per image (analytic, conv + dense + head): {forward / 1e9:.3f} G")
    try:
        counted = profiler_flops(backbone) + head_flops
        print(f"forward FLOPs per image (tf.compat.v1.profiler, + head): {counted / 1e9:.3f} G")
    except Exception as error:  # a cross-check only; the analytic count is what is used
        print(f"forward FLOPs per image (tf.compat.v1.profiler): unavailable ({error!r})")

    print(f"\n{'training (train_on_batch)':<34}{'step s':>8}{'images/s':>10}{'ratio':>8}"
          f"{'GFLOP/s':>9}{'of matmul':>11}")
    for c in configs:
        seconds = statistics.median(step[c])
        ratio = statistics.median(b / t for t, b in zip(step[c], step["softmax"], strict=True))
        rate = train_flops / seconds
        fraction = statistics.median(
            (train_flops / t) / (2 * args.matmul_n**3 / m) for t, m in zip(step[c], matmul, strict=True)
        )
        label = "Dense + softmax CE (baseline)" if c == "softmax" else "CosineHead + ArcFaceLoss"
        print(f"{label:<34}{seconds:>8.2f}{args.batch / seconds:>10.1f}{ratio:>8.2f}"
              f"{rate / 1e9:>9.1f}{fraction:>11.2f}")
    print("per repeat: step s " + "; ".join(
        f"{c} " + " ".join(f"{t:.2f}" for t in step[c]) for c in configs)
        + "; matmul GFLOP/s " + " ".join(f"{2 * args.matmul_n**3 / m / 1e9:.1f}" for m in matmul))

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "embedder")
        backbone.export(path, verbose=False)
        serve = tf.saved_model.load(path).signatures["serving_default"]
        (input_name,) = serve.structured_input_signature[1]
        xt = tf.constant(x)
        served = list(serve(**{input_name: xt}).values())[0].numpy()
        predicted = np.asarray(backbone.predict_on_batch(x))
        difference = float(np.max(np.abs(served - predicted)))
        timings = {"predict_on_batch": [], "saved_model": []}
        for _ in range(args.repeats):
            timings["predict_on_batch"].append(
                time_calls(lambda: backbone.predict_on_batch(x), args.serve_calls))
            timings["saved_model"].append(
                time_calls(lambda: serve(**{input_name: xt}), args.serve_calls))
    print(f"\n{'inference (embedding model)':<34}{'call s':>8}{'images/s':>10}{'ratio':>8}")
    base = timings["predict_on_batch"]
    for label, key in (("model.predict_on_batch (baseline)", "predict_on_batch"),
                       ("SavedModel serving_default", "saved_model")):
        seconds = statistics.median(timings[key])
        ratio = statistics.median(b / t for t, b in zip(timings[key], base, strict=True))
        print(f"{label:<34}{seconds:>8.3f}{args.batch / seconds:>10.1f}{ratio:>8.2f}")
    print("per repeat: call s " + "; ".join(
        f"{key} " + " ".join(f"{t:.3f}" for t in timings[key]) for key in timings))
    print(f"max |SavedModel - predict_on_batch| = {difference:.2e}")
    print(f"\n# ratios > 1 are faster than the baseline; total {time.perf_counter() - started:.0f} s, "
          f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
