"""Keep freed memory in the process instead of returning it to the OS after every tensor.

glibc serves allocations above its mmap threshold (128 KiB at first) with fresh mmaps and
unmaps them on free, so each large temporary tensor of a training step costs a page fault per
4 KiB page when it is first written: on a CPU learner this is a third of an update's time.
Raising the mmap threshold to its maximum (32 MiB on 64-bit) and the trim threshold far above
the working set makes glibc reuse freed heap memory instead. It changes only where memory
comes from, never what is computed, and does nothing on other C libraries.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("learner.allocator")

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20
_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for a process that allocates large temporaries in a loop; True when applied."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                  and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                  and mallopt(_M_TOP_PAD, 256 * 2**20))
    if not _tuned:
        log.debug("mallopt refused the thresholds; keeping the C library's defaults")
    return _tuned
