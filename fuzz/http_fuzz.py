"""Correctly signed, malformed and random requests thrown at every action of an in-process fleetops node.

    .venv/bin/python fuzz/http_fuzz.py --requests 1000000 [--database both] [--seed 1] [--concurrency 4]

For each database (``sqlite``, ``postgresql`` or ``both``; a fresh one each) a node is opened with its embedded
MQTT broker and task engine running, one product with devices and a task is made, and ``--requests`` (split
between the databases) requests are generated from the actions' own declarations (``api.schema``): every
parameter of every action, with values at and past their bounds (64-bit edges, NUL, long and odd Unicode text,
wrong JSON types, bad nesting, broken shadow documents and RE2 filters), in every request shape the SDK sends
(TC3 JSON POST, TC3 GET, TC3 form POST, v1 GET and POST) and as raw bodies (truncated, invalid UTF-8, deep, huge
numbers), signed with a real key so that they reach validation; a few carry a wrong signature, a stale time, odd
headers, or a client that goes away mid-body.

Requests are raw ASGI calls into the node's app (``Starlette`` with fleetops' routes, exactly what uvicorn
calls): no sockets and no HTTP client, so that a million requests take minutes on two shared cores, no
ephemeral ports are used up, and every latency is fleetops' own. uvicorn's HTTP parser is not ours; the raw
socket tests (tests/e2e/test_http_limits.py, test_hostile_input.py) cover what reaches it.

Prints requests tried, the rate, responses by code, 5xx, InternalError, non-envelope answers and slow (over 2 s)
requests, and the first failing requests in full. Exits 1 if any request got a 5xx, an InternalError, a
non-envelope answer or took over 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import random
import secrets
import sys
import tempfile
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchdb import bench_database  # noqa: E402
from tests.raw_client import tc3_headers, v1_params  # noqa: E402

from fleetops.api.actions import all_actions  # noqa: E402
from fleetops.api.schema import INT64_MAX, INT64_MIN, Kind, Param, parameters  # noqa: E402
from fleetops.credentials import bootstrap_default_account  # noqa: E402
from fleetops.node import Node  # noqa: E402
from fleetops.settings import Settings  # noqa: E402

HOST = "fuzz.fleetops.test"
SLOW_S = 2.0
ACTIONS = {action.name: action for action in all_actions()}

# --- values ------------------------------------------------------------------------------------------------

EDGE_INTEGERS = (
    0, 1, -1, 9, 10, 250, 251, 255, 256, 1000, 1001, 86400, 86401, 2**31 - 1, 2**31, 2**32,
    2**53 + 1, INT64_MAX, INT64_MAX + 1, 2**64 - 1, 2**64, INT64_MIN, INT64_MIN - 1, 10**30,
)  # fmt: skip
ODD_TEXT = (
    "", " ", "a", "\x00", "a\x00b", "\x00" * 3, "\x01\x1f\x7f", "\r\n", "\t", "%00", "%", "%zz", "+", "&", "=",
    "é", "设备", "😀", "\u202e", "a\u0301", "\ufeff", "\uffff", "ﷺ", "' OR 1=1 --", "\"", "\\", "\\x00",
    "../../etc/passwd", "${jndi:ldap://x}", "{{7*7}}", "<script>", "null", "true", "0", "-1", "1e9999", "NaN",
    "[]", "{}", "Infinity", "ABCDEFGHIJ", "ABCDE12345", "00000000000000000000000a",
)  # fmt: skip
BAD_FILTERS = ("(", "(?=x)", "(?!x)", "\\1", "(a)\\1", "a{1001}", "a{2,1}", "[z-a]", "\\p{Nope}", "(?P<n>", "*")
GOOD_FILTERS = ("", ".*", "^d", "d[0-9]+$", "dev|lamp", "(?i)D1", "\\d", "^$", "d1")


class Values:
    """Random values from a ``random.Random`` (hypothesis' ``st.randoms()`` in the test, a seeded one here)."""

    def __init__(self, rng: random.Random, pools: Pools) -> None:
        self.rng = rng
        self.pools = pools

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def text(self, max_length: int | None = None) -> str:
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            return rng.choice(ODD_TEXT)
        if roll < 0.55:
            n = rng.randint(0, 40)
            return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789:_-") for _ in range(n))
        if roll < 0.75:
            n = rng.randint(0, 20)
            return "".join(
                chr(rng.choice((rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF))))
                for _ in range(n)
            )
        if roll < 0.9 and max_length is not None:
            n = max_length + rng.choice((-1, 0, 1, 2))
            return rng.choice("ab:_-") * max(0, n)
        return rng.choice("xyz") * rng.choice((100, 1025, 5000, 70_000))

    def integer(self, p: Param | None = None) -> int:
        rng = self.rng
        if p is not None and rng.random() < 0.4:
            low, high = p.low, p.high
            return rng.choice((low, high, low - 1, high + 1, rng.randint(low, min(high, low + 1000))))
        return rng.choice(EDGE_INTEGERS)

    def json_value(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth > 7 or roll < 0.5:
            return rng.choice(
                (
                    lambda: self.integer(),
                    lambda: rng.uniform(-1e300, 1e300),
                    lambda: self.text(),
                    lambda: rng.choice((True, False, None)),
                )
            )()
        if roll < 0.8:
            return {self.text(): self.json_value(depth + 1) for _ in range(rng.randint(0, 4))}
        return [self.json_value(depth + 1) for _ in range(rng.randint(0, 4))]

    def json_text(self, kind: str) -> str:
        """A shadow ``State`` (kind "state") or a task's ``Desired`` (kind "desired"), valid or broken."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(('{"desired": ', "{", "[1]", '"x"', "", "nul", '{"desired":{"a":"\\ud800"}}', "{} {}"))
        if roll < 0.25:
            depth = rng.choice((5, 6, 7, 50, 2000))
            return '{"desired":' + '{"a":' * depth + "1" + "}" * depth + "}"
        document: Any = self.json_value() if rng.random() < 0.4 else {"color": "red", "n": self.integer()}
        if kind == "state":
            document = rng.choice(
                ({"desired": document}, {"reported": document}, {"desired": None}, document, {"desired": {"a": [None]}})
            )
        text = json.dumps(document, ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.05:
            text = text.replace("}", ',"pad":"' + "x" * 9000 + '"}', 1)
        return text

    def string(self, p: Param) -> str:
        rng = self.rng
        pools = self.pools
        name = p.name
        if p.choices is not None and rng.random() < 0.8:
            return str(rng.choice(p.choices))
        if rng.random() < 0.3:
            return self.text(p.max_length)
        if name in ("ProductId", "ProductID"):
            return rng.choice(pools.product_ids)
        if name == "DeviceName":
            return rng.choice(pools.device_names)
        if name in ("Id", "TaskId"):
            return rng.choice(pools.task_ids)
        if name == "Topic":
            suffix = rng.choice(("data", "a" * 129, "+", "#", ""))
            return f"{rng.choice(pools.product_ids)}/{rng.choice(pools.device_names)}/{suffix}"
        if name == "State":
            return self.json_text("state")
        if name == "Desired":
            return self.json_text("desired")
        if name == "DeviceNameFilter":
            return rng.choice(BAD_FILTERS + GOOD_FILTERS)
        if name in ("Payload", "DefinedPsk"):
            raw = rng.randbytes(rng.choice((0, 1, 16, 18, 96, 16_384, 16_385)))
            return base64.b64encode(raw).decode() if rng.random() < 0.7 else raw.decode("latin-1")
        if name == "PayloadEncoding":
            return rng.choice(("base64", "", "BASE64", "utf8"))
        if name == "ProductName":
            return "fz" + secrets.token_hex(rng.choice((2, 4, 15, 16)))
        return self.text(p.max_length)

    def wrong_type(self, p: Param) -> Any:
        options: list[Any] = ["1", 1, 1.5, True, None, [], {}, [1], {"a": 1}, "", 2**70]
        return self.rng.choice(options)

    def value(self, p: Param) -> Any:
        if self.chance(0.04):
            return self.wrong_type(p)
        if p.kind is Kind.STRING:
            return self.string(p)
        if p.kind in (Kind.INTEGER, Kind.INT64):
            if p.choices is not None and self.chance(0.7):
                return self.rng.choice(p.choices)
            if p.name in ("ScheduleTimeInSeconds",) and self.chance(0.5):
                return int(time.time()) + self.rng.choice((0, 60, -60, 86_401))
            return self.integer(p)
        if p.kind is Kind.BOOLEAN:
            return self.rng.choice((True, False))
        if p.kind is Kind.OBJECT:
            return self.members(p.fields)
        assert p.item is not None
        limit = (p.max_items or 4) + 2
        count = self.rng.choice((0, 1, 2, 3, limit)) if self.chance(0.9) else self.rng.randint(0, limit)
        return [self.value(p.item) for _ in range(count)]

    def members(self, spec: tuple[Param, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in spec:
            if self.chance(0.93 if p.required else 0.35):
                out[p.name] = self.value(p)
        if self.chance(0.03):
            out[self.rng.choice(("Unknown", "productId", "Offset ", "\x00", "a.b", "Tasks.0"))] = "x"
        return out


# --- requests ----------------------------------------------------------------------------------------------


@dataclass
class Pools:
    """Identifiers that exist (and some that do not), so that requests get past "not found" into the logic."""

    product_ids: list[str] = field(default_factory=lambda: ["NOPE000000", "ABCDEFGHIJ"])
    device_names: list[str] = field(default_factory=lambda: ["d1", "d2", "nope", "a" * 48])
    task_ids: list[str] = field(default_factory=lambda: ["0" * 24, "ffffffffffffffffffffffff"])


@dataclass(frozen=True)
class FuzzRequest:
    shape: str
    action: str
    method: str
    query: str
    headers: dict[str, str]
    body: bytes
    chunks: int = 1  # the body arrives in this many pieces
    disconnect: bool = False  # the client goes away after the first piece

    def describe(self) -> str:
        body = self.body[:600].decode("utf-8", "replace")
        return f"{self.shape} {self.method} /?{self.query[:600]} headers={self.headers} body={body!r}"


def flatten(params: Any, prefix: str = "") -> list[tuple[str, str]]:
    """The SDK's GET/form flattening: ``A.B``, ``A.0``; booleans as ``True``/``False``; None left out."""
    pairs: list[tuple[str, str]] = []
    if isinstance(params, dict):
        for key, value in params.items():
            pairs += flatten(value, f"{prefix}{key}.")
    elif isinstance(params, list):
        for index, value in enumerate(params):
            pairs += flatten(value, f"{prefix}{index}.")
    elif params is not None:
        pairs.append((prefix[:-1], str(params)))
    return pairs


class RequestMaker:
    def __init__(self, rng: random.Random, pools: Pools, secret_id: str, secret_key: str) -> None:
        self.rng = rng
        self.values = Values(rng, pools)
        self.secret_id, self.secret_key = secret_id, secret_key

    def make(self) -> FuzzRequest:
        rng = self.rng
        action = (
            rng.choice(list(ACTIONS))
            if rng.random() < 0.97
            else rng.choice(("", "Nope", "describeProducts", "A" * 300))
        )
        spec = parameters(ACTIONS[action].request) if action in ACTIONS else ()
        params = self.values.members(spec)
        shape = rng.choices(
            ("tc3-json", "tc3-get", "tc3-form", "v1-get", "v1-post", "raw-body", "headers"), (40, 14, 10, 10, 8, 12, 6)
        )[0]
        if shape == "tc3-json":
            body = json.dumps(params, ensure_ascii=rng.random() < 0.5).encode()
            return self.tc3(shape, action, "POST", "", body, "application/json")
        if shape == "tc3-get":
            query = urllib.parse.urlencode(flatten(params))
            return self.tc3(shape, action, "GET", query, b"", "application/x-www-form-urlencoded")
        if shape == "tc3-form":
            body = urllib.parse.urlencode(flatten(params)).encode()
            return self.tc3(shape, action, "POST", "", body, "application/x-www-form-urlencoded")
        if shape in ("v1-get", "v1-post"):
            return self._v1(shape, action, params)
        if shape == "raw-body":
            return self.tc3(
                shape,
                action,
                "POST",
                "",
                self._raw_body(params),
                rng.choice(("application/json", "application/x-www-form-urlencoded")),
            )
        return self._odd_headers(action, params)

    def tc3(
        self, shape: str, action: str, method: str, query: str, body: bytes, content_type: str, **overrides: Any
    ) -> FuzzRequest:
        headers = tc3_headers(
            host=HOST,
            secret_id=self.secret_id,
            secret_key=self.secret_key,
            action=action,
            body=body,
            method=method,
            query=query,
            content_type=content_type,
            language=self.rng.choice(("en-US", "zh-CN")),
            **overrides,
        )
        chunks = self.rng.choice((1, 1, 1, 2, 3)) if body else 1
        disconnect = bool(body) and self.rng.random() < 0.01
        return FuzzRequest(shape, action, method, query, headers, body, chunks, disconnect)

    def _v1(self, shape: str, action: str, params: dict[str, Any]) -> FuzzRequest:
        method = "GET" if shape == "v1-get" else "POST"
        pairs = dict(flatten(params))
        signed = v1_params(
            host=HOST,
            secret_id=self.secret_id,
            secret_key=self.secret_key,
            action=action,
            params=pairs,
            method=method,
            sign_method=self.rng.choice(("HmacSHA1", "HmacSHA256")),
            nonce=self.rng.randrange(1, 2**63),  # from the seed, so a failure replays byte for byte
        )
        encoded = urllib.parse.urlencode(signed)
        headers = {"Host": HOST, "Content-Type": "application/x-www-form-urlencoded"}
        if method == "GET":
            return FuzzRequest(shape, action, method, encoded, headers, b"")
        return FuzzRequest(shape, action, method, "", headers, encoded.encode(), self.rng.choice((1, 2)))

    def _raw_body(self, params: dict[str, Any]) -> bytes:
        rng = self.rng
        text = json.dumps(params).encode()
        return rng.choice(
            (
                lambda: text[: rng.randint(0, len(text))],
                lambda: rng.randbytes(rng.randint(0, 64)),
                lambda: b"[" * 5000 + b"]" * 5000,
                lambda: b'{"Offset": 1e999, "Limit": 10}',
                lambda: b'{"Offset": 123456789012345678901234567890, "Limit": 10}',
                lambda: b'{"ProductId": "\xff\xfe"}',
                lambda: b'{"ProductId": "\\ud800"}',
                lambda: b'{"ProductId": "a", "ProductId": "b"}',
                lambda: b'"just a string"',
                lambda: b"[1, 2]",
                lambda: b"null",
                lambda: b"",
                lambda: b" " * 1000,
                lambda: b"a=1&a=2&b.0=x&b.2=y&c.=1&.d=2&e..f=3",
                lambda: b"%ff%fe=%00&Offset=18446744073709551616",
                lambda: text.replace(b"{", b'{"\\u0000": 1, ', 1),
            )
        )()

    def _odd_headers(self, action: str, params: dict[str, Any]) -> FuzzRequest:
        rng = self.rng
        body = json.dumps(params).encode()
        request = self.tc3("headers", action, "POST", "", body, "application/json")
        headers = dict(request.headers)
        choice = rng.randint(0, 9)
        if choice == 0:
            headers["X-TC-Timestamp"] = rng.choice(
                ("0", "-1", "99999999999999999999", "abc", str(int(time.time()) - 301))
            )
        elif choice == 1:
            headers["Authorization"] = rng.choice(
                (
                    "",
                    "TC3-HMAC-SHA256",
                    "Bearer x",
                    headers["Authorization"][:-1] + "0",
                    "TC3-HMAC-SHA256 Credential=/, SignedHeaders=, Signature=",
                )
            )
        elif choice == 2:
            headers["Content-Type"] = rng.choice(
                (
                    "",
                    "text/plain",
                    "multipart/form-data; boundary=x",
                    "application/json; charset=latin-1",
                    "APPLICATION/JSON",
                )
            )
        elif choice == 3:
            headers["X-TC-Version"] = rng.choice(("", "2017-03-12", "2018-06-14 ", "\x00"))
        elif choice == 4:
            headers["X-TC-Language"] = rng.choice(("", "fr-FR", "zh-cn", "\x00" * 10))
        elif choice == 5:
            headers.pop("X-TC-Action")
        elif choice == 6:
            return FuzzRequest(
                "headers",
                action,
                rng.choice(("PUT", "DELETE", "PATCH", "TRACE", "PROPFIND", "HEAD", "OPTIONS")),
                "",
                headers,
                body,
            )
        elif choice == 7:
            headers["Content-Length"] = rng.choice(("0", "-1", "99999999999", "abc"))
        elif choice == 8:
            headers["X-TC-Token"] = self.values.text()
            headers["X-TC-Region"] = self.values.text()
        else:
            return FuzzRequest(
                "headers",
                action,
                "POST",
                "",
                headers,
                rng.randbytes(rng.choice((1024 * 1024 + 1, 11 * 1024 * 1024))) if rng.random() < 0.02 else body,
            )
        return FuzzRequest("headers", action, "POST", "", headers, body)


# --- sending and counting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int
    code: str  # the envelope's error code, "OK", "ClientDisconnected", or what went wrong outside the envelope
    elapsed_s: float
    failure: str = ""  # set when the answer breaks the rules (5xx, InternalError, not an envelope)


def _scope(request: FuzzRequest) -> dict[str, Any]:
    """The ASGI scope uvicorn would make of the request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": request.query.encode("latin-1", "replace"),
        "headers": [
            (k.lower().encode("latin-1", "replace"), v.encode("utf-8", "surrogateescape"))
            for k, v in request.headers.items()
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }


async def exchange(app: Any, request: FuzzRequest) -> tuple[int, bytes]:
    """One raw ASGI call, as uvicorn makes it: the response's status and body."""
    size = max(1, -(-len(request.body) // request.chunks))
    pieces = [request.body[i : i + size] for i in range(0, len(request.body), size)] or [b""]
    if request.disconnect:
        pieces = pieces[:1]
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1 or request.disconnect}
        for i, piece in enumerate(pieces)
    ]
    messages.append({"type": "http.disconnect"})  # what every later receive() gets
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def record(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(request), receive, record)
    status = next((int(m["status"]) for m in sent if m["type"] == "http.response.start"), 0)
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def send(app: Any, request: FuzzRequest) -> Outcome:
    """Send ``request`` and judge the answer."""
    started = time.perf_counter()
    try:
        status, body = await exchange(app, request)
    except Exception:
        return Outcome(500, "exception", time.perf_counter() - started, traceback.format_exc(limit=8))
    elapsed = time.perf_counter() - started
    if request.disconnect and not body:
        return Outcome(status, "ClientDisconnected", elapsed)
    if status >= 500:
        return Outcome(status, f"HTTP {status}", elapsed, body[:300].decode("utf-8", "replace"))
    if request.method == "HEAD":
        return Outcome(status, "HEAD", elapsed)
    try:
        envelope = json.loads(body)["Response"]
        code = str(envelope["Error"]["Code"]) if "Error" in envelope else "OK"
    except (ValueError, KeyError, TypeError):
        return Outcome(status, "not an envelope", elapsed, body[:300].decode("utf-8", "replace"))
    if status != 200:
        return Outcome(status, code, elapsed, f"HTTP {status}")
    if code == "InternalError":
        return Outcome(status, code, elapsed, envelope["Error"]["Message"])
    return Outcome(status, code, elapsed)


@dataclass
class Tally:
    codes: Counter[str] = field(default_factory=Counter)
    tried: int = 0
    server_errors: int = 0
    internal_errors: int = 0
    not_envelope: int = 0
    slow: int = 0
    max_s: float = 0.0
    examples: list[str] = field(default_factory=list)

    def add(self, request: FuzzRequest, outcome: Outcome) -> None:
        self.tried += 1
        self.codes[outcome.code] += 1
        self.max_s = max(self.max_s, outcome.elapsed_s)
        if outcome.status >= 500:
            self.server_errors += 1
        if outcome.code == "InternalError":
            self.internal_errors += 1
        if outcome.code == "not an envelope":
            self.not_envelope += 1
        slow = outcome.elapsed_s > SLOW_S
        self.slow += slow
        if (outcome.failure or slow) and len(self.examples) < 20:
            self.examples.append(
                f"{outcome.code} in {outcome.elapsed_s:.2f} s: {request.describe()}\n  {outcome.failure}"
            )

    @property
    def failed(self) -> bool:
        return bool(self.server_errors or self.internal_errors or self.not_envelope or self.slow)

    def report(self, label: str, elapsed_s: float) -> str:
        lines = [
            f"{label}: {self.tried:,} requests in {elapsed_s:.0f} s ({self.tried / max(elapsed_s, 1e-9):,.0f}/s); "
            f"5xx {self.server_errors}, InternalError {self.internal_errors}, not an envelope {self.not_envelope}, "
            f"slow (> {SLOW_S:g} s) {self.slow}, slowest {self.max_s * 1000:.0f} ms",
            "  responses by code: " + ", ".join(f"{code} {n:,}" for code, n in self.codes.most_common()),
        ]
        lines += [f"  FAILED: {example}" for example in self.examples]
        return "\n".join(lines)


# --- a node to fuzz ----------------------------------------------------------------------------------------


@dataclass
class FuzzNode:
    node: Node
    app: Any
    secret_id: str
    secret_key: str
    pools: Pools

    async def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """A well-formed signed request (setup)."""
        maker = RequestMaker(random.Random(0), self.pools, self.secret_id, self.secret_key)
        request = maker.tc3("setup", action, "POST", "", json.dumps(params).encode(), "application/json")
        _, body = await exchange(self.app, FuzzRequest("setup", action, "POST", "", request.headers, request.body))
        response: dict[str, Any] = json.loads(body)["Response"]
        if "Error" in response:
            raise RuntimeError(f"setup {action} failed: {response['Error']}")
        return response


async def open_fuzz_node(database_url: str, data_dir: Path, **settings: Any) -> FuzzNode:
    """A node on ``database_url`` with its MQTT side and engine running, a key, and a product with devices."""
    config = Settings(data_dir=data_dir, database_url=database_url).with_overrides(
        mqtt_port=0, rate_limit_per_s=10**9, **settings
    )
    node = await Node.open(config)
    await node.start()
    created = await bootstrap_default_account(node.stores.accounts, data_dir, int(time.time()))
    assert created is not None, "the fuzz needs an empty database"
    fuzz = FuzzNode(node, node.app(manage_services=False), created.key.secret_id, created.key.secret_key, Pools())
    product_id = (await fuzz.call("CreateProduct", {"ProductName": "fuzz" + secrets.token_hex(4)}))["ProductId"]
    fuzz.pools.product_ids.append(product_id)
    for name in ("d1", "d2", "dev-3"):
        await fuzz.call("CreateDevice", {"ProductId": product_id, "DeviceName": name})
        fuzz.pools.device_names.append(name)
    task = await fuzz.call(
        "CreateTask",
        {
            "TaskType": "UpdateShadow",
            "ProductId": product_id,
            "DeviceNameFilter": "^d",
            "ScheduleTimeInSeconds": int(time.time()) + 3600,
            "Tasks": {"UpdateShadowTask": {"Desired": '{"color":"red"}'}},
        },
    )
    fuzz.pools.task_ids.append(task["TaskId"])
    return fuzz


async def close_fuzz_node(fuzz: FuzzNode) -> None:
    await fuzz.node.stop()
    await fuzz.node.close()


async def fuzz_requests(
    fuzz: FuzzNode, count: int, seed: int, concurrency: int, progress: Callable[[Tally], None] | None = None
) -> Tally:
    tally = Tally()
    remaining = iter(range(count))

    async def worker(index: int) -> None:
        maker = RequestMaker(random.Random(f"{seed}-{index}"), fuzz.pools, fuzz.secret_id, fuzz.secret_key)
        for _ in remaining:
            request = maker.make()
            tally.add(request, await send(fuzz.app, request))
            if progress is not None and tally.tried % 50_000 == 0:
                progress(tally)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally


class _FirstTracebacks(logging.Filter):
    """Lets the first few error tracebacks through (an InternalError's), then only counts them."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            self.keep -= 1
            return self.keep >= 0
        return True


async def run(database: str, count: int, seed: int, concurrency: int) -> Tally:
    with tempfile.TemporaryDirectory() as tmp, bench_database(database) as url:
        if database == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'fleetops.db'}"
        fuzz = await open_fuzz_node(url, Path(tmp) / "data")
        started = time.perf_counter()

        def progress(tally: Tally) -> None:
            elapsed = time.perf_counter() - started
            print(
                f"  {database}: {tally.tried:,} requests, {tally.tried / elapsed:,.0f}/s, failures so far "
                f"{tally.server_errors + tally.internal_errors + tally.not_envelope + tally.slow}",
                flush=True,
            )

        try:
            tally = await fuzz_requests(fuzz, count, seed, concurrency, progress)
        finally:
            await close_fuzz_node(fuzz)
        print(tally.report(database, time.perf_counter() - started), flush=True)
        return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000, help="requests in all, split between the databases")
    parser.add_argument("--database", default="both", choices=("both", "sqlite", "postgresql"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger().handlers[0].addFilter(_FirstTracebacks(5))
    databases = ("sqlite", "postgresql") if args.database == "both" else (args.database,)
    started = time.perf_counter()
    tallies = []
    for i, database in enumerate(databases):
        share = args.requests // len(databases) + (1 if i < args.requests % len(databases) else 0)
        tallies.append(asyncio.run(run(database, share, args.seed, args.concurrency)))
    elapsed = time.perf_counter() - started
    total = sum(t.tried for t in tallies)
    internal = sum(t.internal_errors for t in tallies)
    server = sum(t.server_errors for t in tallies)
    slow = sum(t.slow for t in tallies)
    print(
        f"total: {total:,} requests in {elapsed:.0f} s ({total / elapsed:,.0f}/s): InternalError {internal}, "
        f"5xx {server}, not an envelope {sum(t.not_envelope for t in tallies)}, slow (> {SLOW_S:g} s) {slow}"
    )
    sys.exit(1 if any(t.failed for t in tallies) else 0)


if __name__ == "__main__":
    main()
