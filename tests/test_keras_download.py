"""MNIST and Fashion-MNIST downloads through Keras' get_file, without the internet: a local
HTTP server serves small files in Keras' formats, and the origin Keras' loaders use is
pointed at it. KERAS_HOME is a temporary folder, so nothing in ~/.keras is touched."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from study import keras_files
from study.data import load_dataset, make_available
from study.errors import ConfigError

FASHION = ["train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
           "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


class Server:
    """http.server in a thread over ``folder``, recording the paths it was asked for."""

    def __init__(self, folder: Path):
        requests = self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """good/: mnist.npz (120 + 30 images) and the four Fashion-MNIST files (60 + 20);
    bad/: an mnist.npz whose bytes are not the good one's (a corrupt download)."""
    folder = tmp_path_factory.mktemp("origin")
    (folder / "good").mkdir()
    (folder / "bad").mkdir()
    (x, y), (xt, yt) = _images(120, 0), _images(30, 1)
    np.savez(folder / "good" / "mnist.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    np.savez(folder / "bad" / "mnist.npz", x_train=x[:10], y_train=y[:10], x_test=xt,
             y_test=yt)
    (fx, fy), (fxt, fyt) = _images(60, 2), _images(20, 3)
    for name, array, header in zip(FASHION, [fy, fx, fyt, fxt], [8, 16, 8, 16], strict=True):
        with gzip.open(folder / "good" / name, "wb") as f:
            f.write(b"\0" * header + array.tobytes())
    server = Server(folder)
    server.folder = folder
    yield server
    server.httpd.shutdown()


@pytest.fixture
def keras_home(tmp_path, monkeypatch, server):
    """An empty Keras cache, Keras' origin on the local server (good/), mnist.npz's hash
    that of the served file, and the scratch folder of downloads under tmp_path."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(keras_files, "ORIGIN", server.url + "good/")
    sha = hashlib.sha256((server.folder / "good" / "mnist.npz").read_bytes()).hexdigest()
    monkeypatch.setitem(keras_files.SHA256, "mnist.npz", sha)
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    server.requests.clear()
    return tmp_path / "keras" / "datasets"


def test_mnist_missing_from_the_cache_is_downloaded_checked_and_cached(keras_home, server,
                                                                      capsys):
    make_available("mnist")
    served = (server.folder / "good" / "mnist.npz").read_bytes()
    assert (keras_home / "mnist.npz").read_bytes() == served
    assert server.requests == ["/good/mnist.npz"]
    out = capsys.readouterr().out
    assert f"Downloading data from {server.url}good/mnist.npz" in out  # Keras' own words
    assert "/step" in out  # and its progress bar (Progbar: bytes so far, time per block)
    splits = load_dataset("mnist", 0)
    xt, yt = _images(30, 1)
    np.testing.assert_allclose(splits.x_test, xt.reshape(30, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(splits.y_test, yt)
    assert (len(splits.y_train), len(splits.y_val)) == (100, 20)
    assert list(keras_home.iterdir()) == [keras_home / "mnist.npz"]  # no part file left
    assert list((keras_home.parents[1] / "scratch").iterdir()) == []  # scratch removed


def test_a_cached_file_is_used_without_the_network(keras_home, server):
    make_available("mnist")
    server.requests.clear()
    make_available("mnist")
    load_dataset("mnist", 0)
    assert server.requests == []


def test_a_corrupt_download_is_one_line_and_leaves_nothing(keras_home, server, monkeypatch):
    monkeypatch.setattr(keras_files, "ORIGIN", server.url + "bad/")
    with pytest.raises(ConfigError) as err:
        make_available("mnist")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"dataset 'mnist': the file downloaded from {server.url}"
                              "bad/mnist.npz is corrupt (its sha256 is not Keras'")
    assert str(keras_home / "mnist.npz") in message
    assert not keras_home.exists() or list(keras_home.iterdir()) == []
    assert list((keras_home.parents[1] / "scratch").iterdir()) == []


def test_a_missing_file_on_the_server_is_one_line(keras_home, server, monkeypatch):
    monkeypatch.setattr(keras_files, "ORIGIN", server.url + "nowhere/")
    with pytest.raises(ConfigError, match=r"is not in the Keras cache and the download from "
                                          r".*nowhere/mnist.npz failed \(HTTP 404 File not"):
        make_available("mnist")
    assert not keras_home.exists()


def test_fashion_mnist_downloads_its_four_files(keras_home, server):
    make_available("fashion_mnist")
    assert sorted(server.requests) == sorted(f"/good/{name}" for name in FASHION)
    for name in FASHION:
        assert (keras_home / "fashion-mnist" / name).read_bytes() == \
            (server.folder / "good" / name).read_bytes()
    splits = load_dataset("fashion_mnist", 0)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (50, 10, 20)
