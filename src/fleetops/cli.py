"""fleetops command line: serve | keys | db (and the device / task tools). The only place that builds adapters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fleetops.errors import ConfigurationError
from fleetops.settings import Settings

T = TypeVar("T")


def _run(coro: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@click.group()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="data directory [FLEETOPS_DATA_DIR]")
@click.option("--database", "database_url", default=None, help="database URL [FLEETOPS_DATABASE_URL]")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, database_url: str | None) -> None:
    """fleetops: self-hosted Tencent Cloud IoT Hub batch tasks, devices and shadows."""
    try:
        ctx.obj = Settings.from_env().with_overrides(data_dir=data_dir, database_url=database_url)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc


@main.command()
@click.option("--host", default=None, help="HTTP listen address [FLEETOPS_HOST, default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="HTTP listen port [FLEETOPS_PORT, default 8080]")
@click.option("--mqtt-port", type=int, default=None, help="embedded MQTT port [FLEETOPS_MQTT_PORT, default 1883]")
@click.option("--mqtt-url", default=None, help="external broker mqtt://user:pass@host:port [FLEETOPS_MQTT_URL]")
@click.option("--log-level", default=None, help="log level [FLEETOPS_LOG_LEVEL, default INFO]")
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    mqtt_port: int | None,
    mqtt_url: str | None,
    log_level: str | None,
) -> None:
    """Run the HTTP API, the MQTT side and the task engine."""
    settings = _settings(ctx).with_overrides(
        host=host, port=port, mqtt_port=mqtt_port, mqtt_url=mqtt_url, log_level=log_level
    )
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from fleetops.server import run_server

    try:
        _run(run_server(settings))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--mqtt-url", default=None, help="external broker mqtt://user:pass@host:port [FLEETOPS_MQTT_URL]")
@click.option("--node-id", default=None, help="stable name of this node in task leases [FLEETOPS_NODE_ID]")
@click.option("--log-level", default=None, help="log level [FLEETOPS_LOG_LEVEL, default INFO]")
@click.pass_context
def worker(ctx: click.Context, mqtt_url: str | None, node_id: str | None, log_level: str | None) -> None:
    """Run the task engine only (no HTTP API), beside `serve` nodes on the same database and broker."""
    settings = _settings(ctx).with_overrides(mqtt_url=mqtt_url, node_id=node_id, log_level=log_level)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from fleetops.server import run_worker

    try:
        _run(run_worker(settings))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def keys() -> None:
    """Manage accounts and their API keys (works without the server running)."""


async def _with_accounts(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from fleetops.store.accounts import AccountStore
    from fleetops.store.database import open_database
    from fleetops.store.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.effective_database_url)
    try:
        await upgrade(db)
        return await fn(AccountStore(db))
    finally:
        await db.dispose()


@keys.command("create")
@click.option("--account", default="default", show_default=True, help="account name (created if new)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def keys_create(ctx: click.Context, account: str, as_json: bool) -> None:
    """Create a key pair for ACCOUNT; the SecretKey is printed once."""

    async def create(accounts: Any) -> Any:
        now = int(time.time())
        account_id = await accounts.account_id(account)
        if account_id is None:
            account_id = await accounts.create_account(account, now)
        return await accounts.create_key(account_id, now)

    key = _run(_with_accounts(_settings(ctx), create))
    if as_json:
        click.echo(json.dumps({"account": key.account_name, "SecretId": key.secret_id, "SecretKey": key.secret_key}))
    else:
        click.echo(f"account:   {key.account_name}\nSecretId:  {key.secret_id}\nSecretKey: {key.secret_key}")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List key pairs (SecretKeys are never shown)."""

    async def list_keys(accounts: Any) -> Any:
        return await accounts.list_keys()

    found = _run(_with_accounts(_settings(ctx), list_keys))
    rows = [
        {"account": k.account_name, "SecretId": k.secret_id, "enabled": k.enabled, "created_at": k.created_at}
        for k in found
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['account']:<16} {r['SecretId']:<40} {'enabled' if r['enabled'] else 'disabled'}")


@keys.command("disable")
@click.argument("secret_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def keys_disable(ctx: click.Context, secret_id: str, as_json: bool) -> None:
    """Disable a key: requests signed with it get AuthFailure.SecretIdNotFound."""

    async def disable(accounts: Any) -> bool:
        return bool(await accounts.set_key_enabled(secret_id, False))

    done = _run(_with_accounts(_settings(ctx), disable))
    if not done:
        raise click.ClickException(f"no key with SecretId {secret_id}")
    click.echo(json.dumps({"SecretId": secret_id, "enabled": False}) if as_json else f"disabled {secret_id}")


@main.group()
def devices() -> None:
    """Register devices in bulk (works without the server running)."""


@devices.command("create")
@click.option("--product", "product_id", required=True, help="ProductId of the product")
@click.option("--prefix", default=None, help="name prefix; names are PREFIX<n> for n = START .. START+COUNT-1")
@click.option("--count", type=int, default=None, help="how many devices to create (with --prefix)")
@click.option("--start", type=int, default=1, show_default=True, help="first number after the prefix")
@click.option("--digits", type=int, default=0, show_default=True, help="zero-pad numbers to this width")
@click.option(
    "--names-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="one device name per line",
)
@click.option(
    "--psk-out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="write name,psk CSV (mode 0600)",
)
@click.option("--account", default="default", show_default=True, help="account that owns the product")
@click.option("--skip-existing", is_flag=True, help="skip names the product already has instead of failing")
@click.option("--batch-size", type=int, default=10_000, show_default=True, help="devices per transaction")
@click.pass_context
def devices_create(
    ctx: click.Context,
    product_id: str,
    prefix: str | None,
    count: int | None,
    start: int,
    digits: int,
    names_file: Path | None,
    psk_out: Path | None,
    account: str,
    skip_existing: bool,
    batch_size: int,
) -> None:
    """Create many devices at once: names [a-zA-Z0-9:_-]{1,48}, each with a new PSK and an empty shadow."""
    from rich.console import Console

    from fleetops.backend.registration import RegistrationError
    from fleetops.devices_cli import RegistrationRequest, create_devices

    request = RegistrationRequest(
        product_id=product_id,
        account=account,
        prefix=prefix,
        count=count,
        start=start,
        digits=digits,
        names_file=names_file,
        psk_out=psk_out,
        skip_existing=skip_existing,
        batch_size=batch_size,
    )
    console = Console(stderr=True)
    try:
        report = _run(create_devices(_settings(ctx), request, console))
    except RegistrationError as exc:
        raise click.ClickException(str(exc)) from exc
    skipped = f", skipped {report.skipped_existing:,} existing" if report.skipped_existing else ""
    click.echo(
        f"created {report.created:,} devices in {report.elapsed_s:.1f} s ({report.rate_per_s:,.0f}/s){skipped}"
        + (f"; PSKs in {psk_out}" if psk_out is not None else "")
    )


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema to the newest revision."""

    async def noop(_accounts: Any) -> None:
        return None

    _run(_with_accounts(_settings(ctx), noop))
    click.echo("schema is up to date")


@main.group()
def mosquitto() -> None:
    """The Mosquitto plugin: device authentication, the device ACL, shadow requests for several nodes."""


@mosquitto.command("build")
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("build/mosquitto"),
    show_default=True,
    help="directory for the .so",
)
@click.option("--checked", is_flag=True, help="UBSan build with debug info, to run under valgrind (docs/mosquitto.md)")
def mosquitto_build(output: Path, checked: bool) -> None:
    """Compile the plugin with the system cc ($CC) and print the path of the .so."""
    from fleetops.mosquitto.build import BuildError, build_plugin

    try:
        click.echo(str(build_plugin(output, checked=checked, compiler=os.environ.get("CC", "cc"))))
    except BuildError as exc:
        click.echo(f"fleetops mosquitto build: {exc}", err=True)
        sys.exit(2)
