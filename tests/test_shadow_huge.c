/*
 * 2 MiB shadow leaves (docs/shadow.md, "2 MiB shadow leaves"), with the
 * software vCPU: a guest 2 MiB page over a whole run of contiguous resident
 * backing is one shadow leaf; an invalidation of part of it splits it and
 * keeps the rest mapped; a whole-run invalidation, a guest change, a clone
 * clear it; access tracking treats it whole; where the backing is not a
 * whole run, 4 KiB leaves as before.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umbra/notifier.h"
#include "umbra/shadow.h"
#include "spte.h"
#include "test_shadow_share_util.h"
#include "tests.h"

#define HG_VA 0x0000000040000000ull	/* 1 GiB: PD entry 0 of PDPT entry 1 */
#define HG_FRAME 0x400000ull		/* a 2 MiB-aligned guest frame */
#define HG_RAM_PAGES 2048ull		/* 8 MiB */
#define HG_PAGE0 (HG_FRAME / GM_PAGE)	/* the frame's first page of RAM */
#define HG_RIGHTS (SPTE_WRITABLE | SPTE_USER | SPTE_ACCESSED | SPTE_DIRTY)

static struct shadow_mmu_stats hg_stats(struct gm *gm)
{
	struct shadow_mmu_stats st;

	shadow_mmu_stats(gm->mmu, &st);
	return st;
}

/* Accesses @va through @v, faulting it in: 0 or the access's error. */
static int hg_touch(struct shadow_vcpu *v, uint64_t va, unsigned int access)
{
	struct shadow_vcpu_result res;

	return shadow_vcpu_access_fault_in(v, va, access, &res);
}

/* Does the vCPU reach @va at guest frame @frame's offset without a fault? */
static bool hg_reaches_without_fault(struct shadow_vcpu *v, struct gm *gm, uint64_t va, uint64_t gpa)
{
	struct shadow_vcpu_result res;

	return shadow_vcpu_access(v, va, SHADOW_ACCESS_USER, &res) == 0 &&
	       res.host == gm->host + gpa;
}

/* A guest with one 2 MiB page HG_VA -> HG_FRAME (@flags), huge leaves on;
 * a vCPU on it. */
static struct shadow_vcpu *hg_vm(struct gm *gm, uint64_t flags, uint64_t *cr3)
{
	gm_init_huge(gm, HG_RAM_PAGES, NULL, NULL);
	*cr3 = gm_table(gm);
	gm_map(gm, *cr3, HG_VA, HG_FRAME, 2, flags);
	return sh_vcpu(gm->mmu, 64, *cr3);
}

START_TEST(test_guest_2m_page_over_a_whole_run_is_one_2m_leaf)
{
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = hg_vm(&gm, HG_RIGHTS, &cr3);

	ck_assert_int_eq(hg_touch(v, HG_VA + 0x5008, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE), 0);
	struct shadow_mmu_stats st = hg_stats(&gm);

	ck_assert_msg(st.huge_installs == 1 && st.faults == 1,
		      "expected 1 fault and 1 2 MiB leaf, got %llu faults, %llu 2 MiB leaves",
		      (unsigned long long)st.faults, (unsigned long long)st.huge_installs);
	ck_assert_msg(shadow_pool_pages_in_use(gm.pool, 1) == 0,
		      "expected no level-1 table, got %zu", shadow_pool_pages_in_use(gm.pool, 1));
	/* Every page of the 2 MiB page answers without another fault. */
	for (uint64_t k = 0; k < SPTE_ENTRIES; k++)
		ck_assert_msg(hg_reaches_without_fault(v, &gm, HG_VA + k * GM_PAGE + 8,
						       HG_FRAME + k * GM_PAGE + 8),
			      "page %llu of the 2 MiB page: expected a translation, got a fault",
			      (unsigned long long)k);
	ck_assert_uint_eq(hg_stats(&gm).faults, 1);
	/* A write went through the 2 MiB leaf to the backing. */
	ck_assert_int_eq(hg_touch(v, HG_VA + 0x1ff000, SHADOW_ACCESS_WRITE), 0);
	ck_assert_uint_eq(hg_stats(&gm).faults, 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* Backings that are not a whole run of one slot in order, each made from
 * the identity P2M of hg_vm by one change. */
enum hg_refusal { HG_ONE_GFN_ELSEWHERE, HG_SHIFTED_BY_ONE_PAGE, HG_NOT_RESIDENT, HG_OFF, HG_NR };
static const char *const hg_refusal_names[HG_NR] = {
	"one frame mapped to another page", "the run shifted by one page", "one page not resident",
	"huge leaves off",
};

/* Slot ops whose page HG_PAGE0 + 77 is not resident (get_page makes it so
 * at once: only the answer of is_resident matters). */
static int hg_get_page(void *priv, uint64_t page, bool write)
{
	(void)priv, (void)page, (void)write;
	return 0;
}

static bool hg_is_resident(void *priv, uint64_t page)
{
	(void)priv;
	return page != HG_PAGE0 + 77;
}

static const struct shadow_slot_ops hg_partly_resident_ops = {
	.get_page = hg_get_page,
	.is_resident = hg_is_resident,
};

START_TEST(test_2m_leaf_is_refused_where_the_backing_is_not_a_whole_resident_run)
{
	struct shadow_vcpu *v;
	struct gm gm;
	uint64_t cr3;

	if (_i == HG_NOT_RESIDENT)
		gm_init_huge(&gm, HG_RAM_PAGES, &hg_partly_resident_ops, NULL);
	else if (_i == HG_OFF)
		gm_init(&gm, HG_RAM_PAGES);
	else
		gm_init_huge(&gm, HG_RAM_PAGES, NULL, NULL);
	cr3 = gm_table(&gm);
	gm_map(&gm, cr3, HG_VA, HG_FRAME, 2, HG_RIGHTS);
	if (_i == HG_ONE_GFN_ELSEWHERE)
		ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, HG_FRAME + 300 * GM_PAGE, 1, gm.slot, 5), 0);
	if (_i == HG_SHIFTED_BY_ONE_PAGE)
		ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, HG_FRAME, SPTE_ENTRIES, gm.slot, HG_PAGE0 + 1),
				 0);
	v = sh_vcpu(gm.mmu, 64, cr3);
	ck_assert_int_eq(hg_touch(v, HG_VA + 0x3000, SHADOW_ACCESS_USER), 0);
	ck_assert_msg(hg_stats(&gm).huge_installs == 0, "%s: expected no 2 MiB leaf, got %llu",
		      hg_refusal_names[_i], (unsigned long long)hg_stats(&gm).huge_installs);
	ck_assert_msg(shadow_pool_pages_in_use(gm.pool, 1) == 1,
		      "%s: expected the level-1 table of 4 KiB leaves, got %zu level-1 tables",
		      hg_refusal_names[_i], shadow_pool_pages_in_use(gm.pool, 1));
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* Invalidates pages [first, last] of the RAM object (a swap-out). */
static void hg_invalidate(struct gm *gm, uint64_t first, uint64_t last)
{
	struct notifier_range range;

	notifier_range_init(&range, gm->ram, NOTIFIER_EVENT_SWAPOUT, first, last,
			    NOTIFIER_RANGE_MAY_BLOCK);
	ck_assert_int_eq(notifier_invalidate_range_start(&range), 0);
	notifier_invalidate_range_end(&range);
}

/* In both delivery modes: one range, or invalidate_page per page. */
START_TEST(test_invalidating_part_of_a_2m_leaf_splits_it_and_keeps_the_rest_mapped)
{
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = hg_vm(&gm, HG_RIGHTS, &cr3);

	ck_assert_int_eq(notifier_object_set_mode(gm.ram, _i ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE), 0);
	ck_assert_int_eq(hg_touch(v, HG_VA, SHADOW_ACCESS_USER), 0);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 1);
	hg_invalidate(&gm, HG_PAGE0 + 7, HG_PAGE0 + 9);
	struct shadow_mmu_stats st = hg_stats(&gm);

	ck_assert_msg(st.huge_splits == 1, "expected 1 split, got %llu", (unsigned long long)st.huge_splits);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 1), 1);
	for (uint64_t k = 0; k < SPTE_ENTRIES; k++) {
		const bool gone = k >= 7 && k <= 9;

		ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, HG_PAGE0 + k), gone ? 0 : 1);
		ck_assert_msg(hg_reaches_without_fault(v, &gm, HG_VA + k * GM_PAGE, HG_FRAME + k * GM_PAGE) == !gone,
			      "page %llu: expected %s, got the other", (unsigned long long)k,
			      gone ? "a fault (invalidated)" : "a translation (kept by the split)");
	}
	assert_mmu_check(gm.mmu);
	/* The invalidated pages fault back in as 4 KiB leaves. */
	ck_assert_int_eq(hg_touch(v, HG_VA + 8 * GM_PAGE, SHADOW_ACCESS_USER), 0);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, HG_PAGE0 + 8), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_invalidating_the_whole_run_clears_the_2m_leaf_and_it_faults_back)
{
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = hg_vm(&gm, HG_RIGHTS, &cr3);

	ck_assert_int_eq(hg_touch(v, HG_VA, SHADOW_ACCESS_USER), 0);
	hg_invalidate(&gm, HG_PAGE0 - 3, HG_PAGE0 + SPTE_ENTRIES + 3);
	ck_assert_uint_eq(hg_stats(&gm).huge_splits, 0);
	ck_assert(!hg_reaches_without_fault(v, &gm, HG_VA + 0x10000, HG_FRAME + 0x10000));
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 1), 0);
	assert_mmu_check(gm.mmu);
	ck_assert_int_eq(hg_touch(v, HG_VA + 0x10000, SHADOW_ACCESS_USER), 0);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 2);
	ck_assert(hg_reaches_without_fault(v, &gm, HG_VA + 0x1ff000, HG_FRAME + 0x1ff000));
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* A clean guest 2 MiB page: a read-only 2 MiB leaf; the first write sets
 * the guest's D and makes the leaf writable. */
START_TEST(test_a_write_to_a_clean_2m_page_makes_its_leaf_writable)
{
	struct shadow_vcpu_result res;
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = hg_vm(&gm, SPTE_WRITABLE | SPTE_USER, &cr3);

	ck_assert_int_eq(hg_touch(v, HG_VA + 0x2000, SHADOW_ACCESS_USER), 0);
	ck_assert_int_eq(shadow_vcpu_access(v, HG_VA + 0x4000, SHADOW_ACCESS_WRITE, &res), -EFAULT);
	ck_assert_int_eq(hg_touch(v, HG_VA + 0x4000, SHADOW_ACCESS_WRITE), 0);
	ck_assert_msg(gm_read(&gm, gm_entry(&gm, cr3, HG_VA, 2)) & SPTE_DIRTY, "expected D on the PDE");
	ck_assert_int_eq(shadow_vcpu_access(v, HG_VA + 0x1f0000, SHADOW_ACCESS_WRITE, &res), 0);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 2);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 1), 0);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* The guest points its 2 MiB page elsewhere and invalidates it: the old
 * leaf goes at the invlpg; the next access maps the new frame. */
START_TEST(test_guest_moving_its_2m_page_drops_the_leaf_at_invlpg)
{
	const uint64_t frame2 = 0x200000;
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = hg_vm(&gm, HG_RIGHTS, &cr3);

	ck_assert_int_eq(hg_touch(v, HG_VA + 0x1000, SHADOW_ACCESS_USER), 0);
	gm_map(&gm, cr3, HG_VA, frame2, 2, HG_RIGHTS);
	shadow_vcpu_invlpg(v, HG_VA + 0x1000);
	ck_assert_int_eq(hg_touch(v, HG_VA + 0x1000, SHADOW_ACCESS_USER), 0);
	ck_assert(hg_reaches_without_fault(v, &gm, HG_VA + 0x7000, frame2 + 0x7000));
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, HG_PAGE0), 0);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 2);
	/* A full flush (CR3 load) keeps a leaf that still matches. */
	ck_assert_int_eq(shadow_mmu_flush(gm.mmu, cr3), 0);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 2);
	ck_assert_int_eq(hg_touch(v, HG_VA + 0x9000, SHADOW_ACCESS_USER), 0);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 2);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* Aging one page hides the whole 2 MiB leaf; the next access anywhere in
 * it restores the leaf (no guest walk) and marks every page young. */
START_TEST(test_clear_young_tracks_a_2m_leaf_whole)
{
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = hg_vm(&gm, HG_RIGHTS, &cr3);

	ck_assert_int_eq(hg_touch(v, HG_VA, SHADOW_ACCESS_USER), 0);
	ck_assert_int_eq(notifier_clear_young(gm.ram, HG_PAGE0 + 3, HG_PAGE0 + 3), 1);
	ck_assert_int_eq(notifier_test_young(gm.ram, HG_PAGE0 + 3), 0);
	/* Not in the TLB: the walk finds the leaf hidden. */
	ck_assert(!hg_reaches_without_fault(v, &gm, HG_VA + 0x100000, HG_FRAME + 0x100000));
	ck_assert_int_eq(hg_touch(v, HG_VA + 0x100000, SHADOW_ACCESS_USER), 0);
	struct shadow_mmu_stats st = hg_stats(&gm);

	ck_assert_msg(st.fast_restores == 1 && st.huge_installs == 1,
		      "expected the leaf restored (1 fast restore, 1 install), got %llu, %llu",
		      (unsigned long long)st.fast_restores, (unsigned long long)st.huge_installs);
	ck_assert_int_eq(notifier_test_young(gm.ram, HG_PAGE0 + 3), 1);
	ck_assert(hg_reaches_without_fault(v, &gm, HG_VA + 0x3000, HG_FRAME + 0x3000));
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST


/* A clone shares pages copy-on-write, page by page: the parent's 2 MiB
 * leaves go first, neither VM installs one afterwards, and a write after
 * the clone copies the one page it writes. */
START_TEST(test_a_clone_clears_2m_leaves_and_copies_on_write_page_by_page)
{
	struct shadow_vcpu_result res;
	struct sh_owns owns = { 0 };
	struct shadow_mmu *child;
	struct shadow_slot os;
	struct hobj own;
	struct gm gm;
	uint64_t cr3;
	int id;
	struct shadow_vcpu *vp = hg_vm(&gm, HG_RIGHTS, &cr3);

	hobj_init(&own, "own0", HG_RAM_PAGES, false);
	os = hobj_slot(&own, SH_COW_MPA(0));
	ck_assert_int_eq(shadow_mmu_add_slot(gm.mmu, &os, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(gm.mmu, id), 0);
	ck_assert_int_eq(shadow_vcpu_access_fault_in(vp, HG_VA + 0x5000, SHADOW_ACCESS_WRITE, &res), 0);
	__atomic_store_n((uint64_t *)res.host, 0x1234, __ATOMIC_RELEASE);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 1);
	sh_clone(&owns, HG_RAM_PAGES, gm.mmu, &child);
	/* The leaf went with the clone (the parent's vCPUs flushed). */
	ck_assert(!hg_reaches_without_fault(vp, &gm, HG_VA + 0x5000, HG_FRAME + 0x5000));
	ck_assert_uint_eq(*(uint64_t *)(uintptr_t)(gm.host + HG_FRAME + 0x5000), 0x1234);
	ck_assert_int_eq(shadow_vcpu_access_fault_in(vp, HG_VA + 0x5000, SHADOW_ACCESS_USER, &res), 0);
	ck_assert_uint_eq(__atomic_load_n((uint64_t *)res.host, __ATOMIC_ACQUIRE), 0x1234);
	/* The parent writes: a copy of that page, in its own slot. */
	ck_assert_int_eq(shadow_vcpu_access_fault_in(vp, HG_VA + 0x5000, SHADOW_ACCESS_WRITE, &res), 0);
	ck_assert_msg(res.mpa >= SH_OWN_MPA(0), "the parent's write: expected in its new own slot, got mpa %#llx",
		      (unsigned long long)res.mpa);
	__atomic_store_n((uint64_t *)res.host, 0x5678, __ATOMIC_RELEASE);
	/* The clone reads the page as it was. */
	struct shadow_vcpu *vc = sh_vcpu(child, 64, cr3);

	ck_assert_int_eq(shadow_vcpu_access_fault_in(vc, HG_VA + 0x5000, SHADOW_ACCESS_USER, &res), 0);
	ck_assert_msg(__atomic_load_n((uint64_t *)res.host, __ATOMIC_ACQUIRE) == 0x1234,
		      "the clone reads its page: expected 0x1234, got %#llx",
		      (unsigned long long)__atomic_load_n((uint64_t *)res.host, __ATOMIC_ACQUIRE));
	ck_assert_int_eq(shadow_vcpu_access_fault_in(vc, HG_VA + 0x9000, SHADOW_ACCESS_USER, &res), 0);
	ck_assert_uint_eq(hg_stats(&gm).huge_installs, 1);
	struct shadow_mmu_stats cst;

	shadow_mmu_stats(child, &cst);
	ck_assert_uint_eq(cst.huge_installs, 0);
	assert_mmu_check(gm.mmu);
	assert_mmu_check(child);
	assert_pool_check(gm.pool);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	shadow_mmu_destroy(child);
	gm_fini(&gm);
	hobj_fini(&own);
	sh_owns_fini(&owns);
}
END_TEST

/* ---- torture: vCPUs on 2 MiB leaves while pages go out and come back ---- */

#define HT_FRAMES 3			/* guest 2 MiB pages, frames 1..3 of RAM */
#define HT_PAGES (HT_FRAMES * SPTE_ENTRIES)	/* their RAM pages, from page 512 */
#define HT_VCPUS 2
#define HT_OPS_DEFAULT (TEST_TSAN ? 40000ul : 300000ul)

struct ht {
	struct gm gm;
	uint64_t cr3;
	uint64_t out[HT_PAGES];		/* atomic: odd = swapped out */
	uint64_t out_since[HT_PAGES];	/* atomic: clock stamp of the swap-out */
	uint64_t clock;			/* atomic */
	uint64_t accesses, swapouts;	/* atomic */
	unsigned long ops;
	double start_s;
	struct test_gate gate;
	struct test_failures fails;
};

static unsigned int ht_rnd(unsigned int *seed, unsigned int n)
{
	*seed = *seed * 1103515245u + 12345u;
	return (*seed >> 8) % n;
}

/* get_page: swap the page back in if it was out. */
static int ht_get_page(void *priv, uint64_t page, bool write)
{
	struct ht *t = priv;

	(void)write;
	if (page >= SPTE_ENTRIES && page < SPTE_ENTRIES + HT_PAGES)
		torture_swap_in(&t->out[page - SPTE_ENTRIES]);
	return 0;
}

static bool ht_is_resident(void *priv, uint64_t page)
{
	struct ht *t = priv;

	if (page < SPTE_ENTRIES || page >= SPTE_ENTRIES + HT_PAGES)
		return true;
	return !(__atomic_load_n(&t->out[page - SPTE_ENTRIES], __ATOMIC_ACQUIRE) & 1);
}

static const struct shadow_slot_ops ht_slot_ops = { .get_page = ht_get_page,
						     .is_resident = ht_is_resident };

/* Guest 2 MiB page k: dirty and writable (0), writable but clean (1: its
 * leaf is read-only until the first write sets D), read-only (2). */
static uint64_t ht_flags(unsigned int k)
{
	return k == 0 ? HG_RIGHTS : k == 1 ? (SPTE_WRITABLE | SPTE_USER) : SPTE_USER | SPTE_ACCESSED;
}

static void *ht_vcpu_body(void *p)
{
	struct ht *t = p;
	struct shadow_vcpu_config cfg = { .tlb_entries = 16 };
	unsigned int seed = 0x2545f491u ^ (unsigned int)(uintptr_t)&cfg;
	struct shadow_vcpu *v;
	int ret;

	ret = shadow_vcpu_create(t->gm.mmu, &cfg, &v);
	if (ret || (ret = shadow_vcpu_load_cr3(v, t->cr3))) {
		test_fail(&t->fails, "vcpu setup: %d", ret);
		test_gate_pass(&t->gate);
		return NULL;
	}
	test_gate_pass(&t->gate);
	for (unsigned long n = 0; test_torture_keep_going(&t->fails, t->start_s, "vcpu", n, t->ops); n++) {
		/* A few hot pages per frame, and the rest. */
		const unsigned int k = ht_rnd(&seed, HT_FRAMES);
		const unsigned int j = ht_rnd(&seed, 4) ? ht_rnd(&seed, 8) * 61 : ht_rnd(&seed, SPTE_ENTRIES);
		const unsigned int access = SHADOW_ACCESS_USER |
					    (k < 2 && ht_rnd(&seed, 3) == 0 ? SHADOW_ACCESS_WRITE : 0);
		const uint64_t va = HG_VA + k * SPTE_LEVEL_SIZE(2) + (uint64_t)j * GM_PAGE;
		const uint64_t page = SPTE_ENTRIES + (uint64_t)k * SPTE_ENTRIES + j;
		struct shadow_vcpu_result res;

		if (ht_rnd(&seed, 1024) == 0 && (ret = shadow_vcpu_flush(v))) {
			test_fail(&t->fails, "flush: %d", ret);
			break;
		}
		const uint64_t t1 = __atomic_load_n(&t->clock, __ATOMIC_SEQ_CST);

		ret = shadow_vcpu_access_fault_in(v, va, access, &res);
		__atomic_fetch_add(&t->accesses, 1, __ATOMIC_RELAXED);
		if (ret) {
			test_fail(&t->fails, "va %#llx access %#x: expected 0, got %d (ec %#x)",
				  (unsigned long long)va, access, ret, res.error_code);
			break;
		}
		if (res.mpa != page * GM_PAGE || (uint8_t *)res.host != t->gm.host + page * GM_PAGE) {
			test_fail(&t->fails, "va %#llx: expected page %llu, got mpa %#llx",
				  (unsigned long long)va, (unsigned long long)page,
				  (unsigned long long)res.mpa);
			break;
		}
		const uint64_t o = __atomic_load_n(&t->out[page - SPTE_ENTRIES], __ATOMIC_ACQUIRE);
		const uint64_t since = __atomic_load_n(&t->out_since[page - SPTE_ENTRIES], __ATOMIC_ACQUIRE);

		if ((o & 1) && since <= t1)
			test_fail(&t->fails, "va %#llx reached page %llu, swapped out (stamp %llu) before the access began (%llu)",
				  (unsigned long long)va, (unsigned long long)page, (unsigned long long)since,
				  (unsigned long long)t1);
	}
	shadow_vcpu_destroy(v);
	return NULL;
}

static void *ht_vcpu(void *p)
{
	return run_rcu_registered(ht_vcpu_body, p);
}

/* Swaps pages out: mostly a few pages of a run (a split, or 4 KiB
 * leaves), sometimes a whole run (the 2 MiB leaf cleared). */
static void *ht_swapper(void *p)
{
	struct ht *t = p;
	unsigned int seed = 0x7f4a7c15u;
	struct notifier_range range;

	notifier_thread_init();
	test_gate_pass(&t->gate);
	for (unsigned long op = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "swapper", op, t->ops / 8); op++) {
		const bool whole = op && ht_rnd(&seed, 16) == 0;
		const unsigned int first = whole ? ht_rnd(&seed, HT_FRAMES) * SPTE_ENTRIES : ht_rnd(&seed, HT_PAGES);
		unsigned int last = whole ? first + SPTE_ENTRIES - 1 : first + ht_rnd(&seed, 6);

		if (last >= HT_PAGES)
			last = HT_PAGES - 1;
		notifier_range_init(&range, t->gm.ram, NOTIFIER_EVENT_SWAPOUT, SPTE_ENTRIES + first,
				    SPTE_ENTRIES + last, NOTIFIER_RANGE_MAY_BLOCK);
		if (notifier_invalidate_range_start(&range)) {
			test_fail(&t->fails, "blockable invalidate_range_start failed");
			break;
		}
		torture_stamp_out(t->out, t->out_since, &t->clock, first, last);
		__atomic_fetch_add(&t->swapouts, 1, __ATOMIC_RELAXED);
		if (ht_rnd(&seed, 2))
			sched_yield();
		notifier_invalidate_range_end(&range);
		if (ht_rnd(&seed, 16) == 0)
			notifier_clear_young(t->gm.ram, SPTE_ENTRIES + first, SPTE_ENTRIES + last);
	}
	notifier_thread_exit();
	return NULL;
}

/* _i: bit 0 per-page delivery, bit 1 fault-around (a window of 16). */
START_TEST(test_torture_2m_leaves_never_reach_a_page_swapped_out)
{
	struct ht *t = calloc(1, sizeof(*t));
	pthread_t vt[HT_VCPUS], st;
	struct shadow_mmu_stats stats;

	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(notifier_thread_init(), 0);
	test_failures_init(&t->fails);
	test_gate_init(&t->gate, HT_VCPUS + 1);
	t->ops = test_env_ulong("UMBRA_SHADOW_TORTURE_OPS", HT_OPS_DEFAULT);
	gm_init_core(&t->gm, HG_RAM_PAGES, NULL, 256, 0, 0, _i & 2 ? 16 : 0, NULL, &ht_slot_ops, t, true);
	ck_assert_int_eq(notifier_object_set_mode(t->gm.ram, _i & 1 ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE),
			 0);
	t->cr3 = gm_table(&t->gm);
	for (unsigned int k = 0; k < HT_FRAMES; k++)
		gm_map(&t->gm, t->cr3, HG_VA + k * SPTE_LEVEL_SIZE(2), (k + 1) * SPTE_LEVEL_SIZE(2), 2,
		       ht_flags(k));
	/* Every run resident: the first fault in each is a 2 MiB leaf. */
	struct shadow_vcpu *v0 = sh_vcpu(t->gm.mmu, 16, t->cr3);

	for (unsigned int k = 0; k < HT_FRAMES; k++)
		ck_assert_int_eq(hg_touch(v0, HG_VA + k * SPTE_LEVEL_SIZE(2), SHADOW_ACCESS_USER), 0);
	ck_assert_uint_eq(hg_stats(&t->gm).huge_installs, HT_FRAMES);
	t->start_s = test_now_s();
	for (unsigned int k = 0; k < HT_VCPUS; k++)
		ck_assert_int_eq(pthread_create(&vt[k], NULL, ht_vcpu, t), 0);
	ck_assert_int_eq(pthread_create(&st, NULL, ht_swapper, t), 0);
	for (unsigned int k = 0; k < HT_VCPUS; k++)
		pthread_join(vt[k], NULL);
	pthread_join(st, NULL);
	test_failures_assert_none(&t->fails);
	assert_mmu_check(t->gm.mmu);
	shadow_vcpu_destroy(v0);
	ck_assert_uint_eq(t->accesses, HT_VCPUS * t->ops);
	ck_assert_uint_eq(t->swapouts, t->ops / 8);
	shadow_mmu_stats(t->gm.mmu, &stats);
	printf("huge torture %d: %llu 2 MiB leaves, %llu splits, %llu faults\n", _i,
	       (unsigned long long)stats.huge_installs, (unsigned long long)stats.huge_splits,
	       (unsigned long long)stats.faults);
	/* The swapper's first swap-out takes a few pages of a run that a
	 * 2 MiB leaf maps: a split. */
	ck_assert_msg(stats.huge_splits >= 1, "expected at least 1 split, got %llu",
		      (unsigned long long)stats.huge_splits);
	gm_fini(&t->gm);
	test_gate_exit(&t->gate);
	test_failures_exit(&t->fails);
	free(t);
	notifier_thread_exit();
}
END_TEST

void shadow_huge_add_tcase(Suite *s)
{
	TCase *tc = tcase_create("huge_leaf");

	tcase_add_test(tc, test_guest_2m_page_over_a_whole_run_is_one_2m_leaf);
	tcase_add_loop_test(tc, test_2m_leaf_is_refused_where_the_backing_is_not_a_whole_resident_run, 0,
			    HG_NR);
	tcase_add_loop_test(tc, test_invalidating_part_of_a_2m_leaf_splits_it_and_keeps_the_rest_mapped,
			    0, 2);
	tcase_add_test(tc, test_invalidating_the_whole_run_clears_the_2m_leaf_and_it_faults_back);
	tcase_add_test(tc, test_a_write_to_a_clean_2m_page_makes_its_leaf_writable);
	tcase_add_test(tc, test_guest_moving_its_2m_page_drops_the_leaf_at_invlpg);
	tcase_add_test(tc, test_clear_young_tracks_a_2m_leaf_whole);
	tcase_add_test(tc, test_a_clone_clears_2m_leaves_and_copies_on_write_page_by_page);
	tcase_add_loop_test(tc, test_torture_2m_leaves_never_reach_a_page_swapped_out, 0, 4);
	/* Each torture run fails itself at TEST_TORTURE_LIMIT_S. */
	tcase_set_timeout(tc, TEST_TORTURE_LIMIT_S + 60);
	suite_add_tcase(s, tc);
}
