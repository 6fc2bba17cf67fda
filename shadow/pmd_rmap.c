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
	umbra_mutex_lock(&mmu->tlbs_lock);
	for (struct shadow_tlb *tlb = mmu->tlbs; tlb; tlb = tlb->next) {
		tlb->ops->flush_all(tlb);
		mmu_stat_inc(mmu, flushes_all);
	}
	umbra_mutex_unlock(&mmu->tlbs_lock);
	mmu_stat_inc(mmu, remote_flushes);
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
 * The pmd-rmap walk: flush every VM that reaches table @page (level
 * @level), by following the users lists up to the roots.  A root's user
 * names its VM exactly; it is flushed while the root's table lock is held,
 * so it cannot be destroyed meanwhile (destroy unlinks its roots under that
 * lock).  @self is flushed only when the path is shared (otherwise its own
 * batch flushes it, by va).  Each VM is flushed once per batch (@gen).  A
 * parent freed and reused between two steps only costs extra flushes: every
 * VM that reached @page through it flushed before dropping it.
 */
static void pmd_rmap_flush_up(struct shadow_mmu *self, uint32_t page, int level, bool shared,
			      uint64_t gen)
{
	struct shadow_page *sp = mmu_page(self, page);
	struct u32_vec parents;

	u32_vec_init(&parents);
	umbra_mutex_lock(&sp->lock);
	/* Freed and reused since we read the link? (level is written by
	 * alloc/free without a lock, so read it atomically; alloc resets what
	 * we read here under this lock.) */
	if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) != level) {
		umbra_mutex_unlock(&sp->lock);
		return;
	}
	shared |= __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) > 1 || sp->canon;
	for (struct shadow_page_user *u = sp->users; u; u = u->next) {
		if (u->parent == SHADOW_NO_PAGE) {
			if ((u->mmu != self || shared) &&
			    __atomic_exchange_n(&u->mmu->flush_mark, gen, __ATOMIC_ACQ_REL) != gen)
				mmu_flush_remote(u->mmu);
			continue;
		}
		if (u32_vec_push(&parents, u->parent)) {
			/* No memory: flush everyone instead. */
			umbra_mutex_unlock(&sp->lock);
			goto flush_everyone;
		}
	}
	umbra_mutex_unlock(&sp->lock);
	for (uint32_t k = 0; k < parents.nr; k++)
		if (level < SPTE_LEVELS)
			pmd_rmap_flush_up(self, parents.v[k], level + 1, shared, gen);
	u32_vec_fini(&parents);
	return;
flush_everyone:
	u32_vec_fini(&parents);
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
	umbra_mutex_assert_held(&mmu->mmu_lock);
	if (b->tables_overflow) {
		flush_every_mmu(mmu->pool, mmu);
	} else if (b->nr_tables) {
		uint64_t gen = __atomic_add_fetch(&mmu->pool->flush_gen, 1, __ATOMIC_RELAXED);

		for (unsigned int k = 0; k < b->nr_tables; k++)
			pmd_rmap_flush_up(mmu, b->tables[k], 1, false, gen);
	}
	b->nr_tables = 0;
	b->tables_overflow = false;
}
