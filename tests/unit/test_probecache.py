"""profiler/probecache.py: finding and relocating map loads in BPF
instructions, the cache key, and the entry files (trust, corruption,
pruning). The kernel side (a cached run counts as a compiled one does) is
tests/integration/test_probe_cache.py."""

from __future__ import annotations

import json
import os
import struct

import pytest

from profiler import probecache

INSN = struct.Struct("<BBhi")


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return INSN.pack(code, (src << 4) | dst, off, imm)


def ld_map(fd: int, dst: int = 1) -> bytes:
    """ld_imm64 of a map's fd (two slots; the second carries the high half)."""
    return insn(0x18, dst, src=1, imm=fd) + insn(0, imm=0)


def ld_constant(value: int) -> bytes:
    return insn(0x18, 2, src=0, imm=value) + insn(0, imm=0)


MOV = insn(0xB7, 0, imm=0)  # r0 = 0
EXIT = insn(0x95)


def program() -> bytes:
    # A constant whose low half is a map's fd must not be taken for a map
    # load, nor its second slot for an instruction.
    return MOV + ld_map(7) + ld_constant(9) + ld_map(9) + insn(0x18, src=0, imm=7) + EXIT


def test_map_loads_names_each_map_load_by_index():
    assert probecache.map_loads(program(), {7: "lp_stats", 9: "lp_config"}) == (
        (1, "lp_stats"),
        (5, "lp_config"),
    )


def test_a_load_of_an_unknown_fd_or_of_a_map_value_is_not_cached():
    assert probecache.map_loads(ld_map(8) + EXIT, {7: "lp_stats"}) is None
    map_value = insn(0x18, 1, src=2, imm=7) + insn(0, imm=16)  # BPF_PSEUDO_MAP_VALUE
    assert probecache.map_loads(map_value + EXIT, {7: "lp_stats"}) is None


def test_relocated_points_each_load_at_the_new_fd_and_changes_nothing_else():
    original = program()
    cached = probecache.CachedProgram(original, probecache.map_loads(original, {7: "a", 9: "b"}))
    moved = probecache.relocated(cached, {"a": 41, "b": 42})
    assert probecache.map_loads(moved, {41: "a", 42: "b"}) == cached.map_loads
    slots = range(len(original) // 8)
    changed = [i for i in slots if original[i * 8 : i * 8 + 8] != moved[i * 8 : i * 8 + 8]]
    assert changed == [1, 5]
    assert INSN.unpack_from(moved, 8)[3] == 41 and INSN.unpack_from(moved, 40)[3] == 42
    with pytest.raises(KeyError):
        probecache.relocated(cached, {"a": 41})


def test_relocated_refuses_an_index_that_is_not_a_map_load():
    cached = probecache.CachedProgram(MOV + EXIT, ((0, "a"),))
    with pytest.raises(ValueError, match="not a map load"):
        probecache.relocated(cached, {"a": 3})


def test_the_key_changes_with_each_input():
    base = (b"source", b"header", ["-DA=1", "-DB=2"], "bcc 0.26 6.18")
    keys = {
        probecache.cache_key(*base),
        probecache.cache_key(b"source2", *base[1:]),
        probecache.cache_key(base[0], b"header2", *base[2:]),
        probecache.cache_key(*base[:2], ["-DA=1", "-DB=3"], base[3]),
        probecache.cache_key(*base[:2], ["-DA=1-DB=2"], base[3]),  # not the same flags joined
        probecache.cache_key(*base[:3], "bcc 0.26 6.19"),
    }
    assert len(keys) == 6
    assert probecache.cache_key(*base) == probecache.cache_key(*base)


def entry(key: str = "k1") -> probecache.CachedProbes:
    prog = program()
    return probecache.CachedProbes(
        key,
        "GPL",
        0,
        {
            "lp_mmap_start": probecache.CachedProgram(prog, ((1, "a"), (5, "b")), (17, -1)),
            "lp_learn_rq": probecache.CachedProgram(MOV + EXIT, (), None),
        },
        {"a": (1, 4, 8), "b": (2, 4, 48)},
    )


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "probes"
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, str(directory))
    return directory


def test_an_entry_reads_back_as_it_was_written(cache):
    path = probecache.store(entry())
    assert path is not None and path.parent == cache
    assert oct(cache.stat().st_mode & 0o777) == "0o700"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert probecache.load("k1") == entry()
    assert probecache.load("k2") is None


def test_an_entry_holding_another_key_is_not_used(cache):
    path = probecache.store(entry())
    (cache / "k2.json").write_bytes(path.read_bytes())  # renamed, say
    (cache / "k2.json").chmod(0o600)
    assert probecache.load("k2") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],
        lambda text: text.replace('"format": 1', '"format": 99'),
        lambda text: text.replace('"insns": "', '"insns": "!'),
        lambda text: json.dumps({"format": 1, "key": "k1"}),
        lambda text: "[]",
    ],
    ids=["truncated", "format", "base64", "fields", "not-an-object"],
)
def test_a_damaged_entry_is_a_miss_not_an_error(cache, damage):
    path = probecache.store(entry())
    path.write_text(damage(path.read_text()))
    assert probecache.load("k1") is None


def test_entries_others_may_write_are_never_read(cache):
    path = probecache.store(entry())
    path.chmod(0o620)
    assert probecache.load("k1") is None
    path.chmod(0o600)
    cache.chmod(0o777)
    assert probecache.load("k1") is None
    assert probecache.store(entry("k3")) is None  # nor written there
    cache.chmod(0o700)
    assert probecache.load("k1") == entry()


def test_an_entry_owned_by_another_user_is_never_read(cache, monkeypatch):
    probecache.store(entry())
    monkeypatch.setattr(os, "geteuid", lambda: 12345)
    assert probecache.load("k1") is None


def test_off_disables_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, "off")
    assert probecache.cache_dir() is None
    assert probecache.store(entry()) is None and probecache.load("k1") is None
    monkeypatch.delenv(probecache.CACHE_DIR_ENV)
    assert probecache.cache_dir() == probecache.DEFAULT_DIR


def test_discard_removes_the_entry(cache):
    probecache.store(entry())
    probecache.discard("k1")
    assert probecache.load("k1") is None
    probecache.discard("k1")  # already gone: no error


def test_the_least_recently_used_entries_are_pruned(cache, monkeypatch):
    monkeypatch.setattr(probecache, "KEEP_ENTRIES", 3)
    for number in range(4):
        path = probecache.store(entry(f"k{number}"))
        os.utime(path, (1000 + number, 1000 + number))
    # k0 was the oldest when k3 came: gone. Reading k1 makes it the newest,
    # so the next entry pushes out k2.
    assert sorted(p.stem for p in cache.glob("*.json")) == ["k1", "k2", "k3"]
    assert probecache.load("k1") is not None
    probecache.store(entry("k4"))
    assert sorted(p.stem for p in cache.glob("*.json")) == ["k1", "k3", "k4"]
