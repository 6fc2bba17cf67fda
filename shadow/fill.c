/*
 * Fill in place: a read fault, a swap-in or a refault whose leaf belongs in
 * a table shared with other VMs writes the leaf into that table, so that the
 * sharing survives faults (docs/sharing.md, "Filling shared tables in
 * place").  A fill is a change from "not present" to a read-only leaf, and
 * it is made only if the leaf is the same for every VM that reaches the
 * table: each of them maps the leaf's guest page to the same object
 * placement and page as we do, reads the same guest entry (A and D aside,
 * A set) through its own P2M, and has the same NX mode.  Otherwise (FILL_REFUSED) the fault privatizes the
 * path and installs as it would in a private table.
 *
 * Locks: under the filling VM's mmu_lock; the leaf's page's stripe around
 * the whole check and the write (the leaf rule), one table lock at a time
 * while the users lists are walked up (each root's lock while that VM's P2M
 * is read), then the filled table's lock around the last check and the
 * write.  No lock of any other VM is taken.
 */
#include "mmu_internal.h"

/* What every VM that reaches the table must agree on. */
struct fill_check {
	struct shadow_mmu *mmu;	/* the filler */
	uint64_t gfn;		/* the leaf's guest page */
	struct pool_obj *pobj;	/* ... as our P2M maps it */
	uint64_t page;
	bool has_entry;		/* a guest table entry was read (not a direct table) */
	uint64_t entry_gpa;	/* where: the table's guest table, the leaf's index */
	uint64_t entry;		/* what our walk read there */
	bool nxe;
};

/* Is guest entry @g what @entry says, A and D aside (the leaf is
 * read-only), with A set (a shadow of an entry without A never stands:
 * docs/shadow.md)? */
static bool guest_entry_agrees(uint64_t g, uint64_t entry)
{
	const uint64_t ad = SPTE_ACCESSED | SPTE_DIRTY;

	return (g & SPTE_ACCESSED) && (g & ~ad) == (entry & ~ad);
}

/*
 * Does sharer @vm see the leaf as we do: its P2M maps the leaf's gfn to the
 * same object placement and page, its guest table entry (read through its
 * own P2M: its page may be a copy of ours) is ours, and its NX mode is?
 * Called under the table lock of @vm's root (pmd_rmap_for_each_root), which
 * keeps @vm alive.  Its P2M and guest memory are read lock-free; a change
 * that this read misses is ordered after our check by the leaf's stripe or
 * the fill sequence (fill_in_place_locked).
 */
static bool sharer_agrees(void *ctx, struct shadow_mmu *vm, bool path_shared)
{
	const struct fill_check *c = ctx;
	struct shadow_mmu_slot *slot;
	uint64_t page, g;

	(void)path_shared;
	if (vm == c->mmu)
		return true;
	if (__atomic_load_n(&vm->mode.nxe, __ATOMIC_ACQUIRE) != c->nxe ||
	    p2m_get(vm, c->gfn, &slot, &page) || slot->pobj != c->pobj || page != c->page)
		return false;
	return !c->has_entry || (!guest_read(vm, c->entry_gpa, &g) && guest_entry_agrees(g, c->entry));
}

/* Is the guest entry the leaf was made from still what our walk read?  For
 * a direct table the leaf follows from the table's role alone. */
static bool guest_entry_is_unchanged(struct shadow_mmu *mmu, const struct fill_check *c)
{
	uint64_t g;

	return !c->has_entry || (!guest_read(mmu, c->entry_gpa, &g) && guest_entry_agrees(g, c->entry));
}

/*
 * Under the stripe: the last check and the write, under @table's lock.  A
 * VM whose view changes bumps fill_seq and takes this lock before it
 * checks the table (fill_barrier_locked), so either its bump is seen here
 * (we refuse) or it checks after our write (it finds the leaf and leaves
 * the table if the leaf does not match its view).
 */
static int fill_write_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			     const struct fill_check *c, struct shadow_mmu_slot *slot,
			     uint64_t page, uint64_t spte, uint64_t seq)
{
	umbra_mutex_assert_held(pool_obj_stripe(slot->pobj, page));
	struct shadow_page *sp = mmu_page(mmu, table);
	uint64_t *sptep = mmu_sptes(mmu, table) + i;
	int ret = FILL_REFUSED;

	umbra_mutex_lock(&sp->lock);
	if (__atomic_load_n(&mmu->pool->fill_seq, __ATOMIC_SEQ_CST) != seq ||
	    spte_is_present(spte_read(sptep)) || !guest_entry_is_unchanged(mmu, c))
		goto unlock;
	ret = pool_obj_rmap_add(slot->pobj, page, sptep_make(table, i));
	if (ret)
		goto unlock;
	spte_set_table_locked(mmu, table, i, spte);
unlock:
	umbra_mutex_unlock(&sp->lock);
	return ret;
}

/*
 * The order that makes a fill safe against a sharer V whose view diverges
 * while we check (docs/sharing.md, "Filling shared tables in place"):
 *  - V's P2M entry for the leaf's gfn: V stores the new entry before it
 *    takes the old page's stripe for its local zap (cow_copy_locked,
 *    p2m_set_locked); we read V's entry under that stripe before we write.
 *    Either we see the new entry (and refuse), or V's zap, which takes the
 *    stripe after our write, finds the leaf in the reverse map and leaves
 *    the table.
 *  - V's guest entry (in a page V shares with us, or in V's own copy of
 *    the guest table after a copy-on-write break) and V's mode: V acts on
 *    such a change only at its invlpg / sync, which passes
 *    fill_barrier_locked before it checks the table: either our check
 *    under the table lock sees fill_seq moved (we refuse), or V checks the
 *    table after our write and leaves it if the leaf is not what its guest
 *    says.  Until that invlpg / sync, V may use the leaf as a stale TLB
 *    entry of the old guest entry, which x86 allows.  Our own guest entry
 *    is read again under the table lock.
 * Canonical tables need none of this: their leaves follow from the run.
 */
int fill_in_place_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			 const struct shadow_walk *w, struct shadow_mmu_slot *slot, uint64_t page,
			 uint64_t spte)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, page);
	struct shadow_page *sp = mmu_page(mmu, table);
	uint64_t old, seq;
	struct fill_check c;
	int ret = FILL_REFUSED;

	if (spte & SPTE_WRITABLE)
		return FILL_REFUSED;
	umbra_mutex_lock(stripe);
	old = spte_read(mmu_sptes(mmu, table) + i);
	if (old == spte) {
		ret = 0; /* another VM or vCPU filled it */
		goto unlock;
	}
	if (spte_is_present(old))
		goto unlock; /* a change, not a fill */
	seq = __atomic_load_n(&mmu->pool->fill_seq, __ATOMIC_SEQ_CST);
	c = (struct fill_check){ .mmu = mmu, .gfn = w->pa >> SHADOW_PAGE_SHIFT,
				 .pobj = slot->pobj, .page = page, .has_entry = !sp->direct,
				 .entry_gpa = sp->gpa + i * sizeof(uint64_t), .entry = w->entry[1],
				 .nxe = __atomic_load_n(&mmu->mode.nxe, __ATOMIC_RELAXED) };
	if (!sp->canon) {
		/* No memory for the walk up: not known to agree, refused. */
		if (pmd_rmap_for_each_root(mmu, table, 1, sharer_agrees, &c) != 1)
			goto unlock;
	}
	ret = fill_write_locked(mmu, table, i, &c, slot, page, spte, seq);
	if (!ret) {
		mmu_stat_inc(mmu, installs);
		if (!sp->canon)
			mmu_stat_inc(mmu, fills_in_place);
	}
unlock:
	umbra_mutex_unlock(stripe);
	return ret;
}

void fill_barrier_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);

	__atomic_fetch_add(&mmu->pool->fill_seq, 1, __ATOMIC_SEQ_CST);
	umbra_mutex_lock(&sp->lock);
	umbra_mutex_unlock(&sp->lock);
}
