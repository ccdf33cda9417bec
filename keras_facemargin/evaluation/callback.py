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

    Args:
        model: a built functional `keras.Model` (a training model, or an embedding model).

    Returns:
        A `keras.Model` from the model's first input (the images) to the head's input features
        `[batch, dim]` (sharing the model's layers and weights), or `model` itself when it has
        no head.
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

    With one set of pairs, writes `val_auc`, `val_eer`, `val_tar@far=1e-3` (one per FAR target),
    `val_best_accuracy` and `val_accuracy_10fold` into the epoch's logs; with several named sets
    (a `PairSets`, or a mapping `name -> pairs`), the same metrics per set under
    `val_<set>_auc`, `val_<set>_accuracy_10fold`, ... (plus `val_<set>_accuracy_10fold_insightface`),
    every unique image embedded once per evaluation. `EarlyStopping`, `ModelCheckpoint`,
    `CSVLogger` and TensorBoard can use any of them; on epochs that are skipped
    (`every_n_epochs`) the keys are absent. Embeddings come from `embedding_model(model)` unless
    one is given.

    Args:
        pairs: `(images_a, images_b, is_same)` arrays, `[pairs, H, W, C]` twice and `[pairs]`;
            or a `PairSets`, whose unique images are decoded once, at `image_size`, into memory
            (uint8: `H·W·3` bytes each); or a mapping from set names to such triples or to
            `data.VerificationPairs`.
        every_n_epochs: evaluate after every n-th epoch (and the last epoch counts like any other).
        far_targets: FARs for `tar@far=...` keys.
        flip: use the flip test (sum of the image's and its mirror's embeddings).
        embedding_model: the model that embeds images; default: see above.
        batch_size: embedding batch size.
        prefix: prefix of the log keys.
        image_size: `(height, width)` the images of named sets are decoded at; by default the
            embedding model's input size.

    Example:

    ```python
    sets = read_pair_sets(["lfw.bin", "cfp_fp.bin", "agedb_30.bin"])
    model.fit(train, epochs=20, callbacks=[
        VerificationCallback(sets, image_size=(112, 112)),
        keras.callbacks.EarlyStopping(monitor="val_agedb_30_accuracy_10fold", mode="max")])
    ```
    """

    def __init__(self, pairs, every_n_epochs=1, far_targets=(1e-3,), flip=False,
                 embedding_model=None, batch_size=256, prefix="val_", image_size=None):
        super().__init__()
        from keras_facemargin.evaluation.pair_sets import PairSets

        self.pair_sets = None
        if isinstance(pairs, dict):
            pairs = _as_pair_sets(pairs)
        if isinstance(pairs, PairSets):
            self.pair_sets = pairs
            self._images = None
        else:
            if isinstance(pairs, (str, bytes)) or len(pairs) != 3:
                raise ValueError(
                    "pairs must be (images_a, images_b, is_same), a PairSets or a mapping of named "
                    f"sets; got {type(pairs).__name__}"
                    + ("" if isinstance(pairs, (str, bytes)) else f" of {len(pairs)}")
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
        self.image_size = image_size
        self.last_report = None

    def _unique_images(self, embedder):
        if self._images is None:
            from keras_facemargin.evaluation.pair_sets import embedder_image_size

            decoded = getattr(self.pair_sets, "decoded", False)
            size = None if decoded else embedder_image_size(embedder, self.image_size)
            self._images = self.pair_sets.images(size, self.batch_size)
        return self._images

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        embedder = self.embedder or embedding_model(self.model)
        if self.pair_sets is not None:
            images = self._unique_images(embedder)
            embeddings = embed(embedder, images, self.batch_size, self.flip, verbose=0)
            report = self.pair_sets.evaluate(embeddings, self.far_targets)
        else:
            a = embed(embedder, self.images_a, self.batch_size, self.flip, verbose=0)
            b = embed(embedder, self.images_b, self.batch_size, self.flip, verbose=0)
            report = verification_report(self.is_same, pair_scores(a, b), self.far_targets)
        self.last_report = report
        metrics = report.as_logs(self.prefix)
        if logs is not None:
            logs.update(metrics)
        logger.debug("epoch %d verification: %s", epoch + 1,
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def _as_pair_sets(named):
    """A mapping of set names to `VerificationPairs` or to decoded `(a, b, is_same)` triples, as
    a `PairSets` (decoded triples become sets over their own images, embedded as given)."""
    from keras_facemargin.data import VerificationPairs
    from keras_facemargin.evaluation.pair_sets import PairSets

    if all(isinstance(v, VerificationPairs) for v in named.values()):
        return PairSets(named)

    class DecodedPairSets(PairSets):
        decoded = True

        def __init__(self, named):
            images, self.sets, count = [], {}, 0
            for name, triple in named.items():
                if isinstance(triple, VerificationPairs) or len(triple) != 3:
                    raise ValueError(
                        f"pairs[{name!r}] must be (images_a, images_b, is_same) arrays when other "
                        f"sets are; got {type(triple).__name__}"
                    )
                a, b, same = (np.asarray(x) for x in triple)
                if not len(a) == len(b) == len(same):
                    raise ValueError(
                        f"pairs[{name!r}] must hold as many images_a, images_b and is_same; got "
                        f"{len(a)}, {len(b)} and {len(same)}"
                    )
                n = len(same)
                images += [a, b]
                self.sets[name] = (count + np.arange(n), count + n + np.arange(n),
                                   same.astype(bool), None)
                count += 2 * n
            self.names = tuple(named)
            self._images = np.concatenate(images)

        def __len__(self):
            return len(self._images)

        def images(self, image_size=None, batch_size=None, corrupt_files=None):
            return self._images

    return DecodedPairSets(named)
