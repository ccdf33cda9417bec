"""Data pipeline benchmark: P×K index sampling at scale, and decoding throughput against Keras.

(1) Index and sampling, no decoding: build an `ImageIndex` of 100,000 classes / 1,000,000
    synthetic paths (from arrays, and from a 1M-line list file), a `PKSampler`, draw an epoch of
    positions, and stream the undecoded batches through `tf.data`.
(2) Decoding, same folder, same process: images per second of `pk_dataset` P×K batches
    (no augmentation, like Keras) against `keras.utils.image_dataset_from_directory` with the
    same image size and batch size. Runs alternate; the median of `--repeats` is reported.

    python benchmarks/bench_data.py --data ../shared/data/emoji-4vendor
"""

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_facemargin.data import ImageIndex, PKSampler, pk_dataset  # noqa: E402


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


def count_images(ds, max_images):
    n = 0
    for images, _ in ds:
        n += int(images.shape[0])
        if n >= max_images:
            break
    return n


def bench_decode(data, p, k, image_size, repeats, max_images):
    print(f"(2) decoding {data}: P={p} × K={k} batches vs image_dataset_from_directory")
    index = ImageIndex.from_directory(data)
    print(f"    {len(index):,} images, {index.num_classes:,} classes, image_size={image_size}")

    def ours():
        return pk_dataset(index, p, k, image_size=image_size, augment=False, seed=0)

    def ours_augmented():
        return pk_dataset(index, p, k, image_size=image_size, augment=True, seed=0)

    def theirs():
        return keras.utils.image_dataset_from_directory(
            data, image_size=image_size, batch_size=p * k, shuffle=True, seed=0, verbose=False
        )

    # One warm-up pass each (page cache, tracing).
    for make in (ours, theirs):
        count_images(make(), max_images)
    # Wall-clock rates swing on a shared machine; the CPU time this process spends per image
    # (all its threads) is the steadier measure of the pipelines' cost.
    rates = {"ours": [], "ours+augment": [], "keras": []}
    cpu = {name: [] for name in rates}
    for _ in range(repeats):
        for name, make in (("ours", ours), ("keras", theirs), ("ours+augment", ours_augmented)):
            ds = make()
            start_cpu = time.process_time()
            n, t = timed(lambda ds=ds: count_images(ds, max_images))
            rates[name].append(n / t)
            cpu[name].append(1000 * (time.process_time() - start_cpu) / n)
    med = {name: float(np.median(values)) for name, values in rates.items()}
    med_cpu = {name: float(np.median(values)) for name, values in cpu.items()}
    for name, values in rates.items():
        print(
            f"    {name:14s} median {med[name]:7,.0f} images/s, {med_cpu[name]:.3f} CPU ms/image"
            f"   (runs: {', '.join(f'{v:,.0f}' for v in values)} images/s)"
        )
    ratio = med["ours"] / med["keras"]
    augmented = med["ours+augment"] / med["keras"]
    print(
        f"    throughput ratio ours / keras: {ratio:.2f} (target >= 0.9), augmented {augmented:.2f}"
    )
    cost = med_cpu["keras"] / med_cpu["ours"]
    print(f"    CPU-cost ratio keras / ours:   {cost:.2f} (1.0 = the same CPU time per image)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a folder-per-class image set for part (2)")
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("-P", type=int, default=32)
    parser.add_argument("-K", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-images", type=int, default=5_600)
    args = parser.parse_args()
    print(
        f"bench_data.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
        f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, Keras "
        f"{keras.__version__}"
    )
    bench_index(args.classes, args.images, args.P, args.K)
    if args.data:
        size = (args.image_size, args.image_size)
        bench_decode(args.data, args.P, args.K, size, args.repeats, args.max_images)


if __name__ == "__main__":
    main()
