/*
 * Clone and copy-on-write (docs/sharing.md): a clone gets a copy of each of
 * its parent's cached roots whose entries point at the parent's lower
 * tables (shared, one more reference each, write-protected), and a P2M in
 * which every private page is copy-on-write for both; the first write to
 * such a page copies it into the writer's cow slot (shadow_mmu_cow_break)
 * and zaps the writer's mappings of the old page locally.
 *
 * Locks: the clone's slots are added (and subscribed) with no lock held;
 * the roots and the P2M are copied under the parent's mmu_lock only (the
 * child is not yet visible to anyone).  A copy-on-write break reads both
 * pages with the sequence/retry protocol with no lock held, then copies and
 * zaps under the VM's mmu_lock.
 */
#include <errno.h>
#include <string.h>

#include "mmu_internal.h"

int shadow_mmu_set_cow_slot(struct shadow_mmu *mmu, int slot_id)
{
	struct shadow_mmu_slot *slot = slot_of_id(mmu, slot_id);

	if (!slot || slot->s.readonly || slot->shared)
		return -EINVAL;
	umbra_mutex_lock(&mmu->mmu_lock);
	mmu->cow_slot = slot_id;
	__atomic_store_n(&mmu->cow_next, 0, __ATOMIC_RELAXED);
	umbra_mutex_unlock(&mmu->mmu_lock);
	return 0;
}

/* Copies page @p of @s into page @q of the cow slot @cs and points gfn
 * @gfn at the copy; our mappings of the old page go, the other sharers keep
 * theirs (we leave the shared tables that hold them).  Nobody writes @p
 * (every sharer maps it read-only) and no invalidation of @p or @q can pass
 * our mmu_lock.  mmu_lock.  0, or -ENOMEM (the P2M could not take the
 * entry: nothing changed but page @q, which is lost). */
static int cow_copy_locked(struct shadow_mmu *mmu, uint64_t gfn, struct shadow_mmu_slot *s,
			   uint64_t p, struct shadow_mmu_slot *cs, uint64_t q)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct zap_batch b;
	int ret;

	memcpy((char *)cs->s.host + (q << SHADOW_PAGE_SHIFT),
	       (char *)s->s.host + (p << SHADOW_PAGE_SHIFT), SHADOW_PAGE_SIZE);
	ret = p2m_entry_set_locked(mmu, gfn, p2m_entry_make(cs->id, q));
	if (ret)
		return ret;
	bump_sync_seq_locked(mmu);
	/* The zap takes @p's stripe after the P2M store: a fill in place of @p
	 * that another VM makes in a table we share either sees our new entry
	 * or is found here (fill.c). */
	zap_batch_init(&b);
	zap_slot_range_local_locked(mmu, s, p, p, &b);
	zap_batch_finish_locked(mmu, &b);
	return 0;
}

int shadow_mmu_cow_break(struct shadow_mmu *mmu, uint64_t gpa)
{
	uint64_t gfn = gpa >> SHADOW_PAGE_SHIFT;
	int ret;

	if (gfn >= mmu->p2m_pages)
		return -EINVAL;
	for (;;) {
		uint64_t e = p2m_entry_get(mmu, gfn), p, q, seq_s, seq_c;
		struct shadow_mmu_slot *s, *cs;

		if (!p2m_entry_is_cow(e))
			return 0;
		cs = slot_of_id(mmu, __atomic_load_n(&mmu->cow_slot, __ATOMIC_RELAXED));
		if (!cs)
			return -EROFS;
		q = __atomic_fetch_add(&mmu->cow_next, 1, __ATOMIC_RELAXED);
		if (q >= cs->npages)
			return -ENOMEM;
		s = &mmu->slots[p2m_entry_slot_id(e)];
		p = p2m_entry_page(e);
		/* Both pages with the sequence/retry protocol, no lock held. */
		ret = slot_page_get(s, p, false, &seq_s);
		if (ret)
			return ret;
		ret = slot_page_get(cs, q, true, &seq_c);
		if (ret)
			return ret;
		umbra_mutex_lock(&mmu->mmu_lock);
		if (p2m_entry_get(mmu, gfn) != e ||
		    notifier_read_retry(s->s.obj, p, p, seq_s) ||
		    notifier_read_retry(cs->s.obj, q, q, seq_c)) {
			umbra_mutex_unlock(&mmu->mmu_lock);
			mmu_stat_inc(mmu, retries);
			continue; /* page q is lost: the bump allocator never reuses */
		}
		ret = cow_copy_locked(mmu, gfn, s, p, cs, q);
		umbra_mutex_unlock(&mmu->mmu_lock);
		if (!ret)
			mmu_stat_inc(mmu, cow_breaks);
		return ret;
	}
}

/* Gives @child the slots of @parent, then @cow as its cow slot.  No lock
 * held (the slots are subscribed). */
static int clone_slots(struct shadow_mmu *parent, struct shadow_mmu *child,
		       const struct shadow_slot *cow)
{
	int n = __atomic_load_n(&parent->nr_slots, __ATOMIC_ACQUIRE), id, ret;

	for (int i = 0; i < n; i++) {
		ret = mmu_add_slot(child, &parent->slots[i].s, parent->slots[i].shared, &id);
		if (ret)
			return ret;
	}
	ret = shadow_mmu_add_slot(child, cow, &id);
	if (ret)
		return ret;
	child->cow_slot = id;
	return 0;
}

/*
 * A copy for @child of the parent's root @r, whose entries point at the
 * parent's tables, one more reference each.  No lower level is walked: the
 * cost is SPTE_ENTRIES entries per cached root.  Write protection: a write
 * through either root faults.  On failure the child's destroy drops what
 * was taken.  The parent's mmu_lock.
 */
static int clone_root_locked(struct shadow_mmu *parent, struct shadow_mmu *child, unsigned int r)
{
	umbra_mutex_assert_held(&parent->mmu_lock);
	struct shadow_root *pr = &parent->roots[r];
	const struct role role = { .direct = false, .access = SHADOW_RIGHTS_ALL, .gpa = pr->cr3 };
	uint32_t page, present = 0;
	struct shadow_page *sp;
	uint64_t *from;
	int ret;

	/* The copy is the child's: charged to its quota. */
	ret = table_alloc_charged_locked(parent, child->account, SPTE_LEVELS, &role, 0, &page);
	if (ret)
		return ret;
	sp = mmu_page(parent, page);
	ret = pool_user_add(parent->pool, page, child, SHADOW_NO_PAGE, r);
	if (ret) {
		pool_free_index(parent->pool, page);
		return ret;
	}
	child->roots[r] = (struct shadow_root){ .cr3 = pr->cr3, .page = page,
						.last_used = pr->last_used };
	mmu_stat_inc(child, tables_created);
	from = mmu_sptes(parent, pr->page);
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t e = spte_read(&from[i]);

		if (!spte_is_present(e))
			continue;
		ret = pool_user_add(parent->pool, pool_page_index(spte_addr(e)), child, page, i);
		if (ret)
			return ret;
		pool_spte_write(parent->pool, page, i, e & ~SPTE_WRITABLE);
		__atomic_store_n(&sp->nr_present, ++present, __ATOMIC_RELAXED);
		if (e & SPTE_WRITABLE)
			spte_set_locked(parent, pr->page, i, e & ~SPTE_WRITABLE);
	}
	return 0;
}

int shadow_mmu_clone(struct shadow_mmu *parent, const struct shadow_slot *cow,
		     struct shadow_mmu **out)
{
	struct shadow_mmu_config cfg = {
		.pool = parent->pool,
		.max_gpa = parent->p2m_pages << SHADOW_PAGE_SHIFT,
		.nr_roots = parent->nr_roots,
		.max_tables = parent->account->max,
		.mode = parent->mode,
	};
	struct shadow_mmu *child;
	struct zap_batch b;
	int ret;

	if (!cow || __atomic_load_n(&parent->cow_slot, __ATOMIC_RELAXED) < 0)
		return -EINVAL;
	ret = shadow_mmu_create(&cfg, &child);
	if (ret)
		return ret;
	ret = clone_slots(parent, child, cow);
	if (ret)
		goto destroy_child;

	zap_batch_init(&b);
	umbra_mutex_lock(&parent->mmu_lock);
	/* Roots first (they can fail). */
	for (unsigned int r = 0; r < parent->nr_roots && !ret; r++)
		if (parent->roots[r].page != SHADOW_NO_PAGE)
			ret = clone_root_locked(parent, child, r);
	if (ret)
		goto unlock_parent;
	ret = p2m_clone_locked(parent, child);
	if (ret)
		goto unlock_parent;
	child->tick = parent->tick;
	child->sharing = parent->sharing = true;
	bump_sync_seq_locked(parent);
	/* The parent's vCPUs must not keep a writable translation. */
	b.flush_all = true;
	b.zapped++;
	zap_batch_finish_locked(parent, &b);
	umbra_mutex_unlock(&parent->mmu_lock);
	mmu_stat_inc(child, clones);
	*out = child;
	return 0;

unlock_parent:
	b.flush_all = true;
	b.zapped++;
	zap_batch_finish_locked(parent, &b);
	umbra_mutex_unlock(&parent->mmu_lock);
destroy_child:
	shadow_mmu_destroy(child);
	return ret;
}
