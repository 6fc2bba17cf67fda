/*
 * pager/: eviction of memfd-backed objects to the swap file and every way
 * back (a thread reading the host mapping, as KVM's direct access does; a
 * shadow fault through get_page), with the host memory measured from the
 * memfd's allocated blocks.  docs/pager.md is the design.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "umbra/pager.h"
#include "test_pager_util.h"
#include "test_shadow_util.h"
#include "tests.h"


struct reader {
	const uint8_t *host;
	uint64_t first, n;
	long bad;		/* -1, or the first page that read wrong */
	struct test_gate *gate;
	struct pfix *f;
	bool via_get_page;
	int ret;
};

/* A plain thread reading the host mapping: what KVM's direct access does. */
static void *reader_body(void *arg)
{
	struct reader *r = arg;

	r->bad = -1;
	if (r->gate)
		test_gate_pass(r->gate);
	for (uint64_t p = r->first; p < r->first + r->n; p++) {
		if (r->via_get_page)
			r->ret = pager_get_page(r->f->pager, r->f->id, p);
		if (check_page(r->host, p) >= 0 && r->bad < 0)
			r->bad = (long)p;
	}
	return NULL;
}

/* _i: delivery mode (range, page). */
START_TEST(test_evicted_run_frees_memory_and_host_read_brings_it_back)
{
	struct notifier_stats ns0, ns1;
	struct pager_stats st;
	struct reader r = { 0 };
	pthread_t t;
	struct pfix f;
	enum notifier_mode mode = _i ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(notifier_object_set_mode(f.obj, mode), 0);
	uint64_t before = memfd_pages(&f);

	ck_assert_uint_eq(before, NPAGES);
	notifier_object_stats(f.obj, &ns0);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 8, 16), 0);
	notifier_object_stats(f.obj, &ns1);
	ck_assert_msg(memfd_pages(&f) == before - 16,
		      "expected the memfd to hold %llu pages after evicting 16, got %llu",
		      (unsigned long long)(before - 16), (unsigned long long)memfd_pages(&f));
	ck_assert_msg(ns1.starts - ns0.starts == 1 && ns1.pages - ns0.pages == 16,
		      "expected one invalidation of 16 pages, got %llu of %llu",
		      (unsigned long long)(ns1.starts - ns0.starts),
		      (unsigned long long)(ns1.pages - ns0.pages));
	ck_assert_uint_eq(ns1.starts_by_mode[mode] - ns0.starts_by_mode[mode], 1);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapped, 16);
	ck_assert_uint_eq(st.swapouts_io, 16);
	ck_assert_uint_eq(st.resident, NPAGES - 16);
	ck_assert_uint_eq(st.host_bytes, (NPAGES - 16) * PG);
	ck_assert(pager_is_swapped(f.pager, f.id, 8));
	ck_assert(!pager_is_swapped(f.pager, f.id, 7));

	/* Two runs around what is already out: one invalidation each. */
	notifier_object_stats(f.obj, &ns0);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 4, 24), 0);
	notifier_object_stats(f.obj, &ns1);
	ck_assert_msg(ns1.starts - ns0.starts == 2, "expected 2 invalidations (pages 4-7, 24-27), got %llu",
		      (unsigned long long)(ns1.starts - ns0.starts));
	ck_assert_uint_eq(memfd_pages(&f), NPAGES - 24);

	r.host = f.host;
	r.first = 4;
	r.n = 24;
	ck_assert_int_eq(pthread_create(&t, NULL, reader_body, &r), 0);
	pthread_join(t, NULL);
	ck_assert_msg(r.bad < 0, "page %ld read back wrong through the host mapping", r.bad);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapins, 24);
	ck_assert_uint_eq(st.swapped, 0);
	ck_assert_uint_eq(st.zero_fills, 0);
	ck_assert_uint_eq(memfd_pages(&f), NPAGES);
	pfix_fini(&f);
}
END_TEST

/* A data object under the pager, mapped by a guest through its shadow MMU. */
#define DATA_GPA 0x200000ull
#define DATA_MPA (2ull << 30)
#define VA_BASE 0x00007f0000000000ull

START_TEST(test_shadow_fault_brings_evicted_page_back_through_get_page)
{
	struct shadow_vcpu_result res;
	struct shadow_slot slot = { 0 };
	struct pager_stats st;
	struct pfix f;
	struct gm gm;
	uint64_t cr3, val = 0;
	int sid;

	pfix_init(&f, 256, NPAGES);
	gm_init(&gm, 1024);
	pager_object_slot(f.pager, f.id, &slot);
	slot.mpa = DATA_MPA;
	ck_assert_ptr_eq(slot.ops, &pager_slot_ops);
	ck_assert_int_eq(shadow_mmu_add_slot(gm.mmu, &slot, &sid), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, DATA_GPA, NPAGES, sid, 0), 0);
	cr3 = gm_table(&gm);
	for (uint64_t i = 0; i < NPAGES; i++)
		gm_map(&gm, cr3, VA_BASE + i * PG, DATA_GPA + i * PG, 1, SPTE_WRITABLE | SPTE_USER);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 64, cr3);

	ck_assert_int_eq(shadow_vcpu_access64_fault_in(v, VA_BASE + 5 * PG, SHADOW_ACCESS_USER, &val, &res), 0);
	ck_assert_uint_eq(val, pattern(5, 0));
	ck_assert_int_eq(pager_evict(f.pager, f.id, 5, 1), 0);
	ck_assert_int_eq(shadow_vcpu_access(v, VA_BASE + 5 * PG, SHADOW_ACCESS_USER, &res), -EFAULT);
	ck_assert_uint_eq(memfd_pages(&f), NPAGES - 1);
	uint64_t reads = swap_reads(&f);

	/* The shadow fault's get_page swaps it in before the MMU maps it. */
	ck_assert_int_eq(shadow_vcpu_access64_fault_in(v, VA_BASE + 5 * PG + 8, SHADOW_ACCESS_USER, &val,
						       &res), 0);
	ck_assert_uint_eq(val, pattern(5, 1));
	ck_assert_uint_eq(swap_reads(&f) - reads, 1);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapins, 1);
	ck_assert_msg(check_page(f.host, 5) < 0, "page 5 came back wrong");
	/* The guest writes the clean page through its shadow mapping: the
	 * write is seen, so the next eviction writes it out again. */
	uint64_t writes = swap_writes(&f);

	val = 0xabcdef;
	ck_assert_int_eq(shadow_vcpu_access64_fault_in(v, VA_BASE + 5 * PG,
						       SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &val,
						       &res), 0);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 5, 1), 0);
	ck_assert_uint_eq(swap_writes(&f), writes + 1);
	val = 0;
	ck_assert_int_eq(shadow_vcpu_access64_fault_in(v, VA_BASE + 5 * PG, SHADOW_ACCESS_USER, &val, &res), 0);
	ck_assert_uint_eq(val, 0xabcdef);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	pfix_fini(&f);
}
END_TEST

/* _i: 0 = all four read the host mapping, 1 = two of them call get_page. */
START_TEST(test_four_threads_faulting_one_page_read_swap_once)
{
	struct reader r[4];
	pthread_t t[4];
	struct test_gate gate;
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 9, 1), 0);
	uint64_t reads = swap_reads(&f);

	test_gate_init(&gate, 4);
	for (int k = 0; k < 4; k++) {
		r[k] = (struct reader){ .host = f.host, .first = 9, .n = 1, .gate = &gate, .f = &f,
					.via_get_page = _i && k % 2 };
		ck_assert_int_eq(pthread_create(&t[k], NULL, reader_body, &r[k]), 0);
	}
	for (int k = 0; k < 4; k++) {
		pthread_join(t[k], NULL);
		ck_assert_msg(r[k].bad < 0 && r[k].ret == 0, "thread %d: page read wrong (ret %d)", k,
			      r[k].ret);
	}
	test_gate_exit(&gate);
	ck_assert_msg(swap_reads(&f) - reads == 1, "expected one swap read for four faults, got %llu",
		      (unsigned long long)(swap_reads(&f) - reads));
	ck_assert_uint_eq(pstats(&f).swapins, 1);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_failed_swap_write_leaves_page_resident_with_its_content)
{
	struct pager_stats st;
	struct pfix f;
	int ret;

	/* Four slots for eight pages: the last four cannot be written. */
	pfix_init(&f, 4, NPAGES);
	ret = pager_evict(f.pager, f.id, 16, 8);
	ck_assert_msg(ret == -ENOSPC, "expected -ENOSPC, got %d", ret);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapped, 4);
	ck_assert_uint_eq(st.write_errors, 4);
	ck_assert_uint_eq(memfd_pages(&f), NPAGES - 4);
	for (uint64_t p = 16; p < 24; p++)
		ck_assert_msg(pager_is_swapped(f.pager, f.id, p) == (p < 20), "page %llu: wrong state",
			      (unsigned long long)p);
	/* The pages that stayed are intact and writable (no protection left). */
	for (uint64_t p = 20; p < 24; p++) {
		ck_assert_msg(check_page(f.host, p) < 0, "page %llu lost its content", (unsigned long long)p);
		fill_page(&f, p);
	}
	for (uint64_t p = 16; p < 24; p++)
		ck_assert_msg(check_page(f.host, p) < 0, "page %llu read back wrong", (unsigned long long)p);
	pfix_fini(&f);
}
END_TEST

/* A subscriber whose lock is always busy: it refuses every invalidation it
 * may not sleep in, as a VM whose mmu_lock is held does. */
static int busy_range_start(struct notifier_subscription *sub, const struct notifier_range *range)
{
	(void)sub;
	return notifier_range_may_block(range) ? 0 : -EAGAIN;
}

static int busy_page(struct notifier_subscription *sub, const struct notifier_range *range, uint64_t page)
{
	(void)page;
	return busy_range_start(sub, range);
}

static const struct notifier_ops busy_ops = { .invalidate_range_start = busy_range_start,
					      .invalidate_page = busy_page };

/* With pager_set_nonblocking the pager invalidates as the OOM reaper does:
 * a refusal leaves the run resident and intact, counted, and is no error;
 * blocking again, the same pages go. */
START_TEST(test_nonblocking_eviction_refused_by_a_busy_subscriber_leaves_the_pages)
{
	struct notifier_subscription *sub;
	struct notifier_stats ns;
	struct pager_stats st;
	struct pfix f;
	int ret;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(notifier_subscribe(f.obj, &busy_ops, NULL, &sub), 0);
	pager_set_nonblocking(f.pager, true);
	ret = pager_evict(f.pager, f.id, 16, 8);
	ck_assert_msg(ret == 0, "a refused non-blocking eviction: expected 0, got %d", ret);
	st = pstats(&f);
	ck_assert_msg(st.swapped == 0 && st.busy_refusals == 8 && st.write_errors == 0,
		      "expected 0 swapped and 8 refusals, got %llu swapped, %llu refusals, %llu write errors",
		      (unsigned long long)st.swapped, (unsigned long long)st.busy_refusals,
		      (unsigned long long)st.write_errors);
	notifier_object_stats(f.obj, &ns);
	ck_assert_uint_eq(ns.aborts, 1); /* one run, one invalidation */
	ck_assert_uint_eq(ns.cb_eagain, 1);
	for (uint64_t p = 16; p < 24; p++) {
		ck_assert_msg(!pager_is_swapped(f.pager, f.id, p), "page %llu went", (unsigned long long)p);
		ck_assert_msg(check_page(f.host, p) < 0, "page %llu lost its content", (unsigned long long)p);
	}
	pager_set_nonblocking(f.pager, false);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 16, 8), 0);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapped, 8);
	ck_assert_uint_eq(st.busy_refusals, 8);
	for (uint64_t p = 16; p < 24; p++)
		ck_assert_msg(check_page(f.host, p) < 0, "page %llu read back wrong", (unsigned long long)p);
	notifier_unsubscribe(sub);
	pfix_fini(&f);
}
END_TEST

/* pager_destroy brings swapped pages back unless told to discard them
 * (_i = 1): then it reads nothing and still frees every slot. */
START_TEST(test_destroy_brings_pages_back_unless_discarding)
{
	struct pfix f;
	bool discard = _i;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 0, NPAGES), 0);
	ck_assert_uint_eq(memfd_pages(&f), 0);
	pager_set_discard_at_destroy(f.pager, discard);
	uint64_t reads = swap_reads(&f);
	pager_destroy(f.pager);
	f.pager = NULL;
	struct pager_swap_stats ss;
	pager_swap_stats(f.swap, &ss);
	ck_assert_msg(ss.reads - reads == (discard ? 0 : NPAGES), "expected %d swap reads at destroy, got %llu",
		      discard ? 0 : NPAGES, (unsigned long long)(ss.reads - reads));
	ck_assert_uint_eq(ss.slots_in_use, 0);
	ck_assert_uint_eq(memfd_pages(&f), discard ? 0 : NPAGES);
	for (uint64_t p = 0; !discard && p < NPAGES; p++)
		ck_assert_int_eq(check_page(f.host, p), -1);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_clean_swapped_in_page_evicts_without_io_until_written)
{
	struct pager_stats st;
	struct pfix f;
	uint64_t writes;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 3, 1), 0);
	ck_assert_msg(check_page(f.host, 3) < 0, "page 3 came back wrong");
	writes = swap_writes(&f);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 3, 1), 0);
	ck_assert_msg(swap_writes(&f) == writes, "a clean page was written again");
	st = pstats(&f);
	ck_assert_uint_eq(st.swapouts_cached, 1);
	ck_assert_uint_eq(st.swapouts_io, 1);
	ck_assert_uint_eq(memfd_pages(&f), NPAGES - 1);
	/* Read, then written: the write makes it dirty, the next eviction writes. */
	ck_assert_msg(check_page(f.host, 3) < 0, "page 3 came back wrong");
	__atomic_store_n((uint64_t *)(f.host + 3 * PG), 0xfeed, __ATOMIC_RELAXED);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 3, 1), 0);
	ck_assert_uint_eq(swap_writes(&f), writes + 1);
	ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f.host + 3 * PG), __ATOMIC_RELAXED), 0xfeed);
	st = pstats(&f);
	ck_assert_uint_eq(st.swapouts_io, 2);
	ck_assert_uint_eq(st.swapins, 3);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_never_written_hole_reads_zero_and_evicted_hole_stays_zero)
{
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	ck_assert_int_eq(fallocate(f.memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 40 * PG, 2 * PG), 0);
	ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f.host + 40 * PG + 64), __ATOMIC_RELAXED), 0);
	ck_assert_uint_eq(pstats(&f).zero_fills, 1);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 41, 1), 0);
	ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f.host + 41 * PG + 64), __ATOMIC_RELAXED), 0);
	ck_assert_uint_eq(pstats(&f).swapins, 1);
	pfix_fini(&f);
}
END_TEST

/* A slot that reads back corrupt never becomes a page: get_page fails with
 * the checksum's error, and the page is lost for good (poison, counted). */
START_TEST(test_corrupt_slot_fails_get_page_and_loses_the_page)
{
	char path[] = "/tmp/umbra-test-swap-XXXXXX";
	uint8_t junk[PG];
	struct pager_stats st;
	struct stat sb;
	struct pfix f;
	int fd = mkstemp(path);
	int ret;

	ck_assert_int_ge(fd, 0);
	pfix_init_at(&f, path, 16, NPAGES);
	ck_assert_int_eq(pager_evict(f.pager, f.id, 6, 1), 0);
	/* Overwrite the whole file: whichever slot holds page 6 is corrupt. */
	memset(junk, 0xff, sizeof(junk));
	ck_assert_int_eq(fstat(fd, &sb), 0);
	ck_assert_int_gt(sb.st_size, 0);
	for (off_t off = 0; off < sb.st_size; off += PG)
		ck_assert_int_eq(pwrite(fd, junk, PG, off), PG);
	ret = pager_get_page(f.pager, f.id, 6);
	ck_assert_msg(ret == -EBADMSG || ret == -EIO, "expected -EBADMSG or -EIO, got %d", ret);
	ck_assert_int_eq(pager_get_page(f.pager, f.id, 6), ret);
	ck_assert(!pager_is_swapped(f.pager, f.id, 6));
	st = pstats(&f);
	ck_assert_uint_eq(st.read_errors, 1);
	ck_assert_uint_eq(st.lost, 1);
	ck_assert_uint_eq(st.swapins, 0);
	ck_assert_uint_eq(st.swapped, 0);
	ck_assert_uint_eq(__atomic_load_n((uint64_t *)(f.host + 6 * PG), __ATOMIC_RELAXED),
			  PAGER_POISON_WORD);
	ck_assert_uint_eq(memfd_pages(&f), NPAGES);
	pfix_fini(&f);
	close(fd);
	unlink(path);
}
END_TEST

/* A writer keeps storing increasing values into one page (standing for a
 * guest writing through KVM without a shadow fault) while it is evicted and
 * brought back again and again: no store may be lost. */
#define RACE_EVICTIONS (TEST_TSAN ? 200 : 2000)

struct writer {
	uint64_t *word;
	bool stop;		/* atomic */
	uint64_t last;		/* the last value stored */
	uint64_t lost_at;	/* 0, or the value whose store was lost */
};

static void *writer_body(void *arg)
{
	struct writer *w = arg;
	uint64_t v;

	for (v = 1; !__atomic_load_n(&w->stop, __ATOMIC_RELAXED); v++) {
		__atomic_store_n(w->word, v, __ATOMIC_RELAXED);
		if (__atomic_load_n(w->word, __ATOMIC_RELAXED) != v) {
			w->lost_at = v;
			break;
		}
	}
	w->last = v - 1;
	return NULL;
}

START_TEST(test_writes_racing_eviction_are_never_lost)
{
	struct writer w;
	pthread_t t;
	struct pfix f;
	struct pager_stats st;

	pfix_init(&f, 256, NPAGES);
	w = (struct writer){ .word = (uint64_t *)(f.host + 30 * PG) };
	ck_assert_int_eq(pthread_create(&t, NULL, writer_body, &w), 0);
	/* Evictions of a page the writer's fault is swapping in skip it:
	 * count only those done, against a wall-clock cap. */
	double start = test_now_s();

	for (;;) {
		st = pstats(&f);
		if (st.swapouts_io + st.swapouts_cached >= RACE_EVICTIONS ||
		    test_now_s() - start > TEST_TORTURE_LIMIT_S)
			break;
		ck_assert_int_eq(pager_evict(f.pager, f.id, 30, 1), 0);
	}
	__atomic_store_n(&w.stop, true, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	ck_assert_msg(st.swapouts_io + st.swapouts_cached >= RACE_EVICTIONS,
		      "expected %d evictions within %.0f s, got %llu", RACE_EVICTIONS,
		      TEST_TORTURE_LIMIT_S, (unsigned long long)(st.swapouts_io + st.swapouts_cached));
	ck_assert_msg(w.lost_at == 0, "the store of %llu was lost across an eviction",
		      (unsigned long long)w.lost_at);
	ck_assert_uint_eq(__atomic_load_n(w.word, __ATOMIC_RELAXED), w.last);
	ck_assert_msg(check_page(f.host, 31) < 0, "the next page was touched");
	pfix_fini(&f);
}
END_TEST

Suite *pager_suite(void)
{
	Suite *s = suite_create("pager");
	TCase *evict = tcase_create("evict");
	TCase *races = tcase_create("races");

	tcase_add_loop_test(evict, test_evicted_run_frees_memory_and_host_read_brings_it_back, 0, 2);
	tcase_add_test(evict, test_shadow_fault_brings_evicted_page_back_through_get_page);
	tcase_add_test(evict, test_failed_swap_write_leaves_page_resident_with_its_content);
	tcase_add_test(evict, test_nonblocking_eviction_refused_by_a_busy_subscriber_leaves_the_pages);
	tcase_add_test(evict, test_clean_swapped_in_page_evicts_without_io_until_written);
	tcase_add_loop_test(evict, test_destroy_brings_pages_back_unless_discarding, 0, 2);
	tcase_add_test(evict, test_never_written_hole_reads_zero_and_evicted_hole_stays_zero);
	tcase_add_test(evict, test_corrupt_slot_fails_get_page_and_loses_the_page);
	tcase_set_timeout(races, TEST_TORTURE_LIMIT_S + 30);
	tcase_add_loop_test(races, test_four_threads_faulting_one_page_read_swap_once, 0, 2);
	tcase_add_test(races, test_writes_racing_eviction_are_never_lost);
	suite_add_tcase(s, evict);
	suite_add_tcase(s, races);
	pager_account_tcases(s);
	return s;
}
