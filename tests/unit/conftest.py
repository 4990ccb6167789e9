"""Shared fixtures of the no-root unit tests.

Nothing here (or in any unit test) imports profiler.bpf or bcc, loads BPF or
needs root: the whole suite must pass as an unprivileged user.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

import profiler

from .helpers import RECORDING, Snap, flat_fields, header_structs, interval_row

# No example database, and hypothesis' other caches out of the work tree (it
# would write .hypothesis/ into the current directory, which an unprivileged
# user may not be able to); no deadline: CI machines are slow and noisy.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"lockprof-unit-hypothesis-{os.getuid()}")
settings.register_profile(
    "lockprof-unit",
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("lockprof-unit")


BPF_MODULES = ("profiler.bpf", "bcc")


@contextlib.contextmanager
def no_bpf_import(what: str = "unit tests"):
    """Fail if the code run inside drags in the BPF side (it needs bcc and
    root). (In a whole-tree run the integration tests may have imported it
    already.)"""
    before = {m for m in BPF_MODULES if m in sys.modules}
    yield
    leaked = [m for m in BPF_MODULES if m in sys.modules and m not in before]
    assert not leaked, f"{what} must not import {leaked}"


@pytest.fixture(autouse=True)
def _no_bpf_import():
    """Every unit test, under no_bpf_import (a module-scoped fixture's
    imports happen outside it: such a fixture uses it itself)."""
    with no_bpf_import():
        yield


# -- the real recording ---------------------------------------------------------


@pytest.fixture(scope="session")
def recording_path() -> Path:
    assert RECORDING.is_file(), f"{RECORDING} is missing (copy of a real mmapcount run)"
    return RECORDING


@pytest.fixture(scope="session")
def recording_bytes(recording_path) -> bytes:
    return recording_path.read_bytes()


@pytest.fixture
def rec(recording_path) -> profiler.Recording:
    """A fresh Recording per test (tests may modify it). The committed
    recording predates the optional off-CPU and sample tables: they get a
    few synthetic rows, so that every table has values to check."""
    loaded = profiler.load(recording_path)
    if loaded.offcpu.empty:
        loaded.offcpu = pd.DataFrame(
            {
                "tgid": [42, 42],
                "comm": ["cgmove", "cgmove"],
                "stack_id": [-1, -14],
                "count": [3, 1],
                "total_ns": [3_000_000, 5_000],
                "max_ns": [2_000_000, 5_000],
            }
        )
    if loaded.samples.empty:
        loaded.samples = pd.DataFrame({"stack_id": [-1], "cpu": [0], "count": [7]})
    return loaded


@pytest.fixture(scope="session")
def stats_columns() -> list[str]:
    """Flattened struct lp_stats: one name per u64 of a per-CPU map value."""
    return flat_fields(header_structs(), "lp_stats")


@pytest.fixture
def snap(stats_columns):
    """snap(cpus=2) -> an empty Snap over the real lp_stats columns."""
    return lambda cpus=2: Snap(stats_columns, cpus)


@pytest.fixture
def make_row():
    return interval_row
