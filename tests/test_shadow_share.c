/*
 * shadow/ sharing across VMs: clone by use count, privatize,
 * copy-on-write of data and of guest tables, the pmd-rmap reaching every
 * sharer's vCPUs on eviction, canonical segment tables, exactly-once
 * teardown.  docs/sharing.md is the design; test_shadow_share_torture.c the
 * concurrent torture.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "umbra/shadow.h"
#include "shadow_internal.h"
#include "spte.h"
#include "test_shadow_share_util.h"
#include "tests.h"

#define VA_BASE 0x00007f0000000000ull
#define DATA_GPA 0x200000ull	/* data object at 2 MiB in the P2M */
#define DATA_MPA (2ull << 30)
#define NDATA 64
#define UW (SPTE_WRITABLE | SPTE_USER)

/* A parent VM (RAM with its guest tables, a data object with a store, a
 * own slot) and, after fam_clone(), its clone. */
struct fam {
	struct shadow_pool *pool;
	struct gm gm;
	struct hobj data, own;
	struct sh_owns owns;		/* the own slots the clone adds */
	struct shadow_mmu *child;
	uint64_t cr3;
};

/* With a root cache of @nr_roots (0: the default). */
static void fam_init_roots(struct fam *f, uint64_t mapped, unsigned int nr_roots)
{
	struct shadow_slot s;
	int id;

	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(shadow_pool_create(2048, &f->pool), 0);
	gm_init_full(&f->gm, 1024, f->pool, 0, nr_roots, NULL, NULL, NULL);
	hobj_init(&f->data, "data", 256, true);
	s = hobj_slot(&f->data, DATA_MPA);
	ck_assert_int_eq(shadow_mmu_add_slot(f->gm.mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(f->gm.mmu, DATA_GPA, 256, id, 0), 0);
	hobj_init(&f->own, "own0", 1024, false);
	s = hobj_slot(&f->own, SH_COW_MPA(0));
	ck_assert_int_eq(shadow_mmu_add_slot(f->gm.mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(f->gm.mmu, id), 0);
	f->cr3 = gm_table(&f->gm);
	for (uint64_t i = 0; i < mapped; i++) {
		gm_map(&f->gm, f->cr3, VA_BASE + i * GM_PAGE, DATA_GPA + i * GM_PAGE, 1, UW);
		*(uint64_t *)(f->data.host + i * GM_PAGE) = 0x1000 + i;
	}
}

static void fam_init(struct fam *f, uint64_t mapped)
{
	fam_init_roots(f, mapped, 0);
}

static void fam_clone(struct fam *f)
{
	sh_clone(&f->owns, 1024, f->gm.mmu, &f->child);
}

static void fam_fini(struct fam *f)
{
	shadow_mmu_destroy(f->child);
	shadow_mmu_destroy(f->gm.mmu);
	ck_assert_msg(shadow_pool_pages_in_use(f->pool, 0) == 0,
		      "expected every table freed, got %zu in use", shadow_pool_pages_in_use(f->pool, 0));
	notifier_object_destroy(f->gm.ram);
	munmap(f->gm.host, f->gm.npages * GM_PAGE);
	hobj_fini(&f->data);
	hobj_fini(&f->own);
	sh_owns_fini(&f->owns);
	shadow_pool_destroy(f->pool);
}

/* The end of a test of a parent and its clone: both MMUs and the pool
 * pass their checks, then the vCPUs and everything go. */
static void fam_check_and_fini(struct fam *f, struct shadow_vcpu *vp, struct shadow_vcpu *vc)
{
	assert_mmu_check(f->gm.mmu);
	assert_mmu_check(f->child);
	assert_pool_check(f->pool);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	fam_fini(f);
}

static uint64_t read_u64(struct shadow_vcpu *v, uint64_t va, void **host)
{
	struct shadow_vcpu_result res;
	int ret = shadow_vcpu_access_fault_in(v, va, SHADOW_ACCESS_USER, &res);

	ck_assert_msg(ret == 0, "read %#llx: expected 0, got %d", (unsigned long long)va, ret);
	if (host)
		*host = res.host;
	return __atomic_load_n((uint64_t *)res.host, __ATOMIC_ACQUIRE);
}

static void *write_u64(struct shadow_vcpu *v, uint64_t va, uint64_t val)
{
	struct shadow_vcpu_result res;
	int ret = shadow_vcpu_access_fault_in(v, va, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res);

	ck_assert_msg(ret == 0, "write %#llx: expected 0, got %d", (unsigned long long)va, ret);
	__atomic_store_n((uint64_t *)res.host, val, __ATOMIC_RELEASE);
	return res.host;
}

/*
 * A family whose parent's tables are filled (its vCPU *@vp, with @tlb TLB
 * entries, has read every data page) before the clone; *@vc runs on the
 * child.
 */
static void fam_init_cloned(struct fam *f, unsigned int tlb, struct shadow_vcpu **vp,
			    struct shadow_vcpu **vc)
{
	fam_init(f, NDATA);
	*vp = sh_vcpu(f->gm.mmu, tlb, f->cr3);
	for (uint64_t i = 0; i < NDATA; i++)
		read_u64(*vp, VA_BASE + i * GM_PAGE, NULL);
	fam_clone(f);
	*vc = sh_vcpu(f->child, tlb, f->cr3);
}

/*
 * A clone's vCPU resumes where the parent's left off: no sync, no new
 * table (the parent's tree holds every translation), and a translation
 * that was stale in the parent's tree (a guest PTE changed without INVLPG)
 * is stale in the clone's too, until the clone's INVLPG; a CR3 load would
 * have synced it.
 */
START_TEST(test_clone_vcpu_resumes_on_the_parents_tree_without_a_sync)
{
	const uint64_t g = 5, va = VA_BASE + g * GM_PAGE;
	struct shadow_vcpu_config cfg = { .tlb_entries = 0 };
	struct shadow_mmu_stats st;
	struct shadow_vcpu *vp, *vc;
	struct fam f;

	fam_init(&f, NDATA);
	vp = sh_vcpu(f.gm.mmu, 0, f.cr3);
	for (uint64_t i = 0; i < NDATA; i++)
		ck_assert_uint_eq(read_u64(vp, VA_BASE + i * GM_PAGE, NULL), 0x1000 + i);
	/* The guest points va at page g + 1, without an INVLPG. */
	*vm_ptr(f.gm.mmu, gm_entry(&f.gm, f.cr3, va, 1)) =
		(DATA_GPA + (g + 1) * GM_PAGE) | UW | SPTE_PRESENT | SPTE_ACCESSED;
	fam_clone(&f);
	ck_assert_int_eq(shadow_vcpu_create(f.child, &cfg, &vc), 0);
	ck_assert_int_eq(shadow_vcpu_resume_cr3(vc, f.cr3), 0);
	for (uint64_t i = 0; i < NDATA; i++)
		ck_assert_uint_eq(read_u64(vc, VA_BASE + i * GM_PAGE, NULL), 0x1000 + i);
	shadow_mmu_stats(f.child, &st);
	ck_assert_msg(st.syncs == 0 && st.faults == 0 && st.tables_created == 1,
		      "expected no sync, no fault and one table (the root), got %llu syncs, %llu faults, "
		      "%llu tables", (unsigned long long)st.syncs, (unsigned long long)st.faults,
		      (unsigned long long)st.tables_created);
	shadow_vcpu_invlpg(vc, va);
	ck_assert_uint_eq(read_u64(vc, va, NULL), 0x1000 + g + 1);
	/* The parent's own CR3 load syncs its tree. */
	ck_assert_uint_eq(read_u64(vp, va, NULL), 0x1000 + g);
	ck_assert_int_eq(shadow_vcpu_load_cr3(vp, f.cr3), 0);
	ck_assert_uint_eq(read_u64(vp, va, NULL), 0x1000 + g + 1);
	fam_check_and_fini(&f, vp, vc);
}
END_TEST

START_TEST(test_clone_copies_only_roots_and_shares_lower_tables)
{
	struct shadow_mmu_stats st;
	struct fam f;
	void *host;

	fam_init(&f, NDATA);
	struct shadow_vcpu *vp = sh_vcpu(f.gm.mmu, 64, f.cr3);

	for (uint64_t i = 0; i < NDATA; i++)
		ck_assert_uint_eq(read_u64(vp, VA_BASE + i * GM_PAGE, NULL), 0x1000 + i);
	size_t before = shadow_pool_pages_in_use(f.pool, 0);

	fam_clone(&f);
	ck_assert_msg(shadow_pool_pages_in_use(f.pool, 0) == before + 1,
		      "clone: expected %zu table pages (one new root), got %zu", before + 1,
		      shadow_pool_pages_in_use(f.pool, 0));
	ck_assert_msg(shadow_pool_shared_pages(f.pool) == 1,
		      "expected 1 shared table (the PDPT below both roots), got %zu",
		      shadow_pool_shared_pages(f.pool));
	assert_pool_check(f.pool);
	struct shadow_vcpu *vc = sh_vcpu(f.child, 64, f.cr3);

	/* The CR3 load syncs the cloned root: the shared tables still agree. */
	ck_assert_uint_eq(shadow_pool_shared_pages(f.pool), 1);
	for (uint64_t i = 0; i < NDATA; i++) {
		ck_assert_uint_eq(read_u64(vc, VA_BASE + i * GM_PAGE, &host), 0x1000 + i);
		ck_assert_ptr_eq(host, f.data.host + i * GM_PAGE);
	}
	shadow_mmu_stats(f.child, &st);
	ck_assert_msg(st.tables_created == 1, "child reads through the parent's tables: expected 1 "
		      "table created (its root), got %llu", (unsigned long long)st.tables_created);
	ck_assert_uint_eq(st.clones, 1);
	fam_check_and_fini(&f, vp, vc);
}
END_TEST

/* _i: 0 = the clone writes first, 1 = the parent does. */
/*
 * The parent's two address spaces x and y share a guest PDPT, so they share
 * its shadow (one shadow per guest table within a VM).  After a clone, the
 * clone reaches those tables too: the parent's write through x privatizes
 * its path instead of writing a table the clone reaches, so y sees the
 * write and the clone keeps the original.
 */
START_TEST(test_tables_shared_within_a_vm_are_privatized_after_a_clone)
{
	struct shadow_mmu_stats st;
	struct fam f;
	struct shadow_vcpu *vx, *vy, *vc;

	fam_init(&f, 8);
	const uint64_t y = gm_table(&f.gm);

	gm_write(&f.gm, y + SPTE_INDEX(VA_BASE, 4) * 8, gm_read(&f.gm, f.cr3 + SPTE_INDEX(VA_BASE, 4) * 8));
	vx = sh_vcpu(f.gm.mmu, 64, f.cr3);
	vy = sh_vcpu(f.gm.mmu, 64, y);
	for (uint64_t i = 0; i < 8; i++) {
		ck_assert_uint_eq(read_u64(vx, VA_BASE + i * GM_PAGE, NULL), 0x1000 + i);
		ck_assert_uint_eq(read_u64(vy, VA_BASE + i * GM_PAGE, NULL), 0x1000 + i);
	}
	shadow_mmu_stats(f.gm.mmu, &st);
	ck_assert_uint_eq(st.tables_reused, 1);
	fam_clone(&f);
	vc = sh_vcpu(f.child, 64, y);
	ck_assert_uint_eq(read_u64(vc, VA_BASE + 2 * GM_PAGE, NULL), 0x1002);
	write_u64(vx, VA_BASE + 2 * GM_PAGE, 0x77);
	ck_assert_uint_eq(read_u64(vy, VA_BASE + 2 * GM_PAGE, NULL), 0x77);
	ck_assert_msg(read_u64(vc, VA_BASE + 2 * GM_PAGE, NULL) == 0x1002,
		      "the clone must keep the original: expected 0x1002, got %#llx",
		      (unsigned long long)read_u64(vc, VA_BASE + 2 * GM_PAGE, NULL));
	assert_mmu_check(f.gm.mmu);
	assert_mmu_check(f.child);
	assert_pool_check(f.pool);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vy);
	shadow_vcpu_destroy(vx);
	fam_fini(&f);
}
END_TEST

/*
 * An index hint that names another VM's table is not linked, whatever its
 * use count: the parent's table T (its address space x's shadow PDPT), after
 * a clone, is left to the clone alone when the parent's one-slot root cache
 * evicts x; the clone then writes page 6 through T in place (its own copy
 * of the page).  The parent's address space y, which maps the same guest
 * PDPT at the same address, finds T in its index with use count 1: it must
 * not link it (no link counted), and reads its own pages.
 */
START_TEST(test_an_index_hint_to_another_vms_table_is_not_linked)
{
	struct shadow_mmu_stats st;
	struct fam f;
	struct shadow_vcpu *vp, *vc;

	fam_init_roots(&f, 8, 1);
	const uint64_t y = gm_table(&f.gm), z = gm_table(&f.gm);

	gm_write(&f.gm, y + SPTE_INDEX(VA_BASE, 4) * 8, gm_read(&f.gm, f.cr3 + SPTE_INDEX(VA_BASE, 4) * 8));
	vp = sh_vcpu(f.gm.mmu, 64, f.cr3);
	for (uint64_t i = 0; i < 8; i++)
		ck_assert_uint_eq(read_u64(vp, VA_BASE + i * GM_PAGE, NULL), 0x1000 + i);
	fam_clone(&f);
	vc = sh_vcpu(f.child, 64, f.cr3);
	ck_assert_int_eq(shadow_vcpu_load_cr3(vp, z), 0); /* evicts the parent's x */
	write_u64(vc, VA_BASE + 6 * GM_PAGE, 0xc10e);
	ck_assert_int_eq(shadow_vcpu_load_cr3(vp, y), 0);
	ck_assert_uint_eq(read_u64(vp, VA_BASE + 5 * GM_PAGE, NULL), 0x1005);
	ck_assert_msg(read_u64(vp, VA_BASE + 6 * GM_PAGE, NULL) == 0x1006,
		      "the parent reads the clone's page: expected 0x1006, got %#llx",
		      (unsigned long long)read_u64(vp, VA_BASE + 6 * GM_PAGE, NULL));
	shadow_mmu_stats(f.gm.mmu, &st);
	ck_assert_uint_eq(st.tables_reused, 0);
	assert_mmu_check(f.gm.mmu);
	assert_mmu_check(f.child);
	assert_pool_check(f.pool);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	fam_fini(&f);
}
END_TEST

/* An own slot whose get_page clones its VM once, when armed: a clone that
 * lands between the copy-on-write's unlocked read of the own slot and its
 * mmu_lock. */
struct clone_hook {
	bool armed;
	struct fam *f;
	struct shadow_mmu *parent, *child;
	struct hobj own; /* the parent's next own slot */
};

static int clone_hook_get_page(void *priv, uint64_t page, bool write)
{
	struct clone_hook *h = priv;

	(void)page;
	if (h->armed && write) {
		struct shadow_slot ps = hobj_slot(&h->own, SH_OWN_MPA(SH_OWN_MAX - 1));
		struct shadow_slot cs = sh_own_new(&h->f->owns, 1024);

		h->armed = false;
		ck_assert_int_eq(shadow_mmu_clone(h->parent, &ps, &cs, &h->child), 0);
	}
	return 0;
}

static const struct shadow_slot_ops clone_hook_ops = { .get_page = clone_hook_get_page };

/* A clone made while a copy-on-write break of the parent is between its
 * look at the own slot and its lock: that slot is now a layer the clone
 * maps, so the copy must go to the parent's new own slot, not into it. */
START_TEST(test_cow_break_racing_a_clone_copies_into_the_new_own_slot)
{
	struct clone_hook h = { 0 };
	struct fam f;
	struct hobj hooked;
	uint64_t mpa, gpa = DATA_GPA + 3 * GM_PAGE;
	void *host, *child_host;

	fam_init(&f, 8);
	h.f = &f;
	h.parent = f.gm.mmu;
	hobj_init(&h.own, "own-next", 1024, false);
	hobj_init(&hooked, "own-hooked", 1024, false);
	struct shadow_slot ps = hobj_slot(&hooked, SH_OWN_MPA(SH_OWN_MAX - 2));
	struct shadow_slot cs = sh_own_new(&f.owns, 1024);

	ps.ops = &clone_hook_ops;
	ps.priv = &h;
	ck_assert_int_eq(shadow_mmu_clone(f.gm.mmu, &ps, &cs, &f.child), 0); /* our own slot: hooked */
	h.armed = true;
	ck_assert_int_eq(shadow_mmu_cow_break(f.gm.mmu, gpa), 0);
	ck_assert_msg(!h.armed && h.child, "the hook did not clone");
	ck_assert_int_eq(shadow_mmu_p2m_lookup(f.gm.mmu, gpa, &mpa, &host), 0);
	ck_assert_msg((uint8_t *)host == h.own.host + (gpa / GM_PAGE) * GM_PAGE,
		      "the parent's copy: expected in its new own slot at %p, got %p (the hooked slot is at %p)",
		      (void *)(h.own.host + (gpa / GM_PAGE) * GM_PAGE), host, (void *)hooked.host);
	/* The parent's write stays its own. */
	__atomic_store_n((uint64_t *)host, 0xbad, __ATOMIC_RELEASE);
	ck_assert_int_eq(shadow_mmu_p2m_lookup(h.child, gpa, &mpa, &child_host), 0);
	ck_assert_msg(__atomic_load_n((uint64_t *)child_host, __ATOMIC_ACQUIRE) == 0x1003,
		      "the clone reads its page: expected 0x1003, got %#llx",
		      (unsigned long long)__atomic_load_n((uint64_t *)child_host, __ATOMIC_ACQUIRE));
	assert_mmu_check(f.gm.mmu);
	assert_mmu_check(h.child);
	shadow_mmu_destroy(h.child);
	fam_fini(&f);
	hobj_fini(&h.own);
	hobj_fini(&hooked);
}
END_TEST

START_TEST(test_first_write_copies_page_for_the_writer_only)
{
	struct shadow_mmu_stats st;
	struct fam f;
	void *host, *whost;
	struct shadow_vcpu *vp, *vc;

	fam_init_cloned(&f, 64, &vp, &vc);
	struct shadow_vcpu *writer = _i ? vp : vc, *other = _i ? vc : vp;
	struct shadow_mmu *wmmu = _i ? f.gm.mmu : f.child;

	for (uint64_t i = 0; i < NDATA; i++)
		read_u64(vc, VA_BASE + i * GM_PAGE, NULL);
	whost = write_u64(writer, VA_BASE + 3 * GM_PAGE, 0xbeef);
	ck_assert_msg(whost != (void *)(f.data.host + 3 * GM_PAGE),
		      "the write must land in a private copy, not the shared page");
	ck_assert_uint_eq(read_u64(writer, VA_BASE + 3 * GM_PAGE, NULL), 0xbeef);
	ck_assert_msg(read_u64(other, VA_BASE + 3 * GM_PAGE, &host) == 0x1003,
		      "the other VM must keep the original: expected 0x1003, got %#llx",
		      (unsigned long long)read_u64(other, VA_BASE + 3 * GM_PAGE, NULL));
	ck_assert_ptr_eq(host, f.data.host + 3 * GM_PAGE);
	ck_assert_uint_eq(*(uint64_t *)(f.data.host + 3 * GM_PAGE), 0x1003);
	/* The rest of the page was copied too. */
	ck_assert_uint_eq(read_u64(writer, VA_BASE + 4 * GM_PAGE, NULL), 0x1004);
	shadow_mmu_stats(wmmu, &st);
	/* Two copies: the data page, and the guest's own page table, whose
	 * dirty bit the write sets (the clone shares it too). */
	ck_assert_msg(st.cow_breaks == 2, "expected 2 copies on write, got %llu",
		      (unsigned long long)st.cow_breaks);
	ck_assert_msg(st.privatizations >= 3, "expected the write path privatized (>= 3 tables), got %llu",
		      (unsigned long long)st.privatizations);
	/* The other VM's tables were not touched: it reaches everything
	 * without a fault (its TLB was flushed by nobody but itself). */
	struct shadow_vcpu_stats vs0, vs1;

	shadow_vcpu_stats(other, &vs0);
	for (uint64_t i = 0; i < NDATA; i++)
		read_u64(other, VA_BASE + i * GM_PAGE, NULL);
	shadow_vcpu_stats(other, &vs1);
	ck_assert_msg(vs1.faults == vs0.faults, "the other VM must not fault: got %llu faults",
		      (unsigned long long)(vs1.faults - vs0.faults));
	fam_check_and_fini(&f, vp, vc);
}
END_TEST

/* _i: delivery mode (range, page). */
START_TEST(test_eviction_reaches_every_vcpu_of_every_sharer_before_return)
{
	struct shadow_vcpu_result res;
	struct fam f;
	uint64_t ev, rs;

	ck_assert_int_eq(notifier_thread_init(), 0);
	fam_init(&f, NDATA);
	ck_assert_int_eq(notifier_object_set_mode(f.data.obj, _i ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE), 0);
	struct shadow_vcpu *v[4];

	v[0] = sh_vcpu(f.gm.mmu, 64, f.cr3);
	v[1] = sh_vcpu(f.gm.mmu, 64, f.cr3);
	for (uint64_t i = 0; i < NDATA; i++)
		read_u64(v[0], VA_BASE + i * GM_PAGE, NULL);
	fam_clone(&f);
	v[2] = sh_vcpu(f.child, 64, f.cr3);
	v[3] = sh_vcpu(f.child, 64, f.cr3);
	/* Every vCPU caches page 5, through the one shared leaf table. */
	for (int k = 0; k < 4; k++) {
		read_u64(v[k], VA_BASE + 5 * GM_PAGE, NULL);
		ck_assert_int_eq(shadow_vcpu_access(v[k], VA_BASE + 5 * GM_PAGE, SHADOW_ACCESS_USER, &res), 0);
		ck_assert_msg(res.tlb_hit, "vCPU %d: expected a TLB hit before the eviction", k);
	}
	ck_assert_int_eq(shadow_store_evict(f.data.store, 5), 0);
	for (int k = 0; k < 4; k++) {
		int ret = shadow_vcpu_access(v[k], VA_BASE + 5 * GM_PAGE, SHADOW_ACCESS_USER, &res);

		ck_assert_msg(ret == -EFAULT, "vCPU %d (VM %d) still reaches the evicted page: "
			      "expected -EFAULT, got %d (tlb_hit %d)", k, k / 2, ret, res.tlb_hit);
	}
	ck_assert_uint_eq(f.data.host[5 * GM_PAGE], SHADOW_STORE_POISON);
	/* The next access restores it, content intact, for both VMs. */
	ck_assert_uint_eq(read_u64(v[2], VA_BASE + 5 * GM_PAGE, NULL), 0x1005);
	ck_assert_uint_eq(read_u64(v[0], VA_BASE + 5 * GM_PAGE, NULL), 0x1005);
	shadow_store_stats(f.data.store, &ev, &rs);
	ck_assert_uint_eq(ev, 1);
	ck_assert_uint_eq(rs, 1);
	assert_pool_check(f.pool);
	for (int k = 0; k < 4; k++)
		shadow_vcpu_destroy(v[k]);
	fam_fini(&f);
}
END_TEST

struct writer_arg {
	struct shadow_vcpu *v;
	unsigned int parity;
	uint64_t tag;
};

static void *writer_thread(void *p)
{
	struct writer_arg *a = p;

	notifier_thread_init(); /* the vCPU's walk is an RCU reader */
	for (uint64_t i = a->parity; i < NDATA; i += 2)
		write_u64(a->v, VA_BASE + i * GM_PAGE, a->tag + i);
	notifier_thread_exit();
	return NULL;
}

START_TEST(test_racing_unsharers_both_copy_and_tables_are_freed_once)
{
	for (int round = 0; round < 10; round++) {
		struct fam f;
		pthread_t t[2];
		struct shadow_vcpu *vp, *vc;

		fam_init_cloned(&f, 16, &vp, &vc);
		struct writer_arg a[2] = { { vp, 0, 0xa0000 }, { vc, 1, 0xc0000 } };

		/* Both privatize the same shared tables at once. */
		for (int k = 0; k < 2; k++)
			ck_assert_int_eq(pthread_create(&t[k], NULL, writer_thread, &a[k]), 0);
		for (int k = 0; k < 2; k++)
			pthread_join(t[k], NULL);
		assert_pool_check(f.pool);
		assert_mmu_check(f.gm.mmu);
		assert_mmu_check(f.child);
		ck_assert_uint_eq(shadow_pool_shared_pages(f.pool), 0);
		for (uint64_t i = 0; i < NDATA; i++) {
			uint64_t p = read_u64(vp, VA_BASE + i * GM_PAGE, NULL);
			uint64_t c = read_u64(vc, VA_BASE + i * GM_PAGE, NULL);

			ck_assert_msg(p == (i % 2 ? 0x1000 + i : 0xa0000 + i),
				      "parent page %llu: got %#llx", (unsigned long long)i, (unsigned long long)p);
			ck_assert_msg(c == (i % 2 ? 0xc0000 + i : 0x1000 + i),
				      "child page %llu: got %#llx", (unsigned long long)i, (unsigned long long)c);
		}
		shadow_vcpu_destroy(vc);
		shadow_vcpu_destroy(vp);
		fam_fini(&f);
	}
}
END_TEST

START_TEST(test_parent_destroy_leaves_clone_its_shared_tables)
{
	struct fam f;
	struct shadow_vcpu *vp, *vc;

	fam_init_cloned(&f, 16, &vp, &vc);
	size_t before = shadow_pool_pages_in_use(f.pool, 0);

	shadow_vcpu_destroy(vp);
	shadow_mmu_destroy(f.gm.mmu);
	f.gm.mmu = NULL;
	ck_assert_msg(shadow_pool_pages_in_use(f.pool, 0) == before - 1,
		      "parent destroy: expected only its root freed (%zu), got %zu", before - 1,
		      shadow_pool_pages_in_use(f.pool, 0));
	assert_pool_check(f.pool);
	struct shadow_vcpu_stats s0, s1;

	shadow_vcpu_stats(vc, &s0);
	for (uint64_t i = 0; i < NDATA; i++)
		ck_assert_uint_eq(read_u64(vc, VA_BASE + i * GM_PAGE, NULL), 0x1000 + i);
	shadow_vcpu_stats(vc, &s1);
	ck_assert_uint_eq(s1.faults, s0.faults);
	shadow_vcpu_destroy(vc);
	fam_fini(&f);
}
END_TEST

START_TEST(test_clone_guest_table_write_is_private_to_the_clone)
{
	struct fam f;
	struct shadow_vcpu *vp, *vc;

	fam_init_cloned(&f, 16, &vp, &vc);
	uint64_t va = VA_BASE + 2 * GM_PAGE, pte = gm_entry(&f.gm, f.cr3, va, 1);

	ck_assert_uint_eq(read_u64(vc, va, NULL), 0x1002);
	/* The clone's guest points va at page 9 and invalidates it. */
	vm_write(f.child, pte, (DATA_GPA + 9 * GM_PAGE) | UW | SPTE_PRESENT);
	shadow_vcpu_invlpg(vc, va);
	ck_assert_uint_eq(read_u64(vc, va, NULL), 0x1009);
	ck_assert_msg(read_u64(vp, va, NULL) == 0x1002, "the parent's guest table is its own");
	ck_assert_uint_eq(gm_read(&f.gm, pte) & SPTE_ADDR_MASK, DATA_GPA + 2 * GM_PAGE);
	fam_check_and_fini(&f, vp, vc);
}
END_TEST

/* ---- fills in place: read faults and refaults keep tables shared -------- */

#define FILL_MAPPED 128 /* guest-mapped data pages: one leaf table */
#define FILL_WARM 64	/* ... of which the parent reads these before the clone */

struct fill_stats {
	uint64_t privatizations, fills, faults;
};

static struct fill_stats fill_stats_of(struct shadow_mmu *mmu)
{
	struct shadow_mmu_stats st;

	shadow_mmu_stats(mmu, &st);
	return (struct fill_stats){ st.privatizations, st.fills_in_place, st.faults };
}

/* A family with FILL_MAPPED pages mapped, their PTEs accessed (as Linux
 * makes them: a walk need not set A, which in a clone would copy the guest
 * table), and the first FILL_WARM read by the parent's vCPU *@vp (no TLB)
 * before the clone; *@vc runs on the child. */
static void fill_fam_init(struct fam *f, struct shadow_vcpu **vp, struct shadow_vcpu **vc)
{
	fam_init(f, FILL_MAPPED);
	for (uint64_t i = 0; i < FILL_MAPPED; i++)
		*vm_ptr(f->gm.mmu, gm_entry(&f->gm, f->cr3, VA_BASE + i * GM_PAGE, 1)) |= SPTE_ACCESSED;
	*vp = sh_vcpu(f->gm.mmu, 0, f->cr3);
	for (uint64_t i = 0; i < FILL_WARM; i++)
		read_u64(*vp, VA_BASE + i * GM_PAGE, NULL);
	fam_clone(f);
	*vc = sh_vcpu(f->child, 0, f->cr3);
}

/* Pages [first, last) read by @v, each the parent's original value at its
 * own host address (the shared page). */
static void fill_read_range(struct fam *f, struct shadow_vcpu *v, uint64_t first, uint64_t last)
{
	void *host;

	for (uint64_t i = first; i < last; i++) {
		uint64_t val = read_u64(v, VA_BASE + i * GM_PAGE, &host);

		ck_assert_msg(val == 0x1000 + i, "page %llu: expected %#llx, got %#llx",
			      (unsigned long long)i, (unsigned long long)(0x1000 + i),
			      (unsigned long long)val);
		ck_assert_ptr_eq(host, f->data.host + i * GM_PAGE);
	}
}

/* Both VMs reach the same tables: one shared PDPT, nothing private below
 * the roots, and the pool holds @pages table pages. */
static void assert_fill_still_shared(struct fam *f, size_t pages)
{
	struct shadow_mmu *vms[2] = { f->gm.mmu, f->child };

	ck_assert_msg(shadow_pool_shared_pages(f->pool) == 1,
		      "expected 1 shared table (the PDPT), got %zu", shadow_pool_shared_pages(f->pool));
	ck_assert_msg(shadow_pool_pages_in_use(f->pool, 0) == pages,
		      "expected %zu table pages (no copy), got %zu", pages,
		      shadow_pool_pages_in_use(f->pool, 0));
	for (int k = 0; k < 2; k++) {
		struct shadow_table_usage u;

		ck_assert_int_eq(shadow_mmu_table_usage(vms[k], &u), 0);
		ck_assert_msg(u.tables == 4 && u.shared == 1,
			      "VM %d: expected 4 tables reached (its root, the shared PDPT, the "
			      "PD and PT below it), 1 shared, got %llu, %llu shared", k,
			      (unsigned long long)u.tables, (unsigned long long)u.shared);
		assert_mmu_check(vms[k]);
	}
	assert_pool_check(f->pool);
}

/* After a clone, read faults of both VMs fill the shared leaf table in
 * place: no privatization, no new table, and each VM then reads what the
 * other filled without a fault. */
START_TEST(test_read_faults_after_clone_fill_shared_tables_in_place)
{
	struct shadow_vcpu_stats v0, v1;
	struct shadow_vcpu *vp, *vc;
	struct fill_stats sp, sc;
	struct fam f;

	fill_fam_init(&f, &vp, &vc);
	size_t pages = shadow_pool_pages_in_use(f.pool, 0);

	fill_read_range(&f, vc, FILL_WARM, FILL_WARM + 32);	/* the child fills */
	fill_read_range(&f, vp, FILL_WARM + 32, FILL_MAPPED);	/* the parent fills */
	sp = fill_stats_of(f.gm.mmu);
	sc = fill_stats_of(f.child);
	ck_assert_msg(sp.privatizations == 0 && sc.privatizations == 0,
		      "read faults must not privatize: parent %llu, child %llu",
		      (unsigned long long)sp.privatizations, (unsigned long long)sc.privatizations);
	ck_assert_msg(sc.fills == 32 && sp.fills == 32, "expected 32 fills each, got parent %llu, "
		      "child %llu", (unsigned long long)sp.fills, (unsigned long long)sc.fills);
	assert_fill_still_shared(&f, pages);
	/* What one VM filled, the other reaches without a fault. */
	shadow_vcpu_stats(vc, &v0);
	fill_read_range(&f, vc, 0, FILL_MAPPED);
	shadow_vcpu_stats(vc, &v1);
	ck_assert_msg(v1.faults == v0.faults, "the child faulted %llu times on filled leaves",
		      (unsigned long long)(v1.faults - v0.faults));
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	fam_fini(&f);
}
END_TEST

/* An eviction clears the shared leaves in place; both VMs' refaults (and
 * the swap-in) fill them again, and the tables stay shared. */
START_TEST(test_refaults_after_eviction_fill_shared_tables_in_place)
{
	static const uint64_t evicted[] = { 3, 40, 63 };
	struct shadow_vcpu *vp, *vc;
	struct fill_stats sp, sc;
	uint64_t ev, rs;
	struct fam f;

	ck_assert_int_eq(notifier_thread_init(), 0);
	fill_fam_init(&f, &vp, &vc);
	fill_read_range(&f, vc, 0, NDATA);
	size_t pages = shadow_pool_pages_in_use(f.pool, 0);

	for (unsigned int k = 0; k < 3; k++)
		ck_assert_int_eq(shadow_store_evict(f.data.store, evicted[k]), 0);
	for (unsigned int k = 0; k < 3; k++)
		ck_assert_uint_eq(f.data.host[evicted[k] * GM_PAGE], SHADOW_STORE_POISON);
	fill_read_range(&f, vp, 0, NDATA); /* the parent refaults and swaps in */
	fill_read_range(&f, vc, 0, NDATA);
	shadow_store_stats(f.data.store, &ev, &rs);
	ck_assert_uint_eq(ev, 3);
	ck_assert_uint_eq(rs, 3);
	sp = fill_stats_of(f.gm.mmu);
	sc = fill_stats_of(f.child);
	ck_assert_msg(sp.privatizations == 0 && sc.privatizations == 0,
		      "refaults must not privatize: parent %llu, child %llu",
		      (unsigned long long)sp.privatizations, (unsigned long long)sc.privatizations);
	ck_assert_msg(sp.fills + sc.fills == 3, "expected the 3 evicted leaves filled again "
		      "(once, by whichever VM refaulted first), got %llu",
		      (unsigned long long)(sp.fills + sc.fills));
	assert_fill_still_shared(&f, pages);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	fam_fini(&f);
}
END_TEST

/*
 * A divergence privatizes: _i 0, the child writes a copy-on-write page;
 * 1, the child's guest changes a PTE in its (copy of the) page table: the
 * parent still fills the entry next to it (the same in both copies), not
 * the changed one; 2, the child's P2M maps a gfn to another object, and the
 * parent's fill of that gfn refuses.  Each VM reads its own view after.
 */
START_TEST(test_divergent_views_privatize_instead_of_filling)
{
	const uint64_t g = FILL_WARM + 6, va = VA_BASE + g * GM_PAGE, other = 200;
	struct shadow_vcpu *vp, *vc;
	struct hobj elsewhere = { 0 };
	struct fill_stats sp, sc;
	struct fam f;

	fill_fam_init(&f, &vp, &vc);
	*(uint64_t *)(f.data.host + other * GM_PAGE) = 0x1000 + other;
	if (_i == 0) {
		write_u64(vc, va, 0xc0ffee);
		ck_assert_uint_eq(read_u64(vc, va, NULL), 0xc0ffee);
		sc = fill_stats_of(f.child);
		ck_assert_msg(sc.privatizations > 0, "a copy-on-write write must privatize");
	} else if (_i == 1) {
		vm_write(f.child, gm_entry(&f.gm, f.cr3, va, 1),
			 (DATA_GPA + other * GM_PAGE) | UW | SPTE_PRESENT | SPTE_ACCESSED);
		/* The entry next to it is the same in the child's copy: filled. */
		fill_read_range(&f, vp, g + 1, g + 2);
		sp = fill_stats_of(f.gm.mmu);
		ck_assert_msg(sp.fills == 1 && sp.privatizations == 0, "an entry both guests agree "
			      "on is filled in place: %llu fills, %llu privatizations",
			      (unsigned long long)sp.fills, (unsigned long long)sp.privatizations);
		/* The changed one is not: the parent privatizes. */
		fill_read_range(&f, vp, g, g + 1);
		sp = fill_stats_of(f.gm.mmu);
		ck_assert_msg(sp.fills == 1 && sp.privatizations > 0, "the parent must not fill an "
			      "entry the child's guest changed: %llu fills, %llu privatizations",
			      (unsigned long long)sp.fills, (unsigned long long)sp.privatizations);
		shadow_vcpu_invlpg(vc, va);
		ck_assert_uint_eq(read_u64(vc, va, NULL), 0x1000 + other);
	} else {
		/* Another object, in the child only, holds what the child's
		 * guest reads there. */
		struct shadow_slot s;
		int id;

		hobj_init(&elsewhere, "elsewhere", 1, false);
		s = hobj_slot(&elsewhere, SH_COW_MPA(7));
		*(uint64_t *)elsewhere.host = 0x1000 + other;
		ck_assert_int_eq(shadow_mmu_add_slot(f.child, &s, &id), 0);
		ck_assert_int_eq(shadow_mmu_map_gpa(f.child, DATA_GPA + g * GM_PAGE, 1, id, 0), 0);
		fill_read_range(&f, vp, g, g + 1);
		sp = fill_stats_of(f.gm.mmu);
		ck_assert_msg(sp.fills == 0 && sp.privatizations > 0, "the parent must not fill a "
			      "gfn the child maps elsewhere: %llu fills, %llu privatizations",
			      (unsigned long long)sp.fills, (unsigned long long)sp.privatizations);
		ck_assert_uint_eq(read_u64(vc, va, NULL), 0x1000 + other);
	}
	/* Each VM keeps its own view. */
	ck_assert_uint_eq(read_u64(vp, va, NULL), 0x1000 + g);
	fill_read_range(&f, vp, 0, g);
	fill_read_range(&f, vc, 0, g);
	fam_check_and_fini(&f, vp, vc);
	if (elsewhere.host)
		hobj_fini(&elsewhere);
}
END_TEST

/* ---- local zaps (copy-on-write break, P2M redirect) with many sharers ---- */

#define HERD_MAX 70
#define VA_FAR (VA_BASE + (2ull << 20)) /* same PD as VA_BASE, another leaf table */
#define HERD_DATA_MAPPED 128		/* data pages mapped at DATA_GPA */
#define NEW_PAGE 130			/* map_gpa's redirect targets: NEW_PAGE + k for
					 * clone k, pages no gfn maps */

/* A parent VM and up to HERD_MAX clones, each with a vCPU (no TLB: every
 * access walks the shadow tables). */
struct herd {
	struct shadow_pool *pool;
	struct gm gm;
	struct hobj data, own;
	struct sh_owns owns;
	struct shadow_mmu *mmu[HERD_MAX + 1]; /* [0]: the parent */
	struct shadow_vcpu *v[HERD_MAX + 1];
	int data_id, n;
	uint64_t cr3;
};

static void herd_init(struct herd *h)
{
	struct shadow_slot s;
	int id;

	memset(h, 0, sizeof(*h));
	ck_assert_int_eq(shadow_pool_create(2048, &h->pool), 0);
	gm_init_full(&h->gm, 1024, h->pool, 0, 0, NULL, NULL, NULL);
	h->mmu[0] = h->gm.mmu;
	hobj_init(&h->data, "data", 256, false);
	for (uint64_t p = 0; p < 256; p++)
		*(uint64_t *)(h->data.host + p * GM_PAGE) = 0x1000 + p;
	s = hobj_slot(&h->data, DATA_MPA);
	ck_assert_int_eq(shadow_mmu_add_slot(h->mmu[0], &s, &h->data_id), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(h->mmu[0], DATA_GPA, HERD_DATA_MAPPED, h->data_id, 0), 0);
	hobj_init(&h->own, "own0", 1024, false);
	s = hobj_slot(&h->own, SH_COW_MPA(0));
	ck_assert_int_eq(shadow_mmu_add_slot(h->mmu[0], &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(h->mmu[0], id), 0);
	h->cr3 = gm_table(&h->gm);
}

/* The parent's vCPU reads @va .. @va + @n pages, then @nclones clones are
 * made, clone k of VM (k - 1) / 2 (a binary tree: each clone adds a slot to
 * its parent, SHADOW_MAX_SLOTS bounds one VM's); each writes @wva
 * (privatizing the tables on its path). */
static void herd_populate(struct herd *h, uint64_t va, uint64_t n, int nclones, uint64_t wva)
{
	h->v[0] = sh_vcpu(h->mmu[0], 0, h->cr3);
	for (uint64_t i = 0; i < n; i++)
		read_u64(h->v[0], va + i * GM_PAGE, NULL);
	read_u64(h->v[0], wva, NULL);
	for (int k = 1; k <= nclones; k++) {
		sh_clone(&h->owns, 1024, h->mmu[(k - 1) / 2], &h->mmu[k]);
		h->v[k] = sh_vcpu(h->mmu[k], 0, h->cr3);
		write_u64(h->v[k], wva, 0xc000 + k);
	}
	h->n = nclones;
}

static void herd_fini(struct herd *h)
{
	assert_pool_check(h->pool);
	for (int k = h->n; k >= 0; k--) {
		assert_mmu_check(h->mmu[k]);
		shadow_vcpu_destroy(h->v[k]);
		shadow_mmu_destroy(h->mmu[k]);
	}
	ck_assert_uint_eq(shadow_pool_pages_in_use(h->pool, 0), 0);
	notifier_object_destroy(h->gm.ram);
	munmap(h->gm.host, h->gm.npages * GM_PAGE);
	hobj_fini(&h->data);
	hobj_fini(&h->own);
	sh_owns_fini(&h->owns);
	shadow_pool_destroy(h->pool);
}

/* A local zap of guest page @gpa for one VM, and what its guest reads there
 * afterwards (the first read of @gpa was DATA's original value). */
struct local_zap_op {
	const char *name;
	uint64_t (*run)(struct herd *h, int k, uint64_t gpa);
};

static uint64_t op_cow_break(struct herd *h, int k, uint64_t gpa)
{
	/* The VMM writes guest memory for the guest: copy on write first. */
	vm_write(h->mmu[k], gpa, 0xdead0000ull + k);
	return 0xdead0000ull + k;
}

static uint64_t op_map_gpa(struct herd *h, int k, uint64_t gpa)
{
	ck_assert_int_eq(shadow_mmu_map_gpa(h->mmu[k], gpa, 1, h->data_id, NEW_PAGE + k), 0);
	return 0x1000 + NEW_PAGE + (uint64_t)k;
}

/* Which operation, and in which order the clones run it (each run shortens
 * the reverse map and the users lists: the clones furthest down them must
 * go while the lists are still long; which end that is, is the lists'
 * business, so both orders). */
static const struct local_zap_case {
	struct local_zap_op op;
	bool oldest_first;
} local_zap_cases[] = {
	{ { "cow_break", op_cow_break }, false },
	{ { "cow_break", op_cow_break }, true },
	{ { "map_gpa", op_map_gpa }, false },
	{ { "map_gpa", op_map_gpa }, true },
};

#define NR_LOCAL_ZAP_CASES ((int)(sizeof(local_zap_cases) / sizeof(local_zap_cases[0])))

/* With @leaves leaves of data page 5 in the pool, every clone zaps page 5
 * at @va locally: its guest must see the change, and every other VM the
 * original page. */
static void assert_local_zap_reaches_every_clone(struct herd *h, const struct local_zap_case *c,
						 uint64_t va, size_t leaves)
{
	const uint64_t gpa = DATA_GPA + 5 * GM_PAGE;
	size_t got_leaves = shadow_mmu_rmap_count(h->mmu[0], h->data_id, 5);

	ck_assert_msg(got_leaves == leaves, "expected %zu leaves of page 5, got %zu", leaves,
		      got_leaves);

	for (int n = 0; n < h->n; n++) {
		int k = c->oldest_first ? n + 1 : h->n - n;

		ck_assert_uint_eq(read_u64(h->v[k], va, NULL), 0x1005);
		uint64_t want = c->op.run(h, k, gpa), got = read_u64(h->v[k], va, NULL);

		ck_assert_msg(got == want,
			      "%s (%s first): clone %d of %d reads %#llx after it, expected %#llx (a "
			      "stale mapping of the old page)", c->op.name,
			      c->oldest_first ? "oldest" : "newest", k, h->n, (unsigned long long)got,
			      (unsigned long long)want);
	}
	ck_assert_uint_eq(read_u64(h->v[0], va, NULL), 0x1005);
	ck_assert_uint_eq(*(uint64_t *)(h->data.host + 5 * GM_PAGE), 0x1005);
}

/* _i: local_zap_cases.  70 clones each privatize the leaf table (a write to
 * page 10 of the same table): 71 leaves of data page 5 in the pool. */
START_TEST(test_local_zap_reaches_every_clone_beyond_64_leaves)
{
	struct herd h;

	herd_init(&h);
	for (uint64_t i = 0; i < 16; i++)
		gm_map(&h.gm, h.cr3, VA_BASE + i * GM_PAGE, DATA_GPA + i * GM_PAGE, 1, UW);
	herd_populate(&h, VA_BASE, 16, 70, VA_BASE + 10 * GM_PAGE);
	assert_local_zap_reaches_every_clone(&h, &local_zap_cases[_i], VA_BASE + 5 * GM_PAGE, 71);
	herd_fini(&h);
}
END_TEST

/* _i: local_zap_cases.  40 clones each privatize root, PDPT and PD (a write
 * in another leaf table of the same PD): the leaf table of VA_BASE stays
 * shared, with 41 users. */
START_TEST(test_local_zap_reaches_every_user_of_a_table_with_40_users)
{
	struct herd h;

	herd_init(&h);
	for (uint64_t i = 0; i < 8; i++) {
		gm_map(&h.gm, h.cr3, VA_BASE + i * GM_PAGE, DATA_GPA + i * GM_PAGE, 1, UW);
		gm_map(&h.gm, h.cr3, VA_FAR + i * GM_PAGE, DATA_GPA + (100 + i) * GM_PAGE, 1, UW);
	}
	herd_populate(&h, VA_BASE, 8, 40, VA_FAR);
	/* One leaf of page 5, in the shared table. */
	assert_local_zap_reaches_every_clone(&h, &local_zap_cases[_i], VA_BASE + 5 * GM_PAGE, 1);
	herd_fini(&h);
}
END_TEST

/* ---- shared segments: canonical tables ---------------------------------- */

#define SEG_GPA 0x200000ull	/* 2 MiB-aligned, in every VM */
#define SEG_VA 0x40000000ull
#define NVM 3

struct segvms {
	struct shadow_pool *pool;
	struct gm gm[NVM];
	struct hobj seg;
	uint64_t cr3[NVM];
	struct shadow_vcpu *v[NVM];
};

static void segvms_init(struct segvms *s)
{
	ck_assert_int_eq(shadow_pool_create(512, &s->pool), 0);
	hobj_init(&s->seg, "segment", 1024, true);
	for (uint64_t p = 0; p < 1024; p++)
		*(uint64_t *)(s->seg.host + p * GM_PAGE) = 0x5e00000 + p;
	for (int k = 0; k < NVM; k++) {
		struct shadow_slot sl = hobj_slot(&s->seg, SH_SEG_MPA);
		int id;

		gm_init_full(&s->gm[k], 1024, s->pool, 0, 0, NULL, NULL, NULL);
		ck_assert_int_eq(shadow_mmu_add_segment(s->gm[k].mmu, &sl, &id), 0);
		ck_assert_int_eq(shadow_mmu_map_gpa(s->gm[k].mmu, SEG_GPA, 512, id, 0), 0);
		s->cr3[k] = gm_table(&s->gm[k]);
		/* One guest 2 MiB page over the whole run, dirty (writable). */
		gm_map(&s->gm[k], s->cr3[k], SEG_VA, SEG_GPA, 2, UW | SPTE_DIRTY);
		s->v[k] = sh_vcpu(s->gm[k].mmu, 64, s->cr3[k]);
	}
}

static void segvms_fini(struct segvms *s)
{
	assert_pool_check(s->pool);
	for (int k = 0; k < NVM; k++) {
		assert_mmu_check(s->gm[k].mmu);
		shadow_vcpu_destroy(s->v[k]);
		shadow_mmu_destroy(s->gm[k].mmu);
		s->gm[k].mmu = NULL;
		assert_pool_check(s->pool);
	}
	ck_assert_uint_eq(shadow_pool_pages_in_use(s->pool, 0), 0);
	for (int k = 0; k < NVM; k++) {
		notifier_object_destroy(s->gm[k].ram);
		munmap(s->gm[k].host, s->gm[k].npages * GM_PAGE);
	}
	hobj_fini(&s->seg);
	shadow_pool_destroy(s->pool);
}

START_TEST(test_segment_run_uses_one_canonical_table_for_every_vm)
{
	struct shadow_vcpu_result res;
	struct segvms s;

	ck_assert_int_eq(notifier_thread_init(), 0);
	segvms_init(&s);
	for (int k = 0; k < NVM; k++)
		for (uint64_t p = 0; p < 16; p++)
			ck_assert_uint_eq(read_u64(s.v[k], SEG_VA + p * GM_PAGE, NULL), 0x5e00000 + p);
	ck_assert_msg(shadow_pool_pages_in_use(s.pool, 1) == 1,
		      "expected one leaf table (canonical) for %d VMs, got %zu", NVM,
		      shadow_pool_pages_in_use(s.pool, 1));
	ck_assert_uint_eq(shadow_pool_shared_pages(s.pool), 1);
	assert_pool_check(s.pool);
	/* Each VM reaches its own root, PDPT and PD and the one canonical PT:
	 * unshared the VMs would need NVM * 4 tables, shared NVM * 3 + 1. */
	uint64_t unshared = 0;
	for (int k = 0; k < NVM; k++) {
		struct shadow_table_usage u;

		ck_assert_int_eq(shadow_mmu_table_usage(s.gm[k].mmu, &u), 0);
		ck_assert_msg(u.shared == 1 && u.by_level[1] == 1 && u.private_ == u.tables - 1,
			      "VM %d: expected 1 shared leaf table, got %llu shared of %llu (%llu leaf tables)", k,
			      (unsigned long long)u.shared, (unsigned long long)u.tables,
			      (unsigned long long)u.by_level[1]);
		unshared += u.tables;
	}
	size_t in_use = shadow_pool_pages_in_use(s.pool, 0);
	ck_assert_msg(in_use + (NVM - 1) == unshared, "expected %llu pool pages (unshared %llu less %d), got %zu",
		      (unsigned long long)(unshared - (NVM - 1)), (unsigned long long)unshared, NVM - 1, in_use);
	/* Eviction of a segment page reaches every VM's vCPU. */
	for (int k = 0; k < NVM; k++) {
		read_u64(s.v[k], SEG_VA + 7 * GM_PAGE, NULL);
		ck_assert_int_eq(shadow_vcpu_access(s.v[k], SEG_VA + 7 * GM_PAGE, SHADOW_ACCESS_USER, &res), 0);
		ck_assert(res.tlb_hit);
	}
	ck_assert_int_eq(shadow_store_evict(s.seg.store, 7), 0);
	for (int k = 0; k < NVM; k++)
		ck_assert_msg(shadow_vcpu_access(s.v[k], SEG_VA + 7 * GM_PAGE, SHADOW_ACCESS_USER, &res) ==
				      -EFAULT,
			      "VM %d still reaches the evicted segment page", k);
	for (int k = 0; k < NVM; k++)
		ck_assert_uint_eq(read_u64(s.v[k], SEG_VA + 7 * GM_PAGE, NULL), 0x5e00007);
	/* VM 2 maps the run read-only: it leaves the canonical table; the
	 * others' table is not altered. */
	uint64_t *canon = NULL, snap[SPTE_ENTRIES];

	for (uint32_t i = 0; i < s.pool->nr_pages; i++)
		if (s.pool->pages[i].level == 1)
			canon = pool_entries(s.pool, i);
	memcpy(snap, canon, sizeof(snap));
	gm_map(&s.gm[2], s.cr3[2], SEG_VA, SEG_GPA, 2, SPTE_USER | SPTE_DIRTY);
	shadow_vcpu_invlpg(s.v[2], SEG_VA);
	ck_assert_uint_eq(read_u64(s.v[2], SEG_VA, NULL), 0x5e00000);
	ck_assert_int_eq(shadow_vcpu_access(s.v[2], SEG_VA, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res),
			 -EFAULT);
	ck_assert_msg(memcmp(snap, canon, sizeof(snap)) == 0, "the canonical table was altered");
	ck_assert_uint_eq(read_u64(s.v[0], SEG_VA + 3 * GM_PAGE, NULL), 0x5e00003);
	write_u64(s.v[1], SEG_VA + 3 * GM_PAGE, 0x77);
	ck_assert_uint_eq(read_u64(s.v[2], SEG_VA + 3 * GM_PAGE, NULL), 0x77);
	segvms_fini(&s);
}
END_TEST

/*
 * A VM that uses a segment (so its MMU shares canonical tables) and runs
 * two address spaces over one guest kernel half: the second root links the
 * first one's shadow of it (table_hash.c).  Writing through the link must
 * not take W from the leaves the first root's vCPU writes through: on KVM
 * those include its pinned stack, and a stack push that faults is a double
 * fault, then a triple fault.
 */
START_TEST(test_a_second_root_linking_a_vm_table_keeps_the_first_roots_leaves_writable)
{
	struct shadow_mmu_stats before, after;
	struct segvms s;

	ck_assert_int_eq(notifier_thread_init(), 0);
	segvms_init(&s);
	struct gm *gm = &s.gm[0];
	const uint64_t va = GM_DATA, y = gm_table(gm);
	/* No TLB: every access walks the shadow, as a CPU's would once the
	 * entry left its TLB. */
	struct shadow_vcpu *vx = sh_vcpu(gm->mmu, 0, s.cr3[0]);

	ck_assert_uint_eq(read_u64(vx, SEG_VA, NULL), 0x5e00000); /* a canonical table */
	gm_map(gm, s.cr3[0], va, GM_DATA, 1, UW | SPTE_DIRTY);
	gm_map(gm, s.cr3[0], va + GM_PAGE, GM_DATA + GM_PAGE, 1, UW | SPTE_DIRTY);
	gm_write(gm, y, gm_read(gm, s.cr3[0])); /* PML4 entry 0: the same kernel half */
	write_u64(vx, va, 1);
	struct shadow_vcpu *vy = sh_vcpu(gm->mmu, 0, y);
	/* Links the shadow of the kernel half, for a write to the page next
	 * to the one vx wrote (its leaf in the same table). */
	write_u64(vy, va + GM_PAGE, 2);
	shadow_mmu_stats(gm->mmu, &before);
	write_u64(vx, va + 16, 3);
	shadow_mmu_stats(gm->mmu, &after);
	ck_assert_msg(after.faults == before.faults,
		      "the first root's writable leaf: expected no fault on a write through it, got %llu",
		      (unsigned long long)(after.faults - before.faults));
	ck_assert_msg(after.tables_reused >= 1, "expected the second root to link the kernel half, got %llu links",
		      (unsigned long long)after.tables_reused);
	ck_assert_uint_eq(read_u64(vy, va + 16, NULL), 3);
	shadow_vcpu_destroy(vy);
	shadow_vcpu_destroy(vx);
	segvms_fini(&s);
}
END_TEST

/* Each VM reads pages 0..15 of the segment's first run (one canonical
 * table); then one range invalidation of [first, last] reaches all NVM VMs.
 * The first callback clears the leaves; the others find the pages' mapped
 * bits clear: every VM's non-local zaps together visit each mapped page of
 * the range once (rmap_scans), whatever NVM is. */
static const struct {
	uint64_t first, last;
	uint64_t scans;	/* pages of 0..15 in [first, last] */
} scan_cases[] = {
	{ 0, 1023, 16 },	/* the whole segment: run 1 never used */
	{ 8, 1023, 8 },		/* the end of the mapped pages */
	{ 0, 7, 8 },		/* the start */
	{ 16, 1023, 0 },	/* nothing mapped there */
	{ 5, 5, 1 },		/* one page */
};

START_TEST(test_range_invalidation_of_a_shared_segment_visits_each_mapped_page_once)
{
	const uint64_t first = scan_cases[_i].first, last = scan_cases[_i].last;
	struct notifier_range range;
	struct segvms s;
	uint64_t scans = 0, zapped = 0;

	ck_assert_int_eq(notifier_thread_init(), 0);
	segvms_init(&s);
	for (int k = 0; k < NVM; k++)
		for (uint64_t p = 0; p < 16; p++)
			ck_assert_uint_eq(read_u64(s.v[k], SEG_VA + p * GM_PAGE, NULL), 0x5e00000 + p);
	for (int k = 0; k < NVM; k++) {
		struct shadow_mmu_stats st;

		shadow_mmu_stats(s.gm[k].mmu, &st);
		scans -= st.rmap_scans;
		zapped -= st.zapped;
	}
	notifier_range_init(&range, s.seg.obj, NOTIFIER_EVENT_SWAPOUT, first, last,
			    NOTIFIER_RANGE_MAY_BLOCK);
	ck_assert_int_eq(notifier_invalidate_range_start(&range), 0);
	notifier_invalidate_range_end(&range);
	for (int k = 0; k < NVM; k++) {
		struct shadow_mmu_stats st;

		shadow_mmu_stats(s.gm[k].mmu, &st);
		scans += st.rmap_scans;
		zapped += st.zapped;
	}
	ck_assert_msg(scans == scan_cases[_i].scans,
		      "[%llu, %llu] over %d VMs: expected %llu reverse maps visited, got %llu",
		      (unsigned long long)first, (unsigned long long)last, NVM,
		      (unsigned long long)scan_cases[_i].scans, (unsigned long long)scans);
	ck_assert_msg(zapped == scan_cases[_i].scans, "expected %llu leaves cleared, got %llu",
		      (unsigned long long)scan_cases[_i].scans, (unsigned long long)zapped);
	assert_pool_check(s.pool);
	/* Every VM lost exactly the pages of the range. */
	for (int k = 0; k < NVM; k++) {
		for (uint64_t p = 0; p < 16; p++) {
			struct shadow_vcpu_result res;
			int ret = shadow_vcpu_access(s.v[k], SEG_VA + p * GM_PAGE, SHADOW_ACCESS_USER, &res);
			int want = p >= first && p <= last ? -EFAULT : 0;

			ck_assert_msg(ret == want, "VM %d, page %llu: expected access %d, got %d", k,
				      (unsigned long long)p, want, ret);
		}
	}
	segvms_fini(&s);
}
END_TEST

/* _i: 0 = the read-only VM maps the run first, 1 = the writable one does. */
START_TEST(test_readonly_and_writable_attachments_of_a_segment_never_share_a_leaf_table)
{
	struct shadow_vcpu_result res;
	struct shadow_pool *pool;
	struct gm gm[2];
	struct shadow_vcpu *v[2];
	struct hobj seg;
	const int ro = 0, rw = 1;

	ck_assert_int_eq(notifier_thread_init(), 0);
	ck_assert_int_eq(shadow_pool_create(512, &pool), 0);
	hobj_init(&seg, "segment", 512, false);
	for (uint64_t p = 0; p < 512; p++)
		*(uint64_t *)(seg.host + p * GM_PAGE) = 0x5e00000 + p;
	for (int k = 0; k < 2; k++) {
		struct shadow_slot sl = hobj_slot(&seg, SH_SEG_MPA);
		int id;

		sl.readonly = k == ro;
		gm_init_full(&gm[k], 1024, pool, 0, 0, NULL, NULL, NULL);
		ck_assert_int_eq(shadow_mmu_add_segment(gm[k].mmu, &sl, &id), 0);
		ck_assert_int_eq(shadow_mmu_map_gpa(gm[k].mmu, SEG_GPA, 512, id, 0), 0);
		uint64_t cr3 = gm_table(&gm[k]);

		/* Both guests map the run writable and dirty. */
		gm_map(&gm[k], cr3, SEG_VA, SEG_GPA, 2, UW | SPTE_DIRTY);
		v[k] = sh_vcpu(gm[k].mmu, 0, cr3);
	}
	int first = _i ? rw : ro, second = _i ? ro : rw;

	ck_assert_uint_eq(read_u64(v[first], SEG_VA + 3 * GM_PAGE, NULL), 0x5e00003);
	ck_assert_uint_eq(read_u64(v[second], SEG_VA + 3 * GM_PAGE, NULL), 0x5e00003);
	write_u64(v[rw], SEG_VA + 4 * GM_PAGE, 0x77);
	ck_assert_uint_eq(read_u64(v[ro], SEG_VA + 4 * GM_PAGE, NULL), 0x77);
	int ret = shadow_vcpu_access(v[ro], SEG_VA + 4 * GM_PAGE,
				     SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res);

	ck_assert_msg(ret == -EFAULT, "the read-only VM can write the segment through the "
		      "writable VM's leaf: expected -EFAULT, got %d", ret);
	ck_assert_int_eq(shadow_vcpu_access_fault_in(v[ro], SEG_VA + 4 * GM_PAGE,
						     SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res),
			 -EACCES);
	ck_assert_msg(shadow_pool_pages_in_use(pool, 1) == 2,
		      "expected one leaf table per writability, got %zu",
		      shadow_pool_pages_in_use(pool, 1));
	assert_pool_check(pool);
	for (int k = 0; k < 2; k++) {
		assert_mmu_check(gm[k].mmu);
		shadow_vcpu_destroy(v[k]);
		shadow_mmu_destroy(gm[k].mmu);
		notifier_object_destroy(gm[k].ram);
		munmap(gm[k].host, gm[k].npages * GM_PAGE);
	}
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 0), 0);
	hobj_fini(&seg);
	shadow_pool_destroy(pool);
}
END_TEST

/* ---- shared segments: a canonical level-2 table per GiB ------------------ */

#define GIB_PAGES 262144ull		/* a GiB of 4 KiB pages */
#define GIB_RUNS 512u
#define GIB_SEG_GPA (1ull << 30)	/* 1 GiB-aligned, in every VM */
#define GIB_VA (1ull << 39)		/* 1 GiB-aligned: PML4 index 1 */
#define GIB_RAM_PAGES (2 * GIB_PAGES)	/* RAM up to 2 GiB; the segment over its second GiB */
#define GIB_RAM_GPA 0x200000ull		/* a 2 MiB page of RAM, stamped */
#define GIB_SEG_MPA (8ull << 30)	/* above the 2 GiB of RAM at machine address 0 */

/* How a guest maps the GiB of the segment. */
enum gib_map {
	GIB_PD_ACCESSED,	/* a page directory of 2 MiB pages, A set */
	GIB_PD_FRESH,		/* the same, A clear: set as each run is first touched */
	GIB_PAGE,		/* one 1 GiB page */
	GIB_PD_CLEAN,		/* 2 MiB pages, A set, D clear: mapped read-only */
};

/* The page of run @r that the tests read, and its stamp. */
static uint64_t gib_page(unsigned int r)
{
	return (uint64_t)r * SPTE_ENTRIES + r % SPTE_ENTRIES;
}

static uint64_t gib_stamp(uint64_t page)
{
	return 0x9e00000000ull + page;
}

static void gibvms_init(struct segvms *s, enum gib_map how)
{
	const uint64_t d = how == GIB_PD_CLEAN ? 0 : SPTE_DIRTY;
	const uint64_t a = how == GIB_PD_FRESH ? 0 : SPTE_ACCESSED;

	ck_assert_int_eq(notifier_thread_init(), 0);
	ck_assert_int_eq(shadow_pool_create(2048, &s->pool), 0);
	hobj_init(&s->seg, "segment", GIB_PAGES, true);
	for (unsigned int r = 0; r < GIB_RUNS; r++)
		*(uint64_t *)(s->seg.host + gib_page(r) * GM_PAGE) = gib_stamp(gib_page(r));
	for (int k = 0; k < NVM; k++) {
		struct shadow_slot sl = hobj_slot(&s->seg, GIB_SEG_MPA);
		int id;

		gm_init_full(&s->gm[k], GIB_RAM_PAGES, s->pool, 0, 0, NULL, NULL, NULL);
		ck_assert_int_eq(shadow_mmu_add_segment(s->gm[k].mmu, &sl, &id), 0);
		ck_assert_int_eq(shadow_mmu_map_gpa(s->gm[k].mmu, GIB_SEG_GPA, GIB_PAGES, id, 0), 0);
		*gm_ptr(&s->gm[k], GIB_RAM_GPA) = 0x7a0000 + (uint64_t)k;
		s->cr3[k] = gm_table(&s->gm[k]);
		if (how == GIB_PAGE) {
			gm_map(&s->gm[k], s->cr3[k], GIB_VA, GIB_SEG_GPA, 3, UW | a | d);
		} else {
			for (unsigned int r = 0; r < GIB_RUNS; r++)
				gm_map(&s->gm[k], s->cr3[k], GIB_VA + r * SPTE_LEVEL_SIZE(2),
				       GIB_SEG_GPA + r * SPTE_LEVEL_SIZE(2), 2, UW | a | d);
		}
		s->v[k] = sh_vcpu(s->gm[k].mmu, 64, s->cr3[k]);
	}
}

/* VM @k reads the test page of every run: the segment's stamp. */
static void gib_read_all(struct segvms *s, int k)
{
	for (unsigned int r = 0; r < GIB_RUNS; r++) {
		uint64_t got = read_u64(s->v[k], GIB_VA + gib_page(r) * GM_PAGE, NULL);

		ck_assert_msg(got == gib_stamp(gib_page(r)), "VM %d, run %u: expected %#llx, got %#llx", k,
			      r, (unsigned long long)gib_stamp(gib_page(r)), (unsigned long long)got);
	}
}

/* Pool pages of @level in use: expected @want. */
static void assert_level_pages(struct shadow_pool *pool, int level, size_t want, const char *what)
{
	size_t got = shadow_pool_pages_in_use(pool, level);

	ck_assert_msg(got == want, "%s: expected %zu table pages at level %d, got %zu", what, want,
		      level, got);
}

/* _i: how the guests map the GiB (enum gib_map).  Every VM reads a page of
 * every run: the VMs share one level-2 table and its 512 leaf tables, and
 * each has only its root and level-3 table of its own: 2N + 513 pages.
 * Guests whose directory entries had A clear first shadow the directory on
 * their own and exchange it for the shared one once every entry is in use. */
START_TEST(test_vms_mapping_a_gib_of_a_segment_share_its_page_directory)
{
	const enum gib_map how = (enum gib_map)_i;
	struct segvms s;

	gibvms_init(&s, how);
	for (int k = 0; k < NVM; k++)
		gib_read_all(&s, k);
	assert_level_pages(s.pool, 2, 1, "every VM's directory");
	assert_level_pages(s.pool, 1, GIB_RUNS, "the leaf tables");
	assert_level_pages(s.pool, 0, 2 * NVM + 1 + GIB_RUNS, "all tables (2N + 513)");
	for (int k = 0; k < NVM; k++) {
		struct shadow_table_usage u;
		struct shadow_mmu_stats st;

		ck_assert_int_eq(shadow_mmu_table_usage(s.gm[k].mmu, &u), 0);
		ck_assert_msg(u.shared == 1 + GIB_RUNS && u.private_ == 2 && u.by_level[2] == 1,
			      "VM %d: expected 513 shared tables and 2 of its own, got %llu and %llu", k,
			      (unsigned long long)u.shared, (unsigned long long)u.private_);
		shadow_mmu_stats(s.gm[k].mmu, &st);
		ck_assert_msg(st.canon_exchanged == (how == GIB_PD_FRESH),
			      "VM %d: expected %d directories exchanged, got %llu", k, how == GIB_PD_FRESH,
			      (unsigned long long)st.canon_exchanged);
	}
	assert_pool_check(s.pool);
	/* An eviction reaches every VM through the shared directory. */
	const uint64_t page = gib_page(300), va = GIB_VA + page * GM_PAGE;
	struct shadow_vcpu_result res;

	ck_assert_int_eq(shadow_store_evict(s.seg.store, page), 0);
	for (int k = 0; k < NVM; k++)
		ck_assert_msg(shadow_vcpu_access(s.v[k], va, SHADOW_ACCESS_USER, &res) == -EFAULT,
			      "VM %d still reaches the evicted page", k);
	for (int k = 0; k < NVM; k++)
		ck_assert_uint_eq(read_u64(s.v[k], va, NULL), gib_stamp(page));
	segvms_fini(&s);
}
END_TEST

/* A VM whose guest directory stops mapping the GiB in order (one entry now
 * maps a 2 MiB page of its RAM) and invalidates the address leaves the
 * shared directory: it reads its RAM there, the others still read the
 * segment, and the shared tables are not altered. */
START_TEST(test_a_vm_whose_directory_changes_leaves_the_shared_directory)
{
	const unsigned int r = 5;
	const uint64_t va = GIB_VA + r * SPTE_LEVEL_SIZE(2);
	uint64_t *canon = NULL, snap[SPTE_ENTRIES];
	struct segvms s;

	gibvms_init(&s, GIB_PD_ACCESSED);
	for (int k = 0; k < NVM; k++)
		gib_read_all(&s, k);
	for (uint32_t i = 0; i < s.pool->nr_pages; i++)
		if (s.pool->pages[i].level == 2)
			canon = pool_entries(s.pool, i);
	memcpy(snap, canon, sizeof(snap));
	gm_map(&s.gm[1], s.cr3[1], va, GIB_RAM_GPA, 2, UW | SPTE_ACCESSED | SPTE_DIRTY);
	shadow_vcpu_invlpg(s.v[1], va);
	ck_assert_uint_eq(read_u64(s.v[1], va, NULL), 0x7a0001);
	for (int k = 0; k < NVM; k += 2)
		ck_assert_uint_eq(read_u64(s.v[k], va + gib_page(r) % SPTE_ENTRIES * GM_PAGE, NULL),
				  gib_stamp(gib_page(r)));
	ck_assert_msg(memcmp(snap, canon, sizeof(snap)) == 0, "the shared directory was altered");
	assert_level_pages(s.pool, 2, 2, "the shared directory and VM 1's own");
	/* VM 1 maps the run in order again: after the invalidation it shares
	 * the leaf table of the run, under a directory of its own. */
	gm_map(&s.gm[1], s.cr3[1], va, GIB_SEG_GPA + r * SPTE_LEVEL_SIZE(2), 2,
	       UW | SPTE_ACCESSED | SPTE_DIRTY);
	shadow_vcpu_invlpg(s.v[1], va);
	gib_read_all(&s, 1);
	assert_level_pages(s.pool, 1, GIB_RUNS, "the leaf tables");
	segvms_fini(&s);
}
END_TEST

/* The guests map the GiB clean (D clear): the shared directory maps it
 * read-only.  A write by VM 0 sets D in one entry of its directory: VM 0
 * leaves the shared directory and writes; the others still cannot write
 * through theirs, and read what VM 0 wrote. */
START_TEST(test_a_write_under_a_clean_directory_leaves_the_shared_directory)
{
	const uint64_t page = gib_page(9), va = GIB_VA + page * GM_PAGE;
	struct shadow_vcpu_result res;
	struct segvms s;

	gibvms_init(&s, GIB_PD_CLEAN);
	for (int k = 0; k < NVM; k++)
		gib_read_all(&s, k);
	assert_level_pages(s.pool, 2, 1, "every VM's directory");
	write_u64(s.v[0], va, 0x5151);
	ck_assert_msg(*gm_ptr(&s.gm[0], gm_entry(&s.gm[0], s.cr3[0], va, 2)) & SPTE_DIRTY,
		      "the write did not set D in VM 0's directory entry");
	assert_level_pages(s.pool, 2, 2, "the shared directory and VM 0's own");
	for (int k = 1; k < NVM; k++) {
		ck_assert_int_eq(shadow_vcpu_access(s.v[k], va, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &res),
				 -EFAULT);
		ck_assert_uint_eq(read_u64(s.v[k], va, NULL), 0x5151);
	}
	segvms_fini(&s);
}
END_TEST

/* A VM whose P2M maps only part of the GiB to the segment (its RAM from
 * the run @_i on) shadows the directory on its own, whatever the others
 * share: through a shared directory it would reach segment pages its P2M
 * does not map.  After the others linked the shared directory's entry for a
 * run, that VM's P2M changes there: its next fault there leaves the shared
 * directory (its own copy), and it reads its RAM. */
START_TEST(test_a_vm_whose_p2m_maps_part_of_the_gib_does_not_share_the_directory)
{
	const unsigned int r = 40;
	const uint64_t va = GIB_VA + r * SPTE_LEVEL_SIZE(2);
	struct segvms s;

	gibvms_init(&s, GIB_PD_ACCESSED);
	if (_i == 0) {
		/* Before any fault: VM 2's run r maps RAM. */
		ck_assert_int_eq(shadow_mmu_map_gpa(s.gm[2].mmu, GIB_SEG_GPA + r * SPTE_LEVEL_SIZE(2),
						    SPTE_ENTRIES, s.gm[2].slot, GIB_RAM_GPA / GM_PAGE), 0);
		for (int k = 0; k < 2; k++)
			gib_read_all(&s, k);
		ck_assert_uint_eq(read_u64(s.v[2], va, NULL), 0x7a0002);
		assert_level_pages(s.pool, 2, 2, "the shared directory and VM 2's own");
	} else {
		/* VMs 0 and 2 share the directory, then VM 2's P2M changes
		 * for run r, which no VM has mapped yet; then VM 0 links run
		 * r's table. */
		read_u64(s.v[0], GIB_VA, NULL);
		read_u64(s.v[2], GIB_VA, NULL);
		assert_level_pages(s.pool, 2, 1, "the shared directory");
		ck_assert_int_eq(shadow_mmu_map_gpa(s.gm[2].mmu, GIB_SEG_GPA + r * SPTE_LEVEL_SIZE(2),
						    SPTE_ENTRIES, s.gm[2].slot, GIB_RAM_GPA / GM_PAGE), 0);
		ck_assert_uint_eq(read_u64(s.v[2], va, NULL), 0x7a0002);
		assert_level_pages(s.pool, 2, 2, "the shared directory and VM 2's copy");
		gib_read_all(&s, 0);
		ck_assert_uint_eq(read_u64(s.v[2], va, NULL), 0x7a0002);
	}
	segvms_fini(&s);
}
END_TEST

/* ---- teardown races: swapout vs teardown, teardown vs teardown ----------- */

/*
 * VMs that share tables (clones sharing everything below their roots; VMs
 * sharing the canonical leaf tables of a segment's runs; or both) leave at
 * once, one thread each behind a common start gate: they destroy
 * themselves, or drop every table below their roots (zap_all) and come
 * back.  Meanwhile, in the swapout races, a swapper clears the leaves of
 * the shared pages in those very tables (store eviction, or a non-local
 * zap_range through a bystander VM that has a slot of the object and no
 * tables), and the surviving VM's vCPU keeps reading them.  After each iteration: no thread read a wrong value or
 * failed a call, the pool and every live VM pass their checks, the pages in
 * use at each level are exactly what the live VMs hold (a shared table
 * freed twice, or never, changes them), and the survivor still reads what
 * the host wrote.  The touched pages lie on RACE_PATHS paths (one per PML4
 * slot; for the segment, one 2 MiB run each), so that each leaver drops
 * RACE_PATHS shared references per level, each a chance to collide.
 */
#define RACE_MAX_VMS 4
#define RACE_PATHS 8		/* PML4 slots used: 8 shared tables put per level by each leaver */
#define RACE_PAGES 32		/* pages every vCPU touches, RACE_PAGES / RACE_PATHS per path */
#define RACE_RUN_PAGES 512	/* a 2 MiB run of the segment, one per path */
#define RACE_RAM_PAGES (SEG_GPA / GM_PAGE + RACE_PATHS * RACE_RUN_PAGES)
/* Iterations per case (UMBRA_TEARDOWN_RACE_ITERATIONS overrides both):
 * each is one chance for the leavers' puts to meet, a few ms apiece. */
#define RACE_SWAPOUT_ITERATIONS 40
#define RACE_TEARDOWN_ITERATIONS 100
#define RACE_MIN_SWAPS 16	/* the swapper's and the reader's least work per iteration */
#define RACE_MIN_READS 32
#define RACE_ZAP_PAGES 4	/* pages per zap_range */
#define RACE_REJOINS 6		/* LEAVE_ZAP_ALL: rounds of touch (rejoin) and zap_all */
#define RACE_POISON64 0xa5a5a5a5a5a5a5a5ull

/* Who shares what: VM k is a base VM (parent -1) or a clone of a VM made
 * before it. */
struct race_layout {
	const char *name;
	bool segment;		/* the shared pages: a segment's runs, else a data object */
	int nvms;
	int parent[RACE_MAX_VMS];
};

static const struct race_layout race_clone_pair = { "parent and clone", false, 2, { -1, 0 } };
static const struct race_layout race_clones = { "parent, 2 clones and a clone's clone", false, 4,
						{ -1, 0, 0, 1 } };
static const struct race_layout race_segment_pair = { "2 VMs on a segment", true, 2, { -1, -1 } };
static const struct race_layout race_segment = { "4 VMs on a segment", true, 4, { -1, -1, -1, -1 } };
static const struct race_layout race_segment_clones = { "2 VMs on a segment and a clone of each",
							true, 4, { -1, -1, 0, 1 } };

enum race_swap { SWAP_NONE, SWAP_EVICT, SWAP_ZAP_RANGE };
enum race_leave { LEAVE_DESTROY, LEAVE_ZAP_ALL };

struct race_case {
	const struct race_layout *layout;
	enum race_swap swap;
	enum race_leave leave;	/* what every VM but the survivor does */
	int survivor;		/* stays, its vCPU reading throughout; -1: none */
};

struct race;

struct race_vm {
	struct race *r;
	int k;
	struct shadow_mmu *mmu;	/* NULL once destroyed */
	struct shadow_vcpu *v;
	struct gm gm;		/* a base VM's RAM and guest tables */
	struct hobj cow;
	uint64_t cr3;
	pthread_t thr;
};

struct race {
	const struct race_case *c;
	struct shadow_pool *pool;	/* every iteration's VMs, emptied after each */
	struct hobj obj;		/* the shared pages, with a store */
	struct race_vm vm[RACE_MAX_VMS];
	struct sh_owns owns;		/* the own slots clones add */
	struct shadow_mmu *zapper;	/* SWAP_ZAP_RANGE: a slot of @obj, no tables */
	int zapper_slot;
	char what[160];			/* the case, for messages */
	unsigned int iter;
	uint64_t seed;
	struct test_gate start;		/* every racing thread passes it first */
	int leaving;			/* atomic: VMs still leaving */
	struct test_failures fails;
};

/* Touched page @p: on path p % RACE_PATHS (PML4 slot 1 + path), page
 * p / RACE_PATHS of it. */
static uint64_t race_va(uint64_t p)
{
	return ((p % RACE_PATHS + 1) << 39) + p / RACE_PATHS * GM_PAGE;
}

/* Its page in the object: the data object's page p, or that page of the
 * path's run of the segment. */
static uint64_t race_obj_page(const struct race *r, uint64_t p)
{
	if (r->c->layout->segment)
		return p % RACE_PATHS * RACE_RUN_PAGES + p / RACE_PATHS;
	return p;
}

/* What the host wrote in page @page of the object (before any eviction). */
static uint64_t race_value(const struct race *r, uint64_t page)
{
	return r->c->layout->segment ? 0x5e00000ull + page : 0x1000ull + page;
}

static struct shadow_slot race_obj_slot(struct race *r)
{
	return hobj_slot(&r->obj, r->c->layout->segment ? SH_SEG_MPA : DATA_MPA);
}

/* @nr reads by VM @vm's vCPU from page @first on (wrapping): each must
 * succeed and find the host's value (never the eviction's poison). */
static void race_touch(struct race *r, struct race_vm *vm, uint64_t first, uint64_t nr)
{
	for (uint64_t n = 0; n < nr; n++) {
		uint64_t p = (first + n) % RACE_PAGES, want = race_value(r, race_obj_page(r, p)), val = 0;
		struct shadow_vcpu_result res;
		int ret = shadow_vcpu_access64_fault_in(vm->v, race_va(p), SHADOW_ACCESS_USER, &val, &res);

		if (ret)
			test_fail(&r->fails, "%s, iteration %u: VM %d reads page %llu: expected 0, got %d",
				  r->what, r->iter, vm->k, (unsigned long long)p, ret);
		else if (val != want)
			test_fail(&r->fails, "%s, iteration %u: VM %d page %llu: expected %#llx, got %#llx%s",
				  r->what, r->iter, vm->k, (unsigned long long)p,
				  (unsigned long long)want, (unsigned long long)val,
				  val == RACE_POISON64 ? " (evicted)" : "");
	}
}

static void race_base_init(struct race *r, int k)
{
	struct race_vm *vm = &r->vm[k];
	struct shadow_slot s = race_obj_slot(r);
	int id;

	gm_init_full(&vm->gm, RACE_RAM_PAGES, r->pool, 0, 0, NULL, NULL, NULL);
	vm->mmu = vm->gm.mmu;
	if (r->c->layout->segment) {
		ck_assert_int_eq(shadow_mmu_add_segment(vm->mmu, &s, &id), 0);
		ck_assert_int_eq(shadow_mmu_map_gpa(vm->mmu, SEG_GPA, RACE_PATHS * RACE_RUN_PAGES, id,
						    0), 0);
	} else {
		ck_assert_int_eq(shadow_mmu_add_slot(vm->mmu, &s, &id), 0);
		ck_assert_int_eq(shadow_mmu_map_gpa(vm->mmu, DATA_GPA, 256, id, 0), 0);
	}
	hobj_init(&vm->cow, "own", RACE_RAM_PAGES, false);
	s = hobj_slot(&vm->cow, SH_COW_MPA(k));
	ck_assert_int_eq(shadow_mmu_add_slot(vm->mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(vm->mmu, id), 0);
	vm->cr3 = gm_table(&vm->gm);
	if (r->c->layout->segment) {
		/* One writable, dirty 2 MiB guest page over each run: every base
		 * VM takes the same canonical leaf table for it. */
		for (uint64_t path = 0; path < RACE_PATHS; path++)
			gm_map(&vm->gm, vm->cr3, race_va(path),
			       SEG_GPA + path * RACE_RUN_PAGES * GM_PAGE, 2, UW | SPTE_DIRTY);
	} else {
		for (uint64_t p = 0; p < RACE_PAGES; p++)
			gm_map(&vm->gm, vm->cr3, race_va(p), DATA_GPA + p * GM_PAGE, 1, UW);
	}
}

static void race_clone_init(struct race *r, int k, int parent)
{
	struct race_vm *vm = &r->vm[k];

	sh_clone(&r->owns, RACE_RAM_PAGES, r->vm[parent].mmu, &vm->mmu);
	vm->cr3 = r->vm[parent].cr3;
}

static void assert_race_pages_in_use(struct race *r, const size_t want[SHADOW_LEVELS + 1],
				     const char *when)
{
	for (int level = 1; level <= SHADOW_LEVELS; level++) {
		size_t got = shadow_pool_pages_in_use(r->pool, level);

		ck_assert_msg(got == want[level],
			      "%s, iteration %u, %s: level %d: expected %zu table pages in use, got %zu",
			      r->what, r->iter, when, level, want[level], got);
	}
}

static void assert_race_pool_check(struct race *r, const char *when)
{
	int ret = shadow_pool_check(r->pool);

	ck_assert_msg(ret == 0, "%s, iteration %u, %s: shadow_pool_check: expected 0, got %d", r->what,
		      r->iter, when, ret);
}

/* VM @k's vCPU reads every touched page (faulting where needed): the
 * host's values. */
static void assert_race_reads(struct race *r, int k, const char *when)
{
	for (uint64_t p = 0; p < RACE_PAGES; p++) {
		uint64_t got = read_u64(r->vm[k].v, race_va(p), NULL);
		uint64_t want = race_value(r, race_obj_page(r, p));

		ck_assert_msg(got == want, "%s, iteration %u, %s: VM %d page %llu: expected %#llx, got %#llx",
			      r->what, r->iter, when, k, (unsigned long long)p,
			      (unsigned long long)want, (unsigned long long)got);
	}
}

/* The VMs, each with a vCPU that has read every page (the clones after
 * their parent did: they read through its tables), and the sharing made. */
static void race_setup(struct race *r)
{
	const struct race_layout *l = r->c->layout;
	size_t want[SHADOW_LEVELS + 1] = { 0 };

	for (int k = 0; k < l->nvms; k++) {
		struct race_vm *vm = &r->vm[k];

		memset(vm, 0, sizeof(*vm));
		vm->r = r;
		vm->k = k;
		if (l->parent[k] < 0) {
			race_base_init(r, k);
			want[3] += RACE_PATHS;
			want[2] += RACE_PATHS;
			if (!l->segment || !want[1])
				want[1] += RACE_PATHS;
		} else {
			race_clone_init(r, k, l->parent[k]);
		}
		want[4]++;
		vm->v = sh_vcpu(vm->mmu, 16, vm->cr3);
		assert_race_reads(r, k, "before the race");
	}
	/* Roots are private; below them, one table per level and path per
	 * base VM (clones share their parent's), and one canonical leaf table
	 * per run for every VM of the segment. */
	assert_race_pages_in_use(r, want, "before the race");
	ck_assert_msg(shadow_pool_shared_pages(r->pool) > 0,
		      "%s, iteration %u: expected shared tables before the race, got none", r->what,
		      r->iter);
	r->zapper = NULL;
	if (r->c->swap == SWAP_ZAP_RANGE) {
		struct shadow_mmu_config cfg = { .pool = r->pool, .max_gpa = RACE_RAM_PAGES * GM_PAGE,
						 .mode = shadow_default_mode };
		struct shadow_slot s = race_obj_slot(r);

		ck_assert_int_eq(shadow_mmu_create(&cfg, &r->zapper), 0);
		if (l->segment)
			ck_assert_int_eq(shadow_mmu_add_segment(r->zapper, &s, &r->zapper_slot), 0);
		else
			ck_assert_int_eq(shadow_mmu_add_slot(r->zapper, &s, &r->zapper_slot), 0);
	}
}

/* A VM that leaves: touches a few pages (jitter, and faults where leaves
 * were cleared), then destroys itself; or drops every table below its root
 * (zap_all) and comes back for some of them, a few times, and at last for
 * every page: it rejoins the canonical tables while the others leave them. */
static void *race_leaver_thread(void *p)
{
	struct race_vm *vm = p;
	struct race *r = vm->r;
	uint64_t seed = r->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(vm->k + 1));
	uint64_t reach = r->c->swap == SWAP_NONE ? 2 : RACE_PAGES;

	notifier_thread_init();
	test_gate_pass(&r->start);
	if (r->c->leave == LEAVE_DESTROY) {
		race_touch(r, vm, test_rnd(&seed), test_rnd(&seed) % reach);
		shadow_vcpu_destroy(vm->v);
		vm->v = NULL;
		shadow_mmu_destroy(vm->mmu);
		vm->mmu = NULL;
	} else {
		for (int round = 0; round < RACE_REJOINS; round++) {
			race_touch(r, vm, test_rnd(&seed), test_rnd(&seed) % reach);
			shadow_mmu_zap_all(vm->mmu);
		}
		race_touch(r, vm, 0, RACE_PAGES);
	}
	__atomic_sub_fetch(&r->leaving, 1, __ATOMIC_RELEASE);
	notifier_thread_exit();
	return NULL;
}

static bool race_others_leaving(struct race *r)
{
	return __atomic_load_n(&r->leaving, __ATOMIC_ACQUIRE) > 0;
}

/* Clears leaves of the touched pages, wherever they are in the pool, until
 * every leaver is done. */
static void *race_swapper_thread(void *p)
{
	struct race *r = p;
	uint64_t seed = r->seed;

	notifier_thread_init();
	test_gate_pass(&r->start);
	for (unsigned int n = 0; n < RACE_MIN_SWAPS || race_others_leaving(r); n++) {
		uint64_t page = race_obj_page(r, test_rnd(&seed) % RACE_PAGES);

		if (r->c->swap == SWAP_EVICT) {
			int ret = shadow_store_evict(r->obj.store, page);

			if (ret && ret != -EALREADY)
				test_fail(&r->fails, "%s, iteration %u: evict page %llu: expected 0 or "
					  "-EALREADY, got %d", r->what, r->iter, (unsigned long long)page,
					  ret);
		} else {
			long ret = shadow_mmu_zap_range(r->zapper, r->zapper_slot, page,
							page + RACE_ZAP_PAGES - 1);

			if (ret < 0)
				test_fail(&r->fails, "%s, iteration %u: zap_range from page %llu: expected "
					  ">= 0, got %ld", r->what, r->iter, (unsigned long long)page, ret);
		}
	}
	notifier_thread_exit();
	return NULL;
}

/* The survivor's vCPU reads on while the others leave. */
static void *race_reader_thread(void *p)
{
	struct race_vm *vm = p;
	struct race *r = vm->r;

	notifier_thread_init();
	test_gate_pass(&r->start);
	for (unsigned int n = 0; n < RACE_MIN_READS || race_others_leaving(r); n++)
		race_touch(r, vm, n, 1);
	notifier_thread_exit();
	return NULL;
}

/* After the race: the checks, then every VM goes, and the pool is empty. */
static void race_check_and_teardown(struct race *r)
{
	const struct race_layout *l = r->c->layout;
	const int s = r->c->survivor;
	size_t want[SHADOW_LEVELS + 1] = { 0 }, live = 0;

	/* The first failure names the case and the iteration. */
	ck_assert_msg(r->fails.count == 0, "%d failures in the race; first: %s", r->fails.count,
		      r->fails.first);
	assert_race_pool_check(r, "after the race");
	for (int k = 0; k < l->nvms; k++) {
		if (!r->vm[k].mmu)
			continue;
		int ret = shadow_mmu_check(r->vm[k].mmu);

		ck_assert_msg(ret == 0, "%s, iteration %u: shadow_mmu_check(VM %d): expected 0, got %d",
			      r->what, r->iter, k, ret);
		live++;
	}
	/* Every live VM (the survivor, and those that zapped all and came
	 * back) on each path alone above the leaf tables, which the segment's
	 * VMs share: one per run. */
	want[4] = live;
	want[3] = want[2] = RACE_PATHS * live;
	want[1] = l->segment ? RACE_PATHS * (live > 0) : RACE_PATHS * live;
	assert_race_pages_in_use(r, want, "after the race");
	if (s >= 0)
		assert_race_reads(r, s, "the survivor after the race");
	for (int k = 0; k < l->nvms; k++) {
		if (k == s || !r->vm[k].mmu)
			continue;
		shadow_vcpu_destroy(r->vm[k].v);
		shadow_mmu_destroy(r->vm[k].mmu);
		r->vm[k].mmu = NULL;
	}
	for (int level = 1; level <= SHADOW_LEVELS; level++)
		want[level] = s < 0 ? 0 : level == SHADOW_LEVELS ? 1 : RACE_PATHS;
	assert_race_pages_in_use(r, want, "with the survivor alone");
	ck_assert_msg(shadow_pool_shared_pages(r->pool) == 0,
		      "%s, iteration %u: expected no table with more than one user once one VM "
		      "is left, got %zu", r->what, r->iter, shadow_pool_shared_pages(r->pool));
	assert_race_pool_check(r, "with the survivor alone");
	if (s >= 0) {
		int ret = shadow_mmu_check(r->vm[s].mmu);

		ck_assert_msg(ret == 0, "%s, iteration %u: shadow_mmu_check(survivor VM %d) "
			      "alone: expected 0, got %d", r->what, r->iter, s, ret);
		shadow_vcpu_destroy(r->vm[s].v);
		shadow_mmu_destroy(r->vm[s].mmu);
		r->vm[s].mmu = NULL;
	}
	shadow_mmu_destroy(r->zapper);
	r->zapper = NULL;
	memset(want, 0, sizeof(want));
	assert_race_pages_in_use(r, want, "after every VM's destroy");
	assert_race_pool_check(r, "after every VM's destroy");
	for (int k = 0; k < l->nvms; k++) {
		if (l->parent[k] < 0) {
			notifier_object_destroy(r->vm[k].gm.ram);
			munmap(r->vm[k].gm.host, r->vm[k].gm.npages * GM_PAGE);
		}
		if (l->parent[k] < 0)
			hobj_fini(&r->vm[k].cow);
	}
	sh_owns_fini(&r->owns);
}

static void race_iteration(struct race *r)
{
	const struct race_layout *l = r->c->layout;
	pthread_t swapper, reader;
	int leavers = l->nvms - (r->c->survivor >= 0);

	race_setup(r);
	test_gate_init(&r->start, (unsigned int)leavers + (r->c->swap != SWAP_NONE) + (r->c->survivor >= 0));
	__atomic_store_n(&r->leaving, leavers, __ATOMIC_RELAXED);
	for (int k = 0; k < l->nvms; k++)
		if (k != r->c->survivor)
			ck_assert_int_eq(pthread_create(&r->vm[k].thr, NULL, race_leaver_thread,
							&r->vm[k]), 0);
	if (r->c->swap != SWAP_NONE)
		ck_assert_int_eq(pthread_create(&swapper, NULL, race_swapper_thread, r), 0);
	if (r->c->survivor >= 0)
		ck_assert_int_eq(pthread_create(&reader, NULL, race_reader_thread,
						&r->vm[r->c->survivor]), 0);
	for (int k = 0; k < l->nvms; k++)
		if (k != r->c->survivor)
			pthread_join(r->vm[k].thr, NULL);
	if (r->c->swap != SWAP_NONE)
		pthread_join(swapper, NULL);
	if (r->c->survivor >= 0)
		pthread_join(reader, NULL);
	test_gate_exit(&r->start);
	race_check_and_teardown(r);
}

static void run_race(const struct race_case *c, int case_id, unsigned int iterations)
{
	const char *env = getenv("UMBRA_TEARDOWN_RACE_ITERATIONS");
	struct race *r = calloc(1, sizeof(*r));
	uint64_t seed = 0x2545f4914f6cdd1dull + (uint64_t)case_id;
	char survivor[24] = "no survivor";

	ck_assert_ptr_nonnull(r);
	if (env)
		iterations = (unsigned int)atoi(env);
	ck_assert_int_eq(notifier_thread_init(), 0);
	r->c = c;
	if (c->survivor >= 0)
		snprintf(survivor, sizeof(survivor), "VM %d survives", c->survivor);
	snprintf(r->what, sizeof(r->what), "%s, %s, %s, %s", c->layout->name,
		 c->swap == SWAP_NONE ? "no swapout" : c->swap == SWAP_EVICT ? "evictions" : "zap_range",
		 c->leave == LEAVE_DESTROY ? "the others destroyed" : "the others zap_all and rejoin",
		 survivor);
	test_failures_init(&r->fails);
	ck_assert_int_eq(shadow_pool_create(2048, &r->pool), 0);
	hobj_init(&r->obj, "shared", c->layout->segment ? RACE_PATHS * RACE_RUN_PAGES : 256, true);
	for (uint64_t p = 0; p < r->obj.npages; p++)
		*(uint64_t *)(r->obj.host + p * GM_PAGE) = race_value(r, p);
	for (r->iter = 0; r->iter < iterations; r->iter++) {
		/* The previous iteration's tables are reusable only after a
		 * grace period: without this a fault of the setup could find
		 * the pool empty, zap everything and rebuild unshared. */
		notifier_barrier();
		r->seed = test_rnd(&seed);
		race_iteration(r);
	}
	hobj_fini(&r->obj);
	shadow_pool_destroy(r->pool);
	test_failures_exit(&r->fails);
	free(r);
}

/* Where a VM survives, its vCPU's faults on cleared leaves privatize
 * (clones) or refill the canonical table in place (segment) while the
 * others leave; where the others zap_all and rejoin, they take the
 * canonical tables again while the last user of one may be freeing it. */
static const struct race_case swapout_race_cases[] = {
	{ &race_clones, SWAP_EVICT, LEAVE_DESTROY, -1 },
	{ &race_clones, SWAP_EVICT, LEAVE_DESTROY, 0 },		/* the parent survives */
	{ &race_clones, SWAP_ZAP_RANGE, LEAVE_DESTROY, -1 },
	{ &race_clones, SWAP_ZAP_RANGE, LEAVE_DESTROY, 3 },	/* the clone's clone survives */
	{ &race_clones, SWAP_EVICT, LEAVE_ZAP_ALL, 2 },
	{ &race_segment, SWAP_EVICT, LEAVE_DESTROY, -1 },
	{ &race_segment, SWAP_EVICT, LEAVE_DESTROY, 1 },
	{ &race_segment, SWAP_ZAP_RANGE, LEAVE_DESTROY, -1 },
	{ &race_segment, SWAP_EVICT, LEAVE_ZAP_ALL, -1 },
	{ &race_segment_pair, SWAP_ZAP_RANGE, LEAVE_ZAP_ALL, -1 },
	{ &race_segment_clones, SWAP_EVICT, LEAVE_DESTROY, -1 },
	{ &race_segment_clones, SWAP_ZAP_RANGE, LEAVE_DESTROY, 2 },	/* a clone survives */
};

#define NR_SWAPOUT_RACE_CASES ((int)(sizeof(swapout_race_cases) / sizeof(swapout_race_cases[0])))

/* _i: swapout_race_cases. */
START_TEST(test_swapout_racing_last_user_teardown_frees_shared_tables_once)
{
	run_race(&swapout_race_cases[_i], _i, RACE_SWAPOUT_ITERATIONS);
}
END_TEST

/* Every sharer destroyed at once, or all but one (whose vCPU reads on). */
static const struct race_case teardown_race_cases[] = {
	{ &race_clone_pair, SWAP_NONE, LEAVE_DESTROY, -1 },
	{ &race_clones, SWAP_NONE, LEAVE_DESTROY, -1 },
	{ &race_clones, SWAP_NONE, LEAVE_DESTROY, 3 },
	{ &race_segment_pair, SWAP_NONE, LEAVE_DESTROY, -1 },
	{ &race_segment, SWAP_NONE, LEAVE_DESTROY, -1 },
	{ &race_segment, SWAP_NONE, LEAVE_DESTROY, 0 },
	{ &race_segment_clones, SWAP_NONE, LEAVE_DESTROY, -1 },
	{ &race_segment_clones, SWAP_NONE, LEAVE_DESTROY, 1 },
};

#define NR_TEARDOWN_RACE_CASES ((int)(sizeof(teardown_race_cases) / sizeof(teardown_race_cases[0])))

/* _i: teardown_race_cases. */
START_TEST(test_concurrent_teardown_of_sharers_frees_every_shared_table_once)
{
	run_race(&teardown_race_cases[_i], 100 + _i, RACE_TEARDOWN_ITERATIONS);
}
END_TEST

Suite *shadow_share_suite(void)
{
	Suite *s = suite_create("shadow_share");
	TCase *clone = tcase_create("clone");
	TCase *fill = tcase_create("fill_in_place");
	TCase *seg = tcase_create("segment");
	TCase *races = tcase_create("teardown_races");
	TCase *gib = tcase_create("segment_gib");

	tcase_add_test(clone, test_clone_copies_only_roots_and_shares_lower_tables);
	tcase_add_test(clone, test_clone_vcpu_resumes_on_the_parents_tree_without_a_sync);
	tcase_add_loop_test(clone, test_first_write_copies_page_for_the_writer_only, 0, 2);
	tcase_add_test(clone, test_tables_shared_within_a_vm_are_privatized_after_a_clone);
	tcase_add_test(clone, test_an_index_hint_to_another_vms_table_is_not_linked);
	tcase_add_test(clone, test_cow_break_racing_a_clone_copies_into_the_new_own_slot);
	tcase_add_loop_test(clone, test_eviction_reaches_every_vcpu_of_every_sharer_before_return, 0, 2);
	tcase_add_test(clone, test_racing_unsharers_both_copy_and_tables_are_freed_once);
	tcase_add_test(clone, test_parent_destroy_leaves_clone_its_shared_tables);
	tcase_add_test(clone, test_clone_guest_table_write_is_private_to_the_clone);
	tcase_add_loop_test(clone, test_local_zap_reaches_every_clone_beyond_64_leaves, 0,
			    NR_LOCAL_ZAP_CASES);
	tcase_add_loop_test(clone, test_local_zap_reaches_every_user_of_a_table_with_40_users, 0,
			    NR_LOCAL_ZAP_CASES);
	tcase_add_test(fill, test_read_faults_after_clone_fill_shared_tables_in_place);
	tcase_add_test(fill, test_refaults_after_eviction_fill_shared_tables_in_place);
	tcase_add_loop_test(fill, test_divergent_views_privatize_instead_of_filling, 0, 3);
	tcase_add_test(seg, test_segment_run_uses_one_canonical_table_for_every_vm);
	tcase_add_test(seg, test_a_second_root_linking_a_vm_table_keeps_the_first_roots_leaves_writable);
	/* A GiB of segment and 2 GiB of RAM per VM: room for the sanitizer
	 * builds (a Debug build takes under a second a case). */
	tcase_set_timeout(gib, 120);
	tcase_add_loop_test(gib, test_vms_mapping_a_gib_of_a_segment_share_its_page_directory, 0, 4);
	tcase_add_test(gib, test_a_vm_whose_directory_changes_leaves_the_shared_directory);
	tcase_add_test(gib, test_a_write_under_a_clean_directory_leaves_the_shared_directory);
	tcase_add_loop_test(gib, test_a_vm_whose_p2m_maps_part_of_the_gib_does_not_share_the_directory,
			    0, 2);
	tcase_add_loop_test(seg, test_range_invalidation_of_a_shared_segment_visits_each_mapped_page_once,
			    0, (int)(sizeof(scan_cases) / sizeof(scan_cases[0])));
	tcase_add_loop_test(
		seg, test_readonly_and_writable_attachments_of_a_segment_never_share_a_leaf_table, 0, 2);
	/* Room for the sanitizer builds; a Debug build takes ~1 s a case. */
	tcase_set_timeout(races, 60);
	tcase_add_loop_test(races, test_swapout_racing_last_user_teardown_frees_shared_tables_once, 0,
			    NR_SWAPOUT_RACE_CASES);
	tcase_add_loop_test(races, test_concurrent_teardown_of_sharers_frees_every_shared_table_once, 0,
			    NR_TEARDOWN_RACE_CASES);
	suite_add_tcase(s, clone);
	suite_add_tcase(s, fill);
	suite_add_tcase(s, shadow_clone_p2m_tcase());
	suite_add_tcase(s, seg);
	suite_add_tcase(s, gib);
	suite_add_tcase(s, races);
	return s;
}
