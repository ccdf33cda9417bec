"""The lecture's feature-space figures, reproduced on real handwritten digits (scikit-learn's, offline).

Trains the same small CNN, ending in a 2-D (and a 3-D) embedding, on 70% of the digits 0-9 under
plain softmax (a Dense layer on the features), NormFace, SphereFace, CosFace and ArcFace, and
draws the embeddings of the other 30%:

- `feature_space_2d.png`: top row, the features as they are: plain softmax spreads them
  radially (a class is a direction, and the length grows with confidence); bottom row, the same
  features normalised onto the unit circle, where the margin losses leave angular clusters with
  gaps between them (the dotted lines are the head's class centres).
- `feature_space_3d.png`: the 3-D features normalised onto the unit sphere.
- `scale.png`: why the scale s matters: the softmax probability of the target class against the
  angle θ to its centre, p = e^(s cos θ) / (e^(s cos θ) + C − 1) with the other C − 1 = 9 logits
  at cos = 0, for several s, and with ArcFace's margin (cos(θ + m)) for one of them.

    python examples/feature_space.py [--out docs/figures] [--epochs 40] [--dims 2,3]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_facemargin import data, experiments, models  # noqa: E402

OBJECTIVES = ("softmax", "normface", "sphereface", "cosface", "arcface")
NUM_CLASSES = 10
SIZE = 16


# Margins sized for 10 classes in 2-3 dimensions, where the papers' margins cannot all be met.
MARGINS = {"softmax": None, "normface": None, "sphereface": 2, "cosface": 0.2, "arcface": 0.3}


def loss_settings(objective, scale):
    """The loss arguments of `objective`: none for softmax, else the scale and the margin above."""
    if objective == "softmax":
        return {}
    margin = MARGINS[objective]
    return {"scale": scale} if margin is None else {"margin": margin, "scale": scale}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def train_features(objective, dim, index, test, epochs, scale, seed):
    """The test images' `dim`-D features, and the head's class centres (None for softmax)."""
    def make_backbone():
        # A linear feature layer, as in the lecture's figures (LeNet++): the backbone's own
        # embedding ends in batch norm, which would standardise away the length of the features.
        cnn = models.get_backbone("simple_cnn", input_shape=(SIZE, SIZE, 3), embedding_dim=32,
                                  filters=(32, 64, 64))
        features = keras.layers.Dense(dim, name="features")(keras.layers.PReLU()(cnn.output))
        return keras.Model(cnn.input, features, name=f"cnn_{dim}d")

    trained = experiments.train_objective(
        objective, index.subset(~test, relabel=False), epochs, seed=seed, make_backbone=make_backbone,
        image_size=SIZE, embedding_dim=dim, batch_size=64, optimizer="adam", learning_rate=3e-3,
        weight_decay=0.0, warmup_epochs=0.0, augment="none", **loss_settings(objective, scale))
    images = data.image_dataset(index.paths[test], batch_size=256, image_size=(SIZE, SIZE))
    features = trained.embedder.predict(images, verbose=0)
    centres = None
    if objective != experiments.SOFTMAX:
        kernel = keras.ops.convert_to_numpy(trained.model.get_layer("cosine_head").kernel)
        centres = (kernel / np.linalg.norm(kernel, axis=0, keepdims=True)).T
    return features, centres


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def plot_2d(results, labels, path, dpi):
    plt = _pyplot()
    colours = plt.get_cmap("tab10")(labels)
    fig, axes = plt.subplots(2, len(results), figsize=(2.6 * len(results), 5.4), dpi=dpi, squeeze=False)
    for column, (title, (features, centres)) in enumerate(results.items()):
        top, bottom = axes[0, column], axes[1, column]
        top.scatter(features[:, 0], features[:, 1], c=colours, s=3, alpha=0.6, linewidths=0)
        top.set_title(title, fontsize=9)
        radius = 1.0 + 0.02 * np.random.default_rng(0).standard_normal(len(features))
        unit = _unit(features) * radius[:, None]
        bottom.scatter(unit[:, 0], unit[:, 1], c=colours, s=3, alpha=0.6, linewidths=0)
        if centres is not None:
            for x, y in centres:
                bottom.plot([0, 1.15 * x], [0, 1.15 * y], ":", color="grey", linewidth=0.8)
        bottom.set(xlim=(-1.25, 1.25), ylim=(-1.25, 1.25), aspect="equal")
        for ax in (top, bottom):
            ax.tick_params(labelsize=6)
    axes[0, 0].set_ylabel("2-D features", fontsize=8)
    axes[1, 0].set_ylabel("normalised (unit circle)", fontsize=8)
    fig.suptitle("Held-out digits 0-9 in a 2-D embedding; colour = digit", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_3d(results, labels, path, dpi):
    plt = _pyplot()
    colours = plt.get_cmap("tab10")(labels)
    fig = plt.figure(figsize=(2.6 * len(results), 3.1), dpi=dpi)
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 24), np.linspace(0, np.pi, 12))
    for column, (title, (features, _)) in enumerate(results.items(), start=1):
        ax = fig.add_subplot(1, len(results), column, projection="3d")
        ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="lightgrey",
                          linewidth=0.3)
        unit = _unit(features)
        ax.scatter(unit[:, 0], unit[:, 1], unit[:, 2], c=colours, s=2, alpha=0.8, depthshade=False)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
    fig.suptitle("3-D features of the held-out digits, normalised onto the unit sphere", fontsize=10, y=0.99)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.80, wspace=0.0)
    fig.savefig(path)
    plt.close(fig)


def target_probability(target_cosine, scale, num_classes):
    """Softmax probability of the target whose logit is s·cos θ when the other C − 1 logits are 0."""
    return 1.0 / (1.0 + (num_classes - 1) * np.exp(-scale * np.asarray(target_cosine)))


def plot_scale(path, dpi, num_classes=NUM_CLASSES, scales=(1, 2, 4, 8, 16, 32, 64), arcface=(32, 0.5)):
    """p(target) against θ for each s (others' logits at cos = 0), and ArcFace's cos(θ + m) at one s."""
    plt = _pyplot()
    theta = np.linspace(0.0, np.pi, 361)

    def probability(target_cosine, s):
        return target_probability(target_cosine, s, num_classes)

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=dpi)
    for s in scales:
        ax.plot(np.degrees(theta), probability(np.cos(theta), s), label=f"s = {s}")
    s, m = arcface
    arc = np.where(theta + m <= np.pi, np.cos(theta + m), np.cos(theta) - m * np.sin(m))
    ax.plot(np.degrees(theta), probability(arc, s), "k--",
            label=f"ArcFace, s = {s}, m = {m}")
    ax.axhline(1.0 / num_classes, color="grey", linewidth=0.6, linestyle=":")
    ax.set(xlabel="θ, angle between the feature and its class centre (degrees)",
           ylabel="p(target class)", xlim=(0, 180), ylim=(0, 1.02),
           title=f"Softmax probability of the target, C = {num_classes} classes")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _dims(text):
    try:
        dims = sorted({int(d) for d in text.split(",")})
    except ValueError:
        dims = []
    if not dims or not set(dims) <= {2, 3}:
        raise argparse.ArgumentTypeError(f"expected 2, 3 or 2,3; got {text!r}")
    return dims


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures", help="folder for the PNG files")
    parser.add_argument("--epochs", type=experiments.positive_int, default=40)
    parser.add_argument("--dims", type=_dims, default=[2, 3], help="2, 3 or 2,3")
    parser.add_argument("--scale", type=float, default=16.0, help="s of the margin-softmax losses")
    parser.add_argument("--max-images", type=experiments.positive_int, default=None,
                        help="use only the first N digits (for quick runs)")
    parser.add_argument("--dpi", type=experiments.positive_int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/feature_space", help="folder of the digit images")
    args = parser.parse_args(argv)
    if not args.scale > 0:
        parser.error(f"argument --scale: expected a number > 0; got {args.scale}")
    if args.max_images is not None and args.max_images < 4 * NUM_CLASSES:
        parser.error(f"argument --max-images: expected at least {4 * NUM_CLASSES} images; "
                     f"got {args.max_images}")

    index = experiments.digit_folder(os.path.join(args.work, f"digits{SIZE}"), size=SIZE)
    if args.max_images:  # a random subset: the folder lists the digits in order
        keep = np.random.default_rng(args.seed).permutation(len(index))[: args.max_images]
        index = index.subset(np.sort(keep), relabel=False)
    labels = index.labels
    test = np.random.default_rng(args.seed).uniform(size=len(labels)) < 0.3
    os.makedirs(args.out, exist_ok=True)
    written = []
    for dim in args.dims:
        results = {}
        for objective in OBJECTIVES:
            settings = ", ".join(f"{k[0]}={v}" for k, v in loss_settings(objective, args.scale).items())
            title = f"{objective} ({settings})" if settings else objective
            results[title] = train_features(objective, dim, index, test, args.epochs, args.scale,
                                            args.seed)
            print(f"{dim}-D {objective}: trained", flush=True)
        path = os.path.join(args.out, f"feature_space_{dim}d.png")
        (plot_2d if dim == 2 else plot_3d)(results, labels[test], path, args.dpi)
        written.append(path)
    path = os.path.join(args.out, "scale.png")
    plot_scale(path, args.dpi)
    written.append(path)
    for path in written:
        print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)")
    return written


if __name__ == "__main__":
    main()
