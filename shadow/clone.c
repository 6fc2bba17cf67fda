/*
 * Clone and copy-on-write (docs/sharing.md, "Fork-style sharing: clone").
 * A clone shares its parent's P2M tree by use count (p2m_tree.c) and gets
 * a copy of each of the parent's cached roots whose entries point at the
 * parent's lower tables (shared, one more reference each, write-protected).
 * The parent's non-shared slots become layers, frozen and read-only for
 * both; each VM gets an own slot, where the private copy of gfn g is page
 * g.  The first write to a page that needs it (p2m_entry_needs_break) makes
 * the P2M path private and copies the page into the writer's own slot
 * (shadow_mmu_cow_break), dropping a reference to the old page (put_page
 * when it was the last), and zaps the writer's mappings of the old page
 * locally.  A page of a layer the VM took over that no other VM maps is
 * written in place.
 *
 * Locks: the slots are prepared and subscribed with no lock held; the roots,
 * the P2M share and the layer marks are made under the parent's mmu_lock
 * only (the child is not yet visible to anyone).  A copy-on-write break
 * reads both pages with the sequence/retry protocol with no lock held, then
 * privatizes, copies and zaps under the VM's mmu_lock, and gives back pages
 * after dropping it.
 */
#include <errno.h>
#include <string.h>

#include "mmu_internal.h"

int shadow_mmu_set_own_slot(struct shadow_mmu *mmu, int slot_id)
{
	struct shadow_mmu_slot *slot = slot_of_id(mmu, slot_id);

	if (!slot || slot->s.readonly || slot->shared || __atomic_load_n(&slot->layer, __ATOMIC_ACQUIRE))
		return -EINVAL;
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	__atomic_store_n(&mmu->own_slot, slot_id, __ATOMIC_RELAXED);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return 0;
}

int shadow_mmu_slot_take_over(struct shadow_mmu *mmu, int slot_id)
{
	struct shadow_mmu_slot *slot = slot_of_id(mmu, slot_id);

	if (!slot || !__atomic_load_n(&slot->layer, __ATOMIC_ACQUIRE))
		return -EINVAL;
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	__atomic_store_n(&slot->taken_over, true, __ATOMIC_RELEASE);
	bump_sync_seq_locked(mmu);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return 0;
}

/* Copies page @p of @s into page @q of the own slot @os and points gfn
 * @gfn (whose path is private) at the copy; the old page loses our
 * reference (to @pb if it was the last), our mappings of it go, the other
 * sharers keep theirs (we leave the shared tables that hold them).  Nobody
 * writes @p (every sharer maps it read-only) and no invalidation of @p or
 * @q can pass our mmu_lock.  mmu_lock.  0 or -ENOMEM (nothing changed). */
static int cow_copy_locked(struct shadow_mmu *mmu, uint64_t gfn, struct shadow_mmu_slot *s,
			   uint64_t p, struct shadow_mmu_slot *os, uint64_t q, struct p2m_batch *pb)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct zap_batch b;
	int ret;

	memcpy((char *)os->s.host + (q << SHADOW_PAGE_SHIFT),
	       (char *)s->s.host + (p << SHADOW_PAGE_SHIFT), SHADOW_PAGE_SIZE);
	ret = p2m_entry_set_locked(mmu, gfn, p2m_entry_make(os->id, q), pb);
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

/* Under mmu_lock: if @os is still the own slot, @gfn's entry still @e and
 * neither page's invalidation sequence (@seq_s, @seq_o) moved, the path made private,
 * then, if the page still needs a break, the copy.  0 (done, or no copy
 * needed), 1 (raced: again) or -ENOMEM. */
static int cow_break_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t e,
			    struct shadow_mmu_slot *os, uint64_t seq_s, uint64_t seq_o,
			    struct p2m_batch *pb)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_mmu_slot *s = &mmu->slots[p2m_entry_slot_id(e)];
	const uint64_t p = p2m_entry_page(e);
	uint64_t now;
	bool private;
	int ret;

	/* @os was read with no lock held: a clone of this VM since then made
	 * it a layer that the clone maps, and gave us a new own slot.  Copying
	 * into the old one would write a page the clone reads. */
	if (slot_of_id(mmu, __atomic_load_n(&mmu->own_slot, __ATOMIC_RELAXED)) != os ||
	    p2m_entry_lookup_locked(mmu, gfn, NULL) != e || notifier_read_retry(s->s.obj, p, p, seq_s) ||
	    notifier_read_retry(os->s.obj, gfn, gfn, seq_o))
		return 1;
	ret = p2m_path_privatize_locked(mmu, gfn, pb);
	if (ret)
		return ret;
	bump_sync_seq_locked(mmu);
	now = p2m_entry_lookup_locked(mmu, gfn, &private);
	if (!p2m_entry_needs_break(mmu, now, private))
		return 0; /* the path alone was shared */
	ret = cow_copy_locked(mmu, gfn, s, p, os, gfn, pb);
	if (!ret)
		mmu_stat_inc(mmu, cow_breaks);
	return ret;
}

/* shadow_mmu_cow_break without its trace span. */
static int cow_break(struct shadow_mmu *mmu, uint64_t gpa)
{
	uint64_t gfn = gpa >> SHADOW_PAGE_SHIFT;
	int ret;

	if (gfn >= mmu->p2m_pages)
		return -EINVAL;
	for (;;) {
		uint64_t seq_s, seq_o, e;
		struct shadow_mmu_slot *s, *os;
		struct p2m_batch pb;
		bool private;

		e = p2m_entry_lookup(mmu, gfn, &private);
		if (!p2m_entry_needs_break(mmu, e, private))
			return 0;
		os = slot_of_id(mmu, __atomic_load_n(&mmu->own_slot, __ATOMIC_RELAXED));
		if (!os)
			return -EROFS;
		if (gfn >= os->npages)
			return -ENOMEM; /* the own slot does not cover this gfn */
		s = &mmu->slots[p2m_entry_slot_id(e)];
		/* Both pages with the sequence/retry protocol, no lock held. */
		ret = slot_page_get(s, p2m_entry_page(e), false, &seq_s);
		if (ret)
			return ret;
		ret = slot_page_get(os, gfn, true, &seq_o);
		if (ret)
			return ret;
		p2m_batch_init(&pb);
		umbra_rwlock_write_lock(&mmu->mmu_lock);
		ret = cow_break_locked(mmu, gfn, e, os, seq_s, seq_o, &pb);
		umbra_rwlock_write_unlock(&mmu->mmu_lock);
		p2m_batch_finish(mmu, &pb);
		if (ret != 1)
			return ret;
		mmu_stat_inc(mmu, retries);
	}
}

int shadow_mmu_cow_break(struct shadow_mmu *mmu, uint64_t gpa)
{
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_CLONE);
	const int ret = cow_break(mmu, gpa);

	if (t0)
		umbra_trace_span(UMBRA_TRACE_CLONE, "cow break", t0, &(struct umbra_trace_args){
			.key = { "vm", "gpa", "errno" },
			.val = { mmu_trace_id(mmu), gpa, ret < 0 ? (uint64_t)-ret : 0 },
			.hex = 2 });
	return ret;
}

/* Gives @child the slots of @parent (its non-shared writable ones as
 * layers) and @own as its own slot: with the id of the parent's own slot
 * @keep_own, which the parent keeps (it maps nothing yet), or after the
 * parent's @n slots (@keep_own -1).  No lock held (the slots are
 * subscribed). */
static int clone_slots(struct shadow_mmu *parent, struct shadow_mmu *child, int n, int keep_own,
		       const struct shadow_slot *own)
{
	const int own_id = keep_own >= 0 ? keep_own : n;
	int id, ret;

	for (int i = 0; i < n || i == own_id; i++) {
		const struct shadow_mmu_slot *ps = &parent->slots[i];

		if (i == own_id) {
			ret = shadow_mmu_add_slot(child, own, &id);
			if (ret)
				return ret;
			child->own_slot = id;
			continue;
		}
		ret = mmu_add_slot(child, &ps->s, ps->shared, &id);
		if (ret)
			return ret;
		child->slots[id].layer = !ps->shared && !ps->s.readonly;
	}
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
	umbra_rwlock_assert_held_write(&parent->mmu_lock);
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

/* Under the parent's mmu_lock: the cached roots copied, the P2M shared,
 * the parent's slots frozen and its new own slot @own_id published.  0 or
 * the error of a root copy (the parent's P2M and slots unchanged). */
static int clone_share_locked(struct shadow_mmu *parent, struct shadow_mmu *child, int n,
			      int own_id, bool keep_own, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&parent->mmu_lock);
	/* The child, not yet in use, gets a slot for each of ours. */
	int ret = root_cache_grow(child, parent->nr_roots);

	/* Copy-on-write is per page: no 2 MiB leaf stays. */
	if (parent->huge_used)
		huge_zap_all_locked(parent, b);
	/* Our tables become reachable by the child: no longer ours alone. */
	parent->clone_gen++;
	for (unsigned int r = 0; r < parent->nr_roots && !ret; r++)
		if (parent->roots[r].page != SHADOW_NO_PAGE)
			ret = clone_root_locked(parent, child, r);
	if (!ret) {
		p2m_share_locked(parent, child);
		for (int i = 0; i < n; i++) {
			struct shadow_mmu_slot *ps = &parent->slots[i];

			if (!ps->shared && !ps->s.readonly && !(keep_own && i == own_id))
				__atomic_store_n(&ps->layer, true, __ATOMIC_RELEASE);
			/* Shared with the child again: no longer taken over. */
			__atomic_store_n(&ps->taken_over, false, __ATOMIC_RELEASE);
		}
		if (!keep_own) {
			mmu_slot_publish_locked(parent, own_id);
			__atomic_store_n(&parent->own_slot, own_id, __ATOMIC_RELAXED);
		}
		child->tick = parent->tick;
		child->sharing = parent->sharing = true;
		child->cloned = parent->cloned = true;
		bump_sync_seq_locked(parent);
	}
	/* The parent's vCPUs must not keep a writable translation. */
	b->flush_all = true;
	b->zapped++;
	return ret;
}

int shadow_mmu_clone(struct shadow_mmu *parent, const struct shadow_slot *parent_own,
		     const struct shadow_slot *child_own, struct shadow_mmu **out)
{
	struct shadow_mmu_config cfg = {
		.pool = parent->pool,
		.max_gpa = parent->p2m_pages << SHADOW_PAGE_SHIFT,
		.nr_roots = parent->max_roots,
		.fault_around = parent->fault_around,
		.max_tables = parent->account->max,
		.mode = parent->mode,
	};
	int n = __atomic_load_n(&parent->nr_slots, __ATOMIC_ACQUIRE), own_id, ret;
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_CLONE);
	struct shadow_mmu *child;
	struct zap_batch b;

	if (!child_own || __atomic_load_n(&parent->own_slot, __ATOMIC_RELAXED) < 0)
		return -EINVAL;
	if (!parent_own) {
		/* The parent keeps its own slot, which maps nothing yet. */
		own_id = __atomic_load_n(&parent->own_slot, __ATOMIC_RELAXED);
	} else {
		if (n == SHADOW_MAX_SLOTS)
			return -ENOSPC;
		/* The parent's new own slot, subscribed but not yet published. */
		ret = mmu_slot_prepare(parent, parent_own, false, &own_id);
		if (ret)
			return ret;
	}
	ret = shadow_mmu_create(&cfg, &child);
	if (ret)
		goto unprepare_own;
	ret = clone_slots(parent, child, n, parent_own ? -1 : own_id, child_own);
	if (ret)
		goto destroy_child;
	zap_batch_init(&b);
	umbra_rwlock_write_lock(&parent->mmu_lock);
	ret = clone_share_locked(parent, child, n, own_id, !parent_own, &b);
	zap_batch_finish_locked(parent, &b);
	umbra_rwlock_write_unlock(&parent->mmu_lock);
	if (ret)
		goto destroy_child;
	mmu_stat_inc(child, clones);
	if (t0)
		umbra_trace_span(UMBRA_TRACE_CLONE, "shadow clone", t0, &(struct umbra_trace_args){
			.key = { "vm", "slots" }, .val = { mmu_trace_id(parent), (uint64_t)n } });
	*out = child;
	return 0;

destroy_child:
	shadow_mmu_destroy(child);
unprepare_own:
	if (parent_own)
		mmu_slot_unprepare(parent, own_id);
	return ret;
}
