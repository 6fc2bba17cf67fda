/*
 * bench-share: what sharing shadow tables across VMs buys, each figure next
 * to its peer measured in the same run.  Prints three
 * Markdown tables (docs/bench-share.md has results, method and the command).
 *
 *   bench-share [--quick] [--vms LIST]   (or UMBRA_BENCH_QUICK=1 in the environment)
 *
 * A. Clone cost.  One VM maps S = 64 MiB .. 4 GiB of its RAM with 4 KiB guest
 *    pages through its own 4-level guest tables; every page is pre-faulted
 *    with shadow_mmu_fault(), so the shadow has every level built (1 PML4,
 *    1 PDPT, S/1 GiB PDs, S/2 MiB PTs).  Timed, median of REPS, the clone
 *    destroyed (untimed) between runs:
 *      - shadow_mmu_clone() (new MMU, slots, P2M shared by use count, root copy);
 *      - the same clone with no shadow table below the root (zap_all first):
 *        the part of the clone that is not about tables;
 *      - an eager copy: shadow_mmu_clone() followed, inside the timed region,
 *        by a copy of every table below the child's root into new pool pages
 *        (descriptor, users link, reverse-map entry for every leaf, entries
 *        write-protected as the engine's own privatize does), written here in
 *        the bench over shadow_internal.h: what a clone costs if it copies
 *        instead of sharing.  Checked with shadow_pool_check() and
 *        shadow_mmu_check();
 *      - memcpy of the same table pages into a buffer (a floor for any eager
 *        copy: no bookkeeping at all);
 *      - Linux fork() of this process after it touched S bytes of anonymous
 *        memory (4 KiB pages, MADV_NOHUGEPAGE, every page written), done
 *        before anything else is set up; the child calls _exit(0) at once.
 *        Timed: fork() until it returns in the parent (first fork, and median
 *        of REPS), and fork() + child exit + waitpid() (median).
 * B. Table memory.  N = 1, 2, 4 .. 256 VMs each map one 1 GiB segment with
 *    512 guest 2 MiB pages, contiguously, at the same guest-physical address:
 *    through shadow_mmu_add_segment() (canonical leaf tables shared by every
 *    VM) and through shadow_mmu_add_slot() (every VM its own tables).  Table
 *    pages in use in the pool (shadow_pool_pages_in_use) are counted.  Every
 *    VM faults one page per 2 MiB run (that creates every table a VM can
 *    have: tables are per run, leaves are entries); for N <= 16 every page of
 *    every VM is then faulted too, and the count must not change.
 * C. Invalidation.  64 VMs map one 1 GiB segment as in B (shared tables),
 *    every page faulted in every VM; one invalidation of the whole 1 GiB
 *    (notifier_invalidate_range_start + _end, event swapout) is timed in
 *    range delivery and in per-page delivery, median of REPS, the pages
 *    faulted back (untimed) between runs.  Counted: subscriber callbacks,
 *    leaves cleared, TLB flushes each VM's vCPU received.  The same with
 *    unshared tables (add_slot) is a second pair of rows.
 *
 * With --vms LIST (numbers 1..256, separated by spaces or commas) the program
 * runs only C, once per N in LIST (N VMs instead of 64), shared tables and
 * unshared, in this one process, and prints one table: the invalidation
 * time against the number of VMs in both delivery modes, two rows per N.
 * --quick (or UMBRA_BENCH_QUICK) gives it C's quick repetitions.
 *
 * A benchmark, not a test: exits 0 after printing, 1 on any setup error or
 * failed check.
 */
#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "umbra/notifier.h"
#define BENCH_NAME "bench-share"
#include "bench_util.h"
#include "umbra/shadow.h"
#include "shadow_internal.h"
#include "spte.h"

#define PAGE 4096ull
#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define RUN (2ull * MIB)
#define PAGES_PER_RUN 512ull


static size_t in_use(struct shadow_pool *pool)
{
	return shadow_pool_pages_in_use(pool, 0);
}

static void fault(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va)
{
	uint32_t ec = 0;
	int ret = shadow_mmu_fault(mmu, cr3, va, SHADOW_ACCESS_USER, &ec);

	ENSURE(ret == SHADOW_FAULT_FIXED, "fault at %#llx: %d (error code %#x)",
	       (unsigned long long)va, ret, ec);
}

static struct shadow_vcpu *vcpu_on(struct shadow_mmu *mmu, uint64_t cr3)
{
	struct shadow_vcpu_config cfg = { .tlb_entries = 64 };
	struct shadow_vcpu *v;

	CHECK(shadow_vcpu_create(mmu, &cfg, &v));
	CHECK(shadow_vcpu_load_cr3(v, cr3));
	return v;
}

/* ======================================================================
 * A. clone vs eager copy vs fork
 * ====================================================================== */

#define A_VA 0x0000004000000000ull	/* 256 GiB: 1 GiB-aligned, canonical */
#define A_TABLES_GPA 0x1000ull		/* guest tables from here; data above */
#define A_COW_MPA (64ull * GIB)		/* the parent's first own slot */
#define A_CCOW_MPA (65ull * GIB)	/* the clone's own slot */
#define A_POWN_MPA(i) ((66ull + (uint64_t)(i)) * GIB) /* the parent's new own slot of clone i */
#define A_MAX_CLONES 48			/* clones of one parent (each adds it a slot) */
#define A_COW_PAGES 16ull

struct fork_res {
	double first_ret, med_ret, med_total; /* ns */
};

/* fork() of this process with @bytes of anonymous memory touched. */
static void bench_fork(uint64_t bytes, int reps, struct fork_res *res)
{
	uint8_t *p = bench_mmap(bytes);
	double *ret = calloc((size_t)reps, sizeof(double)), *tot = calloc((size_t)reps, sizeof(double));

	if (!ret || !tot)
		abort();
	/* 4 KiB pages, as the guest's: no transparent huge pages. */
	if (madvise(p, bytes, MADV_NOHUGEPAGE))
		perror("bench-share: madvise(MADV_NOHUGEPAGE)");
	/* Fault every page in writable (faster than one trap per page), then
	 * write one byte per page anyway: every page is touched. */
	(void)madvise(p, bytes, MADV_POPULATE_WRITE);
	for (uint64_t off = 0; off < bytes; off += PAGE)
		p[off] = (uint8_t)(off >> 12);
	for (int r = 0; r < reps; r++) {
		double t0 = now_ns(), t1, t2;
		int status;
		pid_t pid = fork();

		if (pid == 0)
			_exit(0);
		t1 = now_ns();
		if (pid < 0) {
			perror("bench-share: fork");
			exit(1);
		}
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
			fprintf(stderr, "bench-share: waitpid failed\n");
			exit(1);
		}
		t2 = now_ns();
		ret[r] = t1 - t0;
		tot[r] = t2 - t0;
	}
	res->first_ret = ret[0];
	res->med_ret = median(ret, reps);
	res->med_total = median(tot, reps);
	munmap(p, bytes);
	free(ret);
	free(tot);
}

struct avm {
	uint64_t npages;		/* mapped data pages */
	uint64_t data_gpa, ram_pages;
	uint8_t *host, *cow_host, *ccow_host;
	struct notifier_object *ram, *cow, *ccow;
	struct notifier_object *pown[A_MAX_CLONES];	/* the parent's own slots the clones add */
	uint8_t *pown_host[A_MAX_CLONES];
	int nr_clones;
	struct shadow_pool *pool;
	struct shadow_mmu *mmu;
	struct shadow_vcpu *vcpu;
	uint64_t cr3, next_table;
	int ram_slot;
};

static uint64_t *a_g(struct avm *a, uint64_t gpa)
{
	return (uint64_t *)(a->host + gpa);
}

/* Guest-physical address of the guest entry for @va at @level (creating
 * the guest tables above it). */
static uint64_t a_entry(struct avm *a, uint64_t va, int level)
{
	uint64_t table = a->cr3;

	for (int l = SPTE_LEVELS; l > level; l--) {
		uint64_t *e = a_g(a, table + SPTE_INDEX(va, l) * 8);

		if (!(*e & SPTE_PRESENT)) {
			ENSURE(a->next_table < a->data_gpa, "guest table area full");
			*e = a->next_table | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
			a->next_table += PAGE;
		}
		table = spte_addr(*e);
	}
	return table + SPTE_INDEX(va, level) * 8;
}

/* Shadow table pages the pre-faulted VM has: PML4, PDPT, PDs, PTs. */
static uint64_t a_shadow_tables(uint64_t npages)
{
	return 2 + (npages + 262143) / 262144 + (npages + 511) / 512;
}

static void avm_setup(struct avm *a, uint64_t bytes)
{
	struct shadow_mmu_config cfg = { 0 };
	struct shadow_slot slot = { 0 };
	uint64_t guest_tables, tables;
	int id;

	memset(a, 0, sizeof(*a));
	a->npages = bytes / PAGE;
	tables = a_shadow_tables(a->npages);
	guest_tables = tables; /* the guest's own tables have the same shape */
	a->data_gpa = (A_TABLES_GPA + guest_tables * PAGE + RUN - 1) / RUN * RUN;
	a->ram_pages = a->data_gpa / PAGE + a->npages;
	a->host = bench_mmap(a->ram_pages * PAGE);
	a->cow_host = bench_mmap(A_COW_PAGES * PAGE);
	a->ccow_host = bench_mmap(A_COW_PAGES * PAGE);
	CHECK(notifier_object_create("bench-ram", a->ram_pages, &a->ram));
	CHECK(notifier_object_create("bench-cow", A_COW_PAGES, &a->cow));
	CHECK(notifier_object_create("bench-clone-cow", A_COW_PAGES, &a->ccow));
	/* Parent tables, the eager copy of them, a root per clone, slack. */
	CHECK(shadow_pool_create(2 * tables + 16, &a->pool));
	cfg.pool = a->pool;
	cfg.max_gpa = a->ram_pages * PAGE;
	cfg.mode = shadow_default_mode;
	CHECK(shadow_mmu_create(&cfg, &a->mmu));
	slot.obj = a->ram;
	slot.host = a->host;
	CHECK(shadow_mmu_add_slot(a->mmu, &slot, &a->ram_slot));
	CHECK(shadow_mmu_map_gpa(a->mmu, 0, a->ram_pages, a->ram_slot, 0));
	slot.obj = a->cow;
	slot.mpa = A_COW_MPA;
	slot.host = a->cow_host;
	CHECK(shadow_mmu_add_slot(a->mmu, &slot, &id));
	CHECK(shadow_mmu_set_own_slot(a->mmu, id));
	a->cr3 = A_TABLES_GPA;
	a->next_table = A_TABLES_GPA + PAGE;
	for (uint64_t i = 0; i < a->npages; i++)
		*a_g(a, a_entry(a, A_VA + i * PAGE, 1)) =
			(a->data_gpa + i * PAGE) | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
	a->vcpu = vcpu_on(a->mmu, a->cr3);
	/* Pre-fault every page: every shadow level built. */
	for (uint64_t i = 0; i < a->npages; i++)
		fault(a->mmu, a->cr3, A_VA + i * PAGE);
	ENSURE(in_use(a->pool) == tables, "expected %llu shadow tables, got %zu",
	       (unsigned long long)tables, in_use(a->pool));
}

static void avm_teardown(struct avm *a)
{
	shadow_vcpu_destroy(a->vcpu);
	shadow_mmu_destroy(a->mmu);
	ENSURE(in_use(a->pool) == 0, "%zu tables left", in_use(a->pool));
	shadow_pool_destroy(a->pool);
	notifier_object_destroy(a->ram);
	notifier_object_destroy(a->cow);
	notifier_object_destroy(a->ccow);
	for (int i = 0; i < a->nr_clones; i++) {
		notifier_object_destroy(a->pown[i]);
		munmap(a->pown_host[i], A_COW_PAGES * PAGE);
	}
	munmap(a->host, a->ram_pages * PAGE);
	munmap(a->cow_host, A_COW_PAGES * PAGE);
	munmap(a->ccow_host, A_COW_PAGES * PAGE);
}

/*
 * The eager copy, bench side: copies table @src and everything below it into
 * new pool pages of @mmu (which holds its mmu_lock and has no vCPU) and
 * returns the copy's pool index.  What the engine's privatize
 * (table_copy_locked) does for one table, applied to every table at once:
 * the copy gets @src's role; every leaf is entered in the reverse map of its
 * backing page (so that invalidations reach it) and loses W and D (its data
 * is copy-on-write for both VMs); every table entry points at the copy of its
 * child, which gets a users link, and loses W.
 */
static uint32_t eager_copy_table(struct shadow_mmu *mmu, uint32_t src)
{
	struct shadow_pool *pool = mmu->pool;
	struct shadow_page *ssp = pool_page(pool, src), *sp;
	const uint64_t *from = pool_entries(pool, src);
	struct umbra_mutex *held = NULL;
	uint32_t copy, present = 0;

	CHECK(pool_alloc_index(pool, ssp->level, &copy));
	sp = pool_page(pool, copy);
	sp->direct = ssp->direct;
	sp->access = ssp->access;
	sp->gpa = ssp->gpa;
	sp->gva = ssp->gva;
	for (unsigned int k = 0; k < SPTE_ENTRIES; k++) {
		uint64_t e = spte_read(&from[k]);

		if (!spte_is_present(e))
			continue;
		if (spte_is_leaf(e, ssp->level)) {
			uint64_t bp;
			struct shadow_mmu_slot *slot = mmu_mpa_to_slot(mmu, spte_addr(e), &bp);

			ENSURE(slot, "leaf outside every slot");
			/* The leaf rule: under the page's stripe, as the clone's
			 * privatize does (one stripe held across its run). */
			held = stripe_switch(held, pool_obj_stripe(slot->pobj, bp));
			CHECK(pool_obj_rmap_add(slot->pobj, bp, sptep_make(copy, k)));
			e &= ~(SPTE_WRITABLE | SPTE_DIRTY);
		} else {
			uint32_t c = eager_copy_table(mmu, pool_page_index(spte_addr(e)));

			CHECK(pool_user_add(pool, c, mmu, copy, k));
			e = (e & ~SPTE_ADDR_MASK & ~SPTE_WRITABLE) | pool_page_gpa(c);
		}
		pool_spte_write(pool, copy, k, e);
		present++;
	}
	stripe_switch(held, NULL);
	__atomic_store_n(&sp->nr_present, present, __ATOMIC_RELAXED);
	return copy;
}

/* Replaces every table below @child's roots (shared with its parent right
 * after shadow_mmu_clone) by a private copy. */
static void eager_copy(struct shadow_mmu *child)
{
	struct shadow_pool *pool = child->pool;

	umbra_rwlock_write_lock(&child->mmu_lock);
	for (unsigned int r = 0; r < child->nr_roots; r++) {
		uint32_t root = child->roots[r].page;
		uint64_t *entries;

		if (root == SHADOW_NO_PAGE)
			continue;
		entries = pool_entries(pool, root);
		for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
			uint64_t e = spte_read(&entries[i]);
			uint32_t old, c;
			struct shadow_page *osp, *rsp = pool_page(pool, root);

			if (!spte_is_present(e))
				continue;
			old = pool_page_index(spte_addr(e));
			c = eager_copy_table(child, old);
			CHECK(pool_user_add(pool, c, child, root, i));
			umbra_mutex_lock(&rsp->lock);
			pool_spte_write(pool, root, i, (e & ~SPTE_ADDR_MASK) | pool_page_gpa(c));
			umbra_mutex_unlock(&rsp->lock);
			/* The shared table loses the child's link (the parent
			 * still holds it: no free, no flush: the child has no
			 * vCPU). */
			osp = pool_page(pool, old);
			pool_user_del(pool, old, child, root, i);
			ENSURE(__atomic_sub_fetch(&osp->use_count, 1, __ATOMIC_ACQ_REL) > 0,
			       "the parent's table lost its last user");
		}
	}
	umbra_rwlock_write_unlock(&child->mmu_lock);
}

/* Pool indices of every table below @mmu's roots (depth first). */
static void collect_tables(struct shadow_pool *pool, uint32_t page, uint32_t *out, size_t *n)
{
	const uint64_t *e = pool_entries(pool, page);
	int level = pool_page(pool, page)->level;

	for (unsigned int k = 0; k < SPTE_ENTRIES; k++) {
		uint64_t v = spte_read(&e[k]);

		if (!spte_is_present(v) || spte_is_leaf(v, level))
			continue;
		out[(*n)++] = pool_page_index(spte_addr(v));
		collect_tables(pool, pool_page_index(spte_addr(v)), out, n);
	}
}

enum a_kind { A_CLONE, A_EAGER };

/* One clone (and eager copy) of the parent, timed; checks; destroy. */
static double a_clone_once(struct avm *a, enum a_kind kind, bool check)
{
	struct shadow_slot s = { .obj = a->ccow, .mpa = A_CCOW_MPA, .host = a->ccow_host }, ps = { 0 };
	size_t before = in_use(a->pool), below = before - 1;
	const int i = a->nr_clones;
	struct shadow_mmu *child;
	double t0, t;

	/* The parent's new own slot: an object per clone (untimed). */
	ENSURE(i < A_MAX_CLONES, "more than %d clones of one parent", A_MAX_CLONES);
	a->pown_host[i] = bench_mmap(A_COW_PAGES * PAGE);
	CHECK(notifier_object_create("bench-parent-own", A_COW_PAGES, &a->pown[i]));
	a->nr_clones++;
	ps.obj = a->pown[i];
	ps.mpa = A_POWN_MPA(i);
	ps.host = a->pown_host[i];
	t0 = now_ns();
	CHECK(shadow_mmu_clone(a->mmu, &ps, &s, &child));
	if (kind == A_EAGER)
		eager_copy(child);
	t = now_ns() - t0;
	if (kind == A_CLONE) {
		/* One new page: the child's root; one table shared (the PDPT),
		 * when there is one. */
		ENSURE(in_use(a->pool) == before + 1, "clone: %zu pages, expected %zu",
		       in_use(a->pool), before + 1);
		if (check)
			ENSURE(shadow_pool_shared_pages(a->pool) == (below ? 1u : 0u),
			       "clone: %zu shared pages", shadow_pool_shared_pages(a->pool));
	} else {
		ENSURE(in_use(a->pool) == 2 * before, "eager: %zu pages, expected %zu",
		       in_use(a->pool), 2 * before);
		if (check)
			ENSURE(shadow_pool_shared_pages(a->pool) == 0, "eager: %zu shared pages",
			       shadow_pool_shared_pages(a->pool));
	}
	if (check) {
		CHECK(shadow_pool_check(a->pool));
		CHECK(shadow_mmu_check(child));
		CHECK(shadow_mmu_check(a->mmu));
	}
	shadow_mmu_destroy(child);
	ENSURE(in_use(a->pool) == before, "after the clone's destroy: %zu pages, expected %zu",
	       in_use(a->pool), before);
	notifier_barrier(); /* freed pages are reusable after a grace period (untimed) */
	return t;
}

struct a_row {
	uint64_t bytes, pages, tables;
	double clone, clone_empty, eager, copy_floor; /* ns, medians */
	double clone_first, eager_first;		/* ns, the first run */
	struct fork_res fork;
};

static void bench_a_shadow(struct a_row *row, int reps)
{
	double *v = calloc((size_t)reps + 1, sizeof(double));
	struct avm a;
	uint32_t *list;
	size_t n = 0;
	uint8_t *buf;

	if (!v)
		abort();
	avm_setup(&a, row->bytes);
	row->pages = a.npages;
	row->tables = in_use(a.pool);
	/* Run 0 is the first of its kind (fresh memory: the child's P2M and
	 * slot arrays, the eager copy's pool pages, are first touched there);
	 * the median is over runs 1..reps (steady state). */
	for (int r = 0; r <= reps; r++)
		v[r] = a_clone_once(&a, A_CLONE, r == 0);
	row->clone_first = v[0];
	row->clone = median(v + 1, reps);
	for (int r = 0; r <= reps; r++)
		v[r] = a_clone_once(&a, A_EAGER, r == 0);
	row->eager_first = v[0];
	row->eager = median(v + 1, reps);
	/* memcpy floor: the same table pages, copied and nothing else. */
	list = calloc(row->tables, sizeof(*list));
	buf = bench_mmap(row->tables * PAGE);
	if (!list)
		abort();
	for (unsigned int r = 0; r < a.mmu->nr_roots; r++)
		if (a.mmu->roots[r].page != SHADOW_NO_PAGE)
			collect_tables(a.pool, a.mmu->roots[r].page, list, &n);
	ENSURE(n == row->tables - 1, "collected %zu tables", n);
	memset(buf, 1, row->tables * PAGE);
	for (int r = 0; r < reps; r++) {
		double t0 = now_ns();

		for (size_t k = 0; k < n; k++)
			memcpy(buf + k * PAGE, pool_entries(a.pool, list[k]), PAGE);
		v[r] = now_ns() - t0;
	}
	row->copy_floor = median(v, reps);
	munmap(buf, row->tables * PAGE);
	free(list);
	/* The clone's cost without tables: the same VM, shadow zapped. */
	shadow_mmu_zap_all(a.mmu);
	ENSURE(in_use(a.pool) == 1, "after zap_all: %zu pages", in_use(a.pool));
	for (int r = 0; r <= reps; r++)
		v[r] = a_clone_once(&a, A_CLONE, r == 0);
	row->clone_empty = median(v + 1, reps);
	avm_teardown(&a);
	free(v);
}

/* ======================================================================
 * B and C. VMs mapping one shared segment with 2 MiB guest pages
 * ====================================================================== */

#define S_VA 0x00007f0000000000ull	/* 1 GiB-aligned */
#define S_RAM_PAGES 16ull		/* each VM's RAM: its guest tables */
#define S_PML4 0x1000ull
#define S_PDPT 0x2000ull
#define S_PD 0x3000ull			/* one per GiB from here */
#define S_SEG_GPA GIB			/* the segment at 1 GiB guest-physical */
#define S_SEG_MPA GIB			/* and at 1 GiB machine address */

struct seg {
	struct notifier_object *obj;
	uint8_t *host;
	uint64_t npages;
};

struct svm {
	struct notifier_object *ram;
	uint8_t *ram_host;
	struct shadow_mmu *mmu;
	struct shadow_vcpu *vcpu;
	int seg_slot;
	bool full;	/* every page faulted */
};

static void seg_create(struct seg *s, uint64_t bytes)
{
	s->npages = bytes / PAGE;
	s->host = bench_mmap(bytes); /* never touched: faults do not read data */
	CHECK(notifier_object_create("bench-segment", s->npages, &s->obj));
}

static void seg_destroy(struct seg *s)
{
	notifier_object_destroy(s->obj);
	munmap(s->host, s->npages * PAGE);
}

static uint64_t seg_runs(const struct seg *s)
{
	return s->npages / PAGES_PER_RUN;
}

static void svm_create(struct svm *v, struct shadow_pool *pool, struct seg *seg, bool shared)
{
	struct shadow_mmu_config cfg = { 0 };
	struct shadow_slot slot = { 0 };
	uint64_t *g;
	int id;

	memset(v, 0, sizeof(*v));
	cfg.pool = pool;
	cfg.max_gpa = S_SEG_GPA + seg->npages * PAGE;
	cfg.mode = shadow_default_mode;
	CHECK(shadow_mmu_create(&cfg, &v->mmu));
	v->ram_host = bench_mmap(S_RAM_PAGES * PAGE);
	CHECK(notifier_object_create("bench-vm-ram", S_RAM_PAGES, &v->ram));
	slot.obj = v->ram;
	slot.host = v->ram_host;
	CHECK(shadow_mmu_add_slot(v->mmu, &slot, &id));
	CHECK(shadow_mmu_map_gpa(v->mmu, 0, S_RAM_PAGES, id, 0));
	slot.obj = seg->obj;
	slot.mpa = S_SEG_MPA;
	slot.host = seg->host;
	if (shared)
		CHECK(shadow_mmu_add_segment(v->mmu, &slot, &v->seg_slot));
	else
		CHECK(shadow_mmu_add_slot(v->mmu, &slot, &v->seg_slot));
	CHECK(shadow_mmu_map_gpa(v->mmu, S_SEG_GPA, seg->npages, v->seg_slot, 0));
	/* Guest tables: PML4 -> PDPT -> one PD per GiB -> 2 MiB pages. */
	g = (uint64_t *)v->ram_host;
	ENSURE(S_PD / PAGE + seg_runs(seg) / 512 <= S_RAM_PAGES, "segment too large");
	g[(S_PML4 + SPTE_INDEX(S_VA, 4) * 8) / 8] = S_PDPT | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
	for (uint64_t k = 0; k < seg_runs(seg); k++) {
		uint64_t va = S_VA + k * RUN, pd = S_PD + (k / 512) * PAGE;

		g[(S_PDPT + SPTE_INDEX(va, 3) * 8) / 8] =
			pd | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
		g[(pd + SPTE_INDEX(va, 2) * 8) / 8] = (S_SEG_GPA + k * RUN) | SPTE_PRESENT |
						      SPTE_WRITABLE | SPTE_USER | SPTE_LARGE;
	}
	v->vcpu = vcpu_on(v->mmu, S_PML4);
}

static void svm_destroy(struct svm *v)
{
	shadow_vcpu_destroy(v->vcpu);
	shadow_mmu_destroy(v->mmu);
	notifier_object_destroy(v->ram);
	munmap(v->ram_host, S_RAM_PAGES * PAGE);
}

static void svm_fault_runs(struct svm *v, const struct seg *seg)
{
	for (uint64_t k = 0; k < seg_runs(seg); k++)
		fault(v->mmu, S_PML4, S_VA + k * RUN);
}

static void svm_fault_all(struct svm *v, const struct seg *seg)
{
	for (uint64_t p = 0; p < seg->npages; p++)
		fault(v->mmu, S_PML4, S_VA + p * PAGE);
	v->full = true;
}

/* ---- B: table memory ------------------------------------------------------- */

#define B_FULL_MAX 16	/* N up to this: every page of every VM faulted too */

struct b_row {
	unsigned int n;
	size_t pages[2];	/* [shared, unshared] table pages in use */
	size_t multi[2];	/* pages with more than one user */
	bool full;		/* every page faulted (N <= B_FULL_MAX) */
};

static int bench_b(struct seg *seg, unsigned int nmax, struct b_row *rows)
{
	int nrows = 0;

	for (int mode = 0; mode < 2; mode++) {
		bool shared = mode == 0;
		uint64_t runs = seg_runs(seg);
		size_t pool_pages = shared ? 3 * nmax + runs + 64 : (3 + runs) * nmax + 64;
		struct svm *vms = calloc(nmax, sizeof(*vms));
		struct shadow_pool *pool;
		int row = 0;

		if (!vms)
			abort();
		CHECK(shadow_pool_create(pool_pages, &pool));
		for (unsigned int n = 1; n <= nmax; n++) {
			svm_create(&vms[n - 1], pool, seg, shared);
			svm_fault_runs(&vms[n - 1], seg);
			if (n & (n - 1))
				continue;
			size_t c = in_use(pool);

			rows[row].n = n;
			rows[row].pages[mode] = c;
			rows[row].full = n <= B_FULL_MAX;
			if (n <= B_FULL_MAX) {
				for (unsigned int k = 0; k < n; k++)
					if (!vms[k].full)
						svm_fault_all(&vms[k], seg);
				ENSURE(in_use(pool) == c,
				       "N=%u %s: %zu tables with one fault per run, %zu with every page",
				       n, shared ? "shared" : "unshared", c, in_use(pool));
			}
			rows[row].multi[mode] = shadow_pool_shared_pages(pool);
			row++;
		}
		if (nmax <= 16)
			CHECK(shadow_pool_check(pool));
		for (unsigned int k = 0; k < nmax; k++)
			svm_destroy(&vms[k]);
		ENSURE(in_use(pool) == 0, "%zu tables left", in_use(pool));
		shadow_pool_destroy(pool);
		free(vms);
		nrows = row;
	}
	return nrows;
}

/* ---- C: one invalidation of the whole segment, 64 VMs ---------------------- */

struct c_row {
	bool shared;
	enum notifier_mode mode;
	double ns, ns_min, ns_max;	/* median, spread */
	uint64_t callbacks, zapped;	/* per invalidation, summed over VMs */
	double flushes_mean;	/* TLB flushes each VM's vCPU received */
	uint64_t flushes_min, flushes_max;
};

static uint64_t vcpu_flushes(struct shadow_vcpu *v)
{
	struct shadow_vcpu_stats st;

	shadow_vcpu_stats(v, &st);
	return st.flushes_all + st.flushes_va;
}

/* Every VM's vCPU reaches one page of every run without faulting
 * (@mapped), or none of them (!@mapped). */
static void c_verify(struct svm *vms, unsigned int nvms, const struct seg *seg, bool mapped)
{
	for (unsigned int k = 0; k < nvms; k++) {
		for (uint64_t r = 0; r < seg_runs(seg); r++) {
			struct shadow_vcpu_result res;
			uint64_t va = S_VA + r * RUN + (r % PAGES_PER_RUN) * PAGE;
			int ret = shadow_vcpu_access(vms[k].vcpu, va, SHADOW_ACCESS_USER, &res);

			ENSURE(mapped ? ret == 0 : ret == -EFAULT, "VM %u, va %#llx: access %d", k,
			       (unsigned long long)va, ret);
		}
	}
}

static void bench_c(struct seg *seg, unsigned int nvms, bool shared, int reps_range,
		    int reps_page, struct c_row *out)
{
	uint64_t runs = seg_runs(seg);
	size_t pool_pages = shared ? 3 * nvms + runs + 64 : (3 + runs) * nvms + 64;
	struct svm *vms = calloc(nvms, sizeof(*vms));
	uint64_t *f0 = calloc(nvms, sizeof(*f0));
	struct shadow_pool *pool;
	size_t base;

	if (!vms || !f0)
		abort();
	CHECK(shadow_pool_create(pool_pages, &pool));
	for (unsigned int k = 0; k < nvms; k++) {
		svm_create(&vms[k], pool, seg, shared);
		svm_fault_all(&vms[k], seg);
	}
	base = in_use(pool);
	for (int m = 0; m < 2; m++) {
		enum notifier_mode mode = m ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE;
		int reps = m ? reps_page : reps_range;
		double *t = calloc((size_t)reps, sizeof(double));
		struct c_row *row = &out[m];

		if (!t)
			abort();
		memset(row, 0, sizeof(*row));
		row->shared = shared;
		row->mode = mode;
		CHECK(notifier_object_set_mode(seg->obj, mode));
		for (int r = 0; r < reps; r++) {
			struct shadow_mmu_stats st;
			struct notifier_range range;
			uint64_t inv0 = 0, inv1 = 0, z0 = 0, z1 = 0;
			double t0;

			/* Every page mapped in every VM again (shared: one VM's
			 * faults refill the canonical tables all VMs link). */
			for (unsigned int k = 0; k < (shared ? 1 : nvms); k++)
				svm_fault_all(&vms[k], seg);
			ENSURE(in_use(pool) == base, "tables %zu, expected %zu", in_use(pool), base);
			for (uint64_t p = 0; p < seg->npages; p += 4099)
				ENSURE(shadow_mmu_rmap_count(vms[0].mmu, vms[0].seg_slot, p) ==
					       (shared ? 1 : nvms),
				       "page %llu: %zu leaves", (unsigned long long)p,
				       shadow_mmu_rmap_count(vms[0].mmu, vms[0].seg_slot, p));
			c_verify(vms, nvms, seg, true);
			for (unsigned int k = 0; k < nvms; k++) {
				f0[k] = vcpu_flushes(vms[k].vcpu);
				shadow_mmu_stats(vms[k].mmu, &st);
				inv0 += st.invalidations;
				z0 += st.zapped;
			}
			notifier_range_init(&range, seg->obj, NOTIFIER_EVENT_SWAPOUT, 0,
					    seg->npages - 1, NOTIFIER_RANGE_MAY_BLOCK);
			t0 = now_ns();
			CHECK(notifier_invalidate_range_start(&range));
			notifier_invalidate_range_end(&range);
			t[r] = now_ns() - t0;
			row->flushes_min = UINT64_MAX;
			row->flushes_max = 0;
			row->flushes_mean = 0;
			for (unsigned int k = 0; k < nvms; k++) {
				uint64_t f = vcpu_flushes(vms[k].vcpu) - f0[k];

				shadow_mmu_stats(vms[k].mmu, &st);
				inv1 += st.invalidations;
				z1 += st.zapped;
				row->flushes_mean += (double)f / nvms;
				if (f < row->flushes_min)
					row->flushes_min = f;
				if (f > row->flushes_max)
					row->flushes_max = f;
			}
			row->callbacks = inv1 - inv0;
			row->zapped = z1 - z0;
			c_verify(vms, nvms, seg, false);
		}
		row->ns = median(t, reps);
		row->ns_min = row->ns_max = t[0];
		for (int r = 1; r < reps; r++) {
			row->ns_min = t[r] < row->ns_min ? t[r] : row->ns_min;
			row->ns_max = t[r] > row->ns_max ? t[r] : row->ns_max;
		}
		free(t);
	}
	CHECK(notifier_object_set_mode(seg->obj, NOTIFIER_MODE_RANGE));
	for (unsigned int k = 0; k < nvms; k++)
		svm_destroy(&vms[k]);
	ENSURE(in_use(pool) == 0, "%zu tables left", in_use(pool));
	shadow_pool_destroy(pool);
	free(vms);
	free(f0);
}

/*
 * C with shared tables in a child process that has run nothing else (the
 * parent has only forked for A's baseline): the figures "in a fresh
 * process", to set against the same run after A and B in this one.
 */
static void bench_c_fresh(unsigned int nvms, int reps_range, int reps_page, struct c_row *out)
{
	struct c_row *shm = mmap(NULL, 2 * sizeof(*shm), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int status;
	pid_t pid;

	if (shm == MAP_FAILED)
		abort();
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		abort();
	if (pid == 0) {
		struct seg seg;

		CHECK(notifier_thread_init());
		seg_create(&seg, GIB);
		bench_c(&seg, nvms, true, reps_range, reps_page, shm);
		seg_destroy(&seg);
		notifier_barrier();
		notifier_thread_exit();
		_exit(0);
	}
	ENSURE(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "the fresh-process run of C failed (status %#x)", status);
	memcpy(out, shm, 2 * sizeof(*shm));
	munmap(shm, 2 * sizeof(*shm));
}

#define SWEEP_MAX 16	/* entries of --vms LIST */

/* C for each N of @ns, shared tables and unshared: one table, a row per N and
 * kind of table, printed as it goes. */
static void bench_c_sweep(const unsigned int *ns, int count, int reps_range, int reps_page)
{
	struct c_row rows[2];
	struct seg seg;

	CHECK(notifier_thread_init());
	seg_create(&seg, GIB);
	printf("bench-share --vms: one invalidation of the whole 1 GiB segment (262144 pages) mapped by N VMs, every page faulted (median and min..max of %d range / %d per-page runs)\n\n",
	       reps_range, reps_page);
	printf("| VMs | tables | range ms | per-page ms | per-page / range | callbacks (range / per-page) | leaves cleared (range / per-page) |\n");
	printf("| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
	for (int i = 0; i < count; i++) {
		for (int shared = 1; shared >= 0; shared--) {
			const struct c_row *r = &rows[0], *p = &rows[1];

			bench_c(&seg, ns[i], shared, reps_range, reps_page, rows);
			printf("| %u | %s | %.2f (%.2f..%.2f) | %.1f (%.1f..%.1f) | %.0f | %llu / %llu | %llu / %llu |\n",
			       ns[i], shared ? "shared (segment)" : "unshared (add_slot)", r->ns / 1e6,
			       r->ns_min / 1e6, r->ns_max / 1e6, p->ns / 1e6, p->ns_min / 1e6,
			       p->ns_max / 1e6, p->ns / r->ns, (unsigned long long)r->callbacks,
			       (unsigned long long)p->callbacks, (unsigned long long)r->zapped,
			       (unsigned long long)p->zapped);
			fflush(stdout);
		}
	}
	seg_destroy(&seg);
	notifier_barrier();
	notifier_thread_exit();
}

/* Parses --vms LIST into @ns (at most SWEEP_MAX numbers 1..256, separated
 * by spaces or commas); the count, or -1 when LIST is not such a list. */
static int parse_vms(const char *list, unsigned int *ns)
{
	int count = 0;

	while (*list) {
		char *end;
		unsigned long n;

		if (*list == ' ' || *list == ',') {
			list++;
			continue;
		}
		n = strtoul(list, &end, 10);
		if (end == list || n < 1 || n > 256 || count == SWEEP_MAX ||
		    (*end && *end != ' ' && *end != ','))
			return -1;
		ns[count++] = (unsigned int)n;
		list = end;
	}
	return count ? count : -1;
}

/* ======================================================================
 * main: run, then print
 * ====================================================================== */

static const char *size_str(uint64_t bytes, char *buf, size_t len)
{
	if (bytes >= GIB)
		snprintf(buf, len, "%llu GiB", (unsigned long long)(bytes / GIB));
	else
		snprintf(buf, len, "%llu MiB", (unsigned long long)(bytes / MIB));
	return buf;
}

int main(int argc, char **argv)
{
	bool quick = bench_quick_env();
	unsigned int sweep[SWEEP_MAX];
	int nsweep = 0;
	static const uint64_t sizes_full[] = { 64 * MIB, 256 * MIB, GIB, 4 * GIB };
	static const uint64_t sizes_quick[] = { 64 * MIB, 256 * MIB };
	const uint64_t *sizes;
	int nsizes, reps_a, reps_fork, reps_range, reps_page, reps_page_unshared;
	unsigned int b_nmax, c_vms;
	struct a_row arow[4];
	struct b_row brow[16];
	struct c_row crow[6];	/* shared (fresh process), shared, unshared: range, per-page */
	struct seg seg;
	struct utsname un;
	double t_start = now_ns(), t_c0, t_a, t_b;
	char sbuf[32];
	int nb;

	/* A steady-state allocator: large blocks (what a clone allocates) come from the
	 * heap and go back to it, instead of a fresh mmap per clone whose pages
	 * fault in one by one (that cold cost is the "first" column). */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 1 << 30);
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			quick = true;
		} else if (!strcmp(argv[i], "--vms") && i + 1 < argc &&
			   (nsweep = parse_vms(argv[i + 1], sweep)) > 0) {
			i++;
		} else {
			fprintf(stderr, "usage: %s [--quick] [--vms LIST (up to %d numbers 1..256)]   (or UMBRA_BENCH_QUICK=1)\n",
				argv[0], SWEEP_MAX);
			return 2;
		}
	}
	sizes = quick ? sizes_quick : sizes_full;
	nsizes = quick ? 2 : 4;
	reps_a = quick ? 3 : 7;
	reps_fork = quick ? 3 : 7;
	b_nmax = quick ? 16 : 256;
	c_vms = quick ? 16 : 64;
	reps_range = quick ? 3 : 7;
	reps_page = quick ? 1 : 5;
	reps_page_unshared = quick ? 1 : 5;
	if (nsweep) {
		bench_c_sweep(sweep, nsweep, reps_range, reps_page);
		return 0;
	}

	/* A, fork first: nothing else of this process is mapped yet. */
	for (int i = 0; i < nsizes; i++) {
		memset(&arow[i], 0, sizeof(arow[i]));
		arow[i].bytes = sizes[i];
		bench_fork(sizes[i], reps_fork, &arow[i].fork);
	}
	bench_c_fresh(c_vms, reps_range, reps_page, &crow[0]);
	t_c0 = now_ns();
	CHECK(notifier_thread_init());
	for (int i = 0; i < nsizes; i++)
		bench_a_shadow(&arow[i], reps_a);
	t_a = now_ns();
	seg_create(&seg, GIB);
	nb = bench_b(&seg, b_nmax, brow);
	t_b = now_ns();
	bench_c(&seg, c_vms, true, reps_range, reps_page, &crow[2]);
	bench_c(&seg, c_vms, false, reps_range, reps_page_unshared, &crow[4]);
	seg_destroy(&seg);
	notifier_barrier();
	notifier_thread_exit();

	if (uname(&un))
		memset(&un, 0, sizeof(un));
	printf("bench-share%s: %s %s, %ld CPUs online; medians; A %.0f s, B %.0f s, C %.0f + %.0f s\n\n",
	       quick ? " --quick" : "", un.sysname, un.release, sysconf(_SC_NPROCESSORS_ONLN),
	       (t_a - t_c0) / 1e9, (t_b - t_a) / 1e9, (t_c0 - t_start) / 1e9, (now_ns() - t_b) / 1e9);

	printf("A. clone cost: one VM, 4 KiB guest pages, every page pre-faulted (median of %d; fork: %d forks)\n\n",
	       reps_a, reps_fork);
	printf("| mapped | guest pages | shadow tables | clone µs (first / median) | clone, no tables below root µs | eager copy µs (first / median) | memcpy of the tables µs | fork() returns µs (first / median) | fork+exit+waitpid µs | eager / clone | fork / clone |\n");
	printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
	for (int i = 0; i < nsizes; i++) {
		const struct a_row *r = &arow[i];

		printf("| %s | %llu | %llu | %.0f / %.1f | %.1f | %.0f / %.0f | %.1f | %.0f / %.0f | %.0f | %.1f | %.1f |\n",
		       size_str(r->bytes, sbuf, sizeof(sbuf)), (unsigned long long)r->pages,
		       (unsigned long long)r->tables, r->clone_first / 1e3, r->clone / 1e3,
		       r->clone_empty / 1e3, r->eager_first / 1e3, r->eager / 1e3,
		       r->copy_floor / 1e3, r->fork.first_ret / 1e3, r->fork.med_ret / 1e3,
		       r->fork.med_total / 1e3, r->eager / r->clone, r->fork.med_ret / r->clone);
	}
	printf("\nB. table memory: N VMs each mapping one 1 GiB segment with 2 MiB guest pages (table pages in the pool)\n\n");
	printf("| N | pages faulted | shared: table pages | shared: MiB | pages with > 1 user | unshared: table pages | unshared: MiB | unshared / shared |\n");
	printf("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
	for (int i = 0; i < nb; i++) {
		const struct b_row *r = &brow[i];

		printf("| %u | %s | %zu | %.2f | %zu | %zu | %.2f | %.1f |\n", r->n,
		       r->full ? "every page" : "1 per 2 MiB run", r->pages[0],
		       (double)r->pages[0] * PAGE / MIB, r->multi[0], r->pages[1],
		       (double)r->pages[1] * PAGE / MIB, (double)r->pages[1] / (double)r->pages[0]);
	}

	printf("\nC. one invalidation of the whole 1 GiB segment (262144 pages) mapped by %u VMs, every page faulted (median and min..max of %d range / %d per-page runs)\n\n",
	       c_vms, reps_range, reps_page);
	printf("| tables | process | range ms | per-page ms | per-page / range | callbacks (range / per-page) | leaves cleared (range / per-page) | TLB flushes per VM, range: mean (min..max) | TLB flushes per VM, per-page: mean (min..max) |\n");
	printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
	for (int i = 0; i < 6; i += 2) {
		static const char *const process[] = { "fresh (C only)", "after A and B", "after A and B" };
		const struct c_row *r = &crow[i], *p = &crow[i + 1];

		printf("| %s | %s | %.2f (%.2f..%.2f) | %.1f (%.1f..%.1f) | %.0f | %llu / %llu | %llu / %llu | %.1f (%llu..%llu) | %.1f (%llu..%llu) |\n",
		       r->shared ? "shared (segment)" : "unshared (add_slot)",
		       process[i / 2], r->ns / 1e6, r->ns_min / 1e6,
		       r->ns_max / 1e6, p->ns / 1e6, p->ns_min / 1e6, p->ns_max / 1e6,
		       p->ns / r->ns, (unsigned long long)r->callbacks,
		       (unsigned long long)p->callbacks, (unsigned long long)r->zapped,
		       (unsigned long long)p->zapped, r->flushes_mean,
		       (unsigned long long)r->flushes_min, (unsigned long long)r->flushes_max,
		       p->flushes_mean, (unsigned long long)p->flushes_min,
		       (unsigned long long)p->flushes_max);
	}
	printf("\nshared tables, after A and B / fresh process: range %.2f, per-page %.2f\n",
	       crow[2].ns / crow[0].ns, crow[3].ns / crow[1].ns);
	return 0;
}
