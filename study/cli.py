"""Command line: ``python -m study run CONFIG [--set KEY=VALUE ...]`` and ``show CONFIG``.

The config is validated before TensorFlow or MLflow is imported, so a bad value costs a
fraction of a second and prints one line (exit 2), and no MLflow run is created.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from study.errors import ChunkFailed, ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study", description="Train identical Keras models under each "
        "classification loss from good and bad starts, and log every curve to MLflow.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [("run", "train every arm of a study and log it to MLflow"),
                       ("show", "print a study's size (arms by start and loss, steps, "
                                "estimated time and store) without training")]:
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("config", help="a study YAML file, e.g. configs/default.yaml")
        command.add_argument("--set", dest="overrides", action="append", default=[],
                             metavar="KEY=VALUE",
                             help="override a config key (dotted, YAML value), e.g. "
                                  "--set epochs=2 --set model.hidden=[30]; repeatable")
    report = commands.add_parser(
        "report", help="render the report notebooks of the studies in the MLflow store",
        description="Execute the report notebooks against the MLflow store and write "
        "reports/<experiment>/ (HTML, summary.csv, figures); also logs them on the "
        "study's latest parent run.")
    report.add_argument("--experiment", default=None,
                        help="one study (default: every study in the store)")
    report.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                             "sqlite:///mlflow.db)")
    report.add_argument("--out", default="reports", help="output folder (default: reports)")
    ui = commands.add_parser(
        "ui", help="print each study's link, then serve the MLflow store (mlflow ui)",
        description="Print the link to each study's comparison in the MLflow UI, then run "
        "`mlflow ui` over the store on 127.0.0.1:PORT until Ctrl-C.")
    ui.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                         "sqlite:///mlflow.db)")
    ui.add_argument("--port", type=_port, default=None,
                    help="port to serve on (default: $PORT, else 5000)")
    ui.add_argument("--verbose", action="store_true",
                    help="print the server's access log too (a line per HTTP request)")
    commands.choices["show"].add_argument("--arms", action="store_true",
                                          help="list every arm after the summary")
    run = commands.choices["run"]
    run.add_argument("--port", type=_port, default=None,
                     help="the port of `make ui` in the printed link (default: $PORT, else "
                          "5000)")
    run.add_argument("--tracking-uri", default=None,
                     help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    run.add_argument("--force", action="store_true",
                     help="train every arm again, even those FINISHED in the store")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    # Validated with the config (the keys executor and ray_address), so that a bad value is
    # one line like any other config error.
    run.add_argument("--executor", default=None, metavar="{local,ray}",
                     help="where the arms train: local (this process, the default) or ray "
                          "(chunks of arms as Ray tasks); overrides the config's executor")
    run.add_argument("--address", default=None, metavar="HOST:PORT",
                     help="with --executor ray: a running Ray cluster's head (default: start "
                          "a local cluster); overrides the config's ray_address")
    run.add_argument("--store-timeout", default=None, metavar="SECONDS",
                     help="how long to keep retrying a tracking server that stops answering "
                          "mid-study before stopping with exit 3 (default: 120); a rerun "
                          "finishes the study")
    run.add_argument("--yes", action="store_true",
                     help="start a study estimated at more than 30 min or 5 GB of store "
                          "without asking")
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `study show ... | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command == "ui":
        return _ui(args)
    from study.config import load_config
    from study.data import make_available
    from study.grid import expand_grid
    from study.plugins import add_to_path

    try:
        config = load_config(args.config, args.overrides, _flags(args))
        # the user's modules (model.builder, a loss's fn) may sit beside the config
        add_to_path(os.path.dirname(args.config) or ".")
        arms = expand_grid(config)
        if args.command == "run":
            args.store_timeout = _store_timeout(args.store_timeout)
            _check_store(args.tracking_uri)
        if args.command == "show":
            _show(config, arms, args.arms)
            return 0
        make_available(config.dataset)  # a missing Keras file is downloaded here
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return _run(config, args)


def _flags(args) -> dict[str, str]:
    """Config keys given as flags of ``run``."""
    flags = {"executor": getattr(args, "executor", None),
             "ray_address": getattr(args, "address", None)}
    return {key: value for key, value in flags.items() if value is not None}


def _check_store(uri: str | None) -> None:
    """The store, checked before TensorFlow is imported: a store that cannot be used costs
    a second, not a data load (``run_study`` checks it again for callers of the library)."""
    from study.tracking import check_store, default_tracking_uri

    check_store(uri or default_tracking_uri())


def _store_timeout(text: str | None) -> float:
    import math

    from study.tracking import STORE_TIMEOUT_S

    if text is None:
        return STORE_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"--store-timeout: {text!r} is not a number of seconds >= 0 "
                          f"(default {STORE_TIMEOUT_S:g})")
    return seconds


def _show(config, arms, every_arm: bool) -> None:
    """The study's size first: arms by start and loss (a table that fits a terminal), then
    steps per arm, estimated time and store, as ``run`` estimates them before it starts;
    the arms themselves with ``--arms``."""
    from study.inits import start_name
    from study.plan import estimate
    from study.run import preflight

    optimizers = sorted({arm.optimizer for arm in arms})
    print(f"study {config.name!r}: {len(arms):,} arms on {config.dataset}, "
          f"{config.epochs} epoch{'s' if config.epochs != 1 else ''} at batch size "
          f"{config.batch_size}, "
          f"optimizer{'s' if len(optimizers) > 1 else ''} {', '.join(optimizers)}")
    print(_arms_table(arms, config.losses, start_name))
    print("(arms per start and loss: seeds x learning rates"
          + (" x optimizers)" if len(optimizers) > 1 else ")"), flush=True)
    flight = preflight(config)  # the estimate's step count and the model's size
    print(estimate(config, flight, list(flight.arms)).describe())
    if not every_arm:
        print("--arms lists every arm")
        return
    print(f"\n{'loss':<12} {'init':<16} {'severity':>8} {'seed':>5} {'lr':>8}  key")
    for arm in arms:
        print(f"{arm.loss:<12} {arm.init:<16} {arm.severity:>8g} {arm.seed:>5} {arm.lr:>8g}"
              f"  {arm.key}")


def _arms_table(arms, losses, start_name) -> str:
    """Rows: the starts in the config's order; columns: the losses; cells: arm counts."""
    from collections import Counter

    starts = list(dict.fromkeys((arm.init, arm.severity) for arm in arms))
    counts = Counter((arm.init, arm.severity, arm.loss) for arm in arms)
    names = [start_name(*start) for start in starts]
    first = max(len("start"), *map(len, names))
    columns = [(loss, max(len(loss), 4)) for loss in losses]
    lines = ["start".ljust(first) + "".join(f"  {loss:>{w}}" for loss, w in columns)]
    for name, start in zip(names, starts, strict=True):
        lines.append(name.ljust(first) + "".join(
            f"  {counts[(*start, loss)]:>{w}}" for loss, w in columns))
    return "\n".join(lines)


def _interruptible() -> list[int]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, once: the study then keeps
    the arms it finished, marks its parent run KILLED and says so. A second Ctrl-C or
    SIGTERM during that clean-up ends the process at once, without a traceback. Returns the
    list the signal received is recorded in: the exit code follows it, not the exception,
    which library code (Ray's waits) may catch and raise again as a plain
    KeyboardInterrupt."""
    received: list[int] = []

    def now(signum, frame):
        os._exit(128 + signum)

    def first(signum, frame):
        received.append(signum)
        signal.signal(signal.SIGINT, now)
        signal.signal(signal.SIGTERM, now)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)
    signal.signal(signal.SIGTERM, first)
    return received


def _confirm(args):
    def confirm(estimate) -> None:
        print(f"study: {estimate.describe()}", flush=True)
        if not estimate.needs_confirmation or args.yes:
            return
        if not sys.stdin.isatty():
            raise ConfigError(f"this study is big ({estimate.describe()}): rerun with --yes "
                              "to start it, or shrink it (fewer seeds, rates or epochs)")
        if input("Start it? [y/N] ").strip().lower() not in ("y", "yes"):
            raise ConfigError("not started")

    return confirm


# Exit codes: 0 done, 1 a chunk failed on Ray or the store is full (what was stored is kept),
# 2 bad input (nothing written), 3 the tracking server went away mid-study (what was stored
# is kept; rerun when it is back), 130/143 Ctrl-C/SIGTERM.
STORE_GONE = 3


def _run(config, args) -> int:
    from study.browse import stored_view_key
    from study.errors import StoreFull, StoreUnreachable
    from study.run import run_study
    from study.tracking import browse_link

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    received = _interruptible()
    try:
        result = run_study(config, args.tracking_uri, progress=not args.quiet, force=args.force,
                           store_timeout=args.store_timeout, confirm=_confirm(args),
                           say=lambda line: print(line, flush=True))
    except ConfigError as err:  # found once the data is loaded, still before any run exists
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ChunkFailed as err:  # the parent run ended FAILED; finished chunks are stored
        print(f"error: {err}", file=sys.stderr)
        return 1
    except StoreUnreachable as err:
        print(f"error: {_gone(err)}", file=sys.stderr)
        return STORE_GONE
    except StoreFull as err:  # the parent run ended FAILED if it could still be written
        print(f"error: {_full(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        kept = getattr(err, "arms_kept", 0)
        print(f"\ninterrupted: {kept} arms kept, rerun to finish", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    trained, skipped = len(result.results), len(result.skipped)
    print(f"study {config.name!r}: trained {trained} arms"
          + (f" in {result.wall_seconds:.0f} s ({config.trainer} trainer"
             f"{' on Ray' if config.executor == 'ray' else ''}; waited "
             f"{result.logging_seconds:.1f} s for MLflow)" if trained else "")
          + (f", skipped {skipped} already finished (use --force to retrain)" if skipped else "")
          + (f"; their {result.superseded} earlier runs are in MLflow's trash (mlflow runs "
             "restore brings one back)" if result.superseded else "")
          + (f"; {len(result.diverged)} diverged" if result.diverged else ""))
    print(f"MLflow store: {result.tracking_uri}")
    print(f"experiment {config.name!r} (id {result.experiment_id})"
          + (f", parent run {result.parent_run_id}" if result.parent_run_id else
             ": nothing to train, so no new run"))
    key = stored_view_key(result.tracking_uri, result.experiment_id)
    print(f"browse it: {browse_link(result.tracking_uri, result.experiment_id, key, args.port)}")
    return 0


def _ui(args) -> int:
    """Print the links, then become `mlflow ui` (one worker and no job runner: 2 processes,
    not 16; `make server` is for many users)."""
    import shutil
    from pathlib import Path
    from urllib.parse import urlparse

    from study.browse import study_links, ui_port
    from study.tracking import absolute_uri, check_store, default_tracking_uri, relocate_artifacts

    uri = args.tracking_uri or default_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        print(f"error: {uri} is a tracking server already: open it in a browser "
              "(python -m study run prints the study's link)", file=sys.stderr)
        return 2
    port = ui_port(args.port)
    try:
        check_store(uri, must_exist=True)
        _check_port_free(port)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    uri = absolute_uri(uri)
    relocate_artifacts(uri)  # a store moved with its mlartifacts/ folder shows its artifacts
    links = study_links(uri, port)
    for name, link in links:
        print(f"study {name!r}: {link}")
    if not links:
        print(f"no study in {uri} has a saved view yet (make run-study writes one); "
              "serving it anyway")
    print(f"serving {uri} on http://127.0.0.1:{port} (Ctrl-C stops)", flush=True)
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # uvicorn's access log is a line per request, hundreds per page: off unless asked for
    quiet = [] if args.verbose else ["--uvicorn-opts", "--no-access-log"]
    # study.ui_app: MLflow's server, its page with the study's colours and model-training view;
    # MLflow and its uvicorn import it from this study package, not another one installed
    package_root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    os.execvp(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                      "--port", str(port), "--workers", "1", "--app-name", "study", *quiet])


def _check_port_free(port: int) -> None:
    """`mlflow ui` on a port that another program holds would print a link to that program
    and exit 0: refuse, and name a port that is free now."""
    if not 0 < port < 65536:
        raise ConfigError(f"$PORT: {port} is not a port (1-65535)")
    if _bindable(port):
        return
    free = next((p for p in range(port + 1, min(port + 100, 65536)) if _bindable(p)), 0)
    if not free:  # none near it: one the kernel picks
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
    raise ConfigError(f"port {port} is in use by another program; serve on a free one, e.g. "
                      f"--port {free} (make ui PORT={free})")


def _bindable(port: int) -> bool:
    # as the server will bind it: loopback, with SO_REUSEADDR (a port in TIME_WAIT is free)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _gone(err) -> str:
    """One line: which server, for how long, what is stored and what a rerun trains."""
    if err.arms_stored is None:  # before the study knew what the store holds
        return f"{err}; rerun when it is back"
    stored = "1 arm is" if err.arms_stored == 1 else f"{err.arms_stored} arms are"
    return (f"{err}; {stored} stored, rerun when it is back to train the other "
            f"{err.arms_total - err.arms_stored}")


def _full(err) -> str:
    """One line: which store, what is stored and what a rerun trains once there is room."""
    if err.arms_stored is None:  # before the study knew what the store holds
        return f"{err}: free space and rerun"
    stored = "1 arm" if err.arms_stored == 1 else f"{err.arms_stored} arms"
    return (f"{err}: {stored} stored, free space and rerun to train the other "
            f"{err.arms_total - err.arms_stored}")


def _report(args) -> int:
    """Exit 0 written, 1 the notebook failed or the disk is full, 2 bad input or a path the
    report may not write (nothing changed), 130/143 Ctrl-C/SIGTERM (the report being built
    is discarded with its scratch folders; those already in place stay)."""
    import errno
    from pathlib import Path

    from study.report import NotebookFailed, build_reports
    from study.report_files import DISK_FULL
    from study.tracking import check_store, default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    received = _interruptible()
    _quiet_when_interrupted()
    try:
        check_store(uri, must_exist=True)  # a store that is not there is not made
        paths = build_reports(uri, args.experiment, Path(args.out),
                              say=lambda line: print(line, flush=True), progress=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NotebookFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno in DISK_FULL:
            where = f" ({err.filename})" if err.filename else ""
            print(f"error: {err.strerror}{where}; the reports already under --out are as "
                  "they were", file=sys.stderr)
            return 1
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            print(f"error: cannot write {err.filename or args.out}: {err.strerror}",
                  file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("\ninterrupted: no report half-written, rerun to finish", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    for name, path in paths:
        print(f"wrote {path}" + (f" (experiment {name!r})" if path.parent.name != name else ""))
    return 0


def _quiet_when_interrupted() -> None:
    """On top of ``_interruptible``: once stopped, the notebook's kernel is ended at once and
    the notebook machinery's own echoes of the stop (the kernel 'died', a pending task's
    exception) are not printed, so the stop is one line."""
    import logging

    then = signal.getsignal(signal.SIGINT)

    def quiet(signum, frame):
        for name in ("papermill", "asyncio", "traitlets"):
            logging.getLogger(name).disabled = True
        from study.report import end_kernels

        end_kernels()  # before the kernel, cut off mid-cell, prints its own tracebacks
        then(signum, frame)

    signal.signal(signal.SIGINT, quiet)
    signal.signal(signal.SIGTERM, quiet)
