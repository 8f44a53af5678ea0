"""`fleetops serve` as a real child process, for tests of start, shutdown and crashes."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


class ServeProcess:
    """``fleetops serve`` as a child process, stopped by its PID."""

    def __init__(self, data_dir: Path, env: dict[str, str], *, file_limit: int | None = None) -> None:
        """``file_limit``: the child's RLIMIT_NOFILE, soft and hard (so that it cannot raise it)."""
        self.port = int(env["FLEETOPS_PORT"])
        self.data_dir = data_dir
        self.env = env
        self.file_limit = file_limit
        self.process: subprocess.Popen[bytes] | None = None

    def _limit_files(self) -> None:
        if self.file_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.file_limit, self.file_limit))

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process (several can then come up at the same time)."""
        log = (self.data_dir / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "fleetops"), "serve"],
            env=self.env,
            stdout=log,
            stderr=log,
            preexec_fn=self._limit_files if self.file_limit is not None else None,
        )

    def wait_ready(self) -> None:
        """Until the API answers (the MQTT side is up by then: it starts first)."""
        assert self.process is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.data_dir / "serve.log").read_text()[-2000:]
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("fleetops serve did not come up")

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(20)
        self.process = None


@contextmanager
def serve_nodes(tmp_path: Path, database_url: str, count: int = 2, **settings: str) -> Iterator[list[ServeProcess]]:
    """``count`` `fleetops serve` processes on one database, each with its own data directory, API port and
    embedded broker, started one after the other (the first creates the default account's key), killed at the
    end. ``settings`` are more FLEETOPS_* variables for every node."""
    from tests.brokers import clean_environment
    from tests.support import free_port

    nodes: list[ServeProcess] = []
    try:
        for index in range(count):
            data_dir = tmp_path / f"node-{index}"
            data_dir.mkdir()
            env = clean_environment(
                FLEETOPS_DATA_DIR=str(data_dir),
                FLEETOPS_DATABASE_URL=database_url,
                FLEETOPS_PORT=str(free_port()),
                FLEETOPS_MQTT_PORT=str(free_port()),
                FLEETOPS_NODE_ID=f"node-{index}",
                **settings,
            )
            node = ServeProcess(data_dir, env)
            nodes.append(node)
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.kill()
