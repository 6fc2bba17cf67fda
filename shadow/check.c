/*
 * The invariant checkers (for tests) and the table-usage count: one VM's
 * tables against its guest-independent invariants (shadow_mmu_check:
 * descriptors, users, reverse map both ways, write protection, accounting)
 * and the whole pool at rest (shadow_pool_check).
 *
 * Locks: the per-VM checker and the usage count run under the VM's
 * mmu_lock; they read a table under its lock and a reverse map under its
 * page's stripe (another VM's zap may run meanwhile).  The pool checker
 * requires a quiescent pool and holds objs_lock and mmus_lock (in that
 * order), which stand for every stripe while nothing runs.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "mmu_internal.h"

/* ---- one VM: shadow_mmu_check ------------------------------------------- */

struct check_ctx {
	uint64_t leaves, tables;	/* each table and its leaves counted once */
	/* Pool pages checked, and checked on a path that grants W: a table
	 * that several of the VM's entries link (table_hash.c) is checked
	 * again only on a stricter path. */
	uint8_t *seen, *seen_w;
	uint8_t *cow[SHADOW_MAX_SLOTS];	/* [slot][page]: shared copy-on-write in our P2M */
	struct shadow_mmu *mmu;
	int err;
};

/* Is (@parent, @index) among @sp's users (for a root, @mmu's)?  *@nr: how
 * many users.  The table lock held. */
static bool users_has_locked(struct shadow_page *sp, struct shadow_mmu *mmu, uint32_t parent,
			     uint32_t index, uint32_t *nr)
{
	umbra_mutex_assert_held(&sp->lock);
	bool found = false;

	*nr = 0;
	for (struct shadow_page_user *u = sp->users; u; u = u->next) {
		(*nr)++;
		found |= u->parent == parent && u->index == index &&
			 (parent != SHADOW_NO_PAGE || u->mmu == mmu);
	}
	return found;
}

/* Table @page's descriptor: allocated, linked from (@parent, @index), its
 * use count its users, nr_present its present entries; @snap gets its
 * entries, all read under the table lock.  0 or -EUCLEAN. */
static int check_table_header(struct shadow_mmu *mmu, uint32_t page, uint32_t parent,
			      uint32_t index, uint64_t *snap)
{
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptes = mmu_sptes(mmu, page);
	uint32_t present = 0, nr_present, nr_users;
	bool linked;

	umbra_mutex_lock(&sp->lock);
	linked = users_has_locked(sp, mmu, parent, index, &nr_users);
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		snap[i] = spte_read(&sptes[i]);
		present += spte_is_present(snap[i]);
	}
	nr_present = __atomic_load_n(&sp->nr_present, __ATOMIC_RELAXED);
	umbra_mutex_unlock(&sp->lock);
	if (!sp->level || !linked || __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) != nr_users ||
	    present != nr_present)
		return -EUCLEAN;
	return 0;
}

/* Leaf @spte, entry @i of @page: a 4 KiB non-global leaf, or a 2 MiB one
 * over a whole run of a VM never cloned (huge.c), D exactly when W, no
 * write reaching copy-on-write data (@path_w: every entry above grants W),
 * and in its page's reverse map, or its run's for a 2 MiB leaf (under the
 * stripe, if it still maps that page: another VM's zap may have cleared it
 * since).  mmu_lock. */
static int check_leaf_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, uint64_t spte,
			     bool path_w, struct check_ctx *c)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot;
	struct umbra_mutex *stripe;
	uint64_t bp, now;
	uint32_t k;
	shadow_sptep_t s;
	bool found = false;

	const int level = mmu_page(mmu, page)->level;

	if ((level != 1 && (level != 2 || mmu->cloned)) || spte_is_writable(spte) != spte_is_dirty(spte) ||
	    (spte & SPTE_GLOBAL))
		return -EUCLEAN;
	stripe = leaf_stripe(mmu, spte, &slot, &bp);
	if (!stripe || (level == 2 && (bp % SPTE_ENTRIES || bp + SPTE_ENTRIES > slot->npages)))
		return -EUCLEAN;
	/* Write protection: no write can reach shared data. */
	if (path_w && spte_is_writable(spte) && c->cow[slot->id] && c->cow[slot->id][bp])
		return -EUCLEAN;
	umbra_mutex_lock(stripe);
	now = spte_read(mmu_sptes(mmu, page) + i);
	if (spte_is_present(now) && spte_addr(now) == spte_addr(spte))
		for_each_rmap_sptep(level == 2 ? pool_obj_huge_rmap(slot->pobj, bp) :
						 pool_obj_rmap(slot->pobj, bp),
				    stripe, k, s)
			found |= s == sptep_make(page, i);
	else
		found = true; /* cleared by a zap since: nothing to check */
	umbra_mutex_unlock(stripe);
	if (!found)
		return -EUCLEAN;
	c->leaves++;
	return 0;
}

static int check_table_locked(struct shadow_mmu *mmu, uint32_t page, uint32_t parent,
			      uint32_t index, bool path_w, struct check_ctx *c);

/* Table entry @spte, entry @i of @page: its child is a pool page one level
 * down covering the right addresses (a canonical table has no single gva);
 * then the child's subtree.  mmu_lock. */
static int check_child_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, uint64_t spte,
			      bool path_w, struct check_ctx *c)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint32_t child = pool_page_index(spte_addr(spte));
	struct shadow_page *csp = mmu_page(mmu, child);

	if (!shadow_pool_contains(mmu->pool, spte_addr(spte)) || csp->level != sp->level - 1 ||
	    (!csp->canon &&
	     csp->gva != shadow_va_canonical(sp->gva + ((uint64_t)i << SPTE_LEVEL_SHIFT(sp->level)))))
		return -EUCLEAN;
	return check_table_locked(mmu, child, page, i, path_w && spte_is_writable(spte), c);
}

/*
 * The subtree at @page, reached through entry @index of @parent (root slot
 * @index for SHADOW_NO_PAGE); @path_w: every entry above grants W.  Another
 * VM's zap may clear leaves of the table meanwhile: the entries are read and
 * counted under the table lock, and each leaf is then checked against the
 * reverse map under its page's stripe, if it still maps that page.
 * mmu_lock.
 */
static int check_table_locked(struct shadow_mmu *mmu, uint32_t page, uint32_t parent,
			      uint32_t index, bool path_w, struct check_ctx *c)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	int level = mmu_page(mmu, page)->level;
	const uint8_t bit = (uint8_t)(1u << (page % CHAR_BIT));
	const bool first = !(c->seen[page / CHAR_BIT] & bit);
	uint64_t snap[SPTE_ENTRIES];
	int ret;

	if (!first && (!path_w || (c->seen_w[page / CHAR_BIT] & bit)))
		return check_table_header(mmu, page, parent, index, snap);
	c->seen[page / CHAR_BIT] |= bit;
	if (path_w)
		c->seen_w[page / CHAR_BIT] |= bit;
	if (first)
		c->tables++;
	ret = check_table_header(mmu, page, parent, index, snap);
	for (unsigned int i = 0; i < SPTE_ENTRIES && !ret; i++) {
		if (!spte_is_present(snap[i]))
			continue;
		if (!spte_is_accessed(snap[i]))
			return -EUCLEAN;
		if (spte_is_leaf(snap[i], level)) {
			const uint64_t leaves = c->leaves;

			ret = check_leaf_locked(mmu, page, i, snap[i], path_w, c);
			if (!first)
				c->leaves = leaves; /* counted at the first visit */
		} else {
			ret = check_child_locked(mmu, page, i, snap[i], path_w, c);
		}
	}
	return ret;
}

/* Marks in @c, for one node of our P2M, every (slot, page) that a write
 * may not reach without a copy-on-write break. */
static void check_cow_node(void *ctx, struct p2m_node *n, uint64_t first, bool private)
{
	struct check_ctx *c = ctx;

	(void)first;
	for (unsigned int k = 0; k < P2M_NODE_ENTRIES && !c->err; k++) {
		uint64_t x = __atomic_load_n(&n->e[k], __ATOMIC_RELAXED);
		uint64_t pages = p2m_is_linear(x) ? P2M_CHUNK_PAGES : n->level == 1;

		for (uint64_t j = 0; j < pages && !c->err; j++) {
			uint64_t e = p2m_is_linear(x) ? p2m_linear_entry(x, j) : x;
			int id = p2m_entry_slot_id(e);

			if (!p2m_entry_needs_break(c->mmu, e, private))
				continue;
			if (!c->cow[id])
				c->cow[id] = calloc(c->mmu->slots[id].npages, 1);
			if (!c->cow[id])
				c->err = -ENOMEM;
			else
				c->cow[id][p2m_entry_page(e)] = 1;
		}
	}
}

/* Marks in @c every (slot, page) that our P2M shares copy-on-write.
 * mmu_lock.  0 or -ENOMEM. */
static int check_cow_map_locked(struct shadow_mmu *mmu, struct check_ctx *c)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct p2m_walker w = { .node = check_cow_node, .ctx = c };

	c->mmu = mmu;
	p2m_walk_locked(mmu, &w);
	return c->err;
}

/* Every reverse-map entry of the pages of run @r of @slot is a present
 * leaf mapping that page (whichever VM's table it is in), read under the
 * run's stripe.  mmu_lock. */
static int check_run_rmaps_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t r)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, r * SPTE_ENTRIES);
	int ret = 0;

	umbra_mutex_lock(stripe);
	for (uint64_t p = r * SPTE_ENTRIES; p < (r + 1) * SPTE_ENTRIES && p < slot->npages; p++) {
		uint32_t k;
		shadow_sptep_t s;

		for_each_rmap_sptep(pool_obj_rmap(slot->pobj, p), stripe, k, s) {
			uint64_t spte = spte_read(mmu_sptes(mmu, sptep_page(s)) + sptep_index(s));

			if (!spte_is_present(spte) ||
			    __atomic_load_n(&mmu_page(mmu, sptep_page(s))->level, __ATOMIC_RELAXED) != 1 ||
			    spte_addr(spte) != slot->s.mpa + (p << SHADOW_PAGE_SHIFT))
				ret = -EUCLEAN;
		}
	}
	{
		uint32_t k;
		shadow_sptep_t s;

		/* 2 MiB leaves: present, at level 2, mapping the whole run. */
		for_each_rmap_sptep(pool_obj_huge_rmap(slot->pobj, r * SPTE_ENTRIES), stripe, k, s) {
			uint64_t spte = spte_read(mmu_sptes(mmu, sptep_page(s)) + sptep_index(s));

			if (!spte_is_present(spte) || !spte_is_leaf(spte, 2) ||
			    __atomic_load_n(&mmu_page(mmu, sptep_page(s))->level, __ATOMIC_RELAXED) != 2 ||
			    spte_addr(spte) != slot->s.mpa + (r * SPTE_ENTRIES << SHADOW_PAGE_SHIFT))
				ret = -EUCLEAN;
		}
	}
	umbra_mutex_unlock(stripe);
	return ret;
}

/* The other direction: every reverse-map entry of our slots' pages is a
 * present leaf mapping that page; runs never used have none.  mmu_lock. */
static int check_rmaps_locked(struct shadow_mmu *mmu)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	int n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE), ret = 0;

	for (int i = 0; i < n && !ret; i++) {
		struct shadow_mmu_slot *slot = &mmu->slots[i];

		for (uint64_t r = 0; r < pool_obj_nr_runs(slot->npages) && !ret; r++)
			if (pool_obj_run(slot->pobj, r))
				ret = check_run_rmaps_locked(mmu, slot, r);
	}
	return ret;
}

/* A VM that never shared: its tables are the ones it created and did not
 * free, and, alone in its objects, its leaves are their reverse maps.
 * mmu_lock. */
static int check_counts_locked(struct shadow_mmu *mmu, const struct check_ctx *c)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	int n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);
	struct shadow_mmu_stats st;
	uint64_t rmapped = 0;
	bool alone = true;

	for (int i = 0; i < n; i++)
		if (mmu->slots[i].pobj->refs == 1)
			for (uint64_t p = 0; p < mmu->slots[i].npages; p++)
				rmapped += rmap_nr(pool_obj_rmap(mmu->slots[i].pobj, p)) +
					   (p % SPTE_ENTRIES ? 0 : rmap_nr(pool_obj_huge_rmap(mmu->slots[i].pobj, p)));
	shadow_mmu_stats(mmu, &st);
	if (st.tables_created - st.tables_freed != c->tables)
		return -EUCLEAN;
	for (int i = 0; i < n; i++)
		alone &= mmu->slots[i].pobj->refs == 1;
	if (alone && rmapped != c->leaves)
		return -EUCLEAN;
	return 0;
}

int shadow_mmu_check(struct shadow_mmu *mmu)
{
	struct check_ctx c = { 0 };
	int ret;

	c.seen = calloc(mmu->pool->nr_pages / CHAR_BIT + 1, 1);
	c.seen_w = calloc(mmu->pool->nr_pages / CHAR_BIT + 1, 1);
	if (!c.seen || !c.seen_w) {
		free(c.seen);
		free(c.seen_w);
		return -ENOMEM;
	}
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	ret = check_cow_map_locked(mmu, &c);
	for (unsigned int r = 0; r < mmu->nr_roots && !ret; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			ret = check_table_locked(mmu, mmu->roots[r].page, SHADOW_NO_PAGE, r, true, &c);
	if (!ret)
		ret = check_rmaps_locked(mmu);
	if (!ret && !mmu->sharing)
		ret = check_counts_locked(mmu, &c);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	for (int i = 0; i < SHADOW_MAX_SLOTS; i++)
		free(c.cow[i]);
	free(c.seen);
	free(c.seen_w);
	return ret;
}

/* ---- one VM: the tables it reaches ------------------------------------------ */

/* What a walk of the VM's tables reports for each link. */
typedef void (*link_visit_fn)(void *ctx, uint64_t cr3, uint32_t parent, unsigned int index, uint32_t child,
			      bool first);

/* Reports the link to @page (from @parent's entry @index, or root slot
 * @index when @parent is SHADOW_NO_PAGE), then, on the first visit of
 * @page (@seen: one bit per pool page), the links below it.  mmu_lock. */
static void walk_links_locked(struct shadow_mmu *mmu, uint64_t cr3, uint32_t parent, unsigned int index,
			      uint32_t page, uint8_t *seen, link_visit_fn fn, void *ctx)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *sp = mmu_page(mmu, page);
	const uint64_t *sptes = mmu_sptes(mmu, page);
	const bool first = !(seen[page / CHAR_BIT] & (1u << (page % CHAR_BIT)));

	seen[page / CHAR_BIT] |= (uint8_t)(1u << (page % CHAR_BIT));
	fn(ctx, cr3, parent, index, page, first);
	if (!first || sp->level <= 1)
		return;
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);

		if (spte_is_present(spte) && !spte_is_leaf(spte, sp->level) &&
		    shadow_pool_contains(mmu->pool, spte_addr(spte)))
			walk_links_locked(mmu, cr3, page, i, pool_page_index(spte_addr(spte)), seen, fn, ctx);
	}
}

/* Walks every cached root of @mmu and the tables below, under mmu_lock:
 * 0, or -ENOMEM (nothing reported). */
static int walk_links(struct shadow_mmu *mmu, link_visit_fn fn, void *ctx)
{
	size_t nr_pages = shadow_pool_nr_pages(mmu->pool);
	uint8_t *seen = calloc((nr_pages + CHAR_BIT - 1) / CHAR_BIT, 1);

	if (!seen)
		return -ENOMEM;
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			walk_links_locked(mmu, mmu->roots[r].cr3, SHADOW_NO_PAGE, r, mmu->roots[r].page, seen, fn,
					  ctx);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	free(seen);
	return 0;
}

struct usage_walk {
	struct shadow_mmu *mmu;
	struct shadow_table_usage *u;
};

/* Counts each table once, on its first visit. */
static void usage_visit(void *ctx, uint64_t cr3, uint32_t parent, unsigned int index, uint32_t page, bool first)
{
	struct usage_walk *w = ctx;
	const struct shadow_page *sp = mmu_page(w->mmu, page);

	(void)cr3, (void)parent, (void)index;
	if (!first)
		return;
	w->u->tables++;
	if (sp->level >= 1 && sp->level <= SHADOW_LEVELS)
		w->u->by_level[sp->level]++;
	if (__atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) > 1 || sp->canon)
		w->u->shared++;
	else
		w->u->private_++;
}

int shadow_mmu_table_usage(struct shadow_mmu *mmu, struct shadow_table_usage *usage)
{
	struct usage_walk w = { mmu, usage };

	memset(usage, 0, sizeof(*usage));
	return walk_links(mmu, usage_visit, &w);
}

/* The public description of table @page. */
static void table_ref(struct shadow_mmu *mmu, uint32_t page, struct shadow_table_ref *ref)
{
	const struct shadow_page *sp = mmu_page(mmu, page);

	*ref = (struct shadow_table_ref){
		.page = page,
		.alloc_gen = __atomic_load_n(&sp->alloc_gen, __ATOMIC_RELAXED),
		.level = __atomic_load_n(&sp->level, __ATOMIC_RELAXED),
		.canonical = sp->canon,
		.direct = sp->direct,
		.users = __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED),
	};
}

struct link_walk {
	struct shadow_mmu *mmu;
	shadow_link_fn fn;
	void *arg;
};

static void link_visit(void *ctx, uint64_t cr3, uint32_t parent, unsigned int index, uint32_t page, bool first)
{
	struct link_walk *w = ctx;
	struct shadow_table_ref p, c;

	(void)first;
	table_ref(w->mmu, page, &c);
	if (parent == SHADOW_NO_PAGE) {
		w->fn(w->arg, cr3, NULL, index, &c);
		return;
	}
	table_ref(w->mmu, parent, &p);
	w->fn(w->arg, cr3, &p, index, &c);
}

int shadow_mmu_for_each_link(struct shadow_mmu *mmu, shadow_link_fn fn, void *arg)
{
	struct link_walk w = { mmu, fn, arg };

	return walk_links(mmu, link_visit, &w);
}

/* ---- the whole pool: shadow_pool_check --------------------------------------- */

/* Is @mmu on the pool's list?  mmus_lock. */
static bool mmu_is_live_locked(struct shadow_pool *pool, struct shadow_mmu *mmu)
{
	umbra_mutex_assert_held(&pool->mmus_lock);
	for (struct shadow_mmu *m = pool->mmus; m; m = m->pool_next)
		if (m == mmu)
			return true;
	return false;
}

/* Is location @s in some object's reverse map for the leaf @spte?
 * objs_lock (the pool quiescent). */
static bool leaf_is_rmapped_locked(struct shadow_pool *pool, uint64_t spte, shadow_sptep_t s)
{
	umbra_mutex_assert_held(&pool->objs_lock);
	uint64_t mpa = spte_addr(spte);

	for (struct pool_obj *po = pool->objs; po; po = po->next) {
		uint32_t k;
		shadow_sptep_t t;

		if (mpa < po->mpa || (mpa - po->mpa) >> SHADOW_PAGE_SHIFT >= po->npages)
			continue;
		for_each_rmap_sptep(pool_obj_rmap(po, (mpa - po->mpa) >> SHADOW_PAGE_SHIFT), &pool->objs_lock,
				    k, t)
			if (t == s)
				return true;
		for_each_rmap_sptep(pool_obj_huge_rmap(po, (mpa - po->mpa) >> SHADOW_PAGE_SHIFT),
				    &pool->objs_lock, k, t)
			if (t == s && pool_page(pool, sptep_page(s))->level == 2)
				return true;
	}
	return false;
}

/* Every user of @sp (@page): a root in its live VM's root cache, or a
 * parent entry one level up that points here.  *@nr_users counted.
 * mmus_lock. */
static int check_page_users_locked(struct shadow_pool *pool, uint32_t page, uint32_t *nr_users)
{
	umbra_mutex_assert_held(&pool->mmus_lock);
	struct shadow_page *sp = pool_page(pool, page);
	int ret = 0;

	*nr_users = 0;
	umbra_mutex_lock(&sp->lock);
	for (struct shadow_page_user *u = sp->users; u && !ret; u = u->next) {
		(*nr_users)++;
		if (u->parent == SHADOW_NO_PAGE) {
			/* A root: its VM's root cache slot holds it. */
			if (sp->level != SPTE_LEVELS || !mmu_is_live_locked(pool, u->mmu) ||
			    u->index >= u->mmu->nr_roots || u->mmu->roots[u->index].page != page)
				ret = -EUCLEAN;
			continue;
		}
		/* Below a root: the parent entry points here. */
		if (u->parent >= pool->nr_pages || pool_page(pool, u->parent)->level != sp->level + 1 ||
		    u->index >= SPTE_ENTRIES)
			ret = -EUCLEAN;
		else if (spte_addr(spte_read(pool_entries(pool, u->parent) + u->index)) !=
			 pool_page_gpa(page))
			ret = -EUCLEAN;
	}
	umbra_mutex_unlock(&sp->lock);
	return ret;
}

/* Allocated page @page: its users, use count, canonical entry, and every
 * present entry (a reverse-mapped leaf, or a table one level down).
 * objs_lock and mmus_lock. */
static int check_page_locked(struct shadow_pool *pool, uint32_t page, size_t *in_use)
{
	umbra_mutex_assert_held(&pool->objs_lock);
	umbra_mutex_assert_held(&pool->mmus_lock);
	struct shadow_page *sp = pool_page(pool, page);
	uint64_t *sptes = pool_entries(pool, page);
	uint32_t nr_users = 0, present = 0;

	in_use[sp->level]++;
	if (check_page_users_locked(pool, page, &nr_users))
		return -EUCLEAN;
	if (!nr_users || __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) != nr_users)
		return -EUCLEAN;
	if (sp->canon && (sp->level > 2 || canon_table_get(sp->canon_obj, sp->canon_key) != page))
		return -EUCLEAN;
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);

		if (!spte_is_present(spte))
			continue;
		present++;
		if (spte_is_leaf(spte, sp->level)) {
			if (!leaf_is_rmapped_locked(pool, spte, sptep_make(page, i)))
				return -EUCLEAN;
		} else if (!shadow_pool_contains(pool, spte_addr(spte)) ||
			   pool_page(pool, pool_page_index(spte_addr(spte)))->level != sp->level - 1 ||
			   (sp->canon &&
			    !canon_child_is(sp, i, pool_page(pool, pool_page_index(spte_addr(spte)))))) {
			return -EUCLEAN;
		}
	}
	return present == __atomic_load_n(&sp->nr_present, __ATOMIC_RELAXED) ? 0 : -EUCLEAN;
}

/* Object @po: every reverse-map entry is a present leaf mapping that page;
 * a page's mapped bit is set exactly when its reverse map is not empty;
 * every canonical-array entry names a canonical table of @po at that key.
 * objs_lock (the pool quiescent). */
static int check_obj_locked(struct shadow_pool *pool, struct pool_obj *po)
{
	umbra_mutex_assert_held(&pool->objs_lock);
	int ret = 0;

	for (uint64_t r = 0; r < pool_obj_nr_runs(po->npages) && !ret; r++) {
		if (!pool_obj_run(po, r))
			continue; /* never used: nothing mapped, no canonical table */
		for (uint64_t p = r * SPTE_ENTRIES; p < (r + 1) * SPTE_ENTRIES && p < po->npages; p++) {
			uint32_t k;
			shadow_sptep_t s;

			for_each_rmap_sptep(pool_obj_rmap(po, p), &pool->objs_lock, k, s) {
				uint64_t spte = spte_read(pool_entries(pool, sptep_page(s)) + sptep_index(s));

				if (pool_page(pool, sptep_page(s))->level != 1 || !spte_is_present(spte) ||
				    spte_addr(spte) != po->mpa + (p << SHADOW_PAGE_SHIFT))
					ret = -EUCLEAN;
			}
			if (!(pool_obj_run(po, r)->mapped[p % SPTE_ENTRIES / 64] & (1ull << (p % 64))) !=
			    !rmap_nr(pool_obj_rmap(po, p)))
				ret = -EUCLEAN;
		}
		for (uint32_t k = (uint32_t)r * CANON_KEYS_PER_RUN; k < (r + 1) * CANON_KEYS_PER_RUN; k++) {
			uint32_t c = canon_table_get(po, k);

			if (c != SHADOW_NO_PAGE &&
			    (!pool_page(pool, c)->canon || pool_page(pool, c)->canon_obj != po ||
			     pool_page(pool, c)->canon_key != k))
				ret = -EUCLEAN;
		}
	}
	return ret;
}

int shadow_pool_check(struct shadow_pool *pool)
{
	size_t in_use[SPTE_LEVELS + 1] = { 0 };
	int ret = 0;

	/* Quiescent pool (the contract): the lists held still, and no stripe
	 * is needed to read the reverse maps. */
	umbra_mutex_lock(&pool->objs_lock);
	umbra_mutex_lock(&pool->mmus_lock);
	for (uint32_t page = 0; page < pool->nr_pages && !ret; page++)
		if (pool_page(pool, page)->level)
			ret = check_page_locked(pool, page, in_use);
	for (struct pool_obj *po = pool->objs; po && !ret; po = po->next)
		ret = check_obj_locked(pool, po);
	if (!ret)
		ret = page_refs_check_locked(pool); /* P2M node uses and page counts */
	umbra_mutex_unlock(&pool->mmus_lock);
	umbra_mutex_unlock(&pool->objs_lock);
	/* Pool accounting: the per-level counts are the allocated pages. */
	for (int l = 1; l <= SPTE_LEVELS && !ret; l++)
		if (shadow_pool_pages_in_use(pool, l) != in_use[l])
			ret = -EUCLEAN;
	return ret;
}
