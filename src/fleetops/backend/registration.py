"""Bulk device registration (``fleetops devices create``): large batches, straight into the store.

Every name is checked before anything is written: the name rule, duplicates in the input, names the product
already has (an error, or skipped and counted with ``skip_existing``, which makes an interrupted run
resumable) and the per-product device limit. Then the devices go in batches of ``batch_size``, one transaction
each (SQLite ``executemany``, PostgreSQL ``COPY``); a batch is all or nothing. PSKs are written out
(``name,psk``) after each batch commits, so the file never lists a device that does not exist.
"""

from __future__ import annotations

import base64
import csv
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from fleetops.backend.devices import DEVICE_NAME_PATTERN, is_valid_device_name
from fleetops.errors import FleetopsError
from fleetops.ports.store import DeviceStore, NewDevice

DEFAULT_BATCH_SIZE: Final = 10_000
PSK_BYTES: Final = 18  # as fleetops.ids.new_device_psk
_SHOWN: Final = 5


class RegistrationError(FleetopsError):
    """The registration cannot be done as asked; nothing was written unless the message says otherwise."""


@dataclass(frozen=True)
class RegistrationReport:
    created: int
    skipped_existing: int
    elapsed_s: float

    @property
    def rate_per_s(self) -> float:
        return self.created / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def psk_batch(count: int) -> list[str]:
    """``count`` new PSKs, each 18 random bytes in Base64 like :func:`fleetops.ids.new_device_psk`.

    One call to the system's random source for the whole batch: per-key calls cost more than the insert.
    """
    raw = secrets.token_bytes(PSK_BYTES * count)
    return [base64.b64encode(raw[i : i + PSK_BYTES]).decode("ascii") for i in range(0, PSK_BYTES * count, PSK_BYTES)]


def names_from_prefix(prefix: str, count: int, *, start: int = 1, digits: int = 0) -> list[str]:
    """``prefix`` followed by the numbers ``start`` .. ``start + count - 1``, zero-padded to ``digits``."""
    if count < 1:
        raise RegistrationError("--count must be at least 1.")
    if start < 0:
        raise RegistrationError("--start must not be negative.")
    return [f"{prefix}{n:0{digits}d}" for n in range(start, start + count)]


def names_from_file(path: Path) -> list[str]:
    """One name per line; surrounding whitespace and blank lines are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistrationError(f"cannot read the names file {path}: {exc}") from exc
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise RegistrationError(f"the names file {path} holds no device name.")
    return names


def check_names(names: Sequence[str]) -> None:
    """Raise RegistrationError for names that break ``[a-zA-Z0-9:_-]{1,48}`` or appear twice."""
    invalid = [n for n in names if not is_valid_device_name(n)]
    if invalid:
        raise RegistrationError(
            f"{len(invalid)} device name(s) do not match {DEVICE_NAME_PATTERN} "
            f"(letters, digits, ':', '_', '-'; 1 to 48 characters): {_listing([repr(n) for n in invalid])}. "
            "Nothing was written."
        )
    seen: set[str] = set()
    duplicates: list[str] = []
    for name in names:
        if name in seen:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        raise RegistrationError(
            f"{len(duplicates)} device name(s) appear more than once in the input: {_listing(duplicates)}. "
            "Nothing was written."
        )


async def _existing(store: DeviceStore, account_id: int, product_id: str, names: Sequence[str]) -> set[str]:
    current = await store.count(account_id, product_id)
    if current == 0:
        return set()
    if current <= len(names):
        # reading every name of the product is cheaper than asking about each new one
        wanted = set(names)
        return {n async for n in store.iter_names(account_id, product_id) if n in wanted}
    return await store.existing_names(account_id, product_id, names)


async def register_devices(
    store: DeviceStore,
    account_id: int,
    product_id: str,
    names: Sequence[str],
    *,
    now_s: int,
    max_devices: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_existing: bool = False,
    psk_out: TextIO | None = None,
    on_progress: Callable[[int], None] | None = None,
    new_psks: Callable[[int], list[str]] | None = None,
) -> RegistrationReport:
    """Create a device (with a new PSK and an empty shadow) for each name.

    Raises RegistrationError before writing anything when a name is invalid or repeated, when the product
    already has one of the names (unless ``skip_existing``), or when the product would pass ``max_devices``.
    Store errors (ProductMissing; DeviceNameTaken if another client creates one of the names meanwhile) are
    raised as they come, after the batches before them have been committed. ``on_progress(n)`` is called with
    the number of devices handled by each batch (created or skipped).
    """
    started = time.perf_counter()
    new_psks = new_psks or psk_batch
    check_names(names)
    existing = await _existing(store, account_id, product_id, names)
    if existing and not skip_existing:
        ordered = [n for n in names if n in existing]
        raise RegistrationError(
            f"the product {product_id} already has {len(existing)} of these device(s): {_listing(ordered)}. "
            "Nothing was written; use --skip-existing to create only the others."
        )
    todo = [n for n in names if n not in existing]
    current = await store.count(account_id, product_id)
    if current + len(todo) > max_devices:
        raise RegistrationError(
            f"the product {product_id} has {current} devices; {len(todo)} more would pass the limit of "
            f"{max_devices} devices per product. Nothing was written."
        )
    if existing and on_progress is not None:
        on_progress(len(existing))
    writer = None
    if psk_out is not None:
        writer = csv.writer(psk_out, lineterminator="\n")
        writer.writerow(("name", "psk"))
    created = 0
    for start in range(0, len(todo), batch_size):
        names_in_batch = todo[start : start + batch_size]
        psks = new_psks(len(names_in_batch))
        batch = [NewDevice(name, psk) for name, psk in zip(names_in_batch, psks, strict=True)]
        # the limit was checked for the whole run above; a per-batch count would cost more than the insert
        created += await store.insert_many(account_id, product_id, batch, now_s, None)
        if writer is not None and psk_out is not None:
            writer.writerows((d.name, d.psk) for d in batch)
            psk_out.flush()
        if on_progress is not None:
            on_progress(len(batch))
    return RegistrationReport(created, len(existing), time.perf_counter() - started)


def iter_batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
