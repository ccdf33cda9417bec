"""Runs one training step (or `facemargin train`) in one process, under tf.distribute; for
tests/test_distribute.py, which starts it in subprocesses.

    python tests/distributed_script.py single|mirrored|worker OUT.npz
    python tests/distributed_script.py cli-mirrored|cli-worker -- <facemargin train flags>

`mirrored` splits the CPU into two logical devices; `worker` reads the cluster from TF_CONFIG.
The step mode trains tiny models for one step on the same global batch of 16 (4 classes x
4, class-major, so each of two replicas holds whole classes): Dense -> CosineHead with ArcFace,
and Dense -> UnitNormalization with a semi-hard triplet loss over the embeddings of all
replicas (`cross_replica=True`), and the same without it (`triplet_local`); and Dense ->
CosineHead(loss=...) with AdaFace, CurricularFace, AdaCos and ElasticFace+, whose head keeps
their running statistics and random state (among the weights written). It writes their weights after the step, and the losses of the
step, to OUT.npz, with the ArcFace model's outputs for 11 inputs through `evaluation.embed`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 16


def split_cpu():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def make_data(strategy, arrange=lambda a, b: (a, b)):
    """The global batch of 16, split into whole classes per replica."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, 8)).astype("float32")
    y = np.repeat(np.arange(4), 4).astype("int32")

    def shard(context):
        # One pipeline feeds its replicas one per-replica batch each, in replica order.
        n = context.get_per_replica_batch_size(GLOBAL_BATCH)
        local = GLOBAL_BATCH // context.num_input_pipelines
        part = slice(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)
        return tf.data.Dataset.from_tensor_slices((x[part], y[part])).batch(n).map(arrange)

    if strategy.num_replicas_in_sync > 1:
        return strategy.distribute_datasets_from_function(shard)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).map(arrange)


def step_mode(mode, out):
    if mode == "mirrored":
        split_cpu()
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    import keras

    import keras_facemargin as kf

    models = {
        "arcface": (lambda: kf.heads.CosineHead(4), kf.losses.ArcFaceLoss(scale=8.0)),
        "triplet": (
            keras.layers.UnitNormalization,
            kf.losses.TripletLoss(margin=0.3, mining="semi_hard", cross_replica=True),
        ),
        "triplet_local": (
            keras.layers.UnitNormalization,
            kf.losses.TripletLoss(margin=0.3, mining="semi_hard"),
        ),
    }
    # Losses with running statistics or random draws, kept by the head built for them: the
    # statistics of the global batch (gathered over replicas) make every replica's step, and the
    # state they agree on, equal the single-process ones.
    stateful = {
        "adaface": kf.losses.AdaFaceLoss(scale=8.0, momentum=0.5),
        "curricularface": kf.losses.CurricularFaceLoss(scale=8.0, momentum=0.5),
        "adacos": kf.losses.AdaCosLoss(),
        "elasticface_plus": kf.losses.ElasticFaceLoss(plus=True, sigma=0.1, seed=3, scale=8.0),
    }
    for name, loss in stateful.items():
        models[name] = (lambda loss=loss: kf.heads.CosineHead(4, loss=loss), loss)
    results = {}
    for name, (last, loss) in models.items():
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), last()])
            model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
        kf.distribute.prepare_model(model, strategy)

        data = make_data(strategy)
        with strategy.scope():
            history = model.fit(data, epochs=1, verbose=0)
        results[f"{name}_loss"] = np.float64(history.history["loss"][0])
        if name == "arcface":  # embedding, as `VerificationCallback` does it in `fit`: 11 rows
            with strategy.scope():
                results["arcface_embed"] = kf.evaluation.embed(
                    model, np.random.default_rng(1).normal(size=(11, 8)).astype("float32"),
                    batch_size=4, normalize=False, verbose=0)
        for i, weight in enumerate(model.weights):
            results[f"{name}_{i}"] = weight.numpy()
        if name in stateful:  # every local replica's copy of every statistic, side by side
            copies = [np.stack([np.asarray(c) for c in getattr(v.value, "values", [v.value])])
                      for v in model.layers[-1].loss_state.variables_by_name.values()]
            results[f"{name}_local_copies_agree"] = np.bool_(all(np.all(c == c[0]) for c in copies))
    # PartialFC, data-parallel: 4 of 8 classes in the global batch (2 per replica) plus 2 sampled
    # negatives, the same on every replica.
    with strategy.scope():
        keras.utils.set_random_seed(1)
        images, labels = keras.Input((8,)), keras.Input((), dtype="int32")
        head = kf.heads.PartialFC(8, loss=kf.losses.ArcFaceLoss(scale=8.0), sample_rate=0.75, seed=5)
        model = keras.Model([images, labels], head(keras.layers.Dense(6)(images), labels))
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    kf.distribute.prepare_model(model, strategy)
    data = make_data(strategy, lambda a, b: ((a, b),))
    if mode == "mirrored":
        try:
            with strategy.scope():
                model.fit(data, epochs=1, verbose=0)
        except ValueError as error:
            results["partial_fc_error"] = str(error)
        np.savez(out, replicas=strategy.num_replicas_in_sync, **results)
        return
    with strategy.scope():
        history = model.fit(data, epochs=1, verbose=0)
    results["partial_fc_loss"] = np.float64(history.history["loss"][0])
    for i, weight in enumerate(model.weights):
        results[f"partial_fc_{i}"] = np.asarray(weight.numpy())
    np.savez(out, replicas=strategy.num_replicas_in_sync, **results)


def main(argv):
    mode = argv[0]
    if mode.startswith("cli-"):
        if mode == "cli-mirrored":
            split_cpu()
        from keras_facemargin import cli

        return cli.main(argv[argv.index("--") + 1:])
    step_mode(mode, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
