"""What the use cases and the task engine need from the database: the records, the errors and the stores.

``fleetops.store`` implements these Protocols on SQLite and PostgreSQL; the backend (``fleetops.backend``) and
the engine (``fleetops.engine``) see only this module, so they can be tested with the real stores (a SQLite
file) without knowing SQL. Every API-facing method takes the calling account and sees only its resources; the
device side (MQTT) reaches devices by the globally unique ProductId (``ports/messaging.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from fleetops.domain.shadow import JSONObject, Shadow
from fleetops.domain.tasks import TaskSpec, TaskStatus, TaskType

T = TypeVar("T")


# --- accounts and keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    secret_id: str
    secret_key: str = field(repr=False)
    account_id: int
    account_name: str
    enabled: bool
    created_at: int


class AccountNameTaken(Exception):
    """An account with this name exists already."""


class AccountStore(Protocol):
    async def count_accounts(self) -> int: ...

    async def create_account(self, name: str, now_s: int) -> int:
        """The new account's id; raises AccountNameTaken."""
        ...

    async def account_id(self, name: str) -> int | None: ...

    async def create_key(self, account_id: int, now_s: int) -> ApiKey: ...

    async def get_key(self, secret_id: str) -> ApiKey | None: ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def set_key_enabled(self, secret_id: str, enabled: bool) -> bool:
        """False when there is no such key."""
        ...


# --- products ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductRecord:
    pk: int
    account_id: int
    product_id: str
    name: str
    properties: dict[str, Any]
    created_at: int


class ProductNameTaken(Exception):
    """The account already has a product with this name (or, rarely, the ProductId is taken)."""


class ProductStore(Protocol):
    async def insert(
        self, account_id: int, product_id: str, name: str, properties: dict[str, Any], now_s: int, max_products: int
    ) -> ProductRecord | None:
        """Insert a product; None when the account has ``max_products`` already. Raises ProductNameTaken."""
        ...

    async def get(self, account_id: int, product_id: str) -> ProductRecord | None: ...

    async def id_for_name(self, account_id: int, name: str) -> str | None:
        """The ProductId of the account's product named ``name``, or None."""
        ...

    async def page(self, account_id: int, offset: int, limit: int) -> tuple[int, list[ProductRecord]]: ...

    async def delete_if_empty(self, account_id: int, product_id: str) -> bool | None:
        """None: no such product; False: it still has devices; True: deleted."""
        ...


# --- devices -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRecord:
    pk: int
    product_pk: int
    product_id: str
    name: str
    psk: str = field(repr=False)
    enabled: bool
    tags: list[dict[str, Any]]
    created_at: int
    online: bool
    login_time: int
    first_online_time: int | None
    last_offline_time: int | None
    client_ip: str | None


class NewDevice(NamedTuple):
    """A device to insert (a tuple: bulk registration builds millions of them)."""

    name: str
    psk: str
    tags: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class DevicePage:
    total: int
    devices: list[DeviceRecord]


class ProductMissing(Exception):
    """The account has no product with this ProductId."""


class DeviceMissing(Exception):
    """The product has no device with (one of) these names; ``names`` lists the missing ones."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        super().__init__(", ".join(self.names))


class DeviceNameTaken(Exception):
    """The product already has a device with this name."""


class DeviceLimitReached(Exception):
    """The product would hold more devices than allowed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"at most {limit} devices per product")


class DeviceStore(Protocol):
    async def product_pk(self, account_id: int, product_id: str) -> int:
        """Raises ProductMissing."""
        ...

    async def product_owner(self, product_id: str) -> int | None:
        """The account that owns ``product_id`` (the device side knows only the ProductId)."""
        ...

    async def count(self, account_id: int, product_id: str) -> int: ...

    async def insert(
        self, account_id: int, product_id: str, device: NewDevice, now_s: int, max_devices: int
    ) -> DeviceRecord:
        """One device with an empty shadow. Raises ProductMissing, DeviceLimitReached, DeviceNameTaken."""
        ...

    async def insert_many(
        self, account_id: int, product_id: str, batch: Sequence[NewDevice], now_s: int, max_devices: int | None
    ) -> int:
        """A batch in one transaction, all or nothing (see store/devices.py)."""
        ...

    async def existing_names(self, account_id: int, product_id: str, names: Iterable[str]) -> set[str]: ...

    def iter_names(self, account_id: int, product_id: str, batch_size: int = 10_000) -> AsyncIterator[str]: ...

    async def get(self, account_id: int, product_id: str, name: str) -> DeviceRecord:
        """Raises ProductMissing or DeviceMissing."""
        ...

    async def page(
        self,
        account_id: int,
        product_id: str,
        offset: int,
        limit: int,
        *,
        name_contains: str | None = None,
        enabled: bool | None = None,
    ) -> DevicePage: ...

    async def delete(self, account_id: int, product_id: str, name: str) -> None:
        """Raises ProductMissing or DeviceMissing."""
        ...

    async def set_enabled(self, account_id: int, product_id: str, names: Sequence[str], enabled: bool) -> int:
        """All or none; raises ProductMissing, or DeviceMissing listing every unknown name."""
        ...


# --- shadows -----------------------------------------------------------------------------------------------


class ShadowMissing(Exception):
    """The account has no such product, or the product no such device."""


class ShadowContention(Exception):
    """The shadow kept changing under this writer; it gave up after the bounded number of attempts."""


class ShadowStore(Protocol):
    async def read(self, account_id: int, product_id: str, device_name: str) -> Shadow:
        """Raises ShadowMissing."""
        ...

    async def update(
        self,
        account_id: int,
        product_id: str,
        device_name: str,
        change: Callable[[Shadow], tuple[Shadow | None, T]],
    ) -> T:
        """Apply the pure ``change`` atomically against every other writer (compare-and-set on the version).

        ``change(current)`` returns ``(new, result)``; ``new`` None writes nothing. It may run more than once.
        Raises ShadowMissing, ShadowContention.
        """
        ...


# --- tasks -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    account_id: int
    product_pk: int
    product_id: str
    type: TaskType
    name_filter: str
    spec: TaskSpec
    status: TaskStatus
    created_at: int
    updated_at: int
    schedule_time: int
    started_at: int | None
    done_time: int
    max_execution_s: int
    ret_code: int
    err_msg: str
    all_device_cnt: int
    done_device_cnt: int
    snapshot_device_id: int | None  # the largest device id when the task started: later devices are not in it
    applied_cursor: str | None  # the last device name whose batch is committed (None: none yet)
    pushed_cursor: str | None  # the last device name whose delta pushes went out
    lease_owner: str | None
    lease_until: int | None


@dataclass(frozen=True, slots=True)
class NewTask:
    id: str
    account_id: int
    product_pk: int
    product_id: str
    type: TaskType
    name_filter: str
    spec: TaskSpec
    created_at: int
    schedule_time: int
    max_execution_s: int


@dataclass(frozen=True, slots=True)
class Progress:
    """One fenced progress write: applies only if the row still holds ``expected_cursor`` under ``owner``."""

    task_id: str
    owner: str
    expected_cursor: str | None
    applied_cursor: str | None
    pushed_cursor: str | None
    done_delta: int
    lease_until: int


class FenceLost(Exception):
    """The task's row no longer says this node may write this batch; the batch was rolled back."""


class TaskStore(Protocol):
    # the API
    async def insert_within_limit(self, task: NewTask, max_open: int) -> int | None:
        """None when inserted, else the number of open tasks that blocked it (race-free across nodes)."""
        ...

    async def get(self, account_id: int, task_id: str, created_after: int) -> TaskRecord | None: ...

    async def page(
        self, account_id: int, offset: int, limit: int, created_after: int
    ) -> tuple[int, list[TaskRecord]]: ...

    async def cancel(self, account_id: int, task_id: str, now_s: int, created_after: int) -> TaskStatus | None:
        """WAITING when this call cancelled it, else the status that prevented it; None: no such task."""
        ...

    # the engine: claims and leases
    async def claim_next(
        self, owner: str, now_s: int, lease_s: int, exclude: Sequence[str] = ()
    ) -> TaskRecord | None: ...

    async def release_owned(self, owner: str) -> int: ...

    async def release(self, task_id: str, owner: str) -> None: ...

    async def renew(self, task_id: str, owner: str, lease_until: int) -> bool: ...

    # the engine: progress and outcome
    async def set_device_count(self, task_id: str, owner: str, all_device_cnt: int, lease_until: int) -> bool: ...

    async def advance(self, progress: Progress) -> bool: ...

    async def complete(self, task_id: str, owner: str, expected_cursor: str | None, now_s: int) -> bool: ...

    async def fail(self, task_id: str, owner: str, ret_code: int, err_msg: str, now_s: int) -> bool: ...

    async def read(self, task_id: str) -> TaskRecord | None: ...

    async def purge(self, created_before: int) -> int: ...

    # operations
    async def count_by_status(self) -> dict[TaskStatus, int]: ...


# (old desired, old desired metadata) -> (new desired, new desired metadata): ``domain.shadow.merge_section``
# bound to one patch, for the engine's row-by-row merge of a patch that is not flat
DesiredMerge = Callable[[JSONObject | None, Any], tuple[JSONObject, JSONObject]]


class DeviceBatches(Protocol):
    """The task engine's bulk work over a product's devices: keyset pages of names and batched desired merges.

    A batch's merge and the task's fenced progress write are ONE transaction (``store/batches.py``).
    """

    async def count(self, product_pk: int, snapshot_id: int) -> int: ...

    async def names_after(self, product_pk: int, after: str | None, snapshot_id: int, limit: int) -> list[str]: ...

    async def versions_between(
        self, product_pk: int, snapshot_id: int, after: str | None, through: str, limit: int
    ) -> list[tuple[str, int]]: ...

    async def merge_desired(
        self,
        progress: Progress,
        product_pk: int,
        snapshot_id: int,
        through: str,
        names: Sequence[str] | None,
        patch: JSONObject,
        now_ms: int,
        nested_merge: DesiredMerge | None = None,
    ) -> list[tuple[str, int]]:
        """Merge ``patch`` into the desired section of the devices in ``(progress.expected_cursor, through]``
        (only ``names`` of them unless None) with the fenced ``progress`` write; (name, new version) per
        device written. ``nested_merge`` None: ``patch`` is flat (``domain.shadow.is_flat``) and the database
        merges it; else each row is merged with it. Raises FenceLost (nothing written)."""
        ...
