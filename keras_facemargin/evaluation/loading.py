"""`load_embedder`: an exported SavedModel or a `.keras` model as one embedding function."""

import os


class SavedModelEmbedder:
    """The `serving_default` signature of an exported embedder, fed float [0, 255] batches.

    Attributes:
        image_size: `(height, width)` the export takes.
    """

    def __init__(self, path):
        import tensorflow as tf

        try:
            self._serve = tf.saved_model.load(path).signatures["serving_default"]
        except Exception as error:  # a garbage saved_model.pb raises from deep inside TensorFlow
            raise ValueError(f"model {path!r} is not a valid SavedModel ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:200]})") from None
        spec = self._serve.structured_input_signature[1]["images"]
        self.image_size = tuple(spec.shape[1:3])

    def __call__(self, images):
        """Unit embeddings `[N, dim]` of float32 images `[N, H, W, 3]` in [0, 255] (rounded to
        the uint8 the export takes)."""
        import tensorflow as tf

        images = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        return self._serve(images=images)["embeddings"].numpy()


class KerasEmbedder:
    """The embedding part of a saved Keras model (`evaluation.embedding_model`).

    Attributes:
        model: the whole loaded model.
        image_size: `(height, width)` of its input.
    """

    def __init__(self, path):
        self.model = load_keras_model(path)
        from keras_facemargin.evaluation.callback import embedding_model

        self._model = embedding_model(self.model)
        self.image_size = tuple(self._model.input_shape[1:3])

    def __call__(self, images):
        return self._model.predict_on_batch(images)


def load_keras_model(path):
    """`keras.models.load_model(path, compile=False)` with every keras_facemargin class known.

    A file that is not a Keras model is a `ValueError` that names it and quotes Keras's reason.

    Args:
        path: a `.keras` file.

    Returns:
        The `keras.Model`, not compiled (evaluation needs no loss or optimizer).
    """
    import keras

    import keras_facemargin

    keras_facemargin.load_all()
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:
        first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ValueError(f"model {path!r} is not a valid Keras file ({first})") from None


def load_embedder(path):
    """An exported SavedModel folder or a `.keras` file as one embedding function.

    Args:
        path: a SavedModel written by `export.export_embedder` (or `facemargin train`/`export`),
            or a `.keras` file of a training or embedding model (its head is cut off).

    Returns:
        A function from float32 images `[N, H, W, 3]` in [0, 255] to embeddings `[N, dim]`, with
        an `image_size` attribute; `evaluation.embed` and `evaluate_pair_sets` take it.

    Example:

    ```python
    embedder = keras_facemargin.evaluation.load_embedder("runs/faces/saved_model")
    result = evaluate_pair_sets(embedder, read_pair_sets(["lfw.bin"]), flip=True)
    ```
    """
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        return SavedModelEmbedder(path)
    if path.endswith(".keras") and os.path.isfile(path):
        return KerasEmbedder(path)
    reason = "no such file or folder" if not os.path.exists(path) else (
        "a folder without saved_model.pb" if os.path.isdir(path) else "not a .keras file")
    raise ValueError(f"model must be a SavedModel folder (with saved_model.pb) or a .keras file; got "
                     f"{path!r} ({reason})")
