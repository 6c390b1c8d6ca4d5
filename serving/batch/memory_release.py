"""Hand freed heap memory back to the operating system between the batch job's stages.

A long-running driver frees large temporaries (sort orders, per-cluster vector sums,
Arrow buffers) at the end of each stage, but neither allocator gives the pages back
on its own: glibc keeps freed chunks below its (dynamic, up to 32 MB) mmap threshold
in the heap, and Arrow's mimalloc pool keeps freed segments for reuse. The next
stage's peak then stacks on the last one's. Measured on the outputs stage of a
1M-row catalogue (2-core AMD EPYC, 2026-11-29): after ``pairs.parquet`` 208 MB
stayed resident with nothing live, after clustering 179 MB; both came back to
~29 MB after :func:`release_free_memory`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import pyarrow as pa


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


def release_free_memory() -> None:
    """Return freed pages of the C heap (glibc ``malloc_trim``) and of Arrow's pool to the OS.

    Costs a few milliseconds; call it after a stage has dropped its big objects.
    Without glibc there is no heap to trim; a pool without the call ignores it.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    pa.default_memory_pool().release_unused()
