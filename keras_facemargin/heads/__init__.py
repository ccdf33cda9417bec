"""Classification heads for margin-softmax training."""

from keras_facemargin.heads.cosine_head import CosineHead, l2_normalize

__all__ = ["CosineHead", "l2_normalize"]
