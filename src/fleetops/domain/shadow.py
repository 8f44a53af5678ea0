"""Device shadow documents: the pure rules of a shadow (docs/device-protocol.md#device-shadow, docs/api.md).

A shadow holds ``reported`` (written by the device), ``desired`` (written by applications; the device may
clear it or write to it), a metadata mirror of both sections, a version and the time of the last change.
``delta`` is computed on read and never stored: the top-level ``desired`` keys whose value differs from
``reported``.

Every write is an RFC 7396 JSON merge patch of a section: ``null`` deletes a key, an object is merged into an
object recursively, anything else (arrays, or an object over a non-object) replaces. The task engine performs
the same merge in SQL for flat patches (SQLite ``json_patch``, PostgreSQL ``jsonb`` operators), tested against
:func:`merge_patch`, which follows RFC 7396 exactly. A section set to ``null`` is removed (``reported`` becomes
``{}``). Each accepted change raises the version by exactly one; a rejected change alters nothing.

Validation raises API errors (``fleetops.errors``); the MQTT side turns them into the ``result`` codes of its
replies (``messaging/shadow_protocol.py``), the API into error envelopes. How a document is rendered on each
wire lives with that wire; this module is only the rules. Timestamps are integers: ``now_ms`` is milliseconds
since the epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from fleetops.domain.limits import SHADOW_MAX_DEPTH, SHADOW_STATE_MAX_BYTES
from fleetops.errors import (
    ApiError,
    InvalidJSON,
    JSONHasInvalidNode,
    JSONLevelExceedLimit,
    JSONSizeExceedLimit,
    UpdateVersionNotMatch,
)

JSONObject = dict[str, Any]

REPORTED: Final = "reported"
DESIRED: Final = "desired"


@dataclass(frozen=True, slots=True)
class Shadow:
    """A shadow as the store keeps it: one column per field."""

    reported: JSONObject  # {} when empty
    desired: JSONObject | None  # None when there is no desired section
    metadata_reported: JSONObject  # mirror of reported, leaves {"timestamp": ms}
    metadata_desired: JSONObject  # mirror of desired
    version: int  # 0 for a new device
    timestamp_ms: int  # last modification (0 = never modified)

    @classmethod
    def new(cls) -> Shadow:
        """The shadow of a freshly created device (version 0)."""
        return cls(reported={}, desired=None, metadata_reported={}, metadata_desired={}, version=0, timestamp_ms=0)

    @property
    def delta(self) -> JSONObject | None:
        return compute_delta(self.reported, self.desired)

    @property
    def state(self) -> JSONObject:
        """The stored ``state`` (no delta), the document the size limit applies to."""
        state: JSONObject = {REPORTED: self.reported}
        if self.desired is not None:
            state[DESIRED] = self.desired
        return state


# --- JSON merge (RFC 7396) and comparison -----------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 MergePatch(target, patch). Inputs are not modified; unmodified subtrees are shared."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def is_flat(patch: JSONObject) -> bool:
    """No object among the values: a merge whose result and metadata need no knowledge of the old values.

    The task engine merges such patches in SQL; :func:`merge_patch` and :func:`stamp_metadata` define the
    result both SQL dialects must give (tests/integration/test_shadow_merge_sql.py checks them against it).
    """
    return not any(isinstance(value, dict) for value in patch.values())


def merge_diff(old: JSONObject, new: JSONObject) -> JSONObject:
    """The smallest merge patch turning ``old`` into ``new`` (``new`` holds no nulls): what an update changed.

    Keys whose value did not change are left out and removed keys appear as ``null``, as the vendor's update
    replies do.
    """
    diff: JSONObject = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            diff[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            nested = merge_diff(old[key], value)
            if nested:
                diff[key] = nested
        elif not json_equal(old[key], value):
            diff[key] = value
    return diff


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value (1 equals 1.0), but true and false are not numbers.

    Python's ``True == 1`` would otherwise hide a change from 1 to true.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(json_equal, a, b))
    return bool(a == b)


def compute_delta(reported: JSONObject, desired: JSONObject | None) -> JSONObject | None:
    """The desired keys (top level) whose value differs from reported; a key missing in reported differs."""
    if desired is None:
        return None
    return {k: v for k, v in desired.items() if k not in reported or not json_equal(reported[k], v)}


def stamp_metadata(old_value: Any, old_metadata: Any, patch: JSONObject, now_ms: int) -> JSONObject:
    """The metadata of ``merge_patch(old_value, patch)``: written leaves get ``now_ms``, the rest keep theirs.

    Needs the old value because an object written over a scalar must drop the scalar's ``{"timestamp"}`` leaf,
    which a merge of the metadata alone cannot tell from an attribute called ``timestamp``.
    """
    was_object = isinstance(old_value, dict) and isinstance(old_metadata, dict)
    metadata: JSONObject = dict(old_metadata) if was_object else {}
    old = old_value if isinstance(old_value, dict) else {}
    for key, value in patch.items():
        if value is None:
            metadata.pop(key, None)
        elif isinstance(value, dict):
            metadata[key] = stamp_metadata(old.get(key), metadata.get(key), value, now_ms)
        else:
            metadata[key] = {"timestamp": now_ms}
    return metadata


# --- validation --------------------------------------------------------------------------------------------


def _containers(value: Any) -> Iterator[tuple[Any, int]]:
    """Every object and array in ``value`` with its level (``value`` itself is level 1).

    Iterative, because a parsed document may nest deeper than Python's recursion limit.
    """
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        yield node, level
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))


def _check_nodes(state: object, *, allow_desired_only: bool) -> JSONObject:
    """5003 / JSONHasInvalidNode: only the allowed sections, each an object or null; no null in arrays."""
    allowed = (DESIRED,) if allow_desired_only else (REPORTED, DESIRED)
    if not isinstance(state, dict):
        raise JSONHasInvalidNode(
            f"The state must be a JSON object holding {' and/or '.join(allowed)}.",
            message_zh=f"state 必须是包含 {' 和/或 '.join(allowed)} 的 JSON 对象。",
        )
    extra = [key for key in state if key not in allowed]
    if extra:
        raise JSONHasInvalidNode(
            f"The state may contain only {' and '.join(allowed)}; illegal node(s): {', '.join(extra)}.",
            message_zh=f"state 只能包含 {' 和 '.join(allowed)}；非法节点：{', '.join(extra)}。",
        )
    if allow_desired_only and DESIRED not in state:
        raise JSONHasInvalidNode(
            'The state must contain the desired node, e.g. {"desired":{"color":"red"}}.',
            message_zh='state 必须包含 desired 节点，例如 {"desired":{"color":"red"}}。',
        )
    for section in allowed:
        if section in state and state[section] is not None and not isinstance(state[section], dict):
            raise JSONHasInvalidNode(
                f"state.{section} must be a JSON object or null.",
                message_zh=f"state.{section} 必须是 JSON 对象或 null。",
            )
    for node, _ in _containers(state):
        if isinstance(node, list) and any(item is None for item in node):
            raise JSONHasInvalidNode(
                "Arrays in the state must not contain null elements.", message_zh="state 中的数组不能包含 null 元素。"
            )
    return state


def _first_nul(state: JSONObject) -> str | None:
    """The path (``desired.a.0``) of the first key or string value holding U+0000, or None."""
    stack: list[tuple[str, Any]] = [("", state)]
    while stack:
        path, node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            child = f"{path}.{key}" if path else str(key)
            if (isinstance(key, str) and "\x00" in key) or (isinstance(value, str) and "\x00" in value):
                return child
            if isinstance(value, dict | list):
                stack.append((child, value))
    return None


def _check_limits(state: JSONObject) -> None:
    """Results 5004 / 5002 / 5006: no NUL, nesting depth and compact UTF-8 size of the state document.

    ``\\u0000`` is valid JSON, but PostgreSQL's jsonb cannot hold it while SQLite would: refused here, on
    every path (API, device, batch task), so that both databases answer the same (docs/decisions.md).
    """
    nul = _first_nul(state)
    if nul is not None:
        raise InvalidJSON(
            f"The state holds the NUL character (U+0000) at {nul}, which fleetops does not store; remove it.",
            message_zh=f"state 在 {nul} 处包含 NUL 字符（U+0000），fleetops 无法保存，请删除。",
        )
    depth = max(level for _, level in _containers(state))
    if depth > SHADOW_MAX_DEPTH:
        raise JSONLevelExceedLimit(
            f"The state is nested {depth} levels deep (the state object is level 1); at most {SHADOW_MAX_DEPTH}.",
            message_zh=f"state 嵌套了 {depth} 层（state 对象本身为第 1 层），最多 {SHADOW_MAX_DEPTH} 层。",
        )
    _check_size(state, ("The state", "state"))


# what a size error is about, in English and Chinese
_AFTER_UPDATE: Final = ("The shadow state after this update", "本次更新后的影子 state")


def _check_size(state: JSONObject, what: tuple[str, str]) -> None:
    size = len(orjson.dumps(state))
    if size > SHADOW_STATE_MAX_BYTES:
        raise JSONSizeExceedLimit(
            f"{what[0]} is {size} bytes of compact JSON; at most {SHADOW_STATE_MAX_BYTES}.",
            message_zh=f"{what[1]}的紧凑 JSON 为 {size} 字节，最多 {SHADOW_STATE_MAX_BYTES} 字节。",
        )


def validate_state_document(state: object, *, allow_desired_only: bool) -> JSONObject:
    """Check a ``state`` document from the API (``allow_desired_only``: UpdateDeviceShadow) or a device.

    Raises JSONHasInvalidNode (a node other than reported/desired, or other than desired for the API; a
    section that is neither an object nor null; null inside an array), JSONLevelExceedLimit (more than 6
    levels counting the state object as level 1) or JSONSizeExceedLimit (compact UTF-8 JSON over 8192 bytes).
    """
    checked = _check_nodes(state, allow_desired_only=allow_desired_only)
    _check_limits(checked)
    return checked


def parse_state_json(text: str) -> JSONObject:
    """Parse the API's ``State`` string; not JSON, or not a JSON object -> InvalidJSON."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"State is not valid JSON: {exc}.", message_zh=f"State {json_error_zh(exc)}") from exc
    if not isinstance(value, dict):
        raise InvalidJSON(
            'State must be a JSON object such as {"desired":{"color":"red"}}.',
            message_zh='State 必须是 JSON 对象，例如 {"desired":{"color":"red"}}。',
        )
    return value


def json_error_zh(exc: orjson.JSONDecodeError) -> str:
    """ "不是合法的 JSON" with where the parser stopped; the parser's own reason is English only."""
    return f"不是合法的 JSON（第 {exc.lineno} 行第 {exc.colno} 列出错）。"


def check_version(shadow: Shadow, expected: int) -> None:
    """The API's ``ShadowVersion``: must equal the current version; 0 skips the check.

    docs/decisions.md#devices-and-shadows says why 0 means "no check".
    """
    if expected != 0 and expected != shadow.version:
        raise UpdateVersionNotMatch(
            f"ShadowVersion {expected} does not match the shadow's current version {shadow.version}.",
            message_zh=f"ShadowVersion {expected} 与影子当前版本 {shadow.version} 不一致。",
        )


# --- writes ------------------------------------------------------------------------------------------------


def merge_section(
    data: JSONObject | None, metadata: Any, patch: JSONObject, now_ms: int
) -> tuple[JSONObject, JSONObject]:
    """A section (``reported`` or ``desired``) and its metadata after the merge patch ``patch``."""
    merged: JSONObject = merge_patch(data, patch)
    return merged, stamp_metadata(data, metadata, patch, now_ms)


def _write_section(
    data: JSONObject | None, metadata: JSONObject, patch: JSONObject, *, overwrite: bool, now_ms: int
) -> tuple[JSONObject, JSONObject]:
    if overwrite:  # overwriteUpdate: the section is replaced wholesale, every key counts as written
        data, metadata = None, {}
    return merge_section(data, metadata, patch, now_ms)


def apply_desired(shadow: Shadow, desired_patch: JSONObject | None, now_ms: int) -> tuple[Shadow, JSONObject]:
    """A cloud-side write of ``desired`` (UpdateDeviceShadow, batch UpdateShadow task), already validated.

    ``desired_patch`` None removes the section. Returns the new shadow and the state to push as ``delta``:
    every non-null top-level key of the patch, even if equal to reported (spec 6.6 proposal); an empty dict
    means push nothing. Raises JSONSizeExceedLimit when the stored state would exceed 8192 bytes.
    """
    desired: JSONObject | None = None
    metadata: JSONObject = {}
    if desired_patch is not None:
        desired, metadata = _write_section(
            shadow.desired, shadow.metadata_desired, desired_patch, overwrite=False, now_ms=now_ms
        )
    new = dataclasses.replace(
        shadow, desired=desired, metadata_desired=metadata, version=shadow.version + 1, timestamp_ms=now_ms
    )
    _check_size(new.state, _AFTER_UPDATE)
    pushed = {k: v for k, v in (desired_patch or {}).items() if v is not None}
    return new, pushed


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """An ``update`` from the device: its ``state`` (validated by :func:`apply_device_update`)."""

    state: object
    version: int | None = None  # None or 0: no version check
    overwrite: bool = False  # overwriteUpdate: each written section is replaced wholesale


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The outcome of a device update. When rejected, ``shadow`` is the unchanged input and ``error`` says why."""

    shadow: Shadow
    changed: JSONObject  # what the update changed: changed keys only, deletions as null
    error: ApiError | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None

    @property
    def version_mismatch(self) -> bool:
        return isinstance(self.error, UpdateVersionNotMatch)


def apply_device_update(shadow: Shadow, update: DeviceUpdate, now_ms: int) -> UpdateResult:
    """An ``update`` from the device, checked in the order of docs/device-protocol.md#update.

    Nodes (JSONHasInvalidNode), then the version (UpdateVersionNotMatch: ``version`` absent or 0 skips the
    check), then depth and size (also for the stored state after the merge). ``desired`` from the device is
    accepted like ``reported``: null clears the section, null values delete keys, other values are stored (no
    delta push).
    """
    try:
        state = _check_nodes(update.state, allow_desired_only=False)
        if update.version not in (None, 0) and update.version != shadow.version:
            error = UpdateVersionNotMatch(
                f"version {update.version} != current version {shadow.version}",
                message_zh=f"version {update.version} 与当前版本 {shadow.version} 不一致",
            )
            return UpdateResult(shadow, {}, error)
        _check_limits(state)
        new, changed = _apply_state(shadow, state, overwrite=update.overwrite, now_ms=now_ms)
        _check_size(new.state, _AFTER_UPDATE)
    except ApiError as exc:
        return UpdateResult(shadow, {}, exc)
    return UpdateResult(new, changed)


def _apply_state(shadow: Shadow, state: JSONObject, *, overwrite: bool, now_ms: int) -> tuple[Shadow, JSONObject]:
    changed: JSONObject = {}
    reported, meta_reported = shadow.reported, shadow.metadata_reported
    desired, meta_desired = shadow.desired, shadow.metadata_desired
    if REPORTED in state:
        if state[REPORTED] is None:
            if reported:
                changed[REPORTED] = None
            reported, meta_reported = {}, {}
        else:
            reported, meta_reported = _write_section(
                reported, meta_reported, state[REPORTED], overwrite=overwrite, now_ms=now_ms
            )
            if diff := merge_diff(shadow.reported, reported):
                changed[REPORTED] = diff
    if DESIRED in state:
        if state[DESIRED] is None:
            if desired is not None:
                changed[DESIRED] = None
            desired, meta_desired = None, {}
        else:
            desired, meta_desired = _write_section(
                desired, meta_desired, state[DESIRED], overwrite=overwrite, now_ms=now_ms
            )
            if diff := merge_diff(shadow.desired or {}, desired):
                changed[DESIRED] = diff
    new = Shadow(reported, desired, meta_reported, meta_desired, shadow.version + 1, now_ms)
    return new, changed


# --- views ------------------------------------------------------------------------------------------------


def state_view(shadow: Shadow) -> JSONObject:
    """The ``state`` a reader sees: ``reported``, and ``desired`` with its ``delta`` when there is a desired
    section (a never-modified shadow shows ``{"reported":{}}``, as the vendor's replies do)."""
    view: JSONObject = {REPORTED: shadow.reported}
    if shadow.desired is not None:
        view[DESIRED] = shadow.desired
        view["delta"] = compute_delta(shadow.reported, shadow.desired)
    return view
