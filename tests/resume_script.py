"""A small training run for the resume tests: `python resume_script.py RUN_DIR [LOSS [SAVE_FREQ]]`.

LOSS is a registered margin-loss name (default cosface; a stateful one such as adaface keeps its
running statistics in the head), SAVE_FREQ "epoch" or a number of batches (default 5).
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_facemargin as kf  # noqa: E402
from keras_facemargin.training import fit_resumable  # noqa: E402

run_dir = sys.argv[1]
name = sys.argv[2] if len(sys.argv) > 2 else "cosface"
save_freq = sys.argv[3] if len(sys.argv) > 3 else "5"
save_freq = save_freq if save_freq == "epoch" else int(save_freq)
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(640, 16)).astype("float32")
y = rng.integers(0, 5, size=640)
loss = kf.losses.get(name, scale=16.0) if name == "cosface" else kf.losses.get(name)
head = kf.heads.CosineHead(5, loss=loss if name != "cosface" else None)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), head])
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
slow = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.02))
fit_resumable(model, x, epochs=4, run_dir=run_dir, config={"lr": 1e-3, "epochs": 4, "loss": name},
              save_freq=save_freq, callbacks=[slow], y=y, batch_size=16, verbose=0, shuffle=False)
print("finished", flush=True)
