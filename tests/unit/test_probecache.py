"""profiler/probecache.py: finding and relocating map loads in BPF
instructions, the cache key, and the entry files (trust, corruption,
pruning). The kernel side (a cached run counts as a compiled one does) is
tests/integration/test_probe_cache.py."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import time

import pytest

from profiler import probecache
from profiler.errors import LockprofError

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


def key(number: int) -> str:
    """A key as cache_key makes them (sha256 in hex): pruning takes no other name."""
    return f"{number:064x}"


K1, K2, K3 = key(1), key(2), key(3)


def entry(key: str = K1) -> probecache.CachedProbes:
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
    assert probecache.load(K1) == entry()
    assert probecache.load(K2) is None


def test_an_entry_holding_another_key_is_not_used(cache):
    path = probecache.store(entry())
    (cache / f"{K2}.json").write_bytes(path.read_bytes())  # renamed, say
    (cache / f"{K2}.json").chmod(0o600)
    assert probecache.load(K2) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],
        lambda text: text.replace('"format": 1', '"format": 99'),
        lambda text: text.replace('"insns": "', '"insns": "!'),
        lambda text: json.dumps({"format": 1, "key": K1}),
        lambda text: "[]",
    ],
    ids=["truncated", "format", "base64", "fields", "not-an-object"],
)
def test_a_damaged_entry_is_a_miss_not_an_error(cache, damage):
    path = probecache.store(entry())
    path.write_text(damage(path.read_text()))
    assert probecache.load(K1) is None


def test_entries_others_may_write_are_never_read(cache):
    path = probecache.store(entry())
    path.chmod(0o620)
    assert probecache.load(K1) is None
    path.chmod(0o600)
    cache.chmod(0o777)
    assert probecache.load(K1) is None
    assert probecache.store(entry(K3)) is None  # nor written there
    cache.chmod(0o700)
    assert probecache.load(K1) == entry()


def test_an_entry_owned_by_another_user_is_never_read(cache):
    path = probecache.store(entry())
    os.chown(path, 12345, 12345)  # the directory stays this user's
    assert probecache.load(K1) is None
    os.chown(path, os.geteuid(), os.getegid())
    assert probecache.load(K1) == entry()


def test_off_disables_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, "off")
    assert probecache.cache_dir() is None
    assert probecache.store(entry()) is None and probecache.load(K1) is None
    monkeypatch.delenv(probecache.CACHE_DIR_ENV)
    assert probecache.cache_dir() == probecache.DEFAULT_DIR


def test_only_root_keeps_a_cache(monkeypatch, tmp_path):
    """A user given CAP_BPF and CAP_PERFMON compiles every time: entries of
    theirs could be written by any of their processes without those
    capabilities."""
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, str(tmp_path / "probes"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert probecache.cache_dir() is None
    assert "not root" in probecache.off_reason()


def test_a_refused_key_is_marked_not_rewritten(cache):
    """The cached path failed for this key (bpf._from_cache): a marker
    takes the entry's place, so that the run's compile does not write back
    an entry that fails again."""
    probecache.store(entry())
    assert not probecache.refused(K1)
    probecache.mark_refused(K1)
    assert probecache.refused(K1) and probecache.load(K1) is None
    assert not probecache.refused(K2)
    assert probecache.entries(cache) == 1  # pruned as an entry is
    # A day later the key is tried again: the failure may have passed.
    path = cache / f"{K1}.json"
    marker = json.loads(path.read_text())
    marker["refused_at"] -= probecache.REFUSED_FOR_S + 1
    path.write_text(json.dumps(marker))
    assert not probecache.refused(K1)


def test_the_least_recently_used_entries_are_pruned(cache, monkeypatch):
    monkeypatch.setattr(probecache, "KEEP_ENTRIES", 3)
    for number in range(4):
        path = probecache.store(entry(key(number)))
        os.utime(path, (1000 + number, 1000 + number))
    # key 0 was the oldest when key 3 came: gone. Reading key 1 makes it the
    # newest, so the next entry pushes out key 2.
    assert sorted(p.stem for p in cache.glob("*.json")) == [key(1), key(2), key(3)]
    assert probecache.load(key(1)) is not None
    probecache.store(entry(key(4)))
    assert sorted(p.stem for p in cache.glob("*.json")) == [key(1), key(3), key(4)]
    assert probecache.entries(cache) == 3


def test_pruning_leaves_every_other_file_alone(cache, monkeypatch):
    """LOCKPROF_CACHE_DIR may name a directory with files of its own."""
    monkeypatch.setattr(probecache, "KEEP_ENTRIES", 1)
    cache.mkdir(mode=0o700)
    (cache / "settings.json").write_text("{}")
    (cache / f"{key(9)}.json.bak").write_text("{}")
    probecache.store(entry(key(1)))
    probecache.store(entry(key(2)))
    names = sorted(p.name for p in cache.iterdir())
    assert names == [f"{key(2)}.json", f"{key(9)}.json.bak", "settings.json"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data["programs"]["lp_mmap_start"].update(map_loads=[[1, "a"]]),  # one left out
        lambda data: data["programs"]["lp_mmap_start"].update(map_loads=[[1, "a"], [3, "b"]]),
        lambda data: data["programs"]["lp_mmap_start"].update(map_loads=[[1, "a"], [5, "zz"]]),
        lambda data: data["programs"]["lp_mmap_start"].update(
            insns=base64.b64encode(program()[:-3]).decode()
        ),
        lambda data: data.update(programs=[]),
        lambda data: data["programs"]["lp_mmap_start"].update(map_loads=[[10**6, "a"]]),
    ],
    ids=["load-left-out", "constant-as-map", "unknown-map", "partial-insn", "list", "out-of-range"],
)
def test_an_entry_that_does_not_hold_together_is_a_miss(cache, damage):
    path = probecache.store(entry())
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    assert probecache.load(K1) is None


def test_a_symlinked_directory_or_entry_is_never_read(cache, tmp_path):
    probecache.store(entry())
    real = tmp_path / "real"
    cache.rename(real)
    cache.symlink_to(real)
    assert probecache.load(K1) is None
    cache.unlink()
    real.rename(cache)
    moved = tmp_path / "elsewhere.json"
    (cache / f"{K1}.json").rename(moved)
    (cache / f"{K1}.json").symlink_to(moved)
    assert probecache.load(K1) is None


def test_a_directory_others_could_replace_is_never_used(tmp_path, monkeypatch):
    """Its parent writable by all, without the sticky bit: anyone could put
    another directory in its place."""
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, str(open_parent / "probes"))
    assert probecache.store(entry()) is None
    assert probecache.load(K1) is None
    open_parent.chmod(0o1777)  # sticky, as /tmp: no one can rename what is not theirs
    assert probecache.store(entry()) is not None
    assert probecache.load(K1) == entry()


def test_missing_parents_are_made_0755_whatever_the_umask(tmp_path, monkeypatch):
    directory = tmp_path / "a" / "b" / "probes"
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, str(directory))
    old = os.umask(0)
    try:
        probecache.store(entry())
    finally:
        os.umask(old)
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "a" / "b").stat().st_mode & 0o777) == "0o755"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"


def test_every_program_in_the_source_has_a_known_program_type():
    """A cached run loads each program before attaching, as the type its
    context gives (CONTEXT_TYPES): a program with another context would be
    loaded only when attached, past the fallback to a compile."""
    from profiler import schema

    text = (schema.probes_dir() / "lockprof.bpf.c").read_text()
    contexts = probecache.program_contexts(text)
    assert len(contexts) == text.count("\nLP_PROGRAM int ") >= 18
    assert set(contexts.values()) <= set(probecache.CONTEXT_TYPES)


def test_usable_dir_says_why_there_is_none(monkeypatch, cache):
    assert probecache.usable_dir() == cache  # absent: made at the first write
    probecache.store(entry())
    cache.chmod(0o770)
    with pytest.raises(LockprofError, match=re.escape(f"cache at {cache}: not a directory")):
        probecache.usable_dir()
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, "off")
    with pytest.raises(LockprofError, match=r"^the compiled-probe cache is off \("):
        probecache.usable_dir()


def test_unusable_says_why_for_what_cannot_hold_entries(tmp_path, cache):
    assert probecache.unusable(cache) is None  # absent: made at the first write
    probecache.store(entry())
    assert probecache.unusable(cache) is None
    cache.chmod(0o770)
    assert "only it may write" in probecache.unusable(cache)
    cache.chmod(0o700)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert probecache.unusable(a_file) is not None


def test_the_directory_checked_is_the_one_opened_not_the_path_as_written(tmp_path, monkeypatch):
    """A/link/../probes, where link leads into another user's directory:
    the kernel opens other/probes, whose parent is not root's nor this
    user's, though the path as written only names A."""
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "probes").mkdir(mode=0o700)
    os.chown(other, 12345, 12345)
    mine = tmp_path / "A"
    mine.mkdir()
    (mine / "link").symlink_to(other / "sub")
    monkeypatch.setenv(probecache.CACHE_DIR_ENV, f"{mine}/link/../probes")
    assert probecache.store(entry()) is None
    assert probecache.load(K1) is None
    assert not (other / "probes" / f"{K1}.json").exists()


def test_a_killed_writers_leftovers_are_removed_after_an_hour(cache):
    probecache.store(entry(key(1)))
    old, new = cache / ".entry-1-dead", cache / ".entry-2-busy"
    old.write_text("{")
    new.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    probecache.store(entry(key(2)))
    assert not old.exists() and new.exists()


def test_a_missing_directory_under_an_open_parent_is_unusable(tmp_path):
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    assert "cannot be made" in probecache.unusable(open_parent / "probes")
    assert probecache.unusable(tmp_path / "fine" / "probes") is None
