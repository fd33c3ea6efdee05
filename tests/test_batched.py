"""The batched trainer against the reference trainer (one Keras fit per arm), arm by arm, and
its slot independence: an arm's values do not depend on the arms it trains beside."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from study.config import load_config
from study.grid import exact, expand_grid, optimizer_of
from study.losses import LOSSES
from study.optimizers import OPTIMIZERS
from study.train import batched, reference
from tests.conftest import CONFIGS, tracking_uri

ALL_INITS = "inits={glorot: [], scaled: [3], saturated_wrong: [4], large_normal: []}"
ALL_LOSSES = f"losses=[{', '.join(LOSSES)}]"
# Every registered optimizer, at rates where none diverges from the saturated start.
ALL_OPTIMIZERS = ("optimizers=[{name: sgd, lr: 0.5}, "
                  "{name: sgd, lr: 0.1, momentum: 0.9, nesterov: true}, "
                  "{name: adam, lr: 0.003}, {name: adamw, lr: 0.003, weight_decay: 0.01}, "
                  "{name: rmsprop, lr: 0.003}, {name: adagrad, lr: 0.1}]")
CNN = "model={kind: cnn, filters: [4], hidden: [], activation: relu}"


def _config(*overrides):
    return load_config(CONFIGS / "smoke.yaml", ["epochs=3", *overrides])


def _train(module, config, splits, arms=None, **warm):
    arms = expand_grid(config) if arms is None else arms
    return {arm.key: result for arm, result in module.train_arms(arms, config, splits, **warm)}


class Traced(dict):
    """Groups traced once and reused by later trainings of the same config, as a study's
    chunks reuse their group (``load`` puts each chunk's state in afresh): (group, slots) ->
    group, filled as trainings ask for them. A test that trains one config several ways pays
    for each group's tracing once."""

    def __init__(self, config, splits):
        super().__init__()
        self.config, self.splits = config, splits

    def __call__(self, arms) -> dict:
        """The warm groups for training ``arms`` (``train_arms(warm=...)``), traced if new."""
        groups: dict = {}
        for arm in arms:
            groups.setdefault(arm.group, []).append(arm)
        for key, members in groups.items():
            slots = batched.slots_for(batched.chunk_size(self.config, self.splits, len(members)))
            if (key, slots) not in self:
                self[key, slots] = batched._Group(slots, self.config, self.splits, key[0],
                                                  optimizer_of(self.config, members[0]))
        return {"warm": self}


def _assert_same_curves(expected, actual, tolerance):
    assert expected.keys() == actual.keys()
    for key in expected:
        assert expected[key].history.keys() == actual[key].history.keys()
        for name in expected[key].history:
            assert expected[key].steps(name) == actual[key].steps(name)
            np.testing.assert_allclose(actual[key].series(name), expected[key].series(name),
                                       rtol=tolerance, atol=tolerance, err_msg=f"{key} {name}")


def _assert_identical(expected, actual):
    """Bit for bit: the same steps and the same float64 values of every metric."""
    for key in expected:
        assert actual[key].history == expected[key].history, key


@pytest.fixture(scope="session")
def reference_pairs(tf, digits):
    """Both trainers over 3 epochs on arms that pair the i-th loss with the i-th optimizer
    (both lists in order), from the saturated start and, for the MLP, from the (i mod 4)-th
    start too: model -> (arms, reference results, batched results). The batched trainer
    trains one group per pair, traced once for the two tests that read them."""
    trained = {}

    def pairs(model: str):
        if model not in trained:
            config = _config("batch_size=64", ALL_LOSSES, ALL_OPTIMIZERS, ALL_INITS,
                             *([CNN] if model == "cnn" else []))
            starts, names = list(config.inits), [o.key for o in config.optimizers]
            arms = [a for a in expand_grid(config) if names.index(a.optimizer) == (
                i := list(LOSSES).index(a.loss)) and (a.init == "saturated_wrong" or (
                    model == "mlp" and a.init == starts[i % len(starts)]))]
            if model == "cnn":  # a sigmoid and a softmax output, a stateful optimizer
                arms = [a for a in arms if a.loss in ("bce", "scce")]
            trained[model] = (arms, _train(reference, config, digits, arms),
                              _train(batched, config, digits, arms))
        return trained[model]

    return pairs


def _some(results: dict, arms) -> dict:
    return {arm.key: results[arm.key] for arm in arms}


def test_every_loss_and_init_matches_the_reference_trainer(reference_pairs):
    """Each loss from one start and each start under at least one loss (the i-th loss from
    the (i mod 4)-th start, the last two losses from the control and the scaled start): the
    start only sets the weights a loss's gradient is taken at, so this covers every path of
    either, and the reference trainer's cost is one Keras fit per arm (6 here, not 24)."""
    arms, expected, actual = reference_pairs("mlp")
    starts = list(_config(ALL_INITS).inits)
    arms = [a for a in arms if starts.index(a.init) == list(LOSSES).index(a.loss) % len(starts)]
    assert len(arms) == len(LOSSES) == 6 and {a.init for a in arms} == set(starts)
    _assert_same_curves(_some(expected, arms), _some(actual, arms), 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_loss_and_optimizer_matches_the_reference_trainer(reference_pairs, model):
    """Each loss under one optimizer and each optimizer under one loss (the i-th loss with
    the i-th optimizer, both lists in order), from the saturated start: the loss only makes
    the gradient and the optimizer only applies it, so pairing them covers every path of
    either, and the reference trainer's cost is one Keras fit per arm (6 here, not 36). The
    CNN only makes the outputs: bce under SGD and scce under Adam."""
    arms, expected, actual = reference_pairs(model)
    arms = [a for a in arms if a.init == "saturated_wrong"]
    assert len(arms) == (len(LOSSES) if model == "mlp" else 2)
    assert len({a.optimizer for a in arms}) == len(arms) == len({a.loss for a in arms})
    _assert_same_curves(_some(expected, arms), _some(actual, arms), 1e-5)


def test_a_diverging_arm_is_isolated(tf, digits):
    config = _config("epochs=2", "model.activation=relu", "losses=[cce, mse]",
                     "inits={glorot: [], scaled: [3]}", "seeds=[0, 1]",
                     "optimizer.lr=[0.5, 1.0e+30]")
    arms = expand_grid(config)
    traced = Traced(config, digits)  # each loss's group (16 slots) traced once, used thrice
    with_bad = _train(batched, config, digits, arms, **traced(arms))
    diverged = {key for key, result in with_bad.items() if result.diverged}
    # cce's logits overflow at once; whether mse's sigmoid outputs do too at this rate
    # depends on the CPU's rounding (it does on this AMD EPYC, not on earlier machines)
    assert {f"cce|{start}|seed={s}|sgd|lr=1e+30" for start in ["glorot:0", "scaled:3"]
            for s in (0, 1)} <= diverged
    assert all(key.endswith("lr=1e+30") for key in diverged)
    for key in diverged:  # evaluated at step 1, then stopped
        assert with_bad[key].steps() == [0, 1] and with_bad[key].diverged_at == 1
    # The same arms with a harmless arm in each diverging arm's place, and with no such arms
    # at all (a smaller group): bit for bit the same.
    harmless = [dataclasses.replace(a, lr=0.3) if a.lr == HUGE else a for a in arms]
    harmless = _train(batched, config, digits, harmless, **traced(harmless))
    without = [a for a in arms if a.lr != HUGE]
    without = _train(batched, config, digits, without, **traced(without))
    assert len(without) == len(arms) // 2
    healthy = {key: with_bad[key] for key in without}
    _assert_identical(healthy, harmless)
    _assert_identical(healthy, without)


# Every registered optimizer with all the state it can keep (SGD also without any), each at
# a rate that trains from the saturated start and at 1e30, where that start diverges.
STATEFUL = {"sgd": [("0.5", ""), ("0.1", ", momentum: 0.9, nesterov: true")],
            "adam": [("0.003", ", amsgrad: true")], "adamw": [("0.003", ", weight_decay: 0.01")],
            "rmsprop": [("0.003", ", momentum: 0.5, centered: true")],
            "adagrad": [("0.1", ", initial_accumulator_value: 0.1")],
            "adamax": [("0.01", "")], "nadam": [("0.01", "")], "adadelta": [("1.0", "")],
            "ftrl": [("0.1", ", l1_regularization_strength: 0.001, beta: 0.1")],
            "lion": [("0.001", "")]}
VARIANTS = sum(len(v) for v in STATEFUL.values())
HUGE = 1e30
# Lion steps by lr times a sign, Adadelta by lr times a normalized step (its accumulators
# never see lr), so their weights overflow float32 only at a rate near its limit
# (at 1e30 they stay finite and Keras' clipped cross-entropy with them).
HUGE_FOR = {"lion": 3e38, "adadelta": 3e38}


def _huge(name: str) -> float:
    return HUGE_FOR.get(name, HUGE)


def _every_optimizer(huge: bool) -> str:
    rates = {name: [(f"[{lr}, {_huge(name):.0e}]" if huge else lr, options)
                    for lr, options in variants] for name, variants in STATEFUL.items()}
    return "optimizers=[" + ", ".join(f"{{name: {name}, lr: {lr}{options}}}"
                                      for name, variants in rates.items()
                                      for lr, options in variants) + "]"


def _stored_arms(uri: str) -> dict[str, tuple[dict, dict]]:
    """arm key -> (tags, metric -> [(step, value)]) of every child run in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              "tags.`study.arm` LIKE '%'", max_results=1000)
    return {run.data.tags["study.arm"]: (run.data.tags, {
        name: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id,
                                                                           name),
                                                 key=lambda m: m.step)]
        for name in run.data.metrics}) for run in runs}


class InGroups:
    """A study's executor that trains every arm in this process, in the groups of a
    ``Traced`` (the batched trainer's ``warm``), so that a test can train them again."""

    def __init__(self, traced: Traced):
        self.traced = traced

    def __enter__(self) -> InGroups:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def train_arms(self, arms, config, splits, advance):
        yield from batched.train_arms(arms, config, splits, advance, **self.traced(arms))


@pytest.fixture(scope="session")
def diverging(tmp_path_factory, tf, digits):
    """The smoke study's control and saturated starts under every optimizer, with a 1e30
    rate beside each optimizer's good one (a diverging arm in every group), run as a study
    into a store: it finishes (the study goes on), and the store's arms. Then the same arms
    without the diverging ones, trained again in the same groups (``Traced``: each group
    traced once, for both): arm key -> their histories."""
    from study.run import run_study

    # a new optimizer joins this test (those that mix arms run only with trainer: reference)
    assert set(STATEFUL) == {n for n, spec in OPTIMIZERS.items() if spec.mixes is None}
    config = load_config(CONFIGS / "smoke.yaml", ["losses=[cce]", _every_optimizer(True)])
    arms = expand_grid(config)
    traced = Traced(config, digits)
    uri = tracking_uri(tmp_path_factory.mktemp("diverging"))
    result = run_study(config, uri, progress=False, executor=InGroups(traced))
    assert result.diverged and len(result.results) == len(arms)
    healthy = [a for a in arms if a.lr != _huge(optimizer_of(config, a).name)]
    without = _train(batched, config, digits, healthy, **traced(healthy))
    assert len(traced) == VARIANTS  # every group traced once
    return _stored_arms(uri), without, traced


def _diverging_keys(stored) -> list[str]:
    return [key for key in stored if "saturated_wrong" in key
            and any(key.endswith(f"lr={exact(h)}") for h in {HUGE, *HUGE_FOR.values()})]


def test_an_arm_diverging_under_any_optimizer_is_stored_and_the_study_goes_on(diverging):
    stored, without, _ = diverging
    assert len(stored) == 2 * 2 * VARIANTS  # two starts, two rates, each optimizer variant
    keys = _diverging_keys(stored)
    assert len(keys) == VARIANTS
    for key in keys:
        tags, history = stored[key]
        assert tags["study.diverged"] == "true", key
        step = int(tags["study.diverged_at_step"])
        assert step > 0 and history["train_loss"][-1][0] == step, key  # stopped there
        last = history["train_loss"][-1][1]  # MLflow stores inf as the largest float
        assert not np.isfinite(last) or abs(last) == np.finfo(float).max, key
    # the arms at a good rate, beside a diverging arm and without one: none diverged
    assert all(stored[key][0]["study.diverged"] == "false" for key in without)
    assert not any(result.diverged for result in without.values())


def test_a_diverging_arm_leaves_the_rest_of_its_group_bit_for_bit(diverging):
    """Whatever state the optimizer keeps, freezing the diverged arm touches only its own
    slot: every other arm of its group has the history it has without the diverging arm
    (as the store holds it: MLflow keeps float64 values as they are)."""
    with_bad, without, _ = diverging
    assert len(without) == 2 * VARIANTS and without.keys() <= with_bad.keys()
    for key, result in without.items():
        assert with_bad[key][1] == result.history, key


# Every variant of STATEFUL that keeps a state: SGD with momentum and every other optimizer.
KEEPING = [(i, f"{name}({options[2:]})" if options else name) for i, (name, options) in enumerate(
    (name, options) for name, variants in STATEFUL.items() for _, options in variants)
    if options or name != "sgd"]


@pytest.mark.parametrize("variant", [i for i, _ in KEEPING], ids=[name for _, name in KEEPING])
def test_freezing_a_slot_resets_only_that_slot(tf, diverging, variant):
    """After some steps, freezing slot 1 zeroes its rate and weights, puts every per-slot
    optimizer variable back to its start, and leaves every other slot's bits and the shared
    iteration counter as they were. (In the diverging study's group of the optimizer, its
    four arms loaded afresh: slot 1 is the control start at the diverging rate.)"""
    *_, traced = diverging
    optimizer = traced.config.optimizers[variant]
    arms = [a for a in expand_grid(traced.config) if a.optimizer == optimizer.key]
    assert len(arms) == 4 and arms[1].lr == _huge(optimizer.name)
    group = traced[arms[0].group, batched.slots_for(len(arms))]
    group.load(arms)
    group.run(tf.constant(0), tf.constant(5))
    variables = [group.lr, *group.weights, *(v for opt in group.optimizers
                                             for v in opt.variables)]
    before = [np.array(v.numpy()) for v in variables]
    fresh = [np.zeros(group.lr.shape), *(np.zeros(w.shape) for w in group.weights),
             *(value for state in group.fresh_state for value in state)]
    group.freeze(1)
    assert not group.active[1] and group.active[0]
    per_slot = 0
    for variable, old, start in zip(variables, before, fresh, strict=True):
        now = variable.numpy()
        if now.ndim == 0:  # shared, untouched: the iteration counter (and Nadam's product
            assert now.tobytes() == old.tobytes()  # of momentum factors, a function of it)
            continue
        per_slot += 1
        np.testing.assert_array_equal(now[1], start[1])
        others = np.arange(len(now)) != 1
        assert now[others].tobytes() == old[others].tobytes()
    assert per_slot > 1 + len(group.weights)  # optimizer state was among them
    assert all(opt.iterations.numpy() == 5 for opt in group.optimizers)


def test_the_reference_trainer_records_a_diverged_arm_the_same_way(tf, digits, diverging):
    """Keras fit stops each arm at the evaluation where the batched trainer stopped it, with
    the same steps logged. Values are compared at the start only: once the weights are near
    1e30, sums of squares overflow float32 in either trainer's order of operations."""
    config = _config("epochs=1", "losses=[cce]", _every_optimizer(huge=True))
    stored, _, _ = diverging
    keys = _diverging_keys(stored)
    arms = [arm for arm in expand_grid(config) if arm.key in keys]
    assert len(arms) == VARIANTS
    for arm, result in reference.train_arms(arms, config, digits):
        tags, history = stored[arm.key]
        assert result.diverged_at == int(tags["study.diverged_at_step"]), arm.key
        assert result.history.keys() == history.keys()
        for name, points in history.items():
            assert result.steps(name) == [step for step, _ in points], (arm.key, name)
            assert result.history[name][0][1] == pytest.approx(points[0][1], rel=1e-5)
        assert not np.isfinite(result.series("train_loss")[-1])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_an_arms_values_do_not_depend_on_its_group(tf, digits, model):
    """The default budget (1,605 steps) at the default study's high learning rates from its
    bad starts, where any rounding difference would grow: an arm alone, in a group of 13
    at its last slot, and in the whole study (a group of 24), all give the same values bit
    for bit. (One loss: the probes' group is all the study a probe trains beside.) The CNN
    over one epoch (107 steps, its whole budget): what it adds is the convolution's ops, and
    an op that mixed slots would change a bit at the first step; the long budget is the
    MLP's."""
    epochs = 15 if model == "mlp" else 1
    config = load_config(CONFIGS / "default.yaml", [
        "losses=[mse]", "inits={scaled: [4], saturated_wrong: [4], large_normal: []}",
        "seeds=[0, 1, 2, 3]", "optimizer.lr=[8, 32]", f"epochs={epochs}", "lr_band=null",
        *([CNN, "optimizer.lr=[0.5, 2]"] if model == "cnn" else [])])
    arms = expand_grid(config)
    assert len(arms) == 24
    probes = [a for a in arms if a.loss == "mse" and a.seed == 3 and a.lr == max(
        config.optimizers[0].lr) and a.init in ("saturated_wrong", "large_normal")]
    everything = _train(batched, config, digits)
    traced = Traced(config, digits)  # the 16-slot groups, traced once
    for probe in probes:
        others = [a for a in arms if a != probe and a.loss == probe.loss]
        alone = _train(batched, config, digits, [probe], **traced([probe]))
        odd = _train(batched, config, digits, others[:12] + [probe], **traced(others[:12]))
        _assert_identical(alone, {probe.key: everything[probe.key]})
        _assert_identical(alone, {probe.key: odd[probe.key]})
    moving = [everything[p.key].series("val_accuracy") for p in probes]
    assert all(np.ptp(series) > 0.05 for series in moving)  # they train, not sit still


@pytest.fixture(scope="session")
def one_epoch_groups(tf, digits):
    """The smoke study's cce and mse groups over one epoch (``Traced``), traced once for the
    tests below that train or evaluate in them."""
    return Traced(_config("epochs=1", "losses=[cce, mse]"), digits)


def test_chunks_under_a_memory_budget_give_the_same_curves(tf, digits, one_epoch_groups):
    config = _config("epochs=1", "losses=[mse]", f"seeds={list(range(16))}")  # one group of 32
    per_arm = batched.bytes_per_arm(config, digits)
    assert batched.chunk_size(config, digits, 32) == 32
    small = config.model_copy(update={"memory_budget_mb": 1})  # below 64: only via code
    assert batched.chunk_size(small, digits, 32) == 16  # one set of slots at a time
    assert batched.chunk_size(small, digits, 40) == 14  # 40 arms as 14 + 14 + 12
    assert per_arm > 4 * 107 * 10  # at least the minibatch order
    arms = expand_grid(config)
    together = _train(batched, config, digits, arms)
    # the chunks of 16 in the one-epoch study's mse group of 16 slots (another config: its
    # seeds and losses change no graph)
    warm = one_epoch_groups([a for a in expand_grid(one_epoch_groups.config) if a.loss == "mse"])
    _assert_identical(together, _train(batched, small, digits, arms, **warm))


def test_an_evaluation_sees_its_snapshot_while_training_goes_on(tf, one_epoch_groups):
    """Evaluations run beside training on snapshots of the weights: a snapshot keeps its
    values however many steps follow, and evaluating it later gives the same metrics."""
    arms = [a for a in expand_grid(one_epoch_groups.config) if a.loss == "mse"]
    group = one_epoch_groups(arms)["warm"][arms[0].group, 16]
    group.load(arms)
    snapshot = group.snapshot()
    before = [w.numpy().copy() for w in snapshot]
    metrics = group.evaluate(snapshot)
    group.run(tf.constant(0), tf.constant(20))
    assert not np.array_equal(group.weights[0].numpy(), before[0])  # training moved on
    for kept, copy in zip(snapshot, before, strict=True):
        np.testing.assert_array_equal(kept.numpy(), copy)
    later = group.evaluate(snapshot)
    for name in metrics:
        np.testing.assert_array_equal(later[name], metrics[name])


def test_progress_adds_up_to_the_number_of_arms(digits, one_epoch_groups):
    config = one_epoch_groups.config  # two groups, four arms
    seen = []
    list(batched.train_arms(expand_grid(config), config, digits, seen.append,
                            **one_epoch_groups(expand_grid(config))))
    assert sum(seen) == pytest.approx(len(expand_grid(config)))
    assert len(seen) > 1  # it moves during training, not only at the end


def test_fixed_starts_on_the_single_neuron_match_the_reference_trainer(tf):
    from study.data import load_dataset

    """Each loss from one of the two starts (quadratic from the slow one): one Keras fit
    per arm, every loss and every start."""
    config = load_config(CONFIGS / "neuron.yaml", ["epochs=30"])
    neuron = load_dataset("neuron", 0)
    starts = list(config.inits["fixed"])
    arms = [a for a in expand_grid(config)
            if starts.index(a.severity) != list(config.losses).index(a.loss)]
    assert len(arms) == 2 and {a.severity for a in arms} == set(starts)
    expected, actual = (_train(reference, config, neuron, arms),
                        _train(batched, config, neuron, arms))
    assert "grad_w" in actual[next(iter(actual))].history
    _assert_same_curves(expected, actual, 1e-5)


# Slot independence at batch sizes of 16 and more, where Eigen sums a [K, B, C] tensor's
# batch axis with four interleaved accumulators for some outputs and one for others, by their
# place in the tensor: before ``batched._sum_to``, an arm's bias gradient depended on its slot
# (by up to 1.8e-7 at the first step, then growing).
LARGE_BATCHES = [16, 32]
SLOT_OPTIMIZERS = ("optimizers=[{name: sgd, lr: [0.5, 8]}, "
                   "{name: sgd, lr: [0.1, 1], momentum: 0.9}, "
                   "{name: adam, lr: [0.003, 0.1]}, {name: adagrad, lr: [0.1, 2]}]")


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", LARGE_BATCHES)
def test_the_same_arm_gets_the_same_gradient_in_every_slot(tf, digits, batch, model):
    """One arm in all 16 slots of a group: the first step's gradients are the same bits in
    every slot, for layer widths that are not multiples of the SIMD width (100, 12, 10)."""
    config = _config(f"batch_size={batch}", "losses=[cce, mse]", "inits={saturated_wrong: [4]}",
                     "model.hidden=[100]", *([CNN, "model.filters=[12]"] if model == "cnn" else []))
    for arm in expand_grid(config):
        group = batched._Group(16, config, digits, arm.loss, config.optimizers[0])
        group.load([arm] * 16)
        losses, grads = tf.function(lambda group=group: group._gradients(tf.constant(0)),
                                    autograph=False)()
        for value, weight in zip([losses, *grads], ["loss", *group.weights], strict=True):
            value = value.numpy()
            assert all(v.tobytes() == value[0].tobytes() for v in value), (arm.key, weight)


@pytest.mark.slow
@pytest.mark.parametrize("batch", LARGE_BATCHES)
def test_an_arms_history_does_not_depend_on_its_slot_at_large_batches(tf, digits, batch):
    """Every arm under SGD, momentum, Adam and Adagrad, at an ordinary and a high rate, from
    the control and the saturated start, over two epochs: trained in grid order, in reverse
    order (every arm in another slot), and the high-rate saturated arms by themselves (other
    groups, other slots), the histories are the same bits. cce (softmax outputs) under SGD
    and Adam, mse (sigmoid outputs) under momentum and Adagrad: the loss makes the gradient
    and the optimizer applies it, so the pairs cover every path of either in 4 groups."""
    config = _config("epochs=2", f"batch_size={batch}", "losses=[cce, mse]", "seeds=[0, 1]",
                     SLOT_OPTIMIZERS)
    names = [o.key for o in config.optimizers]
    arms = [a for a in expand_grid(config)
            if names.index(a.optimizer) % 2 == config.losses.index(a.loss)]
    assert len(arms) == 2 * 2 * 2 * 4 and len({a.group for a in arms}) == 4
    traced = Traced(config, digits)  # each group traced once, used by all three
    forward = _train(batched, config, digits, arms, **traced(arms))
    _assert_identical(forward, _train(batched, config, digits, arms[::-1], **traced(arms)))
    high = [a for a in arms if a.init == "saturated_wrong"
            and a.lr == max(b.lr for b in arms if b.group == a.group)]
    assert len(high) == 2 * 4
    _assert_identical({a.key: forward[a.key] for a in high},
                      _train(batched, config, digits, high, **traced(high)))
    moving = [np.ptp(forward[a.key].series("val_accuracy")) > 0.05 for a in high]
    assert sum(moving) >= len(high) // 2  # they train, not sit still


@pytest.mark.parametrize(("grad", "shape"), [
    ((4, 5, 6), (4, 1, 6)), ((4, 5, 6, 3), (4, 1, 1, 3)), ((4, 5, 6, 3), (1, 5, 1, 3)),
    ((4, 5, 6), (4, 5, 1)), ((4, 5, 6), (6,)), ((4, 5, 6), ()), ((4, 5, 6), (4, 5, 6))])
def test_an_adds_gradient_is_summed_over_the_axes_its_input_was_broadcast_along(tf, grad, shape):
    """The bias add's shape (a middle run of axes), a run and an axis apart, innermost, leading
    axes, everything, nothing: the sums NumPy gives."""
    values = np.random.default_rng(0).standard_normal(grad)
    full = (1,) * (len(grad) - len(shape)) + shape
    axes = tuple(i for i, (g, s) in enumerate(zip(grad, full, strict=True)) if g != s)
    expected = values.sum(axis=axes, keepdims=True).reshape(shape)
    actual = batched._sum_to(tf.constant(values), tf.TensorShape(shape)).numpy()
    assert actual.shape == shape
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


@pytest.mark.parametrize("total", [1, 2, 5])
def test_the_estimates_probe_fits_any_budget(tf, digits, total):
    """The probe times steps 1 .. total of the first group and no further, however short
    the budget (a tiny dataset's study failed in its probe: a step past the budget)."""
    batch = len(digits.x_train) // total
    config = load_config(CONFIGS / "smoke.yaml", ["losses=[cce]", "inits={glorot: []}",
                                                  f"batch_size={batch}"])
    costs = batched.probe(config, digits, expand_grid(config))
    assert costs.traced == 1
    assert costs.step_s >= 0 and costs.cross_s >= 0 and costs.full_s > 0
    assert (costs.step_s > 0) == (total >= 3)  # two timed stretches need steps 1 and 2
