"""Config validation and the CLI's handling of bad input: one line, exit 2, no MLflow run."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from study.cli import main
from study.config import LABEL_MAX, config_hash, load_config, validate
from study.errors import ConfigError
from study.grid import expand_grid
from study.optimizers import COMMON, OPTIMIZERS, RANGES
from tests.conftest import CONFIGS, ROOT

GOOD = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config = load_config(path)
    assert expand_grid(config)


def _bad(tmp_path, change: dict | str):
    if isinstance(change, str):
        text = change
    else:
        raw = yaml.safe_load(yaml.safe_dump(GOOD))
        for key, value in change.items():
            *parents, leaf = key.split(".")
            node = raw
            for part in parents:
                node = node[part]
            if value is _DELETE:
                del node[leaf]
            else:
                node[leaf] = value
        text = yaml.safe_dump(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


_DELETE = object()

BAD_CONFIGS = [
    ({"optimiser": {"lr": 0.1}}, "optimiser: unknown key; valid keys: name, dataset"),
    ({"model.hiden": [30]},
     "model.hiden: unknown key; valid keys: kind, builder, hidden, activation"),
    ({"losses": ["bce", "hinge"]}, "losses: unknown loss 'hinge'; valid: bce, cce, scce, mse, "
                                   "mse_softmax, quadratic"),
    ({"inits": {"glorot": [], "orthogonal": []}},
     "inits: unknown init scheme 'orthogonal'; valid: glorot, scaled"),
    ({"inits": {"scaled": [2, -1]}}, "severities must be > 0"),
    ({"inits": {"glorot": [2]}}, "init scheme 'glorot' takes no severities (use [] or null)"),
    ({"inits": {"saturated_wrong": []}}, "init scheme 'saturated_wrong' needs a list of "
                                         "severities"),
    ({"dataset": "cifar10"}, "dataset: unknown dataset 'cifar10'; valid: digits, mnist1d, "
                             "mnist, fashion_mnist"),
    ({"optimizer.lr": -0.1}, "optimizer.lr.0: Input should be greater than 0"),
    ({"optimizer.momentum": 1.5}, "optimizer: sgd option 'momentum' must be a number in [0, 1) "
                                  "in float32 (the trainers' precision), got 1.5"),
    ({"batch_size": 0}, "batch_size: Input should be greater than 0"),
    ({"epochs": "many"}, "epochs: Input should be a valid integer"),
    ({"target": 1.5}, "target: Input should be less than or equal to 1"),
    ({"seeds": []}, "seeds: must list at least one seed"),
    ({"seeds": [0, 0]}, "seeds: seeds has duplicates"),
    ({"model.activation": "softplus"}, "model.activation: must be one of: 'sigmoid', 'tanh'"),
    ({"losses": _DELETE}, "losses: Field required"),
    ("name: [unclosed", "is not valid YAML"),
    ("- just\n- a list\n", "must hold a mapping of config keys, got list"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIGS,
                         ids=[m.split(":")[0][:30] for _, m in BAD_CONFIGS])
def test_bad_config_exits_2_with_one_line_and_creates_no_run(tmp_path, capsys, change, message):
    path = _bad(tmp_path, change)
    code = main(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "mlflow.db").exists()  # no store, so certainly no run


@pytest.mark.parametrize(("overrides", "message"), [
    (["epochs"], "--set expects KEY=VALUE (e.g. epochs=2), got 'epochs'"),
    (["epochs=0"], "epochs: Input should be greater than 0"),
    (["model.depth=3"], "model.depth: unknown key"),
    (["name.sub=1"], "--set name.sub: name is not a mapping"),
])
def test_bad_override_exits_2(tmp_path, capsys, overrides, message):
    args = ["run", str(CONFIGS / "smoke.yaml")]
    for item in overrides:
        args += ["--set", item]
    assert main(args + ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def test_missing_config_file(capsys):
    assert main(["show", "configs/nope.yaml"]) == 2
    assert "config file not found: configs/nope.yaml" in capsys.readouterr().err


def test_missing_mnist_file_exits_2_naming_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr("study.keras_files.ORIGIN", "http://nowhere.invalid/")  # offline
    code = main(["run", str(CONFIGS / "smoke.yaml"), "--set", "dataset=mnist",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"dataset 'mnist': {tmp_path / 'keras' / 'datasets' / 'mnist.npz'} is not in the "
            "Keras cache and the download from http://nowhere.invalid/mnist.npz failed") in err
    assert err.count("\n") == 1
    assert not (tmp_path / "m.db").exists()


def test_bad_config_fails_before_tensorflow_is_imported(tmp_path):
    path = _bad(tmp_path, {"losses": ["hinge"]})
    script = textwrap.dedent(f"""
        import sys
        from study.cli import main
        code = main(["run", {str(path)!r}])
        assert "tensorflow" not in sys.modules and "mlflow" not in sys.modules
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and "unknown loss 'hinge'" in done.stderr


def test_overrides_use_dotted_keys_and_yaml_values():
    config = load_config(CONFIGS / "smoke.yaml",
                         ["epochs=2", "model.hidden=[20, 10]", "optimizer.lr=[0.1, 1]"])
    assert config.epochs == 2
    assert config.model.hidden == (20, 10)
    assert config.optimizers[0].lr == (0.1, 1.0)


def test_config_is_frozen(smoke_config):
    with pytest.raises(Exception, match="frozen"):
        smoke_config.epochs = 3


def test_config_hash_is_stable_and_sensitive():
    a = load_config(CONFIGS / "smoke.yaml")
    assert config_hash(a) == config_hash(load_config(CONFIGS / "smoke.yaml"))
    assert config_hash(a) != config_hash(load_config(CONFIGS / "smoke.yaml", ["epochs=2"]))


def test_grid_is_the_full_product_and_show_prints_it(capsys):
    config = load_config(CONFIGS / "smoke.yaml", ["seeds=[0, 1]", "optimizer.lr=[0.1, 0.5]"])
    arms = expand_grid(config)
    # 4 losses x (glorot + saturated_wrong:4) x 2 seeds x 2 lrs
    assert len(arms) == 4 * 2 * 2 * 2 == len({arm.key for arm in arms})
    assert {arm.severity for arm in arms if arm.init == "glorot"} == {0.0}
    assert main(["show", str(CONFIGS / "smoke.yaml"), "--set", "seeds=[0, 1]",
                 "--set", "optimizer.lr=[0.1, 0.5]", "--arms"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study 'smoke': 32 arms on digits")
    assert "bce|saturated_wrong:4|seed=1|sgd|lr=0.5" in out


def test_fixed_weights_of_the_wrong_shape_exit_2_before_any_run(tmp_path, capsys):
    code = main(["run", str(CONFIGS / "neuron.yaml"), "--set", "model.hidden=[3]",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "inits.fixed.0.82: weights have shapes [(1, 1), (1,)], the model needs " \
           "[(1, 3), (3,), (3, 1), (1,)]" in err
    assert not (tmp_path / "m.db").exists()


def test_neuron_dataset_refuses_softmax_losses(tmp_path, capsys):
    assert main(["show", str(CONFIGS / "neuron.yaml"), "--set", "losses=[cce]"]) == 2
    assert "losses ['cce'] need a softmax over classes (use bce, mse, quadratic)" in \
        capsys.readouterr().err


BOUNDED_SCRIPT = """
import json, sys, time
import study.config, study.tracking  # imported before the clock starts, as for any config
from study.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    started = time.perf_counter()
    code = main(argv)
    results.append([code, time.perf_counter() - started])
print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
"""


def test_bounded_config_errors_come_in_a_second_before_tensorflow(tmp_path):
    """The hostile configs of the bad-input table and their --set twins, in one process as
    `python -m study run` would: each exit 2 within a second, and TensorFlow never
    imported (nor a store made)."""
    import json

    from tests.test_bad_input import FIXTURES

    names = ["bomb.yaml", "deep.yaml", "big.yaml", "many.yaml", "latin1.yaml", "binary.yaml",
             "bigint.yaml"]
    for name in names:
        FIXTURES[name](tmp_path / name)
    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    smoke = str(CONFIGS / "smoke.yaml")
    argvs = [["run", str(tmp_path / name), *uri] for name in names] + [
        ["run", smoke, "--set", value, *uri] for value in
        ["seeds=&a [0]", "seeds=" + "[" * 20000 + "]" * 20000, "epochs=" + "x" * 100_000,
         "seeds=[" + ",".join(["0"] * 100_001) + "]"]]
    done = subprocess.run([sys.executable, "-c", BOUNDED_SCRIPT], input=json.dumps(argvs),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == len(argvs) and all(len(line) <= 400 for line in lines), lines
    assert [code for code, _ in report["results"]] == [2] * len(argvs), lines
    assert max(seconds for _, seconds in report["results"]) < 1.0, report
    assert not report["tensorflow"]
    assert not (tmp_path / "mlflow.db").exists()


def test_yaml_that_only_pyyaml_reads_still_reads_and_bounds_hold_for_it():
    from study.config import read_yaml
    from study.errors import ConfigError

    assert read_yaml("{scaled:[2,-1]}") == {"scaled": [2, -1]}  # libyaml wants a space
    with pytest.raises(ConfigError, match="anchors and aliases"):
        read_yaml("{a:[1], b: &x [2], c: *x}")
    with pytest.raises(ConfigError, match="nested more than 32 levels"):
        read_yaml("{a:" + "[" * 40 + "]" * 40 + "}")
    with pytest.raises(ConfigError, match="appears twice"):
        read_yaml("{a:[1], a:[2]}")


def test_error_messages_quote_at_most_80_characters_of_input(tmp_path):
    from study.errors import quote

    assert quote("x" * 300) == "'" + "x" * 76 + "..." and len(quote("x" * 300)) == 80
    assert quote(10 ** 5000).startswith("<a number of")  # no repr: more than 4,300 digits
    for override, key in [("model.builder=" + "y" * 5000, "model.builder"),
                          ("losses=[" + "z" * 5000 + "]", "losses"),
                          ("seeds=[" + ",".join(["1"] * 5000) + "]", "seeds"),
                          ("optimizer.lr=[" + ",".join(["0.5"] * 5000) + "]", "optimizer")]:
        with pytest.raises(ConfigError) as caught:
            load_config(CONFIGS / "smoke.yaml", [override])
        assert str(caught.value).startswith(f"{CONFIGS / 'smoke.yaml'}: {key}")
        assert len(str(caught.value)) < 80 + 200, str(caught.value)


def _optimizer(**optimizer) -> dict:
    # lamb and adafactor run only with the reference trainer
    reference = OPTIMIZERS[optimizer.get("name", "sgd")].mixes is not None
    return {**GOOD, "optimizer": {"lr": 0.5, **optimizer},
            **({"trainer": "reference"} if reference else {})}


FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.401298464324817e-45


@pytest.mark.parametrize("lr", [FLOAT32_MAX, FLOAT32_TINY, [0.5, 1e-45], {"bce": 2, "cce": 1,
                                                                           "scce": 1, "mse": 8}])
def test_rates_that_float32_holds_are_valid(lr):
    assert validate(_optimizer(lr=lr)).optimizers[0].lr


@pytest.mark.parametrize(("lr", "message"), [
    (1e300, "optimizer.lr.0: 1e+300 is inf in float32, the precision the trainers compute "
            "in: use a rate from 1.4e-45 to 3.4e+38"),
    (3.5e38, "optimizer.lr.0: 3.5e+38 is inf in float32"),
    ([0.5, 1e-46], "optimizer.lr.1: 1e-46 is 0 in float32"),
    ({"bce": 1, "cce": 1, "scce": 1, "mse": 1e39}, "optimizer.lr.mse.0: 1e+39 is inf"),
])
def test_a_rate_float32_cannot_hold_is_refused(lr, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(_optimizer(lr=lr))


def _numeric_options():
    """(optimizer, option, (low, high)) for every numeric option of every optimizer."""
    return [(name, option, dict(spec.ranges).get(option, RANGES[option]))
            for name, spec in OPTIMIZERS.items()
            for option in sorted(spec.options | COMMON) if RANGES[option] is not bool]


@pytest.mark.parametrize(("name", "option", "bounds"), _numeric_options(),
                         ids=[f"{n}.{o}" for n, o, _ in _numeric_options()])
def test_every_float_option_is_checked_as_float32_holds_it(name, option, bounds):
    low, high = bounds
    fine = FLOAT32_TINY if low > 0 else 0.0
    assert validate(_optimizer(name=name, **{option: fine})).optimizers[0].options[option] == fine
    refused = [1e39, float("nan")]  # inf in float32; no number at all
    if low > 0:
        refused.append(1e-300)  # 0 in float32
    if high is not None:
        refused.append(0.99999999999)  # 1 in float32
    for value in refused:
        with pytest.raises(ConfigError, match=f"{name} option '{option}' must be a number "
                                              r".* in float32 \(the trainers' precision\)"):
            validate(_optimizer(name=name, **{option: value}))


def test_an_optimizer_label_fits_mlflows_run_names():
    assert validate(_optimizer(label="x" * LABEL_MAX)).optimizers[0].key == "x" * LABEL_MAX
    with pytest.raises(ConfigError, match=re.escape(
            "optimizer.label: 7,000 characters: use at most 100 (it names the optimizer in "
            "MLflow run names, which hold 250)")):
        validate(_optimizer(label="x" * 7000))
    # the tightest of MLflow's limits on what the label reaches, with room for the rest of
    # the run name: a run name column holds 250 characters, a param 6,000, a tag 8,000
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

    assert LABEL_MAX + 150 <= min(250, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH)
