"""keras-facemargin: margin-softmax heads and metric-learning losses for face recognition."""

__version__ = "0.1.0"

import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

__all__ = ["config", "data", "distribute", "evaluation", "experiments", "export", "heads", "losses",
           "models", "optimizers", "recipe", "training", "__version__", "load_all"]

# The subpackages that define Keras objects: importing them registers every class with Keras,
# so `keras.models.load_model` finds our layers and losses after `import keras_facemargin`.
_KERAS_OBJECTS = ("heads", "losses", "models", "optimizers", "evaluation")


def load_all():
    """Imports every subpackage that defines Keras objects (done by `import keras_facemargin`,
    except in the `facemargin` command, which loads TensorFlow only when a command needs it)."""
    try:
        for name in _KERAS_OBJECTS:
            importlib.import_module(f"keras_facemargin.{name}")
    except ModuleNotFoundError as error:
        if error.name in ("tensorflow", "jax", "torch"):
            raise ImportError(
                f"keras_facemargin needs a Keras backend, and {error.name!r} (KERAS_BACKEND="
                f"{os.environ.get('KERAS_BACKEND', 'tensorflow')}) is not installed: pip install "
                "'keras-facemargin[cpu]' (TensorFlow without CUDA) or '[gpu]', or set KERAS_BACKEND "
                "to an installed backend"
            ) from error
        raise


def __getattr__(name):
    # Everything else is imported on first use: `data`, `distribute`, `recipe` need TensorFlow,
    # and the heads, losses and backbones must import on a JAX or PyTorch install without it.
    if name in __all__ and not name.startswith("_"):
        return importlib.import_module(f"keras_facemargin.{name}")
    raise AttributeError(f"module 'keras_facemargin' has no attribute {name!r}")


# `facemargin --help` and argument errors answer in well under a second: the command (whose
# script is named `facemargin`) defers TensorFlow's import until a command runs.
if os.path.basename(sys.argv[0] if sys.argv else "") not in ("facemargin", "facemargin.exe"):
    load_all()
