/*
 * Sync: the shadow tables are a cache of the guest's tables, brought up to
 * date where x86 requires the guest to flush its TLB (invlpg, CR3 load, full
 * flush) and where the guest says it changed a table other address spaces
 * use (shadow_mmu_sync_guest_table).  expect_entry says what an entry should
 * be from the guest's tables and the P2M now; the sync functions zap what no
 * longer matches, keep what does (an invlpg of a mapping the guest did not
 * change is harmless, as on x86), and never change a shared table for one VM
 * (they leave it instead).
 *
 * Locks: every function here runs under the VM's mmu_lock (asserted); the
 * entries are written through zap.c (table locks, stripes).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "iter.h"
#include "mmu_internal.h"

struct expect {
	enum { EXPECT_NONE, EXPECT_TABLE, EXPECT_LEAF } kind;
	struct role role;	/* EXPECT_TABLE */
	uint64_t gpa;		/* EXPECT_LEAF: guest-physical page */
	unsigned int rights;	/* EXPECT_LEAF: rights (W only if the guest's D is set) */
};

/* What entry @i of direct table @sp (part of a guest large page) should be. */
static void expect_direct_entry(const struct shadow_page *sp, unsigned int i, struct expect *e)
{
	int level = sp->level;
	uint64_t gpa = sp->gpa + (uint64_t)i * SPTE_LEVEL_SIZE(level);

	if (level == 1) {
		e->kind = EXPECT_LEAF;
		e->gpa = gpa;
		e->rights = sp->access;
	} else {
		e->kind = EXPECT_TABLE;
		e->role = (struct role){ .direct = true, .access = sp->access, .gpa = gpa };
	}
}

/* Is guest entry @g, of the guest table at @table, accessed?  An entry with
 * A clear is one the CPU has not used since the guest cleared it: its next
 * use must set A again (SDM 4.8), so no shadow of it may survive a sync.
 * In a read-only slot nobody can clear A (nor can umbra set it): such an
 * entry counts as accessed. */
static bool guest_entry_is_accessed(struct shadow_mmu *mmu, uint64_t table, uint64_t g)
{
	struct shadow_mmu_slot *slot;
	uint64_t page;

	return spte_is_accessed(g) ||
	       (!p2m_get(mmu, table >> SHADOW_PAGE_SHIFT, &slot, &page) && slot->s.readonly);
}

/* What entry @i of shadow table @sp should be, from the guest's tables now. */
static void expect_entry(struct shadow_mmu *mmu, const struct shadow_page *sp, unsigned int i,
			 struct expect *e)
{
	const struct shadow_paging_mode *mode = &mmu->mode;
	int level = sp->level;
	uint64_t g;

	e->kind = EXPECT_NONE;
	if (sp->direct) {
		expect_direct_entry(sp, i, e);
		return;
	}
	if (guest_read(mmu, sp->gpa + i * sizeof(uint64_t), &g))
		return;
	if (!spte_is_present(g) || !guest_entry_is_accessed(mmu, sp->gpa, g) ||
	    (g & spte_rsvd_mask(g, level, mode->maxphyaddr, mode->nxe, mode->gbpages)))
		return;
	unsigned int rights = sp->access & walk_entry_rights(mode, g);

	if (level == 1) {
		e->kind = EXPECT_LEAF;
		e->gpa = spte_addr(g);
		e->rights = leaf_rights(rights, spte_is_dirty(g));
	} else if (spte_is_leaf(g, level)) {
		e->kind = EXPECT_TABLE;
		e->role = (struct role){ .direct = true,
					 .access = (uint8_t)leaf_rights(rights, spte_is_dirty(g)),
					 .gpa = spte_leaf_addr(g, level) };
	} else {
		e->kind = EXPECT_TABLE;
		e->role = (struct role){ .direct = false, .access = (uint8_t)rights, .gpa = spte_addr(g) };
	}
}

/* Does present leaf @spte agree with @e (and the P2M) now? */
static bool leaf_matches(struct shadow_mmu *mmu, uint64_t spte, const struct expect *e)
{
	struct shadow_mmu_slot *slot;
	uint64_t page, mpa;

	if (e->kind != EXPECT_LEAF || p2m_get(mmu, e->gpa >> SHADOW_PAGE_SHIFT, &slot, &page))
		return false;
	mpa = slot->s.mpa + (page << SHADOW_PAGE_SHIFT);
	/* Exactly the entry a fault would install now, or its read-only form
	 * (installed before the guest's D was set). */
	/* A copy-on-write page is installed read-only; a writable leaf of one
	 * made before the clone stays valid behind the write-protected entries
	 * above it (docs/sharing.md, "Write protection"). */
	return spte == make_leaf(mmu, mpa, e->rights, slot->s.readonly) ||
	       spte == make_leaf(mmu, mpa, e->rights & ~SHADOW_RIGHT_WRITE, true);
}

/* Does present table entry @spte agree with @e: the child's role, or, for a
 * guest page directory, a direct level-2 table that maps what the whole
 * directory maps now (a segment's canonical one, or a copy of it)? */
static bool table_entry_matches(struct shadow_mmu *mmu, uint64_t spte, const struct expect *e)
{
	const struct shadow_page *csp = mmu_page(mmu, pool_page_index(spte_addr(spte)));
	const struct role direct = { .direct = true, .access = csp->access, .gpa = csp->gpa };

	if (e->kind != EXPECT_TABLE)
		return false;
	if (role_matches(csp, &e->role))
		return true;
	return csp->level == 2 && csp->direct && !e->role.direct &&
	       canon_guest_pd_matches(mmu, e->role.gpa, e->role.access, &direct);
}

bool expect_large_page_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct role *role)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *sp = mmu_page(mmu, page);
	struct expect e;

	if (sp->direct)
		return false;
	expect_entry(mmu, sp, i, &e);
	if (e.kind != EXPECT_TABLE || !e.role.direct)
		return false;
	*role = e.role;
	return true;
}

/* Does present entry @spte, entry of a level-@level table, agree with @e:
 * a leaf (4 KiB, or 2 MiB: huge.c) with what a fault would install now, a
 * table entry with its child's role? */
static bool entry_matches(struct shadow_mmu *mmu, int level, uint64_t spte, const struct expect *e)
{
	if (level == 1)
		return leaf_matches(mmu, spte, e);
	if (spte_is_leaf(spte, level))
		return e->kind == EXPECT_TABLE && e->role.direct &&
		       huge_leaf_matches(mmu, spte, &e->role, NULL);
	return table_entry_matches(mmu, spte, e);
}

/* Read-only: does every present entry of the subtree at @page agree with
 * this VM's guest tables and P2M now?  Each leaf table is read after
 * fill_barrier_locked: a fill in place made for another VM's view either
 * refuses or is seen here.  mmu_lock. */
static bool subtree_matches_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptes = mmu_sptes(mmu, page);

	if (sp->level == 1)
		fill_barrier_locked(mmu, page); /* after any fill in progress (fill.c) */
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);
		struct expect e;

		if (!spte_is_present(spte))
			continue;
		expect_entry(mmu, sp, i, &e);
		if (!entry_matches(mmu, sp->level, spte, &e))
			return false;
		if (sp->level > 1 && !spte_is_leaf(spte, sp->level) &&
		    !subtree_matches_locked(mmu, pool_page_index(spte_addr(spte))))
			return false;
	}
	return true;
}

/*
 * Checks present entry @i of @page against the guest's tables; zaps it (and
 * what hangs below it) if it no longer matches.  With @recurse, syncs the
 * child table too.  Returns true if the entry is still present.  mmu_lock.
 */
static bool sync_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, bool recurse,
			     struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t spte = spte_read(mmu_sptes(mmu, page) + i);
	struct expect e;

	if (!spte_is_present(spte))
		return false;
	expect_entry(mmu, sp, i, &e);
	if (!entry_matches(mmu, sp->level, spte, &e)) {
		zap_spte_locked(mmu, page, i, b);
		return false;
	}
	if (sp->level == 1 || !recurse || spte_is_leaf(spte, sp->level))
		return true;
	uint32_t child = pool_page_index(spte_addr(spte));

	if (!table_is_shared(mmu, child)) {
		sync_table_locked(mmu, child, b);
		return true;
	}
	/* Never change a shared table for one VM: if anything below differs
	 * from our guest's tables, leave it. */
	if (!subtree_matches_locked(mmu, child)) {
		zap_spte_locked(mmu, page, i, b);
		return false;
	}
	return true;
}

void sync_table_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b)
{
	unsigned int i;

	for_each_present_spte(mmu, page, i)
		sync_spte_locked(mmu, page, i, true, b);
}

/* Read-only: does the path of @va below @page (a shared table) agree with
 * our guest now?  The leaf table is read after fill_barrier_locked, as in
 * subtree_matches_locked.  mmu_lock. */
static bool path_matches_locked(struct shadow_mmu *mmu, uint32_t page, uint64_t va)
{
	struct shadow_iter it;

	for_each_shadow_entry(mmu, it, page, va) {
		struct expect e;
		uint64_t spte;

		if (it.level == 1)
			fill_barrier_locked(mmu, it.page); /* after any fill in progress (fill.c) */
		spte = spte_read(it.sptep);
		if (!spte_is_present(spte))
			return true;
		expect_entry(mmu, mmu_page(mmu, it.page), it.index, &e);
		if (it.level == 1 || spte_is_leaf(spte, it.level))
			return entry_matches(mmu, it.level, spte, &e);
		if (!table_entry_matches(mmu, spte, &e))
			return false;
	}
	return true;
}

void shadow_mmu_invlpg(struct shadow_mmu *mmu, struct shadow_tlb *self, uint64_t cr3, uint64_t va)
{
	struct shadow_root *root;
	struct shadow_iter it;
	struct zap_batch b;

	zap_batch_init(&b);
	b.self = self;
	b.self_va = va & SPTE_LEVEL_MASK(1);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	mmu_stat_inc(mmu, invlpg);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	if (root) {
		for_each_shadow_entry(mmu, it, root->page, va) {
			/* An entry on the path that no longer matches the guest
			 * goes (a table with everything below it); one that
			 * still matches stays: the leaf too, so that an invlpg
			 * of a mapping the guest did not change (its IDT, stack,
			 * #PF handler) costs it nothing. */
			if (!sync_spte_locked(mmu, it.page, it.index, false, &b) || it.level == 1 ||
			    spte_is_leaf(spte_read(it.sptep), it.level))
				break;
			/* A shared table below is never changed for one VM: keep
			 * it if it still agrees with our guest, else leave it. */
			uint32_t child = pool_page_index(spte_addr(spte_read(it.sptep)));

			if (table_is_shared(mmu, child)) {
				if (!path_matches_locked(mmu, child, va))
					zap_spte_locked(mmu, it.page, it.index, &b);
				break;
			}
		}
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
}

int shadow_mmu_flush(struct shadow_mmu *mmu, uint64_t cr3)
{
	struct shadow_root *root;
	struct zap_batch b;
	int ret = 0;

	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	if (root) {
		sync_table_locked(mmu, root->page, &b);
		mmu_stat_inc(mmu, syncs);
	} else {
		ret = -ENOENT;
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return ret;
}

/* ---- a guest table changed: every shadow of it ---------------------------- */

/* Does @sp shadow the guest page table at @gpa (not a part of a large page)? */
static bool shadows_guest_table(const struct shadow_page *sp, uint64_t gpa)
{
	return !sp->direct && sp->gpa == gpa;
}

/* Read-only: how many tables of the subtree at @page shadow the guest table
 * at @gpa.  mmu_lock. */
static unsigned int subtree_count_shadows_locked(struct shadow_mmu *mmu, uint32_t page, uint64_t gpa)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *sp = mmu_page(mmu, page);
	unsigned int n = shadows_guest_table(sp, gpa), i;

	if (sp->level == 1)
		return n;
	for_each_present_spte(mmu, page, i) {
		const uint64_t spte = spte_read(mmu_sptes(mmu, page) + i);

		if (!spte_is_leaf(spte, sp->level))
			n += subtree_count_shadows_locked(mmu, pool_page_index(spte_addr(spte)), gpa);
	}
	return n;
}

/*
 * Syncs every table of the subtree at @page (this VM's alone) that shadows
 * the guest table at @gpa against the guest's page: its entries that no
 * longer match go.  A shared table below that holds such a shadow is never
 * changed for one VM: the entry that reaches it goes unless all of it still
 * agrees with our guest.  A table that several of the VM's entries link
 * (table_hash.c) is visited once (@seen: a bit per pool page; NULL: once
 * per path).  Returns the number of shadows found.  mmu_lock.
 */
static unsigned int subtree_sync_shadows_locked(struct shadow_mmu *mmu, uint32_t page, uint64_t gpa,
						uint8_t *seen, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *sp = mmu_page(mmu, page);
	unsigned int n = 0, i;

	if (seen) {
		if (seen[page / CHAR_BIT] & (1u << (page % CHAR_BIT)))
			return 0;
		seen[page / CHAR_BIT] |= (uint8_t)(1u << (page % CHAR_BIT));
	}
	if (shadows_guest_table(sp, gpa)) {
		for_each_present_spte(mmu, page, i)
			sync_spte_locked(mmu, page, i, false, b);
		n++;
	}
	if (sp->level == 1)
		return n;
	for_each_present_spte(mmu, page, i) {
		const uint64_t spte = spte_read(mmu_sptes(mmu, page) + i);
		uint32_t child = pool_page_index(spte_addr(spte));
		unsigned int found;

		if (spte_is_leaf(spte, sp->level))
			continue; /* a 2 MiB leaf */
		if (!table_is_shared(mmu, child)) {
			n += subtree_sync_shadows_locked(mmu, child, gpa, seen, b);
			continue;
		}
		found = subtree_count_shadows_locked(mmu, child, gpa);
		if (found && !subtree_matches_locked(mmu, child))
			zap_spte_locked(mmu, page, i, b);
		n += found;
	}
	return n;
}

int shadow_mmu_sync_guest_table(struct shadow_mmu *mmu, uint64_t gpa)
{
	struct zap_batch b;
	unsigned int n = 0;
	uint8_t *seen;

	if (gpa % SHADOW_PAGE_SIZE || gpa >> SHADOW_PAGE_SHIFT >= mmu->p2m_pages)
		return -EINVAL;
	/* Without memory for it, tables several roots link are synced (and
	 * counted) once per path: more work, the same result. */
	seen = calloc(mmu->pool->nr_pages / CHAR_BIT + 1, 1);
	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	/* Every cached root, and below it every table this VM reaches: a
	 * bounded scan (the tables this VM holds), no index by guest page. */
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			n += subtree_sync_shadows_locked(mmu, mmu->roots[r].page, gpa, seen, &b);
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	free(seen);
	return (int)n;
}
