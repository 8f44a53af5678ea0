"""The operator commands' own logic, without a node: endpoints, credentials, task options, paging, the watch.

The same commands against a real node, as processes, are tests/e2e/test_operator_cli.py.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fleetops.client.api import ApiClient, ClientSetupError, Credentials, Endpoint
from fleetops.client.credentials import resolve_credentials
from fleetops.client.tasks import OptionError, TaskOrder, create_task_params, parse_duration_s, parse_schedule_time
from fleetops.client.watch import RateEstimate, TaskWatch, duration_text
from fleetops.credentials import write_credentials
from fleetops.domain.tasks import TaskType
from fleetops.ports.store import ApiKey

NOW = 1_750_000_000

# --- endpoints -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "url", "host"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/", "127.0.0.1:8080"),  # bare: plain HTTP, what fleetops serves
        ("https://iot.example.com", "https://iot.example.com/", "iot.example.com"),
        ("http://[::1]:8080", "http://[::1]:8080/", "[::1]:8080"),
    ],
)
def test_an_endpoint_is_a_url_and_the_host_it_signs(given: str, url: str, host: str) -> None:
    endpoint = Endpoint.parse(given)
    assert (endpoint.url, endpoint.host) == (url, host)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ftp://h:21", "is not an HTTP URL"),
        ("http://", "is not an HTTP URL"),
        ("http://h:8080/api", "has a path"),
        ("http://h:80?x=1", "has a path"),
        ("http://h:port", "invalid port"),
    ],
)
def test_an_endpoint_that_cannot_work_is_one_message(given: str, says: str) -> None:
    with pytest.raises(ClientSetupError, match=says):
        Endpoint.parse(given)


# --- credentials: options, then the environment, then <data-dir>/credentials.json --------------------------


def _saved(data_dir: Path, secret_id: str = "AKIDfile") -> None:
    write_credentials(data_dir / "credentials.json", ApiKey(secret_id, "file-key", 1, "default", True, 0))


ENV = {"FLEETOPS_SECRET_ID": "AKIDenv", "FLEETOPS_SECRET_KEY": "env-key"}


def test_options_come_first_then_the_environment_then_the_file(tmp_path: Path) -> None:
    _saved(tmp_path)
    chosen = resolve_credentials("AKIDopt", "opt-key", ENV, tmp_path)
    assert (chosen.secret_id, chosen.secret_key, chosen.source) == ("AKIDopt", "opt-key", "--secret-id/--secret-key")
    chosen = resolve_credentials(None, None, ENV, tmp_path)
    assert (chosen.secret_id, chosen.secret_key) == ("AKIDenv", "env-key")
    assert chosen.source == "FLEETOPS_SECRET_ID/FLEETOPS_SECRET_KEY"
    chosen = resolve_credentials(None, None, {}, tmp_path)
    assert (chosen.secret_id, chosen.secret_key) == ("AKIDfile", "file-key")
    assert chosen.source == str((tmp_path / "credentials.json").resolve())


def test_a_pair_is_never_assembled_from_two_places(tmp_path: Path) -> None:
    _saved(tmp_path)
    with pytest.raises(ClientSetupError, match="give both --secret-id and --secret-key"):
        resolve_credentials("AKIDopt", None, ENV, tmp_path)
    with pytest.raises(ClientSetupError, match="FLEETOPS_SECRET_KEY is not set"):
        resolve_credentials(None, None, {"FLEETOPS_SECRET_ID": "AKIDenv"}, tmp_path)


def test_no_credentials_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ClientSetupError) as info:
        resolve_credentials(None, None, {}, tmp_path)
    assert f"{(tmp_path / 'credentials.json').resolve()} does not exist" in str(info.value)
    assert "--secret-id" in str(info.value) and "FLEETOPS_SECRET_ID" in str(info.value)
    (tmp_path / "credentials.json").write_text("not json")
    with pytest.raises(ClientSetupError, match="cannot be read as a key pair"):
        resolve_credentials(None, None, {}, tmp_path)


def test_the_secret_key_is_never_in_a_repr() -> None:
    assert "s3cret" not in repr(Credentials("AKIDx", "s3cret", "test"))


# --- tasks create: options to CreateTask parameters --------------------------------------------------------


def test_update_shadow_from_desired() -> None:
    params = create_task_params(TaskOrder("ABCDE12345", "^lamp-", desired='{"color":"red"}'), NOW)
    assert params == {
        "TaskType": "UpdateShadow",
        "ProductId": "ABCDE12345",
        "DeviceNameFilter": "^lamp-",
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"UpdateShadowTask": {"Desired": '{"color":"red"}'}},
    }


def test_publish_message_from_topic_and_payload_with_a_schedule_and_a_deadline() -> None:
    order = TaskOrder("ABCDE12345", "", topic="control", payload="on", at="+15m", max_execution="2h")
    params = create_task_params(order, NOW)
    assert params["TaskType"] == "PublishMessage"
    assert params["Tasks"] == {"PublishMessageTask": {"Topic": "control", "Payload": "on"}}
    assert params["ScheduleTimeInSeconds"] == NOW + 900
    assert params["MaxExecutionTimeInSeconds"] == 7200


@pytest.mark.parametrize(
    ("order", "option"),
    [
        (TaskOrder("P", "", desired="{}", topic="t", payload="p"), "--desired"),  # both kinds
        (TaskOrder("P", ""), "--type"),  # neither
        (TaskOrder("P", "", task_type=TaskType.UPDATE_SHADOW, topic="t", payload="p"), "--desired"),
        (TaskOrder("P", "", task_type=TaskType.PUBLISH_MESSAGE, topic="t"), "--topic"),
        (TaskOrder("P", "", desired="{}", at="tomorrow"), "--at"),
        (TaskOrder("P", "", desired="{}", max_execution="soon"), "--max-execution"),
    ],
)
def test_options_that_describe_no_task_are_refused_naming_the_option(order: TaskOrder, option: str) -> None:
    with pytest.raises(OptionError) as info:
        create_task_params(order, NOW)
    assert info.value.option == option and str(info.value).startswith(option)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("now", 0), ("0", 0), ("1750000600", 1_750_000_600), ("+90", NOW + 90), ("+2h", NOW + 7200)],
)
def test_schedule_times(text: str, expected: int) -> None:
    assert parse_schedule_time(text, NOW) == expected


def test_an_iso_time_without_an_offset_is_local_time() -> None:
    assert parse_schedule_time("2030-06-01T14:00:00+00:00", NOW) == int(
        datetime(2030, 6, 1, 14, tzinfo=UTC).timestamp()
    )
    local = datetime(2030, 6, 1, 14, 0).astimezone()
    assert parse_schedule_time("2030-06-01T14:00", NOW) == int(local.timestamp())


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration_s(text, "--max-execution") == seconds


# --- paging ------------------------------------------------------------------------------------------------


class _Pages(ApiClient):
    """An ApiClient whose call answers from a list of 23 items (paging logic only)."""

    def __init__(self) -> None:
        super().__init__(Endpoint.parse("http://h:1"), Credentials("AKIDx", "k", "test"))
        self.items = [{"n": n} for n in range(23)]
        self.calls: list[dict[str, Any]] = []

    def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(params)
        offset, limit = params["Offset"], params["Limit"]
        return {"TotalCount": len(self.items), "Things": self.items[offset : offset + limit]}


def test_collect_pages_through_everything() -> None:
    client = _Pages()
    total, found = client.collect("X", {"A": 1}, "Things", page_limit=10)
    assert total == 23 and [f["n"] for f in found] == list(range(23))
    assert [c["Offset"] for c in client.calls] == [0, 10, 20] and all(c["A"] == 1 for c in client.calls)


def test_collect_stops_at_the_count_asked_for() -> None:
    client = _Pages()
    total, found = client.collect("X", {}, "Things", page_limit=10, offset=5, count=12)
    assert total == 23 and [f["n"] for f in found] == list(range(5, 17))
    assert len(client.calls) == 2


# --- the watch ---------------------------------------------------------------------------------------------


def test_the_rate_is_measured_over_the_recent_polls() -> None:
    rate = RateEstimate(window_s=10)
    rate.observe(0, 0)
    assert rate.rate_per_s is None and rate.time_left_s(100) is None
    rate.observe(1, 100)
    assert rate.rate_per_s == 100 and rate.time_left_s(500) == 5
    for second in range(2, 30):  # the task slows down to 10 devices/s: the old pace is forgotten
        rate.observe(second, 100 + 10 * (second - 1))
    assert rate.rate_per_s == pytest.approx(10, rel=0.01)
    assert rate.time_left_s(0) == 0


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (4.6, "5 s"), (185, "3 min 05 s"), (7800, "2 h 10 min")])
def test_durations_read_as_a_person_would_say_them(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


def _task(status: int, done: int, all_devices: int, **extra: Any) -> dict[str, Any]:
    percent = 100 * done // all_devices if all_devices else 0
    return {
        "Id": "t1",
        "Status": status,
        "DoneDeviceCnt": done,
        "AllDeviceCnt": all_devices,
        "Percent": percent,
        "ScheduleTime": NOW,
        "DoneTime": 0,
        "RetCode": 0,
        "ErrMsg": "",
        **extra,
    }


class _Script:
    """DescribeTask answers in order, and a clock that one sleep moves by its interval."""

    def __init__(self, answers: list[dict[str, Any] | Exception]) -> None:
        self.answers = answers
        self.now = 0.0
        self.polls = 0

    def describe(self) -> dict[str, Any]:
        answer = self.answers[min(self.polls, len(self.answers) - 1)]
        self.polls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def watch(self) -> TaskWatch:
        return TaskWatch(self.describe, interval_s=1.0, clock=lambda: self.now, sleep=self.sleep)


def test_the_log_view_shows_progress_rate_and_time_left_then_how_it_ended() -> None:
    script = _Script(
        [
            _task(1, 0, 0),
            _task(2, 0, 0),
            _task(2, 0, 1000),
            _task(2, 250, 1000),
            _task(2, 500, 1000),
            _task(3, 1000, 1000, DoneTime=NOW + 4),
        ]
    )
    out, err = io.StringIO(), io.StringIO()
    outcome = script.watch().run_lines("t1", out, err, as_json=False)
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]  # without the clock time
    assert lines[0].startswith("waiting, starts ")
    assert lines[1] == "processing: counting devices"
    assert "processing: 250 of 1,000 devices (25 %), 250 devices/s, 3 s left" in lines
    assert "processing: 500 of 1,000 devices (50 %), 250 devices/s, 2 s left" in lines
    assert lines[-1] == "completed: 1,000 of 1,000 devices (100 %), 250 devices/s"
    assert (outcome.exit_status, outcome.summary) == (0, "task t1 completed: 1,000 of 1,000 devices in 4 s")
    assert err.getvalue() == ""


def test_the_log_view_prints_only_changes_and_json_is_one_describe_task_per_line() -> None:
    script = _Script([_task(2, 10, 100), _task(2, 10, 100), _task(2, 10, 100), _task(4, 40, 100, RetCode=1)])
    out = io.StringIO()
    outcome = script.watch().run_lines("t1", out, io.StringIO(), as_json=True)
    shown = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(t["Status"], t["DoneDeviceCnt"]) for t in shown] == [(2, 10), (4, 40)]
    assert script.polls == 4
    assert outcome.exit_status == 4


def test_a_failed_task_says_why_and_a_cancelled_one_says_so() -> None:
    failed = _task(4, 40, 100, RetCode=1, ErrMsg="deadline of 60 s passed after 40 of 100 devices")
    outcome = _Script([failed]).watch().run_lines("t1", io.StringIO(), io.StringIO(), as_json=False)
    assert outcome.exit_status == 4
    assert outcome.summary == "task t1 failed: deadline of 60 s passed after 40 of 100 devices (RetCode 1)"
    outcome = _Script([_task(5, 0, 0)]).watch().run_lines("t1", io.StringIO(), io.StringIO(), as_json=False)
    assert (outcome.exit_status, outcome.summary) == (5, "task t1 was cancelled (0 of 0 devices)")


def test_a_node_that_stops_answering_does_not_end_the_watch() -> None:
    down = ClientSetupError("cannot reach the fleetops API at http://h:1 (Connection refused)")
    script = _Script([_task(2, 10, 100), down, down, _task(3, 100, 100)])
    err = io.StringIO()
    outcome = script.watch().run_lines("t1", io.StringIO(), err, as_json=False)
    assert outcome.exit_status == 0
    assert err.getvalue().count("Connection refused") == 2
    assert "the task goes on there, retrying every 1 s" in err.getvalue()


def test_the_terminal_view_draws_a_bar_with_done_of_all_rate_and_time_left() -> None:
    script = _Script([_task(2, 0, 4000), _task(2, 1000, 4000), _task(2, 2000, 4000), _task(3, 4000, 4000)])
    frames: list[str] = []
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)

    def describe() -> dict[str, Any]:
        frames.append(screen.getvalue())  # what was drawn before this poll
        return script.describe()

    watch = TaskWatch(describe, interval_s=1.0, clock=lambda: script.now, sleep=script.sleep)
    outcome = watch.run_bar("t1", console)
    drawn = screen.getvalue()
    assert outcome.exit_status == 0
    assert "━" in drawn  # the bar itself
    assert "processing" in drawn and "2,000 of 4,000 devices" in drawn
    assert "1,000 devices/s" in drawn and "2 s left" in drawn
    assert "completed" in drawn and "4,000 of 4,000 devices" in drawn
