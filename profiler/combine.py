"""Locks combined by name: `show --combine-locks`, and compare's lock labels.

A kernel lock without a symbol is named after its contending caller and its
address (`__pte_offset_map_lock+0x98 (0xffffea0007b5dd68)`): a page-table
lock per page, a wait queue per task. A run of the ebizzy-like workload has
thirty such rows of one caller. `perf lock contention` shows them as one row
per caller by default; `show --combine-locks` (as `perf lock report
--combine-locks`) does the same, and puts the mmap_locks of processes of the
same name in one row.

Combining happens before the summary: each combined lock's rows in the
collapsed interval totals take the id of the group's first lock, and are
collapsed again, so that counts, sums and histograms add up and maxima are
the largest (aggregate.collapse_intervals), as for the rows of one lock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pandas as pd

from profiler import aggregate

_ADDRESS_SUFFIX = re.compile(r"\s*\(0x[0-9a-fA-F]+\)$")
_CLASS_AND_ADDRESS = re.compile(r"^(\S+) 0x[0-9a-fA-F]+$")


def lock_label(
    lock_class: str | None,
    name: str | None,
    owner_pid: int | None,
    owner_comm: str | None,
    target_pid: int | None,
) -> tuple[str, str]:
    """(label, lock class) of a lock, the same for every lock of one kind:
    its name without its address, an mmap_lock by its process's name (the
    target's own apart), a lock with neither symbol nor caller by its class."""
    lock_class = lock_class or "unknown"
    if lock_class == "mmap_lock":
        if owner_pid is not None and target_pid and owner_pid == target_pid:
            return f"mmap_lock (target {owner_comm or '?'})", lock_class
        if owner_comm:
            return f"mmap_lock ({owner_comm})", lock_class
        return "mmap_lock (owner unknown)", lock_class
    name = name or ""
    if _CLASS_AND_ADDRESS.match(name):
        return f"{lock_class} (unnamed)", lock_class
    name = _ADDRESS_SUFFIX.sub("", name)
    return (name or f"{lock_class} (unnamed)"), lock_class


class Combined:
    """A recording's interval totals and locks table with the locks of each
    label combined. A group is named by the id of its first lock."""

    def __init__(self, totals: pd.DataFrame, locks: pd.DataFrame, target_pid: int | None):
        self.sizes: dict[int, int] = {}  # group -> its number of locks
        self.owners: dict[int, set[int]] = {}  # group -> its locks' owner pids
        self.labels: dict[int, tuple[str, str]] = {}  # group -> its label and class
        self._classes: dict[str, set[str]] = {}  # label -> the lock classes it has
        if totals.empty or locks.empty:
            self.totals, self.locks = totals, locks
            return
        group_of = self._groups(locks, target_pid)
        self.totals = _regrouped_totals(totals, group_of)
        self.locks = self._regrouped_locks(locks, group_of)

    def _groups(self, locks: pd.DataFrame, target_pid: int | None) -> dict[int, int]:
        """Each lock id's group."""
        first_of_label: dict[tuple[str, str], int] = {}
        group_of: dict[int, int] = {}
        for lock, ident in aggregate.lock_identities(locks).items():
            label = lock_label(
                ident.lock_class, ident.name, ident.owner_pid, ident.owner_comm, target_pid
            )
            group = first_of_label.setdefault(label, lock)
            group_of[lock] = group
            self.sizes[group] = self.sizes.get(group, 0) + 1
            self.labels[group] = label
            self._classes.setdefault(label[0], set()).add(label[1])
            if ident.owner_pid is not None:
                self.owners.setdefault(group, set()).add(ident.owner_pid)
        return group_of

    def _regrouped_locks(self, locks: pd.DataFrame, group_of: dict[int, int]) -> pd.DataFrame:
        """One locks row per group and (flags, source): its first lock's,
        named after the group when it has more than one lock."""
        out = locks.assign(lock=locks["lock"].map(group_of).astype(np.uint64))
        out = out.drop_duplicates(aggregate.KEY_COLUMNS).reset_index(drop=True)
        names = [
            self.name(int(group)) or name
            for group, name in zip(out["lock"], out["name"], strict=True)
        ]
        return out.assign(name=names)

    def name(self, group: int) -> str | None:
        """The name of a group of more than one lock (None: a lock alone
        keeps its own name): its label, but "mmap_lock" for mmap_locks, as
        `show --json` names every mmap_lock; their owner's name tells them
        apart."""
        if self.sizes.get(group, 1) < 2:
            return None
        label, lock_class = self.labels[group]
        if label.startswith("mmap_lock ("):
            return "mmap_lock"
        # One caller contending for locks of two classes: two rows, told apart.
        return f"{label} ({lock_class})" if len(self._classes[label]) > 1 else label

    def annotate(self, row: dict) -> dict:
        """A summary row of the combined totals, with `locks_combined` (how
        many locks it holds) and, for more than one, no single lock's
        address or id, nor an owner unless they share one."""
        group = int(row["lock_id"], 16)
        size = self.sizes.get(group, 1)
        row["locks_combined"] = size
        if size > 1:
            row.update(lock_addr=None, lock_id=None)
            if len(self.owners.get(group, ())) != 1:
                row.update(owner_pid=None)
        return row


def _regrouped_totals(totals: pd.DataFrame, group_of: dict[int, int]) -> pd.DataFrame:
    """totals with each lock's rows under its group's id, collapsed again.
    A lock with interval rows but no locks row keeps its own id (the
    summary leaves it out, as it does uncombined)."""
    locks = totals["lock"].to_numpy(dtype=np.uint64)
    groups = np.fromiter(
        (group_of.get(lock, lock) for lock in locks.tolist()), dtype=np.uint64, count=len(locks)
    )
    return aggregate.collapse_intervals(totals.assign(lock=groups))


class CombinedRows:
    """Summary rows (aggregate.SummaryRows) of combined totals, each
    annotated (Combined.annotate) as it is built."""

    def __init__(self, rows: aggregate.SummaryRows, combined: Combined) -> None:
        self._rows, self._combined = rows, combined

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict]:
        for row in self._rows:
            yield self._combined.annotate(row)


def summary_rows(
    totals: pd.DataFrame,
    locks: pd.DataFrame,
    families: list[str],
    target_pid: int | None,
    sort: str = "wait_total",
) -> CombinedRows:
    """The summary rows of totals with the locks of each name combined:
    `show -c` and, with -c, a collection's live view and final summary."""
    combined = Combined(totals, locks, target_pid)
    return CombinedRows(
        aggregate.SummaryRows(combined.totals, combined.locks, families, sort), combined
    )
