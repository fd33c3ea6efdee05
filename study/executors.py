"""Executors: where a study's arms train. ``local`` runs the trainer in this process; ``ray``
cuts the arms into chunks and trains each chunk as a Ray task on a cluster.

Both yield (arm, ArmResult) pairs to ``run.py``, which writes them to MLflow from this
process: workers never touch the store. An arm's values do not depend on the chunk, group or
slot it trains in (``study.train.batched``), so both executors store the same values, bit
for bit, on one machine type. A Ray chunk's arms reach the caller only when the whole chunk
has returned; a worker that dies has its chunk retried by Ray (``max_retries``), and a chunk
that fails for good stops the study with ``ChunkFailed``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator

from study import plugins
from study.config import StudyConfig
from study.data import Splits
from study.errors import ChunkFailed, ConfigError
from study.grid import Arm, by_group
from study.train.common import ArmResult

Pairs = Iterator[tuple[Arm, ArmResult]]
Advance = Callable[[float], None]

# Retries of a chunk whose worker died (killed, out of memory, node lost). A Python error in
# training is not retried: it would fail again the same way.
MAX_RETRIES = 3


class LocalExecutor:
    """Every arm in this process, through the config's trainer (the batched trainer reuses
    the groups this process has traced, the estimate's probe's among them)."""

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def train_arms(self, arms: list[Arm], config: StudyConfig, splits: Splits,
                   advance: Advance) -> Pairs:
        from study.train import trainer

        yield from trainer(config).train_arms(arms, config, splits, advance)


@functools.cache
def _splits(dataset: str, data_seed: int, scale, classes) -> Splits:
    """A worker's copy of the data, loaded once per worker process (deterministic)."""
    from study.data import load_dataset

    return load_dataset(dataset, data_seed, scale=scale, classes=classes)


def train_chunk(config: StudyConfig, arms: list[Arm]) -> list[tuple[Arm, ArmResult]]:
    """What a Ray task runs: one chunk of arms, trained whole by the config's trainer."""
    from study.train import trainer

    splits = _splits(config.dataset, config.data_seed, config.scale, config.classes)
    return list(trainer(config).train_arms(arms, config, splits))


def _with_import_path(chunk_function: Callable, folders: list[str]) -> Callable:
    """``chunk_function`` run with ``folders`` on the worker's import path, as they are on
    this process's: the user's own loss, dataset loader or model builder is a module there
    (on a cluster of several machines, at the same path on a shared file system)."""
    def train(config: StudyConfig, arms: list[Arm]) -> list[tuple[Arm, ArmResult]]:
        for folder in folders:
            plugins.add_to_path(folder)
        return chunk_function(config, arms)

    return train


def chunks(arms: list[Arm], config: StudyConfig, splits: Splits, workers: int) -> list[list[Arm]]:
    """The arms cut into chunks of one group each: at most the batched trainer's own chunk
    (the memory budget and its cap), and small enough that every worker gets about two, but
    not below one set of slots (16 arms), which a smaller chunk would pay for anyway."""
    from study.train import batched

    groups = by_group(arms)
    share = max(batched.SLOT_MULTIPLE, -(-len(arms) // (2 * max(1, workers))))
    cut = []
    for members in groups.values():
        cap = share
        if config.trainer == "batched":
            cap = min(cap, batched.chunk_size(config, splits, len(members)))
        pieces = -(-len(members) // cap)
        size = -(-len(members) // pieces)  # even pieces: spare slots cost as much as arms
        cut += [members[first:first + size] for first in range(0, len(members), size)]
    return cut


class RayExecutor:
    """Chunks of arms as Ray tasks. Entering connects to the cluster at ``address`` (or
    starts a local one, on loopback only, with ``num_cpus`` (default: every core); or uses
    the one this process already joined) and says which."""

    def __init__(self, address: str | None = None, *, max_retries: int = MAX_RETRIES,
                 say: Callable[[str], None] = lambda line: None,
                 chunk_function: Callable = train_chunk, num_cpus: int | None = None):
        self.address, self.max_retries, self.say = address, max_retries, say
        self.num_cpus = num_cpus
        self.chunk_function = chunk_function  # tests swap in one whose worker dies
        self.started = False  # this executor started Ray, so it shuts it down

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError:
            raise ConfigError("executor ray needs Ray, which is not installed: "
                              "pip install -e '.[ray]'") from None
        if not ray.is_initialized():
            if self.address not in (None, "auto"):
                _check_reachable(self.address)
            from study.backend import native_stderr_silenced

            # Ray's C++ core logs each retry of a connection to file descriptor 2 (a refused
            # token: one line a second for half a minute); the error below says it in one.
            local = self.address is None
            try:
                with native_stderr_silenced(), _signal_handlers_kept(), \
                        _loopback_only(local), _token_kept_private(local):
                    ray.init(address=self.address, include_dashboard=False,
                             log_to_driver=False, configure_logging=False,
                             num_cpus=self.num_cpus if local else None)
            except Exception as err:  # no cluster there, a refused token, a bad address
                reason = _first_line(err) or type(err).__name__
                if self.address is None:
                    raise ConfigError(f"executor: cannot start a local Ray cluster ({reason})") \
                        from None
                raise ConfigError(f"ray_address: cannot reach a Ray cluster at {self.address} "
                                  f"({reason}); a cluster with token authentication wants "
                                  "RAY_AUTH_MODE=token and its token here too") from None
            self.started = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        where = ("this process's Ray cluster" if not self.started
                 else f"the Ray cluster at {self.address}" if self.address
                 else "a local Ray cluster")
        self.say(f"ray: training on {where} with {cpus} CPUs")
        self.cpus = cpus
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            ray.shutdown()

    def train_arms(self, arms: list[Arm], config: StudyConfig, splits: Splits,
                   advance: Advance) -> Pairs:
        import ray

        task = ray.remote(num_cpus=1, max_retries=self.max_retries)(
            _with_import_path(self.chunk_function, [os.getcwd(), *plugins.FOLDERS]))
        config_ref = ray.put(config)
        pending = {task.remote(config_ref, chunk): chunk
                   for chunk in chunks(arms, config, splits, self.cpus)}
        try:
            while pending:
                # a second at a time: a signal's handler (Ctrl-C, SIGTERM) runs between waits,
                # not once the next chunk happens to finish
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                if not ready:
                    continue
                chunk = pending.pop(done := ready[0])
                try:
                    pairs = ray.get(done)
                except ray.exceptions.RayError as err:
                    raise ChunkFailed(_failure(chunk, err, self.max_retries)) from None
                advance(len(chunk))
                yield from pairs
        finally:  # failed or interrupted: the other chunks' work would be thrown away
            for ref in pending:
                ray.cancel(ref, force=True)


@contextlib.contextmanager
def _signal_handlers_kept():
    """ray.init makes SIGTERM exit the process at once; the study's own handler (``cli``:
    keep the finished arms, mark the parent KILLED, exit 143) is put back. Leaving the
    executor shuts the local cluster down, which Ray's handler would have done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# Ray decides a node's address when it starts it. On Linux that is the address other machines
# reach (its gcs_server, raylet, object manager and workers then listen on every interface);
# with this variable at 0, as on macOS and Windows, it is 127.0.0.1 and every one of them
# listens on loopback only. A local cluster has no other machine to talk to.
NODE_ADDRESS_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only(local: bool):
    """While a local cluster starts: its processes (which inherit the environment) and this
    driver (which read the variable when Ray was imported) take 127.0.0.1 as the node's
    address. Not for a cluster at an address: its nodes must reach this driver."""
    if not local:
        yield
        return
    from ray._private import ray_constants

    saved = os.environ.get(NODE_ADDRESS_VARIABLE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[NODE_ADDRESS_VARIABLE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
        if saved[0] is None:
            os.environ.pop(NODE_ADDRESS_VARIABLE, None)
        else:
            os.environ[NODE_ADDRESS_VARIABLE] = saved[0]


@contextlib.contextmanager
def _token_kept_private(local: bool):
    """A local cluster's ray.init writes a token to ~/.ray/auth_token when there is none,
    readable by every user (0644); a token the study's cluster made is left 0600, in a
    folder made 0700 if the study made it. A token that was there is not touched."""
    from pathlib import Path

    token = Path.home() / ".ray" / "auth_token"
    new = local and not token.exists()
    if new and not token.parent.exists():
        token.parent.mkdir(mode=0o700, parents=True)
    try:
        yield
    finally:
        if new and token.exists():
            token.chmod(0o600)


# ray.init retries an address where nothing answers for minutes; a TCP probe answers in
# seconds.
REACH_TIMEOUT_S = 5


def _check_reachable(address: str) -> None:
    import socket

    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or f"no answer within {REACH_TIMEOUT_S} s"
        raise ConfigError(f"ray_address: cannot reach a Ray cluster at {address} ({reason}); "
                          "start one (ray start --head --port=6379) or check --address") \
            from None


def _first_line(err: BaseException, last: bool = False) -> str:
    """One line of an error's text (Ray's carry tracebacks): the first, or the last."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1] if last else lines[0])[:160] if lines else ""


def _failure(chunk: list[Arm], err: Exception, retries: int) -> str:
    import ray

    loss, optimizer = chunk[0].group
    if isinstance(err, ray.exceptions.RayTaskError):  # the training raised
        cause = err.cause if getattr(err, "cause", None) is not None else err
        reason = f"{type(cause).__name__}: {_first_line(cause, last=True)}"
    else:  # the worker died on every attempt
        reason = f"{type(err).__name__}, after {retries} retries"
    return (f"a chunk of {len(chunk)} arms ({loss}, {optimizer}) failed on Ray ({reason}); "
            "the arms of the chunks that finished are stored, rerun to train the rest")


def executor_for(config: StudyConfig, say: Callable[[str], None] = lambda line: None):
    """The executor the config asks for, not yet entered."""
    if config.executor == "ray":
        return RayExecutor(config.ray_address, say=say)
    return LocalExecutor()
