"""profiler.hist: the log2 histogram the BPF side fills, and its percentiles."""

from __future__ import annotations

import ctypes
import math
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from profiler import hist, schema

SLOTS = schema.const("LP_HIST_SLOTS")
U64_MAX = 2**64 - 1

# Every power-of-two boundary of a u64, and its neighbours.
BOUNDARIES = sorted({v for k in range(64) for v in (2**k - 1, 2**k, 2**k + 1)} | {U64_MAX})


# -- slot_of mirrors lp_slot() ------------------------------------------------------


def lp_slot_source() -> str:
    """The text of lp_slot() in probes/lockprof.bpf.c."""
    text = (schema.probes_dir() / "lockprof.bpf.c").read_text()
    match = re.search(
        r"^static __always_inline u32 lp_slot\(u64 ns\)\n\{\n.*?^\}\n", text, re.S | re.M
    )
    assert match, "lp_slot() not found in lockprof.bpf.c"
    return match.group(0)


@pytest.fixture(scope="module")
def c_lp_slot(tmp_path_factory):
    """lp_slot() itself, cut out of the BPF source and compiled for the host."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler to build lp_slot() for the host")
    work = tmp_path_factory.mktemp("lp_slot")
    source = work / "lp_slot.c"
    source.write_text(
        "#include <stdint.h>\n"
        "typedef uint32_t u32;\ntypedef uint64_t u64;\n"
        "#define __always_inline inline __attribute__((always_inline))\n"
        f"#define LP_HIST_SLOTS {SLOTS}\n"
        + lp_slot_source()
        + "u32 lp_slot_host(u64 ns) { return lp_slot(ns); }\n"
    )
    library = work / "lp_slot.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(source)],
        check=True,
        capture_output=True,
    )
    function = ctypes.CDLL(str(library)).lp_slot_host
    function.argtypes = [ctypes.c_uint64]
    function.restype = ctypes.c_uint32
    return function


def reference_slot(ns: int) -> int:
    """The definition in lockprof.h: slot 0 = 0 ns, slot s >= 1 = [2^(s-1), 2^s),
    the last slot takes everything larger."""
    if ns == 0:
        return 0
    s = 1
    while not (2 ** (s - 1) <= ns < 2**s):
        s += 1
    return min(s, SLOTS - 1)


@pytest.mark.parametrize(
    ("ns", "slot"),
    [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 2),
        (4, 3),
        (7, 3),
        (8, 4),
        (1000, 10),
        (1023, 10),
        (1024, 11),
        (2**38 - 1, 38),
        (2**38, 39),
        (2**39, 39),
        (U64_MAX, 39),
    ],
)
def test_slot_of_known_values(ns, slot):
    assert hist.slot_of(ns, SLOTS) == slot


def test_slot_of_negative_is_slot_zero():
    assert hist.slot_of(-5, SLOTS) == 0


def test_slot_of_matches_definition_at_every_power_of_two():
    for ns in BOUNDARIES:
        assert hist.slot_of(ns, SLOTS) == reference_slot(ns), ns


def test_slot_of_matches_compiled_lp_slot_at_every_power_of_two(c_lp_slot):
    for ns in BOUNDARIES:
        assert hist.slot_of(ns, SLOTS) == c_lp_slot(ns), ns


@given(st.integers(min_value=0, max_value=U64_MAX))
def test_slot_of_matches_compiled_lp_slot(c_lp_slot, ns):
    assert hist.slot_of(ns, SLOTS) == c_lp_slot(ns)


@given(st.integers(min_value=1, max_value=2**40))
def test_slot_bounds_contain_the_value(ns):
    slot = hist.slot_of(ns, SLOTS)
    low, high = hist.slot_bounds(slot)
    assert low <= ns
    if slot < SLOTS - 1:
        assert ns < high


def test_slot_bounds():
    assert hist.slot_bounds(0) == (0.0, 1.0)
    assert hist.slot_bounds(1) == (1.0, 2.0)
    assert hist.slot_bounds(11) == (1024.0, 2048.0)


# -- percentile ---------------------------------------------------------------------


def slots_with(**counts: int) -> list[int]:
    """A histogram with counts at the given slots: slots_with(s5=10)."""
    out = [0] * SLOTS
    for name, count in counts.items():
        out[int(name[1:])] = count
    return out


def test_percentile_empty_is_none():
    assert hist.percentile([0] * SLOTS, 0.5) is None
    assert hist.percentile([], 0.99) is None
    assert hist.percentile([0] * SLOTS, 0.99, max_ns=123) is None


def test_percentile_single_bucket_interpolates_inside_the_slot():
    # 10 samples in slot 5 = [16, 32): the q-quantile is 16 + 16 q.
    slots = slots_with(s5=10)
    assert hist.percentile(slots, 0.5) == pytest.approx(24.0)
    assert hist.percentile(slots, 0.99) == pytest.approx(31.84)
    assert hist.percentile(slots, 1.0) == pytest.approx(32.0)
    assert hist.percentile(slots, 0.1) == pytest.approx(17.6)


def test_percentile_within_the_bucket_of_the_exact_maximum():
    """Ten samples in [16, 32), the largest 20: none lies above 20, so the
    bucket is interpolated over 16..20 (the median was 20, clamped from 24)."""
    slots = slots_with(s5=10)
    assert hist.percentile(slots, 0.5, max_ns=20) == pytest.approx(18.0)
    assert hist.percentile(slots, 0.1, max_ns=20) == pytest.approx(16.4)
    assert hist.percentile(slots, 0.95, max_ns=20) == pytest.approx(20.0)  # rank of the largest


def test_one_sample_is_every_percentile():
    slots = slots_with(s9=1)  # one wait of 478 ns, in [256, 512)
    for q in (0.01, 0.5, 0.99):
        assert hist.percentile(slots, q, max_ns=478) == 478.0
    (p50,) = hist.percentiles(np.array([slots]), 0.5, np.array([478]))
    assert p50 == 478.0


def test_percentile_two_buckets():
    # 1 sample in [1, 2), 3 samples in [512, 1024).
    slots = slots_with(s1=1, s10=3)
    assert hist.percentile(slots, 0.25) == pytest.approx(2.0)  # rank 1: top of slot 1
    assert hist.percentile(slots, 0.5) == pytest.approx(512 + 512 / 3)  # rank 2: 1/3 in
    assert hist.percentile(slots, 1.0) == pytest.approx(1024.0)
    assert hist.percentile(slots, 1.0, max_ns=900) == pytest.approx(900.0)


def test_percentile_skips_empty_slots_between_buckets():
    slots = slots_with(s3=2, s20=2)  # [4, 8) and [2^19, 2^20)
    assert hist.percentile(slots, 0.5) == pytest.approx(8.0)
    assert hist.percentile(slots, 0.75) == pytest.approx(2**19 * 1.5)


def test_percentile_zero_slot_with_max_zero():
    assert hist.percentile(slots_with(s0=4), 0.5, max_ns=0) == 0.0


def test_percentile_last_slot_reaches_up_to_max_ns():
    # The last slot is open-ended: with the exact max known it spans [2^38, max].
    low = 2.0**38
    slots = slots_with(s39=2)
    assert hist.percentile(slots, 0.5, max_ns=10**12) == pytest.approx(low + (1e12 - low) / 2)
    assert hist.percentile(slots, 1.0, max_ns=10**12) == pytest.approx(1e12)
    assert hist.percentile(slots, 0.5) == pytest.approx(low * 1.5)


histograms = st.lists(st.integers(min_value=0, max_value=1000), min_size=SLOTS, max_size=SLOTS)
quantiles = st.floats(min_value=1e-6, max_value=1.0, allow_nan=False)


@given(histograms, quantiles, quantiles, st.one_of(st.none(), st.integers(0, 2**40)))
@example([0] * 5 + [3] + [0] * 33 + [1], 0.5, 0.9, 2**38 + 5)
def test_percentile_is_monotonic_in_q(slots, q1, q2, max_ns):
    q1, q2 = sorted((q1, q2))
    p1 = hist.percentile(slots, q1, max_ns)
    p2 = hist.percentile(slots, q2, max_ns)
    if sum(slots) == 0:
        assert p1 is None and p2 is None
        return
    assert p1 <= p2 + 1e-9 * max(1.0, abs(p2))
    if max_ns is not None:
        assert p2 <= max_ns


@given(
    st.lists(st.integers(min_value=0, max_value=2**41), min_size=1, max_size=200),
    st.sampled_from([0.01, 0.25, 0.5, 0.9, 0.99, 1.0]),
)
def test_percentile_lands_in_the_slot_of_the_true_quantile(samples, q):
    """Fill a histogram as BPF does; the estimate lies in the slot holding the
    exact q-quantile sample and never above the exact maximum."""
    slots = [0] * SLOTS
    for ns in samples:
        slots[hist.slot_of(ns, SLOTS)] += 1
    estimate = hist.percentile(slots, q, max(samples))
    ordered = sorted(samples)
    true = ordered[max(1, math.ceil(q * len(samples))) - 1]
    low, high = hist.slot_bounds(hist.slot_of(true, SLOTS))
    assert low <= estimate <= max(samples)
    if hist.slot_of(true, SLOTS) < SLOTS - 1:
        assert estimate <= high


# -- summarize ----------------------------------------------------------------------


def test_summarize_empty():
    assert hist.summarize(0, 0, 0, [0] * SLOTS) == {
        "count": 0,
        "total": 0,
        "avg": None,
        "p50": None,
        "p99": None,
        "max": None,
    }


def test_summarize_figures():
    slots = slots_with(s5=10)  # ten samples in [16, 32), totalling 250 ns, max 30
    summary = hist.summarize(10, 250, 30, slots)
    assert summary["count"] == 10
    assert summary["total"] == 250
    assert summary["avg"] == pytest.approx(25.0)
    assert summary["p50"] == pytest.approx(23.0)  # 16..30: no sample above the max
    assert summary["p99"] == pytest.approx(30.0)  # rank 9.9: the largest sample, the max
    assert summary["max"] == 30
    assert all(type(summary[k]) is int for k in ("count", "total", "max"))
