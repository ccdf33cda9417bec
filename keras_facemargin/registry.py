"""The registry: every loss, head and backbone by name, filled where each one is defined.

    @registry.register("loss", "arcface")
    class ArcFaceLoss(MarginSoftmaxLoss): ...

    registry.names("loss")                       # ['adacos', 'adaface', 'arcface', ...]
    registry.get("loss", "cosface", margin=0.35)  # CosFaceLoss(margin=0.35)
    registry.get_class("backbone", "iresnet50")   # the builder, not built

One naming rule: lower-case words joined by `_` (`combined_margin`, `small_vgg`); a name is
looked up ignoring case, `-` and `_` (`"IResNet-50"` finds `iresnet50`). Plain Python: a kind's
subpackage is imported (and so registers its members) the first time the kind is asked for.
"""

import importlib
import re

KINDS = ("loss", "head", "backbone")
_PACKAGES = {"loss": "keras_facemargin.losses", "head": "keras_facemargin.heads",
             "backbone": "keras_facemargin.models"}
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_ENTRIES = {kind: {} for kind in KINDS}


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")


def register(kind, name):
    """A decorator that registers a class (losses, heads) or a builder function (backbones).

    Args:
        kind: `"loss"`, `"head"` or `"backbone"`.
        name: lower-case words joined by `_`, unique within the kind.

    Returns:
        The decorator, which returns its argument unchanged.
    """
    _check_kind(kind)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be lower-case words joined by '_' (such as 'combined_margin'); "
                         f"got {name!r}")

    def add(obj):
        existing = _ENTRIES[kind].get(name)
        if existing is not None and existing is not obj and (
                f"{existing.__module__}.{existing.__qualname__}" != f"{obj.__module__}.{obj.__qualname__}"):
            raise ValueError(f"the {kind} name {name!r} is taken by {existing.__qualname__}; got "
                             f"{obj.__qualname__}")
        _ENTRIES[kind][name] = obj
        return obj

    return add


def _entries(kind):
    _check_kind(kind)
    importlib.import_module(_PACKAGES[kind])
    return _ENTRIES[kind]


def names(kind):
    """The registered names of a kind, sorted.

    Args:
        kind: `"loss"`, `"head"` or `"backbone"`.

    Returns:
        A sorted list of names (importing the kind's subpackage first, which registers them).
    """
    return sorted(_entries(kind))


def get_class(kind, name):
    """The class (or builder) registered as `name`, not built.

    Args:
        kind: `"loss"`, `"head"` or `"backbone"`.
        name: the registered name; case, `-` and `_` do not matter (`"IResNet-50"`).

    Returns:
        The class (losses, heads) or builder function (backbones); an unknown name is a
        `ValueError` that lists the known ones.
    """
    entries = _entries(kind)
    if isinstance(name, str):
        matches = [entry for key, entry in entries.items() if _squash(key) == _squash(name)]
        if matches:
            return matches[0]
    raise ValueError(f"Unknown {kind} {name!r}; known names: {', '.join(sorted(entries))}")


def _squash(name):
    return name.lower().replace("-", "").replace("_", "")


def get(kind, name, /, **kwargs):
    """A new member built from its registered name: `get_class(kind, name)(**kwargs)`.

    Args:
        kind: `"loss"`, `"head"` or `"backbone"`.
        name: the registered name, as for `get_class`.
        **kwargs: the constructor's (or builder's) arguments; one it does not take is a
            `ValueError` that names it.

    Returns:
        The built loss, head or backbone model.
    """
    cls = get_class(kind, name)
    try:
        return cls(**kwargs)
    except TypeError as error:
        if "unexpected keyword argument" not in str(error):
            raise
        unknown = str(error).split("argument", 1)[1].strip()
        raise ValueError(f"{name} ({cls.__name__}) takes no argument {unknown}; got {kwargs}") from None
