/*
 * Helpers of every concurrent test (test_notifier*.c, test_shadow*.c): a
 * failure recorder for threads, waiting for a state another thread
 * publishes (with a wall-clock cap that fails loudly instead of a fixed
 * sleep), a start gate, and the size knobs of the tortures.  Header-only
 * (static inline) so that each suite stays one file.
 */
#ifndef UMBRA_TEST_UTIL_H
#define UMBRA_TEST_UTIL_H

#include <check.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif
#ifndef TEST_TSAN
#define TEST_TSAN 0
#endif

/* How long a test waits for a state another thread must reach before it
 * fails ("expected ... within 10 s"): long enough for a loaded sanitizer
 * run, short enough to report a hang well before Check's timeout. */
#define TEST_WAIT_LIMIT_S 10.0

/* A torture's wall-clock cap: it runs a fixed number of operations and fails
 * if they take longer than this. */
#define TEST_TORTURE_LIMIT_S 120.0

/* CLOCK_MONOTONIC in seconds. */
static inline double test_now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Pacing of the waits below (never what a check depends on). */
static inline void test_pause_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/*
 * Polls @cond(@arg) until it holds (returns true) or @limit_s seconds have
 * passed (returns false; the caller fails with what it expected and got).
 */
static inline bool test_wait_until(bool (*cond)(void *arg), void *arg, double limit_s)
{
	double end = test_now_s() + limit_s;

	while (!cond(arg)) {
		if (test_now_s() > end)
			return cond(arg);
		test_pause_ms(1);
	}
	return true;
}

/*
 * The bounded extra check of a "does not happen" test, run only after the
 * test proved its positive side (the other thread is blocked where it must
 * be): true if @cond(@arg) stayed false for @grace_s seconds.  A pass here
 * is never what makes a test pass on its own.
 */
static inline bool test_stays_false(bool (*cond)(void *arg), void *arg, double grace_s)
{
	double end = test_now_s() + grace_s;

	do {
		if (cond(arg))
			return false;
		test_pause_ms(1);
	} while (test_now_s() < end);
	return !cond(arg);
}

/* xorshift64: the next pseudo-random number of the sequence in *@state
 * (never 0: start it at a nonzero value). */
static inline uint64_t test_rnd(uint64_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 7;
	*state ^= *state << 17;
	return *state;
}

/* An unsigned number from the environment (decimal or 0x hex), or @dflt. */
static inline unsigned long test_env_ulong(const char *name, unsigned long dflt)
{
	const char *v = getenv(name);
	char *end;
	unsigned long n;

	if (!v || !*v)
		return dflt;
	n = strtoul(v, &end, 0);
	return *end ? dflt : n;
}

/*
 * Failures seen by the threads of a concurrent test (a Check assertion must
 * fire on the test's own thread): counted, the first one kept for the test
 * to report ("expected 0 failures; first: ..."); the first also raises
 * @stop, which the tortures' threads poll to end early.
 */
struct test_failures {
	pthread_mutex_t lock;
	int count;		/* under lock; read after the threads stopped */
	bool stop;		/* atomic */
	char first[512];
};

static inline void test_failures_init(struct test_failures *f)
{
	pthread_mutex_init(&f->lock, NULL);
	f->count = 0;
	f->stop = false;
	f->first[0] = '\0';
}

static inline void test_failures_exit(struct test_failures *f)
{
	pthread_mutex_destroy(&f->lock);
}

static inline void test_failures_vadd(struct test_failures *f, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));

static inline void test_failures_vadd(struct test_failures *f, const char *fmt, va_list ap)
{
	pthread_mutex_lock(&f->lock);
	if (f->count++ == 0)
		vsnprintf(f->first, sizeof(f->first), fmt, ap);
	pthread_mutex_unlock(&f->lock);
	__atomic_store_n(&f->stop, true, __ATOMIC_RELAXED);
}

static inline void test_fail(struct test_failures *f, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static inline void test_fail(struct test_failures *f, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	test_failures_vadd(f, fmt, ap);
	va_end(ap);
}

/* Has a failure been recorded (the threads' cue to stop)? */
static inline bool test_failed(struct test_failures *f)
{
	return __atomic_load_n(&f->stop, __ATOMIC_RELAXED);
}

/* The test thread's assertion: no thread recorded a failure. */
#define test_failures_assert_none(f)                                                   \
	ck_assert_msg((f)->count == 0, "expected no failures, got %d; first: %s", (f)->count, \
		      (f)->first)

/*
 * The loop condition of a torture thread (for (n = 0; test_torture_keep_going(
 * ..., n, total); n++)): goes on with operation @n of @total unless a
 * failure was recorded.  Every 256 operations it checks the wall-clock cap:
 * once TEST_TORTURE_LIMIT_S has passed since @start_s it records a failure
 * (which stops every thread) saying how far thread @who got.
 */
static inline bool test_torture_keep_going(struct test_failures *f, double start_s, const char *who,
					   unsigned long n, unsigned long total)
{
	if (n >= total || test_failed(f))
		return false;
	if (n % 256 || test_now_s() - start_s <= TEST_TORTURE_LIMIT_S)
		return true;
	test_fail(f, "%s: expected %lu operations within %.0f s, did %lu", who, total,
		  TEST_TORTURE_LIMIT_S, n);
	return false;
}

/*
 * A start gate for @n threads: a barrier (sleeping while the others are
 * created), then a spin until all have woken, so that those on a CPU leave
 * the gate together rather than one wake-up apart.
 */
struct test_gate {
	pthread_barrier_t barrier;
	unsigned int n, arrived;	/* arrived: atomic */
};

static inline void test_gate_init(struct test_gate *g, unsigned int n)
{
	pthread_barrier_init(&g->barrier, NULL, n);
	g->n = n;
	g->arrived = 0;
}

static inline void test_gate_exit(struct test_gate *g)
{
	pthread_barrier_destroy(&g->barrier);
}

static inline void test_gate_pass(struct test_gate *g)
{
	pthread_barrier_wait(&g->barrier);
	__atomic_add_fetch(&g->arrived, 1, __ATOMIC_ACQ_REL);
	while (__atomic_load_n(&g->arrived, __ATOMIC_ACQUIRE) < g->n)
		sched_yield();
}

#endif
