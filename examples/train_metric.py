"""Train an embedding with a pair loss on P×K batches from an image folder.

This is `facemargin train` with a pair-loss default (semi-hard triplet); every flag of
`facemargin train --help` works, including --classes-per-batch P and --samples-per-class K:

    python examples/train_metric.py --data tests/data/faces --backbone simple_cnn \\
        --image-size 32 --embedding-dim 16 --epochs 3 --classes-per-batch 5 \\
        --samples-per-class 4 --optimizer adam --learning-rate 0.001 --run-dir runs/faces-triplet
"""

import sys

from keras_facemargin.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "--loss", "triplet", *sys.argv[1:]]))
