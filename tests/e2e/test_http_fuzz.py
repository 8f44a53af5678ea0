"""A short run of the HTTP fuzz (fuzz/http_fuzz.py, the long one is `make fuzz`) under hypothesis, on SQLite and
PostgreSQL: signed requests built from every action's declaration, in every request shape, never get a 5xx, an
InternalError, an answer that is not the envelope, or take over 2 s. Hypothesis drives the generator's random
choices (``st.randoms``), so a failure shrinks to a small request and is replayed from its database."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import postgres_database, sqlite_database

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))

import http_fuzz


@dataclass
class Target:
    runner: asyncio.Runner
    fuzz: http_fuzz.FuzzNode


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    data = tmp_path_factory.mktemp("fuzz")
    with asyncio.Runner() as runner:
        if request.param == "sqlite":
            fuzz = runner.run(http_fuzz.open_fuzz_node(sqlite_database(data / "fleetops.db"), data / "data"))
            try:
                yield Target(runner, fuzz)
            finally:
                runner.run(http_fuzz.close_fuzz_node(fuzz))
            return
        with postgres_database() as url:
            fuzz = runner.run(http_fuzz.open_fuzz_node(url, data / "data"))
            try:
                yield Target(runner, fuzz)
            finally:
                runner.run(http_fuzz.close_fuzz_node(fuzz))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(rng=st.randoms(use_true_random=False))
def test_no_request_gets_a_5xx_an_internal_error_or_a_hang(target: Target, rng: random.Random) -> None:
    maker = http_fuzz.RequestMaker(rng, target.fuzz.pools, target.fuzz.secret_id, target.fuzz.secret_key)
    for _ in range(4):
        request = maker.make()
        outcome = target.runner.run(http_fuzz.send(target.fuzz.app, request))
        assert not outcome.failure, f"{outcome.code}: {outcome.failure}\n{request.describe()}"
        assert outcome.status < 500 and outcome.elapsed_s < http_fuzz.SLOW_S, request.describe()


def test_the_fuzz_reaches_the_actions(target: Target) -> None:
    """Generated requests get past validation into the actions: some succeed, and the errors are of many kinds."""
    tally = target.runner.run(http_fuzz.fuzz_requests(target.fuzz, 400, seed=3, concurrency=2))
    assert tally.tried == 400 and not tally.failed, tally.report("fuzz", 0)
    assert tally.codes["OK"] > 0
    assert len(tally.codes) >= 15, tally.codes
