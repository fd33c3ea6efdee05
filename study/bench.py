"""``make bench``: the batched trainer against the reference trainer, measured in one run.

Prints and writes as JSON: per-arm-step time of each trainer on the same grid (the default
model shape), the speedup, effective GFLOP/s against this machine's measured matmul rate,
the wall time of full studies with MLflow and the share of it spent waiting for MLflow, and
the peak memory of 512 arms. Figures are ratios measured here, in one run: machines are
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
from study.data import load_dataset
from study.grid import expand_grid
from study.models import layer_sizes
from study.train.common import Schedule, steps_per_epoch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"


def flops_per_arm_step(sizes: list[int], batch: int) -> float:
    """Forward 2*B*sum(fan_in*fan_out) multiply-adds; backward about twice that."""
    return 3 * 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    import tensorflow as tf

    a = tf.random.normal([n, n], seed=0)
    tf.linalg.matmul(a, a).numpy()  # warm up
    started = time.perf_counter()
    for _ in range(repeats):
        a = tf.linalg.matmul(a, a) / n
    a.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def time_trainer(module, arms, config, splits) -> float:
    started = time.perf_counter()
    for _ in module.train_arms(arms, config, splits):
        pass
    return time.perf_counter() - started


def keras_fit_ms_per_step(arm, config, splits, epochs: int = 4) -> float:
    """A plain Keras fit of one arm, no callbacks, after a warm-up epoch: the per-step cost
    the batched trainer exists to amortize."""
    import keras

    from study.backend import native_stderr_silenced
    from study.losses import LOSSES
    from study.train.reference import build_arm_model, training_targets

    model, loss = build_arm_model(arm, config, splits)
    model.compile(optimizer=keras.optimizers.SGD(arm.lr), loss=loss)
    y = training_targets(LOSSES[arm.loss], splits)
    keras.utils.set_random_seed(0)  # fit shuffles; op determinism wants a seed
    with native_stderr_silenced():  # tf.data's first shuffle logs a harmless "E0000" line
        model.fit(splits.x_train, y, batch_size=config.batch_size, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(splits.x_train, y, batch_size=config.batch_size, epochs=epochs, verbose=0)
    steps = epochs * -(-len(splits.x_train) // config.batch_size)
    return (time.perf_counter() - started) / steps * 1e3


def batched_ms_per_step(arms, config, splits, steps: int = 1000) -> float:
    """The batched trainer's training steps alone (traced, between evaluations), all K arms."""
    import tensorflow as tf

    from study.train import batched

    group = batched._Group(len(arms), config, splits)
    group.load(arms)
    group.run(tf.constant(0), tf.constant(1))  # trace
    started = time.perf_counter()
    group.run(tf.constant(1), tf.constant(1 + steps))
    return (time.perf_counter() - started) / steps * 1e3


def peak_memory_mb(n_arms: int) -> float:
    """Train n_arms of the default model for one epoch in a fresh process; its peak RSS, read
    from the process's own VmHWM (getrusage's maxrss would also count the image the process
    was forked from, i.e. this one)."""
    seeds = list(range(-(-n_arms // 36)))  # 36 arms per seed in the default grid (one lr)
    code = (
        "from study.config import load_config; from study.data import load_dataset; "
        "from study.grid import expand_grid; from study.train import batched; "
        f"c = load_config({str(DEFAULT)!r}, ['epochs=1', 'optimizer.lr=2.0', "
        f"'seeds={seeds}']); a = expand_grid(c)[:{n_arms}]; assert len(a) == {n_arms}; "
        "list(batched.train_arms(a, c, load_dataset(c.dataset, c.data_seed))); "
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
    parser.add_argument("--reference-arms", type=int, default=4,
                        help="arms of the grid the (slow) reference trainer times (default 4)")
    parser.add_argument("--studies", nargs="*", default=["default", "mnist1d"],
                        help="configs/<name>.yaml studies to run with MLflow (default: "
                             "default mnist1d; mnist1d takes about 2 minutes)")
    parser.add_argument("--out", default="reports/bench.json")
    args = parser.parse_args(argv)

    from study.backend import start_tensorflow
    from study.train import batched, reference

    start_tensorflow()
    # The default study's size (540 arms) and model shape, at one learning rate so that no arm
    # diverges (the reference trainer stops a diverged arm early; the batched one computes
    # it frozen to the end): 15 seeds instead of 5 seeds x 3 rates, trained in chunks as a
    # study trains them, its graphs traced once for all of them.
    config = load_config(DEFAULT, ["optimizer.lr=2.0", f"seeds={list(range(15))}"])
    splits = load_dataset(config.dataset, config.data_seed)
    arms = expand_grid(config)
    group = batched.chunk_size(config, splits, len(arms))
    steps = Schedule(steps_per_epoch(len(splits.x_train), config.batch_size),
                     config.epochs).total_steps
    sizes = layer_sizes(splits.n_features, config.model.hidden, splits.n_classes)

    print(f"grid: {len(arms)} arms of mlp-{'-'.join(map(str, sizes))}, batch "
          f"{config.batch_size}, {steps} steps each, evaluated on the study's schedule; "
          f"batched in groups of K = {group}")
    batched_s = time_trainer(batched, arms, config, splits)
    picked = np.random.default_rng(0).choice(len(arms), args.reference_arms, replace=False)
    reference_arms = [arms[i] for i in sorted(picked)]
    reference_s = time_trainer(reference, reference_arms, config, splits)
    per_batched = batched_s / (len(arms) * steps)
    per_reference = reference_s / (len(reference_arms) * steps)
    flops = flops_per_arm_step(sizes, config.batch_size)
    machine = matmul_gflops()
    fit_step = keras_fit_ms_per_step(arms[0], config, splits)
    group_step = batched_ms_per_step(arms[:group], config, splits, min(1000, steps - 1))
    studies = {name: study_figures(ROOT / "configs" / f"{name}.yaml") for name in args.studies}
    memory_arms = 512
    peak = peak_memory_mb(memory_arms)

    results = {
        "arms": len(arms), "group_size": group, "steps_per_arm": steps,
        "batched_seconds": batched_s,
        "batched_ms_per_arm_step": per_batched * 1e3,
        "reference_ms_per_arm_step": per_reference * 1e3,
        "reference_arms_timed": len(reference_arms),
        "speedup": per_reference / per_batched,
        "keras_fit_ms_per_step": fit_step,
        "batched_training_ms_per_arm_step": group_step / group,
        "training_step_speedup": fit_step / (group_step / group),
        "mflop_per_arm_step": flops / 1e6,
        "batched_gflops": flops / per_batched / 1e9,
        "reference_gflops": flops / per_reference / 1e9,
        "machine_matmul_gflops": machine,
        "studies": studies,
        f"peak_rss_mb_{memory_arms}_arms": peak,
    }
    print(f"reference trainer: {per_reference * 1e3:8.4f} ms per arm-step "
          f"({len(reference_arms)} arms, one Keras fit each)")
    print(f"batched trainer:   {per_batched * 1e3:8.4f} ms per arm-step ({len(arms)} arms "
          f"in {batched_s:.1f} s)")
    print(f"speedup:           {results['speedup']:8.1f}x   whole runs, evaluations and graph "
          "tracing included (target: >= 100x at K >= 64)")
    print(f"training steps:    plain Keras fit {fit_step:.3f} ms per step per arm; batched "
          f"{group_step / group:.4f} ms per arm-step: {results['training_step_speedup']:.0f}x")
    print(f"effective rate:    {results['batched_gflops']:8.2f} GFLOP/s batched, "
          f"{results['reference_gflops']:.3f} reference; machine matmul {machine:.0f} GFLOP/s "
          f"({flops / 1e6:.3f} MFLOP per arm-step)")
    for name, study in studies.items():
        print(f"{name + ' study:':19s}{study['arms']} arms in {study['wall_seconds']:.1f} s, "
              f"{study['logging_share']:.1%} of it waiting for MLflow at the end (target: "
              f"< 2 min, <= 10%); the writer thread worked {study['writer_busy_seconds']:.1f} s")
    print(f"memory:            {memory_arms} arms peak at {peak:.0f} MB RSS")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
