"""Human-readable units for the numbers torchdoctor reports."""

from __future__ import annotations

KIB = 2**10
MIB = 2**20
GIB = 2**30


def format_bytes(n: int | float) -> str:
    """``n`` bytes as ``"64.0 MiB"`` (KiB/MiB/GiB, one decimal); below 1 KiB as ``"512 B"``."""
    if abs(n) < KIB:
        return f"{int(n)} B"
    for unit, size in (("GiB", GIB), ("MiB", MIB)):
        # pick the unit by the rounded value so 1048575 B reads "1.0 MiB", not "1024.0 KiB"
        if round(abs(n) / size, 1) >= 1:
            return f"{n / size:.1f} {unit}"
    return f"{n / KIB:.1f} KiB"
