"""`EmbeddingProjector`: a sample of validation images in TensorBoard's embedding projector."""

import os

import keras
import numpy as np


class EmbeddingProjector(keras.callbacks.Callback):
    """Writes the embeddings of a sample of images for TensorBoard's projector at epoch ends.

    The projector (TensorBoard's "Projector" tab) shows the embeddings in 2-D or 3-D (PCA,
    t-SNE, UMAP) with a thumbnail of each image and its label: how the identities cluster, and
    which ones mix. Files in `log_dir`: a checkpoint of the embeddings, `metadata.tsv` (one
    label per image), `sprite.png` (the thumbnails) and `projector_config.pbtxt`. The latest
    epoch's embeddings replace the previous ones. Needs the `tensorboard` package to be viewed
    (`tensorboard --logdir RUN_DIR/tensorboard`).

    Args:
        images: `[n, H, W, 3]` images (uint8 or float in [0, 255]), at most 10,000.
        labels: `[n]` what each image is called in the projector (identity names).
        log_dir: TensorBoard's log folder (the projector's files go there).
        embedding_model: the model from images to embeddings; default: `embedding_model(model)`.
        every_n_epochs: write after every n-th epoch.
        thumbnail: side of each sprite thumbnail in pixels.
    """

    def __init__(self, images, labels, log_dir, embedding_model=None, every_n_epochs=1, thumbnail=32):
        super().__init__()
        images = np.asarray(images)
        labels = [str(label) for label in labels]
        if images.ndim != 4 or images.shape[-1] != 3 or not 1 <= len(images) <= 10_000:
            raise ValueError(f"images must be [n, H, W, 3] with 1 <= n <= 10000; got shape {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"labels must give one label per image ({len(images)}); got {len(labels)}")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1; got {every_n_epochs!r}")
        self.images, self.labels = images, labels
        self.log_dir = log_dir
        self.embedder = embedding_model
        self.every_n_epochs = every_n_epochs
        self.thumbnail = int(thumbnail)

    def on_train_begin(self, logs=None):
        os.makedirs(self.log_dir, exist_ok=True)
        with open(os.path.join(self.log_dir, "metadata.tsv"), "w", encoding="utf-8") as f:
            f.write("".join(label.replace("\t", " ").replace("\n", " ") + "\n" for label in self.labels))
        self._write_sprite()
        with open(os.path.join(self.log_dir, "projector_config.pbtxt"), "w") as f:
            f.write(
                "embeddings {\n"
                '  tensor_name: "embeddings/.ATTRIBUTES/VARIABLE_VALUE"\n'
                '  metadata_path: "metadata.tsv"\n'
                '  sprite {\n    image_path: "sprite.png"\n'
                f"    single_image_dim: {self.thumbnail}\n    single_image_dim: {self.thumbnail}\n"
                "  }\n}\n")

    def _write_sprite(self):
        from PIL import Image

        side = int(np.ceil(np.sqrt(len(self.images))))
        t = self.thumbnail
        sheet = Image.new("RGB", (side * t, side * t))
        for i, image in enumerate(self.images):
            pixels = np.clip(np.round(np.asarray(image, np.float64)), 0, 255).astype(np.uint8)
            sheet.paste(Image.fromarray(pixels).resize((t, t)), ((i % side) * t, (i // side) * t))
        sheet.save(os.path.join(self.log_dir, "sprite.png"))

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        import tensorflow as tf

        from keras_facemargin.evaluation.callback import embedding_model
        from keras_facemargin.evaluation.scores import embed

        embedder = self.embedder or embedding_model(self.model)
        vectors = embed(embedder, self.images.astype("float32"), verbose=0)
        checkpoint = tf.train.Checkpoint(embeddings=tf.Variable(vectors))
        checkpoint.write(os.path.join(self.log_dir, "embeddings.ckpt"))
        with open(os.path.join(self.log_dir, "checkpoint"), "w") as f:
            f.write('model_checkpoint_path: "embeddings.ckpt"\n')
