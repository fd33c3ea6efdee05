"""Every elementwise Keras optimizer, norm clipping and Keras' learning-rate schedules in the
batched trainer: each arm as Keras ``fit`` trains it (the reference trainer), and bit for bit
the same in any slot of any group. What the batched trainer cannot run, the reference
trainer runs: Lamb, BatchNormalization, Dropout, callbacks. (examples/cosine_schedule.yaml end
to end: tests/test_examples.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from study.config import config_hash, load_config
from study.errors import ConfigError
from study.grid import expand_grid
from study.optimizers import OPTIMIZERS
from study.train import batched, reference
from tests.conftest import CONFIGS
from tests.test_batched import Traced

ELEMENTWISE = sorted(name for name, spec in OPTIMIZERS.items() if spec.mixes is None)
COSINE = "{name: cosine_decay, decay_steps: 25, warmup_target: 0.3, warmup_steps: 8}"
# Each optimizer with its own options, at two rates (one group of two starts x two rates
# each); each kind of clipping and each Keras schedule rides on one of them, so every one is
# checked against Keras fit without a group (1.5-3 s of tracing) and a fit of its own.
VARIANTS = {
    "sgd": f"{{name: sgd, lr: [0.05, 0.1], momentum: 0.9, nesterov: true, schedule: {COSINE}}}",
    "adam": "{name: adam, lr: [0.01, 0.03], amsgrad: true, global_clipnorm: 0.5}",
    "adamw": "{name: adamw, lr: [0.01, 0.03], weight_decay: 0.01, schedule: {name: "
             "piecewise_constant_decay, boundaries: [10, 20], factors: [1, 0.3, 0.1]}}",
    "rmsprop": "{name: rmsprop, lr: [0.003, 0.01], momentum: 0.5, centered: true, "
               "clipvalue: 0.02}",
    "adagrad": "{name: adagrad, lr: [0.1, 0.3], initial_accumulator_value: 0.1, clipnorm: 0.3}",
    "adamax": "{name: adamax, lr: [0.01, 0.03], beta_1: 0.8, schedule: {name: "
              "exponential_decay, decay_steps: 8, decay_rate: 0.7, staircase: true}}",
    "nadam": "{name: nadam, lr: [0.01, 0.03], schedule: {name: cosine_decay, "
             "decay_steps: 30, alpha: 0.1}}",
    "adadelta": "{name: adadelta, lr: [1.0, 3.0], rho: 0.9, schedule: {name: "
                "cosine_decay_restarts, first_decay_steps: 10, m_mul: 0.8}}",
    "ftrl": ("{name: ftrl, lr: [0.1, 0.3], l1_regularization_strength: 0.001, "
             "l2_regularization_strength: 0.001, l2_shrinkage_regularization_strength: 0.001, "
             "beta: 0.1, learning_rate_power: -0.4, label: ftrl-l1-l2, schedule: {name: "
             "polynomial_decay, decay_steps: 30, end_learning_rate: 0.05, power: 2.0}}"),
    "lion": "{name: lion, lr: [0.001, 0.003], schedule: {name: inverse_time_decay, "
            "decay_steps: 4, decay_rate: 0.5}}",
}

def _config(*overrides):
    """The smoke study with cce alone, one epoch; crossings of 0.5 alone (every step is
    evaluated until an arm crosses its last level)."""
    return load_config(CONFIGS / "smoke.yaml", ["epochs=1", "losses=[cce]", "levels=[0.5]",
                                                *overrides])


# At batch 32 (33 steps an epoch), where the batch sums' slot independence is hardest.
BATCH = "batch_size=32"


@pytest.fixture(scope="session")
def variants(tf, digits):
    """Every variant's config (one study), its arms, the batched trainer's results in grid
    order, and its groups as traced for them (``Traced``), for the tests that train the
    same groups again: each group is traced once."""
    config = _config(BATCH, f"optimizers=[{', '.join(VARIANTS.values())}]")
    arms = expand_grid(config)
    traced = Traced(config, digits)
    return config, arms, _train(batched, config, arms, **traced(arms)), traced


def _train(module, config, arms, **warm):
    from study.data import load_dataset

    digits = load_dataset("digits", 0)
    return {arm.key: result for arm, result in module.train_arms(arms, config, digits, **warm)}


def test_every_optimizer_clipping_and_schedule_has_a_variant():
    from typing import get_args

    from study.optimizers import CLIPPING
    from study.schedules import SCHEDULES

    assert set(ELEMENTWISE) <= set(VARIANTS)
    config = _config(f"optimizers=[{', '.join(VARIANTS.values())}]")
    assert [o.name for o in config.optimizers] == list(VARIANTS)  # one each, keyed by name
    assert {k for o in config.optimizers for k in o.options if k in CLIPPING} == set(CLIPPING)
    assert {o.schedule.name for o in config.optimizers if o.schedule} == {
        get_args(schedule.model_fields["name"].annotation)[0] for schedule in SCHEDULES}
    assert {"nadam", "adamax", "lion", "ftrl", "adadelta"} <= set(ELEMENTWISE)
    assert {"lamb", "adafactor", "muon"} <= set(OPTIMIZERS) - set(ELEMENTWISE)


@pytest.mark.slow
def test_an_arms_values_do_not_depend_on_its_slot_or_group(tf, variants):
    """In reverse order every arm sits in another slot beside other arms; alone, it is the
    one arm of its group (padded to 16 slots): the same bits as in grid order. (Alone for
    what the batched trainer adds to Keras' update: Nadam's shared state, the per-arm
    clipping, a schedule built on the slots' rates.) Each group is the one traced for the
    grid order, loaded afresh, as a study's chunks reuse their group."""
    config, arms, forward, traced = variants
    assert len(arms) == 2 * 2 * len(VARIANTS)
    reverse = _train(batched, config, arms[::-1], **traced(arms))
    alone = {}
    for optimizer in config.optimizers:
        if optimizer.name == "nadam" or optimizer.schedule or set(optimizer.options) & {
                "clipnorm", "global_clipnorm"}:
            # its group's last arm: slot 3 in grid order, slot 0 alone
            last = [arm for arm in arms if arm.optimizer == optimizer.key][-1]
            alone.update(_train(batched, config, [last], **traced([last])))
    assert len(alone) == 9  # every schedule (nadam's among them), both norm clippings
    for key, result in forward.items():
        assert reverse[key].history == result.history, key
        if key in alone:
            assert alone[key].history == result.history, key
    moving = [np.ptp(r.series("val_accuracy")) > 0.05 for r in forward.values()]
    assert sum(moving) >= len(moving) // 2  # they train, not sit still (in 33 steps, some
    # saturated starts at the lower rate do not move yet)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_matches_keras_fit(tf, variants, variant):
    """An arm from the saturated start at the higher rate, as Keras fit trains it with the
    same optimizer, clipping and schedule: every metric at every logged step within 1e-5."""
    config, arms, forward, _ = variants
    index = list(VARIANTS).index(variant)
    key = config.optimizers[index].key
    arm = next(a for a in arms[::-1] if a.optimizer == key and a.init == "saturated_wrong")
    expected = _train(reference, config, [arm])[arm.key]
    actual = forward[arm.key]
    assert expected.history.keys() == actual.history.keys()
    for name in expected.history:
        assert expected.steps(name) == actual.steps(name), name
        np.testing.assert_allclose(actual.series(name), expected.series(name), rtol=1e-5,
                                   atol=1e-5, err_msg=f"{arm.key} {name}")


def test_the_schedule_and_clipping_enter_the_digest_and_the_optimizers_name():
    plain = _config("optimizer={name: sgd, lr: 0.5}")
    cosine = _config(f"optimizer={{name: sgd, lr: 0.5, schedule: {COSINE}}}")
    longer = _config(f"optimizer={{name: sgd, lr: 0.5, schedule: {COSINE.replace('25', '26')}}}")
    clipped = _config("optimizer={name: sgd, lr: 0.5, clipnorm: 1.0}")
    assert len({config_hash(c) for c in (plain, cosine, longer, clipped)}) == 4
    assert cosine.optimizers[0].key == \
        "sgd+cosine_decay(decay_steps=25,warmup_target=0.3,warmup_steps=8)"
    assert clipped.optimizers[0].key == "sgd(clipnorm=1)"


@pytest.mark.parametrize(("optimizer", "reason"), [
    ("{name: lamb, lr: 0.01}", "its trust ratio is the norm of a whole variable"),
    ("{name: muon, lr: 0.01, momentum: 0.9}", "it orthogonalizes each 2-D kernel as a whole"),
])
def test_what_mixes_arms_runs_with_the_reference_trainer(tf, optimizer, reason):
    """Lamb's trust ratio is a per-variable norm, Muon's step an orthogonalized matrix:
    refused batched, naming the trainer, and trained by Keras fit with trainer: reference."""
    name = optimizer.split(",")[0].split()[-1]
    with pytest.raises(ConfigError, match=f"the batched trainer cannot run {name}: {reason}"
                                          ".* use trainer: reference"):
        _config(f"optimizer={optimizer}")
    config = _config(f"optimizer={optimizer}", "trainer=reference", "inits={glorot: []}")
    (result,) = _train(reference, config, expand_grid(config)).values()
    assert result.series("val_accuracy")[-1] > 0.5


def test_an_optimizer_this_keras_lacks_is_one_line_before_any_run(tf, tmp_path, monkeypatch,
                                                                  capsys):
    """Muon came with a recent Keras: with a Keras that has no such class the study stops
    at its pre-flight, exit 2, one line, no store."""
    import keras

    from study.cli import main

    monkeypatch.delattr(keras.optimizers, "Muon")
    code = main(["run", str(CONFIGS / "smoke.yaml"), "--set", "optimizer={name: muon, lr: 0.01}",
                 "--set", "trainer=reference", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: optimizer: muon is keras.optimizers.Muon, which Keras ")
    assert "upgrade Keras" in err[0] and not (tmp_path / "mlflow.db").exists()


# A user's model with what only the reference trainer runs.
def batchnorm_mlp(input_shape, n_classes, output):
    import keras

    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(30),
                             keras.layers.BatchNormalization(),
                             keras.layers.Activation("sigmoid"),
                             keras.layers.Dense(n_classes, activation=output)])


def dropout_mlp(input_shape, n_classes, output):
    import keras

    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(30, activation="sigmoid"),
                             keras.layers.Dropout(0.2),
                             keras.layers.Dense(n_classes, activation=output)])


@pytest.mark.parametrize(("builder", "refusal"), [
    ("batchnorm_mlp", "has non-trainable state .*: the batched trainer cannot run it .*"
                      "BatchNormalization.*use trainer: reference"),
    ("dropout_mlp", r"has random layers \(e.g. Dropout\): the batched trainer cannot run "
                    "them .* use trainer: reference")])
def test_a_model_keras_runs_runs_with_the_reference_trainer(tf, builder, refusal):
    """Refused by the batched trainer with the reason (Dropout's not blamed on
    BatchNormalization); trained by the reference one, and the same bits twice (Dropout
    draws from the arm's seed)."""
    from study.data import load_dataset
    from study.run import check_model_and_starts

    digits = load_dataset("digits", 0)
    model = f"model={{builder: 'tests.test_optimizers:{builder}'}}"
    with pytest.raises(ConfigError, match=refusal) as refused:
        check_model_and_starts(_config(model, "inits={glorot: []}"), digits)
    assert builder != "dropout_mlp" or "BatchNormalization" not in str(refused.value)
    config = _config(model, "inits={glorot: []}", "trainer=reference")
    check_model_and_starts(config, digits)
    arms = expand_grid(config)
    first, again = _train(reference, config, arms), _train(reference, config, arms)
    (key,) = first
    assert first[key].history == again[key].history
    assert first[key].series("val_accuracy")[-1] > 0.5


def test_callbacks_see_the_arms_measures(tf):
    """ReduceLROnPlateau on val_accuracy, with a min_delta nothing reaches: the rate halves
    after the second epoch, as a piecewise-constant schedule halving it there trains (the
    callback saw val_accuracy, or it would not act). EarlyStopping likewise stops the arm
    after its second epoch."""
    common = [BATCH, "epochs=3", "trainer=reference", "inits={saturated_wrong: [4]}"]
    plateau = _config(*common, "callbacks=[{name: ReduceLROnPlateau, monitor: val_accuracy, "
                               "mode: max, factor: 0.5, patience: 0, min_delta: 1.0}]")
    halved = _config(*common, "optimizer.schedule={name: piecewise_constant_decay, "
                              "boundaries: [65], factors: [1, 0.5]}")
    stopping = _config(*common, "callbacks=[{name: EarlyStopping, monitor: val_accuracy, "
                                "mode: max, patience: 0, min_delta: 1.0}]")
    (by_callback,) = _train(reference, plateau, expand_grid(plateau)).values()
    (by_schedule,) = _train(reference, halved, expand_grid(halved)).values()
    (stopped,) = _train(reference, stopping, expand_grid(stopping)).values()
    assert by_callback.steps() == by_schedule.steps() and by_callback.steps()[-1] == 99
    for name in by_callback.history:
        np.testing.assert_allclose(by_callback.series(name), by_schedule.series(name),
                                   rtol=1e-6, atol=1e-6, err_msg=name)
    assert stopped.steps()[-1] == 66


def test_a_callbacks_default_mode_follows_its_measure(tf):
    """Keras' mode auto knows none of the arm's measures (it raised on val_nll, exit 1): here
    auto is min for val_nll and max for val_accuracy. From the saturated start both improve
    at every epoch end, so EarlyStopping(patience=0) lets the arm run its 3 epochs (99 steps)
    in the right direction, and stops it after 2 (66) in the wrong one. The two in auto mode
    watch one arm together: either one in the wrong direction would stop it at 66."""
    common = [BATCH, "epochs=3", "trainer=reference", "inits={saturated_wrong: [4]}"]

    def last_step(*callbacks):
        listed = ", ".join(f"{{name: EarlyStopping, {callback}}}" for callback in callbacks)
        config = _config(*common, f"callbacks=[{listed}]")
        (result,) = _train(reference, config, expand_grid(config)).values()
        return result.steps()[-1]

    assert last_step("monitor: val_nll, patience: 0", "monitor: val_accuracy, patience: 0") == 99
    assert last_step("monitor: val_nll, patience: 0, mode: max") == 66
