"""Every row of README.md's "Bad input" table, run: exit 2, one line on stderr that says
what is wrong, and nothing in the MLflow store or on disk. The table is the test's input, so
the README cannot promise a row that is not tested."""

from __future__ import annotations

import re
import socket
import time

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


def _arguments(args: str, tmp_path, monkeypatch) -> list[str]:
    """The row's arguments with its placeholders made real."""
    replacements = {
        "PORT": str(_free_port()),  # nothing listens there
        "LONG300": "x" * 300,
        "LONG7000": "x" * 7000,
        "SEEDS20000": str(list(range(20000))).replace(" ", ""),
    }
    for key, value in replacements.items():
        args = args.replace(key, value)
    if "dup.yaml" in args:
        (tmp_path / "dup.yaml").write_text("name: a\nname: b\n")
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


@pytest.mark.parametrize(("args", "message"), ROWS, ids=[a[:40] for a, _ in ROWS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                            args, message):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = _arguments(args, tmp_path, monkeypatch)
    if "--tracking-uri" not in argv:
        argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    before = sorted(p.name for p in tmp_path.iterdir())
    started = time.monotonic()
    code = main(["run", *argv, "--quiet"])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0]
    assert seconds < 10  # a dead tracking server included
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no file


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
