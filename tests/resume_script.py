"""A small training run for the resume test: `python resume_script.py RUN_DIR`."""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_facemargin as kf  # noqa: E402
from keras_facemargin.training import fit_resumable  # noqa: E402

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(640, 16)).astype("float32")
y = rng.integers(0, 5, size=640)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), kf.heads.CosineHead(5)])
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=kf.losses.CosFaceLoss(scale=16.0))
slow = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.02))
fit_resumable(model, x, epochs=4, run_dir=sys.argv[1], config={"lr": 1e-3, "epochs": 4},
              save_freq=5, callbacks=[slow], y=y, batch_size=16, verbose=0)
print("finished", flush=True)
