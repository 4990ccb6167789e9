/*
 * mmapcount - perform an exact number of one-page anonymous mmap+munmap pairs.
 *
 * Used by lockprof tests that need a known number of mmap_lock operations:
 * each mmap() takes mmap_lock for write once; each munmap() takes it for
 * write, downgrades to read and releases the read lock.  The mapped page is
 * never touched, so no page faults are generated.
 *
 * Usage: mmapcount [-n PAIRS] [-w] [-t THREADS]
 *   -n PAIRS    number of mmap+munmap pairs in total (default 1000)
 *   -t THREADS  split the pairs evenly over THREADS threads (default 1);
 *               PAIRS must be divisible by THREADS
 *   -w          wait mode: print "ready <pid>\n", wait for one byte on
 *               stdin ("go"), do the pairs, print "done\n", then wait for
 *               one more byte (or EOF) on stdin and exit 0.  EOF instead of
 *               the go byte exits with status 3 without doing any pairs.
 *
 * Exit status: 0 ok, 1 mmap/munmap/IO failure, 2 bad arguments,
 *              3 EOF before the go byte (wait mode).
 *
 * Exactness rules: between the go byte and "done" this program must not
 * call anything that might take mmap_lock besides the counted mmap/munmap
 * calls.  Therefore no malloc, no stdio and no thread creation/teardown
 * happen in that window:
 *   - all output is formatted into stack buffers and written with write(2);
 *   - worker threads are created before "ready" and parked on a barrier;
 *   - workers report completion through a second barrier and stay alive;
 *     they are only released and joined after the final stdin byte, so the
 *     stack madvise() glibc does on thread exit and the kernel's exit_mm()
 *     read lock fall outside the measured window;
 *   - one untimed warm-up mmap+munmap is done before "ready" so lazy
 *     symbol binding and first-time code page faults happen early.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_THREADS 1024
#define MAX_PAIRS 1000000000UL

static unsigned long pairs_per_thread;
static long page_size;

/* start: released by the go byte; finish: all pairs done; release: exit. */
static pthread_barrier_t start_barrier, finish_barrier, release_barrier;

/* ---- raw output helpers (no stdio, no allocation) ---------------------- */

/* Write the whole buffer to fd; returns 0 on success, -1 on error. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void write_str(int fd, const char *s)
{
	(void)write_all(fd, s, strlen(s));
}

/* Format an unsigned decimal number into buf; returns the length. */
static size_t fmt_ulong(char *buf, unsigned long v)
{
	char tmp[24];
	size_t n = 0, i;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	for (i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

/* Print "mmapcount: <what>: <errno text>" on stderr and exit 1. */
static void die_errno(const char *what, int err)
{
	write_str(2, "mmapcount: ");
	write_str(2, what);
	write_str(2, ": ");
	write_str(2, strerror(err));
	write_str(2, "\n");
	_exit(1);
}

static void usage_error(const char *msg)
{
	write_str(2, "mmapcount: ");
	write_str(2, msg);
	write_str(2, " (usage: mmapcount [-n PAIRS] [-w] [-t THREADS])\n");
	exit(2);
}

/* Parse a non-negative decimal integer in [min, max]; -1 on error. */
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

/* ---- the measured work ------------------------------------------------- */

/* Do @count mmap+munmap pairs of one untouched anonymous page. */
static void do_pairs(unsigned long count)
{
	unsigned long i;

	for (i = 0; i < count; i++) {
		void *p = mmap(NULL, (size_t)page_size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			die_errno("mmap", errno);
		if (munmap(p, (size_t)page_size) != 0)
			die_errno("munmap", errno);
	}
}

static void *worker(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&start_barrier);
	do_pairs(pairs_per_thread);
	pthread_barrier_wait(&finish_barrier);
	/* Stay alive until main has finished the measured window. */
	pthread_barrier_wait(&release_barrier);
	return NULL;
}

/*
 * Read one byte from stdin.  Returns 1 if a byte was read, 0 on EOF;
 * exits 1 on a read error.
 */
static int read_byte(void)
{
	char c = 0;

	for (;;) {
		ssize_t n = read(0, &c, 1);

		if (n >= 0)
			return n > 0;
		if (errno != EINTR)
			die_errno("read stdin", errno);
	}
}

int main(int argc, char **argv)
{
	unsigned long pairs = 1000;
	long threads = 1, v;
	int wait_mode = 0, opt, i, err;
	pthread_t tids[MAX_THREADS];

	opterr = 0;
	while ((opt = getopt(argc, argv, ":n:t:w")) != -1) {
		switch (opt) {
		case 'n':
			v = parse_num(optarg, 0, (long)MAX_PAIRS);
			if (v < 0)
				usage_error("invalid -n value");
			pairs = (unsigned long)v;
			break;
		case 't':
			v = parse_num(optarg, 1, MAX_THREADS);
			if (v < 0)
				usage_error("invalid -t value (1..1024)");
			threads = v;
			break;
		case 'w':
			wait_mode = 1;
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
	if (pairs % (unsigned long)threads != 0)
		usage_error("-n must be divisible by -t");

	page_size = sysconf(_SC_PAGESIZE);
	pairs_per_thread = pairs / (unsigned long)threads;

	/* Warm-up pair: resolve symbols and fault in code before the window. */
	do_pairs(1);

	if (threads > 1) {
		unsigned int parties = (unsigned int)threads + 1;

		err = pthread_barrier_init(&start_barrier, NULL, parties);
		if (!err)
			err = pthread_barrier_init(&finish_barrier, NULL, parties);
		if (!err)
			err = pthread_barrier_init(&release_barrier, NULL, parties);
		if (err)
			die_errno("pthread_barrier_init", err);
		for (i = 0; i < threads; i++) {
			err = pthread_create(&tids[i], NULL, worker, NULL);
			if (err)
				die_errno("pthread_create", err);
		}
	}

	if (wait_mode) {
		char line[40] = "ready ";
		size_t len = 6;

		len += fmt_ulong(line + len, (unsigned long)getpid());
		line[len++] = '\n';
		if (write_all(1, line, len))
			die_errno("write stdout", errno);
		if (!read_byte())
			_exit(3);	/* EOF: nothing done; workers die with us */
	}

	/* ---- measured window starts ---- */
	if (threads > 1) {
		pthread_barrier_wait(&start_barrier);
		pthread_barrier_wait(&finish_barrier);
	} else {
		do_pairs(pairs);
	}
	if (wait_mode && write_all(1, "done\n", 5))
		die_errno("write stdout", errno);
	/* ---- measured window ends ---- */

	if (wait_mode)
		(void)read_byte();	/* a byte or EOF both mean "exit" */

	if (threads > 1) {
		pthread_barrier_wait(&release_barrier);
		for (i = 0; i < threads; i++)
			pthread_join(tids[i], NULL);
	}
	return 0;
}
