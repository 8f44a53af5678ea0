"""Prometheus metrics of the API, served at ``/metrics``.

Each app gets its own CollectorRegistry (several nodes can live in one test process without clashing).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fleetops_api_requests",
            "API requests by action and outcome (OK or the error code)",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fleetops_api_request_seconds",
            "API request latency by action",
            ["action"],
            registry=self.registry,
        )

    def observe(self, action: str, outcome: str, seconds: float) -> None:
        self.requests.labels(action=action, outcome=outcome).inc()
        self.latency.labels(action=action).observe(seconds)

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
