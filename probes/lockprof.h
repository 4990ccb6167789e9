/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lockprof.h: the one header shared by the BPF programs and Python.
 *
 * BPF includes it directly. Python (profiler/schema.py) parses the enums and
 * #defines below, and BCC derives the ctypes layout of every map key/value
 * from these struct definitions, so there is no second copy of any layout.
 *
 * Rules so that the Python parser stays trivial:
 *   - constants are `#define LP_NAME <integer>` on one line, inside #ifndef
 *     guards where they are tunable with -D at compile time;
 *   - enums list `LP_NAME = <integer>,` one per line.
 */
#ifndef LOCKPROF_H
#define LOCKPROF_H

/* Histogram slots: slot 0 holds 0 ns, slot s >= 1 holds [2^(s-1), 2^s) ns.
 * The last slot also takes everything larger (2^38 ns is about 4.6 minutes). */
#ifndef LP_HIST_SLOTS
#define LP_HIST_SLOTS 40
#endif

/* mmap_locks one task may hold at once (fork holds the parent's and child's). */
#ifndef LP_MAX_HELD
#define LP_MAX_HELD 4
#endif

/* Nested lock:contention_begin depth per task (irq spinlocks inside a wait). */
#ifndef LP_MAX_NEST
#define LP_MAX_NEST 4
#endif

/* Locks each task remembers its contention rows for (a power of two). */
#ifndef LP_CONTENDED
#define LP_CONTENDED 4
#endif

/* Map sizes. Entries beyond these are counted as LP_ERR_*_MAP_FULL. */
#ifndef LP_MAX_LOCKS
#define LP_MAX_LOCKS 4096
#endif
#ifndef LP_MAX_TASKS
#define LP_MAX_TASKS 8192
#endif
#ifndef LP_MAX_CALLERS
#define LP_MAX_CALLERS 8192
#endif
/* Kernel stacks. A stack's id is its hash's bucket, and a second stack
 * hashing to a taken bucket is not stored (counted as LP_ERR_STACK): with
 * 4,096 buckets of 127 frames, a 2-hour soak kept 2,995 stacks and failed
 * to store 3,502. Buckets are many and small instead: the innermost
 * LP_STACK_DEPTH frames (contention stacks here are at most ~36 deep,
 * tracing frames included; deeper ones, off-CPU and sampled stacks among
 * them, lose their outermost frames), in 6.7 MB of kernel memory against
 * 4.3 MB (docs/reliability.md). */
#ifndef LP_STACK_DEPTH
#define LP_STACK_DEPTH 48
#endif
#ifndef LP_MAX_STACKS
#define LP_MAX_STACKS 16384
#endif
#ifndef LP_MAX_OWNERS
#define LP_MAX_OWNERS 4096
#endif
/* Event stream ring buffer, in pages (must be a power of two): 8 MiB holds
 * 116k events, 1.1M events/s at one drain per 100 ms (docs/performance.md). */
#ifndef LP_RINGBUF_PAGES
#define LP_RINGBUF_PAGES 2048
#endif

/* lock:contention_begin flags, as the kernel defines them (LCB_F_*). */
#define LP_LCB_SPIN 1
#define LP_LCB_READ 2
#define LP_LCB_WRITE 4
#define LP_LCB_RT 8
#define LP_LCB_PERCPU 16
#define LP_LCB_MUTEX 32
/* lp_type_drop is indexed by a contention's LP_LCB_* flags below this. */
#define LP_TYPE_SLOTS 64
/* In a nest[] entry's flags: a wait of a lock type --lock-types leaves out
 * (kept for pairing with its end, not timed or counted). */
#define LP_NEST_DROPPED 0x80000000

/* Which probe family produced an aggregate row. */
enum lp_source {
	LP_SRC_MMAP_LOCK = 0,  /* mmap_lock:* tracepoints: every acquisition */
	LP_SRC_CONTENTION = 1, /* lock:contention_*: contended waits only */
	LP_SRC_SPEC = 2,       /* a lock spec's functions (uprobe/kprobe): every acquisition */
	/* Never a row's source: lp_slot_keys holds it at an index whose key
	 * Python retired (profiler/bpf.py retire_locks), until the index is
	 * freed, so that the retired key cannot find its old index again. */
	LP_SRC_RETIRED = 255,
};

/* Flag of a lock spec row measuring its "sum" function: the row's wait
 * histogram is the function's latency, acquisitions its calls. */
#define LP_F_SUM 256

/* What an event in the stream measured. */
enum lp_kind {
	LP_KIND_WAIT = 0,
	LP_KIND_HOLD = 1,
};

/* Failure counters, one per-CPU array slot each. Shown to the user. */
enum lp_error {
	LP_ERR_RINGBUF_FULL = 0,             /* event stream: event dropped */
	LP_ERR_STATS_MAP_FULL = 1,           /* aggregate map full: figure dropped */
	LP_ERR_TASK_MAP_FULL = 2,            /* per-task map full */
	LP_ERR_CALLER_MAP_FULL = 3,          /* per-caller map full */
	LP_ERR_OWNER_MAP_FULL = 4,           /* mm owner map full: lock left unnamed */
	LP_ERR_TASK_STORAGE = 5,             /* task storage unavailable (nested) */
	LP_ERR_NEST_OVERFLOW = 6,            /* a full nest: its oldest wait gave way */
	LP_ERR_END_WITHOUT_BEGIN = 7,        /* contention_end, begin before attach */
	LP_ERR_ACQUIRE_WITHOUT_START = 8,    /* acquire_returned(write), start missed */
	LP_ERR_RELEASE_WITHOUT_ACQUIRE = 9,  /* released, acquired before attach */
	LP_ERR_DOWNGRADE_WITHOUT_WRITE = 10, /* downgrade, write taken before attach */
	LP_ERR_HELD_OVERFLOW = 11,           /* more than LP_MAX_HELD mmap_locks held */
	LP_ERR_STACK = 12,                   /* kernel stack not captured */
	LP_ERR_SPEC_RETURN_WITHOUT_ENTRY = 13, /* lock spec: return probe, entry missed */
	LP_ERR_SPEC_UNLOCK_WITHOUT_LOCK = 14,  /* lock spec: unlock of a lock not seen taken */
	LP_ERR_OFFCPU_MAP_FULL = 15,         /* off-CPU start or stack map full */
	LP_ERR_SAMPLE_MAP_FULL = 16,         /* CPU sample map full */
	LP_ERR_STACK_RATE = 17,              /* not a failure: long wait left without a
					      * stack by the per-CPU stack rate limit */
	LP_ERR_FOLLOW_MAP_FULL = 18,         /* --follow: a descendant or its mmap_lock
					      * not followed (LP_MAX_OWNERS) */
	LP_ERR_IRQ_WAIT_SKIPPED = 19,        /* a wait in an interrupt while a contention
					      * program ran on its task: the kernel
					      * skipped half of it, not timed */
	LP_NR_ERRORS = 20,
};

/*
 * Aggregate key: one row per lock, acquisition flags, probe family and, for
 * an mmap_lock, mm generation. A freed mm's address goes to the next process
 * at once (a shell's children often all get the same one): the generation
 * keeps one process's mmap_lock figures from merging into the next's. Python
 * maps each (lock, mm_gen) to a lock id (profiler/lockids.py).
 */
struct lp_key {
	u64 lock;   /* lock address; for mmap_lock: mm_struct + offset of mmap_lock */
	u32 flags;  /* LP_LCB_* (mmap_lock source uses READ or WRITE only) */
	u32 source; /* enum lp_source */
	u32 mm_gen; /* an mmap_lock's mm generation (lp_mm_gen); 0: none, or not an mmap_lock */
	u32 pad;
};

/* Log2 histogram of nanoseconds with exact count, sum and max. */
struct lp_hist {
	u64 count;
	u64 total_ns;
	u64 max_ns;
	u64 slots[LP_HIST_SLOTS];
};

/* The one value per lp_key, per CPU: lp_slots maps each lp_key to an index
 * of the per-CPU array lp_stats (an array lookup costs a fraction of a hash
 * lookup, and tasks cache their mmap_lock's index). */
struct lp_stats {
	u64 acquisitions; /* successful acquisitions (mmap_lock source only) */
	u64 contended;    /* acquisitions that waited in lock:contention_begin */
	u64 releases;     /* holds ended by a release */
	u64 downgrades;   /* write holds ended by a write->read downgrade */
	u64 failures;     /* failed trylock/killable acquisitions, failed waits */
	struct lp_hist wait;
	struct lp_hist hold;
};

/* Per-task split, keyed by lock and task. lp_task_slots gives each key an
 * index of the array lp_task_rows, whose row repeats the key (a task caches
 * the index of its contention row and checks the key before using it). */
struct lp_task_key {
	u64 lock;
	u32 tid;
	u32 tgid;
	u32 flags;
	u32 source;
	u32 mm_gen; /* as in lp_key */
	u32 pad;
};

struct lp_task_stats {
	u64 waits;
	u64 wait_ns;
	u64 holds;
	u64 hold_ns;
	char comm[16];
};

struct lp_task_row {
	struct lp_task_key key;   /* all zero while the row is free */
	struct lp_task_stats stats;
};

/* Contention by kernel stack: who waited on which lock from where. */
struct lp_caller_key {
	u64 lock;
	s32 stack_id;
	u32 flags;
	u32 mm_gen; /* as in lp_key */
	u32 pad;
};

struct lp_caller_stats {
	u64 count;
	u64 total_ns;
	u64 max_ns;
};

/* An mm, for the owner map: its mmap_lock address and generation (an
 * address reused by the next process keeps the previous one's name). */
struct lp_owner_key {
	u64 lock;
	u32 mm_gen;
	u32 pad;
};

/* Which process an mm (its mmap_lock address) belongs to. */
struct lp_owner {
	u32 tgid;
	u32 pad;
	char comm[16];
};

/* Off-CPU time by kernel stack (sched:sched_switch): where tasks blocked.
 * The writer's price of a percpu rw-semaphore (rcu_sync_enter's grace
 * period, then waiting for readers to drain) shows only here. */
struct lp_offcpu_key {
	u32 tgid;
	s32 stack_id;   /* kernel stack when the task blocked */
};

struct lp_offcpu_stats {
	u64 count;
	u64 total_ns;
	u64 max_ns;
	char comm[16];
};

struct lp_offcpu_start {
	u64 ts_ns;
	u32 tgid;
	s32 stack_id;
	char comm[16];
};

/* CPU samples by kernel stack and CPU (perf cpu-clock): where CPU time goes,
 * e.g. inside __percpu_counter_sum where no kprobe can time it. */
struct lp_sample_key {
	s32 stack_id;
	u32 cpu;
};

/* Runtime switches, written by Python into a one-entry array. */
struct lp_config {
	u32 target_tgid;     /* 0: whole system */
	u32 armed;           /* 0 until Python has attached every program */
	u64 threshold_ns;    /* stream waits/holds at least this long */
	u64 target_lock;     /* learned in BPF: the target's mmap_lock address */
	u64 stack_threshold_ns; /* kernel stack only for contended waits this long */
	u64 stack_gap_ns;    /* at most one such stack per CPU per gap; 0: every one */
	u32 follow;          /* --follow: also the target's descendants (lp_followed) */
	u32 target_gen;      /* learned in BPF: target_lock's mm generation */
	u32 self_tgid;       /* with a target: lockprof's own process, left out */
	u32 pad;
};

/* One record of the per-event stream (waits and holds over the threshold). */
struct lp_event {
	u64 ts_ns;       /* bpf_ktime_get_ns() at the end of the wait/hold */
	u64 duration_ns;
	u64 lock;
	u32 tgid;
	u32 tid;
	u32 mm_gen;      /* as in lp_key */
	s32 stack_id;    /* kernel stack of a contended wait, else -1 */
	u16 cpu;
	u16 flags;       /* LP_LCB_* and LP_F_SUM: below 2^16 */
	u16 source;
	u16 kind;        /* enum lp_kind */
	char comm[16];   /* 64 bytes in all, as LP_RINGBUF_PAGES assumes */
};

/* Per-task state in task-local storage (no tid-keyed hash on the hot path). */
struct lp_held {
	u64 lock;
	u64 since_ns;
	u32 flags;
	u32 mm_gen;  /* an mmap_lock's generation when acquired (0: none) */
};

struct lp_stack {
	u64 ip[LP_STACK_DEPTH];
};

struct lp_nest {
	u64 lock;
	u64 start_ns;
	u32 flags;
	s32 stack_id;
};

/* A lock spec acquisition in progress: lock function entered, not returned. */
struct lp_spec_wait {
	u64 lock;
	u64 start_ns;
	u32 flags;
	u32 pad;
};

/* A lock the task waited on lately, with what its contention_end needs. */
struct lp_contended {
	u64 lock;
	u32 flags;
	u32 slot_plus1;    /* lp_stats index + 1; 0: not cached */
	u32 task_plus1;    /* lp_task_rows index + 1 (a hint, checked when used) */
	u32 mm_gen;        /* an mmap_lock's generation, as cached (0: none) */
};

/* Fields in the order the hot paths use them: what lock:contention_begin/end
 * touch comes first (the innermost wait is nearly always nest[0]), then
 * what the mmap_lock events touch, so that each event reads as few cache
 * lines of the task's storage as possible. */
struct lp_task {
	u64 wait_lock;     /* mmap_lock after start_locking, 0 when none */
	u32 depth;         /* used entries of nest[] */
	u32 wait_contended;
	u32 slot_epoch;    /* lp_epoch when slot_plus1 and contended[] were cached */
	u32 contended_next; /* the contended[] entry to replace next */
	struct lp_nest nest[LP_MAX_NEST];
	struct lp_contended contended[LP_CONTENDED];
	u64 wait_start_ns;
	u32 wait_flags;
	u32 own_gen;       /* own_mm's generation */
	u64 own_mm;        /* current->mm last recorded in the owner map */
	u64 slot_lock;     /* the mmap_lock whose lp_stats indexes are cached */
	u32 slot_plus1[2]; /* its read [0] and write [1] index + 1; 0: not cached */
	u32 mtask_plus1[2]; /* lp_task_rows index + 1 of the last read/write mmap_lock row */
	u32 slot_gen;      /* slot_lock's mm generation when its indexes were cached */
	u16 in_begin;      /* lp_contention_begin is running on this task */
	u16 in_end;        /* lp_contention_end is running on this task */
	struct lp_held held[LP_MAX_HELD];
	struct lp_spec_wait spec_wait;      /* lock spec: in a lock function */
	struct lp_spec_wait spec_sum;       /* lock spec: in the sum function */
	struct lp_held spec_held[LP_MAX_HELD];
};

#endif /* LOCKPROF_H */
