"""Export of an embedding model as a self-contained SavedModel for serving."""

import os

import keras

from keras_facemargin._maths import norm
from keras_facemargin.heads.cosine_head import l2_normalize


def export_embedder(embedder, path, image_size=None, name="serving_default", quality=False):
    """Writes `embedder` as a SavedModel that turns uint8 images into unit-length embeddings.

    The signature takes `images`: uint8 `[N, H, W, 3]` at the training size (the model's own
    preprocessing, such as a `Rescaling` layer, is part of the exported graph) and returns
    L2-normalised float32 embeddings `[N, dim]`. A client needs TensorFlow only:

    ```python
    import tensorflow as tf
    serve = tf.saved_model.load("saved_models/demo").signatures["serving_default"]
    embeddings = serve(images=tf.constant(uint8_images))["embeddings"]
    ```

    Images of another size or dtype are refused by the signature itself. With `quality=True` the
    signature also returns `quality`, each image's feature norm `[N]`: a quality score after
    MagFace training (`keras_facemargin.losses.MagFaceLoss`), where the norm grows with how
    recognisable a face is.

    Args:
        embedder: a Keras model from float32 pixel values `[N, H, W, 3]` in [0, 255] to
            embeddings `[N, dim]` (as `build_recognizer` returns it).
        path: the SavedModel directory to write (created; an existing export is replaced).
        image_size: `(H, W)`; default: the model's input shape.
        name: the signature name.
        quality: also serve the feature norms as `quality`.

    Returns:
        `path`.
    """

    serve, spec = _serving_function(embedder, image_size, quality)
    archive = keras.export.ExportArchive()
    archive.track(embedder)
    archive.add_endpoint(
        name=name,
        fn=serve,
        input_signature=[spec],
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    archive.write_out(path, verbose=False)
    return path


def _serving_function(embedder, image_size, quality=False):
    """The uint8-images -> unit-embeddings function both exports serve, and its input spec."""
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"export_embedder needs the TensorFlow backend; got KERAS_BACKEND={keras.backend.backend()}"
        )
    input_shape = tuple(embedder.input_shape)
    if image_size is None:
        if len(input_shape) != 4 or None in input_shape[1:3]:
            raise ValueError(
                f"image_size must be given for a model without a fixed input size; the model's input "
                f"shape is {input_shape}"
            )
        image_size = input_shape[1:3]
    height, width = (int(v) for v in image_size)
    channels = input_shape[-1] if len(input_shape) == 4 and input_shape[-1] else 3

    def serve(images):
        tf.debugging.assert_equal(
            tf.shape(images)[1:3], tf.constant([height, width]),
            message=f"images must be uint8 [N, {height}, {width}, {channels}] (the training size)",
        )
        features = tf.cast(embedder(tf.cast(images, "float32"), training=False), "float32")
        outputs = {"embeddings": l2_normalize(features)}
        if quality:
            outputs["quality"] = norm(features, axis=-1)
        return outputs

    return serve, tf.TensorSpec((None, height, width, channels), tf.uint8, name="images")


def export_onnx(embedder, path, image_size=None, opset=17):
    """Writes the same serving function as `export_embedder` as an ONNX model (via tf2onnx).

    Input `images`: uint8 `[N, H, W, 3]`; output `embeddings`: unit-length float32 `[N, dim]`.
    Needs the optional extra: `pip install keras-facemargin[onnx]`.

    ```python
    import onnxruntime
    session = onnxruntime.InferenceSession("embedder.onnx")
    embeddings = session.run(["embeddings"], {"images": uint8_images})[0]
    ```
    """
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "export_onnx needs tf2onnx: pip install 'keras-facemargin[onnx]'"
        ) from error
    serve, spec = _serving_function(embedder, image_size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tf2onnx.convert.from_function(
        tf.function(serve, input_signature=[spec]), input_signature=[spec], opset=opset,
        output_path=path,
    )
    return path
