/*
 * cgmove - make cgroup_threadgroup_rwsem (a percpu rw-semaphore) contended:
 * writers moving processes between cgroups against fork/exit readers.
 *
 * Every fork and every exit takes cgroup_threadgroup_rwsem for read
 * (cgroup_threadgroup_change_begin() in copy_process() via
 * cgroup_can_fork(), and in exit_signals()).  Every write of a pid to a
 * cgroup v2 cgroup.procs file takes it for write (cgroup_procs_write_start()
 * -> cgroup_attach_lock() -> percpu_down_write()), which first waits for an
 * RCU grace period (rcu_sync_enter) to switch readers to the slow path and
 * then for the readers inside to drain.
 *
 * cgmove creates two groups next to each other at the top of the cgroup v2
 * hierarchy, <root>/lockprof-cgmove-<pid>-a and -b, and starts FORKERS
 * child processes that each fork a child which exits at once, wait for it
 * and repeat.  The main process is the mover: it writes the forkers' pids
 * to a/cgroup.procs and b/cgroup.procs in turn (round robin over the
 * forkers; each forker goes original -> a -> b -> a -> ...), one pid per
 * write, as fast as possible or at RATE writes per second.
 *
 * The rate decides what the writer waits for (seen on Linux 6.18): with
 * back-to-back writes the semaphore stays in its slow mode between them,
 * so the mover mostly sleeps in percpu_down_write() waiting for readers to
 * drain; with writes further apart than a grace period (e.g. -m 50) most
 * writes first sleep in rcu_sync_enter() -> synchronize_rcu().
 *
 * Clean-up, always (normal end, error, SIGINT, SIGTERM, SIGHUP): stop the
 * forkers, write every forker back to the cgroup cgmove started in, reap
 * them (each forker reaps its own children first) and rmdir both groups,
 * retrying while the kernel still reports them busy.  Only SIGKILL can
 * leave the groups behind (forkers die with the mover: PR_SET_PDEATHSIG).
 * A signal ends the run early; the totals are still printed.
 *
 * Usage: cgmove [-S SECONDS] [-f FORKERS] [-m RATE] [-C CGROUP2_DIR] [-g]
 *   -S SECONDS      run time, may be fractional (default 5)
 *   -f FORKERS      forker processes, 1..256 (default 2)
 *   -m RATE         moves (cgroup.procs writes) per second, may be
 *                   fractional; 0 = as fast as possible (default 0)
 *   -C DIR          the cgroup v2 mount to use; by default /sys/fs/cgroup
 *                   if it is cgroup2, else /sys/fs/cgroup/unified (the
 *                   cgroup2 mount of systemd's "hybrid" layout)
 *   -g              go mode: print "ready <pid>" once the groups and the
 *                   (parked) forkers exist, wait for one byte on stdin,
 *                   run, clean up, print the totals and "done", then wait
 *                   for one more byte (or EOF) on stdin.  EOF instead of
 *                   the go byte cleans up and exits 3.
 *
 * Output (stdout): moves <M> forks <F>
 *   M = successful cgroup.procs writes of the run (the clean-up moves back
 *   are not counted), F = fork() calls of the forkers that succeeded.
 * Exit status: 0 ok, 1 error (one line on stderr; groups cleaned up),
 * 2 bad arguments, 3 EOF before the go byte, 128+N after signal N.
 * Needs root and a cgroup v2 mount.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FORKERS 256
#define MAX_SECONDS 1e6
#define RMDIR_TRIES 500			/* x 10 ms */

/* Shared with the forkers (MAP_SHARED anonymous memory). */
struct shared {
	atomic_int stop;
	struct {
		atomic_ulong forks;	/* written by forker i only */
	} __attribute__((aligned(64))) slot[MAX_FORKERS];
};

static struct shared *sh;
static volatile sig_atomic_t got_signal;

static char cg_root[PATH_MAX];		/* the cgroup2 mount */
static char orig_dir[PATH_MAX];		/* cgroup cgmove started in */
static char grp_dir[2][PATH_MAX];	/* a, b */
static int grp_made[2];
static int orig_fd = -1, grp_fd[2] = { -1, -1 };
static int go_wfd = -1;			/* closing it starts the forkers */

static pid_t forker[MAX_FORKERS];
static int forker_grp[MAX_FORKERS];	/* -1 original, 0 a, 1 b */
static int nforkers = 2;

static void usage_error(const char *msg)
{
	fprintf(stderr, "cgmove: %s (usage: cgmove [-S SECONDS] [-f FORKERS] "
		"[-m RATE] [-C CGROUP2_DIR] [-g])\n", msg);
	exit(2);
}

static void on_signal(int sig)
{
	got_signal = sig;
}

/* Write "<pid>\n" to a cgroup.procs fd; 0 or an errno value. */
static int write_pid(int fd, pid_t pid)
{
	char buf[24];
	int len = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
	ssize_t n;

	do
		n = write(fd, buf, (size_t)len);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno;
	return n == len ? 0 : EIO;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/*
 * Undo everything set up so far; safe to call at any stage and more than
 * once.  Returns 0 if the groups are gone, -1 otherwise (reported).
 */
static int cleanup(void)
{
	int i, g, tries, status, ret = 0;

	if (sh)
		atomic_store(&sh->stop, 1);
	if (go_wfd >= 0) {		/* parked forkers start, see stop */
		close(go_wfd);
		go_wfd = -1;
	}
	/* Back to the original cgroup first; a forker that is already gone
	 * gives ESRCH, which is fine. */
	for (i = 0; i < nforkers; i++)
		if (forker[i] > 0 && forker_grp[i] >= 0 && orig_fd >= 0 &&
		    write_pid(orig_fd, forker[i]) == 0)
			forker_grp[i] = -1;
	for (i = 0; i < nforkers; i++) {
		if (forker[i] <= 0)
			continue;
		while (waitpid(forker[i], &status, 0) < 0 && errno == EINTR)
			;
		forker[i] = 0;
	}
	for (g = 0; g < 2; g++) {
		if (grp_fd[g] >= 0) {
			close(grp_fd[g]);
			grp_fd[g] = -1;
		}
		if (!grp_made[g])
			continue;
		/* Exited children can keep a group busy for a moment. */
		for (tries = 0; rmdir(grp_dir[g]) != 0; tries++) {
			if (errno == ENOENT)
				break;
			if (errno != EBUSY || tries >= RMDIR_TRIES) {
				fprintf(stderr, "cgmove: rmdir %s: %s\n",
					grp_dir[g], strerror(errno));
				ret = -1;
				break;
			}
			sleep_ms(10);
		}
		grp_made[g] = 0;
	}
	if (orig_fd >= 0) {
		close(orig_fd);
		orig_fd = -1;
	}
	return ret;
}

/* One line on stderr, clean up, exit 1. */
static void die(const char *what, const char *arg, int err)
{
	fprintf(stderr, "cgmove: %s%s%s: %s\n", what, arg ? " " : "",
		arg ? arg : "", strerror(err));
	cleanup();
	exit(1);
}

static int is_cgroup2(const char *dir)
{
	struct statfs st;

	return statfs(dir, &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC;
}

/* Fill orig_dir from the "0::<path>" line of /proc/self/cgroup. */
static void find_orig_cgroup(void)
{
	char line[PATH_MAX + 16];
	FILE *f = fopen("/proc/self/cgroup", "r");
	int found = 0;

	if (!f)
		die("open", "/proc/self/cgroup", errno);
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "0::", 3) == 0) {
			line[strcspn(line, "\n")] = '\0';
			if ((size_t)snprintf(orig_dir, sizeof(orig_dir), "%s%s",
					     cg_root, strcmp(line + 3, "/") ?
					     line + 3 : "") >= sizeof(orig_dir))
				die("cgroup path too long", NULL, ENAMETOOLONG);
			found = 1;
			break;
		}
	}
	fclose(f);
	if (!found) {
		fprintf(stderr, "cgmove: no cgroup v2 entry (0::) in "
			"/proc/self/cgroup\n");
		exit(1);
	}
}

static int open_procs(const char *dir)
{
	char path[PATH_MAX + 16];
	int fd;

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("open", path, errno);
	return fd;
}

/* A forker: wait for the go (EOF on the pipe), then fork+exit+wait. */
static void forker_main(int idx, int go_rfd, pid_t mover)
{
	unsigned long forks = 0;
	char c;
	pid_t p;

	/* The mover decides when to stop; it also owns the clean-up. */
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != mover)
		_exit(1);
	close(go_wfd);
	while (read(go_rfd, &c, 1) < 0 && errno == EINTR)
		;
	close(go_rfd);

	while (!atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
		p = fork();
		if (p == 0)
			_exit(0);
		if (p < 0) {
			if (errno == EAGAIN || errno == ENOMEM) {
				sleep_ms(1);
				continue;
			}
			fprintf(stderr, "cgmove: forker fork: %s\n",
				strerror(errno));
			_exit(1);
		}
		while (waitpid(p, NULL, 0) < 0)
			if (errno != EINTR)
				_exit(1);
		forks++;
		atomic_store_explicit(&sh->slot[idx].forks, forks,
				      memory_order_relaxed);
	}
	_exit(0);
}

/* Read one byte from stdin: 1 read, 0 EOF, -1 interrupted by a signal. */
static int read_byte(void)
{
	char c;

	for (;;) {
		ssize_t n = read(0, &c, 1);

		if (n >= 0)
			return n > 0;
		if (errno != EINTR)
			die("read", "stdin", errno);
		if (got_signal)
			return -1;
	}
}

static double now_sec(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	struct timespec ts;

	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - floor(t)) * 1e9);
	if (ts.tv_nsec >= 1000000000L)
		ts.tv_nsec = 999999999L;
	/* A signal interrupts the sleep; the caller checks got_signal. */
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static double parse_double(const char *s, double min, double max,
			   const char *msg)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
		usage_error(msg);
	return v;
}

int main(int argc, char **argv)
{
	double seconds = 5.0, rate = 0.0, start, deadline, t;
	unsigned long long moves = 0, forks = 0;
	const char *root_opt = NULL;
	int opt, i, g, err, go_mode = 0, go_pipe[2], status = 0;
	struct sigaction sa;
	pid_t self = getpid();
	char *end;
	long v;

	opterr = 0;
	while ((opt = getopt(argc, argv, ":S:f:m:C:g")) != -1) {
		switch (opt) {
		case 'S':
			seconds = parse_double(optarg, 1e-9, MAX_SECONDS,
					       "invalid -S value (> 0 seconds)");
			break;
		case 'f':
			errno = 0;
			v = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || v < 1 ||
			    v > MAX_FORKERS)
				usage_error("invalid -f value (1..256)");
			nforkers = (int)v;
			break;
		case 'm':
			rate = parse_double(optarg, 0, 1e9,
					    "invalid -m value (>= 0 moves/s)");
			break;
		case 'C':
			root_opt = optarg;
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

	/* ---- checks: root, cgroup v2 ---- */
	if (geteuid() != 0) {
		fprintf(stderr, "cgmove: must run as root (it creates cgroups "
			"and moves processes between them)\n");
		return 1;
	}
	if (root_opt) {
		if (!is_cgroup2(root_opt)) {
			fprintf(stderr, "cgmove: %s is not a cgroup v2 "
				"mount\n", root_opt);
			return 1;
		}
		snprintf(cg_root, sizeof(cg_root), "%s", root_opt);
	} else if (is_cgroup2("/sys/fs/cgroup")) {
		strcpy(cg_root, "/sys/fs/cgroup");
	} else if (is_cgroup2("/sys/fs/cgroup/unified")) {
		strcpy(cg_root, "/sys/fs/cgroup/unified");
	} else {
		fprintf(stderr, "cgmove: cgroup v2 is not mounted at "
			"/sys/fs/cgroup (nor at /sys/fs/cgroup/unified); "
			"name a cgroup2 mount with -C DIR\n");
		return 1;
	}
	find_orig_cgroup();
	orig_fd = open_procs(orig_dir);

	/* ---- setup; from here on every exit path runs cleanup() ---- */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;	/* no SA_RESTART: sleeps end early */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED) {
		sh = NULL;
		die("mmap", NULL, errno);
	}
	for (g = 0; g < 2; g++) {
		snprintf(grp_dir[g], sizeof(grp_dir[g]),
			 "%s/lockprof-cgmove-%d-%c", cg_root, (int)self,
			 'a' + g);
		if (mkdir(grp_dir[g], 0755) != 0)
			die("mkdir", grp_dir[g], errno);
		grp_made[g] = 1;
		grp_fd[g] = open_procs(grp_dir[g]);
	}

	if (pipe(go_pipe) != 0)
		die("pipe", NULL, errno);
	go_wfd = go_pipe[1];
	for (i = 0; i < nforkers && !got_signal; i++) {
		forker_grp[i] = -1;
		forker[i] = fork();
		if (forker[i] == 0)
			forker_main(i, go_pipe[0], self);
		if (forker[i] < 0) {
			err = errno;
			forker[i] = 0;
			die("fork", NULL, err);
		}
	}
	close(go_pipe[0]);

	if (go_mode && !got_signal) {
		printf("ready %d\n", (int)self);
		fflush(stdout);
		if (read_byte() == 0) {
			cleanup();
			return 3;
		}
	}

	/* ---- the run: release the forkers, move them ---- */
	if (!got_signal) {
		close(go_wfd);
		go_wfd = -1;
	}
	start = now_sec();
	deadline = start + seconds;
	while (!got_signal) {
		t = now_sec();
		if (t >= deadline)
			break;
		if (rate > 0 && t < start + (double)moves / rate) {
			t = start + (double)moves / rate;
			sleep_until(t < deadline ? t : deadline);
			continue;
		}
		i = (int)(moves % (unsigned long long)nforkers);
		g = forker_grp[i] == 0 ? 1 : 0;
		err = write_pid(grp_fd[g], forker[i]);
		if (err)
			die("move to", grp_dir[g], err);
		forker_grp[i] = g;
		moves++;
	}

	/* ---- clean up, report ---- */
	if (cleanup() != 0)
		status = 1;
	for (i = 0; i < nforkers; i++)
		forks += atomic_load(&sh->slot[i].forks);
	printf("moves %llu forks %llu\n", moves, forks);
	if (go_mode && !got_signal) {
		printf("done\n");
		fflush(stdout);
		(void)read_byte();	/* a byte, EOF or a signal: exit */
	}
	fflush(stdout);
	if (got_signal)
		return 128 + got_signal;
	return status;
}
