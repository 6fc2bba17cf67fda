/*
 * shadow/: the entry format, the table pool with its descriptors, the per-VM
 * shadow MMU (fault, sync, reverse map, zap, teardown), its notifier
 * subscription, and the software vCPU.  The walker's rules are in
 * test_shadow_walk.c, the concurrent torture in test_shadow_torture.c.
 */
#include <check.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "umbra/shadow.h"
#include "shadow_internal.h"
#include "spte.h"
#include "test_shadow_util.h"
#include "tests.h"

static const struct {
	bool writable, user, executable;
} leaf_rights[] = {
	{ false, false, false }, { true, false, false }, { false, true, false }, { false, false, true },
	{ true, true, true },
};

START_TEST(test_leaf_presets_accessed_and_dirty_only_when_writable)
{
	const uint64_t pa = 0x123456789000ull;
	uint64_t spte = spte_make_leaf(pa, leaf_rights[_i].writable, leaf_rights[_i].user,
				       leaf_rights[_i].executable);

	ck_assert(spte_is_present(spte));
	ck_assert_msg(spte & SPTE_ACCESSED, "A must be preset: the pool is read-only to guests");
	ck_assert_msg(!!(spte & SPTE_DIRTY) == leaf_rights[_i].writable, "D preset: expected %d, got %d",
		      leaf_rights[_i].writable, !!(spte & SPTE_DIRTY));
	ck_assert_int_eq(spte_is_writable(spte), leaf_rights[_i].writable);
	ck_assert_int_eq(spte_is_user(spte), leaf_rights[_i].user);
	ck_assert_int_eq(spte_is_executable(spte), leaf_rights[_i].executable);
	ck_assert_uint_eq(spte_addr(spte), pa);
}
END_TEST

START_TEST(test_table_entry_is_permissive_and_masks_address)
{
	uint64_t spte = spte_make_table(0xfff0000000001fffull);

	ck_assert_uint_eq(spte_addr(spte), 0x0000000000001000ull);
	ck_assert(spte_is_present(spte) && spte_is_writable(spte) && spte_is_user(spte) &&
		  spte_is_executable(spte));
	ck_assert(!spte_is_leaf(spte, 2));
	ck_assert(spte_is_leaf(spte | SPTE_LARGE, 2) && spte_is_leaf(spte | SPTE_LARGE, 3));
	ck_assert(!spte_is_leaf(spte | SPTE_LARGE, 4));
	ck_assert(spte_is_leaf(spte, 1));
}
END_TEST

START_TEST(test_index_follows_x86_levels)
{
	const uint64_t va = 0x00007fabcdef1234ull;

	ck_assert_uint_eq(SPTE_INDEX(va, 1), (va >> 12) & 511);
	ck_assert_uint_eq(SPTE_INDEX(va, 2), (va >> 21) & 511);
	ck_assert_uint_eq(SPTE_INDEX(va, 3), (va >> 30) & 511);
	ck_assert_uint_eq(SPTE_INDEX(va, 4), (va >> 39) & 511);
}
END_TEST

START_TEST(test_pool_allocates_zeroed_pages_until_full)
{
	struct shadow_pool *pool;
	uint64_t gpa[4], extra;

	ck_assert_int_eq(shadow_pool_create(4, &pool), 0);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(shadow_pool_alloc(pool, 1 + i % 4, &gpa[i]), 0);
		ck_assert_uint_ge(gpa[i], SHADOW_POOL_GPA);
		uint64_t *t = shadow_pool_table(pool, gpa[i]);
		ck_assert_ptr_nonnull(t);
		for (int e = 0; e < SPTE_ENTRIES; e++)
			ck_assert_uint_eq(t[e], 0);
		t[7] = 0xdead; /* dirty it: a reused page must come back zeroed */
		for (int j = 0; j < i; j++)
			ck_assert_msg(gpa[j] != gpa[i], "page %#llx handed out twice", (unsigned long long)gpa[i]);
	}
	ck_assert_int_eq(shadow_pool_alloc(pool, 1, &extra), -ENOMEM);
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 0), 4);
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 1), 1);
	ck_assert_int_eq(shadow_pool_free(pool, gpa[2]), 0);
	ck_assert_int_eq(shadow_pool_free(pool, gpa[2]), -EINVAL); /* double free */
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 3), 0);
	ck_assert_int_eq(shadow_pool_alloc(pool, 2, &extra), 0);
	ck_assert_uint_eq(extra, gpa[2]);
	ck_assert_uint_eq(shadow_pool_table(pool, extra)[7], 0);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(shadow_pool_free(pool, i == 2 ? extra : gpa[i]), 0);
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 0), 0);
	shadow_pool_destroy(pool);
}
END_TEST

START_TEST(test_pool_rejects_foreign_addresses_and_levels)
{
	struct shadow_pool *pool;
	uint64_t gpa;

	ck_assert_int_eq(shadow_pool_create(2, &pool), 0);
	ck_assert_int_eq(shadow_pool_alloc(pool, 0, &gpa), -EINVAL);
	ck_assert_int_eq(shadow_pool_alloc(pool, 5, &gpa), -EINVAL);
	ck_assert_ptr_null(shadow_pool_table(pool, SHADOW_POOL_GPA - SHADOW_PAGE_SIZE));
	ck_assert_ptr_null(shadow_pool_table(pool, SHADOW_POOL_GPA + 2 * SHADOW_PAGE_SIZE));
	ck_assert_ptr_null(shadow_pool_table(pool, SHADOW_POOL_GPA + 8));
	ck_assert_int_eq(shadow_pool_free(pool, SHADOW_POOL_GPA + 8), -EINVAL);
	shadow_pool_destroy(pool);
	ck_assert_int_eq(shadow_pool_create(0, &pool), -EINVAL);
}
END_TEST

START_TEST(test_pool_memfd_shows_entries_to_a_second_mapping)
{
	struct shadow_pool *pool;
	uint64_t gpa;

	/* The VMM maps the pool's memfd into guests: a write through the
	 * library's mapping must be visible through any other mapping. */
	ck_assert_int_eq(shadow_pool_create(8, &pool), 0);
	ck_assert_int_eq(shadow_pool_alloc(pool, 4, &gpa), 0);
	shadow_pool_table(pool, gpa)[3] = spte_make_table(0x5000);
	struct shadow_pool_memory mem;

	shadow_pool_memory(pool, &mem);
	ck_assert_uint_eq(mem.gpa, SHADOW_POOL_GPA);
	ck_assert_ptr_eq(mem.host, shadow_pool_table(pool, SHADOW_POOL_GPA));
	uint64_t *view = mmap(NULL, 8 * SHADOW_PAGE_SIZE, PROT_READ, MAP_SHARED, mem.fd, 0);
	ck_assert_ptr_ne(view, MAP_FAILED);
	ck_assert_uint_eq(view[(gpa - SHADOW_POOL_GPA) / 8 + 3], spte_make_table(0x5000));
	munmap(view, 8 * SHADOW_PAGE_SIZE);
	ck_assert_int_eq(shadow_pool_free(pool, gpa), 0);
	shadow_pool_destroy(pool);
}
END_TEST


/* ---- the shadow MMU and the software vCPU ---------------------------------- */

#define VA1 0x00007f0000123000ull
#define VA2 0x00007f0000456000ull
#define GPA_A (GM_DATA + 5 * GM_PAGE)
#define GPA_B (GM_DATA + 9 * GM_PAGE)
#define GPA_C (GM_DATA + 13 * GM_PAGE)
#define UW (SPTE_WRITABLE | SPTE_USER)

/*
 * The common fixture: a guest machine of 1024 pages whose one address space
 * (*@cr3) maps VA1 -> GPA_A, user and writable, and a vCPU on it with @tlb
 * TLB entries.
 */
static struct shadow_vcpu *va1_vm(struct gm *gm, unsigned int tlb, uint64_t *cr3)
{
	gm_init(gm, 1024);
	*cr3 = gm_table(gm);
	gm_map(gm, *cr3, VA1, GPA_A, 1, UW);
	return sh_vcpu(gm->mmu, tlb, *cr3);
}

/* Access with fault-in; asserts success and returns the guest-physical
 * address reached (machine address = gpa: identity P2M at 0). */
static uint64_t reach(struct shadow_vcpu *v, uint64_t va, unsigned int access)
{
	struct shadow_vcpu_result res;
	int ret = shadow_vcpu_access_fault_in(v, va, access, &res);

	ck_assert_msg(ret == 0, "access %#llx: expected 0, got %d (ec %#x)", (unsigned long long)va,
		      ret, res.error_code);
	return res.mpa;
}

START_TEST(test_fault_installs_translation_that_vcpu_reaches)
{
	struct shadow_vcpu_result res;
	struct gm gm;
	uint32_t ec = 0;

	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	/* The shadow is empty: the CPU raises a not-present fault. */
	ck_assert_int_eq(shadow_vcpu_access(v, VA1 + 8, SHADOW_ACCESS_USER, &res), -EFAULT);
	ck_assert_uint_eq(res.error_code, SHADOW_PFERR_USER);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1 + 8, SHADOW_ACCESS_USER, &ec),
			 SHADOW_FAULT_FIXED);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1 + 8, SHADOW_ACCESS_USER, &res), 0);
	ck_assert_ptr_eq(res.host, gm.host + GPA_A + 8);
	ck_assert_uint_eq(res.mpa, GPA_A + 8);
	ck_assert(!res.tlb_hit);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1 + 16, SHADOW_ACCESS_USER, &res), 0);
	ck_assert(res.tlb_hit);
	for (int level = 1; level <= 4; level++)
		ck_assert_msg(shadow_pool_pages_in_use(gm.pool, level) == 1,
			      "level %d: expected 1 table, got %zu", level,
			      shadow_pool_pages_in_use(gm.pool, level));
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_descriptors_record_role_use_count_and_users)
{
	struct gm gm;

	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 0, &cr3);

	reach(v, VA1, 0);
	/* Follow the shadow path by hand and compare each descriptor with the
	 * guest table it must shadow. */
	uint64_t guest_table = cr3, table = 0;
	for (uint32_t i = 0; i < gm.pool->nr_pages; i++)
		if (gm.pool->pages[i].level == 4)
			table = SHADOW_POOL_GPA + (uint64_t)i * SHADOW_PAGE_SIZE;
	uint32_t parent = SHADOW_NO_PAGE;
	for (int level = 4; level >= 1; level--) {
		uint32_t idx = (uint32_t)((table - SHADOW_POOL_GPA) / SHADOW_PAGE_SIZE);
		struct shadow_page *sp = &gm.pool->pages[idx];

		ck_assert_int_eq(sp->level, level);
		ck_assert(!sp->direct);
		ck_assert_msg(sp->gpa == guest_table, "level %d: expected to shadow %#llx, got %#llx",
			      level, (unsigned long long)guest_table, (unsigned long long)sp->gpa);
		ck_assert_uint_eq(sp->use_count, 1);
		ck_assert_ptr_nonnull(sp->users);
		ck_assert_ptr_null(sp->users->next);
		ck_assert_ptr_eq(sp->users->mmu, gm.mmu);
		ck_assert_uint_eq(sp->users->parent, parent);
		ck_assert_uint_eq(sp->nr_present, 1);
		uint64_t spte = shadow_pool_table(gm.pool, table)[SPTE_INDEX(VA1, level)];
		if (level > 1) {
			guest_table = spte_addr(gm_read(&gm, guest_table + SPTE_INDEX(VA1, level) * 8));
			parent = idx;
			table = spte_addr(spte);
		} else {
			ck_assert_uint_eq(spte_addr(spte), GPA_A);
		}
	}
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

static const struct {
	const char *what;
	uint64_t flags;		/* guest PTE (0: not mapped) */
	unsigned int access;
	uint32_t ec;
} guest_faults[] = {
	{ "not mapped", 0, SHADOW_ACCESS_WRITE, SHADOW_PFERR_WRITE },
	{ "user read of a supervisor page", SPTE_PRESENT | SPTE_WRITABLE, SHADOW_ACCESS_USER,
	  SHADOW_PFERR_PRESENT | SHADOW_PFERR_USER },
	{ "user write to a read-only page", SPTE_PRESENT | SPTE_USER,
	  SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE,
	  SHADOW_PFERR_PRESENT | SHADOW_PFERR_USER | SHADOW_PFERR_WRITE },
	{ "fetch from an NX page", SPTE_PRESENT | SPTE_NX, SHADOW_ACCESS_FETCH,
	  SHADOW_PFERR_PRESENT | SHADOW_PFERR_FETCH },
	{ "reserved bit 51", SPTE_PRESENT | (1ull << 51), 0, SHADOW_PFERR_PRESENT | SHADOW_PFERR_RSVD },
};

START_TEST(test_fault_reflects_guest_own_fault_with_error_code)
{
	struct gm gm;
	uint32_t ec = 0;

	gm_init(&gm, 1024);
	uint64_t cr3 = gm_table(&gm);
	gm_entry(&gm, cr3, VA1, 1);
	if (guest_faults[_i].flags)
		gm_write(&gm, gm_entry(&gm, cr3, VA1, 1), GPA_A | guest_faults[_i].flags);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3);
	int ret = shadow_mmu_fault(gm.mmu, cr3, VA1, guest_faults[_i].access, &ec);

	ck_assert_msg(ret == SHADOW_FAULT_GUEST, "%s: expected the guest's fault, got %d",
		      guest_faults[_i].what, ret);
	ck_assert_msg(ec == guest_faults[_i].ec, "%s: expected error code %#x, got %#x",
		      guest_faults[_i].what, guest_faults[_i].ec, ec);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	struct shadow_vcpu_result res;
	ck_assert_int_eq(shadow_vcpu_access_fault_in(v, VA1, guest_faults[_i].access, &res), -EFAULT);
	ck_assert_uint_eq(res.error_code, guest_faults[_i].ec);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_fault_errors_for_unbacked_gpa_and_missing_root)
{
	struct gm gm;
	uint32_t ec;

	gm_init(&gm, 1024);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, 1024 * GM_PAGE, 1, UW); /* beyond RAM: MMIO */
	gm_map(&gm, cr3, VA2, GPA_A, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1, 0, &ec), -EFAULT);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, 0x0000800000000000ull, 0, &ec), -EINVAL);
	uint64_t other = gm_table(&gm);
	gm_map(&gm, other, VA2, GPA_A, 1, UW);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, other, VA2, 0, &ec), -ENOENT);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA2, 0x100, &ec), -EINVAL);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_read_fault_maps_read_only_until_guest_dirty_is_set)
{
	struct shadow_vcpu_result res;
	struct gm gm;
	uint32_t ec;

	gm_init(&gm, 1024);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	uint64_t pte = gm_entry(&gm, cr3, VA1, 1);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3);

	reach(v, VA1, SHADOW_ACCESS_USER);
	ck_assert_msg(gm_read(&gm, pte) & SPTE_ACCESSED, "a fault walk sets the guest's A");
	ck_assert_msg(!(gm_read(&gm, pte) & SPTE_DIRTY), "a read must not set the guest's D");
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res),
			 -EFAULT);
	ck_assert_uint_eq(res.error_code,
			  SHADOW_PFERR_PRESENT | SHADOW_PFERR_USER | SHADOW_PFERR_WRITE);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE,
					  &ec),
			 SHADOW_FAULT_FIXED);
	ck_assert_msg(gm_read(&gm, pte) & SPTE_DIRTY, "a write fault sets the guest's D");
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res), 0);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* A guest mapping VA1 -> A (4 KiB) and two vCPUs on it that both reached
 * A; the guest's CR3 in *@cr3. */
static void two_vcpus_on_va1(struct gm *gm, uint64_t *cr3, struct shadow_vcpu **v0,
			     struct shadow_vcpu **v1)
{
	gm_init(gm, 1024);
	*cr3 = gm_table(gm);
	gm_map(gm, *cr3, VA1, GPA_A, 1, UW);
	*v0 = sh_vcpu(gm->mmu, 64, *cr3);
	*v1 = sh_vcpu(gm->mmu, 64, *cr3);
	ck_assert_uint_eq(reach(*v0, VA1, 0), GPA_A);
	ck_assert_uint_eq(reach(*v1, VA1, 0), GPA_A);
}

START_TEST(test_invlpg_removes_stale_translation_from_every_vcpu)
{
	struct shadow_vcpu_result res;
	struct shadow_vcpu *v0, *v1;
	uint64_t cr3;
	struct gm gm;

	two_vcpus_on_va1(&gm, &cr3, &v0, &v1);
	gm_map(&gm, cr3, VA1, GPA_B, 1, UW);
	/* Before invlpg the old translation may still be used (as on x86). */
	ck_assert_int_eq(shadow_vcpu_access(v1, VA1, 0, &res), 0);
	ck_assert_uint_eq(res.mpa, GPA_A);
	shadow_vcpu_invlpg(v0, VA1);
	/* v1 did not invlpg itself, but the shared shadow entry is gone and its
	 * TLB was flushed: it can no longer reach A. */
	ck_assert_int_eq(shadow_vcpu_access(v1, VA1, 0, &res), -EFAULT);
	ck_assert_uint_eq(reach(v1, VA1, 0), GPA_B);
	ck_assert_uint_eq(reach(v0, VA1, 0), GPA_B);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v0);
	shadow_vcpu_destroy(v1);
	gm_fini(&gm);
}
END_TEST

static uint64_t vcpu_flushes(struct shadow_vcpu *v)
{
	struct shadow_vcpu_stats st;

	shadow_vcpu_stats(v, &st);
	return st.flushes_all + st.flushes_va;
}

/* The vCPU that executes an invlpg invalidates the address itself: when
 * only that leaf went, umbra sends it no flush (on KVM: no shootdown NMI),
 * and the other vCPUs one each; a table that went flushes everyone. */
START_TEST(test_invlpg_sends_no_flush_to_the_vcpu_that_asked)
{
	struct shadow_vcpu_result res;
	struct shadow_vcpu *v0, *v1;
	uint64_t cr3, f0, f1;
	struct gm gm;

	two_vcpus_on_va1(&gm, &cr3, &v0, &v1);
	f0 = vcpu_flushes(v0);
	f1 = vcpu_flushes(v1);
	gm_map(&gm, cr3, VA1, GPA_B, 1, UW);
	shadow_vcpu_invlpg(v0, VA1);
	ck_assert_msg(vcpu_flushes(v0) == f0, "the asking vCPU: expected no flush request, got %llu",
		      (unsigned long long)(vcpu_flushes(v0) - f0));
	ck_assert_msg(vcpu_flushes(v1) == f1 + 1, "the other vCPU: expected 1 flush request, got %llu",
		      (unsigned long long)(vcpu_flushes(v1) - f1));
	/* Neither reaches A: v0 invalidated VA1 itself, v1 was flushed. */
	ck_assert_int_eq(shadow_vcpu_access(v0, VA1, 0, &res), -EFAULT);
	ck_assert_int_eq(shadow_vcpu_access(v1, VA1, 0, &res), -EFAULT);
	ck_assert_uint_eq(reach(v0, VA1, 0), GPA_B);
	ck_assert_uint_eq(reach(v1, VA1, 0), GPA_B);
	/* The guest points the PDE at a new page table: a shadow table goes,
	 * and both vCPUs are flushed (paging-structure caches). */
	uint64_t pt = gm_table(&gm);
	gm_write(&gm, pt + SPTE_INDEX(VA1, 1) * 8, GPA_C | SPTE_PRESENT | UW);
	gm_write(&gm, gm_entry(&gm, cr3, VA1, 2), pt | GM_DIR);
	f0 = vcpu_flushes(v0);
	f1 = vcpu_flushes(v1);
	shadow_vcpu_invlpg(v0, VA1);
	ck_assert_uint_eq(vcpu_flushes(v0), f0 + 1);
	ck_assert_uint_eq(vcpu_flushes(v1), f1 + 1);
	ck_assert_uint_eq(reach(v1, VA1, 0), GPA_C);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v0);
	shadow_vcpu_destroy(v1);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_invlpg_drops_shadow_table_of_replaced_guest_table)
{
	struct gm gm;

	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	ck_assert_uint_eq(reach(v, VA1, 0), GPA_A);
	/* The guest points the PDE at a new page table mapping VA1 to C. */
	uint64_t pt = gm_table(&gm);
	gm_write(&gm, pt + SPTE_INDEX(VA1, 1) * 8, GPA_C | SPTE_PRESENT | UW);
	gm_write(&gm, gm_entry(&gm, cr3, VA1, 2), pt | GM_DIR);
	shadow_vcpu_invlpg(v, VA1);
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_C);
	struct shadow_mmu_stats st;
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_uint_ge(st.tables_freed, 1);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 1), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_cr3_load_syncs_cached_root_and_keeps_valid_entries)
{
	struct shadow_vcpu_result res;
	struct shadow_mmu_stats before, after;
	struct gm gm;

	gm_init(&gm, 1024);
	uint64_t x = gm_table(&gm), y = gm_table(&gm);
	gm_map(&gm, x, VA1, GPA_A, 1, UW);
	gm_map(&gm, x, VA2, GPA_C, 1, UW);
	gm_map(&gm, y, VA1, GPA_C, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 64, x);

	ck_assert_uint_eq(reach(v, VA1, 0), GPA_A);
	ck_assert_uint_eq(reach(v, VA2, 0), GPA_C);
	ck_assert_int_eq(shadow_vcpu_load_cr3(v, y), 0);
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_C);
	/* While X is not loaded, its guest changes VA1 without invlpg. */
	gm_map(&gm, x, VA1, GPA_B, 1, UW);
	ck_assert_int_eq(shadow_vcpu_load_cr3(v, x), 0);
	shadow_mmu_stats(gm.mmu, &before);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), -EFAULT);
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_B);
	/* VA2 did not change: its shadow entry survived the sync (no fault). */
	ck_assert_int_eq(shadow_vcpu_access(v, VA2, 0, &res), 0);
	ck_assert_uint_eq(res.mpa, GPA_C);
	shadow_mmu_stats(gm.mmu, &after);
	ck_assert_uint_eq(after.faults - before.faults, 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_full_flush_syncs_changed_permissions)
{
	struct shadow_vcpu_result res;
	struct gm gm;

	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	reach(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE);
	/* The guest write-protects VA1 and makes its PDE supervisor-only. */
	gm_map(&gm, cr3, VA1, GPA_A, 1, SPTE_USER);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res), 0);
	ck_assert_int_eq(shadow_vcpu_flush(v), 0);
	ck_assert_int_eq(shadow_vcpu_access_fault_in(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE,
						     &res),
			 -EFAULT);
	ck_assert_uint_eq(res.error_code,
			  SHADOW_PFERR_PRESENT | SHADOW_PFERR_WRITE | SHADOW_PFERR_USER);
	ck_assert_uint_eq(reach(v, VA1, SHADOW_ACCESS_USER), GPA_A);
	gm_write(&gm, gm_entry(&gm, cr3, VA1, 2), gm_read(&gm, gm_entry(&gm, cr3, VA1, 2)) & ~SPTE_USER);
	ck_assert_int_eq(shadow_vcpu_flush(v), 0);
	ck_assert_int_eq(shadow_vcpu_access_fault_in(v, VA1, SHADOW_ACCESS_USER, &res), -EFAULT);
	ck_assert_uint_eq(res.error_code, SHADOW_PFERR_PRESENT | SHADOW_PFERR_USER);
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_A);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* A root's mark holds while nothing of the VM is zapped (a CR3 load whose
 * sync keeps every entry): an invlpg of a changed mapping, which removes
 * its leaf, and a root made anew after an eviction, find it stale. */
START_TEST(test_root_mark_goes_stale_on_a_zap_and_on_eviction)
{
	struct gm gm;
	uint64_t gen, gen2;

	gm_init_full(&gm, 1024, NULL, 256, 1, NULL, NULL, NULL);
	uint64_t cr3a = gm_table(&gm), cr3b = gm_table(&gm);
	gm_map(&gm, cr3a, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3b, VA1, GPA_B, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3a);
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_A);
	ck_assert(!shadow_mmu_root_is_marked(gm.mmu, cr3a, &gen));
	shadow_mmu_root_mark(gm.mmu, cr3a, gen);
	ck_assert_msg(shadow_mmu_root_is_marked(gm.mmu, cr3a, &gen2) && gen2 == gen,
		      "expected the mark to hold with nothing zapped");
	ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3a), 0); /* a sync that zaps nothing */
	ck_assert(shadow_mmu_root_is_marked(gm.mmu, cr3a, &gen2));
	gm_map(&gm, cr3a, VA1, GPA_C, 1, UW);
	shadow_vcpu_invlpg(v, VA1);
	ck_assert_msg(!shadow_mmu_root_is_marked(gm.mmu, cr3a, &gen), "a zapped leaf left the mark");
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_C);
	shadow_mmu_root_mark(gm.mmu, cr3a, gen);
	ck_assert(shadow_mmu_root_is_marked(gm.mmu, cr3a, &gen2));
	/* One root slot: loading b evicts a, which comes back unmarked. */
	ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3b), 0);
	ck_assert(!shadow_mmu_root_is_marked(gm.mmu, cr3a, &gen2));
	ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3a), 0);
	ck_assert_msg(!shadow_mmu_root_is_marked(gm.mmu, cr3a, &gen2), "a root made anew is marked");
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/*
 * With no bound configured, the root cache holds every address space the
 * guest switches among (more than its first 8 slots): a second round of
 * switches creates no table and evicts no root.  With a quota, the least
 * recently used unpinned roots make room for new ones (no reclaim) and the
 * charged tables stay within the quota.  _i: 0 no quota, 1 a quota of 24.
 */
#define SPACES 40
START_TEST(test_root_cache_holds_every_address_space_the_quota_allows)
{
	const unsigned long quota = _i ? 24 : 0;
	struct shadow_mmu_stats st, st0;
	uint64_t cr3[SPACES];
	struct gm gm;

	gm_init_quota(&gm, 1024, NULL, 512, quota);
	for (int i = 0; i < SPACES; i++) {
		cr3[i] = gm_table(&gm);
		gm_map(&gm, cr3[i], VA1, GPA_A + (uint64_t)i * GM_PAGE, 1, UW);
	}
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3[0]);
	for (int round = 0; round < 2; round++) {
		if (round == 1)
			shadow_mmu_stats(gm.mmu, &st0);
		for (int i = 0; i < SPACES; i++) {
			ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3[i]), 0);
			ck_assert_uint_eq(reach(v, VA1, 0), GPA_A + (uint64_t)i * GM_PAGE);
			if (quota)
				ck_assert_uint_le(shadow_mmu_tables_charged(gm.mmu), quota);
		}
	}
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_uint_eq(st.reclaims, 0);
	if (!quota) {
		ck_assert_msg(st.root_evictions == 0 && st.tables_created == st0.tables_created,
			      "second round over %d address spaces: expected no eviction and no table "
			      "created, got %llu evictions and %llu tables",
			      SPACES, (unsigned long long)st.root_evictions,
			      (unsigned long long)(st.tables_created - st0.tables_created));
		ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 4), SPACES);
	} else {
		/* 4 tables per address space: 6 fit the quota of 24. */
		ck_assert_uint_gt(st.root_evictions, SPACES);
		ck_assert_uint_le(shadow_pool_pages_in_use(gm.pool, 4), quota / 4);
	}
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_root_cache_is_bounded_and_evicts_lru_unpinned_root)
{
	struct gm gm;
	struct shadow_mmu_stats st;

	gm_init_full(&gm, 1024, NULL, 256, 2, NULL, NULL, NULL);
	uint64_t cr3[3];
	for (int i = 0; i < 3; i++) {
		cr3[i] = gm_table(&gm);
		gm_map(&gm, cr3[i], VA1, GPA_A + (uint64_t)i * GM_PAGE, 1, UW);
	}
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3[0]);
	for (int round = 0; round < 2; round++) {
		for (int i = 0; i < 3; i++) {
			ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3[i]), 0);
			ck_assert_uint_eq(reach(v, VA1, 0), GPA_A + (uint64_t)i * GM_PAGE);
			ck_assert_uint_le(shadow_pool_pages_in_use(gm.pool, 4), 2);
		}
	}
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_uint_eq(st.root_evictions, 4);
	/* Two vCPUs pin two roots: a third CR3 finds no root to evict. */
	struct shadow_vcpu *w = sh_vcpu(gm.mmu, 8, cr3[0]);
	ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3[1]), 0);
	struct shadow_vcpu_config cfg = { .tlb_entries = 8 };
	struct shadow_vcpu *x;
	ck_assert_int_eq(shadow_vcpu_create(gm.mmu, &cfg, &x), 0);
	ck_assert_int_eq(shadow_vcpu_load_cr3(x, cr3[2]), -EBUSY);
	ck_assert_uint_eq(reach(w, VA1, 0), GPA_A);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(x);
	shadow_vcpu_destroy(w);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_guest_2m_page_is_shadowed_by_4k_entries)
{
	const uint64_t va = 0x0000000040000000ull, frame = 0x400000, frame2 = 0x600000;
	struct gm gm;

	gm_init(&gm, 2048); /* 8 MiB */
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, va, frame, 2, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 64, cr3);

	ck_assert_uint_eq(reach(v, va + 0x3123, 0), frame + 0x3123);
	ck_assert_uint_eq(reach(v, va + 0x1ff008, SHADOW_ACCESS_USER), frame + 0x1ff008);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 1), 1);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, (frame + 0x3000) / GM_PAGE), 1);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, (frame + 0x1ff000) / GM_PAGE), 1);
	/* The guest moves the large page: invlpg drops the direct table. */
	gm_map(&gm, cr3, va, frame2, 2, UW);
	shadow_vcpu_invlpg(v, va);
	ck_assert_uint_eq(reach(v, va + 0x1ff008, 0), frame2 + 0x1ff008);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, (frame + 0x1ff000) / GM_PAGE), 0);
	/* A write to the clean large page re-creates the table writable. */
	ck_assert_uint_eq(reach(v, va + 0x10, SHADOW_ACCESS_WRITE), frame2 + 0x10);
	ck_assert_msg(gm_read(&gm, gm_entry(&gm, cr3, va, 2)) & SPTE_DIRTY, "expected D on the PDE");
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_guest_1g_page_is_shadowed_by_4k_entries)
{
	const uint64_t va = 0x0000008040000000ull; /* PML4 1, PDPT 1 */
	struct gm gm;
	uint32_t ec;

	gm_init(&gm, 2048); /* the 1 GiB page at 0 is backed for its first 8 MiB */
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, va, 0, 3, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 64, cr3);

	ck_assert_uint_eq(reach(v, va + GPA_A + 0x18, 0), GPA_A + 0x18);
	ck_assert_uint_eq(reach(v, va + 0x201000, 0), 0x201000);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 2), 1);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 1), 2);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, va + 0x800000, 0, &ec), -EFAULT);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_zap_range_removes_every_alias_of_backing_page)
{
	struct shadow_vcpu_result res;
	struct gm gm;

	gm_init(&gm, 1024);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3, VA2, GPA_A, 1, UW);
	gm_map(&gm, cr3, 0xffff800000000000ull, GPA_A, 1, SPTE_WRITABLE);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 64, cr3);

	reach(v, VA1, 0);
	reach(v, VA2, 0);
	reach(v, 0xffff800000000000ull, 0);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 3);
	assert_mmu_check(gm.mmu);
	ck_assert_int_eq(shadow_mmu_zap_range(gm.mmu, gm.slot, GPA_A / GM_PAGE, GPA_A / GM_PAGE), 3);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), -EFAULT);
	ck_assert_int_eq(shadow_vcpu_access(v, VA2, 0, &res), -EFAULT);
	ck_assert_int_eq(shadow_vcpu_access(v, 0xffff800000000000ull, 0, &res), -EFAULT);
	ck_assert_int_eq(shadow_mmu_zap_range(gm.mmu, gm.slot, 5, 4), -EINVAL);
	ck_assert_int_eq(shadow_mmu_zap_range(gm.mmu, 7, 0, 0), -EINVAL);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

struct fault_thread {
	struct gm *gm;
	uint64_t cr3, va;
	int ret;
	bool done;
};

static void *fault_thread_fn(void *arg)
{
	struct fault_thread *ft = arg;
	uint32_t ec;

	ft->ret = shadow_mmu_fault(ft->gm->mmu, ft->cr3, ft->va, 0, &ec);
	__atomic_store_n(&ft->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static bool fault_done(void *p)
{
	return __atomic_load_n(&((struct fault_thread *)p)->done, __ATOMIC_ACQUIRE);
}

static uint64_t ram_read_waits(struct gm *gm)
{
	struct notifier_stats st;

	notifier_object_stats(gm->ram, &st);
	return st.read_waits;
}

/* Has the fault thread @ft slept in notifier_read_begin, or returned? */
static bool fault_asleep_or_done(void *ft)
{
	return fault_done(ft) || ram_read_waits(((struct fault_thread *)ft)->gm) > 0;
}

/* Run in both delivery modes: range start/end, and per-page (2008). */
START_TEST(test_invalidate_range_start_unmaps_and_flushes_before_return)
{
	struct shadow_vcpu_result res;
	struct notifier_range range;
	struct gm gm;
	pthread_t t;

	ck_assert_int_eq(notifier_thread_init(), 0);
	gm_init(&gm, 1024);
	ck_assert_int_eq(notifier_object_set_mode(gm.ram, _i ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE),
			 0);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3, VA2, GPA_B, 1, UW);
	struct shadow_vcpu *v0 = sh_vcpu(gm.mmu, 64, cr3), *v1 = sh_vcpu(gm.mmu, 64, cr3);
	reach(v0, VA1, 0);
	reach(v1, VA1, 0);
	reach(v1, VA2, 0);

	notifier_range_init(&range, gm.ram, NOTIFIER_EVENT_SWAPOUT, GPA_A / GM_PAGE,
			    GPA_B / GM_PAGE, NOTIFIER_RANGE_MAY_BLOCK);
	ck_assert_int_eq(notifier_invalidate_range_start(&range), 0);
	/* Both TLBs held A: neither vCPU can reach A or B any more. */
	ck_assert_int_eq(shadow_vcpu_access(v0, VA1, 0, &res), -EFAULT);
	ck_assert_int_eq(shadow_vcpu_access(v1, VA1, 0, &res), -EFAULT);
	ck_assert_int_eq(shadow_vcpu_access(v1, VA2, 0, &res), -EFAULT);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	/* A fault on the range waits for its end instead of mapping it. */
	struct fault_thread ft = { .gm = &gm, .cr3 = cr3, .va = VA1 };
	ck_assert_int_eq(pthread_create(&t, NULL, fault_thread_fn, &ft), 0);
	/* The fault resolves page A with notifier_read_begin, which sleeps
	 * (and counts a read_wait) while A's invalidation is in progress. */
	ck_assert_msg(test_wait_until(fault_asleep_or_done, &ft, TEST_WAIT_LIMIT_S),
		      "expected the fault asleep in notifier_read_begin within %.0f s, read_waits %llu",
		      TEST_WAIT_LIMIT_S, (unsigned long long)ram_read_waits(&gm));
	ck_assert_msg(!fault_done(&ft), "a fault completed while its page's invalidation was in progress");
	ck_assert_uint_eq(ram_read_waits(&gm), 1);
	ck_assert_msg(test_stays_false(fault_done, &ft, 0.02),
		      "a fault completed while its page's invalidation was in progress");
	ck_assert_int_eq(shadow_vcpu_access(v0, VA1, 0, &res), -EFAULT);
	notifier_invalidate_range_end(&range);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(ft.ret, SHADOW_FAULT_FIXED);
	ck_assert_uint_eq(reach(v0, VA1, 0), GPA_A);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v0);
	shadow_vcpu_destroy(v1);
	gm_fini(&gm);
	notifier_thread_exit();
}
END_TEST

static struct gm *invalidating_gm;
static int get_page_calls;

/* A get_page that races with a swapout: the page's invalidation starts (and
 * ends) after notifier_read_begin() and before the fault installs. */
static int racing_get_page(void *priv, uint64_t page, bool write)
{
	struct notifier_range range;

	if (get_page_calls++ == 0) {
		notifier_range_init(&range, invalidating_gm->ram, NOTIFIER_EVENT_SWAPOUT, page, page,
				    NOTIFIER_RANGE_MAY_BLOCK);
		ck_assert_int_eq(notifier_invalidate_range_start(&range), 0);
		notifier_invalidate_range_end(&range);
	}
	return 0;
}

static const struct shadow_slot_ops racing_ops = { .get_page = racing_get_page };

/* _i = 0: the fault builds the path (write mode); 1: the path is there
 * (a fault on the next page built it), so the fault installs in read mode
 * and must see the invalidation there. */
START_TEST(test_fault_retries_when_invalidation_begins_during_resolution)
{
	struct shadow_mmu_stats st;
	struct gm gm;
	uint32_t ec;

	ck_assert_int_eq(notifier_thread_init(), 0);
	gm_init_full(&gm, 1024, NULL, 256, 0, NULL, &racing_ops, NULL);
	invalidating_gm = &gm;
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3, VA1 + GM_PAGE, GPA_B, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3);
	get_page_calls = 1; /* the path's first fault: no race */
	if (_i)
		ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1 + GM_PAGE, 0, &ec),
				 SHADOW_FAULT_FIXED);
	get_page_calls = 0;
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1, 0, &ec), SHADOW_FAULT_FIXED);
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_msg(st.retries == 1, "expected 1 retry, got %llu", (unsigned long long)st.retries);
	ck_assert_int_eq(get_page_calls, 2);
	ck_assert_uint_eq(st.read_mode_installs, (uint64_t)_i);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	notifier_thread_exit();
}
END_TEST

struct nonblock_arg {
	struct gm *gm;
	int ret;
};

static void *nonblocking_invalidate(void *p)
{
	struct nonblock_arg *a = p;
	struct notifier_range range;

	notifier_thread_init();
	notifier_range_init(&range, a->gm->ram, NOTIFIER_EVENT_PROTECT, 0, 3, 0);
	a->ret = notifier_invalidate_range_start(&range);
	if (a->ret == 0)
		notifier_invalidate_range_end(&range);
	notifier_thread_exit();
	return NULL;
}

START_TEST(test_nonblocking_invalidation_answers_eagain_when_mmu_lock_is_held)
{
	struct nonblock_arg a;
	struct gm gm;
	pthread_t t;

	gm_init(&gm, 1024);
	a.gm = &gm;
	umbra_rwlock_write_lock(&gm.mmu->mmu_lock);
	ck_assert_int_eq(pthread_create(&t, NULL, nonblocking_invalidate, &a), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	umbra_rwlock_write_unlock(&gm.mmu->mmu_lock);
	ck_assert_int_eq(a.ret, -EAGAIN);
	ck_assert_int_eq(pthread_create(&t, NULL, nonblocking_invalidate, &a), 0);
	ck_assert_int_eq(pthread_join(t, NULL), 0);
	ck_assert_int_eq(a.ret, 0);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_p2m_redirect_zaps_old_backing_page)
{
	struct shadow_vcpu_result res;
	struct gm gm;

	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	ck_assert_uint_eq(reach(v, VA1, 0), GPA_A);
	/* Copy-on-write style: gfn A is now backed by page C of the object. */
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, GPA_A, 1, gm.slot, GPA_C / GM_PAGE), 0);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), -EFAULT);
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_C);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_C / GM_PAGE), 1);
	uint64_t mpa;
	ck_assert_int_eq(shadow_mmu_p2m_lookup(gm.mmu, GPA_A + 4, &mpa, NULL), 0);
	ck_assert_uint_eq(mpa, GPA_C + 4);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, GPA_A, 1, -1, 0), 0);
	ck_assert_int_eq(shadow_mmu_p2m_lookup(gm.mmu, GPA_A, &mpa, NULL), -EFAULT);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, 1023 * GM_PAGE, 2, gm.slot, 0), -EINVAL);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_young_tracks_faults_and_clear_tracks_access)
{
	struct shadow_vcpu_result res;
	struct gm gm;
	uint64_t page = GPA_A / GM_PAGE;

	ck_assert_int_eq(notifier_thread_init(), 0);
	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	ck_assert_int_eq(notifier_test_young(gm.ram, page), 0);
	reach(v, VA1, 0);
	ck_assert_int_eq(notifier_test_young(gm.ram, page), 1);
	ck_assert_int_eq(notifier_clear_young(gm.ram, page, page), 1);
	ck_assert_int_eq(notifier_test_young(gm.ram, page), 0);
	ck_assert_int_eq(notifier_clear_young(gm.ram, page, page), 0);
	/* Cleared means access-tracked: once the TLB no longer holds the
	 * translation (clear_young does not flush it), the next access faults
	 * and marks the page again. */
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), 0);
	ck_assert(res.tlb_hit);
	shadow_vcpu_invlpg(v, VA1);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), -EFAULT);
	reach(v, VA1, 0);
	ck_assert_int_eq(notifier_test_young(gm.ram, page), 1);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	notifier_thread_exit();
}
END_TEST

START_TEST(test_object_release_unmaps_everything_and_refuses_faults)
{
	struct shadow_vcpu_result res;
	struct gm gm;
	uint32_t ec;

	ck_assert_int_eq(notifier_thread_init(), 0);
	gm_init(&gm, 1024);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3, VA2, GPA_B, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 64, cr3);
	reach(v, VA1, 0);
	reach(v, VA2, 0);
	notifier_object_destroy(gm.ram);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), -EFAULT);
	ck_assert_int_eq(shadow_vcpu_access(v, VA2, 0, &res), -EFAULT);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1, 0, &ec), -ENODEV);
	shadow_vcpu_destroy(v);
	shadow_mmu_destroy(gm.mmu);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 0), 0);
	shadow_pool_destroy(gm.pool);
	munmap(gm.host, gm.npages * GM_PAGE);
	notifier_thread_exit();
}
END_TEST

START_TEST(test_pool_exhaustion_zaps_everything_and_recovers)
{
	struct gm gm;

	/* 8 pages: each VA below needs a root plus 3 tables of its own. */
	gm_init_full(&gm, 1024, NULL, 8, 0, NULL, NULL, NULL);
	uint64_t cr3 = gm_table(&gm);
	for (uint64_t i = 0; i < 4; i++)
		gm_map(&gm, cr3, i << 39, GPA_A + i * GM_PAGE, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 0, cr3);
	for (int round = 0; round < 3; round++)
		for (uint64_t i = 0; i < 4; i++)
			ck_assert_uint_eq(reach(v, i << 39, 0), GPA_A + i * GM_PAGE);
	ck_assert_uint_le(shadow_pool_pages_in_use(gm.pool, 0), 8);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* An RCU reader standing for a lock-free walker that is still reading a
 * table: holds a read-side critical section until told to leave. */
struct rcu_reader {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool inside, leave;
};

static void *rcu_reader_thread(void *p)
{
	struct rcu_reader *r = p;

	notifier_thread_init();
	umbra_rcu_read_lock();
	pthread_mutex_lock(&r->lock);
	r->inside = true;
	pthread_cond_broadcast(&r->cond);
	while (!r->leave)
		pthread_cond_wait(&r->cond, &r->lock);
	pthread_mutex_unlock(&r->lock);
	umbra_rcu_read_unlock();
	notifier_thread_exit();
	return NULL;
}

/* Allocates a level-1 table from @gm's pool: false if it answered -ENOMEM;
 * true for anything else (a page, given back at once, or another error). */
static bool pool_alloc_not_enomem(void *p)
{
	struct gm *gm = p;
	uint64_t gpa;
	int ret = shadow_pool_alloc(gm->pool, 1, &gpa);

	if (ret == 0)
		ck_assert_int_eq(shadow_pool_free(gm->pool, gpa), 0);
	return ret != -ENOMEM;
}

START_TEST(test_freed_tables_are_not_reused_until_readers_leave)
{
	struct rcu_reader r = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	uint64_t gpa[3];
	pthread_t thr;
	struct gm gm;

	/* 4 pages: the root and the 3 tables below it for one VA. */
	gm_init_full(&gm, 1024, NULL, 4, 0, NULL, NULL, NULL);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 0, cr3);
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_A);
	ck_assert_uint_eq(shadow_pool_pages_in_use(gm.pool, 0), 4);
	ck_assert_int_eq(pthread_create(&thr, NULL, rcu_reader_thread, &r), 0);
	pthread_mutex_lock(&r.lock);
	while (!r.inside)
		pthread_cond_wait(&r.cond, &r.lock);
	pthread_mutex_unlock(&r.lock);
	/* The pinned root stays; the 3 tables below it are freed... */
	shadow_mmu_zap_all(gm.mmu);
	ck_assert_msg(shadow_pool_pages_in_use(gm.pool, 0) == 1,
		      "expected 1 page in use after the zap, got %zu",
		      shadow_pool_pages_in_use(gm.pool, 0));
	/* ...but not reusable while a reader that began before may read them,
	 * however long it stays (checked at once, then for 50 ms more). */
	ck_assert_msg(shadow_pool_alloc(gm.pool, 1, &gpa[0]) == -ENOMEM,
		      "expected -ENOMEM while a reader is inside, got a page");
	ck_assert_msg(test_stays_false(pool_alloc_not_enomem, &gm, 0.05),
		      "expected -ENOMEM while a reader is inside for 50 ms, got a page");
	pthread_mutex_lock(&r.lock);
	r.leave = true;
	pthread_cond_broadcast(&r.cond);
	pthread_mutex_unlock(&r.lock);
	ck_assert_int_eq(pthread_join(thr, NULL), 0);
	notifier_barrier();
	for (int k = 0; k < 3; k++) {
		int ret = shadow_pool_alloc(gm.pool, 1, &gpa[k]);

		ck_assert_msg(ret == 0, "page %d after the grace period: expected 0, got %d", k, ret);
	}
	for (int k = 0; k < 3; k++)
		ck_assert_int_eq(shadow_pool_free(gm.pool, gpa[k]), 0);
	/* And the vCPU faults its way back. */
	ck_assert_uint_eq(reach(v, VA1, 0), GPA_A);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* Lock-free allocator under contention: each thread stamps the pages it
 * holds and checks the stamp before freeing them, so a page handed out twice
 * at once (a lost or ABA'd update of the free list) is caught. */
#define ALLOC_THREADS 4
#define ALLOC_ROUNDS 4000
#define ALLOC_HOLD 6

struct alloc_arg {
	struct shadow_pool *pool;
	uint64_t id;
	unsigned int bad, nomem;
};

static void *alloc_thread(void *p)
{
	struct alloc_arg *a = p;
	uint32_t held[ALLOC_HOLD];

	notifier_thread_init();
	for (unsigned int r = 0; r < ALLOC_ROUNDS; r++) {
		unsigned int n = 1 + r % ALLOC_HOLD, got = 0;

		for (unsigned int k = 0; k < n; k++) {
			if (pool_alloc_index(a->pool, 1 + k % SPTE_LEVELS, &held[got])) {
				a->nomem++;
				continue;
			}
			uint64_t *e = pool_entries(a->pool, held[got]);

			a->bad += e[0] != 0 || e[511] != 0; /* not zeroed: someone else's */
			__atomic_store_n(&e[0], a->id << 32 | r, __ATOMIC_RELAXED);
			got++;
		}
		for (unsigned int k = 0; k < got; k++) {
			uint64_t *e = pool_entries(a->pool, held[k]);

			a->bad += __atomic_load_n(&e[0], __ATOMIC_RELAXED) != (a->id << 32 | r);
			pool_free_index(a->pool, held[k]);
		}
		if (r % 512 == 0)
			pool_wait_deferred(a->pool); /* let frees come back now and then */
	}
	notifier_thread_exit();
	return NULL;
}

START_TEST(test_lock_free_allocator_never_hands_out_a_page_twice)
{
	struct alloc_arg args[ALLOC_THREADS];
	pthread_t thr[ALLOC_THREADS];
	struct shadow_pool *pool;
	uint64_t gpa;
	unsigned int nomem = 0;

	ck_assert_int_eq(shadow_pool_create(64, &pool), 0);
	for (int t = 0; t < ALLOC_THREADS; t++) {
		args[t] = (struct alloc_arg){ .pool = pool, .id = (uint64_t)t + 1 };
		ck_assert_int_eq(pthread_create(&thr[t], NULL, alloc_thread, &args[t]), 0);
	}
	for (int t = 0; t < ALLOC_THREADS; t++) {
		ck_assert_int_eq(pthread_join(thr[t], NULL), 0);
		ck_assert_msg(args[t].bad == 0, "thread %d: expected 0 pages shared, got %u", t,
			      args[t].bad);
		nomem += args[t].nomem;
	}
	ck_assert_msg(shadow_pool_pages_in_use(pool, 0) == 0, "expected 0 pages in use, got %zu",
		      shadow_pool_pages_in_use(pool, 0));
	/* Every page comes back after the grace period, each exactly once. */
	notifier_barrier();
	for (int k = 0; k < 64; k++) {
		int ret = shadow_pool_alloc(pool, 1, &gpa);

		ck_assert_msg(ret == 0, "page %d of 64: expected 0, got %d", k, ret);
	}
	ck_assert_int_eq(shadow_pool_alloc(pool, 1, &gpa), -ENOMEM);
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 1), 64);
	(void)nomem; /* 64 pages for up to 24 held: -ENOMEM only while frees wait */
	for (uint64_t k = 0; k < 64; k++)
		ck_assert_int_eq(shadow_pool_free(pool, SHADOW_POOL_GPA + k * SHADOW_PAGE_SIZE), 0);
	shadow_pool_destroy(pool);
}
END_TEST

START_TEST(test_vcpu_tlb_size_is_configurable)
{
	static const struct {
		unsigned int entries;
		unsigned int expect_hits;
	} sizes[] = { { 0, 0 }, { 1, 2 }, { 64, 4 } };
	struct shadow_vcpu_result res;
	struct shadow_vcpu_stats st;
	struct gm gm;

	gm_init(&gm, 1024);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3, VA2, GPA_B, 1, UW);
	for (unsigned int k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		struct shadow_vcpu *v = sh_vcpu(gm.mmu, sizes[k].entries, cr3);

		reach(v, VA1, 0);
		reach(v, VA2, 0);
		shadow_vcpu_stats(v, &st);
		uint64_t hits0 = st.tlb_hits;
		/* VA1, VA1, VA2, VA2: a 1-entry TLB hits twice, a 64-entry four times. */
		ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), 0);
		ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), 0);
		ck_assert_int_eq(shadow_vcpu_access(v, VA2, 0, &res), 0);
		ck_assert_int_eq(shadow_vcpu_access(v, VA2, 0, &res), 0);
		shadow_vcpu_stats(v, &st);
		ck_assert_msg(st.tlb_hits - hits0 == sizes[k].expect_hits,
			      "%u entries: expected %u hits, got %llu", sizes[k].entries,
			      sizes[k].expect_hits, (unsigned long long)(st.tlb_hits - hits0));
		ck_assert_uint_le(shadow_vcpu_tlb_valid(v), sizes[k].entries);
		shadow_vcpu_destroy(v);
	}
	gm_fini(&gm);
}
END_TEST

START_TEST(test_vcpu_refuses_shadow_entry_without_preset_accessed)
{
	struct shadow_vcpu_result res;
	struct gm gm;

	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 0, &cr3);
	reach(v, VA1, SHADOW_ACCESS_WRITE);
	/* Find the shadow leaf and clear its A: the CPU would have to write
	 * the read-only pool, which the model reports. */
	uint64_t *leaf = NULL;
	for (uint32_t i = 0; i < gm.pool->nr_pages && !leaf; i++)
		if (gm.pool->pages[i].level == 1)
			leaf = shadow_pool_table(gm.pool, SHADOW_POOL_GPA + (uint64_t)i * SHADOW_PAGE_SIZE) +
			       SPTE_INDEX(VA1, 1);
	ck_assert_ptr_nonnull(leaf);
	ck_assert(spte_is_accessed(*leaf) && spte_is_dirty(*leaf));
	*leaf &= ~SPTE_ACCESSED;
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), -EROFS);
	*leaf |= SPTE_ACCESSED;
	*leaf &= ~SPTE_DIRTY;
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, 0, &res), 0);
	ck_assert_int_eq(shadow_vcpu_access(v, VA1, SHADOW_ACCESS_WRITE, &res), -EROFS);
	*leaf |= SPTE_DIRTY;
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_teardown_frees_every_table_of_many_roots)
{
	struct gm gm;

	gm_init(&gm, 4096);
	struct shadow_vcpu *v = NULL;
	for (int r = 0; r < 4; r++) {
		uint64_t cr3 = gm_table(&gm);
		for (uint64_t i = 0; i < 16; i++)
			gm_map(&gm, cr3, (i << 30) | (i << 21) | (i << 12), GM_DATA + i * GM_PAGE, 1,
			       UW);
		if (!v)
			v = sh_vcpu(gm.mmu, 16, cr3);
		else
			ck_assert_int_eq(shadow_vcpu_load_cr3(v, cr3), 0);
		for (uint64_t i = 0; i < 16; i++)
			reach(v, (i << 30) | (i << 21) | (i << 12), 0);
	}
	ck_assert_uint_gt(shadow_pool_pages_in_use(gm.pool, 0), 4 * 32);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm); /* asserts the pool is empty */
}
END_TEST

/* ---- re-sync: invlpg re-validates, shared guest tables, paging mode -------- */

/* The leaf of VA1 in @v's shadow, reached without a fault: its machine
 * address (asserts the access succeeds). */
static uint64_t reach_no_fault(struct shadow_vcpu *v, uint64_t va, unsigned int access)
{
	struct shadow_vcpu_result res;
	int ret = shadow_vcpu_access(v, va, access, &res);

	ck_assert_msg(ret == 0, "access %#llx with no fault: expected 0, got %d (ec %#x)",
		      (unsigned long long)va, ret, res.error_code);
	return res.mpa;
}

START_TEST(test_invlpg_keeps_unchanged_mapping)
{
	struct shadow_mmu_stats before, after;
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	/* A writable leaf (the guest's D set by the write fault) and, at VA2,
	 * a read-only one (D clear): neither changes in the guest. */
	gm_map(&gm, cr3, VA2, GPA_B, 1, UW);
	reach(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE);
	reach(v, VA2, SHADOW_ACCESS_USER);
	shadow_mmu_stats(gm.mmu, &before);
	for (int k = 0; k < 8; k++) {
		shadow_vcpu_invlpg(v, VA1);
		shadow_vcpu_invlpg(v, VA2);
	}
	ck_assert_uint_eq(reach_no_fault(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE), GPA_A);
	ck_assert_uint_eq(reach_no_fault(v, VA2, SHADOW_ACCESS_USER), GPA_B);
	shadow_mmu_stats(gm.mmu, &after);
	ck_assert_msg(after.faults == before.faults, "expected no fault after invlpg of unchanged "
		      "mappings, got %llu", (unsigned long long)(after.faults - before.faults));
	ck_assert_uint_eq(after.zapped, before.zapped);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 1);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_B / GM_PAGE), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* A change of the guest's leaf for VA1 (mapped UW to GPA_A, written so
 * that A and D are set) after which invlpg must drop the shadow leaf. */
static const struct {
	const char *what;
	uint64_t pte;		/* the guest's new PTE for VA1 */
	unsigned int access;	/* an access the old shadow leaf allowed */
} invlpg_changes[] = {
	{ "frame", GPA_B | SPTE_PRESENT | UW | SPTE_ACCESSED | SPTE_DIRTY, SHADOW_ACCESS_USER },
	{ "write right", GPA_A | SPTE_PRESENT | SPTE_USER | SPTE_ACCESSED | SPTE_DIRTY,
	  SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE },
	{ "user right", GPA_A | SPTE_PRESENT | SPTE_WRITABLE | SPTE_ACCESSED | SPTE_DIRTY,
	  SHADOW_ACCESS_USER },
	{ "exec right", GPA_A | SPTE_PRESENT | UW | SPTE_NX | SPTE_ACCESSED | SPTE_DIRTY,
	  SHADOW_ACCESS_USER | SHADOW_ACCESS_FETCH },
	{ "accessed cleared", GPA_A | SPTE_PRESENT | UW | SPTE_DIRTY, SHADOW_ACCESS_USER },
	{ "dirty cleared", GPA_A | SPTE_PRESENT | UW | SPTE_ACCESSED,
	  SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE },
	{ "not present", 0, SHADOW_ACCESS_USER },
};

START_TEST(test_invlpg_drops_changed_mapping)
{
	struct shadow_vcpu_result res;
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	reach(v, VA1, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE);
	reach_no_fault(v, VA1, invlpg_changes[_i].access);
	gm_write(&gm, gm_entry(&gm, cr3, VA1, 1), invlpg_changes[_i].pte);
	shadow_vcpu_invlpg(v, VA1);
	ck_assert_msg(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE) == 0,
		      "%s changed: expected the shadow leaf dropped, got %zu", invlpg_changes[_i].what,
		      shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE));
	ck_assert_msg(shadow_vcpu_access(v, VA1, invlpg_changes[_i].access, &res) == -EFAULT,
		      "%s changed: the vCPU still reaches the old translation", invlpg_changes[_i].what);
	ck_assert_uint_eq(res.error_code & SHADOW_PFERR_PRESENT, 0);
	if (invlpg_changes[_i].pte & SPTE_PRESENT) {
		/* A read faults the new entry back; A set again by the walk. */
		ck_assert_uint_eq(reach(v, VA1, 0) & ~(GM_PAGE - 1),
				  spte_addr(invlpg_changes[_i].pte));
		ck_assert(gm_read(&gm, gm_entry(&gm, cr3, VA1, 1)) & SPTE_ACCESSED);
	}
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_invlpg_drops_path_whose_guest_table_entry_lost_accessed)
{
	struct gm gm;
	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	reach(v, VA1, SHADOW_ACCESS_USER);
	uint64_t pde = gm_entry(&gm, cr3, VA1, 2);

	ck_assert(gm_read(&gm, pde) & SPTE_ACCESSED);
	gm_write(&gm, pde, gm_read(&gm, pde) & ~SPTE_ACCESSED);
	shadow_vcpu_invlpg(v, VA1);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	ck_assert_uint_eq(reach(v, VA1, SHADOW_ACCESS_USER), GPA_A);
	ck_assert_msg(gm_read(&gm, pde) & SPTE_ACCESSED, "the refault sets the PDE's A again");
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* VA_Y in y: VA1 2 MiB higher, so that y's PDE for it is another entry
 * (another address: a shadow of its own). */
#define VA_Y (VA1 + (2ull << 20))

/* Two address spaces x and y whose PDEs for VA1 (x) and VA_Y (y) point at
 * one guest page table *@pt (-> GPA_A): two shadows of it, one per
 * address; a vCPU on each.  Returns x. */
static uint64_t shared_pt_vm(struct gm *gm, uint64_t *y, uint64_t *pt, struct shadow_vcpu **vx,
			     struct shadow_vcpu **vy)
{
	uint64_t x;

	gm_init(gm, 1024);
	x = gm_table(gm);
	*y = gm_table(gm);
	gm_map(gm, x, VA1, GPA_A, 1, UW);
	*pt = spte_addr(gm_read(gm, gm_entry(gm, x, VA1, 2)));
	gm_write(gm, gm_entry(gm, *y, VA_Y, 2), *pt | GM_DIR);
	*vx = sh_vcpu(gm->mmu, 64, x);
	*vy = sh_vcpu(gm->mmu, 64, *y);
	ck_assert_uint_eq(reach(*vx, VA1, 0), GPA_A);
	ck_assert_uint_eq(reach(*vy, VA_Y, 0), GPA_A);
	return x;
}

START_TEST(test_sync_guest_table_reaches_every_address_space)
{
	struct shadow_vcpu *vx, *vy;
	struct gm gm;
	uint64_t y, pt;
	uint64_t x = shared_pt_vm(&gm, &y, &pt, &vx, &vy);

	/* Nothing changed: both shadows of the page stay. */
	ck_assert_int_eq(shadow_mmu_sync_guest_table(gm.mmu, pt), 2);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 2);
	ck_assert_uint_eq(reach_no_fault(vy, VA_Y, 0), GPA_A);
	/* The guest remaps the page in the shared table; invlpg on x covers
	 * x only. */
	gm_write(&gm, pt + SPTE_INDEX(VA1, 1) * 8, GPA_B | SPTE_PRESENT | UW);
	shadow_vcpu_invlpg(vx, VA1);
	ck_assert_uint_eq(reach(vx, VA1, 0), GPA_B);
	ck_assert_msg(reach_no_fault(vy, VA_Y, 0) == GPA_A, "y's shadow is stale until the sync");
	ck_assert_int_eq(shadow_mmu_sync_guest_table(gm.mmu, pt), 2);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 0);
	ck_assert_uint_eq(reach(vy, VA_Y, 0), GPA_B);
	ck_assert_uint_eq(reach_no_fault(vx, VA1, 0), GPA_B);
	(void)x;
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(vx);
	shadow_vcpu_destroy(vy);
	gm_fini(&gm);
}
END_TEST

/*
 * Address spaces whose PML4s point at one guest PDPT (a kernel half) share
 * its shadow: the second links the first's shadow PDPT, and reaches VA1
 * through it with no new table and no fault.  A remap in the shared guest
 * table and an invlpg in one address space reach the other too (one
 * shadow).  The shadow survives the eviction of the root that made it.
 * (After a clone: test_shadow_share.c.)
 */
START_TEST(test_address_spaces_sharing_a_guest_table_share_its_shadow)
{
	struct shadow_mmu_stats st;
	struct shadow_vcpu *vx, *vy;
	struct gm gm;

	gm_init_full(&gm, 1024, NULL, 256, 2, NULL, NULL, NULL);
	uint64_t x = gm_table(&gm), y = gm_table(&gm), z = gm_table(&gm);
	gm_map(&gm, x, VA1, GPA_A, 1, UW | SPTE_DIRTY);
	const uint64_t pml4e = gm_read(&gm, x + SPTE_INDEX(VA1, 4) * 8);
	const uint64_t pt = spte_addr(gm_read(&gm, gm_entry(&gm, x, VA1, 2)));
	gm_write(&gm, y + SPTE_INDEX(VA1, 4) * 8, pml4e);
	gm_map(&gm, z, VA2, GPA_C, 1, UW);
	vx = sh_vcpu(gm.mmu, 64, x);
	ck_assert_uint_eq(reach(vx, VA1, SHADOW_ACCESS_WRITE), GPA_A);
	vy = sh_vcpu(gm.mmu, 64, y);
	ck_assert_uint_eq(reach(vy, VA1, 0), GPA_A);
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_msg(shadow_pool_pages_in_use(gm.pool, 0) == 2 + 3 && st.tables_reused == 1,
		      "expected 2 roots and one PDPT, PD and PT for both (1 link), got %zu tables, %llu links",
		      shadow_pool_pages_in_use(gm.pool, 0), (unsigned long long)st.tables_reused);
	ck_assert_int_eq(shadow_mmu_sync_guest_table(gm.mmu, pt), 1);
	/* One shadow: x's invlpg of a remapped page reaches y as well. */
	gm_write(&gm, pt + SPTE_INDEX(VA1, 1) * 8, GPA_B | SPTE_PRESENT | UW);
	shadow_vcpu_invlpg(vx, VA1);
	ck_assert_uint_eq(reach(vx, VA1, 0), GPA_B);
	ck_assert_uint_eq(reach(vy, VA1, 0), GPA_B);
	/* x's vCPU goes to z: the cache of 2 evicts x's root; y's path stays. */
	ck_assert_int_eq(shadow_vcpu_load_cr3(vx, z), 0);
	ck_assert_int_eq(shadow_vcpu_load_cr3(vx, z), 0);
	ck_assert_uint_eq(reach(vx, VA2, 0), GPA_C);
	ck_assert_uint_eq(reach_no_fault(vy, VA1, 0), GPA_B);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(vx);
	shadow_vcpu_destroy(vy);
	gm_fini(&gm);
}
END_TEST

/*
 * The guest remaps VA1 and flushes it in address space x while x has no
 * shadow root (its invlpg finds nothing to do); y, which shares the guest
 * tables, has not flushed yet, so its shadow may still hold the old page.
 * When x gets a root again and links y's shadow of the shared tables, x
 * must see the new page: the linked table is synced first.
 */
START_TEST(test_a_linked_shadow_is_synced_for_the_address_space_that_flushed)
{
	struct shadow_vcpu *vx, *vy;
	struct gm gm;

	const uint64_t va3 = VA1 + GM_PAGE; /* beside VA1, in the same table */

	gm_init_full(&gm, 1024, NULL, 256, 2, NULL, NULL, NULL);
	uint64_t x = gm_table(&gm), y = gm_table(&gm), z = gm_table(&gm);
	gm_map(&gm, x, VA1, GPA_A, 1, UW);
	gm_map(&gm, x, va3, GPA_C, 1, UW);
	const uint64_t pml4e = gm_read(&gm, x + SPTE_INDEX(VA1, 4) * 8);
	const uint64_t pte = gm_entry(&gm, x, VA1, 1);
	gm_write(&gm, y + SPTE_INDEX(VA1, 4) * 8, pml4e);
	gm_map(&gm, z, VA2, GPA_C, 1, UW);
	vx = sh_vcpu(gm.mmu, 64, x);
	ck_assert_uint_eq(reach(vx, VA1, 0), GPA_A);
	vy = sh_vcpu(gm.mmu, 64, y);
	ck_assert_uint_eq(reach(vy, VA1, 0), GPA_A);
	ck_assert_int_eq(shadow_vcpu_load_cr3(vx, z), 0); /* 2 roots: x goes */
	ck_assert_uint_eq(reach(vx, VA2, 0), GPA_C);
	gm_write(&gm, pte, GPA_B | SPTE_PRESENT | UW);
	shadow_mmu_invlpg(gm.mmu, NULL, x, VA1); /* x has no root: nothing to do */
	ck_assert_int_eq(shadow_vcpu_load_cr3(vx, x), 0);
	ck_assert_uint_eq(reach(vx, va3, 0), GPA_C); /* the fault that links y's tables */
	ck_assert_msg(reach(vx, VA1, 0) == GPA_B,
		      "x flushed VA1 after the remap: expected %#llx, got %#llx", (unsigned long long)GPA_B,
		      (unsigned long long)reach(vx, VA1, 0));
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(vx);
	shadow_vcpu_destroy(vy);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_sync_guest_table_rejects_bad_address_and_counts_none)
{
	struct shadow_vcpu *vx, *vy;
	struct gm gm;
	uint64_t y, pt;

	shared_pt_vm(&gm, &y, &pt, &vx, &vy);
	ck_assert_int_eq(shadow_mmu_sync_guest_table(gm.mmu, pt + 8), -EINVAL);
	ck_assert_int_eq(shadow_mmu_sync_guest_table(gm.mmu, 1024 * GM_PAGE), -EINVAL);
	ck_assert_int_eq(shadow_mmu_sync_guest_table(gm.mmu, GPA_C), 0); /* no table there */
	/* y's PML4 is a guest table too: its root is its one shadow. */
	ck_assert_int_eq(shadow_mmu_sync_guest_table(gm.mmu, y), 1);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_A / GM_PAGE), 2);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(vx);
	shadow_vcpu_destroy(vy);
	gm_fini(&gm);
}
END_TEST

START_TEST(test_set_mode_nxe_resyncs_shadow_under_new_mode)
{
	struct shadow_paging_mode mode = shadow_default_mode;
	struct shadow_mmu_stats before, after;
	struct shadow_vcpu_result res;
	struct gm gm;
	uint32_t ec = 0;
	uint64_t cr3;
	struct shadow_vcpu *v = va1_vm(&gm, 64, &cr3);

	ck_assert(mode.nxe);
	gm_map(&gm, cr3, VA2, GPA_B, 1, UW | SPTE_NX);
	reach(v, VA1, SHADOW_ACCESS_FETCH);
	reach(v, VA2, 0);
	shadow_vcpu_destroy(v);
	/* The guest clears EFER.NXE: bit 63 is reserved for the CPU from now on
	 * (a new software vCPU takes the MMU's mode, as the CPU takes EFER). */
	mode.nxe = false;
	ck_assert_int_eq(shadow_mmu_set_mode(gm.mmu, &mode), 0);
	ck_assert(!shadow_mmu_mode(gm.mmu)->nxe);
	v = sh_vcpu(gm.mmu, 64, cr3);
	shadow_mmu_stats(gm.mmu, &before);
	/* VA1's entries read the same under either mode: kept, no fault. */
	ck_assert_uint_eq(reach_no_fault(v, VA1, SHADOW_ACCESS_FETCH), GPA_A);
	/* VA2's leaf carried NX, reserved now: gone (not a reserved-bit fault),
	 * and the guest's own entry is the reserved-bit fault. */
	ck_assert_int_eq(shadow_vcpu_access(v, VA2, 0, &res), -EFAULT);
	ck_assert_msg(res.error_code == 0, "expected a not-present fault (the NX leaf gone), got "
		      "ec %#x", res.error_code);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA2, 0, &ec), SHADOW_FAULT_GUEST);
	ck_assert_uint_eq(ec, SHADOW_PFERR_PRESENT | SHADOW_PFERR_RSVD);
	/* A leaf installed under NXE clear never carries bit 63. */
	gm_map(&gm, cr3, VA2, GPA_B, 1, UW);
	shadow_vcpu_invlpg(v, VA2);
	ck_assert_uint_eq(reach(v, VA2, SHADOW_ACCESS_FETCH), GPA_B);
	shadow_mmu_stats(gm.mmu, &after);
	ck_assert_msg(after.faults - before.faults == 2, "expected faults for VA2 only, got %llu",
		      (unsigned long long)(after.faults - before.faults));
	/* The same mode again changes nothing. */
	shadow_mmu_stats(gm.mmu, &before);
	ck_assert_int_eq(shadow_mmu_set_mode(gm.mmu, &mode), 0);
	shadow_mmu_stats(gm.mmu, &after);
	ck_assert_uint_eq(after.zapped, before.zapped);
	ck_assert_uint_eq(after.syncs, before.syncs);
	shadow_vcpu_destroy(v);
	/* NXE set again, the guest marks VA2 NX again: bit 63 means no-execute. */
	gm_map(&gm, cr3, VA2, GPA_B, 1, UW | SPTE_NX | SPTE_ACCESSED);
	mode.nxe = true;
	ck_assert_int_eq(shadow_mmu_set_mode(gm.mmu, &mode), 0);
	v = sh_vcpu(gm.mmu, 64, cr3);
	ck_assert_int_eq(shadow_vcpu_access(v, VA2, SHADOW_ACCESS_FETCH, &res), -EFAULT);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA2, SHADOW_ACCESS_FETCH, &ec),
			 SHADOW_FAULT_GUEST);
	ck_assert_uint_eq(ec, SHADOW_PFERR_PRESENT | SHADOW_PFERR_FETCH);
	ck_assert_uint_eq(reach(v, VA2, 0), GPA_B);
	ck_assert_uint_eq(reach_no_fault(v, VA1, SHADOW_ACCESS_FETCH), GPA_A);
	mode.maxphyaddr--;
	ck_assert_int_eq(shadow_mmu_set_mode(gm.mmu, &mode), -EINVAL);
	ck_assert_int_eq(shadow_mmu_set_mode(gm.mmu, NULL), -EINVAL);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* ---- the table quota ------------------------------------------------------- */

/* Another VM of the same pool, with two translations it reached once: what
 * it had must survive the first VM's quota and full-pool reclaims. */
struct bystander {
	struct gm gm;
	struct shadow_vcpu *v;
	struct shadow_mmu_stats stats;
	size_t rmap_a, rmap_b, charged;
};

static void bystander_init(struct bystander *by, size_t pool_pages)
{
	gm_init_quota(&by->gm, 1024, NULL, pool_pages, 0);
	uint64_t cr3 = gm_table(&by->gm);
	gm_map(&by->gm, cr3, VA1, GPA_A, 1, UW);
	gm_map(&by->gm, cr3, VA2, GPA_B, 1, UW);
	by->v = sh_vcpu(by->gm.mmu, 0, cr3);
	ck_assert_uint_eq(reach(by->v, VA1, SHADOW_ACCESS_WRITE), GPA_A);
	ck_assert_uint_eq(reach(by->v, VA2, 0), GPA_B);
	shadow_mmu_stats(by->gm.mmu, &by->stats);
	by->rmap_a = shadow_mmu_rmap_count(by->gm.mmu, by->gm.slot, GPA_A / GM_PAGE);
	by->rmap_b = shadow_mmu_rmap_count(by->gm.mmu, by->gm.slot, GPA_B / GM_PAGE);
	by->charged = shadow_mmu_tables_charged(by->gm.mmu);
}

/* Nothing of the bystander was zapped or flushed, and its translations are
 * still in the pool (its vCPU, without a TLB, reaches them without a fault). */
static void bystander_assert_untouched(struct bystander *by)
{
	struct shadow_vcpu_result res;
	struct shadow_mmu_stats now;

	shadow_mmu_stats(by->gm.mmu, &now);
	ck_assert_uint_eq(now.zapped, by->stats.zapped);
	ck_assert_uint_eq(now.tables_freed, by->stats.tables_freed);
	ck_assert_uint_eq(now.flushes_all, by->stats.flushes_all);
	ck_assert_uint_eq(now.remote_flushes, by->stats.remote_flushes);
	ck_assert_uint_eq(now.reclaims, 0);
	ck_assert_uint_eq(shadow_mmu_rmap_count(by->gm.mmu, by->gm.slot, GPA_A / GM_PAGE), by->rmap_a);
	ck_assert_uint_eq(shadow_mmu_rmap_count(by->gm.mmu, by->gm.slot, GPA_B / GM_PAGE), by->rmap_b);
	ck_assert_uint_eq(shadow_mmu_tables_charged(by->gm.mmu), by->charged);
	ck_assert_int_eq(shadow_vcpu_access(by->v, VA1, SHADOW_ACCESS_WRITE, &res), 0);
	ck_assert_uint_eq(res.mpa, GPA_A);
	ck_assert_int_eq(shadow_vcpu_access(by->v, VA2, 0, &res), 0);
	ck_assert_uint_eq(res.mpa, GPA_B);
	assert_mmu_check(by->gm.mmu);
}

static void bystander_fini(struct bystander *by)
{
	shadow_vcpu_destroy(by->v);
	gm_fini(&by->gm);
}

/* A working set of @n translations, one per 512 GiB (each needs three
 * tables of its own below the root), touched round-robin for @rounds
 * rounds: every access reaches its page, and the MMU never holds more than
 * @max_tables pages (0: no check).  Returns the vCPU. */
static struct shadow_vcpu *touch_spread(struct gm *gm, unsigned int n, int rounds,
					unsigned long max_tables)
{
	uint64_t cr3 = gm_table(gm);

	for (uint64_t i = 0; i < n; i++)
		gm_map(gm, cr3, i << 39, GM_DATA + i * GM_PAGE, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm->mmu, 0, cr3);
	for (int round = 0; round < rounds; round++) {
		for (uint64_t i = 0; i < n; i++) {
			ck_assert_uint_eq(reach(v, i << 39, SHADOW_ACCESS_WRITE), GM_DATA + i * GM_PAGE);
			if (max_tables)
				ck_assert_uint_le(shadow_mmu_tables_charged(gm->mmu), max_tables);
		}
	}
	return v;
}

/*
 * A VM with a quota of 8 tables and a working set of 16 translations that
 * need 3 tables each: every access succeeds (reclaiming its own tables when
 * the quota is reached), it never holds more than 8, and the other VM of
 * the pool loses nothing.
 */
START_TEST(test_quota_caps_a_vm_and_leaves_the_other_vm_untouched)
{
	struct shadow_mmu_stats st;
	struct bystander by;
	struct gm gm;

	bystander_init(&by, 256);
	gm_init_quota(&gm, 1024, by.gm.pool, 0, 8);
	struct shadow_vcpu *v = touch_spread(&gm, 16, 3, 8);
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_uint_gt(st.reclaims, 0);
	ck_assert_uint_ge(st.quota_refusals, st.reclaims);
	assert_mmu_check(gm.mmu);
	bystander_assert_untouched(&by);
	ck_assert_int_eq(shadow_pool_check(by.gm.pool), 0);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	ck_assert_uint_eq(shadow_pool_pages_in_use(by.gm.pool, 0), by.charged);
	bystander_fini(&by);
}
END_TEST

/*
 * A full pool: the faulting VM (no quota) reclaims its own tables, never
 * the other VM's, and keeps running.
 */
START_TEST(test_full_pool_reclaims_only_the_faulting_vm)
{
	struct shadow_mmu_stats st;
	struct bystander by;
	struct gm gm;

	bystander_init(&by, 16);
	gm_init_quota(&gm, 1024, by.gm.pool, 0, 0);
	struct shadow_vcpu *v = touch_spread(&gm, 8, 3, 0);
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_uint_gt(st.reclaims, 0);
	ck_assert_uint_eq(st.quota_refusals, 0);
	bystander_assert_untouched(&by);
	ck_assert_int_eq(shadow_pool_check(by.gm.pool), 0);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	bystander_fini(&by);
}
END_TEST

/*
 * The quota's floor, and what it cannot make room for: roots that vCPUs
 * run on stay through a reclaim, so a fault that needs more than the quota
 * leaves fails with -EDQUOT after one reclaim; once a vCPU leaves its root,
 * the fault evicts that root (the least recently used unpinned one) and
 * fits, with no reclaim; a CR3 load with no such root reclaims.
 */
START_TEST(test_quota_refuses_what_running_roots_leave_no_room_for)
{
	struct shadow_mmu_config cfg = { .max_gpa = 1024 * GM_PAGE, .mode = shadow_default_mode,
					 .max_tables = SHADOW_MMU_MIN_TABLES - 1 };
	struct shadow_mmu_stats st;
	struct shadow_mmu *mmu;
	struct gm gm;
	uint32_t ec;

	gm_init_quota(&gm, 1024, NULL, 64, SHADOW_MMU_MIN_TABLES);
	cfg.pool = gm.pool;
	ck_assert_int_eq(shadow_mmu_create(&cfg, &mmu), -EINVAL);
	uint64_t cr3a = gm_table(&gm), cr3b = gm_table(&gm), cr3c = gm_table(&gm);
	gm_map(&gm, cr3a, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3b, VA1, GPA_B, 1, UW);
	gm_map(&gm, cr3c, VA1, GPA_C, 1, UW);
	struct shadow_vcpu *va = sh_vcpu(gm.mmu, 0, cr3a), *vb = sh_vcpu(gm.mmu, 0, cr3b);
	ck_assert_uint_eq(shadow_mmu_tables_charged(gm.mmu), 2);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3a, VA1, 0, &ec), -EDQUOT);
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_uint_eq(st.reclaims, 1);
	/* The path's upper tables were made before the quota stopped it. */
	ck_assert_uint_eq(shadow_mmu_tables_charged(gm.mmu), SHADOW_MMU_MIN_TABLES);

	shadow_vcpu_destroy(vb); /* root b is cached, run by no vCPU */
	uint64_t evictions = st.root_evictions;
	ck_assert_uint_eq(reach(va, VA1, SHADOW_ACCESS_WRITE), GPA_A);
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_msg(st.reclaims == 1 && st.root_evictions == evictions + 1,
		      "expected root b evicted and no reclaim, got %llu evictions and %llu reclaims",
		      (unsigned long long)(st.root_evictions - evictions), (unsigned long long)st.reclaims);
	ck_assert_uint_eq(shadow_mmu_tables_charged(gm.mmu), SHADOW_MMU_MIN_TABLES);

	/* A new root with the quota full and no unpinned root: the CR3 load
	 * reclaims va's tables. */
	struct shadow_vcpu *vc = sh_vcpu(gm.mmu, 0, cr3c);
	shadow_mmu_stats(gm.mmu, &st);
	ck_assert_uint_eq(st.reclaims, 2);
	ck_assert_uint_eq(shadow_mmu_tables_charged(gm.mmu), 2);
	/* Two running roots and a path of three: one more than the quota. */
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3a, VA1, 0, &ec), -EDQUOT);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3c, VA1, 0, &ec), -EDQUOT);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(va);
	gm_fini(&gm);
}
END_TEST

/* ---- bookkeeping: proportional to memory used, not declared ---------------- */

/* VmRSS of this process in KiB (/proc/self/status), or -1. */
static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

#define SPARSE_RAM (64ull << 30)
#define SPARSE_MAX_GROWTH_KIB (8l << 10)

/*
 * What vmm/mmu.c's vm_mmu_init does for a VM declared with 64 GiB of RAM: a
 * memory object, a shadow MMU covering it, a slot and the identity P2M.  The
 * resident memory this adds must not depend on the declared size (under
 * 8 MiB, not checked under ThreadSanitizer), and a page near the top of
 * RAM is still reachable.
 */
START_TEST(test_bookkeeping_of_a_64g_vm_stays_small)
{
	struct shadow_mmu_config cfg = { 0 };
	struct shadow_slot slot = { 0 };
	struct gm gm = { .npages = SPARSE_RAM / GM_PAGE, .next_table = GM_TABLES };
	long before, after;

	gm.host = mmap(NULL, SPARSE_RAM, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(gm.host, MAP_FAILED);
	before = rss_kib();
	ck_assert_int_eq(shadow_pool_create(64, &gm.pool), 0);
	gm.own_pool = true;
	ck_assert_int_eq(notifier_object_create("ram-64g", gm.npages, &gm.ram), 0);
	cfg.pool = gm.pool;
	cfg.max_gpa = SPARSE_RAM;
	cfg.mode = shadow_default_mode;
	ck_assert_int_eq(shadow_mmu_create(&cfg, &gm.mmu), 0);
	slot.obj = gm.ram;
	slot.host = gm.host;
	ck_assert_int_eq(shadow_mmu_add_slot(gm.mmu, &slot, &gm.slot), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, 0, gm.npages, gm.slot, 0), 0);
	after = rss_kib();
	ck_assert_int_ge(before, 0);
	printf("bookkeeping of a %llu GiB VM: VmRSS %ld -> %ld KiB (+%ld KiB)\n",
	       (unsigned long long)(SPARSE_RAM >> 30), before, after, after - before);
	/* ThreadSanitizer maps shadow memory for every allocation it makes
	 * (the zero-filled arrays included): its RSS measures itself. */
	ck_assert_msg(TEST_TSAN || after - before < SPARSE_MAX_GROWTH_KIB,
		      "expected the bookkeeping of a 64 GiB VM to add < %ld KiB of RSS, added %ld KiB",
		      SPARSE_MAX_GROWTH_KIB, after - before);

	uint64_t cr3 = gm_table(&gm), top = SPARSE_RAM - 3 * GM_PAGE;
	gm_map(&gm, cr3, VA1, top, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 0, cr3);
	ck_assert_uint_eq(reach(v, VA1, SHADOW_ACCESS_WRITE), top);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, top / GM_PAGE), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* Bytes the process has allocated from its heap (malloc, calloc: small
 * blocks and mmap'ed ones alike), from the allocator in use: glibc's, or a
 * sanitizer's, which replaces it. */
#if defined(__SANITIZE_ADDRESS__) || TEST_TSAN
size_t __sanitizer_get_current_allocated_bytes(void);
static size_t heap_bytes(void)
{
	return __sanitizer_get_current_allocated_bytes();
}
#else
static size_t heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
}
#endif

/* Runs of @slot's object whose side arrays exist; *@last: the last such. */
static uint64_t runs_allocated(struct shadow_mmu *mmu, int slot, uint64_t *last)
{
	const struct pool_obj *po = mmu->slots[slot].pobj;
	uint64_t n = 0;

	for (uint64_t r = 0; r < pool_obj_nr_runs(po->npages); r++) {
		if (pool_obj_run(po, r)) {
			n++;
			*last = r;
		}
	}
	return n;
}

#define LAZY_RAM (4ull << 30)
#define LAZY_MAX_SLOT_BYTES (16ul << 10)

/*
 * The per-page side arrays of an object (reverse map, young bytes,
 * canonical tables) come per 2 MiB run with its first use: adding a slot of
 * a 4 GiB object (a VM clone adds one of its RAM's size) allocates under
 * 16 KiB (a pointer per GiB, where an array per page would be 17 MiB), and
 * a fault allocates the arrays of its page's run (and the directory page of
 * its GiB) and of no other.  Pages of
 * runs never used read as unmapped and old.
 */
START_TEST(test_slot_side_arrays_come_per_run_on_first_use)
{
	struct shadow_mmu_config cfg = { 0 };
	struct shadow_slot slot = { 0 };
	struct gm gm = { .npages = LAZY_RAM / GM_PAGE, .next_table = GM_TABLES };
	const uint64_t top = LAZY_RAM - 3 * GM_PAGE, run = top / GM_PAGE / SPTE_ENTRIES;
	uint64_t last = UINT64_MAX;
	size_t before, added;

	gm.host = mmap(NULL, LAZY_RAM, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ck_assert_ptr_ne(gm.host, MAP_FAILED);
	ck_assert_int_eq(shadow_pool_create(64, &gm.pool), 0);
	gm.own_pool = true;
	ck_assert_int_eq(notifier_object_create("ram-4g", gm.npages, &gm.ram), 0);
	cfg.pool = gm.pool;
	cfg.max_gpa = LAZY_RAM;
	cfg.mode = shadow_default_mode;
	ck_assert_int_eq(shadow_mmu_create(&cfg, &gm.mmu), 0);
	slot.obj = gm.ram;
	slot.host = gm.host;
	before = heap_bytes();
	ck_assert_int_eq(shadow_mmu_add_slot(gm.mmu, &slot, &gm.slot), 0);
	added = heap_bytes() - before;
	printf("slot of a 4 GiB object: %zu bytes allocated\n", added);
	ck_assert_msg(added < LAZY_MAX_SLOT_BYTES,
		      "expected a slot of a 4 GiB object to allocate < %lu bytes, it allocated %zu",
		      LAZY_MAX_SLOT_BYTES, added);
	ck_assert_uint_eq(runs_allocated(gm.mmu, gm.slot, &last), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(gm.mmu, 0, gm.npages, gm.slot, 0), 0);

	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, top, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 0, cr3);
	before = heap_bytes();
	ck_assert_uint_eq(reach(v, VA1, SHADOW_ACCESS_WRITE), top);
	added = heap_bytes() - before;
	ck_assert_uint_eq(runs_allocated(gm.mmu, gm.slot, &last), 1);
	ck_assert_uint_eq(last, run);
	/* The run's arrays, and small blocks for the new tables' users. */
	ck_assert_msg(added >= sizeof(struct pool_obj_run) && added < 2 * sizeof(struct pool_obj_run),
		      "expected the fault to allocate one run (%zu bytes), it allocated %zu",
		      sizeof(struct pool_obj_run), added);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, top / GM_PAGE), 1);
	ck_assert(pool_obj_is_young(gm.mmu->slots[gm.slot].pobj, top / GM_PAGE));
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, top / GM_PAGE - SPTE_ENTRIES), 0);
	ck_assert(!pool_obj_is_young(gm.mmu->slots[gm.slot].pobj, top / GM_PAGE - SPTE_ENTRIES));
	assert_mmu_check(gm.mmu);
	ck_assert_int_eq(shadow_pool_check(gm.pool), 0);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST


/* ---- fault-around ---- */

#define FA_VA 0x40000000ull
#define FA_GPA 0x200000ull	/* 2 MiB-aligned */
#define FA_RIGHTS (SPTE_WRITABLE | SPTE_USER)

/* A paged slot: get_page counts its calls; is_resident says no for @absent. */
struct fa_slot {
	unsigned int gets;
	uint64_t absent;
};

static int fa_get_page(void *priv, uint64_t page, bool write)
{
	(void)page;
	(void)write;
	((struct fa_slot *)priv)->gets++;
	return 0;
}

static bool fa_is_resident(void *priv, uint64_t page)
{
	return page != ((struct fa_slot *)priv)->absent;
}

static const struct shadow_slot_ops fa_ops = { .get_page = fa_get_page, .is_resident = fa_is_resident };
static const struct shadow_slot_ops fa_ops_no_query = { .get_page = fa_get_page };

static bool fa_reaches(struct shadow_vcpu *v, uint64_t va, unsigned int access)
{
	struct shadow_vcpu_result res;

	return shadow_vcpu_access(v, va, access, &res) == 0;
}

static uint64_t fa_stat(struct shadow_mmu *mmu)
{
	struct shadow_mmu_stats st;

	shadow_mmu_stats(mmu, &st);
	return st.faulted_around;
}

static const unsigned int fa_windows[] = { 0, 1, 2, 16, 64 };

/* One fault at page 5 of a guest 2 MiB page maps the aligned window around
 * it, writable (the large page is dirty), and nothing beyond. */
START_TEST(test_fault_around_maps_the_window_under_a_guest_large_page)
{
	const unsigned int w = fa_windows[_i] > 1 ? fa_windows[_i] : 1;
	struct shadow_vcpu *v;
	uint32_t ec;
	uint64_t cr3;
	struct gm gm;

	gm_init_around(&gm, 1024, fa_windows[_i], NULL, NULL);
	cr3 = gm_table(&gm);
	gm_map(&gm, cr3, FA_VA, FA_GPA, 2, FA_RIGHTS | SPTE_DIRTY);
	v = sh_vcpu(gm.mmu, 64, cr3);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, FA_VA + 5 * GM_PAGE, SHADOW_ACCESS_USER, &ec),
			 SHADOW_FAULT_FIXED);
	for (uint64_t p = 0; p < 128; p++) {
		bool want = p >= (5 & ~(w - 1)) && p < (5 & ~(w - 1)) + w;

		ck_assert_msg(fa_reaches(v, FA_VA + p * GM_PAGE, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE) == want,
			      "window %u, page %llu: expected %s, got the other", w, (unsigned long long)p,
			      want ? "mapped writable" : "not mapped");
	}
	ck_assert_msg(fa_stat(gm.mmu) == w - 1, "window %u: expected %u pages faulted around, got %llu", w,
		      w - 1, (unsigned long long)fa_stat(gm.mmu));
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* A read fault under a clean guest large page maps the window read-only;
 * the first write dirties the large page, whose leaves then have other
 * rights: a new direct table, and the window mapped writable in it. */
START_TEST(test_fault_around_maps_the_window_writable_after_the_first_write)
{
	struct shadow_vcpu *v;
	uint64_t cr3;
	uint32_t ec;
	struct gm gm;

	gm_init_around(&gm, 1024, 16, NULL, NULL);
	cr3 = gm_table(&gm);
	gm_map(&gm, cr3, FA_VA, FA_GPA, 2, FA_RIGHTS);
	v = sh_vcpu(gm.mmu, 64, cr3);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, FA_VA, SHADOW_ACCESS_USER, &ec), SHADOW_FAULT_FIXED);
	for (unsigned int p = 0; p < 16; p++) {
		ck_assert_msg(fa_reaches(v, FA_VA + p * GM_PAGE, SHADOW_ACCESS_USER), "page %u: expected mapped", p);
		ck_assert_msg(!fa_reaches(v, FA_VA + p * GM_PAGE, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE),
			      "page %u: expected read-only before the first write", p);
	}
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, FA_VA + 4 * GM_PAGE,
					  SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &ec),
			 SHADOW_FAULT_FIXED);
	for (unsigned int p = 0; p < 16; p++)
		ck_assert_msg(fa_reaches(v, FA_VA + p * GM_PAGE, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE),
			      "page %u: expected writable after the first write", p);
	ck_assert_uint_eq(fa_stat(gm.mmu), 30);
	ck_assert_uint_eq(gm_read(&gm, gm_entry(&gm, cr3, FA_VA, 2)) & SPTE_DIRTY, SPTE_DIRTY);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* Under 4 KiB guest PTEs a neighbour is mapped only if the guest already
 * accessed it (A set), writable only if dirty and allowed, and never if its
 * entry is bad (no backing, a reserved bit): what a guest wrote there is
 * checked as a fault's walk checks it. */
START_TEST(test_fault_around_maps_only_accessed_valid_guest_ptes)
{
	static const struct {
		uint64_t flags;
		uint64_t gpa;	/* 0: FA_GPA + page */
		bool read, write;
	} pte[16] = {
		[2] = { FA_RIGHTS | SPTE_ACCESSED, 0, true, false },
		[4] = { FA_RIGHTS | SPTE_ACCESSED, 0, true, false },
		[6] = { FA_RIGHTS | SPTE_ACCESSED | SPTE_DIRTY, 0, true, true },
		[7] = { FA_RIGHTS | SPTE_DIRTY, 0, false, false },	/* never accessed */
		[8] = { FA_RIGHTS | SPTE_ACCESSED, 0x10000000, false, false },	/* no backing */
		[10] = { FA_RIGHTS | SPTE_ACCESSED | (1ull << 51), 0, false, false }, /* reserved */
		[12] = { SPTE_USER | SPTE_ACCESSED | SPTE_DIRTY, 0, true, false },	/* read-only */
		[14] = { FA_RIGHTS | SPTE_ACCESSED, 0, true, false },
	};
	struct shadow_vcpu *v;
	uint64_t cr3, around = 0;
	uint32_t ec;
	struct gm gm;

	gm_init_around(&gm, 1024, 16, NULL, NULL);
	cr3 = gm_table(&gm);
	gm_map(&gm, cr3, FA_VA, FA_GPA, 1, FA_RIGHTS);
	for (unsigned int p = 1; p < 16; p++) {
		uint64_t gpa = pte[p].gpa ? pte[p].gpa : FA_GPA + p * GM_PAGE;

		gm_map(&gm, cr3, FA_VA + p * GM_PAGE, gpa, 1, pte[p].flags ? pte[p].flags : FA_RIGHTS);
		around += pte[p].read;
	}
	v = sh_vcpu(gm.mmu, 64, cr3);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, FA_VA, SHADOW_ACCESS_USER, &ec), SHADOW_FAULT_FIXED);
	for (unsigned int p = 1; p < 16; p++) {
		bool r = fa_reaches(v, FA_VA + p * GM_PAGE, SHADOW_ACCESS_USER);
		bool w = fa_reaches(v, FA_VA + p * GM_PAGE, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE);

		ck_assert_msg(r == pte[p].read && w == pte[p].write,
			      "page %u: expected read %d write %d, got read %d write %d", p, pte[p].read,
			      pte[p].write, r, w);
	}
	ck_assert_msg(fa_stat(gm.mmu) == around, "expected %llu pages faulted around, got %llu",
		      (unsigned long long)around, (unsigned long long)fa_stat(gm.mmu));
	/* The guest's own A/D bits are untouched by fault-around. */
	ck_assert_uint_eq(gm_read(&gm, gm_entry(&gm, cr3, FA_VA + 2 * GM_PAGE, 1)) & SPTE_DIRTY, 0);
	ck_assert_uint_eq(gm_read(&gm, gm_entry(&gm, cr3, FA_VA + 1 * GM_PAGE, 1)) & SPTE_ACCESSED, 0);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* A paged slot: a neighbour that is not resident is left to fault (and be
 * made resident by its own get_page); fault-around never calls get_page.
 * A slot that cannot say what is resident gets no fault-around. */
START_TEST(test_fault_around_maps_only_resident_pages_and_never_pages_in)
{
	struct fa_slot fs = { .absent = FA_GPA / GM_PAGE + 3 };
	const struct shadow_slot_ops *ops = _i ? &fa_ops_no_query : &fa_ops;
	struct shadow_vcpu *v;
	uint64_t cr3;
	uint32_t ec;
	struct gm gm;

	gm_init_around(&gm, 1024, 16, ops, &fs);
	cr3 = gm_table(&gm);
	gm_map(&gm, cr3, FA_VA, FA_GPA, 2, FA_RIGHTS | SPTE_DIRTY);
	v = sh_vcpu(gm.mmu, 64, cr3);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, FA_VA, SHADOW_ACCESS_USER, &ec), SHADOW_FAULT_FIXED);
	ck_assert_msg(fs.gets == 1, "expected get_page for the faulting page only, got %u calls", fs.gets);
	for (unsigned int p = 1; p < 16; p++) {
		bool want = !_i && p != 3;

		ck_assert_msg(fa_reaches(v, FA_VA + p * GM_PAGE, SHADOW_ACCESS_USER) == want,
			      "page %u: expected %s", p, want ? "mapped" : "not mapped");
	}
	ck_assert_uint_eq(fa_stat(gm.mmu), _i ? 0 : 14);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* A window that is not a power of two, or too large, is refused. */
START_TEST(test_fault_around_window_must_be_a_power_of_two_up_to_the_max)
{
	static const unsigned int bad[] = { 3, 12, SHADOW_FAULT_AROUND_MAX * 2, 1000 };
	struct shadow_mmu_config cfg = { .max_gpa = 1 << 20, .mode = shadow_default_mode };
	struct shadow_mmu *mmu;

	ck_assert_int_eq(shadow_pool_create(16, &cfg.pool), 0);
	for (unsigned int k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		cfg.fault_around = bad[k];
		ck_assert_msg(shadow_mmu_create(&cfg, &mmu) == -EINVAL, "window %u: expected -EINVAL", bad[k]);
	}
	cfg.fault_around = SHADOW_FAULT_AROUND_MAX;
	ck_assert_int_eq(shadow_mmu_create(&cfg, &mmu), 0);
	shadow_mmu_destroy(mmu);
	shadow_pool_destroy(cfg.pool);
}
END_TEST

/* ---- faults that install in read mode (fault.c) ------------------------- */

static uint64_t st_read_mode(struct shadow_mmu *mmu, uint64_t *installs)
{
	struct shadow_mmu_stats st;

	shadow_mmu_stats(mmu, &st);
	if (installs)
		*installs = st.installs;
	return st.read_mode_installs;
}

/*
 * The first fault builds the path (write mode); a fault on the next page
 * of the same guest table finds it all there and this VM's alone, and
 * installs its leaf in read mode, with its reverse-map entry; a fault on a
 * leaf already there installs nothing; a write to a page mapped read-only
 * (the entry holds the page with other rights) goes to the write-mode
 * install, which upgrades the leaf.
 */
START_TEST(test_a_fault_below_present_private_tables_installs_its_leaf_in_read_mode)
{
	struct gm gm;
	uint64_t installs;
	uint32_t ec;

	gm_init(&gm, 1024);
	uint64_t cr3 = gm_table(&gm);
	gm_map(&gm, cr3, VA1, GPA_A, 1, UW);
	gm_map(&gm, cr3, VA1 + GM_PAGE, GPA_B, 1, UW);
	struct shadow_vcpu *v = sh_vcpu(gm.mmu, 8, cr3);

	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1, 0, &ec), SHADOW_FAULT_FIXED);
	ck_assert_uint_eq(st_read_mode(gm.mmu, &installs), 0);
	ck_assert_uint_eq(installs, 1);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1 + GM_PAGE, 0, &ec), SHADOW_FAULT_FIXED);
	ck_assert_uint_eq(st_read_mode(gm.mmu, &installs), 1);
	ck_assert_uint_eq(installs, 2);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_B / GM_PAGE), 1);
	ck_assert_uint_eq(reach(v, VA1 + GM_PAGE, 0), GPA_B);
	/* The same fault again: the leaf is there, nothing installed. */
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1 + GM_PAGE, 0, &ec), SHADOW_FAULT_FIXED);
	ck_assert_uint_eq(st_read_mode(gm.mmu, &installs), 1);
	ck_assert_uint_eq(installs, 2);
	/* A write: read-only leaf there, the write-mode install replaces it. */
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, cr3, VA1 + GM_PAGE, SHADOW_ACCESS_WRITE, &ec),
			 SHADOW_FAULT_FIXED);
	ck_assert_uint_eq(st_read_mode(gm.mmu, &installs), 1);
	ck_assert_uint_eq(installs, 3);
	ck_assert_uint_eq(reach_no_fault(v, VA1 + GM_PAGE, SHADOW_ACCESS_WRITE), GPA_B);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_B / GM_PAGE), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/* Address spaces x and y share the guest's PDPT, so this VM's shadow PDPT
 * has two users: a fault through it, even with every table present,
 * installs in write mode (read mode only writes tables one user reaches). */
START_TEST(test_a_fault_below_a_table_two_address_spaces_share_installs_in_write_mode)
{
	struct gm gm;
	uint64_t installs;
	uint32_t ec;

	gm_init_full(&gm, 1024, NULL, 256, 2, NULL, NULL, NULL);
	uint64_t x = gm_table(&gm), y = gm_table(&gm);
	gm_map(&gm, x, VA1, GPA_A, 1, UW);
	gm_map(&gm, x, VA1 + GM_PAGE, GPA_B, 1, UW);
	gm_write(&gm, y + SPTE_INDEX(VA1, 4) * 8, gm_read(&gm, x + SPTE_INDEX(VA1, 4) * 8));
	struct shadow_vcpu *vx = sh_vcpu(gm.mmu, 8, x), *vy = sh_vcpu(gm.mmu, 8, y);

	ck_assert_uint_eq(reach(vx, VA1, 0), GPA_A);
	ck_assert_uint_eq(reach(vy, VA1, 0), GPA_A);
	ck_assert_uint_eq(st_read_mode(gm.mmu, &installs), 0);
	ck_assert_int_eq(shadow_mmu_fault(gm.mmu, x, VA1 + GM_PAGE, 0, &ec), SHADOW_FAULT_FIXED);
	ck_assert_msg(st_read_mode(gm.mmu, &installs) == 0,
		      "expected the fault below the shared PDPT in write mode");
	ck_assert_uint_eq(installs, 2);
	ck_assert_uint_eq(reach_no_fault(vy, VA1 + GM_PAGE, 0), GPA_B);
	ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, GPA_B / GM_PAGE), 1);
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(vx);
	shadow_vcpu_destroy(vy);
	gm_fini(&gm);
}
END_TEST

#define RM_VA 0x0000000040000000ull	/* the pages' first address: one guest table */
#define RM_PAGES 256u
#define RM_GPA(k) (GM_DATA + (64ull + (k)) * GM_PAGE)

/* Maps RM_PAGES pages from RM_VA under the returned cr3, with a vCPU *@v
 * on it (its root), and builds their path. */
static uint64_t rm_vm(struct gm *gm, struct shadow_vcpu **v)
{
	uint32_t ec;

	gm_init(gm, 1024);
	uint64_t cr3 = gm_table(gm);
	for (unsigned int k = 0; k < RM_PAGES; k++)
		gm_map(gm, cr3, RM_VA + k * GM_PAGE, RM_GPA(k), 1, UW);
	*v = sh_vcpu(gm->mmu, 8, cr3);
	ck_assert_int_eq(shadow_mmu_fault(gm->mmu, cr3, RM_VA, 0, &ec), SHADOW_FAULT_FIXED);
	return cr3;
}

struct rm_faulter {
	struct gm *gm;
	uint64_t cr3;
	unsigned int start, step;	/* faults pages start, start + step, ... (mod RM_PAGES) */
	pthread_barrier_t *go;
	bool *stop;			/* NULL: one pass */
	int bad;			/* a fault that did not fix */
};

static void *rm_fault_body(void *p)
{
	struct rm_faulter *f = p;
	uint32_t ec;

	if (f->go)
		pthread_barrier_wait(f->go);
	do {
		for (unsigned int n = 0, k = f->start; n < RM_PAGES; n++, k = (k + f->step) % RM_PAGES)
			if (shadow_mmu_fault(f->gm->mmu, f->cr3, RM_VA + k * GM_PAGE, 0, &ec) !=
			    SHADOW_FAULT_FIXED)
				f->bad++;
	} while (f->stop && !__atomic_load_n(f->stop, __ATOMIC_ACQUIRE));
	return NULL;
}

static void *rm_fault_thread(void *p)
{
	return run_rcu_registered(rm_fault_body, p);
}

/*
 * Three threads fault the same pages of one guest table at once, in
 * different orders, with every table present: each leaf is installed
 * exactly once (one reverse-map entry per page, installs = pages), all in
 * read mode.  Twenty rounds, the leaves zapped between them.
 */
START_TEST(test_threads_faulting_the_same_pages_of_private_tables_install_every_leaf_once)
{
	static const unsigned int steps[] = { 1, RM_PAGES - 1, 7 };
	struct rm_faulter f[3];
	pthread_barrier_t go;
	pthread_t t[3];
	struct shadow_vcpu *v;
	struct gm gm;
	uint64_t cr3 = rm_vm(&gm, &v), installs0, installs, rm0, rm;

	for (int round = 0; round < 20; round++) {
		ck_assert_int_ge(shadow_mmu_zap_range(gm.mmu, gm.slot, RM_GPA(0) / GM_PAGE,
						      RM_GPA(RM_PAGES - 1) / GM_PAGE), 0);
		rm0 = st_read_mode(gm.mmu, &installs0);
		pthread_barrier_init(&go, NULL, 3);
		for (int k = 0; k < 3; k++) {
			f[k] = (struct rm_faulter){ .gm = &gm, .cr3 = cr3, .start = (unsigned int)k * 85u,
						    .step = steps[k], .go = &go };
			ck_assert_int_eq(pthread_create(&t[k], NULL, rm_fault_thread, &f[k]), 0);
		}
		for (int k = 0; k < 3; k++) {
			ck_assert_int_eq(pthread_join(t[k], NULL), 0);
			ck_assert_int_eq(f[k].bad, 0);
		}
		pthread_barrier_destroy(&go);
		rm = st_read_mode(gm.mmu, &installs);
		ck_assert_msg(installs - installs0 == RM_PAGES && rm - rm0 == RM_PAGES,
			      "round %d: expected %u installs, all in read mode, got %llu (%llu)", round,
			      RM_PAGES, (unsigned long long)(installs - installs0),
			      (unsigned long long)(rm - rm0));
		for (unsigned int k = 0; k < RM_PAGES; k++)
			ck_assert_uint_eq(shadow_mmu_rmap_count(gm.mmu, gm.slot, RM_GPA(k) / GM_PAGE), 1);
		assert_mmu_check(gm.mmu);
	}
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
}
END_TEST

/*
 * Two threads keep faulting the pages (read mode: the path stays) while
 * the main thread invalidates them, 300 times: while each invalidation is
 * in progress no page of it has a leaf or a reverse-map entry (a read-mode
 * install that slipped past the callback would leave one), and afterwards
 * every leaf has its reverse-map entry (shadow_mmu_check).
 */
START_TEST(test_read_mode_faults_racing_invalidations_leave_no_leaf_inside_one)
{
	struct notifier_range range;
	struct rm_faulter f[2];
	bool stop = false;
	pthread_t t[2];
	struct shadow_vcpu *v;
	struct gm gm;

	ck_assert_int_eq(notifier_thread_init(), 0);
	uint64_t cr3 = rm_vm(&gm, &v);
	for (int k = 0; k < 2; k++) {
		f[k] = (struct rm_faulter){ .gm = &gm, .cr3 = cr3, .start = (unsigned int)k * 128u,
					    .step = k ? RM_PAGES - 1 : 1, .stop = &stop };
		ck_assert_int_eq(pthread_create(&t[k], NULL, rm_fault_thread, &f[k]), 0);
	}
	for (int n = 0; n < 300; n++) {
		const uint64_t first = RM_GPA((unsigned int)n % 4 * 64) / GM_PAGE;

		notifier_range_init(&range, gm.ram, NOTIFIER_EVENT_SWAPOUT, first, first + 63,
				    NOTIFIER_RANGE_MAY_BLOCK);
		ck_assert_int_eq(notifier_invalidate_range_start(&range), 0);
		for (uint64_t p = first; p <= first + 63; p++)
			ck_assert_msg(shadow_mmu_rmap_count(gm.mmu, gm.slot, p) == 0,
				      "invalidation %d: page %llu mapped while invalidated", n,
				      (unsigned long long)p);
		notifier_invalidate_range_end(&range);
	}
	__atomic_store_n(&stop, true, __ATOMIC_RELEASE);
	for (int k = 0; k < 2; k++) {
		ck_assert_int_eq(pthread_join(t[k], NULL), 0);
		ck_assert_int_eq(f[k].bad, 0);
	}
	ck_assert_msg(st_read_mode(gm.mmu, NULL) > 0, "expected faults installing in read mode");
	assert_mmu_check(gm.mmu);
	shadow_vcpu_destroy(v);
	gm_fini(&gm);
	notifier_thread_exit();
}
END_TEST

Suite *shadow_suite(void)
{
	Suite *s = suite_create("shadow");
	TCase *spte = tcase_create("spte");
	TCase *pool = tcase_create("pool");
	TCase *mmu = tcase_create("mmu");
	TCase *notify = tcase_create("notifier");
	TCase *vcpu = tcase_create("vcpu");
	TCase *resync = tcase_create("resync");
	TCase *quota = tcase_create("quota");
	TCase *bookkeeping = tcase_create("bookkeeping");
	TCase *around = tcase_create("fault_around");
	TCase *read_mode = tcase_create("read_mode");

	tcase_add_loop_test(spte, test_leaf_presets_accessed_and_dirty_only_when_writable, 0,
			    sizeof(leaf_rights) / sizeof(leaf_rights[0]));
	tcase_add_test(spte, test_table_entry_is_permissive_and_masks_address);
	tcase_add_test(spte, test_index_follows_x86_levels);
	suite_add_tcase(s, spte);
	tcase_add_test(pool, test_pool_allocates_zeroed_pages_until_full);
	tcase_add_test(pool, test_pool_rejects_foreign_addresses_and_levels);
	tcase_add_test(pool, test_pool_memfd_shows_entries_to_a_second_mapping);
	tcase_add_test(pool, test_descriptors_record_role_use_count_and_users);
	tcase_add_test(pool, test_pool_exhaustion_zaps_everything_and_recovers);
	tcase_add_test(pool, test_freed_tables_are_not_reused_until_readers_leave);
	tcase_add_test(pool, test_lock_free_allocator_never_hands_out_a_page_twice);
	suite_add_tcase(s, pool);
	tcase_add_test(mmu, test_fault_installs_translation_that_vcpu_reaches);
	tcase_add_loop_test(mmu, test_fault_reflects_guest_own_fault_with_error_code, 0,
			    sizeof(guest_faults) / sizeof(guest_faults[0]));
	tcase_add_test(mmu, test_fault_errors_for_unbacked_gpa_and_missing_root);
	tcase_add_test(mmu, test_read_fault_maps_read_only_until_guest_dirty_is_set);
	tcase_add_test(mmu, test_invlpg_removes_stale_translation_from_every_vcpu);
	tcase_add_test(mmu, test_invlpg_sends_no_flush_to_the_vcpu_that_asked);
	tcase_add_test(mmu, test_invlpg_drops_shadow_table_of_replaced_guest_table);
	tcase_add_test(mmu, test_cr3_load_syncs_cached_root_and_keeps_valid_entries);
	tcase_add_test(mmu, test_full_flush_syncs_changed_permissions);
	tcase_add_test(mmu, test_root_cache_is_bounded_and_evicts_lru_unpinned_root);
	tcase_add_loop_test(mmu, test_root_cache_holds_every_address_space_the_quota_allows, 0, 2);
	tcase_add_test(mmu, test_root_mark_goes_stale_on_a_zap_and_on_eviction);
	tcase_add_test(mmu, test_guest_2m_page_is_shadowed_by_4k_entries);
	tcase_add_test(mmu, test_guest_1g_page_is_shadowed_by_4k_entries);
	tcase_add_test(mmu, test_zap_range_removes_every_alias_of_backing_page);
	tcase_add_test(mmu, test_p2m_redirect_zaps_old_backing_page);
	tcase_add_test(mmu, test_teardown_frees_every_table_of_many_roots);
	suite_add_tcase(s, mmu);
	tcase_add_loop_test(notify, test_invalidate_range_start_unmaps_and_flushes_before_return, 0, 2);
	tcase_add_loop_test(notify, test_fault_retries_when_invalidation_begins_during_resolution, 0, 2);
	tcase_add_test(notify, test_nonblocking_invalidation_answers_eagain_when_mmu_lock_is_held);
	tcase_add_test(notify, test_young_tracks_faults_and_clear_tracks_access);
	tcase_add_test(notify, test_object_release_unmaps_everything_and_refuses_faults);
	suite_add_tcase(s, notify);
	tcase_add_test(vcpu, test_vcpu_tlb_size_is_configurable);
	tcase_add_test(vcpu, test_vcpu_refuses_shadow_entry_without_preset_accessed);
	suite_add_tcase(s, vcpu);
	tcase_add_test(resync, test_invlpg_keeps_unchanged_mapping);
	tcase_add_loop_test(resync, test_invlpg_drops_changed_mapping, 0,
			    sizeof(invlpg_changes) / sizeof(invlpg_changes[0]));
	tcase_add_test(resync, test_invlpg_drops_path_whose_guest_table_entry_lost_accessed);
	tcase_add_test(resync, test_sync_guest_table_reaches_every_address_space);
	tcase_add_test(resync, test_sync_guest_table_rejects_bad_address_and_counts_none);
	tcase_add_test(resync, test_address_spaces_sharing_a_guest_table_share_its_shadow);
	tcase_add_test(resync, test_a_linked_shadow_is_synced_for_the_address_space_that_flushed);
	tcase_add_test(resync, test_set_mode_nxe_resyncs_shadow_under_new_mode);
	suite_add_tcase(s, resync);
	tcase_add_test(quota, test_quota_caps_a_vm_and_leaves_the_other_vm_untouched);
	tcase_add_test(quota, test_full_pool_reclaims_only_the_faulting_vm);
	tcase_add_test(quota, test_quota_refuses_what_running_roots_leave_no_room_for);
	suite_add_tcase(s, quota);
	tcase_add_test(bookkeeping, test_bookkeeping_of_a_64g_vm_stays_small);
	tcase_add_test(bookkeeping, test_slot_side_arrays_come_per_run_on_first_use);
	tcase_set_timeout(bookkeeping, 60);
	tcase_add_test(read_mode, test_a_fault_below_present_private_tables_installs_its_leaf_in_read_mode);
	tcase_add_test(read_mode,
		       test_a_fault_below_a_table_two_address_spaces_share_installs_in_write_mode);
	tcase_add_test(read_mode,
		       test_threads_faulting_the_same_pages_of_private_tables_install_every_leaf_once);
	tcase_add_test(read_mode, test_read_mode_faults_racing_invalidations_leave_no_leaf_inside_one);
	tcase_set_timeout(read_mode, 120);
	suite_add_tcase(s, read_mode);
	suite_add_tcase(s, bookkeeping);
	tcase_add_loop_test(around, test_fault_around_maps_the_window_under_a_guest_large_page, 0,
			    sizeof(fa_windows) / sizeof(fa_windows[0]));
	tcase_add_test(around, test_fault_around_maps_only_accessed_valid_guest_ptes);
	tcase_add_test(around, test_fault_around_maps_the_window_writable_after_the_first_write);
	tcase_add_loop_test(around, test_fault_around_maps_only_resident_pages_and_never_pages_in, 0, 2);
	tcase_add_test(around, test_fault_around_window_must_be_a_power_of_two_up_to_the_max);
	suite_add_tcase(s, around);
	shadow_huge_add_tcase(s);
	return s;
}
