"""lockprof names stack frames from its own table of /proc/kallsyms
(profiler/ksyms.py TextSymbols), not BCC's cache: the names must be BCC's,
up to which name of a function's aliases is given."""

from __future__ import annotations

import random
from pathlib import Path

import bcc

from profiler import ksyms


def test_frames_are_named_as_bcc_names_them():
    table = ksyms.TextSymbols()
    listed = [line.split() for line in Path("/proc/kallsyms").read_text().splitlines()]
    functions = [p for p in listed if len(p) >= 3 and p[1] in "tTwW" and int(p[0], 16)]
    assert len(table) > 10_000
    names_at: dict[int, set[str]] = {}
    for address, _kind, name, *_module in functions:
        names_at.setdefault(int(address, 16), set()).add(name)
    random.seed(7)
    checked = aliased = 0
    for address in random.sample(sorted(names_at), 2000):
        for offset in (0, 1, 0x40):
            ours = table.frame(address + offset)
            theirs = bcc.BPF.ksym(address + offset, show_offset=True).decode()
            checked += 1
            if ours != theirs:
                # Another name of the same function: the same offset, an alias.
                ours_name, ours_off = ours.rsplit("+", 1)
                theirs_name, theirs_off = theirs.rsplit("+", 1)
                assert ours_off == theirs_off, (ours, theirs)
                start = address + offset - int(ours_off, 16)
                assert {ours_name, theirs_name} <= names_at[start], (ours, theirs)
                aliased += 1
    assert aliased * 100 < checked  # ~1 in 2,000 here
