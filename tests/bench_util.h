/*
 * Helpers shared by the benchmark programs (bench-notifier, bench-shadow,
 * bench-share, bench-pager, bench-evict, bench-clone, bench-fork): timing,
 * medians, Linux fork() as a baseline, and dying on a failed call.  A
 * program that uses CHECK defines BENCH_NAME (its name, for messages) first.
 */
#ifndef UMBRA_BENCH_UTIL_H
#define UMBRA_BENCH_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

/* Exits with the call, its line and its error when @expr is negative (-errno). */
#define CHECK(expr)                                                                        \
	do {                                                                               \
		long _r = (long)(expr);                                                    \
		if (_r < 0) {                                                              \
			fprintf(stderr, "%s:%d: %s: %ld (%s)\n", BENCH_NAME, __LINE__, #expr, \
				_r, strerror((int)-_r));                                   \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

/* @bytes of zeroed private memory (reserved lazily); exits if there is none. */
static inline void *bench_mmap(uint64_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

/* Does the environment ask for a quick run: UMBRA_BENCH_QUICK set, not "0"? */
static inline bool bench_quick_env(void)
{
	const char *env = getenv("UMBRA_BENCH_QUICK");

	return env && *env && strcmp(env, "0") != 0;
}

/* Is this a quick run: "--quick" as the only argument, or UMBRA_BENCH_QUICK
 * set (not "0")?  Any other argument: prints the usage and exits 2. */
static inline bool bench_quick(int argc, char **argv)
{
	bool quick = bench_quick_env();

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--quick") != 0) {
			fprintf(stderr, "usage: %s [--quick]   (or UMBRA_BENCH_QUICK=1)\n", argv[0]);
			exit(2);
		}
		quick = true;
	}
	return quick;
}

/* CLOCK_MONOTONIC in nanoseconds. */
static inline double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* The median of v[0..n) (n >= 1); v is left as it was. */
static inline double median(const double *v, int n)
{
	double *c = malloc((size_t)n * sizeof(*c));
	double m;

	if (!c)
		abort();
	memcpy(c, v, (size_t)n * sizeof(*c));
	qsort(c, (size_t)n, sizeof(*c), cmp_double);
	m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
	free(c);
	return m;
}


/* Stops the benchmark (exit 1) with the check and a message when @cond is
 * false: a figure from a run that did not do what it claims is no figure. */
#define ENSURE(cond, ...)                                                             \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, BENCH_NAME ":%d: check failed: %s: ", __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                 \
			fputc('\n', stderr);                                          \
			exit(1);                                                      \
		}                                                                     \
	} while (0)

/*
 * The time of one Linux fork() of a process with @bytes of private memory
 * touched (every page written), as the parent sees it: from the call to its
 * return in the parent (the kernel copies the page tables and marks every
 * page copy-on-write there). The memory is mapped, touched and unmapped by
 * the caller: @mem. The child exits at once; the parent reaps it after the
 * measurement. ns.
 */
static inline double bench_fork_ns(void)
{
	double t0 = now_ns(), t;
	pid_t pid = fork();

	if (pid == 0)
		_exit(0);
	t = now_ns() - t0;
	if (pid < 0) {
		perror("fork");
		exit(1);
	}
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "fork: the child did not exit cleanly\n");
		exit(1);
	}
	return t;
}

/* @bytes of private memory with every 4 KiB page written (for
 * bench_fork_ns): no transparent huge pages, so that fork() copies what a
 * process of 4 KiB pages has (one PTE per page). */
static inline void *bench_touched(uint64_t bytes)
{
	char *p = bench_mmap(bytes);

	if (madvise(p, bytes, MADV_NOHUGEPAGE))
		perror("madvise(MADV_NOHUGEPAGE)");
	for (uint64_t off = 0; off < bytes; off += 4096)
		p[off] = (char)(off >> 12);
	return p;
}

#endif
