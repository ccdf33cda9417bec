import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.backend.backend() == "jax":
    import jax

    # float64 inputs stay float64 in plain jax.numpy; Keras's JAX backend still computes some ops
    # (arccos, logaddexp, ...) in float32, so the tests use float32 tolerances there (helpers.TOL).
    jax.config.update("jax_enable_x64", True)
elif keras.backend.backend() == "torch":
    import torch

    # The tests' tensors are tiny: PyTorch's intra-op thread pool only adds overhead, and on a
    # busy 2-core machine its waiting threads made the multibackend run several times slower.
    torch.set_num_threads(1)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_policy():
    """Every test starts with float32 and a fixed seed, whatever the previous one set."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
