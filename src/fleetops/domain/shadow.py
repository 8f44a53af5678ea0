"""Device shadow documents: the pure rules of device-protocol sections 6-7 and iotcloud-actions section 4.

A shadow holds ``reported`` (written by the device), ``desired`` (written by applications; the device may
clear it or write to it), a metadata mirror of both sections, a version and the time of the last change.
``delta`` is computed on read and never stored: the top-level ``desired`` keys whose value differs from
``reported``.

Every write is an RFC 7396 JSON merge patch of a section: ``null`` deletes a key, an object is merged into an
object recursively, anything else (arrays, or an object over a non-object) replaces. The engine performs the
same merge in SQL (SQLite ``json_patch``, a PostgreSQL merge-patch function), which is why
:func:`merge_patch` follows RFC 7396 exactly. A section set to ``null`` is removed (``reported`` becomes
``{}``). Each accepted change raises the version by exactly one; a rejected change alters nothing.

Validation raises API errors (``fleetops.errors``); the MQTT side turns them into the ``result`` codes of
section 6.8 with :func:`result_code`, the one mapping table. Renderers return dicts; callers serialize them
with orjson. Timestamps are integers: ``now_ms`` is milliseconds since the epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

from fleetops.domain.limits import SHADOW_MAX_DEPTH, SHADOW_STATE_MAX_BYTES
from fleetops.errors import (
    ApiError,
    DeviceNotExist,
    FleetopsError,
    InvalidJSON,
    InvalidParameterValue,
    JSONHasInvalidNode,
    JSONLevelExceedLimit,
    JSONSizeExceedLimit,
    ParamIncomplete,
    ProductOrDeviceNotExist,
    UpdateVersionNotMatch,
)

JSONObject = dict[str, Any]

REPORTED: Final = "reported"
DESIRED: Final = "desired"


class ShadowOp(StrEnum):
    """The ``type`` of shadow messages; ``delta`` is sent by the server only."""

    GET = "get"
    UPDATE = "update"
    DELTA = "delta"


class ResultCode(IntEnum):
    """The ``result`` of shadow replies (device protocol section 6.8; legacy shadow-API numbers)."""

    SUCCESS = 0
    MISSING_INFORMATION = 5000
    DEVICE_NOT_EXIST = 5001
    JSON_TOO_DEEP = 5002
    INVALID_NODE = 5003
    INVALID_JSON = 5004
    VERSION_MISMATCH = 5005
    JSON_TOO_LARGE = 5006
    INTERNAL_ERROR = 5100
    INVALID_PARAMETER = 5101
    PRODUCT_OR_DEVICE_NOT_EXIST = 5102


# The one table between API errors and MQTT result codes; looked up along the class hierarchy, so the most
# specific class wins (InvalidJSON is an InvalidParameterValue but maps to 5004, not 5101).
_RESULT_CODES: Final[Mapping[type, ResultCode]] = {
    ParamIncomplete: ResultCode.MISSING_INFORMATION,
    DeviceNotExist: ResultCode.DEVICE_NOT_EXIST,
    JSONLevelExceedLimit: ResultCode.JSON_TOO_DEEP,
    JSONHasInvalidNode: ResultCode.INVALID_NODE,
    InvalidJSON: ResultCode.INVALID_JSON,
    UpdateVersionNotMatch: ResultCode.VERSION_MISMATCH,
    JSONSizeExceedLimit: ResultCode.JSON_TOO_LARGE,
    InvalidParameterValue: ResultCode.INVALID_PARAMETER,
    ProductOrDeviceNotExist: ResultCode.PRODUCT_OR_DEVICE_NOT_EXIST,
}


def result_code(error: ApiError) -> ResultCode:
    """The MQTT ``result`` for an API error; anything unmapped is an internal error (5100)."""
    for cls in type(error).__mro__:
        code = _RESULT_CODES.get(cls)
        if code is not None:
            return code
    return ResultCode.INTERNAL_ERROR


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
        raise JSONHasInvalidNode(f"The state must be a JSON object holding {' and/or '.join(allowed)}.")
    extra = [key for key in state if key not in allowed]
    if extra:
        raise JSONHasInvalidNode(
            f"The state may contain only {' and '.join(allowed)}; illegal node(s): {', '.join(extra)}."
        )
    if allow_desired_only and DESIRED not in state:
        raise JSONHasInvalidNode('The state must contain the desired node, e.g. {"desired":{"color":"red"}}.')
    for section in allowed:
        if section in state and state[section] is not None and not isinstance(state[section], dict):
            raise JSONHasInvalidNode(f"state.{section} must be a JSON object or null.")
    for node, _ in _containers(state):
        if isinstance(node, list) and any(item is None for item in node):
            raise JSONHasInvalidNode("Arrays in the state must not contain null elements.")
    return state


def _check_limits(state: JSONObject) -> None:
    """Results 5002 / 5006: nesting depth and compact UTF-8 size of the state document."""
    depth = max(level for _, level in _containers(state))
    if depth > SHADOW_MAX_DEPTH:
        raise JSONLevelExceedLimit(
            f"The state is nested {depth} levels deep (the state object is level 1); at most {SHADOW_MAX_DEPTH}."
        )
    _check_size(state, "The state")


def _check_size(state: JSONObject, what: str) -> None:
    size = len(orjson.dumps(state))
    if size > SHADOW_STATE_MAX_BYTES:
        raise JSONSizeExceedLimit(f"{what} is {size} bytes of compact JSON; at most {SHADOW_STATE_MAX_BYTES}.")


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
        raise InvalidJSON(f"State is not valid JSON: {exc}.") from exc
    if not isinstance(value, dict):
        raise InvalidJSON('State must be a JSON object such as {"desired":{"color":"red"}}.')
    return value


def check_version(shadow: Shadow, expected: int) -> None:
    """The API's ``ShadowVersion``: must equal the current version; 0 skips the check (spec proposal)."""
    if expected != 0 and expected != shadow.version:
        raise UpdateVersionNotMatch(
            f"ShadowVersion {expected} does not match the shadow's current version {shadow.version}."
        )


# --- writes ------------------------------------------------------------------------------------------------


def _write_section(
    data: JSONObject | None, metadata: JSONObject, patch: JSONObject, *, overwrite: bool, now_ms: int
) -> tuple[JSONObject, JSONObject]:
    if overwrite:  # overwriteUpdate: the section is replaced wholesale, every key counts as written
        data, metadata = None, {}
    new_data: JSONObject = merge_patch(data, patch)
    return new_data, stamp_metadata(data, metadata, patch, now_ms)


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
    _check_size(new.state, "The shadow state after this update")
    pushed = {k: v for k, v in (desired_patch or {}).items() if v is not None}
    return new, pushed


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """A parsed shadow request from a device; ``state`` is validated by :func:`apply_device_update`."""

    type: ShadowOp
    client_token: str | None = None
    state: object = None
    version: int | None = None  # None or 0: no version check
    overwrite: bool = False


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """The outcome of a device update. When rejected, ``shadow`` is the unchanged input."""

    shadow: Shadow
    result: ResultCode
    changed: JSONObject  # payload.state of the reply: changed keys only, deletions as null
    error: ApiError | None = None  # why it was rejected, for logs

    @property
    def accepted(self) -> bool:
        return self.result is ResultCode.SUCCESS


def apply_device_update(shadow: Shadow, request: DeviceRequest, now_ms: int) -> UpdateResult:
    """An MQTT ``update`` from the device, checked in the order of section 6.4.

    Nodes (5003), then the version (5005: ``version`` absent or 0 skips the check), then depth and size
    (5002, 5006, also for the stored state after the merge). ``desired`` from the device is accepted like
    ``reported``: null clears the section, null values delete keys, other values are stored (no delta push).
    """
    if request.type is not ShadowOp.UPDATE:
        raise ValueError(f"apply_device_update needs an update request, got {request.type}")
    try:
        state = _check_nodes(request.state, allow_desired_only=False)
        if request.version not in (None, 0) and request.version != shadow.version:
            error = UpdateVersionNotMatch(f"version {request.version} != current version {shadow.version}")
            return UpdateResult(shadow, ResultCode.VERSION_MISMATCH, {}, error)
        _check_limits(state)
        new, changed = _apply_state(shadow, state, overwrite=request.overwrite, now_ms=now_ms)
        _check_size(new.state, "The shadow state after this update")
    except ApiError as exc:
        return UpdateResult(shadow, result_code(exc), {}, exc)
    return UpdateResult(new, ResultCode.SUCCESS, changed)


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


# --- device requests ---------------------------------------------------------------------------------------


class ShadowRequestRejected(FleetopsError):
    """A device shadow request that cannot be processed; answer it with :func:`render_error_reply`."""

    def __init__(self, error: ApiError, *, request_type: str | None, client_token: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_type = request_type  # echoed when it could be read
        self.client_token = client_token

    @property
    def result(self) -> ResultCode:
        return result_code(self.error)


def _client_token(value: object) -> str | None:
    # Section 6.2: a numeric token (seen in the 2024 docs) is echoed as its decimal text. true/false are not
    # numbers here although Python's bool is an int.
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def parse_device_request(payload: bytes) -> DeviceRequest:
    """Decode a message from ``$shadow/operation/{pid}/{dn}``; raises :class:`ShadowRequestRejected`.

    5004 not a JSON object; 5000 no ``type``, or an update without ``state``; 5101 a ``type`` other than
    get/update (there is no ``delete`` in the current protocol), a non-integer ``version`` or a non-boolean
    ``overwriteUpdate``.
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        error = InvalidJSON(f"The shadow request is not valid JSON: {exc}.")
        raise ShadowRequestRejected(error, request_type=None, client_token=None) from exc
    if not isinstance(message, dict):
        error = InvalidJSON("The shadow request must be a JSON object.")
        raise ShadowRequestRejected(error, request_type=None, client_token=None)
    token = _client_token(message.get("clientToken"))
    raw_type = message.get("type")

    def reject(error: ApiError) -> ShadowRequestRejected:
        readable_type = raw_type if isinstance(raw_type, str) else None
        return ShadowRequestRejected(error, request_type=readable_type, client_token=token)

    if raw_type is None:
        raise reject(ParamIncomplete("The shadow request has no type."))
    if raw_type not in (ShadowOp.GET, ShadowOp.UPDATE):
        raise reject(InvalidParameterValue(f"Unknown shadow request type {raw_type!r}; use get or update."))
    if raw_type == ShadowOp.GET:
        return DeviceRequest(ShadowOp.GET, token)
    if message.get("state") is None:
        raise reject(ParamIncomplete("An update request needs a state."))
    version = message.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise reject(InvalidParameterValue("version must be an integer."))
    overwrite = message.get("overwriteUpdate")
    if overwrite is not None and not isinstance(overwrite, bool):
        raise reject(InvalidParameterValue("overwriteUpdate must be true or false."))
    return DeviceRequest(ShadowOp.UPDATE, token, message["state"], version, bool(overwrite))


# --- rendering ---------------------------------------------------------------------------------------------


def _with_token(client_token: str | None, reply: JSONObject) -> JSONObject:
    # clientToken first, as in the recorded traffic; omitted when the request had none (section 6.2).
    return reply if client_token is None else {"clientToken": client_token, **reply}


def _state_view(shadow: Shadow) -> JSONObject:
    # A never-modified shadow shows {"reported":{}} (observed); desired and delta only when desired exists.
    view: JSONObject = {REPORTED: shadow.reported}
    if shadow.desired is not None:
        view[DESIRED] = shadow.desired
        view["delta"] = compute_delta(shadow.reported, shadow.desired)
    return view


def _document_payload(shadow: Shadow, now_ms: int) -> JSONObject:
    # payload.timestamp is the last change in ms; for a never-modified shadow the service showed the reply
    # time in seconds (section 6.9).
    timestamp = shadow.timestamp_ms if shadow.version else now_ms // 1000
    return {"state": _state_view(shadow), "timestamp": timestamp, "version": shadow.version}


def render_get_reply(shadow: Shadow, client_token: str | None, now_ms: int) -> JSONObject:
    """Reply to ``get``: full document without metadata; top-level timestamp in seconds (section 6.3)."""
    return _with_token(
        client_token,
        {
            "payload": _document_payload(shadow, now_ms),
            "result": ResultCode.SUCCESS.value,
            "timestamp": now_ms // 1000,
            "type": ShadowOp.GET.value,
        },
    )


def render_version_mismatch_reply(shadow: Shadow, client_token: str | None, now_ms: int) -> JSONObject:
    """Result 5005 with the complete current document so the device can resynchronise (section 6.5)."""
    return _with_token(
        client_token,
        {
            "payload": _document_payload(shadow, now_ms),
            "result": ResultCode.VERSION_MISMATCH.value,
            "timestamp": now_ms,
            "type": ShadowOp.UPDATE.value,
        },
    )


def render_error_reply(request_type: str | None, client_token: str | None, result: int, now_ms: int) -> JSONObject:
    """A failure without a document: echoes whatever type and clientToken could be read (section 6.8)."""
    reply: JSONObject = {"result": int(result), "timestamp": now_ms}
    if request_type is not None:
        reply["type"] = request_type
    return _with_token(client_token, reply)


def render_update_reply(outcome: UpdateResult, client_token: str | None, now_ms: int) -> JSONObject:
    """Reply to ``update``: only what changed, no metadata, both timestamps in ms (section 6.4)."""
    if outcome.result is ResultCode.VERSION_MISMATCH:
        return render_version_mismatch_reply(outcome.shadow, client_token, now_ms)
    if not outcome.accepted:
        return render_error_reply(ShadowOp.UPDATE.value, client_token, outcome.result, now_ms)
    shadow = outcome.shadow
    return _with_token(
        client_token,
        {
            "payload": {
                "state": outcome.changed,
                "timestamp": shadow.timestamp_ms,
                "version": shadow.version,
            },
            "result": ResultCode.SUCCESS.value,
            "timestamp": shadow.timestamp_ms,
            "type": ShadowOp.UPDATE.value,
        },
    )


def render_delta_push(version: int, pushed_state: JSONObject, now_ms: int) -> JSONObject:
    """The ``delta`` message after a cloud-side write: flat state, metadata, no clientToken (section 6.6)."""
    return {
        "type": ShadowOp.DELTA.value,
        "timestamp": now_ms,
        "payload": {
            "state": pushed_state,
            "metadata": stamp_metadata(None, None, pushed_state, now_ms),
            "version": version,
            "timestamp": now_ms,
        },
    }


def render_describe_shadow_data(shadow: Shadow, now_ms: int) -> JSONObject:
    """DescribeDeviceShadow ``Data``: the document with metadata, timestamps in ms.

    Example: {"payload":{"state":{"reported":{"color":"red"}},"metadata":{"reported":{"color":{"timestamp":
    1509092895971}}},"timestamp":1509443636326,"version":5},"result":0,"timestamp":1509440846582,"type":"get"}.
    A never-modified shadow shows the reply time as payload.timestamp, as the MQTT get does.
    """
    metadata: JSONObject = {REPORTED: shadow.metadata_reported}
    if shadow.desired is not None:
        metadata[DESIRED] = shadow.metadata_desired
    state = _state_view(shadow)
    return {
        "payload": {
            "state": state,
            "metadata": metadata,
            "timestamp": shadow.timestamp_ms if shadow.version else now_ms,
            "version": shadow.version,
        },
        "result": ResultCode.SUCCESS.value,
        "timestamp": now_ms,
        "type": ShadowOp.GET.value,
    }


def render_update_shadow_data(shadow: Shadow, desired_patch: JSONObject | None) -> JSONObject:
    """UpdateDeviceShadow ``Data`` for the shadow returned by :func:`apply_desired`.

    ``payload.state`` echoes what this call touched (the patch as written, deletions as null); metadata stamps
    the written keys. Example: {"payload":{"state":{"desired":{"color":"red"}},"metadata":{"desired":{"color":
    {"timestamp":1509092895971}}},"timestamp":1509443636326,"version":5},"result":0,"timestamp":...,
    "type":"update"}.
    """
    written = shadow.timestamp_ms
    metadata: JSONObject = (
        {} if desired_patch is None else {DESIRED: stamp_metadata(None, None, desired_patch, written)}
    )
    return {
        "payload": {
            "state": {DESIRED: desired_patch},
            "metadata": metadata,
            "timestamp": written,
            "version": shadow.version,
        },
        "result": ResultCode.SUCCESS.value,
        "timestamp": written,
        "type": ShadowOp.UPDATE.value,
    }
