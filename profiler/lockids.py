"""Lock ids: one per lock, where an mm's address can belong to many processes.

The kernel reuses a freed mm_struct at once: a shell's children, run one
after another, often all get the same mm address, and so the same mmap_lock
address. The BPF side keys every mmap_lock row by (address, mm generation)
(probes/lockprof.h, struct lp_key; the generation comes from x86's per-mm
context id, which no two mms share), and this registry turns each pair into
the `lock` every table of a recording carries:

- the first mm seen at an address keeps the address itself as its id, so
  that a run without reuse (and every lock that is not an mmap_lock) reads
  exactly as before;
- each later mm at that address gets a synthetic id from a range no kernel
  or user address can take. The locks table's `address` column holds the
  real address.

Generation 0 means none: not an mmap_lock, or a kernel without mm context
ids (every process on an address then shares its rows, as before). Its id is
the address. Which process an mm belongs to (pid, comm) is learned apart,
from the owner map, and recorded per id with set_owner().
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# A top byte of 0x01..0x7e: no canonical x86-64 address (4- or 5-level paging)
# has one, nor an arm64 kernel address.
SYNTHETIC_BASE = 0x0100_0000_0000_0000
SYNTHETIC_END = 0x7F00_0000_0000_0000


def is_synthetic(lock_id: int) -> bool:
    return SYNTHETIC_BASE <= lock_id < SYNTHETIC_END


@dataclass
class LockIds:
    """(address, mm generation) -> lock id, stable for the whole run.

    An id whose process has exited and whose rows are gone is
    forget()-ten, so that memory does not grow with every process a long
    run sees; the caller keeps what forget() returns for the recording."""

    _ids: dict[tuple[int, int], int] = field(default_factory=dict)
    _key: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (address, gen)
    _seen: set[int] = field(default_factory=set)  # addresses that have an id
    _owner: dict[int, tuple[int, str | None]] = field(default_factory=dict)  # id -> (tgid, comm)
    _next: int = SYNTHETIC_BASE
    # Ids handed out since the kernel's lock rows were last read (read_begins)
    _since_read: set[int] = field(default_factory=set)

    def id_of(self, address: int, gen: int) -> int:
        """The id of the mmap_lock at address of the mm of generation gen
        (gen 0: the address itself)."""
        if gen == 0:
            return address
        known = self._ids.get((address, gen))
        if known is not None:
            return known
        if address in self._seen:
            lock_id = self._next
            self._next += 1
        else:
            lock_id = address
            self._seen.add(address)
        self._ids[(address, gen)] = lock_id
        self._key[lock_id] = (address, gen)
        self._since_read.add(lock_id)
        return lock_id

    def read_begins(self) -> None:
        """The kernel's lock rows are being read: ids handed out from now on
        may have rows that read did not see (since_read)."""
        self._since_read = set()

    def since_read(self) -> set[int]:
        """Ids handed out since the last read of the kernel's lock rows
        began. They count as in use (to_forget): a process that starts
        after an interval's read and exits before the round has rows no
        read has seen, but an id already once its task rows are retired
        (they name theirs). Forgotten then, its rows got a new id at the
        next read, with no owner and apart from its task rows (1 to 23 of
        ~380 short processes in a churn run)."""
        return set(self._since_read)

    def find(self, address: int, gen: int) -> int | None:
        """The id of (address, gen) if one was handed out (gen 0: the
        address), else None."""
        return address if gen == 0 else self._ids.get((address, gen))

    def address_of(self, lock_id: int) -> int:
        return self._key.get(lock_id, (lock_id, 0))[0]

    def set_owner(self, lock_id: int, tgid: int, comm: str | None) -> None:
        """The process the id's mm belongs to (from the owner map)."""
        self._owner[lock_id] = (tgid, comm)

    def owner_of(self, lock_id: int) -> tuple[int, str | None] | None:
        return self._owner.get(lock_id)

    def to_forget(self, in_use: set[int], alive: Callable[[int], bool]) -> list[int]:
        """The ids no kernel row uses (in_use: those some row does) whose
        process has exited, or was never seen: an mm only other tasks took
        (a fork's child that exec'd before taking its copy's lock itself)
        would otherwise stay for the whole run."""
        return [
            lock_id
            for lock_id in self._key
            if lock_id not in in_use
            and (lock_id not in self._owner or not alive(self._owner[lock_id][0]))
        ]

    def owned(self) -> dict[int, tuple[int, str | None]]:
        """id -> (tgid, comm) of every id whose process is known."""
        return dict(self._owner)

    def addresses(self) -> dict[int, int]:
        """Synthetic id -> address (other ids are their own address)."""
        return {lock_id: key[0] for lock_id, key in self._key.items() if lock_id != key[0]}

    def forget(self, lock_id: int) -> tuple[int, int | None, str | None]:
        """Drop an id (its process exited, its rows are gone): returns its
        (address, owner tgid, comm). Its mm never comes back; later mms at
        the address still get new ids, never this one."""
        address, gen = self._key.pop(lock_id, (lock_id, 0))
        self._ids.pop((address, gen), None)
        self._since_read.discard(lock_id)
        tgid, comm = self._owner.pop(lock_id, (None, None))
        return address, tgid, comm


def dead_owners(
    entries: dict[tuple[int, int], tuple[int, str]],
    alive: Callable[[int], bool],
    known: Callable[[int, int], int | None],
    unread_before: set[tuple[int, int]],
) -> tuple[list[tuple[int, int, int | None]], set[tuple[int, int]]]:
    """Which owner-map entries ((address, gen) -> (tgid, comm)) of exited
    processes to forget now, as (address, gen, lock id or None), and which
    to keep one round more: those whose lock has no id yet (known(address,
    gen) is None: no row of it read yet) and were not kept last round
    (unread_before). A process that starts after an interval's read of the
    lock map and exits before the round has its owner entry in the round
    but its rows only in the next read: forgotten at once, its rows came
    out with no owner (1 to 23 of ~380 short processes in a churn run). One
    round is enough (a round follows a read of the map); an entry whose
    rows never come (none counted: a full map) goes then.
    Generation 0 entries stay: without generations an entry is its
    address's, for the next process there."""
    forget: list[tuple[int, int, int | None]] = []
    unread: set[tuple[int, int]] = set()
    for (address, gen), (tgid, _comm) in entries.items():
        if gen == 0 or alive(tgid):
            continue
        lock_id = known(address, gen)
        if lock_id is None and (address, gen) not in unread_before:
            unread.add((address, gen))
            continue
        forget.append((address, gen, lock_id))
    return forget, unread


def distinct_labels(labels: dict[int, str], addresses: dict[int, int]) -> dict[int, str]:
    """labels (lock id -> label) made distinct where locks share one: a
    process that execs the same program has an mmap_lock per mm, all
    `mmap_lock pid N (sh)`. Each then says its address, or its id where
    the address does not tell them apart either (a freed mm's address
    taken by the next exec: mms that alternate between two addresses). The
    id is the `lock_id` of `show --json`. addresses: lock id -> the lock's
    address (the id itself where absent)."""
    groups: dict[str, list[int]] = {}
    for lock, label in labels.items():
        groups.setdefault(label, []).append(lock)
    distinct = dict(labels)
    for label, locks in groups.items():
        if len(locks) < 2:
            continue
        where = [addresses.get(lock, lock) for lock in locks]
        sharing = Counter(where)
        for lock, address in zip(locks, where, strict=True):
            address_tells = sharing[address] == 1 and f"{address:#x}" not in label
            distinct[lock] = f"{label} {address:#x}" if address_tells else f"{label} id {lock:#x}"
    return distinct
