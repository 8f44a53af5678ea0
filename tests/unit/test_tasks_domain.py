"""Batch task rules: status values, transitions, schedule and deadline, progress, the Tasks member."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetops.api.actions.tasks import CreateTaskRequest
from fleetops.api.decoding import decode_request
from fleetops.domain.limits import PUBLISH_PAYLOAD_MAX_BYTES
from fleetops.domain.tasks import (
    DEADLINE_RET_CODE,
    FINISHED_STATUSES,
    OPEN_STATUSES,
    RUNNING,
    PublishMessageSpec,
    TaskEvent,
    TaskStatus,
    TaskType,
    UpdateShadowSpec,
    deadline,
    effective_max_execution_time,
    effective_schedule_time,
    failure_message,
    is_overdue,
    percent,
    sources,
    target,
    task_spec,
    transition,
)
from fleetops.errors import (
    ApiError,
    AsyncTaskAlreadyStarted,
    InvalidParameter,
    InvalidParameterValue,
    InvalidTaskTransition,
    TaskAlreadyEnded,
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
    (TaskStatus.PROCESSING, TaskEvent.ABORT): TaskStatus.FAILED,
    (TaskStatus.PROCESSING, TaskEvent.STOP): TaskStatus.CANCELLED,
}


@pytest.mark.parametrize(("status", "event"), list(itertools.product(TaskStatus, TaskEvent)))
def test_transition_table(status: TaskStatus, event: TaskEvent) -> None:
    expected = LEGAL.get((status, event))
    if expected is not None:
        assert transition(status, event) is expected
    elif event is TaskEvent.CANCEL:
        with pytest.raises(AsyncTaskAlreadyStarted, match=f"status is {status.value}"):
            transition(status, event)
    elif event is TaskEvent.STOP and status in FINISHED_STATUSES:
        with pytest.raises(TaskAlreadyEnded, match=f"ended already \\(status {status.value}"):
            transition(status, event)
    else:
        with pytest.raises(InvalidTaskTransition, match=status.name):
            transition(status, event)


def test_only_waiting_tasks_can_be_cancelled() -> None:
    assert sources(TaskEvent.CANCEL) == {TaskStatus.WAITING}


@pytest.mark.parametrize("event", list(TaskEvent))
def test_sources_and_target_are_the_transition_table(event: TaskEvent) -> None:
    # the store builds its conditional UPDATEs from sources/target: they must say what transition() does
    for status in TaskStatus:
        if status in sources(event):
            assert transition(status, event) is target(event)
        else:
            with pytest.raises((AsyncTaskAlreadyStarted, InvalidTaskTransition, TaskAlreadyEnded)):
                transition(status, event)


def test_open_and_finished_statuses_partition_the_statuses() -> None:
    assert OPEN_STATUSES == {TaskStatus.WAITING, TaskStatus.PROCESSING}
    assert OPEN_STATUSES | FINISHED_STATUSES == set(TaskStatus) and not OPEN_STATUSES & FINISHED_STATUSES
    assert RUNNING is TaskStatus.PROCESSING


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


@pytest.mark.parametrize(
    ("requested", "error", "message"),
    [
        (-1, InvalidParameter, f"must be an Integer from 0 to {DAY}, got `-1`"),
        (DAY + 1, InvalidParameterValue, f"must be between 0 and {DAY}, got `{DAY + 1}`"),
        (10**12, InvalidParameterValue, f"must be between 0 and {DAY}, got `{10**12}`"),
    ],
)
def test_max_execution_time_outside_the_range_is_refused_by_the_declaration(
    requested: int, error: type[ApiError], message: str
) -> None:
    # the range is part of CreateTask's request declaration, checked once when the request is decoded
    raw = {
        "TaskType": "UpdateShadow",
        "ProductId": "ABCDE12345",
        "DeviceNameFilter": "",
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"UpdateShadowTask": {"Desired": "{}"}},
        "MaxExecutionTimeInSeconds": requested,
    }
    with pytest.raises(error) as caught:
        decode_request(CreateTaskRequest, raw, from_strings=False)
    assert type(caught.value) is error
    assert caught.value.message == f"The parameter `MaxExecutionTimeInSeconds` {message}."


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


def test_task_types_are_the_vendor_values() -> None:
    # TaskType is decoded from the wire by the request declaration (its values are the allowed choices)
    assert [t.value for t in TaskType] == ["UpdateShadow", "PublishMessage"]


def test_valid_update_shadow_task() -> None:
    spec = task_spec(TaskType.UPDATE_SHADOW, desired='{"color": "red", "level": {"a": [1, 2]}}')
    assert spec == UpdateShadowSpec({"color": "red", "level": {"a": [1, 2]}})


def test_valid_publish_message_task() -> None:
    # The official example: {"Tasks":{"PublishMessageTask":{"Topic":"event","Payload":"close"}}}.
    assert task_spec(TaskType.PUBLISH_MESSAGE, topic="event", payload="close") == PublishMessageSpec("event", b"close")


@pytest.mark.parametrize(
    ("task_type", "members", "member"),
    [
        (TaskType.UPDATE_SHADOW, {}, "UpdateShadowTask"),
        (TaskType.UPDATE_SHADOW, {"topic": "t", "payload": "p"}, "UpdateShadowTask"),
        (TaskType.PUBLISH_MESSAGE, {}, "PublishMessageTask"),
        (TaskType.PUBLISH_MESSAGE, {"desired": "{}"}, "PublishMessageTask"),
    ],
)
def test_missing_member_names_the_member_and_the_type(
    task_type: TaskType, members: dict[str, str], member: str
) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        task_spec(task_type, **members)
    assert caught.value.message == f"Tasks.{member} is required when TaskType is {task_type.value}."


@pytest.mark.parametrize(
    ("desired", "message"),
    [
        ('{"color": ', "is not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('"red"', "must be a JSON object"),
        ('{"a": [1, null]}', "must not contain null"),
        ('{"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}', "nested 7 levels deep"),
        ('{"a": "' + "x" * 8200 + '"}', "bytes of compact JSON; at most 8192"),
        ('{"desired": {"color": "red"}}', 'the desired state itself, e.g. {"color":"red"}, not wrapped in "desired"'),
        ('{"reported": {"color": "red"}}', 'not wrapped in "reported"'),
    ],
)
def test_invalid_desired_is_refused_with_the_shadow_limits(desired: str, message: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        task_spec(TaskType.UPDATE_SHADOW, desired=desired)
    # CreateTask's documented errors hold only the plain InvalidParameterValue code.
    assert type(caught.value) is InvalidParameterValue
    assert caught.value.message.startswith("Tasks.UpdateShadowTask.Desired")
    assert message in caught.value.message


def test_an_attribute_called_desired_beside_others_is_a_desired_value() -> None:
    spec = task_spec(TaskType.UPDATE_SHADOW, desired='{"desired": {"a": 1}, "b": 2}')
    assert spec == UpdateShadowSpec({"desired": {"a": 1}, "b": 2})


def test_desired_at_the_depth_limit_is_accepted() -> None:
    # {"desired": {"a": {"b": {"c": {"d": {"e": 1}}}}}}: six objects, the wrapper counting as level 1.
    spec = task_spec(TaskType.UPDATE_SHADOW, desired='{"a": {"b": {"c": {"d": {"e": 1}}}}}')
    assert spec == UpdateShadowSpec({"a": {"b": {"c": {"d": {"e": 1}}}}})


@pytest.mark.parametrize("topic", ["a", "a:b_c-1", "x" * 128])
def test_valid_topics(topic: str) -> None:
    spec = task_spec(TaskType.PUBLISH_MESSAGE, topic=topic, payload="on")
    assert isinstance(spec, PublishMessageSpec) and spec.topic == topic


@pytest.mark.parametrize("topic", ["", "x" * 129, "a/b", "ABCDE12345/lamp01/control", "a b", "é", None])
def test_invalid_topics(topic: str | None) -> None:
    with pytest.raises(InvalidParameterValue, match=r"Tasks\.PublishMessageTask\.Topic must be the topic after"):
        task_spec(TaskType.PUBLISH_MESSAGE, topic=topic, payload="on")


def test_payload_limit_counts_utf8_bytes() -> None:
    at_limit = "é" * (PUBLISH_PAYLOAD_MAX_BYTES // 2)
    spec = task_spec(TaskType.PUBLISH_MESSAGE, topic="control", payload=at_limit)
    assert isinstance(spec, PublishMessageSpec) and len(spec.payload) == PUBLISH_PAYLOAD_MAX_BYTES
    with pytest.raises(InvalidParameterValue, match="16386 bytes of UTF-8; at most 16384"):
        task_spec(TaskType.PUBLISH_MESSAGE, topic="control", payload=at_limit + "é")


@pytest.mark.parametrize("payload", ["", None])
def test_payload_must_be_a_non_empty_string(payload: str | None) -> None:
    with pytest.raises(InvalidParameterValue, match=r"Tasks\.PublishMessageTask\.Payload must be a non-empty string"):
        task_spec(TaskType.PUBLISH_MESSAGE, topic="control", payload=payload)
