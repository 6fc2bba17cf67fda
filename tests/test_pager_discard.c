/*
 * pager/: pager_discard, pages nobody needs made holes (docs/pager.md,
 * "Discarding pages").  From each state a page can be in, the discard
 * frees what the page held (host memory measured from the memfd's blocks
 * and data, swap slots from the swap's counters), the counters follow, and
 * a later access reads zeros; a range over several runs and states; a punch
 * the kernel refuses leaves every page as it was; reclaim never picks a
 * discarded page; and discards racing evictions, the reclaimer and
 * swap-ins of the same pages end with consistent counts.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "umbra/notifier.h"
#include "umbra/pager.h"
#include "test_pager_util.h"
#include "test_util.h"
#include "tests.h"

/* Is page @p a hole in the memfd (no data at its offset)? */
static bool memfd_page_is_hole(int fd, uint64_t p)
{
	return lseek(fd, (off_t)(p * PG), SEEK_DATA) != (off_t)(p * PG);
}

/* Pages of [@first, @end) that hold data in the memfd, by SEEK_DATA and
 * SEEK_HOLE. */
static uint64_t memfd_data_pages(int fd, uint64_t first, uint64_t end)
{
	off_t off = (off_t)(first * PG), size = (off_t)(end * PG), data, hole;
	uint64_t n = 0;

	while (off < size) {
		data = lseek(fd, off, SEEK_DATA);
		if (data < 0 || data >= size)
			break;
		hole = lseek(fd, data, SEEK_HOLE);
		ck_assert_int_ge(hole, 0);
		if (hole > size)
			hole = size;
		n += (uint64_t)(hole - data) / PG;
		off = hole;
	}
	return n;
}

static uint64_t slots_in_use(struct pfix *f)
{
	struct pager_swap_stats ss;

	pager_swap_stats(f->swap, &ss);
	return ss.slots_in_use;
}

/* Present pages agree: the object's and the pager's counters, st_blocks,
 * and the memfd's data. */
static void assert_present(struct pfix *f, uint64_t want, const char *when)
{
	struct pager_stats all;
	uint64_t obj = pstats(f).present, blocks = memfd_pages(f),
		 data = memfd_data_pages(f->memfd, 0, f->npages);

	ck_assert_int_eq(pager_stats(f->pager, -1, &all), 0);
	ck_assert_msg(obj == want && all.present == want && blocks == want && data == want,
		      "%s: expected %llu present pages, got %llu (object), %llu (pager), %llu "
		      "(st_blocks), %llu (SEEK_DATA)", when, (unsigned long long)want,
		      (unsigned long long)obj, (unsigned long long)all.present,
		      (unsigned long long)blocks, (unsigned long long)data);
}

/* Page @p reads as zeros (through the mapping, or after get_page). */
static long first_nonzero_word(struct pfix *f, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(f->host + p * PG);

	for (long i = 0; i < (long)(PG / 8); i++) {
		if (__atomic_load_n(&w[i], __ATOMIC_RELAXED))
			return i;
	}
	return -1;
}

/* ---- one page, from each state -------------------------------------- */

enum before {
	BEFORE_RESIDENT,
	BEFORE_CLEAN,
	BEFORE_SWAPPED,
	BEFORE_HOLE,
	BEFORE_LOST,
	BEFORE_PINNED,
	BEFORE_NR,
};

/* What a page in each state holds before the discard. */
static const struct {
	const char *name;
	bool present;		/* in host memory (and counted present) */
	bool slot;		/* holds a swap slot */
	bool counted;		/* counts in discarded_pages */
} before_cases[BEFORE_NR] = {
	[BEFORE_RESIDENT] = { "resident", true, false, true },
	[BEFORE_CLEAN] = { "clean", true, true, true },
	[BEFORE_SWAPPED] = { "swapped", false, true, true },
	[BEFORE_HOLE] = { "hole", false, false, false },
	[BEFORE_LOST] = { "lost", true, false, true },
	[BEFORE_PINNED] = { "pinned", true, false, true },
};

#define DPAGE 10u	/* the page discarded */

/* Puts page @p of a fixture whose pages are all written (but DPAGE when
 * @b is BEFORE_HOLE) in state @b. */
static void page_set_state(struct pfix *f, uint64_t p, enum before b)
{
	switch (b) {
	case BEFORE_CLEAN:
		ck_assert_int_eq(pager_evict(f->pager, f->id, p, 1), 0);
		ck_assert_int_eq(pager_get_page(f->pager, f->id, p), 0);
		break;
	case BEFORE_SWAPPED:
		ck_assert_int_eq(pager_evict(f->pager, f->id, p, 1), 0);
		ck_assert(pager_is_swapped(f->pager, f->id, p));
		break;
	case BEFORE_LOST:
		ck_assert_int_eq(pager_evict(f->pager, f->id, p, 1), 0);
		ck_assert_int_eq(pager_swap_inject(f->swap, PAGER_INJECT_READ_ERROR, 1, -EIO), 0);
		ck_assert_int_eq(pager_get_page(f->pager, f->id, p), -EIO);
		ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f->host + p * PG), __ATOMIC_RELAXED),
				  PAGER_POISON_WORD);
		break;
	case BEFORE_PINNED:
		ck_assert_int_eq(pager_pin(f->pager, f->id, p, 1), 0);
		ck_assert_int_eq(pager_pin(f->pager, f->id, p, 1), 0);
		break;
	default:	/* RESIDENT: written by the fixture; HOLE: never written */
		break;
	}
}

/* _i: the state before (BEFORE_*) times 2, plus 1 if the page is read back
 * through the mapping rather than by get_page. */
START_TEST(test_discard_frees_what_each_page_state_held_and_reads_zero_after)
{
	enum before b = (enum before)(_i / 2);
	bool via_mapping = _i & 1;
	struct pfix_opts o = { .holes = b == BEFORE_HOLE ? 1ull << DPAGE : 0 };
	uint64_t present, slots, zero_fills;
	struct pager_stats st;
	struct pfix f;
	long bad;

	pfix_init_opts(&f, &o, 256, NPAGES);
	page_set_state(&f, DPAGE, b);
	present = pstats(&f).present;
	slots = slots_in_use(&f);
	ck_assert_uint_eq(present, NPAGES - !before_cases[b].present);
	ck_assert_uint_eq(slots, before_cases[b].slot);
	assert_present(&f, present, "before the discard");

	ck_assert_int_eq(pager_discard(f.pager, f.id, DPAGE, 1), 0);
	st = pstats(&f);
	assert_present(&f, present - before_cases[b].present, "after the discard");
	ck_assert_msg(memfd_page_is_hole(f.memfd, DPAGE), "%s: the page is still in the memfd",
		      before_cases[b].name);
	ck_assert_uint_eq(slots_in_use(&f), 0);
	ck_assert_uint_eq(st.discarded_pages, before_cases[b].counted);
	ck_assert_uint_eq(st.swapped, 0);
	ck_assert_uint_eq(st.lost, 0);
	ck_assert_uint_eq(st.pinned, 0);
	ck_assert_uint_eq(st.resident, NPAGES);
	ck_assert(!pager_is_swapped(f.pager, f.id, DPAGE));
	ck_assert_msg(check_page(f.host, DPAGE - 1) < 0 && check_page(f.host, DPAGE + 1) < 0,
		      "%s: a neighbour of the discarded page changed", before_cases[b].name);
	/* The pins went with the page: an unpin now finds none. */
	pager_unpin(f.pager, f.id, DPAGE, 1);
	ck_assert_uint_eq(pstats(&f).pinned, 0);

	/* A later access zero-fills it as any hole. */
	zero_fills = st.zero_fills;
	if (!via_mapping)
		ck_assert_int_eq(pager_get_page(f.pager, f.id, DPAGE), 0);
	bad = first_nonzero_word(&f, DPAGE);
	ck_assert_msg(bad < 0, "%s: word %ld of the discarded page is not zero", before_cases[b].name,
		      bad);
	ck_assert_uint_eq(pstats(&f).zero_fills, zero_fills + 1);
	assert_present(&f, present - before_cases[b].present + 1, "after the zero fill");
	/* An ordinary page again: evicted (no pin left), read back as zeros. */
	ck_assert_int_eq(pager_evict(f.pager, f.id, DPAGE, 1), 0);
	ck_assert(pager_is_swapped(f.pager, f.id, DPAGE));
	ck_assert_msg(first_nonzero_word(&f, DPAGE) < 0, "%s: swapped back in not zero",
		      before_cases[b].name);
	pfix_fini(&f);
}
END_TEST

/* ---- a range over several runs and every state ----------------------- */

#define MIXED_NPAGES 640u
#define MIXED_FIRST 5u
#define MIXED_END 630u

/* The state a page of the mixed object is put in. */
static enum before mixed_state(uint64_t p)
{
	enum before b = (enum before)(p % BEFORE_NR);

	/* The fixture leaves holes only among the first 64 pages. */
	return b == BEFORE_HOLE && p >= 64 ? BEFORE_RESIDENT : b;
}

static uint64_t mixed_holes(void)
{
	uint64_t holes = 0;

	for (uint64_t p = 0; p < 64; p++)
		holes |= (uint64_t)(mixed_state(p) == BEFORE_HOLE) << p;
	return holes;
}

START_TEST(test_discard_of_a_range_over_runs_and_states_frees_exactly_it)
{
	struct pfix_opts o = { .holes = mixed_holes() };
	uint64_t present_out = 0, slots_out = 0, lost_out = 0, pinned_out = 0, counted = 0;
	struct pager_stats st;
	struct pfix f;

	pfix_init_opts(&f, &o, 1024, MIXED_NPAGES);
	for (uint64_t p = 0; p < MIXED_NPAGES; p++) {
		enum before b = mixed_state(p);
		bool in = p >= MIXED_FIRST && p < MIXED_END;

		page_set_state(&f, p, b);
		if (in) {
			counted += before_cases[b].counted;
			continue;
		}
		present_out += before_cases[b].present;
		slots_out += before_cases[b].slot;
		lost_out += b == BEFORE_LOST;
		pinned_out += b == BEFORE_PINNED;
	}
	ck_assert_int_eq(pager_discard(f.pager, f.id, MIXED_FIRST, MIXED_END - MIXED_FIRST), 0);
	st = pstats(&f);
	assert_present(&f, present_out, "after discarding the range");
	ck_assert_uint_eq(memfd_data_pages(f.memfd, MIXED_FIRST, MIXED_END), 0);
	ck_assert_uint_eq(slots_in_use(&f), slots_out);
	ck_assert_uint_eq(st.discarded_pages, counted);
	ck_assert_uint_eq(st.lost, lost_out);
	ck_assert_uint_eq(st.pinned, pinned_out);
	for (uint64_t p = MIXED_FIRST; p < MIXED_END; p++)
		ck_assert(!pager_is_swapped(f.pager, f.id, p));
	/* Outside the range every page is as it was. */
	for (uint64_t p = 0; p < MIXED_NPAGES; p++) {
		enum before b = mixed_state(p);

		if ((p >= MIXED_FIRST && p < MIXED_END) || b == BEFORE_HOLE || b == BEFORE_LOST)
			continue;
		ck_assert_msg(check_page(f.host, p) < 0, "page %llu outside the range changed",
			      (unsigned long long)p);
	}
	for (uint64_t p = MIXED_FIRST; p < MIXED_END; p++)
		ck_assert_msg(first_nonzero_word(&f, p) < 0, "discarded page %llu is not zero",
			      (unsigned long long)p);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_discard_refuses_bad_ids_and_ranges)
{
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(pager_discard(f.pager, f.id + 1, 0, 1), -EINVAL);
	ck_assert_int_eq(pager_discard(f.pager, -1, 0, 1), -EINVAL);
	ck_assert_int_eq(pager_discard(f.pager, f.id, 0, 0), -EINVAL);
	ck_assert_int_eq(pager_discard(f.pager, f.id, NPAGES, 1), -EINVAL);
	ck_assert_int_eq(pager_discard(f.pager, f.id, NPAGES - 1, 2), -EINVAL);
	ck_assert_int_eq(pager_discard(f.pager, f.id, 1, UINT64_MAX), -EINVAL);
	assert_present(&f, NPAGES, "after refused discards");
	ck_assert_uint_eq(pstats(&f).discarded_pages, 0);
	ck_assert_int_eq(pager_discard(f.pager, f.id, NPAGES - 1, 1), 0);
	assert_present(&f, NPAGES - 1, "after discarding the last page");
	pfix_fini(&f);
}
END_TEST

/* A memfd sealed against writes (F_SEAL_FUTURE_WRITE) refuses the punch:
 * every page stays as it was. */
START_TEST(test_refused_punch_leaves_every_page_as_it_was)
{
	struct pfix_opts o = { .sealable = true };
	uint64_t slots, writes;
	struct pfix f;

	pfix_init_opts(&f, &o, 256, NPAGES);
	page_set_state(&f, DPAGE + 1, BEFORE_SWAPPED);
	page_set_state(&f, DPAGE + 2, BEFORE_CLEAN);
	page_set_state(&f, DPAGE + 3, BEFORE_PINNED);
	slots = slots_in_use(&f);
	ck_assert_int_eq(fcntl(f.memfd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE), 0);
	ck_assert_int_eq(pager_discard(f.pager, f.id, DPAGE, 4), -EPERM);
	assert_present(&f, NPAGES - 1, "after a refused discard");
	ck_assert_uint_eq(slots_in_use(&f), slots);
	ck_assert_uint_eq(pstats(&f).discarded_pages, 0);
	ck_assert_uint_eq(pstats(&f).pinned, 1);
	ck_assert(pager_is_swapped(f.pager, f.id, DPAGE + 1));
	/* The clean page is still clean: an eviction writes nothing (and its
	 * punch is refused too). */
	writes = swap_writes(&f);
	ck_assert_int_eq(pager_evict(f.pager, f.id, DPAGE + 2, 1), -EPERM);
	ck_assert_uint_eq(swap_writes(&f), writes);
	for (uint64_t p = DPAGE; p < DPAGE + 4; p++)
		ck_assert_msg(check_page(f.host, p) < 0, "page %llu changed", (unsigned long long)p);
	pager_unpin(f.pager, f.id, DPAGE + 3, 1);
	pager_unpin(f.pager, f.id, DPAGE + 3, 1);
	ck_assert_uint_eq(pstats(&f).pinned, 0);
	pfix_fini(&f);
}
END_TEST

/* _i: the policy.  Reclaim and pager_evict never pick a discarded page. */
START_TEST(test_reclaim_never_picks_a_discarded_page)
{
	/* Watermarks above everything: the reclaimer thread stays idle, and
	 * pager_reclaim uses the policy. */
	struct pager_budget budget = { .limit_pages = 4 * NPAGES, .high_pages = 3 * NPAGES,
				       .low_pages = 2 * NPAGES, .policy = (enum pager_policy)_i };
	uint64_t writes;
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(pager_budget_start(f.pager, &budget), 0);
	ck_assert_int_eq(pager_discard(f.pager, f.id, 0, NPAGES / 2), 0);
	writes = swap_writes(&f);
	ck_assert_int_eq(pager_reclaim(f.pager, NPAGES), NPAGES / 2);
	ck_assert_uint_eq(swap_writes(&f), writes + NPAGES / 2);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 0, NPAGES), 0);
	ck_assert_uint_eq(swap_writes(&f), writes + NPAGES / 2);
	ck_assert_uint_eq(pstats(&f).swapped, NPAGES / 2);
	for (uint64_t p = 0; p < NPAGES; p++)
		ck_assert_msg(pager_is_swapped(f.pager, f.id, p) == (p >= NPAGES / 2),
			      "page %llu: expected %s", (unsigned long long)p,
			      p >= NPAGES / 2 ? "evicted" : "a hole");
	assert_present(&f, 0, "after reclaiming everything");
	pfix_fini(&f);
}
END_TEST

/* ---- discards racing evictions, the reclaimer and swap-ins ------------ */

#define RACE_NPAGES 128u
#define RACE_OPS (TEST_TSAN ? 400u : 2000u)

enum racer_kind {
	RACER_DISCARD,
	RACER_EVICT,
	RACER_GET_PAGE,
	RACER_READ,	/* through the mapping: the handler's swap-ins, zero fills */
	RACER_DIRTY,	/* an atomic add of 0: a write fault that changes nothing */
	/* once the last read error it armed fired, arms another (one of the
	 * next swap-ins loses its page); else a get_page */
	RACER_LOSE,
};

/* The racers; the last one only when pages are lost too. */
static const enum racer_kind racer_kinds[] = {
	RACER_DISCARD, RACER_DISCARD, RACER_EVICT, RACER_GET_PAGE, RACER_READ, RACER_DIRTY,
	RACER_LOSE,
};
#define NR_RACERS (sizeof(racer_kinds) / sizeof(racer_kinds[0]))

struct racer {
	struct pfix *f;
	enum racer_kind kind;
	bool losses;		/* pages may be lost (read poison, get_page -EIO) */
	uint64_t read_errors;	/* RACER_LOSE: the swap's count when it last armed */
	uint64_t seed;
	struct test_failures *fail;
	struct test_gate *gate;
	double start;
};

static uint64_t racer_next(struct racer *r, uint64_t bound)
{
	r->seed = r->seed * 6364136223846793005ull + 1442695040888963407ull;
	return (r->seed >> 33) % bound;
}

/* Every word of page @p is its pattern or zero (a discard may land in the
 * middle of the read), or the poison if pages may be lost. */
static void racer_check_words(struct racer *r, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(r->f->host + p * PG);

	for (uint64_t i = 0; i < PG / 8; i += 61) {
		uint64_t v = __atomic_load_n(&w[i], __ATOMIC_RELAXED);

		if (v && v != pattern(p, i) && !(r->losses && v == PAGER_POISON_WORD)) {
			test_fail(r->fail, "page %llu word %llu: %#llx is not its pattern, zero or poison",
				  (unsigned long long)p, (unsigned long long)i, (unsigned long long)v);
			return;
		}
	}
}

static void racer_step(struct racer *r)
{
	struct pfix *f = r->f;
	uint64_t p = racer_next(r, RACE_NPAGES), n = 1 + racer_next(r, 16);
	struct pager_swap_stats ss;
	int ret = 0;

	if (n > RACE_NPAGES - p)
		n = RACE_NPAGES - p;
	switch (r->kind) {
	case RACER_DISCARD:
		ret = pager_discard(f->pager, f->id, p, n);
		break;
	case RACER_EVICT:
		ret = pager_evict(f->pager, f->id, p, n);
		break;
	case RACER_LOSE:
		pager_swap_stats(f->swap, &ss);
		if (ss.read_errors != r->read_errors) {
			r->read_errors = ss.read_errors;
			ret = pager_swap_inject(f->swap, PAGER_INJECT_READ_ERROR, n, -EIO);
			break;
		}
		/* fall through */
	case RACER_GET_PAGE:
		ret = pager_get_page(f->pager, f->id, p);
		if (ret == -EIO && r->losses)
			ret = 0;
		racer_check_words(r, p);
		break;
	case RACER_READ:
		racer_check_words(r, p);
		break;
	case RACER_DIRTY:
		(void)__atomic_fetch_add((volatile uint64_t *)(f->host + p * PG + 8 * n), 0,
					 __ATOMIC_RELAXED);
		break;
	}
	if (ret)
		test_fail(r->fail, "racer %d on page %llu (+%llu): %d", (int)r->kind,
			  (unsigned long long)p, (unsigned long long)n, ret);
}

static void *racer_body(void *arg)
{
	struct racer *r = arg;

	notifier_thread_init();
	test_gate_pass(r->gate);
	for (unsigned long i = 0; test_torture_keep_going(r->fail, r->start, "racer", i, RACE_OPS); i++)
		racer_step(r);
	notifier_thread_exit();
	return NULL;
}

/* Page @p is whole: its pattern, zeros, or (a lost page) the poison. */
static bool page_is_whole(struct pfix *f, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(f->host + p * PG);
	uint64_t first = __atomic_load_n(&w[0], __ATOMIC_RELAXED);

	if (first == PAGER_POISON_WORD) {
		for (uint64_t i = 1; i < PG / 8; i++) {
			if (__atomic_load_n(&w[i], __ATOMIC_RELAXED) != PAGER_POISON_WORD)
				return false;
		}
		return true;
	}
	return check_page(f->host, p) < 0 || first_nonzero_word(f, p) < 0;
}

/* _i: 1 if some swap-ins fail as well, losing their pages. */
START_TEST(test_discards_racing_evictions_and_swap_ins_keep_counts_consistent)
{
	const struct pager_budget budget = { .limit_pages = RACE_NPAGES / 2, .batch_pages = 16 };
	unsigned int nr = NR_RACERS - !_i;
	struct racer r[NR_RACERS];
	pthread_t th[NR_RACERS];
	struct test_failures fail;
	struct test_gate gate;
	struct pager_stats st;
	uint64_t present;
	struct pfix f;

	pfix_init(&f, 1024, RACE_NPAGES);
	test_failures_init(&fail);
	test_gate_init(&gate, nr);
	ck_assert_int_eq(pager_budget_start(f.pager, &budget), 0);
	for (unsigned int i = 0; i < nr; i++) {
		r[i] = (struct racer){ .f = &f, .kind = racer_kinds[i], .losses = _i,
				       .read_errors = UINT64_MAX, .seed = 1000 + i,
				       .fail = &fail, .gate = &gate, .start = test_now_s() };
		ck_assert_int_eq(pthread_create(&th[i], NULL, racer_body, &r[i]), 0);
	}
	for (unsigned int i = 0; i < nr; i++)
		pthread_join(th[i], NULL);
	test_gate_exit(&gate);
	test_failures_assert_none(&fail);
	test_failures_exit(&fail);
	pager_budget_stop(f.pager);
	ck_assert_int_eq(pager_swap_inject(f.swap, PAGER_INJECT_READ_ERROR, 0, 0), 0);

	/* Quiet: the counters agree with the memfd, the slots with the
	 * swapped pages once everything is evicted. */
	st = pstats(&f);
	ck_assert_uint_gt(st.discarded_pages, 0);
	present = st.present;
	assert_present(&f, present, "after the race");
	ck_assert_uint_ge(slots_in_use(&f), st.swapped);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 0, RACE_NPAGES), 0);
	assert_present(&f, st.lost, "after evicting everything but the lost pages");
	ck_assert_uint_eq(slots_in_use(&f), pstats(&f).swapped);
	if (_i)
		ck_assert_uint_gt(pstats(&f).read_errors, 0);
	else
		ck_assert_uint_eq(st.lost, 0);
	for (uint64_t p = 0; p < RACE_NPAGES; p++)
		ck_assert_msg(page_is_whole(&f, p), "page %llu is not its pattern, zeros or poison",
			      (unsigned long long)p);
	ck_assert_int_eq(pager_discard(f.pager, f.id, 0, RACE_NPAGES), 0);
	assert_present(&f, 0, "after discarding everything");
	ck_assert_uint_eq(slots_in_use(&f), 0);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapped, 0);
	ck_assert_uint_eq(st.lost, 0);
	ck_assert_uint_eq(st.resident, RACE_NPAGES);
	pfix_fini(&f);
}
END_TEST

Suite *pager_discard_suite(void)
{
	Suite *s = suite_create("pager_discard");
	TCase *states = tcase_create("states");
	TCase *races = tcase_create("races");

	tcase_add_loop_test(states, test_discard_frees_what_each_page_state_held_and_reads_zero_after,
			    0, 2 * BEFORE_NR);
	tcase_add_test(states, test_discard_of_a_range_over_runs_and_states_frees_exactly_it);
	tcase_add_test(states, test_discard_refuses_bad_ids_and_ranges);
	tcase_add_test(states, test_refused_punch_leaves_every_page_as_it_was);
	tcase_add_loop_test(states, test_reclaim_never_picks_a_discarded_page, 0, 2);
	tcase_set_timeout(races, TEST_TORTURE_LIMIT_S + 30);
	tcase_add_loop_test(races, test_discards_racing_evictions_and_swap_ins_keep_counts_consistent,
			    0, 2);
	suite_add_tcase(s, states);
	suite_add_tcase(s, races);
	return s;
}
