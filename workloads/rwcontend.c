/*
 * rwcontend - generate real reader/writer contention on this process's
 * mmap_lock (an rw_semaphore), for testing lockprof's rwsem reporting.
 *
 *   writers: loop mmap+munmap of an untouched 64 KiB anonymous mapping;
 *            each call takes mmap_lock for write.
 *   readers: loop mincore() over a large pre-populated region.  mincore()
 *            walks the page tables with mmap_lock held for read, one
 *            read-lock hold per 4096 pages (16 MiB), so every pass holds
 *            the lock for read several times, each for a noticeable time.
 *
 * Readers block writers and writers block readers, so with both present the
 * kernel's lock:contention_begin tracepoint fires with flags 2 (rwsem read)
 * and 4 (rwsem write) for this process.
 *
 * Usage: rwcontend [-w WRITERS] [-r READERS] [-S SECONDS] [-m MIB]
 *   -w WRITERS   writer threads (default 2)
 *   -r READERS   reader threads (default 2)
 *   -S SECONDS   run time, may be fractional (default 3)
 *   -m MIB       size of the region the readers scan (default 64)
 *
 * Output (stdout): writer_ops=<n> reader_ops=<n>
 *   writer_ops counts mmap+munmap pairs, reader_ops full mincore() passes.
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

#define MAX_THREADS 512
#define WRITER_MAP_BYTES (64 * 1024)

static atomic_int stop;
static pthread_barrier_t start_barrier;

static unsigned char *region;		/* scanned by readers */
static size_t region_bytes;
static size_t page_size;

/* Per-thread result slot, one cache line each. */
struct slot {
	pthread_t tid;
	uint64_t ops;
	unsigned char *vec;		/* reader's mincore vector */
} __attribute__((aligned(64)));

static void usage_error(const char *msg)
{
	fprintf(stderr, "rwcontend: %s (usage: rwcontend [-w WRITERS] "
		"[-r READERS] [-S SECONDS] [-m MIB])\n", msg);
	exit(2);
}

static void die_err(const char *what, int err)
{
	fprintf(stderr, "rwcontend: %s: %s\n", what, strerror(err));
	exit(1);
}

/* Parse an unsigned decimal integer in [min, max]; -1 on error. */
static long parse_num(const char *s, long min, long max)
{
	char *end;
	long v;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -1;
	return v;
}

static void *writer_main(void *arg)
{
	struct slot *s = arg;
	uint64_t ops = 0;

	pthread_barrier_wait(&start_barrier);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		void *p = mmap(NULL, WRITER_MAP_BYTES, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			die_err("mmap", errno);
		if (munmap(p, WRITER_MAP_BYTES) != 0)
			die_err("munmap", errno);
		ops++;
	}
	s->ops = ops;
	return NULL;
}

static void *reader_main(void *arg)
{
	struct slot *s = arg;
	uint64_t ops = 0;

	pthread_barrier_wait(&start_barrier);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		if (mincore(region, region_bytes, s->vec) != 0)
			die_err("mincore", errno);
		ops++;
	}
	s->ops = ops;
	return NULL;
}

int main(int argc, char **argv)
{
	long writers = 2, readers = 2, mib = 64, v;
	double seconds = 3.0;
	struct slot *slots;
	struct timespec ts;
	uint64_t wops = 0, rops = 0;
	long i, nthreads;
	char *endp;
	int opt, err;

	opterr = 0;
	while ((opt = getopt(argc, argv, ":w:r:S:m:")) != -1) {
		switch (opt) {
		case 'w':
			if ((v = parse_num(optarg, 0, MAX_THREADS)) < 0)
				usage_error("invalid -w value (0..512)");
			writers = v;
			break;
		case 'r':
			if ((v = parse_num(optarg, 0, MAX_THREADS)) < 0)
				usage_error("invalid -r value (0..512)");
			readers = v;
			break;
		case 'S':
			errno = 0;
			seconds = strtod(optarg, &endp);
			if (errno || endp == optarg || *endp ||
			    !isfinite(seconds) || seconds <= 0 || seconds > 1e6)
				usage_error("invalid -S value (> 0 seconds)");
			break;
		case 'm':
			if ((v = parse_num(optarg, 1, 65536)) < 0)
				usage_error("invalid -m value (1..65536)");
			mib = v;
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
	if (writers + readers == 0)
		usage_error("need at least one writer or reader");

	page_size = (size_t)sysconf(_SC_PAGESIZE);
	region_bytes = (size_t)mib << 20;
	nthreads = writers + readers;

	/*
	 * Populate the region so that page tables exist and mincore() has
	 * real PTEs to walk while it holds the lock.
	 */
	if (readers > 0) {
		region = mmap(NULL, region_bytes, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
			      -1, 0);
		if (region == MAP_FAILED)
			die_err("mmap region", errno);
	}

	slots = aligned_alloc(64, sizeof(*slots) * (size_t)nthreads);
	if (!slots)
		die_err("aligned_alloc", errno);
	memset(slots, 0, sizeof(*slots) * (size_t)nthreads);

	err = pthread_barrier_init(&start_barrier, NULL,
				   (unsigned int)nthreads + 1);
	if (err)
		die_err("pthread_barrier_init", err);

	for (i = 0; i < nthreads; i++) {
		int is_writer = i < writers;

		if (!is_writer) {
			slots[i].vec = malloc(region_bytes / page_size);
			if (!slots[i].vec)
				die_err("malloc", errno);
		}
		err = pthread_create(&slots[i].tid, NULL,
				     is_writer ? writer_main : reader_main,
				     &slots[i]);
		if (err)
			die_err("pthread_create", err);
	}

	pthread_barrier_wait(&start_barrier);
	ts.tv_sec = (time_t)seconds;
	ts.tv_nsec = lround((seconds - floor(seconds)) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
	atomic_store(&stop, 1);

	for (i = 0; i < nthreads; i++) {
		pthread_join(slots[i].tid, NULL);
		if (i < writers)
			wops += slots[i].ops;
		else
			rops += slots[i].ops;
		free(slots[i].vec);
	}
	printf("writer_ops=%llu reader_ops=%llu\n",
	       (unsigned long long)wops, (unsigned long long)rops);
	free(slots);
	return 0;
}
