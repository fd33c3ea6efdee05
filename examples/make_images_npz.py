"""Write a small .npz of 28x28 images in Keras' layout, for examples/own_data.yaml.

scikit-learn's 1,797 8x8 digits, each pixel made a 3x3 block and the 24x24 image padded to
28x28 (MNIST's size), as bytes 0-255 like MNIST's: x_train/y_train (1,497 images) and
x_test/y_test (300). Any .npz of these four arrays (x_val/y_val optional), with inputs of
any shape and integer labels, is a dataset the harness can run:

    python examples/make_images_npz.py            # writes examples/digits28.npz
    python -m study run examples/own_data.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits


def digits28() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3)))  # 8x8 -> 24x24
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # -> 28x28
    return np.rint(images * 255 / 16).astype(np.uint8), digits.target.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("digits28.npz"),
                        help="where to write it (default: digits28.npz beside this script)")
    out = parser.parse_args().out
    x, y = digits28()
    order = np.random.default_rng(0).permutation(len(x))  # digits are stored in runs
    train, test = order[300:], order[:300]
    np.savez_compressed(out, x_train=x[train], y_train=y[train], x_test=x[test],
                        y_test=y[test])
    print(f"wrote {out}: {len(train):,} training and {len(test)} test images of 28x28")


if __name__ == "__main__":
    main()
