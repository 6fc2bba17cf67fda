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
#include "test_shadow_util.h"
#include "tests.h"

#define NPAGES 64
#define PG PAGER_PAGE_SIZE

/* One pager over one memfd-backed object. */
struct pfix {
	struct pager_swap *swap;
	struct pager *pager;
	struct notifier_object *obj;
	int memfd;
	uint8_t *host;
	uint64_t npages;
	int id;
};

/* The pattern of word @w of page @p. */
static uint64_t pattern(uint64_t p, uint64_t w)
{
	return (p << 32) ^ (w * 0x9e3779b97f4a7c15ull) ^ 0x5a5a;
}

static void fill_page(struct pfix *f, uint64_t p)
{
	uint64_t *w = (uint64_t *)(f->host + p * PG);

	for (uint64_t i = 0; i < PG / 8; i++)
		__atomic_store_n(&w[i], pattern(p, i), __ATOMIC_RELAXED);
}

/* Word index of the first mismatch of page @p, or -1 if it is intact. */
static long check_page(const uint8_t *host, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(host + p * PG);

	for (uint64_t i = 0; i < PG / 8; i++) {
		if (__atomic_load_n(&w[i], __ATOMIC_RELAXED) != pattern(p, i))
			return (long)i;
	}
	return -1;
}

/* What the fixture sets up besides its size: pages left holes (bit p of
 * @holes: page p, p < 64, is never written) and the pager's ops. */
struct pfix_opts {
	const char *path;
	uint64_t holes;
	const struct pager_ops *ops;
	void *priv;
};

static void pfix_init_opts(struct pfix *f, const struct pfix_opts *o, uint64_t nr_slots,
			   uint64_t npages)
{
	struct pager_swap_config cfg = { .path = o->path, .nr_slots = nr_slots };

	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(notifier_thread_init(), 0);
	f->npages = npages;
	ck_assert_int_eq(pager_swap_create(&cfg, &f->swap), 0);
	ck_assert_int_eq(pager_create(f->swap, &f->pager), 0);
	if (o->ops)
		pager_set_ops(f->pager, o->ops, o->priv);
	ck_assert_int_eq(notifier_object_create("paged", npages, &f->obj), 0);
	f->memfd = memfd_create("paged", MFD_CLOEXEC);
	ck_assert_int_ge(f->memfd, 0);
	ck_assert_int_eq(ftruncate(f->memfd, (off_t)(npages * PG)), 0);
	f->host = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
	ck_assert_ptr_ne(f->host, MAP_FAILED);
	for (uint64_t p = 0; p < npages; p++) {
		if (p >= 64 || !(o->holes >> p & 1))
			fill_page(f, p);
	}
	ck_assert_int_eq(pager_add_object(f->pager, f->obj, f->memfd, f->host, npages * PG, &f->id), 0);
}

static void pfix_init_at(struct pfix *f, const char *path, uint64_t nr_slots, uint64_t npages)
{
	struct pfix_opts o = { .path = path };

	pfix_init_opts(f, &o, nr_slots, npages);
}

static void pfix_init(struct pfix *f, uint64_t nr_slots, uint64_t npages)
{
	pfix_init_at(f, NULL, nr_slots, npages);
}

static void pfix_fini(struct pfix *f)
{
	struct pager_swap_stats ss;

	pager_destroy(f->pager);
	pager_swap_stats(f->swap, &ss);
	ck_assert_msg(ss.slots_in_use == 0, "expected every slot freed, got %llu in use",
		      (unsigned long long)ss.slots_in_use);
	pager_swap_destroy(f->swap);
	munmap(f->host, f->npages * PG);
	close(f->memfd);
	notifier_object_destroy(f->obj);
}

static struct pager_stats pstats(struct pfix *f)
{
	struct pager_stats st;

	ck_assert_int_eq(pager_stats(f->pager, f->id, &st), 0);
	return st;
}

static uint64_t swap_reads(struct pfix *f)
{
	struct pager_swap_stats ss;

	pager_swap_stats(f->swap, &ss);
	return ss.reads;
}

static uint64_t swap_writes(struct pfix *f)
{
	struct pager_swap_stats ss;

	pager_swap_stats(f->swap, &ss);
	return ss.writes;
}

/* Pages of host memory the memfd holds, from st_blocks. */
static uint64_t memfd_pages(struct pfix *f)
{
	struct stat sb;

	ck_assert_int_eq(fstat(f->memfd, &sb), 0);
	return (uint64_t)sb.st_blocks * 512 / PG;
}

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

/* ---- present pages, pins, lost pages, statistics --------------------- */

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
	ck_assert_int_eq(pager_pin(f.pager, f.id, NPAGES - 1, 2), -EINVAL);
	ck_assert_int_eq(pager_pin(f.pager, f.id + 1, 0, 1), -EINVAL);
	ck_assert_uint_eq(pstats(&f).pinned, 0);
	pfix_fini(&f);
}
END_TEST

START_TEST(test_pin_count_overflow_is_refused_without_taking_pins)
{
	struct pfix f;

	pfix_init(&f, 256, NPAGES);
	for (unsigned int i = 0; i < UINT16_MAX; i++)
		ck_assert_int_eq(pager_pin(f.pager, f.id, 3, 1), 0);
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

Suite *pager_suite(void)
{
	Suite *s = suite_create("pager");
	TCase *evict = tcase_create("evict");
	TCase *races = tcase_create("races");
	TCase *account = tcase_create("accounting");
	TCase *lost = tcase_create("lost");

	tcase_add_loop_test(evict, test_evicted_run_frees_memory_and_host_read_brings_it_back, 0, 2);
	tcase_add_test(evict, test_shadow_fault_brings_evicted_page_back_through_get_page);
	tcase_add_test(evict, test_failed_swap_write_leaves_page_resident_with_its_content);
	tcase_add_test(evict, test_clean_swapped_in_page_evicts_without_io_until_written);
	tcase_add_test(evict, test_never_written_hole_reads_zero_and_evicted_hole_stays_zero);
	tcase_add_test(evict, test_corrupt_slot_fails_get_page_and_loses_the_page);
	tcase_set_timeout(races, TEST_TORTURE_LIMIT_S + 30);
	tcase_add_loop_test(races, test_four_threads_faulting_one_page_read_swap_once, 0, 2);
	tcase_add_test(races, test_writes_racing_eviction_are_never_lost);
	tcase_add_test(account, test_present_pages_follow_add_zero_fill_swap_in_and_eviction);
	tcase_add_test(account, test_pinned_page_is_skipped_by_evict_until_unpinned);
	tcase_add_test(account, test_pin_count_overflow_is_refused_without_taking_pins);
	tcase_add_test(account, test_refault_counted_only_within_the_window);
	tcase_add_test(account, test_swap_in_latency_percentiles_are_ordered);
	tcase_add_loop_test(lost, test_unreadable_slot_loses_page_and_releases_the_thread_with_poison, 0, 4);
	suite_add_tcase(s, evict);
	suite_add_tcase(s, races);
	suite_add_tcase(s, account);
	suite_add_tcase(s, lost);
	return s;
}
