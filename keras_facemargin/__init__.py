"""keras-facemargin: margin-softmax heads and metric-learning losses for face recognition."""

__version__ = "0.1.0"

from keras_facemargin import evaluation, heads, losses, models  # noqa: E402

__all__ = ["evaluation", "heads", "losses", "models", "__version__"]
