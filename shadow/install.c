/*
 * The install: the shadow path and the leaf of a fault (docs/shadow.md,
 * "Fault path", steps 6-7).  The descent gets each table of the path
 * (reusing, attaching a canonical table, linking this VM's shadow of the
 * same guest table, creating, privatizing a shared one, exchanging a
 * directory for a canonical one), then the leaf is written with its
 * reverse-map entry: in write mode (install_locked, install_leaf_locked),
 * or, below a path that is all there and the VM's alone, in read mode by
 * compare-and-exchange (path_find, install_leaf_read_mode).  fault.c
 * decides which; fill.c fills a read-only leaf into a shared table in
 * place.
 *
 * Locks: everything here runs under the VM's mmu_lock, in write mode
 * unless a comment says "either mode" or "read mode"; leaves under their
 * page's stripe, entries under their table's lock.
 */
#include <errno.h>

#include "mmu_internal.h"

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
	if (spte_is_present(spte) && spte_is_leaf(spte, level + 1)) {
		zap_spte_locked(mmu, parent, i, b); /* a 2 MiB leaf: a table replaces it */
	} else if (spte_is_present(spte)) {
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
struct role install_role(const struct shadow_walk *w, int level, unsigned int rights)
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

/* Descends from @root along @w's path, getting each table; the level-@stop
 * table (1, or 2 for a 2 MiB leaf) in *@table.  A canonical level-2 table that cannot serve the path
 * below it is left: this VM's entry is pointed at a private copy of it
 * (table_copy_locked); a VM's own level-2 table may be exchanged for a
 * canonical one (pd_exchange_locked).  Each entry of the path is also
 * rewritten in the visible copy of the pool if a guest changed it there
 * (the CPU walks that copy; what it had found there faulted).  mmu_lock. */
int install_tables_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
				 unsigned int rights, bool want_w, int stop, struct zap_batch *b,
				 uint32_t *table)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint32_t grandparent = SHADOW_NO_PAGE;
	int ret;

	*table = root;
	for (int level = SPTE_LEVELS; level > stop; level--) {
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
int install_leaf_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
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
bool path_find(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
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
int install_leaf_read_mode(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
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
uint64_t fault_leaf(struct shadow_mmu *mmu, const struct shadow_walk *w,
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
void leaf_installed_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			   struct shadow_mmu_slot *slot, uint64_t page, bool want_w)
{
	umbra_rwlock_assert_held(&mmu->mmu_lock);
	if (want_w && __atomic_load_n(&slot->layer, __ATOMIC_ACQUIRE))
		mmu_stat_inc(mmu, cow_takeovers); /* a taken-over page, written in place */
	pool_entry_mirror(mmu->pool, table, i);
	pool_obj_mark_young(slot->pobj, page);
}

/* Installs the translation of guest walk @w (page @page of @slot, @seq the
 * fault's notifier_read_begin) below root page @root: a 2 MiB leaf where
 * one may serve (huge.c), else filled in place into a shared table when the fill is
 * read-only and every sharer sees the same leaf (fill.c), else into a
 * table this VM alone reaches (privatizing the path) or a canonical one.
 * The level-1 table of the leaf in *@leaf_table.  mmu_lock. */
int install_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
		   struct shadow_mmu_slot *slot, uint64_t page, uint64_t seq, struct zap_batch *b,
		   uint32_t *leaf_table)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const unsigned int rights = leaf_rights(w->rights, w->dirty);
	bool want_w;
	const uint64_t spte = fault_leaf(mmu, w, slot, page, &want_w);
	uint32_t table;
	int ret = FILL_REFUSED;

	/* A guest 2 MiB page over a whole run of contiguous resident backing:
	 * one 2 MiB leaf (huge.c). */
	ret = install_huge_locked(mmu, root, w, slot, page, seq, b, &table);
	if (ret != HUGE_REFUSED) {
		*leaf_table = table;
		return ret;
	}
	ret = FILL_REFUSED;
	/* A read-only leaf (!want_w) in a shared table: fill in place (a VM
	 * that never shared has no shared table to look for). */
	if (!want_w && mmu->sharing && fill_path_find_locked(mmu, root, w, rights, &table))
		ret = fill_in_place_locked(mmu, table, SPTE_INDEX(w->va, 1), w, slot, page, spte);
	if (ret == FILL_REFUSED) {
		ret = install_tables_locked(mmu, root, w, rights, want_w, 1, b, &table);
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
