/*
 * Fill in place: a read fault, a swap-in or a refault whose leaf belongs in
 * a table shared with other VMs writes the leaf into that table, so that the
 * sharing survives faults (docs/sharing.md, "Filling shared tables in
 * place").  A fill is a change from "not present" to a read-only leaf, and
 * it is made only if the leaf is the same for every VM that reaches the
 * table: each of them maps the leaf's guest page, and the guest table page
 * the leaf was read from, to the same object placement and page as we do,
 * under the same NX mode.  Otherwise (FILL_REFUSED) the fault privatizes the
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
	bool has_table;		/* a guest table was read (not a direct table) */
	uint64_t table_gfn;	/* the guest table page the leaf was read from */
	struct pool_obj *table_pobj;
	uint64_t table_page;
	bool nxe;
};

/* Does @vm's P2M map @gfn to page @page of @pobj?  Lock-free snapshot. */
static bool p2m_maps(struct shadow_mmu *vm, uint64_t gfn, const struct pool_obj *pobj,
		     uint64_t page)
{
	struct shadow_mmu_slot *slot;
	uint64_t p;

	return !p2m_get(vm, gfn, &slot, &p) && slot->pobj == pobj && p == page;
}

/*
 * Does sharer @vm see the leaf as we do?  Called under the table lock of
 * @vm's root (pmd_rmap_for_each_root), which keeps @vm alive.  Its P2M is
 * read lock-free; a store to it that this read misses is ordered after our
 * check by the leaf's stripe or the fill sequence (fill_in_place_locked).
 */
static bool sharer_agrees(void *ctx, struct shadow_mmu *vm, bool path_shared)
{
	const struct fill_check *c = ctx;

	(void)path_shared;
	if (vm == c->mmu)
		return true;
	return __atomic_load_n(&vm->mode.nxe, __ATOMIC_ACQUIRE) == c->nxe &&
	       p2m_maps(vm, c->gfn, c->pobj, c->page) &&
	       (!c->has_table || p2m_maps(vm, c->table_gfn, c->table_pobj, c->table_page));
}

/* Fills @c from our own view: false if we cannot (the guest table page is
 * not mapped any more: the fault's walk is stale). */
static bool fill_check_init(struct fill_check *c, struct shadow_mmu *mmu,
			    const struct shadow_page *sp, const struct shadow_walk *w,
			    const struct shadow_mmu_slot *slot, uint64_t page)
{
	struct shadow_mmu_slot *ts;

	*c = (struct fill_check){ .mmu = mmu, .gfn = w->pa >> SHADOW_PAGE_SHIFT,
				  .pobj = slot->pobj, .page = page, .has_table = !sp->direct,
				  .table_gfn = sp->gpa >> SHADOW_PAGE_SHIFT,
				  .nxe = __atomic_load_n(&mmu->mode.nxe, __ATOMIC_RELAXED) };
	if (!c->has_table)
		return true;
	if (p2m_get(mmu, c->table_gfn, &ts, &c->table_page))
		return false;
	c->table_pobj = ts->pobj;
	return true;
}

/* Is the guest entry the leaf was made from still what our walk read (A
 * set; A and D aside, since the leaf is read-only)?  For a direct table the
 * leaf follows from the table's role alone. */
static bool guest_entry_is_unchanged(struct shadow_mmu *mmu, const struct shadow_page *sp,
				     unsigned int i, const struct shadow_walk *w)
{
	const uint64_t ad = SPTE_ACCESSED | SPTE_DIRTY;
	uint64_t g;

	if (sp->direct)
		return true;
	return !guest_read(mmu, sp->gpa + i * sizeof(uint64_t), &g) && (g & SPTE_ACCESSED) &&
	       (g & ~ad) == (w->entry[1] & ~ad);
}

/*
 * Under the stripe: the last check and the write, under @table's lock.  A
 * VM whose view changes bumps fill_seq and takes this lock before it
 * checks the table (fill_barrier_locked), so either its bump is seen here
 * (we refuse) or it checks after our write (it finds the leaf and leaves
 * the table if the leaf does not match its view).
 */
static int fill_write_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			     const struct shadow_walk *w, struct shadow_mmu_slot *slot,
			     uint64_t page, uint64_t spte, uint64_t seq)
{
	umbra_mutex_assert_held(pool_obj_stripe(slot->pobj, page));
	struct shadow_page *sp = mmu_page(mmu, table);
	uint64_t *sptep = mmu_sptes(mmu, table) + i;
	int ret = FILL_REFUSED;

	umbra_mutex_lock(&sp->lock);
	if (__atomic_load_n(&mmu->pool->fill_seq, __ATOMIC_SEQ_CST) != seq ||
	    spte_is_present(spte_read(sptep)) || !guest_entry_is_unchanged(mmu, sp, i, w))
		goto unlock;
	ret = rmap_add(&slot->rmap[page], sptep_make(table, i));
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
 *  - V's guest table (its P2M entry for the table page, its guest entry,
 *    its mode): V acts on such a change only at its invlpg / sync, which
 *    passes fill_barrier_locked before it checks the table; the guest entry
 *    itself is read again under the table lock.
 * Canonical tables need none of this: their leaves follow from the run.
 */
int fill_in_place_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			 const struct shadow_walk *w, struct shadow_mmu_slot *slot, uint64_t page,
			 uint64_t spte)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
	if (!sp->canon) {
		if (!fill_check_init(&c, mmu, sp, w, slot, page))
			goto unlock;
		ret = pmd_rmap_for_each_root(mmu, table, 1, sharer_agrees, &c);
		if (ret != 1) {
			ret = ret < 0 ? ret : FILL_REFUSED;
			goto unlock;
		}
	}
	ret = fill_write_locked(mmu, table, i, w, slot, page, spte, seq);
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
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);

	__atomic_fetch_add(&mmu->pool->fill_seq, 1, __ATOMIC_SEQ_CST);
	umbra_mutex_lock(&sp->lock);
	umbra_mutex_unlock(&sp->lock);
}
