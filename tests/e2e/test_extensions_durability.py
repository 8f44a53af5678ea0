"""Outcomes and rollout state survive a ``kill -9`` of ``fleetops serve`` (SQLite) in the middle of a
rate-limited UpdateShadow task that keeps outcomes (the ``serve`` fixture of test_task_durability.py: batches of
250, a stable node id): each batch's outcomes are written in its own transaction, so at the kill there is one
per device done; started again, the task resumes at its rate (no burst to catch up) and ends with exactly one
outcome per device, each at the version the task wrote."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import cast

from fleetops.store.outcomes import parse_batch
from tests.e2e.test_task_durability import Endpoint, prepare_database, serve, versions
from tests.serve_process import ServeProcess
from tests.support import LiveServer, common_client

__all__ = ["serve"]  # the fixture, used by name

RATE_PER_S = 10_000
DEVICES = 100_000  # prepare_database's


def outcome_rows(db_path: Path, task_id: str) -> dict[str, tuple[str, int]]:
    """(outcome, written version) per device, from the task's batch rows as stored (no later change here)."""
    with sqlite3.connect(db_path) as conn:
        batches = conn.execute("SELECT devices FROM task_batches WHERE task_id = ?", (task_id,)).fetchall()
        (changes,) = conn.execute("SELECT count(*) FROM task_devices WHERE task_id = ?", (task_id,)).fetchone()
    assert changes == 0
    rows: dict[str, tuple[str, int]] = {}
    for (devices,) in batches:
        batch = parse_batch("", 0, devices)
        for name, version, outcome in zip(batch.names, batch.versions, batch.outcomes, strict=True):
            assert name not in rows, name  # each device in one batch only
            assert version is not None
            rows[name] = (outcome.value, version)
    return rows


def test_kill_9_keeps_outcomes_and_the_rollout_exactly(serve: ServeProcess, tmp_path: Path) -> None:
    db_path = tmp_path / "fleetops.db"
    secret_id, secret_key, pid = prepare_database(serve.env["FLEETOPS_DATABASE_URL"])
    before = versions(db_path)
    serve.start()
    common = common_client(cast(LiveServer, Endpoint(f"127.0.0.1:{serve.port}", secret_id, secret_key)))
    params = {
        "TaskType": "UpdateShadow",
        "ProductId": pid,
        "DeviceNameFilter": "[02468]$",  # 50,000 devices
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"UpdateShadowTask": {"Desired": json.dumps({"fw": "3.0"})}},
        "TrackOutcomes": True,
        "Rollout": {"MaxDevicesPerSecond": RATE_PER_S},
    }
    task_id = common.call_json("CreateTask", params)["Response"]["TaskId"]

    def describe() -> dict[str, int]:
        answer: dict[str, int] = common.call_json("DescribeTask", {"Id": task_id})["Response"]
        return answer

    deadline = time.monotonic() + 20
    while (progress := describe())["DoneDeviceCnt"] < 5_000:
        assert time.monotonic() < deadline and progress["Status"] in (1, 2)
        time.sleep(0.01)
    serve.kill(signal.SIGKILL)

    with sqlite3.connect(db_path) as conn:
        (done,) = conn.execute("SELECT done_device_cnt FROM tasks WHERE id = ?", (task_id,)).fetchone()
    killed = outcome_rows(db_path, task_id)
    assert 5_000 <= done < 50_000  # killed in the middle: a 50,000-device task at 10,000/s takes 5 s
    assert len(killed) == done  # written in the batches' own transactions: one outcome per device done

    restarted = time.monotonic()
    serve.start()
    deadline = time.monotonic() + 60
    while (task := describe())["Status"] != 3:
        assert time.monotonic() < deadline and task["Status"] == 2
        time.sleep(0.05)
    elapsed_s = time.monotonic() - restarted
    assert task["AllDeviceCnt"] == task["DoneDeviceCnt"] == 50_000
    # the rollout goes on from the restart at its rate: the rest took at least what the rate allows (one tick
    # of devices may go out at once), not a burst to catch up on the time the node was down
    assert elapsed_s >= (50_000 - done) / RATE_PER_S - 0.5

    rows = outcome_rows(db_path, task_id)
    after = versions(db_path)
    assert set(rows) == {name for name in before if name[-1] in "02468"}
    for name, (outcome, version) in rows.items():
        assert outcome == "Written" and version == before[name][0] + 1 == after[name][0], name
    counts = common.call_json("DescribeTask", {"Id": task_id, "IncludeOutcomeCounts": True})["Response"]
    assert {c["Outcome"]: c["DeviceCnt"] for c in counts["OutcomeCounts"]}["Written"] == 50_000
