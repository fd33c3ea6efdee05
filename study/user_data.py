"""Your own data: ``dataset: path/to/file.npz`` in Keras' layout, or ``dataset:
"module:function"`` returning those arrays.

The arrays are ``x_train``, ``y_train`` and optionally ``x_val``/``y_val`` and
``x_test``/``y_test``: inputs of any shape [N, ...] and integer class labels [N]. A function
returns them as a dict with those keys, or as Keras' ``load_data`` does:
``((x_train, y_train), (x_test, y_test))``. Everything is checked before any run exists, and
each problem is one line (ConfigError): pickles are never loaded (``allow_pickle=False``:
unpickling runs code). Without a validation split a sixth of the training examples is held
out, drawn from ``data_seed``, as for mnist. Inputs are used as given, unless the config's
``scale`` says how to scale them. The data's content (the file's bytes, or the function's
arrays) is hashed: the hash, not the path, names the data in the study's config hash, so a
changed file is a different study and a moved one the same.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np

from study.errors import ConfigError
from study.plugins import import_object

LOADER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
# Inputs and labels of these kinds (bool, signed, unsigned, float); anything else (strings,
# dates, complex numbers, Python objects) is not a number a model can take.
NUMERIC = "biuf"


def is_own(name: str) -> bool:
    """A file (``.npz``) or a ``module:function``, rather than a built-in dataset's name."""
    return name.endswith(".npz") or bool(LOADER.fullmatch(name))


def check_exists(name: str) -> None:
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"dataset: no file {name}" + (" (a folder)" if path.is_dir()
                                                             else ""))


def read(name: str) -> tuple[dict[str, np.ndarray], str]:
    """The arrays of a file or function, unchecked, and the sha256 of their content."""
    return _read_npz(Path(name)) if name.endswith(".npz") else _call(name)


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], str]:
    check_exists(str(path))
    data = path.read_bytes()  # hashed and parsed from the same bytes
    where = f"dataset {path}"
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ConfigError(f"{where}: a single array (.npy), not a .npz archive of "
                                  "x_train, y_train, ...: save it with np.savez")
            arrays = {key: archive[key] for key in archive.files}
    except ConfigError:
        raise
    except ValueError as err:
        if "Object arrays" in str(err):  # an array of Python objects, stored pickled
            raise ConfigError(f"{where}: holds pickled Python objects, which are never "
                              "loaded (unpickling runs code); save numeric arrays with "
                              "np.savez") from None
        if "pickled data" in str(err):  # numpy's guess for any file not .npz or .npy
            raise ConfigError(f"{where}: not a NumPy .npz archive (nor .npy; a pickle is "
                              "never loaded); save the arrays with np.savez") from None
        raise ConfigError(f"{where}: not a NumPy .npz archive ({_line(err)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{where}: not a NumPy .npz archive ({_line(err)})") from None
    return arrays, hashlib.sha256(data).hexdigest()


def _call(name: str) -> tuple[dict[str, np.ndarray], str]:
    where = f"dataset {name!r}"
    function = import_object("dataset", name, it=True, where="the working directory")
    try:
        value = function()
    except SystemExit as err:  # the user's code does not get to end the study
        raise ConfigError(f"{where} called sys.exit({err.code!r}): a loader returns "
                          "arrays") from None
    except Exception as err:
        raise ConfigError(f"{where} failed with {type(err).__name__}: {_line(err)}") from None
    arrays = _as_arrays(value, where)
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key} {array.dtype.str} {array.shape}\n".encode())
        if array.dtype.kind != "O":
            digest.update(array.tobytes())
    return arrays, digest.hexdigest()


def _as_arrays(value, where: str) -> dict[str, np.ndarray]:
    """A dict of the KEYS, or Keras' ``((x_train, y_train), (x_test, y_test))``."""
    if isinstance(value, dict):
        return {str(key): _array(v) for key, v in value.items()}
    if isinstance(value, tuple | list) and len(value) == 2 and all(
            isinstance(pair, tuple | list) and len(pair) == 2 for pair in value):
        (x, y), (x_test, y_test) = value
        return {"x_train": _array(x), "y_train": _array(y), "x_test": _array(x_test),
                "y_test": _array(y_test)}
    raise ConfigError(f"{where} returned {type(value).__name__}: return a dict with keys "
                      "x_train, y_train (x_val, y_val, x_test, y_test optional) or "
                      "((x_train, y_train), (x_test, y_test)) as keras.datasets do")


def _array(value) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError:  # ragged lists
        return np.asarray(value, dtype=object)


def check(arrays: dict[str, np.ndarray], name: str, classes: int | None) -> tuple[dict, int]:
    """The arrays checked (labels as int64 vectors) and the number of classes: declared,
    else the largest label + 1."""
    where = f"dataset {name}"
    unknown = sorted(set(arrays) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown array {unknown[0]!r}; valid: {', '.join(KEYS)}")
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ConfigError(f"{where}: no {key} (it has {', '.join(arrays) or 'no arrays'});"
                              " give x_train and y_train, and optionally x_val/y_val, "
                              "x_test/y_test")
    for split in ("val", "test"):
        if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
            raise ConfigError(f"{where}: x_{split} and y_{split} come together; give both "
                              "or neither")
    checked = {}
    for key, array in arrays.items():
        checked[key] = _inputs(array, key, where) if key[0] == "x" else \
            _labels(array, key, where)
    shape = checked["x_train"].shape[1:]
    for split in ("train", "val", "test"):
        if f"x_{split}" not in checked:
            continue
        x, y = checked[f"x_{split}"], checked[f"y_{split}"]
        if len(x) != len(y):
            raise ConfigError(f"{where}: x_{split} has {len(x):,} examples, y_{split} "
                              f"{len(y):,}; give one label per example")
        if x.shape[1:] != shape:
            raise ConfigError(f"{where}: x_{split} examples have shape {x.shape[1:]}, "
                              f"x_train's {shape}; every split needs the same")
        if len(x) == 0:
            raise ConfigError(f"{where}: x_{split} has no examples")
    top = max(int(y.max()) for key, y in checked.items() if key[0] == "y")
    n_classes = classes if classes is not None else top + 1
    if top >= n_classes:
        raise ConfigError(f"{where}: label {top} is out of range for classes: {classes} "
                          f"(labels are 0 to {classes - 1})")
    if n_classes < 2:
        raise ConfigError(f"{where}: every label is 0; a classifier needs at least 2 classes")
    if "x_val" not in checked and len(checked["x_train"]) // 6 < 1:
        raise ConfigError(f"{where}: {len(checked['x_train'])} training examples are too "
                          "few to hold out a sixth for validation; give at least 6, or "
                          "x_val and y_val")
    return checked, n_classes


def _inputs(x: np.ndarray, key: str, where: str) -> np.ndarray:
    if x.dtype.kind == "O":
        raise ConfigError(f"{where}: {key} holds Python objects, not numbers (ragged "
                          "lists?); give one numeric array")
    if x.dtype.kind not in NUMERIC:
        raise ConfigError(f"{where}: {key} has dtype {x.dtype}, not numbers; give "
                          "integers or floats")
    if x.ndim < 2:
        raise ConfigError(f"{where}: {key} has shape {x.shape}; inputs are [N, ...] (one "
                          "feature per example? x[:, None])")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(x), -1).any(axis=1))[0][0])
            raise ConfigError(f"{where}: {key} has {int(bad.sum()):,} NaN or infinite "
                              f"values (the first in example {first})")
    return x


def _labels(y: np.ndarray, key: str, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:  # Keras' cifar layout, [N, 1]
        y = y[:, 0]
    if y.dtype.kind not in NUMERIC:
        raise ConfigError(f"{where}: {key} has dtype {y.dtype}; labels are integers 0 to "
                          "C-1 (class names? np.unique(y, return_inverse=True))")
    if y.ndim != 1:
        raise ConfigError(f"{where}: {key} has shape {y.shape}; labels are integers of "
                          "shape [N] (one-hot rows? y.argmax(axis=1))")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            first = int(np.argwhere(~whole)[0][0])
            raise ConfigError(f"{where}: {key} has label {y[first].item()!r} (example {first}); "
                              "labels are whole numbers 0 to C-1")
    if len(y) and y.min() < 0:
        raise ConfigError(f"{where}: {key} has label {y.min().item()!r}; labels are 0 to C-1")
    return y.astype("int64")


def _line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."
