#!/usr/bin/env python3
"""Run lockprof with its memory broken down, for attributing growth (root).

    sudo MEMTRACE_OUT=/tmp/mem.jsonl .venv/bin/python bench/memtrace.py record -a -q
    sudo .venv/bin/python bench/soak.py --minutes 10 --memtrace /tmp/mem.jsonl

The arguments are lockprof's. lockprof runs in this process, with tracemalloc
on and a thread that appends one JSON line every MEMTRACE_S seconds (15) to
MEMTRACE_OUT:
- py_mb: Python objects (tracemalloc; numpy's buffers are included);
- arrow_mb: pyarrow's memory pool (its allocations are not malloc's);
- malloc_*: glibc's heap (mallinfo2): arena (main-heap bytes from the OS),
  in use, free inside it, and large blocks mmapped separately;
- VmRSS, RssAnon, RssFile: the kernel's view;
- anon_*_mb: anonymous memory by the kind of mapping holding it (smaps).
With MEMTRACE_TOP=N, each line also lists the N source lines whose Python
allocations grew most since the first sample at or after MEMTRACE_BASE_S
seconds (0: the first; tracemalloc, 8 frames deep).
tracemalloc slows Python down, and MEMTRACE_TOP's snapshots (millions of
objects each) fragment Python's heap: RSS grew ~900 MB an hour with it, ~15
without. Use this to find what grows, not to measure lockprof's footprint
(bench/footprint.py and bench/soak.py without --memtrace do that).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _status_mb() -> dict[str, float]:
    wanted = ("VmRSS", "RssAnon", "RssFile")
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[name] = int(value.split()[0]) / 1024
    return out


def _anon_by_kind() -> dict[str, float]:
    """Anonymous memory (MB) by what most likely mapped it: glibc's main heap
    ([heap]), its per-thread arenas (64 MiB-aligned heaps), other unnamed
    mappings (Python's obmalloc arenas, 1 MiB each, merge into these; so do
    pyarrow's mimalloc segments and thread stacks), and file mappings made
    private by writes (libraries' data)."""
    kinds: dict[str, float] = {}
    kind = "other"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            start = int(head[0].split("-")[0], 16)
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]":
                kind = "anon_heap_mb"
            elif name.startswith("/"):
                kind = "anon_files_mb"
            elif name:
                kind = "anon_special_mb"
            elif start % (64 << 20) == 0:
                kind = "anon_malloc_arenas_mb"
            else:
                kind = "anon_unnamed_mb"
        elif line.startswith("Anonymous:"):
            kinds[kind] = kinds.get(kind, 0.0) + int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in sorted(kinds.items())}


def _top_growth(first: tracemalloc.Snapshot | None, count: int) -> list[str]:
    if first is None or count <= 0:
        return []
    # tracemalloc's own bookkeeping (its snapshots) is not lockprof's.
    mine = [tracemalloc.Filter(False, tracemalloc.__file__)]
    now = tracemalloc.take_snapshot().filter_traces(mine)
    stats = now.compare_to(first.filter_traces(mine), "lineno")
    return [f"{s.size_diff / 2**20:+.3f} MB {s.traceback[0]}" for s in stats[:count]]


def _sample(libc, started: float, first, top: int) -> dict:
    import pyarrow as pa

    heap = libc.mallinfo2()
    mb = 2**20
    return {
        "t": round(time.monotonic() - started, 1),
        "py_mb": round(tracemalloc.get_traced_memory()[0] / mb, 2),
        "arrow_mb": round(pa.total_allocated_bytes() / mb, 2),
        "arrow_pool": pa.default_memory_pool().backend_name,
        "malloc_arena_mb": round(heap.arena / mb, 2),
        "malloc_in_use_mb": round(heap.uordblks / mb, 2),
        "malloc_free_mb": round(heap.fordblks / mb, 2),
        "malloc_mmapped_mb": round(heap.hblkhd / mb, 2),
        **{k: round(v, 2) for k, v in _status_mb().items()},
        **_anon_by_kind(),
        "top": _top_growth(first, top),
    }


def _sampler(out_path: str, period_s: float, top: int, base_s: float) -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    started = time.monotonic()
    first = None
    with open(out_path, "a") as out:
        while True:
            time.sleep(period_s)
            if top and first is None and time.monotonic() - started >= base_s:
                first = tracemalloc.take_snapshot()
            out.write(json.dumps(_sample(libc, started, first, top)) + "\n")
            out.flush()


def main() -> int:
    out_path = os.environ.get("MEMTRACE_OUT")
    if not out_path:
        print("memtrace: set MEMTRACE_OUT to the JSON-lines file to write", file=sys.stderr)
        return 2
    top = int(os.environ.get("MEMTRACE_TOP", "0"))
    tracemalloc.start(8 if top else 1)
    period_s = float(os.environ.get("MEMTRACE_S", "15"))
    base_s = float(os.environ.get("MEMTRACE_BASE_S", "0"))
    threading.Thread(target=_sampler, args=(out_path, period_s, top, base_s), daemon=True).start()
    from profiler.cli.main import main as lockprof_main

    return lockprof_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
