"""keras-facemargin: margin-softmax heads and metric-learning losses for face recognition."""

__version__ = "0.1.0"

import importlib  # noqa: E402

from keras_facemargin import heads, losses  # noqa: E402

__all__ = ["data", "heads", "losses", "__version__"]


def __getattr__(name):
    # `data` needs TensorFlow (tf.data); it is imported on first use so that the heads and
    # losses still import on a JAX or PyTorch install without TensorFlow.
    if name == "data":
        return importlib.import_module("keras_facemargin.data")
    raise AttributeError(f"module 'keras_facemargin' has no attribute {name!r}")
