"""glibc malloc tuned for a process that handles multi-megabyte uploads.

Every upload is copied several times on its way to the model (the HTTP body, its multipart
part, pydicom's pixel data, the JPEG 2000 codestream's fragments joined, the decoder's
buffers), each a fresh buffer of about the upload's size. glibc serves such a buffer with
``mmap`` (above its mmap threshold, 128 KiB to start with) and hands it back to the kernel
when it is freed, or trims the freed top of its heap back to the kernel; the next upload's
buffer then faults in every 4 KiB page again. On this project's 2-core virtual machine a
page fault costs about 3 microseconds of CPU, so joining a 4.3 MB JPEG 2000 chest
radiograph's 66 fragments took 5.9-6.5 CPU ms, 2,060 faults per call, and 0.5 ms with the
memory kept (docs/benchmarks/serve.md, round 8).

:func:`keep_freed_memory` raises the mmap threshold to 32 MiB (glibc's largest) and the
trim threshold to ``keep_mib``: buffers up to 32 MiB come from the heap, and up to
``keep_mib`` of freed memory per heap stays mapped for the next upload instead of being
returned and faulted in again. ``RADLENS_MALLOC_KEEP_MIB`` (0 = glibc's defaults).
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def keep_freed_memory(keep_mib: int) -> bool:
    """Tune glibc's malloc for this process (see the module docstring); True when applied.

    A no-op returning False when ``keep_mib`` is 0, off Linux, or on a C library other than
    glibc (musl has no ``mallopt``).
    """
    if keep_mib <= 0 or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols in this process
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, keep_mib * 1024 * 1024) == 1
    )
    if applied:
        log.info(
            "malloc: buffers up to %d MiB from the heap, up to %d MiB of freed memory kept "
            "per heap (RADLENS_MALLOC_KEEP_MIB)",
            MMAP_THRESHOLD >> 20,
            keep_mib,
        )
    return applied
