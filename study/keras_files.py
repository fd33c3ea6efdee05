"""MNIST and Fashion-MNIST as Keras users get them: the files of the Keras cache
($KERAS_HOME/datasets, else ~/.keras/datasets), downloaded when missing by Keras' own
``keras.utils.get_file`` from the origin ``keras.datasets.mnist``/``fashion_mnist`` use, with
their hash check (Keras checks mnist.npz's sha256; it has none for Fashion-MNIST) and their
progress bar.

Why not call ``keras.datasets.mnist.load_data`` itself: Keras reads KERAS_HOME once, when it
is imported, and re-downloads over a cached file whose hash differs, so it would replace a
user's own copy of mnist.npz (the harness never overwrites what it did not create). So a
file found in the cache is used as it is, and a missing one is fetched into a scratch folder
first: a failed, interrupted or corrupt download leaves nothing in the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path

from study.errors import ConfigError

# As in keras/src/datasets/mnist.py and fashion_mnist.py (Keras 3), which hard-code them
# inside load_data. Module attributes, so that the tests point them at a local server.
ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
SHA256 = {"mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"}


def keras_datasets_dir() -> Path:
    """Where keras.utils.get_file caches datasets: $KERAS_HOME/datasets, else ~/.keras/datasets."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def ensure(dataset: str, files: list[Path]) -> None:
    """Download each of ``files`` (paths in the Keras cache) that is not there yet."""
    missing = [path for path in files if not path.is_file()]
    for i, path in enumerate(missing):
        _download(dataset, path, missing[i + 1:])


def _download(dataset: str, target: Path, after: list[Path]) -> None:
    """``after``: the files still missing once this one is there, named when it fails, so
    that one line says every file to put where (Fashion-MNIST has four)."""
    origin = ORIGIN + target.name
    _check_reachable(dataset, target, origin, after)  # offline: say so before TensorFlow
    from study.backend import start_tensorflow

    start_tensorflow()  # before Keras imports it, so that its start-up notices stay quiet
    import keras

    file_hash = SHA256.get(target.name)
    scratch = Path(tempfile.mkdtemp(prefix="study-download-"))
    try:
        try:
            fetched = keras.utils.get_file(target.name, origin, file_hash=file_hash,
                                           hash_algorithm="sha256", cache_dir=str(scratch),
                                           cache_subdir="")
        except ValueError as err:  # get_file's hash check; the file stays in scratch
            if "hash" not in str(err):
                raise
            raise ConfigError(f"dataset {dataset!r}: the file downloaded from {origin} is "
                              f"corrupt (its sha256 is not Keras' {file_hash[:12]}...); "
                              f"nothing was kept: run again, or put the standard Keras file "
                              f"at {target}") from None
        except Exception as err:  # get_file's "URL fetch failure on ...": no network
            raise _offline(dataset, target, origin, _reason(err), after) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        # copied beside the target, then renamed: the cache never holds half a file
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            shutil.copyfile(fetched, part)
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_reachable(dataset: str, target: Path, origin: str, after: list[Path]) -> None:
    """Connect to the origin's host (10 s at most): no network is then one line in a
    fraction of a second, not after TensorFlow's start-up."""
    url = urllib.parse.urlsplit(origin)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=10).close()
    except OSError as err:
        raise _offline(dataset, target, origin, _reason(err), after) from None


def _offline(dataset: str, target: Path, origin: str, reason: str,
             after: list[Path]) -> ConfigError:
    beside = f" (nor are {', '.join(p.name for p in after)} beside it)" if after else ""
    return ConfigError(f"dataset {dataset!r}: {target} is not in the Keras cache{beside} and "
                       f"the download from {origin} failed ({reason}); put the standard Keras "
                       f"file{'s' if after else ''} there (KERAS_HOME moves the cache)")


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    fetch = re.search(r": (\S+) -- (.*)$", text)  # get_file's "URL fetch failure on URL: n -- why"
    if fetch:
        code, why = fetch.groups()
        text = why if code == "None" else f"HTTP {code} {why}"
    return text[:120]
