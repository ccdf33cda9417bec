"""Embedding images and scoring pairs, in bounded memory."""

import keras
import numpy as np

METRICS = ("cosine", "squared_euclidean")


def check_metric(metric):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")


def as_matrix(name, x):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [n, dim]; got shape {x.shape}")
    return x


def normalize_rows(x, epsilon=1e-12):
    """Rows scaled to unit L2 norm (zero rows stay zero).

    Args:
        x: `[n, dim]` array.
        epsilon: floor of the squared norms, so a zero row divides by sqrt(epsilon), not 0.

    Returns:
        float32 `[n, dim]`.
    """
    x = np.asarray(x, dtype=np.float32)
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True), epsilon))


def pair_scores(a, b, metric="cosine"):
    """Scores of aligned rows: cosine similarity, or ‖a‖² + ‖b‖² − 2a·b clamped at 0.

    Args:
        a, b: embeddings `[n, dim]` of the same shape; row i of `a` is scored against row i of `b`.
        metric: `"cosine"` (the rows are L2-normalised here) or `"squared_euclidean"`.

    Returns:
        float32 scores `[n]`; similarities are "higher is same", distances "lower is same".
    """
    check_metric(metric)
    a, b = as_matrix("a", a), as_matrix("b", b)
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must be embeddings of the same shape; got {a.shape} and {b.shape}"
        )
    if metric == "cosine":
        return _row_dot(normalize_rows(a), normalize_rows(b))
    a = a.astype(np.float32, copy=False)
    b = b.astype(np.float32, copy=False)
    return _squared_distance(_row_dot(a, a), _row_dot(b, b), _row_dot(a, b))


def _row_dot(a, b):
    return np.einsum("ij,ij->i", a, b)


def _squared_distance(norm_a, norm_b, dot):
    return np.maximum(norm_a + norm_b - 2.0 * dot, 0.0)


def indexed_pair_scores(embeddings, index_a, index_b, metric="cosine", chunk_size=65536):
    """Scores of pairs given as row indices into one embedding matrix, `chunk_size` at a time.

    This is how a million pairs over a few thousand images are scored without materialising
    two `[pairs, dim]` copies.

    Args:
        embeddings: `[n, dim]`, one row per image.
        index_a, index_b: int `[pairs]`: pair i is rows `index_a[i]` and `index_b[i]`.
        metric: `"cosine"` or `"squared_euclidean"`, as in `pair_scores`.
        chunk_size: pairs scored at a time (memory: two `[chunk_size, dim]` gathers).

    Returns:
        float32 scores `[pairs]`, as `pair_scores(embeddings[index_a], embeddings[index_b])`.
    """
    embeddings = as_matrix("embeddings", embeddings)
    index_a, index_b = np.asarray(index_a), np.asarray(index_b)
    if index_a.shape != index_b.shape or index_a.ndim != 1:
        raise ValueError(
            f"index_a and index_b must be 1-D of equal length; got {index_a.shape}, {index_b.shape}"
        )
    check_metric(metric)
    if metric == "cosine":
        embeddings = normalize_rows(embeddings)
    else:
        embeddings = embeddings.astype(np.float32, copy=False)
        norms = _row_dot(embeddings, embeddings)
    out = np.empty(len(index_a), dtype=np.float32)
    for start in range(0, len(index_a), chunk_size):
        ia, ib = index_a[start:start + chunk_size], index_b[start:start + chunk_size]
        dot = _row_dot(embeddings[ia], embeddings[ib])
        out[start:start + chunk_size] = (
            dot if metric == "cosine" else _squared_distance(norms[ia], norms[ib], dot)
        )
    return out


def embed(model, images, batch_size=256, flip=False, normalize=True, verbose="auto"):
    """Embeddings of `images` `[n, H, W, C]` (an array, or batches: `ImageBatches`, a dataset).

    With `flip=True` each embedding is the sum of the image's and its horizontal mirror's, the
    "flip test" of face verification; a batch is embedded, then its mirror, so a dataset is read
    and decoded once. Rows are L2-normalised unless `normalize=False`. A progress bar shows for
    long runs (`verbose`, as in `model.predict`). `model` is a Keras model or any function from an
    image batch to its embeddings `[batch, dim]` (an exported SavedModel's signature, wrapped),
    called batch by batch.

    Args:
        model: a Keras model, or a function from images `[batch, H, W, C]` to `[batch, dim]`
            (such as `load_embedder`'s).
        images: `[n, H, W, C]` array, or an iterable of image batches: `data.ImageBatches`, a
            `tf.data.Dataset` (of batches, or of tuples whose first element is the batch).
        batch_size: images per call (arrays only; batches are embedded as they come).
        flip: add the embedding of each image's horizontal mirror (the flip test).
        normalize: L2-normalise the rows (after the flip sum).
        verbose: as `model.predict`'s: a bar on a terminal ("auto", 1), one line at the end (2),
            none (0).

    Returns:
        `[n, dim]` float32 embeddings, one row per image in order.
    """
    call = _batch_function(model)
    if isinstance(images, np.ndarray):
        batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        total = -(-len(images) // batch_size)
    else:
        batches = (b[0] if isinstance(b, tuple) else b for b in images)
        total = (int(images.cardinality()) if hasattr(images, "cardinality")
                 else len(images) if hasattr(images, "__len__") else -1)
    progress = None
    if verbose:
        progress = keras.utils.Progbar(total if total >= 0 else None, unit_name="batch",
                                       verbose=1 if verbose == "auto" else verbose)
    out = []
    for batch in batches:
        rows = call(batch)
        if flip:
            rows = rows + call(batch[:, :, ::-1])
        out.append(rows)
        if progress is not None:
            progress.add(1)
    out = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return normalize_rows(out) if normalize else out


def _batch_function(model):
    """`fn(batch)` → float32 embeddings `[batch, dim]`, by the cheapest call that is correct."""
    if not isinstance(model, keras.Model):
        if not callable(model):
            raise ValueError(
                f"model must be a Keras model or a function of an image batch; got "
                f"{type(model).__name__}"
            )
        return lambda batch: np.asarray(model(batch), np.float32)
    if keras.backend.backend() != "tensorflow":
        return lambda batch: np.asarray(model.predict_on_batch(np.asarray(batch)), np.float32)
    import tensorflow as tf

    from keras_facemargin.distribute import is_multi_worker

    if tf.distribute.has_strategy() and is_multi_worker(tf.distribute.get_strategy()):
        # Keras's distributed predict would need every worker; each one embeds locally.
        return lambda batch: np.asarray(model(batch, training=False), np.float32)
    if model.distribute_strategy.num_replicas_in_sync > 1:
        # `predict_on_batch` would give every replica the whole batch; `predict` splits it.
        return lambda batch: np.asarray(model.predict(batch, verbose=0), np.float32)
    # `model.predict`'s own compiled step, without its set-up for each call (data adapter,
    # iterator, callbacks): 60-80 ms of 1.35 s on 55 faces (BENCHMARKS.md, "Evaluation, each
    # image once").
    return lambda batch: np.asarray(model.predict_on_batch(batch), np.float32)
