"""Kernel symbols from /proc/kallsyms.

Data symbols name a lock that is a static variable. Only exact starts are
used: a lock is named `sym` when its address is where the symbol `sym`
begins. With CONFIG_KALLSYMS_ALL off (as on some kernels), /proc/kallsyms
lists functions only and no lock gets a symbol; callers name it instead.

Function symbols (TextSymbols) name the frames of kernel stacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_DATA_TYPES = set("dDbBrR")


def data_symbols(path: Path = Path("/proc/kallsyms")) -> dict[int, str]:
    symbols: dict[int, str] = {}
    try:
        with path.open() as lines:
            for line in lines:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in _DATA_TYPES:
                    continue
                address = int(parts[0], 16)
                if address:  # zeroed when kptr_restrict hides addresses
                    symbols.setdefault(address, parts[2])
    except OSError:
        return {}
    return symbols


# Function symbols: text (t, T) and weak (w, W) ones.
_TEXT_TYPE_CODES = np.frombuffer(b"tTwW", dtype=np.uint8)
_GLOBAL_TEXT_CODES = np.frombuffer(b"TW", dtype=np.uint8)
# A hex digit's value by its byte (0 for a byte that is none).
_HEX_VALUES = np.zeros(256, dtype=np.uint64)
for _digit, _byte in enumerate(b"0123456789abcdef"):
    _HEX_VALUES[_byte] = _HEX_VALUES[ord(chr(_byte).upper())] = _digit


class _KallsymsLines:
    """The fields of kallsyms' lines ("address type name[\\t[module]]"), as
    arrays of offsets into its bytes. Lines with fewer than three fields
    are left out."""

    def __init__(self, text: np.ndarray) -> None:
        self._text = text
        ends = np.flatnonzero(text == ord("\n"))
        if len(text) and text[-1] != ord("\n"):
            ends = np.append(ends, len(text))  # a last line without its newline
        starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64) if len(ends) else ends
        spaces = np.flatnonzero(text == ord(" "))
        # The address ends at a line's first space, the type follows it, and
        # the name starts after the second space.
        first = _next_at_or_after(spaces, starts, ends)
        second = _next_at_or_after(spaces, first + 1, ends)
        whole = (first < ends) & (second < ends) & (second == first + 2) & (first > starts)
        self._starts, self._ends = starts[whole], ends[whole]
        self._address_ends, self._name_starts = first[whole], second[whole] + 1

    def kind(self) -> np.ndarray:
        return self._text[self._address_ends + 1]

    def addresses(self) -> np.ndarray:
        """Each line's address, read right to left, 4 bits a digit."""
        value = np.zeros(len(self._starts), dtype=np.uint64)
        for digit in range(16):
            at = self._address_ends - 1 - digit
            inside = at >= self._starts
            if not inside.any():
                break
            digits = _HEX_VALUES[self._text[np.where(inside, at, 0)]]
            value |= np.where(inside, digits, 0).astype(np.uint64) << np.uint64(4 * digit)
        return value

    def names(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each name starts and ends: at a tab (a module's symbol) or
        the line's end."""
        tabs = np.flatnonzero(self._text == ord("\t"))
        return self._name_starts, _next_at_or_after(tabs, self._name_starts, self._ends)


def _next_at_or_after(positions: np.ndarray, starts: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """For each start, the first of the sorted positions at or after it,
    or its limit when that comes first (or there is none)."""
    at = np.searchsorted(positions, starts)
    found = np.append(positions, np.iinfo(np.int64).max)[at]
    return np.minimum(found, limits)


def _packed(text: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bytes:
    """The bytes text[starts[i]:ends[i]] one after another (starts sorted,
    ranges apart)."""
    # +1 where a name starts, -1 where it ends: a running sum of 1 marks
    # its bytes (int8 throughout: a byte per byte of text, not eight).
    marks = np.zeros(len(text) + 1, dtype=np.int8)
    marks[starts] += 1
    marks[ends] -= 1
    inside = np.cumsum(marks[:-1], dtype=np.int8).view(np.bool_)
    return text[inside].tobytes()


# Bytes of kallsyms parsed at a time (its text is ~5 MB for 120k symbols):
# the parse's temporaries are a few times a block.
_BLOCK_BYTES = 1 << 20


def _read_text_symbols(path: Path) -> tuple[np.ndarray, np.ndarray, bytes, np.ndarray]:
    """kallsyms' function symbols with a nonzero address, in file order:
    their addresses, whether each is global (T, W), their names one after
    another, and where each name ends in them."""
    blocks = []
    try:
        with path.open("rb") as file:
            tail = b""
            while block := file.read(_BLOCK_BYTES):
                block = tail + block
                whole = block.rfind(b"\n") + 1  # the last line may go on in the next block
                blocks.append(_text_symbols_of(block[:whole]))
                tail = block[whole:]
            blocks.append(_text_symbols_of(tail))
    except OSError:
        blocks = [_text_symbols_of(b"")]
    addresses, exported, names, lengths = zip(*blocks, strict=True)
    return (
        np.concatenate(addresses),
        np.concatenate(exported),
        b"".join(names),
        np.cumsum(np.concatenate(lengths)),
    )


def _text_symbols_of(block: bytes) -> tuple[np.ndarray, np.ndarray, bytes, np.ndarray]:
    """_read_text_symbols' figures of these whole lines, and the names' lengths."""
    text = np.frombuffer(block, dtype=np.uint8)
    fields = _KallsymsLines(text)
    kind = fields.kind()
    addresses = fields.addresses()
    keep = np.isin(kind, _TEXT_TYPE_CODES) & (addresses != 0)
    starts, ends = (at[keep] for at in fields.names())
    names = _packed(text, starts, ends)
    return addresses[keep], np.isin(kind[keep], _GLOBAL_TEXT_CODES), names, ends - starts


class TextSymbols:
    """Kernel function names by address, read once from /proc/kallsyms, as
    BCC's ksym() names a stack frame ("name+0xoffset", "[unknown]" below the
    first). Held in arrays: sorted addresses and one blob of names, ~4 MB
    for 120k symbols, where BCC's own cache of kallsyms took ~13 MB, loaded
    at the end of a quiet run (its stacks named then), at lockprof's peak.
    Parsed with numpy, a block of the file's bytes at a time: a Python
    object per line (split fields, int addresses in lists) took ~27 MB at
    that peak, and glibc kept ~13 MB of it. Empty where kptr_restrict hides the addresses
    (callers then ask BCC).
    Of aliases (names at one address), BCC's choice is arbitrary (its sort
    is not stable): ~1 frame in 2,000 gets another name of the same function."""

    def __init__(self, path: Path = Path("/proc/kallsyms")) -> None:
        addresses, exported, self._names, name_ends = _read_text_symbols(path)
        # Aliases (names at one address, such as __do_sys_getpid and
        # __x64_sys_getpid): the last global one listed, else the last,
        # which is how BCC names them in nearly every case.
        order = np.lexsort((exported, addresses))
        ordered = addresses[order]
        last = np.r_[ordered[1:] != ordered[:-1], True] if len(ordered) else ordered.astype(bool)
        starts = np.concatenate(([0], name_ends[:-1])) if len(name_ends) else name_ends
        self._addresses = ordered[last]
        self._starts, self._ends = starts[order][last], name_ends[order][last]

    def __len__(self) -> int:
        return len(self._addresses)

    def frame(self, address: int) -> str:
        """ "name+0xoffset" of the function holding address (the nearest
        symbol at or below it), or "[unknown]"."""
        at = int(np.searchsorted(self._addresses, np.uint64(address), side="right")) - 1
        if at < 0:
            return "[unknown]"
        name = self._names[self._starts[at] : self._ends[at]].decode(errors="replace")
        return f"{name}+{address - int(self._addresses[at]):#x}"
