"""Batch task rules: status values, transitions, schedule and deadline, progress, the Tasks member."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetops.domain.limits import PUBLISH_PAYLOAD_MAX_BYTES
from fleetops.domain.tasks import (
    DEADLINE_RET_CODE,
    PublishMessageSpec,
    TaskEvent,
    TaskStatus,
    TaskType,
    UpdateShadowSpec,
    can_cancel,
    deadline,
    effective_max_execution_time,
    effective_schedule_time,
    failure_message,
    is_overdue,
    parse_task_type,
    percent,
    transition,
    validate_tasks,
)
from fleetops.errors import (
    AsyncTaskAlreadyStarted,
    InvalidParameterValue,
    InvalidTaskTransition,
    MissingParameter,
)

NOW = 1_700_000_000
DAY = 86_400


def test_enums_carry_the_vendor_values() -> None:
    assert [(s.name, s.value) for s in TaskStatus] == [
        ("WAITING", 1),
        ("PROCESSING", 2),
        ("COMPLETED", 3),
        ("FAILED", 4),
        ("CANCELLED", 5),
    ]
    assert [t.value for t in TaskType] == ["UpdateShadow", "PublishMessage"]


# --- transitions -------------------------------------------------------------------------------------------

LEGAL = {
    (TaskStatus.WAITING, TaskEvent.START): TaskStatus.PROCESSING,
    (TaskStatus.WAITING, TaskEvent.CANCEL): TaskStatus.CANCELLED,
    (TaskStatus.PROCESSING, TaskEvent.FINISH): TaskStatus.COMPLETED,
    (TaskStatus.PROCESSING, TaskEvent.DEADLINE): TaskStatus.FAILED,
}


@pytest.mark.parametrize(("status", "event"), list(itertools.product(TaskStatus, TaskEvent)))
def test_transition_table(status: TaskStatus, event: TaskEvent) -> None:
    expected = LEGAL.get((status, event))
    if expected is not None:
        assert transition(status, event) is expected
    elif event is TaskEvent.CANCEL:
        with pytest.raises(AsyncTaskAlreadyStarted, match=f"status is {status.value}"):
            transition(status, event)
    else:
        with pytest.raises(InvalidTaskTransition, match=status.name):
            transition(status, event)


def test_only_waiting_tasks_can_be_cancelled() -> None:
    assert [s for s in TaskStatus if can_cancel(s)] == [TaskStatus.WAITING]


def test_cancelling_a_cancelled_task_is_already_started() -> None:
    with pytest.raises(AsyncTaskAlreadyStarted) as caught:
        transition(TaskStatus.CANCELLED, TaskEvent.CANCEL)
    assert caught.value.code == "FailedOperation.AsyncTaskAlreadyStarted"


# --- schedule and deadline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "effective"),
    [
        (0, NOW),
        (NOW, NOW),
        (NOW + 1, NOW + 1),
        (NOW + DAY, NOW + DAY),
        (NOW + DAY + 1, NOW + DAY),
        (NOW + 365 * DAY, NOW + DAY),
    ],
)
def test_effective_schedule_time(requested: int, effective: int) -> None:
    assert effective_schedule_time(requested, NOW) == effective


@pytest.mark.parametrize("requested", [1, NOW - 1])
def test_schedule_time_in_the_past_is_refused(requested: int) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        effective_schedule_time(requested, NOW)
    assert caught.value.message == (
        f"ScheduleTimeInSeconds must be 0 (now) or >= the current time {NOW}; got {requested}."
    )


@given(requested=st.integers(0, 2 * NOW), now=st.integers(1, NOW))
def test_effective_schedule_time_is_within_a_day_from_now(requested: int, now: int) -> None:
    try:
        effective = effective_schedule_time(requested, now)
    except InvalidParameterValue:
        assert 0 < requested < now
    else:
        assert now <= effective <= now + DAY


@pytest.mark.parametrize(("requested", "effective"), [(None, DAY), (0, DAY), (1, 1), (3600, 3600), (DAY, DAY)])
def test_effective_max_execution_time(requested: int | None, effective: int) -> None:
    assert effective_max_execution_time(requested) == effective


@pytest.mark.parametrize("requested", [-1, DAY + 1, 10**12])
def test_max_execution_time_outside_the_range_is_refused(requested: int) -> None:
    with pytest.raises(InvalidParameterValue, match=f"MaxExecutionTimeInSeconds must be between 0 and {DAY}"):
        effective_max_execution_time(requested)


def test_deadline_and_overdue_boundary() -> None:
    assert deadline(NOW, 60) == NOW + 60
    assert not is_overdue(NOW, 60, NOW + 60)
    assert is_overdue(NOW, 60, NOW + 61)
    assert not is_overdue(NOW, 60, NOW - 5)


def test_failure_message_says_how_far_the_task_got() -> None:
    assert failure_message(0, 1, 1)[0] != 0  # a failed task must not look successful
    assert failure_message(250, 1000, 3600) == (
        DEADLINE_RET_CODE,
        "deadline of 3600 s passed after 250 of 1000 devices",
    )


# --- progress ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "all_devices", "status", "expected"),
    [
        (0, 10, TaskStatus.PROCESSING, 0),
        (1, 3, TaskStatus.PROCESSING, 33),
        (2, 3, TaskStatus.PROCESSING, 66),
        (999_999, 1_000_000, TaskStatus.PROCESSING, 99),
        (10, 10, TaskStatus.COMPLETED, 100),
        (0, 0, TaskStatus.COMPLETED, 100),
        (0, 0, TaskStatus.WAITING, 0),
        (0, 0, TaskStatus.PROCESSING, 0),
        (0, 0, TaskStatus.FAILED, 0),
    ],
)
def test_percent(done: int, all_devices: int, status: TaskStatus, expected: int) -> None:
    assert percent(done, all_devices, status) == expected


@given(all_devices=st.integers(1, 10**7), data=st.data())
def test_percent_is_monotonic_and_bounded(all_devices: int, data: st.DataObject) -> None:
    done = data.draw(st.integers(0, all_devices - 1))
    low = percent(done, all_devices, TaskStatus.PROCESSING)
    high = percent(done + 1, all_devices, TaskStatus.PROCESSING)
    assert 0 <= low <= high <= 100
    assert (high == 100) is (done + 1 == all_devices)


# --- the Tasks member --------------------------------------------------------------------------------------


def test_parse_task_type() -> None:
    assert parse_task_type("UpdateShadow") is TaskType.UPDATE_SHADOW
    assert parse_task_type("PublishMessage") is TaskType.PUBLISH_MESSAGE
    for bad in ("updateshadow", "", 1, None):
        with pytest.raises(InvalidParameterValue, match="TaskType must be UpdateShadow or PublishMessage"):
            parse_task_type(bad)


def test_valid_update_shadow_task() -> None:
    tasks = {"UpdateShadowTask": {"Desired": '{"color": "red", "level": {"a": [1, 2]}}'}}
    assert validate_tasks(TaskType.UPDATE_SHADOW, tasks) == UpdateShadowSpec({"color": "red", "level": {"a": [1, 2]}})


def test_valid_publish_message_task() -> None:
    # The official example: {"Tasks":{"PublishMessageTask":{"Topic":"event","Payload":"close"}}}.
    tasks = {"PublishMessageTask": {"Topic": "event", "Payload": "close"}}
    assert validate_tasks(TaskType.PUBLISH_MESSAGE, tasks) == PublishMessageSpec("event", b"close")


def test_missing_tasks_is_a_missing_parameter() -> None:
    with pytest.raises(MissingParameter, match="Tasks"):
        validate_tasks(TaskType.UPDATE_SHADOW, None)


@pytest.mark.parametrize(
    ("task_type", "tasks", "member"),
    [
        (TaskType.UPDATE_SHADOW, {}, "UpdateShadowTask"),
        (TaskType.UPDATE_SHADOW, {"UpdateShadowTask": {}}, "UpdateShadowTask"),
        (TaskType.UPDATE_SHADOW, {"PublishMessageTask": {"Topic": "t", "Payload": "p"}}, "UpdateShadowTask"),
        (TaskType.PUBLISH_MESSAGE, {"PublishMessageTask": None}, "PublishMessageTask"),
        (TaskType.PUBLISH_MESSAGE, {"UpdateShadowTask": {"Desired": "{}"}}, "PublishMessageTask"),
        (TaskType.PUBLISH_MESSAGE, ["PublishMessageTask"], "PublishMessageTask"),
    ],
)
def test_missing_member_names_the_member_and_the_type(task_type: TaskType, tasks: Any, member: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        validate_tasks(task_type, tasks)
    assert caught.value.message == f"Tasks.{member} is required when TaskType is {task_type.value}."


def update_shadow(desired: Any) -> dict[str, Any]:
    return {"UpdateShadowTask": {"Desired": desired}}


@pytest.mark.parametrize(
    ("desired", "message"),
    [
        (None, "must be a JSON object serialized as a string"),
        ({"color": "red"}, "must be a JSON object serialized as a string"),
        ('{"color": ', "is not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('"red"', "must be a JSON object"),
        ('{"a": [1, null]}', "must not contain null"),
        ('{"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}', "nested 7 levels deep"),
        ('{"a": "' + "x" * 8200 + '"}', "bytes of compact JSON; at most 8192"),
    ],
)
def test_invalid_desired_is_refused_with_the_shadow_limits(desired: Any, message: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        validate_tasks(TaskType.UPDATE_SHADOW, update_shadow(desired))
    # CreateTask's documented errors hold only the plain InvalidParameterValue code.
    assert type(caught.value) is InvalidParameterValue
    assert caught.value.message.startswith("Tasks.UpdateShadowTask.Desired")
    assert message in caught.value.message


def test_desired_at_the_depth_limit_is_accepted() -> None:
    # {"desired": {"a": {"b": {"c": {"d": {"e": 1}}}}}}: six objects, the wrapper counting as level 1.
    spec = validate_tasks(TaskType.UPDATE_SHADOW, update_shadow('{"a": {"b": {"c": {"d": {"e": 1}}}}}'))
    assert spec == UpdateShadowSpec({"a": {"b": {"c": {"d": {"e": 1}}}}})


def publish(topic: Any = "control", payload: Any = "on") -> dict[str, Any]:
    return {"PublishMessageTask": {"Topic": topic, "Payload": payload}}


@pytest.mark.parametrize("topic", ["a", "a:b_c-1", "x" * 128])
def test_valid_topics(topic: str) -> None:
    spec = validate_tasks(TaskType.PUBLISH_MESSAGE, publish(topic=topic))
    assert isinstance(spec, PublishMessageSpec) and spec.topic == topic


@pytest.mark.parametrize("topic", ["", "x" * 129, "a/b", "ABCDE12345/lamp01/control", "a b", "é", None, 5])
def test_invalid_topics(topic: Any) -> None:
    with pytest.raises(InvalidParameterValue, match=r"Tasks\.PublishMessageTask\.Topic must be the topic after"):
        validate_tasks(TaskType.PUBLISH_MESSAGE, publish(topic=topic))


def test_payload_limit_counts_utf8_bytes() -> None:
    at_limit = "é" * (PUBLISH_PAYLOAD_MAX_BYTES // 2)
    spec = validate_tasks(TaskType.PUBLISH_MESSAGE, publish(payload=at_limit))
    assert isinstance(spec, PublishMessageSpec) and len(spec.payload) == PUBLISH_PAYLOAD_MAX_BYTES
    with pytest.raises(InvalidParameterValue, match="16386 bytes of UTF-8; at most 16384"):
        validate_tasks(TaskType.PUBLISH_MESSAGE, publish(payload=at_limit + "é"))


@pytest.mark.parametrize("payload", ["", None, 5, b"bytes"])
def test_payload_must_be_a_non_empty_string(payload: Any) -> None:
    with pytest.raises(InvalidParameterValue, match=r"Tasks\.PublishMessageTask\.Payload must be a non-empty string"):
        validate_tasks(TaskType.PUBLISH_MESSAGE, publish(payload=payload))
