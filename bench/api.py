"""API throughput (issue 12): fleetops against a bare Starlette app, the same load generator for both.

    .venv/bin/python bench/api.py                                  # SQLite and PostgreSQL, 1M-device task on SQLite
    .venv/bin/python bench/api.py --databases sqlite --duration 5 --big-task 0
    .venv/bin/python bench/api.py --big-task 1000000 --big-task-database postgresql
    .venv/bin/python bench/api.py --workers 1,2,4                    # fleetops serve --workers N for each N

Needs ``wrk`` on the PATH (Debian: ``apt-get install -y wrk``). In one run it measures:

* **bare**: a Starlette app under uvicorn (its defaults: uvloop and httptools when installed) answering every
  POST with the body fleetops gave for the DescribeTask below (the same size and bytes), in a child process;
* **fleetops**: ``fleetops serve --workers N`` in a child process, for each N of ``--workers`` (default 1 and 2;
  a temp data directory; SQLite, and a fresh PostgreSQL database on 127.0.0.1:5432, each new for each N)
  answering TC3-signed DescribeTask, DescribeDeviceShadow, DescribeDevices (answered by the API workers too) and
  UpdateDeviceShadow (ShadowVersion 0; forwarded by the workers to the primary). The API's rate limit is raised
  through ``FLEETOPS_RATE_LIMIT_PER_S`` (printed), so that the figures are the server's, not the limiter's. The
  measures start once every API worker serves (``fleetops_api_workers`` on ``/metrics``).

**wrk** (a Lua script replaying one request, signed once at the start of each wrk run and valid for its 300 s
window; an identical replay is a valid request) measures requests/s, p50 and p99 at each ``--connections``
(default 1, 10, 50) for ``--duration`` seconds, and the ratio fleetops/bare. **The pacer** (a small asyncio
client on raw sockets in this process) sends ``--paced-rate`` requests/s (default 100) for ``--paced-s`` seconds
and prints p50/p99/max, each latency counted from the time the request was due (a late send counts against the
server). Before and after each run one request is checked to answer without an Error.

``--big-task N`` (default 1,000,000; 0 skips) registers N devices straight through the store (as bench/tasks.py
does), creates an UpdateShadow task over all of them through the API, and paces DescribeTask at ``--paced-rate``
while the task runs; it prints that p99 and the task's time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchdb import bench_database
from connections import Serve, free_port, read_response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.raw_client import tc3_headers, tc3_post  # noqa: E402

PID_NAME = "apibench"
RATE_LIMIT = "1000000000"
LUA = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local bad = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
    + summary.errors.timeout
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), bad))
end
"""


@dataclass(frozen=True)
class Request:
    """One HTTP/1.1 request, whole, as bytes, and the same as a wrk script."""

    action: str
    body: bytes
    headers: dict[str, str]

    def raw(self) -> bytes:
        head = ["POST / HTTP/1.1", *(f"{k}: {v}" for k, v in self.headers.items()), f"Content-Length: {len(self.body)}"]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body

    def lua(self) -> str:
        headers = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in self.headers.items())
        return LUA.format(body=json.dumps(self.body.decode()), headers=headers)


@dataclass(frozen=True)
class Figures:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


class Target:
    """Something that answers POST / on a port: fleetops (signed requests) or the bare app (any request)."""

    def __init__(self, port: int, secret_id: str = "bench", secret_key: str = "bench") -> None:
        self.port, self.secret_id, self.secret_key = port, secret_id, secret_key

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, action: str, params: dict[str, object]) -> Request:
        body = json.dumps(params).encode()
        headers = tc3_headers(
            host=self.host, secret_id=self.secret_id, secret_key=self.secret_key, action=action, body=body
        )
        return Request(action, body, headers)

    def call(self, action: str, params: dict[str, object]) -> dict[str, object]:
        answer = tc3_post(f"http://{self.host}/", self.host, self.secret_id, self.secret_key, action, params)
        if "Error" in answer:
            raise SystemExit(f"{action} {params}: {answer['Error']}")
        return answer


def wrk(target: Target, request: Request, connections: int, duration_s: int, script: Path) -> Figures:
    script.write_text(request.lua())
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(connections, 2)),
            "-c",
            str(connections),
            "-d",
            f"{duration_s}s",
            "-s",
            str(script),
            f"http://{target.host}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    count, duration_us, p50_us, p99_us, bad = (int(v) for v in line.split()[1:])
    return Figures(count / (duration_us / 1e6), p50_us / 1000, p99_us / 1000, bad)


async def paced(target: Target, request: Request, rate: float, seconds: float) -> list[float]:
    """Latencies (s) of ``rate`` requests/s for ``seconds``, each from its due time, over as many keep-alive
    connections as are needed to never wait for a free one."""
    raw, idle = request.raw(), asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]()
    latencies: list[float] = []
    opened: list[asyncio.StreamWriter] = []

    async def one(due: float) -> None:
        if idle.empty():
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            opened.append(writer)
        else:
            reader, writer = idle.get_nowait()
        writer.write(raw)
        await read_response(reader)
        latencies.append(time.perf_counter() - due)
        idle.put_nowait((reader, writer))

    for _ in range(4):  # warm connections, so that a connect is not in the first requests' latency
        await one(time.perf_counter())
    latencies.clear()
    start, pending = time.perf_counter() + 0.05, []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        pending.append(asyncio.create_task(one(due)))
    await asyncio.gather(*pending)
    for writer in opened:
        writer.close()
    return latencies


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def paced_line(latencies: list[float], rate: float) -> str:
    return (
        f"paced {rate:g} req/s x {len(latencies)}: p50 {statistics.median(latencies) * 1000:.2f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms, max {max(latencies) * 1000:.2f} ms"
    )


class Bare:
    """The bare Starlette app under uvicorn, in a child process (this script with ``--serve-bare``)."""

    def __init__(self, body_file: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-bare", str(self.port), str(body_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                Target(self.port).call("Ping", {})
                return
            except (OSError, ValueError):
                time.sleep(0.05)
        raise SystemExit("the bare app did not come up")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def serve_bare(port: int, body_file: Path) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import Response
    from starlette.routing import Route

    body = body_file.read_bytes()

    async def answer(request: HttpRequest) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/", answer, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass
class Fixture:
    """What the signed actions act on: a product with a few devices and a finished UpdateShadow task over them."""

    product_id: str
    task_id: str


def create_red_task(target: Target, product_id: str) -> str:
    """An UpdateShadow task setting color red on every device of the product, due now; its TaskId."""
    task = target.call(
        "CreateTask",
        {
            "TaskType": "UpdateShadow",
            "ProductId": product_id,
            "DeviceNameFilter": "",
            "ScheduleTimeInSeconds": 0,
            "Tasks": {"UpdateShadowTask": {"Desired": '{"color":"red"}'}},
        },
    )
    return str(task["TaskId"])


def make_fixture(target: Target) -> Fixture:
    product = target.call("CreateProduct", {"ProductName": PID_NAME})
    product_id = str(product["ProductId"])
    for i in range(20):
        target.call("CreateDevice", {"ProductId": product_id, "DeviceName": f"dev{i:02d}"})
    task_id = create_red_task(target, product_id)
    wait_task(target, task_id, 30)
    return Fixture(product_id, task_id)


def wait_task(target: Target, task_id: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = target.call("DescribeTask", {"Id": task_id})
        assert isinstance(info, dict)
        if info["Status"] not in (1, 2):
            return info
        time.sleep(0.2)
    raise SystemExit(f"task {task_id} not finished within {timeout_s:g} s")


def actions(fixture: Fixture) -> list[tuple[str, dict[str, object]]]:
    pid = fixture.product_id
    return [
        ("DescribeTask", {"Id": fixture.task_id}),
        ("DescribeDeviceShadow", {"ProductId": pid, "DeviceName": "dev01"}),
        ("DescribeDevices", {"ProductId": pid, "Offset": 0, "Limit": 10}),
        (
            "UpdateDeviceShadow",
            {"ProductId": pid, "DeviceName": "dev02", "State": '{"desired":{"color":"blue"}}', "ShadowVersion": 0},
        ),
    ]


def row(label: str, figures: Figures, bare: Figures | None) -> str:
    ratio = f"{figures.rps / bare.rps * 100:5.1f} % of bare" if bare else ""
    errors = f", {figures.errors} errors" if figures.errors else ""
    return (
        f"  {label:<34} {figures.rps:>8,.0f} req/s  p50 {figures.p50_ms:6.2f} ms  p99 {figures.p99_ms:6.2f} ms  "
        f"{ratio}{errors}"
    )


def start_serve(tmp: Path, url: str, name: str, env: dict[str, str], workers: int) -> tuple[Serve, Target]:
    data_dir = tmp / f"{name}-{workers}"
    data_dir.mkdir()
    serve = Serve(data_dir, url, {"FLEETOPS_RATE_LIMIT_PER_S": RATE_LIMIT, **env, "FLEETOPS_WORKERS": str(workers)})
    target = Target(serve.port, serve.secret_id, serve.secret_key)
    wait_for_workers(target, workers - 1)
    return serve, target


def wait_for_workers(target: Target, count: int, timeout_s: float = 60) -> None:
    """Until ``count`` API workers serve (``fleetops_api_workers`` on /metrics)."""
    if count == 0:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", target.port), timeout=5) as probe:
            probe.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            text = b""
            while chunk := probe.recv(65536):
                text += chunk
        if f"\nfleetops_api_workers {count}.0\n".encode() in text:
            return
        time.sleep(0.1)
    raise SystemExit(f"{count} API workers did not come up within {timeout_s:g} s")


def measure(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> None:
    script = tmp / "replay.lua"
    bare_figures: dict[int, Figures] = {}
    for database in args.databases.split(","):
        for workers in args.workers:
            measure_serve(args, tmp, env, database, workers, script, bare_figures)


def measure_serve(
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str],
    database: str,
    workers: int,
    script: Path,
    bare_figures: dict[int, Figures],
) -> None:
    """The actions against ``fleetops serve --workers N`` on a new database (the bare app the first time)."""
    with bench_database(database) as url:
        serve, target = start_serve(tmp, url, database, env, workers)
        try:
            fixture = make_fixture(target)
            if not bare_figures:
                measure_bare(args, tmp, target, fixture, script, bare_figures)
            print(
                f"fleetops serve --workers {workers} on {database} (FLEETOPS_RATE_LIMIT_PER_S={RATE_LIMIT}"
                + "".join(f", {k}={v}" for k, v in env.items())
                + ")"
            )
            for action, params in actions(fixture):
                request = target.request(action, params)
                target.call(action, params)
                for c in args.connections:
                    figures = wrk(target, request, c, args.duration, script)
                    print(row(f"{action} wrk -c {c}", figures, bare_figures.get(c)), flush=True)
                latencies = asyncio.run(paced(target, request, args.paced_rate, args.paced_s))
                print(f"  {action} " + paced_line(latencies, args.paced_rate), flush=True)
                target.call(action, params)
        finally:
            serve.stop()


def measure_bare(
    args: argparse.Namespace,
    tmp: Path,
    target: Target,
    fixture: Fixture,
    script: Path,
    bare_figures: dict[int, Figures],
) -> None:
    """The bare app, answering fleetops' DescribeTask body, at each --connections (into ``bare_figures``)."""
    body_file = tmp / "describe_task.json"
    describe = target.request("DescribeTask", {"Id": fixture.task_id})
    body_file.write_bytes(asyncio.run(fetch(target, describe)))
    bare = Bare(body_file)
    try:
        print(f"bare Starlette/uvicorn, {body_file.stat().st_size} bytes (fleetops' DescribeTask body)")
        bare_target = Target(bare.port)
        bare_request = bare_target.request("DescribeTask", {})
        for c in args.connections:
            bare_figures[c] = wrk(bare_target, bare_request, c, args.duration, script)
            print(row(f"wrk -c {c}", bare_figures[c], None), flush=True)
        latencies = asyncio.run(paced(bare_target, bare_request, args.paced_rate, args.paced_s))
        print("  " + paced_line(latencies, args.paced_rate), flush=True)
    finally:
        bare.stop()


async def fetch(target: Target, request: Request) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
    writer.write(request.raw())
    body = await read_response(reader)
    writer.close()
    return body


def big_task(args: argparse.Namespace, tmp: Path, env: dict[str, str], workers: int) -> None:
    with bench_database(args.big_task_database) as url:
        serve, target = start_serve(tmp, url, "big-" + args.big_task_database, env, workers)
        try:
            product_id = str(target.call("CreateProduct", {"ProductName": PID_NAME})["ProductId"])
            started = time.perf_counter()
            asyncio.run(register(url, target.secret_id, product_id, args.big_task))
            print(
                f"{args.big_task:,} devices on {args.big_task_database} registered in "
                f"{time.perf_counter() - started:.1f} s (through the store)",
                flush=True,
            )
            task_id = create_red_task(target, product_id)
            started = time.perf_counter()
            request = target.request("DescribeTask", {"Id": task_id})
            latencies: list[float] = []
            while True:
                latencies += asyncio.run(paced(target, request, args.paced_rate, 2))
                info = target.call("DescribeTask", {"Id": task_id})
                assert isinstance(info, dict)
                if info["Status"] not in (1, 2):
                    break
            elapsed = time.perf_counter() - started
            print(
                f"UpdateShadow task over {args.big_task:,} devices (--workers {workers}): status {info['Status']} "
                f"after {elapsed:.1f} s "
                f"({int(str(info['DoneDeviceCnt'])) / elapsed:,.0f} devices/s); meanwhile DescribeTask "
                + paced_line(latencies, args.paced_rate),
                flush=True,
            )
        finally:
            serve.stop()


async def register(url: str, secret_id: str, product_id: str, count: int) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from fleetops.backend.registration import register_devices
    from fleetops.store.accounts import AccountStore
    from fleetops.store.database import open_database
    from fleetops.store.devices import DeviceStore

    db = open_database(url)
    try:
        key = await AccountStore(db).get_key(secret_id)
        assert key is not None
        names = [f"big-{i:07d}" for i in range(count)]
        await register_devices(
            DeviceStore(db), key.account_id, product_id, names, now_s=int(time.time()), max_devices=count
        )
    finally:
        await db.dispose()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-bare":
        serve_bare(int(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--connections", type=lambda s: [int(c) for c in s.split(",")], default=[1, 10, 50])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--paced-rate", type=float, default=100.0, help="requests/s of the paced runs")
    parser.add_argument("--paced-s", type=float, default=10.0, help="seconds per paced run")
    parser.add_argument("--big-task", type=int, default=1_000_000, help="devices of the task run meanwhile (0: skip)")
    parser.add_argument("--big-task-database", default="sqlite", help="sqlite | postgresql")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE passed to fleetops serve")
    parser.add_argument(
        "--workers",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1, 2],
        help="comma-separated: fleetops serve --workers N, each measured (default 1,2)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/api.py needs wrk on the PATH (Debian: apt-get install -y wrk)")
    env = dict(item.split("=", 1) for item in args.env)
    os.environ.setdefault("FLEETOPS_LOG_LEVEL", "WARNING")
    with tempfile.TemporaryDirectory(prefix="fleetops-api-bench-") as tmp:
        if args.databases:
            measure(args, Path(tmp), env)
        if args.big_task:
            for workers in args.workers:
                big_task(args, Path(tmp), env, workers)


if __name__ == "__main__":
    main()
