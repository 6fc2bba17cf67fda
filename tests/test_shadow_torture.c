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
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

struct torture {
	struct gm gm;
	uint64_t cr3[NR_CR3];
	uint64_t pte_gpa[NR_VA];
	uint64_t ver[NR_VA];			/* atomic */
	uint32_t target[NR_VA][RING];		/* target[i][version % RING] (atomic) */
	uint64_t out[NR_DATA];			/* atomic: odd = swapped out */
	uint64_t out_since[NR_DATA];		/* atomic: clock stamp of the swapout */
	uint64_t clock;				/* atomic */
	bool stop;				/* atomic */
	uint64_t accesses, guest_faults, swapins, remaps, swapouts; /* atomic */
	struct test_failures fails;
};

static void oracle_fail(struct torture *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void oracle_fail(struct torture *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	test_failures_vadd(&t->fails, fmt, ap);
	va_end(ap);
	__atomic_store_n(&t->stop, true, __ATOMIC_RELAXED);
}

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
	uint64_t p = page - GM_DATA / GM_PAGE, o;

	if (page < GM_DATA / GM_PAGE || p >= NR_DATA)
		return 0;
	o = __atomic_load_n(&t->out[p], __ATOMIC_ACQUIRE);
	if ((o & 1) && __atomic_compare_exchange_n(&t->out[p], &o, o + 1, false, __ATOMIC_ACQ_REL,
						   __ATOMIC_ACQUIRE))
		__atomic_fetch_add(&t->swapins, 1, __ATOMIC_RELAXED);
	return 0;
}

static const struct shadow_slot_ops torture_slot_ops = { .get_page = torture_get_page };

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
			oracle_fail(t, "va %u reached mpa %#llx outside the data pages", i,
			     (unsigned long long)res->mpa);
			return;
		}
		if ((uint8_t *)res->host != t->gm.host + res->mpa) {
			oracle_fail(t, "va %u: host pointer does not match mpa", i);
			return;
		}
		for (uint64_t k = lo; k <= hi && !ok; k++) {
			uint32_t tg = __atomic_load_n(&t->target[i][k % RING], __ATOMIC_ACQUIRE);

			ok = target_allows(tg, access) && (tg & 0xffff) - 1 == p;
		}
		if (!ok && !ring_overwritten(t, i, lo)) {
			oracle_fail(t, "va %u access %#x reached data page %llu, not a target of versions %llu..%llu",
			     i, access, (unsigned long long)p, (unsigned long long)lo,
			     (unsigned long long)hi);
			return;
		}
		uint64_t o = __atomic_load_n(&t->out[p], __ATOMIC_ACQUIRE);
		uint64_t since = __atomic_load_n(&t->out_since[p], __ATOMIC_ACQUIRE);

		if ((o & 1) && since <= t1)
			oracle_fail(t, "va %u reached data page %llu, swapped out (stamp %llu) before the access began (%llu)",
			     i, (unsigned long long)p, (unsigned long long)since,
			     (unsigned long long)t1);
		return;
	}
	for (uint64_t k = lo; k <= hi && !ok; k++)
		ok = !target_allows(__atomic_load_n(&t->target[i][k % RING], __ATOMIC_ACQUIRE), access);
	if (!ok && !ring_overwritten(t, i, lo))
		oracle_fail(t, "va %u access %#x: guest fault, but versions %llu..%llu all allow it", i, access,
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
		oracle_fail(t, "vcpu %u: setup failed: %d", a->id, ret);
		return NULL;
	}
	while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		unsigned int i = rnd(&seed, NR_VA);
		unsigned int access = SHADOW_ACCESS_USER | (rnd(&seed, 3) == 0 ? SHADOW_ACCESS_WRITE : 0);
		struct shadow_vcpu_result res;
		uint32_t ec;

		if (rnd(&seed, 256) == 0) {
			cur = rnd(&seed, NR_CR3);
			ret = shadow_vcpu_load_cr3(v, t->cr3[cur]);
			if (ret) {
				oracle_fail(t, "vcpu %u: load_cr3: %d", a->id, ret);
				break;
			}
		}
		if (rnd(&seed, 512) == 0 && (ret = shadow_vcpu_flush(v))) {
			oracle_fail(t, "vcpu %u: flush: %d", a->id, ret);
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
			__atomic_fetch_add(&t->guest_faults, 1, __ATOMIC_RELAXED);
			check_result(t, i, access, v1, v2, t1, NULL);
		} else {
			oracle_fail(t, "vcpu %u: va %u: unexpected %d", a->id, i, ret);
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

	while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		unsigned int i = rnd(&seed, NR_VA), r = rnd(&seed, 10);
		uint32_t tg = r == 0 ? T_NONE : (rnd(&seed, NR_DATA) + 1) | (r == 1 ? 0 : T_WRITABLE);
		uint64_t v = __atomic_load_n(&t->ver[i], __ATOMIC_RELAXED);

		/* Publish the new target before the version says it may be used. */
		__atomic_store_n(&t->target[i][(v / 2 + 1) % RING], tg, __ATOMIC_RELEASE);
		__atomic_store_n(&t->ver[i], v + 1, __ATOMIC_SEQ_CST);
		gm_write(&t->gm, t->pte_gpa[i], pte_of(tg));
		for (int c = 0; c < NR_CR3; c++)
			shadow_mmu_invlpg(t->gm.mmu, t->cr3[c], va_of(i));
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

	notifier_thread_init();
	while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		unsigned int first = rnd(&seed, NR_DATA), n = 1 + rnd(&seed, 4);
		unsigned int last = first + n - 1 < NR_DATA ? first + n - 1 : NR_DATA - 1;

		if (rnd(&seed, 16) == 0) {
			notifier_clear_young(t->gm.ram, GM_DATA / GM_PAGE + first,
					     GM_DATA / GM_PAGE + last);
			continue;
		}
		notifier_range_init(&range, t->gm.ram, NOTIFIER_EVENT_SWAPOUT, GM_DATA / GM_PAGE + first,
				    GM_DATA / GM_PAGE + last, NOTIFIER_RANGE_MAY_BLOCK);
		if (notifier_invalidate_range_start(&range)) {
			oracle_fail(t, "blockable invalidate_range_start failed");
			break;
		}
		/* Every subscriber unmapped: the pages are now out. */
		for (unsigned int q = first; q <= last; q++) {
			uint64_t o = __atomic_load_n(&t->out[q], __ATOMIC_ACQUIRE);
			uint64_t stamp = __atomic_add_fetch(&t->clock, 1, __ATOMIC_SEQ_CST);

			__atomic_store_n(&t->out_since[q], stamp, __ATOMIC_RELEASE);
			if (!(o & 1))
				__atomic_store_n(&t->out[q], o + 1, __ATOMIC_SEQ_CST);
		}
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

	while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		unsigned int i = rnd(&seed, NR_VA);
		uint32_t ec;
		int ret = shadow_mmu_fault(t->gm.mmu, t->cr3[rnd(&seed, NR_CR3)], va_of(i),
					   SHADOW_ACCESS_USER, &ec);

		if (ret < 0 && ret != -ENOENT) /* -ENOENT: that root is not cached now */
			oracle_fail(t, "prefault: unexpected %d", ret);
		sched_yield();
	}
	return NULL;
}

static double seconds_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double torture_seconds(void)
{
	const char *s = getenv("UMBRA_SHADOW_TORTURE_SECONDS");
	double v = s ? atof(s) : 0;

	return v > 0 ? v : 4.0;
}

START_TEST(test_torture_vcpus_never_reach_a_stale_page)
{
	struct torture *t = calloc(1, sizeof(*t));
	struct vcpu_arg args[NR_VCPUS];
	pthread_t vt[NR_VCPUS], rt, st, ft;

	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(notifier_thread_init(), 0);
	test_failures_init(&t->fails);
	/* 3 roots cached for 4 address spaces: CR3 loads evict and re-sync. */
	gm_init_full(&t->gm, 1024, NULL, 512, 3, NULL, &torture_slot_ops, t);
	ck_assert_int_eq(notifier_object_set_mode(t->gm.ram, _i ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE),
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

	for (unsigned int k = 0; k < NR_VCPUS; k++) {
		args[k] = (struct vcpu_arg){ .t = t, .id = k };
		ck_assert_int_eq(pthread_create(&vt[k], NULL, vcpu_thread, &args[k]), 0);
	}
	ck_assert_int_eq(pthread_create(&rt, NULL, remap_thread, t), 0);
	ck_assert_int_eq(pthread_create(&st, NULL, swap_thread, t), 0);
	ck_assert_int_eq(pthread_create(&ft, NULL, fault_thread, t), 0);
	double end = seconds_now() + torture_seconds();
	while (seconds_now() < end && !__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	__atomic_store_n(&t->stop, true, __ATOMIC_RELAXED);
	for (unsigned int k = 0; k < NR_VCPUS; k++)
		pthread_join(vt[k], NULL);
	pthread_join(rt, NULL);
	pthread_join(st, NULL);
	pthread_join(ft, NULL);

	ck_assert_msg(t->fails.count == 0, "%d violations; first: %s", t->fails.count, t->fails.first);
	int ret = shadow_mmu_check(t->gm.mmu);
	ck_assert_msg(ret == 0, "shadow_mmu_check after the torture: expected 0, got %d", ret);
	struct shadow_mmu_stats s;
	shadow_mmu_stats(t->gm.mmu, &s);
	/* The run must have exercised what it claims to. */
	ck_assert_msg(t->accesses > 1000 && t->remaps > 100 && t->swapouts > 100 && t->swapins > 10 &&
			      t->guest_faults > 10 && s.invalidations > 100 && s.fixed > 100 &&
			      s.zapped > 100,
		      "too little happened: %llu accesses, %llu remaps, %llu swapouts, %llu swapins, "
		      "%llu guest faults, %llu invalidations, %llu fixed, %llu zapped",
		      (unsigned long long)t->accesses, (unsigned long long)t->remaps,
		      (unsigned long long)t->swapouts, (unsigned long long)t->swapins,
		      (unsigned long long)t->guest_faults, (unsigned long long)s.invalidations,
		      (unsigned long long)s.fixed, (unsigned long long)s.zapped);
	gm_fini(&t->gm); /* asserts every table freed */
	test_failures_exit(&t->fails);
	free(t);
	notifier_thread_exit();
}
END_TEST

Suite *shadow_torture_suite(void)
{
	Suite *s = suite_create("shadow_torture");
	TCase *tc = tcase_create("torture");

	tcase_set_timeout(tc, 600);
	/* _i = 0: range delivery; 1: per-page invalidate_page delivery. */
	tcase_add_loop_test(tc, test_torture_vcpus_never_reach_a_stale_page, 0, 2);
	suite_add_tcase(s, tc);
	return s;
}
