"""Train a face recognizer with a margin-softmax loss on an image folder (one folder per identity).

This is `facemargin train` with a margin-softmax default; every flag of `facemargin train --help`
works (loss, margin, scale, label smoothing, mixup/cutmix, epochs, schedule, mixed precision,
--val-pairs, --config FILE). Example, on the faces that ship with the tests:

    python examples/train_classifier.py --data tests/data/faces --backbone simple_cnn \\
        --image-size 32 --embedding-dim 16 --epochs 3 --batch-size 10 --run-dir runs/faces
"""

import sys

from keras_facemargin.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--loss", "arcface", *sys.argv[1:]]))
