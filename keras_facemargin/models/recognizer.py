import keras

from keras_facemargin.heads import CosineHead

# The name of the Dense head, by which `evaluation.embedding_model` finds where embeddings end.
SOFTMAX_HEAD = "softmax_logits"

def _is_margin_loss(loss):
    from keras_facemargin import losses

    cls = losses.get_class(loss) if isinstance(loss, str) else type(loss)
    return issubclass(cls, losses.MarginSoftmaxLoss)


def build_recognizer(backbone, num_classes=None, name="recognizer", partial_fc=None, loss=None,
                     head="cosine"):
    """The training model and the embedding model of a face recognizer, sharing weights.

    Images enter both models as float32 pixel values in [0, 255] and are scaled to [-1, 1]
    inside (so the exported model and every data pipeline agree on one convention).

    Args:
        backbone: a Keras model from scaled images `[batch, H, W, C]` to features `[batch, dim]`
            (see `keras_facemargin.models.get_backbone`).
        num_classes: number of training identities; the training model ends in the head.
            `None` for pair losses, which train the embedding model directly (then both
            returned models are the same object).
        name: name of the training model.
        partial_fc: a `keras_facemargin.heads.PartialFC` to train with instead of a
            `CosineHead` (it holds the loss; `num_classes` is then ignored). The training model
            then takes `[images, labels]` and is compiled without a loss.
        loss: the loss the model will be compiled with (an instance or a registered name). A
            margin-softmax loss gets the head it needs (`CosineHead(num_classes, loss=loss)`:
            feature norms for AdaFace/MagFace, running statistics, sub-centres); a pair loss
            trains the embedding model (`num_classes` is then ignored). Compile with the same
            loss, or another of the same class.
        head: `"cosine"`, a `CosineHead` (cos θ for the margin-softmax losses), or `"dense"`, a
            `keras.layers.Dense` (logits for plain softmax cross-entropy).

    Returns:
        `(model, embedder)`: `model` for `fit` (`[batch, num_classes]` cosines or logits), and `embedder`
        (`[batch, dim]` features) for verification and export.

    Example:

    ```python
    backbone = keras_facemargin.models.get_backbone("iresnet18", input_shape=(112, 112, 3))
    loss = keras_facemargin.losses.AdaFaceLoss()
    model, embedder = build_recognizer(backbone, num_classes=10_000, loss=loss)
    model.compile(optimizer="sgd", loss=loss)
    ```
    """
    if head not in ("cosine", "dense"):
        raise ValueError(f"head must be 'cosine' or 'dense'; got {head!r}")
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"backbone must be a keras.Model; got {type(backbone).__name__}")
    input_shape = tuple(backbone.input_shape)[1:]
    if len(backbone.output_shape) != 2:
        raise ValueError(
            f"backbone must output embeddings [batch, dim]; got output shape {backbone.output_shape}"
        )
    images = keras.Input(input_shape, name="images")
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_pixels")(images)
    embedder = keras.Model(images, backbone(scaled), name="embedder")
    if partial_fc is not None:
        labels = keras.Input((), dtype="int32", name="labels")
        return keras.Model([images, labels], partial_fc(embedder.output, labels), name=name), embedder
    margin = loss is not None and _is_margin_loss(loss)
    if num_classes is None or (loss is not None and not margin):
        if margin:
            raise ValueError(f"num_classes is required for the margin-softmax loss {loss!r}; got None")
        return embedder, embedder
    if head == "dense":
        logits = keras.layers.Dense(num_classes, name=SOFTMAX_HEAD, dtype="float32")(embedder.output)
        return keras.Model(images, logits, name=name), embedder
    cosines = CosineHead(num_classes, loss=loss if margin else None, name="cosine_head")(embedder.output)
    return keras.Model(images, cosines, name=name), embedder
