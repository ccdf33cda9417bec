"""Identification (1:N) and retrieval metrics: Precision@1, Recall@k, R-precision, MAP@R."""

import numpy as np

from keras_facemargin.evaluation.scores import as_matrix, check_metric, normalize_rows


def _similarities(query, reference, metric):
    if metric == "cosine":
        return query @ reference.T
    # Negated squared distance, so that larger is always closer.
    return 2.0 * (query @ reference.T) - np.sum(query**2, 1)[:, None] - np.sum(reference**2, 1)


def retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    ks=(1, 5, 10),
    metric="cosine",
    memory_mb=256,
):
    """Retrieval quality of `query` embeddings against a `reference` set (brute force, chunked).

    Without `reference`, every query is matched against all the others (self-matches excluded),
    the usual protocol on a single labelled set. For each query, R is the number of references
    with its label. Queries with R = 0 cannot be scored and are counted in
    `queries_without_match`. Memory: one `[chunk, references]` similarity block of about
    `memory_mb`.

    Args:
        query: query embeddings `[queries, dim]`.
        query_labels: their identities `[queries]`.
        reference: reference (gallery) embeddings `[references, dim]`; None: the queries
            themselves, each matched against all the others.
        reference_labels: their identities `[references]`; required with `reference`.
        ks: the k of `recall_at_k`, positive integers.
        metric: `"cosine"` (rows L2-normalised here) or `"squared_euclidean"`.
        memory_mb: the size of the similarity block computed at a time, in MiB.

    Returns:
        A dict: `precision_at_1`, `recall_at_k` ({k: fraction of queries with a correct reference
        among their k nearest}), `r_precision` (the fraction of correct references among the R
        nearest), `map_at_r` (mean average precision over those R, Musgrave et al. 2020), each
        averaged over the queries with R > 0; `num_queries` and `queries_without_match` (ints).

    Reference:
        Musgrave et al., "A Metric Learning Reality Check", ECCV 2020.
    """
    check_metric(metric)
    query = as_matrix("query", query).astype(np.float32)
    query_labels = np.asarray(query_labels)
    same_set = reference is None
    if same_set:
        reference, reference_labels = query, query_labels
    else:
        if reference_labels is None:
            raise ValueError("reference_labels must be given with reference; got None")
        reference = as_matrix("reference", reference).astype(np.float32)
        reference_labels = np.asarray(reference_labels)
    if query.shape[1] != reference.shape[1]:
        raise ValueError(
            f"query and reference embeddings must have the same width; got {query.shape[1]} "
            f"and {reference.shape[1]}"
        )
    for name, emb, labels in (("query", query, query_labels),
                              ("reference", reference, reference_labels)):
        if labels.shape != (len(emb),):
            raise ValueError(f"{name}_labels must have shape ({len(emb)},); got {labels.shape}")
    ks = tuple(sorted(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers; got {ks}")
    if metric == "cosine":
        query, reference = normalize_rows(query), normalize_rows(reference)

    classes, counts = np.unique(reference_labels, return_counts=True)
    count_of = dict(zip(classes.tolist(), counts.tolist(), strict=False))
    r = np.array([count_of.get(label, 0) for label in query_labels.tolist()], dtype=np.int64)
    if same_set:
        r -= 1
    depth = int(min(max(r.max(initial=0), ks[-1]), len(reference) - (1 if same_set else 0)))
    # float32 similarities, their negation for argpartition and its int64 indices: 16 bytes each.
    chunk = max(1, int(memory_mb * 2**20 / (16 * max(1, len(reference)))))

    hits_at_k = {k: 0 for k in ks}
    first_hits = r_precisions = average_precisions = scored = 0
    for start in range(0, len(query), chunk):
        stop = min(start + chunk, len(query))
        sims = _similarities(query[start:stop], reference, metric)
        if same_set:
            sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth] if depth < sims.shape[1] \
            else np.tile(np.arange(sims.shape[1]), (stop - start, 1))
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        ranked = np.take_along_axis(top, order, axis=1)
        relevant = reference_labels[ranked] == query_labels[start:stop, None]
        for i in range(stop - start):
            n_rel = r[start + i]
            if n_rel <= 0:
                continue
            scored += 1
            rel = relevant[i]
            first_hits += bool(rel[0])
            for k in ks:
                hits_at_k[k] += bool(rel[:k].any())
            top_r = rel[:n_rel]
            r_precisions += top_r.sum() / n_rel
            precision = np.cumsum(top_r) / np.arange(1, n_rel + 1)
            average_precisions += np.sum(precision * top_r) / n_rel
    denominator = max(scored, 1)
    return {
        "precision_at_1": first_hits / denominator,
        "recall_at_k": {k: hits_at_k[k] / denominator for k in ks},
        "r_precision": r_precisions / denominator,
        "map_at_r": average_precisions / denominator,
        "num_queries": int(len(query)),
        "queries_without_match": int(len(query) - scored),
    }
