"""How a task's ``spec`` and ``extensions`` columns hold the domain's values (JSON on both databases)."""

from __future__ import annotations

from typing import Any

import orjson

from fleetops.domain.extensions import TaskExtensions
from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.rollout import AbortCriterion, Rollout
from fleetops.domain.tasks import PublishMessageSpec, TaskSpec, TaskType, UpdateShadowSpec


def spec_to_json(spec: TaskSpec) -> dict[str, Any]:
    if isinstance(spec, UpdateShadowSpec):
        # As JSON text: PostgreSQL's jsonb would reorder the keys, and the delta pushes should list them in
        # the order the client gave them (as UpdateDeviceShadow's pushes do).
        return {"desired": orjson.dumps(spec.desired).decode()}
    # The Payload string was UTF-8 encoded by the domain; decoding gives the same string back.
    return {"topic": spec.topic, "payload": spec.payload.decode()}


def spec_from_json(task_type: TaskType, value: dict[str, Any]) -> TaskSpec:
    if task_type is TaskType.UPDATE_SHADOW:
        return UpdateShadowSpec(orjson.loads(value["desired"]))
    return PublishMessageSpec(str(value["topic"]), str(value["payload"]).encode())


def extensions_to_json(extensions: TaskExtensions | None) -> dict[str, Any] | None:
    if extensions is None:
        return None
    rollout = extensions.rollout
    return {
        "track_outcomes": extensions.track_outcomes,
        "convergence_window_s": extensions.convergence_window_s,
        "rollout": None
        if rollout is None
        else {
            "max_per_s": rollout.max_per_s,
            "base_per_s": rollout.base_per_s,
            "increment_percent": rollout.increment_percent,
            "increment_every": rollout.increment_every,
        },
        "abort_criteria": [
            {"outcome": c.outcome.value, "threshold_percent": c.threshold_percent, "min_processed": c.min_processed}
            for c in extensions.abort_criteria
        ],
        "deliver_on_connect": extensions.deliver_on_connect,
    }


def extensions_from_json(value: dict[str, Any] | None) -> TaskExtensions | None:
    if value is None:
        return None
    rollout = value.get("rollout")
    return TaskExtensions(
        track_outcomes=bool(value.get("track_outcomes")),
        convergence_window_s=value.get("convergence_window_s"),
        rollout=None if rollout is None else Rollout(**rollout),
        abort_criteria=tuple(
            AbortCriterion(DeviceOutcome(c["outcome"]), int(c["threshold_percent"]), int(c["min_processed"]))
            for c in value.get("abort_criteria", ())
        ),
        deliver_on_connect=bool(value.get("deliver_on_connect")),
    )
