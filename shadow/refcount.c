/*
 * Page reference counts (docs/sharing.md, "Page references"): for each
 * page of a counted slot (a layer or an own slot: slot_is_counted), the
 * number of P2M entries, in distinct nodes of the pool's VMs, that map it
 * (leaf entries, pages of linear runs).  Kept in the page's
 * struct pool_obj, which every VM's slot of that object (at that machine
 * address) shares, in two parts:
 *  - page_refs: one array of counts per 2 MiB run of the object, allocated
 *    on the first count that is not 1: a run with no array has every count
 *    1 (a page mapped by one VM's one entry, as RAM is mapped);
 *  - run_refs: per 2 MiB run, references that linear P2M runs hold to the
 *    whole run, beyond page_refs.  A copied P2M node's linear run (one of
 *    a run's 512 pages aligned on the run) adds one here instead of 512
 *    page counts, so a path copy costs a count per run, not per page.
 * A page's count is the sum (page_ref_read).  A linear run's reference
 * that goes (page_ref_put_run) takes one from run_refs if it holds any,
 * else from each page; a linear run expanded into a leaf
 * (page_ref_expand_run) moves one from run_refs to each page.  A linear run
 * not aligned on a run of its object counts per page.
 *
 * A page is mapped at one gfn at most (the VMM maps each page of its RAM
 * once): a store that maps a page sets its count to 1.
 *
 * Locks: refs_lock (UMBRA_LOCK_RANK_PAGE_REFS, innermost: nothing is taken
 * inside it and put_page is called after it is dropped) for every count
 * change and read, so that a page's two parts are seen together; the
 * arrays are published with a compare-and-swap (the loser frees its own)
 * and freed with the object.  Callers hold the mmu_lock of the VM whose
 * P2M changes, or release nodes with no lock held (p2m_tree.c).
 */
#include <errno.h>
#include <stdlib.h>

#include "mmu_internal.h"

static uint32_t *run_counts(struct pool_obj *po, uint64_t run)
{
	return page_ref_run(po, run);
}

/* Publishes a zero-filled array of @n @size-byte items at @where unless
 * one is there: 0 or -ENOMEM. */
static int array_publish(void **where, size_t n, size_t size)
{
	void *cur = NULL, *fresh;

	if (__atomic_load_n(where, __ATOMIC_ACQUIRE))
		return 0;
	fresh = calloc(n, size);
	if (!fresh)
		return -ENOMEM;
	if (!__atomic_compare_exchange_n(where, &cur, fresh, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		free(fresh);
	return 0;
}

int page_ref_prepare(struct pool_obj *po, uint64_t page)
{
	const uint64_t run = page / SPTE_ENTRIES;
	uint32_t **runs, *counts, *none = NULL;

	if (array_publish((void **)&po->page_refs, pool_obj_nr_runs(po->npages), sizeof(*po->page_refs)))
		return -ENOMEM;
	runs = __atomic_load_n(&po->page_refs, __ATOMIC_ACQUIRE);
	if (__atomic_load_n(&runs[run], __ATOMIC_ACQUIRE))
		return 0;
	counts = malloc(SPTE_ENTRIES * sizeof(*counts));
	if (!counts)
		return -ENOMEM;
	for (unsigned int k = 0; k < SPTE_ENTRIES; k++)
		counts[k] = 1;
	if (!__atomic_compare_exchange_n(&runs[run], &none, counts, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		free(counts);
	return 0;
}

/* run_refs[@run], 0 if none.  refs_lock. */
static uint32_t run_refs_locked(struct pool_obj *po, uint64_t run)
{
	umbra_mutex_assert_held(&po->refs_lock);
	return po->run_refs ? po->run_refs[run] : 0;
}

uint32_t page_ref_read(struct pool_obj *po, uint64_t page)
{
	uint32_t n;

	umbra_mutex_lock(&po->refs_lock);
	uint32_t *counts = run_counts(po, page / SPTE_ENTRIES);

	n = (counts ? counts[page % SPTE_ENTRIES] : 1) + run_refs_locked(po, page / SPTE_ENTRIES);
	umbra_mutex_unlock(&po->refs_lock);
	return n;
}

void page_ref_get(struct pool_obj *po, uint64_t page)
{
	uint32_t *counts = run_counts(po, page / SPTE_ENTRIES);

	if (UMBRA_LOCK_DEBUG && !counts)
		abort(); /* page_ref_prepare makes the run first */
	umbra_mutex_lock(&po->refs_lock);
	counts[page % SPTE_ENTRIES]++;
	umbra_mutex_unlock(&po->refs_lock);
}

/* One reference less on @page's own count: true when the page's count
 * (with its run's) is 0.  refs_lock. */
static bool page_put_locked(struct pool_obj *po, uint64_t page)
{
	umbra_mutex_assert_held(&po->refs_lock);
	uint32_t *counts = run_counts(po, page / SPTE_ENTRIES);
	uint32_t left;

	/* No array: the count was 1, and is 0 now (not recorded: a store that
	 * maps the page again sets it to 1). */
	left = counts ? --counts[page % SPTE_ENTRIES] : 0;
	return left + run_refs_locked(po, page / SPTE_ENTRIES) == 0;
}

bool page_ref_put(struct pool_obj *po, uint64_t page)
{
	bool last;

	(void)page_ref_prepare(po, page); /* without memory: the count was 1 */
	umbra_mutex_lock(&po->refs_lock);
	last = page_put_locked(po, page);
	umbra_mutex_unlock(&po->refs_lock);
	return last;
}

void page_ref_set_one(struct pool_obj *po, uint64_t page)
{
	umbra_mutex_lock(&po->refs_lock);
	uint32_t *counts = run_counts(po, page / SPTE_ENTRIES);

	if (counts)
		counts[page % SPTE_ENTRIES] = 1;
	umbra_mutex_unlock(&po->refs_lock);
}

/* Is the linear run from page @first counted in run_refs (aligned on a
 * run of the object)? */
static bool run_is_whole(struct pool_obj *po, uint64_t first)
{
	return first % SPTE_ENTRIES == 0 && first + SPTE_ENTRIES <= po->npages;
}

int page_ref_prepare_run(struct pool_obj *po, uint64_t first)
{
	if (run_is_whole(po, first))
		return array_publish((void **)&po->run_refs, pool_obj_nr_runs(po->npages), sizeof(*po->run_refs));
	if (page_ref_prepare(po, first))
		return -ENOMEM;
	return page_ref_prepare(po, first + SPTE_ENTRIES - 1);
}

void page_ref_get_run(struct pool_obj *po, uint64_t first)
{
	if (!run_is_whole(po, first)) {
		for (uint64_t j = 0; j < SPTE_ENTRIES; j++)
			page_ref_get(po, first + j);
		return;
	}
	umbra_mutex_lock(&po->refs_lock);
	po->run_refs[first / SPTE_ENTRIES]++;
	umbra_mutex_unlock(&po->refs_lock);
}

unsigned int page_ref_put_run(struct pool_obj *po, uint64_t first, uint64_t freed[SPTE_ENTRIES / 64])
{
	const uint64_t run = first / SPTE_ENTRIES;
	unsigned int n = 0;

	for (unsigned int w = 0; w < SPTE_ENTRIES / 64; w++)
		freed[w] = 0;
	umbra_mutex_lock(&po->refs_lock);
	if (run_is_whole(po, first) && run_refs_locked(po, run)) {
		/* One of the run's references goes: a page whose own count is
		 * 0 goes with the last. */
		if (--po->run_refs[run] == 0) {
			uint32_t *counts = run_counts(po, run);

			for (unsigned int j = 0; counts && j < SPTE_ENTRIES; j++)
				if (!counts[j]) {
					freed[j / 64] |= 1ull << (j % 64);
					n++;
				}
		}
	} else {
		/* Each page loses one; a run without an array had every count 1:
		 * its pages are all freed (and read 1 again, as pages that no
		 * entry maps, until a store maps one: page_ref_set_one). */
		for (unsigned int j = 0; j < SPTE_ENTRIES; j++)
			if (page_put_locked(po, first + j)) {
				freed[j / 64] |= 1ull << (j % 64);
				n++;
			}
	}
	umbra_mutex_unlock(&po->refs_lock);
	return n;
}

int page_ref_expand_run(struct pool_obj *po, uint64_t first)
{
	const uint64_t run = first / SPTE_ENTRIES;

	uint32_t *counts;

	if (!run_is_whole(po, first))
		return 0; /* already per page */
	for (;;) {
		umbra_mutex_lock(&po->refs_lock);
		if (!run_refs_locked(po, run))
			break; /* our reference is in the pages' counts */
		counts = run_counts(po, run);
		if (counts) {
			po->run_refs[run]--;
			for (unsigned int j = 0; j < SPTE_ENTRIES; j++)
				counts[j]++;
			break;
		}
		umbra_mutex_unlock(&po->refs_lock);
		if (page_ref_prepare(po, first))
			return -ENOMEM;
	}
	umbra_mutex_unlock(&po->refs_lock);
	return 0;
}

void page_ref_set_one_run(struct pool_obj *po, uint64_t first)
{
	umbra_mutex_lock(&po->refs_lock);
	if (run_is_whole(po, first) && po->run_refs)
		po->run_refs[first / SPTE_ENTRIES] = 0;
	for (uint64_t j = 0; j < SPTE_ENTRIES; j++) {
		uint32_t *counts = run_counts(po, (first + j) / SPTE_ENTRIES);

		if (counts)
			counts[(first + j) % SPTE_ENTRIES] = 1;
	}
	umbra_mutex_unlock(&po->refs_lock);
}

void page_refs_exit(struct pool_obj *po)
{
	free(po->run_refs);
	po->run_refs = NULL;
	if (!po->page_refs)
		return;
	for (uint64_t r = 0; r < pool_obj_nr_runs(po->npages); r++)
		free(po->page_refs[r]);
	free(po->page_refs);
	po->page_refs = NULL;
}

/* ---- the recount (shadow_pool_check) ---------------------------------------- */

/* A node reached from a VM's P2M, with the first VM found reaching it
 * (whose slots name its entries' objects: every VM that shares a node
 * gives its slot ids the same objects). */
struct reached {
	struct p2m_node *node;
	struct shadow_mmu *mmu;
};

struct recount {
	struct reached *nodes;		/* every (node, VM) reached */
	size_t nr, cap;
	struct p2m_node **refs;		/* one per reference: roots, entries of distinct nodes */
	size_t nr_refs, cap_refs;
	struct shadow_mmu *mmu;		/* the VM being walked */
	int err;
};

static bool grow(void **a, size_t *cap, size_t nr, size_t size)
{
	size_t c = *cap ? 2 * *cap : 64;
	void *p;

	if (nr < *cap)
		return true;
	p = realloc(*a, c * size);
	if (!p)
		return false;
	*a = p;
	*cap = c;
	return true;
}

static void add_ref(struct recount *r, struct p2m_node *n)
{
	if (!grow((void **)&r->refs, &r->cap_refs, r->nr_refs, sizeof(*r->refs))) {
		r->err = -ENOMEM;
		return;
	}
	r->refs[r->nr_refs++] = n;
}

static void reach_node(void *ctx, struct p2m_node *n, uint64_t first, bool priv)
{
	struct recount *r = ctx;

	(void)first;
	(void)priv;
	if (!grow((void **)&r->nodes, &r->cap, r->nr, sizeof(*r->nodes))) {
		r->err = -ENOMEM;
		return;
	}
	r->nodes[r->nr++] = (struct reached){ .node = n, .mmu = r->mmu };
}

static int reached_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const struct reached *)a)->node;
	uintptr_t y = (uintptr_t)((const struct reached *)b)->node;

	return x < y ? -1 : x > y;
}

static int node_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)*(struct p2m_node *const *)a, y = (uintptr_t)*(struct p2m_node *const *)b;

	return x < y ? -1 : x > y;
}

/* Every distinct node's use count against its references.  0 or -EUCLEAN. */
static int check_uses(struct recount *r)
{
	size_t j = 0;

	if (r->nr_refs)
		qsort(r->refs, r->nr_refs, sizeof(*r->refs), node_cmp);
	for (size_t i = 0; i < r->nr; i++) {
		uint32_t refs = 0;

		if (i && r->nodes[i].node == r->nodes[i - 1].node)
			continue;
		while (j < r->nr_refs && (uintptr_t)r->refs[j] < (uintptr_t)r->nodes[i].node)
			j++;
		while (j < r->nr_refs && r->refs[j] == r->nodes[i].node) {
			refs++;
			j++;
		}
		if (refs != __atomic_load_n(&r->nodes[i].node->use, __ATOMIC_RELAXED))
			return -EUCLEAN;
	}
	return 0;
}

/* The counts of @po's pages against the entries of the distinct nodes
 * that map them (leaf entries, linear runs).  0, -EUCLEAN or -ENOMEM. */
static int check_obj_counts(struct recount *r, struct pool_obj *po)
{
	uint32_t *want = calloc(po->npages, sizeof(*want));
	int ret = 0;

	if (!want)
		return -ENOMEM;
	for (size_t i = 0; i < r->nr; i++) {
		struct p2m_node *n = r->nodes[i].node;

		if (i && n == r->nodes[i - 1].node)
			continue;
		for (unsigned int k = 0; k < P2M_NODE_ENTRIES; k++) {
			uint64_t x = __atomic_load_n(&n->e[k], __ATOMIC_RELAXED);
			uint64_t e = p2m_is_linear(x) ? p2m_linear_entry(x, 0) : x;
			uint64_t pages = p2m_is_linear(x) ? P2M_CHUNK_PAGES : n->level == 1;
			struct shadow_mmu_slot *s;

			if (!pages || !p2m_entry_is_present(e))
				continue;
			s = &r->nodes[i].mmu->slots[p2m_entry_slot_id(e)];
			for (uint64_t j = 0; j < pages && slot_is_counted(r->nodes[i].mmu, s) &&
					     s->pobj == po; j++)
				if (p2m_entry_page(e) + j < po->npages)
					want[p2m_entry_page(e) + j]++;
		}
	}
	for (uint64_t p = 0; p < po->npages && !ret; p++) {
		uint32_t got = page_ref_read(po, p);

		if (want[p] ? got != want[p] : got > 1)
			ret = -EUCLEAN;
	}
	free(want);
	return ret;
}

int page_refs_check_locked(struct shadow_pool *pool)
{
	umbra_mutex_assert_held(&pool->objs_lock);
	umbra_mutex_assert_held(&pool->mmus_lock);
	const struct p2m_walker w = { .node = reach_node };
	struct recount r = { 0 };
	int ret;

	for (struct shadow_mmu *m = pool->mmus; m && !r.err; m = m->pool_next) {
		struct p2m_walker mw = w;
		uint64_t root = __atomic_load_n(&m->p2m_root, __ATOMIC_RELAXED);

		mw.ctx = &r;
		r.mmu = m;
		if (root)
			add_ref(&r, p2m_node_of(root));
		p2m_walk_quiescent(m, &mw);
	}
	if (r.nr)
		qsort(r.nodes, r.nr, sizeof(*r.nodes), reached_cmp);
	for (size_t i = 0; i < r.nr && !r.err; i++) {
		struct p2m_node *n = r.nodes[i].node;

		if (n->level == 1 || (i && n == r.nodes[i - 1].node))
			continue;
		for (unsigned int k = 0; k < P2M_NODE_ENTRIES; k++) {
			uint64_t x = __atomic_load_n(&n->e[k], __ATOMIC_RELAXED);

			if (x && !p2m_is_linear(x))
				add_ref(&r, p2m_node_of(x));
		}
	}
	ret = r.err ? r.err : check_uses(&r);
	for (struct pool_obj *po = pool->objs; po && !ret; po = po->next)
		ret = check_obj_counts(&r, po);
	free(r.nodes);
	free(r.refs);
	return ret;
}
