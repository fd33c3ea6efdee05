"""A loss of the user's own (``losses: [{name, fn, output, targets}]``): the probe that refuses
what the trainers cannot use, and training against references: a custom loss equal to a
built-in trains bit for bit as the built-in does, and both trainers agree on losses of
each kind Keras takes (function, Loss subclass, Loss instance, logits)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from study.config import CustomLoss, load_config
from study.errors import ConfigError
from study.grid import expand_grid
from study.losses import custom_spec, probe
from study.train import batched, reference
from tests.conftest import CONFIGS

# The module name is this test's own: modules are cached per process, and other tests write
# modules of their own names.
MODULE = "own_loss_cases"
LOSSES = '''
import keras
from keras import ops


def cce(y_true, y_pred):  # Keras' own function: the built-in cce, wrapped as compile() does
    return keras.losses.categorical_crossentropy(y_true, y_pred)


def focal(y_true, y_pred, gamma=2.0):
    p = ops.clip(y_pred, 1e-7, 1.0)
    return -ops.sum(y_true * ops.power(1.0 - p, gamma) * ops.log(p), axis=-1)


cce_logits = keras.losses.CategoricalCrossentropy(from_logits=True)
summed = keras.losses.CategoricalCrossentropy(reduction="sum")


def batch_mean(y_true, y_pred):  # already reduced: one value for the batch
    return ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))


def centred(y_true, y_pred):  # each example's value minus the batch's mean: mixes examples
    values = keras.losses.categorical_crossentropy(y_true, y_pred)
    return values - ops.mean(values)


def not_finite(y_true, y_pred):
    return ops.log(y_pred - 2.0)[:, 0]


def flat(y_true, y_pred):  # no gradient: argmax is a step function
    return ops.cast(ops.argmax(y_pred, axis=-1) != ops.argmax(y_true, axis=-1), "float32")


def broken(y_true, y_pred):
    raise RuntimeError("my bug")


class NotALoss:
    pass


class NeedsArguments(keras.losses.Loss):
    def __init__(self, gamma):
        super().__init__()

    def call(self, y_true, y_pred):
        return keras.losses.categorical_crossentropy(y_true, y_pred)


three = 3
'''


@pytest.fixture(scope="session")
def own_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(LOSSES))
    import sys

    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def _spec(attribute: str, output: str = "softmax", targets: str = "one_hot"):
    return custom_spec(CustomLoss(name="mine", fn=f"{MODULE}:{attribute}", output=output,
                                  targets=targets))


@pytest.mark.parametrize(("attribute", "message"), [
    ("batch_mean", "losses.mine: gives values of shape () for a batch of 8; it must give one "
                   "value per example"),
    ("centred", "losses.mine: an example's value depends on the other examples of its batch"),
    ("not_finite", "losses.mine: gives nan on valid softmax outputs"),
    ("flat", "losses.mine: has no finite, nonzero gradient with respect to the model's outputs"),
    ("broken", "losses.mine: calling it on targets (8, 10) and softmax outputs (8, 10) failed "
               "with RuntimeError: my bug"),
    ("summed", "losses.mine.fn: 'own_loss_cases:summed' has reduction 'sum'"),
    ("NotALoss", "is a class but not a keras.losses.Loss"),
    ("NeedsArguments", "cannot be made with no arguments (TypeError"),
    ("three", "losses.mine.fn: 'own_loss_cases:three' is not callable"),
    ("missing", "losses.mine.fn: cannot import 'own_loss_cases:missing'"),
])
def test_the_probe_refuses_what_the_trainers_cannot_use(tf, own_module, attribute, message):
    with pytest.raises(ConfigError) as caught:
        probe(_spec(attribute), 10)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("attribute", "output", "targets"), [
    ("cce", "softmax", "one_hot"), ("focal", "softmax", "one_hot"),
    ("cce_logits", "linear", "one_hot"),
])
def test_the_probe_accepts_per_example_losses(tf, own_module, attribute, output, targets):
    probe(_spec(attribute, output, targets), 10)


def test_the_probe_accepts_keras_own_losses_of_every_kind(tf):
    for fn, targets in [("keras.losses:CategoricalFocalCrossentropy", "one_hot"),
                        ("keras.losses:sparse_categorical_crossentropy", "sparse"),
                        ("keras.losses:Hinge", "one_hot")]:
        probe(custom_spec(CustomLoss(name="k", fn=fn, output="softmax", targets=targets)), 10)


OWN = (f"losses=[cce, scce, {{name: fn_cce, fn: '{MODULE}:cce', output: softmax, "
       "targets: one_hot}, {name: class_cce, fn: 'keras.losses:CategoricalCrossentropy', "
       "output: softmax, targets: one_hot}, {name: fn_scce, "
       "fn: 'keras.losses:sparse_categorical_crossentropy', output: softmax, targets: sparse}, "
       f"{{name: cce_logits, fn: '{MODULE}:cce_logits', output: linear, targets: one_hot}}, "
       f"{{name: focal, fn: '{MODULE}:focal', output: softmax, targets: one_hot}}]")


@pytest.fixture(scope="session")
def own_config(own_module):
    return load_config(CONFIGS / "smoke.yaml", [OWN, "epochs=1", "batch_size=32",
                                                "inits={glorot: [], saturated_wrong: [4]}"])


@pytest.fixture(scope="session")
def batched_results(tf, own_config, digits):
    return {arm.key: result for arm, result in batched.train_arms(expand_grid(own_config),
                                                                 own_config, digits)}


def _same_start(results, loss, like):
    """Each arm of ``loss`` with the arm of loss ``like`` from the same start."""
    pairs = []
    for key, result in results.items():
        parts = key.split("|")
        if parts[0] == loss:
            pairs.append((result, results["|".join([like, *parts[1:]])]))
    assert pairs
    return pairs


@pytest.mark.parametrize(("loss", "like"), [("fn_cce", "cce"), ("class_cce", "cce"),
                                            ("fn_scce", "scce")])
def test_a_custom_loss_equal_to_a_built_in_trains_bit_for_bit_as_it(batched_results, loss,
                                                                    like):
    for mine, theirs in _same_start(batched_results, loss, like):
        assert mine.history == theirs.history  # every metric, every step, float64 bits


def test_a_logits_loss_follows_cce_and_its_yardsticks_read_a_softmax(batched_results):
    """cce from logits on a linear output is cce on a softmax output (Keras computes the
    latter from the logits too): the same curves, val_nll and val_brier included, which
    the harness computes from the softmax of the logits."""
    for mine, theirs in _same_start(batched_results, "cce_logits", "cce"):
        assert mine.history.keys() == theirs.history.keys()
        for name in mine.history:
            np.testing.assert_allclose(mine.series(name), theirs.series(name), rtol=1e-5,
                                       atol=1e-5, err_msg=name)


def test_both_trainers_agree_on_custom_losses(tf, own_config, digits, batched_results):
    """The reference trainer (Keras fit with the user's loss) against the batched one, 1e-5
    over an epoch, as for the built-in losses: a function from the control start, a Loss
    instance on logits from the saturated one (a Keras fit per arm costs seconds)."""
    arms = [arm for arm in expand_grid(own_config)
            if (arm.loss, arm.init) in {("focal", "glorot"), ("cce_logits", "saturated_wrong")}]
    assert len(arms) == 2
    for arm, expected in reference.train_arms(arms, own_config, digits):
        actual = batched_results[arm.key]
        assert expected.history.keys() == actual.history.keys()
        for name in expected.history:
            assert expected.steps(name) == actual.steps(name)
            np.testing.assert_allclose(actual.series(name), expected.series(name), rtol=1e-5,
                                       atol=1e-5, err_msg=f"{arm.key} {name}")


def test_focal_loss_differs_from_cce(batched_results):
    """The test above is not comparing cce with itself: focal's curves are its own."""
    for mine, theirs in _same_start(batched_results, "focal", "cce"):
        assert not np.allclose(mine.series("train_loss"), theirs.series("train_loss"))


def test_a_losss_colour_is_stable_across_processes_and_not_a_built_ins():
    """Chosen by a checksum of the name: a fresh interpreter (another hash seed) agrees."""
    import subprocess
    import sys

    from study.palette import LOSS_COLOURS, colour
    from tests.conftest import ROOT

    names = ["focal", "keras_focal", "cce_logits"]
    code = f"from study.palette import colour; print([colour(n) for n in {names!r}])"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                           text=True, env={"PYTHONHASHSEED": "123"}, check=True).stdout
    assert other.strip() == str([colour(n) for n in names])
    assert len({colour(n) for n in names}) == 3  # the example's three: three colours
    assert not {colour(n) for n in names} & set(LOSS_COLOURS.values())


def test_a_config_with_own_losses_dumps_and_validates_again(own_config):
    """The parent run stores the dumped config: losses by name, the user's in
    custom_losses, which validates to the same config (and hash)."""
    from study.config import config_hash, validate

    raw = own_config.model_dump(mode="json")
    assert raw["losses"][:3] == ["cce", "scce", "fn_cce"]
    assert raw["custom_losses"][0] == {"name": "fn_cce", "fn": f"{MODULE}:cce",
                                       "output": "softmax", "targets": "one_hot"}
    again = validate(raw)
    assert again == own_config and config_hash(again) == config_hash(own_config)
