/*
 * rwbench - an ebizzy-like reader/writer lock workload, for comparing the
 * rw_mutex testbed (bin/librw_mutex.so) with glibc's pthread_rwlock_t
 * under lockprof's uprobe lock specs.
 *
 * Each of T threads performs operations on one shared table of sorted
 * keys guarded by one lock.  An operation takes the lock, does WORK binary
 * searches of the table for random keys (per-thread xorshift PRNG) and
 * releases it.  Every WRITE_EVERY-th operation of a thread takes the lock
 * for write, the others for read.  There is no work outside the lock.
 *
 * Mutual exclusion is checked on every operation with two sequence
 * numbers, begin and end, that only writers change: a writer checks
 * begin == end, sets begin = end + 1, does its work, checks begin is still
 * its value and sets end = begin.  A reader checks begin == end on entry
 * and that begin is unchanged on exit.  At the end, begin == end must
 * equal the number of writes.  Any violation aborts with a message.
 *
 * Usage: rwbench [-l rw_mutex|pthread] [-t THREADS] [-n OPS | -S SECONDS]
 *                [-w WRITE_EVERY] [-c WORK] [-g]
 *   -l LOCK         rw_mutex (default): rw_mutex_read_lock/_read_unlock/
 *                   _write_lock/_write_unlock from librw_mutex.so;
 *                   pthread: pthread_rwlock_rdlock/_wrlock/_unlock on a
 *                   pthread_rwlock_t with default attributes
 *   -t THREADS      worker threads, 1..1024 (default 2)
 *   -n OPS          exactly OPS operations per thread
 *   -S SECONDS      run for SECONDS (may be fractional) instead; this is
 *                   the default mode, 5 seconds.  -n and -S exclude each
 *                   other.
 *   -w WRITE_EVERY  operation k (k = 1, 2, ...) of each thread is a write
 *                   iff k % WRITE_EVERY == 0 (default 10; 1 = all writes;
 *                   0 = no writes)
 *   -c WORK         binary searches inside each critical section
 *                   (default 4; 0 = empty critical sections)
 *   -g              go mode: print "ready <pid>", wait for one byte on
 *                   stdin, run, print the results and "done", then wait
 *                   for one more byte (or EOF) on stdin and exit 0.  EOF
 *                   instead of the go byte exits 3 without any operation.
 *
 * Exact counts with -n (T = THREADS, N = OPS, W = WRITE_EVERY):
 *   writes = T * floor(N / W)          (0 when W = 0)
 *   reads  = T * (N - floor(N / W))    (T * N when W = 0)
 *   e.g. -t 4 -n 1000 -w 10: writes = 4 * 100 = 400, reads = 4 * 900 = 3600.
 * Lock calls are exactly one lock and one unlock per operation:
 *   rw_mutex: rw_mutex_read_lock = rw_mutex_read_unlock = reads,
 *             rw_mutex_write_lock = rw_mutex_write_unlock = writes,
 *             percpu_counter_sum >= writes (once per drain-loop pass),
 *             rw_mutex_init = 1 (before "ready");
 *   pthread:  pthread_rwlock_rdlock = reads, pthread_rwlock_wrlock =
 *             writes, pthread_rwlock_unlock = reads + writes.
 * No lock call is made outside the counted operations (no warm-up), so
 * probes attached for the whole run count exactly these.  In -S mode the
 * printed counts are the operations actually done, counted per thread.
 *
 * Output (stdout):
 *   reads <R> writes <W>
 *   <rate> ops/s              (R + W over the wall time of the run)
 * Exit status: 0 ok, 1 system error, 2 bad arguments, 3 EOF before the go
 * byte (-g); abort() on a mutual exclusion violation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rw_mutex.h"

#define MAX_THREADS 1024
#define MAX_OPS 1000000000000ULL	/* per thread */
#define MAX_WORK 1000000
#define MAX_SECONDS 1e6
#define TABLE_LEN 16384			/* 128 KiB of keys */

struct worker {
	pthread_t tid;
	unsigned int index;
	uint64_t reads, writes;
} __attribute__((aligned(64)));	/* one cache line per worker */

/* Configuration (read-only once the workers run). */
static int use_pthread;
static unsigned int nthreads = 2;
static uint64_t ops_per_thread;		/* 0 = duration mode */
static double seconds = 5.0;
static uint64_t write_every = 10;
static unsigned int work = 4;

/* The two locks; only the one chosen with -l is used. */
static struct rw_mutex rwm;
static pthread_rwlock_t prw;

/* The protected data. */
static uint64_t table[TABLE_LEN];
static uint64_t max_key;
static struct {
	atomic_ulong begin, end;
} seq __attribute__((aligned(64)));

static atomic_int stop __attribute__((aligned(64)));
static pthread_barrier_t start_barrier;

/* Search results end up here so the work cannot be optimised away. */
static volatile uint64_t sink;

static void usage_error(const char *msg)
{
	fprintf(stderr, "rwbench: %s (usage: rwbench [-l rw_mutex|pthread] "
		"[-t THREADS] [-n OPS | -S SECONDS] [-w WRITE_EVERY] "
		"[-c WORK] [-g])\n", msg);
	exit(2);
}

static void die_err(const char *what, int err)
{
	fprintf(stderr, "rwbench: %s: %s\n", what, strerror(err));
	exit(1);
}

static void violation(const char *what)
{
	fprintf(stderr, "rwbench: mutual exclusion violated (%s lock): %s\n",
		use_pthread ? "pthread" : "rw_mutex", what);
	abort();
}

/* Parse an unsigned decimal integer in [min, max]; returns 0 on error. */
static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (*s < '0' || *s > '9')
		return 0;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return 0;
	*out = v;
	return 1;
}

static uint64_t xorshift64(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

/* Fill the table with strictly increasing keys with random gaps. */
static void fill_table(void)
{
	uint64_t rng = 0x9e3779b97f4a7c15ULL, key = 0;
	size_t i;

	for (i = 0; i < TABLE_LEN; i++) {
		key += 1 + xorshift64(&rng) % 16;
		table[i] = key;
	}
	max_key = key;
}

/* Index of the first key >= key (TABLE_LEN if none). */
static size_t lower_bound(uint64_t key)
{
	size_t lo = 0, hi = TABLE_LEN;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (table[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The critical section's work: WORK searches for random keys. */
static uint64_t do_work(uint64_t *rng)
{
	uint64_t acc = 0;
	unsigned int i;

	for (i = 0; i < work; i++)
		acc += lower_bound(xorshift64(rng) % (max_key + 1));
	return acc;
}

static void check(int err, const char *what)
{
	if (err)
		die_err(what, err);
}

static uint64_t read_op(uint64_t *rng)
{
	unsigned long b, e;
	uint64_t acc;

	if (use_pthread)
		check(pthread_rwlock_rdlock(&prw), "pthread_rwlock_rdlock");
	else
		rw_mutex_read_lock(&rwm);

	e = atomic_load_explicit(&seq.end, memory_order_acquire);
	b = atomic_load_explicit(&seq.begin, memory_order_acquire);
	if (b != e)
		violation("reader got the lock while a writer held it");
	acc = do_work(rng);
	if (atomic_load_explicit(&seq.begin, memory_order_acquire) != b)
		violation("writer got the lock while a reader held it");

	if (use_pthread)
		check(pthread_rwlock_unlock(&prw), "pthread_rwlock_unlock");
	else
		rw_mutex_read_unlock(&rwm);
	return acc;
}

static uint64_t write_op(uint64_t *rng)
{
	unsigned long b;
	uint64_t acc;

	if (use_pthread)
		check(pthread_rwlock_wrlock(&prw), "pthread_rwlock_wrlock");
	else
		rw_mutex_write_lock(&rwm);

	b = atomic_load_explicit(&seq.begin, memory_order_acquire);
	if (atomic_load_explicit(&seq.end, memory_order_acquire) != b)
		violation("writer got the lock while another writer held it");
	atomic_store_explicit(&seq.begin, b + 1, memory_order_release);
	acc = do_work(rng);
	if (atomic_load_explicit(&seq.begin, memory_order_acquire) != b + 1)
		violation("writer got the lock while another writer held it");
	atomic_store_explicit(&seq.end, b + 1, memory_order_release);

	if (use_pthread)
		check(pthread_rwlock_unlock(&prw), "pthread_rwlock_unlock");
	else
		rw_mutex_write_unlock(&rwm);
	return acc;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t rng = 0x2545f4914f6cdd1dULL * (w->index + 1);
	uint64_t reads = 0, writes = 0, acc = 0, k;

	pthread_barrier_wait(&start_barrier);
	for (k = 1; ; k++) {
		if (ops_per_thread) {
			if (k > ops_per_thread)
				break;
		} else if (atomic_load_explicit(&stop, memory_order_relaxed)) {
			break;
		}
		if (write_every && k % write_every == 0) {
			acc += write_op(&rng);
			writes++;
		} else {
			acc += read_op(&rng);
			reads++;
		}
	}
	sink += acc;
	w->reads = reads;
	w->writes = writes;
	return NULL;
}

/* Read one byte from stdin: 1 if read, 0 on EOF; exits 1 on error. */
static int read_byte(void)
{
	char c;

	for (;;) {
		ssize_t n = read(0, &c, 1);

		if (n >= 0)
			return n > 0;
		if (errno != EINTR)
			die_err("read stdin", errno);
	}
}

static void sleep_seconds(double s)
{
	struct timespec ts;

	ts.tv_sec = (time_t)s;
	ts.tv_nsec = lround((s - floor(s)) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static double ts_diff(const struct timespec *a, const struct timespec *b)
{
	return (double)(b->tv_sec - a->tv_sec) +
	       (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
	struct worker *workers;
	struct timespec start, end;
	uint64_t v, reads = 0, writes = 0;
	int opt, go_mode = 0, seconds_given = 0;
	unsigned int i;
	double elapsed;
	char *endp;

	opterr = 0;
	while ((opt = getopt(argc, argv, ":l:t:n:S:w:c:g")) != -1) {
		switch (opt) {
		case 'l':
			if (strcmp(optarg, "rw_mutex") == 0)
				use_pthread = 0;
			else if (strcmp(optarg, "pthread") == 0)
				use_pthread = 1;
			else
				usage_error("invalid -l value "
					    "(rw_mutex or pthread)");
			break;
		case 't':
			if (!parse_u64(optarg, 1, MAX_THREADS, &v))
				usage_error("invalid -t value (1..1024)");
			nthreads = (unsigned int)v;
			break;
		case 'n':
			if (!parse_u64(optarg, 1, MAX_OPS, &v))
				usage_error("invalid -n value (1..10^12)");
			ops_per_thread = v;
			break;
		case 'S':
			errno = 0;
			seconds = strtod(optarg, &endp);
			if (errno || endp == optarg || *endp ||
			    !isfinite(seconds) || seconds <= 0 ||
			    seconds > MAX_SECONDS)
				usage_error("invalid -S value (> 0 seconds)");
			seconds_given = 1;
			break;
		case 'w':
			if (!parse_u64(optarg, 0, UINT64_MAX, &v))
				usage_error("invalid -w value (>= 0)");
			write_every = v;
			break;
		case 'c':
			if (!parse_u64(optarg, 0, MAX_WORK, &v))
				usage_error("invalid -c value (0..1000000)");
			work = (unsigned int)v;
			break;
		case 'g':
			go_mode = 1;
			break;
		case ':':
			usage_error("option requires an argument");
			break;
		default:
			usage_error("unknown option");
		}
	}
	if (optind != argc)
		usage_error("unexpected argument");
	if (ops_per_thread && seconds_given)
		usage_error("-n and -S exclude each other");

	fill_table();
	/* Initialisation is not a lock operation; rw_mutex_init is called
	 * once, before "ready". */
	if (use_pthread)
		check(pthread_rwlock_init(&prw, NULL), "pthread_rwlock_init");
	else
		rw_mutex_init(&rwm);

	workers = aligned_alloc(64, sizeof(*workers) * nthreads);
	if (!workers)
		die_err("aligned_alloc", errno);
	memset(workers, 0, sizeof(*workers) * nthreads);
	check(pthread_barrier_init(&start_barrier, NULL, nthreads + 1),
	      "pthread_barrier_init");
	for (i = 0; i < nthreads; i++) {
		workers[i].index = i;
		check(pthread_create(&workers[i].tid, NULL, worker_main,
				     &workers[i]), "pthread_create");
	}

	/* All threads exist and are parked: a profiler may attach now. */
	if (go_mode) {
		printf("ready %ld\n", (long)getpid());
		fflush(stdout);
		if (!read_byte())
			_exit(3);	/* EOF: nothing done */
	}

	clock_gettime(CLOCK_MONOTONIC, &start);
	pthread_barrier_wait(&start_barrier);
	if (!ops_per_thread) {
		sleep_seconds(seconds);
		atomic_store(&stop, 1);
	}
	for (i = 0; i < nthreads; i++) {
		pthread_join(workers[i].tid, NULL);
		reads += workers[i].reads;
		writes += workers[i].writes;
	}
	clock_gettime(CLOCK_MONOTONIC, &end);

	if (atomic_load(&seq.begin) != writes || atomic_load(&seq.end) != writes)
		violation("lost writer updates (sequence != writes)");

	elapsed = ts_diff(&start, &end);
	printf("reads %llu writes %llu\n", (unsigned long long)reads,
	       (unsigned long long)writes);
	printf("%llu ops/s\n", elapsed > 0 ?
	       (unsigned long long)llround((double)(reads + writes) / elapsed)
	       : 0ULL);
	if (go_mode)
		printf("done\n");
	fflush(stdout);
	if (go_mode)
		(void)read_byte();	/* a byte or EOF both mean "exit" */
	free(workers);
	return 0;
}
