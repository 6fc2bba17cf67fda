/*
 * Helpers shared by the shadow suites (test_shadow*.c): a "guest machine"
 * with RAM in a memory object (identity P2M, machine address = guest
 * physical), a shadow MMU, a builder for the guest's own page tables, the
 * software vCPUs the tests run and the invariant check they assert.
 * Header-only (static inline) so that each suite stays one file.
 */
#ifndef UMBRA_TEST_SHADOW_UTIL_H
#define UMBRA_TEST_SHADOW_UTIL_H

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "umbra/notifier.h"
#include "umbra/shadow.h"
#include "spte.h"
#include "test_util.h"

#define GM_PAGE 4096ull
/* Guest page tables are allocated from this gpa upwards; data pages lie above
 * GM_DATA. */
#define GM_TABLES 0x1000ull
#define GM_DATA 0x100000ull

struct gm {
	struct shadow_pool *pool;
	struct notifier_object *ram;
	uint8_t *host;
	uint64_t npages;
	struct shadow_mmu *mmu;
	int slot;
	uint64_t next_table;
	bool own_pool;
};

static inline void gm_init_core(struct gm *gm, uint64_t ram_pages, struct shadow_pool *pool,
				size_t pool_pages, unsigned int nr_roots, unsigned long max_tables,
				unsigned int fault_around, const struct shadow_paging_mode *mode,
				const struct shadow_slot_ops *ops, void *priv, bool huge_leaves)
{
	struct shadow_mmu_config cfg = { 0 };
	struct shadow_slot slot = { 0 };

	memset(gm, 0, sizeof(*gm));
	gm->npages = ram_pages;
	gm->host = mmap(NULL, ram_pages * GM_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			-1, 0);
	ck_assert_ptr_ne(gm->host, MAP_FAILED);
	ck_assert_int_eq(notifier_object_create("guest-ram", ram_pages, &gm->ram), 0);
	if (pool) {
		gm->pool = pool;
	} else {
		ck_assert_int_eq(shadow_pool_create(pool_pages, &gm->pool), 0);
		gm->own_pool = true;
	}
	cfg.pool = gm->pool;
	cfg.max_gpa = ram_pages * GM_PAGE;
	cfg.nr_roots = nr_roots;
	cfg.max_tables = max_tables;
	cfg.fault_around = fault_around;
	cfg.mode = mode ? *mode : shadow_default_mode;
	cfg.huge_leaves = huge_leaves;
	ck_assert_int_eq(shadow_mmu_create(&cfg, &gm->mmu), 0);
	slot.obj = gm->ram;
	slot.mpa = 0;
	slot.host = gm->host;
	slot.ops = ops;
	slot.priv = priv;
	ck_assert_int_eq(shadow_mmu_add_slot(gm->mmu, &slot, &gm->slot), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm->mmu, 0, ram_pages, gm->slot, 0), 0);
	gm->next_table = GM_TABLES;
}

static inline void gm_init_full(struct gm *gm, uint64_t ram_pages, struct shadow_pool *pool,
				size_t pool_pages, unsigned int nr_roots,
				const struct shadow_paging_mode *mode,
				const struct shadow_slot_ops *ops, void *priv)
{
	gm_init_core(gm, ram_pages, pool, pool_pages, nr_roots, 0, 0, mode, ops, priv, false);
}

/* A guest machine on @pool (or a pool of its own of @pool_pages) whose MMU
 * may hold @max_tables table pages (0: no quota). */
static inline void gm_init_quota(struct gm *gm, uint64_t ram_pages, struct shadow_pool *pool,
				 size_t pool_pages, unsigned long max_tables)
{
	gm_init_core(gm, ram_pages, pool, pool_pages, 0, max_tables, 0, NULL, NULL, NULL, false);
}

/* A guest machine with a pool of its own whose MMU maps @fault_around
 * pages around a fault, its RAM slot with @ops / @priv. */
static inline void gm_init_around(struct gm *gm, uint64_t ram_pages, unsigned int fault_around,
				  const struct shadow_slot_ops *ops, void *priv)
{
	gm_init_core(gm, ram_pages, NULL, 256, 0, 0, fault_around, NULL, ops, priv, false);
}

/* A guest machine with a pool of its own whose MMU installs 2 MiB shadow
 * leaves where it may (shadow_mmu_config.huge_leaves), its RAM slot with
 * @ops / @priv. */
static inline void gm_init_huge(struct gm *gm, uint64_t ram_pages, const struct shadow_slot_ops *ops,
				void *priv)
{
	gm_init_core(gm, ram_pages, NULL, 256, 0, 0, 0, NULL, ops, priv, true);
}

static inline void gm_init(struct gm *gm, uint64_t ram_pages)
{
	gm_init_full(gm, ram_pages, NULL, 256, 0, NULL, NULL, NULL);
}

/* Destroys the MMU, the object and (if owned) the pool; checks no table leaked. */
static inline void gm_fini(struct gm *gm)
{
	shadow_mmu_destroy(gm->mmu);
	notifier_object_destroy(gm->ram);
	if (gm->own_pool) {
		ck_assert_msg(shadow_pool_pages_in_use(gm->pool, 0) == 0,
			      "expected every table freed at teardown, got %zu in use",
			      shadow_pool_pages_in_use(gm->pool, 0));
		shadow_pool_destroy(gm->pool);
	}
	munmap(gm->host, gm->npages * GM_PAGE);
}

static inline uint64_t *gm_ptr(struct gm *gm, uint64_t gpa)
{
	return (uint64_t *)(gm->host + gpa);
}

static inline uint64_t gm_read(struct gm *gm, uint64_t gpa)
{
	return __atomic_load_n(gm_ptr(gm, gpa), __ATOMIC_ACQUIRE);
}

static inline void gm_write(struct gm *gm, uint64_t gpa, uint64_t val)
{
	__atomic_store_n(gm_ptr(gm, gpa), val, __ATOMIC_RELEASE);
}

/* A zeroed guest table page. */
static inline uint64_t gm_table(struct gm *gm)
{
	uint64_t gpa = gm->next_table;

	ck_assert_msg(gpa + GM_PAGE <= GM_DATA, "guest table area full");
	gm->next_table += GM_PAGE;
	memset(gm->host + gpa, 0, GM_PAGE);
	return gpa;
}

/* Non-leaf guest entries get these rights. */
#define GM_DIR (SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER)

/*
 * Guest-physical address of the entry for @va at @level in the tables of
 * @cr3, creating missing tables (with GM_DIR entries) above it.
 */
static inline uint64_t gm_entry(struct gm *gm, uint64_t cr3, uint64_t va, int level)
{
	uint64_t table = cr3;

	for (int l = SPTE_LEVELS; l > level; l--) {
		uint64_t egpa = table + SPTE_INDEX(va, l) * 8, e = gm_read(gm, egpa);

		if (!(e & SPTE_PRESENT)) {
			e = gm_table(gm) | GM_DIR;
			gm_write(gm, egpa, e);
		}
		table = spte_addr(e);
	}
	return table + SPTE_INDEX(va, level) * 8;
}

/* Maps @va -> @gpa at @level (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) with @flags
 * (P is added; PS added for a large level). */
static inline void gm_map(struct gm *gm, uint64_t cr3, uint64_t va, uint64_t gpa, int level,
			  uint64_t flags)
{
	uint64_t e = gpa | flags | SPTE_PRESENT | (level > 1 ? SPTE_LARGE : 0);

	gm_write(gm, gm_entry(gm, cr3, va, level), e);
}

/* A vCPU of @mmu with @tlb TLB entries, running on @cr3. */
static inline struct shadow_vcpu *sh_vcpu(struct shadow_mmu *mmu, unsigned int tlb, uint64_t cr3)
{
	struct shadow_vcpu_config cfg = { .tlb_entries = tlb };
	struct shadow_vcpu *v;

	/* The vCPU's walk is an RCU reader: the accessing thread registers. */
	ck_assert_int_eq(notifier_thread_init(), 0);
	ck_assert_int_eq(shadow_vcpu_create(mmu, &cfg, &v), 0);
	ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3), 0);
	return v;
}

static inline void assert_mmu_check(struct shadow_mmu *mmu)
{
	int ret = shadow_mmu_check(mmu);

	ck_assert_msg(ret == 0, "shadow_mmu_check: expected 0, got %d", ret);
}

/*
 * The swap oracle of the tortures: out[q] is odd while page q is out,
 * out_since[q] the clock stamp of its last swap-out (all atomic).  Marks
 * pages [first, last] out, once their invalidation_range_start returned.
 */
static inline void torture_stamp_out(uint64_t *out, uint64_t *out_since, uint64_t *clock,
				     unsigned int first, unsigned int last)
{
	for (unsigned int q = first; q <= last; q++) {
		uint64_t o = __atomic_load_n(&out[q], __ATOMIC_ACQUIRE);
		uint64_t stamp = __atomic_add_fetch(clock, 1, __ATOMIC_SEQ_CST);

		__atomic_store_n(&out_since[q], stamp, __ATOMIC_RELEASE);
		if (!(o & 1))
			__atomic_store_n(&out[q], o + 1, __ATOMIC_SEQ_CST);
	}
}

/* The get_page of the tortures: brings the page whose state is @out back
 * in if it is out. */
static inline void torture_swap_in(uint64_t *out)
{
	uint64_t o = __atomic_load_n(out, __ATOMIC_ACQUIRE);

	if (o & 1)
		__atomic_compare_exchange_n(out, &o, o + 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* Runs @fn(@arg) registered with liburcu, as every thread that runs a
 * software vCPU must be (its walk is an RCU reader): a pthread body. */
static inline void *run_rcu_registered(void *(*fn)(void *), void *arg)
{
	void *ret;

	notifier_thread_init();
	ret = fn(arg);
	notifier_thread_exit();
	return ret;
}

#endif
