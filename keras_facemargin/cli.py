"""`facemargin`: train, evaluate and embed from the command line.

    facemargin train --data DIR [--loss arcface] [--backbone simple_cnn] [--config FILE] ...
    facemargin evaluate --model PATH --pairs FILE [--root DIR] [--flip] [--out DIR]
    facemargin embed --model PATH --images DIR --out embeddings.npz [--flip]

`--model` is a SavedModel written by `export_embedder` or a `.keras` file.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ---- models -----------------------------------------------------------------------------------


class _SavedModelEmbedder:
    """The `serving_default` signature of an exported embedder, fed float [0, 255] batches."""

    def __init__(self, path):
        import tensorflow as tf

        self._serve = tf.saved_model.load(path).signatures["serving_default"]
        spec = self._serve.structured_input_signature[1]["images"]
        self.image_size = tuple(spec.shape[1:3])

    def __call__(self, images):
        import tensorflow as tf

        images = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        return self._serve(images=images)["embeddings"].numpy()


class _KerasEmbedder:
    def __init__(self, path):
        import keras

        from keras_facemargin.evaluation import embedding_model

        self._model = embedding_model(keras.models.load_model(path))
        self.image_size = tuple(self._model.input_shape[1:3])

    def __call__(self, images):
        return self._model.predict_on_batch(images)


def load_embedder(path):
    """An embedding function `float32 [N, H, W, 3] in [0, 255] -> [N, dim]` and its image size."""
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        return _SavedModelEmbedder(path)
    if path.endswith(".keras") and os.path.isfile(path):
        return _KerasEmbedder(path)
    raise ValueError(
        f"--model must be a SavedModel folder (with saved_model.pb) or a .keras file; got {path!r}"
    )


def _embed_batches(embedder, batches, flip):
    import numpy as np

    from keras_facemargin.evaluation import normalize_rows

    out = []
    for images in batches:
        features = np.asarray(embedder(images), dtype=np.float32)
        if flip:
            features = features + np.asarray(embedder(images[:, :, ::-1]), dtype=np.float32)
        out.append(features)
    return normalize_rows(np.concatenate(out))


# ---- evaluate ---------------------------------------------------------------------------------


def read_pairs(path, root=None):
    """Pairs from a `.bin` (InsightFace), an LFW `pairs.txt` (first line: folds and size) or a
    `path_a path_b label` list."""
    from keras_facemargin import data

    if path.endswith(".bin"):
        return data.read_insightface_bin(path)
    with open(path, encoding="utf-8") as f:
        first = f.readline().split()
    if len(first) == 2 and all(token.isdigit() for token in first):
        if root is None:
            raise ValueError(f"--root (the LFW image folder) is needed for the LFW pairs file {path!r}")
        return data.read_lfw_pairs(path, root)
    return data.read_pair_list(path, root)


def evaluate(args):
    import numpy as np

    from keras_facemargin import data
    from keras_facemargin import evaluation as ev

    embedder = load_embedder(args.model)
    pairs = read_pairs(args.pairs, args.root)
    log = data.CorruptFileLog()
    dataset = data.pair_dataset(pairs, batch_size=args.batch_size, image_size=embedder.image_size,
                                corrupt_files=log)
    # One pass over the pairs: each batch's a and b images are embedded together.
    batches = ((np.concatenate([a, b]), len(a)) for a, b, _ in dataset)
    emb_a, emb_b = [], []
    for images, n in batches:
        both = _embed_batches(embedder, [images], args.flip)
        emb_a.append(both[:n])
        emb_b.append(both[n:])
    scores = np.sum(np.concatenate(emb_a) * np.concatenate(emb_b), axis=1)
    folds = pairs.folds if pairs.folds is not None else 10
    report = ev.verification_report(pairs.is_same.astype(int), scores, folds=folds)
    print(report)
    if log.count:
        print(f"warning: {log.count} image(s) could not be decoded and were scored as blank "
              f"images: {', '.join(f.path for f in log.collect()[:5])}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    report.to_json(os.path.join(args.out, "report.json"))
    labels = pairs.is_same.astype(int)
    ev.plot_roc(labels, scores, os.path.join(args.out, "roc.png"))
    ev.plot_det(labels, scores, os.path.join(args.out, "det.png"))
    ev.plot_score_histogram(labels, scores, os.path.join(args.out, "scores.png"),
                            threshold=report.best_threshold)
    print(f"\nwrote {args.out}/report.json, roc.png, det.png, scores.png")
    return report


# ---- embed ------------------------------------------------------------------------------------


def embed(args):
    import numpy as np

    from keras_facemargin import data

    embedder = load_embedder(args.model)
    paths = sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(args.images)
        for name in names
        if name.lower().endswith(data.IMAGE_EXTENSIONS)
    )
    if not paths:
        raise ValueError(f"--images {args.images!r} holds no images ({', '.join(data.IMAGE_EXTENSIONS)})")
    index = data.ImageIndex(paths, [0] * len(paths), ["images"])
    log = data.CorruptFileLog()
    dataset = data.classification_dataset(index, args.batch_size, image_size=embedder.image_size,
                                          training=False, corrupt_files=log)
    embeddings = _embed_batches(embedder, (images for images, _ in dataset), args.flip)
    np.savez(args.out, embeddings=embeddings, paths=np.array(paths))
    print(f"wrote {len(paths)} embeddings of size {embeddings.shape[1]} to {args.out}")
    if log.count:
        print(f"warning: {log.count} image(s) could not be decoded (embedded as blank images): "
              f"{', '.join(f.path for f in log.collect()[:5])}", file=sys.stderr)


# ---- train ------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run; saved as `config.json` in the run folder."""

    data: str = ""
    loss: str = "arcface"
    margin: float | None = None
    scale: float | None = None
    label_smoothing: float = 0.0
    backbone: str = "simple_cnn"
    image_size: int = 112
    embedding_dim: int = 512
    epochs: int = 10
    batch_size: int = 64
    classes_per_batch: int = 8
    samples_per_class: int = 4
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    schedule: str = "cosine"
    mixup: float = 0.0
    cutmix: float = 0.0
    mixed_precision: str | None = None
    val_pairs: str | None = None
    val_root: str | None = None
    min_images: int = 1
    seed: int = 0
    run_dir: str = "runs/train"
    export: str | None = None
    strategy: str = "default"
    sample_rate: float = 1.0

    @classmethod
    def from_file(cls, path):
        with open(path, encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                import yaml

                values = yaml.safe_load(f) or {}
            else:
                values = json.load(f)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config file {path!r} has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)


def _loss_and_kind(config):
    from keras_facemargin import losses

    kwargs = {}
    for name in ("margin", "scale"):
        if getattr(config, name) is not None:
            kwargs[name] = getattr(config, name)
    if config.label_smoothing:
        kwargs["label_smoothing"] = config.label_smoothing
    loss = losses.get(config.loss, **kwargs)
    return loss, isinstance(loss, losses.MarginSoftmaxLoss)


def train(config):
    import keras

    from keras_facemargin import data, distribute, evaluation, heads, models
    from keras_facemargin.export import export_embedder
    from keras_facemargin.models.recognizer import build_recognizer
    from keras_facemargin.training import check_run_config, fit_resumable

    if config.embedding_dim <= 0:
        raise ValueError(f"embedding_dim must be > 0; got {config.embedding_dim}")
    # Before any other TensorFlow work: a multi-worker strategy must be created first.
    strategy = distribute.get_strategy(config.strategy)
    check_run_config(config.run_dir, dataclasses.asdict(config), write=distribute.is_chief(strategy))
    if config.mixed_precision:
        keras.config.set_dtype_policy(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    try:
        index = data.ImageIndex.from_directory(config.data)
    except ValueError as error:
        raise ValueError(f"--data {config.data!r}: {error}") from None
    if config.min_images > 1:
        index = index.filter_min_images(config.min_images)
    if index.num_classes < 2:
        raise ValueError(f"--data {config.data!r} must hold at least 2 identities; got {index.num_classes}")
    loss, margin_softmax = _loss_and_kind(config)
    if not margin_softmax and (config.mixup or config.cutmix):
        raise ValueError(f"mixup/cutmix need a margin-softmax loss; got loss {config.loss!r}")
    size = (config.image_size, config.image_size)
    log = data.CorruptFileLog()
    mix = None
    if config.mixup or config.cutmix:
        mix = data.BatchMix(mixup=config.mixup, cutmix=config.cutmix, seed=config.seed)

    def make_dataset(input_context=None):
        if margin_softmax:
            return data.classification_dataset(index, config.batch_size, image_size=size, mix=mix,
                                               seed=config.seed, corrupt_files=log,
                                               input_context=input_context)
        return data.pk_dataset(index, config.classes_per_batch, config.samples_per_class,
                               image_size=size, seed=config.seed, corrupt_files=log,
                               input_context=input_context)

    if config.sample_rate != 1.0:
        if not margin_softmax or mix is not None:
            raise ValueError(
                f"sample_rate={config.sample_rate} (Partial FC) needs a margin-softmax loss and integer "
                f"labels (no mixup/cutmix); got loss {config.loss!r}, mixup {config.mixup}, cutmix "
                f"{config.cutmix}"
            )
        plain_dataset = make_dataset

        def make_dataset(input_context=None):
            # PartialFC takes the labels as an input.
            return plain_dataset(input_context).map(lambda images, labels: ((images, labels),))

    dataset = make_dataset()
    steps = dataset.cardinality().numpy()
    steps = int(steps) if steps > 0 else None
    if strategy.num_replicas_in_sync > 1 or distribute.is_multi_worker(strategy):
        dataset = strategy.distribute_datasets_from_function(make_dataset)
    lr = config.learning_rate
    if config.schedule == "cosine" and steps:
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps * config.epochs)
    elif config.schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant'; got {config.schedule!r}")
    optimizers = {"sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9),
                  "adam": lambda: keras.optimizers.Adam(lr),
                  "adamw": lambda: keras.optimizers.AdamW(lr)}
    if config.optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}; got {config.optimizer!r}")
    with strategy.scope():
        backbone = models.get_backbone(config.backbone, input_shape=(*size, 3),
                                       embedding_dim=config.embedding_dim)
        num_classes = index.num_classes if margin_softmax else None
        partial_fc = None
        if config.sample_rate != 1.0:
            partial_fc = heads.PartialFC(index.num_classes, loss=loss, sample_rate=config.sample_rate,
                                         seed=config.seed, name="partial_fc")
        model, embedder = build_recognizer(backbone, num_classes=num_classes, partial_fc=partial_fc)
        model.compile(optimizer=optimizers[config.optimizer](), loss=None if partial_fc else loss)
    callbacks = [log, keras.callbacks.TerminateOnNaN()]
    if config.val_pairs:
        pairs = read_pairs(config.val_pairs, config.val_root)
        callbacks.append(evaluation.VerificationCallback(
            data.pair_arrays(pairs, image_size=size), far_targets=(1e-3,), embedding_model=embedder))
    fit_resumable(model, dataset, config.epochs, config.run_dir, config=dataclasses.asdict(config),
                  callbacks=callbacks, strategy=strategy, verbose=2, shuffle=False)
    export_path = config.export or os.path.join("saved_models", os.path.basename(config.run_dir.rstrip("/")))
    with distribute.write_path(export_path, strategy) as path:
        export_embedder(embedder, path)
    if distribute.is_chief(strategy):
        print(f"exported the embedding model to {export_path}")
    return model, embedder


# ---- main -------------------------------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser(prog="facemargin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evaluate", help="verification report, JSON and plots for a pair list")
    p.add_argument("--model", required=True)
    p.add_argument("--pairs", required=True, help="pair list, LFW pairs.txt or InsightFace .bin")
    p.add_argument("--root", help="folder the pair list's paths are relative to")
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--out", default="runs/evaluate")
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("embed", help="embed every image under a folder into an .npz")
    p.add_argument("--model", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--flip", action="store_true")
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("train", help="train on an image folder (one sub-folder per identity)")
    p.add_argument("--config", help="YAML or JSON file; flags given on the command line win")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = type(getattr(defaults, field.name))
        if field.name in ("margin", "scale"):  # default None, but numbers
            kind = float
        elif kind is type(None):
            kind = str
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS)
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            evaluate(args)
        elif args.command == "embed":
            embed(args)
        else:
            flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
            config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
            config = dataclasses.replace(config, **flags)
            if not config.data:
                raise ValueError("--data (an image folder with one sub-folder per identity) is required")
            train(config)
    except ValueError as error:
        print(f"facemargin {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
