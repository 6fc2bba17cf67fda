/*
 * shadow/ sharing across VMs (issue 5): clone by use count, privatize,
 * copy-on-write of data and of guest tables, the pmd-rmap reaching every
 * sharer's vCPUs on eviction, canonical segment tables, exactly-once
 * teardown.  docs/sharing.md is the design; test_shadow_share_torture.c the
 * concurrent torture.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "shadow.h"
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
 * cow slot) and, after fam_clone(), its clone. */
struct fam {
	struct shadow_pool *pool;
	struct gm gm;
	struct hobj data, cow[2];
	struct shadow_mmu *child;
	uint64_t cr3;
};

static void fam_init(struct fam *f, uint64_t mapped)
{
	struct shadow_slot s;
	int id;

	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(shadow_pool_create(2048, &f->pool), 0);
	gm_init_full(&f->gm, 1024, f->pool, 0, 0, NULL, NULL, NULL);
	hobj_init(&f->data, "data", 256, true);
	s = hobj_slot(&f->data, DATA_MPA);
	ck_assert_int_eq(shadow_mmu_add_slot(f->gm.mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(f->gm.mmu, DATA_GPA, 256, id, 0), 0);
	hobj_init(&f->cow[0], "cow0", 256, false);
	s = hobj_slot(&f->cow[0], SH_COW_MPA(0));
	ck_assert_int_eq(shadow_mmu_add_slot(f->gm.mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_cow_slot(f->gm.mmu, id), 0);
	f->cr3 = gm_table(&f->gm);
	for (uint64_t i = 0; i < mapped; i++) {
		gm_map(&f->gm, f->cr3, VA_BASE + i * GM_PAGE, DATA_GPA + i * GM_PAGE, 1, UW);
		*(uint64_t *)(f->data.host + i * GM_PAGE) = 0x1000 + i;
	}
}

static void fam_clone(struct fam *f)
{
	struct shadow_slot s;

	hobj_init(&f->cow[1], "cow1", 256, false);
	s = hobj_slot(&f->cow[1], SH_COW_MPA(1));
	ck_assert_int_eq(shadow_mmu_clone(f->gm.mmu, &s, &f->child), 0);
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
	hobj_fini(&f->cow[0]);
	if (f->cow[1].obj)
		hobj_fini(&f->cow[1]);
	shadow_pool_destroy(f->pool);
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
	assert_mmu_check(f.gm.mmu);
	assert_mmu_check(f.child);
	assert_pool_check(f.pool);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	fam_fini(&f);
}
END_TEST

/* _i: 0 = the clone writes first, 1 = the parent does. */
START_TEST(test_first_write_copies_page_for_the_writer_only)
{
	struct shadow_mmu_stats st;
	struct fam f;
	void *host, *whost;

	fam_init(&f, NDATA);
	struct shadow_vcpu *vp = sh_vcpu(f.gm.mmu, 64, f.cr3);

	for (uint64_t i = 0; i < NDATA; i++)
		read_u64(vp, VA_BASE + i * GM_PAGE, NULL);
	fam_clone(&f);
	struct shadow_vcpu *vc = sh_vcpu(f.child, 64, f.cr3);
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
	assert_mmu_check(f.gm.mmu);
	assert_mmu_check(f.child);
	assert_pool_check(f.pool);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	fam_fini(&f);
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

		fam_init(&f, NDATA);
		struct shadow_vcpu *vp = sh_vcpu(f.gm.mmu, 16, f.cr3);

		for (uint64_t i = 0; i < NDATA; i++)
			read_u64(vp, VA_BASE + i * GM_PAGE, NULL);
		fam_clone(&f);
		struct shadow_vcpu *vc = sh_vcpu(f.child, 16, f.cr3);
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

	fam_init(&f, NDATA);
	struct shadow_vcpu *vp = sh_vcpu(f.gm.mmu, 16, f.cr3);

	for (uint64_t i = 0; i < NDATA; i++)
		read_u64(vp, VA_BASE + i * GM_PAGE, NULL);
	fam_clone(&f);
	struct shadow_vcpu *vc = sh_vcpu(f.child, 16, f.cr3);
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

	fam_init(&f, NDATA);
	struct shadow_vcpu *vp = sh_vcpu(f.gm.mmu, 16, f.cr3);

	for (uint64_t i = 0; i < NDATA; i++)
		read_u64(vp, VA_BASE + i * GM_PAGE, NULL);
	fam_clone(&f);
	struct shadow_vcpu *vc = sh_vcpu(f.child, 16, f.cr3);
	uint64_t va = VA_BASE + 2 * GM_PAGE, pte = gm_entry(&f.gm, f.cr3, va, 1);

	ck_assert_uint_eq(read_u64(vc, va, NULL), 0x1002);
	/* The clone's guest points va at page 9 and invalidates it. */
	vm_write(f.child, pte, (DATA_GPA + 9 * GM_PAGE) | UW | SPTE_PRESENT);
	shadow_vcpu_invlpg(vc, va);
	ck_assert_uint_eq(read_u64(vc, va, NULL), 0x1009);
	ck_assert_msg(read_u64(vp, va, NULL) == 0x1002, "the parent's guest table is its own");
	ck_assert_uint_eq(gm_read(&f.gm, pte) & SPTE_ADDR_MASK, DATA_GPA + 2 * GM_PAGE);
	assert_mmu_check(f.gm.mmu);
	assert_mmu_check(f.child);
	assert_pool_check(f.pool);
	shadow_vcpu_destroy(vc);
	shadow_vcpu_destroy(vp);
	fam_fini(&f);
}
END_TEST

/* ---- local zaps (copy-on-write break, P2M redirect) with many sharers ---- */

#define HERD_MAX 70
#define VA_FAR (VA_BASE + (2ull << 20)) /* same PD as VA_BASE, another leaf table */
#define NEW_PAGE 200			/* map_gpa's redirect target in the data object */

/* A parent VM and up to HERD_MAX clones, each with a vCPU (no TLB: every
 * access walks the shadow tables). */
struct herd {
	struct shadow_pool *pool;
	struct gm gm;
	struct hobj data, cow[HERD_MAX + 1];
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
	ck_assert_int_eq(shadow_mmu_map_gpa(h->mmu[0], DATA_GPA, 256, h->data_id, 0), 0);
	hobj_init(&h->cow[0], "cow0", 256, false);
	s = hobj_slot(&h->cow[0], SH_COW_MPA(0));
	ck_assert_int_eq(shadow_mmu_add_slot(h->mmu[0], &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_cow_slot(h->mmu[0], id), 0);
	h->cr3 = gm_table(&h->gm);
}

/* The parent's vCPU reads @va .. @va + @n pages, then @nclones clones are
 * made; each writes @wva (privatizing the tables on its path). */
static void herd_populate(struct herd *h, uint64_t va, uint64_t n, int nclones, uint64_t wva)
{
	struct shadow_slot s;

	h->v[0] = sh_vcpu(h->mmu[0], 0, h->cr3);
	for (uint64_t i = 0; i < n; i++)
		read_u64(h->v[0], va + i * GM_PAGE, NULL);
	read_u64(h->v[0], wva, NULL);
	for (int k = 1; k <= nclones; k++) {
		hobj_init(&h->cow[k], "cow", 256, false);
		s = hobj_slot(&h->cow[k], SH_COW_MPA(k));
		ck_assert_int_eq(shadow_mmu_clone(h->mmu[0], &s, &h->mmu[k]), 0);
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
	for (int k = 0; k <= h->n; k++)
		hobj_fini(&h->cow[k]);
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
	ck_assert_int_eq(shadow_mmu_map_gpa(h->mmu[k], gpa, 1, h->data_id, NEW_PAGE), 0);
	return 0x1000 + NEW_PAGE;
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
	assert_pool_check(s.pool);
	for (int k = 0; k < NVM; k++) {
		assert_mmu_check(s.gm[k].mmu);
		shadow_vcpu_destroy(s.v[k]);
		shadow_mmu_destroy(s.gm[k].mmu);
		s.gm[k].mmu = NULL;
		assert_pool_check(s.pool);
	}
	ck_assert_uint_eq(shadow_pool_pages_in_use(s.pool, 0), 0);
	for (int k = 0; k < NVM; k++) {
		notifier_object_destroy(s.gm[k].ram);
		munmap(s.gm[k].host, s.gm[k].npages * GM_PAGE);
	}
	hobj_fini(&s.seg);
	shadow_pool_destroy(s.pool);
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

Suite *shadow_share_suite(void)
{
	Suite *s = suite_create("shadow_share");
	TCase *clone = tcase_create("clone");
	TCase *seg = tcase_create("segment");

	tcase_add_test(clone, test_clone_copies_only_roots_and_shares_lower_tables);
	tcase_add_loop_test(clone, test_first_write_copies_page_for_the_writer_only, 0, 2);
	tcase_add_loop_test(clone, test_eviction_reaches_every_vcpu_of_every_sharer_before_return, 0, 2);
	tcase_add_test(clone, test_racing_unsharers_both_copy_and_tables_are_freed_once);
	tcase_add_test(clone, test_parent_destroy_leaves_clone_its_shared_tables);
	tcase_add_test(clone, test_clone_guest_table_write_is_private_to_the_clone);
	tcase_add_loop_test(clone, test_local_zap_reaches_every_clone_beyond_64_leaves, 0,
			    NR_LOCAL_ZAP_CASES);
	tcase_add_loop_test(clone, test_local_zap_reaches_every_user_of_a_table_with_40_users, 0,
			    NR_LOCAL_ZAP_CASES);
	tcase_add_test(seg, test_segment_run_uses_one_canonical_table_for_every_vm);
	tcase_add_loop_test(
		seg, test_readonly_and_writable_attachments_of_a_segment_never_share_a_leaf_table, 0, 2);
	suite_add_tcase(s, clone);
	suite_add_tcase(s, seg);
	return s;
}
