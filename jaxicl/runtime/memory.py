"""How much host memory is free, for analyses that estimate their need before they start."""

from __future__ import annotations

import os


def available_bytes() -> int | None:
    """Memory the kernel could give without swapping (MemAvailable), else the free pages; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"
