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
_TEXT_TYPES = frozenset(b"tTwW")


class TextSymbols:
    """Kernel function names by address, read once from /proc/kallsyms, as
    BCC's ksym() names a stack frame ("name+0xoffset", "[unknown]" below the
    first). Held in arrays: sorted addresses and one blob of names, ~4 MB
    for 120k symbols, where BCC's own cache of kallsyms took ~13 MB, loaded
    at the end of a quiet run (its stacks named then), at lockprof's peak.
    Empty where kptr_restrict hides the addresses (callers then ask BCC).
    Of aliases (names at one address), BCC's choice is arbitrary (its sort
    is not stable): ~1 frame in 2,000 gets another name of the same function."""

    def __init__(self, path: Path = Path("/proc/kallsyms")) -> None:
        addresses: list[int] = []
        names = bytearray()
        ends: list[int] = []
        exported: list[bool] = []  # T or W: a global symbol
        try:
            with path.open("rb") as lines:
                for line in lines:
                    parts = line.split(maxsplit=3)
                    if len(parts) < 3 or parts[1][0] not in _TEXT_TYPES:
                        continue
                    address = int(parts[0], 16)
                    if address:
                        addresses.append(address)
                        exported.append(parts[1][0] in b"TW")
                        names += parts[2]
                        ends.append(len(names))
        except OSError:
            pass
        # Aliases (names at one address, such as __do_sys_getpid and
        # __x64_sys_getpid): the last global one listed, else the last,
        # which is how BCC names them in nearly every case.
        order = np.lexsort((np.array(exported, dtype=bool), np.array(addresses, dtype=np.uint64)))
        ordered = np.array(addresses, dtype=np.uint64)[order]
        last = np.r_[ordered[1:] != ordered[:-1], True] if len(ordered) else ordered.astype(bool)
        ends_array = np.array(ends, dtype=np.int64)
        starts = np.concatenate(([0], ends_array[:-1])) if len(ends) else ends_array
        self._addresses = ordered[last]
        self._starts, self._ends = starts[order][last], ends_array[order][last]
        self._names = bytes(names)

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
