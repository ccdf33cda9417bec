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

    Every input is checked before any model op runs: a tensor that is not uint8
    `[N, H, W, C]` at the training size (a single image without its batch axis, grey images, the
    wrong size) raises `InvalidArgumentError` naming the expected and the received shape; an
    empty batch `[0, H, W, C]` returns `[0, dim]`.
    With `quality=True` the signature also returns `quality`, each image's feature norm `[N]`:
    a quality score after MagFace training (`keras_facemargin.losses.MagFaceLoss`), where the
    norm grows with how recognisable a face is.

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

    serve, spec = _serving_function(embedder, image_size, quality=quality)
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


def _serving_function(embedder, image_size, guard=True, quality=False):
    """The uint8-images -> unit-embeddings function both exports serve, and its input spec.

    `guard` adds the shape check and the empty-batch branch (ONNX runtimes check the declared
    input shape themselves); `quality` adds the feature norm as `quality`."""
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

    dim = int(embedder.output_shape[-1])
    expected = [height, width, channels]

    def embed(images):
        features = tf.cast(embedder(tf.cast(images, "float32"), training=False), "float32")
        outputs = {"embeddings": l2_normalize(features)}
        if quality:
            outputs["quality"] = norm(features, axis=-1)
        return outputs

    def serve(images):
        if not guard:
            return embed(images)
        # A loaded signature does not check its inputs' shape, and the model's ops can abort the
        # process on a wrong one (oneDNN): the check is a data dependency of everything after it.
        shape = tf.shape(images)
        padded = tf.concat([shape, tf.fill([4], -1)], axis=0)[:4]
        ok = tf.logical_and(tf.equal(tf.size(shape), 4), tf.reduce_all(tf.equal(padded[1:], expected)))
        check = tf.debugging.Assert(
            ok, [f"images must be uint8 [N, {height}, {width}, {channels}] (a batch at the training "
                 "size); got shape", shape], summarize=8)
        with tf.control_dependencies([check]):
            images = tf.ensure_shape(tf.identity(images), [None, height, width, channels])
        empty = {"embeddings": tf.zeros([0, dim], tf.float32)}
        if quality:
            empty["quality"] = tf.zeros([0], tf.float32)
        outputs = tf.cond(tf.shape(images)[0] > 0, lambda: embed(images), lambda: empty)
        outputs["embeddings"] = tf.ensure_shape(outputs["embeddings"], [None, dim])
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

    Unlike the SavedModel, the graph has no shape check of its own: ONNX runtimes check the
    declared input shape themselves.

    Args:
        embedder: as for `export_embedder`.
        path: the `.onnx` file to write (its folder is created).
        image_size: `(H, W)`; default: the model's input shape.
        opset: the ONNX opset version tf2onnx targets.

    Returns:
        `path`.
    """
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "export_onnx needs tf2onnx: pip install 'keras-facemargin[onnx]'"
        ) from error
    serve, spec = _serving_function(embedder, image_size, guard=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tf2onnx.convert.from_function(
        tf.function(serve, input_signature=[spec]), input_signature=[spec], opset=opset,
        output_path=path,
    )
    return path


def export_litert(embedder, path, image_size=None):
    """Writes the same serving function as `export_embedder` as a LiteRT (TensorFlow Lite)
    flatbuffer, for phones and edge devices.

    Input `images`: uint8 `[N, H, W, 3]`; output: unit-length float32 embeddings `[N, dim]`.
    Run it with `tf.lite.Interpreter` (or the `ai-edge-litert` runtime):

    ```python
    interpreter = tf.lite.Interpreter("embedder.tflite")
    interpreter.resize_tensor_input(0, uint8_images.shape); interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], uint8_images)
    interpreter.invoke()
    embeddings = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    ```

    Args:
        embedder: as for `export_embedder`.
        path: the `.tflite` file to write.
        image_size: `(H, W)`; default: the model's input shape.

    Returns:
        `path`.
    """
    import tempfile

    import tensorflow as tf

    serve, spec = _serving_function(embedder, image_size, guard=False)
    with tempfile.TemporaryDirectory() as folder:  # the converter reads a SavedModel
        archive = keras.export.ExportArchive()
        archive.track(embedder)
        archive.add_endpoint(name="serving_default", fn=serve, input_signature=[spec])
        archive.write_out(folder, verbose=False)
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(folder).convert()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, path)
    return path
