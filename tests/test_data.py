"""Datasets: fixed splits from a data seed, inputs in [0, 1], Keras-cache files read offline."""

from __future__ import annotations

import gzip
import socket

import numpy as np
import pytest

from study import keras_files
from study.data import DATASETS, load_dataset
from study.errors import ConfigError
from study.train.common import Schedule, batch_order


def _check_splits(s, n_features, n_classes):
    for x in (s.x_train, s.x_val, s.x_test):
        assert x.dtype == np.float32 and x.shape[1] == n_features
        assert x.min() >= 0.0 and x.max() <= 1.0
    assert s.n_classes == n_classes
    assert set(np.unique(s.y_train)) == set(range(n_classes))


def test_digits_is_a_stratified_60_20_20_split(digits):
    _check_splits(digits, 64, 10)
    sizes = len(digits.y_train), len(digits.y_val), len(digits.y_test)
    assert sum(sizes) == 1797 and sizes == (1077, 360, 360)
    counts = np.bincount(digits.y_val, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # about 36 of each class
    assert digits.x_train.max() == 1.0  # 16/16


def test_split_depends_on_the_data_seed_only():
    a, b, c = load_dataset("digits", 0), load_dataset("digits", 0), load_dataset("digits", 1)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)


def test_mnist1d_is_generated_locally():
    s = load_dataset("mnist1d", 0)
    _check_splits(s, 40, 10)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (3200, 800, 1000)


def _keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    return tmp_path / "datasets"


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def test_mnist_reads_the_npz_in_the_keras_cache(tmp_path, monkeypatch):
    datasets = _keras_home(tmp_path, monkeypatch)
    (x, y), (xt, yt) = _images(120, 0), _images(30, 1)
    np.savez(datasets / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    s = load_dataset("mnist", 0)
    _check_splits(s, 784, 10)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (100, 20, 30)
    np.testing.assert_allclose(s.x_test, xt.reshape(30, -1) / 255.0, rtol=1e-6)
    # Training and validation together are exactly the training images, none lost or repeated.
    both = np.concatenate([s.x_train, s.x_val]) * 255
    assert sorted(map(bytes, np.rint(both).astype(np.uint8))) == sorted(
        map(bytes, x.reshape(120, -1)))


def _idx_gz(path, array, header_bytes):
    with gzip.open(path, "wb") as f:
        f.write(b"\0" * header_bytes + array.tobytes())


def test_fashion_mnist_reads_the_keras_cache_files(tmp_path, monkeypatch):
    folder = _keras_home(tmp_path, monkeypatch) / "fashion-mnist"
    folder.mkdir()
    (x, y), (xt, yt) = _images(60, 2), _images(20, 3)
    _idx_gz(folder / "train-labels-idx1-ubyte.gz", y, 8)
    _idx_gz(folder / "train-images-idx3-ubyte.gz", x, 16)
    _idx_gz(folder / "t10k-labels-idx1-ubyte.gz", yt, 8)
    _idx_gz(folder / "t10k-images-idx3-ubyte.gz", xt, 16)
    s = load_dataset("fashion_mnist", 0)
    _check_splits(s, 784, 10)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (50, 10, 20)
    np.testing.assert_array_equal(s.y_test, yt)


def test_missing_cache_file_offline_is_a_config_error_naming_the_path(tmp_path, monkeypatch):
    _keras_home(tmp_path, monkeypatch)
    with socket.socket() as s:  # a loopback port where nothing listens: no network
        s.bind(("127.0.0.1", 0))
        monkeypatch.setattr(keras_files, "ORIGIN", f"http://127.0.0.1:{s.getsockname()[1]}/")
    with pytest.raises(ConfigError, match="fashion-mnist/train-labels-idx1-ubyte.gz is not "
                                          r"in the Keras cache \(nor are "
                                          "train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, "
                                          r"t10k-images-idx3-ubyte.gz beside it\) and the download "
                                          ".*; put the standard Keras files there"):
        DATASETS["fashion_mnist"].make_available()  # one line names all four files


def test_schedule_has_step_0_log_spaced_steps_and_epoch_ends():
    assert Schedule(107, 3).steps == (0, 1, 2, 4, 8, 16, 32, 64, 107, 128, 214, 256, 321)
    assert Schedule(4, 1).steps == (0, 1, 2, 4)


def test_batch_order_is_a_fresh_permutation_each_epoch_shared_by_seed():
    order = batch_order(seed=3, n_train=105, batch_size=10, epochs=2)
    assert order.shape == (2, 10, 10)
    for epoch in order:  # no example twice in an epoch; the 5 left over are dropped
        assert len(set(epoch.ravel())) == 100
    assert not np.array_equal(order[0], order[1])
    np.testing.assert_array_equal(order, batch_order(3, 105, 10, 2))
    assert not np.array_equal(order, batch_order(4, 105, 10, 2))
