"""Rollout plans, the pacer and abort criteria."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.rollout import PACE_TICK_S, AbortCriterion, Pacer, Rollout, abort_check

OFFLINE, NC = DeviceOutcome.OFFLINE, DeviceOutcome.NOT_CONVERGED


def test_a_constant_rate() -> None:
    plan = Rollout(max_per_s=100)
    assert not plan.growing
    assert plan.rate_at(0) == plan.rate_at(10**9) == 100
    assert plan.seconds_until(250) == 2.5
    assert plan.batch_limit(0) == 50  # half a second of devices
    assert Rollout(max_per_s=1).batch_limit(0) == 1  # at least one


def test_an_exponential_rate_grows_in_steps_up_to_the_maximum() -> None:
    plan = Rollout(max_per_s=50, base_per_s=10, increment_percent=100, increment_every=100)
    assert [plan.rate_at(n) for n in (0, 99, 100, 200, 299, 300, 10**6)] == [10, 10, 20, 40, 40, 50, 50]
    # 100 at 10/s, 100 at 20/s, 100 at 40/s, then 50/s
    assert plan.seconds_until(100) == pytest.approx(10)
    assert plan.seconds_until(300) == pytest.approx(10 + 5 + 2.5)
    assert plan.seconds_until(400) == pytest.approx(17.5 + 2)
    assert plan.batch_limit(0) == 5
    assert plan.batch_limit(98) == 2  # a batch never crosses a rate step
    assert Rollout(max_per_s=10, base_per_s=10, increment_percent=50, increment_every=5).growing is False


@given(
    st.integers(1, 1000),
    st.integers(1, 1000),
    st.integers(1, 400),
    st.integers(1, 500),
    st.integers(0, 5000),
    st.integers(0, 5000),
)
def test_the_plan_is_monotonic_and_never_faster_than_the_maximum(
    max_per_s: int, base_per_s: int, percent: int, every: int, a: int, b: int
) -> None:
    plan = Rollout(max_per_s, min(base_per_s, max_per_s), percent, every)
    low, high = sorted((a, b))
    assert plan.seconds_until(low) <= plan.seconds_until(high)
    assert plan.seconds_until(high) - plan.seconds_until(low) >= (high - low) / max_per_s - 1e-9
    assert 1 <= plan.batch_limit(low) <= max(1, int(max_per_s * PACE_TICK_S))


def test_the_pacer_keeps_the_plan_and_does_not_catch_up_in_a_burst() -> None:
    pacer = Pacer(Rollout(max_per_s=10), done=0, now_s=100.0)
    assert pacer.due_s(0, 100.0) == 100.0
    assert pacer.due_s(5, 100.2) == 100.5
    # the run stalled for a minute: it goes on from now, at most one tick early, not 600 devices at once
    assert pacer.due_s(10, 161.0) == pytest.approx(161.0 - PACE_TICK_S)
    assert pacer.due_s(15, 161.0) == pytest.approx(161.0)
    resumed = Pacer(Rollout(max_per_s=10), done=500, now_s=1000.0)  # a resumed task: from now, at the rate
    assert resumed.due_s(500, 1000.0) == 1000.0 and resumed.due_s(510, 1000.0) == 1001.0


def test_abort_when_more_than_the_threshold_of_at_least_the_minimum_fails() -> None:
    criteria = (AbortCriterion(OFFLINE, 50, 20),)
    assert abort_check(criteria, 19, {OFFLINE: 19}) is None  # too few processed
    assert abort_check(criteria, 20, {OFFLINE: 10}) is None  # exactly 50 %: not more
    tripped = abort_check(criteria, 20, {OFFLINE: 11})
    assert tripped is not None and (tripped.index, tripped.failed, tripped.processed) == (0, 11, 20)
    assert tripped.message == (
        "aborted by AbortCriteria[0]: 11 of 20 processed devices (55.0 %) Offline, more than the 50 % allowed "
        "once at least 20 devices are processed"
    )


def test_the_first_criterion_that_holds_is_named() -> None:
    criteria = (AbortCriterion(NC, 90, 1), AbortCriterion(NC, 10, 100), AbortCriterion(NC, 20, 5))
    tripped = abort_check(criteria, 50, {NC: 20})
    assert tripped is not None and tripped.index == 2
    assert abort_check((AbortCriterion(NC, 0, 1),), 1, {NC: 0}) is None  # 0 %: any failure, but none yet
    assert abort_check((AbortCriterion(NC, 0, 1),), 1, {NC: 1}) is not None
    assert abort_check((AbortCriterion(NC, 100, 1),), 10, {NC: 10}) is None  # 100 %: never
