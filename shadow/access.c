/*
 * Access tracking without hardware A bits (docs/shadow.md, "Access
 * tracking").  The CPU never writes the pool (A is preset in every shadow
 * entry, spte.h), so the shadow MMU tracks use itself, as KVM does with
 * access-tracked SPTEs where A/D bits are unavailable:
 *
 *  - each page of an object placed in the pool has a young byte
 *    (pool_obj.young), shared by every VM of the pool that maps the page:
 *    set by each fault that maps the page (an install, or the fast restore
 *    below), so a page is young when any VM touched it since the last clear;
 *  - clearing it makes every leaf that maps the page *access-tracked*: the
 *    leaf's visible copy (what the CPU walks) becomes not present while its
 *    private copy (what umbra reads) keeps every bit.  Nothing else changes:
 *    the reverse map, the table's counts, sync and the checkers see the
 *    private leaf, still present;
 *  - the next access through such a leaf faults; the fault's fast path
 *    walks the private shadow tables (no guest walk), finds the leaf
 *    present and granting the access, copies it back to the visible copy
 *    and marks the page young: one exit.
 *
 * Restoring is safe without the notifier's sequence/retry protocol: it
 * installs nothing new.  The private leaf is cleared (both copies, under
 * its table lock) by every invalidation, sync or zap before they flush;
 * a restore copies it under the same table lock, so it either restores a
 * leaf that an invalidation will still clear and flush, or copies a leaf
 * already cleared (the access faults again and takes the slow path).
 *
 * Tracking does not flush TLBs (as Linux's x86 ptep_clear_flush_young does
 * not): a vCPU that still caches a translation of the page keeps using it
 * without faulting, and the page looks old until that TLB entry is dropped
 * (any flush, a CR3 load).  It may make a page look colder; it never loses
 * a translation's content.
 *
 * Locks: the clear takes the page's stripe and each leaf's table lock with
 * try-locks only (a contended lock: the page is reported young, not
 * cleared), never mmu_lock, and does not wait for vCPUs: it never sleeps.
 * The fast path runs under the faulting VM's mmu_lock.
 */
#include "mmu_internal.h"

/* Makes leaf @s access-tracked: its visible copy not present, the private
 * copy unchanged.  False if its table lock is contended.  The stripe of the
 * page it maps held. */
static bool leaf_track(struct shadow_pool *pool, shadow_sptep_t s)
{
	struct shadow_page *sp = pool_page(pool, sptep_page(s));
	const uint64_t *entry = pool_entries(pool, sptep_page(s)) + sptep_index(s);
	uint64_t *visible = pool_visible_entries(pool, sptep_page(s)) + sptep_index(s);

	if (!umbra_mutex_trylock(&sp->lock))
		return false;
	__atomic_store_n(&pool->young_tracked, true, __ATOMIC_RELAXED);
	spte_write(visible, spte_read(entry) & ~SPTE_PRESENT);
	umbra_mutex_unlock(&sp->lock);
	return true;
}

int pool_obj_clear_young(struct shadow_pool *pool, struct pool_obj *po, uint64_t page,
			 uint64_t *tracked)
{
	struct umbra_mutex *stripe = pool_obj_stripe(po, page);
	struct shadow_rmap *rmap = pool_obj_rmap(po, page);
	shadow_sptep_t s;
	bool all = true;
	uint32_t i;

	/* Old: its leaves are tracked already (the invariant, docs/shadow.md),
	 * e.g. by another VM's callback. */
	if (!pool_obj_is_young(po, page))
		return 0;
	if (!umbra_mutex_trylock(stripe))
		return 1;
	/*
	 * Clear first, then track: a fault that makes a leaf visible marks
	 * the page after, so either this tracks that leaf (its table lock
	 * orders the two) or the mark comes after the clear and the page
	 * stays young.  Clearing after tracking could lose the mark of a leaf
	 * restored in between.
	 */
	pool_obj_clear_young_mark(po, page);
	for_each_rmap_sptep(rmap, stripe, i, s) {
		if (leaf_track(pool, s))
			(*tracked)++;
		else
			all = false;
	}
	/* A 2 MiB leaf over the page's run: tracked whole (the run's other
	 * pages stay young, with no visible leaf, until an access restores
	 * it and marks them all). */
	for_each_rmap_sptep(pool_obj_huge_rmap(po, page), stripe, i, s) {
		if (leaf_track(pool, s))
			(*tracked)++;
		else
			all = false;
	}
	if (!all)
		pool_obj_mark_young(po, page); /* a leaf may still be visible */
	umbra_mutex_unlock(stripe);
	return 1;
}

/*
 * The fault's fast path: if the private shadow path of @va under root
 * @root reaches a present leaf that grants @access, copy the path and the
 * leaf to the visible copy, mark the page young and return true.  False:
 * the fault needs the slow path (guest walk, install).  mmu_lock.
 */
static bool fast_restore_locked(struct shadow_mmu *mmu, uint32_t root, uint64_t va,
				unsigned int access)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	unsigned int rights = SHADOW_RIGHTS_ALL, idx[SPTE_LEVELS + 1];
	uint32_t table[SPTE_LEVELS + 1];
	struct shadow_mmu_slot *slot;
	uint64_t e = 0, page;
	int level;

	table[SPTE_LEVELS] = root;
	for (level = SPTE_LEVELS; level >= 1; level--) {
		idx[level] = SPTE_INDEX(va, level);
		e = spte_read(mmu_sptes(mmu, table[level]) + idx[level]);
		if (!spte_is_present(e))
			return false;
		rights &= walk_entry_rights(&mmu->mode, e);
		if (spte_is_leaf(e, level))
			break;
		table[level - 1] = pool_page_index(spte_addr(e));
	}
	if (level == 3 || shadow_permission_fault(&mmu->mode, rights, access))
		return false; /* shadow leaves are 4 KiB or 2 MiB */
	slot = mmu_mpa_to_slot(mmu, spte_addr(e), &page);
	if (!slot)
		return false;
	for (int l = SPTE_LEVELS; l >= level; l--)
		pool_entry_mirror(mmu->pool, table[l], idx[l]);
	if (level == 2) /* a 2 MiB leaf: the whole run is mapped, and young */
		pool_obj_mark_run_young(slot->pobj, page);
	else
		pool_obj_mark_young(slot->pobj, page);
	return true;
}

bool fault_fast_restore(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, unsigned int access)
{
	struct shadow_root *root;
	bool fixed = false;

	/* No leaf of the pool was ever hidden: the slow path (which also
	 * repairs the visible copy) serves every fault, without a second
	 * mmu_lock round trip. */
	if (!__atomic_load_n(&mmu->pool->young_tracked, __ATOMIC_RELAXED))
		return false;
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	if (root)
		fixed = fast_restore_locked(mmu, root->page, va, access);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	if (fixed)
		mmu_stat_inc(mmu, fast_restores);
	return fixed;
}
