"""Identifier formats (ids.py, docs/decisions.md#identifiers)."""

from __future__ import annotations

import base64
import re

from fleetops import ids


def test_product_ids_are_ten_upper_case_letters_or_digits() -> None:
    # the device protocol splits the client id after character 10
    assert all(re.fullmatch(r"[A-Z0-9]{10}", ids.new_product_id()) for _ in range(200))


def test_task_ids_are_24_hex_digits_that_sort_by_creation_time() -> None:
    earlier, later = ids.new_task_id(1_700_000_000), ids.new_task_id(1_700_000_001)
    assert re.fullmatch(r"[0-9a-f]{24}", earlier) and earlier[:8] == f"{1_700_000_000:08x}"
    assert earlier < later
    same_second = [ids.new_task_id(1_700_000_000) for _ in range(100)]
    assert len(set(same_second)) == 100


def test_device_psks_are_18_random_bytes_in_base64() -> None:
    psk = ids.new_device_psk()
    assert len(psk) == 24 and len(base64.b64decode(psk, validate=True)) == 18
    assert ids.new_device_psk() != psk


def test_key_pairs_look_like_tencent_cloud_keys() -> None:
    assert re.fullmatch(r"AKID[A-Za-z0-9]{32}", ids.new_secret_id())
    assert re.fullmatch(r"[A-Za-z0-9]{32}", ids.new_secret_key())
