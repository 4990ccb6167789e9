"""lockprof: eBPF live lock contention profiler (mmap_lock, rwsem, percpu rw-semaphores).

Load a recording into pandas with one call::

    import profiler
    rec = profiler.load("lockprof.lpr")
    rec.intervals   # per-interval, per-CPU aggregates (DataFrame, *_ns in nanoseconds)
    rec.events      # per-event stream over --threshold (DataFrame)
    rec.meta        # kernel, cpus, command, rusage, lost events...
"""

from profiler.recording import Recording, load

__all__ = ["Recording", "load"]
__version__ = "0.1.0"
