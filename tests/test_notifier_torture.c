/*
 * Randomised concurrency torture for notifier/ with an oracle.
 *
 * NTHREADS threads run a random mix of operations on NOBJ memory objects:
 * subscribe, unsubscribe, invalidate (blocking or not, in whichever delivery
 * mode the object is in, switched at random), fault (read_begin / resolve /
 * read_retry / install), clear_young, test_young, switch mode.  Each object
 * has NSLOTS subscriber slots, each a model of a VM's shadow MMU: a page map
 * under its own mmu_lock, which its callbacks take.
 *
 * The "primary" memory is backing[obj][page], a version number changed only
 * between an invalidation's start and end.  The oracle checks, as it runs:
 *
 *  A. no stale install: when a fault installs version v (read_retry said no
 *     retry, mmu_lock held), v is the page's current version;
 *  B. no missed zap: a fault never finds a mapping of an older version;
 *  C. after invalidate_range_start returns 0, no attached subscriber maps
 *     any page of the range;
 *  D. pairing: an end only for a start that succeeded, exactly once (ranges
 *     are tracked by pointer per subscription); nothing open at release;
 *  E. release exactly once per subscription and no callback after it (and
 *     the subscription's model is freed right after unsubscribe returns, so
 *     ASan sees any late callback as a use after free);
 *
 * and at the end: F. every remaining mapping is current; G. the library's
 * counters equal the callbacks the subscribers saw; both modes were used.
 *
 * Size: UMBRA_TORTURE_OPS operations in total (default 1,000,000), split
 * evenly among the threads; the run fails if they take longer than
 * TEST_TORTURE_LIMIT_S.  UMBRA_TORTURE_SEED fixes the seed (printed on
 * failure).
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "umbra/notifier.h"
#include "test_util.h"
#include "tests.h"

#define NTHREADS 8
#define NOBJ 2
#define NSLOTS 8
#define NPAGES 64
#define MAX_OPEN 64
#define DEFAULT_OPS 1000000ul

/* ---- failure reporting (threads record; the test thread asserts) ----- */

static struct test_failures failures;
static double start_s;			/* for TEST_TORTURE_LIMIT_S */

/* ---- model ------------------------------------------------------------ */

struct tslot;

/* One subscription's life; freed as soon as notifier_unsubscribe returns. */
struct tinc {
	struct tslot *slot;
	bool released;			/* under slot->mmu_lock */
	unsigned int releases;
	unsigned int nopen;
	const struct notifier_range *open[MAX_OPEN];
};

enum slot_state { SLOT_FREE, SLOT_ATTACHED, SLOT_DETACHING };

struct tslot {
	struct tobj *tobj;
	int busy;				/* atomic: claimed by one thread */
	struct umbra_mutex mmu_lock;
	enum slot_state state;			/* under mmu_lock */
	struct tinc *inc;			/* owner thread only */
	struct notifier_subscription *sub;	/* owner thread only */
	uint64_t map[NPAGES];			/* under mmu_lock */
};

struct tobj {
	struct notifier_object *obj;
	uint64_t backing[NPAGES];		/* atomic */
	struct tslot slot[NSLOTS];
};

static struct tobj tobjs[NOBJ];
static uint64_t version_counter;	/* atomic */

/* What the subscribers saw, to compare with the library's counters. */
static struct {
	uint64_t range_start, range_end, page, eagain;
} seen[NOBJ];

static struct {
	uint64_t ops, faults, retries, invalidations, aborts, subscribes, unsubscribes,
		young, mode_switches;
} tally;

/* ---- per-thread random numbers --------------------------------------- */

static __thread uint64_t rng_state;

static uint64_t rnd(void)
{
	return test_rnd(&rng_state);
}

static unsigned int rnd_below(unsigned int n)
{
	return (unsigned int)(rnd() % n);
}

static int tobj_index(const struct notifier_object *obj)
{
	for (int i = 0; i < NOBJ; i++)
		if (tobjs[i].obj == obj)
			return i;
	return 0;
}

/* ---- callbacks ------------------------------------------------------- */

static struct tinc *inc_of(struct notifier_subscription *sub)
{
	return notifier_subscription_priv(sub);
}

static void check_alive_locked(struct tinc *inc, const char *what)
{
	if (inc->released)
		test_fail(&failures, "E: %s after release", what);
}

static int c_start(struct notifier_subscription *sub, const struct notifier_range *r)
{
	struct tinc *inc = inc_of(sub);
	struct tslot *s = inc->slot;
	int i = tobj_index(r->obj);

	__atomic_fetch_add(&seen[i].range_start, 1, __ATOMIC_RELAXED);
	if (!notifier_range_may_block(r) && rnd_below(8) == 0) {
		__atomic_fetch_add(&seen[i].eagain, 1, __ATOMIC_RELAXED);
		return -EAGAIN;
	}
	umbra_mutex_lock(&s->mmu_lock);
	check_alive_locked(inc, "invalidate_range_start");
	for (uint64_t p = r->first; p <= r->last; p++)
		s->map[p] = 0;
	if (inc->nopen == MAX_OPEN)
		test_fail(&failures, "D: more than %d ranges open on one subscription", MAX_OPEN);
	else
		inc->open[inc->nopen++] = r;
	umbra_mutex_unlock(&s->mmu_lock);
	return 0;
}

static void c_end(struct notifier_subscription *sub, const struct notifier_range *r)
{
	struct tinc *inc = inc_of(sub);
	struct tslot *s = inc->slot;
	unsigned int i;

	__atomic_fetch_add(&seen[tobj_index(r->obj)].range_end, 1, __ATOMIC_RELAXED);
	umbra_mutex_lock(&s->mmu_lock);
	check_alive_locked(inc, "invalidate_range_end");
	for (i = 0; i < inc->nopen; i++)
		if (inc->open[i] == r)
			break;
	if (i == inc->nopen)
		test_fail(&failures, "D: invalidate_range_end without a successful start (pages %llu-%llu)",
		     (unsigned long long)r->first, (unsigned long long)r->last);
	else
		inc->open[i] = inc->open[--inc->nopen];
	umbra_mutex_unlock(&s->mmu_lock);
}

static int c_page(struct notifier_subscription *sub, const struct notifier_range *r,
		  uint64_t page)
{
	struct tinc *inc = inc_of(sub);
	struct tslot *s = inc->slot;
	int i = tobj_index(r->obj);

	__atomic_fetch_add(&seen[i].page, 1, __ATOMIC_RELAXED);
	if (page < r->first || page > r->last)
		test_fail(&failures, "invalidate_page: page %llu outside its range", (unsigned long long)page);
	if (!notifier_range_may_block(r) && rnd_below(64) == 0) {
		__atomic_fetch_add(&seen[i].eagain, 1, __ATOMIC_RELAXED);
		return -EAGAIN;
	}
	umbra_mutex_lock(&s->mmu_lock);
	check_alive_locked(inc, "invalidate_page");
	s->map[page] = 0;
	umbra_mutex_unlock(&s->mmu_lock);
	return 0;
}

static int c_clear_young(struct notifier_subscription *sub, struct notifier_object *obj,
			 uint64_t first, uint64_t last)
{
	struct tinc *inc = inc_of(sub);
	int young = 0;

	umbra_mutex_lock(&inc->slot->mmu_lock);
	check_alive_locked(inc, "clear_young");
	for (uint64_t p = first; p <= last; p++)
		young |= inc->slot->map[p] != 0;
	umbra_mutex_unlock(&inc->slot->mmu_lock);
	return young;
}

static int c_test_young(struct notifier_subscription *sub, struct notifier_object *obj,
			uint64_t page)
{
	struct tinc *inc = inc_of(sub);
	int young;

	umbra_mutex_lock(&inc->slot->mmu_lock);
	check_alive_locked(inc, "test_young");
	young = inc->slot->map[page] != 0;
	umbra_mutex_unlock(&inc->slot->mmu_lock);
	return young;
}

static void c_release(struct notifier_subscription *sub, struct notifier_object *obj)
{
	struct tinc *inc = inc_of(sub);
	struct tslot *s = inc->slot;

	umbra_mutex_lock(&s->mmu_lock);
	check_alive_locked(inc, "release");
	if (inc->nopen)
		test_fail(&failures, "D: release with %u ranges started and not ended", inc->nopen);
	memset(s->map, 0, sizeof(s->map));
	inc->released = true;
	inc->releases++;
	umbra_mutex_unlock(&s->mmu_lock);
}

static const struct notifier_ops torture_ops = {
	.invalidate_range_start = c_start,
	.invalidate_range_end = c_end,
	.invalidate_page = c_page,
	.clear_young = c_clear_young,
	.test_young = c_test_young,
	.release = c_release,
};

/* ---- operations ------------------------------------------------------- */

static bool slot_claim(struct tslot *s)
{
	int expected = 0;

	return __atomic_compare_exchange_n(&s->busy, &expected, 1, false, __ATOMIC_ACQUIRE,
					   __ATOMIC_RELAXED);
}

static void slot_unclaim(struct tslot *s)
{
	__atomic_store_n(&s->busy, 0, __ATOMIC_RELEASE);
}

static void op_subscribe(struct tslot *s)
{
	struct tinc *inc = calloc(1, sizeof(*inc));
	int ret;

	if (!inc) {
		test_fail(&failures, "out of memory");
		return;
	}
	inc->slot = s;
	umbra_mutex_lock(&s->mmu_lock);
	for (int p = 0; p < NPAGES; p++)
		if (s->map[p])
			test_fail(&failures, "E: free slot still maps page %d", p);
	umbra_mutex_unlock(&s->mmu_lock);
	ret = notifier_subscribe(s->tobj->obj, &torture_ops, inc, &s->sub);
	if (ret) {
		test_fail(&failures, "subscribe: expected 0, got %d", ret);
		free(inc);
		return;
	}
	s->inc = inc;
	umbra_mutex_lock(&s->mmu_lock);
	s->state = SLOT_ATTACHED;
	umbra_mutex_unlock(&s->mmu_lock);
	__atomic_fetch_add(&tally.subscribes, 1, __ATOMIC_RELAXED);
}

static void op_unsubscribe(struct tslot *s)
{
	struct tinc *inc = s->inc;

	umbra_mutex_lock(&s->mmu_lock);
	s->state = SLOT_DETACHING;
	umbra_mutex_unlock(&s->mmu_lock);
	notifier_unsubscribe(s->sub);
	umbra_mutex_lock(&s->mmu_lock);
	if (inc->releases != 1)
		test_fail(&failures, "E: expected 1 release when unsubscribe returns, got %u", inc->releases);
	s->state = SLOT_FREE;
	umbra_mutex_unlock(&s->mmu_lock);
	free(inc);	/* a later callback would be a use after free */
	s->inc = NULL;
	s->sub = NULL;
	__atomic_fetch_add(&tally.unsubscribes, 1, __ATOMIC_RELAXED);
}

static void op_fault(struct tobj *t, struct tslot *s)
{
	uint64_t page = rnd_below(NPAGES);

	__atomic_fetch_add(&tally.faults, 1, __ATOMIC_RELAXED);
	for (int attempt = 0; attempt < 1000; attempt++) {
		uint64_t seq = notifier_read_begin(t->obj, page, page);
		uint64_t v = __atomic_load_n(&t->backing[page], __ATOMIC_ACQUIRE);
		uint64_t now, old;

		if (rnd_below(4) == 0)
			sched_yield();	/* widen the resolve-to-install window */
		umbra_mutex_lock(&s->mmu_lock);
		if (notifier_read_retry(t->obj, page, page, seq)) {
			umbra_mutex_unlock(&s->mmu_lock);
			__atomic_fetch_add(&tally.retries, 1, __ATOMIC_RELAXED);
			continue;
		}
		now = __atomic_load_n(&t->backing[page], __ATOMIC_ACQUIRE);
		old = s->map[page];
		if (v != now)
			test_fail(&failures, "A: stale install: page %llu resolved to version %llu, current %llu",
			     (unsigned long long)page, (unsigned long long)v,
			     (unsigned long long)now);
		if (old && old != now)
			test_fail(&failures, "B: page %llu still mapped at version %llu, current %llu (missed zap)",
			     (unsigned long long)page, (unsigned long long)old,
			     (unsigned long long)now);
		s->map[page] = v;
		umbra_mutex_unlock(&s->mmu_lock);
		return;
	}
}

static void op_invalidate(struct tobj *t)
{
	static const enum notifier_event events[] = {
		NOTIFIER_EVENT_UNMAP, NOTIFIER_EVENT_SWAPOUT, NOTIFIER_EVENT_PROTECT,
		NOTIFIER_EVENT_COW,
	};
	struct notifier_range r;
	uint64_t first, len;
	unsigned int flags = rnd_below(4) ? NOTIFIER_RANGE_MAY_BLOCK : 0;
	int ret;

	len = rnd_below(16) ? 1 + rnd_below(8) : 1 + rnd_below(NPAGES);
	first = rnd_below((unsigned int)(NPAGES - len + 1));
	notifier_range_init(&r, t->obj, events[rnd_below(4)], first, first + len - 1, flags);
	ret = notifier_invalidate_range_start(&r);
	if (ret == -EAGAIN && !flags) {
		__atomic_fetch_add(&tally.aborts, 1, __ATOMIC_RELAXED);
		return;
	}
	if (ret) {
		test_fail(&failures, "invalidate_range_start: expected 0, got %d", ret);
		return;
	}
	__atomic_fetch_add(&tally.invalidations, 1, __ATOMIC_RELAXED);
	/* C: nothing attached maps the range now. */
	for (int i = 0; i < NSLOTS; i++) {
		struct tslot *s = &t->slot[i];

		umbra_mutex_lock(&s->mmu_lock);
		if (s->state == SLOT_ATTACHED) {
			for (uint64_t p = r.first; p <= r.last; p++)
				if (s->map[p])
					test_fail(&failures, "C: after start, slot %d still maps page %llu", i,
					     (unsigned long long)p);
		}
		umbra_mutex_unlock(&s->mmu_lock);
	}
	if (rnd_below(4) == 0)
		sched_yield();	/* widen the start-to-end window */
	/* The primary changes the pages. */
	for (uint64_t p = r.first; p <= r.last; p++)
		__atomic_store_n(&t->backing[p],
				 __atomic_add_fetch(&version_counter, 1, __ATOMIC_RELAXED),
				 __ATOMIC_RELEASE);
	notifier_invalidate_range_end(&r);
}

static void op_young(struct tobj *t)
{
	int ret;

	if (rnd_below(2)) {
		uint64_t first = rnd_below(NPAGES - 4);

		ret = notifier_clear_young(t->obj, first, first + 3);
	} else {
		ret = notifier_test_young(t->obj, rnd_below(NPAGES));
	}
	if (ret < 0)
		test_fail(&failures, "young: expected 0 or 1, got %d", ret);
	__atomic_fetch_add(&tally.young, 1, __ATOMIC_RELAXED);
}

struct worker_arg {
	unsigned long ops;
	uint64_t seed;
};

static void *worker(void *p)
{
	struct worker_arg *a = p;

	rng_state = a->seed | 1;
	notifier_thread_init();
	for (unsigned long n = 0;
	     test_torture_keep_going(&failures, start_s, "worker", n, a->ops); n++) {
		struct tobj *t = &tobjs[rnd_below(NOBJ)];
		unsigned int dice = rnd_below(100);

		if (dice < 40) {		/* fault: read_begin / read_retry */
			struct tslot *s = &t->slot[rnd_below(NSLOTS)];

			if (slot_claim(s)) {
				if (s->inc)
					op_fault(t, s);
				slot_unclaim(s);
			}
		} else if (dice < 75) {		/* invalidate in the object's mode */
			op_invalidate(t);
		} else if (dice < 85) {		/* subscribe or unsubscribe */
			struct tslot *s = &t->slot[rnd_below(NSLOTS)];

			if (slot_claim(s)) {
				if (s->inc)
					op_unsubscribe(s);
				else
					op_subscribe(s);
				slot_unclaim(s);
			}
		} else if (dice < 97) {
			op_young(t);
		} else {			/* switch delivery mode */
			notifier_object_set_mode(t->obj, (enum notifier_mode)rnd_below(NOTIFIER_MODE_NR));
			__atomic_fetch_add(&tally.mode_switches, 1, __ATOMIC_RELAXED);
		}
		__atomic_fetch_add(&tally.ops, 1, __ATOMIC_RELAXED);
	}
	notifier_thread_exit();
	return NULL;
}

START_TEST(test_torture_mixed_operations_never_install_stale_mappings)
{
	unsigned long total = test_env_ulong("UMBRA_TORTURE_OPS", DEFAULT_OPS);
	uint64_t seed = test_env_ulong("UMBRA_TORTURE_SEED", (unsigned long)time(NULL));
	struct worker_arg args[NTHREADS];
	pthread_t th[NTHREADS];
	struct timespec t0, t1;
	uint64_t by_mode[NOTIFIER_MODE_NR] = { 0 };
	double secs;

	notifier_thread_init();
	test_failures_init(&failures);
	memset(tobjs, 0, sizeof(tobjs));
	memset(seen, 0, sizeof(seen));
	memset(&tally, 0, sizeof(tally));
	version_counter = 0;
	for (int i = 0; i < NOBJ; i++) {
		char name[32];

		snprintf(name, sizeof(name), "torture-%d", i);
		ck_assert_int_eq(notifier_object_create(name, NPAGES, &tobjs[i].obj), 0);
		for (int p = 0; p < NPAGES; p++)
			tobjs[i].backing[p] = ++version_counter;
		for (int j = 0; j < NSLOTS; j++) {
			tobjs[i].slot[j].tobj = &tobjs[i];
			umbra_mutex_init(&tobjs[i].slot[j].mmu_lock, "torture.mmu_lock",
					    UMBRA_LOCK_RANK_MMU);
		}
	}

	clock_gettime(CLOCK_MONOTONIC, &t0);
	start_s = test_now_s();
	for (int i = 0; i < NTHREADS; i++) {
		args[i].ops = total / NTHREADS + (i < (int)(total % NTHREADS));
		args[i].seed = seed * 0x9e3779b97f4a7c15ull + (uint64_t)i * 0xbf58476d1ce4e5b9ull;
		ck_assert_int_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
	}
	for (int i = 0; i < NTHREADS; i++)
		pthread_join(th[i], NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;

	/* F: every remaining mapping is current. */
	for (int i = 0; i < NOBJ; i++)
		for (int j = 0; j < NSLOTS; j++)
			for (int p = 0; p < NPAGES; p++) {
				uint64_t m = tobjs[i].slot[j].map[p];

				if (m && m != tobjs[i].backing[p])
					test_fail(&failures, "F: object %d slot %d page %d maps version %llu, current %llu",
					     i, j, p, (unsigned long long)m,
					     (unsigned long long)tobjs[i].backing[p]);
			}

	/* G: the library's counters agree with what the subscribers saw. */
	for (int i = 0; i < NOBJ; i++) {
		struct notifier_stats st;

		notifier_object_stats(tobjs[i].obj, &st);
		if (st.cb_range_start != seen[i].range_start)
			test_fail(&failures, "G: object %d: cb_range_start %llu, subscribers saw %llu", i,
			     (unsigned long long)st.cb_range_start,
			     (unsigned long long)seen[i].range_start);
		if (st.cb_range_end != seen[i].range_end)
			test_fail(&failures, "G: object %d: cb_range_end %llu, subscribers saw %llu", i,
			     (unsigned long long)st.cb_range_end, (unsigned long long)seen[i].range_end);
		if (st.cb_page != seen[i].page)
			test_fail(&failures, "G: object %d: cb_page %llu, subscribers saw %llu", i,
			     (unsigned long long)st.cb_page, (unsigned long long)seen[i].page);
		if (st.cb_eagain != seen[i].eagain)
			test_fail(&failures, "G: object %d: cb_eagain %llu, subscribers answered %llu", i,
			     (unsigned long long)st.cb_eagain, (unsigned long long)seen[i].eagain);
		if (st.starts != st.ends)
			test_fail(&failures, "G: object %d: %llu starts but %llu ends", i,
			     (unsigned long long)st.starts, (unsigned long long)st.ends);
		by_mode[NOTIFIER_MODE_RANGE] += st.starts_by_mode[NOTIFIER_MODE_RANGE];
		by_mode[NOTIFIER_MODE_PAGE] += st.starts_by_mode[NOTIFIER_MODE_PAGE];
	}

	/* Destroy with subscriptions left: each is released exactly once. */
	for (int i = 0; i < NOBJ; i++) {
		notifier_object_destroy(tobjs[i].obj);
		for (int j = 0; j < NSLOTS; j++) {
			struct tslot *s = &tobjs[i].slot[j];

			if (!s->inc)
				continue;
			if (s->inc->releases != 1)
				test_fail(&failures, "E: destroy: expected 1 release, got %u", s->inc->releases);
			notifier_unsubscribe(s->sub);
			if (s->inc->releases != 1)
				test_fail(&failures, "E: unsubscribe after destroy released again (%u)", s->inc->releases);
			free(s->inc);
			s->inc = NULL;
		}
		for (int j = 0; j < NSLOTS; j++)
			umbra_mutex_exit(&tobjs[i].slot[j].mmu_lock);
	}
	notifier_barrier();

	fprintf(stderr,
		"notifier torture: %d threads, %llu ops in %.2f s (seed %llu): %llu faults "
		"(%llu retries), %llu invalidations (%llu range-mode, %llu page-mode, %llu aborted), "
		"%llu subscribes, %llu unsubscribes, %llu young, %llu mode switches\n",
		NTHREADS, (unsigned long long)tally.ops, secs, (unsigned long long)seed,
		(unsigned long long)tally.faults, (unsigned long long)tally.retries,
		(unsigned long long)tally.invalidations,
		(unsigned long long)by_mode[NOTIFIER_MODE_RANGE],
		(unsigned long long)by_mode[NOTIFIER_MODE_PAGE], (unsigned long long)tally.aborts,
		(unsigned long long)tally.subscribes, (unsigned long long)tally.unsubscribes,
		(unsigned long long)tally.young, (unsigned long long)tally.mode_switches);

	ck_assert_msg(failures.count == 0, "seed %llu: %d oracle failures; first: %s",
		      (unsigned long long)seed, failures.count, failures.first);
	ck_assert_msg(tally.ops == total, "expected %lu operations, got %llu", total,
		      (unsigned long long)tally.ops);
	ck_assert_msg(by_mode[NOTIFIER_MODE_RANGE] > 0 && by_mode[NOTIFIER_MODE_PAGE] > 0,
		      "expected invalidations in both modes, got %llu range, %llu page",
		      (unsigned long long)by_mode[NOTIFIER_MODE_RANGE],
		      (unsigned long long)by_mode[NOTIFIER_MODE_PAGE]);
	ck_assert_msg(tally.subscribes > 0 && tally.unsubscribes > 0 && tally.faults > 0,
		      "expected subscribes, unsubscribes and faults to happen");
	notifier_thread_exit();
}
END_TEST

Suite *notifier_torture_suite(void)
{
	Suite *s = suite_create("notifier_torture");
	TCase *tc = tcase_create("torture");

	/* The run fails itself at TEST_TORTURE_LIMIT_S; Check's timeout is a
	 * backstop for a hang. */
	tcase_set_timeout(tc, TEST_TORTURE_LIMIT_S + 60);
	tcase_add_test(tc, test_torture_mixed_operations_never_install_stale_mappings);
	suite_add_tcase(s, tc);
	return s;
}
