/*
 * lpbizzy - a small ebizzy-like workload for lockprof before/after demos.
 *
 * Each of T threads repeatedly performs one "record" operation:
 *   1. mmap a fresh private anonymous chunk (default mode only),
 *   2. memcpy the per-process source chunk into it (this first-touches
 *      every page of the new mapping),
 *   3. binary-search the copy for a random key (per-thread xorshift PRNG),
 *   4. munmap the chunk (default mode only).
 * The source chunk is a sorted array of uint64_t records filled at start.
 *
 * In the default "mmap" mode every operation takes mmap_lock for write
 * twice (mmap, munmap) and for read on the first-touch page faults, so the
 * threads contend on the process's mmap_lock.  With -R ("reuse" mode) each
 * thread maps its buffer once and reuses it, which removes that contention;
 * comparing the two rates is the intended before/after demonstration.
 *
 * Usage: lpbizzy [-t THREADS] [-s CHUNK_BYTES] [-S SECONDS] [-n OPS] [-R] [-q] [-P] [-x] [-N]
 *   -t THREADS      worker threads (default 2)
 *   -s CHUNK_BYTES  chunk size, >= 4096 and a multiple of 8 (default 262144)
 *   -S SECONDS      run time, may be fractional (default 10)
 *   -n OPS          stop each thread after exactly OPS operations; without
 *                   -S there is then no time limit, with -S whichever
 *                   limit is reached first ends the thread
 *   -R              reuse one buffer per thread (no per-op mmap/munmap)
 *   -q              quiet: no mode line on stderr
 *   -P              progress on demand (bench/toggle.py): once the workers
 *                   run, every line read on stdin is answered on stdout with
 *                   "<total_ops> <CLOCK_MONOTONIC ns>"; end of stdin stops
 *                   the workers (without -S or -n there is no time limit)
 *   -x              the main thread exits (pthread_exit) once the workers
 *                   run; they go on, and the process ends with the last of
 *                   them, without the output below (a target whose
 *                   /proc/PID/stat says zombie while it works: lockprof's
 *                   tests/integration/test_lifecycle.py)
 *   -N              name the worker threads lpbizzy-w0, lpbizzy-w1, ...
 *                   (pthread_setname_np), as thread pools do
 *
 * Output (stdout, parsed by scripts):
 *   <total_ops> records in <elapsed> s
 *   <rate> records/s
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
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 1024
#define MAX_CHUNK (1UL << 30)		/* 1 GiB */
#define MAX_SECONDS 1e6

struct worker {
	pthread_t tid;
	unsigned int index;
	_Atomic uint64_t ops;		/* operations completed (read by -P) */
} __attribute__((aligned(64)));	/* one cache line per worker */

/* Configuration (read-only once the workers run). */
static unsigned int nthreads = 2;
static size_t chunk_bytes = 262144;
static double seconds = 10.0;
static int seconds_given;
static uint64_t max_ops;		/* 0 = no operation limit */
static int reuse_mode;
static int quiet;
static int progress_mode;
static int main_exits;
static int name_threads;
static atomic_int stop_now;		/* -P: stdin ended */

static uint64_t *source;		/* sorted records */
static size_t nrecords;
static uint64_t max_key;
static struct timespec deadline;	/* valid if time limit in effect */
static int time_limited;
static pthread_barrier_t start_barrier;

/* The search results end up here so the work cannot be optimised away. */
static volatile uint64_t sink;

static void usage_error(const char *msg)
{
	fprintf(stderr,
		"lpbizzy: %s (usage: lpbizzy [-t THREADS] [-s CHUNK_BYTES] "
		"[-S SECONDS] [-n OPS] [-R] [-q] [-P] [-x] [-N])\n", msg);
	exit(2);
}

static void die_errno(const char *what)
{
	fprintf(stderr, "lpbizzy: %s: %s\n", what, strerror(errno));
	exit(1);
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

/* Fill the source chunk with strictly increasing keys with random gaps. */
static void fill_source(void)
{
	uint64_t seed = 0x9e3779b97f4a7c15ULL, key = 0;
	size_t i;

	source = mmap(NULL, chunk_bytes, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (source == MAP_FAILED)
		die_errno("mmap source");
	nrecords = chunk_bytes / sizeof(uint64_t);
	for (i = 0; i < nrecords; i++) {
		key += 1 + xorshift64(&seed) % 16;
		source[i] = key;
	}
	max_key = key;
}

/* Index of the first record >= key (nrecords if none). */
static size_t lower_bound(const uint64_t *recs, size_t n, uint64_t key)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (recs[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int past_deadline(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > deadline.tv_sec ||
	       (now.tv_sec == deadline.tv_sec &&
		now.tv_nsec >= deadline.tv_nsec);
}

static uint64_t *map_chunk(void)
{
	void *p = mmap(NULL, chunk_bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die_errno("mmap");
	return p;
}

static void unmap_chunk(uint64_t *p)
{
	if (munmap(p, chunk_bytes) != 0)
		die_errno("munmap");
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t rng = 0x2545f4914f6cdd1dULL * (w->index + 1);
	uint64_t acc = 0, ops = 0;
	uint64_t *buf = NULL;

	if (name_threads) {
		char name[16];

		snprintf(name, sizeof(name), "lpbizzy-w%u", w->index);
		pthread_setname_np(pthread_self(), name);
	}
	if (reuse_mode)
		buf = map_chunk();

	pthread_barrier_wait(&start_barrier);

	for (;;) {
		uint64_t key;

		if (max_ops && ops >= max_ops)
			break;
		if (time_limited && past_deadline())
			break;
		if (atomic_load_explicit(&stop_now, memory_order_relaxed))
			break;

		if (!reuse_mode)
			buf = map_chunk();
		memcpy(buf, source, chunk_bytes);
		key = xorshift64(&rng) % (max_key + 1);
		acc += lower_bound(buf, nrecords, key);
		if (!reuse_mode)
			unmap_chunk(buf);
		ops++;
		/* Relaxed: its own cache line, a plain store on x86 and arm64. */
		atomic_store_explicit(&w->ops, ops, memory_order_relaxed);
	}

	if (reuse_mode)
		unmap_chunk(buf);
	sink += acc;
	return NULL;
}

/* -P: answer each stdin line with the operations so far and the time. */
static void serve_progress(struct worker *workers)
{
	char line[64];

	while (fgets(line, sizeof(line), stdin)) {
		struct timespec now;
		uint64_t total = 0;
		unsigned int i;

		for (i = 0; i < nthreads; i++)
			total += atomic_load_explicit(&workers[i].ops, memory_order_relaxed);
		clock_gettime(CLOCK_MONOTONIC, &now);
		printf("%llu %llu\n", (unsigned long long)total,
		       (unsigned long long)now.tv_sec * 1000000000ULL +
			       (unsigned long long)now.tv_nsec);
		fflush(stdout);
	}
	atomic_store(&stop_now, 1);
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
	uint64_t v, total = 0;
	double elapsed;
	unsigned int i;
	char *endp;
	int opt, err;

	opterr = 0;
	while ((opt = getopt(argc, argv, ":t:s:S:n:RqPxN")) != -1) {
		switch (opt) {
		case 't':
			if (!parse_u64(optarg, 1, MAX_THREADS, &v))
				usage_error("invalid -t value (1..1024)");
			nthreads = (unsigned int)v;
			break;
		case 's':
			if (!parse_u64(optarg, 4096, MAX_CHUNK, &v) || v % 8)
				usage_error("invalid -s value (>= 4096, "
					    "multiple of 8, <= 1 GiB)");
			chunk_bytes = (size_t)v;
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
		case 'n':
			if (!parse_u64(optarg, 1, UINT64_MAX, &v))
				usage_error("invalid -n value (>= 1)");
			max_ops = v;
			break;
		case 'R':
			reuse_mode = 1;
			break;
		case 'q':
			quiet = 1;
			break;
		case 'P':
			progress_mode = 1;
			break;
		case 'x':
			main_exits = 1;
			break;
		case 'N':
			name_threads = 1;
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

	/* -n alone means "exactly OPS per thread", with no time limit; so does
	 * -P alone (stdin's end stops the workers). */
	time_limited = seconds_given || (!max_ops && !progress_mode);

	if (!quiet)
		fprintf(stderr, "lpbizzy: threads=%u chunk=%zu mode=%s\n",
			nthreads, chunk_bytes, reuse_mode ? "reuse" : "mmap");

	fill_source();

	workers = aligned_alloc(64, sizeof(*workers) * nthreads);
	if (!workers)
		die_errno("aligned_alloc");
	memset(workers, 0, sizeof(*workers) * nthreads);

	err = pthread_barrier_init(&start_barrier, NULL, nthreads + 1);
	if (err) {
		errno = err;
		die_errno("pthread_barrier_init");
	}
	for (i = 0; i < nthreads; i++) {
		workers[i].index = i;
		err = pthread_create(&workers[i].tid, NULL, worker_main,
				     &workers[i]);
		if (err) {
			errno = err;
			die_errno("pthread_create");
		}
	}

	/* Set the clock and deadline, then release all workers together. */
	clock_gettime(CLOCK_MONOTONIC, &start);
	if (time_limited) {
		double whole = floor(seconds);
		long nsec = start.tv_nsec + lround((seconds - whole) * 1e9);

		deadline.tv_sec = start.tv_sec + (time_t)whole + nsec / 1000000000L;
		deadline.tv_nsec = nsec % 1000000000L;
	}
	pthread_barrier_wait(&start_barrier);
	if (main_exits)
		pthread_exit(NULL);
	if (progress_mode)
		serve_progress(workers);

	for (i = 0; i < nthreads; i++) {
		pthread_join(workers[i].tid, NULL);
		total += atomic_load(&workers[i].ops);
	}
	clock_gettime(CLOCK_MONOTONIC, &end);

	elapsed = ts_diff(&start, &end);
	printf("%llu records in %.3f s\n", (unsigned long long)total, elapsed);
	printf("%llu records/s\n", elapsed > 0 ?
	       (unsigned long long)llround((double)total / elapsed) : 0ULL);
	free(workers);
	return 0;
}
