"""Which allocator pyarrow uses, for lockprof's memory (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import ctypes
import os

ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def arrow_allocates_with_malloc() -> None:
    """Load pyarrow with glibc's malloc as its memory pool.

    pandas keeps str columns in pyarrow's memory, allocated by mimalloc
    unless ARROW_DEFAULT_MEMORY_POOL says otherwise when pyarrow loads
    (pyarrow.set_memory_pool() later reaches only part of it). mimalloc
    keeps the pages it frees: building a million events' table at the end
    of a run left ~30 MB more resident than with malloc, whose free pages
    lockprof returns every 10 s (malloc_trim). The variable is set only
    while pyarrow loads, so that a command run by `lockprof run` does not
    inherit it. A user's own setting wins.
    """
    if ARROW_POOL_ENV in os.environ:
        return
    os.environ[ARROW_POOL_ENV] = "system"
    try:
        import pyarrow  # noqa: F401
    finally:
        del os.environ[ARROW_POOL_ENV]


def release_free_heap() -> None:
    """Give free heap back to the system (malloc_trim). glibc keeps the
    pages of freed blocks unless asked, so every temporary of a stage stays
    resident into the next one: after clang/LLVM compiled the probes (about
    50 MB here), after each batch of interval rows is packed, and between
    the stages that end a run, whose sum would otherwise be its peak."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: it stays
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
# glibc's default threshold, kept fixed (see map_large_blocks).
LARGE_BLOCK_BYTES = 128 * 1024


def map_large_blocks() -> None:
    """Blocks of LARGE_BLOCK_BYTES and more get mappings of their own, given
    back to the system when freed. By default glibc raises that threshold
    each time such a block is freed (up to 32 MB), after which numpy's and
    Arrow's large temporaries come from the heap, and what they leave
    between live blocks keeps its peak up: `show` of a 2-hour recording
    peaked at 522 MB, 431 with this; `show --json` 504 -> 339
    (bench/endrun.py). This process only: a command lockprof runs execs its
    own allocator."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: as it is
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)
