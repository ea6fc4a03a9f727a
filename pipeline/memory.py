"""Giving freed memory back to the OS, in the driver between stages and in workers after each shard.

Why: Python, Arrow's pool and glibc keep freed memory for reuse. A stage that gathers a lot in one
process (a cluster forest, a training sample, an n-gram table) would otherwise
leave that high-water mark in the driver, and in the Ray worker processes that Ray keeps alive and
reuses, for the rest of the run: every later stage, streaming ones included, would carry it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def release_memory() -> None:
    """Collect garbage, empty Arrow's pool and trim glibc's heap (a no-op trim elsewhere)."""
    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


#: resident size after the last release in this process, in bytes
_LAST_RSS = 0
#: growth past that which makes a release worth its cost
_GROWTH = 32 << 20


def resident_bytes() -> int:
    """This process's resident size in bytes (a huge number where procfs is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:  # no procfs (macOS): growth is then always seen (release_memory_if_grown releases)
        return 1 << 62


def release_memory_if_grown() -> None:
    """``release_memory`` when this process grew by more than 32 MB since the last release.

    Why: a full collection and trim cost 40-50 ms in a worker (measured), more than a small shard
    itself; after a shard that allocated little there is nothing worth giving back."""
    global _LAST_RSS
    if resident_bytes() - _LAST_RSS > _GROWTH:
        release_memory()
        _LAST_RSS = resident_bytes()


def reset_peak_rss() -> None:
    """Start a new peak-RSS window for this process (Linux: ``clear_refs`` 5 resets ``VmHWM``)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float | None:
    """This process's peak resident size (MB) since the last :func:`reset_peak_rss`; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def releasing(fn: F) -> F:
    """``fn`` that releases memory after it returns: for ``ray.remote`` helpers run in reused workers."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            release_memory()

    return wrapper  # type: ignore[return-value]
