"""``fleetops devices create``: bulk registration straight into the database, with a progress bar.

Works without the server running (like ``fleetops keys``): it opens the configured database through the
composition root (``fleetops.node.open_stores``), migrates it if needed, and writes through the same store as the
API. cli.py only parses options and calls :func:`create_devices`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fleetops.backend.registration import (
    DEFAULT_BATCH_SIZE,
    RegistrationError,
    RegistrationReport,
    names_from_file,
    names_from_prefix,
    register_devices,
)
from fleetops.ports.store import DeviceNameTaken, ProductMissing
from fleetops.settings import Settings


@dataclass(frozen=True)
class RegistrationRequest:
    product_id: str
    account: str
    prefix: str | None = None
    count: int | None = None
    start: int = 1
    digits: int = 0
    names_file: Path | None = None
    psk_out: Path | None = None
    skip_existing: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE


def _names(request: RegistrationRequest) -> list[str]:
    if request.names_file is not None:
        if request.prefix is not None or request.count is not None:
            raise RegistrationError("give either --names-file or --prefix/--count, not both.")
        return names_from_file(request.names_file)
    if request.count is None:
        raise RegistrationError("give --count (with --prefix) or --names-file.")
    if not request.prefix:
        # bare numbers are legal device names, but "1", "2", ... in a product is never what was meant
        raise RegistrationError(
            "give --prefix with --count (names are PREFIX<n>, e.g. --prefix lamp- gives lamp-1, lamp-2, ...)."
        )
    return names_from_prefix(request.prefix or "", request.count, start=request.start, digits=request.digits)


def _open_secret_file(path: Path) -> TextIO:
    # PSKs are secrets: the file is created 0600 from the start, never readable by others even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.chmod(path, 0o600)
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


async def create_devices(settings: Settings, request: RegistrationRequest, console: Console) -> RegistrationReport:
    """Register the devices; raises RegistrationError with a message for the user."""
    names = _names(request)
    if request.batch_size < 1:
        raise RegistrationError("--batch-size must be at least 1.")
    from fleetops.node import open_stores

    stores = await open_stores(settings)
    try:
        account_id = await stores.accounts.account_id(request.account)
        if account_id is None:
            raise RegistrationError(f"there is no account named {request.account!r} (see `fleetops keys list`).")
        store = stores.devices
        psk_out = _open_secret_file(request.psk_out) if request.psk_out is not None else None
        try:
            with Progress(
                TextColumn("[bold]registering"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            ) as progress:
                task = progress.add_task("devices", total=len(names), rate="")
                started = time.perf_counter()

                def advance(n: int) -> None:
                    progress.advance(task, n)
                    done = progress.tasks[0].completed
                    elapsed = time.perf_counter() - started
                    progress.update(task, rate=f"{done / elapsed:,.0f}/s" if elapsed > 0 else "")

                return await register_devices(
                    store,
                    account_id,
                    request.product_id,
                    names,
                    now_s=int(time.time()),
                    max_devices=settings.max_devices_per_product,
                    batch_size=request.batch_size,
                    skip_existing=request.skip_existing,
                    psk_out=psk_out,
                    on_progress=advance,
                )
        except ProductMissing as exc:
            raise RegistrationError(
                f"the account {request.account!r} has no product {request.product_id!r}. Nothing was written."
            ) from exc
        except DeviceNameTaken as exc:
            raise RegistrationError(
                "another client created one of these devices during the run; the batches before it were "
                "written. Run again with --skip-existing to create the rest."
            ) from exc
        finally:
            if psk_out is not None:
                psk_out.close()
    finally:
        await stores.close()
