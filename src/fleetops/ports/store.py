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

from fleetops.domain.extensions import TaskExtensions
from fleetops.domain.name_filter import NameFilter
from fleetops.domain.outcomes import DeviceOutcome
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


class DevicePresence(Protocol):
    """The devices' recorded presence (``devices.online``), as the broker side keeps it: the task engine tells
    a message handed to an external broker by it (engine/deliveries.py)."""

    async def online_among(self, product_id: str, names: Sequence[str]) -> set[str]:
        """Which of ``names`` (devices of ``product_id``) are recorded online: one query for the batch."""
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

        ``change(current)`` returns ``(new, result)``; ``new`` None writes nothing. It may run more than once,
        and with other callers' changes of the same shadow in one write, each on the previous one's document
        (the result is the same as one write after the other). Raises ShadowMissing, ShadowContention.
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
    extensions: TaskExtensions | None = None  # fleetops extensions asked for at creation (None: a Tencent task)
    stop_requested: bool = False  # StopTask: the engine ends the task after the batch in flight

    @property
    def tracks_outcomes(self) -> bool:
        return self.extensions is not None and self.extensions.tracks_outcomes


@dataclass(frozen=True, slots=True)
class ClientTokenClaim:
    """CreateTask's ClientToken: the same token within ``valid_since`` names the task it created first."""

    token: str
    fingerprint: str  # domain.extensions.request_fingerprint of the request's other parameters
    valid_since: int  # Unix s: a token recorded before this is forgotten


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
    extensions: TaskExtensions | None = None
    client_token: ClientTokenClaim | None = None


@dataclass(frozen=True, slots=True)
class Insertion:
    """What ``insert_within_limit`` did: created the task, refused it at the cap, or found its client token."""

    created: bool
    task_id: str | None = None  # the created task, or the one the client token created first
    open_count: int = 0  # refused: the open tasks that blocked it
    fingerprint: str | None = None  # the client token's first request (compare to tell a retry from a misuse)


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
    # refuse the write (StopRequested) when a StopTask is waiting: for a batch whose devices are not reached
    # before it commits (UpdateShadow); a PublishMessage batch has gone out already and is counted
    unless_stopped: bool = False


class FenceLost(Exception):
    """The task's row no longer says this node may write this batch; the batch was rolled back."""


class StopRequested(Exception):
    """A StopTask came before this batch committed; the batch was rolled back, the task is still this node's."""


@dataclass(frozen=True, slots=True)
class Committed:
    """A batch's transaction committed: what it wrote, and whether a StopTask is waiting for the task."""

    written: list[tuple[str, int]]  # UpdateShadow: (device name, new shadow version) per device written
    stop_requested: bool


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One device of a PublishMessage batch, for the task's outcomes."""

    device_name: str
    outcome: DeviceOutcome


class TaskStore(Protocol):
    # the API
    async def insert_within_limit(self, task: NewTask, max_open: int) -> Insertion:
        """Insert ``task`` unless the account has ``max_open`` open tasks, or its client token names a task
        already (race-free across nodes)."""
        ...

    async def count_open(self, account_id: int) -> int:
        """The account's tasks waiting or processing (what the pending cap counts)."""
        ...

    async def get(self, account_id: int, task_id: str, created_after: int) -> TaskRecord | None: ...

    async def page(
        self, account_id: int, offset: int, limit: int, created_after: int
    ) -> tuple[int, list[TaskRecord]]: ...

    async def cancel(self, account_id: int, task_id: str, now_s: int, created_after: int) -> TaskStatus | None:
        """WAITING when this call cancelled it, else the status that prevented it; None: no such task."""
        ...

    async def stop(self, account_id: int, task_id: str, now_s: int, created_after: int) -> TaskStatus | None:
        """StopTask: cancel a waiting task, or ask the engine to stop a processing one. The status the task had
        (WAITING: cancelled now; PROCESSING: stop requested; any other: nothing done); None: no such task."""
        ...

    # the engine: claims and leases
    async def claim_next(
        self, owner: str, now_s: int, lease_s: int, exclude: Sequence[str] = ()
    ) -> TaskRecord | None: ...

    async def release_owned(self, owner: str) -> int: ...

    async def release(self, task_id: str, owner: str) -> None: ...

    async def renew(self, task_id: str, owner: str, lease_until: int) -> bool | None:
        """Extend the lease: None when it is no longer ours, else whether a StopTask is waiting."""
        ...

    # the engine: progress and outcome
    async def start(self, task_id: str, owner: str, all_device_cnt: int, now_s: int, lease_until: int) -> bool:
        """Status 1 -> 2 with AllDeviceCnt, counted while the task still waited under this node's lease; False
        when it was cancelled meanwhile (or the lease lost)."""
        ...

    async def set_device_count(self, task_id: str, owner: str, all_device_cnt: int, lease_until: int) -> bool: ...

    async def advance(self, progress: Progress, results: Sequence[DeviceResult] = (), now_ms: int = 0) -> Committed:
        """A progress write on its own (PublishMessage batches, pages without a matching device), with the
        outcomes of the batch's devices (a task that tracks them). Raises FenceLost."""
        ...

    async def complete(self, task_id: str, owner: str, expected_cursor: str | None, now_s: int) -> bool: ...

    async def fail(self, task_id: str, owner: str, ret_code: int, err_msg: str, now_s: int) -> bool:
        """Status 4 (deadline or abort criteria) with RetCode/ErrMsg."""
        ...

    async def end_stopped(self, task_id: str, owner: str, err_msg: str, now_s: int) -> bool:
        """Status 2 -> 5 for a StopTask, after the batch in flight committed."""
        ...

    async def read(self, task_id: str) -> TaskRecord | None: ...

    async def late_delivery_tasks(self, product_id: str, now_s: int) -> list[TaskRecord]:
        """The product's started tasks with extensions whose MaxExecutionTimeInSeconds has not run out (the
        candidates for late delivery; the caller keeps those that ask for it)."""
        ...

    async def purge(self, created_before: int, tokens_created_before: int | None = None) -> int: ...

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
        tracking: bool = False,
    ) -> Committed:
        """Merge ``patch`` into the desired section of the devices in ``(progress.expected_cursor, through]``
        (only ``names`` of them unless None) with the fenced ``progress`` write; (name, new version) per
        device written. ``nested_merge`` None: ``patch`` is flat (``domain.shadow.is_flat``) and the database
        merges it; else each row is merged with it. ``tracking``: the task keeps outcomes (each written device
        gets its row, Converged at once when its reported state holds the values already, and the task becomes
        the device's watch). Raises FenceLost (nothing written)."""
        ...

    async def count_matching(
        self, product_pk: int, snapshot_id: int, name_filter: NameFilter, sample: int = 0
    ) -> tuple[int, list[str]]:
        """How many devices of the snapshot match ``name_filter``, and the first ``sample`` of them by name."""
        ...


@dataclass(frozen=True, slots=True)
class Moved:
    """What ``TaskOutcomes.move`` did: the devices moved, and those whose batch is not committed yet."""

    moved: set[str]
    pending: set[str]


@dataclass(frozen=True, slots=True)
class DeviceOutcomeRecord:
    """One device of a task's outcomes, as DescribeTaskDevices lists it."""

    device_name: str
    outcome: DeviceOutcome  # effective: NotConverged derived from Written and the window
    version: int | None  # UpdateShadow: the shadow version the task wrote
    at_ms: int  # when the outcome last changed


class TaskOutcomes(Protocol):
    """The per-device outcomes of tasks that keep them (``store/outcomes.py``). Calls name a task by id: the
    backend reads the task through the account first."""

    async def counts(self, task_id: str, window_ms: int | None, now_ms: int) -> dict[DeviceOutcome, int]:
        """Devices per effective outcome."""
        ...

    async def page(
        self,
        task_id: str,
        outcome: DeviceOutcome | None,
        window_ms: int | None,
        now_ms: int,
        offset: int,
        limit: int,
    ) -> tuple[int, list[DeviceOutcomeRecord]]:
        """The devices (of one effective outcome, unless None) by name: (how many in all, this page)."""
        ...

    async def pending_between(self, task_id: str, after: str | None, through: str) -> int:
        """How many devices named in ``(after, through]`` are still Written (the engine counts the devices of
        each batch whose window has passed: NotConverged)."""
        ...

    async def newest_write_ms(self, task_id: str) -> int | None:
        """When the task last wrote or sent to a device (None: no device yet)."""
        ...

    async def current(self, task_id: str, device_names: Sequence[str]) -> dict[str, DeviceOutcome]:
        """Each device's stored outcome (its later change, else its batch's); devices of no committed batch, or
        not reached, are left out."""
        ...

    async def move(self, task_id: str, device_names: Sequence[str], outcome: DeviceOutcome, now_ms: int) -> Moved:
        """Move the devices' outcomes to ``outcome`` where ``domain.outcomes.NEXT`` allows it."""
        ...

    async def mark(self, task_id: str, device_name: str, outcome: DeviceOutcome, now_ms: int) -> bool:
        """``move`` for one device; True when it moved."""
        ...


# --- the API rate limit shared by the nodes ------------------------------------------------------------------


class Grant(NamedTuple):
    """What ``RateWindows.reserve`` gave: ``granted`` requests (0 .. asked) of the window, and how many of its
    ``limit`` the deployment has been granted in all since the window began, this grant included."""

    granted: int
    used: int


class RateWindows(Protocol):
    """The request counters every node shares, one per (SecretId, Action) and one-second window
    (``store/rate_windows.py``; the policy that leases slices of them is ``api/ratelimit.py``)."""

    async def reserve(self, secret_id: str, action: str, window_s: int, asked: int, limit: int) -> Grant:
        """Take up to ``asked`` requests of ``window_s``'s ``limit``, in one statement: never more than what is
        left, so the grants of every node in a window add up to at most ``limit``. A grant for a window older
        than the one the counter has moved on to is charged to the newer window (a node whose clock is behind)."""
        ...
