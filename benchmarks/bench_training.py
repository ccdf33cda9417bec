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

4. `--vs-torch`: the whole training step (forward, ArcFace loss, backward, SGD update) of our
   IR-ResNet + `CosineHead` + `ArcFaceLoss` against an arcface_torch-style IR-ResNet +
   CombinedMarginLoss in PyTorch on CPU (`arcface_torch_step.py`, run in `benchmarks/.torch-venv`,
   which `--setup-torch` creates), same depth, batch, classes and thread count: images/s, the ratio
   ours / theirs, peak resident memory. Each configuration (TensorFlow with or without XLA or
   oneDNN, JAX, mixed bfloat16) is its own worker process (a Keras backend is fixed per process);
   the PyTorch worker stays up the whole run, and every timed round asks PyTorch and then ours
   for `--steps` steps, so each ratio compares steps timed seconds apart (`_step_protocol.py`).

    python benchmarks/bench_training.py --setup-torch        # once: the PyTorch CPU virtualenv
    python benchmarks/bench_training.py --vs-torch --depth 18 --batch 8 --rounds 3 \
        --configs tf tf-xla jax tf-bf16

`--dry-run` (either mode): tiny sizes, one step each, so a test can run the script.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _machine

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


# ---- --vs-torch: whole training steps against arcface_torch in PyTorch --------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_VENV = os.path.join(HERE, ".torch-venv")
TORCH_PYTHON = os.path.join(TORCH_VENV, "bin", "python")

# name -> (backend, jit_compile, dtype policy, TF_ENABLE_ONEDNN_OPTS)
KERAS_CONFIGS = {
    "tf": ("tensorflow", "auto", "float32", None),
    "tf-xla": ("tensorflow", "true", "float32", None),
    "tf-no-onednn": ("tensorflow", "auto", "float32", "0"),
    "tf-bf16": ("tensorflow", "auto", "mixed_bfloat16", None),
    "tf-xla-bf16": ("tensorflow", "true", "mixed_bfloat16", None),
    "jax": ("jax", "auto", "float32", None),
    "jax-bf16": ("jax", "auto", "mixed_bfloat16", None),
}
# PyTorch variants: name -> extra flags of arcface_torch_step.py
TORCH_CONFIGS = {"torch": [], "torch-bf16": ["--precision", "bfloat16"],
                 "torch-channels-last": ["--channels-last"]}


def setup_torch():
    """Creates `benchmarks/.torch-venv` with PyTorch for CPU (never a dependency of the package).

    Tries PyTorch's CPU wheel index first, then the registry's newest `+cpu` build, then plain
    `torch` from the registry (the CUDA build: large, but it runs on a CPU)."""
    if not os.path.exists(TORCH_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", TORCH_VENV], check=True)
    pip = [TORCH_PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    attempts = [
        ("PyTorch's CPU index", ["torch", "numpy", "--index-url", "https://download.pytorch.org/whl/cpu",
                                 "--timeout", "20", "--retries", "0"]),
    ]
    listed = subprocess.run([TORCH_PYTHON, "-m", "pip", "index", "versions", "torch"], capture_output=True,
                            text=True).stdout
    cpu_builds = [v.strip(" ,") for v in listed.split("Available versions:")[-1].split(",") if "+cpu" in v]
    if cpu_builds:
        attempts.append((f"the registry's torch=={cpu_builds[0]}", [f"torch=={cpu_builds[0]}", "numpy"]))
    attempts.append(("the registry's torch (CUDA build)", ["torch", "numpy"]))
    for label, spec in attempts:
        print(f"setup-torch: trying {label} ...", flush=True)
        if subprocess.run(pip + spec).returncode == 0:
            break
    else:
        raise SystemExit("setup-torch: could not install torch")
    out = subprocess.run([TORCH_PYTHON, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    print(f"setup-torch: {TORCH_VENV} has torch {out}")


def keras_worker(args):
    """One Keras configuration as a `_step_protocol` worker (this process's backend is fixed)."""
    import _step_protocol
    import keras
    import numpy as np

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from keras_facemargin import recipe
    from keras_facemargin.config import TrainConfig

    if args.precision != "float32":
        keras.config.set_dtype_policy(args.precision)
    keras.utils.set_random_seed(0)
    rss_import = _step_protocol.memory_mib("VmRSS")
    # What `facemargin train --backbone iresnetN --loss arcface --optimizer sgd` builds (the dry
    # run: the half-width small_resnet): the recognizer scales [0, 255] pixels to [-1, 1], then
    # the backbone and a CosineHead; SGD with momentum 0.9 and the recipe's schedule.
    backbone = f"iresnet{args.depth}" if args.width == 1 else "small_resnet"
    config = TrainConfig(loss="arcface", backbone=backbone, image_size=args.size, embedding_dim=args.dim,
                         margin=0.5, scale=64.0, optimizer="sgd", learning_rate=0.1, weight_decay=5e-4,
                         warmup_epochs=0.0, schedule="cosine", ema=0.0, epochs=1)
    model, _, loss = recipe.build_model(config, args.classes)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    model.compile(optimizer=recipe.make_optimizer(config, steps_per_epoch=10_000), loss=loss,
                  jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, args.classes, size=args.batch).astype("int32")

    def step():
        return float(np.asarray(model.train_on_batch(x, y)))

    start = time.perf_counter()
    first = step()
    for _ in range(args.warmup - 1):
        step()
    info = {"framework": f"keras {keras.__version__} ({backend})", "jit_compile": str(model.jit_compile),
            "policy": keras.config.dtype_policy().name, "first_loss": first,
            "warmup_s": time.perf_counter() - start, "rss_import_mib": rss_import,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights))}
    if args.dry_run:
        print(f"dry run: {info}")
        return
    _step_protocol.serve(step, info)


class Worker:
    """A running step worker: its process, its READY report, and `time(n)` → seconds per step."""

    def __init__(self, name, command, env):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")  # shown only if the worker fails
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True, cwd=HERE)
        start = time.perf_counter()
        self.ready = self._expect("READY")
        self.ready.setdefault("warmup_s", time.perf_counter() - start)
        self.times, self.losses = [], []

    def _expect(self, tag):
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        status = self.process.wait()
        self.stderr.seek(0)
        sys.stderr.write(self.stderr.read()[-4000:])
        raise RuntimeError(f"worker {self.name} exited (status {status}) before {tag}")

    def time(self, steps):
        self.process.stdin.write(f"STEPS {steps}\n")
        self.process.stdin.flush()
        timed = self._expect("TIMED")
        self.times.append(timed["seconds"])
        self.losses.append(timed["loss"])
        return timed["seconds"]

    def close(self):
        self.process.stdin.write("QUIT\n")
        self.process.stdin.flush()
        done = self._expect("DONE")
        self.process.wait()
        return done["peak_mib"]


def _worker_command(name, args):
    sizes = ["--depth", str(args.depth), "--size", str(args.size), "--batch", str(args.batch),
             "--classes", str(args.classes), "--dim", str(args.dim), "--threads", str(args.threads),
             "--warmup", str(args.warmup), "--width", str(args.width)]
    env = dict(os.environ)
    if name in TORCH_CONFIGS:
        return [TORCH_PYTHON, os.path.join(HERE, "arcface_torch_step.py"), *sizes, *TORCH_CONFIGS[name]], env
    backend, jit, precision, onednn = KERAS_CONFIGS[name]
    env["KERAS_BACKEND"] = backend
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    command = [sys.executable, os.path.abspath(__file__), "--worker", *sizes, "--jit-compile", jit,
               "--precision", precision]
    return command, env


def vs_torch(args):
    if args.dry_run:
        args.size, args.batch, args.classes, args.dim, args.width = 32, 2, 10, 8, 0.125
        args.rounds, args.steps, args.warmup = 1, 1, 1
    have_torch = os.path.exists(TORCH_PYTHON)
    baseline = args.baseline
    print(f"# bench_training --vs-torch: IR-ResNet-{args.depth} at {args.size}x{args.size}, "
          f"batch {args.batch}, {args.classes} classes, embedding {args.dim}, ArcFace s=64 m=0.5, "
          f"SGD 0.1 momentum 0.9 wd 5e-4; {args.threads} threads each")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs, {_machine.cpu_model()}; "
          f"{args.rounds} rounds of {args.steps} step(s), PyTorch then ours in each round; load average "
          f"{_load()} at start")
    if not have_torch:
        print(f"# no {TORCH_PYTHON}: run --setup-torch first; timing our configurations alone")
    torch_worker = None
    rows = []
    if have_torch:
        command, env = _worker_command(baseline, args)
        torch_worker = Worker(baseline, command, env)
    try:
        for name in args.configs:
            command, env = _worker_command(name, args)
            worker = Worker(name, command, env)
            theirs = []
            for _ in range(args.rounds):
                if torch_worker is not None:
                    theirs.append(torch_worker.time(args.steps))
                worker.time(args.steps)
            peak = worker.close()
            ratio = (statistics.median(t / o for t, o in zip(theirs, worker.times, strict=True))
                     if theirs else None)
            rows.append((name, worker, peak, ratio))
            print(f"  done {name}: {statistics.median(worker.times):.3f} s/step, load average {_load()}",
                  flush=True)
    finally:
        torch_peak = torch_worker.close() if torch_worker is not None else None
    print(f"\n{'configuration':<21}{'framework':<28}{'XLA':>6}{'policy':>16}{'step s':>8}{'images/s':>10}"
          f"{'ours/theirs':>12}{'peak MiB':>10}{'import MiB':>11}{'warm-up s':>10}{'loss':>8}")
    if torch_worker is not None:
        t = statistics.median(torch_worker.times)
        r = torch_worker.ready
        policy = "bf16" if baseline == "torch-bf16" else "float32"
        print(f"{baseline:<21}{r['framework']:<28}{'-':>6}{policy:>16}"
              f"{t:>8.3f}{args.batch / t:>10.2f}{'1.00':>12}{torch_peak:>10.0f}{r['rss_mib']:>11.0f}"
              f"{r['warmup_s']:>10.1f}{torch_worker.losses[-1]:>8.2f}")
    for name, worker, peak, ratio in rows:
        t = statistics.median(worker.times)
        r = worker.ready
        print(f"{name:<21}{r['framework']:<28}{r['jit_compile']:>6}{r['policy']:>16}{t:>8.3f}"
              f"{args.batch / t:>10.2f}{(f'{ratio:.2f}' if ratio else '-'):>12}{peak:>10.0f}"
              f"{r['rss_import_mib']:>11.0f}{r['warmup_s']:>10.1f}{worker.losses[-1]:>8.2f}")
    if torch_worker is not None:
        print("per round, s/step: " + f"{baseline} " + " ".join(f"{t:.2f}" for t in torch_worker.times)
              + "; " + "; ".join(f"{n} " + " ".join(f"{t:.2f}" for t in w.times) for n, w, _, _ in rows))
    print(f"# ours/theirs > 1: ours trains faster; peak = VmHWM of each worker process (framework "
          f"included; 'import MiB' is its RSS after the imports); load average {_load()} at the end")


def _load():
    return " ".join(f"{v:.1f}" for v in os.getloadavg())



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
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one step; checks the script")
    parser.add_argument("--vs-torch", action="store_true", help="mode 4: whole steps against PyTorch")
    parser.add_argument("--setup-torch", action="store_true", help="create benchmarks/.torch-venv")
    parser.add_argument("--configs", nargs="+", default=["tf", "tf-xla", "jax"],
                        choices=sorted(KERAS_CONFIGS), help="--vs-torch: our configurations")
    parser.add_argument("--baseline", default="torch", choices=sorted(TORCH_CONFIGS),
                        help="--vs-torch: the PyTorch configuration")
    parser.add_argument("--depth", type=int, default=18, choices=(18, 34, 50, 100))
    parser.add_argument("--rounds", type=int, default=3, help="--vs-torch: timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="--vs-torch: untimed steps first")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return keras_worker(args)
    if args.setup_torch:
        return setup_torch()
    if args.vs_torch:
        return vs_torch(args)
    if args.dry_run:
        args.size, args.batch, args.classes, args.dim, args.repeats, args.matmul_n = 32, 2, 10, 16, 1, 64

    import keras
    import numpy as np
    import tensorflow as tf

    started = time.perf_counter()
    print(f"# bench_training: IR-ResNet-18 at {args.size}x{args.size}, batch {args.batch}, "
          f"{args.classes} classes, embedding {args.dim}; keras {keras.__version__} "
          f"({keras.backend.backend()}), tensorflow {tf.__version__}, {os.cpu_count()} CPUs, "
          f"{_machine.cpu_model()}")
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
