"""Numeric limits shared by the API, the device protocol and the task engine.

Where the vendor's documents disagree, the value is fleetops' choice (docs/decisions.md#device-protocol) and the
comment says so; every limit here is a product decision that docs/ should list.
"""

from __future__ import annotations

from typing import Final

# --- device shadow (docs/device-protocol.md#shadow-limits) ---------------------------

# 8 KB is the oldest API page and the SDK's JSONSizeExceedLimit text; later pages say 16 KB or 64 KB.
# Measured as the compact UTF-8 JSON of the incoming state and of the stored state after an update.
SHADOW_STATE_MAX_BYTES: Final = 8192

# Legacy docs say 6 levels (code 5002), the current limits page says 5. Containers are counted and the
# `state` object is level 1: {"reported": {"a": {"b": {"c": {"d": {}}}}}} is exactly 6 levels.
SHADOW_MAX_DEPTH: Final = 6

# --- batch tasks (docs/tasks.md#the-vendors-rules) ----------------------------------------------------------

# Both MaxExecutionTimeInSeconds (default and maximum) and how far ahead ScheduleTimeInSeconds may point.
TASK_MAX_EXECUTION_TIME_S: Final = 86_400
TASK_MAX_SCHEDULE_AHEAD_S: Final = 86_400

# Custom topic suffix of the cloud API: [a-zA-Z0-9:_-]{1,128}.
TOPIC_SUFFIX_MAX_LENGTH: Final = 128

# MQTT publish limit of the usage-limits page ("rejected directly" above 16 KB), in UTF-8 bytes.
PUBLISH_PAYLOAD_MAX_BYTES: Final = 16_384

# --- DeviceNameFilter (our own bounds: the vendor documents none) --------------------------------------

# Device names are at most 48 characters; a filter 20 times longer is already unreasonable.
NAME_FILTER_MAX_LENGTH: Final = 1024

# RE2's own default (8 MiB), set explicitly so that a change of the library default cannot raise it. It
# bounds the compiled program and the DFA cache of a single filter.
NAME_FILTER_MAX_MEM_BYTES: Final = 8 << 20
