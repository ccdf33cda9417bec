"""The one registry: names, the naming rule, and that the command line offers what it holds."""

import pytest

import keras_facemargin as kf
from keras_facemargin import config as config_lib
from keras_facemargin import registry


@pytest.mark.multibackend
def test_every_kind_is_filled_where_its_members_are_defined():
    assert "arcface" in registry.names("loss") and "supcon" in registry.names("loss")
    assert registry.names("head") == ["cosine", "partial_fc"]
    assert registry.get_class("head", "cosine") is kf.heads.CosineHead
    assert registry.get_class("backbone", "IResNet50") is kf.models.iresnet50
    assert kf.losses.names() == registry.names("loss")
    assert kf.models.backbone_names() == registry.names("backbone")
    for kind in registry.KINDS:
        for name in registry.names(kind):
            assert registry.get_class(kind, name).__module__.startswith("keras_facemargin."), name


@pytest.mark.multibackend
def test_names_follow_one_rule_and_are_unique():
    for bad in ("ArcFace", "arc-face", "_x", "x__y", "2x", ""):
        with pytest.raises(ValueError, match="lower-case words joined by '_'"):
            registry.register("loss", bad)
    with pytest.raises(ValueError, match="kind must be one of loss, head, backbone; got 'metric'"):
        registry.names("metric")
    with pytest.raises(ValueError, match="the loss name 'arcface' is taken by ArcFaceLoss"):
        registry.register("loss", "arcface")(type("Other", (), {}))
    with pytest.raises(ValueError, match="Unknown loss 'arcfase'; known names: adacos, adaface"):
        registry.get("loss", "arcfase")
    with pytest.raises(ValueError, match=r"cosface \(CosFaceLoss\) takes no argument 'gamma'"):
        registry.get("loss", "cosface", gamma=2.0)


@pytest.mark.multibackend
def test_the_command_line_lists_are_the_registry():
    # config.py lists the names in plain Python (no Keras import before --help); they must agree.
    assert sorted(config_lib.LOSSES) == sorted(["softmax", *registry.names("loss")])
    assert sorted(config_lib.MARGIN_LOSSES) == kf.losses.names(kind="margin_softmax")
    assert sorted(config_lib.PAIR_LOSSES) == kf.losses.names(kind="pair")
    assert sorted(config_lib.BACKBONES) == registry.names("backbone")
