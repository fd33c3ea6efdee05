"""``make bench``: the harness against a plain Keras loop, whole processes, measured in one run.

The peer is what a user would write without the harness: one Keras ``fit`` per arm with
MLflow's own ``mlflow.keras.MlflowCallback``, same model, batch size and data. Each study
runs as a whole process (imports, tracing, training, MLflow) in a child, timed from outside;
the peer's cost per arm-step is measured on a few of the study's arms. Prints and writes as
JSON (reports/bench.json):

- MNIST scale: a 60,000-image 28x28 file in Keras' mnist.npz layout, built here from the
  digits upscaled and jittered (no download), the default model (784-30-10 sigmoid, batch
  10), 54 arms x 5,000 steps (6 losses x 3 starts x 3 seeds, 1 epoch): the ratio per
  arm-step, the estimate against the measured time and the peak memory;
- the default study whole-process ratio (and, without ``--quick``, a 3-epoch study);
- the estimate against the measured time for the smoke, default, cnn and optimizers
  studies (``--quick``: smoke and a shrunk default);
- where the default study's time goes: start-up, tracing, training steps with their in-loop
  val_accuracy, full evaluations, MLflow (timed inside its own child).

``--quick`` shrinks every case (under 3 minutes on an idle 2-core machine). Figures are
ratios measured in one run: machines are noisy; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# The MNIST-scale study: the default study's model, losses and rates on the bench's file.
MNIST = ["dataset=mnist", "epochs=1", "seeds=[0, 1, 2]", "lr_band=null",
         "inits={glorot: [], scaled: [4], saturated_wrong: [4]}"]
MNIST_QUICK = [*MNIST, "seeds=[0]"]
# The printed estimate should land within this factor of the measured training time.
ESTIMATE_BAND = 1.5


def mnist_file(folder: Path, n_train: int = 60_000, n_test: int = 10_000) -> Path:
    """An MNIST-sized file in Keras' mnist.npz layout under ``folder``/datasets (point
    KERAS_HOME at ``folder``): scikit-learn's 8x8 digits upscaled to 28x28 (3x3 blocks,
    padded by 2), each copy shifted by up to 2 pixels and given pixel noise, so that the
    study learns as it does on digits, at MNIST's size and shape."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    base = np.pad(np.kron(digits.images / 16.0, np.ones((3, 3))), ((0, 0), (2, 2), (2, 2)))
    picks = rng.integers(len(base), size=n_train + n_test)
    images = base[picks]
    for axis, shift in ((1, rng.integers(-2, 3, len(picks))), (2, rng.integers(-2, 3, len(picks)))):
        for s in range(-2, 3):
            images[shift == s] = np.roll(images[shift == s], s, axis=axis)
    images = np.clip(images + rng.normal(0, 0.1, images.shape), 0, 1)
    pixels, labels = (images * 255).astype("uint8"), digits.target[picks].astype("uint8")
    path = folder / "datasets" / "mnist.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=pixels[:n_train], y_train=labels[:n_train],
             x_test=pixels[n_train:], y_test=labels[n_train:])
    return path


# ---- what the children run ----

def child_study(config_path: str, overrides: list[str], store: str) -> dict:
    """Run a study in this process as ``study run`` does (the estimate included) and say
    its estimate, its times, where they went and this process's peak memory."""
    import psutil

    from study.config import load_config
    from study.run import run_study

    config = load_config(config_path, overrides)
    planned = []
    with _timed_parts() as spent:
        study = run_study(config, f"sqlite:///{store}/mlflow.db", progress=False,
                          confirm=planned.append)
    process = time.time() - psutil.Process().create_time()
    status = Path("/proc/self/status").read_text()
    return {"arms": len(study.results), "steps": planned[0].steps,
            "estimate_s": planned[0].seconds, "wall_s": study.wall_seconds,
            "logging_s": study.logging_seconds, "writer_busy_s": study.writer_busy_seconds,
            "process_s": process, "start_up_s": process - study.wall_seconds - spent["probe"],
            **spent,
            "peak_rss_mb": int(status.split("VmHWM:")[1].split()[0]) / 1024}


def child_peer(config_path: str, overrides: list[str], store: str, n_arms: int) -> dict:
    """The peer: one plain Keras fit per arm with MLflow's Keras callback, on ``n_arms`` of
    the study's arms spread over its losses; its wall time per arm-step (run creation and
    MLflow's writes included, the process's imports not)."""
    import keras
    import mlflow

    from study.config import load_config
    from study.data import load_study_data
    from study.grid import expand_grid, optimizer_of
    from study.losses import loss_spec
    from study.optimizers import OPTIMIZERS
    from study.train.common import training_targets
    from study.train.reference import build_arm_model

    config = load_config(config_path, overrides)
    splits = load_study_data(config)
    arms = expand_grid(config)
    picked = [arms[i] for i in np.linspace(0, len(arms) - 1, n_arms).astype(int)]
    mlflow.set_tracking_uri(f"sqlite:///{store}/peer.db")
    mlflow.set_experiment("peer")
    x = splits.inputs("train")
    keras.utils.set_random_seed(0)  # fit shuffles, and op determinism wants a seed
    started, steps = time.perf_counter(), 0
    for arm in picked:
        keras.backend.clear_session()
        model, loss = build_arm_model(arm, config, splits)
        optimizer = optimizer_of(config, arm)
        model.compile(optimizer=OPTIMIZERS[optimizer.name].make(arm.lr, optimizer.options),
                      loss=loss, metrics=["accuracy"])
        with mlflow.start_run():
            model.fit(x, training_targets(loss_spec(config, arm.loss), splits),
                      batch_size=config.batch_size, epochs=config.epochs, verbose=0,
                      callbacks=[mlflow.keras.MlflowCallback()])
        steps += config.epochs * (len(x) // config.batch_size)
    return {"arms": n_arms, "ms_per_arm_step": (time.perf_counter() - started) / steps * 1e3}


@contextlib.contextmanager
def _timed_parts():
    """Time the batched trainer's parts while a study runs: tracing (building each group and
    each graph's first call), the training loop (steps with their in-loop val_accuracy) and
    the full evaluations (on their own thread, overlapping the loop)."""
    from study.train import batched

    spent = {"probe": 0.0, "tracing": 0.0, "training loop": 0.0, "full evaluations": 0.0}
    traced: set[tuple[int, str]] = set()

    def timed(kind, method, group=None):
        def call(*args, **kwargs):
            began = time.perf_counter()
            out = method(*args, **kwargs)
            key = (id(group if group is not None else args[0]), kind, method)
            spent[kind if key in traced else "tracing"] += time.perf_counter() - began
            traced.add(key)
            return out
        return call

    init, evaluate, probe = batched._Group.__init__, batched._Group.evaluate, batched.probe

    def timed_init(group, *args, **kwargs):  # the graphs are attributes of each group
        began = time.perf_counter()
        init(group, *args, **kwargs)
        spent["tracing"] += time.perf_counter() - began  # building it: its model, its state
        group.run = timed("training loop", group.run, group)

    def timed_probe(*args, **kwargs):  # the estimate's: its group's tracing is reused
        began = time.perf_counter()
        out = probe(*args, **kwargs)
        spent["probe"] += time.perf_counter() - began
        return out

    batched._Group.__init__ = timed_init
    batched._Group.evaluate = timed("full evaluations", evaluate)
    batched.probe = timed_probe
    try:
        yield spent
    finally:
        batched._Group.__init__, batched._Group.evaluate, batched.probe = init, evaluate, probe


CHILDREN = {"study": child_study, "peer": child_peer}


# ---- the parent: cases, children, progress ----

def _child(kind: str, config: str, overrides: list[str], env: dict, *extra) -> dict:
    """Run one child process; returns its JSON answer and its wall time from outside."""
    with tempfile.TemporaryDirectory() as store:
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "study.bench", "--child", kind, config, store,
             json.dumps(overrides), *map(str, extra)],
            cwd=ROOT, env={**os.environ, **env}, capture_output=True,
            text=True)
        if done.returncode:
            raise RuntimeError(f"bench child {kind} {config} failed:\n{done.stderr[-2000:]}")
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        answer["outside_s"] = time.perf_counter() - began
        return answer


def plan(quick: bool, keras_home: str) -> list[tuple[str, str, str, list[str], dict, tuple]]:
    """(name, child kind, config, overrides, environment, extra) in run order."""
    mnist_env = {"KERAS_HOME": keras_home}
    mnist = MNIST_QUICK if quick else MNIST
    default = str(CONFIGS / "default.yaml")
    small = ["seeds=[0, 1]"] if quick else []
    jobs = [("mnist", "study", default, mnist, mnist_env, ()),
            ("mnist peer", "peer", default, mnist, mnist_env, (1 if quick else 2,)),
            ("default", "study", default, small, {}, ()),
            ("default peer", "peer", default, small, {}, (1 if quick else 4,)),
            ("smoke", "study", str(CONFIGS / "smoke.yaml"), [], {}, ())]
    if not quick:
        three = ["epochs=3"]
        jobs += [("default 3 epochs", "study", default, three, {}, ()),
                 ("default 3 epochs peer", "peer", default, three, {}, (3,)),
                 ("cnn", "study", str(CONFIGS / "cnn.yaml"), [], {}, ()),
                 ("optimizers", "study", str(CONFIGS / "optimizers.yaml"), [], {}, ())]
    return jobs


def _ratio(results: dict, name: str) -> dict:
    """The harness's whole process against the peer, per arm-step."""
    study, peer = results[name], results[f"{name} peer"]
    harness_ms = study["outside_s"] / (study["arms"] * study["steps"]) * 1e3
    return {"harness_ms_per_arm_step": harness_ms, "peer_ms_per_arm_step":
            peer["ms_per_arm_step"], "ratio": peer["ms_per_arm_step"] / harness_ms}


def report(results: dict, load: tuple[float, float]) -> dict:
    lines, summary = [], {"load_average_before_after": load}
    for name in ("mnist", "default", "default 3 epochs"):
        if name in results and f"{name} peer" in results:
            r = summary[f"{name} ratio"] = _ratio(results, name)
            study = results[name]
            lines.append(f"{name + ':':18s}{study['arms']} arms x {study['steps']:,} steps, "
                         f"whole process {study['outside_s']:.0f} s = "
                         f"{r['harness_ms_per_arm_step']:.4f} ms per arm-step; peer (Keras "
                         f"fit + MlflowCallback) {r['peer_ms_per_arm_step']:.3f} ms: "
                         f"{r['ratio']:.0f}x")
    for name in ("smoke", "default", "cnn", "optimizers", "mnist", "default 3 epochs"):
        if name in results and "estimate_s" in results[name]:
            study = results[name]
            ratio = study["estimate_s"] / study["wall_s"]
            summary[f"{name} estimate/measured"] = ratio
            band = "within" if 1 / ESTIMATE_BAND <= ratio <= ESTIMATE_BAND else "OUTSIDE"
            lines.append(f"{'estimate ' + name + ':':27s}{study['estimate_s']:6.0f} s, "
                         f"trained in {study['wall_s']:6.0f} s: x{ratio:.2f} ({band} "
                         f"x{ESTIMATE_BAND})")
    if "mnist" in results:
        lines.append(f"mnist peak memory:         {results['mnist']['peak_rss_mb']:.0f} MB "
                     "RSS (memory_budget_mb 2,048)")
    if "default" in results:
        split = results["default"]
        parts = ["start_up_s", "probe", "tracing", "training loop", "full evaluations",
                 "writer_busy_s", "logging_s"]
        lines.append("split of the default study's process (s; start-up: imports, data, "
                     "pre-flight; probe: the estimate's, its group's tracing reused; tracing: "
                     "every group's, the probe's included; full evaluations and MLflow's "
                     "writer run on their own threads, beside the loop): "
                     + ", ".join(f"{p.removesuffix('_s')} {split[p]:.1f}" for p in parts)
                     + f"; process {split['process_s']:.1f}")
    lines.append(f"load average before/after: {load[0]:.1f} / {load[1]:.1f} (2 cores)")
    print("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # python -m study.bench --child KIND CONFIG STORE OVERRIDES
        kind, config, store, overrides, *extra = argv[1:]
        answer = CHILDREN[kind](config, json.loads(overrides), store, *map(int, extra))
        print(json.dumps(answer))
        return answer
    parser = argparse.ArgumentParser(prog="python -m study.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="shrunk cases: under 3 minutes on an idle 2-core machine")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these cases (names as printed, e.g. mnist 'mnist peer')")
    parser.add_argument("--out", default="reports/bench.json")
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as keras_home:
        jobs = plan(args.quick, keras_home)
        if args.only is not None:
            jobs = [job for job in jobs if job[0] in args.only]
        if any(env for *_, env, _ in jobs):
            mnist_file(Path(keras_home), *((6_000, 1_000) if args.quick else ()))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tqdm(jobs, desc="bench", unit="case", file=sys.stderr) as bar:
            for name, kind, config, overrides, env, extra in bar:
                bar.set_postfix_str(name)
                results[name] = _child(kind, config, overrides, env, *extra)
                bar.write(f"{name}: {json.dumps(results[name])}", file=sys.stderr)
                out.write_text(json.dumps({"quick": args.quick, "cases": results}, indent=2))
    summary = report(results, (load_before, os.getloadavg()[0]))
    out.write_text(json.dumps({"quick": args.quick, "summary": summary, "cases": results},
                              indent=2) + "\n")
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
