"""Data pipeline benchmark: P×K index sampling at scale, and decoding throughput against Keras.

(1) Index and sampling, no decoding: build an `ImageIndex` of 100,000 classes / 1,000,000
    synthetic paths (from arrays, and from a 1M-line list file), a `PKSampler`, draw an epoch of
    positions, and stream the undecoded batches through `tf.data`.
(2) Decoding, same folder, same process: images per second of the training pipelines that
    `recipe.train` builds (`classification_dataset`, and `pk_dataset` P×K batches), from the
    folder and from the same images packed into a RecordIO file, against
    `keras.utils.image_dataset_from_directory` with the same image size and batch size; and with
    the recipe's augmentations (faces: flip; other images: translate, zoom, contrast) against the
    same Keras dataset followed by the equivalent Keras preprocessing layers (`RandomFlip`,
    `RandomTranslation`, `RandomZoom`, `RandomContrast`) in a parallel `map`. Every round runs one
    epoch of each pipeline in turn; ratios are medians of the rounds' ratios.
(3) RecordIO indexing: `ImageIndex.from_recordio` on a synthetic InsightFace-layout set of
    `--rec-images` records (5M) and `--rec-identities` identities, against the same reading done
    as MXNet's `MXIndexedRecordIO` and InsightFace's `FaceImageIter` do it in Python (an `.idx`
    dict line by line, then every identity record read and unpacked).
(4) Input wait: a real backbone (`--wait-backbone`, IR-ResNet-18) trained with `train_on_batch`
    on the recipe's augmented pipeline, the next batch prefetched in the background; the time
    each step waits in `next(iterator)` for its batch.
(5) The same pipelines, each alone in a fresh process (`--fresh-rounds N`), as a user runs one:
    what one pipeline does to the process (its malloc settings, its threads) then weighs on it
    alone, not on its baseline too; also the time from a new iteration (each epoch of `fit`) to its
    first batch.

    python benchmarks/bench_data.py --data ../shared/data/emoji-4vendor [--skip-index] [--fresh-rounds 5]
        [--dry-run]
"""

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_facemargin.data import (  # noqa: E402
    ImageIndex,
    PKSampler,
    classification_dataset,
    pack_recordio,
    pk_dataset,
)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_index(num_classes, num_images, p, k):
    print(f"(1) index and P×K sampling: {num_classes:,} classes, {num_images:,} synthetic paths")
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, num_classes, size=num_images))
    paths = np.char.add(np.char.add("train/id", labels.astype(str)), "/img.jpg")
    names = [str(c) for c in range(num_classes)]
    index, t = timed(lambda: ImageIndex(paths, labels, names))
    print(f"    ImageIndex from arrays          {t:7.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        list_path = os.path.join(tmp, "list.txt")
        with open(list_path, "w") as f:
            rows = zip(paths.tolist(), labels.tolist(), strict=True)
            f.writelines(f"{path} {label}\n" for path, label in rows)
        _, t = timed(lambda: ImageIndex.from_list(list_path))
    print(f"    ImageIndex.from_list (1M lines) {t:7.2f} s")
    sampler, t = timed(lambda: PKSampler(index, p, k, seed=0))
    print(f"    PKSampler(P={p}, K={k})           {t:7.2f} s")
    epoch, t = timed(lambda: sampler.epoch(0))
    print(
        f"    one epoch of positions          {t:7.2f} s  ({epoch.shape[0]:,} batches, "
        f"{epoch.size / t:,.0f} samples/s)"
    )
    ds = sampler.as_dataset()

    def stream():
        n = 0
        for paths_batch, _, _ in ds:
            n += int(paths_batch.shape[0])
        return n

    n, t = timed(stream)
    print(
        f"    tf.data stream of path batches  {t:7.2f} s  ({n / t:,.0f} samples/s, "
        f"{n / p / k / t:,.0f} batches/s)"
    )


def epoch_images(ds):
    n = 0
    for images, *_ in ds:
        n += int(images.shape[0])
    return n


def keras_augmentation(names):
    """The Keras preprocessing layers that do what `recipe.make_augmentation(names)` does."""
    layers = []
    if "flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal", seed=0))
    if "translate" in names:
        layers.append(keras.layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", seed=0))
    if "zoom" in names:
        layers.append(keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=0))
    if "contrast" in names:
        layers.append(keras.layers.RandomContrast(0.2, seed=0))
    return keras.Sequential(layers)


PIPELINES = ("keras", "ours", "pk", "rec", "keras_flip", "ours_flip", "keras_glyphs", "ours_glyphs",
             "keras_noat")
# A control, not a target: our pipelines run without tf.data's autotuning (it stalls about one
# iterator in four at its end), so each ratio to Keras is also given against Keras's pipeline with
# the same option, which tells that gain from the rest.
NO_AUTOTUNE = "keras, no autotuning"


def builders(data, index, rec_index, batch, p, k, image_size):
    """Part (2)'s pipelines: `[(--pipelines key, name, builder, the name of its baseline)]`."""
    from keras_facemargin import recipe

    def keras_pipeline(names=(), autotune=True):
        ds = keras.utils.image_dataset_from_directory(
            data, image_size=image_size, batch_size=batch, shuffle=True, seed=0, verbose=False)
        if names:
            augment = keras_augmentation(names)
            ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        if not autotune:
            options = tf.data.Options()
            options.autotune.enabled = False
            ds = ds.with_options(options)
        return ds

    def ours(names=(), source=index):
        augment = recipe.make_augmentation(names) if names else False
        return classification_dataset(source, batch, image_size=image_size, augment=augment, seed=0)

    faces, glyphs = ("flip",), ("translate", "zoom", "contrast")
    return [
        ("keras", "keras", keras_pipeline, None),
        ("ours", "ours", ours, "keras"),
        ("pk", "ours P×K", lambda: pk_dataset(index, p, k, image_size=image_size, augment=False, seed=0),
         "keras"),
        ("rec", "ours .rec", lambda: ours(source=rec_index()), "keras"),
        ("keras_flip", "keras + RandomFlip", lambda: keras_pipeline(faces), None),
        ("ours_flip", "ours + flip", lambda: ours(faces), "keras + RandomFlip"),
        ("keras_glyphs", "keras + Transl.+Zoom+Contr.", lambda: keras_pipeline(glyphs), None),
        ("ours_glyphs", "ours + translate,zoom,contrast", lambda: ours(glyphs),
         "keras + Transl.+Zoom+Contr."),
        ("keras_noat", NO_AUTOTUNE, lambda: keras_pipeline(autotune=False), None),
    ]


def control_line(rows, ratio):
    """With the control timed: each pipeline without augmentation against it, as `ratio(name)`."""
    if NO_AUTOTUNE not in rows:
        return None
    plain = [name for name in ("ours", "ours P×K", "ours .rec") if name in rows]
    return (f"    against {NO_AUTOTUNE} (images/s ratio, CPU ratio): "
            + "; ".join(f"{name} {' '.join(f'{v:.2f}' for v in ratio(name))}" for name in plain))


def chosen(all_builders, only):
    """The builders of the keys in `only`, each with its baseline."""
    wanted = {name for key, name, _, _ in all_builders if key in only}
    wanted |= {base for key, name, _, base in all_builders if name in wanted and base}
    return [(key, name, build, base) for key, name, build, base in all_builders if name in wanted]


def bench_decode(data, batch, p, k, image_size, rounds, only=PIPELINES, epochs_per_round=1):
    print(f"(2) decoding {data}: batches of {batch} vs keras.utils.image_dataset_from_directory")
    index = ImageIndex.from_directory(data)
    print(f"    {len(index):,} images, {index.num_classes:,} classes, image_size={image_size}; "
          f"{rounds} interleaved rounds of {epochs_per_round} epoch(s) per pipeline each")
    tmp = tempfile.TemporaryDirectory()

    def rec_index():  # packed only when the "rec" pipeline is chosen
        return pack_recordio(index, os.path.join(tmp.name, "train.rec"))

    all_builders = builders(data, index, rec_index, batch, p, k, image_size)
    pipelines = [(name, build(), base) for _, name, build, base in chosen(all_builders, only)]
    for _, ds, _ in pipelines:  # warm-up: page cache, tracing
        epoch_images(ds)
    # Wall-clock rates swing on a shared machine; each round times every pipeline once, so the
    # ratios compare runs seconds apart, and the CPU time this process spends per image (all its
    # threads) is the steadier measure of a pipeline's cost.
    rates = {name: [] for name, _, _ in pipelines}
    cpu = {name: [] for name in rates}
    for _ in range(rounds):
        for name, ds, _ in pipelines:
            start_cpu = time.process_time()
            n, t = timed(lambda ds=ds: sum(epoch_images(ds) for _ in range(epochs_per_round)))
            rates[name].append(n / t)
            cpu[name].append(1000 * (time.process_time() - start_cpu) / n)
    print(f"    {'pipeline':<32}{'images/s':>9}{'CPU ms/img':>11}{'vs':>30}{'ratio':>7}{'CPU ratio':>10}")
    for name, _, base in pipelines:
        rate, cost = float(np.median(rates[name])), float(np.median(cpu[name]))
        line = f"    {name:<32}{rate:>9,.0f}{cost:>11.3f}"
        if base:
            ratio = np.median([a / b for a, b in zip(rates[name], rates[base], strict=True)])
            cost_ratio = np.median([b / a for a, b in zip(cpu[name], cpu[base], strict=True)])
            line += f"{base:>30}{ratio:>7.2f}{cost_ratio:>10.2f}"
        print(line)

    def against_control(name):
        return (np.median([a / b for a, b in zip(rates[name], rates[NO_AUTOTUNE], strict=True)]),
                np.median([b / a for a, b in zip(cpu[name], cpu[NO_AUTOTUNE], strict=True)]))

    control = control_line(rates, against_control)
    if control:
        print(control)
    print("    runs, images/s: " + "; ".join(
        f"{name} " + " ".join(f"{v:,.0f}" for v in values) for name, values in rates.items()))
    print("    (ratio: images/s over the baseline's, median of the rounds' ratios, target >= 1.0; CPU ratio: "
          "the baseline's CPU time per image over ours)")
    tmp.cleanup()


def run_alone(args):
    """`--alone KEY`: one pipeline alone in this (fresh) process; prints one JSON line."""
    index = ImageIndex.from_directory(args.data)
    tmp = tempfile.TemporaryDirectory()
    size = (args.image_size, args.image_size)

    def rec_index():
        return pack_recordio(index, os.path.join(tmp.name, "train.rec"))

    (build,) = [b for key, _, b, _ in builders(args.data, index, rec_index, args.batch, args.P, args.K, size)
                if key == args.alone]
    ds = build()
    epoch_images(ds)  # warm-up: page cache, tracing
    starts, ends, n = [], [], 0
    start_cpu, start = time.process_time(), time.perf_counter()
    for _ in range(args.alone_epochs):
        begin = time.perf_counter()
        iterator = iter(ds)
        images, *_ = next(iterator)
        starts.append(time.perf_counter() - begin)
        n += int(images.shape[0]) + sum(int(images.shape[0]) for images, *_ in iterator)
        last = time.perf_counter()
        del iterator  # as `fit` drops each epoch's iterator: tf.data's threads stop here
        ends.append(time.perf_counter() - last)
    seconds = time.perf_counter() - start
    print(json.dumps({"images_per_s": n / seconds, "cpu_ms": 1000 * (time.process_time() - start_cpu) / n,
                      "start_ms": 1000 * float(np.median(starts)),
                      "end_ms": 1000 * float(np.median(ends)), "end_max_ms": 1000 * float(np.max(ends)),
                      "epoch_ms": 1000 * seconds / args.alone_epochs}))


def bench_fresh(args, only):
    """Part (5): each pipeline alone in a fresh process, as a user runs it, in interleaved rounds."""
    print(f"(5) each pipeline alone in a fresh process: {args.data}, batches of {args.batch}, "
          f"image_size={args.image_size}; {args.fresh_rounds} interleaved rounds of {args.alone_epochs} "
          f"epochs each after a warm-up epoch")
    index = ImageIndex.from_directory(args.data)
    picked = chosen(builders(args.data, index, None, args.batch, args.P, args.K, (1, 1)), only)
    results = {name: [] for _, name, _, _ in picked}
    for _ in range(args.fresh_rounds):
        for key, name, _, _ in picked:
            command = [sys.executable, __file__, "--alone", key, "--data", args.data,
                       "--batch", str(args.batch), "--image-size", str(args.image_size),
                       "-P", str(args.P), "-K", str(args.K), "--alone-epochs", str(args.alone_epochs)]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"    {'pipeline':<32}{'images/s':>9}{'CPU ms/img':>11}{'start ms':>9}{'end ms':>7}{'(max)':>6}"
          f"{'epoch ms':>9}{'vs':>30}{'ratio':>7}{'CPU ratio':>10}")
    for _, name, _, base in picked:
        rows = results[name]

        def median(field, rows=rows):
            return float(np.median([row[field] for row in rows]))

        line = (f"    {name:<32}{median('images_per_s'):>9,.0f}{median('cpu_ms'):>11.3f}"
                f"{median('start_ms'):>9.0f}{median('end_ms'):>7.0f}"
                f"{max(row['end_max_ms'] for row in rows):>6.0f}{median('epoch_ms'):>9.0f}")
        if base:
            pairs = list(zip(rows, results[base], strict=True))
            ratio = np.median([a["images_per_s"] / b["images_per_s"] for a, b in pairs])
            cost = np.median([b["cpu_ms"] / a["cpu_ms"] for a, b in pairs])
            line += f"{base:>30}{ratio:>7.2f}{cost:>10.2f}"
        print(line)

    def against_control(name):
        pairs = list(zip(results[name], results[NO_AUTOTUNE], strict=True))
        return (np.median([a["images_per_s"] / b["images_per_s"] for a, b in pairs]),
                np.median([b["cpu_ms"] / a["cpu_ms"] for a, b in pairs]))

    control = control_line(results, against_control)
    if control:
        print(control)
    print("    runs, images/s: " + "; ".join(
        f"{name} " + " ".join(f"{row['images_per_s']:,.0f}" for row in rows)
        for name, rows in results.items()))
    print("    (start ms: median time from a new iteration (an epoch of fit) to its first batch; end ms: "
          "median time to drop the finished iterator, and the longest; ratio and CPU ratio as in (2), "
          "per round)")


def bench_input_wait(data, backbone, image_size, batch, steps):
    """How long each training step waits for its batch: a real backbone trained on the recipe's
    pipeline (augmentation included) with the data prefetched in the background, as in `fit`."""
    from keras_facemargin import losses, models, recipe

    index = ImageIndex.from_directory(data)
    names = ("translate", "zoom", "contrast")
    ds = classification_dataset(index, batch, image_size=image_size, augment=recipe.make_augmentation(names),
                                seed=0)
    model, _ = models.build_recognizer(
        models.get_backbone(backbone, input_shape=(*image_size, 3), embedding_dim=128), index.num_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcFaceLoss())
    iterator = iter(ds.repeat())
    waits, computes = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        images, labels = next(iterator)
        got = time.perf_counter()
        model.train_on_batch(images, labels)
        waits.append(got - start)
        computes.append(time.perf_counter() - got)
    waits, computes = waits[1:], computes[1:]  # the first step starts the pipeline and traces
    print(f"(4) input wait: {backbone} at {image_size[0]}x{image_size[1]}, batch {batch}, augmentation "
          f"{','.join(names)}, {steps} steps after the first")
    print(f"    step (train_on_batch) median {np.median(computes) * 1e3:,.0f} ms; input wait median "
          f"{np.median(waits) * 1e3:.2f} ms, max {max(waits) * 1e3:.2f} ms "
          f"({100 * sum(waits) / (sum(waits) + sum(computes)):.2f}% of the time)")


def write_synthetic_rec(folder, num_images, num_identities, seed=0):
    """An InsightFace-layout .rec/.idx of tiny records (a 24-byte IRHeader and 8 payload bytes
    each), written as uint32 words: what indexing reads is the same as for real images."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(rng.integers(0, num_identities, num_images), minlength=num_identities)
    starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
    first_identity = num_images + 1
    n = 1 + num_images + num_identities
    words = np.zeros((n, 10), "<u4")
    words[:, 0] = 0xCED7230A
    words[:, 1] = 32  # cflag 0, 24-byte header + 8 bytes
    f32 = lambda v: np.asarray(v, "<f4").view("<u4")  # noqa: E731
    words[0, 2], words[0, 8:] = 2, f32([first_identity, first_identity + num_identities])
    labels = np.repeat(np.arange(num_identities), counts)
    words[1 : 1 + num_images, 3] = f32(labels)
    words[1 : 1 + num_images, 4] = np.arange(1, num_images + 1)
    ident = slice(1 + num_images, n)
    words[ident, 2] = 2
    words[ident, 8] = f32(starts)
    words[ident, 9] = f32(starts + counts)
    rec = os.path.join(folder, "train.rec")
    words.tofile(rec)
    offsets = np.arange(n, dtype=np.int64) * 40
    with open(os.path.join(folder, "train.idx"), "w") as f:
        f.writelines(f"{k}\t{o}\n" for k, o in enumerate(offsets.tolist()))
    return rec


def mxnet_style_index(rec):
    """What MXIndexedRecordIO + FaceImageIter do in Python, without MXNet: the .idx into a dict,
    then each identity record read, unpacked, and its range appended."""
    idx = {}
    with open(rec[:-4] + ".idx") as f:
        for line in iter(f.readline, ""):
            key, offset = line.strip().split("\t")
            idx[int(key)] = int(offset)
    with open(rec, "rb") as f:

        def read(key):
            f.seek(idx[key])
            _, lrec = struct.unpack("<II", f.read(8))
            return f.read(lrec & ((1 << 29) - 1))

        flag, label = struct.unpack("<If", read(0)[:8])
        header = read(0)
        first, end = (int(v) for v in struct.unpack("<2f", header[24:32]))
        imgidx, labels = [], []
        for identity in range(first, end):
            a, b = (int(v) for v in struct.unpack("<2f", read(identity)[24:32]))
            imgidx += range(a, b)
            labels += [identity - first] * (b - a)
    return imgidx, labels


def bench_recordio_index(num_images, num_identities):
    print(f"(3) RecordIO indexing: {num_images:,} image records, {num_identities:,} identities")
    with tempfile.TemporaryDirectory() as tmp:
        rec, t = timed(lambda: write_synthetic_rec(tmp, num_images, num_identities))
        print(f"    (writing the synthetic set: {t:.1f} s, {os.path.getsize(rec):,} bytes)")
        timed(lambda: open(rec, "rb").read())  # page cache, for both
        index, ours = timed(lambda: ImageIndex.from_recordio(rec))
        (imgidx, labels), theirs = timed(lambda: mxnet_style_index(rec))
        assert len(index) == len(imgidx) == num_images
        assert np.array_equal(index.labels, labels)
        print(f"    ImageIndex.from_recordio        {ours:7.2f} s   (target <= 5 s)")
        print(f"    MXNet/InsightFace-style Python  {theirs:7.2f} s   ratio ours / theirs "
              f"{ours / theirs:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a folder-per-class image set for parts (2) and (4)")
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("-P", type=int, default=32)
    parser.add_argument("-K", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pipelines", default=",".join(PIPELINES),
                        help="part (2)'s pipelines, comma-separated (each brings its baseline): "
                        + ", ".join(PIPELINES))
    parser.add_argument("--epochs-per-round", type=int, default=1,
                        help="part (2): epochs timed together per pipeline and round")
    parser.add_argument("--rec-images", type=int, default=5_000_000)
    parser.add_argument("--rec-identities", type=int, default=85_000)
    parser.add_argument("--skip-index", action="store_true", help="skip parts (1) and (3)")
    parser.add_argument("--skip-decode", action="store_true", help="skip part (2)")
    parser.add_argument("--wait-backbone", default="iresnet18", help="part (4)'s backbone ('none': skip)")
    parser.add_argument("--wait-batch", type=int, default=32)
    parser.add_argument("--wait-steps", type=int, default=5)
    parser.add_argument("--fresh-rounds", type=int, default=0,
                        help="part (5): rounds of each part (2) pipeline alone in a fresh process (0: skip)")
    parser.add_argument("--alone-epochs", type=int, default=10, help="part (5): epochs timed per process")
    parser.add_argument("--alone", choices=PIPELINES,
                        help=argparse.SUPPRESS)  # part (5)'s worker
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one round, one step")
    args = parser.parse_args()
    if args.alone:
        if not args.data:
            parser.error("--alone needs --data")
        return run_alone(args)
    only = args.pipelines.split(",")
    unknown = sorted(set(only) - set(PIPELINES))
    if unknown:
        parser.error(f"--pipelines must be a comma-separated list of {', '.join(PIPELINES)}; got {unknown}")
    if args.epochs_per_round < 1:
        parser.error(f"--epochs-per-round must be an integer >= 1; got {args.epochs_per_round}")
    if args.fresh_rounds < 0:
        parser.error(f"--fresh-rounds must be an integer >= 0; got {args.fresh_rounds}")
    if args.alone_epochs < 1:
        parser.error(f"--alone-epochs must be an integer >= 1; got {args.alone_epochs}")
    if args.dry_run:
        args.classes, args.images, args.rec_images, args.rec_identities = 100, 1000, 1000, 50
        args.P, args.K, args.batch, args.image_size, args.rounds = 2, 2, 4, 32, 1
        args.wait_batch, args.wait_steps = 4, 1
        args.fresh_rounds, args.alone_epochs = min(args.fresh_rounds, 1), 1
        args.wait_backbone = "none" if args.wait_backbone == "none" else "small_resnet"
    print(
        f"bench_data.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
        f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, Keras "
        f"{keras.__version__}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    if not args.skip_index:
        bench_index(args.classes, args.images, args.P, args.K)
        bench_recordio_index(args.rec_images, args.rec_identities)
    size = (args.image_size, args.image_size)
    if args.data and not args.skip_decode:
        bench_decode(args.data, args.batch, args.P, args.K, size, args.rounds, only, args.epochs_per_round)
    if args.data and args.fresh_rounds > 0:
        bench_fresh(args, only)
    if args.data and args.wait_backbone != "none":
        bench_input_wait(args.data, args.wait_backbone, size, args.wait_batch, args.wait_steps)
    print(f"# load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
