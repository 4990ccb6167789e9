// SPDX-License-Identifier: GPL-2.0
/*
 * lockprof kernel side: wait and hold times of mmap_lock and of every lock
 * class that lock:contention_begin/end report.
 *
 * Loaded by profiler/bpf.py with BCC. Valid C as it stands: build-time
 * parameters come in as -D defines (defaults below), runtime switches live in
 * the one-entry lp_config map. The functions are attached individually by
 * Python from its probe table (profiler/probes.py), so none is auto-attached.
 *
 * Hot-path design (measured in docs/performance.md):
 *   - raw tracepoints: no trace-event record is built (the mmap_lock events'
 *     memcg id lookup is skipped), arguments come from TP_PROTO;
 *   - per-task state in task-local storage, not a tid-keyed hash;
 *   - aggregates in a per-CPU array, so counters need no atomic instructions.
 *     A hash (lp_slots) gives each (lock, flags, source) its array index once;
 *     tasks cache the index of the mmap_lock they use and each held entry
 *     carries its own, so the mmap_lock path does no hash lookup at all
 *     (a per-CPU hash lookup measured ~40 ns, an array lookup a few).
 */
#include <uapi/linux/ptrace.h>
#include "lockprof.h"

/* Only as a pointer type: its fields are read at their BTF offsets (below).
 * With <linux/sched.h> (and the sample section's header) every compile took
 * ~0.65 s longer (docs/performance.md, twelfth session). */
struct task_struct;

/*
 * The opt-in program families are compiled only for a run that uses them
 * (profiler/bpf.py probe_cflags): lock specs (--locks), off-CPU (--offcpu)
 * and CPU samples (--sample, with its header). Compiling was most of the
 * time to the first live row: 1.7-1.9 s with everything, 1.3-1.4 s without
 * these programs, 0.65 s without their headers too. Default: everything, so
 * that the file stands alone.
 */
#ifndef LP_WITH_LOCK_SPECS
#define LP_WITH_LOCK_SPECS 1
#endif
#ifndef LP_WITH_OFFCPU
#define LP_WITH_OFFCPU 1
#endif
#ifndef LP_WITH_SAMPLE
#define LP_WITH_SAMPLE 1
#endif

/*
 * A maps-only compile (profiler/bpf.py, the compiled-probe cache): every
 * program becomes an unused static function, which clang parses but never
 * emits, so only the maps are built (~0.5 s against ~1.3-1.7 s for the whole
 * file on the AMD guest). The programs' instructions come from the cache,
 * relocated to these maps. One stub program stays (end of file).
 */
#ifndef LP_MAPS_ONLY
#define LP_MAPS_ONLY 0
#endif
#if LP_MAPS_ONLY
#define LP_PROGRAM static __attribute__((unused))
#else
#define LP_PROGRAM
#endif

/* Struct offsets come from BTF at run time (profiler/btf.py): the kernel
 * headers BCC compiles against may be a fallback with wrong layouts. */
#ifndef LP_TASK_MM_OFFSET
#error "LP_TASK_MM_OFFSET (offsetof(struct task_struct, mm)) must come from BTF"
#endif
#ifndef LP_MMAP_LOCK_OFFSET
#error "LP_MMAP_LOCK_OFFSET (offsetof(struct mm_struct, mmap_lock)) must come from BTF"
#endif
#ifndef LP_TASK_TGID_OFFSET
#error "LP_TASK_TGID_OFFSET (offsetof(struct task_struct, tgid)) must come from BTF"
#endif
/* offsetof(struct mm_struct, context.ctx_id): x86's id of each mm, never
 * reused (profiler/btf.py); -1 where the kernel has none: generations are
 * then handed out here, as each mm's owner is learned (lp_learn_gen). */
#ifndef LP_MM_ID_OFFSET
#define LP_MM_ID_OFFSET -1
#endif
#ifndef LP_TASK_REAL_PARENT_OFFSET
#error "LP_TASK_REAL_PARENT_OFFSET (offsetof(struct task_struct, real_parent)) must come from BTF"
#endif
#ifndef LP_TASK_FLAGS_OFFSET
#error "LP_TASK_FLAGS_OFFSET (offsetof(struct task_struct, flags)) must come from BTF"
#endif
#ifndef LP_TASK_COMM_OFFSET
#error "LP_TASK_COMM_OFFSET (offsetof(struct task_struct, comm)) must come from BTF"
#endif
#ifndef LP_TASK_GROUP_LEADER_OFFSET
#error "LP_TASK_GROUP_LEADER_OFFSET (offsetof(struct task_struct, group_leader)) must come from BTF"
#endif
#define LP_PF_KTHREAD 0x00200000 /* include/linux/sched.h, stable since 2.6 */
/* offsetof(struct mm_struct, owner) (CONFIG_MEMCG), for lp_learn_idle_target();
 * -1: the kernel has none. */
#ifndef LP_MM_OWNER_OFFSET
#define LP_MM_OWNER_OFFSET -1
#endif
/* offsetof(struct mm_struct, map_count), for lp_foreign_gen(); -1: unknown. */
#ifndef LP_MM_MAP_COUNT_OFFSET
#define LP_MM_MAP_COUNT_OFFSET -1
#endif
/* Bits of a numbered generation that hold the CPU that handed it out. */
#ifndef LP_GEN_CPU_BITS
#define LP_GEN_CPU_BITS 12
#endif

/* Per-task rows for a process's own tasks on its own mmap_lock cost a hash
 * update per acquisition and release (docs/performance.md). By default only
 * foreign tasks (khugepaged, /proc readers, ptrace) and contended waits get
 * per-task rows; -DLP_TASK_SPLIT_OWN=1 adds the owner's own tasks. */
#ifndef LP_TASK_SPLIT_OWN
#define LP_TASK_SPLIT_OWN 0
#endif

#if (LP_MAX_NEST & (LP_MAX_NEST - 1)) != 0
#error "LP_MAX_NEST must be a power of two"
#endif
#if (LP_CONTENDED & (LP_CONTENDED - 1)) != 0
#error "LP_CONTENDED must be a power of two"
#endif

BPF_ARRAY(lp_config, struct lp_config, 1);
/* --lock-types: 1 for the LP_LCB_* flag combinations whose contention is
 * left out (all 0, every type kept, unless Python fills it). */
BPF_ARRAY(lp_type_drop, u32, LP_TYPE_SLOTS);
BPF_PERCPU_ARRAY(lp_errors, u64, LP_NR_ERRORS);
/* When this CPU last took a contention stack (the --stack-rate limit): [0]
 * for long waits, [1] for naming stacks (lp_wait_stack). A CPU's first of
 * each is free (0: never). */
BPF_PERCPU_ARRAY(lp_stack_last, u64, 2);
/* Per contention row (lp_stats index), the lock this CPU took a naming
 * stack for (lp_wait_stack): a row reused for another lock reads as unnamed. */
BPF_PERCPU_ARRAY(lp_row_named, u64, LP_MAX_LOCKS);

/* Probes for a free lp_stats index before a new key counts as map full. */
#ifndef LP_SLOT_PROBES
#define LP_SLOT_PROBES 16
#endif

BPF_HASH(lp_slots, struct lp_key, u32, LP_MAX_LOCKS);      /* key -> index */
BPF_HASH(lp_slot_keys, u32, struct lp_key, LP_MAX_LOCKS);  /* index -> key */
BPF_PERCPU_ARRAY(lp_stats, struct lp_stats, LP_MAX_LOCKS);
/*
 * Rows of locks that are gone (their process exited) or idle while the map
 * fills are retired by Python (profiler/bpf.py retire_locks), so that a long
 * run under process churn does not fill lp_stats. Retiring key K at index I:
 * lp_slot_keys[I] becomes a tombstone (source LP_SRC_RETIRED: K's probing no
 * longer meets I), lp_slots[K] is deleted, then lp_epoch is bumped. Tasks
 * cache indexes with the epoch they saw (lp_slot_cache()), so a cached I is
 * dropped at the task's next event; K, if used again, gets a new index.
 * Python reads I's last figures, zeroes it and frees the tombstone one round
 * (seconds) later, long after any program that could still hold I returned.
 */
BPF_ARRAY(lp_epoch, u32, 1);
/* Per-task rows: a key -> index hash holding at most LP_MAX_TASKS keys (its
 * insert failing is task_map_full, as for a hash of rows), over twice as many
 * indexes, so that probing for a free one nearly never fails before that.
 * Python frees the rows of exited tasks (profiler/bpf.py retire_dead_tasks):
 * it unpublishes the key, zeroes the row, then frees the index. */
#ifndef LP_TASK_ROWS
#define LP_TASK_ROWS (2 * LP_MAX_TASKS)
#endif
BPF_HASH(lp_task_slots, struct lp_task_key, u32, LP_MAX_TASKS);       /* key -> index */
BPF_HASH(lp_task_slot_keys, u32, struct lp_task_key, LP_TASK_ROWS);   /* index -> key */
BPF_ARRAY(lp_task_rows, struct lp_task_row, LP_TASK_ROWS);
/* Per-CPU: two threads contending on one lock from one call site would
 * otherwise bounce the entry's cache line on every wait. */
BPF_F_TABLE("percpu_hash", struct lp_caller_key, struct lp_caller_stats, lp_callers,
	    LP_MAX_CALLERS, 0);
/* Callers of waits too short for a stack (stack_id -1, nearly all of them):
 * one row per contention lp_stats row, at the same index, so that the common
 * case is an array slot rather than a hash lookup. Python merges them into
 * the callers as (lock, -1, flags). */
BPF_PERCPU_ARRAY(lp_short_callers, struct lp_caller_stats, LP_MAX_LOCKS);
/* (mmap_lock, mm generation) -> the process seen on that mm as its own, and
 * mmap_lock -> its latest generation (for contended rwsems: is this one an
 * mmap_lock, and whose?). Python deletes the entries of exited processes
 * (profiler/bpf.py forget_owners). */
BPF_HASH(lp_owners, struct lp_owner_key, struct lp_owner, LP_MAX_OWNERS);
BPF_HASH(lp_mm_gens, u64, u32, LP_MAX_OWNERS);
/* Without x86's mm ids: the generations this CPU has handed out, and which
 * new generation the threads of a process seen on a new mm at once agree on
 * (lp_learn_gen; only the moment of the race needs it: least recently used
 * claims go first). */
#if LP_MM_ID_OFFSET < 0
BPF_PERCPU_ARRAY(lp_gen_next, u32, 1);
struct lp_gen_claim {
	u64 lock;
	u32 old_gen;
	u32 tgid;
};
BPF_TABLE("lru_hash", struct lp_gen_claim, u32, lp_gen_claims, LP_MAX_OWNERS);
#endif
/* --follow: the target's descendants (added at fork, lp_follow_fork) and the
 * mmap_locks of their own mms (learned as the target's is, lp_learn_owner),
 * each with its mm's generation (lp_same_mm). */
BPF_HASH(lp_followed, u32, u32, LP_MAX_OWNERS);
BPF_HASH(lp_followed_locks, u64, u32, LP_MAX_OWNERS);
BPF_TABLE("stacktrace", int, struct lp_stack, lp_stacks, LP_MAX_STACKS);
BPF_TASK_STORAGE(lp_task_store, struct lp_task);
BPF_RINGBUF_OUTPUT(lp_events, LP_RINGBUF_PAGES);

static __always_inline void lp_error(u32 which)
{
	u64 *count = lp_errors.lookup(&which);

	if (count)
		(*count)++; /* per-CPU slot: no other CPU writes it */
}

/*
 * The configuration, or NULL while the probes are not armed: every program
 * then does nothing. Python attaches the programs one at a time (each is
 * verified when attached, milliseconds apart), then arms them all at once.
 * Without the gate, a task taking mmap_lock between the attach of
 * lp_mmap_acquired and that of lp_mmap_released (~10 ms: the latter's
 * verification) pushed holds whose releases were never seen: held[] filled
 * with stale entries, its later acquisitions counted held_overflow, its
 * munmap downgrades downgrade_without_write, and later releases popped the
 * stale entries with wrong hold times. What remains after arming is inherent:
 * a hold or wait in progress at the arming instant shows once as
 * release_without_acquire, downgrade_without_write or acquire_without_start.
 */
static __always_inline struct lp_config *lp_cfg(void)
{
	int zero = 0;
	struct lp_config *cfg = lp_config.lookup(&zero);

	if (!cfg || !cfg->armed)
		return 0;
	return cfg;
}

static __always_inline u32 lp_foreign_gen(u64 mm);

/*
 * Is the mm whose mmap_lock is at lock still the one of generation gen (a
 * followed mm: the target's, a descendant's)? The kernel gives a freed mm's
 * address to the next mm at once, and a fork or exec building that mm takes
 * its lock from another process's task, before the new process can be told
 * apart by its tgid (lp_learn_owner): those events were counted as tasks on
 * the target's lock, in an "owner unknown" row (`run -- true` beside a busy
 * fork loop: 7 runs of 10). Only for tasks of other processes on a followed
 * lock's address: with x86's mm ids a read of the mm's id; without, the
 * mm's latest generation (lp_foreign_gen: a new one for an mm being built).
 * gen 0, or no generation now: not known, taken as the same.
 */
static __always_inline int lp_same_mm(u64 lock, u32 gen)
{
	u32 now;

	if (!gen)
		return 1;
	now = lp_foreign_gen(lock - LP_MMAP_LOCK_OFFSET);
	return !now || now == gen;
}

/* Is this process ours (events with no lock: off-CPU, samples)? */
static __always_inline int lp_wanted_process(struct lp_config *cfg, u32 tgid)
{
	return cfg->target_tgid == 0 || cfg->target_tgid == tgid ||
	       (cfg->follow && lp_followed.lookup(&tgid));
}

/*
 * Is this event ours? The target's own tasks, or anyone on its mmap_lock
 * (and with --follow, the same for its descendants), while that lock's mm
 * is the one followed (lp_same_mm, called at one place: it is inlined in
 * every program that asks). A lock whose mm was freed and another built at
 * its address is followed no more, as lp_learn_owner does when the
 * newcomer's own process takes it.
 */
static __always_inline int lp_wanted(struct lp_config *cfg, u32 tgid, u64 lock)
{
	u32 *followed_gen = 0;
	u32 gen;

	if (cfg->target_tgid == 0)
		return 1;
	if (tgid == cfg->self_tgid)
		return 0; /* lockprof looking at the target (lp_learn_idle_target) */
	if (cfg->target_tgid == tgid || (cfg->follow && lp_followed.lookup(&tgid)))
		return 1;
	if (cfg->target_lock == lock)
		gen = cfg->target_gen;
	else if (cfg->follow && (followed_gen = lp_followed_locks.lookup(&lock)))
		gen = *followed_gen;
	else
		return 0;
	if (lp_same_mm(lock, gen))
		return 1;
	if (followed_gen)
		lp_followed_locks.delete(&lock);
	else
		cfg->target_lock = 0; /* one aligned 8-byte store */
	return 0;
}

/* The same, asking for the current task's tgid only when a target is set:
 * system-wide, the hot paths that need no pid skip the helper call. */
static __always_inline int lp_wanted_now(struct lp_config *cfg, u64 lock)
{
	u32 target = cfg->target_tgid;

	if (target == 0)
		return 1;
	return lp_wanted(cfg, bpf_get_current_pid_tgid() >> 32, lock);
}

static __always_inline struct lp_task *lp_task_get(int create)
{
	struct lp_task *ts;

	ts = lp_task_store.task_storage_get(bpf_get_current_task_btf(), 0,
					    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	if (!ts && create)
		lp_error(LP_ERR_TASK_STORAGE);
	return ts;
}

/* slot 0: 0 ns; slot s >= 1: [2^(s-1), 2^s) ns; the last slot takes the rest. */
static __always_inline u32 lp_slot(u64 ns)
{
	u32 slot = 0;

	if (ns == 0)
		return 0;
	if (ns >> 32) { ns >>= 32; slot += 32; }
	if (ns >> 16) { ns >>= 16; slot += 16; }
	if (ns >> 8)  { ns >>= 8;  slot += 8; }
	if (ns >> 4)  { ns >>= 4;  slot += 4; }
	if (ns >> 2)  { ns >>= 2;  slot += 2; }
	if (ns >> 1)  { slot += 1; }
	slot += 1;
	return slot < LP_HIST_SLOTS ? slot : LP_HIST_SLOTS - 1;
}

/*
 * Plain adds on a per-CPU value. Each program is kept from re-entering on one
 * CPU by the kernel (prog->active), so a given field is written by one program
 * run at a time per CPU. The hold histogram is written by both the release and
 * the downgrade program; a preempted update there could lose one sample on a
 * fully preemptible kernel. The max is racy in the same, rare, way.
 */
static __always_inline void lp_hist_add(struct lp_hist *h, u64 ns)
{
	u32 slot = lp_slot(ns);

	h->count++;
	h->total_ns += ns;
	if (ns > h->max_ns)
		h->max_ns = ns;
	if (slot < LP_HIST_SLOTS)
		h->slots[slot]++;
}

/*
 * The lp_stats index of a key, plus one (0: no free index: the map is full).
 *
 * Indexes are handed out without a shared counter (BCC's LLVM target cannot
 * use a fetch-and-add's result, and tracing programs cannot take a
 * bpf_spin_lock): a key claims a free index in lp_slot_keys with an atomic
 * NOEXIST insert, probing from a hash of the key. Two CPUs seeing a new key
 * at once either claim different indexes (the first into lp_slots wins; the
 * other index holds nothing and is never read) or meet on the same one.
 * Only a key's first sighting comes here: tasks cache their index.
 */
static __always_inline u32 lp_slot_of(u64 lock, u32 flags, u32 source, u32 gen)
{
	struct lp_key key = { .lock = lock, .flags = flags, .source = source, .mm_gen = gen };
	u64 hash = ((lock >> 3) ^ ((u64)flags << 40) ^ ((u64)source << 56) ^ ((u64)gen << 20)) *
		   0x9E3779B97F4A7C15ULL;
	u32 start = (u32)(hash >> 32) % LP_MAX_LOCKS;
	u32 step = ((u32)hash % LP_MAX_LOCKS) | 1;
	u32 *found = lp_slots.lookup(&key);
	u32 slot = LP_MAX_LOCKS;

	if (found)
		return *found + 1;
#pragma unroll
	for (int i = 0; i < LP_SLOT_PROBES; i++) {
		u32 candidate = (start + i * step) % LP_MAX_LOCKS;
		struct lp_key *claim;

		if (lp_slot_keys.insert(&candidate, &key) == 0) {
			slot = candidate;
			break;
		}
		claim = lp_slot_keys.lookup(&candidate);
		if (claim && claim->lock == lock && claim->flags == flags && claim->source == source &&
		    claim->mm_gen == gen) {
			slot = candidate;
			break;
		}
	}
	if (slot >= LP_MAX_LOCKS) {
		lp_error(LP_ERR_STATS_MAP_FULL);
		return 0;
	}
	lp_slots.insert(&key, &slot);
	found = lp_slots.lookup(&key);
	if (!found) {
		lp_error(LP_ERR_STATS_MAP_FULL);
		return 0;
	}
	return *found + 1;
}

static __always_inline struct lp_stats *lp_stats_at(u32 slot_plus1)
{
	u32 slot = slot_plus1 - 1;

	if (!slot_plus1)
		return 0;
	return lp_stats.lookup(&slot);
}

static __always_inline struct lp_stats *lp_stats_get(u64 lock, u32 flags, u32 source)
{
	return lp_stats_at(lp_slot_of(lock, flags, source, 0));
}

/* Drop the task's cached lp_stats indexes if Python retired rows since they
 * were cached: a retired index is freed, then given to another key. An array
 * lookup with a constant key: the verifier inlines it. */
static __always_inline void lp_slot_cache(struct lp_task *ts)
{
	int zero = 0;
	u32 *epoch = lp_epoch.lookup(&zero);

	if (!epoch || ts->slot_epoch == *epoch)
		return;
	ts->slot_epoch = *epoch;
	ts->slot_lock = 0;
	ts->slot_plus1[0] = 0;
	ts->slot_plus1[1] = 0;
#pragma unroll
	for (int i = 0; i < LP_CONTENDED; i++)
		ts->contended[i].slot_plus1 = 0;
}

/*
 * An mm's generation: the low 32 bits of its x86 context id, which the
 * kernel hands out once per mm, when it creates it (for a forked child, or
 * an exec). An mm address serves process after process; the generation
 * tells them apart, from the fork or exec that builds the mm on (four
 * billion mms later, two could share an address and a generation).
 *
 * Where the kernel has no such id (arm64, and the rest), generations are
 * handed out here (lp_new_gen): when a task foreign to an mm takes its lock
 * while the mm is being built (lp_foreign_gen), and when a process is first
 * seen on its own mm (lp_learn_gen).
 */
static __always_inline u32 lp_mm_gen(u64 mm)
{
#if LP_MM_ID_OFFSET >= 0
	u64 id = 0;

	bpf_probe_read_kernel(&id, sizeof(id), (void *)(mm + LP_MM_ID_OFFSET));
	return (u32)id ? (u32)id : 1;
#else
	u64 lock = mm + LP_MMAP_LOCK_OFFSET;
	u32 *gen = lp_mm_gens.lookup(&lock);

	return gen ? *gen : 0;
#endif
}

/* The current task's parent if the task runs on the parent's mm (a vfork
 * child before its exec, or another CLONE_VM child), else 0. */
static __always_inline u64 lp_parent_on_mm(u64 mm)
{
	u64 parent = 0, parent_mm = 0;

	bpf_probe_read_kernel(&parent, sizeof(parent),
			      (void *)(bpf_get_current_task() + LP_TASK_REAL_PARENT_OFFSET));
	if (!parent)
		return 0;
	bpf_probe_read_kernel(&parent_mm, sizeof(parent_mm), (void *)(parent + LP_TASK_MM_OFFSET));
	return parent_mm == mm ? parent : 0;
}

/* A kernel thread, even one on a borrowed mm (kthread_use_mm: vhost, ...)? */
static __always_inline int lp_kthread(void)
{
	u32 flags = 0;

	bpf_probe_read_kernel(&flags, sizeof(flags),
			      (void *)(bpf_get_current_task() + LP_TASK_FLAGS_OFFSET));
	return flags & LP_PF_KTHREAD;
}

#if LP_MM_ID_OFFSET < 0
/* A generation no other mm has, without a shared counter: this CPU's next,
 * and the CPU. */
static __always_inline u32 lp_new_gen(void)
{
	int zero = 0;
	u32 *next = lp_gen_next.lookup(&zero);
	u32 gen;

	if (!next)
		return 0;
	*next += 1; /* per-CPU slot: only this CPU writes it */
	/* Python sizes LP_GEN_CPU_BITS to the CPUs: 2^(32 - bits) numbers per
	 * CPU before they come round again (a million with 12 bits). */
	gen = (*next << LP_GEN_CPU_BITS) |
	      (bpf_get_smp_processor_id() & ((1U << LP_GEN_CPU_BITS) - 1));
	return gen ? gen : 1;
}

/* The latest generation of lock, and whether a process has claimed it
 * (lp_owners holds its owner). */
static __always_inline u32 lp_latest_gen(u64 lock, struct lp_owner **owner)
{
	u32 *latest = lp_mm_gens.lookup(&lock);
	struct lp_owner_key seen = { .lock = lock };

	*owner = 0;
	if (!latest)
		return 0;
	seen.mm_gen = *latest;
	*owner = lp_owners.lookup(&seen);
	return *latest;
}
#endif

/*
 * The generation of an mm a task foreign to it takes the lock of. With x86's
 * ids, the mm's own. Without, the mm's latest generation; but an mm with no
 * mapping yet (map_count 0) is being built, by the parent that forks
 * (dup_mmap) or the task that execs (the new mm is not yet its own; a
 * kernel thread starting the first user process too): a live mm always has
 * mappings, a dying one keeps its count. Such an mm is a new one: the latest
 * generation of its address, if a process claimed it, was that of an mm that
 * is gone. It gets a new generation, unclaimed until its process is first
 * seen on it (lp_learn_gen). Limit: an mm built and freed unclaimed (a
 * failed exec) leaves its generation to the next mm built at its address.
 */
static __always_inline u32 lp_foreign_gen(u64 mm)
{
#if LP_MM_ID_OFFSET >= 0 || LP_MM_MAP_COUNT_OFFSET < 0
	return lp_mm_gen(mm);
#else
	u64 lock = mm + LP_MMAP_LOCK_OFFSET;
	struct lp_owner *owner;
	u32 gen = lp_latest_gen(lock, &owner);
	int mappings = -1;

	if (gen && !owner)
		return gen; /* being built already, under this generation */
	bpf_probe_read_kernel(&mappings, sizeof(mappings), (void *)(mm + LP_MM_MAP_COUNT_OFFSET));
	if (mappings != 0)
		return gen;
	gen = lp_new_gen();
	if (gen && lp_mm_gens.update(&lock, &gen))
		lp_error(LP_ERR_OWNER_MAP_FULL);
	return gen;
#endif
}

/*
 * The generation of the mm process tgid has just been seen on as its own
 * (lp_learn_owner; a vfork child's task is learned as its parent's). With
 * x86's ids, the mm's own. Without, the mm's latest generation if no process
 * has claimed it yet (the mm was built under it, lp_foreign_gen) or this one
 * has (another thread learned it); else the latest is that of an mm that is
 * gone, and this one gets a new generation.
 */
static __always_inline u32 lp_learn_gen(u64 mm, u32 tgid)
{
#if LP_MM_ID_OFFSET >= 0
	return lp_mm_gen(mm);
#else
	struct lp_owner *owner;
	u64 lock = mm + LP_MMAP_LOCK_OFFSET;
	u32 gen = lp_latest_gen(lock, &owner), fresh, *won;

	if (gen && (!owner || owner->tgid == tgid))
		return gen;
	/* A new mm (or its first sighting). Its threads may all get here
	 * before any has recorded a generation: the first claim wins. (A
	 * claim found again after its pid came round needs 4,096 newer
	 * claims not to have pushed it out of the LRU map first.) */
	struct lp_gen_claim claim = { .lock = lock, .old_gen = gen, .tgid = tgid };

	fresh = lp_new_gen();
	lp_gen_claims.insert(&claim, &fresh);
	won = lp_gen_claims.lookup(&claim);
	return won ? *won : fresh;
#endif
}

/* Is lock the mmap_lock of the task's own mm (as lp_learn_owner saw it)? */
static __always_inline int lp_own_lock(struct lp_task *ts, u64 lock)
{
	return ts->own_mm && ts->own_mm + LP_MMAP_LOCK_OFFSET == lock;
}

/* The generation of an mmap_lock's mm: cached for the task's own mm; read
 * for another's (khugepaged, /proc/N/maps readers, a fork or exec building
 * a new mm). */
static __always_inline u32 lp_mmap_gen(struct lp_task *ts, u64 lock)
{
	if (lp_own_lock(ts, lock))
		return ts->own_gen;
	return lp_foreign_gen(lock - LP_MMAP_LOCK_OFFSET);
}

/* The mm generation of a contended lock, if it is an mmap_lock: an rwsem
 * some task was seen taking as its own mm's. Not read from the lock's
 * surroundings: an rwsem that is not an mmap_lock has no mm around it. */
static __always_inline u32 lp_contention_gen(struct lp_task *ts, u64 lock, u32 flags)
{
	u32 *gen;

	if (flags != LP_LCB_READ && flags != LP_LCB_WRITE)
		return 0; /* not a plain rwsem: never an mmap_lock */
	if (lp_own_lock(ts, lock))
		return ts->own_gen;
	gen = lp_mm_gens.lookup(&lock);
	return gen ? *gen : 0;
}

/* The index of this task's mmap_lock row, cached: the same task nearly
 * always takes the same mmap_lock, of the same mm. */
static __always_inline u32 lp_mmap_slot(struct lp_task *ts, u64 lock, u32 flags, u32 gen)
{
	u32 write = flags == LP_LCB_WRITE ? 1 : 0;

	lp_slot_cache(ts);
	if (ts->slot_lock != lock || ts->slot_gen != gen) {
		ts->slot_lock = lock;
		ts->slot_gen = gen;
		ts->slot_plus1[0] = 0;
		ts->slot_plus1[1] = 0;
	}
	if (!ts->slot_plus1[write])
		ts->slot_plus1[write] = lp_slot_of(lock, flags, LP_SRC_MMAP_LOCK, gen);
	return ts->slot_plus1[write];
}

static __always_inline int lp_task_key_is(struct lp_task_key *a, struct lp_task_key *b)
{
	return a->lock == b->lock && a->tid == b->tid && a->tgid == b->tgid &&
	       a->flags == b->flags && a->source == b->source && a->mm_gen == b->mm_gen;
}

/*
 * The lp_task_rows index of a key, plus one (0: the task map is full). A new
 * key claims a free index (an atomic NOEXIST insert into lp_task_slot_keys,
 * probing as lp_slot_of() does), fills the row, then publishes key -> index.
 * Only the current task creates its own keys, so two claims of one key do
 * not meet; should they, the one whose publish fails frees its index.
 */
static __always_inline u32 lp_task_row_of(struct lp_task_key *key)
{
	u32 *found = lp_task_slots.lookup(key);
	u64 hash = ((key->lock >> 3) ^ ((u64)key->tid << 24) ^ ((u64)key->flags << 48) ^
		    ((u64)key->source << 60) ^ ((u64)key->mm_gen << 8)) * 0x9E3779B97F4A7C15ULL;
	u32 start = (u32)(hash >> 32) % LP_TASK_ROWS;
	u32 step = ((u32)hash % LP_TASK_ROWS) | 1;
	u32 slot = LP_TASK_ROWS;
	struct lp_task_row *row;

	if (found)
		return *found + 1;
#pragma unroll
	for (int i = 0; i < LP_SLOT_PROBES; i++) {
		u32 candidate = (start + i * step) % LP_TASK_ROWS;

		if (lp_task_slot_keys.insert(&candidate, key) == 0) {
			slot = candidate;
			break;
		}
	}
	if (slot >= LP_TASK_ROWS) {
		lp_error(LP_ERR_TASK_MAP_FULL);
		return 0;
	}
	row = lp_task_rows.lookup(&slot);
	if (!row) {
		lp_task_slot_keys.delete(&slot);
		lp_error(LP_ERR_TASK_MAP_FULL);
		return 0;
	}
	row->key = *key;
	row->stats.waits = 0;
	row->stats.wait_ns = 0;
	row->stats.holds = 0;
	row->stats.hold_ns = 0;
	bpf_get_current_comm(&row->stats.comm, sizeof(row->stats.comm));
	if (lp_task_slots.insert(key, &slot)) {
		row->key.lock = 0;
		row->key.tid = 0;
		row->key.tgid = 0;
		row->key.mm_gen = 0;
		lp_task_slot_keys.delete(&slot);
		found = lp_task_slots.lookup(key);
		if (found)
			return *found + 1;
		lp_error(LP_ERR_TASK_MAP_FULL);
		return 0;
	}
	return slot + 1;
}

static __always_inline struct lp_task_row *lp_task_row_at(u32 slot_plus1)
{
	u32 slot = slot_plus1 - 1;

	if (!slot_plus1)
		return 0;
	return lp_task_rows.lookup(&slot);
}

/* Per-task split. Only the current task writes its own row, so plain adds;
 * but every CPU's idle task is pid 0, and an interrupt's contended waits on
 * idle CPUs share one row: atomic adds there. */
static __always_inline void lp_task_add(struct lp_task_row *row, u64 wait_ns, u64 hold_ns,
					int is_hold)
{
	if (row->key.tid == 0 && is_hold) {
		__sync_fetch_and_add(&row->stats.holds, 1);
		__sync_fetch_and_add(&row->stats.hold_ns, hold_ns);
		return;
	}
	if (row->key.tid == 0) {
		__sync_fetch_and_add(&row->stats.waits, 1);
		__sync_fetch_and_add(&row->stats.wait_ns, wait_ns);
		return;
	}
	if (is_hold) {
		row->stats.holds++;
		row->stats.hold_ns += hold_ns;
	} else {
		row->stats.waits++;
		row->stats.wait_ns += wait_ns;
	}
}

static __always_inline void lp_task_account(u64 lock, u32 flags, u32 source, u64 pid_tgid,
					    u64 wait_ns, u64 hold_ns, int is_hold)
{
	struct lp_task_key key = {
		.lock = lock, .tid = (u32)pid_tgid, .tgid = pid_tgid >> 32,
		.flags = flags, .source = source,
	};
	struct lp_task_row *row = lp_task_row_at(lp_task_row_of(&key));

	if (row)
		lp_task_add(row, wait_ns, hold_ns, is_hold);
}

/* A per-task row through an index cached in the task's storage (*hint), used
 * once the row's key is checked to be this event's: a task mostly takes one
 * lock in one way, and a freed or reused row fails the check. */
static __always_inline void lp_task_account_hint(u32 *hint, u64 lock, u32 flags, u32 source,
						 u32 gen, u64 wait_ns, u64 hold_ns, int is_hold)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lp_task_key key = {
		.lock = lock, .tid = (u32)pid_tgid, .tgid = pid_tgid >> 32,
		.flags = flags, .source = source, .mm_gen = gen,
	};
	struct lp_task_row *row = lp_task_row_at(*hint);

	if (!row || !lp_task_key_is(&row->key, &key)) {
		*hint = lp_task_row_of(&key);
		row = lp_task_row_at(*hint);
		if (!row)
			return;
	}
	lp_task_add(row, wait_ns, hold_ns, is_hold);
}

static __always_inline void lp_emit(struct lp_config *cfg, u64 now, u64 duration, u64 lock,
				    u32 gen, u32 flags, u32 source, u32 kind, s32 stack_id)
{
	struct lp_event *ev;
	u64 pid_tgid;

	if (duration < cfg->threshold_ns)
		return;
	pid_tgid = bpf_get_current_pid_tgid();
	ev = lp_events.ringbuf_reserve(sizeof(struct lp_event));
	if (!ev) {
		lp_error(LP_ERR_RINGBUF_FULL);
		return;
	}
	ev->ts_ns = now;
	ev->duration_ns = duration;
	ev->lock = lock;
	ev->tgid = pid_tgid >> 32;
	ev->tid = (u32)pid_tgid;
	ev->mm_gen = gen;
	ev->cpu = bpf_get_smp_processor_id();
	ev->stack_id = stack_id;
	ev->flags = flags;
	ev->source = source;
	ev->kind = kind;
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	/* No wakeup per event: a wakeup is an irq_work plus a context switch
	 * into the reader, per event. Python drains the ring every
	 * 100 ms (session.POLL_MS) instead; an overrun is counted as ringbuf_full. */
	lp_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

/* The name of task's process: its main thread's comm, as `ps` gives it. A
 * thread that renamed itself (pthread_setname_np: "wrk-thread",
 * "jemalloc_bg_thd") named its process's mmap_lock when it was the first
 * seen on it. The main thread's task_struct outlives its pthread_exit(). */
static __always_inline void lp_process_comm(u64 task, char comm[16])
{
	u64 leader = 0;

	bpf_probe_read_kernel(&leader, sizeof(leader), (void *)(task + LP_TASK_GROUP_LEADER_OFFSET));
	bpf_probe_read_kernel(comm, 16, (void *)((leader ? leader : task) + LP_TASK_COMM_OFFSET));
}

/*
 * Learn which process owns an mm, the first time a task is seen on its own
 * mm: the lock then gets a name (mmap_lock of pid N), and a --pid target's
 * mmap_lock address becomes known so that other tasks taking it are counted.
 */
static __always_inline int lp_learn_owner(struct lp_config *cfg, struct lp_task *ts, u64 mm)
{
	u64 task, current_mm = 0;
	u32 tgid;

	if (ts->own_mm == mm)
		return 0;
	task = bpf_get_current_task();
	tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_probe_read_kernel(&current_mm, sizeof(current_mm), (void *)(task + LP_TASK_MM_OFFSET));
	if (current_mm != mm)
		return 0; /* a foreign mm: khugepaged, /proc/N/maps readers, ptrace */
	if (lp_kthread())
		return 0; /* on a borrowed mm (kthread_use_mm): foreign too */
	struct lp_owner owner = {};
	u64 parent = lp_parent_on_mm(mm);

	if (parent) {
		/* A vfork child, on its parent's mm until it execs: learned as
		 * the parent, whose mm it is, even when the child is seen on it
		 * first (else the mm was named after the child, and without
		 * x86's ids numbered twice). */
		bpf_probe_read_kernel(&tgid, sizeof(tgid), (void *)(parent + LP_TASK_TGID_OFFSET));
		lp_process_comm(parent, owner.comm);
	} else {
		lp_process_comm(task, owner.comm);
	}
	owner.tgid = tgid;
	ts->own_mm = mm;
	ts->own_gen = lp_learn_gen(mm, tgid);
	if (cfg->target_tgid && cfg->target_tgid != tgid && cfg->target_lock == mm + LP_MMAP_LOCK_OFFSET &&
	    (!ts->own_gen || ts->own_gen != cfg->target_gen)) {
		/* Another process owns the target's mm address: the target's mm
		 * was freed (it exited or exec'd) and the address reused. Stop
		 * following the address, and leave this process's event out.
		 * (The same generation: a vfork child of the target, on its mm.) */
		cfg->target_lock = 0;
		return 1;
	}

	u64 lock = mm + LP_MMAP_LOCK_OFFSET;

	if (cfg->follow && cfg->target_tgid != tgid) {
		if (!lp_followed.lookup(&tgid)) {
			/* Not a descendant: the address was a descendant's mm,
			 * freed and reused, as above for the target's. */
			if (lp_followed_locks.lookup(&lock)) {
				lp_followed_locks.delete(&lock);
				return 1;
			}
		} else if (lp_followed_locks.update(&lock, &ts->own_gen)) {
			lp_error(LP_ERR_FOLLOW_MAP_FULL);
		}
	}

	struct lp_owner_key seen = { .lock = lock, .mm_gen = ts->own_gen };
	struct lp_owner *known = lp_owners.lookup(&seen);

	/* Another CLONE_VM process on the mm (not its parent's: a vfork
	 * child is learned as its parent): the mm keeps its process's name
	 * (with no generations, the newest process wins). */
	if (known && known->tgid != tgid && ts->own_gen)
		return 0;
	if (lp_owners.update(&seen, &owner) || lp_mm_gens.update(&lock, &ts->own_gen))
		lp_error(LP_ERR_OWNER_MAP_FULL);
	if (cfg->target_tgid == tgid) {
		cfg->target_gen = ts->own_gen;
		cfg->target_lock = lock; /* one aligned 8-byte store */
	}
	return 0;
}

/*
 * --pid: learn the target's mmap_lock from lockprof's own look at it.
 * lp_learn_owner() learns it when one of the target's tasks takes its own
 * mm's lock; a target that sleeps never does, and the tasks that took its
 * lock meanwhile (readers of /proc/N/cmdline, khugepaged) went uncounted.
 * Once the programs are armed, Python reads /proc/N/cmdline, which takes the
 * target's mmap_lock for read from lockprof's own task (whose events a
 * targeted run leaves out, lp_wanted): that mm is the target's if its owner
 * (CONFIG_MEMCG's mm->owner, a task of the process that owns it) is in the
 * target process. With --follow, the same for each descendant alive at
 * attach (Python reads their cmdline too). Only lockprof's own events pay
 * for the reads, and without --follow only until the lock is known.
 */
static __always_inline void lp_learn_idle_target(struct lp_config *cfg, u64 mm, u32 tgid)
{
#if LP_MM_OWNER_OFFSET >= 0
	struct lp_owner owner = {};
	struct lp_owner_key seen = {};
	u64 task = 0, lock = mm + LP_MMAP_LOCK_OFFSET;
	u32 gen;

	if (tgid != cfg->self_tgid || (cfg->target_lock && !cfg->follow))
		return;
	bpf_probe_read_kernel(&task, sizeof(task), (void *)(mm + LP_MM_OWNER_OFFSET));
	if (!task)
		return;
	bpf_probe_read_kernel(&owner.tgid, sizeof(owner.tgid), (void *)(task + LP_TASK_TGID_OFFSET));
	if (owner.tgid == cfg->target_tgid) {
		if (cfg->target_lock)
			return;
	} else if (!cfg->follow || !lp_followed.lookup(&owner.tgid) ||
		   lp_followed_locks.lookup(&lock)) {
		return; /* not a descendant's, or its lock is known */
	}
	lp_process_comm(task, owner.comm);
	gen = lp_learn_gen(mm, owner.tgid);
	seen.lock = lock;
	seen.mm_gen = gen;
	/* As lp_learn_owner() would when the process first takes its lock. */
	if (lp_owners.update(&seen, &owner) || lp_mm_gens.update(&lock, &gen))
		lp_error(LP_ERR_OWNER_MAP_FULL);
	if (owner.tgid != cfg->target_tgid) {
		if (lp_followed_locks.update(&lock, &gen))
			lp_error(LP_ERR_FOLLOW_MAP_FULL);
		return;
	}
	cfg->target_gen = gen;
	cfg->target_lock = lock; /* one aligned 8-byte store */
#endif
}

/* ---- --follow: sched_process_fork(struct task_struct *parent, *child) ----
 * Runs in the parent, before the child first runs: a process the target or a
 * followed process forks is followed from its first instruction. A new
 * thread (same tgid) needs nothing. */

LP_PROGRAM int lp_follow_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct lp_config *cfg = lp_cfg();
	u32 parent = bpf_get_current_pid_tgid() >> 32, child = 0, one = 1;

	if (!cfg || !cfg->follow)
		return 0;
	if (parent != cfg->target_tgid && !lp_followed.lookup(&parent))
		return 0;
	bpf_probe_read_kernel(&child, sizeof(child), (void *)(ctx->args[1] + LP_TASK_TGID_OFFSET));
	if (child == parent || child == 0)
		return 0;
	if (lp_followed.update(&child, &one))
		lp_error(LP_ERR_FOLLOW_MAP_FULL);
	return 0;
}

/* ---- mmap_lock: TP_PROTO(struct mm_struct *mm, bool write[, bool success]) ---- */

LP_PROGRAM int lp_mmap_start(struct bpf_raw_tracepoint_args *ctx)
{
	u64 mm = ctx->args[0];
	u64 lock = mm + LP_MMAP_LOCK_OFFSET;
	struct lp_config *cfg = lp_cfg();
	struct lp_task *ts;

	if (!cfg)
		return 0;
	if (cfg->target_tgid) { /* lp_wanted_now(), keeping the tgid */
		u32 tgid = bpf_get_current_pid_tgid() >> 32;

		if (!lp_wanted(cfg, tgid, lock)) {
			lp_learn_idle_target(cfg, mm, tgid);
			return 0;
		}
	}
	ts = lp_task_get(1);
	if (!ts)
		return 0;
	if (lp_learn_owner(cfg, ts, mm))
		return 0;
	ts->wait_lock = lock;
	ts->wait_flags = (u8)ctx->args[1] ? LP_LCB_WRITE : LP_LCB_READ;
	ts->wait_contended = 0;
	ts->wait_start_ns = bpf_ktime_get_ns();
	return 0;
}

/* Record a hold in the first free entry of held[LP_MAX_HELD] (the task's
 * mmap_lock holds, or its lock spec holds). */
static __always_inline int lp_held_push(struct lp_held *held, u64 lock, u32 flags, u64 now,
					u32 gen)
{
#pragma unroll
	for (int i = 0; i < LP_MAX_HELD; i++) {
		if (held[i].lock == 0) {
			held[i].lock = lock;
			held[i].flags = flags;
			held[i].since_ns = now;
			held[i].mm_gen = gen;
			return 0;
		}
	}
	lp_error(LP_ERR_HELD_OVERFLOW);
	return -1;
}

/* Index of the held slot for (lock, flags), or -1. */
static __always_inline int lp_held_find(struct lp_task *ts, u64 lock, u32 flags)
{
#pragma unroll
	for (int i = 0; i < LP_MAX_HELD; i++) {
		if (ts->held[i].lock == lock && ts->held[i].flags == flags)
			return i;
	}
	return -1;
}

/* Per-task row for an mmap_lock event, if this task is foreign to the mm. */
static __always_inline void lp_mmap_task_account(struct lp_task *ts, u64 lock, u32 flags,
						 u32 gen, u64 wait_ns, u64 hold_ns, int is_hold)
{
	if (!LP_TASK_SPLIT_OWN && lp_own_lock(ts, lock))
		return;
	lp_task_account_hint(&ts->mtask_plus1[flags == LP_LCB_WRITE ? 1 : 0], lock, flags,
			     LP_SRC_MMAP_LOCK, gen, wait_ns, hold_ns, is_hold);
}

/* A read acquisition with no start_locking: mmap_write_downgrade(). */
static __always_inline void lp_mmap_downgrade(struct lp_config *cfg, struct lp_task *ts, u64 lock,
					      u64 now)
{
	int i = lp_held_find(ts, lock, LP_LCB_WRITE);
	struct lp_stats *stats;
	u64 held_ns;
	u32 gen;

	if (i < 0 || i >= LP_MAX_HELD) {
		lp_error(LP_ERR_DOWNGRADE_WITHOUT_WRITE);
		return;
	}
	/* The generation the write lock was taken under: the mm's may have
	 * been renumbered since (lp_foreign_gen, a race with forget_owners). */
	gen = ts->held[i].mm_gen;
	held_ns = now - ts->held[i].since_ns;
	/* The row through the task's cache (not an index kept in held[]: a
	 * hold may outlast its row's retirement, the cache is checked). */
	stats = lp_stats_at(lp_mmap_slot(ts, lock, LP_LCB_WRITE, gen));
	ts->held[i].flags = LP_LCB_READ;
	ts->held[i].since_ns = now;
	if (stats) {
		stats->downgrades++;
		lp_hist_add(&stats->hold, held_ns);
	}
	lp_mmap_task_account(ts, lock, LP_LCB_WRITE, gen, 0, held_ns, 1);
	lp_emit(cfg, now, held_ns, lock, gen, LP_LCB_WRITE, LP_SRC_MMAP_LOCK, LP_KIND_HOLD, -1);
}

LP_PROGRAM int lp_mmap_acquired(struct bpf_raw_tracepoint_args *ctx)
{
	u64 mm = ctx->args[0];
	u64 lock = mm + LP_MMAP_LOCK_OFFSET;
	u32 flags = (u8)ctx->args[1] ? LP_LCB_WRITE : LP_LCB_READ;
	u32 success = (u8)ctx->args[2];
	struct lp_config *cfg = lp_cfg();
	struct lp_stats *stats;
	struct lp_task *ts;
	u64 now, wait_ns;
	u32 slot, gen;

	if (!cfg || !lp_wanted_now(cfg, lock))
		return 0;
	ts = lp_task_get(1);
	if (!ts)
		return 0;
	now = bpf_ktime_get_ns();
	if (ts->wait_lock != lock) {
		if (flags == LP_LCB_READ && success)
			lp_mmap_downgrade(cfg, ts, lock, now);
		else
			lp_error(LP_ERR_ACQUIRE_WITHOUT_START);
		return 0;
	}
	wait_ns = now - ts->wait_start_ns;
	ts->wait_lock = 0;
	gen = lp_mmap_gen(ts, lock);
	slot = lp_mmap_slot(ts, lock, flags, gen);
	stats = lp_stats_at(slot); /* 0: the map is full, counted by lp_slot_of() */
	if (!success) {
		if (stats)
			stats->failures++; /* trylock failed, or a killable wait was killed */
		return 0;
	}
	if (stats) {
		stats->acquisitions++;
		if (ts->wait_contended)
			stats->contended++;
		lp_hist_add(&stats->wait, wait_ns);
	}
	/* Held even without a row: its release or downgrade then pairs with
	 * it (and is counted as a dropped figure, stats_map_full), where it
	 * was counted again as a release or downgrade of a lock taken before
	 * attach (release_without_acquire: 12.4M of them in a 2-hour soak). */
	lp_held_push(ts->held, lock, flags, now, gen);
	lp_mmap_task_account(ts, lock, flags, gen, wait_ns, 0, 0);
	lp_emit(cfg, now, wait_ns, lock, gen, flags, LP_SRC_MMAP_LOCK, LP_KIND_WAIT, -1);
	return 0;
}

LP_PROGRAM int lp_mmap_released(struct bpf_raw_tracepoint_args *ctx)
{
	u64 lock = ctx->args[0] + LP_MMAP_LOCK_OFFSET;
	u32 flags = (u8)ctx->args[1] ? LP_LCB_WRITE : LP_LCB_READ;
	struct lp_config *cfg = lp_cfg();
	struct lp_stats *stats;
	struct lp_task *ts;
	u64 now, held_ns;
	u32 gen;
	int i;

	if (!cfg || !lp_wanted_now(cfg, lock))
		return 0;
	ts = lp_task_get(0);
	i = ts ? lp_held_find(ts, lock, flags) : -1;
	if (!ts || i < 0 || i >= LP_MAX_HELD) {
		lp_error(LP_ERR_RELEASE_WITHOUT_ACQUIRE);
		return 0;
	}
	now = bpf_ktime_get_ns();
	held_ns = now - ts->held[i].since_ns;
	ts->held[i].lock = 0;
	gen = ts->held[i].mm_gen; /* as acquired, as for a downgrade */
	stats = lp_stats_at(lp_mmap_slot(ts, lock, flags, gen));
	if (stats) {
		stats->releases++;
		lp_hist_add(&stats->hold, held_ns);
	}
	lp_mmap_task_account(ts, lock, flags, gen, 0, held_ns, 1);
	lp_emit(cfg, now, held_ns, lock, gen, flags, LP_SRC_MMAP_LOCK, LP_KIND_HOLD, -1);
	return 0;
}

/* ---- lock:contention_begin(void *lock, unsigned int flags) / _end(lock, int ret) ---- */

/* Is contention with these flags left out (--lock-types)? An array lookup
 * with a checked key: the verifier inlines it. */
static __always_inline int lp_type_dropped(u32 flags)
{
	u32 *drop;

	if (flags >= LP_TYPE_SLOTS)
		return 0;
	drop = lp_type_drop.lookup(&flags);
	return drop && *drop;
}

#ifndef LP_TEST_KEEP_MARKS
#define LP_TEST_KEEP_MARKS 0 /* test hook: marks are set and never cleared */
#endif

/*
 * Mark a contention program as running on this task, or no longer. An
 * interrupt on this CPU runs its waits' programs on the interrupted task's
 * storage, and the kernel skips whichever of them is already running here
 * (recursion_misses): an interrupt's begin inside lp_contention_end has its
 * end skipped, an interrupt's end inside lp_contention_begin had its begin
 * skipped. Each half seeing the other's mark leaves the wait untimed
 * (LP_ERR_IRQ_WAIT_SKIPPED) instead of a stale nest entry that a later end
 * of the same lock would pair with. Volatile, between compiler barriers: the
 * mark must really be stored, before and after the nest's updates.
 */
static __always_inline void lp_mark_running(u16 *mark, u16 on)
{
	if (LP_TEST_KEEP_MARKS && !on)
		return;
	asm volatile("" ::: "memory");
	*(volatile u16 *)mark = on;
	asm volatile("" ::: "memory");
}

/*
 * The task a contention program works on, or NULL: not wanted, no storage, or
 * an interrupt's wait inside a contention program on this task. A begin that
 * finds in_end set will have its end skipped; an end that finds in_begin set
 * had its begin skipped: either counts the wait as left out. A run that
 * finds its own program's mark set can only be nested in it: older kernels,
 * without the recursion check around raw tracepoint programs, ran one nested
 * in itself instead of skipping it.
 * Such a run leaves quietly (the other half counts the wait) and, above
 * all, leaves the outer run's mark alone.
 */
static __always_inline struct lp_task *lp_contention_task(struct lp_config *cfg, u64 lock,
							  int begin)
{
	struct lp_task *ts;
	u16 in_begin, in_end;

	if (!cfg || !lp_wanted_now(cfg, lock))
		return NULL;
	ts = lp_task_get(begin); /* a begin creates the task's storage */
	if (!ts)
		return NULL;
	in_begin = *(volatile u16 *)&ts->in_begin;
	in_end = *(volatile u16 *)&ts->in_end;
	if (in_begin | in_end) {
		if (begin ? in_end : in_begin)
			lp_error(LP_ERR_IRQ_WAIT_SKIPPED);
		return NULL;
	}
	return ts;
}

static __always_inline void lp_nest_push(struct lp_task *ts, u64 lock, u32 flags)
{
	u32 depth;

	if (ts->wait_lock == lock)
		ts->wait_contended = 1; /* this mmap_lock acquisition had to wait */
	/* A left-out type still takes a nest entry, so that its end pairs with
	 * it (nested waits stay paired, nothing counts end_without_begin), but
	 * no clock is read and its end returns at once. */
	if (lp_type_dropped(flags))
		flags |= LP_NEST_DROPPED;
	depth = ts->depth;
	if (depth > 0 && depth <= LP_MAX_NEST) {
		struct lp_nest *top = &ts->nest[(depth - 1) & (LP_MAX_NEST - 1)];

		/* A mutex that stopped spinning and now sleeps begins again
		 * without an end: one wait, keep its start, take the new flags
		 * (both mutex: the same --lock-types decision). Only a mutex: a
		 * semaphore's and an rt_mutex's own spinlock share their address
		 * (their first field), and contention on it inside their wait is
		 * a nested wait of another type, with its own end. */
		if (top->lock == lock && (top->flags & LP_LCB_MUTEX) && (flags & LP_LCB_MUTEX)) {
			top->flags = flags;
			return;
		}
	}
	if (depth >= LP_MAX_NEST) {
		/*
		 * The nest is full: its oldest entry gives way. Either that
		 * wait's end was never seen (the kernel skips a program that
		 * would re-enter itself on a CPU: an interrupt's contention_end
		 * while lp_contention_end runs, bpftool's recursion_misses;
		 * lp_mark_running() leaves such a wait out, but not when the
		 * interrupt comes just before the mark or after it is cleared),
		 * or the task's waits really nest
		 * deeper than LP_MAX_NEST (the outermost one's end then counts
		 * end_without_begin). Dropping the new wait instead kept stale
		 * entries for good: once a long-lived task had four, every
		 * later wait of it went untimed (nest_overflow, then
		 * end_without_begin), for the rest of the run.
		 */
		lp_error(LP_ERR_NEST_OVERFLOW);
#pragma unroll
		for (int i = 0; i < LP_MAX_NEST - 1; i++)
			ts->nest[i] = ts->nest[i + 1];
		depth = LP_MAX_NEST - 1;
	}
	struct lp_nest *slot = &ts->nest[depth & (LP_MAX_NEST - 1)];
	slot->lock = lock;
	slot->flags = flags;
	/* The stack is taken at contention_end, on the same call path, and only
	 * for long waits: get_stackid costs microseconds per call (measured
	 * 2.4 us per contention_begin), most waits last a few hundred ns. */
	slot->stack_id = -1;
	slot->start_ns = flags & LP_NEST_DROPPED ? 0 : bpf_ktime_get_ns();
	ts->depth = depth + 1;
}

LP_PROGRAM int lp_contention_begin(struct bpf_raw_tracepoint_args *ctx)
{
	u64 lock = ctx->args[0];
	u32 flags = (u32)ctx->args[1];
	struct lp_config *cfg = lp_cfg();
	struct lp_task *ts;

	ts = lp_contention_task(cfg, lock, 1);
	if (!ts)
		return 0;
	lp_mark_running(&ts->in_begin, 1);
	lp_nest_push(ts, lock, flags);
	lp_mark_running(&ts->in_begin, 0);
	return 0;
}

/*
 * The task's cache entry for a contended lock, filled on a miss. A task in an
 * mmap-heavy load waits on its mmap_lock and on page-table, zone and LRU
 * spinlocks in turn: one entry missed on most waits, and a miss costs two
 * hash lookups (the lp_stats index, the per-task row) inside the critical
 * section the waiter has just entered. Entries are replaced in turn. An
 * entry's mm generation is checked on every hit where the lock is, or is
 * now, an mmap_lock (the task's own: against own_gen, no lookup; another
 * mm's: lp_mm_gens): an exec, or a new mm at a dead one's address, changes
 * it. A plain rwsem not yet known as an mmap_lock keeps generation 0 until
 * its entry is replaced, as with the single entry before.
 */
static __always_inline struct lp_contended *lp_contended_entry(struct lp_task *ts, u64 lock,
							       u32 flags)
{
	struct lp_contended *entry;
	u32 victim = LP_CONTENDED, gen;

	lp_slot_cache(ts);
#pragma unroll
	for (int i = 0; i < LP_CONTENDED; i++) {
		entry = &ts->contended[i];
		if (entry->lock != lock || entry->flags != flags || !entry->slot_plus1)
			continue;
		if ((!entry->mm_gen && !lp_own_lock(ts, lock)) ||
		    entry->mm_gen == lp_contention_gen(ts, lock, flags))
			return entry;
		victim = i; /* the generation changed: refill this entry */
		break;
	}
	if (victim == LP_CONTENDED)
		victim = ts->contended_next++; /* a new lock: replace the next in turn */
	gen = lp_contention_gen(ts, lock, flags);
	entry = &ts->contended[victim & (LP_CONTENDED - 1)];
	entry->lock = lock;
	entry->flags = flags;
	entry->mm_gen = gen;
	entry->task_plus1 = 0;
	entry->slot_plus1 = lp_slot_of(lock, flags, LP_SRC_CONTENTION, gen);
	return entry;
}

static __always_inline void lp_caller_add(struct lp_caller_stats *cs, u64 wait_ns)
{
	/* Per-CPU value: plain adds, as for lp_stats. */
	cs->count++;
	cs->total_ns += wait_ns;
	if (wait_ns > cs->max_ns)
		cs->max_ns = wait_ns;
}

/* slot_plus1: the wait's contention lp_stats index + 1 (0: none). */
static __always_inline void lp_caller_account(u64 lock, s32 stack_id, u32 flags, u32 gen,
					      u64 wait_ns, u32 slot_plus1)
{
	struct lp_caller_key key = {
		.lock = lock, .stack_id = stack_id, .flags = flags, .mm_gen = gen,
	};
	struct lp_caller_stats *cs;

	if (stack_id == -1 && slot_plus1) {
		u32 slot = slot_plus1 - 1;

		cs = lp_short_callers.lookup(&slot);
		if (cs) {
			lp_caller_add(cs, wait_ns);
			return;
		}
	}
	cs = lp_callers.lookup(&key);
	if (!cs) {
		struct lp_caller_stats blank = {};

		lp_callers.insert(&key, &blank);
		cs = lp_callers.lookup(&key);
		if (!cs) {
			lp_error(LP_ERR_CALLER_MAP_FULL);
			return;
		}
	}
	lp_caller_add(cs, wait_ns);
}

/*
 * May this CPU take a contention stack now, from budget 0 (long waits) or 1
 * (naming stacks, lp_wait_stack)? get_stackid costs ~2.7 us, and it
 * runs in contention_end, where the waiter already holds the lock: on an
 * ebizzy-like load ~11k waits a second passed --stack-threshold, and their
 * stacks lengthened every hold the other threads then waited out. One stack
 * per CPU per stack_gap_ns still names each busy caller; the waits left
 * without one are counted (LP_ERR_STACK_RATE) and keep stack_id -1.
 */
static __always_inline int lp_stack_allowed(struct lp_config *cfg, u64 now, int budget)
{
	u64 *last;

	if (!cfg->stack_gap_ns)
		return 1;
	last = lp_stack_last.lookup(&budget);
	if (!last)
		return 1;
	if (*last && now - *last < cfg->stack_gap_ns)
		return 0;
	*last = now; /* per-CPU slot: only this CPU writes it */
	return 1;
}

/*
 * The kernel stack of a contended wait, or -1. A lock with no kallsyms
 * symbol is named after its callers, from the stacks of its waits: a busy
 * lock whose waits were all under --stack-threshold, or lost the
 * --stack-rate draw to another lock's (an ebizzy-like load's page-table
 * spinlock against its mmap_lock waits), went unnamed ("spinlock 0x..."),
 * and was named in one run and not the next: compare then saw it vanish.
 * So a row's first wait on each CPU takes a naming stack whatever its
 * length, from a --stack-rate budget of its own (one stack per new lock
 * per CPU, ~3 us, while the waiter holds the lock).
 */
static __always_inline s32 lp_wait_stack(struct bpf_raw_tracepoint_args *ctx,
					 struct lp_config *cfg, u64 now, u64 wait_ns, u64 lock,
					 u32 slot_plus1)
{
	u32 slot = slot_plus1 - 1;
	u64 *named = slot_plus1 ? lp_row_named.lookup(&slot) : 0;
	int naming = named && *named != lock;
	int long_wait = wait_ns >= cfg->stack_threshold_ns;
	int taken = long_wait && lp_stack_allowed(cfg, now, 0);
	s32 stack_id;

	if (!taken && naming)
		taken = lp_stack_allowed(cfg, now, 1);
	if (!taken) {
		if (long_wait)
			lp_error(LP_ERR_STACK_RATE);
		return -1;
	}
	stack_id = lp_stacks.get_stackid(ctx, 0);
	if (stack_id < 0) {
		/* An errno (-EEXIST: the bucket holds another stack): the
		 * wait joins the ones with no stack, not a caller row of
		 * its own per errno. */
		lp_error(LP_ERR_STACK);
		return -1;
	}
	if (named)
		*named = lock; /* per-CPU slot: only this CPU writes it */
	return stack_id;
}

static __always_inline void lp_nest_pop(struct bpf_raw_tracepoint_args *ctx,
					struct lp_config *cfg, struct lp_task *ts, u64 lock,
					s32 ret)
{
	struct lp_contended *row;
	struct lp_stats *stats;
	struct lp_nest *found;
	u64 now, start_ns, wait_ns;
	s32 stack_id;
	u32 depth, flags, gen;
	int at = -1;

	depth = ts->depth;
	/* Innermost match first; anything nested above it lost its end. The
	 * innermost entry nearly always matches: try it alone first. */
	if (depth > 0 && depth <= LP_MAX_NEST &&
	    ts->nest[(depth - 1) & (LP_MAX_NEST - 1)].lock == lock) {
		at = depth - 1;
	} else {
#pragma unroll
		for (int i = LP_MAX_NEST - 2; i >= 0; i--) {
			if (at < 0 && (u32)i + 1 < depth && ts->nest[i].lock == lock)
				at = i;
		}
	}
	if (at < 0 || at >= LP_MAX_NEST) {
		lp_error(LP_ERR_END_WITHOUT_BEGIN);
		return;
	}
	/*
	 * Copy the entry before popping it. Contention in an interrupt handler
	 * (a spinlock's) runs these programs on the interrupted task's storage:
	 * an interrupt's contention_begin after the pop would reuse this entry.
	 * Read after the pop, its start could be later than now: a "negative"
	 * wait, ~2^64 ns, that wrapped wait.total_ns backwards and overflowed
	 * the interval maximum (docs/reliability.md). lp_mark_running() now
	 * keeps such a begin out of the nest while this runs; the copy and the
	 * volatile reads below stay as a second guard.
	 */
	found = &ts->nest[at & (LP_MAX_NEST - 1)];
	/* Volatile reads, in this order: an interrupt's contention_begin on
	 * this task's storage could shift a full nest between the search above
	 * and these reads (lp_nest_push); the lock read last tells. */
	flags = *(volatile u32 *)&found->flags;
	start_ns = *(volatile u64 *)&found->start_ns;
	if (*(volatile u64 *)&found->lock != lock) {
		lp_error(LP_ERR_END_WITHOUT_BEGIN);
		return;
	}
	ts->depth = at;
	if (flags & LP_NEST_DROPPED)
		return; /* a type --lock-types leaves out */
	now = bpf_ktime_get_ns();
	if (now < start_ns) {
		lp_error(LP_ERR_END_WITHOUT_BEGIN); /* cannot happen: the copy is taken first */
		return;
	}
	wait_ns = now - start_ns;
	row = lp_contended_entry(ts, lock, flags);
	stack_id = lp_wait_stack(ctx, cfg, now, wait_ns, lock, row->slot_plus1);
	stats = lp_stats_at(row->slot_plus1);
	if (stats) {
		stats->contended++;
		if (ret)
			stats->failures++; /* interrupted or killed while waiting */
		lp_hist_add(&stats->wait, wait_ns);
	}
	gen = row->mm_gen;
	lp_caller_account(lock, stack_id, flags, gen, wait_ns, row->slot_plus1);
	lp_task_account_hint(&row->task_plus1, lock, flags, LP_SRC_CONTENTION, gen, wait_ns, 0, 0);
	lp_emit(cfg, now, wait_ns, lock, gen, flags, LP_SRC_CONTENTION, LP_KIND_WAIT, stack_id);
}

LP_PROGRAM int lp_contention_end(struct bpf_raw_tracepoint_args *ctx)
{
	u64 lock = ctx->args[0];
	s32 ret = (s32)ctx->args[1];
	struct lp_config *cfg = lp_cfg();
	struct lp_task *ts;

	ts = lp_contention_task(cfg, lock, 0);
	if (!ts)
		return 0;
	lp_mark_running(&ts->in_end, 1);
	lp_nest_pop(ctx, cfg, ts, lock, ret);
	lp_mark_running(&ts->in_end, 0);
	return 0;
}

#if LP_WITH_LOCK_SPECS
/* ---- lock specs: a user's own lock functions, via uprobes or kprobes ----
 *
 * One program family for user and kernel functions: both give pt_regs.
 * The lock is the functions' first argument. Python attaches
 *   lp_spec_{read,write}_lock   at the lock functions' entry,
 *   lp_spec_lock_ret[_rc]       at their return (_rc: 0 means acquired, as
 *                               pthread_rwlock_*lock and *_killable return),
 *   lp_spec_{read,write}_unlock at mode-specific unlock functions' entry,
 *   lp_spec_unlock              at a shared unlock (pthread_rwlock_unlock):
 *                               the mode is the holder's, from its held entry,
 *   lp_spec_sum[_ret]           around the optional "sum" function.
 * Uprobes are attached to every process using the binary; the target filter
 * is applied here, as for the tracepoints.
 */

static __always_inline int lp_spec_enter(struct pt_regs *ctx, u32 flags)
{
	u64 lock = PT_REGS_PARM1(ctx);
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lp_config *cfg = lp_cfg();
	struct lp_task *ts;

	if (!cfg || !lp_wanted(cfg, pid_tgid >> 32, lock))
		return 0;
	ts = lp_task_get(1);
	if (!ts)
		return 0;
	ts->spec_wait.lock = lock;
	ts->spec_wait.flags = flags;
	ts->spec_wait.start_ns = bpf_ktime_get_ns();
	return 0;
}

LP_PROGRAM int lp_spec_read_lock(struct pt_regs *ctx)
{
	return lp_spec_enter(ctx, LP_LCB_READ);
}

LP_PROGRAM int lp_spec_write_lock(struct pt_regs *ctx)
{
	return lp_spec_enter(ctx, LP_LCB_WRITE);
}

static __always_inline int lp_spec_returned(struct pt_regs *ctx, int acquired)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lp_config *cfg = lp_cfg();
	struct lp_stats *stats;
	struct lp_task *ts;
	u64 now, wait_ns, lock;
	u32 flags;

	ts = lp_task_get(0);
	if (!cfg || !ts || !ts->spec_wait.lock) {
		/* Not ours (filtered at entry), or the entry came before attach. */
		if (cfg && lp_wanted_process(cfg, pid_tgid >> 32))
			lp_error(LP_ERR_SPEC_RETURN_WITHOUT_ENTRY);
		return 0;
	}
	lock = ts->spec_wait.lock;
	flags = ts->spec_wait.flags;
	ts->spec_wait.lock = 0;
	now = bpf_ktime_get_ns();
	wait_ns = now - ts->spec_wait.start_ns;
	stats = lp_stats_get(lock, flags, LP_SRC_SPEC); /* 0: the map is full (counted) */
	if (!acquired) {
		if (stats)
			stats->failures++; /* trylock busy, timed out, interrupted */
		return 0;
	}
	if (stats) {
		stats->acquisitions++;
		lp_hist_add(&stats->wait, wait_ns);
	}
	/* Held even without a row, as in lp_mmap_acquired(). */
	lp_held_push(ts->spec_held, lock, flags, now, 0);
	lp_task_account(lock, flags, LP_SRC_SPEC, pid_tgid, wait_ns, 0, 0);
	lp_emit(cfg, now, wait_ns, lock, 0, flags, LP_SRC_SPEC, LP_KIND_WAIT, -1);
	return 0;
}

/* Lock functions that return nothing: returning means acquired. */
LP_PROGRAM int lp_spec_lock_ret(struct pt_regs *ctx)
{
	return lp_spec_returned(ctx, 1);
}

/* Lock functions that return 0 when they acquired the lock. */
LP_PROGRAM int lp_spec_lock_ret_rc(struct pt_regs *ctx)
{
	return lp_spec_returned(ctx, PT_REGS_RC(ctx) == 0);
}

/* flags 0: a shared unlock; the innermost held entry of the lock gives the mode. */
static __always_inline int lp_spec_release(struct pt_regs *ctx, u32 flags)
{
	u64 lock = PT_REGS_PARM1(ctx);
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lp_config *cfg = lp_cfg();
	struct lp_stats *stats;
	struct lp_task *ts;
	u64 now, held_ns;
	int at = -1;

	if (!cfg || !lp_wanted(cfg, pid_tgid >> 32, lock))
		return 0;
	ts = lp_task_get(0);
	if (!ts) {
		lp_error(LP_ERR_SPEC_UNLOCK_WITHOUT_LOCK);
		return 0;
	}
#pragma unroll
	for (int i = LP_MAX_HELD - 1; i >= 0; i--) {
		if (at < 0 && ts->spec_held[i].lock == lock &&
		    (flags == 0 || ts->spec_held[i].flags == flags))
			at = i;
	}
	if (at < 0 || at >= LP_MAX_HELD) {
		lp_error(LP_ERR_SPEC_UNLOCK_WITHOUT_LOCK);
		return 0;
	}
	flags = ts->spec_held[at].flags;
	now = bpf_ktime_get_ns();
	held_ns = now - ts->spec_held[at].since_ns;
	ts->spec_held[at].lock = 0;
	stats = lp_stats_get(lock, flags, LP_SRC_SPEC);
	if (stats) {
		stats->releases++;
		lp_hist_add(&stats->hold, held_ns);
	}
	lp_task_account(lock, flags, LP_SRC_SPEC, pid_tgid, 0, held_ns, 1);
	lp_emit(cfg, now, held_ns, lock, 0, flags, LP_SRC_SPEC, LP_KIND_HOLD, -1);
	return 0;
}

LP_PROGRAM int lp_spec_read_unlock(struct pt_regs *ctx)
{
	return lp_spec_release(ctx, LP_LCB_READ);
}

LP_PROGRAM int lp_spec_write_unlock(struct pt_regs *ctx)
{
	return lp_spec_release(ctx, LP_LCB_WRITE);
}

LP_PROGRAM int lp_spec_unlock(struct pt_regs *ctx)
{
	return lp_spec_release(ctx, 0);
}

/* The writer's price: the "sum" function (percpu_counter_sum), per call. */
LP_PROGRAM int lp_spec_sum(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lp_config *cfg = lp_cfg();
	struct lp_task *ts;

	if (!cfg || !lp_wanted(cfg, pid_tgid >> 32, PT_REGS_PARM1(ctx)))
		return 0;
	ts = lp_task_get(1);
	if (!ts)
		return 0;
	ts->spec_sum.lock = PT_REGS_PARM1(ctx);
	ts->spec_sum.start_ns = bpf_ktime_get_ns();
	return 0;
}

LP_PROGRAM int lp_spec_sum_ret(struct pt_regs *ctx)
{
	struct lp_task *ts = lp_task_get(0);
	struct lp_stats *stats;
	u64 elapsed;

	if (!ts || !ts->spec_sum.lock)
		return 0;
	elapsed = bpf_ktime_get_ns() - ts->spec_sum.start_ns;
	stats = lp_stats_get(ts->spec_sum.lock, LP_F_SUM, LP_SRC_SPEC);
	ts->spec_sum.lock = 0;
	if (stats) {
		stats->acquisitions++; /* calls */
		lp_hist_add(&stats->wait, elapsed);
	}
	return 0;
}

#endif /* LP_WITH_LOCK_SPECS */

/* ---- runqueue locks: sched_update_nr_running_tp(struct rq *rq, int change) ----
 * A bare tracepoint (no trace event: raw attach only), hit as a runqueue
 * gains or loses a task. Attached from the start until every CPU's rq has
 * been seen (profiler/bpf.py _learn_rq_locks, rq_lock_names), so that contention on
 * rq->__lock is named as the runqueue lock of its CPU (as perf lock
 * contention's rq_lock), not after a scheduler function that took it. */
#ifndef LP_RQ_LOCK_OFFSET
#define LP_RQ_LOCK_OFFSET -1 /* offsetof(struct rq, __lock), from BTF */
#endif
#ifndef LP_RQ_CPU_OFFSET
#define LP_RQ_CPU_OFFSET -1 /* offsetof(struct rq, cpu), from BTF */
#endif
#ifndef LP_MAX_RQ_CPUS
#define LP_MAX_RQ_CPUS 1024
#endif
#if LP_RQ_LOCK_OFFSET >= 0 && LP_RQ_CPU_OFFSET >= 0
BPF_ARRAY(lp_rq_locks, u64, LP_MAX_RQ_CPUS); /* CPU -> its rq->__lock */

LP_PROGRAM int lp_learn_rq(struct bpf_raw_tracepoint_args *ctx)
{
	u64 rq = ctx->args[0], *known;
	int cpu = -1;

	/* The rq's own CPU, not this one: a wakeup enqueues on another CPU's rq. */
	bpf_probe_read_kernel(&cpu, sizeof(cpu), (void *)(rq + LP_RQ_CPU_OFFSET));
	if (cpu < 0 || cpu >= LP_MAX_RQ_CPUS)
		return 0;
	u32 key = cpu;
	known = lp_rq_locks.lookup(&key);
	if (known && *known == 0)
		*known = rq + LP_RQ_LOCK_OFFSET; /* one aligned 8-byte store */
	return 0;
}
#endif

#if LP_WITH_OFFCPU
/* ---- off-CPU: sched_switch(bool preempt, prev, next, unsigned int prev_state) ---- */

#ifndef LP_TASK_PID_OFFSET
#error "LP_TASK_PID_OFFSET (offsetof(struct task_struct, pid)) must come from BTF"
#endif

/* include/linux/sched.h's TASK_DEAD (a #define, not in BTF): 0x80 since 4.14. */
#ifndef LP_TASK_DEAD
#define LP_TASK_DEAD 0x80
#endif

BPF_HASH(lp_offcpu_start, u32, struct lp_offcpu_start, LP_MAX_TASKS);
BPF_HASH(lp_offcpu, struct lp_offcpu_key, struct lp_offcpu_stats, LP_MAX_CALLERS);

/*
 * Runs in prev's context. A prev that blocks (not preempted) gets its start
 * time and kernel stack remembered; a next that had blocked gets its off-CPU
 * time added to the (tgid, stack) row. Raw tracepoint arguments are not BTF
 * pointers, so next's task storage is out of reach: a tid-keyed hash it is,
 * and next's tid is read at its BTF offset.
 */
LP_PROGRAM int lp_offcpu_switch(struct bpf_raw_tracepoint_args *ctx)
{
	u32 preempt = (u8)ctx->args[0];
	u32 prev_state = (u32)ctx->args[3];
	u64 next = ctx->args[2];
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lp_config *cfg = lp_cfg();
	struct lp_offcpu_start *start;
	struct lp_offcpu_stats *row;
	u32 tid = (u32)pid_tgid, next_tid = 0;
	u64 now, off_ns;

	if (!cfg)
		return 0;
	now = bpf_ktime_get_ns();
	/* A dead task (do_task_dead: TASK_DEAD) is never switched in again: its
	 * start would stay in the map for good, one per exited thread, until the
	 * map was full (offcpu_map_full) and every new thread went untimed. */
	if (!preempt && prev_state != 0 && !(prev_state & LP_TASK_DEAD) && tid != 0 &&
	    lp_wanted_process(cfg, pid_tgid >> 32)) {
		struct lp_offcpu_start blocked = { .ts_ns = now, .tgid = pid_tgid >> 32 };

		blocked.stack_id = lp_stacks.get_stackid(ctx, 0);
		if (blocked.stack_id < 0) { /* an errno: one no-stack row, as for waits */
			lp_error(LP_ERR_STACK);
			blocked.stack_id = -1;
		}
		bpf_get_current_comm(&blocked.comm, sizeof(blocked.comm));
		if (lp_offcpu_start.update(&tid, &blocked))
			lp_error(LP_ERR_OFFCPU_MAP_FULL);
	}
	bpf_probe_read_kernel(&next_tid, sizeof(next_tid), (void *)(next + LP_TASK_PID_OFFSET));
	start = lp_offcpu_start.lookup(&next_tid);
	if (!start)
		return 0;
	off_ns = now - start->ts_ns;
	struct lp_offcpu_key key = { .tgid = start->tgid, .stack_id = start->stack_id };
	row = lp_offcpu.lookup(&key);
	if (!row) {
		struct lp_offcpu_stats blank = {};

		__builtin_memcpy(blank.comm, start->comm, sizeof(blank.comm));
		lp_offcpu.insert(&key, &blank);
		row = lp_offcpu.lookup(&key);
	}
	lp_offcpu_start.delete(&next_tid);
	if (!row) {
		lp_error(LP_ERR_OFFCPU_MAP_FULL);
		return 0;
	}
	/* Shared across CPUs: atomic adds; the max is racy like lp_callers'. */
	__sync_fetch_and_add(&row->count, 1);
	__sync_fetch_and_add(&row->total_ns, off_ns);
	if (off_ns > row->max_ns)
		row->max_ns = off_ns;
	return 0;
}

#endif /* LP_WITH_OFFCPU */

#if LP_WITH_SAMPLE
/* ---- CPU sampling (perf cpu-clock): kernel stacks of on-CPU samples ---- */

#include <uapi/linux/bpf_perf_event.h>

BPF_HASH(lp_samples, struct lp_sample_key, u64, LP_MAX_CALLERS);

LP_PROGRAM int lp_sample(struct bpf_perf_event_data *ctx)
{
	struct lp_sample_key key = { .cpu = bpf_get_smp_processor_id() };
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lp_config *cfg = lp_cfg();
	u64 one = 1, *count;

	if (!cfg || !lp_wanted_process(cfg, pid_tgid >> 32))
		return 0;
	key.stack_id = lp_stacks.get_stackid(ctx, 0);
	if (key.stack_id < 0) {
		/* -EFAULT: a user-mode sample, with no kernel stack. -EEXIST:
		 * its bucket held another stack; the sample is lost, counted. */
		if (key.stack_id == -17)
			lp_error(LP_ERR_STACK);
		return 0;
	}
	count = lp_samples.lookup(&key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return 0;
	}
	if (lp_samples.insert(&key, &one) == 0)
		return 0;
	count = lp_samples.lookup(&key); /* another CPU inserted it first */
	if (count)
		__sync_fetch_and_add(count, 1);
	else
		lp_error(LP_ERR_SAMPLE_MAP_FULL);
	return 0;
}
#endif /* LP_WITH_SAMPLE */

/* Never used by a program: gives Python the ctypes layout of struct lp_event. */
BPF_ARRAY(lp_event_layout, struct lp_event, 1);

#if LP_MAPS_ONLY
/* BCC loads a module's BTF only if it has a function (.BTF.ext), and the
 * task-storage map cannot be created without BTF. Never loaded. */
int lp_maps_only(void *ctx)
{
	return 0;
}
#endif
