"""The anchor of the quality benchmark: what a Keras user writes in an afternoon (keras.layers only).

It does not import keras_facemargin: it is the baseline the package's training is judged against.
48×48 RGB in [0, 1]; four blocks of two 3×3 Conv2D(f, use_bias=False)-BatchNormalization-ReLU with
f = 32, 64, 128, 256, each block followed by 2×2 max pooling; Flatten, Dropout(0.2), Dense(128),
BatchNormalization as the embedding; a Dense(C) head with sparse cross-entropy (softmax) or a
normalised-weight cosine layer with s·cos(θ + 0.5) on the target (ArcFace, s = 30); Adam(1e-3),
batch 128, seed; augmentation RandomTranslation(0.08, 0.08), RandomZoom(0.1), RandomContrast(0.2).

    python benchmarks/plain_keras.py --train DIR --unseen DIR --head softmax --out emb.npz
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402


class CosineLayer(keras.layers.Layer):
    def __init__(self, classes, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.classes), initializer="glorot_uniform")

    def call(self, x):
        return ops.matmul(ops.normalize(x, axis=-1), ops.normalize(self.w, axis=0))


def arcface_loss(classes, s=30.0, m=0.5):
    def loss(y_true, cosine):
        one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        cosine = ops.clip(cosine, -1.0 + 1e-7, 1.0 - 1e-7)
        theta = ops.arccos(cosine)
        target = ops.where(theta + m < np.pi, ops.cos(theta + m), cosine - m * np.sin(m))
        logits = s * (one_hot * target + (1.0 - one_hot) * cosine)
        return keras.losses.categorical_crossentropy(one_hot, logits, from_logits=True)

    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--unseen", required=True)
    parser.add_argument("--head", choices=("softmax", "arcface"), default="softmax")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    size = (args.image_size, args.image_size)
    train = keras.utils.image_dataset_from_directory(args.train, image_size=size, batch_size=128,
                                                     seed=args.seed, verbose=False)
    classes = len(train.class_names)

    inputs = keras.Input((*size, 3))
    x = keras.layers.RandomTranslation(0.08, 0.08, seed=args.seed)(inputs)
    x = keras.layers.RandomZoom(0.1, seed=args.seed)(x)
    x = keras.layers.RandomContrast(0.2, seed=args.seed)(x)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    for filters in (32, 64, 128, 256):
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.2)(x)
    x = keras.layers.Dense(128)(x)
    embeddings = keras.layers.BatchNormalization()(x)
    embedder = keras.Model(inputs, embeddings)
    if args.head == "softmax":
        outputs = keras.layers.Dense(classes)(embeddings)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        outputs = CosineLayer(classes)(embeddings)
        loss = arcface_loss(classes)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    model.fit(train, epochs=args.epochs, verbose=2)

    unseen = keras.utils.image_dataset_from_directory(args.unseen, image_size=size, batch_size=256,
                                                      shuffle=False, labels=None, verbose=False)
    vectors = embedder.predict(unseen, verbose=0)
    np.savez(args.out, embeddings=vectors, paths=np.array(unseen.file_paths))


if __name__ == "__main__":
    main()
