"""Classification heads for margin-softmax training."""

from keras_facemargin.heads.cosine_head import CosineHead, cosine_to_columns, l2_normalize
from keras_facemargin.heads.partial_fc import PartialFC

__all__ = ["CosineHead", "PartialFC", "cosine_to_columns", "l2_normalize"]
