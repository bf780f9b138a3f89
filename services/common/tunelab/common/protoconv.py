"""Small conversions every servicer needs between domain values and protobuf well-known types."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

# What a Timestamp can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_NANOS = -62135596800 * 10**9
MAX_NANOS = 253402300800 * 10**9 - 1


def timestamp(seconds: float | None) -> Timestamp | None:
    """Unix seconds → Timestamp; None stays None (the field is left unset).

    A time stored as a float can round past Timestamp's range (the last nanosecond of 9999 comes
    back as 253402300800.0): it is clamped, where it would otherwise fail every read of it.
    """
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(min(max(int(seconds * 1e9), MIN_NANOS), MAX_NANOS))
    return ts
