/*
 * Canonical tables of shared segments: one level-1 table per 2 MiB run of a
 * segment, and one level-2 table per GiB of it (each per readonly flag and
 * rights, canon_key), found in the object's run (pool_obj_run.canon; a
 * GiB's in its first run) and attached by every VM that maps the run or the
 * GiB the same way; the leaves of a level-1 table are filled in place for
 * all of them, and so are the entries of a level-2 table, each linking the
 * canonical level-1 table of its run (docs/sharing.md, "Canonical
 * tables").
 *
 * Locks: called under the attaching (or freeing) VM's mmu_lock (asserted);
 * the array entries of a run (allocated with the run's side arrays when its
 * first canonical table is created) are under the run's stripe, taken here (no
 * stripe may be held by the caller), and so is every link of a run's level-1
 * table into a level-2 table.  A table in the array holds no reference: it
 * is there exactly while its use count is > 0.
 */
#include <errno.h>

#include "mmu_internal.h"

/* Pages of a canonical table of @level: a run, or a GiB. */
static uint64_t canon_span(int level)
{
	return SPTE_LEVEL_SIZE(level + 1) >> SHADOW_PAGE_SHIFT;
}

/*
 * Do the gfns of chunk @gfn (P2M_CHUNK_PAGES of them, from a multiple of
 * that) map pages @first .. @first + P2M_CHUNK_PAGES - 1 of @slot, none
 * copy-on-write?  A chunk mapped by one linear entry is read at once.
 */
static bool canon_chunk_is(struct shadow_mmu *mmu, uint64_t gfn, const struct shadow_mmu_slot *slot,
			   uint64_t first)
{
	uint64_t x = p2m_chunk_linear_locked(mmu, gfn), pg;
	struct shadow_mmu_slot *s;

	if (x) {
		uint64_t e = p2m_linear_entry(x, 0);

		return &mmu->slots[p2m_entry_slot_id(e)] == slot && p2m_entry_page(e) == first &&
		       !p2m_entry_needs_break(mmu, e, true);
	}
	for (uint64_t k = 0; k < P2M_CHUNK_PAGES; k++)
		if (p2m_get(mmu, gfn + k, &s, &pg) || p2m_is_cow(mmu, gfn + k) || s != slot ||
		    pg != first + k)
			return false;
	return true;
}

/*
 * Is @role's guest range, the canon_span(@level) pages from @role->gpa, an
 * aligned run (level 1) or GiB (level 2) of a shared segment in this VM's
 * P2M: pages first .. first + span - 1 of one shared slot, with first a
 * multiple of the span, none copy-on-write?  0 and the slot and its first
 * page, or -ENOENT.  mmu_lock.
 */
static int canon_range_of(struct shadow_mmu *mmu, int level, const struct role *role,
			  struct shadow_mmu_slot **out, uint64_t *first)
{
	const uint64_t gfn = role->gpa >> SHADOW_PAGE_SHIFT, span = canon_span(level);
	struct shadow_mmu_slot *slot;
	_Static_assert(P2M_CHUNK_PAGES == SPTE_ENTRIES, "a P2M chunk is a 2 MiB run");

	if (role->gpa % SPTE_LEVEL_SIZE(level + 1) || gfn >= mmu->p2m_pages ||
	    span > mmu->p2m_pages - gfn || p2m_get(mmu, gfn, &slot, first) || !slot->shared ||
	    *first % span)
		return -ENOENT;
	for (uint64_t k = 0; k < span; k += P2M_CHUNK_PAGES)
		if (!canon_chunk_is(mmu, gfn + k, slot, *first + k))
			return -ENOENT;
	*out = slot;
	return 0;
}

/* The stripe of the run of array entry @key of @po. */
static struct umbra_mutex *canon_stripe(struct pool_obj *po, uint32_t key)
{
	return pool_obj_stripe(po, (uint64_t)(key / CANON_KEYS_PER_RUN) * SPTE_ENTRIES);
}

/* Takes a reference on canonical table @sp, found in the array under its
 * run's stripe, unless its count already reached 0 (it is being freed and
 * is not reused: inc-not-zero).  True if taken. */
static bool canon_ref_get(struct shadow_page *sp)
{
	uint32_t c = __atomic_load_n(&sp->use_count, __ATOMIC_ACQUIRE);

	while (c && !__atomic_compare_exchange_n(&sp->use_count, &c, c + 1, false, __ATOMIC_ACQ_REL,
						 __ATOMIC_ACQUIRE))
		;
	return c != 0;
}

/* Creates the canonical table for @role and enters it in @po's array at
 * @key, with one reference for the caller.  The run's stripe held. */
static int canon_create_locked(struct shadow_mmu *mmu, struct pool_obj *po, uint32_t key, int level,
			       const struct role *role, uint64_t gva, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	umbra_mutex_assert_held(canon_stripe(po, key));
	struct pool_obj_run *run;
	struct shadow_page *sp;
	uint32_t idx;
	int ret;

	ret = pool_obj_run_get_or_alloc(po, key / CANON_KEYS_PER_RUN, &run);
	if (ret)
		return ret;
	/* Charged to no VM: bounded by the segment's size (docs/shadow.md). */
	ret = table_alloc_charged_locked(mmu, NULL, level, role, gva, &idx);
	if (ret)
		return ret;
	sp = mmu_page(mmu, idx);
	__atomic_store_n(&sp->canon, true, __ATOMIC_RELAXED); /* read by table_hash_find_locked */
	sp->canon_obj = po;
	sp->canon_key = key;
	__atomic_store_n(&sp->use_count, 1, __ATOMIC_RELEASE);
	canon_table_set(po, key, idx);
	mmu_stat_inc(mmu, tables_created);
	mmu_stat_inc(mmu, canon_created);
	*out = idx;
	return 0;
}

/* Under the stripe of @key: the canonical table there for @role with a
 * reference for the caller, or a new one.  mmu_lock. */
static int canon_get_stripe_locked(struct shadow_mmu *mmu, struct pool_obj *po, uint32_t key,
				   int level, const struct role *role, uint64_t gva, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	umbra_mutex_assert_held(canon_stripe(po, key));
	uint32_t idx = canon_table_get(po, key);

	if (idx != SHADOW_NO_PAGE) {
		/* In the array under the stripe: still allocated (its free leaves
		 * the array first), so its role is stable.  Check it before
		 * taking a reference, which then never needs handing back. */
		if (mmu_page(mmu, idx)->gpa != role->gpa)
			return -ENOENT; /* same run at another guest-physical address: not ours */
		if (canon_ref_get(mmu_page(mmu, idx))) {
			mmu_stat_inc(mmu, canon_reused);
			*out = idx;
			return 0;
		}
	}
	return canon_create_locked(mmu, po, key, level, role, gva, out);
}

int canon_get_locked(struct shadow_mmu *mmu, int level, const struct role *role, uint64_t gva,
		     uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot;
	struct umbra_mutex *stripe;
	struct pool_obj *po;
	uint64_t first = 0;
	uint32_t key;
	int ret;

	if (!role->direct || canon_range_of(mmu, level, role, &slot, &first))
		return -ENOENT;
	po = slot->pobj;
	key = canon_key(first / SPTE_ENTRIES, level, slot->s.readonly, role->access);
	stripe = pool_obj_stripe(po, first);
	umbra_mutex_lock(stripe);
	ret = canon_get_stripe_locked(mmu, po, key, level, role, gva, out);
	if (!ret)
		mmu->sharing = true;
	umbra_mutex_unlock(stripe);
	return ret;
}

int canon_child_get_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			   const struct role *role, uint64_t gva, struct zap_batch *b,
			   uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *psp = mmu_page(mmu, parent);
	const uint64_t *sptep = mmu_sptes(mmu, parent) + i;
	struct shadow_mmu_slot *slot;
	struct umbra_mutex *stripe;
	struct pool_obj *po;
	uint64_t first = 0, spte;
	uint32_t key, child;
	int ret;

	/* The parent's entry i maps run i of its GiB with the parent's rights,
	 * for every user: anything else is this VM's own view. */
	if (role->direct && role->access == psp->access &&
	    role->gpa == psp->gpa + (uint64_t)i * SPTE_LEVEL_SIZE(2)) {
		/* Filled once and then stable while the parent lives. */
		spte = spte_read(sptep);
		if (spte_is_present(spte)) {
			*out = pool_page_index(spte_addr(spte));
			return 0;
		}
	}
	if (!role->direct || role->access != psp->access ||
	    role->gpa != psp->gpa + (uint64_t)i * SPTE_LEVEL_SIZE(2) ||
	    canon_range_of(mmu, 1, role, &slot, &first) || slot->pobj != psp->canon_obj)
		return -EXDEV;
	po = slot->pobj;
	key = canon_key(first / SPTE_ENTRIES, 1, slot->s.readonly, role->access);
	if (key / CANON_KEYS_PER_RUN != psp->canon_key / CANON_KEYS_PER_RUN + i ||
	    (key ^ psp->canon_key) % CANON_KEY_LEVEL2 != 0)
		return -EXDEV; /* another GiB, or another readonly flag */
	stripe = pool_obj_stripe(po, first);
	umbra_mutex_lock(stripe);
	/* Every link into entry i is made under this stripe: the entry is
	 * stable here. */
	spte = spte_read(sptep);
	if (spte_is_present(spte)) {
		child = pool_page_index(spte_addr(spte));
		ret = 0;
		goto unlock;
	}
	ret = canon_get_stripe_locked(mmu, po, key, 1, role, gva, &child);
	if (ret) {
		ret = ret == -ENOENT ? -EXDEV : ret;
		goto unlock;
	}
	ret = pool_user_link(mmu->pool, child, mmu, parent, i);
	if (ret) {
		/* Not linked: the reference goes back after the flush. */
		umbra_mutex_unlock(stripe);
		batch_add_put(mmu, b, child, SHADOW_NO_PAGE, UINT32_MAX);
		return ret;
	}
	spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(child)));
unlock:
	umbra_mutex_unlock(stripe);
	if (!ret) {
		mmu->sharing = true;
		*out = child;
	}
	return ret;
}

void canon_adopt_locked(struct shadow_mmu *mmu, uint32_t canon, uint32_t from)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *csp = mmu_page(mmu, canon);
	const uint64_t *src = mmu_sptes(mmu, from), *dst = mmu_sptes(mmu, canon);

	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t e = spte_read(&src[i]);
		uint32_t child = pool_page_index(spte_addr(e));
		struct umbra_mutex *stripe;

		/* @from is ours: its entries change only under our mmu_lock. */
		if (!spte_is_present(e) || !canon_child_is(csp, i, mmu_page(mmu, child)))
			continue;
		stripe = canon_stripe(csp->canon_obj, mmu_page(mmu, child)->canon_key);
		umbra_mutex_lock(stripe);
		if (!spte_is_present(spte_read(&dst[i])) &&
		    !pool_user_add(mmu->pool, child, mmu, canon, i))
			spte_set_locked(mmu, canon, i, spte_make_table(pool_page_gpa(child)));
		umbra_mutex_unlock(stripe);
	}
}

bool canon_guest_pd_matches(struct shadow_mmu *mmu, uint64_t pd, unsigned int rights,
			    const struct role *direct)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_paging_mode *mode = &mmu->mode;

	if (!direct->direct || direct->gpa % SPTE_LEVEL_SIZE(3))
		return false;
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t g;

		if (guest_read(mmu, pd + i * sizeof(uint64_t), &g) || !spte_is_present(g) ||
		    !spte_is_accessed(g) || !spte_is_leaf(g, 2) ||
		    (g & spte_rsvd_mask(g, 2, mode->maxphyaddr, mode->nxe, mode->gbpages)) ||
		    spte_leaf_addr(g, 2) != direct->gpa + (uint64_t)i * SPTE_LEVEL_SIZE(2) ||
		    leaf_rights(rights & walk_entry_rights(mode, g), spte_is_dirty(g)) != direct->access)
			return false;
	}
	return true;
}

void canon_forget_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	struct umbra_mutex *stripe = canon_stripe(sp->canon_obj, sp->canon_key);

	umbra_mutex_lock(stripe);
	if (canon_table_get(sp->canon_obj, sp->canon_key) == page)
		canon_table_set(sp->canon_obj, sp->canon_key, SHADOW_NO_PAGE);
	umbra_mutex_unlock(stripe);
	__atomic_store_n(&sp->canon, false, __ATOMIC_RELAXED);
	sp->canon_obj = NULL;
}
