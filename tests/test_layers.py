"""Imports point one way (README, "Layout"): each module imports only from lower layers, or from
its own subpackage, and no module reads another module's private names."""

import ast
import os

import keras_facemargin

PACKAGE = os.path.dirname(keras_facemargin.__file__)

# Lowest first. A module may import from its own layer's shared modules (layer 0) and from any
# layer below its own; within layer 1 and 2 the order is the one written here.
LAYERS = [
    ("_backend", "_maths", "_checks", "_replicas", "_loss_state", "registry"),
    ("losses", "heads", "data", "optimizers", "distribute", "training"),
    ("models", "export", "evaluation"),
    ("config", "recipe", "experiments", "cli"),
]
RANK = {name: (layer, position) for layer, names in enumerate(LAYERS) for position, name in enumerate(names)}


def _unit(module):
    """`keras_facemargin.losses.pairwise` -> `losses`; the package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports():
    """`(importing unit, file, imported module, imported names)` of every in-package import."""
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
            unit = _unit(relative.removesuffix(".__init__"))
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keras_facemargin"):
                    found.append((unit, path, node.module, [a.name for a in node.names]))
                elif isinstance(node, ast.ImportFrom) and node.level:
                    raise AssertionError(f"{path}: a relative import; the package imports absolutely")
    return found


def _target(module, name):
    """The unit an `from module import name` reaches: `from keras_facemargin import losses` is
    `losses`, `from keras_facemargin.heads import CosineHead` is `heads`."""
    unit = _unit(module)
    return unit if unit is not None else name


def test_every_unit_has_a_layer():
    units = {_unit(".".join(["keras_facemargin", os.path.splitext(entry)[0]]))
             for entry in os.listdir(PACKAGE) if entry.endswith(".py") or os.path.isdir(os.path.join(PACKAGE, entry))}
    units -= {"__init__", "__pycache__", None}
    assert units == set(RANK), "give each module and subpackage a layer in LAYERS (and in the README)"


def test_imports_point_down():
    upward = []
    for unit, path, module, names in _imports():
        if unit is None:  # the package's __init__ exports everything
            continue
        for name in names:
            target = _target(module, name)
            if target == unit or target not in RANK:
                continue
            if RANK[target] >= RANK[unit]:
                upward.append(f"{os.path.relpath(path, PACKAGE)}: {unit} imports {target} ({module} {name})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_names():
    def is_module(module, name):  # `from keras_facemargin.models import _common` imports a module
        folder = os.path.join(os.path.dirname(PACKAGE), *module.split("."))
        return os.path.exists(os.path.join(folder, name + ".py"))

    private = [f"{os.path.relpath(path, PACKAGE)}: from {module} import {name}"
               for unit, path, module, names in _imports() for name in names
               if name.startswith("_") and not name.startswith("__") and not is_module(module, name)]
    assert not private, "\n".join(private)
