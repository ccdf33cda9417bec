"""Classification heads for margin-softmax training."""

from keras_facemargin._loss_state import LossState
from keras_facemargin.heads.cosine_head import CosineHead, cosine_to_columns, l2_normalize
from keras_facemargin.heads.partial_fc import PartialFC
from keras_facemargin.heads.sub_centers import (
    SubCenterReport,
    drop_non_dominant_sub_centers,
    sub_center_report,
)

__all__ = [
    "CosineHead",
    "LossState",
    "PartialFC",
    "SubCenterReport",
    "cosine_to_columns",
    "drop_non_dominant_sub_centers",
    "l2_normalize",
    "sub_center_report",
]
