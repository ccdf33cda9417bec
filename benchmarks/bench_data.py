"""Data pipeline benchmark: P×K index sampling at scale, and decoding throughput against Keras.

(1) Index and sampling, no decoding: build an `ImageIndex` of 100,000 classes / 1,000,000
    synthetic paths (from arrays, and from a 1M-line list file), a `PKSampler`, draw an epoch of
    positions, and stream the undecoded batches through `tf.data`.
(2) Decoding, same folder, same process: images per second of `pk_dataset` P×K batches
    (no augmentation, like Keras) against `keras.utils.image_dataset_from_directory` with the
    same image size and batch size, and of the same `pk_dataset` over the same images packed
    into a RecordIO file (`pack_recordio`, read by byte offset). Runs alternate; the median of
    `--repeats` is reported.
(3) RecordIO indexing: `ImageIndex.from_recordio` on a synthetic InsightFace-layout set of
    `--rec-images` records (5M) and `--rec-identities` identities, against the same reading done
    as MXNet's `MXIndexedRecordIO` and InsightFace's `FaceImageIter` do it in Python (an `.idx`
    dict line by line, then every identity record read and unpacked).

    python benchmarks/bench_data.py --data ../shared/data/emoji-4vendor
"""

import argparse
import os
import platform
import struct
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_facemargin.data import ImageIndex, PKSampler, pack_recordio, pk_dataset  # noqa: E402


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

    tmp = tempfile.TemporaryDirectory()
    rec_index = pack_recordio(index, os.path.join(tmp.name, "train.rec"))
    print(f"    packed into {rec_index.record_file} ({os.path.getsize(rec_index.record_file):,} bytes)")

    def ours_rec():
        return pk_dataset(rec_index, p, k, image_size=image_size, augment=False, seed=0)

    def ours_augmented():
        return pk_dataset(index, p, k, image_size=image_size, augment=True, seed=0)

    def theirs():
        return keras.utils.image_dataset_from_directory(
            data, image_size=image_size, batch_size=p * k, shuffle=True, seed=0, verbose=False
        )

    # One warm-up pass each (page cache, tracing).
    for make in (ours, theirs, ours_rec):
        count_images(make(), max_images)
    # Wall-clock rates swing on a shared machine; the CPU time this process spends per image
    # (all its threads) is the steadier measure of the pipelines' cost.
    rates = {"ours": [], "ours+augment": [], "keras": [], "ours .rec": []}
    cpu = {name: [] for name in rates}
    for _ in range(repeats):
        for name, make in (("ours", ours), ("keras", theirs), ("ours .rec", ours_rec),
                           ("ours+augment", ours_augmented)):
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
    rec = med["ours .rec"] / med["ours"]
    rec_cost = med_cpu["ours"] / med_cpu["ours .rec"]
    print(f"    throughput ratio .rec / folder: {rec:.2f} (target >= 1.0); CPU-cost ratio "
          f"folder / .rec: {rec_cost:.2f}")
    tmp.cleanup()


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
    parser.add_argument("--data", help="a folder-per-class image set for part (2)")
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("-P", type=int, default=32)
    parser.add_argument("-K", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-images", type=int, default=5_600)
    parser.add_argument("--rec-images", type=int, default=5_000_000)
    parser.add_argument("--rec-identities", type=int, default=85_000)
    parser.add_argument("--skip-index", action="store_true", help="skip parts (1) and (3)")
    args = parser.parse_args()
    print(
        f"bench_data.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
        f"{platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, Keras "
        f"{keras.__version__}"
    )
    if not args.skip_index:
        bench_index(args.classes, args.images, args.P, args.K)
        bench_recordio_index(args.rec_images, args.rec_identities)
    if args.data:
        size = (args.image_size, args.image_size)
        bench_decode(args.data, args.P, args.K, size, args.repeats, args.max_images)


if __name__ == "__main__":
    main()
