"""``make bench``: the batched trainer against the reference trainer, measured in one run.

Prints and writes as JSON, for the MLP and the CNN under SGD and Adam: the per-arm-step time
of each trainer on the same arms (whole runs: evaluations and tracing included), the
training steps alone against a plain Keras fit, the default study's grid as a study trains
it, the wall time of full studies with MLflow and the share of it spent waiting for MLflow,
and the peak memory of 512 arms. Figures are ratios measured here, in one run: machines are
noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from study.config import load_config
from study.data import load_study_data
from study.grid import expand_grid
from study.train.common import Schedule, steps_per_epoch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"
CNN = "model={kind: cnn, filters: [8], hidden: [30], activation: sigmoid}"
# (name, overrides of the default study): one group of 64 arms (16 seeds x 4 starts) each.
CASES = [
    ("mlp sgd", []),
    ("mlp adam", ["optimizer={name: adam, lr: 0.01}"]),
    ("cnn sgd", [CNN, "epochs=2"]),
    ("cnn adam", [CNN, "epochs=2", "optimizer={name: adam, lr: 0.01}"]),
]


def time_trainer(module, arms, config, splits) -> float:
    started = time.perf_counter()
    for _ in module.train_arms(arms, config, splits):
        pass
    return time.perf_counter() - started


def keras_fit_ms_per_step(arm, config, splits, epochs: int = 2) -> float:
    """A plain Keras fit of one arm, no callbacks, after a warm-up epoch: the per-step cost
    the batched trainer exists to amortize."""
    import keras

    from study.backend import native_stderr_silenced
    from study.grid import optimizer_of
    from study.losses import loss_spec
    from study.optimizers import OPTIMIZERS
    from study.train.common import training_targets
    from study.train.reference import build_arm_model

    model, loss = build_arm_model(arm, config, splits)
    optimizer = optimizer_of(config, arm)
    model.compile(optimizer=OPTIMIZERS[optimizer.name].make(arm.lr, optimizer.options),
                  loss=loss)
    x, y = splits.inputs("train"), training_targets(loss_spec(config, arm.loss), splits)
    keras.utils.set_random_seed(0)  # fit shuffles; op determinism wants a seed
    with native_stderr_silenced():  # tf.data's first shuffle logs a harmless "E0000" line
        model.fit(x, y, batch_size=config.batch_size, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(x, y, batch_size=config.batch_size, epochs=epochs, verbose=0)
    steps = epochs * -(-len(x) // config.batch_size)
    return (time.perf_counter() - started) / steps * 1e3


def batched_ms_per_step(arms, config, splits, steps: int = 500) -> float:
    """The batched trainer's training steps alone (traced, between evaluations), all K arms."""
    import tensorflow as tf

    from study.grid import optimizer_of
    from study.train import batched

    group = batched._Group(len(arms), config, splits, arms[0].loss,
                           optimizer_of(config, arms[0]))
    group.load(arms)
    group.run(tf.constant(0), tf.constant(1))  # trace
    started = time.perf_counter()
    group.run(tf.constant(1), tf.constant(1 + steps))
    return (time.perf_counter() - started) / steps * 1e3


def _warm_up() -> None:
    """Both trainers once on a tiny grid, so that the process's one-off costs (Keras' first
    model, TensorFlow's first graphs: about 2 s) are not charged to the first case."""
    from study.train import batched, reference

    config = load_config(ROOT / "configs" / "smoke.yaml", ["losses=[mse]", "inits={glorot: []}"])
    splits = load_study_data(config)
    for module in (batched, reference):
        time_trainer(module, expand_grid(config), config, splits)


def compare(name: str, overrides: list[str], reference_arms: int) -> dict:
    """One group of 64 mse arms (bad starts included) with both trainers."""
    from study.train import batched, reference

    config = load_config(DEFAULT, ["losses=[mse]", f"seeds={list(range(16))}",
                                   "inits={glorot: [], scaled: [2], saturated_wrong: [4], "
                                   "large_normal: []}", "optimizer.lr=2.0", *overrides])
    splits = load_study_data(config)
    arms = expand_grid(config)
    steps = Schedule(steps_per_epoch(len(splits.x_train), config.batch_size),
                     config.epochs).total_steps
    batched_s = time_trainer(batched, arms, config, splits)
    picked = np.random.default_rng(0).choice(len(arms), reference_arms, replace=False)
    reference_s = time_trainer(reference, [arms[i] for i in sorted(picked)], config, splits)
    per_batched = batched_s / (len(arms) * steps) * 1e3
    per_reference = reference_s / (reference_arms * steps) * 1e3
    fit_step = keras_fit_ms_per_step(arms[0], config, splits)
    group_step = batched_ms_per_step(arms, config, splits, min(500, steps - 1)) / len(arms)
    print(f"{name:9s} K={len(arms)}, {steps} steps: whole runs reference {per_reference:.3f}, "
          f"batched {per_batched:.4f} ms per arm-step: {per_reference / per_batched:5.0f}x; "
          f"steps alone Keras fit {fit_step:.3f}, batched {group_step:.4f}: "
          f"{fit_step / group_step:5.0f}x")
    return {"arms": len(arms), "steps_per_arm": steps,
            "reference_ms_per_arm_step": per_reference, "batched_ms_per_arm_step": per_batched,
            "speedup": per_reference / per_batched, "keras_fit_ms_per_step": fit_step,
            "batched_training_ms_per_arm_step": group_step,
            "training_step_speedup": fit_step / group_step}


def peak_memory_mb(n_arms: int) -> float:
    """Train n_arms of the default model for one epoch in a fresh process; its peak RSS, read
    from the process's own VmHWM (getrusage's maxrss would also count the image the process
    was forked from, i.e. this one)."""
    seeds = list(range(-(-n_arms // 36)))  # 36 arms per seed in the default grid (one lr)
    code = (
        "from study.config import load_config; from study.data import load_study_data; "
        "from study.grid import expand_grid; from study.train import batched; "
        f"c = load_config({str(DEFAULT)!r}, ['epochs=1', 'optimizer.lr=2.0', "
        f"'seeds={seeds}']); a = expand_grid(c)[:{n_arms}]; assert len(a) == {n_arms}; "
        "list(batched.train_arms(a, c, load_study_data(c))); "
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])")
    done = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
    return int(done.stdout.split()[-1]) / 1024  # kB


def study_figures(config_path: Path) -> dict:
    """Run a study into a throwaway store: its wall time and how long it waited for MLflow."""
    from study.run import run_study

    with tempfile.TemporaryDirectory() as store:
        study = run_study(load_config(config_path), f"sqlite:///{store}/mlflow.db",
                          progress=False)
    return {"arms": len(study.results), "wall_seconds": study.wall_seconds,
            "logging_seconds": study.logging_seconds,
            "logging_share": study.logging_seconds / study.wall_seconds,
            "writer_busy_seconds": study.writer_busy_seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__)
    parser.add_argument("--reference-arms", type=int, default=3,
                        help="arms of each grid the (slow) reference trainer times (default 3)")
    parser.add_argument("--studies", nargs="*", default=["default", "mnist1d"],
                        help="configs/<name>.yaml studies to run with MLflow (default: "
                             "default mnist1d; mnist1d takes about 2 minutes)")
    parser.add_argument("--out", default="reports/bench.json")
    args = parser.parse_args(argv)

    from study.backend import start_tensorflow
    from study.train import batched

    start_tensorflow()
    _warm_up()
    print("each case: one group of 64 arms of the default study's data, mse from 4 starts; "
          "the reference trainer times a few of them")
    cases = {name: compare(name, overrides, args.reference_arms) for name, overrides in CASES}

    # The default study's grid as a study trains it (6 loss groups of 90, in chunks), at one
    # learning rate so that no arm diverges: 15 seeds instead of 5 seeds x 3 rates.
    config = load_config(DEFAULT, ["optimizer.lr=2.0", f"seeds={list(range(15))}"])
    splits = load_study_data(config)
    arms = expand_grid(config)
    steps = Schedule(steps_per_epoch(len(splits.x_train), config.batch_size),
                     config.epochs).total_steps
    grid_s = time_trainer(batched, arms, config, splits)
    grid = {"arms": len(arms), "seconds": grid_s,
            "batched_ms_per_arm_step": grid_s / (len(arms) * steps) * 1e3,
            "chunk": batched.chunk_size(config, splits, 90)}
    print(f"default grid: {len(arms)} arms x {steps} steps in {grid_s:.1f} s, "
          f"{grid['batched_ms_per_arm_step']:.4f} ms per arm-step (chunks of {grid['chunk']} "
          f"arms in {batched.slots_for(grid['chunk'])} slots)")

    studies = {name: study_figures(ROOT / "configs" / f"{name}.yaml") for name in args.studies}
    for name, study in studies.items():
        print(f"{name + ' study:':19s}{study['arms']} arms in {study['wall_seconds']:.1f} s, "
              f"{study['logging_share']:.1%} of it waiting for MLflow at the end; the writer "
              f"thread worked {study['writer_busy_seconds']:.1f} s")
    memory_arms = 512
    peak = peak_memory_mb(memory_arms)
    print(f"memory:            {memory_arms} arms peak at {peak:.0f} MB RSS")
    results = {"cases": cases, "default_grid": grid, "studies": studies,
               f"peak_rss_mb_{memory_arms}_arms": peak}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
