"""The in-memory side of the signature checks (backend/signatures.py): the bounded cache of confirmed bindings,
and the guard answering repeats from it without a database round trip."""

from __future__ import annotations

import pytest

from fleetops import errors
from fleetops.backend.signatures import BindingCache, SignatureGuard
from fleetops.ports.signatures import Binding

SHADOW_FIELDS = ("DescribeDeviceShadow", "2018-06-14", "ap-guangzhou")
DELETE_FIELDS = ("DeleteDevice", "2018-06-14", "ap-guangzhou")
SHADOW, DELETE = Binding(*SHADOW_FIELDS), Binding(*DELETE_FIELDS)


def test_an_entry_is_answered_until_its_expiry_and_never_after() -> None:
    cache = BindingCache(max_entries=10)
    cache.put("a", SHADOW, expires_at=100, now_s=0)
    assert cache.get("a", now_s=100) == SHADOW
    assert cache.get("a", now_s=101) is None
    assert len(cache) == 0  # dropped when found expired


def test_a_binding_never_changes_once_cached() -> None:
    cache = BindingCache(max_entries=10)
    cache.put("a", SHADOW, expires_at=100, now_s=0)
    cache.put("a", DELETE, expires_at=100, now_s=0)
    assert cache.get("a", now_s=0) == SHADOW


def test_full_it_drops_the_expired_first_then_the_oldest() -> None:
    cache = BindingCache(max_entries=3)
    cache.put("old", SHADOW, expires_at=10, now_s=0)
    cache.put("b", SHADOW, expires_at=100, now_s=0)
    cache.put("c", SHADOW, expires_at=100, now_s=0)
    cache.put("d", SHADOW, expires_at=100, now_s=50)  # "old" expired: it goes, nothing else
    assert [cache.get(k, 50) for k in ("b", "c", "d")] == [SHADOW] * 3
    cache.put("e", SHADOW, expires_at=100, now_s=50)  # nothing expired: the oldest goes
    assert cache.get("b", 50) is None
    assert len(cache) == 3


def test_the_size_stays_bounded_under_many_keys() -> None:
    cache = BindingCache(max_entries=1000)
    for index in range(10_000):
        cache.put(f"k{index}", SHADOW if index % 2 else DELETE, expires_at=10**9, now_s=0)
    assert len(cache) == 1000
    assert cache.get("k9999", 0) == SHADOW and cache.get("k0", 0) is None


class CountingLedger:
    """Answers as a ledger that has seen nothing yet, and counts the round trips."""

    def __init__(self) -> None:
        self.calls = 0

    async def bind(self, key: str, binding: Binding, expires_at: int) -> Binding | None:
        self.calls += 1
        return None

    async def prune(self, now_s: int, limit: int) -> int:
        return 0


async def test_a_repeat_is_answered_from_memory_and_another_action_refused() -> None:
    ledger = CountingLedger()
    guard = SignatureGuard(ledger, lambda: 1_000.0)
    for _ in range(5):
        await guard.bind_tc3("ab" * 32, SHADOW, expires_at=1_300)
    assert ledger.calls == 1
    with pytest.raises(errors.SignatureFailure, match="already used for DescribeDeviceShadow"):
        await guard.bind_tc3("ab" * 32, DELETE, expires_at=1_300)
    assert ledger.calls == 1


async def test_a_nonce_is_accepted_once() -> None:
    ledger = CountingLedger()
    guard = SignatureGuard(ledger, lambda: 1_000.0)
    await guard.claim_nonce("AKID", 42, SHADOW, expires_at=1_300)
    with pytest.raises(errors.SignatureFailure, match="Nonce 42"):
        await guard.claim_nonce("AKID", 42, SHADOW, expires_at=1_300)
    await guard.claim_nonce("AKID", 43, SHADOW, expires_at=1_300)
    await guard.claim_nonce("AKID2", 42, SHADOW, expires_at=1_300)  # another key's nonces are its own
    assert ledger.calls == 3


async def test_another_action_is_accepted_only_from_the_client_that_first_presented_the_signature() -> None:
    guard = SignatureGuard(CountingLedger(), lambda: 1_000.0)
    await guard.bind_tc3("cd" * 32, Binding(*SHADOW_FIELDS, "198.51.100.20"), expires_at=1_300)
    await guard.bind_tc3("cd" * 32, Binding(*DELETE_FIELDS, "198.51.100.20"), expires_at=1_300)  # the same client
    for other in ("198.51.100.21", ""):
        with pytest.raises(errors.SignatureFailure, match="already used for DescribeDeviceShadow"):
            await guard.bind_tc3("cd" * 32, Binding(*DELETE_FIELDS, other), expires_at=1_300)


async def test_a_signature_first_seen_without_an_address_serves_no_other_action() -> None:
    guard = SignatureGuard(CountingLedger(), lambda: 1_000.0)
    await guard.bind_tc3("ef" * 32, SHADOW, expires_at=1_300)
    with pytest.raises(errors.SignatureFailure):
        await guard.bind_tc3("ef" * 32, DELETE, expires_at=1_300)


def test_the_cache_keeps_each_bindings_own_client() -> None:
    cache = BindingCache()
    cache.put("a", Binding(*SHADOW_FIELDS, "198.51.100.1"), expires_at=2_000, now_s=0)
    cache.put("b", Binding(*SHADOW_FIELDS, "198.51.100.2"), expires_at=2_000, now_s=0)
    first, second = cache.get("a", 0), cache.get("b", 0)
    assert first is not None and second is not None
    assert (first.client, second.client) == ("198.51.100.1", "198.51.100.2")
