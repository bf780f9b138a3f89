"""CPU and memory amounts in words (``2 CPUs``, ``16 GiB``) and as --resources quantities (``500m``,
``16Gi``), for the messages that refuse, limit or explain them."""

from __future__ import annotations

BINARY = (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


def cpus(millis: int) -> str:
    """2000 → '2 CPUs', 500 → '0.5 CPUs', 1000 → '1 CPU'."""
    n = millis / 1000
    return f"{n:g} CPU" + ("" if n == 1 else "s")


def memory(n: int) -> str:
    """17179869184 → '16 GiB', 1610612736 → '1.5 GiB', 100 → '100 bytes'."""
    for unit, size in BINARY:
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}B"
    return f"{n} bytes"


def cpu_quantity(millis: int) -> str:
    """As --resources takes it: 8000 → '8', 500 → '500m'."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def memory_quantity(n: int) -> str:
    """As --resources takes it: 17179869184 → '16Gi', 1000000 → '1000000'."""
    for unit, size in BINARY:
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)
