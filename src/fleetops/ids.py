"""Identifier formats (iotcloud-actions.md section 0; the formats themselves are our choice, see docs/decisions.md)."""

from __future__ import annotations

import base64
import secrets
import string

_PRODUCT_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ID_ALPHABET = string.ascii_letters + string.digits


def new_product_id() -> str:
    """10 characters [A-Z0-9]: the device protocol splits the MQTT client id after character 10."""
    return "".join(secrets.choice(_PRODUCT_ALPHABET) for _ in range(10))


def new_task_id() -> str:
    """24 lower-case hex characters, like the vendor's examples (5ad5b9a53332ea3de678ea52)."""
    return secrets.token_hex(12)


def new_device_psk() -> str:
    """18 random bytes as 24 Base64 characters, the length of the vendor's documented sample PSK."""
    return base64.b64encode(secrets.token_bytes(18)).decode("ascii")


def new_secret_id() -> str:
    """36 characters starting with AKID, the shape of Tencent Cloud SecretIds."""
    return "AKID" + "".join(secrets.choice(_SECRET_ID_ALPHABET) for _ in range(32))


def new_secret_key() -> str:
    return "".join(secrets.choice(_SECRET_ID_ALPHABET) for _ in range(32))
