"""Lock ids (profiler/lockids.py): one per mm at an address, and the summary
keeps two processes' mmap_locks at one address apart."""

from __future__ import annotations

from profiler import aggregate, lockids
from profiler.lockids import LockIds

from .helpers import intervals_frame

A = 0xFFFF8881D649B8F8
B = 0xFFFF8881A7B3AC78


def test_the_first_mm_at_an_address_keeps_the_address():
    ids = LockIds()
    assert ids.id_of(A, 100) == A
    assert ids.id_of(A, 100) == A  # stable
    assert ids.id_of(B, 101) == B  # one process, two mms (an exec): two locks
    assert ids.address_of(A) == A and ids.find(A, 100) == A


def test_later_mms_at_an_address_get_synthetic_ids():
    ids = LockIds()
    first, second, third = ids.id_of(A, 100), ids.id_of(A, 200), ids.id_of(A, 300)
    assert first == A
    assert len({first, second, third}) == 3
    for lock_id in (second, third):
        assert lockids.is_synthetic(lock_id) and not lockids.is_synthetic(A)
        assert ids.address_of(lock_id) == A
    assert ids.id_of(A, 200) == second  # asked again, later: the same id
    assert ids.addresses() == {second: A, third: A}


def test_synthetic_ids_are_no_address():
    # x86-64 kernel and user addresses (4- and 5-level paging), arm64 kernel.
    for address in (0xFFFF888100000000, 0xFF11000000000000, 0x00007FFFFFFFF000, 0x00FF000000000000):
        assert not lockids.is_synthetic(address)
    ids = LockIds()
    ids.id_of(A, 1)
    assert all(lockids.is_synthetic(ids.id_of(A, gen)) for gen in range(2, 1000))


def test_generation_0_is_the_address_whenever_asked():
    """Not an mmap_lock, or a kernel without mm ids: the address, and
    nothing is handed out (a spinlock does not make a later mm synthetic)."""
    ids = LockIds()
    assert ids.id_of(0xFFFFEA0000001234, 0) == 0xFFFFEA0000001234
    assert ids.id_of(A, 0) == A and ids.find(A, 0) == A
    assert ids.id_of(A, 7) == A  # the first mm with a generation still gets the address
    assert ids.id_of(A, 0) == A and ids.addresses() == {}


def test_owners_are_kept_per_id():
    ids = LockIds()
    first, second = ids.id_of(A, 100), ids.id_of(A, 200)
    ids.set_owner(first, 4242, "sh")
    assert ids.owned() == {first: (4242, "sh")}
    ids.set_owner(second, 4243, None)  # comm not seen
    assert ids.owner_of(second) == (4243, None)
    assert ids.owned() == {first: (4242, "sh"), second: (4243, None)}


def test_forgetting_returns_the_name_and_never_reissues_the_id():
    ids = LockIds()
    first = ids.id_of(A, 100)
    second = ids.id_of(A, 200)
    ids.set_owner(second, 4243, "mmapcount")
    assert ids.forget(second) == (A, 4243, "mmapcount")
    assert ids.find(A, 200) is None and second not in ids.owned()
    assert ids.forget(first) == (A, None, None)  # its process was never seen
    third = ids.id_of(A, 300)
    assert third not in (first, second) and ids.address_of(third) == A
    assert ids.addresses() == {third: A}


def test_ids_are_forgotten_once_unused_and_their_process_gone_or_never_seen():
    ids = LockIds()
    live, dead, unseen, busy_dead = (ids.id_of(A + i * 0x1000, 10 + i) for i in range(4))
    ids.set_owner(live, 100, "up")
    ids.set_owner(dead, 200, "gone")
    ids.set_owner(busy_dead, 300, "gone too")
    alive = {100}.__contains__
    # busy_dead's rows are still in the kernel's map (retired, not yet freed)
    assert sorted(ids.to_forget({busy_dead}, alive)) == sorted([dead, unseen])
    assert sorted(ids.to_forget(set(), alive)) == sorted([dead, unseen, busy_dead])
    assert ids.to_forget({live, dead, unseen, busy_dead}, lambda tgid: False) == []


def test_summary_keeps_two_processes_on_one_address_apart(make_row):
    ids = LockIds()
    first, second = ids.id_of(A, 100), ids.id_of(A, 200)
    read, write, mmap = 2, 4, 0
    frame = intervals_frame(
        [
            make_row(first, write, mmap, acquisitions=3, releases=2, downgrades=1),
            make_row(first, read, mmap, releases=1),  # the downgraded hold's release
            make_row(second, write, mmap, acquisitions=5, releases=5),
        ]
    )
    keys = frame[aggregate.KEY_COLUMNS].drop_duplicates()
    locks = aggregate.name_locks(
        keys, {first: (100, "sh"), second: (200, "mmapcount")}, _no_callers(), {},
        addresses=ids.addresses(),
    )  # fmt: skip
    assert locks.set_index("lock")["address"].to_dict() == {first: A, second: A}
    summary = aggregate.summary_rows(frame, locks, ["mmap_lock"])
    rows = {r["owner_pid"]: r for r in summary if r["mode"] == "write"}
    assert set(rows) == {100, 200} and len(summary) == 3
    assert rows[100]["owner_comm"] == "sh" and rows[200]["owner_comm"] == "mmapcount"
    assert rows[100]["lock_addr"] == rows[200]["lock_addr"] == f"{A:#x}"
    assert rows[100]["lock_id"] == f"{first:#x}" and rows[200]["lock_id"] == f"{second:#x}"
    assert (rows[100]["acquisitions"], rows[200]["acquisitions"]) == (3, 5)
    # Reconciled per process, not per address: the first process's downgrade
    # pairs with its own read release (with the second's write it would not).
    (first_read,) = [r for r in summary if r["mode"] == "read"]
    assert first_read["still_held"] == 0
    assert rows[100]["still_held"] == 0 and rows[200]["still_held"] == 0


def _no_callers():
    import pandas as pd

    from profiler.recording import CALLER_COLUMNS

    return pd.DataFrame(columns=CALLER_COLUMNS)


def test_an_exited_owner_whose_rows_are_not_read_yet_is_kept_one_round():
    """A process that started after the interval's read of the lock map and
    exited before the round: its owner entry is kept one round, until the
    next read hands its lock an id (forgotten then with its owner); an
    entry whose rows never come is forgotten the round after."""
    ids = LockIds()
    known_id = ids.id_of(0x1000, 7)
    entries = {
        (0x1000, 7): (10, "seen"),  # exited, its row read: forgotten now
        (0x2000, 8): (11, "late"),  # exited, no row read yet: kept
        (0x3000, 9): (12, "alive"),  # alive: kept, not deferred
        (0x4000, 0): (13, "nogen"),  # no generations: the address's, kept
    }
    alive = {12}.__contains__
    forget, unread = lockids.dead_owners(entries, alive, ids.find, set())
    assert forget == [(0x1000, 7, known_id)]
    assert unread == {(0x2000, 8)}

    # Next round: the late process's row was read in between.
    late_id = ids.id_of(0x2000, 8)
    again = {key: entries[key] for key in [(0x2000, 8), (0x3000, 9), (0x4000, 0)]}
    forget, unread = lockids.dead_owners(again, alive, ids.find, unread)
    assert forget == [(0x2000, 8, late_id)]
    assert unread == set()

    # An entry whose rows never come goes on the second round.
    never = {(0x5000, 3): (14, "lost")}
    forget, unread = lockids.dead_owners(never, alive, ids.find, set())
    assert (forget, unread) == ([], {(0x5000, 3)})
    forget, unread = lockids.dead_owners(never, alive, ids.find, unread)
    assert (forget, unread) == ([(0x5000, 3, None)], set())


def test_an_id_handed_out_since_the_last_read_is_not_forgotten():
    """The round's sequence for a process that started after the read and
    exited before the round: retiring its task rows hands its lock an id;
    its lock rows are in the kernel but not read. The id, and its owner,
    must stay for the next read to find; after a read that did not see
    them, it goes."""
    ids = LockIds()
    ids.read_begins()
    read_id = ids.id_of(0x1000, 1)  # an earlier process's row, read
    ids.read_begins()  # the next interval's read: it sees that row again
    assert ids.id_of(0x1000, 1) == read_id
    task_id = ids.id_of(0x1000, 2)  # the late process's task rows, after the read
    ids.set_owner(task_id, 20, "late")
    alive = {20: False}.get

    read = {read_id}  # the ids of the rows read (bpf.py _kernel_keys)
    assert ids.since_read() == {task_id}
    assert task_id not in ids.to_forget(read | ids.since_read(), alive)
    assert ids.id_of(0x1000, 2) == task_id  # the next read finds it...
    assert ids.owner_of(task_id) == (20, "late")  # ...with its owner

    # Without it (only the rows read) it was forgotten.
    assert task_id in ids.to_forget(read, alive)
    # A read that did not see its rows: it goes.
    ids.read_begins()
    assert task_id in ids.to_forget(read | ids.since_read(), alive)
    ids.forget(task_id)
    assert ids.since_read() == set()
