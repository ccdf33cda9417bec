"""Every constructor argument of every registered loss and every head is type-checked: a value of
the wrong type raises a ValueError that names the argument and shows the value (issue 13)."""

import inspect
import re

import numpy as np
import pytest

import keras_facemargin as kf

pytestmark = pytest.mark.multibackend

# Arguments whose checks are Keras's own (it names them itself) or that take any string.
_KERAS_ARGUMENTS = {"name", "reduction", "dtype"}


def _arguments(name):
    return sorted(set(kf.losses.get(name).get_config()) - _KERAS_ARGUMENTS)


LOSS_ARGUMENTS = [(name, argument) for name in kf.losses.names() for argument in _arguments(name)]


@pytest.mark.parametrize("name, argument", LOSS_ARGUMENTS)
@pytest.mark.parametrize("value", ["4", [1.0], None, np.nan], ids=["str", "list", "None", "nan"])
def test_every_loss_argument_refuses_a_wrong_type(name, argument, value):
    resolved = kf.losses.get(name).get_config()[argument]
    signature = inspect.signature(type(kf.losses.get(name)).__init__).parameters
    if value is None and argument in signature and signature[argument].default is None:
        pytest.skip("None is this argument's documented default")
    if value is np.nan and not isinstance(resolved, float):
        pytest.skip("NaN is a float")
    with pytest.raises(ValueError, match=rf"^{argument} must .*; got {re.escape(repr(value))}"):
        kf.losses.get(name, **{argument: value})


def test_sphereface_margin_string_names_the_argument():
    with pytest.raises(ValueError, match=r"margin must be a positive integer \(SphereFace's m\); got '4'"):
        kf.losses.SphereFaceLoss(margin="4")


@pytest.mark.parametrize("value", [1, 0.0, "yes", None])
def test_boolean_flags_must_be_booleans(value):
    with pytest.raises(ValueError, match=rf"check_inputs must be True or False; got {value!r}"):
        kf.losses.ArcFaceLoss(check_inputs=value)


HEAD_ARGUMENTS = {
    "epsilon": ["x", -1.0, None],
    "sub_centers": ["3", 0, 1.5],
    "loss": ["not_a_loss", 3.5, "triplet"],
    "kernel_initializer": ["not_an_initializer", 3.5],
    "kernel_regularizer": ["not_a_regularizer", 3.5],
}


@pytest.mark.parametrize("head", [kf.heads.CosineHead, kf.heads.PartialFC])
@pytest.mark.parametrize("argument, value", [(a, v) for a, vs in HEAD_ARGUMENTS.items() for v in vs])
def test_every_head_argument_refuses_a_wrong_value(head, argument, value):
    with pytest.raises(ValueError, match=rf"^{argument} must .*; got {re.escape(repr(value))}"):
        head(10, **{argument: value})


def test_keras_arguments_are_still_checked_by_keras():
    with pytest.raises(ValueError, match="reduction"):
        kf.losses.ArcFaceLoss(reduction="average")


@pytest.mark.parametrize("name, argument", [("magface", "margin"), ("triplet", "scale"), ("arcface", "gamma")])
def test_get_names_an_argument_the_loss_does_not_take(name, argument):
    """The command line passes --margin/--scale through get(); a loss without them says so."""
    with pytest.raises(ValueError, match=rf"^{name} \(\w+\) takes no argument '{argument}'"):
        kf.losses.get(name, **{argument: 0.5})
