"""What a valid event time is: one definition for the server (RecordEvents) and training (log format).

An event the server accepts is written to the event log and read by training at the next refit,
so both must agree; an event time the refit would refuse must be refused when it is recorded.
"""

from __future__ import annotations

MIN_EVENT_TIME_MS = 0
"""1970-01-01T00:00:00Z: the first valid event time, Unix milliseconds."""
MAX_EVENT_TIME_MS = 4_102_444_800_000
"""2100-01-01T00:00:00Z: the last valid event time, Unix milliseconds (later ones are corrupt or
in the wrong unit)."""
EVENT_TIME_RANGE = "1970-2100"
"""The valid range in words, for error messages."""


def is_valid_event_time_ms(time_ms: int) -> bool:
    """``time_ms`` (Unix milliseconds) lies within 1970-01-01 .. 2100-01-01, both included."""
    return MIN_EVENT_TIME_MS <= time_ms <= MAX_EVENT_TIME_MS
