"""lockprof: eBPF live lock contention profiler (mmap_lock, rwsem, percpu rw-semaphores).

Load a recording into pandas with one call::

    import profiler
    rec = profiler.load("lockprof.lpr")
    rec.intervals   # per-interval, per-CPU aggregates (DataFrame, *_ns in nanoseconds)
    rec.events      # per-event stream over --threshold (DataFrame)
    rec.meta        # kernel, cpus, command, rusage, lost events...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from profiler.recording import Recording, load

__all__ = ["Recording", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: pandas takes 0.3 s to import, and the lockprof
    # program installs its signal handlers (profiler.signals) before that.
    if name in __all__:
        from profiler import recording

        return getattr(recording, name)
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")
