"""profiler.btf: struct member offsets from BTF (kernel Documentation/bpf/btf.rst)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiler import btf
from profiler.errors import LockprofError

VMLINUX = Path("/sys/kernel/btf/vmlinux")
needs_vmlinux = pytest.mark.skipif(not VMLINUX.is_file(), reason="kernel has no BTF")


# -- a tiny BTF writer --------------------------------------------------------------------


class BtfWriter:
    """Builds a BTF blob type by type (ids start at 1, 0 is void)."""

    def __init__(self):
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.next_id = 1
        self.starts: list[int] = []  # offset of each type record in the type section

    def _str(self, name: str) -> int:
        if not name:
            return 0
        offset = len(self.strings)
        self.strings += name.encode() + b"\0"
        return offset

    def _type(
        self,
        name: str,
        kind: int,
        vlen: int,
        size_or_type: int,
        kflag: bool = False,
        trailer: bytes = b"",
    ) -> int:
        info = (kind << 24) | vlen | (int(kflag) << 31)
        self.starts.append(len(self.types))
        self.types += struct.pack("<III", self._str(name), info, size_or_type) + trailer
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int) -> int:
        return self._type(name, btf.KIND_INT, 0, size, trailer=struct.pack("<I", size * 8))

    def ptr(self, target: int) -> int:
        return self._type("", btf.KIND_PTR, 0, target)

    def array(self, elem: int, index: int, n: int) -> int:
        return self._type("", btf.KIND_ARRAY, 0, 0, trailer=struct.pack("<III", elem, index, n))

    def qualifier(self, kind: int, target: int, name: str = "") -> int:
        return self._type(name, kind, 0, target)

    def enum(self, name: str, values: list[tuple[str, int]]) -> int:
        trailer = b"".join(struct.pack("<Ii", self._str(n), v) for n, v in values)
        return self._type(name, btf.KIND_ENUM, len(values), 4, trailer=trailer)

    def func_proto(self, ret: int, params: list[int]) -> int:
        trailer = b"".join(struct.pack("<II", 0, p) for p in params)
        return self._type("", btf.KIND_FUNC_PROTO, len(params), ret, trailer=trailer)

    def composite(
        self,
        kind: int,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        bitfield_sizes: dict[str, int] | None = None,
    ) -> int:
        """members: (name, type id, bit offset)."""
        sizes = bitfield_sizes or {}
        trailer = b""
        for member, type_id, bit_offset in members:
            offset = bit_offset | (sizes.get(member, 0) << 24) if sizes else bit_offset
            trailer += struct.pack("<III", self._str(member), type_id, offset)
        return self._type(name, kind, len(members), size, kflag=bool(sizes), trailer=trailer)

    def struct(self, name, size, members, bitfield_sizes=None) -> int:
        return self.composite(btf.KIND_STRUCT, name, size, members, bitfield_sizes)

    def union(self, name, size, members) -> int:
        return self.composite(btf.KIND_UNION, name, size, members)

    def fwd(self, name: str) -> int:
        return self._type(name, btf.KIND_FWD, 0, 0)

    def blob(self) -> bytes:
        header = struct.pack(
            "<HBBIIIII",
            btf.BTF_MAGIC,
            1,
            0,
            24,
            0,
            len(self.types),
            len(self.types),
            len(self.strings),
        )
        return header + bytes(self.types) + bytes(self.strings)


def mm_like_writer() -> BtfWriter:
    """struct mm { int users; union { struct { long pad[3]; struct rwsem
    mmap_lock; }; long other; }; const struct rwsem *ptr; } -- like the
    kernel's mm_struct, whose fields sit in an anonymous struct."""
    w = BtfWriter()
    int_t = w.int_("int", 4)
    long_t = w.int_("long", 8)
    w.fwd("mm")  # a forward declaration of the same name comes first
    w.enum("mm_flags", [("MM_A", 0), ("MM_B", 1)])
    w.func_proto(int_t, [long_t, int_t])
    rwsem = w.struct("rwsem", 40, [("count", long_t, 0), ("owner", long_t, 64)])
    pad = w.array(long_t, int_t, 3)
    inner = w.struct("", 64, [("pad", pad, 0), ("mmap_lock", rwsem, 192)])
    const_inner = w.qualifier(btf.KIND_CONST, inner)
    typedef = w.qualifier(btf.KIND_TYPEDEF, const_inner, "inner_t")
    anon = w.union("", 64, [("", typedef, 0), ("other", long_t, 0)])
    ptr = w.ptr(w.qualifier(btf.KIND_CONST, rwsem))
    w.struct("mm_old", 8, [("mmap_lock", long_t, 0)])  # a name that shares a prefix
    w.struct("mm", 80, [("users", int_t, 0), ("", anon, 64), ("ptr", ptr, 576)])
    w.struct("bits", 4, [("a", int_t, 0), ("b", int_t, 3)], bitfield_sizes={"a": 3, "b": 5})
    return w


def mm_like_blob() -> bytes:
    return mm_like_writer().blob()


def test_synthetic_blob_anonymous_members():
    parsed = btf.Btf(mm_like_blob())
    assert parsed.member_offset("mm", "users") == 0
    assert parsed.member_offset("mm", "mmap_lock") == 8 + 24  # anon union at 8, then pad[3]
    assert parsed.member_offset("mm", "other") == 8
    assert parsed.member_offset("mm", "ptr") == 72
    assert parsed.member_offset("mm_old", "mmap_lock") == 0
    assert parsed.member_offset("rwsem", "owner") == 8


def test_synthetic_blob_complete_struct_wins_over_forward_declaration():
    parsed = btf.Btf(mm_like_blob())
    type_id = parsed.find_struct("mm")
    assert parsed.types[type_id].kind == btf.KIND_STRUCT and parsed.types[type_id].vlen == 3


def test_synthetic_blob_member_of_a_named_struct_is_not_searched():
    # count is a member of the named struct rwsem inside mm: not a member of mm.
    with pytest.raises(LockprofError, match="struct mm has no member count"):
        btf.Btf(mm_like_blob()).member_offset("mm", "count")


def test_synthetic_blob_missing_struct():
    parsed = btf.Btf(mm_like_blob())
    for name in ("task_struct", "m", "mm_", "rwse"):
        with pytest.raises(LockprofError, match=f"struct {name} not found"):
            parsed.find_struct(name)


def test_synthetic_blob_bitfield_is_refused():
    parsed = btf.Btf(mm_like_blob())
    assert parsed.member_offset("bits", "a") == 0
    with pytest.raises(LockprofError, match="bitfield"):
        parsed.member_offset("bits", "b")


def test_bad_magic():
    blob = bytearray(mm_like_blob())
    blob[0:2] = b"\xeb\x9f"  # big-endian BTF: not what this reader supports
    with pytest.raises(LockprofError, match="bad magic"):
        btf.Btf(bytes(blob))
    with pytest.raises(LockprofError, match="bad magic"):
        btf.Btf(b"\x7fELF" + b"\0" * 60)


@pytest.mark.parametrize("size", [0, 1, 12, 23])
def test_shorter_than_a_header(size):
    with pytest.raises(LockprofError, match="truncated"):
        btf.Btf(mm_like_blob()[:size])


@pytest.mark.parametrize("record", [0, 3, 9])
def test_truncated_type_section(record):
    writer = mm_like_writer()
    blob = writer.blob()
    cut = 24 + writer.starts[record] + 6  # in the middle of a type record's header
    with pytest.raises(LockprofError, match=r"^BTF blob is truncated: the type section ends"):
        btf.Btf(blob[:cut])


def test_truncated_string_section():
    blob = mm_like_blob()
    types_end = 24 + struct.unpack_from("<I", blob, 12)[0]
    with pytest.raises(LockprofError, match=r"^BTF blob is truncated: the string section ends"):
        btf.Btf(blob[: types_end + 1])


def test_every_truncation_is_a_one_line_error():
    blob = mm_like_blob()
    for size in range(len(blob)):
        with pytest.raises(LockprofError, match="truncated") as excinfo:
            btf.Btf(blob[:size])
        assert "\n" not in str(excinfo.value)


def patched(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def header_field(blob: bytes, name: str) -> tuple[int, int]:
    """(offset, value) of a u32 field of struct btf_header."""
    offset = {"hdr_len": 4, "type_off": 8, "type_len": 12, "str_off": 16, "str_len": 20}[name]
    return offset, struct.unpack_from("<I", blob, offset)[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hdr_len", 8, "header length 8 is shorter than 24 bytes"),
        ("hdr_len", 10**6, "truncated: header length 1000000"),
        ("type_off", 2**32 - 1, "truncated: the type section ends"),
        ("str_off", 2**31, "truncated: the string section ends"),
        ("str_len", 2**32 - 1, "truncated: the string section ends"),
    ],
)
def test_bad_header_fields(field, value, message):
    offset, _ = header_field(mm_like_blob(), field)
    with pytest.raises(LockprofError, match=message):
        btf.Btf(patched(mm_like_blob(), offset, "<I", value))


def test_unsupported_version():
    with pytest.raises(LockprofError, match="unsupported BTF version 2"):
        btf.Btf(patched(mm_like_blob(), 2, "<B", 2))


def test_type_lengths_that_do_not_add_up():
    # The header's type section ends inside the last type record.
    w = mm_like_writer()
    blob = w.blob()
    offset, type_len = header_field(blob, "type_len")
    last = len(w.starts)  # type ids start at 1
    with pytest.raises(LockprofError, match=rf"malformed BTF blob: type {last} is cut short"):
        btf.Btf(patched(blob, offset, "<I", type_len - 4))


def type_record(writer: BtfWriter, type_id: int) -> int:
    """Blob offset of a type record (its name_off, info, size_or_type)."""
    return 24 + writer.starts[type_id - 1]


def test_unknown_kind():
    w = mm_like_writer()
    blob = w.blob()
    info = struct.unpack_from("<I", blob, type_record(w, 2) + 4)[0]
    bad = patched(blob, type_record(w, 2) + 4, "<I", (info & ~(0x1F << 24)) | (25 << 24))
    with pytest.raises(LockprofError, match="malformed BTF blob: type 2 has unknown kind 25"):
        btf.Btf(bad)


def test_name_outside_the_string_section():
    w = mm_like_writer()
    bad = patched(w.blob(), type_record(w, 1), "<I", 10**6)
    with pytest.raises(LockprofError, match="type 1 has its name outside the string section"):
        btf.Btf(bad)


def test_string_section_without_final_nul():
    blob = bytearray(mm_like_blob())
    blob[-1] = ord("x")
    with pytest.raises(LockprofError, match="must start and end with a NUL byte"):
        btf.Btf(bytes(blob))


def member_record(writer: BtfWriter, type_id: int, index: int) -> int:
    """Blob offset of member index of a struct/union type."""
    return type_record(writer, type_id) + 12 + 12 * index


def mm_id(writer: BtfWriter) -> int:
    return btf.Btf(writer.blob()).find_struct("mm")


def test_member_type_that_does_not_exist():
    w = mm_like_writer()
    # mm's anonymous union member (index 1) points past the last type.
    bad = patched(w.blob(), member_record(w, mm_id(w), 1) + 4, "<I", 999)
    with pytest.raises(LockprofError, match="reference to type 999, which does not exist"):
        btf.Btf(bad).member_offset("mm", "mmap_lock")


def test_member_name_outside_the_string_section():
    w = mm_like_writer()
    bad = patched(w.blob(), member_record(w, mm_id(w), 0), "<I", 10**6)
    with pytest.raises(LockprofError, match="string offset 1000000 is outside"):
        btf.Btf(bad).member_offset("mm", "mmap_lock")


def test_qualifier_cycle():
    w = BtfWriter()
    long_t = w.int_("long", 8)
    a = w.qualifier(btf.KIND_CONST, 3)  # 2 -> 3 -> 2
    w.qualifier(btf.KIND_VOLATILE, a)
    w.struct("s", 16, [("x", long_t, 0), ("", a, 64)])
    with pytest.raises(LockprofError, match="qualifier cycle"):
        btf.Btf(w.blob()).member_offset("s", "missing")


def test_anonymous_struct_that_contains_itself():
    w = BtfWriter()
    long_t = w.int_("long", 8)
    w.struct("", 16, [("x", long_t, 0), ("", 2, 64)])  # type 2 holds type 2
    w.struct("s", 16, [("", 2, 0)])
    with pytest.raises(LockprofError, match="type 2 contains itself"):
        btf.Btf(w.blob()).member_offset("s", "missing")


@given(st.data())
def test_fuzz_corrupt_blobs(data):
    """Any damage gives a result or a one-line LockprofError, nothing else."""
    blob = bytearray(mm_like_blob())
    edits = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), min_size=1, max_size=6
        )
    )
    for offset, value in edits:
        blob[offset] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    try:
        parsed = btf.Btf(bytes(blob[:cut]))
        for struct_name, member in (("mm", "mmap_lock"), ("mm", "ptr"), ("bits", "b")):
            try:
                parsed.member_offset(struct_name, member)
            except LockprofError as exc:
                assert "\n" not in str(exc)
    except LockprofError as exc:
        assert "\n" not in str(exc)


def test_probe_offsets_from_a_corrupt_file_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "vmlinux"
    path.write_bytes(mm_like_blob()[:100])
    with pytest.raises(LockprofError, match=f"^{path}: BTF blob is truncated"):
        btf.probe_offsets(path)


# -- the running kernel -----------------------------------------------------------------


@pytest.fixture(scope="module")
def vmlinux() -> btf.Btf:
    if not VMLINUX.is_file():
        pytest.skip("kernel has no BTF")
    return btf.Btf(VMLINUX.read_bytes())


def parse_bpftool_raw(raw_dump: str) -> dict[int, tuple[str, str, int | None, list]]:
    """type id -> (kind, name, type_id, [(member, type id, bits_offset)]) from
    `bpftool btf dump file ... format raw`."""
    types: dict[int, tuple[str, str, int | None, list]] = {}
    current = None
    for line in raw_dump.splitlines():
        head = re.match(r"^\[(\d+)\] (\w+) '([^']*)'(?:.*?type_id=(\d+))?", line)
        if head:
            current = int(head.group(1))
            target = int(head.group(4)) if head.group(4) else None
            types[current] = (head.group(2), head.group(3), target, [])
            continue
        item = re.match(r"^\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
        if item and current is not None:
            types[current][3].append((item.group(1), int(item.group(2)), int(item.group(3))))
    return types


def bpftool_offset(types, struct_name: str, member: str) -> int:
    """Byte offset of member in struct_name by bpftool's reading of the BTF,
    descending into anonymous struct/union members."""

    def resolve(type_id):
        while types[type_id][0] in ("CONST", "VOLATILE", "TYPEDEF", "RESTRICT", "TYPE_TAG"):
            type_id = types[type_id][2]
        return type_id

    def search(type_id):
        for name, mtype, bits in types[type_id][3]:
            if name == member:
                return bits
            inner = resolve(mtype)
            if name == "(anon)" and types[inner][0] in ("STRUCT", "UNION"):
                found = search(inner)
                if found is not None:
                    return bits + found
        return None

    (struct_id,) = [
        i
        for i, (kind, name, _t, items) in types.items()
        if kind == "STRUCT" and name == struct_name and items
    ]
    bits = search(struct_id)
    assert bits is not None and bits % 8 == 0
    return bits // 8


@pytest.fixture(scope="module")
def bpftool_types() -> dict:
    tool = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if Path(p).exists()), None
    )
    if tool is None or not VMLINUX.is_file():
        pytest.skip("bpftool or kernel BTF unavailable")
    result = subprocess.run(
        [tool, "btf", "dump", "file", str(VMLINUX), "format", "raw"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        pytest.skip(f"bpftool failed: {result.stderr.strip()[:200]}")
    return parse_bpftool_raw(result.stdout)


@pytest.mark.parametrize(
    ("struct_name", "member"),
    [
        ("mm_struct", "mmap_lock"),  # nested in an anonymous struct
        ("task_struct", "mm"),
        ("task_struct", "pid"),
        ("rw_semaphore", "count"),
    ],
)
def test_offsets_agree_with_bpftool(vmlinux, bpftool_types, struct_name, member):
    assert vmlinux.member_offset(struct_name, member) == bpftool_offset(
        bpftool_types, struct_name, member
    )


@needs_vmlinux
def test_mmap_lock_is_inside_an_anonymous_member(vmlinux):
    members = vmlinux._members(vmlinux.find_struct("mm_struct"))
    assert "mmap_lock" not in [name for name, _t, _o in members]
    assert vmlinux.member_offset("mm_struct", "mmap_lock") > 0


@needs_vmlinux
def test_missing_struct_and_member_in_vmlinux(vmlinux):
    with pytest.raises(LockprofError, match="struct no_such_struct_xyz not found"):
        vmlinux.member_offset("no_such_struct_xyz", "x")
    with pytest.raises(LockprofError, match="struct mm_struct has no member no_such_member"):
        vmlinux.member_offset("mm_struct", "no_such_member")


@needs_vmlinux
def test_probe_offsets_are_cached_per_blob(vmlinux, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    offsets = btf.probe_offsets()
    assert offsets == {
        "LP_TASK_MM_OFFSET": vmlinux.member_offset("task_struct", "mm"),
        "LP_MMAP_LOCK_OFFSET": vmlinux.member_offset("mm_struct", "mmap_lock"),
        "LP_TASK_PID_OFFSET": vmlinux.member_offset("task_struct", "pid"),
        "LP_TASK_TGID_OFFSET": vmlinux.member_offset("task_struct", "tgid"),
        "LP_TASK_REAL_PARENT_OFFSET": vmlinux.member_offset("task_struct", "real_parent"),
        "LP_TASK_COMM_OFFSET": vmlinux.member_offset("task_struct", "comm"),
        "LP_TASK_GROUP_LEADER_OFFSET": vmlinux.member_offset("task_struct", "group_leader"),
        "LP_TASK_FLAGS_OFFSET": vmlinux.member_offset("task_struct", "flags"),
        "LP_MM_ID_OFFSET": vmlinux.member_offset("mm_struct", "context.ctx_id"),
        "LP_MM_MAP_COUNT_OFFSET": vmlinux.member_offset("mm_struct", "map_count"),
        "LP_MM_OWNER_OFFSET": vmlinux.member_offset("mm_struct", "owner"),
        "LP_RQ_LOCK_OFFSET": vmlinux.member_offset("rq", "__lock"),
        "LP_RQ_CPU_OFFSET": vmlinux.member_offset("rq", "cpu"),
    }
    assert offsets["LP_MM_ID_OFFSET"] > 0  # x86's per-mm context id: this machine has one
    (cache,) = (tmp_path / "lockprof").glob("offsets-*.json")
    assert json.loads(cache.read_text()) == offsets
    # The cache is what is read next time (keyed by the blob's hash) ...
    fake = {
        "LP_TASK_MM_OFFSET": 1,
        "LP_MMAP_LOCK_OFFSET": 2,
        "LP_TASK_PID_OFFSET": 3,
        "LP_TASK_TGID_OFFSET": 4,
        "LP_TASK_REAL_PARENT_OFFSET": 6,
        "LP_TASK_COMM_OFFSET": 8,
        "LP_TASK_GROUP_LEADER_OFFSET": 13,
        "LP_TASK_FLAGS_OFFSET": 9,
        "LP_MM_ID_OFFSET": 5,
        "LP_MM_MAP_COUNT_OFFSET": 7,
        "LP_MM_OWNER_OFFSET": 10,
        "LP_RQ_LOCK_OFFSET": 11,
        "LP_RQ_CPU_OFFSET": 12,
    }
    cache.write_text(json.dumps(fake))
    assert btf.probe_offsets() == fake
    # ... unless it is unreadable or has other keys.
    cache.write_text("{not json")
    assert btf.probe_offsets() == offsets


def test_probe_offsets_from_a_synthetic_blob(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    w = BtfWriter()
    long_t = w.int_("long", 8)
    rwsem = w.struct("rw_semaphore", 8, [("count", long_t, 0)])
    anon = w.struct("", 16, [("x", long_t, 0), ("mmap_lock", rwsem, 64)])
    mm = w.struct("mm_struct", 32, [("a", long_t, 0), ("", anon, 128)])
    int_t = w.int_("int", 4)
    w.struct(
        "task_struct",
        80,
        [
            ("state", long_t, 0),
            ("flags", int_t, 64),
            ("mm", w.ptr(mm), 256),
            ("pid", int_t, 320),
            ("tgid", int_t, 352),
            ("real_parent", long_t, 384),
            ("comm", long_t, 448),
            ("group_leader", long_t, 576),
        ],
    )
    path = tmp_path / "vmlinux"
    path.write_bytes(w.blob())
    assert btf.probe_offsets(path) == {
        "LP_TASK_MM_OFFSET": 32,
        "LP_MMAP_LOCK_OFFSET": 24,
        "LP_TASK_PID_OFFSET": 40,
        "LP_TASK_TGID_OFFSET": 44,
        "LP_TASK_REAL_PARENT_OFFSET": 48,
        "LP_TASK_COMM_OFFSET": 56,
        "LP_TASK_GROUP_LEADER_OFFSET": 72,
        "LP_TASK_FLAGS_OFFSET": 8,
        "LP_MM_ID_OFFSET": -1,  # optional: this mm_struct has no context.ctx_id
        "LP_MM_MAP_COUNT_OFFSET": -1,  # nor map_count
        "LP_MM_OWNER_OFFSET": -1,  # nor owner
        "LP_RQ_LOCK_OFFSET": -1,  # no struct rq: runqueue locks are named by their callers
        "LP_RQ_CPU_OFFSET": -1,
    }


def test_a_dotted_member_path_goes_through_typedefs():
    """mm_struct.context is an mm_context_t: a typedef of an anonymous
    struct, whose ctx_id x86 keeps per mm."""
    w = BtfWriter()
    u64 = w.int_("u64", 8)
    context = w.struct("", 16, [("lock", u64, 0), ("ctx_id", u64, 64)])
    context_t = w.qualifier(btf.KIND_TYPEDEF, context, "mm_context_t")
    w.struct("mm_struct", 40, [("a", u64, 0), ("context", context_t, 128)])
    parsed = btf.Btf(w.blob())
    assert parsed.member_offset("mm_struct", "context.ctx_id") == 24
    assert parsed.member_offset("mm_struct", "context") == 16
    with pytest.raises(LockprofError, match=r"no member context\.nope"):
        parsed.member_offset("mm_struct", "context.nope")
    with pytest.raises(LockprofError, match=r"no member a\.b"):
        parsed.member_offset("mm_struct", "a.b")  # a is no struct


def test_probe_offsets_without_btf(tmp_path):
    with pytest.raises(LockprofError, match=r"kernel BTF not readable .*CONFIG_DEBUG_INFO_BTF"):
        btf.probe_offsets(tmp_path / "missing")
