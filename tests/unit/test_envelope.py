"""The response envelope (api/envelope.py): exactly the vendor's shape, RequestId on every response."""

from __future__ import annotations

import uuid

import orjson

from fleetops.api.envelope import CONTENT_TYPE, error_body, new_request_id, success_body
from fleetops.errors import ProductNotExist, SignatureFailure


def test_success_body_adds_the_request_id_last() -> None:
    body = orjson.loads(success_body({"TotalCount": 0, "Products": []}, "rid"))
    assert body == {"Response": {"TotalCount": 0, "Products": [], "RequestId": "rid"}}
    assert list(body["Response"]) == ["TotalCount", "Products", "RequestId"]


def test_error_body_carries_code_message_and_request_id() -> None:
    body = orjson.loads(error_body(ProductNotExist("The product `X` does not exist."), "rid", "en-US"))
    assert body == {
        "Response": {
            "Error": {"Code": "ResourceNotFound.ProductNotExist", "Message": "The product `X` does not exist."},
            "RequestId": "rid",
        }
    }


def test_error_body_in_chinese_uses_the_chinese_wording_when_there_is_one() -> None:
    body = orjson.loads(error_body(SignatureFailure(), "rid", "zh-CN"))
    assert body["Response"]["Error"] == {
        "Code": "AuthFailure.SignatureFailure",
        "Message": "签名校验失败，请检查签名是否正确。",
    }


def test_request_ids_are_fresh_uuids() -> None:
    first, second = new_request_id(), new_request_id()
    assert first != second and str(uuid.UUID(first)) == first


def test_the_content_type_is_exactly_application_json() -> None:
    # the SDK reads Response.Error only with exactly this content type (docs/protocol.md#envelope)
    assert CONTENT_TYPE == "application/json"
