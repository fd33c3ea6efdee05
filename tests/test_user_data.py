"""Your own data: a .npz in Keras' layout or a module:function, split as the built-in
datasets are, scaled only as asked, and named in the config hash by its content.
(The refusals are rows of the README's bad-input table, run by tests/test_bad_input.py.)"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest

from study.config import WHERE_KEYS, config_hash, load_config
from study.data import load_dataset, load_study_data
from study.errors import ConfigError
from tests.conftest import CONFIGS


def _arrays(n=120, shape=(28, 28), seed=0, **extra):
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            "y_train": np.arange(n) % 10} | extra


def test_without_x_val_a_sixth_is_held_out_by_data_seed_and_nothing_is_scaled(tmp_path):
    arrays = _arrays()
    np.savez(tmp_path / "d.npz", **arrays)
    s = load_dataset(str(tmp_path / "d.npz"), 0)
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (100, 20, 0)
    assert s.input_shape == (28, 28) and s.n_classes == 10
    assert s.x_train.max() > 1  # pixel values as given: no scale was asked for
    flat = arrays["x_train"].reshape(120, -1).astype("float32")
    both = np.concatenate([s.x_train, s.x_val])  # every example once, train or val
    assert sorted(map(bytes, both)) == sorted(map(bytes, flat))
    order = np.random.default_rng(0).permutation(120)  # as mnist's holdout: val first
    np.testing.assert_array_equal(s.x_val, flat[order[:20]])
    np.testing.assert_array_equal(s.y_val, arrays["y_train"][order[:20]])
    again, other = load_dataset(str(tmp_path / "d.npz"), 0), load_dataset(
        str(tmp_path / "d.npz"), 1)
    np.testing.assert_array_equal(again.x_val, s.x_val)
    assert not np.array_equal(other.x_val, s.x_val)


def test_given_splits_are_kept_and_scale_divides_or_standardizes(tmp_path):
    train, val, test = _arrays(30, seed=1), _arrays(12, seed=2), _arrays(6, seed=3)
    np.savez(tmp_path / "d.npz", **train, x_val=val["x_train"], y_val=val["y_train"],
             x_test=test["x_train"], y_test=test["y_train"][:, None])  # [N, 1] labels
    s = load_dataset(str(tmp_path / "d.npz"), 0, scale=255.0)
    np.testing.assert_array_equal(s.x_val * np.float32(255),
                                  val["x_train"].reshape(12, -1).astype("float32"))
    np.testing.assert_allclose(s.x_train, train["x_train"].reshape(30, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(s.y_test, test["y_train"])

    class Standardize:  # the config's {subtract, divide}
        subtract, divide = 100.0, 50.0

    s = load_dataset(str(tmp_path / "d.npz"), 0, scale=Standardize())
    np.testing.assert_allclose(s.x_test, (test["x_train"].reshape(6, -1) - 100.0) / 50.0,
                               rtol=1e-6)


@pytest.mark.parametrize(("shape", "input_shape"),
                         [((40,), (40,)), ((8, 8), (8, 8)), ((6, 6, 3), (6, 6, 3))])
def test_any_input_shape_reaches_the_models(tmp_path, shape, input_shape):
    np.savez(tmp_path / "d.npz", **_arrays(12, shape))
    s = load_dataset(str(tmp_path / "d.npz"), 0)
    assert s.input_shape == input_shape
    assert s.inputs("val").shape == (2, *input_shape)


def test_classes_declared_beyond_the_labels_seen(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((12, 3)), y_train=np.arange(12) % 3)
    assert load_dataset(str(tmp_path / "d.npz"), 0).n_classes == 3
    assert load_dataset(str(tmp_path / "d.npz"), 0, classes=5).n_classes == 5


def _config(tmp_path, dataset, *overrides):
    text = (CONFIGS / "smoke.yaml").read_text().replace("dataset: digits",
                                                        f"dataset: {dataset}")
    (tmp_path / "study.yaml").write_text(text)
    return load_config(tmp_path / "study.yaml", list(overrides))


def test_a_path_in_the_config_is_relative_to_its_folder_one_given_with_set_to_the_cwd(
        tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert _config(tmp_path, "data/d.npz").dataset == str(tmp_path / "data" / "d.npz")
    config = _config(tmp_path, "digits", "dataset=mine.npz")
    assert config.dataset == str(tmp_path / "elsewhere" / "mine.npz")


def test_the_data_content_not_its_path_enters_the_config_hash(tmp_path):
    np.savez(tmp_path / "a.npz", **_arrays(12))
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "a.npz").write_bytes((tmp_path / "a.npz").read_bytes())
    np.savez(tmp_path / "b.npz", **_arrays(12, seed=5))

    def digest(path):
        config = _config(tmp_path, path, "scale=255")
        return config_hash(config, load_study_data(config).source_sha256)

    assert digest("a.npz") == digest("moved/a.npz")  # same bytes elsewhere: the same study
    assert digest("a.npz") != digest("b.npz")  # other bytes: another study
    sha = hashlib.sha256((tmp_path / "a.npz").read_bytes()).hexdigest()
    settings = _config(tmp_path, "a.npz", "scale=255").model_dump(mode="json",
                                                                  exclude=WHERE_KEYS)
    settings["dataset"] = {"sha256": sha}
    del settings["classes"]  # not given: left out, as for a built-in study
    assert digest("a.npz") == hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def test_a_built_in_study_keeps_the_hash_it_had_before_user_data(smoke_config):
    settings = smoke_config.model_dump(mode="json", exclude=WHERE_KEYS | {"scale", "classes"})
    assert config_hash(smoke_config) == hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@pytest.fixture
def loader_module(tmp_path, monkeypatch):
    """my_data.py in the working directory, as a user's module would be."""
    (tmp_path / "my_data.py").write_text(
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "x, y = rng.normal(size=(60, 5)), np.arange(60) % 3\n"
        "def as_dict():\n"
        "    return {'x_train': x, 'y_train': y}\n"
        "def keras_style():\n"
        "    return (x, y), (x[:9], y[:9])\n"
        "def broken():\n"
        "    raise OSError('no such share')\n"
        "def wrong():\n"
        "    return [1, 2, 3]\n"
        "not_a_function = 3\n")
    # modules whose own code fails as they are imported
    (tmp_path / "my_raising_data.py").write_text("raise OSError('no such share')\n")
    (tmp_path / "my_exiting_data.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for module in ("my_data", "my_raising_data", "my_exiting_data"):
        sys.modules.pop(module, None)


def test_a_loader_returns_a_dict_or_keras_load_data_tuples(loader_module):
    a, b = load_dataset("my_data:as_dict", 0), load_dataset("my_data:keras_style", 0)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (50, 10, 0)
    assert (len(b.y_train), len(b.y_val), len(b.y_test)) == (50, 10, 9)
    np.testing.assert_array_equal(a.x_val, b.x_val)  # the same arrays, split alike
    assert a.n_classes == 3 and a.input_shape == (5,)
    assert a.source_sha256 != b.source_sha256  # b has a test split: other data
    assert a.source_sha256 == load_dataset("my_data:as_dict", 0).source_sha256


@pytest.mark.parametrize(("name", "message"), [
    ("my_data:broken", "dataset 'my_data:broken' failed with OSError: no such share"),
    ("my_data:wrong", "dataset 'my_data:wrong' returned list: return a dict with keys"),
    ("my_data:nothing", "dataset 'my_data:nothing': cannot import it"),
    ("my_data:not_a_function", "dataset 'my_data:not_a_function' is not callable$"),
    ("my_raising_data:load",
     "dataset 'my_raising_data:load': importing it failed with OSError: no such share$"),
    ("my_exiting_data:load",
     r"dataset 'my_exiting_data:load': importing it called sys\.exit\(3\)$"),
])
def test_a_loader_that_fails_is_one_line(loader_module, name, message):
    with pytest.raises(ConfigError, match="^" + message) as err:
        load_dataset(name, 0)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_rerun_resumes_the_same_bytes_anywhere_and_retrains_changed_ones(tmp_path):
    """In the store: the study over a moved copy of the file is the one already trained;
    over a changed file it is another study, trained again."""
    from study.run import run_study

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x_train=rng.random((60, 4, 4)), y_train=np.arange(60) % 3)
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "a.npz").write_bytes((tmp_path / "a.npz").read_bytes())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def run(path):
        config = _config(tmp_path, path, "losses=[cce]", "inits={glorot: []}")
        return run_study(config, uri, progress=False)

    first = run("a.npz")
    assert len(first.results) == 1 and not first.skipped
    assert run("moved/a.npz").skipped == list(first.results)  # same bytes: nothing to train
    np.savez(tmp_path / "moved" / "a.npz", x_train=rng.random((60, 4, 4)),
             y_train=np.arange(60) % 3)
    assert len(run("moved/a.npz").results) == 1  # other bytes: another study, trained
