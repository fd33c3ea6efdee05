"""Every row of README.md's "Bad input" table, run: exit 2, one line on stderr that says
what is wrong, and nothing in the MLflow store or on disk. The table is the test's input, so
the README cannot promise a row that is not tested."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from study.cli import main
from tests.conftest import CONFIGS, ROOT

SMOKE = str(CONFIGS / "smoke.yaml")


def _table() -> list[tuple[str, str]]:
    """(arguments, message) of each row of the README's bad-input table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(.+?)` \| `(.+?)` \|$", section, flags=re.M)
    return [(args, message) for args, message in rows]


ROWS = _table()


def test_the_table_has_at_least_25_rows():
    assert len(ROWS) >= 25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _foreign_db(path: Path, journal: str = "delete") -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")


def _bomb() -> str:
    """361 bytes that a YAML loader without bounds expands to 9**9 values."""
    text, previous = 'name: a\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n', "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]\n"
        previous = name
    return text + f"losses: *{previous}\n"


# A user's module for the rows on own losses and model.builder (named for this test only:
# modules are cached per process).
PLUGINS = """
import keras
from keras import ops

def focal(y_true, y_pred):
    return -ops.sum(y_true * ops.square(1 - y_pred) * ops.log(ops.clip(y_pred, 1e-7, 1)), -1)

def mean(y_true, y_pred):
    return ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred))

def centred(y_true, y_pred):
    values = keras.losses.categorical_crossentropy(y_true, y_pred)
    return values - ops.mean(values)

three = 3

def logits(input_shape, n_classes, output):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(n_classes, name="logits")])
"""

# The files and folders a row may name, made in its working directory before it runs.
FIXTURES = {
    "table_plugins": lambda path: path.with_suffix(".py").write_text(PLUGINS),
    "dup.yaml": lambda path: path.write_text("name: a\nname: b\n"),
    "bomb.yaml": lambda path: path.write_text(_bomb()),
    "deep.yaml": lambda path: path.write_text("name: " + "[" * 20000 + "]" * 20000 + "\n"),
    "big.yaml": lambda path: path.write_text("seeds: [" + "0," * 550_000 + "]\n"),
    "many.yaml": lambda path: path.write_text("seeds: [" + ",".join(["0"] * 400_000) + "]\n"),
    "latin1.yaml": lambda path: path.write_bytes("name: café\n".encode("latin-1")),
    "binary.yaml": lambda path: path.write_bytes(bytes(range(256)) * 4),
    "bigint.yaml": lambda path: path.write_text("name: x\nepochs: " + "9" * 5000 + "\n"),
    "sqlite:///folder": lambda path: path.mkdir(),
    "foreign.db": _foreign_db,
    "foreign-wal.db": lambda path: _foreign_db(path, "wal"),  # read without a -wal or -shm
    "notes.db": lambda path: path.write_text("my notes\n"),
    "empty.db": lambda path: path.write_bytes(b""),
    # a user's own .npz files, each wrong in one way (study.user_data)
    "nolabels.npz": lambda path: _npz(path, y_train=None),
    "mismatch.npz": lambda path: _npz(path, y_train=np.arange(99) % 10),
    "toomany.npz": lambda path: _npz(path),  # labels 0-9, with classes: 5
    "fraction.npz": lambda path: _npz(path, y_train=np.full(100, 0.5)),
    "nan.npz": lambda path: _npz(path, x_train=np.where(np.arange(100)[:, None, None] == 3,
                                                        np.nan, np.ones((100, 8, 8)))),
    "strings.npz": lambda path: _npz(path, x_train=np.full((100, 2), "a")),
    "pickle.npz": lambda path: _npz(path, x_train=np.array([[1], [1, 2]] * 50, dtype=object)),
    "huge.npz": lambda path: _npz(path, x_train=np.full((100, 8, 8), 1e300)),
    "tiny.npz": lambda path: _npz(path, x_train=np.ones((5, 8, 8)), y_train=np.arange(5)),
    "notzip.npz": lambda path: path.write_text("x_train,y_train\n1,0\n"),
}


def _npz(path: Path, **arrays) -> None:
    """100 8x8 examples of 10 classes, with ``arrays`` replaced (None: left out)."""
    arrays = {"x_train": np.ones((100, 8, 8)), "y_train": np.arange(100) % 10} | arrays
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})


def _arguments(args: str, tmp_path, monkeypatch) -> list[str]:
    """The row's arguments with its placeholders made real."""
    replacements = {
        "PORT": str(_free_port()),  # nothing listens there
        "LONG300": "x" * 300,
        "LONG7000": "x" * 7000,
        "SEEDS20000": str(list(range(20000))).replace(" ", ""),
        "DEEP20000": "[" * 20000 + "]" * 20000,
    }
    for key, value in replacements.items():
        args = args.replace(key, value)
    for name, make in FIXTURES.items():
        if name in args:
            make(tmp_path / name.removeprefix("sqlite:///"))
    if "dataset=mnist" in args:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
        # offline: Keras' download is pointed at a loopback port where nothing listens
        monkeypatch.setattr("study.keras_files.ORIGIN", f"http://127.0.0.1:{_free_port()}/")
        if "corrupt" in args:  # a truncated mnist.npz where Keras keeps it
            (tmp_path / "keras" / "datasets").mkdir(parents=True)
            np.savez(tmp_path / "keras" / "datasets" / "mnist.npz", x_train=np.zeros(3))
            data = (tmp_path / "keras" / "datasets" / "mnist.npz").read_bytes()
            (tmp_path / "keras" / "datasets" / "mnist.npz").write_bytes(data[:200])
            args = args.replace(" corrupt", "")
    if "table_plugins" in args:  # Python's own cache of the module is not the harness's
        monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.chdir(tmp_path)  # relative files (dup.yaml) and nothing written elsewhere
    if args == "configs":
        return [str(CONFIGS)]
    words = args.replace("configs/smoke.yaml", SMOKE).split(" --")
    argv = words[0].split(" ", 1)
    for word in words[1:]:
        flag, _, value = word.partition(" ")
        argv += [f"--{flag}"] + ([value] if value else [])
    return argv


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under ``folder``, with each file's size and content hash."""
    return {str(path.relative_to(folder)): (path.stat().st_size,
                                            hashlib.sha256(path.read_bytes()).hexdigest())
            if path.is_file() else "folder" for path in folder.rglob("*")}


@pytest.fixture(scope="session")
def imported():
    """TensorFlow and scikit-learn imported once before the rows are timed: the rows run in
    one process, so only the first row that needs them would pay their import (5-15 s on a
    busy 2-core machine), and the 10 s bound is about the checks and the store's timeouts."""
    from study.backend import start_tensorflow
    from study.data import load_dataset

    start_tensorflow()
    load_dataset("digits", 0)


@pytest.mark.parametrize(("args", "message"), ROWS, ids=[a[:40] for a, _ in ROWS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                            args, message, imported):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = _arguments(args, tmp_path, monkeypatch)
    if "--tracking-uri" not in argv:
        argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    before = snapshot(tmp_path)
    started = time.monotonic()
    code = main(["run", *argv, "--quiet"])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0]
    assert len(err[0]) <= 400  # the user's input quoted in part, never whole
    assert seconds < 10  # a dead tracking server included
    assert snapshot(tmp_path) == before  # no store, no lock file, no change to any file


BAD_NAMES = ["..", ".", "../x", "/tmp/abs-study", "x" * 300]


def test_no_name_from_the_store_reaches_outside_the_report_folder(tmp_path, capsys,
                                                                   monkeypatch):
    """Studies renamed in the MLflow UI to names that would escape `--out`: `study report`
    writes each inside `--out`, under a folder named from it, and a canary beside `--out`
    (and the folder above it) survives. Where a report may write depends on the study's
    name alone, so the studies are stores' parent runs with no arms (what `study run`
    leaves when every arm is refused; tests/test_report.py renders one with the real
    notebook): no training, and a title-only notebook (``title_only_notebooks``)."""
    from mlflow.tracking import MlflowClient

    import study.report
    from tests.conftest import parent_only_store, title_only_notebooks

    monkeypatch.setattr(study.report, "NOTEBOOKS", title_only_notebooks(tmp_path / "nb"))

    (tmp_path / "store").mkdir()
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = MlflowClient(uri)
    for i, name in enumerate(BAD_NAMES):
        parent_only_store(tmp_path / "store", f"study{i}")
        client.rename_experiment(client.get_experiment_by_name(f"study{i}").experiment_id,
                                 name)
    out = tmp_path / "sandbox" / "reports"
    out.mkdir(parents=True)
    canaries = [tmp_path / "sandbox" / "CANARY", tmp_path / "CANARY", out / "other-study.txt"]
    for canary in canaries:
        canary.write_text("still here")
    capsys.readouterr()
    assert main(["report", "--tracking-uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(canary.read_text() == "still here" for canary in canaries)
    written = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(written) == len(BAD_NAMES)
    assert all((folder / "report.html").is_file() for folder in written)
    assert all("How fast does each loss converge" in (folder / "report.html").read_text()
               for folder in written)  # the title-only notebook, rendered
    assert all(len(folder.name) <= 100 and not folder.name.startswith(".")
               for folder in written)
    assert "(experiment '..')" in printed  # the mapping is shown
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["CANARY", "reports"]


# ---- the store, for the cases the table cannot set up ----------------------------------


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """A new, empty MLflow SQLite store, made by MLflow itself; tests that change it copy it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _study(*args: str, read_only: tuple[Path, ...] = ()) -> tuple[int, list[str], str]:
    """``python -m study ARGS`` from the worktree: (exit code, stderr lines, stdout), with the
    ``read_only`` folders and files made read-only for it. Root writes through permission
    bits, so under root they are bind-mounted read-only in a mount namespace of the
    command's own (as on a read-only file system); otherwise their modes are cleared."""
    command = [sys.executable, "-m", "study", *args]
    modes = {}
    if read_only and os.geteuid() == 0:
        mounts = " && ".join(f"mount --bind -o ro {shlex.quote(str(p))} {shlex.quote(str(p))}"
                             for p in read_only)
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'{mounts} && exec "$@"', "sh", *command]
    else:
        for path in read_only:
            modes[path] = path.stat().st_mode
            path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    return done.returncode, done.stderr.strip().splitlines(), done.stdout


def test_a_read_only_store_or_folder_exits_2_before_any_file_is_made(tmp_path, mlflow_store):
    locked, writable = tmp_path / "locked", tmp_path / "writable"
    for folder in (locked, writable):
        folder.mkdir()
        shutil.copy(mlflow_store, folder / "mlflow.db")
    cases = [(locked / "new.db", f"folder {locked} cannot be written"),
             (locked / "mlflow.db", f"the store {locked / 'mlflow.db'} cannot be written"),
             (writable / "mlflow.db", f"the store {writable / 'mlflow.db'} cannot be written")]
    before = snapshot(tmp_path)
    for db, message in cases:
        started = time.monotonic()
        code, err, _ = _study("run", SMOKE, "--quiet", "--tracking-uri", f"sqlite:///{db}",
                              read_only=(locked, writable / "mlflow.db"))
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert time.monotonic() - started < 10  # the process's start included
    assert snapshot(tmp_path) == before  # no lock file, no journal, no table


def _in_process(command: str, *args: str, capsys, monkeypatch) -> tuple[int, list[str], str]:
    """``study COMMAND ARGS`` through ``study.cli.main`` in this process, as ``_study`` gives
    it. ``ui`` ends by becoming ``mlflow ui`` (os.execvp): here that would replace the test
    run, so it fails the test instead."""
    def no_exec(*args):
        raise AssertionError(f"study {command} went on to start {args[1][:2]}")

    monkeypatch.setattr(os, "execvp", no_exec)
    capsys.readouterr()
    code = main([command, *args])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


@pytest.mark.parametrize("command", ["report", "ui"])
def test_report_and_ui_refuse_a_missing_or_foreign_store_and_create_nothing(
        tmp_path, command, capsys, monkeypatch):
    """Each case in this process (the refusal is the CLI's, before anything is started);
    the foreign database once more through the real ``python -m study`` entry point."""
    _foreign_db(tmp_path / "foreign.db")
    (tmp_path / "folder").mkdir()
    cases = [(f"sqlite:///{tmp_path / 'mlflow.db'}", f"no MLflow store at {tmp_path}/mlflow.db"),
             (f"sqlite:///{tmp_path / 'new' / 'm.db'}", "no MLflow store at"),
             (f"sqlite:///{tmp_path / 'foreign.db'}", "is a database of another program"),
             (f"sqlite:///{tmp_path / 'folder'}/", "ends in '/', a folder"),
             ("sqlite:///:memory:", "names no file")]
    before = snapshot(tmp_path)
    out = ["--out", str(tmp_path / "reports")] if command == "report" else []
    for uri, message in cases:
        code, err, stdout = _in_process(command, "--tracking-uri", uri, *out, capsys=capsys,
                                        monkeypatch=monkeypatch)
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert stdout == ""
    uri, message = cases[2]
    code, err, stdout = _study(command, "--tracking-uri", uri, *out)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert stdout == ""
    assert snapshot(tmp_path) == before  # no store, no reports/ folder, the foreign file as it was


def test_ui_on_a_busy_port_exits_2_and_names_a_free_one(mlflow_store, capsys, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err, stdout = _in_process("ui", "--tracking-uri", f"sqlite:///{mlflow_store}",
                                        "--port", str(port), capsys=capsys,
                                        monkeypatch=monkeypatch)
        assert code == 2 and len(err) == 1, err
        assert f"port {port} is in use by another program" in err[0]
        assert stdout == ""  # no link to whatever owns the port
        free = int(re.search(r"--port (\d+) \(make ui PORT=\1\)", err[0]).group(1))
        assert free != port
        with socket.socket() as probe:  # free indeed
            probe.bind(("127.0.0.1", free))


def test_a_study_into_an_experiment_in_the_trash_exits_2_and_says_how_to_restore_it(
        tmp_path, mlflow_store, capsys):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlflow.db"
    shutil.copy(mlflow_store, store)
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.create_experiment("smoke")
    client.delete_experiment(experiment)
    before = snapshot(tmp_path)
    assert main(["run", SMOKE, "--quiet", "--tracking-uri", f"sqlite:///{store}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: experiment 'smoke' (id {experiment}) is in MLflow's trash: restore "
                   f"it (mlflow experiments restore --experiment-id {experiment}), or pick "
                   "another name (--set name=...), or empty the trash for good (mlflow gc)"]
    assert client.search_runs([experiment], run_view_type=ViewType.ALL) == []
    after = snapshot(tmp_path)
    after.pop(".mlflow.db.schema.lock", None)  # the harness's own lock beside its own store
    assert after == before
