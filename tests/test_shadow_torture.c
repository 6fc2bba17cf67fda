/*
 * shadow/ under concurrency: software vCPUs access guest memory while other
 * threads change the guest's page tables (with invlpg on every address
 * space, as a guest's shootdown does), swap backing pages out through the
 * notifier (both delivery modes), clear young bits and resolve faults.
 *
 * The oracle, checked after every access:
 *  - guest tables: each virtual page i has a version ver[i] (odd while the
 *    remapper changes its PTE and has not finished its invlpg) and a ring of
 *    the targets each version mapped.  An access that began at v1 and ended
 *    at v2 must reach a target of a version in [v1/2, (v2+1)/2] (or fault,
 *    if one of them forbids the access);
 *  - swapout: when invalidate_range_start() returned, the swapper stamps each
 *    page out (out[p] odd, out_since[p] = ++clock).  An access that read the
 *    clock as t1 before it began must not reach a page that is still out
 *    with out_since <= t1: that page's invalidation had started (and been
 *    acknowledged) before the access began.  get_page() swaps pages back in.
 *
 * Size: every thread runs a fixed number of operations (VCPU_OPS accesses per
 * vCPU, and the others in proportion; UMBRA_SHADOW_TORTURE_OPS sets
 * VCPU_OPS), behind a common start gate; the run fails if they take longer
 * than TEST_TORTURE_LIMIT_S.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umbra/shadow.h"
#include "test_shadow_util.h"
#include "tests.h"

#define NR_VA 64		/* virtual pages */
#define NR_DATA 64		/* data pages they map */
#define NR_CR3 4		/* address spaces sharing the same PDPT */
#define NR_VCPUS 3
#define RING 64
#define VA_BASE 0x0000004000000000ull /* PML4 index 0, PDPT index 256 */

/* A target: 0 = not present; else data page + 1, with bit 16 = writable. */
#define T_NONE 0u
#define T_WRITABLE (1u << 16)

/* Operations per thread, as a share of a vCPU's accesses (with these shares
 * the threads end at about the same time); under TSan the vCPUs do fewer. */
#define VCPU_OPS_DEFAULT (TEST_TSAN ? 150000ul : 1000000ul)
#define REMAP_SHARE 4		/* remaps: VCPU_OPS / 4 */
#define SWAP_SHARE 8		/* swapouts and clear_youngs: VCPU_OPS / 8 */
#define FAULT_SHARE 8		/* prefaults: VCPU_OPS / 8 */

struct torture {
	struct gm gm;
	uint64_t cr3[NR_CR3];
	uint64_t pte_gpa[NR_VA];
	uint64_t ver[NR_VA];			/* atomic */
	uint32_t target[NR_VA][RING];		/* target[i][version % RING] (atomic) */
	uint64_t out[NR_DATA];			/* atomic: odd = swapped out */
	uint64_t out_since[NR_DATA];		/* atomic: clock stamp of the swapout */
	uint64_t clock;				/* atomic */
	uint64_t accesses, remaps, swapouts, young, prefaults; /* atomic */
	unsigned long vcpu_ops;			/* operations per vCPU thread */
	double start_s;				/* for TEST_TORTURE_LIMIT_S */
	struct test_gate gate;			/* every thread passes it first */
	struct test_failures fails;		/* the first one stops every thread */
};

static uint64_t va_of(unsigned int i)
{
	/* Two page tables: even pages in the first 2 MiB, odd in the second. */
	return VA_BASE + (uint64_t)(i & 1) * (2ull << 20) + (uint64_t)(i / 2) * GM_PAGE;
}

static uint64_t data_gpa(unsigned int p)
{
	return GM_DATA + (uint64_t)p * GM_PAGE;
}

static uint64_t pte_of(uint32_t target)
{
	if (target == T_NONE)
		return 0;
	return data_gpa((target & 0xffff) - 1) | SPTE_PRESENT | SPTE_USER |
	       ((target & T_WRITABLE) ? SPTE_WRITABLE : 0);
}

static unsigned int rnd(unsigned int *seed, unsigned int n)
{
	*seed = *seed * 1103515245u + 12345u;
	return (*seed >> 8) % n;
}

/* get_page: swap the page back in if it was out. */
static int torture_get_page(void *priv, uint64_t page, bool write)
{
	struct torture *t = priv;
	uint64_t p = page - GM_DATA / GM_PAGE;

	if (page < GM_DATA / GM_PAGE || p >= NR_DATA)
		return 0;
	torture_swap_in(&t->out[p]);
	return 0;
}

/* is_resident (fault-around): not swapped out. */
static bool torture_is_resident(void *priv, uint64_t page)
{
	struct torture *t = priv;
	uint64_t p = page - GM_DATA / GM_PAGE;

	if (page < GM_DATA / GM_PAGE || p >= NR_DATA)
		return true;
	return !(__atomic_load_n(&t->out[p], __ATOMIC_ACQUIRE) & 1);
}

static const struct shadow_slot_ops torture_slot_ops = { .get_page = torture_get_page,
							  .is_resident = torture_is_resident };

/* Does target @tg allow @access (always a user access here)? */
static bool target_allows(uint32_t tg, unsigned int access)
{
	if (tg == T_NONE)
		return false;
	return !(access & SHADOW_ACCESS_WRITE) || (tg & T_WRITABLE);
}

struct vcpu_arg {
	struct torture *t;
	unsigned int id;
};

/*
 * The ring slot of version k is reused by version k + RING, whose target the
 * remapper stores while ver[i] is still 2 (k + RING - 1).  If it got that far
 * while we read the ring (a long preemption), what we read may not be
 * version lo's target: do not judge.
 */
static bool ring_overwritten(struct torture *t, unsigned int i, uint64_t lo)
{
	uint64_t v3 = __atomic_load_n(&t->ver[i], __ATOMIC_SEQ_CST);

	return (v3 >> 1) + 1 >= lo + RING;
}

static void check_result(struct torture *t, unsigned int i, unsigned int access, uint64_t v1,
			 uint64_t v2, uint64_t t1, const struct shadow_vcpu_result *res)
{
	uint64_t lo = v1 >> 1, hi = (v2 + 1) >> 1;
	bool ok = false;

	if (hi + 1 - lo >= RING)
		return; /* too many changes during one access to judge: skip */
	if (res) {
		uint64_t p = (res->mpa - GM_DATA) / GM_PAGE;

		if (res->mpa < GM_DATA || p >= NR_DATA) {
			test_fail(&t->fails, "va %u reached mpa %#llx outside the data pages", i,
			     (unsigned long long)res->mpa);
			return;
		}
		if ((uint8_t *)res->host != t->gm.host + res->mpa) {
			test_fail(&t->fails, "va %u: host pointer does not match mpa", i);
			return;
		}
		for (uint64_t k = lo; k <= hi && !ok; k++) {
			uint32_t tg = __atomic_load_n(&t->target[i][k % RING], __ATOMIC_ACQUIRE);

			ok = target_allows(tg, access) && (tg & 0xffff) - 1 == p;
		}
		if (!ok && !ring_overwritten(t, i, lo)) {
			test_fail(&t->fails, "va %u access %#x reached data page %llu, not a target of versions %llu..%llu",
			     i, access, (unsigned long long)p, (unsigned long long)lo,
			     (unsigned long long)hi);
			return;
		}
		uint64_t o = __atomic_load_n(&t->out[p], __ATOMIC_ACQUIRE);
		uint64_t since = __atomic_load_n(&t->out_since[p], __ATOMIC_ACQUIRE);

		if ((o & 1) && since <= t1)
			test_fail(&t->fails, "va %u reached data page %llu, swapped out (stamp %llu) before the access began (%llu)",
			     i, (unsigned long long)p, (unsigned long long)since,
			     (unsigned long long)t1);
		return;
	}
	for (uint64_t k = lo; k <= hi && !ok; k++)
		ok = !target_allows(__atomic_load_n(&t->target[i][k % RING], __ATOMIC_ACQUIRE), access);
	if (!ok && !ring_overwritten(t, i, lo))
		test_fail(&t->fails, "va %u access %#x: guest fault, but versions %llu..%llu all allow it", i, access,
		     (unsigned long long)lo, (unsigned long long)hi);
}

static void *vcpu_thread_body(void *p)
{
	struct vcpu_arg *a = p;
	struct torture *t = a->t;
	struct shadow_vcpu_config cfg = { .tlb_entries = 8 + 8 * a->id };
	struct shadow_vcpu *v;
	unsigned int seed = 0x9e3779b9u * (a->id + 1);
	unsigned int cur = a->id % NR_CR3;
	int ret;

	ret = shadow_vcpu_create(t->gm.mmu, &cfg, &v);
	if (ret || (ret = shadow_vcpu_load_cr3(v, t->cr3[cur]))) {
		test_fail(&t->fails, "vcpu %u: setup failed: %d", a->id, ret);
		test_gate_pass(&t->gate);	/* the others wait for every thread */
		return NULL;
	}
	test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "vcpu", n, t->vcpu_ops); n++) {
		unsigned int i = rnd(&seed, NR_VA);
		unsigned int access = SHADOW_ACCESS_USER | (rnd(&seed, 3) == 0 ? SHADOW_ACCESS_WRITE : 0);
		struct shadow_vcpu_result res;
		uint32_t ec;

		if (rnd(&seed, 256) == 0) {
			cur = rnd(&seed, NR_CR3);
			ret = shadow_vcpu_load_cr3(v, t->cr3[cur]);
			if (ret) {
				test_fail(&t->fails, "vcpu %u: load_cr3: %d", a->id, ret);
				break;
			}
		}
		if (rnd(&seed, 512) == 0 && (ret = shadow_vcpu_flush(v))) {
			test_fail(&t->fails, "vcpu %u: flush: %d", a->id, ret);
			break;
		}
		uint64_t t1 = __atomic_load_n(&t->clock, __ATOMIC_SEQ_CST);
		uint64_t v1 = __atomic_load_n(&t->ver[i], __ATOMIC_SEQ_CST);

		for (;;) {
			ret = shadow_vcpu_access(v, va_of(i), access, &res);
			if (ret != -EFAULT)
				break;
			ret = shadow_mmu_fault(t->gm.mmu, t->cr3[cur], va_of(i), access, &ec);
			if (ret != SHADOW_FAULT_FIXED)
				break;
		}
		uint64_t v2 = __atomic_load_n(&t->ver[i], __ATOMIC_SEQ_CST);

		__atomic_fetch_add(&t->accesses, 1, __ATOMIC_RELAXED);
		if (ret == 0) {
			if (access & SHADOW_ACCESS_WRITE)
				__atomic_store_n((uint64_t *)res.host, i, __ATOMIC_RELAXED);
			else
				(void)__atomic_load_n((uint64_t *)res.host, __ATOMIC_RELAXED);
			check_result(t, i, access, v1, v2, t1, &res);
		} else if (ret == SHADOW_FAULT_GUEST) {
			check_result(t, i, access, v1, v2, t1, NULL);
		} else {
			test_fail(&t->fails, "vcpu %u: va %u: unexpected %d", a->id, i, ret);
		}
	}
	shadow_vcpu_destroy(v);
	return NULL;
}

static void *vcpu_thread(void *p)
{
	return run_rcu_registered(vcpu_thread_body, p);
}

/* Changes PTEs like a guest: write the entry, then invlpg in every address
 * space (the guest's shootdown), then the version is stable again. */
static void *remap_thread(void *p)
{
	struct torture *t = p;
	unsigned int seed = 0x51ed27u;
	unsigned long total = t->vcpu_ops / REMAP_SHARE;

	test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "remapper", n, total); n++) {
		unsigned int i = rnd(&seed, NR_VA), r = rnd(&seed, 10);
		uint32_t tg = r == 0 ? T_NONE : (rnd(&seed, NR_DATA) + 1) | (r == 1 ? 0 : T_WRITABLE);
		uint64_t v = __atomic_load_n(&t->ver[i], __ATOMIC_RELAXED);

		/* Publish the new target before the version says it may be used. */
		__atomic_store_n(&t->target[i][(v / 2 + 1) % RING], tg, __ATOMIC_RELEASE);
		__atomic_store_n(&t->ver[i], v + 1, __ATOMIC_SEQ_CST);
		gm_write(&t->gm, t->pte_gpa[i], pte_of(tg));
		for (int c = 0; c < NR_CR3; c++)
			shadow_mmu_invlpg(t->gm.mmu, NULL, t->cr3[c], va_of(i));
		__atomic_store_n(&t->ver[i], v + 2, __ATOMIC_SEQ_CST);
		__atomic_fetch_add(&t->remaps, 1, __ATOMIC_RELAXED);
		if (rnd(&seed, 4) == 0)
			sched_yield();
	}
	return NULL;
}

/* Swaps backing pages out through the notifier, in the object's mode. */
static void *swap_thread(void *p)
{
	struct torture *t = p;
	unsigned int seed = 0xabcdefu;
	struct notifier_range range;
	unsigned long total = t->vcpu_ops / SWAP_SHARE;

	notifier_thread_init();
	test_gate_pass(&t->gate);
	for (unsigned long op = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "swapper", op, total); op++) {
		unsigned int first = rnd(&seed, NR_DATA), n = 1 + rnd(&seed, 4);
		unsigned int last = first + n - 1 < NR_DATA ? first + n - 1 : NR_DATA - 1;

		if (rnd(&seed, 16) == 0) {
			notifier_clear_young(t->gm.ram, GM_DATA / GM_PAGE + first,
					     GM_DATA / GM_PAGE + last);
			__atomic_fetch_add(&t->young, 1, __ATOMIC_RELAXED);
			continue;
		}
		notifier_range_init(&range, t->gm.ram, NOTIFIER_EVENT_SWAPOUT, GM_DATA / GM_PAGE + first,
				    GM_DATA / GM_PAGE + last, NOTIFIER_RANGE_MAY_BLOCK);
		if (notifier_invalidate_range_start(&range)) {
			test_fail(&t->fails, "blockable invalidate_range_start failed");
			break;
		}
		/* Every subscriber unmapped: the pages are now out. */
		torture_stamp_out(t->out, t->out_since, &t->clock, first, last);
		__atomic_fetch_add(&t->swapouts, 1, __ATOMIC_RELAXED);
		if (rnd(&seed, 2))
			sched_yield();
		notifier_invalidate_range_end(&range);
	}
	notifier_thread_exit();
	return NULL;
}

/* Resolves faults nobody took: prefaults random pages in random spaces. */
static void *fault_thread(void *p)
{
	struct torture *t = p;
	unsigned int seed = 0x1234567u;
	unsigned long total = t->vcpu_ops / FAULT_SHARE;

	test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "prefaulter", n, total); n++) {
		unsigned int i = rnd(&seed, NR_VA);
		uint32_t ec;
		int ret = shadow_mmu_fault(t->gm.mmu, t->cr3[rnd(&seed, NR_CR3)], va_of(i),
					   SHADOW_ACCESS_USER, &ec);

		if (ret < 0 && ret != -ENOENT) /* -ENOENT: that root is not cached now */
			test_fail(&t->fails, "prefault: unexpected %d", ret);
		__atomic_fetch_add(&t->prefaults, 1, __ATOMIC_RELAXED);
		sched_yield();
	}
	return NULL;
}

START_TEST(test_torture_vcpus_never_reach_a_stale_page)
{
	struct torture *t = calloc(1, sizeof(*t));
	struct vcpu_arg args[NR_VCPUS];
	pthread_t vt[NR_VCPUS], rt, st, ft;

	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(notifier_thread_init(), 0);
	test_failures_init(&t->fails);
	test_gate_init(&t->gate, NR_VCPUS + 3);
	t->vcpu_ops = test_env_ulong("UMBRA_SHADOW_TORTURE_OPS", VCPU_OPS_DEFAULT);
	/* 3 roots cached for 4 address spaces: CR3 loads evict and re-sync.
	 * _i: bit 0 per-page delivery, bit 1 fault-around (a window of 16). */
	gm_init_core(&t->gm, 1024, NULL, 512, 3, 0, _i & 2 ? 16 : 0, NULL, &torture_slot_ops, t, false);
	ck_assert_int_eq(notifier_object_set_mode(t->gm.ram, _i & 1 ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE),
			 0);
	for (int c = 0; c < NR_CR3; c++)
		t->cr3[c] = gm_table(&t->gm);
	/* The PML4s share one PDPT (like kernel mappings shared by processes). */
	uint64_t pdpt_entry = gm_entry(&t->gm, t->cr3[0], VA_BASE, 3);
	uint64_t pml4e = gm_read(&t->gm, t->cr3[0] + SPTE_INDEX(VA_BASE, 4) * 8);
	(void)pdpt_entry;
	for (int c = 1; c < NR_CR3; c++)
		gm_write(&t->gm, t->cr3[c] + SPTE_INDEX(VA_BASE, 4) * 8, pml4e);
	for (unsigned int i = 0; i < NR_VA; i++) {
		uint32_t tg = (i % NR_DATA + 1) | T_WRITABLE;

		t->pte_gpa[i] = gm_entry(&t->gm, t->cr3[0], va_of(i), 1);
		t->target[i][0] = tg;
		gm_write(&t->gm, t->pte_gpa[i], pte_of(tg));
	}

	t->start_s = test_now_s();
	for (unsigned int k = 0; k < NR_VCPUS; k++) {
		args[k] = (struct vcpu_arg){ .t = t, .id = k };
		ck_assert_int_eq(pthread_create(&vt[k], NULL, vcpu_thread, &args[k]), 0);
	}
	ck_assert_int_eq(pthread_create(&rt, NULL, remap_thread, t), 0);
	ck_assert_int_eq(pthread_create(&st, NULL, swap_thread, t), 0);
	ck_assert_int_eq(pthread_create(&ft, NULL, fault_thread, t), 0);
	for (unsigned int k = 0; k < NR_VCPUS; k++)
		pthread_join(vt[k], NULL);
	pthread_join(rt, NULL);
	pthread_join(st, NULL);
	pthread_join(ft, NULL);

	test_failures_assert_none(&t->fails);
	int ret = shadow_mmu_check(t->gm.mmu);
	ck_assert_msg(ret == 0, "shadow_mmu_check after the torture: expected 0, got %d", ret);
	/* Every thread ran all its operations. */
	ck_assert_msg(t->accesses == NR_VCPUS * t->vcpu_ops, "expected %lu accesses, got %llu",
		      NR_VCPUS * t->vcpu_ops, (unsigned long long)t->accesses);
	ck_assert_msg(t->remaps == t->vcpu_ops / REMAP_SHARE, "expected %lu remaps, got %llu",
		      t->vcpu_ops / REMAP_SHARE, (unsigned long long)t->remaps);
	ck_assert_msg(t->swapouts + t->young == t->vcpu_ops / SWAP_SHARE,
		      "expected %lu swapouts and clear_youngs, got %llu",
		      t->vcpu_ops / SWAP_SHARE, (unsigned long long)(t->swapouts + t->young));
	ck_assert_msg(t->prefaults == t->vcpu_ops / FAULT_SHARE, "expected %lu prefaults, got %llu",
		      t->vcpu_ops / FAULT_SHARE, (unsigned long long)t->prefaults);
	gm_fini(&t->gm); /* asserts every table freed */
	test_gate_exit(&t->gate);
	test_failures_exit(&t->fails);
	free(t);
	notifier_thread_exit();
}
END_TEST

Suite *shadow_torture_suite(void)
{
	Suite *s = suite_create("shadow_torture");
	TCase *tc = tcase_create("torture");

	/* Each run fails itself at TEST_TORTURE_LIMIT_S; Check's timeout is a
	 * backstop for a hang. */
	tcase_set_timeout(tc, TEST_TORTURE_LIMIT_S + 60);
	/* _i = 0: range delivery; 1: per-page invalidate_page delivery. */
	tcase_add_loop_test(tc, test_torture_vcpus_never_reach_a_stale_page, 0, 4);
	suite_add_tcase(s, tc);
	return s;
}
