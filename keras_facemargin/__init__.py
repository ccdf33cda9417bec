"""keras-facemargin: margin-softmax heads and metric-learning losses for face recognition."""

__version__ = "0.1.0"

import importlib  # noqa: E402

from keras_facemargin import evaluation, heads, losses, models, optimizers  # noqa: E402

__all__ = ["data", "distribute", "evaluation", "experiments", "heads", "losses", "models", "optimizers",
           "__version__"]

_LAZY = ("data", "distribute", "experiments")


def __getattr__(name):
    # `data`, `distribute` and `experiments` need TensorFlow; they are imported on first use, so
    # that the heads, losses and backbones still import on a JAX or PyTorch install without it.
    if name in _LAZY:
        return importlib.import_module(f"keras_facemargin.{name}")
    raise AttributeError(f"module 'keras_facemargin' has no attribute {name!r}")
