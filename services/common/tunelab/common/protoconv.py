"""Small conversions every servicer needs between domain values and protobuf well-known types."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(seconds: float | None) -> Timestamp | None:
    """Unix seconds → Timestamp; None stays None (the field is left unset)."""
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
