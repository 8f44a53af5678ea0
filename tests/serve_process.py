"""`fleetops serve` as a real child process, for tests of start, shutdown and crashes."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
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
