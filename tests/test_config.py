"""`TrainConfig` and the recipe's rules, without training."""

import dataclasses
import os

import pytest
from helpers import conv_channels

import keras_facemargin as kf
from keras_facemargin import config as config_lib
from keras_facemargin import recipe
from keras_facemargin.config import TrainConfig


def test_loss_flags_name_exactly_the_losses_that_take_them():
    for flag, takers in config_lib.LOSS_FLAGS.items():
        value = 0.1 if flag != "scale" else 16.0
        for name in config_lib.LOSSES:
            if name == "softmax":
                continue
            try:
                kf.losses.get(name, **{flag: value if not (flag == "margin" and name == "sphereface") else 2})
                takes = True
            except (TypeError, ValueError):
                takes = False
            assert takes == (name in takers), (flag, name)


def test_the_command_line_offers_exactly_the_registered_names():
    assert sorted(config_lib.LOSSES) == sorted(["softmax", *kf.losses.names()])
    assert sorted(config_lib.BACKBONES) == sorted(kf.models.backbone_names())
    margin = {n for n in kf.losses.names() if isinstance(kf.losses.get(n), kf.losses.MarginSoftmaxLoss)}
    assert set(config_lib.MARGIN_LOSSES) == margin
    assert set(config_lib.PAIR_LOSSES) == set(kf.losses.names()) - margin


def test_every_field_is_checked_and_named_as_its_flag(tmp_path):
    good = TrainConfig(data=str(tmp_path)).validate()
    assert good.epochs == 10 and good.loss == "arcface"
    for name, value, message in [
        ("epochs", -3, "--epochs must be an integer >= 1; got -3"),
        ("epochs", "1", "--epochs must be an integer >= 1; got '1' (a string)"),
        ("learning_rate", -1.0, "--learning-rate must be a finite number > 0; got -1.0"),
        ("learning_rate", float("nan"), "--learning-rate must be a finite number > 0; got nan"),
        ("label_smoothing", 1.0, "--label-smoothing must be a number in [0, 1); got 1.0"),
        ("mixup", 2, "--mixup must be a number in [0, 1]; got 2"),
        ("loss", "arcfase", "--loss must be one of softmax, normface"),
        ("augment", ["flip", "spin"], "--augment must be 'auto', 'none' or a list of flip, crop"),
        ("val_pairs", [1], "--val-pairs must be a list of file paths; got [1]"),
        ("seed", -1, "--seed must be an integer >= 0; got -1"),
        ("samples_per_class", 1, "--samples-per-class must be an integer >= 2; got 1"),
        ("width", 0, "--width must be a finite number > 0; got 0"),
        ("dropout", 1.0, "--dropout must be a number in [0, 1); got 1.0"),
        ("dropout", -0.1, "--dropout must be a number in [0, 1); got -0.1"),
        ("tensorboard", "yes", "--tensorboard must be True or False; got 'yes' (a string)"),
    ]:
        with pytest.raises(ValueError) as error:
            dataclasses.replace(good, **{name: value}).validate()
        assert message in str(error.value), (name, str(error.value))
    assert "epochs must be" in _error(lambda: dataclasses.replace(good, epochs=0).validate(flags=False))


def _error(fn):
    with pytest.raises(ValueError) as error:
        fn()
    return str(error.value)


def test_augment_accepts_commas_spaces_and_none(tmp_path):
    config = TrainConfig(data=str(tmp_path), augment="zoom, flip").validate()
    assert config.augment == ["flip", "zoom"]
    assert TrainConfig(data=str(tmp_path), augment="none").validate().augment == []


def test_each_augment_name_turns_on_its_transformation_at_the_documented_strength():
    expected = {"flip": {"flip": True}, "crop": {"crop_scale": (0.8, 1.0)}, "translate": {"translate": 0.08},
                "zoom": {"zoom": 0.1}, "contrast": {"contrast": 0.2}, "color": {"color_jitter": 0.2},
                "erase": {"erase": 0.25}}
    assert sorted(expected) == sorted(config_lib.AUGMENTATIONS)
    none = recipe.make_augmentation([])
    assert none == kf.data.Augmentation(flip=False, crop_scale=None)
    for name, fields in expected.items():
        assert recipe.make_augmentation([name]) == dataclasses.replace(none, **fields), name


def test_flags_the_loss_does_not_take_are_refused_and_ignored_ones_warned(tmp_path):
    config = TrainConfig(data=str(tmp_path), loss="triplet", scale=30.0).validate()
    assert "--scale does not apply to --loss triplet" in _error(lambda: config.check_combination({"scale"}))
    config = TrainConfig(data=str(tmp_path), loss="triplet", batch_size=64).validate()
    assert config.check_combination({"batch_size"}) == [
        "--batch-size is ignored with the pair loss triplet: its batch is --classes-per-batch × "
        "--samples-per-class"]
    config = TrainConfig(data=str(tmp_path), loss="circle", mixup=0.2).validate()
    assert "--mixup/--cutmix need softmax or a margin loss" in _error(lambda: config.check_combination({"mixup"}))


def test_auto_values_follow_the_written_rules(tmp_path):
    small = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=48).validate(), 1000, 4000)
    assert small.backbone == "small_vgg" and small.embedding_dim == 128 and small.loss == "arcface"
    assert small.scale == recipe.auto_scale(1000) == 16.0 and small.optimizer == "adam"
    assert small.schedule == "constant" and small.ema == 0.0 and small.batch_size == 64
    assert small.augment == ["translate", "zoom", "contrast"]
    pair = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=48, loss="supcon").validate(),
                          1000, 4000)
    assert pair.scale is None and pair.classes_per_batch == 32 and pair.batch_size == 128  # P×K = 32×4
    faces = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=112).validate(), 85_742, 5_800_000)
    assert (faces.loss, faces.backbone, faces.embedding_dim, faces.scale) == ("arcface", "iresnet50", 512, 64.0)
    assert (faces.optimizer, faces.learning_rate, faces.weight_decay) == ("sgd", 0.1, 5e-4)
    assert faces.augment == ["flip"] and faces.batch_size == 128 and faces.schedule == "cosine"
    tiny = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=32, loss="supcon").validate(), 5, 55)
    assert (tiny.classes_per_batch, tiny.batch_size) == (5, 20)  # every identity, K = 4 each
    tiny = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=32, loss="cosface").validate(), 5, 55)
    assert tiny.batch_size == 13  # a quarter of the images
    assert recipe.auto_scale(1000) == pytest.approx(max(16.0, 2 ** 0.5 * __import__("math").log(999)), abs=0.01)


def test_width_multiplies_the_channels_of_every_layer_of_the_backbone_and_none_keeps_its_own(tmp_path):
    def channels(width, backbone="small_vgg"):
        config = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=32, backbone=backbone,
                                            width=width).validate(), 10, 40)
        _, embedder, _ = recipe.build_model(config, 10)
        return conv_channels(embedder)

    assert channels(None) == [32, 32, 64, 64, 128, 128, 256, 256]  # small_vgg's own filters
    assert channels(1.5) == [48, 48, 96, 96, 192, 192, 384, 384]
    assert channels(None, "small_resnet")[0] == 32  # its own width, 0.5 of IR-ResNet's 64
    assert channels(1.0, "small_resnet")[0] == 64
    assert TrainConfig(data=str(tmp_path), width="none").validate().width is None


@pytest.mark.parametrize("name, value", [("width", 2.0), ("dropout", 0.3)])
def test_a_backbone_setting_with_a_backbone_function_is_refused_before_any_work(tmp_path, name, value):
    built = []
    config = TrainConfig(data=str(tmp_path / "faces"), image_size=32, run_dir=str(tmp_path / "run"),
                         **{name: value})
    with pytest.raises(ValueError, match=rf"^{name} applies to the registry's backbones; got {name}={value}"):
        recipe.train(config, backbone=lambda: built.append(1))
    with pytest.raises(ValueError, match=f"{name}={value} with a backbone function"):
        recipe.build_model(config, 10, backbone=lambda: built.append(1))
    assert built == [] and not (tmp_path / "run").exists()


def test_partial_fc_runs_get_sparse_updates_without_decaying_every_centre(tmp_path):
    import keras
    import numpy as np

    config = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=16, backbone="simple_cnn",
                                        embedding_dim=8, sample_rate=0.05, optimizer="sgd",
                                        batch_size=4).validate(), 100, 400)
    assert config.loss == "arcface" and config.weight_decay == 5e-4  # Partial FC: a margin loss
    model, _, loss = recipe.build_model(config, 100)
    assert loss is None  # PartialFC adds its own
    centres = model.get_layer("partial_fc").kernel
    optimizer = recipe.make_optimizer(config, 10, [centres])
    assert type(optimizer).__name__ == "LazySGD"
    model.compile(optimizer=optimizer)
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    labels = np.array([3, 3, 7, 7], "int32")
    before = keras.ops.convert_to_numpy(centres).copy()
    model.train_on_batch((images, labels))
    changed = np.flatnonzero(np.any(keras.ops.convert_to_numpy(centres) != before, axis=1))
    assert {3, 7} <= set(changed) and len(changed) <= 5  # the 5 sampled centres, no others


def test_a_config_file_may_spell_none_and_must_give_paths_as_strings(tmp_path):
    (tmp_path / "a.yaml").write_text("scale: none\nloss: arcface\n")
    assert TrainConfig.from_file(str(tmp_path / "a.yaml")).validate(complete=False).scale is None
    (tmp_path / "b.yaml").write_text("data: 3\n")
    with pytest.raises(ValueError, match=r"--data must be a path \(a string\); got 3"):
        TrainConfig.from_file(str(tmp_path / "b.yaml")).validate()


def test_dropout_sets_the_rate_before_the_embedding_and_none_keeps_the_backbones_own(tmp_path):
    import keras

    def rates(dropout, backbone):
        config = recipe.resolve(TrainConfig(data=str(tmp_path), image_size=32, backbone=backbone,
                                            dropout=dropout).validate(), 10, 40)
        _, embedder, _ = recipe.build_model(config, 10)
        found = []

        def walk(model):
            for layer in model.layers:
                if isinstance(layer, keras.layers.Dropout):
                    found.append(layer.rate)
                if hasattr(layer, "layers"):
                    walk(layer)

        walk(embedder)
        return found

    assert rates(None, "small_vgg") == [0.2]  # small_vgg's own
    assert rates(0.5, "small_vgg") == [0.5]
    assert rates(None, "small_resnet") == [0.2]
    assert rates(0.0, "small_resnet") == [0.0]
    assert TrainConfig(data=str(tmp_path), dropout="none").validate().dropout is None
    with pytest.raises(ValueError, match=r"^--dropout applies to the backbones with a dropout layer before "
                                         r"the embedding \(iresnet18, .*small_vgg\); got --backbone simple_cnn$"):
        TrainConfig(data=str(tmp_path), backbone="simple_cnn", dropout=0.3).validate().check_combination()
    assert TrainConfig(data=str(tmp_path), dropout=0.3).validate().check_combination() == []  # auto


def test_keep_best_warns_when_its_far_is_below_one_impostor_pair(tmp_path):
    faces = os.path.join(os.path.dirname(__file__), "data", "faces")

    def warnings(metric):
        config = TrainConfig(data=faces, image_size=32, backbone="simple_cnn", val_fraction=0.4,
                             keep_best=metric, run_dir=str(tmp_path / "run"))
        _, _, validation, found = recipe.prepare(config)
        impostors = int((~validation.is_same).sum())
        return impostors, [w for w in found if w.startswith("--keep-best")]

    impostors, found = warnings("val_tar@far=1e-3")
    assert impostors < 1000
    assert found == [f"--keep-best val_tar@far=1e-3: the validation pairs hold {impostors} impostor pairs, "
                     "fewer than the 1000 that FAR=1e-3 needs; the epochs are then ranked by the single "
                     "highest-scoring impostor pair (an AUC or EER, or more pairs, ranks them better)"]
    assert impostors >= 100
    assert warnings("val_tar@far=1e-2")[1] == []
    assert warnings("val_auc")[1] == []
