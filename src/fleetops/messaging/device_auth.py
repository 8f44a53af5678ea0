"""Device authentication at MQTT CONNECT (docs/device-protocol.md#connect), as pure functions.

A key-authenticated device sends

* ClientId ``${productId}${deviceName}``;
* UserName ``${clientId};${sdkappid};${connid};${expiry}`` - four ``;``-separated fields, the first equal to
  the client id, ``expiry`` a decimal Unix time. Only ``expiry < now`` (in seconds) is refused: the C SDK
  sends ``LONG_MAX`` and the Python SDK milliseconds, both far in the future, and both must connect. The
  ``sdkappid`` is not checked against a fixed value (the SDKs send 21010406, the docs say 12010126);
* Password ``${token};hmacsha256`` (or ``;hmacsha1``) where ``token`` is the lower-case hex HMAC of the
  UserName, exactly as sent, keyed with the Base64-decoded DevicePsk. The method is what follows the *last*
  ``;``, matched case-insensitively; the token is compared case-insensitively in constant time.

CONNACK return codes (the vendor leaves the mapping open; fleetops' choice, docs/device-protocol.md#connack):

===========================================================  ===========================================
cause                                                         CONNACK
===========================================================  ===========================================
malformed client id, keep-alive > 900 s                       2 identifier rejected
unknown product/device, malformed user name, bad password,    4 bad user name or password
unknown signature method, expired signature
device disabled (checked last: only a holder of valid         5 not authorized
credentials learns it)
===========================================================  ===========================================

Test vector (DevicePsk ``MDEyMzQ1Njc4OWFiY2RlZg==``, i.e. the key ``0123456789abcdef``)::

    UserName  ABCDE12345dev1;12010126;a1B2c;1700003600
    Password  374ff8aa02f1af65419785f71953ee5f52d17f01fff5b0a48abf8a8a6257775a;hmacsha256
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from fleetops.messaging.topics import split_client_id
from fleetops.ports.messaging import DeviceCredentials

KEEPALIVE_MAX_S = 900
_EXPIRY = re.compile(r"[0-9]{1,20}")


class ConnackCode(IntEnum):
    """MQTT 3.1.1 CONNACK return codes."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


class SignMethod(StrEnum):
    """The suffix of the password; its value is what devices send (matched case-insensitively)."""

    HMAC_SHA256 = "hmacsha256"
    HMAC_SHA1 = "hmacsha1"


_DIGESTS = {SignMethod.HMAC_SHA256: hashlib.sha256, SignMethod.HMAC_SHA1: hashlib.sha1}


@dataclass(frozen=True)
class UserName:
    client_id: str
    sdk_app_id: str
    conn_id: str
    expiry: int

    @classmethod
    def parse(cls, username: str) -> UserName | None:
        """The four fields; None unless there are exactly four, ``sdkappid`` non-empty, expiry digits."""
        fields = username.split(";")
        if len(fields) != 4 or not fields[1] or _EXPIRY.fullmatch(fields[3]) is None:
            return None
        return cls(fields[0], fields[1], fields[2], int(fields[3]))


@dataclass(frozen=True)
class ConnectDecision:
    code: ConnackCode
    reason: str  # for the log: never contains a secret

    @property
    def accepted(self) -> bool:
        return self.code is ConnackCode.ACCEPTED


def make_username(client_id: str, expiry: int, *, sdk_app_id: str = "12010126", conn_id: str = "a1B2c") -> str:
    """A UserName as the devices build it (used by tests, the bench and the docs)."""
    return f"{client_id};{sdk_app_id};{conn_id};{expiry}"


def _psk_key(psk: str) -> bytes | None:
    try:
        return base64.b64decode(psk, validate=True)
    except (binascii.Error, ValueError):
        return None


def sign_password(username: str, psk: str, method: SignMethod = SignMethod.HMAC_SHA256) -> str:
    """The password a device sends: hex HMAC of ``username`` keyed with the decoded PSK, then ``;method``."""
    key = _psk_key(psk)
    if key is None:
        raise ValueError("the PSK is not valid Base64")
    token = hmac.new(key, username.encode("utf-8"), _DIGESTS[method]).hexdigest()
    return f"{token};{method.value}"


def verify_password(username: str, password: str | bytes | None, psk: str) -> bool:
    """Whether ``password`` is a valid signature of ``username`` (docs/device-protocol.md#password, steps 4-5)."""
    if password is None:
        return False
    if isinstance(password, bytes):
        try:
            password = password.decode("utf-8")
        except UnicodeDecodeError:
            return False
    token, separator, method_text = password.rpartition(";")
    if not separator:
        return False
    try:
        method = SignMethod(method_text.lower())
    except ValueError:
        return False
    key = _psk_key(psk)
    if key is None:
        return False
    expected = hmac.new(key, username.encode("utf-8"), _DIGESTS[method]).hexdigest()
    # Bytes, not str: compare_digest refuses non-ASCII str, and a device may send anything.
    return hmac.compare_digest(token.lower().encode("utf-8"), expected.encode("ascii"))


def precheck_connect(client_id: str, keepalive_s: int) -> ConnectDecision | None:
    """The checks that need no credentials (CONNACK 2), or None if they pass."""
    if split_client_id(client_id) is None:
        return ConnectDecision(ConnackCode.IDENTIFIER_REJECTED, "malformed client id")
    if keepalive_s > KEEPALIVE_MAX_S:
        return ConnectDecision(ConnackCode.IDENTIFIER_REJECTED, f"keep-alive {keepalive_s} s > {KEEPALIVE_MAX_S} s")
    return None


def check_connect(
    client_id: str,
    username: str | None,
    password: str | bytes | None,
    keepalive_s: int,
    credentials: DeviceCredentials | None,
    now_s: float,
) -> ConnectDecision:
    """The CONNACK for a CONNECT; ``credentials`` are the looked-up credentials of the client id's device.

    The order of the checks (docs/device-protocol.md#connack): client id and keep-alive, device exists, user name,
    expiry, signature, enabled.
    """
    refused = precheck_connect(client_id, keepalive_s)
    if refused is not None:
        return refused
    device = split_client_id(client_id)
    if (
        credentials is None
        or device is None
        or (credentials.product_id, credentials.device_name) != (device.product_id, device.device_name)
    ):
        return ConnectDecision(ConnackCode.BAD_USERNAME_OR_PASSWORD, "unknown device")
    parsed = UserName.parse(username) if username is not None else None
    if parsed is None or parsed.client_id != client_id:
        return ConnectDecision(ConnackCode.BAD_USERNAME_OR_PASSWORD, "malformed user name")
    if parsed.expiry < int(now_s):
        return ConnectDecision(ConnackCode.BAD_USERNAME_OR_PASSWORD, "signature expired")
    if username is None or not verify_password(username, password, credentials.psk):
        return ConnectDecision(ConnackCode.BAD_USERNAME_OR_PASSWORD, "bad signature")
    if not credentials.enabled:
        return ConnectDecision(ConnackCode.NOT_AUTHORIZED, "device disabled")
    return ConnectDecision(ConnackCode.ACCEPTED, "accepted")
