/*
 * Helpers shared by the benchmark programs (bench-notifier, bench-shadow,
 * bench-share, bench-pager, bench-evict, bench-clone): timing, medians, and
 * dying on a failed call.  A program that uses CHECK defines BENCH_NAME (its
 * name, for messages) first.
 */
#ifndef UMBRA_BENCH_UTIL_H
#define UMBRA_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
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

#endif
