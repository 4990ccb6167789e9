"""profiler.schema: constants from probes/lockprof.h and row classification."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import pytest

from profiler import schema

from .helpers import flat_fields, header_structs

C = schema.constants()
SPIN, READ, WRITE, RT, PERCPU, MUTEX = 1, 2, 4, 8, 16, 32
SRC_MMAP, SRC_CONTENTION = 0, 1


def test_probes_dir_holds_the_bpf_sources():
    assert (schema.probes_dir() / "lockprof.h").is_file()
    assert (schema.probes_dir() / "lockprof.bpf.c").is_file()


def test_defines_and_enums_are_parsed():
    assert schema.const("LP_HIST_SLOTS") == 40
    # The header says the last slot starts at 2^38 ns, "about 4.6 minutes".
    assert 2 ** (schema.const("LP_HIST_SLOTS") - 2) / 60e9 == pytest.approx(4.6, abs=0.05)
    assert schema.const("LP_MAX_HELD") == 4
    assert schema.const("LP_SRC_MMAP_LOCK") == 0
    assert schema.const("LP_SRC_CONTENTION") == 1
    assert schema.const("LP_KIND_WAIT") == 0
    assert schema.const("LP_KIND_HOLD") == 1
    with pytest.raises(KeyError):
        schema.const("LP_NO_SUCH_THING")


def test_lcb_flags_are_the_kernel_bits():
    """lock:contention_begin flags: LCB_F_SPIN..LCB_F_MUTEX are bits 0..5."""
    assert [C[f"LP_LCB_{n}"] for n in ("SPIN", "READ", "WRITE", "RT", "PERCPU", "MUTEX")] == [
        1,
        2,
        4,
        8,
        16,
        32,
    ]


KERNEL_LOCK_H = sorted(glob.glob("/usr/src/linux-headers-*/include/trace/events/lock.h"))


@pytest.mark.skipif(not KERNEL_LOCK_H, reason="no kernel headers with trace/events/lock.h")
@pytest.mark.parametrize("path", KERNEL_LOCK_H)
def test_lcb_flags_match_installed_kernel_headers(path):
    text = Path(path).read_text()
    kernel = {
        m.group(1): 1 << int(m.group(2))
        for m in re.finditer(r"#define\s+LCB_F_(\w+)\s+\(1U << (\d+)\)", text)
    }
    assert kernel, f"no LCB_F_* in {path}"
    for name, value in kernel.items():
        assert C[f"LP_LCB_{name}"] == value, name


def test_error_counters_are_dense_and_counted_by_lp_nr_errors():
    errors = {n: v for n, v in C.items() if n.startswith("LP_ERR_")}
    assert len(errors) == C["LP_NR_ERRORS"]
    assert sorted(errors.values()) == list(range(C["LP_NR_ERRORS"]))


def test_error_names():
    names = schema.error_names()
    assert len(names) == C["LP_NR_ERRORS"]
    assert names[0] == "ringbuf_full"
    assert names[C["LP_ERR_RELEASE_WITHOUT_ACQUIRE"]] == "release_without_acquire"
    assert "nr_errors" not in names.values()


def test_error_names_match_a_real_recording(rec):
    # A recording made before a counter was added lacks only the new ones.
    assert set(rec.meta["errors"]) <= set(schema.error_names().values())
    assert {"ringbuf_full", "stats_map_full", "end_without_begin"} <= set(rec.meta["errors"])


def test_masked_ring_indices_need_powers_of_two():
    # lockprof.bpf.c indexes nest[] with `& (LP_MAX_NEST - 1)`; the ring
    # buffer size must be a power of two pages.
    for name in ("LP_MAX_NEST", "LP_RINGBUF_PAGES"):
        value = C[name]
        assert value > 0 and value & (value - 1) == 0, name


def test_source_names_match_the_enum():
    expected = {
        C["LP_SRC_MMAP_LOCK"]: "mmap_lock",
        C["LP_SRC_CONTENTION"]: "contention",
        C["LP_SRC_SPEC"]: "lockspec",
    }
    assert expected == schema.SOURCE_NAMES


def test_lp_stats_is_all_u64():
    """read_stats() views each per-CPU value as uint64s: every scalar of
    struct lp_stats (and the lp_hist inside) must be a u64."""
    structs = header_structs()
    for name in ("lp_stats", "lp_hist"):
        for ftype, field, _length in structs[name]:
            assert ftype == "u64" or ftype.startswith("struct "), f"{name}.{field}: {ftype}"


def test_lp_stats_flattened_columns(stats_columns):
    n = C["LP_HIST_SLOTS"]

    def hist(h: str) -> list[str]:
        return [f"{h}.count", f"{h}.total_ns", f"{h}.max_ns"] + [
            f"{h}.slots[{i}]" for i in range(n)
        ]

    assert stats_columns == [
        "acquisitions",
        "contended",
        "releases",
        "downgrades",
        "failures",
        *hist("wait"),
        *hist("hold"),
    ]
    assert flat_fields(header_structs(), "lp_hist")[:3] == ["count", "total_ns", "max_ns"]


# -- classify ------------------------------------------------------------------------

CONTENTION_CASES = [
    # flags the kernel passes to lock:contention_begin, and what takes them
    (0, ("semaphore", "exclusive")),  # down() / __down_common
    (SPIN, ("spinlock", "exclusive")),  # queued_spin_lock_slowpath
    (SPIN | READ, ("rwlock", "read")),  # queued_read_lock_slowpath
    (SPIN | WRITE, ("rwlock", "write")),  # queued_write_lock_slowpath
    (READ, ("rwsem", "read")),  # rwsem_down_read_slowpath
    (WRITE, ("rwsem", "write")),  # rwsem_down_write_slowpath
    (RT, ("rt-mutex", "exclusive")),  # rt_mutex_slowlock
    (RT | READ, ("rwlock-rt", "read")),  # rwbase_rt (PREEMPT_RT)
    (RT | WRITE, ("rwlock-rt", "write")),
    (PERCPU | READ, ("percpu-rwsem", "read")),  # percpu_rwsem_wait(reader)
    (PERCPU | WRITE, ("percpu-rwsem", "write")),  # percpu_down_write
    (MUTEX, ("mutex", "exclusive")),  # __mutex_lock_common, sleeping
    (MUTEX | SPIN, ("mutex", "exclusive")),  # mutex optimistic spinning
]


@pytest.mark.parametrize(("flags", "expected"), CONTENTION_CASES)
def test_classify_contention(flags, expected):
    assert schema.classify(SRC_CONTENTION, flags) == expected


def test_classify_explicit_values():
    assert schema.classify(SRC_CONTENTION, 2) == ("rwsem", "read")
    assert schema.classify(SRC_CONTENTION, 4) == ("rwsem", "write")
    assert schema.classify(SRC_CONTENTION, 18) == ("percpu-rwsem", "read")
    assert schema.classify(SRC_CONTENTION, 20) == ("percpu-rwsem", "write")
    assert schema.classify(SRC_CONTENTION, 32) == ("mutex", "exclusive")
    assert schema.classify(SRC_CONTENTION, 33) == ("mutex", "exclusive")
    assert schema.classify(SRC_CONTENTION, 1) == ("spinlock", "exclusive")
    assert schema.classify(SRC_CONTENTION, 3) == ("rwlock", "read")
    assert schema.classify(SRC_CONTENTION, 5) == ("rwlock", "write")
    assert schema.classify(SRC_CONTENTION, 8) == ("rt-mutex", "exclusive")
    assert schema.classify(SRC_CONTENTION, 0) == ("semaphore", "exclusive")


@pytest.mark.parametrize(("flags", "mode"), [(READ, "read"), (WRITE, "write")])
def test_classify_mmap_lock_source(flags, mode):
    # The mmap_lock tracepoints set READ or WRITE only; the family decides the class.
    assert schema.classify(SRC_MMAP, flags) == ("mmap_lock", mode)


@pytest.mark.parametrize("flags", range(64))
def test_classify_every_flag_combination(flags):
    lock_class, mode = schema.classify(SRC_CONTENTION, flags)
    assert lock_class in {
        "semaphore",
        "spinlock",
        "rwlock",
        "rwsem",
        "rt-mutex",
        "rwlock-rt",
        "percpu-rwsem",
        "mutex",
    }
    if flags & MUTEX and not flags & PERCPU:
        assert (lock_class, mode) == ("mutex", "exclusive")
    elif flags & PERCPU:
        assert lock_class == "percpu-rwsem"
    if lock_class != "mutex":
        # a reader side exists iff READ or WRITE is set; READ wins
        if flags & READ:
            assert mode == "read"
        elif flags & WRITE:
            assert mode == "write"
        else:
            assert mode == "exclusive" or lock_class == "percpu-rwsem"
    # the mmap_lock family ignores every bit but READ
    assert schema.classify(SRC_MMAP, flags) == ("mmap_lock", "read" if flags & READ else "write")


def test_lock_types_drop_every_flag_combination_of_the_other_types():
    source = schema.const("LP_SRC_CONTENTION")
    spin, read, mutex = (schema.const(f"LP_LCB_{n}") for n in ("SPIN", "READ", "MUTEX"))
    assert schema.dropped_type_flags(schema.LOCK_TYPES) == []
    dropped = set(schema.dropped_type_flags(("spinlock",)))
    assert spin not in dropped
    # rwsem read, rwlock read, a spinning mutex, a semaphore: other types.
    assert {read, spin | read, spin | mutex, 0} <= dropped
    assert len(dropped) == schema.const("LP_TYPE_SLOTS") - 1
    # Every type any flags make is one --lock-types can name.
    kinds = {schema.classify(source, f)[0] for f in range(schema.const("LP_TYPE_SLOTS"))}
    assert kinds == set(schema.LOCK_TYPES)
