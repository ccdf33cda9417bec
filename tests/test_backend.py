"""The backend module's fast paths against loop-based NumPy (float64) and its portable fallbacks."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_facemargin import _backend

pytestmark = pytest.mark.multibackend
tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's own paths")


def test_take_per_row_reads_one_entry_of_every_row():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype("float32")
    columns = rng.integers(0, 5, 7).astype("int32")
    expected = [float(x[a, columns[a]]) for a in range(7)]
    np.testing.assert_array_equal(ops.convert_to_numpy(_backend.take_per_row(x, columns)), expected)


def test_norms_of_columns_and_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6))
    by_column = [np.sqrt(sum(x[i, j] ** 2 for i in range(4))) for j in range(6)]
    by_row = [np.sqrt(sum(x[i, j] ** 2 for j in range(6))) for i in range(4)]
    np.testing.assert_allclose(ops.convert_to_numpy(_backend.column_norms(x.astype("float32"))), by_column,
                               rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(_backend.row_norms(x.astype("float32"))), by_row, rtol=1e-6)


@pytest.mark.parametrize("transpose_a, transpose_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_with_either_operand_transposed(transpose_a, transpose_b):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 4) if not transpose_a else (4, 3))
    b = rng.normal(size=(4, 2) if not transpose_b else (2, 4))
    left, right = (a.T if transpose_a else a), (b.T if transpose_b else b)
    expected = [[sum(left[i, k] * right[k, j] for k in range(4)) for j in range(2)] for i in range(3)]
    got = _backend.matmul(a.astype("float32"), b.astype("float32"), transpose_a, transpose_b)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-6)


def test_searchsorted_rows_is_the_native_search_or_none():
    sorted_rows = np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 9.0]], "float32")
    values = np.array([[1.0, 2.5], [5.0, 10.0]], "float32")
    found = _backend.searchsorted_rows(sorted_rows, values, "left")
    if keras.backend.backend() != "tensorflow":
        assert found is None  # the caller's portable search runs instead
        return
    expected = [[sum(s < v for s in row) for v in vals] for row, vals in zip(sorted_rows, values, strict=True)]
    np.testing.assert_array_equal(ops.convert_to_numpy(found), expected)


@tensorflow_only
def test_tensorflow_without_xla_tells_plain_graphs_from_xla_ones():
    import tensorflow as tf

    seen = {}

    @tf.function
    def plain(x):
        seen["plain"] = _backend.tensorflow_without_xla()
        return x

    @tf.function(jit_compile=True)
    def compiled(x):
        seen["xla"] = _backend.tensorflow_without_xla()

        @tf.function
        def nested(y):  # a plain function called inside an XLA one is compiled too
            seen["nested"] = _backend.tensorflow_without_xla()
            return y

        return nested(x)

    plain(tf.constant(1.0))
    compiled(tf.constant(1.0))
    assert _backend.tensorflow_without_xla() is True  # eager
    assert seen == {"plain": True, "xla": False, "nested": False}


@tensorflow_only
def test_the_fused_cross_entropy_gives_the_loss_and_its_gradient():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 5))
    labels = np.array([0, 3, 4, 1])
    loss, gradient = _backend.sparse_cross_entropy_with_gradient(logits.astype("float32"), labels)
    for b in range(4):
        exp = np.exp(logits[b] - logits[b].max())
        softmax = exp / exp.sum()
        assert float(loss[b]) == pytest.approx(-np.log(softmax[labels[b]]), rel=1e-5)
        np.testing.assert_allclose(gradient[b], softmax - np.eye(5)[labels[b]], atol=1e-6)
