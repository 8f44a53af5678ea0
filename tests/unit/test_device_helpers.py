"""Issue: devices and shadows, the pure helpers: PSK and Prefix checks, device names, DeviceInfo rendering."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetops import errors
from fleetops.api.actions.devices import DEVICE_INFO_FIELDS, device_info
from fleetops.backend.device_shadows import DeviceShadowService
from fleetops.backend.devices import DEVICE_NAME_PATTERN, checked_psk, is_valid_device_name
from fleetops.backend.registration import RegistrationError, check_names, names_from_file, names_from_prefix
from fleetops.backend.shadows import checked_prefix
from fleetops.messaging.device_messages import DeviceMessenger
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.messaging.shadow_protocol import DeviceShadowProtocol
from fleetops.messaging.topics import shadow_result_topic
from fleetops.ports import store as ports_store
from fleetops.ports.messaging import (
    DeviceDirectory,
    DeviceMessages,
    DeviceSessions,
    DeviceShadows,
    MessagingService,
    ShadowRequestHandler,
)
from fleetops.ports.store import DeviceRecord
from fleetops.store.accounts import AccountStore
from fleetops.store.batches import DeviceBatches
from fleetops.store.database import open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.products import ProductStore
from fleetops.store.shadows import ShadowStore
from fleetops.store.tasks import TaskStore


def _record(**overrides: object) -> DeviceRecord:
    values: dict[str, object] = {
        "pk": 1,
        "product_pk": 1,
        "product_id": "ABCDE12345",
        "name": "lamp",
        "psk": "cHNr",
        "enabled": True,
        "tags": [],
        "created_at": 100,
        "online": False,
        "login_time": 0,
        "first_online_time": None,
        "last_offline_time": None,
        "client_ip": None,
    }
    values.update(overrides)
    return DeviceRecord(**values)  # type: ignore[arg-type]


def test_generated_psk_is_24_base64_characters() -> None:
    for given_psk in (None, ""):
        psk = checked_psk(given_psk)
        assert re.fullmatch(r"[A-Za-z0-9+/]{24}", psk)
        assert len(base64.b64decode(psk)) == 18
    assert checked_psk(None) != checked_psk(None)


@given(st.binary(min_size=1, max_size=90))
def test_any_base64_psk_is_kept(raw: bytes) -> None:
    psk = base64.b64encode(raw).decode()
    assert checked_psk(psk) == psk


@pytest.mark.parametrize("bad", ["not base64", "abc", "ab=c", "YWJj*", "YWJjZA=", "-_-_"])
def test_psk_that_is_not_base64_is_refused(bad: str) -> None:
    with pytest.raises(errors.DefinedPskNotBase64):
        checked_psk(bad)


def test_overlong_psk_is_refused() -> None:
    with pytest.raises(errors.InvalidParameterValue):
        checked_psk("A" * 132)


def test_prefix() -> None:
    assert checked_prefix(None) == checked_prefix("") == checked_prefix("$shadow") == "$shadow"
    assert checked_prefix("$template") == "$template"
    for bad in ("shadow", "$sys", "$SHADOW", "$shadow/"):
        with pytest.raises(errors.PrefixInvalid):
            checked_prefix(bad)
    assert shadow_result_topic("ABCDE12345", "lamp", "$template") == "$template/operation/result/ABCDE12345/lamp"


@given(st.text(max_size=60))
def test_device_name_rule_is_the_documented_pattern(name: str) -> None:
    expected = bool(re.fullmatch(r"[a-zA-Z0-9:_-]{1,48}", name, flags=re.ASCII))
    assert is_valid_device_name(name) == expected
    assert DEVICE_NAME_PATTERN == "[a-zA-Z0-9:_-]{1,48}"


def test_names_from_prefix() -> None:
    assert names_from_prefix("lamp-", 3) == ["lamp-1", "lamp-2", "lamp-3"]
    assert names_from_prefix("x", 2, start=9, digits=3) == ["x009", "x010"]
    with pytest.raises(RegistrationError):
        names_from_prefix("x", 0)


def test_check_names_refuses_bad_and_repeated_names() -> None:
    check_names(["a", "b:c", "d_e-f"])
    with pytest.raises(RegistrationError, match="do not match"):
        check_names(["ok", "not ok", "y" * 49])
    with pytest.raises(RegistrationError, match=r"more than once.*dup"):
        check_names(["dup", "x", "dup"])


def test_names_from_file(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("  a \n\nb\r\nc\n", encoding="utf-8")
    assert names_from_file(path) == ["a", "b", "c"]
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(RegistrationError):
        names_from_file(path)
    with pytest.raises(RegistrationError):
        names_from_file(tmp_path / "missing.txt")


def test_device_info_renders_every_documented_field() -> None:
    info = device_info(_record())
    assert tuple(info) == DEVICE_INFO_FIELDS
    assert (info["Online"], info["EnableState"], info["ConnIP"], info["ClientIP"], info["Version"]) == (
        0,
        1,
        0,
        "",
        "",
    )
    assert info["LastUpdateTime"] == info["CreateTime"] == 100
    assert (info["FirstOnlineTime"], info["LastOfflineTime"]) == (0, 0)


def test_device_info_online_state_and_addresses() -> None:
    info = device_info(
        _record(
            online=True,
            enabled=False,
            login_time=500,
            first_online_time=200,
            last_offline_time=400,
            client_ip="10.1.2.3",
            tags=[{"tag": "color", "type": 2, "value": "red"}],
        )
    )
    assert (info["Online"], info["EnableState"], info["LoginTime"], info["LastUpdateTime"]) == (
        1,
        0,
        500,
        500,
    )
    assert info["ConnIP"] == (10 << 24) + (1 << 16) + (2 << 8) + 3
    assert info["ClientIP"] == "10.1.2.3"
    assert info["Tags"] == [{"Tag": "color", "Type": 2, "Value": "red", "Name": None}]
    assert device_info(_record(client_ip="::1"))["ConnIP"] == 0


def test_the_adapters_implement_the_ports(tmp_path: Path) -> None:
    # The annotations are the test: mypy --strict checks each object against the port's protocol.
    db = open_database(f"sqlite:///{tmp_path / 'ports.db'}")  # no connection is made
    accounts: ports_store.AccountStore = AccountStore(db)
    products: ports_store.ProductStore = ProductStore(db)
    devices: ports_store.DeviceStore = DeviceStore(db)
    shadows: ports_store.ShadowStore = ShadowStore(db)
    tasks: ports_store.TaskStore = TaskStore(db)
    batches: ports_store.DeviceBatches = DeviceBatches(db)
    directory: DeviceDirectory = DeviceStore(db)
    device_shadows: DeviceShadows = DeviceShadowService(shadows, devices)
    handler: ShadowRequestHandler = DeviceShadowProtocol(device_shadows)
    broker = EmbeddedBroker(directory, handler)
    service: MessagingService = broker
    sessions: DeviceSessions = broker
    messages: DeviceMessages = DeviceMessenger(broker.publisher)
    assert all(
        callable(getattr(port, name))
        for port, name in [
            (accounts, "get_key"),
            (products, "get"),
            (tasks, "claim_next"),
            (batches, "merge_desired"),
            (directory, "record_presence"),
            (handler, "handle_shadow_request"),
            (service, "start"),
            (sessions, "disconnect_device"),
            (messages, "push_deltas"),
        ]
    )
