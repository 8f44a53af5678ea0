"""Identifier formats (the vendor documents none; ours are described in docs/decisions.md#identifiers)."""

from __future__ import annotations

import base64
import itertools
import secrets
import string

_PRODUCT_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ID_ALPHABET = string.ascii_letters + string.digits


def new_product_id() -> str:
    """10 characters [A-Z0-9]: the device protocol splits the MQTT client id after character 10."""
    return "".join(secrets.choice(_PRODUCT_ALPHABET) for _ in range(10))


# The vendor's task ids look like MongoDB ObjectIds: the example 5ad5b9a53332ea3de678ea52 starts with
# 0x5ad5b9a5, a Unix time in April 2018. Ours are 24 lower-case hex characters too: the creation time first,
# then a per-process counter, then 5 random bytes, so ids sort by creation time, which orders DescribeTasks
# among tasks created in the same second (on one node).
_task_counter = itertools.count(secrets.randbelow(1 << 23))


def new_task_id(now_s: int) -> str:
    return f"{now_s & 0xFFFFFFFF:08x}{next(_task_counter) & 0xFFFFFF:06x}{secrets.token_hex(5)}"


def new_device_psk() -> str:
    """18 random bytes as 24 Base64 characters, the length of the vendor's documented sample PSK."""
    return base64.b64encode(secrets.token_bytes(18)).decode("ascii")


def new_secret_id() -> str:
    """36 characters starting with AKID, the shape of Tencent Cloud SecretIds."""
    return "AKID" + "".join(secrets.choice(_SECRET_ID_ALPHABET) for _ in range(32))


def new_secret_key() -> str:
    return "".join(secrets.choice(_SECRET_ID_ALPHABET) for _ in range(32))
