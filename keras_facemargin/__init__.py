"""keras-facemargin: margin-softmax heads and metric-learning losses for face recognition."""

__version__ = "0.1.0"

from keras_facemargin import heads, losses  # noqa: E402

__all__ = ["heads", "losses", "__version__"]
