"""Which allocator pyarrow uses, for lockprof's memory (docs/reliability.md)."""

from __future__ import annotations

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
