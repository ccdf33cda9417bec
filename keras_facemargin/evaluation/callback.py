import logging

import keras
import numpy as np

from keras_facemargin.evaluation.scores import embed, pair_scores
from keras_facemargin.evaluation.verification import verification_report

logger = logging.getLogger(__name__)


def embedding_model(model):
    """The part of `model` that produces embeddings: everything before its head.

    The head is the last `CosineHead` or `PartialFC` (whose labels input is then dropped), or
    the `Dense` layer named `"softmax_logits"` that `build_recognizer(..., head="dense")` puts
    there. A model without a head (one trained with a pair loss) is its own embedding model.
    """
    from keras_facemargin.heads import CosineHead, PartialFC
    from keras_facemargin.models.recognizer import SOFTMAX_HEAD

    heads = [layer for layer in model.layers
             if isinstance(layer, (CosineHead, PartialFC)) or layer.name == SOFTMAX_HEAD]
    if not heads:
        return model
    features = heads[-1].input
    if isinstance(features, (list, tuple)):
        features = features[0]
    return keras.Model(model.inputs[0], features)


class VerificationCallback(keras.callbacks.Callback):
    """Verification metrics on held-out pairs at the end of training epochs, in the Keras logs.

    Writes `val_auc`, `val_eer`, `val_tar@far=1e-3` (one per FAR target), `val_best_accuracy` and
    `val_accuracy_10fold` into the epoch's logs, so that `EarlyStopping`, `ModelCheckpoint`,
    `CSVLogger` and TensorBoard can use them; on epochs that are skipped (`every_n_epochs`) the keys
    are absent. Embeddings come from `embedding_model(model)` unless one is given.

    Args:
        pairs: `(images_a, images_b, is_same)` arrays, `[pairs, H, W, C]` twice and `[pairs]`.
        every_n_epochs: evaluate after every n-th epoch (and the last epoch counts like any other).
        far_targets: FARs for `tar@far=...` keys.
        flip: use the flip test (sum of the image's and its mirror's embeddings).
        embedding_model: the model that embeds images; default: see above.
        batch_size: embedding batch size.
        prefix: prefix of the log keys.

    Example:

    ```python
    callback = VerificationCallback((images_a, images_b, is_same))
    model.fit(train, epochs=20, callbacks=[
        callback, keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=3)])
    ```
    """

    def __init__(self, pairs, every_n_epochs=1, far_targets=(1e-3,), flip=False,
                 embedding_model=None, batch_size=256, prefix="val_"):
        super().__init__()
        if len(pairs) != 3:
            raise ValueError(
                f"pairs must be (images_a, images_b, is_same); got a sequence of {len(pairs)}"
            )
        self.images_a, self.images_b, self.is_same = (np.asarray(p) for p in pairs)
        if not len(self.images_a) == len(self.images_b) == len(self.is_same):
            raise ValueError(
                "pairs must hold the same number of images_a, images_b and is_same; got "
                f"{len(self.images_a)}, {len(self.images_b)} and {len(self.is_same)}"
            )
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1; got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.far_targets = tuple(far_targets)
        self.flip = flip
        self.embedder = embedding_model
        self.batch_size = batch_size
        self.prefix = prefix
        self.last_report = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        embedder = self.embedder or embedding_model(self.model)
        a = embed(embedder, self.images_a, self.batch_size, self.flip, verbose=0)
        b = embed(embedder, self.images_b, self.batch_size, self.flip, verbose=0)
        report = verification_report(self.is_same, pair_scores(a, b), self.far_targets)
        self.last_report = report
        metrics = report.as_logs(self.prefix)
        if logs is not None:
            logs.update(metrics)
        logger.debug("epoch %d verification: %s", epoch + 1,
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
