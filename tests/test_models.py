"""The model registry: pinned parameter counts, a user's own builder, and builders refused
before any MLflow run exists."""

from __future__ import annotations

import textwrap

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from study.config import ModelConfig
from study.errors import ConfigError
from study.models import build_model
from tests.conftest import CONFIGS

CNN = ModelConfig(kind="cnn", hidden=())


@pytest.mark.parametrize(("config", "input_shape", "expected"), [
    (ModelConfig(hidden=(30,)), (8, 8), 64 * 30 + 30 + 30 * 10 + 10),  # digits: 2,260
    (ModelConfig(hidden=(100,)), (40,), 40 * 100 + 100 + 100 * 10 + 10),  # mnist1d: 5,110
    (CNN, (8, 8), 3 * 3 * 8 + 8 + 4 * 4 * 8 * 10 + 10),  # conv 80, pooled 4x4x8 -> 10: 1,370
    (ModelConfig(kind="cnn"), (8, 8), 80 + 4 * 4 * 8 * 30 + 30 + 30 * 10 + 10),  # 4,260
    (CNN, (28, 28), 3 * 3 * 8 + 8 + 14 * 14 * 8 * 10 + 10),  # mnist: 15,770
    (ModelConfig(kind="cnn", filters=(8, 16), hidden=(32,)), (28, 28),
     80 + (3 * 3 * 8 * 16 + 16) + 7 * 7 * 16 * 32 + 32 + 32 * 10 + 10),
])
def test_parameter_counts_are_pinned(tf, config, input_shape, expected):
    for output in ("sigmoid", "softmax"):  # the output activation adds no parameters
        assert build_model(config, input_shape, 10, output).count_params() == expected


def test_the_cnn_needs_images(tf):
    with pytest.raises(ConfigError, match="cnn needs an image dataset"):
        build_model(CNN, (40,), 10, "sigmoid")


BUILDERS = '''
import keras

def tiny(input_shape, n_classes, output):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(12, activation="tanh"),
                             keras.layers.Dense(n_classes, activation=output)])

def not_a_model(input_shape, n_classes, output):
    return "a model"

def wrong_outputs(input_shape, n_classes, output):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(3, activation=output)])

def batch_norm(input_shape, n_classes, output):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.BatchNormalization(),
                             keras.layers.Dense(n_classes, activation=output)])

def broken(input_shape, n_classes, output):
    raise RuntimeError("my bug")
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(BUILDERS))
    monkeypatch.chdir(tmp_path)  # a builder is importable from the working directory
    return tmp_path


def _run(user_dir, builder):
    uri = f"sqlite:///{user_dir / 'mlflow.db'}"
    code = main(["run", str(CONFIGS / "smoke.yaml"), "--set", f"model={{builder: "
                 f"'my_models:{builder}'}}", "--set", "epochs=1", "--tracking-uri", uri,
                 "--quiet"])
    return code, uri


def test_a_users_own_builder_runs_through_model_builder(tf, user_dir):
    code, uri = _run(user_dir, "tiny")
    assert code == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              "tags.`study.arm` LIKE '%'")
    assert len(runs) == 8
    params = 64 * 12 + 12 + 12 * 10 + 10
    assert {r.data.params["model"] for r in runs} == {f"my_models:tiny ({params} params)"}
    control = [r for r in runs if r.data.params["init"] == "glorot"]
    # it learns: every control arm above chance (0.1) after one epoch, cross-entropy well above
    assert all(r.data.metrics["val_accuracy"] > 0.15 for r in control)
    assert all(r.data.metrics["val_accuracy"] > 0.5 for r in control
               if r.data.params["loss"] == "cce")


@pytest.mark.parametrize(("builder", "message"), [
    ("not_a_model", "returned str, not a keras.Model"),
    ("wrong_outputs", "output shape (None, 3), the dataset needs (None, 10)"),
    ("batch_norm", "has non-trainable state"),
    ("broken", "failed with RuntimeError: my bug"),
    ("missing", "cannot import 'my_models:missing'"),
])
def test_a_bad_builder_fails_before_any_run(tf, user_dir, capsys, builder, message):
    code, uri = _run(user_dir, builder)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert MlflowClient(uri).search_experiments(filter_string="name = 'smoke'") == []
