"""The compiled-probe cache (profiler/probecache.py) with real eBPF: a run
with a cache entry compiles only the maps and loads its programs from the
entry, and counts exactly what a compiled run counts. A damaged entry, or
one the kernel refuses, costs a full compile, never the run.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import LOCKPROF, attach_to_held, lockprof_programs, rows_for, show_json

import profiler
from profiler import bpf, probecache
from profiler.errors import LockprofError
from profiler.probes import DEFAULT_FAMILIES

PAIRS = 1500


@pytest.fixture
def cache_env(tmp_path):
    directory = tmp_path / "cache"
    return directory, {probecache.CACHE_DIR_ENV: str(directory)}


def counted_run(lockprof_factory, tmp_path, env, name: str) -> tuple[dict, dict]:
    """attach -p to a held mmapcount doing PAIRS pairs: (its mmap_lock rows
    by mode, the recording's probes_compile)."""
    pid = attach_to_held(lockprof_factory, PAIRS, name, env=env)
    compiled = profiler.load(tmp_path / name).meta["probes_compile"]
    return rows_for(show_json(tmp_path / name), pid), compiled


def exact(rows: dict) -> None:
    write, read = rows["write"], rows["read"]
    assert write["acquisitions"] == 2 * PAIRS
    assert write["downgrades"] == PAIRS
    assert read["releases"] == PAIRS
    assert write["hold_ns"]["count"] == 2 * PAIRS
    assert read["hold_ns"]["count"] == PAIRS


def the_entry(directory) -> dict:
    entries = list(directory.glob("*.json"))
    assert len(entries) == 1, entries
    return json.loads(entries[0].read_text())


def test_a_cached_run_counts_what_a_compiled_run_counts(lockprof_factory, tmp_path, cache_env):
    """The cached run opens ten more fds before compiling (a test hook), so
    that its maps get other fd numbers than the run that wrote the entry:
    programs not pointed at the new maps would load with fds that are no
    maps, or another map's, and fail or miscount."""
    directory, env = cache_env
    first, compiled = counted_run(lockprof_factory, tmp_path, env, "first.lpr")
    assert compiled["from_cache"] is False
    entry = the_entry(directory)
    assert all(program["loaded_as"] for program in entry["programs"].values())
    assert {"lp_mmap_start", "lp_mmap_acquired", "lp_mmap_released"} <= set(entry["programs"])
    shifted = {**env, bpf.HOLD_FDS_ENV: "10"}
    second, cached = counted_run(lockprof_factory, tmp_path, shifted, "second.lpr")
    assert cached["from_cache"] is True
    exact(first)
    exact(second)


def test_a_damaged_entry_is_compiled_again_and_rewritten(lockprof_factory, tmp_path, cache_env):
    directory, env = cache_env
    counted_run(lockprof_factory, tmp_path, env, "first.lpr")
    (path,) = directory.glob("*.json")
    path.write_text(path.read_text()[:1000])
    rows, compiled = counted_run(lockprof_factory, tmp_path, env, "second.lpr")
    assert compiled["from_cache"] is False
    exact(rows)
    assert the_entry(directory)["format"] == probecache.FORMAT  # whole again


def test_an_entry_the_kernel_refuses_falls_back_to_a_compile(lockprof_factory, tmp_path, cache_env):
    """Programs whose instructions the verifier rejects (here: every one
    ends at its first instruction, with r0 unset): the run compiles, with
    exact counts, and leaves a marker instead of an entry, so that later
    runs compile without trying the cached path again."""
    directory, env = cache_env
    counted_run(lockprof_factory, tmp_path, env, "first.lpr")
    (path,) = directory.glob("*.json")
    entry = json.loads(path.read_text())
    for program in entry["programs"].values():
        program["insns"] = base64.b64encode(bytes([0x95, 0, 0, 0, 0, 0, 0, 0])).decode()
        program["map_loads"] = []
    path.write_text(json.dumps(entry))
    rows, compiled = counted_run(lockprof_factory, tmp_path, env, "second.lpr")
    assert compiled["from_cache"] is False
    exact(rows)
    assert the_entry(directory).get("refused") is True
    rows, compiled = counted_run(lockprof_factory, tmp_path, env, "third.lpr")
    assert compiled["from_cache"] is False
    exact(rows)
    assert the_entry(directory).get("refused") is True  # not written back


def listing(directory) -> list[tuple[str, float]]:
    if not directory.is_dir():
        return []
    return sorted((p.name, p.stat().st_mtime) for p in directory.iterdir())


def test_off_compiles_every_time_and_writes_nothing(lockprof_factory, tmp_path):
    env = {probecache.CACHE_DIR_ENV: "off"}
    suite = Path(os.environ[probecache.CACHE_DIR_ENV])
    before = listing(suite), listing(probecache.DEFAULT_DIR)
    for name in ("a.lpr", "b.lpr"):
        rows, compiled = counted_run(lockprof_factory, tmp_path, env, name)
        assert compiled["from_cache"] is False
        exact(rows)
    assert (listing(suite), listing(probecache.DEFAULT_DIR)) == before


def precompile(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LOCKPROF, "precompile", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def cache_check(env: dict) -> str:
    """lockprof doctor's probe cache line."""
    done = subprocess.run(
        [*LOCKPROF, "doctor", "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    return checks["probe cache"]["detail"]


def test_precompile_makes_the_first_collection_load_from_the_cache(
    lockprof_factory, tmp_path, cache_env
):
    """make setup's `lockprof precompile`: the entry it keeps is the one a
    default collection looks for, and that first collection counts exactly
    from it. A second precompile finds it; --with offcpu is another entry.
    Nothing stays loaded."""
    directory, env = cache_env
    done = precompile(env, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["already_cached"] is False and result["compile_s"] > 0
    assert result["directory"] == str(directory)
    assert all(program["loaded_as"] for program in the_entry(directory)["programs"].values())
    assert lockprof_programs() == []
    again = precompile(env)
    assert again.returncode == 0 and "already in" in again.stdout, again
    rows, compiled = counted_run(lockprof_factory, tmp_path, env, "first.lpr")
    assert compiled["from_cache"] is True
    exact(rows)
    assert len(list(directory.glob("*.json"))) == 1  # the collection kept no other
    offcpu = json.loads(precompile(env, "--with", "offcpu", "--json").stdout)
    assert offcpu["already_cached"] is False and "offcpu" in offcpu["families"]
    assert len(list(directory.glob("*.json"))) == 2
    # doctor keeps an entry of its own (every opt-in family), not this one
    assert "a default collection's among them" in cache_check(env)
    empty = {probecache.CACHE_DIR_ENV: str(tmp_path / "empty")}
    assert "none for a default collection yet" in cache_check(empty)


def test_a_precompile_that_fails_leaves_nothing_loaded_and_no_entry(monkeypatch, cache_env):
    """In this process, so that a program left loaded is held here: the
    entry cannot be kept after every program was loaded."""
    directory, _env = cache_env
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, str(directory))

    def cannot_keep(bpf_object):
        assert len(bpf_object.funcs) >= 5  # every program was loaded
        raise LockprofError("kept nowhere, for the test")

    monkeypatch.setattr(bpf, "keep_compiled", cannot_keep)
    with pytest.raises(LockprofError, match="kept nowhere, for the test"):
        bpf.precompile(DEFAULT_FAMILIES, probecache.usable_dir())
    assert lockprof_programs() == []
    assert not list(directory.glob("*.json"))


def test_precompile_with_the_cache_off_says_so_in_one_line():
    done = precompile({probecache.CACHE_DIR_ENV: "off"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"lockprof: the compiled-probe cache is off ({probecache.CACHE_DIR_ENV}=off)"
    ]


def test_precompile_of_a_refused_key_names_the_marker_to_remove(tmp_path, cache_env, monkeypatch):
    """A key whose cached path failed in the last day is not compiled again
    by precompile (collections compile it): one line names the marker."""
    directory, env = cache_env
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, str(directory))
    _flags, key = bpf._flags_and_key(DEFAULT_FAMILIES)
    probecache.mark_refused(key)
    done = precompile(env)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("lockprof: this kernel refused the cached probes")
    assert line.endswith(f"remove {directory / (key + '.json')} to try again")
