"""`python -m study` processes forked from a parent that has imported TensorFlow, Keras,
MLflow and the study once, for the tests whose subject is a process (kill -9, a signal, a
store outage, a lock): each fresh interpreter spent 10-15 s of CPU importing before it did
anything the test looks at. A forked child runs `study/__main__.py` as `python -m study`
would, with its own argv, working directory, environment and standard streams, and behaves
as a `subprocess.Popen` to the test: its pid takes signals, and its exit status is Popen's
(negative for a signal). The parent has run no TensorFlow op, so each child starts
TensorFlow's runtime itself, with the study's thread settings. Start-up itself (imports,
the CLI's first lines) stays covered by the tests that still start real interpreters, and
so does anything a module reads from the environment as it is imported (KERAS_HOME, say):
in a fork that is the parent's, so a test that changes such a variable starts a real
interpreter.

The parent (``serve``) is one thread: it accepts a request on a Unix socket with the
child's three standard streams passed as file descriptors, forks, answers the child's pid,
and, when the child ends, its exit status, on the same connection."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Imported by the parent before any fork: what every study process imports first.
PRELOAD = ("keras", "tensorflow", "mlflow", "mlflow.tracking",
           "mlflow.store.tracking.sqlalchemy_store", "sklearn.datasets", "pandas",
           "scipy.stats", "study.cli", "study.run", "study.config", "study.train.batched",
           "study.tracking", "study.executors", "study.plan")


def serve(path: str) -> None:
    """The parent: preload, then fork a child per request until stdin closes."""
    import importlib

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from study.backend import native_stderr_silenced

    with native_stderr_silenced():
        for name in PRELOAD:
            importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that asked for it
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            break  # the test session is gone
        if listener in readable:
            connection, _ = listener.accept()
            request, fds = _receive(connection)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in waiting.values():
                    other.close()
                connection.close()
                _child(request, fds)  # never returns
            for fd in fds:
                os.close(fd)
            connection.sendall(f"{pid}\n".encode())
            waiting[pid] = connection
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = waiting.pop(pid, None)
            if connection is not None:
                with contextlib.suppress(OSError):  # a test that stopped listening
                    connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                connection.close()


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    return json.loads(message), list(fds)


def _child(request: dict, fds: list[int]) -> None:
    """Become ``python -m study <argv>`` with the request's streams, folder and environment,
    and leave as that interpreter would: threads joined, exit handlers run."""
    import atexit
    import runpy
    import threading
    import traceback

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile

        tempfile.tempdir = None  # the parent's, if an import asked: TMPDIR is the child's
        sys.path[0] = request["cwd"]  # as -m puts the working directory first
        sys.argv = ["study", *request["argv"]]
        if request.get("file_size_limit") is not None:  # a write past it fails with EFBIG
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            limit = request["file_size_limit"]
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            runpy.run_module("study", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as ended:
            code = ended.code if isinstance(ended.code, int) else (ended.code is not None)
            if ended.code is not None and not isinstance(ended.code, int):
                print(ended.code, file=sys.stderr)
        except KeyboardInterrupt:  # as the interpreter does: die of the signal
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
        threading._shutdown()  # what the interpreter's exit does before its exit handlers
        atexit._run_exitfuncs()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


class Forked:
    """A forked `python -m study` process, as much of `subprocess.Popen` as the tests use."""

    def __init__(self, socket_path: Path, args: list[str], cwd, env, stdin, stdout, stderr,
                 file_size_limit: int | None = None):
        if list(args[1:3]) != ["-m", "study"]:
            raise ValueError(f"only `python -m study ...` is forked, not {args}")
        self.args = args
        self.returncode: int | None = None
        self.stdout = self.stderr = None
        ours: list[int] = []  # our copies of the child's ends, closed once they are sent
        fds = [self._fd(stdin, 0, ours), self._fd(stdout, 1, ours)]
        fds.append(fds[1] if stderr == subprocess.STDOUT else self._fd(stderr, 2, ours))
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connection.connect(str(socket_path))
        request = {"argv": list(args[3:]), "cwd": str(cwd or os.getcwd()),
                   "env": dict(os.environ if env is None else env),
                   "file_size_limit": file_size_limit}
        socket.send_fds(self._connection, [json.dumps(request).encode()], fds)
        for fd in ours:
            os.close(fd)
        self._buffer = b""
        self.pid = int(self._line(None))

    def _fd(self, spec, default: int, ours: list[int]) -> int:
        if spec is None:
            return default
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            ours.append(fd)
            return fd
        if spec == subprocess.PIPE:
            read, write = os.pipe()
            child, mine = (read, write) if default == 0 else (write, read)
            ours.append(child)
            stream = open(mine, "wb" if default == 0 else "rb")  # noqa: SIM115 (Popen's)
            setattr(self, ("stdin", "stdout", "stderr")[default], stream)
            return child
        return spec if isinstance(spec, int) else spec.fileno()

    def _line(self, timeout: float | None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._connection.settimeout(left)
            try:
                chunk = self._connection.recv(64)
            except (TimeoutError, BlockingIOError):  # BlockingIOError: a timeout of 0
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            if not chunk:
                raise RuntimeError("the fork server went away")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = int(self._line(0))
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a pid the server has reaped and the system reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[bytes | None, bytes | None]:
        streams = [s for s in (self.stdout, self.stderr) if s is not None]
        read = {s: b"" for s in streams}
        deadline = None if timeout is None else time.monotonic() + timeout
        while streams:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(streams, [], [], left)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for stream in ready:
                chunk = os.read(stream.fileno(), 1 << 16)
                if chunk:
                    read[stream] += chunk
                else:
                    streams.remove(stream)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return read.get(self.stdout), read.get(self.stderr)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()
        self._connection.close()


class StudyForks:
    """The fork server of one test process (the session fixture ``study_forks``)."""

    def __init__(self, folder: Path, root: Path):
        self.socket_path = folder / "forks.sock"
        env = {**os.environ, "PYTHONPATH": str(root)}
        serving = f"from tests.forks import serve; serve({str(self.socket_path)!r})"
        self._server = subprocess.Popen(
            [sys.executable, "-c", serving],
            cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._ready = False

    def _wait_ready(self) -> None:
        if not self._ready:
            line = self._server.stdout.readline()
            if line != b"ready\n":
                raise RuntimeError(f"the fork server did not start: {line!r}")
            self._ready = True

    def popen(self, args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None,
              file_size_limit: int | None = None) -> Forked:
        """``subprocess.Popen(args, ...)`` for ``args = [python, "-m", "study", ...]``, in
        bytes; ``file_size_limit``: RLIMIT_FSIZE, a write past it failing with EFBIG."""
        self._wait_ready()
        return Forked(self.socket_path, args, cwd, env, stdin, stdout, stderr,
                      file_size_limit)

    def run(self, args, *, cwd=None, env=None, stdout=None, stderr=None,
            timeout: float | None = None, text: bool = False,
            file_size_limit: int | None = None) -> subprocess.CompletedProcess:
        """``subprocess.run`` of a forked `python -m study` process."""
        with self.popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                        stderr=stderr, file_size_limit=file_size_limit) as process:
            try:
                out, err = process.communicate(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
        if text:
            out, err = (None if s is None else s.decode() for s in (out, err))
        return subprocess.CompletedProcess(args, process.returncode, out, err)

    def close(self) -> None:
        self._server.stdin.close()  # the server leaves when its stdin closes
        try:
            self._server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()
