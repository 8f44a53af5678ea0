"""The device shadow protocol on the wire: ``$shadow/operation/{pid}/{dn}`` requests and their replies.

docs/device-protocol.md#device-shadow describes every message. A device publishes ``get`` and ``update`` requests (JSON)
on its ``$shadow/operation`` topic; fleetops answers on ``$shadow/operation/result/{pid}/{dn}`` and pushes a
``delta`` there after a cloud-side change of desired. The rules (merge, delta, version, limits) are
``fleetops.domain.shadow``; this module parses and renders, and :class:`DeviceShadowProtocol` is the
:class:`~fleetops.ports.messaging.ShadowRequestHandler` both brokers call.

Timestamps follow the vendor's recorded traffic (docs/device-protocol.md#timestamps): a ``get`` reply's top-level
``timestamp`` is in seconds, everything else in milliseconds, and a never-modified shadow's payload timestamp
is the reply time in seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final

import orjson

from fleetops.domain.shadow import (
    DeviceUpdate,
    JSONObject,
    Shadow,
    UpdateResult,
    stamp_metadata,
    state_view,
)
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
from fleetops.ports.messaging import DeviceShadows

log = logging.getLogger("fleetops.messaging.shadow")


class ShadowOp(StrEnum):
    """The ``type`` of shadow messages; ``delta`` is sent by the server only."""

    GET = "get"
    UPDATE = "update"
    DELTA = "delta"


class ResultCode(IntEnum):
    """The ``result`` of shadow replies (docs/device-protocol.md#result-codes: the vendor's shadow-API numbers)."""

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


# --- requests ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShadowRequest:
    """A parsed request; ``update`` is set for an update (its state is validated by the domain)."""

    type: ShadowOp
    client_token: str | None = None
    update: DeviceUpdate | None = None


class ShadowRequestRejected(FleetopsError):
    """A request that cannot be processed; answer it with :func:`render_error_reply`."""

    def __init__(self, error: ApiError, *, request_type: str | None, client_token: str | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_type = request_type  # echoed when it could be read
        self.client_token = client_token

    @property
    def result(self) -> ResultCode:
        return result_code(self.error)


def _client_token(value: object) -> str | None:
    # A numeric token (seen in the 2024 docs) is echoed as its decimal text. true/false are not numbers here
    # although Python's bool is an int.
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def parse_shadow_request(payload: bytes) -> ShadowRequest:
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
        return ShadowRequest(ShadowOp.GET, token)
    if message.get("state") is None:
        raise reject(ParamIncomplete("An update request needs a state."))
    version = message.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        raise reject(InvalidParameterValue("version must be an integer."))
    overwrite = message.get("overwriteUpdate")
    if overwrite is not None and not isinstance(overwrite, bool):
        raise reject(InvalidParameterValue("overwriteUpdate must be true or false."))
    return ShadowRequest(ShadowOp.UPDATE, token, DeviceUpdate(message["state"], version, bool(overwrite)))


# --- replies -----------------------------------------------------------------------------------------------


def _with_token(client_token: str | None, reply: JSONObject) -> JSONObject:
    # clientToken first, as in the recorded traffic; omitted when the request had none.
    return reply if client_token is None else {"clientToken": client_token, **reply}


def _document_payload(shadow: Shadow, now_ms: int) -> JSONObject:
    # payload.timestamp is the last change in ms; for a never-modified shadow the service showed the reply
    # time in seconds (docs/device-protocol.md#timestamps).
    timestamp = shadow.timestamp_ms if shadow.version else now_ms // 1000
    return {"state": state_view(shadow), "timestamp": timestamp, "version": shadow.version}


def render_get_reply(shadow: Shadow, client_token: str | None, now_ms: int) -> JSONObject:
    """Reply to ``get``: the full document without metadata; the top-level timestamp in seconds."""
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
    """Result 5005 with the complete current document, so the device can resynchronise."""
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
    """A failure without a document: echoes whatever type and clientToken could be read."""
    reply: JSONObject = {"result": int(result), "timestamp": now_ms}
    if request_type is not None:
        reply["type"] = request_type
    return _with_token(client_token, reply)


def render_update_reply(outcome: UpdateResult, client_token: str | None, now_ms: int) -> JSONObject:
    """Reply to ``update``: only what changed, no metadata, both timestamps in ms."""
    if outcome.version_mismatch:
        return render_version_mismatch_reply(outcome.shadow, client_token, now_ms)
    if outcome.error is not None:
        return render_error_reply(ShadowOp.UPDATE.value, client_token, result_code(outcome.error), now_ms)
    shadow = outcome.shadow
    return _with_token(
        client_token,
        {
            "payload": {"state": outcome.changed, "timestamp": shadow.timestamp_ms, "version": shadow.version},
            "result": ResultCode.SUCCESS.value,
            "timestamp": shadow.timestamp_ms,
            "type": ShadowOp.UPDATE.value,
        },
    )


# --- delta pushes ------------------------------------------------------------------------------------------


def render_delta_push(version: int, pushed_state: JSONObject, now_ms: int) -> JSONObject:
    """The ``delta`` message after a cloud-side write: flat state, metadata, no clientToken."""
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


class DeltaPush:
    """The delta push of one cloud-side write, encoded once for any number of devices.

    The payload differs per device only by the shadow version, so it is kept as two encoded halves around the
    version digits: ``payload(version)`` costs one bytes concatenation (a batch task pushes a million).
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, pushed_state: JSONObject, now_ms: int) -> None:
        tail = b',"timestamp":%d}}' % now_ms
        encoded = orjson.dumps(render_delta_push(0, pushed_state, now_ms))
        marker = b'"version":0' + tail
        if not encoded.endswith(marker):  # the renderer changed its layout: fail loudly, not send garbage
            raise RuntimeError("render_delta_push no longer ends with version and timestamp")
        self._head = encoded[: -len(b"0" + tail)]
        self._tail = tail

    def payload(self, version: int) -> bytes:
        return self._head + b"%d" % version + self._tail


# --- the handler both brokers call -------------------------------------------------------------------------


class DeviceShadowProtocol:
    """:class:`~fleetops.ports.messaging.ShadowRequestHandler`: parse, run the use case, render the reply."""

    def __init__(self, shadows: DeviceShadows, clock: Callable[[], float] = time.time) -> None:
        self._shadows = shadows
        self._clock = clock

    async def handle_shadow_request(self, product_id: str, device_name: str, payload: bytes) -> bytes | None:
        """The reply to a device's ``$shadow/operation/{pid}/{dn}`` message; always one.

        ``get``: the whole document (no metadata). ``update``: merged with the same compare-and-set as the
        API; the reply holds what changed, or result 5005 with the full current document on a version
        mismatch. Malformed requests get their result code (docs/device-protocol.md#result-codes).
        """
        now_ms = int(self._clock() * 1000)
        try:
            request = parse_shadow_request(payload)
        except ShadowRequestRejected as rejected:
            reply = render_error_reply(rejected.request_type, rejected.client_token, rejected.result, now_ms)
            return orjson.dumps(reply)
        token = request.client_token
        try:
            if request.update is None:
                shadow = await self._shadows.device_get(product_id, device_name)
                return orjson.dumps(render_get_reply(shadow, token, now_ms))
            outcome = await self._shadows.device_update(product_id, device_name, request.update, now_ms)
            return orjson.dumps(render_update_reply(outcome, token, now_ms))
        except ApiError as exc:  # the device was deleted while connected (its session is being dropped)
            return orjson.dumps(render_error_reply(request.type.value, token, result_code(exc), now_ms))
        except Exception:
            log.exception("shadow %s request of %s/%s failed", request.type.value, product_id, device_name)
            reply = render_error_reply(request.type.value, token, ResultCode.INTERNAL_ERROR, now_ms)
            return orjson.dumps(reply)
