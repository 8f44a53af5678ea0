"""``fleetops tasks | products | devices list`` as an operator runs them: real processes against a live node,
over HTTP with signed requests (the commands never open the database), the node's engine running the tasks.

Each test has an account of its own (the pending-task cap is per account), passed as FLEETOPS_SECRET_ID /
FLEETOPS_SECRET_KEY unless the test is about where credentials come from.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetops.backend.registration import register_devices
from tests.support import LiveServer, sdk_client, server_on

FLEETOPS = str(Path(sys.executable).parent / "fleetops")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # small batches: a task over 2,000 devices takes a hundred transactions, long enough to be watched
    with server_on(
        "sqlite", tmp_path_factory.mktemp("operator-cli"), task_batch_size=20, task_poll_interval_s=0.1
    ) as live:
        yield live


class Operator:
    """Runs ``fleetops`` commands as processes, signed with one account's key pair."""

    def __init__(self, server: LiveServer, secret_id: str, secret_key: str, data_dir: Path) -> None:
        self.server = server
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETOPS_")}
        self.env.update(
            FLEETOPS_ENDPOINT=server.url,
            FLEETOPS_SECRET_ID=secret_id,
            FLEETOPS_SECRET_KEY=secret_key,
            FLEETOPS_DATA_DIR=str(data_dir),
            COLUMNS="160",
        )
        self.sdk = sdk_client(server, secret_id=secret_id, secret_key=secret_key)

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLEETOPS, *args], env=env or self.env, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [FLEETOPS, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def product(self, name: str, devices: int) -> str:
        """A product of this account (created through the SDK) with ``devices`` devices lamp-00000, ..."""
        pid = str(self.sdk.call_json("CreateProduct", {"ProductName": name})["Response"]["ProductId"])
        if devices:
            self.server.run(self._register(pid, [f"lamp-{n:05d}" for n in range(devices)]))
        return pid

    async def _register(self, product_id: str, names: list[str]) -> None:
        stores = self.server.node.stores
        owner = await stores.devices.product_owner(product_id)
        assert owner is not None
        await register_devices(stores.devices, owner, product_id, names, now_s=int(time.time()), max_devices=10**6)


@pytest.fixture
def operator(server: LiveServer, tmp_path: Path) -> Operator:
    secret_id, secret_key = server.new_account()
    return Operator(server, secret_id, secret_key, tmp_path / "no-credentials-here")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _wait_for_line(process: subprocess.Popen[str], wanted: str, timeout_s: float = 30) -> list[str]:
    """Lines of the process's stdout until one contains ``wanted``."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip("\n"))
            if wanted in line:
                return seen
    raise AssertionError(f"no line with {wanted!r} in {seen}")


# --- products and devices ------------------------------------------------------------------------------------


def test_products_list_and_devices_list(operator: Operator) -> None:
    pid = operator.product("lamps", devices=150)
    listed = operator.run("products", "list")
    assert listed.returncode == 0, listed.stderr
    rows = _lines(listed.stdout)
    assert rows[0].split() == ["PRODUCT", "ID", "NAME", "CREATED", "DESCRIPTION"]
    assert rows[1].split()[:2] == [pid, "lamps"]
    as_json = json.loads(operator.run("products", "list", "--json").stdout)
    assert [(p["ProductId"], p["ProductName"]) for p in as_json] == [(pid, "lamps")]

    page = operator.run("devices", "list", "--product", pid, "--limit", "3", "--offset", "10")
    assert page.returncode == 0, page.stderr
    assert [row.split()[0] for row in _lines(page.stdout)] == ["DEVICE", "lamp-00010", "lamp-00011", "lamp-00012"]
    assert page.stderr.strip() == f"devices 11-13 of 150 in product {pid}; --offset 13 for more"
    everything = json.loads(operator.run("devices", "list", "--product", pid, "--limit", "1000", "--json").stdout)
    assert everything["TotalCount"] == 150 and len(everything["Devices"]) == 150
    named = json.loads(operator.run("devices", "list", "--product", pid, "--name-contains", "0014", "--json").stdout)
    assert sorted(d["DeviceName"] for d in named["Devices"]) == ["lamp-00014"] + [f"lamp-0014{n}" for n in range(10)]


def test_a_product_name_where_the_product_id_belongs_gets_the_product_id(operator: Operator) -> None:
    pid = operator.product("bulbs", devices=0)
    result = operator.run("devices", "list", "--product", "bulbs")
    assert result.returncode == 1
    assert "ResourceNotFound.ProductNotExist" in result.stderr
    assert f"`bulbs` is a ProductName; its ProductId is `{pid}`" in result.stderr


# --- credentials and setup problems ------------------------------------------------------------------------------


def test_credentials_come_from_options_then_environment_then_credentials_json(
    operator: Operator, server: LiveServer
) -> None:
    # the data directory of the node holds its credentials.json (the default account's key pair)
    bare = {k: v for k, v in operator.env.items() if not k.startswith("FLEETOPS_SECRET_")}
    bare["FLEETOPS_DATA_DIR"] = str(server.settings.data_dir)
    from_file = operator.run("products", "list", "--json", env=bare)
    assert from_file.returncode == 0, from_file.stderr
    # --data-dir before the command works as after it
    moved = {k: v for k, v in bare.items() if k != "FLEETOPS_DATA_DIR"}
    before = operator.run("--data-dir", str(server.settings.data_dir), "products", "list", "--json", env=moved)
    assert before.returncode == 0, before.stderr
    assert before.stdout == from_file.stdout

    # the environment's pair (this test's account) wins over the file; its product is listed
    operator.product("mine", devices=0)
    env_listing = json.loads(operator.run("products", "list", "--json").stdout)
    assert [p["ProductName"] for p in env_listing] == ["mine"]

    # options win over the environment: a wrong pair given as options is used, and the error says where from
    wrong = operator.run("products", "list", "--secret-id", "AKIDnosuchkey", "--secret-key", "x")
    assert wrong.returncode == 1
    assert "AuthFailure.SecretIdNotFound" in wrong.stderr
    assert "signed with SecretId AKIDnosuchkey from --secret-id/--secret-key" in wrong.stderr


def test_setup_problems_are_one_line_and_exit_2(operator: Operator, tmp_path: Path) -> None:
    nothing = {k: v for k, v in operator.env.items() if not k.startswith("FLEETOPS_SECRET_")}
    result = operator.run("tasks", "list", env=nothing)
    assert result.returncode == 2
    assert _lines(result.stderr) == [
        "Error: no credentials: give --secret-id and --secret-key, set FLEETOPS_SECRET_ID and FLEETOPS_SECRET_KEY, "
        f"or point --data-dir at the node's data directory ({(tmp_path / 'no-credentials-here').resolve()}"
        "/credentials.json does not exist)"
    ]
    # a port nobody listens on, held for the test: bound without listen(), connections to it are refused
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        result = operator.run("products", "list", "--endpoint", endpoint)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert _lines(result.stderr) == [
        f"Error: cannot reach the fleetops API at {endpoint} (Connection refused): is `fleetops serve` running "
        "there? (--endpoint, FLEETOPS_ENDPOINT)"
    ]
    result = operator.run("products", "list", "--endpoint", "ftp://example.com")
    assert result.returncode == 2 and len(_lines(result.stderr)) == 1


# --- tasks ---------------------------------------------------------------------------------------------------------


def test_create_with_watch_follows_the_task_to_the_end(operator: Operator) -> None:
    pid = operator.product("watched", devices=2000)
    result = operator.run(
        "tasks", "create", "--product", pid, "--filter", "^lamp-", "--desired", '{"color":"red"}',
        "--watch", "--interval", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    task_id = lines[0]
    assert len(task_id) == 24
    progress = [line.split(" ", 1)[1] for line in lines[1:-1]]  # without the clock time
    assert any(p.startswith("processing: ") and " of 2,000 devices" in p for p in progress), progress
    assert progress[-1].startswith("completed: 2,000 of 2,000 devices (100 %)")
    assert lines[-1].startswith(f"task {task_id} completed: 2,000 of 2,000 devices in ")
    # the node did the work: every matched shadow has the desired state
    shadow = operator.sdk.call_json("DescribeDeviceShadow", {"ProductId": pid, "DeviceName": "lamp-01999"})
    assert json.loads(shadow["Response"]["Data"])["payload"]["state"]["desired"] == {"color": "red"}


def test_watch_in_a_terminal_draws_a_live_progress_bar(operator: Operator) -> None:
    pid = operator.product("terminal", devices=2000)
    created = operator.run("tasks", "create", "--product", pid, "--filter", "", "--topic", "control", "--payload", "on")
    task_id = created.stdout.strip()
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [FLEETOPS, "tasks", "watch", task_id, "--interval", "0.1"],
        env=operator.env,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the process ended and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    assert process.wait(10) == 0
    text = screen.decode("utf-8", "replace")
    assert "\x1b[" in text and "━" in text  # drawn in place, with a bar
    assert "of 2,000 devices" in text and "completed" in text
    assert f"task {task_id} completed: 2,000 of 2,000 devices" in text


def test_list_describe_and_cancel(operator: Operator) -> None:
    pid = operator.product("listed", devices=5)
    first = operator.run("tasks", "create", "--product", pid, "--filter", "x", "--desired", "{}", "--at", "+1h")
    second = operator.run("tasks", "create", "--product", pid, "--filter", "y", "--topic", "t", "--payload", "p",
                          "--at", "+2h", "--max-execution", "30m", "--json")  # fmt: skip
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    first_id, second_id = first.stdout.strip(), json.loads(second.stdout)["TaskId"]

    listing = operator.run("tasks", "list")
    rows = _lines(listing.stdout)
    assert rows[0].split()[:4] == ["TASK", "ID", "TYPE", "PRODUCT"]
    assert [row.split()[0] for row in rows[1:]] == [second_id, first_id]  # newest first
    assert "1 waiting" in rows[1] and "PublishMessage" in rows[1]
    assert listing.stderr.strip().startswith("tasks 1-2 of 2 at http://")
    limited = json.loads(operator.run("tasks", "list", "--limit", "1", "--offset", "1", "--json").stdout)
    assert limited["TotalCount"] == 2 and [t["Id"] for t in limited["Tasks"]] == [first_id]

    described = json.loads(operator.run("tasks", "describe", second_id, "--json").stdout)
    assert described["Status"] == 1 and described["Type"] == "PublishMessage"
    assert described["ScheduleTime"] >= int(time.time()) + 7100
    human = _lines(operator.run("tasks", "describe", first_id).stdout)
    assert human[0] == f"task       {first_id}" and human[2] == "status     1 waiting"

    cancelled = operator.run("tasks", "cancel", first_id)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"cancelled {first_id}")
    again = operator.run("tasks", "cancel", first_id)
    assert again.returncode == 1 and "FailedOperation.AsyncTaskAlreadyStarted" in again.stderr
    assert json.loads(operator.run("tasks", "cancel", second_id, "--json").stdout) == {"Id": second_id, "Status": 5}


def test_an_api_error_is_its_code_and_message_and_exit_1(operator: Operator) -> None:
    result = operator.run("tasks", "describe", "0" * 24)
    assert result.returncode == 1
    assert _lines(result.stderr)[0].startswith(
        f"Error: ResourceNotFound.TaskNotExist: The task `{'0' * 24}` does not exist in this account"
    )
    refused = operator.run("tasks", "create", "--product", "NOSUCHPROD", "--filter", "(a", "--desired", "{}")
    assert refused.returncode == 1 and "InvalidParameterValue: DeviceNameFilter '(a'" in refused.stderr
    usage = operator.run("tasks", "create", "--product", "P", "--filter", "", "--at", "tomorrow", "--desired", "{}")
    assert usage.returncode == 2 and "--at: 'tomorrow' is not a time" in usage.stderr


def test_watch_of_a_cancelled_task_exits_5(operator: Operator) -> None:
    pid = operator.product("cancelled", devices=5)
    task_id = operator.run("tasks", "create", "--product", pid, "--filter", "", "--desired", "{}", "--at", "+1h").stdout
    watch = operator.start("tasks", "watch", task_id.strip(), "--interval", "0.1")
    try:
        assert "waiting, starts " in _wait_for_line(watch, "waiting")[-1]
        assert operator.run("tasks", "cancel", task_id.strip()).returncode == 0
        out, _ = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 5
    assert _lines(out)[-1] == f"task {task_id.strip()} was cancelled (0 of 0 devices)"


def test_watch_of_a_failed_task_exits_4_saying_why(operator: Operator) -> None:
    # 20,000 devices in batches of 20 take the engine longer than the task's 1 s deadline
    pid = operator.product("late", devices=20_000)
    result = operator.run(
        "tasks", "create", "--product", pid, "--filter", "", "--desired", '{"a":1}', "--max-execution", "1",
        "--watch", "--interval", "0.2",
    )  # fmt: skip
    assert result.returncode == 4, result.stdout + result.stderr
    task_id = _lines(result.stdout)[0]
    summary = _lines(result.stdout)[-1]
    assert summary.startswith(f"task {task_id} failed: deadline of 1 s passed after ")
    assert summary.endswith(" of 20000 devices (RetCode 1)")


def test_ctrl_c_stops_the_watch_not_the_task(operator: Operator) -> None:
    pid = operator.product("interrupted", devices=5)
    task_id = operator.run(
        "tasks", "create", "--product", pid, "--filter", "", "--desired", "{}", "--at", "+1h"
    ).stdout.strip()  # fmt: skip
    watch = operator.start("tasks", "watch", task_id, "--interval", "0.1")
    try:
        _wait_for_line(watch, "waiting")
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 130
    assert f"stopped watching; task {task_id} goes on" in err and "Traceback" not in err
    assert json.loads(operator.run("tasks", "describe", task_id, "--json").stdout)["Status"] == 1
