"""``fleetops serve --workers N``: several processes on the API port (docs/deployment.md#api-worker-processes).

The process the user started, **the primary**, is the node as with one process (task engine, MQTT side, API on
the TCP listener it bound). It also serves the same app on a private Unix socket (:class:`ForwardingSocket`, in
the data directory, mode 0600 in a 0700 directory) and starts N-1 **API workers** (:class:`ApiWorkers`): child
processes that inherit the listening socket, so the kernel spreads the connections over all N processes. A
worker (:func:`run_api_worker`) opens its own database handle and use cases (``Role.API``: no engine, no MQTT
side), answers the actions that only read the database and forwards everything else to the primary over the
Unix socket (``fleetops.api.forwarding``); it sends what it counted to the primary's ``/metrics`` every 0.5 s
(``fleetops.api.relayed_metrics``). The rate limit is counted in the database (``rate_windows``) on SQLite too,
so it holds for the node as a whole; the key cache and the signature ledger already work across processes.

The primary restarts a worker that dies (after 0.5 s, doubling up to 30 s while it keeps dying within 10 s of
its start; one log line per interval), and on SIGINT/SIGTERM stops its workers (SIGTERM, then SIGKILL after
:data:`STOP_TIMEOUT_S`) before its own node. A worker stops when the primary is gone: it holds the read end of a
pipe whose write end only the primary has, and reads its end of file when the primary exits, however it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Final

import orjson
import uvicorn

from fleetops.api.app import ApiApp
from fleetops.api.forwarding import UP_PATH, Forwarder, ForwardingFailed
from fleetops.api.relayed_metrics import relay, send
from fleetops.errors import ConfigurationError
from fleetops.listeners import LimitedLog
from fleetops.node import Node, Role
from fleetops.server import LOG_INTERVAL_S, HttpServer, http_limits
from fleetops.settings import ENV_PREFIX, Settings

log = logging.getLogger("fleetops")

MAX_WORKERS: Final = 32
RESTART_DELAY_S: Final = 0.5  # after a worker's death; doubled while it keeps dying soon after its start
MAX_RESTART_DELAY_S: Final = 30.0
STABLE_S: Final = 10.0  # a worker that lived this long starts again from RESTART_DELAY_S
WATCH_INTERVAL_S: Final = 0.2
STOP_TIMEOUT_S: Final = 15.0  # a worker's graceful stop (uvicorn's own bound is 10 s), then SIGKILL
_MAX_SOCKET_PATH: Final = 100  # sun_path holds 108 bytes on Linux, 104 on the BSDs


class SharedListener(socket.socket):
    """The API's listening socket as each process sharing it accepts from it: one connection per turn.

    asyncio accepts in a loop until ``accept()`` would block (up to uvicorn's backlog, 2048), so a process woken
    for a burst of new connections took them all: the 50 connections ``wrk`` opens at once went to one process of
    two, or 44 to 6. Here every second ``accept()`` answers "would block", so a process takes one connection per
    pass of its event loop and the others, woken for the same connections, take theirs; a busy process passes
    less often and takes fewer. Nothing else of the socket changes (``accept()`` is the one call asyncio makes).
    """

    _turn_taken = False

    @classmethod
    def adopt(cls, sock: socket.socket) -> SharedListener:
        """``sock`` as a SharedListener (``sock`` no longer owns the descriptor)."""
        return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())

    def accept(self) -> tuple[socket.socket, Any]:
        if self._turn_taken:
            self._turn_taken = False
            raise BlockingIOError(errno.EAGAIN, "one connection per turn: the other processes take theirs")
        accepted = super().accept()
        self._turn_taken = True
        return accepted


def worker_count(settings: Settings) -> int:
    """``settings.workers``, checked: a ConfigurationError saying how to fix it when out of range."""
    if not 1 <= settings.workers <= MAX_WORKERS:
        raise ConfigurationError(
            f"workers (--workers, FLEETOPS_WORKERS) must be between 1 and {MAX_WORKERS}, got {settings.workers}: "
            "1 serves the API in the node's process alone; the number of CPU cores is a good value to try"
        )
    return settings.workers


# --- the primary's forwarding socket ---------------------------------------------------------------------


@dataclass
class ForwardingSocket:
    """The primary's Unix socket for its workers' forwarded requests: ``<data_dir>/run/api-<pid>.sock``."""

    sock: socket.socket
    path: Path
    temporary_dir: Path | None = None  # the data directory's path was too long for a socket's address

    @classmethod
    def open(cls, data_dir: Path) -> ForwardingSocket:
        run = data_dir.resolve() / "run"
        try:
            run.mkdir(mode=0o700, parents=True, exist_ok=True)
            run.chmod(0o700)  # only this user may connect: a forwarded request names its own client address
            _remove_stale(run)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create {run} for the API workers' socket: {exc.strerror}; check the data directory "
                "(--data-dir, FLEETOPS_DATA_DIR)"
            ) from exc
        path, temporary_dir = run / f"api-{os.getpid()}.sock", None
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            temporary_dir = Path(tempfile.mkdtemp(prefix="fleetops-"))  # mode 0700, this user's
            path = temporary_dir / "api.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a stale one of a process with this PID
            sock.bind(str(path))
            path.chmod(0o600)
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            raise ConfigurationError(f"cannot listen on {path} for the API workers: {exc.strerror}") from exc
        return cls(sock, path, temporary_dir)

    def remove(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self.temporary_dir is not None:
            with contextlib.suppress(OSError):
                self.temporary_dir.rmdir()


def _remove_stale(run: Path) -> None:
    """Remove the sockets of primaries that are gone (a crash leaves its socket behind)."""
    for path in run.glob("api-*.sock"):
        pid = path.name.removeprefix("api-").removesuffix(".sock")
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ForwardingServer(uvicorn.Server):
    """uvicorn on the forwarding socket: only the primary's own workers connect to it, so none of the TCP
    listener's limits; idle connections are kept (the workers' pools), never closed under a worker about to use
    one. Signals are the TCP server's business."""

    def __init__(self, app: Callable[..., object]) -> None:
        super().__init__(
            uvicorn.Config(
                app,
                http="httptools",
                ws="none",
                lifespan="off",
                log_config=None,
                access_log=False,
                proxy_headers=False,  # the client address comes from the worker (api.forwarding)
                server_header=False,  # the worker's uvicorn sets both on what it relays
                date_header=False,
                timeout_keep_alive=24 * 3600,
                timeout_graceful_shutdown=5,
            )
        )

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# --- the primary's workers ------------------------------------------------------------------------------


def worker_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with every setting as its FLEETOPS_* variable: a worker's Settings.from_env()
    is the primary's Settings, whether they came from the environment or from options."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env[ENV_PREFIX + f.name.upper()] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    control: int | None = None  # the write end of the worker's pipe: closed, the worker stops
    started: float = 0.0
    quick_deaths: int = 0  # in a row, each within STABLE_S of its start
    restart_at: float = 0.0
    serving: bool = False  # it said so on the forwarding socket (UP_PATH)


class ApiWorkers:
    """The primary's API worker processes: started, restarted when they die, stopped."""

    def __init__(
        self,
        count: int,
        listener: socket.socket,
        forward_to: Path,
        environment: dict[str, str],
        *,
        stopping: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``stopping``: the primary is stopping (its TCP server's should_exit): no more restarts."""
        self._listener = listener
        self._forward_to = forward_to
        self._environment = environment
        self._stopping = stopping
        self._clock = clock
        self._slots = [_Slot(index) for index in range(1, count + 1)]
        self._limited_log = LimitedLog(log, LOG_INTERVAL_S)

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    @property
    def serving(self) -> int:
        """How many workers serve now (``fleetops_api_workers``)."""
        return sum(slot.serving for slot in self._slots)

    def up(self, index: int, pid: int) -> None:
        """The worker of ``index`` (``pid``) serves: it said so on the forwarding socket."""
        for slot in self._slots:
            if slot.index == index and slot.process is not None and slot.process.pid == pid:
                slot.serving = True
                log.info("API worker %d (pid %d) serving", index, pid)

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        listen_fd = self._listener.fileno()
        read, write = os.pipe()  # both ends non-inheritable: only this worker gets the read end
        try:
            slot.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleetops",
                    "api-worker",
                    f"--index={slot.index}",
                    f"--listen-fd={listen_fd}",
                    f"--control-fd={read}",
                    f"--forward-to={self._forward_to}",
                ],
                env=self._environment,
                stdin=subprocess.DEVNULL,
                pass_fds=(listen_fd, read),
            )
        except OSError as exc:
            os.close(write)
            slot.process = None
            slot.quick_deaths += 1
            slot.restart_at = self._clock() + self._delay(slot)
            self._limited_log(f"worker-{slot.index}", logging.ERROR, "cannot start API worker %d: %s", slot.index, exc)
            return
        finally:
            os.close(read)
        slot.control, slot.started = write, self._clock()

    def _delay(self, slot: _Slot) -> float:
        return float(min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** min(slot.quick_deaths, 8)))

    async def watch(self) -> None:
        """Restart the workers that die, until the primary stops; then send them SIGTERM at once (the primary's
        own graceful stop and theirs run together) and return."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self._stopping():
                self._signal(signal.SIGTERM)
                return
            now = self._clock()
            for slot in self._slots:
                if slot.process is not None and slot.process.poll() is not None:
                    self._died(slot, now)
                if slot.process is None and now >= slot.restart_at:
                    self._spawn(slot)

    def _died(self, slot: _Slot, now: float) -> None:
        assert slot.process is not None
        code, pid = slot.process.returncode, slot.process.pid
        slot.process, slot.serving = None, False
        self._close_control(slot)
        slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started < STABLE_S else 0
        delay = self._delay(slot) if slot.quick_deaths else RESTART_DELAY_S
        slot.restart_at = now + delay
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
        self._limited_log(
            f"worker-{slot.index}",
            logging.WARNING,
            "API worker %d (pid %d) %s; starting it again in %g s",
            slot.index,
            pid,
            how,
            delay,
        )

    def _signal(self, sig: signal.Signals) -> None:
        for slot in self._slots:
            if slot.process is not None and slot.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(sig)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM to every worker, wait for them (``timeout_s``), SIGKILL to those still there."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(s.process is not None and s.process.poll() is None for s in self._slots):
            if time.monotonic() > deadline:
                log.warning("API workers still running %g s after SIGTERM: killing them", timeout_s)
                self._signal(signal.SIGKILL)
                for slot in self._slots:
                    if slot.process is not None:
                        slot.process.wait()
                break
            await asyncio.sleep(0.05)
        for slot in self._slots:
            slot.process, slot.serving = None, False
            self._close_control(slot)

    @staticmethod
    def _close_control(slot: _Slot) -> None:
        if slot.control is not None:
            os.close(slot.control)
            slot.control = None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


async def serve_with_workers(server: HttpServer, listener: socket.socket, node: Node, app: ApiApp, count: int) -> None:
    """Serve ``app`` on ``listener`` with ``count - 1`` API workers (module docstring), until a signal stops it."""
    listener = SharedListener.adopt(listener)
    forwarding = ForwardingSocket.open(node.settings.data_dir)
    try:
        workers = ApiWorkers(
            count - 1,
            listener,
            forwarding.path,
            worker_environment(node.settings),
            stopping=lambda: server.should_exit,
        )
        side = ForwardingServer(node.forwarded_app(app, workers))
        side_task = asyncio.create_task(side.serve(sockets=[forwarding.sock]), name="fleetops-forwarding")
        watching: asyncio.Task[None] | None = None
        try:
            # uvicorn exposes `started` as a plain flag, with no event to wait on
            while not side.started and not side_task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            workers.start()
            watching = asyncio.create_task(workers.watch(), name="fleetops-api-workers")
            await server.serve(sockets=[listener])
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            await workers.stop()
            side.should_exit = True
            await side_task
    finally:
        forwarding.remove()
        listener.close()


# --- a worker ---------------------------------------------------------------------------------------------


class WorkerHttpServer(HttpServer):
    """A worker's uvicorn: the listener's limits of the primary's; SIGTERM stops it gracefully, SIGINT (a
    terminal's Ctrl-C reaches the whole process group) is ignored: the primary stops its workers itself."""

    handled_signals: ClassVar[tuple[signal.Signals, ...]] = (signal.SIGTERM,)


async def run_api_worker(settings: Settings, *, index: int, listen_fd: int, control_fd: int, forward_to: str) -> None:
    """An API worker: serve the inherited listening socket until SIGTERM or the primary's end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limits = http_limits(settings)
    listener = SharedListener(fileno=listen_fd)
    node = await Node.open(settings, role=Role.API)
    try:
        assert node.relay is not None
        forwarder = Forwarder(forward_to)
        server = WorkerHttpServer(node.worker_app(forwarder), limits)
        loop = asyncio.get_running_loop()
        loop.add_reader(control_fd, _primary_gone, control_fd, server, loop)
        relaying = asyncio.create_task(relay(node.relay, forwarder), name="fleetops-relayed-metrics")
        announcing = asyncio.create_task(_announce(server, index, forwarder))
        try:
            await server.serve(sockets=[listener])
        finally:
            loop.remove_reader(control_fd)
            for task in (announcing, relaying):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await send(node.relay, forwarder)  # the last counts
            forwarder.close()
    finally:
        await node.close()


async def _announce(server: HttpServer, index: int, forwarder: Forwarder) -> None:
    """Tell the primary this worker serves, once it does (``fleetops_api_workers``, the primary's log)."""
    # uvicorn exposes `started` as a plain flag, with no event to wait on
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    try:
        await forwarder.post(UP_PATH, orjson.dumps({"index": index, "pid": os.getpid()}))
    except ForwardingFailed as exc:
        log.warning("API worker %d: could not tell the primary it serves: %s", index, exc.reason)


def _primary_gone(fd: int, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
    try:
        data = os.read(fd, 64)
    except OSError:
        data = b""
    if data:
        return
    loop.remove_reader(fd)
    if not server.should_exit:
        log.warning("API worker: the primary process is gone; stopping")
        server.should_exit = True
