/*
 * Aging by access tracking: the shadow MMU's young state (shadow/access.c:
 * young bytes shared by the VMs of a pool, access-tracked leaves restored
 * by the fault's fast path) and the pager's CLOCK policy (pager/clock.c),
 * with a fake young source and with real shadow MMUs.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

#include "clock.h"
#include "umbra/shadow.h"
#include "shadow_internal.h"
#include "spte.h"
#include "test_shadow_share_util.h"
#include "tests.h"

/* ---- two VMs sharing a segment ------------------------------------------- */

#define NVM 2
#define SEG_PAGES 512u
#define SEG_GPA 0x200000ull	/* 2 MiB-aligned, in every VM */
#define SEG_VA 0x40000000ull
#define SEG_VALUE(p) (0x5e00000ull + (p))
#define UWD (SPTE_WRITABLE | SPTE_USER | SPTE_DIRTY)

struct pair {
	struct shadow_pool *pool[NVM];	/* pool[1] == pool[0] unless two pools */
	struct gm gm[NVM];
	struct hobj seg;
	uint64_t cr3[NVM];
	struct shadow_vcpu *v[NVM];
};

/*
 * Two VMs, on one pool or on two, each mapping the segment at SEG_VA with
 * a guest 2 MiB page (one canonical leaf table for both on one pool), or
 * with guest 4 KiB pages if @small.  Their vCPUs have no TLB: every access
 * walks the shadow tables, as a CPU whose TLB dropped the translation.
 */
static void pair_init(struct pair *p, bool two_pools, bool small)
{
	ck_assert_int_eq(shadow_pool_create(512, &p->pool[0]), 0);
	p->pool[1] = p->pool[0];
	if (two_pools)
		ck_assert_int_eq(shadow_pool_create(512, &p->pool[1]), 0);
	hobj_init(&p->seg, "segment", SEG_PAGES, false);
	for (uint64_t pg = 0; pg < SEG_PAGES; pg++)
		*(uint64_t *)(p->seg.host + pg * GM_PAGE) = SEG_VALUE(pg);
	for (int k = 0; k < NVM; k++) {
		struct shadow_slot sl = hobj_slot(&p->seg, SH_SEG_MPA);
		int id;

		gm_init_full(&p->gm[k], 1024, p->pool[k], 0, 0, NULL, NULL, NULL);
		ck_assert_int_eq(shadow_mmu_add_segment(p->gm[k].mmu, &sl, &id), 0);
		ck_assert_int_eq(shadow_mmu_map_gpa(p->gm[k].mmu, SEG_GPA, SEG_PAGES, id, 0), 0);
		p->cr3[k] = gm_table(&p->gm[k]);
		if (!small)
			gm_map(&p->gm[k], p->cr3[k], SEG_VA, SEG_GPA, 2, UWD);
		for (uint64_t pg = 0; small && pg < SEG_PAGES; pg++)
			gm_map(&p->gm[k], p->cr3[k], SEG_VA + pg * GM_PAGE, SEG_GPA + pg * GM_PAGE, 1, UWD);
		p->v[k] = sh_vcpu(p->gm[k].mmu, 0, p->cr3[k]);
	}
}

static void pair_fini(struct pair *p)
{
	for (int k = 0; k < NVM; k++) {
		assert_pool_check(p->pool[k]);
		assert_mmu_check(p->gm[k].mmu);
		shadow_vcpu_destroy(p->v[k]);
		shadow_mmu_destroy(p->gm[k].mmu);
		notifier_object_destroy(p->gm[k].ram);
		munmap(p->gm[k].host, p->gm[k].npages * GM_PAGE);
	}
	hobj_fini(&p->seg);
	for (int k = 0; k < NVM && (k == 0 || p->pool[k] != p->pool[0]); k++) {
		ck_assert_uint_eq(shadow_pool_pages_in_use(p->pool[k], 0), 0);
		shadow_pool_destroy(p->pool[k]);
	}
}

/* Reads segment page @pg through VM @k's vCPU (faulting it in), checking
 * the content. */
static void pair_read(struct pair *p, int k, uint64_t pg)
{
	struct shadow_vcpu_result res;
	uint64_t val = 0;
	int ret = shadow_vcpu_access64_fault_in(p->v[k], SEG_VA + pg * GM_PAGE, SHADOW_ACCESS_USER,
						&val, &res);

	ck_assert_msg(ret == 0, "VM %d reads page %llu: expected 0, got %d", k,
		      (unsigned long long)pg, ret);
	ck_assert_uint_eq(val, SEG_VALUE(pg));
}

static int seg_young(struct pair *p, uint64_t pg)
{
	return notifier_test_young(p->seg.obj, pg);
}

static int seg_clear(struct pair *p, uint64_t pg)
{
	return notifier_clear_young(p->seg.obj, pg, pg);
}

/* _i: 0 = both VMs on one pool (one shared leaf), 1 = on two pools. */
START_TEST(test_page_touched_by_either_sharer_is_young_until_cleared)
{
	const uint64_t pg = 7, other = 8;
	struct pair p;

	pair_init(&p, _i == 1, false);
	ck_assert_int_eq(seg_young(&p, pg), 0);
	pair_read(&p, 0, pg);
	ck_assert_int_eq(seg_young(&p, pg), 1);
	ck_assert_int_eq(seg_clear(&p, pg), 1);
	ck_assert_int_eq(seg_young(&p, pg), 0);
	ck_assert_int_eq(seg_clear(&p, pg), 0);
	for (int round = 0; round < 4; round++) {
		int k = round % NVM;

		/* Touched by one VM: young for the object, whichever asks. */
		pair_read(&p, k, pg);
		ck_assert_msg(seg_young(&p, pg) == 1, "round %d: VM %d touched it: young", round, k);
		ck_assert_int_eq(seg_young(&p, pg), 1); /* test_young does not clear */
		ck_assert_int_eq(seg_clear(&p, pg), 1);
		ck_assert_msg(seg_young(&p, pg) == 0, "round %d: cleared: not young", round);
		ck_assert_int_eq(seg_clear(&p, pg), 0);
	}
	ck_assert_int_eq(seg_young(&p, other), 0);
	ck_assert_int_eq(notifier_clear_young(p.seg.obj, 0, SEG_PAGES - 1), 0);
	pair_fini(&p);
}
END_TEST

static void stats_sum(struct pair *p, struct shadow_mmu_stats *sum)
{
	memset(sum, 0, sizeof(*sum));
	for (int k = 0; k < NVM; k++) {
		struct shadow_mmu_stats st;

		shadow_mmu_stats(p->gm[k].mmu, &st);
		sum->faults += st.faults;
		sum->fixed += st.fixed;
		sum->installs += st.installs;
		sum->access_tracked += st.access_tracked;
		sum->fast_restores += st.fast_restores;
	}
}

/*
 * clear_young keeps the translation: the next access faults once, the
 * fault restores the leaf without walking the guest's tables (the guest
 * PTE's A bit, cleared by hand, stays clear) and without an install, with
 * the leaf's rights (a write goes through at once) and the page's content.
 */
START_TEST(test_cleared_leaf_is_restored_by_one_fault_without_a_guest_walk)
{
	const uint64_t pg = 3, va = SEG_VA + pg * GM_PAGE;
	struct shadow_mmu_stats before, after, st0;
	struct shadow_vcpu_result res;
	uint64_t pte_gpa, val = 0x1234;
	struct pair p;

	pair_init(&p, false, true);
	ck_assert_int_eq(shadow_vcpu_access64_fault_in(p.v[0], va, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE,
						       &val, &res), 0);
	pte_gpa = gm_entry(&p.gm[0], p.cr3[0], va, 1);
	ck_assert(gm_read(&p.gm[0], pte_gpa) & SPTE_ACCESSED);
	gm_write(&p.gm[0], pte_gpa, gm_read(&p.gm[0], pte_gpa) & ~SPTE_ACCESSED);

	stats_sum(&p, &before);
	ck_assert_int_eq(seg_clear(&p, pg), 1);
	stats_sum(&p, &after);
	ck_assert_uint_eq(after.access_tracked - before.access_tracked, 1);
	ck_assert_int_eq(shadow_vcpu_access(p.v[0], va, SHADOW_ACCESS_USER, &res), -EFAULT);

	shadow_mmu_stats(p.gm[0].mmu, &before);
	val = 0;
	ck_assert_int_eq(shadow_vcpu_access64_fault_in(p.v[0], va, SHADOW_ACCESS_USER, &val, &res), 0);
	ck_assert_uint_eq(val, 0x1234);
	shadow_mmu_stats(p.gm[0].mmu, &st0);
	ck_assert_uint_eq(st0.faults - before.faults, 1);
	ck_assert_uint_eq(st0.fixed - before.fixed, 1);
	ck_assert_uint_eq(st0.fast_restores - before.fast_restores, 1);
	ck_assert_uint_eq(st0.installs - before.installs, 0);
	ck_assert_msg(!(gm_read(&p.gm[0], pte_gpa) & SPTE_ACCESSED),
		      "the fast path walked the guest's tables (it set the guest PTE's A bit)");
	ck_assert_int_eq(seg_young(&p, pg), 1);
	/* The restored leaf kept its rights: a write needs no fault. */
	val = 0x5678;
	ck_assert_int_eq(shadow_vcpu_access64(p.v[0], va, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &val,
					      &res), 0);
	ck_assert_uint_eq(*(uint64_t *)(p.seg.host + pg * GM_PAGE), 0x5678);
	*(uint64_t *)(p.seg.host + pg * GM_PAGE) = SEG_VALUE(pg);
	pair_fini(&p);
}
END_TEST

/* An access the leaf does not grant is not the fast path's: it takes the
 * slow path (guest walk), which answers a guest fault. */
START_TEST(test_fast_path_does_not_grant_what_the_leaf_does_not)
{
	const uint64_t pg = 5, va = SEG_VA + pg * GM_PAGE;
	struct shadow_vcpu_result res;
	struct shadow_mmu_stats before, after;
	uint64_t val = 0;
	uint32_t ec = 0;
	struct pair p;

	pair_init(&p, false, true);
	/* Read-only guest mapping of the page in VM 0. */
	gm_map(&p.gm[0], p.cr3[0], va, SEG_GPA + pg * GM_PAGE, 1, SPTE_USER);
	shadow_vcpu_invlpg(p.v[0], va);
	ck_assert_int_eq(shadow_vcpu_access64_fault_in(p.v[0], va, SHADOW_ACCESS_USER, &val, &res), 0);
	ck_assert_int_eq(seg_clear(&p, pg), 1);
	shadow_mmu_stats(p.gm[0].mmu, &before);
	ck_assert_int_eq(shadow_mmu_fault(p.gm[0].mmu, p.cr3[0], va,
					  SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &ec),
			 SHADOW_FAULT_GUEST);
	shadow_mmu_stats(p.gm[0].mmu, &after);
	ck_assert_uint_eq(after.fast_restores, before.fast_restores);
	ck_assert_uint_eq(after.guest_faults - before.guest_faults, 1);
	ck_assert_int_eq(seg_young(&p, pg), 0);
	pair_fini(&p);
}
END_TEST

/* ---- concurrent clear_young and faults ----------------------------------- */

#define RACE_PAGES 64u
#define RACE_CLEARS 300u
#define RACE_INVALIDATE_EVERY 16u

struct young_race {
	struct pair p;
	struct test_failures fail;
	bool stop;		/* atomic */
	unsigned long reads[NVM];
};

struct race_reader {
	struct young_race *r;
	int k;
};

static void *race_reader(void *arg)
{
	struct race_reader *rd = arg;
	struct young_race *r = rd->r;

	while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) && !test_failed(&r->fail)) {
		for (uint64_t pg = 0; pg < RACE_PAGES; pg++) {
			struct shadow_vcpu_result res;
			uint64_t val = 0;
			int ret = shadow_vcpu_access64_fault_in(r->p.v[rd->k], SEG_VA + pg * GM_PAGE,
								SHADOW_ACCESS_USER, &val, &res);

			if (ret || val != SEG_VALUE(pg))
				test_fail(&r->fail, "VM %d page %llu: expected 0 and %#llx, got %d and %#llx",
					  rd->k, (unsigned long long)pg, (unsigned long long)SEG_VALUE(pg),
					  ret, (unsigned long long)val);
			__atomic_fetch_add(&r->reads[rd->k], 1, __ATOMIC_RELEASE);
		}
	}
	return NULL;
}

static void *race_reader_thread(void *arg)
{
	return run_rcu_registered(race_reader, arg);
}

static void *race_clearer(void *arg)
{
	struct young_race *r = arg;

	/* The race needs both readers running: on a loaded machine a thread
	 * may start late. */
	for (int k = 0; k < NVM; k++)
		while (!__atomic_load_n(&r->reads[k], __ATOMIC_ACQUIRE) && !test_failed(&r->fail))
			sched_yield();
	for (unsigned int n = 0; n < RACE_CLEARS && !test_failed(&r->fail); n++) {
		uint64_t pg = n % RACE_PAGES;
		int ret = notifier_clear_young(r->p.seg.obj, 0, RACE_PAGES - 1);

		if (ret < 0)
			test_fail(&r->fail, "clear_young: expected 0 or 1, got %d", ret);
		ret = notifier_test_young(r->p.seg.obj, pg);
		if (ret < 0)
			test_fail(&r->fail, "test_young: expected 0 or 1, got %d", ret);
		if (n % RACE_INVALIDATE_EVERY == 0) {
			struct notifier_range range;

			/* Eviction racing the fast path: both copies cleared. */
			notifier_range_init(&range, r->p.seg.obj, NOTIFIER_EVENT_SWAPOUT, pg, pg,
					    NOTIFIER_RANGE_MAY_BLOCK);
			if (notifier_invalidate_range_start(&range) == 0)
				notifier_invalidate_range_end(&range);
		}
	}
	__atomic_store_n(&r->stop, true, __ATOMIC_RELEASE);
	return NULL;
}

static void *race_clearer_thread(void *arg)
{
	return run_rcu_registered(race_clearer, arg);
}

/*
 * Two VMs read 64 pages of a shared segment (checking each value) while a
 * third thread clears their young state and now and then evicts a page:
 * every read sees the page's content, and afterwards (the readers quiet) a
 * clear and one pass of reads restores each page's shared leaf once.
 */
START_TEST(test_clear_young_racing_faults_loses_no_translation)
{
	struct race_reader rd[NVM];
	struct shadow_mmu_stats before, after;
	pthread_t readers[NVM], clearer;
	struct young_race *r = calloc(1, sizeof(*r));

	ck_assert_ptr_nonnull(r);
	pair_init(&r->p, false, false);
	test_failures_init(&r->fail);
	for (int k = 0; k < NVM; k++) {
		rd[k] = (struct race_reader){ .r = r, .k = k };
		ck_assert_int_eq(pthread_create(&readers[k], NULL, race_reader_thread, &rd[k]), 0);
	}
	ck_assert_int_eq(pthread_create(&clearer, NULL, race_clearer_thread, r), 0);
	pthread_join(clearer, NULL);
	for (int k = 0; k < NVM; k++)
		pthread_join(readers[k], NULL);
	test_failures_assert_none(&r->fail);
	ck_assert_msg(r->reads[0] && r->reads[1], "expected both readers to run");

	for (uint64_t pg = 0; pg < RACE_PAGES; pg++)
		pair_read(&r->p, 0, pg); /* every page mapped */
	stats_sum(&r->p, &before);
	ck_assert_int_eq(notifier_clear_young(r->p.seg.obj, 0, RACE_PAGES - 1), 1);
	for (int k = 0; k < NVM; k++)
		for (uint64_t pg = 0; pg < RACE_PAGES; pg++)
			pair_read(&r->p, k, pg);
	stats_sum(&r->p, &after);
	/* One canonical leaf per page, shared: tracked once, restored once. */
	ck_assert_uint_eq(after.access_tracked - before.access_tracked, RACE_PAGES);
	ck_assert_uint_eq(after.fast_restores - before.fast_restores, RACE_PAGES);
	ck_assert_uint_eq(after.installs - before.installs, 0);
	pair_fini(&r->p);
	test_failures_exit(&r->fail);
	free(r);
}
END_TEST

/* ---- the CLOCK with a fake young source ---------------------------------- */

#define FAKE_OBJS 2
#define FAKE_PAGES 32u

struct fake_young {
	struct notifier_object *obj[FAKE_OBJS];
	bool young[FAKE_OBJS][FAKE_PAGES];
	unsigned int tests, clears;
};

static bool *fake_bit(struct fake_young *f, struct notifier_object *obj, uint64_t page)
{
	for (int i = 0; i < FAKE_OBJS; i++)
		if (f->obj[i] == obj && page < FAKE_PAGES)
			return &f->young[i][page];
	ck_abort_msg("young query for an object the clock was not given");
	return NULL;
}

static int fake_test(void *ctx, struct notifier_object *obj, uint64_t page)
{
	struct fake_young *f = ctx;

	f->tests++;
	return *fake_bit(f, obj, page);
}

static int fake_clear(void *ctx, struct notifier_object *obj, uint64_t page)
{
	struct fake_young *f = ctx;
	bool *b = fake_bit(f, obj, page);
	int young = *b;

	f->clears++;
	*b = false;
	return young;
}

static const struct pager_clock_young_ops fake_ops = { .test_young = fake_test,
						       .clear_young = fake_clear };

static void fake_init(struct fake_young *f, struct pager_clock **clock, int nobjs)
{
	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(pager_clock_create(&fake_ops, f, clock), 0);
	for (int i = 0; i < nobjs; i++) {
		char name[16];

		snprintf(name, sizeof(name), "obj%d", i);
		ck_assert_int_eq(notifier_object_create(name, FAKE_PAGES, &f->obj[i]), 0);
		ck_assert_int_eq(pager_clock_add_object(*clock, f->obj[i], true), 0);
	}
}

static void fake_fini(struct fake_young *f, struct pager_clock *clock, int nobjs)
{
	pager_clock_destroy(clock);
	for (int i = 0; i < nobjs; i++)
		notifier_object_destroy(f->obj[i]);
}

static bool fake_is_hot(uint64_t page)
{
	return page % 8 == 0;
}

/* A hot set touched between picks (so between two passes of the hand over
 * it) is never picked while cold pages remain, however many; no page is
 * picked twice; then the hot set goes once it is left alone. */
START_TEST(test_clock_picks_cold_pages_before_hot_ones)
{
	bool picked[FAKE_OBJS][FAKE_PAGES] = { { false } };
	struct pager_clock_victim v[4];
	unsigned int cold_left = FAKE_OBJS * FAKE_PAGES * 7 / 8, n;
	struct pager_clock_stats st;
	struct pager_clock *clock;
	struct fake_young f;

	fake_init(&f, &clock, FAKE_OBJS);
	/* Some cold pages were touched once, a while ago (the hot set is
	 * touched before every pick below): they get one second chance. */
	for (int i = 0; i < FAKE_OBJS; i++)
		for (uint64_t pg = 4; pg < FAKE_PAGES; pg += 8)
			f.young[i][pg] = true;
	while (cold_left) {
		for (int i = 0; i < FAKE_OBJS; i++)
			for (uint64_t pg = 0; pg < FAKE_PAGES; pg += 8)
				f.young[i][pg] = true; /* the hot set is touched */
		n = pager_clock_pick(clock, v, 4);
		ck_assert_uint_eq(n, 4);
		for (unsigned int j = 0; j < n; j++) {
			int i = v[j].obj == f.obj[0] ? 0 : 1;

			ck_assert_msg(!fake_is_hot(v[j].page), "hot page %d:%llu picked with %u cold left",
				      i, (unsigned long long)v[j].page, cold_left);
			ck_assert_msg(!picked[i][v[j].page], "page %d:%llu picked twice", i,
				      (unsigned long long)v[j].page);
			picked[i][v[j].page] = true;
			ck_assert(!pager_clock_is_resident(clock, v[j].obj, v[j].page));
		}
		cold_left -= n;
	}
	/* Only the hot set is left; untouched now, it is old at the next pass. */
	n = pager_clock_pick(clock, v, 4);
	ck_assert_uint_eq(n, 4);
	for (unsigned int j = 0; j < n; j++)
		ck_assert(fake_is_hot(v[j].page));
	pager_clock_stats(clock, &st);
	ck_assert_uint_eq(st.victims, FAKE_OBJS * FAKE_PAGES * 7 / 8 + 4);
	ck_assert_uint_ge(st.second_chances, FAKE_OBJS * FAKE_PAGES / 8 * 2);
	fake_fini(&f, clock, FAKE_OBJS);
}
END_TEST

/* Second chance in hand order; non-resident pages are skipped; a sweep
 * over nothing resident ends; a page made resident again comes back. */
START_TEST(test_clock_gives_young_pages_a_second_chance_in_hand_order)
{
	struct pager_clock_victim v[FAKE_PAGES];
	struct pager_clock_stats st;
	struct pager_clock *clock;
	struct fake_young f;
	unsigned int n;

	fake_init(&f, &clock, 1);
	for (uint64_t pg = 8; pg < FAKE_PAGES; pg++)
		ck_assert_int_eq(pager_clock_set_resident(clock, f.obj[0], pg, false), 0);
	f.young[0][0] = f.young[0][1] = true;
	n = pager_clock_pick(clock, v, 3);
	ck_assert_uint_eq(n, 3);
	ck_assert_uint_eq(v[0].page, 2);
	ck_assert_uint_eq(v[1].page, 3);
	ck_assert_uint_eq(v[2].page, 4);
	ck_assert(!f.young[0][0] && !f.young[0][1]);
	n = pager_clock_pick(clock, v, FAKE_PAGES);
	ck_assert_uint_eq(n, 5);
	const uint64_t want[] = { 5, 6, 7, 0, 1 };
	for (unsigned int j = 0; j < n; j++)
		ck_assert_uint_eq(v[j].page, want[j]);
	ck_assert_uint_eq(pager_clock_pick(clock, v, FAKE_PAGES), 0);
	ck_assert_int_eq(pager_clock_set_resident(clock, f.obj[0], 3, true), 0);
	ck_assert_uint_eq(pager_clock_pick(clock, v, FAKE_PAGES), 1);
	ck_assert_uint_eq(v[0].page, 3);
	pager_clock_stats(clock, &st);
	ck_assert_uint_eq(st.second_chances, 2);
	ck_assert_uint_eq(st.victims, 9);
	fake_fini(&f, clock, 1);
}
END_TEST

START_TEST(test_clock_objects_come_and_go)
{
	struct pager_clock_victim v[2];
	struct pager_clock *clock;
	struct fake_young f;

	ck_assert_int_eq(pager_clock_create(&(struct pager_clock_young_ops){ 0 }, NULL, &clock),
			 -EINVAL);
	fake_init(&f, &clock, FAKE_OBJS);
	ck_assert_int_eq(pager_clock_add_object(clock, f.obj[0], true), -EEXIST);
	ck_assert_int_eq(pager_clock_set_resident(clock, f.obj[0], FAKE_PAGES, true), -EINVAL);
	/* The hand on object 0, then object 0 goes: the sweep goes on in 1. */
	ck_assert_uint_eq(pager_clock_pick(clock, v, 1), 1);
	ck_assert_ptr_eq(v[0].obj, f.obj[0]);
	pager_clock_remove_object(clock, f.obj[0]);
	ck_assert_int_eq(pager_clock_set_resident(clock, f.obj[0], 0, true), -ENOENT);
	ck_assert(!pager_clock_is_resident(clock, f.obj[0], 1));
	ck_assert_uint_eq(pager_clock_pick(clock, v, 2), 2);
	ck_assert_ptr_eq(v[0].obj, f.obj[1]);
	ck_assert_uint_eq(v[0].page, 0);
	ck_assert_uint_eq(v[1].page, 1);
	fake_fini(&f, clock, FAKE_OBJS);
}
END_TEST

/* ---- the CLOCK on real shadow MMUs ---------------------------------------- */

#define HOT_PAGES 16u
#define PICK_BATCH 32u

static bool seg_is_hot(uint64_t pg)
{
	return pg < HOT_PAGES * 8 && pg % 8 == 0;
}

/* Evicts segment page @pg as the pager will: every VM's mapping goes. */
static void seg_evict(struct pair *p, uint64_t pg)
{
	struct notifier_range range;

	notifier_range_init(&range, p->seg.obj, NOTIFIER_EVENT_SWAPOUT, pg, pg,
			    NOTIFIER_RANGE_MAY_BLOCK);
	ck_assert_int_eq(notifier_invalidate_range_start(&range), 0);
	notifier_invalidate_range_end(&range);
}

/*
 * The clock over three objects (the segment two VMs share, and each VM's
 * RAM, which no vCPU maps: all cold), young state from the VMs through the
 * notifier: while cold pages remain, no page of a hot set that the two VMs
 * take turns touching between picks is ever picked; the segment's cold
 * pages (touched once at the start) go too, and the hot ones are still
 * mapped and readable at the end.
 */
START_TEST(test_clock_on_shadow_mmus_never_picks_the_hot_set_while_cold_pages_remain)
{
	struct pager_clock_victim v[PICK_BATCH];
	struct pager_clock *clock;
	uint64_t cold_left;
	struct pair p;
	int round = 0;

	pair_init(&p, _i == 1, false);
	for (uint64_t pg = 0; pg < SEG_PAGES; pg++)
		pair_read(&p, pg % NVM, pg);
	ck_assert_int_eq(pager_clock_create(&pager_clock_notifier_young, NULL, &clock), 0);
	ck_assert_int_eq(pager_clock_add_object(clock, p.gm[0].ram, true), 0);
	ck_assert_int_eq(pager_clock_add_object(clock, p.seg.obj, true), 0);
	ck_assert_int_eq(pager_clock_add_object(clock, p.gm[1].ram, true), 0);
	cold_left = p.gm[0].npages + p.gm[1].npages + SEG_PAGES - HOT_PAGES;
	while (cold_left) {
		unsigned int n;

		for (uint64_t pg = 0; pg < SEG_PAGES; pg++)
			if (seg_is_hot(pg))
				pair_read(&p, round % NVM, pg);
		/* Never more than the cold pages left: asked for more, a clock
		 * rightly takes the hot pages it finds old at its second pass. */
		n = pager_clock_pick(clock, v, cold_left < PICK_BATCH ? (unsigned int)cold_left : PICK_BATCH);
		ck_assert_msg(n > 0, "round %d: nothing picked with %llu cold pages left", round,
			      (unsigned long long)cold_left);
		for (unsigned int j = 0; j < n; j++) {
			ck_assert_msg(v[j].obj != p.seg.obj || !seg_is_hot(v[j].page),
				      "round %d: hot page %llu picked with %llu cold pages left", round,
				      (unsigned long long)v[j].page, (unsigned long long)cold_left);
			if (v[j].obj == p.seg.obj)
				seg_evict(&p, v[j].page);
		}
		cold_left -= n;
		round++;
	}
	for (uint64_t pg = 0; pg < SEG_PAGES; pg++)
		ck_assert_msg(pager_clock_is_resident(clock, p.seg.obj, pg) == seg_is_hot(pg),
			      "segment page %llu", (unsigned long long)pg);
	for (uint64_t pg = 0; pg < SEG_PAGES; pg++)
		if (seg_is_hot(pg))
			for (int k = 0; k < NVM; k++)
				pair_read(&p, k, pg);
	pager_clock_destroy(clock);
	pair_fini(&p);
}
END_TEST

Suite *shadow_young_suite(void)
{
	Suite *s = suite_create("shadow_young");
	TCase *young = tcase_create("young");
	TCase *race = tcase_create("young_race");
	TCase *clock = tcase_create("clock");

	tcase_add_loop_test(young, test_page_touched_by_either_sharer_is_young_until_cleared, 0, 2);
	tcase_add_test(young, test_cleared_leaf_is_restored_by_one_fault_without_a_guest_walk);
	tcase_add_test(young, test_fast_path_does_not_grant_what_the_leaf_does_not);
	/* Room for the sanitizer builds. */
	tcase_set_timeout(race, 60);
	tcase_add_test(race, test_clear_young_racing_faults_loses_no_translation);
	tcase_add_test(clock, test_clock_picks_cold_pages_before_hot_ones);
	tcase_add_test(clock, test_clock_gives_young_pages_a_second_chance_in_hand_order);
	tcase_add_test(clock, test_clock_objects_come_and_go);
	tcase_set_timeout(clock, 60);
	tcase_add_loop_test(clock, test_clock_on_shadow_mmus_never_picks_the_hot_set_while_cold_pages_remain,
			    0, 2);
	suite_add_tcase(s, young);
	suite_add_tcase(s, race);
	suite_add_tcase(s, clock);
	return s;
}
