/*
 * shadow/ against a hostile guest: what a guest can write is untrusted.
 *
 * The table pool: a guest that reaches the pool's visible copy (a writable
 * memslot on AMD) scribbles on it the way an attacker would (garbage, table
 * entries pointing outside the pool, at free pages, at a table of another
 * level, at themselves, leaves retargeted); umbra, which reads only its
 * private copy, keeps working: faults, invlpg, flushes, zaps, invalidations
 * and teardown neither crash nor corrupt its structures (the pool check),
 * and an entry umbra writes again is the same in both copies.  A normal
 * workload leaves the visible copy equal to the private one, entry for
 * entry.
 *
 * Loops on what the guest controls end: a guest page table in a read-only
 * slot that needs A/D set ends the fault with -EROFS; tables that keep
 * changing under a fault end it with -ELOOP; a walk whose A/D updates keep
 * losing their race ends with -EAGAIN.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>

#include "umbra/shadow.h"
#include "shadow_internal.h"
#include "spte.h"
#include "test_shadow_share_util.h"
#include "tests.h"

#define UW (SPTE_WRITABLE | SPTE_USER)

/* ---- a pool shared by three VMs ------------------------------------------ */

#define VA_PRIV 0x00007f0000000000ull	/* private 4 KiB pages at GM_DATA */
#define NPRIV 16
#define SEG_GPA 0x200000ull		/* a segment run, one guest 2 MiB page */
#define SEG_VA 0x40000000ull
#define NSEG 8
#define NVM 3				/* A, B (same segment), C (a clone of A) */
#define POOL_PAGES 512

struct hvm {
	struct shadow_mmu *mmu;
	struct shadow_vcpu *v;
	uint64_t cr3;
	uint64_t tag;			/* its private pages hold tag | i */
};

struct world {
	struct shadow_pool *pool;
	struct gm gm[2];		/* A's and B's RAM (C shares A's copy-on-write) */
	struct hobj seg, own[2];
	struct sh_owns owns;		/* the own slots C's clone adds */
	int seg_slot;			/* the segment's slot id, the same in every VM */
	struct hvm vm[NVM];
};

/* VM @k (A or B) on the world's pool: RAM with its tables and private
 * pages, the segment, an own slot. */
static void world_vm_init(struct world *w, int k)
{
	struct shadow_slot s = hobj_slot(&w->seg, SH_SEG_MPA);
	struct hvm *vm = &w->vm[k];
	struct gm *gm = &w->gm[k];
	int id;

	gm_init_full(gm, 1024, w->pool, 0, 0, NULL, NULL, NULL);
	ck_assert_int_eq(shadow_mmu_add_segment(gm->mmu, &s, &w->seg_slot), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm->mmu, SEG_GPA, 512, w->seg_slot, 0), 0);
	hobj_init(&w->own[k], "own", 1024, false);
	s = hobj_slot(&w->own[k], SH_COW_MPA(k));
	ck_assert_int_eq(shadow_mmu_add_slot(gm->mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(gm->mmu, id), 0);
	vm->mmu = gm->mmu;
	vm->tag = (uint64_t)(k + 1) << 32;
	vm->cr3 = gm_table(gm);
	for (uint64_t i = 0; i < NPRIV; i++) {
		gm_map(gm, vm->cr3, VA_PRIV + i * GM_PAGE, GM_DATA + i * GM_PAGE, 1, UW | SPTE_DIRTY);
		gm_write(gm, GM_DATA + i * GM_PAGE, vm->tag | i);
	}
	gm_map(gm, vm->cr3, SEG_VA, SEG_GPA, 2, UW | SPTE_DIRTY);
	vm->v = sh_vcpu(vm->mmu, 64, vm->cr3);
}

static uint64_t vm_load(struct hvm *vm, uint64_t va)
{
	struct shadow_vcpu_result res;
	int ret = shadow_vcpu_access_fault_in(vm->v, va, SHADOW_ACCESS_USER, &res);

	ck_assert_msg(ret == 0, "read %#llx: expected 0, got %d", (unsigned long long)va, ret);
	return __atomic_load_n((uint64_t *)res.host, __ATOMIC_ACQUIRE);
}

/* What VM @k must read at private page @i (C reads A's pages, shared
 * copy-on-write). */
static uint64_t priv_value(const struct world *w, int k, uint64_t i)
{
	return w->vm[k == 2 ? 0 : k].tag | i;
}

/* The linear addresses every VM maps: NPRIV private pages, NSEG segment
 * pages. */
#define NVA (NPRIV + NSEG)
static uint64_t world_va(unsigned int n)
{
	return n < NPRIV ? VA_PRIV + (uint64_t)n * GM_PAGE : SEG_VA + (uint64_t)(n - NPRIV) * GM_PAGE;
}

static uint64_t world_value(const struct world *w, int k, unsigned int n)
{
	return n < NPRIV ? priv_value(w, k, n) : 0x5e00000 + (n - NPRIV);
}

/* Every VM reads every page it maps (faulting them in), and reads what it
 * must. */
static void world_read_all(struct world *w)
{
	for (int k = 0; k < NVM; k++)
		for (unsigned int n = 0; n < NVA; n++)
			ck_assert_msg(vm_load(&w->vm[k], world_va(n)) == world_value(w, k, n),
				      "VM %d reads a wrong value at %#llx", k,
				      (unsigned long long)world_va(n));
}

/* The visible copy equals the private one, entry for entry, over the whole
 * pool (allocated, freed and never used pages alike). */
static void assert_pool_mirrored(struct shadow_pool *pool)
{
	for (uint32_t page = 0; page < pool->nr_pages; page++) {
		const uint64_t *e = pool_entries(pool, page);
		const uint64_t *v = shadow_pool_table(pool, pool_page_gpa(page));

		for (unsigned int i = 0; i < SPTE_ENTRIES; i++)
			if (e[i] != v[i]) /* not ck_assert: one mark per entry is slow */
				ck_abort_msg("page %u (level %u) entry %u: private %#llx, visible %#llx",
					     page, pool->pages[page].level, i, (unsigned long long)e[i],
					     (unsigned long long)v[i]);
	}
}

/* A and B with their tables filled (B on A's canonical segment table), then
 * C cloned from A (its root's entries point at A's lower tables). */
static void world_init(struct world *w)
{
	struct hvm *c = &w->vm[2];

	memset(w, 0, sizeof(*w));
	ck_assert_int_eq(notifier_thread_init(), 0);
	ck_assert_int_eq(shadow_pool_create(POOL_PAGES, &w->pool), 0);
	hobj_init(&w->seg, "segment", 512, true);
	for (uint64_t p = 0; p < 512; p++)
		*(uint64_t *)(w->seg.host + p * GM_PAGE) = 0x5e00000 + p;
	world_vm_init(w, 0);
	world_vm_init(w, 1);
	for (int k = 0; k < 2; k++)
		for (unsigned int n = 0; n < NVA; n++)
			vm_load(&w->vm[k], world_va(n));
	sh_clone(&w->owns, 1024, w->vm[0].mmu, &c->mmu);
	assert_pool_mirrored(w->pool); /* before a fault rewrites a path */
	c->cr3 = w->vm[0].cr3;
	c->v = sh_vcpu(c->mmu, 64, c->cr3);
	world_read_all(w);
	ck_assert_msg(shadow_pool_shared_pages(w->pool) > 0, "expected shared tables");
}

/* Every VM destroyed in turn (the pool checked after each), then the
 * objects and the pool. */
static void world_fini(struct world *w)
{
	for (int k = NVM - 1; k >= 0; k--) {
		shadow_vcpu_destroy(w->vm[k].v);
		shadow_mmu_destroy(w->vm[k].mmu);
		assert_pool_check(w->pool);
	}
	ck_assert_msg(shadow_pool_pages_in_use(w->pool, 0) == 0, "expected every table freed, got %zu in use",
		      shadow_pool_pages_in_use(w->pool, 0));
	for (int k = 0; k < 2; k++) {
		notifier_object_destroy(w->gm[k].ram);
		munmap(w->gm[k].host, w->gm[k].npages * GM_PAGE);
	}
	for (int k = 0; k < 2; k++)
		hobj_fini(&w->own[k]);
	sh_owns_fini(&w->owns);
	hobj_fini(&w->seg);
	shadow_pool_destroy(w->pool);
	notifier_thread_exit();
}

static void world_check(struct world *w, const char *when)
{
	int ret = shadow_pool_check(w->pool);

	ck_assert_msg(ret == 0, "%s: shadow_pool_check: expected 0, got %d", when, ret);
	for (int k = 0; k < NVM; k++) {
		ret = shadow_mmu_check(w->vm[k].mmu);
		ck_assert_msg(ret == 0, "%s: shadow_mmu_check of VM %d: expected 0, got %d", when, k, ret);
	}
}

/* The root page of @vm's address space. */
static uint32_t vm_root(struct hvm *vm)
{
	for (unsigned int r = 0; r < vm->mmu->nr_roots; r++)
		if (vm->mmu->roots[r].page != SHADOW_NO_PAGE && vm->mmu->roots[r].cr3 == vm->cr3)
			return vm->mmu->roots[r].page;
	ck_abort_msg("no root for cr3 %#llx", (unsigned long long)vm->cr3);
	return SHADOW_NO_PAGE;
}

/* Along the shadow path of @va (the private copy), each entry is the same
 * in the visible copy: what the CPU walks is what umbra wrote. */
static void assert_path_mirrored(struct shadow_pool *pool, struct hvm *vm, uint64_t va)
{
	uint32_t page = vm_root(vm);

	for (int level = SPTE_LEVELS; level >= 1; level--) {
		unsigned int i = SPTE_INDEX(va, level);
		uint64_t e = spte_read(pool_entries(pool, page) + i);
		uint64_t v = spte_read(shadow_pool_table(pool, pool_page_gpa(page)) + i);

		ck_assert_msg(e == v, "va %#llx level %d: private %#llx, visible %#llx",
			      (unsigned long long)va, level, (unsigned long long)e, (unsigned long long)v);
		ck_assert_msg(spte_is_present(e), "va %#llx level %d: not present after its fault",
			      (unsigned long long)va, level);
		if (spte_is_leaf(e, level))
			return;
		page = pool_page_index(spte_addr(e));
	}
}

/* ---- scribbling on the visible copy ------------------------------------- */

enum scribble_kind {
	SCRIBBLE_GARBAGE,	/* every entry of every page: random bits */
	SCRIBBLE_OUTSIDE,	/* table entries: outside the pool */
	SCRIBBLE_FREE_PAGE,	/* table entries: a page no table uses */
	SCRIBBLE_OTHER_LEVEL,	/* table entries: a table of another level */
	SCRIBBLE_SELF,		/* table entries: their own table (a cycle) */
	SCRIBBLE_RETARGET,	/* leaves: a page other VMs map (the segment's), writable */
};

static const struct scribble_case {
	const char *name;
	enum scribble_kind kind;
} scribble_cases[] = {
	{ "random garbage in every entry", SCRIBBLE_GARBAGE },
	{ "table entries pointing outside the pool", SCRIBBLE_OUTSIDE },
	{ "table entries pointing at unallocated pool pages", SCRIBBLE_FREE_PAGE },
	{ "table entries pointing at a table of another level", SCRIBBLE_OTHER_LEVEL },
	{ "table entries pointing at their own table", SCRIBBLE_SELF },
	{ "leaves retargeted at pages other VMs map, writable", SCRIBBLE_RETARGET },
};

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* The first pool page at @level (0: a free one). */
static uint32_t pool_find_page(struct shadow_pool *pool, int level)
{
	for (uint32_t i = 0; i < pool->nr_pages; i++)
		if (pool->pages[i].level == level)
			return i;
	ck_abort_msg("no pool page at level %d", level);
	return SHADOW_NO_PAGE;
}

/* What a hostile guest writes over entry @i (private value @e) of @page. */
static uint64_t scribbled(struct shadow_pool *pool, enum scribble_kind kind, uint32_t page,
			  unsigned int i, uint64_t *rng)
{
	const int level = pool->pages[page].level;
	const uint64_t e = pool_entries(pool, page)[i], flags = e & ~SPTE_ADDR_MASK;
	const bool table = spte_is_present(e) && !spte_is_leaf(e, level);
	const uint64_t outside[] = { GM_TABLES, pool_page_gpa((uint32_t)pool->nr_pages),
				     SPTE_ADDR_MASK, SH_SEG_MPA };

	switch (kind) {
	case SCRIBBLE_GARBAGE:
		return xorshift(rng);
	case SCRIBBLE_OUTSIDE:
		return table ? flags | outside[i % 4] : e;
	case SCRIBBLE_FREE_PAGE:
		return table ? flags | pool_page_gpa(pool_find_page(pool, 0)) : e;
	case SCRIBBLE_OTHER_LEVEL:
		return table ? flags | pool_page_gpa(pool_find_page(pool, level == 2 ? 4 : 1)) : e;
	case SCRIBBLE_SELF:
		return table ? flags | pool_page_gpa(page) : e;
	case SCRIBBLE_RETARGET:
		if (!spte_is_present(e) || !spte_is_leaf(e, level))
			return e;
		return (flags & ~SPTE_NX) | SPTE_WRITABLE | SPTE_DIRTY |
		       (SH_SEG_MPA + (100 + i % 64) * GM_PAGE);
	}
	return e;
}

/* Writes the visible copy as a guest that reaches it would: every page for
 * garbage, every table page otherwise. */
static void scribble(struct shadow_pool *pool, enum scribble_kind kind, uint64_t seed)
{
	uint64_t rng = seed | 1;

	for (uint32_t page = 0; page < pool->nr_pages; page++) {
		uint64_t *v = shadow_pool_table(pool, pool_page_gpa(page));

		if (kind != SCRIBBLE_GARBAGE && !pool->pages[page].level)
			continue;
		for (unsigned int i = 0; i < SPTE_ENTRIES; i++)
			__atomic_store_n(&v[i], scribbled(pool, kind, page, i, &rng), __ATOMIC_RELAXED);
	}
}

/* The vCPUs walk what the guest wrote, as the CPU would: whatever they
 * answer, nothing breaks. */
static void world_access_scribbled(struct world *w)
{
	for (int k = 0; k < NVM; k++) {
		for (unsigned int n = 0; n < NVA; n++) {
			struct shadow_vcpu_result res;
			int ret = shadow_vcpu_access(w->vm[k].v, world_va(n), SHADOW_ACCESS_USER, &res);

			ck_assert_msg(ret == 0 || ret == -EFAULT || ret == -EIO || ret == -EROFS,
				      "VM %d access %#llx on a scribbled pool: got %d", k,
				      (unsigned long long)world_va(n), ret);
		}
	}
}

/* What the VMM does on the faults that follow: each fault is resolved and
 * the entries of its path are written again in the visible copy; then a
 * full flush, and every VM reads what it must. */
static void world_repair(struct world *w)
{
	for (int k = 0; k < NVM; k++) {
		struct hvm *vm = &w->vm[k];

		for (unsigned int n = 0; n < NVA; n++) {
			uint32_t ec = 0;
			int ret = shadow_mmu_fault(vm->mmu, vm->cr3, world_va(n), SHADOW_ACCESS_USER, &ec);

			ck_assert_msg(ret == SHADOW_FAULT_FIXED, "VM %d fault at %#llx: expected fixed, got %d",
				      k, (unsigned long long)world_va(n), ret);
			assert_path_mirrored(w->pool, vm, world_va(n));
		}
		ck_assert_int_eq(shadow_vcpu_flush(vm->v), 0);
	}
	world_read_all(w);
}

/* Zaps of every kind while the visible copy is scribbled: invlpg, full
 * flushes, a zap of a RAM range, an eviction of a segment page (a notifier
 * invalidation reaching every VM), a zap of everything. */
static void world_zap_scribbled(struct world *w)
{
	for (int k = 0; k < NVM; k++) {
		shadow_vcpu_invlpg(w->vm[k].v, VA_PRIV);
		shadow_vcpu_invlpg(w->vm[k].v, SEG_VA + GM_PAGE);
		ck_assert_int_eq(shadow_vcpu_flush(w->vm[k].v), 0);
	}
	ck_assert_int_ge(shadow_mmu_zap_range(w->vm[0].mmu, w->gm[0].slot, GM_DATA / GM_PAGE,
					      GM_DATA / GM_PAGE + 3),
			 0);
	ck_assert_int_eq(shadow_store_evict(w->seg.store, 3), 0);
	shadow_mmu_zap_all(w->vm[1].mmu);
}

START_TEST(test_scribbled_visible_pool_never_reaches_umbra)
{
	const struct scribble_case *c = &scribble_cases[_i];
	struct world w;

	world_init(&w);
	assert_pool_mirrored(w.pool);

	/* The guest scribbles; the vCPUs walk it; the faults repair it. */
	scribble(w.pool, c->kind, 0x9e3779b97f4a7c15ull + (uint64_t)_i);
	world_access_scribbled(&w);
	world_check(&w, c->name);
	world_repair(&w);
	world_check(&w, c->name);

	/* Again, then every kind of zap on the scribbled pool. */
	scribble(w.pool, c->kind, 0x2545f4914f6cdd1dull + (uint64_t)_i);
	world_zap_scribbled(&w);
	world_check(&w, c->name);
	world_repair(&w);
	world_check(&w, c->name);

	/* Teardown of a scribbled pool. */
	scribble(w.pool, c->kind, 0x8badf00dull + (uint64_t)_i);
	world_fini(&w);
}
END_TEST

/* A workload of every kind (faults, copy-on-write breaks and privatizing
 * writes of the clone, zaps, invalidations, teardown) leaves the visible
 * copy equal to the private one: every write of an entry went to both. */
START_TEST(test_visible_pool_mirrors_private_copy_after_a_workload)
{
	struct shadow_vcpu_result res;
	struct world w;

	world_init(&w);
	assert_pool_mirrored(w.pool);
	for (unsigned int n = 0; n < NPRIV; n += 3)
		ck_assert_int_eq(shadow_vcpu_access_fault_in(w.vm[2].v, world_va(n),
							     SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res),
				 0);
	ck_assert_int_eq(shadow_vcpu_access_fault_in(w.vm[0].v, world_va(1),
						     SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res),
			 0);
	ck_assert_int_gt(shadow_pool_pages_in_use(w.pool, 0), 0);
	assert_pool_mirrored(w.pool);
	world_zap_scribbled(&w); /* nothing scribbled: the zaps alone */
	world_read_all(&w);
	world_check(&w, "workload");
	assert_pool_mirrored(w.pool);
	for (int k = NVM - 1; k >= 1; k--) {
		shadow_vcpu_destroy(w.vm[k].v);
		shadow_mmu_destroy(w.vm[k].mmu);
		w.vm[k].v = NULL;
		w.vm[k].mmu = NULL;
		assert_pool_mirrored(w.pool);
	}
	world_fini(&w);
}
END_TEST

/* ---- guest page tables in a read-only slot -------------------------------- */

#define RO_GPA 0x300000ull		/* 16 pages of a read-only slot */
#define RO_MPA (3ull << 30)
#define RO_VA 0x00007f1234560000ull
#define GM_A (GM_DIR | SPTE_ACCESSED)

static const struct ro_case {
	const char *name;
	int ro_level;			/* the guest table placed in the read-only slot */
	uint64_t flags;			/* its entry's flags (P added) */
	unsigned int access;
	int want;
} ro_cases[] = {
	{ "PTE without A, read", 1, UW, SHADOW_ACCESS_USER, -EROFS },
	{ "PTE with A, without D, write", 1, UW | SPTE_ACCESSED,
	  SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, -EROFS },
	{ "PDE without A, read", 2, UW, SHADOW_ACCESS_USER, -EROFS },
	{ "PTE with A, read", 1, UW | SPTE_ACCESSED, SHADOW_ACCESS_USER, SHADOW_FAULT_FIXED },
	{ "PTE with A and D, write", 1, UW | SPTE_ACCESSED | SPTE_DIRTY,
	  SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, SHADOW_FAULT_FIXED },
	{ "PDE with A, read", 2, UW | SPTE_ACCESSED, SHADOW_ACCESS_USER, SHADOW_FAULT_FIXED },
};

/* Writes the guest entry at @gpa: in the read-only slot's object (the
 * host may) or in RAM. */
static void ro_write(struct gm *gm, struct hobj *ro, uint64_t gpa, uint64_t val)
{
	if (gpa >= RO_GPA && gpa < RO_GPA + 16 * GM_PAGE)
		*(uint64_t *)(ro->host + (gpa - RO_GPA)) = val;
	else
		gm_write(gm, gpa, val);
}

/* A guest table that needs A/D set and lies in a read-only slot: the fault
 * ends at once with -EROFS (it would walk again forever otherwise; Check's
 * timeout catches a loop); the control cases, with nothing to set, are
 * fixed. */
START_TEST(test_guest_table_in_read_only_slot_needing_ad_ends_the_fault)
{
	const struct ro_case *c = &ro_cases[_i];
	struct shadow_slot s;
	struct shadow_vcpu *v;
	struct hobj ro;
	struct gm gm;
	uint32_t ec = 0;
	int id;

	gm_init_full(&gm, 1024, NULL, 64, 0, NULL, NULL, NULL);
	hobj_init(&ro, "ro-tables", 16, false);
	s = hobj_slot(&ro, RO_MPA);
	s.readonly = true;
	ck_assert_int_eq(shadow_mmu_add_slot(gm.mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, RO_GPA, 16, id, 0), 0);

	const uint64_t pml4 = gm_table(&gm), pdpt = gm_table(&gm);
	const uint64_t pd = c->ro_level == 2 ? RO_GPA : gm_table(&gm);
	const uint64_t pt = c->ro_level == 1 ? RO_GPA + GM_PAGE : gm_table(&gm);
	const uint64_t pd_flags = c->ro_level == 2 ? c->flags : GM_A;
	const uint64_t pt_flags = c->ro_level == 1 ? c->flags : UW | SPTE_ACCESSED | SPTE_DIRTY;

	ro_write(&gm, &ro, pml4 + SPTE_INDEX(RO_VA, 4) * 8, pdpt | GM_A);
	ro_write(&gm, &ro, pdpt + SPTE_INDEX(RO_VA, 3) * 8, pd | GM_A);
	ro_write(&gm, &ro, pd + SPTE_INDEX(RO_VA, 2) * 8, pt | pd_flags | SPTE_PRESENT);
	ro_write(&gm, &ro, pt + SPTE_INDEX(RO_VA, 1) * 8, GM_DATA | pt_flags | SPTE_PRESENT);
	v = sh_vcpu(gm.mmu, 0, pml4);

	int ret = shadow_mmu_fault(gm.mmu, pml4, RO_VA, c->access, &ec);

	ck_assert_msg(ret == c->want, "%s: expected %d, got %d", c->name, c->want, ret);
	/* umbra wrote nothing into the read-only object. */
	ck_assert_uint_eq(*(uint64_t *)(ro.host + (c->ro_level == 1 ? GM_PAGE : 0) +
					SPTE_INDEX(RO_VA, c->ro_level) * 8),
			  (c->ro_level == 1 ? pt_flags | GM_DATA : pd_flags | pt) | SPTE_PRESENT);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	hobj_fini(&ro);
	notifier_thread_exit();
}
END_TEST

/* ---- guest tables that keep changing under a fault ------------------------ */

#define FLIP_GPA 0x380000ull		/* 2 pages of a data slot whose get_page flips */
#define FLIP_MPA (5ull << 30)
#define FLIP_VA 0x00007f2000000000ull

/* What the data slot's get_page does: while @flips remain, point the guest's
 * PTE of FLIP_VA at the other page and invlpg it, as a guest vCPU that keeps
 * rewriting the entry while another vCPU's fault resolves it. */
struct flipper {
	struct gm *gm;
	uint64_t cr3, pte;
	unsigned int flips, calls;
};

static int flip_get_page(void *priv, uint64_t page, bool write)
{
	struct flipper *f = priv;
	uint64_t e = gm_read(f->gm, f->pte);

	(void)page;
	(void)write;
	f->calls++;
	if (!f->flips)
		return 0;
	f->flips--;
	gm_write(f->gm, f->pte, e ^ GM_PAGE);
	shadow_mmu_invlpg(f->gm->mmu, NULL, f->cr3, FLIP_VA);
	return 0;
}

static const struct shadow_slot_ops flip_ops = { .get_page = flip_get_page };

static const struct flip_case {
	const char *name;
	unsigned int flips;
	int want;
	unsigned int calls;		/* get_page calls: walks */
} flip_cases[] = {
	{ "three changes, then a stable table", 3, SHADOW_FAULT_FIXED, 4 },
	/* The documented bound: 64 walks again, the 65th gives up. */
	{ "a table that never stops changing", UINT32_MAX, -ELOOP, 65 },
};

START_TEST(test_guest_tables_changing_under_a_fault_end_it_with_eloop)
{
	const struct flip_case *c = &flip_cases[_i];
	struct flipper f = { .flips = c->flips };
	struct shadow_vcpu *v;
	struct shadow_slot s;
	struct hobj data;
	struct gm gm;
	uint32_t ec = 0;
	int id, ret;

	gm_init_full(&gm, 1024, NULL, 64, 0, NULL, NULL, NULL);
	hobj_init(&data, "flip-data", 2, false);
	s = hobj_slot(&data, FLIP_MPA);
	s.ops = &flip_ops;
	s.priv = &f;
	ck_assert_int_eq(shadow_mmu_add_slot(gm.mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, FLIP_GPA, 2, id, 0), 0);
	f.gm = &gm;
	f.cr3 = gm_table(&gm);
	gm_map(&gm, f.cr3, FLIP_VA, FLIP_GPA, 1, UW | SPTE_ACCESSED | SPTE_DIRTY);
	f.pte = gm_entry(&gm, f.cr3, FLIP_VA, 1);
	v = sh_vcpu(gm.mmu, 0, f.cr3);

	ret = shadow_mmu_fault(gm.mmu, f.cr3, FLIP_VA, SHADOW_ACCESS_USER, &ec);
	ck_assert_msg(ret == c->want && f.calls == c->calls, "%s: expected %d after %u walks, got %d after %u",
		      c->name, c->want, c->calls, ret, f.calls);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	hobj_fini(&data);
	notifier_thread_exit();
}
END_TEST

/* ---- the walker's A/D updates that keep losing their race ---------------- */

/* Four table pages at 0x1000..0x4fff, each entry pointing at the next, none
 * with A; cmpxchg always finds the entry changed. */
struct racing_mem {
	uint64_t pages[4][SPTE_ENTRIES];
	unsigned int cmpxchgs;
};

static int racing_read(void *ctx, uint64_t pa, uint64_t *val)
{
	struct racing_mem *m = ctx;

	if (pa < 0x1000 || pa >= 0x5000)
		return -EFAULT;
	*val = m->pages[pa / 0x1000 - 1][(pa % 0x1000) / 8];
	return 0;
}

static int racing_cmpxchg(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val)
{
	struct racing_mem *m = ctx;

	(void)pa;
	(void)old;
	(void)new_val;
	m->cmpxchgs++;
	return -EAGAIN;
}

START_TEST(test_walk_whose_ad_updates_keep_losing_ends_with_eagain)
{
	static const struct shadow_mem_ops ops = { .read = racing_read, .cmpxchg = racing_cmpxchg };
	struct racing_mem *m = calloc(1, sizeof(*m));
	const uint64_t va = 0x00007f0000000000ull;
	struct shadow_walk w;

	ck_assert_ptr_nonnull(m);
	for (int level = SPTE_LEVELS; level >= 1; level--) {
		uint64_t next = level > 1 ? (uint64_t)(SPTE_LEVELS - level + 2) * 0x1000 : 0x100000;

		m->pages[SPTE_LEVELS - level][SPTE_INDEX(va, level)] = next | SPTE_PRESENT | UW;
	}
	ck_assert_int_eq(shadow_walk(&shadow_default_mode, &ops, m, 0x1000, va, SHADOW_ACCESS_USER,
				     SHADOW_WALK_SET_AD, &w),
			 -EAGAIN);
	ck_assert_msg(m->cmpxchgs == 64, "expected 64 walks, got %u", m->cmpxchgs);
	free(m);
}
END_TEST

Suite *shadow_hostile_suite(void)
{
	Suite *s = suite_create("shadow_hostile");
	TCase *pool = tcase_create("pool");
	TCase *loops = tcase_create("loops");

	tcase_add_loop_test(pool, test_scribbled_visible_pool_never_reaches_umbra, 0,
			    (int)(sizeof(scribble_cases) / sizeof(scribble_cases[0])));
	tcase_add_test(pool, test_visible_pool_mirrors_private_copy_after_a_workload);
	suite_add_tcase(s, pool);
	tcase_add_loop_test(loops, test_guest_table_in_read_only_slot_needing_ad_ends_the_fault, 0,
			    (int)(sizeof(ro_cases) / sizeof(ro_cases[0])));
	tcase_add_loop_test(loops, test_guest_tables_changing_under_a_fault_end_it_with_eloop, 0,
			    (int)(sizeof(flip_cases) / sizeof(flip_cases[0])));
	tcase_add_test(loops, test_walk_whose_ad_updates_keep_losing_ends_with_eagain);
	suite_add_tcase(s, loops);
	return s;
}
