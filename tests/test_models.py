"""The model registry: pinned parameter counts, a user's own builder, and builders refused
before any MLflow run exists."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from study.config import ModelConfig
from study.errors import ConfigError
from study.models import build_model, output_activation
from tests.conftest import CONFIGS, ROOT

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
import sys

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

def exits(input_shape, n_classes, output):
    sys.exit(7)

def interrupted(input_shape, n_classes, output):
    raise KeyboardInterrupt

def wrong_reshape(input_shape, n_classes, output):  # Keras' own error: lines, bold text
    return keras.Sequential([keras.Input(input_shape), keras.layers.Reshape((7, 7)),
                             keras.layers.Flatten(),
                             keras.layers.Dense(n_classes, activation=output)])

class Subclassed(keras.Model):
    def __init__(self, n_classes, output):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(n_classes, activation=output)

    def call(self, x):
        return self.dense(self.flatten(x))

def subclassed(input_shape, n_classes, output):  # never called: no output shape yet
    return Subclassed(n_classes, output)

def no_input(input_shape, n_classes, output):  # no keras.Input: Keras builds on first use
    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(12, activation="tanh"),
                             keras.layers.Dense(n_classes, activation=output)])

def logits(input_shape, n_classes, output):  # the activation left out: the issue's trap
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(n_classes)])

def softmax_layer(input_shape, n_classes, output):  # functional, a Softmax layer last
    x = keras.Input(input_shape)
    z = keras.layers.Dense(n_classes)(keras.layers.Flatten()(x))
    return keras.Model(x, keras.layers.Softmax()(z))

def no_such_shape(input_shape, n_classes, output):  # no keras.Input, and wrong for 8x8
    return keras.Sequential([keras.layers.Reshape((7, 7)), keras.layers.Flatten(),
                             keras.layers.Dense(n_classes, activation=output)])
'''
# A module that ends the program as it is imported.
EXITS_ON_IMPORT = """import sys
sys.exit(7)

def build(input_shape, n_classes, output):
    pass
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(BUILDERS))
    (tmp_path / "quits_on_import.py").write_text(EXITS_ON_IMPORT)
    monkeypatch.chdir(tmp_path)  # a builder is importable from the working directory
    return tmp_path


def _run(user_dir, builder, *overrides: str):
    uri = f"sqlite:///{user_dir / 'mlflow.db'}"
    path = builder if ":" in builder else f"my_models:{builder}"
    sets = [word for override in overrides for word in ("--set", override)]
    code = main(["run", str(CONFIGS / "smoke.yaml"), "--set", f"model={{builder: "
                 f"'{path}'}}", "--set", "epochs=1", *sets, "--tracking-uri", uri, "--quiet"])
    return code, uri


def test_a_users_own_builder_runs_through_model_builder(tf, user_dir):
    # a loss on softmax outputs and one on sigmoid outputs: the builder is called for each
    code, uri = _run(user_dir, "tiny", "losses=[cce, mse]")
    assert code == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              "tags.`study.arm` LIKE '%'")
    assert len(runs) == 4
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
    ("exits", "model.builder 'my_models:exits' called sys.exit(7): a builder must return a "
              "keras.Model, not end the program"),
    ("quits_on_import:build", "called sys.exit(7)"),
    ("wrong_reshape", "failed with ValueError: Exception encountered when calling "
                      "Reshape.call(). The total size of the tensor must be unchanged. "
                      "Received: input_shape=(8, 8), target_shape=(7, 7)"),
    ("subclassed", "returned a model without a known output shape: build it from keras.Input"),
    ("logits", "model.builder 'my_models:logits': its last layer ('dense"),
])
def test_a_bad_builder_fails_before_any_run(tf, user_dir, capsys, builder, message):
    code, uri = _run(user_dir, builder)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "\x1b" not in err  # no terminal escapes (Keras writes parts of its errors in bold)
    assert not (user_dir / "mlflow.db").exists()  # no store, so no MLflow run


def test_ctrl_c_in_a_builder_interrupts_the_study(tf, user_dir, capsys):
    code, _ = _run(user_dir, "interrupted")
    assert code == 130
    assert capsys.readouterr().err.strip() == "interrupted: 0 arms kept, rerun to finish"
    assert not (user_dir / "mlflow.db").exists()


def test_a_builder_cannot_choose_the_programs_exit_code(user_dir):
    """As a real process: a builder's sys.exit(7) is bad input (exit 2, one line), not the
    study's exit code. The builders sit in the working directory; PYTHONPATH makes the
    worktree's code the one that runs."""
    builder = "my_models:exits"
    process = subprocess.run(
        [sys.executable, "-m", "study", "run", str(CONFIGS / "smoke.yaml"), "--set",
         f"model={{builder: '{builder}'}}", "--tracking-uri",
         f"sqlite:///{user_dir / 'mlflow.db'}", "--quiet"],
        cwd=user_dir, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
        text=True, timeout=300)
    assert process.returncode == 2, process.stderr
    assert process.stderr.splitlines() == [
        f"error: model.builder {builder!r} called sys.exit(7): a builder must return a "
        "keras.Model, not end the program"]
    assert [p.name for p in user_dir.iterdir()  # no store, nothing but the user's modules
            if p.suffix != ".py" and p.name != "__pycache__"] == []


def test_the_builder_is_told_the_output_activation_and_its_last_layer_is_checked(tf, user_dir):
    """The activation the loss needs is the builder's third argument; a last layer that
    applies another (logits where a softmax is needed, a softmax where a sigmoid is) is
    refused, whatever layer applies it."""
    def build(name, output):
        return build_model(ModelConfig(builder=f"my_models:{name}"), (8, 8), 10, output)

    for output in ("sigmoid", "softmax", "linear"):
        assert output_activation(build("tiny", output)) == output
    with pytest.raises(ConfigError, match="its last layer \\('dense.*'\\) applies linear, the "
                       "loss needs softmax outputs: end the model with Dense\\(n_classes, "
                       "activation=output_activation\\), the builder's third argument"):
        build("logits", "softmax")
    assert output_activation(build("softmax_layer", "softmax")) == "softmax"
    with pytest.raises(ConfigError, match="applies softmax, the loss needs sigmoid outputs"):
        build("softmax_layer", "sigmoid")


def test_a_sequential_without_an_input_is_built_on_the_datasets_input_shape(tf, user_dir):
    model = build_model(ModelConfig(builder="my_models:no_input"), (8, 8), 10, "softmax")
    assert model.output_shape == (None, 10)
    assert model.count_params() == 64 * 12 + 12 + 12 * 10 + 10
    with pytest.raises(ConfigError, match="its Sequential cannot take inputs of shape "
                                          "\\(8, 8\\) \\(ValueError: "):
        build_model(ModelConfig(builder="my_models:no_such_shape"), (8, 8), 10, "softmax")
