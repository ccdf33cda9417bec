import logging
import time

import numpy as np
import pytest
import tensorflow as tf
from data_helpers import FACES

from keras_facemargin.data import BatchMix, CorruptFileLog, ImageIndex, PKSampler, pk_dataset


def synthetic(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    return ImageIndex(
        np.arange(len(labels)).astype(str), labels, [str(c) for c in range(len(counts))]
    )


def check_pk_rows(rows, labels, p, k, counts=None):
    for row in rows:
        classes = labels[row].reshape(p, k)
        assert (classes == classes[:, :1]).all(), "each class fills K consecutive slots"
        assert len(set(classes[:, 0])) == p, "P distinct classes"
        for group, c in zip(row.reshape(p, k), classes[:, 0]):
            n = counts[c] if counts is not None else k
            assert len(set(group)) == min(n, k), "distinct images whenever the class has K"


def test_pk_dataset_on_real_faces():
    index = ImageIndex.from_directory(FACES)
    ds = pk_dataset(
        index, classes_per_batch=5, samples_per_class=4, steps_per_epoch=3, seed=7, image_size=64
    )
    assert ds.element_spec[0].shape == (20, 64, 64, 3)
    assert int(ds.cardinality()) == 3
    for _ in range(2):
        batches = list(ds)
        assert len(batches) == 3
        for images, labels in batches:
            labels = labels.numpy()
            assert images.shape == (20, 64, 64, 3) and images.dtype == tf.float32
            assert sorted(np.unique(labels)) == [0, 1, 2, 3, 4]
            assert all((labels.reshape(5, 4) == labels.reshape(5, 4)[:, :1]).all(1))
            assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
            assert float(tf.reduce_min(tf.reduce_max(images, axis=[1, 2, 3]))) > 0.0


def test_pk_dataset_is_deterministic_and_each_iteration_is_a_new_epoch():
    index = ImageIndex.from_directory(FACES)
    a = pk_dataset(index, 5, 2, steps_per_epoch=2, seed=3, image_size=(32, 32))
    b = pk_dataset(index, 5, 2, steps_per_epoch=2, seed=3, image_size=(32, 32))
    first_a, first_b = list(a), list(b)
    for (xa, ya), (xb, yb) in zip(first_a, first_b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    second = list(a)
    assert any(not np.array_equal(x1, x2) for (x1, _), (x2, _) in zip(first_a, second))


def test_initial_epoch_starts_where_a_resumed_run_does():
    index = ImageIndex.from_directory(FACES)
    kwargs = dict(steps_per_epoch=2, seed=3, image_size=(32, 32))  # augmented: the seeds count too
    whole = pk_dataset(index, 5, 2, **kwargs)
    epochs = [list(whole) for _ in range(3)]
    resumed = list(pk_dataset(index, 5, 2, initial_epoch=2, **kwargs))
    for (x, y), (xr, yr) in zip(epochs[2], resumed, strict=True):
        np.testing.assert_array_equal(yr, y)
        np.testing.assert_array_equal(xr, x)
    assert not np.array_equal(epochs[0][0][1], epochs[2][0][1])  # epochs differ, so the check can fail
    with pytest.raises(ValueError, match="initial_epoch must be an integer >= 0; got -1"):
        pk_dataset(index, 5, 2, initial_epoch=-1)


def test_sampler_epochs():
    counts = np.array([8, 5, 9, 4, 6, 7, 4, 5, 12, 10])
    index = synthetic(counts)
    sampler = PKSampler(index, 3, 4, seed=1)
    assert sampler.steps_per_epoch == 3 and sampler.batch_size == 12
    epoch = sampler.epoch(0)
    assert epoch.shape == (3, 12)
    check_pk_rows(epoch, index.labels, 3, 4)
    assert len(set(index.labels[epoch].ravel())) == 9, "each class at most once per epoch"
    np.testing.assert_array_equal(epoch, PKSampler(index, 3, 4, seed=1).epoch(0))
    assert not np.array_equal(epoch, sampler.epoch(1))
    assert not np.array_equal(epoch, PKSampler(index, 3, 4, seed=2).epoch(0))
    long = PKSampler(index, 3, 4, steps_per_epoch=20, seed=1).epoch(0)
    check_pk_rows(long, index.labels, 3, 4)


def test_small_classes_replace_and_skip(caplog):
    counts = np.array([1, 2, 3, 6, 7, 8])
    index = synthetic(counts)
    with caplog.at_level(logging.INFO):
        sampler = PKSampler(index, 2, 4, steps_per_epoch=30, seed=0)
    assert sampler.num_small_classes == 3
    assert (
        "3 of 6 classes have fewer than K=4 images and are sampled with replacement" in caplog.text
    )
    epoch = sampler.epoch(0)
    check_pk_rows(epoch, index.labels, 2, 4, counts)
    for row in epoch:
        for group in row.reshape(2, 4):
            c = index.labels[group[0]]
            assert len(set(group)) == min(counts[c], 4), (
                "a small class cycles through all its images"
            )
    skip = PKSampler(index, 2, 4, small_classes="skip", seed=0)
    assert skip.num_small_classes == 3 and list(skip.classes) == [3, 4, 5]
    assert set(index.labels[skip.epoch(0).ravel()]) <= {3, 4, 5}


def test_bad_arguments():
    index = synthetic([4, 4, 2])
    with pytest.raises(ValueError, match="classes_per_batch must be an integer >= 1; got 0"):
        PKSampler(index, 0, 2)
    with pytest.raises(ValueError, match="samples_per_class must be an integer >= 1; got 0"):
        PKSampler(index, 2, 0)
    with pytest.raises(
        ValueError,
        match=r"classes_per_batch must be <= the number of usable classes \(2 of 3.*got classes_per_batch=3",
    ):
        PKSampler(index, 3, 4, small_classes="skip")
    with pytest.raises(ValueError, match="small_classes must be one of"):
        PKSampler(index, 2, 2, small_classes="drop")
    with pytest.raises(ValueError, match="index must be an ImageIndex"):
        PKSampler([1, 2], 2, 2)
    with pytest.raises(ValueError, match="mix must be None for pk_dataset.*classification_dataset"):
        pk_dataset(index, 2, 2, mix=BatchMix(mixup=1.0))


def test_scale_100k_classes_1m_images():
    rng = np.random.default_rng(0)
    labels = np.sort(rng.integers(0, 100_000, size=1_000_000))
    paths = np.char.add("id", labels.astype(str))
    start = time.perf_counter()
    index = ImageIndex(paths, labels, [str(c) for c in range(100_000)])
    sampler = PKSampler(index, 64, 4, seed=0)
    epoch = sampler.epoch(0)
    elapsed = time.perf_counter() - start
    assert epoch.shape == (100_000 // 64, 256)
    check_pk_rows(epoch[:50], index.labels, 64, 4, index.class_counts())
    assert elapsed < 10, f"index + one epoch took {elapsed:.1f} s"


def test_input_context_gives_each_replica_whole_classes():
    index = ImageIndex.from_directory(FACES)
    kwargs = dict(
        classes_per_batch=4,
        samples_per_class=2,
        steps_per_epoch=3,
        seed=5,
        image_size=(16, 16),
        augment=False,
    )
    full = [y.numpy() for _, y in pk_dataset(index, **kwargs)]
    replicas = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=4
        )
        ds = pk_dataset(index, input_context=context, **kwargs)
        assert ds.element_spec[1].shape == (2,)
        batches = [y.numpy() for _, y in ds]
        assert len(batches) == 6
        replicas.append(batches)
    for step in range(3):
        local = [replicas[p][step * 2 + r] for p in range(2) for r in range(2)]
        for labels in local:
            assert labels[0] == labels[1], "a replica gets one whole class (P/R = 1) × K"
        np.testing.assert_array_equal(np.concatenate(local), full[step])
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=3
    )
    with pytest.raises(
        ValueError,
        match="multiple of the number of replicas .*num_replicas_in_sync=3.*got classes_per_batch=4",
    ):
        pk_dataset(index, input_context=context, **kwargs)


def test_corrupt_files_do_not_stop_the_epoch(tmp_path, caplog):
    from data_helpers import copy_faces, corrupt, first_image

    root = copy_faces(str(tmp_path))
    index = ImageIndex.from_directory(root)
    garbage = first_image(root, "John_Simm")
    truncated = first_image(root, "John_Salley")
    corrupt(garbage, "garbage")
    corrupt(truncated, "truncated")
    log = CorruptFileLog()
    ds = pk_dataset(index, 5, 11, image_size=(32, 32), augment=False, corrupt_files=log)
    ((images, labels),) = list(ds)
    assert images.shape == (55, 32, 32, 3)
    blank = tf.reduce_max(images, axis=[1, 2, 3]).numpy() == 0
    assert blank.sum() == 2 and log.count == 2
    assert sorted(labels.numpy()[blank]) == [0, 4], "blank images keep their label"
    with caplog.at_level(logging.WARNING):
        log.on_epoch_end(0)
    assert sorted(r.path for r in log.records) == sorted([garbage, truncated])
    assert all(r.reason.startswith("InvalidArgumentError") for r in log.records)
    assert garbage in caplog.text and truncated in caplog.text
    assert "2 samples so far could not be decoded" in caplog.text
    import os

    os.remove(first_image(root, "John_Shimkus"))
    ((images, labels),) = list(ds)
    assert log.count == 5
    missing = log.collect()
    assert any("NotFoundError" in r.reason for r in missing)


def test_fit_on_pk_batches_with_a_corrupt_file_logs_it(tmp_path, caplog):
    import keras
    from data_helpers import copy_faces, corrupt, first_image

    import keras_facemargin as kf

    root = copy_faces(str(tmp_path))
    bad = first_image(root, "John_Schneider")
    corrupt(bad, "garbage")
    log = kf.data.CorruptFileLog()
    ds = kf.data.pk_dataset(
        kf.data.ImageIndex.from_directory(root), 5, 11, image_size=(16, 16), corrupt_files=log
    )
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Flatten(),
            keras.layers.Dense(8),
            kf.heads.CosineHead(5),
        ]
    )
    model.compile(optimizer="adam", loss=kf.losses.CosFaceLoss(margin=0.2, scale=16.0))
    with caplog.at_level(logging.WARNING):
        history = model.fit(ds, epochs=2, verbose=0, shuffle=False, callbacks=[log])
    assert np.isfinite(history.history["loss"]).all()
    assert log.count == 2 and [r.path for r in log.records] == [bad, bad]
    assert f"corrupt or unreadable image replaced by a blank: {bad}" in caplog.text


MIRRORED = """
import os, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_facemargin.data import ImageIndex, pk_dataset
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
index = ImageIndex.from_directory(sys.argv[1])
dist = strategy.distribute_datasets_from_function(
    lambda ctx: pk_dataset(index, 4, 2, image_size=16, steps_per_epoch=3, input_context=ctx)
)
for _, labels in dist:
    print([l.numpy().tolist() for l in strategy.experimental_local_results(labels)])
"""


@pytest.mark.slow
def test_mirrored_strategy_replicas_get_whole_classes():
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", MIRRORED, FACES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    steps = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(steps) == 3
    for replica_a, replica_b in steps:
        for local in (replica_a, replica_b):
            assert len(local) == 4 and local[0] == local[1] and local[2] == local[3]
        assert len(set(replica_a + replica_b)) == 4, "4 distinct classes across the replicas"
