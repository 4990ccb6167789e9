/*
 * rw_mutex.c - user-space "scalable rw_mutex" (see rw_mutex.h), built as
 * bin/librw_mutex.so for lockprof's uprobe lock specs.
 *
 * State: a writer flag, a writer mutex and RW_MUTEX_SLOTS padded reader
 * counters.  A thread is given a slot the first time it read-locks any
 * rw_mutex (round robin over a process-wide counter) and keeps it, so up
 * to RW_MUTEX_SLOTS threads each have a counter line to themselves; more
 * threads share slots, which stays correct because the counters are only
 * changed with atomic read-modify-writes.
 *
 * Read lock, fast path: increment own slot, then load the writer flag.  If
 * it is clear, the lock is held.  Both operations are sequentially
 * consistent, so against a writer that stores the flag and then loads the
 * slots (also sequentially consistent) at least one side sees the other:
 * either the writer's sum includes this reader, or the reader sees the
 * flag.  No cache line written here is written by any other thread.
 *
 * Read lock, slow path (writer flag seen): undo the increment, so the
 * writer can drain, and wait for the writer by taking the writer mutex.
 * While the mutex is held no writer is inside (writers hold it from lock
 * to unlock, and clear the flag before releasing it), so the reader
 * increments its slot under the mutex and releases it; the next writer
 * acquires the mutex after that and therefore sees the increment in its
 * sum.  A backed-off reader thus gets in after at most one wait on the
 * mutex: readers cannot starve writers (they back off) and writers cannot
 * starve a reader forever (it queues on the same mutex as writers).
 *
 * Write lock: take the mutex, set the flag, then call percpu_counter_sum()
 * until it returns 0.  Slot values never go below the number of readers
 * holding the lock through that slot (each thread's decrement follows its
 * increment in the slot's modification order), so a zero sum means that
 * no reader holds the lock.  The drain loop spins briefly and then yields.
 *
 * Write unlock: clear the flag (release), unlock the mutex.
 * Read unlock: decrement own slot (release).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rw_mutex.h"

/* Exported, never inlined: every call is a uprobe hit on the symbol. */
#define RW_API __attribute__((noinline, visibility("default")))

/* Drain-loop iterations spent spinning before each one yields the CPU. */
#define DRAIN_SPINS 64

/* Slot of the calling thread, -1 until its first read lock.  Initial-exec
 * TLS: a plain %fs-relative load, no __tls_get_addr call on the fast path
 * (fine for a library that is linked in, not dlopen()ed late). */
static __thread int my_slot __attribute__((tls_model("initial-exec"))) = -1;
static atomic_uint next_slot;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#endif
}

static void check(int err, const char *what)
{
	if (err) {
		fprintf(stderr, "librw_mutex: %s: %s\n", what, strerror(err));
		abort();
	}
}

static inline struct rw_mutex_slot *this_slot(struct rw_mutex *m)
{
	if (__builtin_expect(my_slot < 0, 0))
		my_slot = (int)(atomic_fetch_add_explicit(&next_slot, 1,
							  memory_order_relaxed)
				% RW_MUTEX_SLOTS);
	return &m->slot[my_slot];
}

RW_API void rw_mutex_init(struct rw_mutex *m)
{
	int i;

	atomic_init(&m->writer, 0);
	for (i = 0; i < RW_MUTEX_SLOTS; i++)
		atomic_init(&m->slot[i].readers, 0);
	check(pthread_mutex_init(&m->wmutex, NULL), "pthread_mutex_init");
}

RW_API long percpu_counter_sum(struct rw_mutex *m)
{
	long sum = 0;
	int i;

	for (i = 0; i < RW_MUTEX_SLOTS; i++)
		sum += atomic_load_explicit(&m->slot[i].readers,
					    memory_order_seq_cst);
	return sum;
}

RW_API void rw_mutex_read_lock(struct rw_mutex *m)
{
	struct rw_mutex_slot *s = this_slot(m);

	atomic_fetch_add_explicit(&s->readers, 1, memory_order_seq_cst);
	if (__builtin_expect(!atomic_load_explicit(&m->writer,
						   memory_order_seq_cst), 1))
		return;

	/* A writer is active or draining: get out of its way, wait for it. */
	atomic_fetch_sub_explicit(&s->readers, 1, memory_order_seq_cst);
	check(pthread_mutex_lock(&m->wmutex), "pthread_mutex_lock");
	atomic_fetch_add_explicit(&s->readers, 1, memory_order_relaxed);
	check(pthread_mutex_unlock(&m->wmutex), "pthread_mutex_unlock");
}

RW_API void rw_mutex_read_unlock(struct rw_mutex *m)
{
	atomic_fetch_sub_explicit(&this_slot(m)->readers, 1,
				  memory_order_release);
}

RW_API void rw_mutex_write_lock(struct rw_mutex *m)
{
	unsigned int spins = 0;

	check(pthread_mutex_lock(&m->wmutex), "pthread_mutex_lock");
	atomic_store_explicit(&m->writer, 1, memory_order_seq_cst);
	while (percpu_counter_sum(m) != 0) {
		if (++spins % DRAIN_SPINS)
			cpu_relax();
		else
			sched_yield();
	}
}

RW_API void rw_mutex_write_unlock(struct rw_mutex *m)
{
	atomic_store_explicit(&m->writer, 0, memory_order_release);
	check(pthread_mutex_unlock(&m->wmutex), "pthread_mutex_unlock");
}
