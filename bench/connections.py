"""HTTP connection figures (issue 9): signed-per-request rate, and what an idle connection costs the server.

    .venv/bin/python bench/connections.py --requests 20000 --connections 8 --idle 5000 [--database sqlite]

Starts ``fleetops serve`` as a child process (a temp data directory; SQLite, or a fresh PostgreSQL database with
``--database postgresql``), then:

* ``--requests`` TC3-signed ``DescribeProducts`` POSTs over ``--connections`` keep-alive connections, each signed
  when sent (a replay guard would refuse a pre-signed copy); prints requests/s and p50 / p99 / max latency;
* on PostgreSQL, the statements the node sent: transactions in all, and reservations of the shared rate limit
  counter (``rate_windows`` rows inserted or updated, docs/limits.md#the-api-rate-limit), read from
  PostgreSQL's statistics once the node has stopped;
* ``--idle`` connections that send half a request and wait; prints the server's RSS and open file descriptors
  before and after, so the cost of one idle connection (docs/limits.md#connections).

The client is a small asyncio HTTP/1.1 client on raw sockets, so that the figures are the server's, not those of
a heavy client library sharing the same cores. The throughput of single actions against a bare Starlette app
(wrk replaying a request signed once) is ``bench/api.py``. ``--env NAME=VALUE`` passes settings to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchdb import bench_database

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.raw_client import tc3_headers  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Serve:
    """``fleetops serve`` in a child process; its key pair read from the data directory's credentials.json."""

    def __init__(self, data_dir: Path, database_url: str, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "FLEETOPS_DATA_DIR": str(data_dir),
            "FLEETOPS_DATABASE_URL": database_url,
            "FLEETOPS_PORT": str(self.port),
            "FLEETOPS_MQTT_PORT": str(free_port()),
            "FLEETOPS_RATE_LIMIT_PER_S": "1000000000",
            "FLEETOPS_LOG_LEVEL": "WARNING",
            **extra_env,
        }
        self.log = (data_dir / "serve.log").open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "fleetops"), "serve"], env=env, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 30
        credentials = data_dir / "credentials.json"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"fleetops serve exited: {(data_dir / 'serve.log').read_text()[-2000:]}")
            try:
                # the port is bound before the node starts: wait for an answer, not for a connection
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    if probe.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise SystemExit("fleetops serve did not come up")
        saved = json.loads(credentials.read_text())
        self.secret_id, self.secret_key = str(saved["SecretId"]), str(saved["SecretKey"])
        self.stats = psutil.Process(self.process.pid)

    def rss_bytes(self) -> int:
        return int(self.stats.memory_info().rss)

    def open_files(self) -> int:
        return int(self.stats.num_fds())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


def signed_request(serve: Serve, action: str, params: dict[str, object]) -> bytes:
    body = json.dumps(params).encode()
    host = f"127.0.0.1:{serve.port}"
    headers = tc3_headers(host=host, secret_id=serve.secret_id, secret_key=serve.secret_key, action=action, body=body)
    lines = [b"POST / HTTP/1.1"] + [f"{k}: {v}".encode() for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def throughput(serve: Serve, total: int, connections: int) -> float:
    remaining = iter(range(total))
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", serve.port)
        try:
            for _ in remaining:
                request = signed_request(serve, "DescribeProducts", {"Offset": 0, "Limit": 10})
                started = time.perf_counter()
                writer.write(request)
                body = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                error = json.loads(body)["Response"].get("Error")
                if error is not None:
                    errors[error["Code"]] = errors.get(error["Code"], 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed_s = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"DescribeProducts, {connections} keep-alive connections: {total / elapsed_s:,.0f} requests/s; "
        f"latency p50 {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms" + (f"; errors {errors}" if errors else "")
    )
    return elapsed_s


def database_statements(url: str, elapsed_s: float) -> None:
    """What the node sent to PostgreSQL (the statistics of its backends, flushed as they exit)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        ends = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        transactions = int(ends.fetchone()[0])  # type: ignore[index]
        row = conn.execute(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'rate_windows'"
        ).fetchone()
    reservations = "no rate_windows table" if row is None else f"{int(row[0]):,} ({int(row[0]) / elapsed_s:.1f}/s)"
    print(
        f"PostgreSQL: {transactions:,} transactions (committed or rolled back, start-up included), "
        f"rate limit reservations {reservations}"
    )


def idle_cost(serve: Serve, count: int) -> None:
    rss_before, files_before = serve.rss_bytes(), serve.open_files()
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", serve.port))
            sock.sendall(b"POST / HTTP/1.1\r\nHost: bench\r\n")  # half a request: the server keeps waiting
            sockets.append(sock)
        deadline = time.monotonic() + 10
        while serve.open_files() - files_before < count * 0.99 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # let the server finish setting up the last ones
        rss_after, files_after = serve.rss_bytes(), serve.open_files()
    finally:
        for sock in sockets:
            sock.close()
    held = files_after - files_before
    per_connection = (rss_after - rss_before) / max(held, 1)
    print(
        f"{count} idle half-sent connections: the server holds {held} more descriptors, RSS "
        f"{rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, {per_connection / 1024:.1f} KiB per connection"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="sqlite | postgresql | a database URL")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--idle", type=int, default=0, help="idle connections to measure (0: skip)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE passed to the server")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory() as tmp, bench_database(args.database) as url:
        if args.database == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'fleetops.db'}"
        serve = Serve(Path(tmp), url, extra)
        try:
            elapsed_s = asyncio.run(throughput(serve, args.requests, args.connections))
            if args.idle:
                idle_cost(serve, args.idle)
        finally:
            serve.stop()
        if url.startswith("postgresql"):
            database_statements(url, elapsed_s)


if __name__ == "__main__":
    main()
