/*
 * 2 MiB shadow leaves (docs/shadow.md, "2 MiB shadow leaves").  Where the
 * guest maps a 2 MiB page and the P2M maps its 512 frames to a whole 2 MiB
 * run of one private slot's object, in order, at a 2 MiB-aligned machine
 * address, every page of it resident, the fault installs one 2 MiB leaf in
 * the VM's shadow of the guest's page directory instead of a level-1 table
 * of 4 KiB leaves: one exit maps 2 MiB.  The leaf is in the run's reverse
 * map of 2 MiB leaves (struct pool_obj_run.huge), so an invalidation of any
 * page of the run finds it: one that covers the whole run clears it, one
 * that covers part of it splits it (as KVM splits huge pages): a level-1
 * table takes its place, mapping every page of the run but the invalidated
 * ones, so the rest of the run stays mapped without a fault.
 *
 * Only where nothing else needs a page's own leaf: a VM that was never
 * cloned (copy-on-write is per page), a slot that is not a shared segment
 * (canonical tables are 4 KiB), not read-only, not a layer, and, with a
 * pager, every page resident.  Access tracking treats the leaf as a whole
 * (access.c): clearing any page of the run hides it, and the access that
 * restores it marks the whole run young.
 *
 * Locks: under the VM's mmu_lock in write mode; the leaf and its reverse
 * map change under the run's stripe (the leaf rule), entries under their
 * table's lock (spte_set_locked).
 */
#include <errno.h>

#include "iter.h"
#include "mmu_internal.h"

/* Does the P2M map the run of guest frames from @gfn0 to pages [@page0,
 * @page0 + 511] of @slot, in order, and is each resident?  mmu_lock. */
static bool huge_backing_is_whole_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot,
					 uint64_t gfn0, uint64_t page0)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_slot_ops *ops = slot->s.ops;

	if (gfn0 + SPTE_ENTRIES > mmu->p2m_pages || page0 + SPTE_ENTRIES > slot->npages)
		return false;
	if (ops && ops->get_page && !ops->is_resident)
		return false;
	/* A run touched in order is whole last: its last page first, so that
	 * a fault of a run being filled refuses at once. */
	if (ops && ops->get_page && !ops->is_resident(slot->s.priv, page0 + SPTE_ENTRIES - 1))
		return false;
	for (uint64_t k = 0; k < SPTE_ENTRIES; k++) {
		if (p2m_entry_lookup_locked(mmu, gfn0 + k, NULL) !=
		    p2m_entry_make(slot->id, page0 + k))
			return false;
		if (ops && ops->get_page && !ops->is_resident(slot->s.priv, page0 + k))
			return false;
	}
	return true;
}

int install_huge_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
			struct shadow_mmu_slot *slot, uint64_t page, uint64_t seq, struct zap_batch *b,
			uint32_t *leaf_table)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const unsigned int rights = leaf_rights(w->rights, w->dirty);
	const uint64_t gfn0 = spte_leaf_addr(w->entry[2], 2) >> SHADOW_PAGE_SHIFT;
	const uint64_t off = (w->pa >> SHADOW_PAGE_SHIFT) - gfn0;
	const unsigned int i = SPTE_INDEX(w->va, 2);
	struct umbra_mutex *stripe;
	uint64_t page0, mpa, spte, old;
	struct shadow_page *sp;
	uint32_t pd;
	int ret;

	if (!mmu->huge_leaves || mmu->cloned || w->leaf_level != 2 || slot->shared ||
	    slot->s.readonly || __atomic_load_n(&slot->layer, __ATOMIC_ACQUIRE) || page < off)
		return HUGE_REFUSED;
	page0 = page - off;
	mpa = slot->s.mpa + (page0 << SHADOW_PAGE_SHIFT);
	/* The fault checked its own page's sequence; the leaf maps the run's
	 * other pages too: none may have been invalidated since the fault's
	 * read_begin (is_resident may answer for a page whose invalidation is
	 * in progress, as for fault-around). */
	if (page0 % SPTE_ENTRIES || mpa % SPTE_LEVEL_SIZE(2) ||
	    !huge_backing_is_whole_locked(mmu, slot, gfn0, page0) ||
	    notifier_read_retry(slot->s.obj, page0, page0 + SPTE_ENTRIES - 1, seq))
		return HUGE_REFUSED;
	ret = install_tables_locked(mmu, root, w, rights, rights & SHADOW_RIGHT_WRITE, 2, b, &pd);
	if (ret)
		return ret;
	sp = mmu_page(mmu, pd);
	if (sp->canon || sp->direct || table_is_shared(mmu, pd))
		return HUGE_REFUSED; /* the 4 KiB path below this directory */
	spte = make_huge_leaf(mmu, mpa, rights);
	old = spte_read(mmu_sptes(mmu, pd) + i);
	if (old == spte) {
		/* Another vCPU installed it, or it was access-tracked. */
		pool_entry_mirror(mmu->pool, pd, i);
	} else {
		if (spte_is_present(old))
			zap_spte_locked(mmu, pd, i, b); /* a level-1 table, or other rights */
		stripe = pool_obj_stripe(slot->pobj, page0);
		umbra_mutex_lock(stripe);
		ret = pool_obj_huge_rmap_add(slot->pobj, page0 / SPTE_ENTRIES, sptep_make(pd, i));
		if (!ret)
			spte_set_locked(mmu, pd, i, spte);
		umbra_mutex_unlock(stripe);
		if (ret)
			return ret;
		mmu->huge_used = true;
		mmu_stat_inc(mmu, installs);
		mmu_stat_inc(mmu, huge_installs);
	}
	pool_obj_mark_run_young(slot->pobj, page0);
	*leaf_table = SHADOW_NO_PAGE;
	return 0;
}

/* Is every user of table @pd this VM (so that its entry may turn into a
 * new table of this VM's)?  mmu_lock, no table lock. */
static bool table_is_ours(struct shadow_mmu *mmu, uint32_t pd)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, pd);
	bool ours = true;

	umbra_mutex_lock(&sp->lock);
	for (struct shadow_page_user *u = sp->users; u; u = u->next)
		ours &= u->mmu == mmu;
	umbra_mutex_unlock(&sp->lock);
	return ours && !sp->canon;
}

bool huge_leaf_matches(struct shadow_mmu *mmu, uint64_t spte, const struct role *role,
		       unsigned int *rights)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot;
	uint64_t page;

	if (p2m_get(mmu, role->gpa >> SHADOW_PAGE_SHIFT, &slot, &page) || page % SPTE_ENTRIES)
		return false;
	for (unsigned int r = role->access;; r &= ~SHADOW_RIGHT_WRITE) {
		/* The leaf a fault installs now, or, installed before the
		 * guest's D, its read-only form. */
		if (spte == make_huge_leaf(mmu, slot->s.mpa + (page << SHADOW_PAGE_SHIFT), r)) {
			if (rights)
				*rights = r;
			return true;
		}
		if (!(r & SHADOW_RIGHT_WRITE))
			return false;
	}
}

/* Clears the leaves of level-1 table @pt set so far (entries below @upto)
 * and frees it: a split that could not finish.  mmu_lock, the run's
 * stripe. */
static void split_unwind_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t r,
				uint32_t pt, unsigned int upto)
{
	for (unsigned int k = 0; k < upto; k++) {
		if (!spte_is_present(spte_set_locked(mmu, pt, k, 0)))
			continue;
		pool_obj_rmap_del(slot->pobj, r * SPTE_ENTRIES + k, sptep_make(pt, k));
	}
	pool_free_index(mmu->pool, pt);
}

/*
 * Splits 2 MiB leaf @old (entry @i of @pd, mapping all of run @r of
 * @slot's object) while pages [@first, @last] of the run are invalidated:
 * a new level-1 table of this VM's maps the run's other pages with the
 * leaf's rights, and the entry points at it.  False (nothing changed) if
 * @pd is not this VM's alone, the guest's entry no longer maps the page as
 * the leaf does, or there is no memory: the caller clears the leaf.
 * mmu_lock, the run's stripe, no table lock.
 */
static bool huge_split_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t r,
			      uint32_t pd, unsigned int i, uint64_t old, uint64_t first,
			      uint64_t last, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const uint64_t mpa = slot->s.mpa + (r * SPTE_ENTRIES << SHADOW_PAGE_SHIFT);
	unsigned int rights, k;
	struct role role;
	uint32_t pt;

	/* The new table shadows what the guest's entry maps now, with the
	 * leaf's rights: only if the leaf still shadows that. */
	if (!table_is_ours(mmu, pd) || !expect_large_page_locked(mmu, pd, i, &role) ||
	    !huge_leaf_matches(mmu, old, &role, &rights))
		return false;
	role.access = (uint8_t)rights;
	if (table_alloc_locked(mmu, 1, &role, mmu_page(mmu, pd)->gva + i * SPTE_LEVEL_SIZE(2), &pt))
		return false;
	for (k = 0; k < SPTE_ENTRIES; k++) {
		const uint64_t p = r * SPTE_ENTRIES + k;

		if (p >= first && p <= last)
			continue;
		if (pool_obj_rmap_add(slot->pobj, p, sptep_make(pt, k)))
			break;
		spte_set_locked(mmu, pt, k, make_leaf(mmu, mpa + ((uint64_t)k << SHADOW_PAGE_SHIFT), rights,
						      false));
	}
	if (k < SPTE_ENTRIES || pool_user_add(mmu->pool, pt, mmu, pd, i)) {
		split_unwind_locked(mmu, slot, r, pt, k);
		return false;
	}
	/* Release store: the new table's entries are visible before it is. */
	spte_set_locked(mmu, pd, i, spte_make_table(pool_page_gpa(pt)));
	pool_obj_huge_rmap_del(slot->pobj, r, sptep_make(pd, i));
	table_hash_add_locked(mmu, pt);
	mmu_stat_inc(mmu, tables_created);
	mmu_stat_inc(mmu, huge_splits);
	b->zapped++;
	b->flush_all = true; /* a TLB may hold the 2 MiB translation */
	batch_add_table(b, pd);
	return true;
}

void huge_zap_run_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, struct pool_obj_run *run,
			 uint64_t r, uint64_t first, uint64_t last, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	umbra_mutex_assert_held(pool_obj_stripe(slot->pobj, r * SPTE_ENTRIES));
	const bool whole = first == r * SPTE_ENTRIES && last == r * SPTE_ENTRIES + SPTE_ENTRIES - 1;

	while (rmap_nr(&run->huge)) {
		shadow_sptep_t s = rmap_get(&run->huge, run->huge.nr - 1);
		const uint32_t pd = sptep_page(s);
		const unsigned int i = sptep_index(s);
		uint64_t old = spte_read(mmu_sptes(mmu, pd) + i);

		if (!whole && spte_is_present(old) &&
		    huge_split_locked(mmu, slot, r, pd, i, old, first, last, b))
			continue;
		old = spte_set_locked(mmu, pd, i, 0);
		rmap_del(&run->huge, s);
		if (!spte_is_present(old))
			continue;
		b->zapped++;
		b->flush_all = true;
		batch_add_table(b, pd);
	}
}

/* Clears the 2 MiB leaves below table @page.  mmu_lock. */
static void huge_zap_below_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b)
{
	const int level = mmu_page(mmu, page)->level;
	unsigned int i;

	for_each_present_spte(mmu, page, i) {
		const uint64_t e = spte_read(mmu_sptes(mmu, page) + i);

		if (level == 2 && spte_is_leaf(e, 2))
			zap_spte_locked(mmu, page, i, b);
		else if (level > 2 && !spte_is_leaf(e, level))
			huge_zap_below_locked(mmu, pool_page_index(spte_addr(e)), b);
	}
}

void huge_zap_all_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	for (unsigned int n = 0; n < mmu->nr_roots; n++)
		if (mmu->roots[n].page != SHADOW_NO_PAGE)
			huge_zap_below_locked(mmu, mmu->roots[n].page, b);
}
