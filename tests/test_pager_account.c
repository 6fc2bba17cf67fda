/*
 * pager/: what the pager counts and guarantees beyond eviction: present
 * pages against the memfd's blocks, pins, lost pages (a slot that cannot be
 * read: the faulting thread is told and released onto a poison page),
 * refaults and the swap-in latency.  docs/pager.md is the design.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "umbra/pager.h"
#include "test_pager_util.h"
#include "tests.h"

/* stats.present (per object and pager-wide) and the memfd's blocks. */
static void assert_present(struct pfix *f, uint64_t want, const char *when)
{
	struct pager_stats all;

	ck_assert_int_eq(pager_stats(f->pager, -1, &all), 0);
	ck_assert_msg(pstats(f).present == want && all.present == want && memfd_pages(f) == want,
		      "%s: expected %llu present pages, got %llu (object), %llu (pager), %llu in the memfd",
		      when, (unsigned long long)want, (unsigned long long)pstats(f).present,
		      (unsigned long long)all.present, (unsigned long long)memfd_pages(f));
}

/* Pages 0-9 and 20-29 written, the rest never: 20 present at add. */
#define SPARSE_HOLES (~0ull & ~0x3ffull & ~(0x3ffull << 20))

START_TEST(test_present_pages_follow_add_zero_fill_swap_in_and_eviction)
{
	struct pfix_opts o = { .holes = SPARSE_HOLES };
	struct pfix f;

	pfix_init_opts(&f, &o, 256, NPAGES);
	assert_present(&f, 20, "after add");
	ck_assert(!pager_is_swapped(f.pager, f.id, 40));
	/* First touches: through the mapping (the handler's zero fill) and
	 * through get_page (a shadow fault's). */
	ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f.host + 40 * PG + 8), __ATOMIC_RELAXED), 0);
	assert_present(&f, 21, "after a zero fill through the mapping");
	ck_assert_int_eq(pager_get_page(f.pager, f.id, 41), 0);
	assert_present(&f, 22, "after a zero fill by get_page");
	ck_assert_uint_eq(pstats(&f).zero_fills, 2);
	ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f.host + 41 * PG + 16), __ATOMIC_RELAXED), 0);
	ck_assert_uint_eq(pstats(&f).zero_fills, 2);
	/* Evicting everything evicts what is present; holes stay holes. */
	ck_assert_int_eq(pager_evict(f.pager, f.id, 0, 10), 0);
	assert_present(&f, 12, "after evicting 10 pages");
	ck_assert_int_eq(pager_evict(f.pager, f.id, 0, NPAGES), 0);
	assert_present(&f, 0, "after evicting all");
	ck_assert_uint_eq(pstats(&f).swapped, 22);
	ck_assert_uint_eq(pstats(&f).swapouts_io, 22);
	ck_assert_msg(check_page(f.host, 5) < 0, "page 5 came back wrong");
	assert_present(&f, 1, "after a swap-in");
	ck_assert_int_eq(pager_get_page(f.pager, f.id, 25), 0);
	assert_present(&f, 2, "after a swap-in by get_page");
	ck_assert_uint_eq(pstats(&f).swapins, 2);
	ck_assert_uint_eq(pstats(&f).zero_fills, 2);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_pinned_page_is_skipped_by_evict_until_unpinned)
{
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(pager_pin(f.pager, f.id, NPAGES - 1, 2), -EINVAL);
	ck_assert_int_eq(pager_pin(f.pager, f.id + 1, 0, 1), -EINVAL);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 10, 1), 0);
	/* Pinning brings page 10 back; 10-12 stay while pinned. */
	ck_assert_int_eq(pager_pin(f.pager, f.id, 10, 3), 0);
	ck_assert(!pager_is_swapped(f.pager, f.id, 10));
	ck_assert_uint_eq(pstats(&f).pinned, 3);
	ck_assert_int_eq(pager_pin(f.pager, f.id, 11, 1), 0);
	ck_assert_uint_eq(pstats(&f).pinned, 3);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 8, 8), 0);
	for (uint64_t p = 8; p < 16; p++)
		ck_assert_msg(pager_is_swapped(f.pager, f.id, p) == (p < 10 || p > 12),
			      "page %llu: expected %s", (unsigned long long)p,
			      p < 10 || p > 12 ? "evicted" : "pinned and resident");
	ck_assert_uint_eq(memfd_pages(&f), NPAGES - 5);
	/* One unpin of 10-12: page 11 keeps its second pin. */
	pager_unpin(f.pager, f.id, 10, 3);
	ck_assert_uint_eq(pstats(&f).pinned, 1);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 8, 8), 0);
	ck_assert(pager_is_swapped(f.pager, f.id, 10));
	ck_assert(!pager_is_swapped(f.pager, f.id, 11));
	ck_assert(pager_is_swapped(f.pager, f.id, 12));
	pager_unpin(f.pager, f.id, 11, 1);
	ck_assert_uint_eq(pstats(&f).pinned, 0);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 11, 1), 0);
	ck_assert(pager_is_swapped(f.pager, f.id, 11));
	ck_assert_uint_eq(pstats(&f).pinned, 0);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_pin_count_overflow_is_refused_without_taking_pins)
{
	unsigned int pins = 0;
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	while (pins < UINT16_MAX && pager_pin(f.pager, f.id, 3, 1) == 0)
		pins++;
	ck_assert_uint_eq(pins, UINT16_MAX);
	ck_assert_int_eq(pager_pin(f.pager, f.id, 2, 2), -EOVERFLOW);
	ck_assert_uint_eq(pstats(&f).pinned, 1);
	for (unsigned int i = 0; i < UINT16_MAX - 1; i++)
		pager_unpin(f.pager, f.id, 3, 1);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 2, 2), 0);
	ck_assert(pager_is_swapped(f.pager, f.id, 2));
	ck_assert(!pager_is_swapped(f.pager, f.id, 3));
	pager_unpin(f.pager, f.id, 3, 1);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 3, 1), 0);
	ck_assert(pager_is_swapped(f.pager, f.id, 3));
	pfix_fini(&f);
}
END_TEST

/* What ops.page_lost was told. */
struct lost_log {
	pthread_mutex_t lock;
	int calls;
	int id, err;
	uint64_t page;
	pid_t tid;
};

static void lost_record(void *priv, int id, uint64_t page, int err, pid_t tid)
{
	struct lost_log *l = priv;

	pthread_mutex_lock(&l->lock);
	l->calls++;
	l->id = id;
	l->page = page;
	l->err = err;
	l->tid = tid;
	pthread_mutex_unlock(&l->lock);
}

static const struct pager_ops lost_ops = { .page_lost = lost_record };

static struct lost_log lost_get(struct lost_log *l)
{
	struct lost_log copy;

	pthread_mutex_lock(&l->lock);
	copy = *l;
	pthread_mutex_unlock(&l->lock);
	return copy;
}

static void assert_lost_call(struct lost_log *l, int calls, int id, uint64_t page, int err, pid_t tid)
{
	struct lost_log c = lost_get(l);

	ck_assert_msg(c.calls == calls && c.id == id && c.page == page && c.err == err && c.tid == tid,
		      "expected page_lost call %d (id %d, page %llu, err %d, tid %d), got call %d (id %d, "
		      "page %llu, err %d, tid %d)", calls, id, (unsigned long long)page, err, (int)tid,
		      c.calls, c.id, (unsigned long long)c.page, c.err, (int)c.tid);
}

/* A plain thread reading a whole page through the mapping. */
struct poison_reader {
	const uint64_t *words;
	pid_t tid;
	long not_poison;	/* -1, or the first word that is not the poison */
};

static void *poison_reader_body(void *arg)
{
	struct poison_reader *r = arg;

	r->tid = gettid();
	r->not_poison = -1;
	for (long i = 0; i < (long)(PG / 8); i++) {
		if (__atomic_load_n(&r->words[i], __ATOMIC_RELAXED) != PAGER_POISON_WORD) {
			r->not_poison = i;
			break;
		}
	}
	return NULL;
}

/* Reads page @p in a new thread, which must be released: returns its tid. */
static pid_t read_lost_page_in_thread(struct pfix *f, uint64_t p)
{
	struct poison_reader r = { .words = (const uint64_t *)(f->host + p * PG) };
	struct timespec limit;
	pthread_t t;
	int ret;

	ck_assert_int_eq(pthread_create(&t, NULL, poison_reader_body, &r), 0);
	clock_gettime(CLOCK_REALTIME, &limit);
	limit.tv_sec += 30;
	ret = pthread_timedjoin_np(t, NULL, &limit);
	ck_assert_msg(ret == 0, "the thread reading the lost page was never released (%d)", ret);
	ck_assert_msg(r.not_poison < 0, "word %ld of the lost page is not the poison", r.not_poison);
	return r.tid;
}

/* _i: bit 0: an injected read error (-EIO) or a corrupt slot (-EBADMSG);
 * bit 1: read by a thread through the mapping, or by get_page. */
START_TEST(test_unreadable_slot_loses_page_and_releases_the_thread_with_poison)
{
	struct lost_log log = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct pfix_opts o = { .ops = &lost_ops, .priv = &log };
	bool corrupt = _i & 1, via_mapping = _i & 2;
	int err = corrupt ? -EBADMSG : -EIO;
	struct pager_stats st;
	struct pfix f;
	pid_t tid;

	pfix_init_opts(&f, &o, 256, NPAGES);
	if (corrupt)
		ck_assert_int_eq(pager_swap_inject(f.swap, PAGER_INJECT_CORRUPT, 1, 0), 0);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 7, 1), 0);
	if (!corrupt)
		ck_assert_int_eq(pager_swap_inject(f.swap, PAGER_INJECT_READ_ERROR, 1, -EIO), 0);
	ck_assert_int_eq(lost_get(&log).calls, 0);
	if (via_mapping) {
		tid = read_lost_page_in_thread(&f, 7);
	} else {
		ck_assert_int_eq(pager_get_page(f.pager, f.id, 7), err);
		tid = gettid();
		ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f.host + 7 * PG + 64), __ATOMIC_RELAXED),
				  PAGER_POISON_WORD);
	}
	assert_lost_call(&log, 1, f.id, 7, err, tid);
	st = pstats(&f);
	ck_assert_uint_eq(st.lost, 1);
	ck_assert_uint_eq(st.read_errors, 1);
	ck_assert_uint_eq(st.swapped, 0);
	ck_assert_uint_eq(st.swapins, 0);
	assert_present(&f, NPAGES, "with the poison page");
	/* Lost for good: every later access fails and is reported. */
	ck_assert_int_eq(pager_get_page(f.pager, f.id, 7), err);
	assert_lost_call(&log, 2, f.id, 7, err, gettid());
	ck_assert_int_eq(pager_pin(f.pager, f.id, 6, 2), err);
	assert_lost_call(&log, 3, f.id, 7, err, gettid());
	ck_assert_uint_eq(pstats(&f).pinned, 0);
	/* Never evicted: the poison page is all that stays. */
	ck_assert_int_eq(pager_evict(f.pager, f.id, 0, NPAGES), 0);
	assert_present(&f, 1, "after evicting everything");
	ck_assert(!pager_is_swapped(f.pager, f.id, 7));
	ck_assert_msg(check_page(f.host, 8) < 0, "page 8 came back wrong");
	ck_assert_int_eq(lost_get(&log).calls, 3);
	pfix_fini(&f);
}
END_TEST

/* Evicts page @p and reads it back at once: was it counted a refault? */
static bool evict_and_read_refaults(struct pfix *f, uint64_t p, uint64_t evict_between)
{
	uint64_t before = pstats(f).refaults;
	bool refault;

	ck_assert_int_eq(pager_evict(f->pager, f->id, p, 1), 0);
	if (evict_between)
		ck_assert_int_eq(pager_evict(f->pager, f->id, 32, evict_between), 0);
	ck_assert_msg(check_page(f->host, p) < 0, "page %llu came back wrong", (unsigned long long)p);
	refault = pstats(f).refaults == before + 1;
	for (uint64_t q = 32; q < 32 + evict_between; q++)
		ck_assert_int_eq(pager_get_page(f->pager, f->id, q), 0);
	return refault;
}

START_TEST(test_refault_counted_only_within_the_window)
{
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	ck_assert_msg(evict_and_read_refaults(&f, 3, 0), "a swap-in right after eviction is a refault");
	ck_assert_msg(evict_and_read_refaults(&f, 3, 16), "16 evictions between, window 65536");
	pager_set_refault_window(f.pager, 0);
	ck_assert_msg(!evict_and_read_refaults(&f, 3, 0), "window 0 counts no refault");
	pager_set_refault_window(f.pager, 4);
	ck_assert_msg(evict_and_read_refaults(&f, 3, 3), "3 evictions between, window 4");
	ck_assert_msg(!evict_and_read_refaults(&f, 3, 4), "4 evictions between, window 4");
	ck_assert_uint_eq(pstats(&f).swapins, 5 + 16 + 3 + 4);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_swap_in_latency_percentiles_are_ordered)
{
	struct pager_stats st, all;
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapin_ns_max, 0);
	ck_assert_uint_eq(st.swapin_ns_p99, 0);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 0, 32), 0);
	for (uint64_t p = 0; p < 16; p++)
		ck_assert_int_eq(pager_get_page(f.pager, f.id, p), 0);
	for (uint64_t p = 16; p < 32; p++)
		ck_assert_msg(check_page(f.host, p) < 0, "page %llu came back wrong", (unsigned long long)p);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapins, 32);
	ck_assert_msg(st.swapin_ns_p50 > 0 && st.swapin_ns_p50 <= st.swapin_ns_p99 &&
			      st.swapin_ns_p99 <= st.swapin_ns_max,
		      "expected 0 < p50 <= p99 <= max, got %llu, %llu, %llu",
		      (unsigned long long)st.swapin_ns_p50, (unsigned long long)st.swapin_ns_p99,
		      (unsigned long long)st.swapin_ns_max);
	ck_assert_int_eq(pager_stats(f.pager, -1, &all), 0);
	ck_assert_uint_eq(all.swapin_ns_p50, st.swapin_ns_p50);
	ck_assert_uint_eq(all.swapin_ns_p99, st.swapin_ns_p99);
	ck_assert_uint_eq(all.swapin_ns_max, st.swapin_ns_max);
	pfix_fini(&f);
}
END_TEST

/* More objects than the pager's old limit (64): every one is paged, and a
 * fault through each mapping finds its own object. */
#define MANY_OBJECTS 100

struct many {
	struct notifier_object *obj[MANY_OBJECTS];
	int memfd[MANY_OBJECTS], id[MANY_OBJECTS];
	uint64_t *host[MANY_OBJECTS];
};

START_TEST(test_hundred_objects_under_one_pager_each_come_back)
{
	struct pager_swap_config cfg = { .nr_slots = 256 };
	struct pager_swap *swap;
	struct pager_stats all;
	struct pager *pager;
	struct many *m = calloc(1, sizeof(*m));

	ck_assert_ptr_nonnull(m);
	ck_assert_int_eq(notifier_thread_init(), 0);
	ck_assert_int_eq(pager_swap_create(&cfg, &swap), 0);
	ck_assert_int_eq(pager_create(swap, &pager), 0);
	for (int i = 0; i < MANY_OBJECTS; i++) {
		ck_assert_int_eq(notifier_object_create("many", 1, &m->obj[i]), 0);
		m->memfd[i] = memfd_create("many", MFD_CLOEXEC);
		ck_assert_int_ge(m->memfd[i], 0);
		ck_assert_int_eq(ftruncate(m->memfd[i], PG), 0);
		m->host[i] = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, m->memfd[i], 0);
		ck_assert_ptr_ne(m->host[i], MAP_FAILED);
		m->host[i][0] = 1000 + (uint64_t)i;
		ck_assert_int_eq(pager_add_object(pager, m->obj[i], m->memfd[i], m->host[i], PG, &m->id[i]), 0);
		ck_assert_int_eq(pager_evict(pager, m->id[i], 0, 1), 0);
	}
	ck_assert_int_eq(pager_stats(pager, -1, &all), 0);
	ck_assert_uint_eq(all.swapped, MANY_OBJECTS);
	ck_assert_uint_eq(all.present, 0);
	for (int i = MANY_OBJECTS - 1; i >= 0; i--)
		ck_assert_uint_eq(__atomic_load_n(&m->host[i][0], __ATOMIC_RELAXED), 1000 + (uint64_t)i);
	ck_assert_int_eq(pager_stats(pager, -1, &all), 0);
	ck_assert_uint_eq(all.swapins, MANY_OBJECTS);
	ck_assert_uint_eq(all.present, MANY_OBJECTS);
	pager_destroy(pager);
	pager_swap_destroy(swap);
	for (int i = 0; i < MANY_OBJECTS; i++) {
		munmap(m->host[i], PG);
		close(m->memfd[i]);
		notifier_object_destroy(m->obj[i]);
	}
	free(m);
}
END_TEST

void pager_account_tcases(Suite *s)
{
	TCase *account = tcase_create("accounting");
	TCase *lost = tcase_create("lost");

	tcase_add_test(account, test_present_pages_follow_add_zero_fill_swap_in_and_eviction);
	tcase_add_test(account, test_pinned_page_is_skipped_by_evict_until_unpinned);
	tcase_add_test(account, test_pin_count_overflow_is_refused_without_taking_pins);
	tcase_add_test(account, test_refault_counted_only_within_the_window);
	tcase_add_test(account, test_swap_in_latency_percentiles_are_ordered);
	tcase_add_test(account, test_hundred_objects_under_one_pager_each_come_back);
	tcase_add_loop_test(lost, test_unreadable_slot_loses_page_and_releases_the_thread_with_poison, 0, 4);
	suite_add_tcase(s, account);
	suite_add_tcase(s, lost);
}
