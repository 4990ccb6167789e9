"""Struct member offsets from the running kernel's BTF.

BCC may compile against fallback headers whose struct layouts do not match the
running kernel, so every offset the probes use comes from here instead, read
from /sys/kernel/btf/vmlinux (the BTF format is in the kernel's
Documentation/bpf/btf.rst). Results are cached per BTF blob.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from profiler.errors import LockprofError

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
HEADER_LEN = 24  # struct btf_header: magic, version, flags, hdr_len, 4 x u32

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT = 12, 13, 14, 15, 16
KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 17, 18, 19

# Bytes that follow the 12-byte common header, per kind: (fixed, per vlen item).
_TRAILER = {
    KIND_INT: (4, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}
_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


@dataclass(frozen=True)
class BtfType:
    kind: int
    name_off: int
    kind_flag: bool
    vlen: int
    size_or_type: int
    trailer_at: int  # offset of the kind-specific data in the type section


class Btf:
    """A parsed BTF blob: enough to resolve struct member offsets.

    Every length, offset and type id in the blob is checked before it is
    used, so a truncated or corrupt blob raises a one-line LockprofError
    (never struct.error, IndexError or a recursion error).
    """

    def __init__(self, blob: bytes):
        if len(blob) < HEADER_LEN:
            raise LockprofError(
                f"BTF blob is truncated: {len(blob)} bytes, "
                f"shorter than its {HEADER_LEN}-byte header"
            )
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise LockprofError("not a BTF blob (bad magic)")
        if version != BTF_VERSION:
            raise LockprofError(f"unsupported BTF version {version} (this reader knows 1)")
        if hdr_len < HEADER_LEN:
            raise _malformed(f"header length {hdr_len} is shorter than {HEADER_LEN} bytes")
        if hdr_len > len(blob):
            raise LockprofError(
                f"BTF blob is truncated: header length {hdr_len}, blob has {len(blob)} bytes"
            )
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._types_raw = _section(blob, "type", hdr_len, type_off, type_len)
        self._strings = _section(blob, "string", hdr_len, str_off, str_len)
        if self._strings[:1] != b"\0" or self._strings[-1:] != b"\0":
            raise _malformed("the string section must start and end with a NUL byte")
        self.types: list[BtfType | None] = [None]  # type id 0 is void
        self._index_types()

    def _index_types(self) -> None:
        raw, pos = self._types_raw, 0
        while pos < len(raw):
            type_id = len(self.types)
            if pos + 12 > len(raw):
                raise _malformed(f"type {type_id} is cut short at the end of the type section")
            name_off, info, size_or_type = struct.unpack_from("<III", raw, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            if not KIND_INT <= kind <= KIND_ENUM64:
                raise _malformed(f"type {type_id} has unknown kind {kind}")
            if name_off >= len(self._strings):
                raise _malformed(f"type {type_id} has its name outside the string section")
            fixed, per_item = _TRAILER.get(kind, (0, 0))
            end = pos + 12 + fixed + per_item * vlen
            if end > len(raw):
                raise _malformed(f"type {type_id} is cut short at the end of the type section")
            self.types.append(
                BtfType(kind, name_off, bool(info >> 31), vlen, size_or_type, pos + 12)
            )
            pos = end

    def _type(self, type_id: int) -> BtfType | None:
        if not 0 <= type_id < len(self.types):
            raise _malformed(f"reference to type {type_id}, which does not exist")
        return self.types[type_id]

    def name(self, name_off: int) -> str:
        end = self._strings.find(b"\0", name_off)
        if name_off >= len(self._strings) or end < 0:
            raise _malformed(f"string offset {name_off} is outside the string section")
        return self._strings[name_off:end].decode(errors="replace")

    def find_struct(self, name: str) -> int:
        """Type id of the complete struct called name."""
        wanted = name.encode() + b"\0"
        for type_id, t in enumerate(self.types):
            if t is None or t.kind != KIND_STRUCT or t.vlen == 0:
                continue
            if self._strings.startswith(wanted, t.name_off):
                return type_id
        raise LockprofError(f"struct {name} not found in kernel BTF")

    def _resolve(self, type_id: int) -> int:
        for _ in range(len(self.types)):  # a longer qualifier chain is a cycle
            t = self._type(type_id)
            if t is None or t.kind not in _QUALIFIERS:
                return type_id
            type_id = t.size_or_type
        raise _malformed(f"type {type_id} is part of a qualifier cycle")

    def _members(self, type_id: int) -> list[tuple[str, int, int]]:
        """(name, type id, bit offset) of each member of a struct/union."""
        t = self._type(type_id)
        assert t is not None and t.kind in (KIND_STRUCT, KIND_UNION)
        out = []
        for i in range(t.vlen):
            name_off, mtype, offset = struct.unpack_from(
                "<III", self._types_raw, t.trailer_at + 12 * i
            )
            bit_offset = offset & 0xFFFFFF if t.kind_flag else offset
            out.append((self.name(name_off) if name_off else "", mtype, bit_offset))
        return out

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of member in struct_name, looking inside anonymous
        structs and unions (mm_struct.mmap_lock sits in one). member may be
        a dotted path through named members (context.ctx_id)."""
        type_id, bits = self.find_struct(struct_name), 0
        for part in member.split("."):
            inner = self._type(type_id)
            found = None
            if inner is not None and inner.kind in (KIND_STRUCT, KIND_UNION):
                found = self._search(type_id, part, set())
            if found is None:
                raise LockprofError(f"struct {struct_name} has no member {member} in kernel BTF")
            bits += found[0]
            type_id = self._resolve(found[1])
        if bits % 8:
            raise LockprofError(f"{struct_name}.{member} is a bitfield")
        return bits // 8

    def _search(self, type_id: int, member: str, inside: set[int]) -> tuple[int, int] | None:
        """(bit offset, type id) of member in type_id or its anonymous
        members. inside holds the anonymous types being searched: a struct
        cannot contain itself, so meeting one again means the blob is
        corrupt."""
        if type_id in inside:
            raise _malformed(f"type {type_id} contains itself")
        for name, mtype, bit_offset in self._members(type_id):
            if name == member:
                return bit_offset, mtype
            resolved = self._resolve(mtype)
            inner = self._type(resolved)
            if not name and inner is not None and inner.kind in (KIND_STRUCT, KIND_UNION):
                nested = self._search(resolved, member, inside | {type_id})
                if nested is not None:
                    return bit_offset + nested[0], nested[1]
        return None


def _malformed(reason: str) -> LockprofError:
    return LockprofError(f"malformed BTF blob: {reason}")


def _section(blob: bytes, what: str, hdr_len: int, offset: int, length: int) -> bytes:
    """The bytes of one section, whose offset counts from the end of the header."""
    start, end = hdr_len + offset, hdr_len + offset + length
    if end > len(blob):
        raise LockprofError(
            f"BTF blob is truncated: the {what} section ends at byte {end}, "
            f"the blob has {len(blob)}"
        )
    return blob[start:end]


# The offsets the probes need: -D name -> (struct, member).
PROBE_OFFSETS = {
    "LP_TASK_MM_OFFSET": ("task_struct", "mm"),
    "LP_MMAP_LOCK_OFFSET": ("mm_struct", "mmap_lock"),
    "LP_TASK_PID_OFFSET": ("task_struct", "pid"),  # off-CPU: the task switched in
    "LP_TASK_TGID_OFFSET": ("task_struct", "tgid"),  # --follow: a forked child's process
    # A vfork child is learned as its parent (lp_learn_owner), a kernel
    # thread on a borrowed mm not at all (PF_KTHREAD in flags).
    "LP_TASK_REAL_PARENT_OFFSET": ("task_struct", "real_parent"),
    "LP_TASK_COMM_OFFSET": ("task_struct", "comm"),
    # An mm's owner is named after its process's main thread, not after the
    # thread first seen on it (lp_process_comm).
    "LP_TASK_GROUP_LEADER_OFFSET": ("task_struct", "group_leader"),
    "LP_TASK_FLAGS_OFFSET": ("task_struct", "flags"),
}
# Offsets the probes can do without: -1 when the member is absent.
OPTIONAL_PROBE_OFFSETS = {
    # x86: an id per mm, never reused, which tells apart the processes an
    # mm address serves one after another (probes/lockprof.bpf.c lp_mm_gen).
    "LP_MM_ID_OFFSET": ("mm_struct", "context.ctx_id"),
    # Without them: is an mm being built (no mapping yet)? lp_foreign_gen
    "LP_MM_MAP_COUNT_OFFSET": ("mm_struct", "map_count"),
    # CONFIG_MEMCG: whose mm is it (--pid on an idle target, lp_learn_idle_target)
    "LP_MM_OWNER_OFFSET": ("mm_struct", "owner"),
    # CONFIG_SMP: each CPU's runqueue lock, named as such (lp_learn_rq)
    "LP_RQ_LOCK_OFFSET": ("rq", "__lock"),
    "LP_RQ_CPU_OFFSET": ("rq", "cpu"),
}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lockprof"


def probe_offsets(btf_path: Path = VMLINUX_BTF) -> dict[str, int]:
    """Offsets for PROBE_OFFSETS, cached by a hash of the BTF blob."""
    try:
        blob = btf_path.read_bytes()
    except OSError as exc:
        raise LockprofError(
            f"kernel BTF not readable at {btf_path} ({exc.strerror}); "
            "lockprof needs CONFIG_DEBUG_INFO_BTF"
        ) from None
    digest = hashlib.sha256(blob).hexdigest()[:24]
    cache = _cache_dir() / f"offsets-{digest}.json"
    try:
        cached = json.loads(cache.read_text())
        if set(cached) == set(PROBE_OFFSETS) | set(OPTIONAL_PROBE_OFFSETS):
            return {k: int(v) for k, v in cached.items()}
    except (OSError, ValueError):
        pass
    try:
        btf = Btf(blob)
    except LockprofError as exc:
        raise LockprofError(f"{btf_path}: {exc}") from None
    offsets = {d: btf.member_offset(s, m) for d, (s, m) in PROBE_OFFSETS.items()}
    for define, (struct_name, member) in OPTIONAL_PROBE_OFFSETS.items():
        try:
            offsets[define] = btf.member_offset(struct_name, member)
        except LockprofError:
            offsets[define] = -1
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(offsets))
    except OSError:
        pass  # a cache we cannot write only costs start-up time
    return offsets
