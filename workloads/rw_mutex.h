/*
 * rw_mutex - a user-space testbed of the "scalable rw_mutex" design
 * (Peter Zijlstra, 2007), built as bin/librw_mutex.so.
 *
 * Readers never write a cache line another thread writes on their fast
 * path: each thread owns one of RW_MUTEX_SLOTS cache-line-padded reader
 * counters (the user-space stand-in for a per-CPU counter) and only reads
 * the shared writer flag.  The price is paid by the writer: it takes a
 * mutex, raises the writer flag and then sums every slot's counter
 * (percpu_counter_sum(), O(RW_MUTEX_SLOTS) cache lines, each probably
 * owned by another CPU) again and again until the readers have drained.
 *
 * Every function below takes the lock as its first argument, is a global
 * symbol with default visibility and is never inlined, so uprobes and
 * uretprobes on librw_mutex.so see each call (lockprof's "rw_mutex" lock
 * spec probes exactly these names).
 *
 * Rules: rw_mutex_init() before first use; no recursion (a thread must
 * not take the lock again, in either mode, while holding it); the unlock
 * must match the mode of the lock and be done by the thread that locked.
 */
#ifndef LOCKPROF_RW_MUTEX_H
#define LOCKPROF_RW_MUTEX_H

#include <pthread.h>
#include <stdatomic.h>

#define RW_MUTEX_SLOTS 64
#define RW_MUTEX_CACHELINE 64

/* One reader counter on a cache line of its own. */
struct rw_mutex_slot {
	atomic_long readers;
} __attribute__((aligned(RW_MUTEX_CACHELINE)));

struct rw_mutex {
	/* Nonzero while a writer holds or is acquiring the lock.  Readers
	 * only load it, so the line stays shared in every reader's cache. */
	atomic_int writer __attribute__((aligned(RW_MUTEX_CACHELINE)));
	/* Serialises writers; also where backed-off readers wait. */
	pthread_mutex_t wmutex __attribute__((aligned(RW_MUTEX_CACHELINE)));
	struct rw_mutex_slot slot[RW_MUTEX_SLOTS];
};

void rw_mutex_init(struct rw_mutex *m);
void rw_mutex_read_lock(struct rw_mutex *m);
void rw_mutex_read_unlock(struct rw_mutex *m);
void rw_mutex_write_lock(struct rw_mutex *m);
void rw_mutex_write_unlock(struct rw_mutex *m);
/* Sum of all slots' reader counters: the writer's O(slots) scan. */
long percpu_counter_sum(struct rw_mutex *m);

#endif /* LOCKPROF_RW_MUTEX_H */
