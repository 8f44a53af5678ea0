"""fleetops command line: serve | worker | keys | devices | db | mosquitto, and the API clients tasks | products |
devices list.

Options only parse and report here; every adapter is built by the composition root (``fleetops.node``), and the
API clients' work is done by ``fleetops.client``. The options shared by all commands (``--data-dir``,
``--database``) may be given before the command or after it (``fleetops --data-dir D serve`` and
``fleetops serve --data-dir D``); both become Settings overrides on top of the ``FLEETOPS_*`` environment. A
setup mistake (a database that cannot be reached, a port in use, a bad setting, no credentials, a node that
cannot be reached) ends the command with one line saying what is wrong and what to do, and exit status 2; an
error the API answered is its Code and Message, exit status 1 (docs/operators.md#exit-status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from fleetops.domain.tasks import TaskStatus, TaskType
from fleetops.errors import ConfigurationError
from fleetops.event_loop import loop_factory
from fleetops.settings import Settings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_OVERRIDES = "fleetops.overrides"


class SetupError(click.ClickException):
    """A configuration or environment problem: one line on stderr, exit status 2."""

    exit_code = 2


def _run(coro: Coroutine[Any, Any, T], *, event_loop: str = "asyncio") -> T:
    """Run a command's coroutine on the loop ``event_loop`` names (``fleetops.event_loop``; Settings
    ``event_loop`` for serve and worker, asyncio's own for the short commands); a ConfigurationError becomes a
    SetupError (no traceback)."""
    try:
        try:
            factory = loop_factory(event_loop)
        except ConfigurationError:
            coro.close()  # never started
            raise
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)
    except ConfigurationError as exc:
        raise SetupError(str(exc)) from exc


def _remember(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.find_root().meta.setdefault(_OVERRIDES, {})[_param.name or ""] = value
    return value


def store_options(command: F) -> F:
    """``--data-dir`` and ``--database``, accepted on the group and on every command."""
    command = click.option(
        "--database",
        "database_url",
        default=None,
        expose_value=False,
        callback=_remember,
        help="database URL, sqlite:///PATH or postgresql://... [FLEETOPS_DATABASE_URL]",
    )(command)
    return data_dir_option("data directory (SQLite file, credentials.json)")(command)


def data_dir_option(what: str) -> Callable[[F], F]:
    """``--data-dir``: a Settings override, before the command or after it."""
    return click.option(
        "--data-dir",
        "data_dir",
        type=click.Path(path_type=Path),
        default=None,
        expose_value=False,
        callback=_remember,
        help=f"{what} [FLEETOPS_DATA_DIR, default ./fleetops-data]",
    )


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    given = dict(ctx.find_root().meta.get(_OVERRIDES, {}))
    try:
        return Settings.from_env().with_overrides(**given, **overrides)
    except ConfigurationError as exc:
        raise SetupError(str(exc)) from exc


def _configure_logging(settings: Settings, process: str = "") -> None:
    """``process`` names the process in every line (an API worker's lines share the primary's stderr)."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s {process}%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


@click.group()
@store_options
def main() -> None:
    """fleetops: self-hosted Tencent Cloud IoT Hub batch tasks, devices and shadows."""


@main.command()
@store_options
@click.option("--host", default=None, help="HTTP listen address [FLEETOPS_HOST, default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="HTTP listen port [FLEETOPS_PORT, default 8080]")
@click.option(
    "--tls-cert",
    "tls_cert_file",
    default=None,
    help="PEM certificate: serve the API over HTTPS [FLEETOPS_TLS_CERT_FILE]",
)
@click.option("--tls-key", "tls_key_file", default=None, help="PEM private key of --tls-cert [FLEETOPS_TLS_KEY_FILE]")
@click.option("--mqtt-port", type=int, default=None, help="embedded MQTT port [FLEETOPS_MQTT_PORT, default 1883]")
@click.option(
    "--mqtt-tls-port", type=int, default=None, help="embedded MQTT TLS port, e.g. 8883 [FLEETOPS_MQTT_TLS_PORT, off]"
)
@click.option("--mqtt-url", default=None, help="external broker mqtt://user:pass@host:port [FLEETOPS_MQTT_URL]")
@click.option("--node-id", default=None, help="stable name of this node in task leases [FLEETOPS_NODE_ID]")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="processes serving the API port, 1..32: this one and N-1 API workers [FLEETOPS_WORKERS, default 1]",
)
@click.option("--log-level", default=None, help="log level [FLEETOPS_LOG_LEVEL, default INFO]")
@click.pass_context
def serve(ctx: click.Context, /, **options: Any) -> None:
    """Run the HTTP API, the MQTT side and the task engine."""
    settings = _settings(ctx, **options)
    _configure_logging(settings)
    from fleetops.server import run_server

    _run(run_server(settings), event_loop=settings.event_loop)


@main.command("api-worker", hidden=True)
@click.option("--index", type=int, required=True)
@click.option("--listen-fd", type=int, required=True)
@click.option("--control-fd", type=int, required=True)
@click.option("--forward-to", required=True)
def api_worker(index: int, listen_fd: int, control_fd: int, forward_to: str) -> None:
    """An API worker of `fleetops serve --workers N`, started by it (its settings in the environment)."""
    settings = _settings(click.get_current_context())
    _configure_logging(settings, f"[api-worker {index}] ")
    from fleetops.workers import run_api_worker

    _run(
        run_api_worker(settings, index=index, listen_fd=listen_fd, control_fd=control_fd, forward_to=forward_to),
        event_loop=settings.event_loop,
    )


@main.command()
@store_options
@click.option("--mqtt-url", default=None, help="external broker mqtt://user:pass@host:port [FLEETOPS_MQTT_URL]")
@click.option("--node-id", default=None, help="stable name of this node in task leases [FLEETOPS_NODE_ID]")
@click.option("--log-level", default=None, help="log level [FLEETOPS_LOG_LEVEL, default INFO]")
@click.pass_context
def worker(ctx: click.Context, /, **options: Any) -> None:
    """Run the task engine only (no HTTP API), beside `serve` nodes on the same database and broker."""
    settings = _settings(ctx, **options)
    _configure_logging(settings)
    from fleetops.server import run_worker

    _run(run_worker(settings), event_loop=settings.event_loop)


# --- commands on the database alone (no server needed) --------------------------------------------------


async def _with_stores(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from fleetops.node import open_stores

    stores = await open_stores(settings)
    try:
        return await fn(stores)
    finally:
        await stores.close()


def _where(settings: Settings) -> str:
    """Names the data directory and database, so that a command run from the wrong folder says so."""
    from fleetops.store.database import display_url

    return f"data directory {settings.data_dir.resolve()}, database {display_url(settings.effective_database_url)}"


@main.group()
def keys() -> None:
    """Manage accounts and their API keys (works without the server running)."""


@keys.command("create")
@store_options
@click.option("--account", default="default", show_default=True, help="account name (created if new)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def keys_create(ctx: click.Context, account: str, as_json: bool) -> None:
    """Create a key pair for ACCOUNT; the SecretKey is printed once."""

    async def create(stores: Any) -> Any:
        now = int(time.time())
        account_id = await stores.accounts.account_id(account)
        if account_id is None:
            account_id = await stores.accounts.create_account(account, now)
        return await stores.accounts.create_key(account_id, now)

    key = _run(_with_stores(_settings(ctx), create))
    if as_json:
        click.echo(json.dumps({"account": key.account_name, "SecretId": key.secret_id, "SecretKey": key.secret_key}))
    else:
        click.echo(f"account:   {key.account_name}\nSecretId:  {key.secret_id}\nSecretKey: {key.secret_key}")


@keys.command("list")
@store_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def keys_list(ctx: click.Context, as_json: bool) -> None:
    """List key pairs (SecretKeys are never shown)."""
    settings = _settings(ctx)

    async def list_keys(stores: Any) -> Any:
        return await stores.accounts.list_keys()

    found = _run(_with_stores(settings, list_keys))
    rows = [
        {"account": k.account_name, "SecretId": k.secret_id, "enabled": k.enabled, "created_at": k.created_at}
        for k in found
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no key pairs in {_where(settings)}", err=True)
    for r in rows:
        click.echo(f"{r['account']:<16} {r['SecretId']:<40} {'enabled' if r['enabled'] else 'disabled'}")


@keys.command("disable")
@store_options
@click.argument("secret_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
def keys_disable(ctx: click.Context, secret_id: str, as_json: bool) -> None:
    """Disable a key: requests signed with it get AuthFailure.SecretIdNotFound."""
    settings = _settings(ctx)

    async def disable(stores: Any) -> bool:
        return bool(await stores.accounts.set_key_enabled(secret_id, False))

    if not _run(_with_stores(settings, disable)):
        raise click.ClickException(f"no key with SecretId {secret_id} in {_where(settings)}")
    click.echo(json.dumps({"SecretId": secret_id, "enabled": False}) if as_json else f"disabled {secret_id}")


@main.group()
def devices() -> None:
    """Devices: `create` registers in bulk on the database (no server needed); `list` asks the API."""


@devices.command("create")
@store_options
@click.option("--product", "product_id", required=True, help="ProductId of the product")
@click.option("--prefix", default=None, help="name prefix; names are PREFIX<n> for n = START .. START+COUNT-1")
@click.option("--count", type=int, default=None, help="how many devices to create (with --prefix)")
@click.option("--start", type=int, default=1, show_default=True, help="first number after the prefix")
@click.option("--digits", type=int, default=0, show_default=True, help="zero-pad numbers to this width")
@click.option(
    "--names-file", type=click.Path(path_type=Path, dir_okay=False), default=None, help="one device name per line"
)
@click.option(
    "--psk-out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="write name,psk CSV (mode 0600)"
)
@click.option("--account", default="default", show_default=True, help="account that owns the product")
@click.option("--skip-existing", is_flag=True, help="skip names the product already has instead of failing")
@click.option("--batch-size", type=int, default=10_000, show_default=True, help="devices per transaction")
@click.pass_context
def devices_create(ctx: click.Context, /, **options: Any) -> None:
    """Create many devices at once: names [a-zA-Z0-9:_-]{1,48}, each with a new PSK and an empty shadow."""
    from rich.console import Console

    from fleetops.backend.registration import RegistrationError
    from fleetops.devices_cli import RegistrationRequest, create_devices

    request = RegistrationRequest(**options)
    settings = _settings(ctx)
    try:
        report = _run(create_devices(settings, request, Console(stderr=True)))
    except RegistrationError as exc:
        raise click.ClickException(f"{exc} ({_where(settings)})") from exc
    skipped = f", skipped {report.skipped_existing:,} existing" if report.skipped_existing else ""
    click.echo(
        f"created {report.created:,} devices in {report.elapsed_s:.1f} s ({report.rate_per_s:,.0f}/s){skipped}"
        + (f"; PSKs in {request.psk_out}" if request.psk_out is not None else "")
    )


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command("upgrade")
@store_options
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema to the newest revision."""
    settings = _settings(ctx)

    async def noop(_stores: Any) -> None:
        return None

    _run(_with_stores(settings, noop))
    click.echo(f"schema is up to date ({_where(settings)})")


# --- API clients (like tccli): they talk to a node over HTTP, local or remote, never to the database -------

_API = "fleetops.api-options"


def _remember_api(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.find_root().meta.setdefault(_API, {})[param.name or ""] = value
    return value


def api_options(command: F) -> F:
    """``--endpoint``, the key pair, ``--timeout`` and ``--data-dir`` (where credentials.json is)."""
    for option in reversed(
        (
            click.option(
                "--endpoint",
                envvar="FLEETOPS_ENDPOINT",
                default=None,
                expose_value=False,
                callback=_remember_api,
                help="the API, http://HOST:PORT [FLEETOPS_ENDPOINT, default the local node: FLEETOPS_HOST/PORT]",
            ),
            click.option(
                "--secret-id", default=None, expose_value=False, callback=_remember_api, help="[FLEETOPS_SECRET_ID]"
            ),
            click.option(
                "--secret-key", default=None, expose_value=False, callback=_remember_api, help="[FLEETOPS_SECRET_KEY]"
            ),
            click.option(
                "--timeout",
                "timeout_s",
                type=float,
                default=None,
                expose_value=False,
                callback=_remember_api,
                help="seconds to wait for each answer [default 10]",
            ),
            data_dir_option("where credentials.json is, when no key pair is given"),
        )
    ):
        command = option(command)
    return command


def _local_endpoint(settings: Settings) -> str:
    """The node this machine would run: FLEETOPS_HOST / FLEETOPS_PORT, a wildcard address read as loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def _api_client(ctx: click.Context) -> Any:
    from fleetops.client.api import DEFAULT_TIMEOUT_S, ApiClient, ClientSetupError, Endpoint
    from fleetops.client.credentials import resolve_credentials

    given = ctx.find_root().meta.get(_API, {})
    settings = _settings(ctx)
    try:
        endpoint = Endpoint.parse(given.get("endpoint") or _local_endpoint(settings))
        credentials = resolve_credentials(
            given.get("secret_id"), given.get("secret_key"), os.environ, settings.data_dir
        )
    except ClientSetupError as exc:
        raise SetupError(str(exc)) from exc
    return ApiClient(endpoint, credentials, timeout_s=given.get("timeout_s") or DEFAULT_TIMEOUT_S)


class ApiFailure(click.ClickException):
    """The API answered with an error: its Code and Message on stderr, exit status 1."""

    exit_code = 1


@contextlib.contextmanager
def _api_errors(client: Any) -> Iterator[None]:
    """API errors (exit 1), setup problems (exit 2) and option values that mean nothing (usage, exit 2)."""
    from fleetops.client.api import ApiCallError, ClientSetupError
    from fleetops.client.tasks import OptionError

    try:
        yield
    except ApiCallError as exc:
        where = ""
        if exc.code.startswith("AuthFailure"):
            where = f"; signed with SecretId {client.credentials.secret_id} from {client.credentials.source}"
        raise ApiFailure(f"{exc}{where}") from exc
    except ClientSetupError as exc:
        raise SetupError(str(exc)) from exc
    except OptionError as exc:
        raise click.UsageError(str(exc)) from exc


def _ask(ctx: click.Context, work: Callable[[Any], T]) -> tuple[Any, T]:
    """(the client, what ``work(client)`` returned), its failures turned into the commands' exits."""
    client = _api_client(ctx)
    with _api_errors(client):
        return client, work(client)


def _show(as_json: bool, value: Any, lines: Callable[[], Iterable[str]], note: str = "") -> None:
    """``value`` as JSON, or ``lines()`` for a person with ``note`` on stderr (so stdout stays the rows)."""
    if as_json:
        click.echo(json.dumps(value, ensure_ascii=False))
        return
    for line in lines():
        click.echo(line)
    if note:
        click.echo(note, err=True)


def _window_note(noun: str, offset: int, shown: int, total: int, where: str) -> str:
    """``tasks 1-20 of 135 at http://...; --offset 20 for more``."""
    window = f"{offset + 1:,}-{offset + shown:,}" if shown else "none"
    more = f"; --offset {offset + shown} for more" if offset + shown < total else ""
    return f"{noun} {window} of {total:,} {where}{more}"


def json_option(help_text: str = "print JSON") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def interval_option(command: F) -> F:
    return click.option(
        "--interval", "interval_s", type=float, default=1.0, show_default=True, help="seconds between polls"
    )(command)


@main.group()
def tasks() -> None:
    """Batch tasks through the API: create, list, describe, cancel, watch; preview, stop, devices (extensions)."""


def task_options(command: F) -> F:
    """What a task is (``tasks create`` and ``tasks preview``): the Tencent parameters, then the extensions."""
    options = [
        click.option("--product", "product_id", required=True, help="ProductId of the devices' product"),
        click.option(
            "--filter",
            "name_filter",
            required=True,
            help="RE2 expression searched in each device name, e.g. ^lamp- ; '' for every device (said explicitly)",
        ),
        click.option(
            "--type",
            "task_type",
            type=click.Choice([t.value for t in TaskType]),
            default=None,
            help="default: UpdateShadow with --desired, PublishMessage with --topic/--payload",
        ),
        click.option("--desired", default=None, help='UpdateShadow: the desired state, JSON, e.g. \'{"color":"red"}\''),
        click.option(
            "--topic", default=None, help="PublishMessage: the topic after ProductId/DeviceName/, e.g. control"
        ),
        click.option("--payload", default=None, help="PublishMessage: the message (UTF-8)"),
        click.option(
            "--at",
            default="now",
            show_default=True,
            help="start time: now, +15m, Unix seconds or 2025-06-01T14:00 (local)",
        ),
        click.option(
            "--max-execution", default=None, help="deadline after the start: seconds or 30m, 2h [default 24 h]"
        ),
        # fleetops extensions (docs/extensions.md)
        click.option("--track-outcomes", is_flag=True, help="keep each device's outcome (tasks devices)"),
        click.option(
            "--max-rate", type=click.IntRange(min=1), default=None, help="at most this many devices per second"
        ),
        click.option("--start-rate", type=click.IntRange(min=1), default=None, help="a growing rate: start here ..."),
        click.option("--grow-percent", type=click.IntRange(min=1), default=None, help="... grow by this many % ..."),
        click.option("--grow-every", type=click.IntRange(min=1), default=None, help="... after every N devices"),
        click.option(
            "--abort",
            default=None,
            help="PERCENT:MIN: fail the task when more than PERCENT % of at least MIN processed devices are offline "
            "(PublishMessage) or not converged (UpdateShadow, with --convergence-window)",
        ),
        click.option("--convergence-window", default=None, help="UpdateShadow: not converged after this (60, 10m)"),
        click.option("--deliver-on-connect", is_flag=True, help="PublishMessage: send to devices that connect later"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@tasks.command("create")
@api_options
@task_options
@click.option("--client-token", default=None, help="the same token within 24 h returns the first task, creates nothing")
@click.option("--watch", "follow", is_flag=True, help="follow the task's progress until it ends (as tasks watch)")
@interval_option
@json_option()
@click.pass_context
def tasks_create(ctx: click.Context, /, follow: bool, interval_s: float, as_json: bool, **order: Any) -> None:
    """Create a task over the devices of a product whose names match --filter; prints the TaskId."""
    from fleetops.client.tasks import create_task

    task_order = _task_order(order)
    client, task_id = _ask(ctx, lambda client: create_task(client, task_order, int(time.time())))
    _show(as_json, {"TaskId": task_id}, lambda: [task_id])
    if follow:
        _watch(ctx, client, task_id, interval_s, as_json)


def _task_order(order: dict[str, Any]) -> Any:
    from fleetops.client.tasks import TaskOrder

    chosen = order.pop("task_type")
    return TaskOrder(task_type=TaskType(chosen) if chosen else None, **order)


@tasks.command("preview")
@api_options
@task_options
@json_option("print JSON (the PreviewTask response)")
@click.pass_context
def tasks_preview(ctx: click.Context, /, as_json: bool, **order: Any) -> None:
    """How many devices the task would match now, and the first names; creates nothing (PreviewTask)."""
    from fleetops.client.tasks import preview_task

    task_order = _task_order(order)
    _, preview = _ask(ctx, lambda client: preview_task(client, task_order, int(time.time())))
    names = preview["DeviceNames"]
    lines = [f"{preview['MatchedDeviceCnt']:,} devices match now", *(f"  {name}" for name in names)]
    if len(names) < preview["MatchedDeviceCnt"]:
        lines.append("  ...")
    _show(as_json, preview, lambda: lines)


@tasks.command("list")
@api_options
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="skip the newest N")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="how many")
@json_option()
@click.pass_context
def tasks_list(ctx: click.Context, offset: int, limit: int, as_json: bool) -> None:
    """The account's tasks of the last month, newest first."""
    from fleetops.client.tasks import list_tasks, task_rows

    client, (total, found) = _ask(ctx, lambda client: list_tasks(client, offset, limit))
    note = _window_note("tasks", offset, len(found), total, f"at {client.endpoint}")
    _show(as_json, {"TotalCount": total, "Tasks": found}, lambda: task_rows(found) if found else [], note)


@tasks.command("describe")
@api_options
@click.argument("task_id")
@json_option("print JSON (the DescribeTask response)")
@click.pass_context
def tasks_describe(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """One task, with its progress."""
    from fleetops.client.tasks import describe_task, task_lines

    _, task = _ask(ctx, lambda client: describe_task(client, task_id, with_outcomes=True))
    _show(as_json, task, lambda: task_lines(task))


@tasks.command("cancel")
@api_options
@click.argument("task_id")
@json_option()
@click.pass_context
def tasks_cancel(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Cancel a task that has not started yet (status 1 -> 5)."""
    from fleetops.client.tasks import cancel_task

    _ask(ctx, lambda client: cancel_task(client, task_id))
    _show(as_json, {"Id": task_id, "Status": TaskStatus.CANCELLED.value}, lambda: [f"cancelled {task_id}"])


@tasks.command("stop")
@api_options
@click.argument("task_id")
@json_option()
@click.pass_context
def tasks_stop(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Stop a task: a waiting one is cancelled now, a running one ends after the batch in flight (StopTask)."""
    from fleetops.client.tasks import stop_task

    _, status = _ask(ctx, lambda client: stop_task(client, task_id))
    said = f"cancelled {task_id}" if status == TaskStatus.CANCELLED.value else f"stopping {task_id} after its batch"
    _show(as_json, {"Id": task_id, "Status": status}, lambda: [said])


@tasks.command("devices")
@api_options
@click.argument("task_id")
@click.option("--outcome", default=None, help="only this outcome: Written, Converged, Sent, Offline, ...")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="skip the first N")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="how many")
@json_option("print JSON (TotalCount and TaskDevices)")
@click.pass_context
def tasks_devices(
    ctx: click.Context, task_id: str, outcome: str | None, offset: int, limit: int, as_json: bool
) -> None:
    """A task's devices and their outcomes, by name (a task created with --track-outcomes)."""
    from fleetops.client.tasks import device_rows, task_devices

    _, (total, found) = _ask(ctx, lambda client: task_devices(client, task_id, outcome, offset, limit))
    note = _window_note("devices", offset, len(found), total, f"of task {task_id}")
    _show(as_json, {"TotalCount": total, "TaskDevices": found}, lambda: device_rows(found) if found else [], note)


@tasks.command("watch")
@api_options
@click.argument("task_id")
@interval_option
@json_option("one DescribeTask response per line as it changes")
@click.pass_context
def tasks_watch(ctx: click.Context, task_id: str, interval_s: float, as_json: bool) -> None:
    """Follow a task until it ends: devices done of all, rate, time left.

    Exit status 0 when it completed, 4 when it failed, 5 when it was cancelled; Ctrl-C (130) stops watching,
    not the task.
    """
    _watch(ctx, _api_client(ctx), task_id, interval_s, as_json)


def _watch(ctx: click.Context, client: Any, task_id: str, interval_s: float, as_json: bool) -> None:
    from rich.console import Console

    from fleetops.client.tasks import describe_task
    from fleetops.client.watch import TaskWatch

    if interval_s <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--interval")
    watch = TaskWatch(lambda: describe_task(client, task_id), interval_s=interval_s)
    console = Console()
    try:
        with _api_errors(client):
            if console.is_terminal and not as_json:
                outcome = watch.run_bar(task_id, console)
            else:
                outcome = watch.run_lines(task_id, sys.stdout, sys.stderr, as_json=as_json)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; task {task_id} goes on (fleetops tasks watch {task_id})", err=True)
        ctx.exit(130)
    click.echo(outcome.summary, err=as_json)
    ctx.exit(outcome.exit_status)


@main.group()
def products() -> None:
    """Products through the API."""


@products.command("list")
@api_options
@json_option("print JSON (the Products of DescribeProducts)")
@click.pass_context
def products_list(ctx: click.Context, as_json: bool) -> None:
    """Every product of the account."""
    from fleetops.client.fleet import list_products, product_rows

    client, found = _ask(ctx, list_products)
    note = "" if found else f"no products at {client.endpoint} for SecretId {client.credentials.secret_id}"
    _show(as_json, found, lambda: product_rows(found) if found else [], note)


@devices.command("list")
@api_options
@click.option("--product", "product_id", required=True, help="ProductId")
@click.option("--name-contains", default=None, help="only devices whose name contains this (case-sensitive)")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="skip the first N")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="how many")
@json_option()
@click.pass_context
def devices_list(ctx: click.Context, /, product_id: str, offset: int, limit: int, as_json: bool, **where: Any) -> None:
    """The devices of a product, by name."""
    from fleetops.client.fleet import device_rows, list_devices

    _, (total, found) = _ask(ctx, lambda client: list_devices(client, product_id, offset=offset, limit=limit, **where))
    note = _window_note("devices", offset, len(found), total, f"in product {product_id}")
    _show(as_json, {"TotalCount": total, "Devices": found}, lambda: device_rows(found) if found else [], note)


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
        raise SetupError(f"fleetops mosquitto build: {exc}") from exc


@mosquitto.command("config")
@store_options
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="the devices' (and nodes') MQTT port")
@click.option("--bind", "mqtt_host", default=None, help="listen address [FLEETOPS_MQTT_HOST, default 127.0.0.1]")
@click.option(
    "--tls-port", "mqtt_tls_port", type=click.IntRange(0, 65535), default=None, help="TLS port [FLEETOPS_MQTT_TLS_PORT]"
)
@click.option(
    "--tls-cert", "mqtt_tls_cert_file", default=None, help="PEM certificate (chain) [FLEETOPS_MQTT_TLS_CERT_FILE]"
)
@click.option("--tls-key", "mqtt_tls_key_file", default=None, help="PEM private key [FLEETOPS_MQTT_TLS_KEY_FILE]")
@click.option(
    "--plugin",
    "plugin_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="a plugin built already (fleetops mosquitto build); default: built into DATA_DIR/mosquitto if needed",
)
@click.option("--run-as", default=None, help="the user Mosquitto switches to when started as root [the current user]")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="write the configuration to this file (mode 0600) instead of printing it",
)
@click.pass_context
def mosquitto_config(
    ctx: click.Context,
    /,
    port: int,
    plugin_path: Path | None,
    run_as: str | None,
    output: Path | None,
    **options: Any,
) -> None:
    """Print a complete mosquitto.conf with the plugin, from this node's settings (docs/mosquitto.md)."""
    settings = _settings(ctx, **options)
    try:
        text, notes = _mosquitto_config(settings, port, plugin_path, run_as)
    except ConfigurationError as exc:
        raise SetupError(f"fleetops mosquitto config: {exc}") from exc
    for note in notes:
        click.echo(note, err=True)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        output.chmod(0o600)  # an existing file keeps its mode with O_CREAT
    except OSError as exc:
        raise SetupError(f"fleetops mosquitto config: cannot write {output}: {exc.strerror}") from exc
    click.echo(f"wrote {output}: start the broker with mosquitto -c {output}", err=True)


def _mosquitto_config(
    settings: Settings, port: int, plugin_path: Path | None, run_as: str | None
) -> tuple[str, list[str]]:
    """The configuration text and notes for stderr. Checks the inputs before touching anything, then migrates
    the database and creates the service identity's password if it has none yet (so that the plugin finds it
    at its start), and builds the plugin into the data directory unless one is given."""
    import getpass
    import pwd

    from fleetops.mosquitto.build import BuildError, ensure_plugin
    from fleetops.mosquitto.config import MosquittoConfig, TlsFiles, libpq_url

    database_url = libpq_url(settings.effective_database_url)
    tls = None
    if settings.mqtt_tls_port:
        if settings.mqtt_tls_port == port:
            raise ConfigurationError(f"--tls-port {port} is the plain port too: choose another one (e.g. 8883)")
        files = []
        for option, value in (("--tls-cert", settings.mqtt_tls_cert_file), ("--tls-key", settings.mqtt_tls_key_file)):
            if not value:
                raise ConfigurationError(f"a TLS listener needs {option} (a PEM file)")
            path = Path(value).resolve()
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigurationError(f"{option} {path}: not a readable file")
            files.append(path)
        tls = TlsFiles(settings.mqtt_tls_port, files[0], files[1])
    if plugin_path is not None and not plugin_path.is_file():
        raise ConfigurationError(f"--plugin {plugin_path}: no such file (build one with fleetops mosquitto build)")
    user = run_as or getpass.getuser()
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ConfigurationError(f"--run-as {user}: no such user on this machine") from None
    state_dir = (settings.data_dir / "mosquitto").resolve()

    async def ensure_service_password(stores: Any) -> None:
        await stores.broker_credentials.get_or_create(settings.mqtt_service_user, int(time.time()))

    asyncio.run(_with_stores(settings, ensure_service_password))
    notes = []
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create {state_dir}: {exc.strerror}") from exc
    if plugin_path is None:
        try:
            plugin_path, built = ensure_plugin(state_dir, compiler=os.environ.get("CC", "cc"))
        except BuildError as exc:
            raise ConfigurationError(f"{exc} (or build it elsewhere and pass --plugin PATH)") from exc
        if built:
            notes.append(f"built the plugin {plugin_path}")
    if os.geteuid() == 0 and account.pw_uid != 0:
        # Mosquitto started as root switches to this user before it writes its state or reads the TLS key
        for path in (state_dir, *state_dir.iterdir()):
            os.chown(path, account.pw_uid, account.pw_gid)
        notes.append(f"{state_dir} now belongs to {user}, whom Mosquitto runs as")
        if tls is not None:
            notes.append(f"Mosquitto reads {tls.key_file} as {user}: make it readable by that user only")
    config = MosquittoConfig(
        port=port,
        bind_address=settings.mqtt_host,
        plugin=plugin_path.resolve(),
        database_url=database_url,
        service_user=settings.mqtt_service_user,
        state_dir=state_dir,
        run_as=user,
        tls=tls,
    )
    return config.render(), notes
