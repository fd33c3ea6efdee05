"""Report files: what ``study report`` may write, replace and remove on disk.

The program deletes or replaces only what it created. A report folder carries a marker file,
``.study-report`` (JSON: the experiment, its parent run, who wrote it); only a folder with
that marker, for the same experiment, is replaced. The new report is built whole in a
scratch folder of the run's own inside ``--out``; then the old folder is renamed into that
scratch folder, the new one renamed into its place, and the scratch folder (with the old
report) removed last. Anything else at a report's path (a folder without the marker, a file,
a symlink) is refused with one line, before anything is written.

Scratch folders (in ``--out``, and in the temp folder for the notebook kernel's sockets and
the executed notebook) carry a marker naming the process that made them. They are removed
when the run ends, however it ends short of kill -9; after a kill -9 the next report run
removes those whose process is gone, and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path

MARKER = ".study-report"  # in every report folder
SCRATCH_MARKER = ".study-report-scratch"  # in every scratch folder
SCRATCH_PREFIX = ".study-report-scratch-"  # a scratch folder in --out (no report's name)
KERNEL_PREFIX = "study-report-kernel-"  # a scratch folder in the temp folder
CREATED_BY = "python -m study report"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class Refused(ValueError):
    """A path the report will not write to or replace: one line, exit 2."""


def check_out(out_dir: Path) -> None:
    """``--out`` is a folder, or can be made one."""
    if out_dir.is_symlink() and not out_dir.exists():
        raise Refused(f"--out {out_dir} is a symlink to nothing: remove it or give a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise Refused(f"--out {out_dir} is a file, not a folder: give a folder for the reports")
    ancestor = next(p for p in [out_dir.absolute(), *out_dir.absolute().parents] if p.exists())
    if not ancestor.is_dir():
        raise Refused(f"--out {out_dir}: {ancestor} is a file, not a folder")


def check_replaceable(final: Path, experiment: str) -> None:
    """Nothing at ``final``, or a report folder of ``experiment`` that a report wrote."""
    what_to_do = "move it away or give another --out"
    if final.is_symlink():
        raise Refused(f"{final} is a symlink, not a report folder: {what_to_do}")
    if not final.exists():
        return
    if not final.is_dir():
        raise Refused(f"{final} is a file, not a report folder: {what_to_do}")
    owner = _read(final / MARKER)
    if owner is None:
        raise Refused(f"{final} exists and was not written by study report (no {MARKER} "
                      f"file in it): {what_to_do}")
    if owner.get("experiment") != experiment:
        raise Refused(f"{final} holds the report of experiment {owner.get('experiment')!r}, "
                      f"not {experiment!r}: {what_to_do}")


def write_marker(folder: Path, experiment: str, parent_run_id: str) -> None:
    (folder / MARKER).write_text(json.dumps({
        "created_by": CREATED_BY, "experiment": experiment, "parent_run_id": parent_run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1) + "\n")


def replace(final: Path, new: Path, experiment: str, scratch: Path) -> None:
    """Put the finished report folder ``new`` at ``final``: the old report (checked again,
    it may have changed while the notebook ran) is renamed aside into ``scratch`` first and
    put back if the new one cannot be renamed in."""
    check_replaceable(final, experiment)
    aside = scratch / f".previous-{final.name}"  # no report folder's name starts with '.'
    if final.exists():
        os.rename(final, aside)
    try:
        os.rename(new, final)
    except BaseException:
        if aside.exists() and not final.exists():
            os.rename(aside, final)
        raise


@contextlib.contextmanager
def out_folder(out_dir: Path):
    """``out_dir``, made with its missing parents if need be; the folders made here are
    removed again when the report fails and they are still empty."""
    made = [p for p in [out_dir.absolute(), *out_dir.absolute().parents] if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise unwritable(f"--out {out_dir}", err) from err
    try:
        yield out_dir
    except BaseException:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):  # not empty: something else is in it now
                folder.rmdir()
        raise


@contextlib.contextmanager
def scratch(parent: Path, prefix: str):
    """A fresh folder in ``parent`` carrying this process's scratch marker, removed on the
    way out; stale ones of dead runs in ``parent`` are removed first."""
    sweep(parent, prefix)
    where = "--out" if prefix == SCRATCH_PREFIX else "the temp folder"
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as err:
        raise unwritable(f"{where} {parent}", err) from err
    try:
        try:
            (path / SCRATCH_MARKER).write_text(json.dumps(_this_process()) + "\n")
        except OSError as err:
            raise unwritable(f"{where} {parent}", err) from err
        yield path
    finally:
        shutil.rmtree(path)


def unwritable(what: str, err: OSError) -> OSError:
    """One line for a folder the report cannot write: a full disk stays an OSError (exit
    1), anything else (read-only, no permission) is refused (exit 2)."""
    if err.errno in DISK_FULL:
        return OSError(err.errno, f"{what}: {err.strerror}: free some space and rerun")
    return Refused(f"{what} is not writable ({err.strerror}): give a folder you can write to")


def sweep(parent: Path, prefix: str) -> list[Path]:
    """Remove the scratch folders in ``parent`` left by report runs killed outright: only
    folders named ``prefix*`` that hold a scratch marker of a process of this machine that
    no longer runs."""
    removed = []
    for path in sorted(parent.glob(f"{prefix}*")):  # pathlib's glob sees hidden names too
        if path.is_symlink() or not path.is_dir():
            continue
        owner = _read(path / SCRATCH_MARKER)
        if owner is not None and not _running(owner):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def _this_process() -> dict:
    import psutil

    me = psutil.Process()
    return {"created_by": CREATED_BY, "host": socket.gethostname(), "pid": me.pid,
            "started": me.create_time()}


def _running(owner: dict) -> bool:
    """Whether the process a scratch marker names still runs (pids are reused: its start
    time must match too). Another machine's (a shared --out) counts as running."""
    import psutil

    if owner.get("host") != socket.gethostname():
        return True
    try:
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["started"])) < 1
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def _read(marker: Path) -> dict | None:
    """A marker's content if it is a regular file this program wrote, else None."""
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        content = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("created_by") == CREATED_BY \
        else None
