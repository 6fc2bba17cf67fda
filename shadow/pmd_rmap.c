/*
 * The remote flush (the "pmd-rmap"): a leaf cleared in place in a table that
 * other VMs reach must leave their vCPUs' TLBs too.  The VMs that reach a
 * table are found by following its users lists (struct shadow_page_user) up
 * to the roots, whose users name their VM exactly.
 *
 * Locks: called with the zapping VM's mmu_lock (and, from a non-local zap,
 * the stripe of the cleared pages); takes one table lock at a time to read a
 * users list, then, for each VM found, that VM's tlbs_lock (never its
 * mmu_lock); the flush-everyone fallback takes pool->mmus_lock.
 */
#include "mmu_internal.h"
#include "u32_vec.h"

void mmu_flush_remote(struct shadow_mmu *mmu)
{
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_FLUSH);
	uint64_t n = 0;

	__atomic_fetch_add(&mmu->zap_gen, 1, __ATOMIC_RELEASE); /* stale marks */
	umbra_mutex_lock(&mmu->tlbs_lock);
	for (struct shadow_tlb *tlb = mmu->tlbs; tlb; tlb = tlb->next) {
		tlb->ops->flush_all(tlb);
		mmu_stat_inc(mmu, flushes_all);
		n++;
	}
	umbra_mutex_unlock(&mmu->tlbs_lock);
	mmu_stat_inc(mmu, remote_flushes);
	if (t0)
		umbra_trace_span(UMBRA_TRACE_FLUSH, "remote flush", t0, &(struct umbra_trace_args){
			.key = { "vm", "inv", "vcpus" },
			.val = { mmu_trace_id(mmu), umbra_trace_current_invalidation(), n } });
}

/* Flushes every vCPU of every MMU of @pool but @except (NULL: none). */
static void flush_every_mmu(struct shadow_pool *pool, struct shadow_mmu *except)
{
	umbra_mutex_lock(&pool->mmus_lock);
	for (struct shadow_mmu *m = pool->mmus; m; m = m->pool_next)
		if (m != except)
			mmu_flush_remote(m);
	umbra_mutex_unlock(&pool->mmus_lock);
}

/*
 * One step of the pmd-rmap walk: the users of table @page (at @level), with
 * @shared telling whether a table below on the way was shared.  A parent
 * freed and reused between two steps is detected by its level; one reused
 * at the same level only makes the walk reach more VMs than reach the first
 * page (for a flush, extra flushes: every VM that reached the page through
 * it flushed before dropping it; for a fill's check, extra VMs compared).
 */
static int pmd_rmap_walk_up(struct shadow_mmu *self, uint32_t page, int level, bool shared,
			    bool (*fn)(void *ctx, struct shadow_mmu *vm, bool path_shared),
			    void *ctx)
{
	struct shadow_page *sp = mmu_page(self, page);
	struct u32_vec parents;
	int ret = 1;

	u32_vec_init(&parents);
	umbra_mutex_lock(&sp->lock);
	/* Freed and reused since we read the link? (level is written by
	 * alloc/free without a lock, so read it atomically; alloc resets what
	 * we read here under this lock.) */
	if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) != level) {
		umbra_mutex_unlock(&sp->lock);
		return 1;
	}
	shared |= __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) > 1 || sp->canon;
	for (struct shadow_page_user *u = sp->users; u && ret == 1; u = u->next) {
		if (u->parent == SHADOW_NO_PAGE)
			ret = fn(ctx, u->mmu, shared) ? 1 : 0;
		else if (u32_vec_push(&parents, u->parent))
			ret = -ENOMEM;
	}
	umbra_mutex_unlock(&sp->lock);
	for (uint32_t k = 0; k < parents.nr && ret == 1; k++)
		if (level < SPTE_LEVELS)
			ret = pmd_rmap_walk_up(self, parents.v[k], level + 1, shared, fn, ctx);
	u32_vec_fini(&parents);
	return ret;
}

int pmd_rmap_for_each_root(struct shadow_mmu *self, uint32_t page, int level,
			   bool (*fn)(void *ctx, struct shadow_mmu *vm, bool path_shared),
			   void *ctx)
{
	umbra_rwlock_assert_held_write(&self->mmu_lock);
	return pmd_rmap_walk_up(self, page, level, false, fn, ctx);
}

struct alone {
	struct shadow_mmu *self;
	unsigned int roots;
};

static bool root_is_ours(void *ctx, struct shadow_mmu *vm, bool path_shared)
{
	struct alone *a = ctx;

	(void)path_shared;
	a->roots++;
	return vm == a->self;
}

bool table_is_ours_alone(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	const uint64_t gen = mmu->clone_gen;
	struct alone a = { .self = mmu };

	if (__atomic_load_n(&sp->canon, __ATOMIC_RELAXED))
		return false;
	if (__atomic_load_n(&sp->private_mmu, __ATOMIC_RELAXED) == mmu &&
	    __atomic_load_n(&sp->private_gen, __ATOMIC_RELAXED) == gen)
		return true;
	/* No memory for the walk, or no root found (being freed): not ours. */
	if (pmd_rmap_for_each_root(mmu, page, sp->level, root_is_ours, &a) != 1 || !a.roots)
		return false;
	__atomic_store_n(&sp->private_gen, gen, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->private_mmu, mmu, __ATOMIC_RELAXED);
	return true;
}

bool table_is_shared(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);

	if (sp->canon)
		return true;
	/* Its one user is the caller's entry, in a table this VM alone
	 * reaches (the descent is top-down). */
	if (__atomic_load_n(&sp->use_count, __ATOMIC_ACQUIRE) <= 1)
		return false;
	return !table_is_ours_alone(mmu, page);
}

struct flush_up {
	struct shadow_mmu *self;
	uint64_t gen;
};

/* Flushes @vm once per batch (gen), @self only when its path is shared
 * (otherwise its own batch flushes it, by va).  Under the root's table
 * lock. */
static bool flush_up_one(void *ctx, struct shadow_mmu *vm, bool path_shared)
{
	struct flush_up *f = ctx;

	if ((vm != f->self || path_shared) &&
	    __atomic_exchange_n(&vm->flush_mark, f->gen, __ATOMIC_ACQ_REL) != f->gen)
		mmu_flush_remote(vm);
	return true;
}

/*
 * The pmd-rmap flush: every VM that reaches table @page (a level-1 table in
 * which a leaf was cleared in place), found by following the users lists up
 * to the roots.  A root's user names its VM exactly; it is flushed while the
 * root's table lock is held, so it cannot be destroyed meanwhile.  Each VM
 * is flushed once per batch (@gen).  Without memory for the walk, every VM
 * of the pool is flushed.
 */
static void pmd_rmap_flush_up(struct shadow_mmu *self, uint32_t page, uint64_t gen)
{
	struct flush_up f = { .self = self, .gen = gen };

	if (pmd_rmap_for_each_root(self, page, 1, flush_up_one, &f) < 0)
		flush_every_mmu(self->pool, NULL);
}

/*
 * The remote half of a batch: flush every VM that reaches a table in which
 * a leaf was cleared in place (pmd-rmap walk), or every VM of the pool on
 * overflow.  A non-local zap calls it with the stripe of the cleared pages
 * held, so that a later clearer of the same page, which finds the reverse
 * map already empty, cannot return before these flushes are done (two
 * invalidations of one page racing).
 */
void batch_flush_remote(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (b->tables_overflow) {
		flush_every_mmu(mmu->pool, mmu);
	} else if (b->nr_tables) {
		uint64_t gen = __atomic_add_fetch(&mmu->pool->flush_gen, 1, __ATOMIC_RELAXED);

		for (unsigned int k = 0; k < b->nr_tables; k++)
			pmd_rmap_flush_up(mmu, b->tables[k], gen);
	}
	b->nr_tables = 0;
	b->tables_overflow = false;
}
