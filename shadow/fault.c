/*
 * The fault path: first the fast restore of an access-tracked leaf
 * (access.c); else walk the guest's tables, look the page up in the P2M,
 * make it resident with the notifier's sequence/retry protocol, and install
 * the shadow path and leaf (docs/shadow.md, "Fault path"): a read-only leaf
 * into a shared table in place where every sharer sees the same leaf
 * (fill.c), else privatizing the path first.
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

/* ---- the install: the shadow path, then the leaf ------------------------- */

/* An existing child of entry @i of @parent whose role matches: privatize it
 * if shared (except a canonical table, whose leaves are the same for every
 * user and are filled in place); with @want_w, have the entry grant writes
 * (the child write-protected first if the entry did not).  mmu_lock. */
static int child_reuse_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			      uint64_t spte, uint64_t gva, bool want_w, struct zap_batch *b,
			      uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint32_t child = pool_page_index(spte_addr(spte));

	if (mmu_page(mmu, child)->canon) {
		/* Canonical: its leaves never grant more than the role. */
	} else if (table_is_shared(mmu, child)) {
		return table_copy_locked(mmu, parent, i, child, gva, b, out);
	} else if (want_w && !(spte & SPTE_WRITABLE)) {
		table_wrprot_locked(mmu, child);
	} else {
		*out = child;
		return 0;
	}
	if (want_w && !(spte & SPTE_WRITABLE))
		spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(child)));
	*out = child;
	return 0;
}

/* Points entry @i of @parent at canonical table @child, whose reference
 * the caller took (dropped after the flush if the link fails).  mmu_lock. */
static int child_link_canon_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
				   uint32_t child, struct zap_batch *b, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	int ret = pool_user_link(mmu->pool, child, mmu, parent, i);

	if (ret) {
		batch_add_put(mmu, b, child, SHADOW_NO_PAGE, UINT32_MAX);
		return ret;
	}
	spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(child)));
	*out = child;
	return 0;
}

/* A new empty table of @level with @role for entry @i of @parent.
 * mmu_lock. */
static int child_create_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i, int level,
			       const struct role *role, uint64_t gva, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint32_t child;
	int ret;

	ret = table_alloc_locked(mmu, level, role, gva, &child);
	if (ret)
		return ret;
	ret = pool_user_add(mmu->pool, child, mmu, parent, i);
	if (ret) {
		pool_free_index(mmu->pool, child);
		return ret;
	}
	/* Release store: the zeroed entries are visible before the table is. */
	spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(child)));
	mmu_stat_inc(mmu, tables_created);
	table_hash_add_locked(mmu, child);
	*out = child;
	return 0;
}

/*
 * Points entry @i of @parent at @child, a table of this VM's with the role
 * the entry needs that other entries of the VM point at already
 * (table_hash.c), with one more reference; then as child_reuse_locked.
 * The table is synced first: it is up to date for the address spaces that
 * reach it only as far as their guest flushed, and this one may already
 * have flushed a change to it (an invlpg that found no root of it did
 * nothing), so it gets what a table built now would hold, as KVM syncs an
 * unsync shadow page it links; the sync sequence moves, so a fault that
 * walked the guest before the sync walks again.  The link grants W: the
 * VM was never cloned (table_hash_find_locked), so no leaf in the table
 * relies on a write-protected entry above it, and write-protecting the
 * table to grant W later would take W from the pinned stacks of vCPUs on
 * the other roots that reach it.  mmu_lock.
 */
static int child_link_shared_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
				    uint32_t child, uint64_t gva, bool want_w, struct zap_batch *b,
				    uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t spte = spte_make_table(pool_page_gpa(child));
	int ret;

	sync_table_locked(mmu, child, b);
	bump_sync_seq_locked(mmu);
	ret = pool_user_add(mmu->pool, child, mmu, parent, i);
	if (ret)
		return ret;
	spte_set_locked(mmu, parent, i, spte);
	mmu_stat_inc(mmu, tables_reused);
	return child_reuse_locked(mmu, parent, i, spte, gva, want_w, b, out);
}

/*
 * Returns the child table for entry @i of @parent with role @role (or, if
 * @alt, the direct role @alt that stands for it: see alt_role), reusing,
 * attaching (a canonical table), linking this VM's shadow of the same guest
 * table (table_hash.c) or creating it, and zapping a stale one first.  @parent is a table this VM alone reaches, or a canonical level-2
 * table, whose entries are the same for every user: -EXDEV if it cannot
 * serve @role (the caller leaves it).  mmu_lock.
 */
static int child_get_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			    const struct role *role, const struct role *alt, uint64_t gva,
			    bool want_w, struct zap_batch *b, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t spte = spte_read(mmu_sptes(mmu, parent) + i);
	int level = mmu_page(mmu, parent)->level - 1;
	uint32_t child;

	if (mmu_page(mmu, parent)->canon)
		return canon_child_get_locked(mmu, parent, i, role, gva, b, out);
	if (spte_is_present(spte)) {
		const struct shadow_page *csp = mmu_page(mmu, pool_page_index(spte_addr(spte)));

		if (role_matches(csp, role) || (alt && role_matches(csp, alt)))
			return child_reuse_locked(mmu, parent, i, spte, gva, want_w, b, out);
		zap_spte_locked(mmu, parent, i, b); /* shadows what the guest no longer has */
	}
	if (level <= 2 && role->direct && canon_get_locked(mmu, level, role, gva, &child) == 0)
		return child_link_canon_locked(mmu, parent, i, child, b, out);
	if (level == 2 && alt && canon_guest_pd_matches(mmu, role->gpa, role->access, alt) &&
	    canon_get_locked(mmu, level, alt, gva, &child) == 0)
		return child_link_canon_locked(mmu, parent, i, child, b, out);
	if (table_hash_find_locked(mmu, level, role, gva, &child))
		return child_link_shared_locked(mmu, parent, i, child, gva, want_w, b, out);
	return child_create_locked(mmu, parent, i, level, role, gva, out);
}

/* The role of the level-@level table on the path of @w: the guest table
 * read there, or, below a guest large page, a direct table for the part of
 * it that the table covers (with @rights, the large page's). */
static struct role install_role(const struct shadow_walk *w, int level, unsigned int rights)
{
	const int leaf = w->leaf_level;

	if (level >= leaf)
		return (struct role){ .direct = false, .access = (uint8_t)w->rights_above[level],
				      .gpa = w->table[level] };
	uint64_t base = spte_leaf_addr(w->entry[leaf], leaf);
	uint64_t off = (w->va & SPTE_LEVEL_MASK(level + 1)) & (SPTE_LEVEL_SIZE(leaf) - 1);

	return (struct role){ .direct = true, .access = (uint8_t)rights, .gpa = base + off };
}

/*
 * The direct role that may stand for the level-@level table on @w's path
 * (with @rights, the leaf's): where the guest's page directory maps 2 MiB
 * pages, a level-2 table for the GiB at G that its entry i's page
 * (G + i * 2 MiB) belongs to, G 1 GiB-aligned.  Such a table (a segment's
 * canonical one, or a VM's copy of it) shadows the directory as long as the
 * directory maps that whole GiB in order with those rights
 * (canon_guest_pd_matches, checked where it is attached and by sync);
 * between syncs, a fault checks the one entry it walked, as a TLB may keep
 * what the other entries mapped until the guest flushes.  False if none.
 */
static bool alt_role(const struct shadow_walk *w, int level, unsigned int rights, struct role *alt)
{
	uint64_t page, off = (uint64_t)SPTE_INDEX(w->va, 2) * SPTE_LEVEL_SIZE(2);

	if (level != 2 || w->leaf_level != 2)
		return false;
	page = spte_leaf_addr(w->entry[2], 2);
	if (page < off || (page - off) % SPTE_LEVEL_SIZE(3))
		return false;
	*alt = (struct role){ .direct = true, .access = (uint8_t)rights, .gpa = page - off };
	return true;
}

/* Does table @child serve the level-@level table of @w's path?  */
static bool child_serves(struct shadow_mmu *mmu, uint32_t child, const struct shadow_walk *w,
			 int level, unsigned int rights)
{
	const struct role role = install_role(w, level, rights);
	struct role alt;

	return role_matches(mmu_page(mmu, child), &role) ||
	       (alt_role(w, level, rights, &alt) && role_matches(mmu_page(mmu, child), &alt));
}

/*
 * This VM's own shadow @pd of a guest page directory (entry @i of
 * @pdpt) has just had its last entry filled: if the directory maps a whole
 * GiB of a segment in order (alt_role, canon_guest_pd_matches), @pd is
 * exchanged for the segment's canonical level-2 table, which other VMs
 * share (a directory whose entries had A clear when it was first shadowed
 * could not attach then: every entry must be accessed).  True and the
 * canonical table in *@out if exchanged.  mmu_lock.
 */
static bool pd_exchange_locked(struct shadow_mmu *mmu, const struct shadow_walk *w,
			       unsigned int rights, uint32_t pdpt, unsigned int i, uint32_t pd,
			       struct zap_batch *b, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *sp = mmu_page(mmu, pd);
	struct role alt;
	uint32_t canon;

	if (sp->direct || table_is_shared(mmu, pd) || !alt_role(w, 2, rights, &alt) ||
	    !canon_guest_pd_matches(mmu, sp->gpa, sp->access, &alt) ||
	    canon_get_locked(mmu, 2, &alt, w->va & SPTE_LEVEL_MASK(4), &canon))
		return false;
	canon_adopt_locked(mmu, canon, pd);
	zap_spte_locked(mmu, pdpt, i, b); /* @pd goes after the flush */
	if (child_link_canon_locked(mmu, pdpt, i, canon, b, out))
		return false; /* the next fault creates a table again */
	mmu_stat_inc(mmu, canon_exchanged);
	return true;
}

/* Descends from @root along @w's path, getting each table; the level-1
 * table in *@table.  A canonical level-2 table that cannot serve the path
 * below it is left: this VM's entry is pointed at a private copy of it
 * (table_copy_locked); a VM's own level-2 table may be exchanged for a
 * canonical one (pd_exchange_locked).  Each entry of the path is also
 * rewritten in the visible copy of the pool if a guest changed it there
 * (the CPU walks that copy; what it had found there faulted).  mmu_lock. */
static int install_tables_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
				 unsigned int rights, bool want_w, struct zap_batch *b,
				 uint32_t *table)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint32_t grandparent = SHADOW_NO_PAGE;
	int ret;

	*table = root;
	for (int level = SPTE_LEVELS; level > 1; level--) {
		const struct role role = install_role(w, level - 1, rights);
		const unsigned int i = SPTE_INDEX(w->va, level);
		uint32_t parent = *table;
		struct role alt;
		bool has_alt = alt_role(w, level - 1, rights, &alt);

		const uint32_t present = __atomic_load_n(&mmu_page(mmu, parent)->nr_present,
							 __ATOMIC_RELAXED);

		ret = child_get_locked(mmu, parent, i, &role, has_alt ? &alt : NULL,
				       w->va & SPTE_LEVEL_MASK(level), want_w, b, table);
		if (!ret && level == 2 && present == SPTE_ENTRIES - 1 &&
		    __atomic_load_n(&mmu_page(mmu, parent)->nr_present, __ATOMIC_RELAXED) ==
			    SPTE_ENTRIES &&
		    pd_exchange_locked(mmu, w, rights, grandparent, SPTE_INDEX(w->va, 3), parent, b,
				       &parent))
			ret = child_get_locked(mmu, parent, i, &role, NULL,
					       w->va & SPTE_LEVEL_MASK(level), want_w, b, table);
		if (ret == -EXDEV) {
			/* @parent is canonical (so not the root): leave it. */
			ret = table_copy_locked(mmu, grandparent, SPTE_INDEX(w->va, level + 1), parent,
						w->va & SPTE_LEVEL_MASK(level + 1), b, &parent);
			if (!ret)
				ret = child_get_locked(mmu, parent, i, &role, NULL,
						       w->va & SPTE_LEVEL_MASK(level), want_w, b, table);
		}
		if (ret)
			return ret;
		pool_entry_mirror(mmu->pool, parent, i);
		grandparent = parent;
	}
	return 0;
}

/*
 * Writes leaf @spte, which maps page @page of @slot, at entry @i of level-1
 * table @table.  The leaf rule (struct pool_obj): a leaf and its
 * reverse-map entry change together under the page's stripe, and a leaf
 * that maps another page is cleared first (under that page's stripe).
 * mmu_lock held, no stripe.
 */
static int install_leaf_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			       struct shadow_mmu_slot *slot, uint64_t page, uint64_t spte,
			       struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const uint64_t mpa = spte_addr(spte);
	uint64_t *sptep = mmu_sptes(mmu, table) + i;
	struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, page);
	uint64_t old;
	int ret;

	for (;;) {
		old = spte_read(sptep);
		if (old == spte)
			return 0; /* another vCPU fixed it, or the faulting TLB entry was stale */
		if (spte_is_present(old) && spte_addr(old) != mpa) {
			if (spte_is_present(leaf_clear(mmu, table, i, b)))
				batch_add_table(b, table);
			continue;
		}
		umbra_mutex_lock(stripe);
		old = spte_read(sptep);
		if (!spte_is_present(old) || spte_addr(old) == mpa)
			break;
		umbra_mutex_unlock(stripe);
	}
	if (old == spte) {
		umbra_mutex_unlock(stripe);
		return 0;
	}
	if (!spte_is_present(old)) {
		ret = pool_obj_rmap_add(slot->pobj, page, sptep_make(table, i));
		if (ret) {
			umbra_mutex_unlock(stripe);
			return ret;
		}
	}
	spte_set_locked(mmu, table, i, spte);
	umbra_mutex_unlock(stripe);
	if (spte_is_present(old)) {
		/* Same page, other rights: the old translation goes. */
		b->zapped++;
		batch_add_leaf_va(mmu, table, i, b);
		batch_add_table(b, table);
	}
	mmu_stat_inc(mmu, installs);
	return 0;
}

/*
 * The level-1 table of @w's path below @root in *@table, if every table of
 * the path is already there with the right role (child_serves): true.
 * With @private_only, also every table below the root this VM's alone in a
 * way that holds while mmu_lock is held in read mode (no canonical table,
 * one user: the path's entry, in a table this VM alone reaches), and with
 * @want_w every entry of the path granting W; *@shared is then false.
 * Without, *@shared says whether a table of the path is shared
 * (table_is_shared: mmu_lock in write mode).  Read-only but for the
 * visible copy of the path's entries (as install_tables_locked).  mmu_lock
 * in either mode.
 */
static bool path_find(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
		      unsigned int rights, bool private_only, bool want_w, uint32_t *table,
		      bool *shared)
{
	umbra_rwlock_assert_held(&mmu->mmu_lock);

	*table = root;
	*shared = false;
	for (int level = SPTE_LEVELS; level > 1; level--) {
		const unsigned int i = SPTE_INDEX(w->va, level);
		const uint64_t spte = spte_read(mmu_sptes(mmu, *table) + i);
		const struct shadow_page *csp;
		uint32_t child;

		if (!spte_is_present(spte) || spte_is_leaf(spte, level) ||
		    (want_w && !(spte & SPTE_WRITABLE)))
			return false;
		child = pool_page_index(spte_addr(spte));
		csp = mmu_page(mmu, child);
		if (private_only &&
		    (csp->canon || __atomic_load_n(&csp->use_count, __ATOMIC_ACQUIRE) > 1))
			return false;
		if (!child_serves(mmu, child, w, level - 1, rights))
			return false;
		pool_entry_mirror(mmu->pool, *table, i);
		if (!private_only)
			*shared |= table_is_shared(mmu, child);
		*table = child;
	}
	return true;
}

/* The level-1 table of @w's path below @root, if every table of the path
 * is already there with the right role and the path is shared somewhere
 * below the root (else the ordinary install is as cheap and changes
 * nothing shared): true and *@table.  mmu_lock. */
static bool fill_path_find_locked(struct shadow_mmu *mmu, uint32_t root,
				  const struct shadow_walk *w, unsigned int rights,
				  uint32_t *table)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	bool shared;

	return path_find(mmu, root, w, rights, false, false, table, &shared) && shared;
}

/*
 * Installs leaf @spte, which maps page @page of @slot, at entry @i of
 * level-1 table @table, which this VM alone reaches (path_find with
 * @private_only), with mmu_lock in read mode: two such installs may run at
 * once.  Under the page's stripe (the leaf rule): the reverse-map entry
 * added, then the entry set from not present by compare-and-exchange, so
 * that of two installs on one entry (of different pages: different
 * stripes) exactly one succeeds; then the visible copy and the present
 * count, still under the stripe, so a non-local zap that finds the leaf
 * in the reverse map finds it whole.  No table lock: every other writer
 * of the entry holds mmu_lock in write mode (excluded), or the stripe of
 * the page the entry maps (a non-local zap of a present leaf, which the
 * exchange from not present sees).  0 (installed, or @spte already
 * there), -EBUSY (the entry holds another leaf: the write-mode install
 * decides) or -ENOMEM.  mmu_lock in read mode, no stripe; never blocks
 * but on the stripe.
 */
static int install_leaf_read_mode(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
				  struct shadow_mmu_slot *slot, uint64_t page, uint64_t spte)
{
	umbra_rwlock_assert_held(&mmu->mmu_lock);
	uint64_t *sptep = mmu_sptes(mmu, table) + i;
	struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, page);
	uint64_t old;
	int ret;

	umbra_mutex_lock(stripe);
	old = spte_read(sptep);
	if (old == spte) {
		ret = 0; /* another vCPU fixed it */
	} else if (spte_is_present(old)) {
		ret = -EBUSY;
	} else {
		ret = pool_obj_rmap_add(slot->pobj, page, sptep_make(table, i));
		if (!ret && !__atomic_compare_exchange_n(sptep, &old, spte, false, __ATOMIC_ACQ_REL,
							 __ATOMIC_ACQUIRE)) {
			/* Another page's leaf, installed under its stripe. */
			pool_obj_rmap_del(slot->pobj, page, sptep_make(table, i));
			ret = -EBUSY;
		} else if (!ret) {
			spte_write(pool_visible_entries(mmu->pool, table) + i, spte);
			__atomic_fetch_add(&mmu_page(mmu, table)->nr_present, 1, __ATOMIC_RELAXED);
			mmu_stat_inc(mmu, installs);
			mmu_stat_inc(mmu, read_mode_installs);
		}
	}
	umbra_mutex_unlock(stripe);
	return ret;
}

/* The leaf a fault installs for guest walk @w (page @page of @slot), and
 * in *@want_w whether it grants writes: W only once the guest's leaf is
 * dirty, never on a read-only slot or a copy-on-write page (looked up only
 * for a leaf the guest lets write: copy-on-write takes nothing else). */
static uint64_t fault_leaf(struct shadow_mmu *mmu, const struct shadow_walk *w,
			   struct shadow_mmu_slot *slot, uint64_t page, bool *want_w)
{
	const unsigned int rights = leaf_rights(w->rights, w->dirty);
	const bool cow = (rights & SHADOW_RIGHT_WRITE) && p2m_is_cow(mmu, w->pa >> SHADOW_PAGE_SHIFT);

	*want_w = (rights & SHADOW_RIGHT_WRITE) && !cow && !slot->s.readonly;
	return make_leaf(mmu, slot->s.mpa + (page << SHADOW_PAGE_SHIFT), rights, slot->s.readonly || cow);
}

/* After leaf @i of level-1 table @table was installed (or found) for page
 * @page of @slot: the visible copy restored if it differs (an
 * access-tracked leaf too, access.c), the page young, a write in place on
 * a taken-over layer counted.  mmu_lock in either mode (each step is
 * atomic or under the table lock). */
static void leaf_installed_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
				  struct shadow_mmu_slot *slot, uint64_t page, bool want_w)
{
	umbra_rwlock_assert_held(&mmu->mmu_lock);
	if (want_w && __atomic_load_n(&slot->layer, __ATOMIC_ACQUIRE))
		mmu_stat_inc(mmu, cow_takeovers); /* a taken-over page, written in place */
	pool_entry_mirror(mmu->pool, table, i);
	pool_obj_mark_young(slot->pobj, page);
}

/* Installs the translation of guest walk @w (page @page of @slot) below
 * root page @root: filled in place into a shared table when the fill is
 * read-only and every sharer sees the same leaf (fill.c), else into a
 * table this VM alone reaches (privatizing the path) or a canonical one.
 * The level-1 table of the leaf in *@leaf_table.  mmu_lock. */
static int install_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
			  struct shadow_mmu_slot *slot, uint64_t page, struct zap_batch *b,
			  uint32_t *leaf_table)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const unsigned int rights = leaf_rights(w->rights, w->dirty);
	bool want_w;
	const uint64_t spte = fault_leaf(mmu, w, slot, page, &want_w);
	uint32_t table;
	int ret = FILL_REFUSED;

	/* A read-only leaf (!want_w) in a shared table: fill in place (a VM
	 * that never shared has no shared table to look for). */
	if (!want_w && mmu->sharing && fill_path_find_locked(mmu, root, w, rights, &table))
		ret = fill_in_place_locked(mmu, table, SPTE_INDEX(w->va, 1), w, slot, page, spte);
	if (ret == FILL_REFUSED) {
		ret = install_tables_locked(mmu, root, w, rights, want_w, b, &table);
		if (ret)
			return ret;
		ret = install_leaf_locked(mmu, table, SPTE_INDEX(w->va, 1), slot, page, spte, b);
	}
	if (ret)
		return ret;
	leaf_installed_locked(mmu, table, SPTE_INDEX(w->va, 1), slot, page, want_w);
	*leaf_table = table;
	return 0;
}

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
		bool needs_ad = !(w->entry[l] & SPTE_ACCESSED) ||
				(l == w->leaf_level && (f->access & SHADOW_ACCESS_WRITE) &&
				 !(w->entry[l] & SPTE_DIRTY));
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

/* Steps 1-2: the guest walk (with A/D) and the P2M lookup.  0,
 * SHADOW_FAULT_GUEST (*@error_code set), FAULT_WALK_AGAIN or -errno.  No
 * lock held. */
static int fault_walk(struct shadow_mmu *mmu, struct fault *f, uint32_t *error_code)
{
	const bool write = f->access & SHADOW_ACCESS_WRITE;
	int ret;

	f->sync_seq = __atomic_load_n(&mmu->sync_seq, __ATOMIC_ACQUIRE);
	ret = shadow_walk(&mmu->mode, &guest_mem_ops, mmu, f->cr3, f->va, f->access,
			  SHADOW_WALK_SET_AD, &f->w);
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
	if (p2m_get(mmu, f->w.pa >> SHADOW_PAGE_SHIFT, &f->slot, &f->page))
		return -EFAULT;
	if (write && p2m_is_cow(mmu, f->w.pa >> SHADOW_PAGE_SHIFT)) {
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
	ret = install_locked(mmu, root->page, &f->w, f->slot, f->page, &b, &table);
	if (!ret)
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
	struct fault f = { .cr3 = cr3, .va = va, .access = access };
	unsigned int walks_again = 0;
	bool zapped_all = false;
	int ret;

	if (access & ~SHADOW_ACCESS_MASK)
		return -EINVAL;
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
