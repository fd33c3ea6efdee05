"""Datasets: a registry of loaders, each giving fixed train/val/test splits scaled to [0, 1],
and the user's own data (``study.user_data``), split the same way and scaled as asked.

The split depends only on the dataset and ``data_seed``, never on the arm, so every arm of a
study sees the same examples. The test split is returned for completeness and is never used
for training, early stopping or selection: the yardsticks use the validation split.
``digits`` ships with scikit-learn, ``mnist1d`` is generated locally, and
``mnist``/``fashion_mnist`` read the files of the Keras cache, downloaded by Keras when
missing (``study.keras_files``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from study import keras_files, user_data
from study.errors import ConfigError
from study.keras_files import keras_datasets_dir


@dataclass(frozen=True)
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray  # integer class labels
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    # Explicit target rows for datasets whose targets are not one class per example (the
    # single neuron's target 0); None means: encode the labels as each loss expects.
    t_train: np.ndarray | None = None
    # Inputs are stored flat, [N, features]; images (and a user's inputs of any shape that is
    # not flat) keep their shape here, (H, W) or more, and models see each example in this
    # shape (an MLP flattens it again, a CNN convolves an (H, W)).
    image_shape: tuple[int, ...] | None = None
    # The sha256 of a user's data (file bytes or a loader's arrays): the data's identity in
    # the study's config hash. None for built-in datasets, which their name identifies.
    source_sha256: str | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the arrays and shapes training sees (not the test split): the data's
        identity in a process (a traced group is kept for these very splits,
        ``study.train.traced``)."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.x_train, self.y_train, self.x_val, self.y_val, self.t_train):
            if array is not None:
                digest.update(f"{array.dtype}{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).data)
        digest.update(f"{self.n_classes}{self.image_shape}".encode())
        return digest.hexdigest()

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.image_shape or (self.n_features,)

    def inputs(self, split: str) -> np.ndarray:
        """A split's inputs in the models' input shape."""
        x = getattr(self, f"x_{split}")
        return x.reshape(len(x), *self.input_shape)


@dataclass(frozen=True)
class Dataset:
    name: str
    load: Callable[[int], Splits]  # data_seed -> splits
    summary: str
    required_files: Callable[[], list[Path]] = lambda: []  # in the Keras cache

    def make_available(self) -> None:
        """Download the files of the Keras cache that are missing, with Keras' get_file."""
        keras_files.ensure(self.name, self.required_files())


def _stratified_splits(x, y, data_seed: int, val: float, test: float) -> tuple:
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test, stratify=y, random_state=data_seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val / (1 - test), stratify=y_rest, random_state=data_seed)
    return x_train, y_train, x_val, y_val, x_test, y_test


def _splits(x_train, y_train, x_val, y_val, x_test, y_test, n_classes: int) -> Splits:
    as_x = lambda a: np.ascontiguousarray(a, dtype="float32").reshape(  # noqa: E731
        len(a), int(np.prod(np.shape(a)[1:])))  # not -1: a user's test split may be empty
    as_y = lambda a: np.asarray(a, dtype="int64")  # noqa: E731
    return Splits(as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val),
                  as_x(x_test), as_y(y_test), n_classes)


def load_digits(data_seed: int) -> Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data / 16.0  # pixel intensities are 0..16
    return replace(_splits(*_stratified_splits(x, bunch.target, data_seed, val=0.2, test=0.2),
                           10), image_shape=(8, 8))


def load_mnist1d(data_seed: int) -> Splits:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = data_seed
    data = make_dataset(args)  # generated in memory, nothing downloaded
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    x_test, y_test = np.asarray(data["x_test"]), np.asarray(data["y_test"])
    x_train, x_val, y_train, y_val = _holdout(x, y, len(x) // 5, data_seed)
    # Min-max from the training split only, so val and test leak nothing into the scaling.
    low, high = x_train.min(), x_train.max()
    scale = lambda a: np.clip((a - low) / (high - low), 0.0, 1.0)  # noqa: E731
    return _splits(scale(x_train), y_train, scale(x_val), y_val, scale(x_test), y_test, 10)


def _holdout(x, y, n_val: int, data_seed: int) -> tuple:
    order = np.random.default_rng(data_seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return x[train], x[val], y[train], y[val]


def _mnist_npz() -> list[Path]:
    return [keras_datasets_dir() / "mnist.npz"]


def load_mnist(data_seed: int) -> Splits:
    # keras.datasets.mnist.load_data reads this same file, but checks its hash and would try
    # to download on any mismatch; np.load reads it the same way without the network.
    with np.load(_mnist_npz()[0], allow_pickle=False) as f:
        x, y, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    return _image_splits(x, y, x_test, y_test, data_seed)


FASHION_FILES = ["train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]


def _fashion_files() -> list[Path]:
    return [keras_datasets_dir() / "fashion-mnist" / name for name in FASHION_FILES]


def load_fashion_mnist(data_seed: int) -> Splits:
    # The same reading as keras.datasets.fashion_mnist.load_data, done here because Keras
    # fixes its cache folder when it is imported and would try to download a missing file.
    labels, images, test_labels, test_images = (_read_idx(p) for p in _fashion_files())
    return _image_splits(images.reshape(len(labels), 28, 28), labels,
                         test_images.reshape(len(test_labels), 28, 28), test_labels, data_seed)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file: 8 header bytes for labels, 16 for images, then unsigned bytes."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    return np.frombuffer(data, np.uint8, offset=8 if "labels" in path.name else 16)


def _image_splits(x, y, x_test, y_test, data_seed: int) -> Splits:
    """Pixels to [0, 1]; a sixth of the training images (10,000 of 60,000) held out for val."""
    for images, labels in ((x, y), (x_test, y_test)):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(f"images of shape {images.shape} and labels of shape "
                             f"{labels.shape}, not [N, 28, 28] and [N]")
    x_train, x_val, y_train, y_val = _holdout(x, y, len(x) // 6, data_seed)
    return replace(_splits(x_train / 255.0, y_train, x_val / 255.0, y_val, x_test / 255.0,
                           y_test, int(max(y.max(), y_test.max())) + 1), image_shape=(28, 28))


def load_neuron(data_seed: int) -> Splits:
    """Nielsen's single neuron: one example, input x = 1, one output with target y = 0.
    There is nothing to hold out, so val and test are that same example."""
    x, y = np.ones((1, 1)), np.zeros(1)
    return replace(_splits(x, y, x, y, x, y, n_classes=1), t_train=np.zeros((1, 1), "float32"))


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset("digits", load_digits, "scikit-learn's 1,797 8x8 digits (embedded, the default)"),
        Dataset("mnist1d", load_mnist1d, "MNIST-1D: 5,000 40-point 1D digits, generated locally"),
        Dataset("mnist", load_mnist,
                "MNIST 28x28: mnist.npz in the Keras cache, downloaded if missing", _mnist_npz),
        Dataset("fashion_mnist", load_fashion_mnist, "Fashion-MNIST 28x28: the Keras cache's "
                "fashion-mnist/ files, downloaded if missing", _fashion_files),
        Dataset("neuron", load_neuron, "Nielsen's single neuron: input 1, target 0 (ch. 3)"),
    ]
}


def make_available(name: str) -> None:
    """A built-in dataset's files downloaded if missing, a user's file found: before any run
    exists, so that a dataset that cannot be had is bad input (exit 2, nothing written)."""
    if user_data.is_own(name):
        user_data.check_exists(name)
    else:
        DATASETS[name].make_available()


def load_study_data(config) -> Splits:
    """The splits a study trains on: its dataset, data seed, scaling and classes."""
    return load_dataset(config.dataset, config.data_seed, scale=config.scale,
                        classes=config.classes)


def load_dataset(name: str, data_seed: int, *, scale=None, classes: int | None = None) -> Splits:
    if user_data.is_own(name):
        return load_own(name, data_seed, scale, classes)
    dataset = DATASETS[name]
    dataset.make_available()
    files = dataset.required_files()
    if not files:
        return dataset.load(data_seed)
    try:
        return dataset.load(data_seed)
    except Exception as err:  # truncated, corrupt, pickled or wrongly shaped: name the file
        reason = str(err).splitlines()[0][:100] if str(err) else type(err).__name__
        raise ConfigError(f"dataset {name!r}: cannot read {', '.join(map(str, files))} "
                          f"({reason}); replace it with the standard Keras file") from None


def load_own(name: str, data_seed: int, scale=None, classes: int | None = None) -> Splits:
    """A user's file or loader (``study.user_data``), checked; without x_val a sixth of the
    training examples held out as for mnist; inputs scaled only as ``scale`` says: a number
    divides them, a mapping ``{subtract, divide}`` computes (x - subtract) / divide."""
    arrays, sha256 = user_data.read(name)
    arrays, n_classes = user_data.check(arrays, name, classes)
    x, y = arrays["x_train"], arrays["y_train"]
    if "x_val" in arrays:
        x_train, y_train, x_val, y_val = x, y, arrays["x_val"], arrays["y_val"]
    else:
        x_train, x_val, y_train, y_val = _holdout(x, y, len(x) // 6, data_seed)
    empty = np.zeros((0, *x.shape[1:]), x.dtype), np.zeros(0, "int64")
    x_test, y_test = (arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else empty
    subtract, divide = _scaling(scale)
    scaled = lambda a: (np.asarray(a, "float64") - subtract) / divide  # noqa: E731
    with np.errstate(over="ignore"):  # a value too big for float32 is refused just below
        splits = _splits(scaled(x_train), y_train, scaled(x_val), y_val, scaled(x_test),
                         y_test, n_classes)
    for split in ("train", "val", "test"):  # finite in float64, inf in the trainers' float32
        if not np.isfinite(getattr(splits, f"x_{split}")).all():
            raise ConfigError(f"dataset {name}: x_{split} has values beyond float32's range "
                              "(3.4e38), the precision the trainers compute in; scale them")
    shape = tuple(int(n) for n in x.shape[1:])
    return replace(splits, image_shape=shape if len(shape) > 1 else None,
                   source_sha256=sha256)


def _scaling(scale) -> tuple[float, float]:
    if scale is None:
        return 0.0, 1.0
    if isinstance(scale, int | float):
        return 0.0, float(scale)
    return float(scale.subtract), float(scale.divide)
