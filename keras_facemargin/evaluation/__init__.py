"""Verification (1:1) and identification (1:N) evaluation of embedding models."""

from keras_facemargin.evaluation.callback import VerificationCallback, embedding_model
from keras_facemargin.evaluation.identification import retrieval_metrics
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
    "PairSets",
    "PairSetsReport",
    "VerificationCallback",
    "VerificationReport",
    "best_accuracy",
    "eer",
    "embed",
    "embedding_model",
    "evaluate_pair_sets",
    "indexed_pair_scores",
    "kfold_accuracy",
    "kfold_accuracy_insightface",
    "normalize_rows",
    "pair_scores",
    "plot_det",
    "plot_roc",
    "plot_roc_curves",
    "plot_score_histogram",
    "read_pair_sets",
    "retrieval_metrics",
    "roc",
    "tar_at_far",
    "verification_report",
]
