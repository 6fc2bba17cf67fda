/*
 * Privatize (unshare) and the local zap.  A change for this VM only (a P2M
 * redirect, a copy-on-write break) must not change what any other VM
 * reaches: this VM's paths to a leaf are found by walking the users lists up
 * from the leaf's table (find_chain), the shared tables on each path are
 * copied into private write-protected copies (table_copy_locked), and the
 * leaf is cleared in our copy.  table_wrprot_locked removes W from a private
 * table before an entry above it grants W again.
 *
 * Locks: every function here runs under the VM's mmu_lock (asserted), with
 * no stripe held; leaves are read again and written under their page's
 * stripe (one at a time), table users lists under one table lock at a time.
 * No lock of any other VM is taken (docs/sharing.md, the lock-free
 * use-count protocol).
 */
#include "mmu_internal.h"
#include "u32_vec.h"

/*
 * One link of a path from one of this VM's roots down to a leaf: entry
 * @index of table @table.  chain[k] is an entry of a level k + 1 table;
 * chain[CHAIN_ROOT] is in our root, chain[0] is the leaf.
 */
struct chain_link {
	uint32_t table;
	unsigned int index;
};

#define CHAIN_ROOT (SPTE_LEVELS - 1) /* leaves live in level-1 tables */

/*
 * Finds a path from one of this VM's roots down to table @page (at @level),
 * filling chain[depth..]: 1 if found, 0 if we do not reach @page, -ENOMEM.
 * A link whose parent entry no longer points at @page is skipped: its entry
 * was cleared or redirected (to a copy) and its put is pending until the
 * batch's flush, or it is another VM's link changing under us.  The links
 * that are ours cannot change under our mmu_lock, so a path found is valid.
 */
static int find_chain(struct shadow_mmu *mmu, uint32_t page, int level, struct chain_link *chain,
		      int depth)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	struct u32_vec up;
	bool root = false;
	int ret = 0;

	u32_vec_init(&up);
	umbra_mutex_lock(&sp->lock);
	/* Freed and reused since we read the link? (level is written by
	 * alloc/free without a lock, so read it atomically; alloc resets what
	 * we read here under this lock.) */
	if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) != level) {
		umbra_mutex_unlock(&sp->lock);
		return 0;
	}
	for (struct shadow_page_user *u = sp->users; u && !root; u = u->next) {
		if (u->parent == SHADOW_NO_PAGE)
			root = u->mmu == mmu && mmu->roots[u->index].page == page;
		else if (!ret && level < SPTE_LEVELS)
			ret = u32_vec_push(&up, sptep_make(u->parent, u->index));
	}
	umbra_mutex_unlock(&sp->lock);
	if (root)
		ret = 1;
	for (uint32_t k = 0; k < up.nr && !ret; k++) {
		uint32_t parent = sptep_page(up.v[k]);
		unsigned int i = sptep_index(up.v[k]);
		uint64_t e = spte_read(mmu_sptes(mmu, parent) + i);

		if (!spte_is_present(e) || spte_is_leaf(e, level + 1) ||
		    pool_page_index(spte_addr(e)) != page)
			continue;
		chain[depth] = (struct chain_link){ .table = parent, .index = i };
		ret = find_chain(mmu, parent, level + 1, chain, depth + 1);
	}
	u32_vec_fini(&up);
	return ret;
}

/* Does the path from our root down still hold (our root and the tables
 * below it that we hold cannot change under our mmu_lock)? */
static bool chain_is_valid(struct shadow_mmu *mmu, const struct chain_link *chain)
{
	for (int k = CHAIN_ROOT; k >= 1; k--) {
		uint64_t e = spte_read(mmu_sptes(mmu, chain[k].table) + chain[k].index);

		if (!spte_is_present(e) || spte_is_leaf(e, k + 1) ||
		    pool_page_index(spte_addr(e)) != chain[k - 1].table)
			return false;
	}
	return true;
}

/* The linear address the path leads to. */
static uint64_t chain_va(const struct chain_link *chain)
{
	uint64_t va = 0;

	for (int k = CHAIN_ROOT; k >= 0; k--)
		va |= (uint64_t)chain[k].index << SPTE_LEVEL_SHIFT(k + 1);
	return shadow_va_canonical(va);
}

/* Privatizes the shared tables on the path, top-down (each copy makes the
 * next table down shared), then clears the leaf in our own copy; if a copy
 * fails, leaves the shared table instead (zaps our entry to it). */
static void chain_unshare_locked(struct shadow_mmu *mmu, struct chain_link *chain,
				 struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const uint64_t va = chain_va(chain);

	for (int k = CHAIN_ROOT - 1; k >= 0; k--) {
		uint32_t copy;

		if (!table_is_shared(mmu, chain[k].table))
			continue;
		if (table_copy_locked(mmu, chain[k + 1].table, chain[k + 1].index, chain[k].table,
				      va & SPTE_LEVEL_MASK(k + 2), b, &copy)) {
			zap_spte_locked(mmu, chain[k + 1].table, chain[k + 1].index, b);
			return;
		}
		chain[k].table = copy;
		/* An entry the copy could not take (no memory) is not in it:
		 * our path ends there (it faults back). */
		if (k > 0 && !spte_is_present(spte_read(mmu_sptes(mmu, copy) + chain[k].index)))
			return;
	}
	zap_spte_locked(mmu, chain[0].table, chain[0].index, b);
}

/* The fallback of a local zap: clear leaf @s in place, for every VM that
 * reaches it (they refault), as an invalidation does. */
static void zap_leaf_everywhere_locked(struct shadow_mmu *mmu, shadow_sptep_t s,
				       struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (spte_is_present(leaf_clear(mmu, sptep_page(s), sptep_index(s), b)))
		batch_add_table(b, sptep_page(s));
}

/*
 * Local zap of leaf @s: this VM stops reaching it, without changing what
 * any other VM reaches.  On each of our paths to it, the topmost shared
 * table is left (our entry to it, in a table we alone reach, is zapped), or,
 * if nothing on the path is shared, the leaf itself is cleared.  Returns
 * true if it changed anything.  Each round removes at least one of our
 * paths (the leaf is cleared, an entry of ours is zapped, or our entry to
 * the leaf's table now points at a copy, its old link skipped by
 * find_chain): it ends when none is left.
 */
static bool zap_local_locked(struct shadow_mmu *mmu, shadow_sptep_t s, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct chain_link chain[SPTE_LEVELS + 1];
	bool changed = false;

	for (;;) {
		chain[0] = (struct chain_link){ .table = sptep_page(s), .index = sptep_index(s) };
		if (!spte_is_present(spte_read(mmu_sptes(mmu, chain[0].table) + chain[0].index)))
			return changed;
		int found = find_chain(mmu, chain[0].table, 1, chain, 1);

		if (!found)
			return changed; /* we do not reach it */
		if (found < 0 || !chain_is_valid(mmu, chain)) {
			/* No memory for the walk up (or a path that changed,
			 * which find_chain does not return): never leave the
			 * mapping, clear it for everyone. */
			zap_leaf_everywhere_locked(mmu, s, b);
			return true;
		}
		changed = true;
		chain_unshare_locked(mmu, chain, b);
	}
}

/* Copies the reverse map of page @p of @slot into @snap, under its stripe:
 * 0 or -ENOMEM. */
static int rmap_snapshot(struct shadow_mmu_slot *slot, uint64_t p, struct u32_vec *snap)
{
	struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, p);
	shadow_sptep_t s;
	uint32_t k;
	int ret = 0;

	umbra_mutex_lock(stripe);
	for_each_rmap_sptep(pool_obj_rmap(slot->pobj, p), stripe, k, s)
		if (!ret)
			ret = u32_vec_push(snap, s);
	umbra_mutex_unlock(stripe);
	return ret;
}

/*
 * Every leaf of pages [first, last] of @slot that this VM reaches, local
 * zap.  A pass handles a snapshot of the page's reverse map (every entry);
 * a copy made on the way may hold another leaf of the page, so passes go on
 * until one changes nothing.  Without memory for the snapshot, the page is
 * zapped for every VM instead (never left mapped).
 */
void zap_slot_range_local_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot,
				 uint64_t first, uint64_t last, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	for (uint64_t p = first; p <= last && p < slot->npages; p++) {
		bool changed;

		do {
			struct u32_vec snap;

			u32_vec_init(&snap);
			if (rmap_snapshot(slot, p, &snap)) {
				u32_vec_fini(&snap);
				zap_slot_range_locked(mmu, slot, p, p, b);
				break;
			}
			changed = false;
			for (uint32_t k = 0; k < snap.nr; k++)
				changed |= zap_local_locked(mmu, snap.v[k], b);
			u32_vec_fini(&snap);
		} while (changed);
	}
}

/* Takes, in place of *@held, the stripe of the page that present leaf *@e
 * of entry *@sptep maps, and reads the entry again there (a zap may have
 * cleared it meanwhile): true if it still maps that page (*@e the entry,
 * *@slot and *@bp the page; *@held NULL if no slot of ours holds it). */
static bool leaf_reread_under_stripe(struct shadow_mmu *mmu, const uint64_t *sptep,
				     struct umbra_mutex **held, uint64_t *e,
				     struct shadow_mmu_slot **slot, uint64_t *bp)
{
	const uint64_t addr = spte_addr(*e);

	*held = stripe_switch(*held, leaf_stripe(mmu, *e, slot, bp));
	*e = spte_read(sptep);
	return spte_is_present(*e) && spte_addr(*e) == addr;
}

/*
 * Copies @old's entries into the new table @copy, write-protected (every
 * entry loses W, leaves lose D).  @old's non-leaf entries do not change
 * while we hold our reference (only a table's last user changes them; an
 * empty entry of a canonical level-2 table may become its final link, and
 * is copied or not: it faults back); its
 * leaves may be cleared under us by a non-local zap, so each is read again
 * and registered in the reverse map under its page's stripe (one stripe at
 * a time, kept across leaves of the same stripe), and written into the copy
 * there: a zap that takes the stripe later finds both locations.  An entry
 * that cannot be copied (no memory) is left out: it faults back.
 */
static void table_copy_entries_locked(struct shadow_mmu *mmu, uint32_t old, uint32_t copy)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const int level = mmu_page(mmu, old)->level;
	uint64_t *from = mmu_sptes(mmu, old);
	struct umbra_mutex *held = NULL;

	for (unsigned int k = 0; k < SPTE_ENTRIES; k++) {
		uint64_t e = spte_read(&from[k]);

		if (!spte_is_present(e))
			continue;
		if (spte_is_leaf(e, level) && level > 1) {
			continue; /* a 2 MiB leaf (huge.c) is not copied: it faults back */
		} else if (spte_is_leaf(e, level)) {
			struct shadow_mmu_slot *slot;
			uint64_t bp;

			if (!leaf_reread_under_stripe(mmu, &from[k], &held, &e, &slot, &bp) || !held ||
			    pool_obj_rmap_add(slot->pobj, bp, sptep_make(copy, k)))
				continue; /* not copied: it faults back */
			e &= ~(SPTE_WRITABLE | SPTE_DIRTY);
		} else {
			if (pool_user_add(mmu->pool, pool_page_index(spte_addr(e)), mmu, copy, k))
				continue;
			e &= ~SPTE_WRITABLE;
		}
		/* Under the copy's table lock: a zap may clear it as soon as
		 * the stripe is dropped, and keeps nr_present right. */
		spte_set_locked(mmu, copy, k, e);
	}
	stripe_switch(held, NULL);
}

/*
 * Privatize (unshare) the shared table @old that entry @i of @parent points
 * at: copy its entries into a new table that only this VM reaches, point
 * @parent's entry at the copy, and queue the drop of our reference on @old
 * for after the flush.  The lock-free use-count protocol (docs/sharing.md):
 * no lock of any other VM is taken; two VMs that privatize @old at once both
 * copy, and whichever drops the count to 0 frees it.  @parent is this VM's
 * alone, so nobody else writes the entry.  The copy is write-protected:
 * entries that point at copy-on-write data or at still-shared tables must
 * not grant writes (docs/sharing.md, "Write protection").
 */
int table_copy_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i, uint32_t old,
		      uint64_t gva, struct zap_batch *b, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *osp = mmu_page(mmu, old);
	const struct role role = { .direct = osp->direct, .access = osp->access, .gpa = osp->gpa };
	uint32_t copy;
	int ret;

	ret = table_alloc_locked(mmu, osp->level, &role, gva, &copy);
	if (ret)
		return ret;
	table_copy_entries_locked(mmu, old, copy);
	ret = pool_user_add(mmu->pool, copy, mmu, parent, i);
	if (ret) {
		table_free_locked(mmu, copy); /* unpublished: undo the copy */
		return ret;
	}
	/* Release store: the copy's entries are visible before the copy is. */
	spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(copy)));
	mmu_stat_inc(mmu, tables_created);
	mmu_stat_inc(mmu, privatizations);
	if (umbra_trace_on(UMBRA_TRACE_CLONE))
		umbra_trace_instant(UMBRA_TRACE_CLONE, "privatize", &(struct umbra_trace_args){
			.key = { "vm", "level", "gva" },
			.val = { mmu_trace_id(mmu), (uint64_t)osp->level, gva },
			.hex = 4 });
	table_hash_add_locked(mmu, copy);
	b->zapped++;
	batch_add_put(mmu, b, old, parent, i);
	*out = copy;
	return 0;
}

/* Removes W from every entry of @page, which this VM alone reaches, before
 * an entry above it grants W again (docs/sharing.md, "Write protection").
 * No flush: no vCPU could write through it (the entry above lacked W). */
void table_wrprot_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t *sptes = mmu_sptes(mmu, page);
	int level = mmu_page(mmu, page)->level;
	struct umbra_mutex *held = NULL;

	for (unsigned int k = 0; k < SPTE_ENTRIES; k++) {
		uint64_t e = spte_read(&sptes[k]);

		if (!spte_is_present(e) || !(e & SPTE_WRITABLE))
			continue;
		if (spte_is_leaf(e, level)) {
			/* A leaf changes under its page's stripe. */
			struct shadow_mmu_slot *slot;
			uint64_t bp;

			if (!leaf_reread_under_stripe(mmu, &sptes[k], &held, &e, &slot, &bp))
				continue;
			e &= ~(SPTE_WRITABLE | SPTE_DIRTY);
		} else {
			e &= ~SPTE_WRITABLE;
		}
		spte_set_locked(mmu, page, k, e);
	}
	stripe_switch(held, NULL);
}
