"""The private Mosquitto the bench scripts start: with the fleetops plugin (configured as ``fleetops mosquitto
config`` configures it) or the same configuration without it, on a free port, stopped by its PID."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fleetops.mosquitto.build import ensure_plugin
from fleetops.mosquitto.config import MosquittoConfig, libpq_url

SERVICE_USER = "fleetops"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def plugin_config(port: int, database_url: str, state_dir: Path, plugin: Path) -> str:
    return MosquittoConfig(
        port=port,
        bind_address="127.0.0.1",
        plugin=plugin,
        database_url=libpq_url(database_url),
        service_user=SERVICE_USER,
        state_dir=state_dir,
        run_as="root" if os.geteuid() == 0 else os.environ.get("USER", "mosquitto"),
    ).render()


def without_plugin(config: str) -> str:
    """The same configuration, anonymous and without the plugin (the baseline of the comparisons)."""
    lines = [line for line in config.splitlines() if not line.startswith("plugin")]
    return "\n".join("allow_anonymous true" if line == "allow_anonymous false" else line for line in lines) + "\n"


class PrivateMosquitto:
    def __init__(self, workdir: Path, config: str, port: int) -> None:
        self.workdir = workdir
        self.port = port
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "mosquitto.conf"
        conf.write_text(config)
        self.process = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
        for _ in range(500):
            if self.process.poll() is not None:
                raise SystemExit(f"mosquitto exited; see {workdir}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@contextmanager
def private_mosquitto(database_url: str | None, *, port: int | None = None) -> Iterator[PrivateMosquitto]:
    """Mosquitto with the plugin on ``database_url`` (built from this tree), or without it (None)."""
    with tempfile.TemporaryDirectory(prefix="fleetops-bench-mosquitto-") as scratch:
        root = Path(scratch)
        plugin, _ = ensure_plugin(root / "build")
        port = port or free_port()
        state = root / f"state-{port}"
        state.mkdir(parents=True, exist_ok=True)
        config = plugin_config(port, database_url or "postgresql://unused@127.0.0.1/unused", state, plugin)
        broker = PrivateMosquitto(state, config if database_url else without_plugin(config), port)
        try:
            yield broker
        finally:
            broker.stop()
