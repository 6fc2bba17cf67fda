/*
 * pager/: the budget and the reclaimer (reclaim.c) and eviction of a victim
 * list over several objects (evict.c).  Present pages are measured from the
 * memfds' allocated blocks, not from the pager's own count; every page's
 * content is checked after the run.  docs/pager.md, "The budget and the
 * reclaimer", is the design.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "umbra/pager.h"
#include "pager_internal.h"
#include "test_util.h"
#include "tests.h"

#define PG PAGER_PAGE_SIZE
#define MAX_OBJS 2

/* One memfd-backed object: its pages are filled with a pattern. */
struct robj {
	struct notifier_object *obj;
	int memfd;
	uint8_t *host;
	uint64_t npages;
	int id;
};

/* One pager over up to two objects. */
struct rfix {
	struct pager_swap *swap;
	struct pager *pager;
	struct robj o[MAX_OBJS];
	unsigned int nobjs;
};

/* The pattern of word @w of page @p of object @id. */
static uint64_t word_of(int id, uint64_t p, uint64_t w)
{
	return ((uint64_t)id << 56) ^ (p << 24) ^ (w * 0x9e3779b97f4a7c15ull) ^ 0xc3;
}

/* True if page @p of @o holds its pattern; read through the mapping (a
 * swapped page is brought back by the handler). */
static bool page_is_intact(const struct robj *o, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(o->host + p * PG);

	for (uint64_t i = 0; i < PG / 8; i++) {
		if (__atomic_load_n(&w[i], __ATOMIC_RELAXED) != word_of(o->id, p, i))
			return false;
	}
	return true;
}

static void robj_add(struct rfix *f, uint64_t npages)
{
	struct robj *o = &f->o[f->nobjs];

	o->npages = npages;
	ck_assert_int_eq(notifier_object_create("reclaimed", npages, &o->obj), 0);
	o->memfd = memfd_create("reclaimed", MFD_CLOEXEC);
	ck_assert_int_ge(o->memfd, 0);
	ck_assert_int_eq(ftruncate(o->memfd, (off_t)(npages * PG)), 0);
	o->host = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_SHARED, o->memfd, 0);
	ck_assert_ptr_ne(o->host, MAP_FAILED);
	/* The id is the add order: the pattern can be written first. */
	o->id = (int)f->nobjs;
	for (uint64_t p = 0; p < npages; p++) {
		uint64_t *w = (uint64_t *)(o->host + p * PG);

		for (uint64_t i = 0; i < PG / 8; i++)
			w[i] = word_of(o->id, p, i);
	}
	ck_assert_int_eq(pager_add_object(f->pager, o->obj, o->memfd, o->host, npages * PG, &o->id),
			 0);
	ck_assert_int_eq(o->id, (int)f->nobjs);
	f->nobjs++;
}

/* A pager with a swap of @nr_slots and objects of @np0 and @np1 pages (none
 * if 0), @ops set before the objects. */
static void rfix_init(struct rfix *f, uint64_t nr_slots, uint64_t np0, uint64_t np1,
		      const struct pager_ops *ops, void *priv)
{
	struct pager_swap_config cfg = { .nr_slots = nr_slots };

	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(notifier_thread_init(), 0);
	ck_assert_int_eq(pager_swap_create(&cfg, &f->swap), 0);
	ck_assert_int_eq(pager_create(f->swap, &f->pager), 0);
	if (ops)
		pager_set_ops(f->pager, ops, priv);
	robj_add(f, np0);
	if (np1)
		robj_add(f, np1);
}

/* Every page of every object intact, then destroy (which brings every page
 * back and must free every slot). */
static void rfix_fini(struct rfix *f)
{
	struct pager_swap_stats ss;

	for (unsigned int i = 0; i < f->nobjs; i++) {
		for (uint64_t p = 0; p < f->o[i].npages; p++)
			ck_assert_msg(page_is_intact(&f->o[i], p), "object %u page %llu damaged", i,
				      (unsigned long long)p);
	}
	pager_destroy(f->pager);
	pager_swap_stats(f->swap, &ss);
	ck_assert_uint_eq(ss.slots_in_use, 0);
	pager_swap_destroy(f->swap);
	for (unsigned int i = 0; i < f->nobjs; i++) {
		munmap(f->o[i].host, f->o[i].npages * PG);
		close(f->o[i].memfd);
		notifier_object_destroy(f->o[i].obj);
	}
}

/* Pages of host memory object @i's memfd holds, from st_blocks. */
static uint64_t memfd_pages(const struct rfix *f, unsigned int i)
{
	struct stat sb;

	ck_assert_int_eq(fstat(f->o[i].memfd, &sb), 0);
	return (uint64_t)sb.st_blocks * 512 / PG;
}

/* Present pages over every object, measured. */
static uint64_t present(const struct rfix *f)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < f->nobjs; i++)
		n += memfd_pages(f, i);
	return n;
}

static struct pager_reclaim_stats rstats(struct rfix *f)
{
	struct pager_reclaim_stats st;

	pager_reclaim_stats(f->pager, &st);
	return st;
}

static uint64_t evictions_of(struct rfix *f, unsigned int i)
{
	struct pager_stats st;

	ck_assert_int_eq(pager_stats(f->pager, f->o[i].id, &st), 0);
	return st.swapouts_io + st.swapouts_cached;
}

static uint64_t ms_since(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)(((int64_t)t.tv_sec - t0->tv_sec) * 1000000000 +
			  ((int64_t)t.tv_nsec - t0->tv_nsec)) / 1000000;
}

/* Polls @done(@f) every ms for up to 20 s; false on timeout. */
static bool wait_for(struct rfix *f, bool (*done)(struct rfix *f))
{
	struct timespec t0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!done(f)) {
		if (ms_since(&t0) > 20000)
			return false;
		usleep(1000);
	}
	return true;
}

/* ---- pager_evict_list ------------------------------------------------- */

START_TEST(test_evict_list_over_two_objects_is_one_swap_submission)
{
	/* A: 3..10 and 40; B: 5..20 and 63; plus a duplicate of A's 7. */
	struct pager_victim v[32];
	struct pager_swap_stats before, after;
	struct notifier_stats na, nb;
	unsigned int n = 0;
	struct rfix f;

	rfix_init(&f, 256, 64, 64, NULL, NULL);
	for (uint64_t p = 20; p >= 5; p--)
		v[n++] = (struct pager_victim){ .id = 1, .page = p };
	for (uint64_t p = 3; p <= 10; p++)
		v[n++] = (struct pager_victim){ .id = 0, .page = p };
	v[n++] = (struct pager_victim){ .id = 1, .page = 63 };
	v[n++] = (struct pager_victim){ .id = 0, .page = 40 };
	v[n++] = (struct pager_victim){ .id = 0, .page = 7 };
	ck_assert_uint_eq(memfd_pages(&f, 0), 64);
	ck_assert_uint_eq(memfd_pages(&f, 1), 64);

	/* A bad entry refuses the whole list. */
	v[n] = (struct pager_victim){ .id = 2, .page = 0 };
	ck_assert_int_eq(pager_evict_list(f.pager, v, n + 1), -EINVAL);
	v[n] = (struct pager_victim){ .id = 0, .page = 64 };
	ck_assert_int_eq(pager_evict_list(f.pager, v, n + 1), -EINVAL);
	ck_assert_uint_eq(present(&f), 128);

	pager_swap_stats(f.swap, &before);
	ck_assert_int_eq(pager_evict_list(f.pager, v, n), 0);
	pager_swap_stats(f.swap, &after);
	ck_assert_uint_eq(after.submissions - before.submissions, 1);
	ck_assert_uint_eq(after.writes - before.writes, 9 + 17);
	ck_assert_msg(memfd_pages(&f, 0) == 64 - 9 && memfd_pages(&f, 1) == 64 - 17,
		      "expected exactly the victims freed (55 and 47 pages left), got %llu and %llu",
		      (unsigned long long)memfd_pages(&f, 0), (unsigned long long)memfd_pages(&f, 1));
	/* One invalidation per contiguous run per object. */
	notifier_object_stats(f.o[0].obj, &na);
	notifier_object_stats(f.o[1].obj, &nb);
	ck_assert_uint_eq(na.starts, 2);
	ck_assert_uint_eq(nb.starts, 2);
	ck_assert(pager_is_swapped(f.pager, 0, 40) && !pager_is_swapped(f.pager, 0, 11));
	ck_assert(pager_is_swapped(f.pager, 1, 63) && !pager_is_swapped(f.pager, 1, 4));
	/* An evicted list again: nothing to do, no I/O. */
	ck_assert_int_eq(pager_evict_list(f.pager, v, n), 0);
	pager_swap_stats(f.swap, &before);
	ck_assert_uint_eq(before.submissions, after.submissions);
	rfix_fini(&f);
}
END_TEST

/* ---- direct reclaim ---------------------------------------------------- */

START_TEST(test_direct_reclaim_keeps_get_page_fills_at_the_limit)
{
	const struct pager_budget budget = { .limit_pages = 64, .batch_pages = 16 };
	struct pager_reclaim_stats st;
	struct rfix f;

	rfix_init(&f, 512, 128, 128, NULL, NULL);
	/* Everything out first: without a budget pager_reclaim is CLOCK, and
	 * no VM marks anything young. */
	ck_assert_int_eq(pager_reclaim(f.pager, 1000), 256);
	ck_assert_uint_eq(present(&f), 0);
	/* The budget without the thread: only direct reclaim can hold it. */
	ck_assert_int_eq(pager_reclaim_set_budget(f.pager, &budget), 0);
	ck_assert_int_eq(pager_reclaim_set_budget(f.pager, &budget), -EALREADY);
	for (uint64_t i = 0; i < 256; i++) {
		unsigned int o = i % 2;
		uint64_t now;

		ck_assert_int_eq(pager_get_page(f.pager, f.o[o].id, i / 2), 0);
		now = present(&f);
		ck_assert_msg(now <= budget.limit_pages, "%llu pages present after fill %llu, limit 64",
			      (unsigned long long)now, (unsigned long long)i);
	}
	st = rstats(&f);
	/* From 64 present, every 16th fill finds the limit and evicts 16. */
	ck_assert_uint_ge(st.direct, (256 - 64) / 16);
	ck_assert_uint_ge(st.reclaimed, 256 + 256 - 64);
	ck_assert_uint_eq(st.passes, 0);
	ck_assert_uint_eq(st.over_limit, 0);
	ck_assert_uint_le(st.peak_present, 64);
	rfix_fini(&f);
}
END_TEST

/* ---- the background reclaimer ----------------------------------------- */

#define BUDGET_N 64u
/* Fills past the limit the handler may make (it never reclaims itself,
 * docs/pager.md) while the reclaimer, woken above high (limit - 16), is
 * scheduled and evicts: one batch's worth.  Seen: 1 or 2. */
#define BUDGET_SLACK 16u

static bool is_within_budget(struct rfix *f)
{
	return present(f) <= BUDGET_N;
}

/* One thread's random touches of every object's pages, with the present
 * pages sampled after each. */
struct toucher {
	struct rfix *f;
	uint64_t seed;
	unsigned int touches;
	uint64_t peak, over;	/* most present seen; samples over limit + slack */
	bool damaged;
};

static void touch_randomly(struct toucher *t)
{
	struct rfix *f = t->f;

	for (unsigned int i = 0; i < t->touches; i++) {
		struct robj *o;
		uint64_t p, now;

		t->seed = t->seed * 6364136223846793005ull + 1442695040888963407ull;
		o = &f->o[(t->seed >> 40) & 1];
		p = (t->seed >> 20) % o->npages;
		if (i % 2) {
			t->damaged |= pager_get_page(f->pager, o->id, p) != 0;
		} else {
			/* Through the mapping: read all, then rewrite a word
			 * (a write fault makes the page dirty). */
			uint64_t *w = (uint64_t *)(o->host + p * PG);

			t->damaged |= !page_is_intact(o, p);
			__atomic_store_n(&w[7], word_of(o->id, p, 7), __ATOMIC_RELAXED);
		}
		now = present(f);
		if (now > t->peak)
			t->peak = now;
		if (now > BUDGET_N + BUDGET_SLACK)
			t->over++;
	}
}

/* touch_randomly() in a thread registered with liburcu while it runs. */
static void *toucher_thread(void *arg)
{
	notifier_thread_init();
	touch_randomly(arg);
	notifier_thread_exit();
	return NULL;
}

static void start_budget(struct rfix *f, enum pager_policy policy)
{
	const struct pager_budget budget = {
		.limit_pages = BUDGET_N,
		.batch_pages = 16,
		.policy = policy,
	};

	rfix_init(f, 1024, 2 * BUDGET_N, 2 * BUDGET_N, NULL, NULL);
	ck_assert_int_eq(pager_budget_start(f->pager, &budget), 0);
	ck_assert_int_eq(pager_budget_start(f->pager, &budget), -EALREADY);
	/* The 256 pages present at the start go down to low first. */
	ck_assert_msg(wait_for(f, is_within_budget), "the reclaimer never reached the budget");
}

START_TEST(test_reclaimer_keeps_present_within_limit_and_content_intact)
{
	struct pager_reclaim_stats st;
	struct toucher t;
	struct rfix f;

	start_budget(&f, (enum pager_policy)_i);
	t = (struct toucher){ .f = &f, .seed = 12345, .touches = 3000 };
	touch_randomly(&t);
	st = rstats(&f);
	ck_assert(!t.damaged);
	ck_assert_msg(t.over == 0, "present passed limit + slack (%u) %llu times, peak %llu",
		      BUDGET_N + BUDGET_SLACK, (unsigned long long)t.over,
		      (unsigned long long)t.peak);
	ck_assert_uint_ge(st.passes, 1);
	ck_assert_uint_ge(st.reclaimed, 2 * BUDGET_N);
	ck_assert_uint_eq(st.backoffs, 0);
	pager_budget_stop(f.pager);
	pager_budget_stop(f.pager);
	rfix_fini(&f);
}
END_TEST

/* Three touching threads: direct reclaims race the thread's passes (the
 * run under TSan is the point); no page is lost or damaged. */
START_TEST(test_concurrent_touchers_with_direct_and_background_reclaim)
{
	struct toucher t[3];
	pthread_t th[3];
	struct pager_reclaim_stats st;
	struct rfix f;

	start_budget(&f, (enum pager_policy)_i);
	for (unsigned int i = 0; i < 3; i++) {
		t[i] = (struct toucher){ .f = &f, .seed = 777 + i, .touches = 1500 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, toucher_thread, &t[i]), 0);
	}
	for (unsigned int i = 0; i < 3; i++) {
		pthread_join(th[i], NULL);
		ck_assert(!t[i].damaged);
	}
	st = rstats(&f);
	ck_assert_uint_ge(st.passes, 1);
	ck_assert_uint_ge(st.reclaimed, 2 * BUDGET_N);
	ck_assert_uint_eq(st.backoffs, 0);
	rfix_fini(&f);
}
END_TEST

/* ---- CLOCK against ROUND_ROBIN ------------------------------------------ */

#define HOT_PAGES 16u
#define COLD_PAGES 256u

/* A fake VM on the hot object: its young bits are set by the test. */
static atomic_bool hot_young[HOT_PAGES];

static int fake_clear_young(struct notifier_subscription *sub, struct notifier_object *obj,
			    uint64_t first, uint64_t last)
{
	int young = 0;

	for (uint64_t p = first; p <= last && p < HOT_PAGES; p++)
		young |= atomic_exchange(&hot_young[p], false);
	return young;
}

static int fake_test_young(struct notifier_subscription *sub, struct notifier_object *obj,
			   uint64_t page)
{
	return page < HOT_PAGES && atomic_load(&hot_young[page]);
}

static const struct notifier_ops fake_young_ops = {
	.clear_young = fake_clear_young,
	.test_young = fake_test_young,
};

/* Evictions of the hot set while a cold stream goes through the budget. */
static uint64_t hot_evictions_under(enum pager_policy policy)
{
	const struct pager_budget budget = { .limit_pages = 64, .batch_pages = 8, .policy = policy };
	struct notifier_subscription *sub;
	uint64_t before, after, cold = 0;
	struct rfix f;

	rfix_init(&f, 1024, HOT_PAGES, COLD_PAGES, NULL, NULL);
	ck_assert_int_eq(notifier_subscribe(f.o[0].obj, &fake_young_ops, NULL, &sub), 0);
	/* The cold object out: the run starts under the budget. */
	ck_assert_int_eq(pager_evict(f.pager, f.o[1].id, 0, COLD_PAGES), 0);
	ck_assert_int_eq(pager_budget_start(f.pager, &budget), 0);
	before = evictions_of(&f, 0);
	for (unsigned int round = 0; round < 600; round++) {
		for (uint64_t p = 0; p < HOT_PAGES; p++) {
			ck_assert(page_is_intact(&f.o[0], p));
			atomic_store(&hot_young[p], true);
		}
		for (unsigned int k = 0; k < 4; k++, cold++)
			ck_assert(page_is_intact(&f.o[1], cold % COLD_PAGES));
	}
	pager_budget_stop(f.pager);
	after = evictions_of(&f, 0);
	ck_assert_uint_ge(evictions_of(&f, 1), COLD_PAGES);
	notifier_unsubscribe(sub);
	rfix_fini(&f);
	return after - before;
}

START_TEST(test_clock_keeps_hot_set_that_round_robin_evicts)
{
	uint64_t clock = hot_evictions_under(PAGER_POLICY_CLOCK);
	uint64_t rr = hot_evictions_under(PAGER_POLICY_ROUND_ROBIN);

	ck_assert_msg(rr >= 2 * HOT_PAGES && clock * 4 <= rr,
		      "expected CLOCK to evict the hot set far less often than ROUND_ROBIN: %llu vs %llu",
		      (unsigned long long)clock, (unsigned long long)rr);
}
END_TEST

/* ---- pins -------------------------------------------------------------- */

/* Pages [8, 24) of object 0 are pinned: all else goes, they stay. */
static void assert_only_pinned_present(struct rfix *f)
{
	for (uint64_t p = 0; p < f->o[0].npages; p++)
		ck_assert_msg(pager_is_swapped(f->pager, 0, p) == (p < 8 || p >= 24),
			      "page %llu: pinned pages stay, others go", (unsigned long long)p);
	ck_assert_uint_eq(memfd_pages(f, 0), 16);
	ck_assert_uint_eq(memfd_pages(f, 1), 0);
}

START_TEST(test_pinned_pages_are_never_victims)
{
	const struct pager_budget rr = {
		.limit_pages = 1024, .policy = PAGER_POLICY_ROUND_ROBIN,
	};
	struct rfix f;

	rfix_init(&f, 512, 64, 64, NULL, NULL);
	ck_assert_int_eq(pager_pin(f.pager, 0, 8, 16), 0);
	ck_assert_int_eq(pager_evict(f.pager, 0, 0, 64), 0);
	ck_assert_uint_eq(memfd_pages(&f, 0), 16);
	/* CLOCK (no budget yet). */
	ck_assert_int_eq(pager_reclaim(f.pager, 1000), 64);
	assert_only_pinned_present(&f);
	ck_assert_int_eq(pager_reclaim(f.pager, 1000), 0);
	/* ROUND_ROBIN. */
	ck_assert_int_eq(pager_reclaim_set_budget(f.pager, &rr), 0);
	for (uint64_t p = 0; p < 64; p++) {
		ck_assert_int_eq(pager_get_page(f.pager, 0, p), 0);
		ck_assert_int_eq(pager_get_page(f.pager, 1, p), 0);
	}
	ck_assert_int_eq(pager_reclaim(f.pager, 1000), 128 - 16);
	assert_only_pinned_present(&f);
	/* Unpinned, they are victims like any other. */
	pager_unpin(f.pager, 0, 8, 16);
	ck_assert_int_eq(pager_reclaim(f.pager, 1000), 16);
	ck_assert_uint_eq(present(&f), 0);
	rfix_fini(&f);
}
END_TEST

/* ---- write errors ------------------------------------------------------- */

struct error_log {
	atomic_uint calls;
	atomic_int last;
};

static void log_write_error(void *priv, int err)
{
	struct error_log *log = priv;

	atomic_fetch_add(&log->calls, 1);
	atomic_store(&log->last, err);
}

static bool four_backoffs(struct rfix *f)
{
	return rstats(f).backoffs >= 4;
}

START_TEST(test_full_swap_reports_once_backs_off_and_keeps_pages)
{
	const struct pager_budget budget = { .limit_pages = 32, .batch_pages = 16 };
	const struct pager_ops ops = { .write_error = log_write_error };
	struct error_log log = { 0 };
	struct pager_reclaim_stats st;
	struct pager_swap_stats ss;
	struct timespec t0;
	uint64_t waited;
	struct rfix f;

	/* 16 slots: the first batch fits, nothing after it. */
	rfix_init(&f, 16, 64, 64, &ops, &log);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ck_assert_int_eq(pager_budget_start(f.pager, &budget), 0);
	if (!wait_for(&f, four_backoffs)) {
		st = rstats(&f);
		ck_abort_msg("the reclaimer never backed off 4 times: passes %llu reclaimed %llu scanned %llu backoffs %llu calls %u present %llu",
			(unsigned long long)st.passes, (unsigned long long)st.reclaimed, (unsigned long long)st.scanned, (unsigned long long)st.backoffs, atomic_load(&log.calls), (unsigned long long)present(&f));
	}
	waited = ms_since(&t0);
	pager_budget_stop(f.pager);
	st = rstats(&f);
	pager_swap_stats(f.swap, &ss);
	/* Waits of 100, 200 and 400 ms come before the 4th backoff: a
	 * reclaimer that retried at once would be there in microseconds. */
	ck_assert_msg(waited >= 700, "4 backoffs after %llu ms: expected >= 700",
		      (unsigned long long)waited);
	ck_assert_uint_eq(atomic_load(&log.calls), 1);
	ck_assert_int_eq(atomic_load(&log.last), -ENOSPC);
	ck_assert_uint_eq(st.reclaimed, 16);
	ck_assert_uint_eq(st.passes, 1);
	ck_assert_uint_le(st.backoffs, 5);
	ck_assert_uint_le(ss.full_refusals, (st.backoffs + 1) * 16);
	ck_assert_uint_eq(present(&f), 128 - 16);
	rfix_fini(&f);
}
END_TEST

START_TEST(test_budget_contract)
{
	struct pager_budget b = { .limit_pages = 0 };
	struct pager_reclaim_stats st;
	struct rfix f;

	rfix_init(&f, 16, 16, 0, NULL, NULL);
	pager_reclaim_stats(f.pager, &st);
	ck_assert_uint_eq(st.reclaimed + st.direct + st.passes, 0);
	ck_assert_int_eq(pager_budget_start(f.pager, &b), -EINVAL);
	b = (struct pager_budget){ .limit_pages = 10, .high_pages = 11 };
	ck_assert_int_eq(pager_budget_start(f.pager, &b), -EINVAL);
	b = (struct pager_budget){ .limit_pages = 10, .high_pages = 5, .low_pages = 5 };
	ck_assert_int_eq(pager_budget_start(f.pager, &b), -EINVAL);
	b = (struct pager_budget){ .limit_pages = 10, .batch_pages = PAGER_EVICT_BATCH + 1 };
	ck_assert_int_eq(pager_budget_start(f.pager, &b), -EINVAL);
	b = (struct pager_budget){ .limit_pages = 10, .policy = (enum pager_policy)7 };
	ck_assert_int_eq(pager_budget_start(f.pager, &b), -EINVAL);
	/* Stop without start, start after stop. */
	pager_budget_stop(f.pager);
	b = (struct pager_budget){ .limit_pages = 1000 };
	ck_assert_int_eq(pager_budget_start(f.pager, &b), 0);
	pager_budget_stop(f.pager);
	ck_assert_int_eq(pager_budget_start(f.pager, &b), 0);
	/* pager_destroy stops it. */
	rfix_fini(&f);
}
END_TEST

Suite *pager_reclaim_suite(void)
{
	Suite *s = suite_create("pager_reclaim");
	TCase *batch = tcase_create("batch");
	TCase *budget = tcase_create("budget");

	tcase_add_test(batch, test_evict_list_over_two_objects_is_one_swap_submission);
	tcase_add_test(batch, test_pinned_pages_are_never_victims);
	tcase_add_test(batch, test_budget_contract);
	tcase_set_timeout(budget, TEST_TORTURE_LIMIT_S + 60);
	tcase_add_test(budget, test_direct_reclaim_keeps_get_page_fills_at_the_limit);
	tcase_add_loop_test(budget, test_reclaimer_keeps_present_within_limit_and_content_intact,
			    PAGER_POLICY_CLOCK, PAGER_POLICY_ROUND_ROBIN + 1);
	tcase_add_loop_test(budget, test_concurrent_touchers_with_direct_and_background_reclaim,
			    PAGER_POLICY_CLOCK, PAGER_POLICY_ROUND_ROBIN + 1);
	tcase_add_test(budget, test_clock_keeps_hot_set_that_round_robin_evicts);
	tcase_add_test(budget, test_full_swap_reports_once_backs_off_and_keeps_pages);
	suite_add_tcase(s, batch);
	suite_add_tcase(s, budget);
	return s;
}
