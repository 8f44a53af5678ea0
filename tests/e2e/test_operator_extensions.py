"""``fleetops tasks preview | stop | devices`` and the extension options of ``tasks create`` as an operator runs
them: real processes against a live node (the Operator and server of test_operator_cli.py)."""

from __future__ import annotations

import json
import time

from tests.e2e.test_operator_cli import Operator, operator, server

__all__ = ["operator", "server"]  # the fixtures, used by name


def test_preview_create_with_a_token_and_a_rate_stop_and_the_devices(operator: Operator) -> None:
    pid = operator.product("gates", devices=200)
    preview = operator.run("tasks", "preview", "--product", pid, "--filter", "^lamp-0000", "--desired", "{}")
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.splitlines()[:3] == ["10 devices match now", "  lamp-00000", "  lamp-00001"]

    create = [
        "tasks", "create", "--product", pid, "--filter", "", "--topic", "control", "--payload", "go",
        "--max-rate", "20", "--track-outcomes", "--client-token", "ops-1",
    ]  # fmt: skip
    first = operator.run(*create)
    assert first.returncode == 0, first.stderr
    task_id = first.stdout.strip()
    assert operator.run(*create).stdout.strip() == task_id  # the same token: the same task
    refused = operator.run(*create[:-2], "--client-token", "ops-1", "--abort", "50:10")
    assert refused.returncode == 1 and "ClientToken `ops-1` was used" in refused.stderr

    deadline = time.monotonic() + 30
    while json.loads(operator.run("tasks", "describe", task_id, "--json").stdout)["DoneDeviceCnt"] < 20:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    described = operator.run("tasks", "describe", task_id)
    assert "outcomes   Sent 0, Offline " in described.stdout and "rollout    20.0 devices/s now" in described.stdout
    stopped = operator.run("tasks", "stop", task_id)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopping {task_id} after its batch"
    watch = operator.run("tasks", "watch", task_id)
    assert watch.returncode == 5  # cancelled
    task = json.loads(operator.run("tasks", "describe", task_id, "--json").stdout)
    done = task["DoneDeviceCnt"]
    assert task["Status"] == 5 and 20 <= done < 200

    devices = operator.run("tasks", "devices", task_id, "--outcome", "Offline", "--limit", "3")
    assert devices.returncode == 0, devices.stderr
    assert [row.split()[:2] for row in devices.stdout.splitlines()] == [
        ["DEVICE", "OUTCOME"], ["lamp-00000", "Offline"], ["lamp-00001", "Offline"], ["lamp-00002", "Offline"],
    ]  # fmt: skip
    assert devices.stderr.strip() == f"devices 1-3 of {done} of task {task_id}; --offset 3 for more"
    again = operator.run("tasks", "stop", task_id)
    assert again.returncode == 1 and "FailedOperation" in again.stderr
