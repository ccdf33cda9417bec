"""Data: image-folder datasets, P×K batches, mixup/cutmix/cutout, verification pair lists.

Everything here builds `tf.data` pipelines (TensorFlow is required, whatever the Keras backend):
an `ImageIndex` of paths and labels, then `pk_dataset` (P identities × K images per batch, for
pair losses) or `classification_dataset` (shuffled batches, optionally mixed by a `BatchMix`, for
margin-softmax losses), and `pair_dataset` over `VerificationPairs` for evaluation;
`ImageBatches` reads a list of images once each, in NumPy batches, for embedding. Files that do
not decode are replaced by blank images and reported through a `CorruptFileLog`. An index may read
an InsightFace/MXNet RecordIO set (`ImageIndex.from_recordio`, `pack_recordio` writes one) and
may carry five face landmarks per image, aligned to ArcFace's template by `align_face`.
"""

from keras_facemargin.data.alignment import (
    ARCFACE_TEMPLATE,
    align_face,
    alignment_matrix,
    arcface_template,
)
from keras_facemargin.data.batch_mix import BatchMix
from keras_facemargin.data.classification import classification_dataset
from keras_facemargin.data.decoding import (
    Augmentation,
    CorruptFile,
    CorruptFileLog,
    ImageBatches,
    find_corrupt_files,
    image_dataset,
)
from keras_facemargin.data.identity_groups import read_identity_groups, write_identity_groups
from keras_facemargin.data.image_index import IMAGE_EXTENSIONS, ImageIndex
from keras_facemargin.data.pk_sampler import PKSampler, pk_dataset
from keras_facemargin.data.recordio import pack_recordio, read_property
from keras_facemargin.data.verification_pairs import (
    VerificationPairs,
    pair_arrays,
    pair_dataset,
    read_insightface_bin,
    read_lfw_pairs,
    read_pair_list,
    read_pairs,
)

__all__ = [
    "ARCFACE_TEMPLATE",
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "BatchMix",
    "CorruptFile",
    "CorruptFileLog",
    "ImageBatches",
    "ImageIndex",
    "PKSampler",
    "VerificationPairs",
    "align_face",
    "alignment_matrix",
    "arcface_template",
    "classification_dataset",
    "find_corrupt_files",
    "image_dataset",
    "pack_recordio",
    "pair_arrays",
    "pair_dataset",
    "pk_dataset",
    "read_identity_groups",
    "read_insightface_bin",
    "read_lfw_pairs",
    "read_pair_list",
    "read_pairs",
    "read_property",
    "write_identity_groups",
]
