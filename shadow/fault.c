/*
 * The fault path: first the fast restore of an access-tracked leaf
 * (access.c); else walk the guest's tables, look the page up in the P2M,
 * make it resident with the notifier's sequence/retry protocol, and install
 * the shadow path and leaf (install.c; docs/shadow.md, "Fault path"): a
 * read-only leaf into a shared table in place where every sharer sees the
 * same leaf (fill.c), else privatizing the path first.
 *
 * Locks: the walk, notifier_read_begin() and the slot's get_page run with no
 * shadow lock held (asserted); the retry checks and the install run under
 * the VM's mmu_lock, leaves under their page's stripe, entries under their
 * table's lock.  A fault whose shadow path is all there and the VM's alone
 * takes mmu_lock in read mode and installs the leaf alone, by
 * compare-and-exchange (fault_install_read_mode); any other, in write
 * mode (every *_locked function asserts write mode unless its comment
 * says "either mode").
 */
#include <errno.h>

#include "mmu_internal.h"

/* ---- the fault: walk, make resident, install ----------------------------- */

/* Results of the steps of a fault, besides 0, SHADOW_FAULT_GUEST, -errno. */
#define FAULT_WALK_AGAIN 2	/* guest memory changed under the walk (a copy-on-write
				 * copy, entries changing under the A/D updates): walk again */
#define FAULT_RETRY 3		/* an invalidation raced: count a retry, walk again */
#define FAULT_STALE 4		/* a sync raced and the guest's tables or the P2M changed
				 * since the walk: count a retry, walk again */
#define FAULT_SLOW 5		/* the read-mode install cannot do it: install in write
				 * mode */
_Static_assert(FAULT_WALK_AGAIN != SHADOW_FAULT_GUEST && FAULT_RETRY != SHADOW_FAULT_GUEST &&
		       FAULT_STALE != SHADOW_FAULT_GUEST && FAULT_SLOW != SHADOW_FAULT_GUEST &&
		       FAULT_WALK_AGAIN != SHADOW_FAULT_FIXED && FAULT_RETRY != SHADOW_FAULT_FIXED &&
		       FAULT_STALE != SHADOW_FAULT_FIXED && FAULT_SLOW != SHADOW_FAULT_FIXED,
	       "internal fault results are not public ones");

/*
 * Walks again (FAULT_WALK_AGAIN and FAULT_STALE: what the guest or its
 * clones can cause) after which a fault ends with -ELOOP: a legal guest needs
 * a few (one per copy-on-write copy of a table on the path, one per change
 * of its own entries racing the fault).  Invalidations (FAULT_RETRY) are the
 * host's, not the guest's: each needs a new invalidation of the very page
 * to begin while the fault resolves it, and they are not bounded.
 */
#define FAULT_MAX_WALKS_AGAIN 64u

struct fault {
	uint64_t cr3, va;
	unsigned int access;
	uint64_t sync_seq;		/* mmu->sync_seq before the guest walk */
	struct shadow_walk w;
	struct shadow_mmu_slot *slot;	/* the P2M's answer for w.pa */
	uint64_t page;
	uint64_t notifier_seq;		/* notifier_read_begin()'s */
};

/* Same translation from the same guest entries (A/D aside)? */
static bool same_walk(const struct shadow_walk *a, const struct shadow_walk *b)
{
	const uint64_t ignore = SPTE_ACCESSED | SPTE_DIRTY;

	if (a->leaf_level != b->leaf_level || a->pa != b->pa || a->rights != b->rights ||
	    a->dirty != b->dirty)
		return false;
	for (int l = SPTE_LEVELS; l >= a->leaf_level; l--)
		if (a->table[l] != b->table[l] || (a->entry[l] & ~ignore) != (b->entry[l] & ~ignore))
			return false;
	return true;
}

/* Does the entry of level @l of walk @w lack an A/D bit that an access
 * @access through it sets (A at every level, D in the leaf of a write)? */
static bool walk_entry_needs_ad(const struct shadow_walk *w, int l, unsigned int access)
{
	return !(w->entry[l] & SPTE_ACCESSED) ||
	       (l == w->leaf_level && (access & SHADOW_ACCESS_WRITE) && !(w->entry[l] & SPTE_DIRTY));
}

/*
 * The walk could not set A/D (-EROFS): in a guest table shared
 * copy-on-write with a clone, copy the table first (0: walk again); in a
 * guest table of a read-only slot they can never be set: -EROFS.  No lock
 * held.
 */
static int fault_copy_guest_tables(struct shadow_mmu *mmu, const struct fault *f)
{
	const struct shadow_walk *w = &f->w;

	for (int l = SPTE_LEVELS; l >= w->leaf_level && l >= 1; l--) {
		const bool needs_ad = walk_entry_needs_ad(w, l, f->access);
		const uint64_t gfn = w->table[l] >> SHADOW_PAGE_SHIFT;
		struct shadow_mmu_slot *slot;
		uint64_t page;
		int ret;

		if (!needs_ad)
			continue;
		if (p2m_is_cow(mmu, gfn)) {
			ret = shadow_mmu_cow_break(mmu, w->table[l]);
			if (ret)
				return ret;
		} else if (!p2m_get(mmu, gfn, &slot, &page) && slot->s.readonly) {
			return -EROFS;
		}
	}
	return 0;
}

/*
 * The guest walk of fault @f and the P2M entry of its page, read-only, in
 * one P2M read-side section (struct p2m_reader: the walk's lookups and the
 * page's share it, and its cache of the last chunk): shadow_walk's result,
 * or 1 if the walk succeeded but an entry lacks an A/D bit the access sets
 * (the caller walks again, setting them).  On 0, *@e and *@private: the
 * page's entry (P2M_NONE: none) and whether its path is this VM's alone.
 * No lock held; reads of guest memory inside the section may fault on a
 * page the pager brings in, which delays grace periods, never waits for
 * one.
 */
static int fault_walk_read(struct shadow_mmu *mmu, struct fault *f, uint64_t *e, bool *private)
{
	struct p2m_reader r;
	uint64_t gfn;
	int ret;

	p2m_reader_begin(&r, mmu);
	ret = walk_guest_reader(&mmu->mode, &r, f->cr3, f->va, f->access, &f->w);
	for (int l = SPTE_LEVELS; !ret && l >= f->w.leaf_level; l--)
		if (walk_entry_needs_ad(&f->w, l, f->access))
			ret = 1;
	gfn = f->w.pa >> SHADOW_PAGE_SHIFT;
	if (!ret)
		*e = gfn < mmu->p2m_pages ? p2m_reader_lookup(&r, gfn, private) : P2M_NONE;
	p2m_reader_end(&r);
	return ret;
}

/* Steps 1-2: the guest walk (with A/D) and the P2M lookup.  0,
 * SHADOW_FAULT_GUEST (*@error_code set), FAULT_WALK_AGAIN or -errno.  No
 * lock held. */
static int fault_walk(struct shadow_mmu *mmu, struct fault *f, uint32_t *error_code)
{
	const bool write = f->access & SHADOW_ACCESS_WRITE;
	uint64_t e = P2M_NONE;
	bool private = false;
	int ret;

	f->sync_seq = __atomic_load_n(&mmu->sync_seq, __ATOMIC_ACQUIRE);
	ret = fault_walk_read(mmu, f, &e, &private);
	if (ret == 1) {
		/* First use of an entry, or first write: the walk that sets A/D. */
		ret = shadow_walk(&mmu->mode, &guest_mem_ops, mmu, f->cr3, f->va, f->access,
				  SHADOW_WALK_SET_AD, &f->w);
		if (!ret && (f->w.pa >> SHADOW_PAGE_SHIFT) < mmu->p2m_pages)
			e = p2m_entry_lookup(mmu, f->w.pa >> SHADOW_PAGE_SHIFT, &private);
	}
	if (ret == -EFAULT) {
		*error_code = f->w.error_code;
		mmu_stat_inc(mmu, guest_faults);
		return SHADOW_FAULT_GUEST;
	}
	if (ret == -EROFS) {
		ret = fault_copy_guest_tables(mmu, f);
		return ret ? ret : FAULT_WALK_AGAIN;
	}
	if (ret == -EAGAIN)
		return FAULT_WALK_AGAIN; /* entries kept changing under the A/D updates */
	if (ret)
		return ret == -EIO ? -EFAULT : ret;
	if (p2m_entry_to_page(mmu, e, &f->slot, &f->page))
		return -EFAULT;
	if (write && p2m_entry_needs_break(mmu, e, private)) {
		/* The first write to a page shared with a clone. */
		ret = shadow_mmu_cow_break(mmu, f->w.pa);
		return ret ? ret : FAULT_WALK_AGAIN;
	}
	if (__atomic_load_n(&f->slot->released, __ATOMIC_ACQUIRE))
		return -ENODEV;
	if (write && f->slot->s.readonly)
		return -EACCES; /* the guest may write it, its backing may not be written */
	return 0;
}

/* Step 5: an invlpg / flush / P2M change ran since our walk: is what we
 * read still what the guest says?  mmu_lock.  The walk again only reads
 * guest memory (no A/D update): a thread holding mmu_lock never writes guest
 * memory, so that it never waits for a page that an eviction has
 * write-protected while that eviction waits for this mmu_lock
 * (docs/locking.md, "The pager and reclaim").  Entries whose A/D bits the
 * guest cleared since the first walk differ from it: the fault walks again
 * without the lock. */
static bool fault_walk_is_current_locked(struct shadow_mmu *mmu, const struct fault *f)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot2;
	struct shadow_walk w2;
	uint64_t page2;

	if (__atomic_load_n(&mmu->sync_seq, __ATOMIC_ACQUIRE) == f->sync_seq)
		return true;
	if (shadow_walk(&mmu->mode, &guest_mem_ops, mmu, f->cr3, f->va, f->access, 0, &w2))
		return false;
	for (int l = SPTE_LEVELS; l >= w2.leaf_level; l--)
		if (!(w2.entry[l] & SPTE_ACCESSED))
			return false; /* the guest cleared an A bit the first walk set */
	return same_walk(&f->w, &w2) &&
	       !p2m_get(mmu, f->w.pa >> SHADOW_PAGE_SHIFT, &slot2, &page2) && slot2 == f->slot &&
	       page2 == f->page;
}

/* ---- fault-around (shadow_mmu_fault's contract) ------------------------------ */

/* The guest's translation of @va, a neighbour of fault @f in the same
 * level-1 shadow table, in *@w: under the same guest large page (no read
 * needed), or through the same guest tables with every level's Accessed
 * bit already set (read only: no A/D written under mmu_lock).  mmu_lock. */
static bool around_walk_locked(struct shadow_mmu *mmu, const struct fault *f, uint64_t va,
			       struct shadow_walk *w)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const int leaf = f->w.leaf_level;

	if (leaf > 1) {
		*w = f->w;
		w->va = va;
		w->pa = spte_leaf_addr(f->w.entry[leaf], leaf) + (va & (SPTE_LEVEL_SIZE(leaf) - 1));
		return true;
	}
	if (shadow_walk(&mmu->mode, &guest_mem_ops, mmu, f->cr3, va, 0, 0, w) || w->leaf_level != 1)
		return false;
	for (int l = SPTE_LEVELS; l >= 1; l--)
		if (w->table[l] != f->w.table[l] || !(w->entry[l] & SPTE_ACCESSED))
			return false;
	return true;
}

/*
 * Maps the neighbours of fault @f (whose leaf is in @table) that qualify,
 * in the aligned window of mmu->fault_around pages: not mapped in @table
 * (an access-tracked leaf stays as it is), mapped by the guest as
 * around_walk_locked says with the role of @table, backed by the faulting
 * page's slot and resident there.  One notifier_read_retry for them all,
 * with the fault's sequence.  Best effort: what fails a test, or an
 * allocation, is left to fault.  mmu_lock.
 */
static void fault_around_locked(struct shadow_mmu *mmu, const struct fault *f, uint32_t table,
				struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot = f->slot;
	const struct shadow_slot_ops *ops = slot->s.ops;
	const unsigned int n = mmu->fault_around, i = SPTE_INDEX(f->va, 1), i0 = i & ~(n - 1);
	struct {
		unsigned int index;
		uint64_t page, spte;
		bool want_w;
	} cand[SHADOW_FAULT_AROUND_MAX];
	unsigned int nr = 0, done = 0;
	uint64_t lo = UINT64_MAX, hi = 0;

	if (n <= 1 || table_is_shared(mmu, table) || (ops && ops->get_page && !ops->is_resident))
		return;
	for (unsigned int j = i0; j < i0 + n; j++) {
		const uint64_t va = (f->va & SPTE_LEVEL_MASK(2)) | ((uint64_t)j << SHADOW_PAGE_SHIFT);
		struct shadow_mmu_slot *slot2;
		struct shadow_walk w;
		uint64_t page;
		struct role role;

		if (j == i || spte_is_present(spte_read(mmu_sptes(mmu, table) + j)) ||
		    !around_walk_locked(mmu, f, va, &w) ||
		    p2m_get(mmu, w.pa >> SHADOW_PAGE_SHIFT, &slot2, &page) || slot2 != slot)
			continue;
		role = install_role(&w, 1, leaf_rights(w.rights, w.dirty));
		if (!role_matches(mmu_page(mmu, table), &role) ||
		    (ops && ops->get_page && !ops->is_resident(slot->s.priv, page)))
			continue;
		cand[nr].index = j;
		cand[nr].page = page;
		cand[nr].spte = fault_leaf(mmu, &w, slot, page, &cand[nr].want_w);
		lo = page < lo ? page : lo;
		hi = page > hi ? page : hi;
		nr++;
	}
	if (!nr || notifier_read_retry(slot->s.obj, lo, hi, f->notifier_seq))
		return;
	for (unsigned int k = 0; k < nr; k++) {
		if (install_leaf_locked(mmu, table, cand[k].index, slot, cand[k].page, cand[k].spte, b))
			break;
		leaf_installed_locked(mmu, table, cand[k].index, slot, cand[k].page, cand[k].want_w);
		done++;
	}
	mmu_stat_add(mmu, faulted_around, done);
}

/* Step 4: did an invalidation of the page begin since
 * notifier_read_begin (FAULT_RETRY), or its slot go (-ENODEV)?  0 if
 * neither.  mmu_lock in either mode. */
static int fault_recheck(struct shadow_mmu *mmu, const struct fault *f)
{
	umbra_rwlock_assert_held(&mmu->mmu_lock);
	if (notifier_read_retry(f->slot->s.obj, f->page, f->page, f->notifier_seq))
		return FAULT_RETRY;
	if (__atomic_load_n(&f->slot->released, __ATOMIC_RELAXED))
		return -ENODEV;
	return 0;
}

/* Is every other entry of @va's fault-around window in level-1 table
 * @table present (nothing for fault-around to map; true with fault-around
 * off)?  Entries read atomically; mmu_lock in either mode. */
static bool around_window_is_full(struct shadow_mmu *mmu, uint32_t table, uint64_t va)
{
	const unsigned int n = mmu->fault_around, i = SPTE_INDEX(va, 1), i0 = i & ~(n - 1);

	for (unsigned int j = i0; n > 1 && j < i0 + n; j++)
		if (j != i && !spte_is_present(spte_read(mmu_sptes(mmu, table) + j)))
			return false;
	return true;
}

/*
 * Steps 4-7 with mmu_lock in read mode, for the common fault whose shadow
 * path is all there and this VM's alone: the retry checks, then the leaf
 * alone (install_leaf_read_mode), so that faults of one VM on other pages
 * run at once.  What holds for the write-mode install holds here: every
 * change to the path's tables, every sync, P2M change and invalidation
 * callback of this VM takes mmu_lock in write mode, so none runs between
 * the checks and the install.  0, FAULT_RETRY, -ENODEV, or FAULT_SLOW
 * where the write-mode install (fault_install) must decide: a sync since
 * the walk, no cached root, a table of the path missing, shared, canonical
 * or of another role, an entry of the path not granting a W the leaf
 * needs, the entry holding another leaf (other rights, another page), no
 * memory, or fault-around to do (an entry of the window not present).
 * Takes and drops mmu_lock in read mode;
 * no lock held on entry.
 */
static int fault_install_read_mode(struct shadow_mmu *mmu, struct fault *f)
{
	const unsigned int rights = leaf_rights(f->w.rights, f->w.dirty);
	struct shadow_root *root;
	uint32_t table;
	uint64_t spte;
	bool want_w, shared;
	int ret;

	umbra_rwlock_read_lock(&mmu->mmu_lock);
	ret = fault_recheck(mmu, f);
	if (ret)
		goto unlock;
	ret = FAULT_SLOW;
	if (__atomic_load_n(&mmu->sync_seq, __ATOMIC_ACQUIRE) != f->sync_seq)
		goto unlock;
	root = root_find_locked(mmu, cr3_key(mmu, f->cr3));
	if (!root)
		goto unlock;
	spte = fault_leaf(mmu, &f->w, f->slot, f->page, &want_w);
	if (!path_find(mmu, root->page, &f->w, rights, true, want_w, &table, &shared) ||
	    !around_window_is_full(mmu, table, f->va) ||
	    install_leaf_read_mode(mmu, table, SPTE_INDEX(f->va, 1), f->slot, f->page, spte))
		goto unlock;
	leaf_installed_locked(mmu, table, SPTE_INDEX(f->va, 1), f->slot, f->page, want_w);
	ret = 0;
unlock:
	umbra_rwlock_read_unlock(&mmu->mmu_lock);
	return ret;
}

/* Steps 4-7 with mmu_lock in write mode: the retry checks, then the
 * install (and fault-around) and its flush.  0, FAULT_RETRY, FAULT_STALE or
 * -errno. */
static int fault_install(struct shadow_mmu *mmu, struct fault *f)
{
	struct shadow_root *root;
	struct zap_batch b;
	uint32_t table;
	int ret;

	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	ret = fault_recheck(mmu, f);
	if (ret)
		goto unlock;
	if (!fault_walk_is_current_locked(mmu, f)) {
		ret = FAULT_STALE;
		goto unlock;
	}
	root = root_find_locked(mmu, cr3_key(mmu, f->cr3));
	if (!root) {
		ret = -ENOENT;
		goto unlock;
	}
	ret = install_locked(mmu, root->page, &f->w, f->slot, f->page, f->notifier_seq, &b, &table);
	if (!ret && table != SHADOW_NO_PAGE)
		fault_around_locked(mmu, f, table, &b);
	zap_batch_finish_locked(mmu, &b);
unlock:
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return ret;
}

/* shadow_mmu_fault without its trace span. */
static int fault_resolve(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, unsigned int access,
			 uint32_t *error_code)
{
	/* Field by field, not an initializer: zeroing the whole struct (its
	 * walk's arrays) compiles to a string store (rep stos) that a fault
	 * pays for on every call.  Every other field is written before it is
	 * read (fault_walk: sync_seq, w, slot, page; slot_page_get:
	 * notifier_seq). */
	struct fault f;
	unsigned int walks_again = 0;
	bool zapped_all = false;
	int ret;

	if (access & ~SHADOW_ACCESS_MASK)
		return -EINVAL;
	f.cr3 = cr3;
	f.va = va;
	f.access = access;
	mmu_stat_inc(mmu, faults);
	/* An access-tracked leaf: restored without a guest walk (access.c). */
	if (fault_fast_restore(mmu, cr3, va, access)) {
		mmu_stat_inc(mmu, fixed);
		return SHADOW_FAULT_FIXED;
	}
	for (;;) {
		ret = fault_walk(mmu, &f, error_code);
		if (ret == FAULT_WALK_AGAIN && ++walks_again > FAULT_MAX_WALKS_AGAIN)
			return -ELOOP;
		if (ret == FAULT_WALK_AGAIN)
			continue;
		if (ret)
			return ret;
		/* Step 3: no shadow lock held so far. */
		ret = slot_page_get(f.slot, f.page,
				    (leaf_rights(f.w.rights, f.w.dirty) & SHADOW_RIGHT_WRITE) &&
					    !f.slot->s.readonly,
				    &f.notifier_seq);
		if (ret)
			return ret;
		ret = fault_install_read_mode(mmu, &f);
		if (ret == FAULT_SLOW)
			ret = fault_install(mmu, &f);
		if (ret == FAULT_STALE && ++walks_again > FAULT_MAX_WALKS_AGAIN)
			return -ELOOP;
		if (ret == FAULT_RETRY || ret == FAULT_STALE) {
			mmu_stat_inc(mmu, retries);
			continue;
		}
		if ((ret == -ENOMEM || ret == -EDQUOT) && !zapped_all) {
			/* Pool full or quota reached: the least recently used
			 * address space no vCPU runs on goes (its tables when
			 * their pages are reusable, after a grace period), and
			 * the fault tries again; with none left, this VM's
			 * tables go (never another VM's) and it tries once
			 * more. */
			if (mmu_evict_lru_root(mmu, ret == -ENOMEM))
				continue;
			mmu_reclaim(mmu);
			zapped_all = true;
			continue;
		}
		if (ret)
			return ret;
		mmu_stat_inc(mmu, fixed);
		return SHADOW_FAULT_FIXED;
	}
}

/* The fault's span in a --trace: address, access, outcome. */
static void trace_fault(uint64_t t0, uint64_t va, unsigned int access, int ret)
{
	const char *outcome = ret == SHADOW_FAULT_FIXED	 ? "fixed"
			      : ret == SHADOW_FAULT_GUEST ? "guest"
							  : "error";

	umbra_trace_span(UMBRA_TRACE_FAULT, "fault", t0, &(struct umbra_trace_args){
		.key = { "va", "access", "errno" },
		.val = { va, access, ret < 0 ? (uint64_t)-ret : 0 },
		.hex = 1,
		.skey = { "outcome" },
		.sval = { outcome } });
}

int shadow_mmu_fault(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, unsigned int access,
		     uint32_t *error_code)
{
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_FAULT);
	const int ret = fault_resolve(mmu, cr3, va, access, error_code);

	if (t0)
		trace_fault(t0, va, access, ret);
	return ret;
}

int shadow_mmu_translate(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, uint64_t *gpa)
{
	struct shadow_walk w;
	int ret;

	shadow_assert_no_lock_held();
	ret = shadow_walk(&mmu->mode, &guest_mem_ops, mmu, cr3, va, 0, 0, &w); /* a supervisor read */
	if (ret)
		return ret == -EIO ? -EFAULT : ret;
	*gpa = w.pa;
	return 0;
}
