import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_facemargin as kf
from keras_facemargin.export import export_embedder, export_onnx
from keras_facemargin.models.recognizer import build_recognizer

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel export")


def small_backbone(size=24):
    return keras.Sequential([
        keras.Input((size, size, 3)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(6),
    ])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 24, 24, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=40)
    model, embedder = build_recognizer(small_backbone(), num_classes=4)
    model.compile(optimizer="adam", loss=kf.losses.ArcFaceLoss(scale=16.0))
    model.fit(images.astype("float32"), labels, epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("export") / "embedder")
    export_embedder(embedder, path)
    return embedder, images, path


CLIENT = textwrap.dedent("""
    import sys
    sys.modules["keras_facemargin"] = None  # the client must not need the package
    import numpy as np, tensorflow as tf
    images = np.load(sys.argv[2])
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    np.save(sys.argv[3], serve(images=tf.constant(images))["embeddings"].numpy())
""")


def test_saved_model_embeds_like_keras_in_a_fresh_process(trained, tmp_path):
    embedder, images, path = trained
    np.save(tmp_path / "images.npy", images)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, "-c", CLIENT, path, str(tmp_path / "images.npy"), str(tmp_path / "out.npy")],
        check=True, env=env, capture_output=True, timeout=300,
    )
    served = np.load(tmp_path / "out.npy")
    expected = np.asarray(embedder.predict(images.astype("float32"), verbose=0), dtype=np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert served.dtype == np.float32 and served.shape == (40, 6)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_signature_refuses_other_shapes_and_dtypes(trained):
    import tensorflow as tf

    _, _, path = trained
    serve = tf.saved_model.load(path).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be uint8 \[N, 24, 24, 3\]"):
        serve(images=tf.zeros((2, 32, 32, 3), tf.uint8))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(images=tf.zeros((2, 24, 24, 3), tf.float32))


def test_recognizer_shares_weights_and_checks_backbone():
    model, embedder = build_recognizer(small_backbone(), num_classes=3)
    assert model.output_shape == (None, 3) and embedder.output_shape == (None, 6)
    shared = {id(v) for v in embedder.weights}
    assert shared <= {id(v) for v in model.weights}
    same, same_again = build_recognizer(small_backbone())
    assert same is same_again
    with pytest.raises(ValueError, match="backbone must be a keras.Model; got str"):
        build_recognizer("iresnet18", 3)


def test_onnx_export_matches_keras_in_onnxruntime(trained, tmp_path):
    pytest.importorskip("tf2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    embedder, images, _ = trained
    path = export_onnx(embedder, str(tmp_path / "embedder.onnx"))
    session = onnxruntime.InferenceSession(path)
    served = session.run(["embeddings"], {"images": images})[0]
    expected = np.asarray(embedder.predict(images.astype("float32"), verbose=0), dtype=np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(served, expected, atol=1e-5)


WRONG_INPUTS = textwrap.dedent("""
    import sys
    sys.modules["keras_facemargin"] = None
    import numpy as np, tensorflow as tf
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    cases = {"one image": np.zeros((24, 24, 3), np.uint8), "grey": np.zeros((2, 24, 24, 1), np.uint8),
             "size": np.zeros((2, 16, 16, 3), np.uint8), "rank 5": np.zeros((1, 2, 24, 24, 3), np.uint8),
             "float": np.zeros((2, 24, 24, 3), np.float32)}
    for name, images in cases.items():
        try:
            serve(images=tf.constant(images))
            print(name, "ACCEPTED")
        except Exception as error:
            print(name, "|", " ".join(getattr(error, "message", str(error)).split()))
    print("empty |", tuple(serve(images=tf.zeros((0, 24, 24, 3), tf.uint8))["embeddings"].shape))
""")


def test_wrong_inputs_raise_before_any_model_op_and_an_empty_batch_is_empty(trained, tmp_path):
    # In a subprocess: before the fix, a single [H, W, 3] image aborted the process (oneDNN).
    _, _, path = trained
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", WRONG_INPUTS, path], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(" | ", 1) for line in done.stdout.strip().splitlines())
    expected = "images must be uint8 [N, 24, 24, 3] (a batch at the training size); got shape"
    for case, shape in (("one image", "[24 24 3]"), ("grey", "[2 24 24 1]"), ("size", "[2 16 16 3]"),
                        ("rank 5", "[1 2 24 24 3]")):
        assert expected in lines[case] and shape in lines[case], (case, lines[case])
    assert "expected to be a uint8 tensor but is a float tensor" in lines["float"]
    assert lines["empty"] == "(0, 6)"


def test_litert_export_matches_keras_in_the_interpreter(trained, tmp_path):
    import tensorflow as tf

    from keras_facemargin.export import export_litert

    embedder, images, _ = trained
    path = export_litert(embedder, str(tmp_path / "embedder.tflite"))
    interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    served = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = np.asarray(embedder.predict(images.astype("float32"), verbose=0), dtype=np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(served, expected, atol=1e-5)
