"""Verification (1:1) and identification (1:N) evaluation of embedding models: pair sets (one or
several, each unique image embedded once), IJB-B/C template verification, retrieval metrics."""

from keras_facemargin.evaluation.callback import VerificationCallback, embedding_model
from keras_facemargin.evaluation.duplicates import identity_centres, near_duplicate_identities
from keras_facemargin.evaluation.identification import retrieval_metrics
from keras_facemargin.evaluation.ijb import (
    IJBProtocol,
    IJBReport,
    ijb_report,
    ijb_verification,
    plot_ijb_roc,
    read_ijb,
    score_template_pairs,
    template_features,
)
from keras_facemargin.evaluation.loading import load_embedder, load_keras_model
from keras_facemargin.evaluation.pair_sets import (
    PairSets,
    PairSetsReport,
    evaluate_pair_sets,
    read_pair_sets,
)
from keras_facemargin.evaluation.plots import (
    plot_det,
    plot_roc,
    plot_roc_curves,
    plot_score_histogram,
)
from keras_facemargin.evaluation.projector import EmbeddingProjector
from keras_facemargin.evaluation.scores import (
    embed,
    indexed_pair_scores,
    normalize_rows,
    pair_scores,
)
from keras_facemargin.evaluation.verification import (
    VerificationReport,
    best_accuracy,
    eer,
    kfold_accuracy,
    kfold_accuracy_insightface,
    roc,
    tar_at_far,
    verification_report,
)

__all__ = [
    "EmbeddingProjector",
    "IJBProtocol",
    "IJBReport",
    "PairSets",
    "PairSetsReport",
    "VerificationCallback",
    "VerificationReport",
    "best_accuracy",
    "eer",
    "embed",
    "embedding_model",
    "evaluate_pair_sets",
    "identity_centres",
    "ijb_report",
    "ijb_verification",
    "indexed_pair_scores",
    "kfold_accuracy",
    "load_embedder",
    "load_keras_model",
    "near_duplicate_identities",
    "kfold_accuracy_insightface",
    "normalize_rows",
    "pair_scores",
    "plot_det",
    "plot_ijb_roc",
    "plot_roc",
    "plot_roc_curves",
    "plot_score_histogram",
    "read_ijb",
    "read_pair_sets",
    "retrieval_metrics",
    "roc",
    "score_template_pairs",
    "tar_at_far",
    "template_features",
    "verification_report",
]
