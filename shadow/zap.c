/*
 * Entry writes and zaps: the one function that writes a shadow entry
 * (spte_set_locked), the zap batch (what to flush, and what to put and free
 * once flushed), the put and free of tables, and the zaps of a slot range
 * (non-local: for every VM) and of everything this VM reaches.
 *
 * Locks: every function here but zap_batch_init / batch_add_table runs
 * under the zapping VM's mmu_lock (asserted).  A leaf is written under the
 * stripe of the page it maps (leaf_clear takes it; zap_page_rmap_locked is
 * called with it); an entry under its table's lock (spte_set_locked takes
 * it; the zap of a run holds it across one table's consecutive leaves).
 * The remote flush of a batch is pmd_rmap.c's.
 */
#include <errno.h>

#include "iter.h"
#include "mmu_internal.h"

/* The leaf rule (struct pool_obj), checked in debug builds: a present leaf
 * @e of a level-@level table changes only under its page's stripe. */
static void assert_leaf_stripe_held(struct shadow_mmu *mmu, int level, uint64_t e)
{
	struct shadow_mmu_slot *slot;
	uint64_t bp;

	if (!UMBRA_LOCK_DEBUG || !spte_is_present(e) || !spte_is_leaf(e, level))
		return;
	slot = mmu_mpa_to_slot(mmu, spte_addr(e), &bp);
	if (slot)
		umbra_mutex_assert_held(pool_obj_stripe(slot->pobj, bp));
}

uint64_t spte_set_table_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
			       uint64_t spte)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptep = mmu_sptes(mmu, page) + i;
	uint64_t old;

	umbra_mutex_assert_held(&sp->lock);
	old = spte_read(sptep);
	assert_leaf_stripe_held(mmu, sp->level, old);
	assert_leaf_stripe_held(mmu, sp->level, spte);
	pool_spte_write(mmu->pool, page, i, spte); /* the private copy, then the visible one */
	if (spte_is_present(old) && !spte_is_present(spte))
		__atomic_fetch_sub(&sp->nr_present, 1, __ATOMIC_RELAXED);
	else if (!spte_is_present(old) && spte_is_present(spte))
		__atomic_fetch_add(&sp->nr_present, 1, __ATOMIC_RELAXED);
	return old;
}

uint64_t spte_set_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, uint64_t spte)
{
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t old;

	umbra_mutex_lock(&sp->lock);
	old = spte_set_table_locked(mmu, page, i, spte);
	umbra_mutex_unlock(&sp->lock);
	return old;
}

struct umbra_mutex *leaf_stripe(struct shadow_mmu *mmu, uint64_t spte,
				   struct shadow_mmu_slot **slot, uint64_t *bp)
{
	*slot = mmu_mpa_to_slot(mmu, spte_addr(spte), bp);
	return *slot ? pool_obj_stripe((*slot)->pobj, *bp) : NULL;
}

/* ---- the zap batch ------------------------------------------------------- */

void zap_batch_init(struct zap_batch *b)
{
	b->nr_va = 0;
	b->flush_all = false;
	b->nr_tables = 0;
	b->tables_overflow = false;
	b->nr_puts = 0;
	b->free_head = SHADOW_NO_PAGE;
	b->zapped = 0;
	b->self = NULL;
	b->self_va = 0;
}

static void batch_add_va(struct zap_batch *b, uint64_t va)
{
	if (b->nr_va < ZAP_MAX_VA)
		b->va[b->nr_va++] = va;
	else
		b->flush_all = true;
}

void batch_add_table(struct zap_batch *b, uint32_t page)
{
	if (b->nr_tables && b->tables[b->nr_tables - 1] == page)
		return; /* the common case: the leaves of one table in a row */
	for (unsigned int k = 0; k < b->nr_tables; k++)
		if (b->tables[k] == page)
			return;
	if (b->nr_tables < ZAP_MAX_TABLES)
		b->tables[b->nr_tables++] = page;
	else
		b->tables_overflow = true;
}

void batch_add_leaf_va(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct zap_batch *b)
{
	struct shadow_page *sp = mmu_page(mmu, page);

	if (sp->canon)
		b->flush_all = true; /* one table, a different va in each VM */
	else
		batch_add_va(b, sp->gva + ((uint64_t)i << SHADOW_PAGE_SHIFT));
}

void batch_add_put(struct shadow_mmu *mmu, struct zap_batch *b, uint32_t child, uint32_t parent,
		   uint32_t index)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (b->nr_puts == ZAP_MAX_PUTS)
		zap_batch_finish_locked(mmu, b);
	b->puts[b->nr_puts++] = (struct zap_put){ .child = child, .parent = parent, .index = index };
	b->flush_all = true; /* paging-structure caches too */
}

/* ---- table alloc, put and free ---------------------------------------------------- */

int table_alloc_charged_locked(struct shadow_mmu *mmu, struct table_account *account, int level,
			       const struct role *role, uint64_t gva, uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp;
	int ret;

	if (account && !table_account_has_room(account)) {
		mmu_stat_inc(mmu, quota_refusals);
		return -EDQUOT;
	}
	ret = pool_alloc_index(mmu->pool, level, out);
	if (ret)
		return ret;
	sp = mmu_page(mmu, *out);
	if (account)
		table_charge(account, sp);
	/* Atomic: table_hash_find_locked may read them for a page another
	 * VM frees and allocates again meanwhile. */
	__atomic_store_n(&sp->direct, role->direct, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->access, role->access, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->gpa, role->gpa, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->gva, gva, __ATOMIC_RELAXED);
	return 0;
}

int table_alloc_locked(struct shadow_mmu *mmu, int level, const struct role *role, uint64_t gva,
		       uint32_t *out)
{
	return table_alloc_charged_locked(mmu, mmu->account, level, role, gva, out);
}

static void table_put_now_locked(struct shadow_mmu *mmu, uint32_t child, uint32_t parent,
				 uint32_t index);

/*
 * Frees table @page, whose use count just dropped to 0: no parent entry
 * points at it and every vCPU that walked it was flushed (each user flushed
 * its vCPUs before dropping its reference), so nothing reaches it.  Its
 * leaves leave the reverse map; its children lose a reference (and are freed
 * in turn at 0).  A canonical table leaves its object's array.
 */
void table_free_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptes = mmu_sptes(mmu, page);

	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);

		if (!spte_is_present(spte))
			continue;
		if (spte_is_leaf(spte, sp->level)) {
			leaf_clear(mmu, page, i, NULL);
		} else {
			spte_set_locked(mmu, page, i, 0);
			table_put_now_locked(mmu, pool_page_index(spte_addr(spte)), page, i);
		}
	}
	if (sp->canon)
		canon_forget_locked(mmu, page);
	pool_free_index(mmu->pool, page);
	mmu_stat_inc(mmu, tables_freed);
}

/* Drops the reference of entry @index of @parent (root slot @index when
 * @parent is SHADOW_NO_PAGE) on @child, now: the caller has flushed. */
static void table_put_now_locked(struct shadow_mmu *mmu, uint32_t child, uint32_t parent,
				 uint32_t index)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, child);

	pool_user_del(mmu->pool, child, mmu, parent, index);
	if (__atomic_sub_fetch(&sp->use_count, 1, __ATOMIC_ACQ_REL) == 0)
		table_free_locked(mmu, child);
}

/* ---- zaps ------------------------------------------------------------------ */

void leaf_rmap_del(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t bp, uint32_t page,
		   unsigned int i)
{
	if (mmu_page(mmu, page)->level == 2)
		pool_obj_huge_rmap_del(slot->pobj, bp / SPTE_ENTRIES, sptep_make(page, i));
	else
		pool_obj_rmap_del(slot->pobj, bp, sptep_make(page, i));
}

/*
 * The leaf rule's clear (struct pool_obj): read the leaf, take the stripe of
 * the page it maps, and clear it there if it still maps that page (a leaf
 * that went to another page meanwhile is read again).  @b may be NULL (an
 * unreachable table being freed: nothing to flush).
 */
uint64_t leaf_clear(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t *sptep = mmu_sptes(mmu, page) + i;

	for (;;) {
		uint64_t e = spte_read(sptep), now, old;
		struct shadow_mmu_slot *slot;
		struct umbra_mutex *stripe;
		uint64_t bp;

		if (!spte_is_present(e))
			return e;
		stripe = leaf_stripe(mmu, e, &slot, &bp);
		if (stripe)
			umbra_mutex_lock(stripe);
		now = spte_read(sptep);
		if (spte_is_present(now) && spte_addr(now) != spte_addr(e)) {
			if (stripe)
				umbra_mutex_unlock(stripe);
			continue;
		}
		old = spte_set_locked(mmu, page, i, 0);
		if (spte_is_present(old) && slot)
			leaf_rmap_del(mmu, slot, bp, page, i);
		if (stripe)
			umbra_mutex_unlock(stripe);
		if (spte_is_present(old) && b) {
			b->zapped++;
			batch_add_leaf_va(mmu, page, i, b);
			/* A 2 MiB leaf (in a table of ours: its level is stable),
			 * which a TLB may hold as 512 pages. */
			if (mmu_page(mmu, page)->level > 1)
				b->flush_all = true;
		}
		return old;
	}
}

void zap_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	int level = mmu_page(mmu, page)->level;
	uint64_t old = spte_read(mmu_sptes(mmu, page) + i);

	if (!spte_is_present(old))
		return;
	if (spte_is_leaf(old, level)) {
		leaf_clear(mmu, page, i, b);
		return;
	}
	/* Non-leaf entries change only in tables this VM alone reaches. */
	old = spte_set_locked(mmu, page, i, 0);
	if (!spte_is_present(old))
		return;
	b->zapped++;
	batch_add_put(mmu, b, pool_page_index(spte_addr(old)), page, i);
}

static void zap_table_entries_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b)
{
	unsigned int i;

	for_each_present_spte(mmu, page, i)
		zap_spte_locked(mmu, page, i, b);
}

/* Sends this VM's own vCPUs the flush @b requires.  mmu_lock. */
static void batch_flush_local_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const bool self_only_va = !b->flush_all && b->nr_va == 1 && b->va[0] == b->self_va;

	for (struct shadow_tlb *tlb = mmu->tlbs; tlb; tlb = tlb->next) {
		if (tlb == b->self && self_only_va)
			continue; /* an invlpg's caller: it invalidates self_va itself */
		if (b->flush_all) {
			tlb->ops->flush_all(tlb);
			mmu_stat_inc(mmu, flushes_all);
		} else {
			for (unsigned int k = 0; k < b->nr_va; k++)
				tlb->ops->flush_va(tlb, b->va[k]);
			mmu_stat_add(mmu, flushes_va, b->nr_va);
		}
	}
	mmu_stat_add(mmu, zapped, b->zapped);
}

void zap_batch_finish_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (b->zapped || b->nr_puts || b->free_head != SHADOW_NO_PAGE || b->nr_tables ||
	    b->tables_overflow)
		__atomic_fetch_add(&mmu->zap_gen, 1, __ATOMIC_RELEASE); /* stale marks */
	if (b->zapped || b->nr_puts || b->free_head != SHADOW_NO_PAGE)
		batch_flush_local_locked(mmu, b);
	/* Leaves cleared in place: every other VM that reaches those tables. */
	if (b->nr_tables || b->tables_overflow)
		batch_flush_remote(mmu, b);
	/* Every vCPU is flushed: drop the references (flush before put). */
	for (unsigned int k = 0; k < b->nr_puts; k++)
		table_put_now_locked(mmu, b->puts[k].child, b->puts[k].parent, b->puts[k].index);
	while (b->free_head != SHADOW_NO_PAGE) {
		uint32_t next = __atomic_load_n(&mmu_page(mmu, b->free_head)->next, __ATOMIC_RELAXED);

		pool_free_index(mmu->pool, b->free_head);
		mmu_stat_inc(mmu, tables_freed);
		b->free_head = next;
	}
	zap_batch_init(b);
}

/* Makes @page the table whose lock the zap of a run holds (*@held: the one
 * held now, SHADOW_NO_PAGE for none), so that consecutive leaves of one
 * table (a canonical or direct leaf table maps a run in order) take its
 * lock once.  mmu_lock and the run's stripe held. */
static void zap_run_hold_table_locked(struct shadow_mmu *mmu, uint32_t *held, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (*held == page)
		return;
	if (*held != SHADOW_NO_PAGE)
		umbra_mutex_unlock(&mmu_page(mmu, *held)->lock);
	*held = page;
	if (page != SHADOW_NO_PAGE)
		umbra_mutex_lock(&mmu_page(mmu, page)->lock);
}

/* Clears every leaf that maps page @page % SPTE_ENTRIES of @run (page @page
 * of @slot's object), in place (the reverse map, @page's stripe held), and
 * queues the tables for the remote flush; the page's mapped bit is cleared.
 * mmu_lock and the stripe held; *@held as zap_run_hold_table_locked leaves
 * it. */
static void zap_page_rmap_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot,
				 struct pool_obj_run *run, uint64_t page, uint32_t *held,
				 struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	umbra_mutex_assert_held(pool_obj_stripe(slot->pobj, page));
	struct shadow_rmap *rmap = &run->rmap[page % SPTE_ENTRIES];

	while (rmap_nr(rmap)) {
		shadow_sptep_t s = rmap_get(rmap, rmap->nr - 1);
		uint64_t old;

		zap_run_hold_table_locked(mmu, held, sptep_page(s));
		old = spte_set_table_locked(mmu, sptep_page(s), sptep_index(s), 0);
		rmap_del(rmap, s);
		if (!spte_is_present(old))
			continue;
		b->zapped++;
		batch_add_leaf_va(mmu, sptep_page(s), sptep_index(s), b);
		batch_add_table(b, sptep_page(s));
	}
	run->mapped[page % SPTE_ENTRIES / 64] &= ~(1ull << (page % 64));
}

/* Clears the leaves of pages [first, last] of run @r of @slot's object
 * (both in the run), visiting only the pages whose mapped bit is set.  The
 * pages visited (mmu stat rmap_scans) in *@scanned.  mmu_lock and the run's
 * stripe held. */
static void zap_run_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t r,
			   uint64_t first, uint64_t last, struct zap_batch *b, uint64_t *scanned)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct pool_obj_run *run = pool_obj_run(slot->pobj, r);
	const unsigned int i0 = (unsigned int)(first % SPTE_ENTRIES);
	const unsigned int i1 = (unsigned int)(last % SPTE_ENTRIES);
	uint32_t held = SHADOW_NO_PAGE;

	if (!run)
		return; /* never used */
	if (rmap_nr(&run->huge))
		huge_zap_run_locked(mmu, slot, run, r, first, last, b);
	for (unsigned int w = i0 / 64; w <= i1 / 64; w++) {
		uint64_t bits = run->mapped[w];

		if (w == i0 / 64)
			bits &= ~0ull << (i0 % 64);
		if (w == i1 / 64 && i1 % 64 != 63)
			bits &= (1ull << (i1 % 64 + 1)) - 1;
		while (bits) {
			unsigned int i = w * 64 + (unsigned int)__builtin_ctzll(bits);

			bits &= bits - 1;
			zap_page_rmap_locked(mmu, slot, run, r * SPTE_ENTRIES + i, &held, b);
			(*scanned)++;
		}
	}
	zap_run_hold_table_locked(mmu, &held, SHADOW_NO_PAGE);
}

/*
 * Non-local: clears, in place, every leaf in the pool that maps pages
 * [first, last] of @slot's object (whichever VM installed it, private or
 * shared table), and flushes every other VM that reaches those tables.  One
 * stripe at a time: the pages of the range under stripe k (runs r with
 * r % POOL_OBJ_STRIPES == k) are cleared and the remote flush done before
 * that stripe is dropped, so at most POOL_OBJ_STRIPES remote flushes
 * whatever the range's size.  Only pages with a leaf are visited (a run's
 * mapped bits): a page emptied by an earlier callback of the same
 * invalidation in another VM costs a bit test, not a reverse-map look.
 */
void zap_slot_range_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t first,
			   uint64_t last, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (last >= slot->npages)
		last = slot->npages - 1;
	if (first > last)
		return;
	const uint64_t r0 = first / SPTE_ENTRIES, r1 = last / SPTE_ENTRIES;
	const uint64_t nr_stripes = r1 - r0 + 1 < POOL_OBJ_STRIPES ? r1 - r0 + 1 : POOL_OBJ_STRIPES;
	uint64_t scanned = 0;

	for (uint64_t k = 0; k < nr_stripes; k++) {
		struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, (r0 + k) * SPTE_ENTRIES);

		umbra_mutex_lock(stripe);
		for (uint64_t r = r0 + k; r <= r1; r += POOL_OBJ_STRIPES) {
			uint64_t p = r * SPTE_ENTRIES > first ? r * SPTE_ENTRIES : first;
			uint64_t end = r * SPTE_ENTRIES + SPTE_ENTRIES - 1 < last ?
					       r * SPTE_ENTRIES + SPTE_ENTRIES - 1 : last;

			zap_run_locked(mmu, slot, r, p, end, b, &scanned);
		}
		/* Other VMs' vCPUs are flushed before the reverse map shows
		 * the pages unmapped (our own ones in zap_batch_finish_locked,
		 * under our mmu_lock, before our callback returns). */
		batch_flush_remote(mmu, b);
		umbra_mutex_unlock(stripe);
	}
	mmu_stat_add(mmu, rmap_scans, scanned);
}

long shadow_mmu_zap_range(struct shadow_mmu *mmu, int slot_id, uint64_t first, uint64_t last)
{
	struct shadow_mmu_slot *slot = slot_of_id(mmu, slot_id);
	struct zap_batch b;
	long n;

	if (!slot || first > last || first >= slot->npages)
		return -EINVAL;
	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	zap_slot_range_locked(mmu, slot, first, last, &b);
	n = (long)b.zapped;
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return n;
}

static void zap_all_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			zap_table_entries_locked(mmu, mmu->roots[r].page, b);
	b->flush_all = true;
	bump_sync_seq_locked(mmu);
}

void shadow_mmu_zap_all(struct shadow_mmu *mmu)
{
	struct zap_batch b;

	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	zap_all_locked(mmu, &b);
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
}
