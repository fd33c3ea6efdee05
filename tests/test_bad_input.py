"""Every row of README.md's "Bad input" table, run: exit 2, one line on stderr that says
what is wrong, and nothing in the MLflow store or on disk. The table is the test's input, so
the README cannot promise a row that is not tested."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import sqlite3
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


def _foreign_db(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")


def _bomb() -> str:
    """361 bytes that a YAML loader without bounds expands to 9**9 values."""
    text, previous = 'name: a\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n', "a"
    for name in "bcdefghi":
        text += f"{name}: &{name} [{','.join([f'*{previous}'] * 9)}]\n"
        previous = name
    return text + f"losses: *{previous}\n"


# The files and folders a row may name, made in its working directory before it runs.
FIXTURES = {
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
    "notes.db": lambda path: path.write_text("my notes\n"),
    "empty.db": lambda path: path.write_bytes(b""),
}


def _arguments(args: str, tmp_path, monkeypatch) -> list[str]:
    """The row's arguments with its placeholders made real."""
    replacements = {
        "PORT": str(_free_port()),  # nothing listens there
        "LONG300": "x" * 300,
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
        if "corrupt" in args:  # a truncated mnist.npz where Keras keeps it
            (tmp_path / "keras" / "datasets").mkdir(parents=True)
            np.savez(tmp_path / "keras" / "datasets" / "mnist.npz", x_train=np.zeros(3))
            data = (tmp_path / "keras" / "datasets" / "mnist.npz").read_bytes()
            (tmp_path / "keras" / "datasets" / "mnist.npz").write_bytes(data[:200])
            args = args.replace(" corrupt", "")
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


@pytest.mark.parametrize(("args", "message"), ROWS, ids=[a[:40] for a, _ in ROWS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                            args, message):
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


@pytest.mark.slow
def test_no_name_from_the_store_reaches_outside_the_report_folder(tmp_path, capsys):
    """Studies renamed in the MLflow UI to names that would escape `--out`: `study report`
    writes each inside `--out`, under a folder named from it, and a canary beside `--out`
    (and the folder above it) survives."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    client = MlflowClient(uri)
    for i, name in enumerate(BAD_NAMES):
        assert main(["run", SMOKE, "--set", f"name=study{i}", "--set", "losses=[cce]",
                     "--tracking-uri", uri, "--quiet"]) == 0
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
    assert all(len(folder.name) <= 100 and not folder.name.startswith(".")
               for folder in written)
    assert "(experiment '..')" in printed  # the mapping is shown
    assert sorted(p.name for p in (tmp_path / "sandbox").iterdir()) == ["CANARY", "reports"]
