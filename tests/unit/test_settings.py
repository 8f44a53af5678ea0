"""Settings (settings.py): FLEETOPS_* variables, options on top, readable errors, the generated reference."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import pytest

from fleetops.errors import ConfigurationError
from fleetops.event_loop import loop_factory
from fleetops.settings import ENV_PREFIX, Settings, render_reference


def test_environment_values_are_converted_to_each_fields_type() -> None:
    settings = Settings.from_env(
        {"FLEETOPS_PORT": "9000", "FLEETOPS_DATA_DIR": "/tmp/x", "FLEETOPS_BROKER_WAIT_S": "2.5", "OTHER": "1"}
    )
    assert (settings.port, settings.data_dir, settings.broker_wait_s) == (9000, Path("/tmp/x"), 2.5)


def test_a_value_of_the_wrong_type_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"FLEETOPS_PORT.*must be a int, got 'eighty'"):
        Settings.from_env({"FLEETOPS_PORT": "eighty"})


def test_overrides_apply_on_top_and_none_leaves_a_value() -> None:
    base = Settings.from_env({"FLEETOPS_PORT": "9000", "FLEETOPS_HOST": "0.0.0.0"})
    changed = base.with_overrides(port="9100", host=None)
    assert (changed.port, changed.host) == (9100, "0.0.0.0")


def test_the_default_database_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).effective_database_url == f"sqlite:///{(tmp_path / 'fleetops.db').resolve()}"
    url = "postgresql://postgres@127.0.0.1/x"
    assert Settings(database_url=url).effective_database_url == url


def test_the_reference_lists_every_setting_with_its_variable_and_doc() -> None:
    reference = render_reference()
    for f in fields(Settings):
        assert f"`{ENV_PREFIX}{f.name.upper()}`" in reference
        assert f.metadata.get("doc"), f"{f.name} has no doc"


def test_the_event_loop_is_uvloop_by_default_asyncio_on_request_and_nothing_else() -> None:
    import uvloop

    assert Settings.from_env({}).event_loop == "auto"
    assert loop_factory("auto") is uvloop.new_event_loop  # installed here (a pinned dependency)
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None  # asyncio's own
    with pytest.raises(ConfigurationError, match=r"event_loop \(FLEETOPS_EVENT_LOOP\) must be one of auto, asyncio, "):
        loop_factory(Settings.from_env({"FLEETOPS_EVENT_LOOP": "UVLOOP"}).event_loop)


def test_without_uvloop_auto_falls_back_to_asyncio_and_uvloop_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed: importing it fails
    assert loop_factory("auto") is None
    with pytest.raises(ConfigurationError, match=r"uvloop cannot be imported .*: install it, or choose auto"):
        loop_factory("uvloop")
