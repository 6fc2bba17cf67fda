/*
 * Canonical tables of shared segments: one level-1 table per 2 MiB run of a
 * segment (and per readonly flag and rights, canon_key), found in the
 * object's run (pool_obj_run.canon) and attached by every VM that maps the run
 * the same way, its leaves filled in place for all of them (docs/sharing.md,
 * "Canonical tables").
 *
 * Locks: called under the attaching (or freeing) VM's mmu_lock (asserted);
 * the array entries of a run (allocated with the run's side arrays when its
 * first canonical table is created) are under the run's stripe, taken here (no
 * stripe may be held by the caller).  A table in the array holds no
 * reference: it is there exactly while its use count is > 0.
 */
#include <errno.h>

#include "mmu_internal.h"

/*
 * Is @role's guest range a 2 MiB run of a shared segment in this VM's P2M:
 * the SPTE_ENTRIES pages from @role->gpa are pages run * SPTE_ENTRIES ..
 * run * SPTE_ENTRIES + SPTE_ENTRIES - 1 of one shared slot, none
 * copy-on-write?  0 and the slot and its first page, or -ENOENT.
 */
static int canon_run_of(struct shadow_mmu *mmu, const struct role *role,
			struct shadow_mmu_slot **out, uint64_t *first)
{
	uint64_t gfn = role->gpa >> SHADOW_PAGE_SHIFT, pg;
	struct shadow_mmu_slot *slot = NULL, *s;

	if (role->gpa % SPTE_LEVEL_SIZE(2))
		return -ENOENT;
	for (uint64_t k = 0; k < SPTE_ENTRIES; k++) {
		if (p2m_get(mmu, gfn + k, &s, &pg) || p2m_is_cow(mmu, gfn + k))
			return -ENOENT;
		if (k == 0) {
			slot = s;
			*first = pg;
			if (!slot->shared || *first % SPTE_ENTRIES)
				return -ENOENT;
		} else if (s != slot || pg != *first + k) {
			return -ENOENT;
		}
	}
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
static int canon_create_locked(struct shadow_mmu *mmu, struct pool_obj *po, uint32_t key,
			       const struct role *role, uint64_t gva, uint32_t *out)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	umbra_mutex_assert_held(canon_stripe(po, key));
	struct pool_obj_run *run;
	struct shadow_page *sp;
	uint32_t idx;
	int ret;

	ret = pool_obj_run_get_or_alloc(po, key / CANON_KEYS_PER_RUN, &run);
	if (ret)
		return ret;
	/* Charged to no VM: bounded by the segment's size (docs/shadow.md). */
	ret = table_alloc_charged_locked(mmu, NULL, 1, role, gva, &idx);
	if (ret)
		return ret;
	sp = mmu_page(mmu, idx);
	sp->canon = true;
	sp->canon_obj = po;
	sp->canon_key = key;
	__atomic_store_n(&sp->use_count, 1, __ATOMIC_RELEASE);
	canon_table_set(po, key, idx);
	mmu_stat_inc(mmu, tables_created);
	mmu_stat_inc(mmu, canon_created);
	*out = idx;
	return 0;
}

int canon_get_locked(struct shadow_mmu *mmu, const struct role *role, uint64_t gva, uint32_t *out)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot;
	struct umbra_mutex *stripe;
	struct pool_obj *po;
	uint64_t first = 0;
	uint32_t key, idx;
	int ret;

	if (canon_run_of(mmu, role, &slot, &first))
		return -ENOENT;
	po = slot->pobj;
	key = canon_key(first / SPTE_ENTRIES, slot->s.readonly, role->access);
	stripe = pool_obj_stripe(po, first);
	umbra_mutex_lock(stripe);
	idx = canon_table_get(po, key);
	if (idx != SHADOW_NO_PAGE) {
		/* In the array under the stripe: still allocated (its free leaves
		 * the array first), so its role is stable.  Check it before
		 * taking a reference, which then never needs handing back. */
		if (mmu_page(mmu, idx)->gpa != role->gpa) {
			/* Same run at another guest-physical address: not ours. */
			ret = -ENOENT;
			goto unlock;
		}
		if (canon_ref_get(mmu_page(mmu, idx))) {
			mmu_stat_inc(mmu, canon_reused);
			*out = idx;
			ret = 0;
			goto found;
		}
	}
	ret = canon_create_locked(mmu, po, key, role, gva, out);
	if (ret)
		goto unlock;
found:
	mmu->sharing = true;
unlock:
	umbra_mutex_unlock(stripe);
	return ret;
}

void canon_forget_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	struct umbra_mutex *stripe = canon_stripe(sp->canon_obj, sp->canon_key);

	umbra_mutex_lock(stripe);
	if (canon_table_get(sp->canon_obj, sp->canon_key) == page)
		canon_table_set(sp->canon_obj, sp->canon_key, SHADOW_NO_PAGE);
	umbra_mutex_unlock(stripe);
	sp->canon = false;
	sp->canon_obj = NULL;
}
