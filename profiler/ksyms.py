"""Kernel data symbols, to name a lock that is a static variable.

Only exact starts are used: a lock is named `sym` when its address is where
the symbol `sym` begins. With CONFIG_KALLSYMS_ALL off (as on some kernels),
/proc/kallsyms lists functions only and no lock gets a symbol; callers name
it instead.
"""

from __future__ import annotations

from pathlib import Path

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
