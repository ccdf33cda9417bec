"""Argument checks in one vocabulary and one message form, in plain Python (no Keras import).

Every check takes the argument's name and value and returns the value in its canonical type,
or raises `ValueError("{name} must be {what is expected}; got {value!r}")`. A string where a
number is expected is refused, not converted: a configuration file that says `epochs: "1"` is
a mistake the user should hear about.
"""

import math
import numbers
import os
import tempfile


def _got(value):
    text = repr(value)
    if isinstance(value, str):
        text += " (a string)"
    return text


def fail(name, expected, value):
    """Raises the house `ValueError`: `{name} must be {expected}; got {value!r}`."""
    raise ValueError(f"{name} must be {expected}; got {_got(value)}")


def is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name, value, minimum=None, maximum=None):
    """An integer in [minimum, maximum] (either bound may be None)."""
    if not is_integer(value) or (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            expected = f"an integer in [{minimum}, {maximum}]"
        elif minimum is not None:
            expected = f"an integer >= {minimum}"
        elif maximum is not None:
            expected = f"an integer <= {maximum}"
        else:
            expected = "an integer"
        fail(name, expected, value)
    return int(value)


def check_number(name, value, low=None, high=None, low_open=False, high_open=False, unit=""):
    """A finite number in the interval from `low` to `high` (open ends where asked)."""
    ok = is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        low, high = (None if b is None else f"{b:g}" for b in (low, high))
        if low is not None and high is not None:
            expected = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            expected = f"a finite number {'>' if low_open else '>='} {low}"
        elif high is not None:
            expected = f"a finite number {'<' if high_open else '<='} {high}"
        else:
            expected = "a finite number"
        fail(name, expected + unit, value)
    return float(value)


def check_choice(name, value, choices):
    """One of `choices` (compared as given)."""
    if value not in choices:
        fail(name, "one of " + ", ".join(map(str, choices)), value)
    return value


def check_bool(name, value):
    if not isinstance(value, bool):
        fail(name, "true or false", value)
    return value


def check_str(name, value, allow_empty=False):
    if not isinstance(value, str) or (not allow_empty and not value):
        fail(name, "a non-empty string" if not allow_empty else "a string", value)
    return value


def check_existing_file(name, path):
    """A path to an existing file."""
    check_str(name, path)
    if not os.path.isfile(path):
        reason = "a folder" if os.path.isdir(path) else "no such file"
        raise ValueError(f"{name} must be an existing file; got {path!r} ({reason})")
    return path


def check_existing_dir(name, path):
    """A path to an existing folder."""
    check_str(name, path)
    if not os.path.isdir(path):
        reason = "a file" if os.path.exists(path) else "no such folder"
        raise ValueError(f"{name} must be an existing folder; got {path!r} ({reason})")
    return path


def check_writable_dir(name, path):
    """A folder that exists and can be written, or can be created: checked before any work.

    Nothing is left behind: a temporary file is created and removed in the nearest existing
    ancestor, which must be a folder.
    """
    check_str(name, path)
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ValueError(f"{name} must be a folder that can be written; got {path!r} "
                         f"({probe!r} is a file)")
    try:  # a real probe: permission bits say nothing to root, nor of a read-only mount
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        where = "it" if probe == os.path.abspath(path) else repr(probe)
        raise ValueError(f"{name} must be a folder that can be written; got {path!r} ({where} "
                         f"cannot be written: {error.strerror})") from None
    return path
