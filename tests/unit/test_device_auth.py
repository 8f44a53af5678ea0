"""Device authentication at CONNECT (docs/device-protocol.md#connect): user name, signatures, CONNACK codes.

The test vectors are docs/device-protocol.md#password's table: DevicePsk ``MDEyMzQ1Njc4OWFiY2RlZg==`` (the ASCII key
``0123456789abcdef``), client id ``ABCDE12345dev1``.
"""

from __future__ import annotations

import pytest

from fleetops.messaging.device_auth import (
    ConnackCode,
    SignMethod,
    UserName,
    check_connect,
    make_username,
    sign_password,
    verify_password,
)
from fleetops.ports.messaging import DeviceCredentials

PSK = "MDEyMzQ1Njc4OWFiY2RlZg=="
CLIENT_ID = "ABCDE12345dev1"
DEVICE = DeviceCredentials("ABCDE12345", "dev1", PSK, enabled=True)
NOW = 1_700_000_000

VECTORS = [
    (
        "ABCDE12345dev1;12010126;a1B2c;1700003600",
        "374ff8aa02f1af65419785f71953ee5f52d17f01fff5b0a48abf8a8a6257775a;hmacsha256",
        "acc4484fda08e85f065f30fd9603db38bfe10b0b;hmacsha1",
    ),
    (  # C SDK style: expiry LONG_MAX
        "ABCDE12345dev1;21010406;Xy7Qa;9223372036854775807",
        "16e3be5415e1b91af8ef7f6374f66a053be1725b55255d9c3b7776b694f97fe9;hmacsha256",
        "51534938c72ffb7bad5b3c39b1b96bf14afb7a36;hmacsha1",
    ),
    (  # Python SDK style: expiry in milliseconds
        "ABCDE12345dev1;21010406;k9LmN;1700000000123",
        "3374d175a12db6bdb4f00621c5e796252eb159d85880b72a4f18e52b3f97189e;hmacsha256",
        "977e756dd9dcd1b143c77d7ba56dc5a15188ccfc;hmacsha1",
    ),
]
SIX_PASSWORDS = [(username, password) for username, *passwords in VECTORS for password in passwords]


@pytest.mark.parametrize(("username", "sha256", "sha1"), VECTORS)
def test_signing_reproduces_the_vectors(username: str, sha256: str, sha1: str) -> None:
    assert sign_password(username, PSK) == sha256
    assert sign_password(username, PSK, SignMethod.HMAC_SHA256) == sha256
    assert sign_password(username, PSK, SignMethod.HMAC_SHA1) == sha1


@pytest.mark.parametrize(("username", "password"), SIX_PASSWORDS)
def test_the_six_vector_passwords_connect(username: str, password: str) -> None:
    assert verify_password(username, password, PSK)
    decision = check_connect(CLIENT_ID, username, password, 60, DEVICE, NOW)
    assert decision.code is ConnackCode.ACCEPTED
    assert decision.accepted


@pytest.mark.parametrize(("username", "password"), SIX_PASSWORDS)
def test_token_and_method_are_case_insensitive(username: str, password: str) -> None:
    token, method = password.split(";")
    assert verify_password(username, f"{token.upper()};{method.upper()}", PSK)
    assert verify_password(username, password.encode(), PSK)  # MQTT passwords are binary data


@pytest.mark.parametrize(("username", "password"), SIX_PASSWORDS)
def test_a_signature_is_bound_to_its_username(username: str, password: str) -> None:
    changed = username.replace(";12010126;", ";12010127;").replace(";21010406;", ";21010407;")
    assert not verify_password(changed, password, PSK)
    assert not verify_password(username, password, "MDEyMzQ1Njc4OWFiY2RlZQ==")  # another key


@pytest.mark.parametrize(
    "password",
    [
        None,
        "",
        "374ff8aa02f1af65419785f71953ee5f52d17f01fff5b0a48abf8a8a6257775a",  # no method
        "374ff8aa02f1af65419785f71953ee5f52d17f01fff5b0a48abf8a8a6257775a;hmacmd5",
        "374ff8aa02f1af65419785f71953ee5f52d17f01fff5b0a48abf8a8a6257775a;hmacsha1",  # sha256 token
        "acc4484fda08e85f065f30fd9603db38bfe10b0b;hmacsha256",  # sha1 token
        "374ff8aa02f1af65419785f71953ee5f52d17f01fff5b0a48abf8a8a6257775;hmacsha256",  # one digit short
        "é74ff8aa02f1af65419785f71953ee5f52d17f01fff5b0a48abf8a8a6257775a;hmacsha256",  # non-ASCII
        b"\xff\xfe;hmacsha256",  # not UTF-8
    ],
)
def test_bad_passwords(password: str | bytes | None) -> None:
    username = VECTORS[0][0]
    assert not verify_password(username, password, PSK)
    assert check_connect(CLIENT_ID, username, password, 60, DEVICE, NOW).code is ConnackCode.BAD_USERNAME_OR_PASSWORD


def test_the_method_is_after_the_last_semicolon() -> None:
    """A token never contains ';', so "x;y;hmacsha256" is the token "x;y" - wrong, but parsed, not crashed."""
    assert not verify_password(VECTORS[0][0], "a;b;hmacsha256", PSK)


def test_username_fields() -> None:
    assert UserName.parse("ABCDE12345dev1;12010126;a1B2c;1700003600") == UserName(
        "ABCDE12345dev1", "12010126", "a1B2c", 1_700_003_600
    )
    assert UserName.parse("ABCDE12345dev1;21010406;;9223372036854775807") is not None  # connid unchecked
    for bad in (
        "ABCDE12345dev1;12010126;a1B2c",  # three fields
        "ABCDE12345dev1;12010126;a1B2c;1700003600;x",  # five
        "ABCDE12345dev1;;a1B2c;1700003600",  # empty sdkappid
        "ABCDE12345dev1;12010126;a1B2c;17000036OO",  # not a number
        "ABCDE12345dev1;12010126;a1B2c;-1",
        "ABCDE12345dev1;12010126;a1B2c;+1700003600",
        "ABCDE12345dev1;12010126;a1B2c;",
    ):
        assert UserName.parse(bad) is None, bad
    assert make_username(CLIENT_ID, 1_700_003_600) == VECTORS[0][0]


def _connect(
    *,
    client_id: str = CLIENT_ID,
    expiry: int = NOW + 3600,
    method: SignMethod = SignMethod.HMAC_SHA256,
    keepalive_s: int = 60,
    credentials: DeviceCredentials | None = DEVICE,
    username: str | None = None,
    password: str | None = None,
    now_s: float = NOW,
) -> ConnackCode:
    username = username if username is not None else make_username(client_id, expiry)
    password = password if password is not None else sign_password(username, PSK, method)
    return check_connect(client_id, username, password, keepalive_s, credentials, now_s).code


def test_connack_codes() -> None:
    """docs/device-protocol.md#connack: bad id or keep-alive > 900 -> 2; unknown/bad/expired -> 4; disabled -> 5."""
    assert _connect() is ConnackCode.ACCEPTED
    assert _connect(method=SignMethod.HMAC_SHA1) is ConnackCode.ACCEPTED
    # expiry: refused only when strictly before now (seconds)
    assert _connect(expiry=NOW) is ConnackCode.ACCEPTED
    assert _connect(expiry=NOW, now_s=NOW + 0.9) is ConnackCode.ACCEPTED
    assert _connect(expiry=NOW - 1) is ConnackCode.BAD_USERNAME_OR_PASSWORD
    assert _connect(expiry=NOW * 1000) is ConnackCode.ACCEPTED  # milliseconds: far future
    # client id and keep-alive
    assert _connect(client_id="abcde12345dev1", credentials=None) is ConnackCode.IDENTIFIER_REJECTED
    assert _connect(client_id="ABCDE12345") is ConnackCode.IDENTIFIER_REJECTED
    assert _connect(keepalive_s=900) is ConnackCode.ACCEPTED
    assert _connect(keepalive_s=0) is ConnackCode.ACCEPTED
    assert _connect(keepalive_s=901) is ConnackCode.IDENTIFIER_REJECTED
    # unknown device, or credentials that are not this client id's
    assert _connect(credentials=None) is ConnackCode.BAD_USERNAME_OR_PASSWORD
    assert _connect(credentials=DeviceCredentials("ABCDE12345", "dev2", PSK, True)) is (
        ConnackCode.BAD_USERNAME_OR_PASSWORD
    )
    # user name: field 1 must be the client id
    other = make_username("ABCDE12345dev2", NOW + 3600)
    assert _connect(username=other) is ConnackCode.BAD_USERNAME_OR_PASSWORD
    assert _connect(username="ABCDE12345dev1;12010126;a1B2c;soon") is ConnackCode.BAD_USERNAME_OR_PASSWORD
    assert _connect(password="0" * 64 + ";hmacsha256") is ConnackCode.BAD_USERNAME_OR_PASSWORD
    # a PSK that is not Base64 (a broken record) refuses instead of crashing
    broken = DeviceCredentials("ABCDE12345", "dev1", "not base64!", True)
    assert _connect(credentials=broken, password="0" * 64 + ";hmacsha256") is ConnackCode.BAD_USERNAME_OR_PASSWORD


def test_disabled_is_told_only_to_valid_credentials() -> None:
    disabled = DeviceCredentials("ABCDE12345", "dev1", PSK, enabled=False)
    assert _connect(credentials=disabled) is ConnackCode.NOT_AUTHORIZED
    assert _connect(credentials=disabled, password="0" * 64 + ";hmacsha256") is ConnackCode.BAD_USERNAME_OR_PASSWORD
    assert _connect(credentials=disabled, expiry=NOW - 1) is ConnackCode.BAD_USERNAME_OR_PASSWORD


def test_decisions_carry_a_reason_without_secrets() -> None:
    username = make_username(CLIENT_ID, NOW + 3600)
    password = sign_password(username, PSK)
    decision = check_connect(CLIENT_ID, username, password + "x", 60, DEVICE, NOW)
    assert decision.reason == "bad signature"
    assert PSK not in repr(DEVICE)  # the PSK is kept out of reprs (and so out of logs)


def test_sign_password_needs_a_base64_psk() -> None:
    with pytest.raises(ValueError, match="Base64"):
        sign_password(VECTORS[0][0], "###")
