/*
 * The per-VM shadow MMU: slots and P2M, the root cache, fault resolution,
 * sync (invlpg, CR3 load, full flush), zaps and teardown.
 *
 * Shape (after Linux's arch/x86/kvm/mmu/): spte.h encodes, the
 * for_each_shadow_entry iterator below walks, and the policy functions
 * (install_locked, zap_spte_locked, sync_*_locked) decide.
 *
 * Rules every function here keeps (docs/locking.md, "shadow/"):
 *  - an entry of a table page is written only under the page's table lock,
 *    with spte_write (release), and, in this issue, also under the owning
 *    MMU's mmu_lock, which serialises the structure;
 *  - a table page is freed only after every registered vCPU was flushed
 *    (zap_batch_finish_locked), so no vCPU walk can be inside it;
 *  - a leaf is installed only under mmu_lock after notifier_read_retry() said
 *    no invalidation of its backing page began since notifier_read_begin(),
 *    and after a check that no guest-table sync began since the guest walk.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shadow_internal.h"

/* ---- small helpers ------------------------------------------------------ */

static inline struct shadow_page *mmu_page(struct shadow_mmu *mmu, uint32_t index)
{
	return pool_page(mmu->pool, index);
}

static inline uint64_t *mmu_sptes(struct shadow_mmu *mmu, uint32_t index)
{
	return pool_entries(mmu->pool, index);
}

static uint64_t cr3_key(const struct shadow_mmu *mmu, uint64_t cr3)
{
	return cr3 & SPTE_ADDR_MASK & ((1ull << mmu->mode.maxphyaddr) - 1);
}

static void bump_sync_seq_locked(struct shadow_mmu *mmu)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	__atomic_fetch_add(&mmu->sync_seq, 1, __ATOMIC_RELEASE);
}

static struct shadow_mmu_slot *slot_of_id(struct shadow_mmu *mmu, int id)
{
	if (id < 0 || id >= __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE))
		return NULL;
	return &mmu->slots[id];
}

struct shadow_mmu_slot *mmu_mpa_to_slot(struct shadow_mmu *mmu, uint64_t mpa, uint64_t *page)
{
	int n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);

	for (int i = 0; i < n; i++) {
		struct shadow_mmu_slot *slot = &mmu->slots[i];

		if (mpa >= slot->s.mpa && (mpa - slot->s.mpa) >> SHADOW_PAGE_SHIFT < slot->npages) {
			*page = (mpa - slot->s.mpa) >> SHADOW_PAGE_SHIFT;
			return slot;
		}
	}
	return NULL;
}

/* P2M: gfn -> (slot, page).  Lock-free snapshot; stores under mmu_lock. */
static int p2m_get(struct shadow_mmu *mmu, uint64_t gfn, struct shadow_mmu_slot **slot,
		   uint64_t *page)
{
	uint64_t e;

	if (gfn >= mmu->p2m_pages)
		return -EFAULT;
	e = __atomic_load_n(&mmu->p2m[gfn], __ATOMIC_ACQUIRE);
	if (!e)
		return -EFAULT;
	*slot = &mmu->slots[(e >> P2M_SLOT_SHIFT) - 1];
	*page = e & P2M_PAGE_MASK;
	return 0;
}

int shadow_mmu_p2m_lookup(struct shadow_mmu *mmu, uint64_t gpa, uint64_t *mpa, void **host)
{
	struct shadow_mmu_slot *slot;
	uint64_t page, off = gpa & (SHADOW_PAGE_SIZE - 1);

	if (p2m_get(mmu, gpa >> SHADOW_PAGE_SHIFT, &slot, &page))
		return -EFAULT;
	*mpa = slot->s.mpa + (page << SHADOW_PAGE_SHIFT) + off;
	if (host)
		*host = (char *)slot->s.host + (page << SHADOW_PAGE_SHIFT) + off;
	return 0;
}

/* The guest's memory as the walker sees it: through the P2M. */
static int guest_read(void *ctx, uint64_t pa, uint64_t *val)
{
	uint64_t mpa;
	void *host;

	if (shadow_mmu_p2m_lookup(ctx, pa, &mpa, &host))
		return -EFAULT;
	*val = __atomic_load_n((uint64_t *)host, __ATOMIC_ACQUIRE);
	return 0;
}

static int guest_cmpxchg(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val)
{
	struct shadow_mmu *mmu = ctx;
	struct shadow_mmu_slot *slot;
	uint64_t page;

	if (p2m_get(mmu, pa >> SHADOW_PAGE_SHIFT, &slot, &page))
		return -EFAULT;
	if (slot->s.readonly)
		return -EROFS;
	uint64_t *p = (uint64_t *)((char *)slot->s.host + (page << SHADOW_PAGE_SHIFT) +
				   (pa & (SHADOW_PAGE_SIZE - 1)));
	return __atomic_compare_exchange_n(p, &old, new_val, false, __ATOMIC_ACQ_REL,
					   __ATOMIC_ACQUIRE)
		       ? 0
		       : -EAGAIN;
}

static const struct shadow_mem_ops guest_mem_ops = {
	.read = guest_read,
	.cmpxchg = guest_cmpxchg,
};

/*
 * for_each_shadow_entry - walk the shadow path of @va from root page @root:
 * at each step @it.page is the table at @it.level and @it.index the entry
 * for @va in it.  The body may stop the walk with break; it continues into
 * the child while the entry is a present non-leaf entry.
 */
struct shadow_iter {
	uint32_t page;
	int level;
	unsigned int index;
	uint64_t *sptep;
};

static void iter_init(struct shadow_mmu *mmu, struct shadow_iter *it, uint32_t root, uint64_t va)
{
	it->page = root;
	it->level = SPTE_LEVELS;
	it->index = SPTE_INDEX(va, it->level);
	it->sptep = mmu_sptes(mmu, root) + it->index;
}

static bool iter_next(struct shadow_mmu *mmu, struct shadow_iter *it, uint64_t va)
{
	uint64_t spte = spte_read(it->sptep);

	if (it->level == 1 || !spte_is_present(spte) || spte_is_leaf(spte, it->level))
		return false;
	it->page = pool_page_index(spte_addr(spte));
	it->level--;
	it->index = SPTE_INDEX(va, it->level);
	it->sptep = mmu_sptes(mmu, it->page) + it->index;
	return true;
}

#define for_each_shadow_entry(mmu, it, root, va) \
	for (iter_init((mmu), &(it), (root), (va)); (it).level > 0; \
	     (it).level = iter_next((mmu), &(it), (va)) ? (it).level : 0)

/* ---- entry writes, zaps, flush batches --------------------------------- */

/* Writes entry @i of @page under its table lock; returns the old value. */
static uint64_t spte_set_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
				uint64_t spte)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptep = mmu_sptes(mmu, page) + i;
	uint64_t old;

	notifier_mutex_lock(&sp->lock);
	old = spte_read(sptep);
	spte_write(sptep, spte);
	if (spte_is_present(old) && !spte_is_present(spte))
		sp->nr_present--;
	else if (!spte_is_present(old) && spte_is_present(spte))
		sp->nr_present++;
	notifier_mutex_unlock(&sp->lock);
	return old;
}

void zap_batch_init(struct zap_batch *b)
{
	b->nr_va = 0;
	b->flush_all = false;
	b->free_head = SHADOW_NO_PAGE;
	b->zapped = 0;
}

static void batch_add_va(struct zap_batch *b, uint64_t va)
{
	if (b->nr_va < ZAP_MAX_VA)
		b->va[b->nr_va++] = va;
	else
		b->flush_all = true;
}

static void zap_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
			    struct zap_batch *b);

static void zap_table_entries_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	uint64_t *sptes = mmu_sptes(mmu, page);

	for (unsigned int i = 0; i < SPTE_ENTRIES && mmu_page(mmu, page)->nr_present; i++)
		if (spte_is_present(spte_read(&sptes[i])))
			zap_spte_locked(mmu, page, i, b);
}

/* Drops the reference that entry @index of @parent (or root slot @index
 * when @parent is SHADOW_NO_PAGE) held on table @child; the last one zaps
 * the child's entries and queues it for freeing after the flush. */
static void table_put_locked(struct shadow_mmu *mmu, uint32_t child, uint32_t parent,
			     uint32_t index, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, child);

	pool_user_del(mmu->pool, child, mmu, parent, index);
	if (__atomic_sub_fetch(&sp->use_count, 1, __ATOMIC_ACQ_REL) == 0) {
		zap_table_entries_locked(mmu, child, b);
		b->flush_all = true; /* paging-structure caches too */
		sp->next = b->free_head;
		b->free_head = child;
	}
}

static void leaf_unlink_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
			       uint64_t old, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot;
	uint64_t bp;

	slot = mmu_mpa_to_slot(mmu, spte_addr(old), &bp);
	if (slot)
		rmap_del(&slot->rmap[bp], sptep_make(page, i));
	batch_add_va(b, mmu_page(mmu, page)->gva + ((uint64_t)i << SHADOW_PAGE_SHIFT));
}

static void zap_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
			    struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	int level = mmu_page(mmu, page)->level;
	uint64_t old = spte_set_locked(mmu, page, i, 0);

	if (!spte_is_present(old))
		return;
	b->zapped++;
	if (spte_is_leaf(old, level))
		leaf_unlink_locked(mmu, page, i, old, b);
	else
		table_put_locked(mmu, pool_page_index(spte_addr(old)), page, i, b);
}

void zap_batch_finish_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	if (b->zapped || b->free_head != SHADOW_NO_PAGE) {
		for (struct shadow_tlb *tlb = mmu->tlbs; tlb; tlb = tlb->next) {
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
	/* Every vCPU is flushed: no walk can be inside these pages any more. */
	while (b->free_head != SHADOW_NO_PAGE) {
		uint32_t next = mmu_page(mmu, b->free_head)->next;

		pool_free_index(mmu->pool, b->free_head);
		mmu_stat_inc(mmu, tables_freed);
		b->free_head = next;
	}
	zap_batch_init(b);
}

void zap_slot_range_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t first,
			   uint64_t last, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	if (last >= slot->npages)
		last = slot->npages - 1;
	for (uint64_t p = first; p <= last; p++) {
		struct shadow_rmap *rmap = &slot->rmap[p];

		while (rmap->nr) {
			uint32_t nr = rmap->nr;
			shadow_sptep_t s = rmap_get(rmap, nr - 1);

			zap_spte_locked(mmu, sptep_page(s), sptep_index(s), b);
			if (rmap->nr == nr) /* not unlinked: a corrupt entry; drop it */
				rmap_del(rmap, s);
		}
	}
}

/* ---- what the guest's tables say an entry should be -------------------- */

struct role {
	bool direct;
	uint8_t access;
	uint64_t gpa;
};

struct expect {
	enum { EXPECT_NONE, EXPECT_TABLE, EXPECT_LEAF } kind;
	struct role role;	/* EXPECT_TABLE */
	uint64_t gpa;		/* EXPECT_LEAF: guest-physical page */
	unsigned int rights;	/* EXPECT_LEAF: rights (W only if the guest's D is set) */
};

/* Rights of a leaf as the shadow may grant them: W only once dirty. */
static unsigned int leaf_rights(unsigned int rights, bool dirty)
{
	return dirty ? rights : rights & ~SHADOW_RIGHT_WRITE;
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
		uint64_t gpa = sp->gpa + (uint64_t)i * SPTE_LEVEL_SIZE(level);

		if (level == 1) {
			e->kind = EXPECT_LEAF;
			e->gpa = gpa;
			e->rights = sp->access;
		} else {
			e->kind = EXPECT_TABLE;
			e->role = (struct role){ .direct = true, .access = sp->access, .gpa = gpa };
		}
		return;
	}
	if (guest_read(mmu, sp->gpa + i * sizeof(uint64_t), &g))
		return;
	if (!spte_is_present(g) ||
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

static bool role_matches(const struct shadow_page *sp, const struct role *role)
{
	return sp->direct == role->direct && sp->access == role->access && sp->gpa == role->gpa;
}

static uint64_t make_leaf(const struct shadow_mmu *mmu, uint64_t mpa, unsigned int rights,
			  bool readonly)
{
	return spte_make_leaf(mpa, (rights & SHADOW_RIGHT_WRITE) && !readonly,
			      rights & SHADOW_RIGHT_USER,
			      !mmu->mode.nxe || (rights & SHADOW_RIGHT_EXEC));
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
	return spte == make_leaf(mmu, mpa, e->rights, slot->s.readonly) ||
	       spte == make_leaf(mmu, mpa, e->rights & ~SHADOW_RIGHT_WRITE, true);
}

/* ---- sync ---------------------------------------------------------------- */

static void sync_table_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b);

/*
 * Checks present entry @i of @page against the guest's tables; zaps it (and
 * what hangs below it) if it no longer matches.  With @recurse, syncs the
 * child table too.  Returns true if the entry is still present.
 */
static bool sync_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, bool recurse,
			     struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t spte = spte_read(mmu_sptes(mmu, page) + i);
	struct expect e;

	if (!spte_is_present(spte))
		return false;
	expect_entry(mmu, sp, i, &e);
	if (sp->level == 1) {
		if (!leaf_matches(mmu, spte, &e)) {
			zap_spte_locked(mmu, page, i, b);
			return false;
		}
		return true;
	}
	uint32_t child = pool_page_index(spte_addr(spte));

	if (e.kind != EXPECT_TABLE || !role_matches(mmu_page(mmu, child), &e.role)) {
		zap_spte_locked(mmu, page, i, b);
		return false;
	}
	if (recurse)
		sync_table_locked(mmu, child, b);
	return true;
}

static void sync_table_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	uint64_t *sptes = mmu_sptes(mmu, page);

	for (unsigned int i = 0; i < SPTE_ENTRIES && mmu_page(mmu, page)->nr_present; i++)
		if (spte_is_present(spte_read(&sptes[i])))
			sync_spte_locked(mmu, page, i, true, b);
}

/* ---- roots ----------------------------------------------------------------- */

static struct shadow_root *root_find_locked(struct shadow_mmu *mmu, uint64_t key)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE && mmu->roots[r].cr3 == key)
			return &mmu->roots[r];
	return NULL;
}

static struct shadow_root *root_of_page_locked(struct shadow_mmu *mmu, uint64_t gpa)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE && pool_page_gpa(mmu->roots[r].page) == gpa)
			return &mmu->roots[r];
	return NULL;
}

static void root_evict_locked(struct shadow_mmu *mmu, struct shadow_root *root, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	uint32_t page = root->page;

	root->page = SHADOW_NO_PAGE;
	table_put_locked(mmu, page, SHADOW_NO_PAGE, (uint32_t)(root - mmu->roots), b);
	b->zapped++; /* a root went away: flush (it was not pinned, but be exact) */
}

static int root_create_locked(struct shadow_mmu *mmu, uint64_t key, struct zap_batch *b,
			      struct shadow_root **out)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_root *slot = NULL;
	struct shadow_page *sp;
	uint32_t page;
	int ret;

	for (unsigned int r = 0; r < mmu->nr_roots && !slot; r++)
		if (mmu->roots[r].page == SHADOW_NO_PAGE)
			slot = &mmu->roots[r];
	if (!slot) {
		for (unsigned int r = 0; r < mmu->nr_roots; r++)
			if (!mmu->roots[r].pins &&
			    (!slot || mmu->roots[r].last_used < slot->last_used))
				slot = &mmu->roots[r];
		if (!slot)
			return -EBUSY;
		root_evict_locked(mmu, slot, b);
		mmu_stat_inc(mmu, root_evictions);
		/* Free it now so that the new root can reuse the page. */
		zap_batch_finish_locked(mmu, b);
	}
	ret = pool_alloc_index(mmu->pool, SPTE_LEVELS, &page);
	if (ret)
		return ret;
	sp = mmu_page(mmu, page);
	sp->direct = false;
	sp->access = SHADOW_RIGHTS_ALL;
	sp->gpa = key;
	sp->gva = 0;
	ret = pool_user_add(mmu->pool, page, mmu, SHADOW_NO_PAGE, (uint32_t)(slot - mmu->roots));
	if (ret) {
		pool_free_index(mmu->pool, page);
		return ret;
	}
	mmu_stat_inc(mmu, tables_created);
	slot->cr3 = key;
	slot->page = page;
	slot->pins = 0;
	*out = slot;
	return 0;
}

int shadow_mmu_load_cr3(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3,
			uint64_t *root_gpa)
{
	uint64_t key = cr3_key(mmu, cr3);
	struct shadow_root *root, *old;
	struct zap_batch b;
	int ret = 0;

	zap_batch_init(&b);
	notifier_mutex_lock(&mmu->mmu_lock);
	mmu_stat_inc(mmu, cr3_loads);
	/* The vCPU leaves its current root first: that root may be evicted
	 * to make room (it is not in use any more once we switch). */
	old = tlb->root ? root_of_page_locked(mmu, tlb->root) : NULL;
	if (old)
		old->pins--;
	tlb->root = 0;
	tlb->cr3 = 0;
	root = root_find_locked(mmu, key);
	if (root) {
		/* A CR3 load flushes the TLB: bring the cached tree up to date. */
		sync_table_locked(mmu, root->page, &b);
		mmu_stat_inc(mmu, syncs);
	} else {
		ret = root_create_locked(mmu, key, &b, &root);
		if (ret)
			goto unlock;
	}
	root->pins++;
	root->last_used = ++mmu->tick;
	tlb->root = pool_page_gpa(root->page);
	tlb->cr3 = key;
	*root_gpa = tlb->root;
	bump_sync_seq_locked(mmu);
unlock:
	zap_batch_finish_locked(mmu, &b);
	notifier_mutex_unlock(&mmu->mmu_lock);
	return ret;
}

/* ---- fault ------------------------------------------------------------------ */

/*
 * Returns the child table for entry @i of @parent with role @role, creating
 * it (and zapping a stale one) as needed.
 */
static int child_get_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			    const struct role *role, uint64_t gva, struct zap_batch *b,
			    uint32_t *out)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	uint64_t spte = spte_read(mmu_sptes(mmu, parent) + i);
	int level = mmu_page(mmu, parent)->level - 1;
	struct shadow_page *sp;
	uint32_t child;
	int ret;

	if (spte_is_present(spte)) {
		child = pool_page_index(spte_addr(spte));
		if (role_matches(mmu_page(mmu, child), role)) {
			*out = child;
			return 0;
		}
		zap_spte_locked(mmu, parent, i, b); /* shadows what the guest no longer has */
	}
	ret = pool_alloc_index(mmu->pool, level, &child);
	if (ret)
		return ret;
	sp = mmu_page(mmu, child);
	sp->direct = role->direct;
	sp->access = role->access;
	sp->gpa = role->gpa;
	sp->gva = gva;
	ret = pool_user_add(mmu->pool, child, mmu, parent, i);
	if (ret) {
		pool_free_index(mmu->pool, child);
		return ret;
	}
	/* Release store: the zeroed entries are visible before the table is. */
	spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(child)));
	mmu_stat_inc(mmu, tables_created);
	*out = child;
	return 0;
}

static int install_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
			  struct shadow_mmu_slot *slot, uint64_t page, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	const uint64_t va = w->va;
	const int leaf = w->leaf_level;
	const unsigned int rights = leaf_rights(w->rights, w->dirty);
	uint32_t table = root;
	int ret;

	for (int level = SPTE_LEVELS; level > 1; level--) {
		int cl = level - 1;
		struct role role;

		if (cl >= leaf) {
			role = (struct role){ .direct = false, .access = (uint8_t)w->rights_above[cl],
					      .gpa = w->table[cl] };
		} else {
			uint64_t base = spte_leaf_addr(w->entry[leaf], leaf);
			uint64_t off = (va & SPTE_LEVEL_MASK(level)) & (SPTE_LEVEL_SIZE(leaf) - 1);

			role = (struct role){ .direct = true, .access = (uint8_t)rights,
					      .gpa = base + off };
		}
		ret = child_get_locked(mmu, table, SPTE_INDEX(va, level), &role,
				       va & SPTE_LEVEL_MASK(level), b, &table);
		if (ret)
			return ret;
	}

	unsigned int i = SPTE_INDEX(va, 1);
	uint64_t mpa = slot->s.mpa + (page << SHADOW_PAGE_SHIFT);
	uint64_t spte = make_leaf(mmu, mpa, rights, slot->s.readonly);
	uint64_t old = spte_read(mmu_sptes(mmu, table) + i);

	if (old == spte)
		return 0; /* another vCPU fixed it, or the faulting TLB entry was stale */
	ret = rmap_add(&slot->rmap[page], sptep_make(table, i));
	if (ret)
		return ret;
	old = spte_set_locked(mmu, table, i, spte);
	if (spte_is_present(old))
		leaf_unlink_locked(mmu, table, i, old, b);
	__atomic_store_n(&slot->young[page], 1, __ATOMIC_RELAXED);
	mmu_stat_inc(mmu, installs);
	return 0;
}

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

int shadow_mmu_fault(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, unsigned int access,
		     uint32_t *error_code)
{
	bool zapped_all = false;
	struct shadow_walk w, w2;
	struct zap_batch b;
	int ret;

	if (access & ~SHADOW_ACCESS_MASK)
		return -EINVAL;
	mmu_stat_inc(mmu, faults);
	zap_batch_init(&b);
	for (;;) {
		struct shadow_mmu_slot *slot, *slot2;
		uint64_t page, page2, nseq;
		uint64_t seq = __atomic_load_n(&mmu->sync_seq, __ATOMIC_ACQUIRE);

		ret = shadow_walk(&mmu->mode, &guest_mem_ops, mmu, cr3, va, access, SHADOW_WALK_SET_AD,
				  &w);
		if (ret == -EFAULT) {
			*error_code = w.error_code;
			mmu_stat_inc(mmu, guest_faults);
			return SHADOW_FAULT_GUEST;
		}
		if (ret)
			return ret == -EIO ? -EFAULT : ret;
		if (p2m_get(mmu, w.pa >> SHADOW_PAGE_SHIFT, &slot, &page))
			return -EFAULT;
		if (__atomic_load_n(&slot->released, __ATOMIC_ACQUIRE))
			return -ENODEV;
		if ((access & SHADOW_ACCESS_WRITE) && slot->s.readonly)
			return -EACCES; /* the guest may write it, its backing may not be written */

		/* The sequence/retry protocol (docs/notifiers.md, docs/shadow.md). */
		nseq = notifier_read_begin(slot->s.obj, page, page);
		if (slot->s.ops && slot->s.ops->get_page) {
			ret = slot->s.ops->get_page(slot->s.priv, page,
						    (leaf_rights(w.rights, w.dirty) & SHADOW_RIGHT_WRITE) &&
							    !slot->s.readonly);
			if (ret)
				return ret;
		}
		notifier_mutex_lock(&mmu->mmu_lock);
		if (notifier_read_retry(slot->s.obj, page, page, nseq))
			goto retry;
		if (__atomic_load_n(&slot->released, __ATOMIC_RELAXED)) {
			notifier_mutex_unlock(&mmu->mmu_lock);
			return -ENODEV;
		}
		if (__atomic_load_n(&mmu->sync_seq, __ATOMIC_ACQUIRE) != seq) {
			/* An invlpg / flush / P2M change ran since our walk: is
			 * what we read still what the guest says? */
			ret = shadow_walk(&mmu->mode, &guest_mem_ops, mmu, cr3, va, access,
					  SHADOW_WALK_SET_AD, &w2);
			if (ret || !same_walk(&w, &w2) ||
			    p2m_get(mmu, w.pa >> SHADOW_PAGE_SHIFT, &slot2, &page2) || slot2 != slot ||
			    page2 != page)
				goto retry;
		}
		struct shadow_root *root = root_find_locked(mmu, cr3_key(mmu, cr3));

		if (!root) {
			notifier_mutex_unlock(&mmu->mmu_lock);
			return -ENOENT;
		}
		ret = install_locked(mmu, root->page, &w, slot, page, &b);
		zap_batch_finish_locked(mmu, &b);
		notifier_mutex_unlock(&mmu->mmu_lock);
		if (ret == -ENOMEM && !zapped_all) {
			/* Pool full: drop every shadow table and try once more. */
			shadow_mmu_zap_all(mmu);
			zapped_all = true;
			continue;
		}
		if (ret)
			return ret;
		mmu_stat_inc(mmu, fixed);
		return SHADOW_FAULT_FIXED;
retry:
		notifier_mutex_unlock(&mmu->mmu_lock);
		mmu_stat_inc(mmu, retries);
	}
}

/* ---- invlpg, flush, zaps ------------------------------------------------------ */

void shadow_mmu_invlpg(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va)
{
	struct shadow_root *root;
	struct shadow_iter it;
	struct zap_batch b;

	zap_batch_init(&b);
	notifier_mutex_lock(&mmu->mmu_lock);
	mmu_stat_inc(mmu, invlpg);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	if (root) {
		for_each_shadow_entry(mmu, it, root->page, va) {
			if (it.level == 1) {
				/* The translation itself goes, whatever it was. */
				zap_spte_locked(mmu, it.page, it.index, &b);
				break;
			}
			/* A table on the path that no longer matches the guest
			 * goes with everything below it. */
			if (!sync_spte_locked(mmu, it.page, it.index, false, &b))
				break;
		}
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	notifier_mutex_unlock(&mmu->mmu_lock);
}

int shadow_mmu_flush(struct shadow_mmu *mmu, uint64_t cr3)
{
	struct shadow_root *root;
	struct zap_batch b;
	int ret = 0;

	zap_batch_init(&b);
	notifier_mutex_lock(&mmu->mmu_lock);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	if (root) {
		sync_table_locked(mmu, root->page, &b);
		mmu_stat_inc(mmu, syncs);
	} else {
		ret = -ENOENT;
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	notifier_mutex_unlock(&mmu->mmu_lock);
	return ret;
}

long shadow_mmu_zap_range(struct shadow_mmu *mmu, int slot_id, uint64_t first, uint64_t last)
{
	struct shadow_mmu_slot *slot = slot_of_id(mmu, slot_id);
	struct zap_batch b;
	long n;

	if (!slot || first > last || first >= slot->npages)
		return -EINVAL;
	zap_batch_init(&b);
	notifier_mutex_lock(&mmu->mmu_lock);
	zap_slot_range_locked(mmu, slot, first, last, &b);
	n = (long)b.zapped;
	zap_batch_finish_locked(mmu, &b);
	notifier_mutex_unlock(&mmu->mmu_lock);
	return n;
}

static void zap_all_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
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
	notifier_mutex_lock(&mmu->mmu_lock);
	zap_all_locked(mmu, &b);
	zap_batch_finish_locked(mmu, &b);
	notifier_mutex_unlock(&mmu->mmu_lock);
}

/* ---- slots and P2M --------------------------------------------------------------- */

int shadow_mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *s, int *id)
{
	struct shadow_mmu_slot *slot;
	uint64_t npages;
	int n, ret;

	if (!s || !s->obj || !s->host || s->mpa % SHADOW_PAGE_SIZE)
		return -EINVAL;
	npages = notifier_object_npages(s->obj);
	if (s->mpa + npages * SHADOW_PAGE_SIZE < s->mpa ||
	    (shadow_pool_contains(mmu->pool, s->mpa) ||
	     shadow_pool_contains(mmu->pool, s->mpa + npages * SHADOW_PAGE_SIZE - 1)))
		return -EINVAL;
	n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);
	if (n == SHADOW_MAX_SLOTS)
		return -ENOSPC;
	for (int i = 0; i < n; i++) {
		const struct shadow_mmu_slot *o = &mmu->slots[i];

		if (s->mpa < o->s.mpa + o->npages * SHADOW_PAGE_SIZE &&
		    o->s.mpa < s->mpa + npages * SHADOW_PAGE_SIZE)
			return -EINVAL;
	}
	slot = &mmu->slots[n];
	memset(slot, 0, sizeof(*slot));
	slot->s = *s;
	slot->npages = npages;
	slot->id = n;
	slot->mmu = mmu;
	slot->rmap = calloc(npages, sizeof(*slot->rmap));
	slot->young = calloc(npages, 1);
	if (!slot->rmap || !slot->young) {
		ret = -ENOMEM;
		goto free_arrays;
	}
	ret = notifier_subscribe(s->obj, &shadow_notifier_ops, slot, &slot->sub);
	if (ret)
		goto free_arrays;
	notifier_mutex_lock(&mmu->mmu_lock);
	__atomic_store_n(&mmu->nr_slots, n + 1, __ATOMIC_RELEASE);
	notifier_mutex_unlock(&mmu->mmu_lock);
	*id = n;
	return 0;

free_arrays:
	free(slot->young);
	free(slot->rmap);
	slot->young = NULL;
	slot->rmap = NULL;
	return ret;
}

int shadow_mmu_map_gpa(struct shadow_mmu *mmu, uint64_t gpa, uint64_t npages, int slot_id,
		       uint64_t first_page)
{
	struct shadow_mmu_slot *slot = NULL;
	uint64_t gfn = gpa >> SHADOW_PAGE_SHIFT;
	struct zap_batch b;

	if (gpa % SHADOW_PAGE_SIZE || gfn > mmu->p2m_pages || npages > mmu->p2m_pages - gfn)
		return -EINVAL;
	if (slot_id >= 0) {
		slot = slot_of_id(mmu, slot_id);
		if (!slot || first_page > slot->npages || npages > slot->npages - first_page)
			return -EINVAL;
	}
	zap_batch_init(&b);
	notifier_mutex_lock(&mmu->mmu_lock);
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t e = slot ? ((uint64_t)(slot_id + 1) << P2M_SLOT_SHIFT) | (first_page + i) : 0;
		uint64_t old = __atomic_load_n(&mmu->p2m[gfn + i], __ATOMIC_RELAXED);

		if (old == e)
			continue;
		if (old) {
			/* Whatever maps the old backing page goes (conservative:
			 * every entry of that page, whichever gfn it came from). */
			struct shadow_mmu_slot *os = &mmu->slots[(old >> P2M_SLOT_SHIFT) - 1];
			uint64_t op = old & P2M_PAGE_MASK;

			zap_slot_range_locked(mmu, os, op, op, &b);
		}
		__atomic_store_n(&mmu->p2m[gfn + i], e, __ATOMIC_RELEASE);
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	notifier_mutex_unlock(&mmu->mmu_lock);
	return 0;
}

/* ---- vCPUs ------------------------------------------------------------------------- */

void shadow_mmu_tlb_register(struct shadow_mmu *mmu, struct shadow_tlb *tlb)
{
	notifier_mutex_lock(&mmu->mmu_lock);
	tlb->root = 0;
	tlb->cr3 = 0;
	tlb->next = mmu->tlbs;
	mmu->tlbs = tlb;
	notifier_mutex_unlock(&mmu->mmu_lock);
}

void shadow_mmu_tlb_unregister(struct shadow_mmu *mmu, struct shadow_tlb *tlb)
{
	notifier_mutex_lock(&mmu->mmu_lock);
	for (struct shadow_tlb **pp = &mmu->tlbs; *pp; pp = &(*pp)->next) {
		if (*pp == tlb) {
			*pp = tlb->next;
			break;
		}
	}
	if (tlb->root) {
		struct shadow_root *root = root_of_page_locked(mmu, tlb->root);

		if (root)
			root->pins--;
		tlb->root = 0;
	}
	notifier_mutex_unlock(&mmu->mmu_lock);
}

/* ---- create / destroy ------------------------------------------------------------------ */

int shadow_mmu_create(const struct shadow_mmu_config *config, struct shadow_mmu **out)
{
	struct shadow_mmu *mmu;
	int ret;

	if (!config || !config->pool || !config->max_gpa || config->max_gpa % SHADOW_PAGE_SIZE ||
	    config->max_gpa > SHADOW_POOL_GPA || !walk_mode_is_valid(&config->mode))
		return -EINVAL;
	mmu = calloc(1, sizeof(*mmu));
	if (!mmu)
		return -ENOMEM;
	mmu->pool = config->pool;
	mmu->mode = config->mode;
	mmu->p2m_pages = config->max_gpa >> SHADOW_PAGE_SHIFT;
	mmu->p2m = calloc(mmu->p2m_pages, sizeof(*mmu->p2m));
	if (!mmu->p2m) {
		ret = -ENOMEM;
		goto free_mmu;
	}
	mmu->nr_roots = config->nr_roots ? config->nr_roots : 8;
	mmu->roots = calloc(mmu->nr_roots, sizeof(*mmu->roots));
	if (!mmu->roots) {
		ret = -ENOMEM;
		goto free_p2m;
	}
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		mmu->roots[r].page = SHADOW_NO_PAGE;
	notifier_mutex_init(&mmu->mmu_lock, "shadow.mmu_lock", NOTIFIER_LOCK_RANK_MMU);
	*out = mmu;
	return 0;

free_p2m:
	free(mmu->p2m);
free_mmu:
	free(mmu);
	return ret;
}

void shadow_mmu_destroy(struct shadow_mmu *mmu)
{
	struct zap_batch b;
	int n;

	if (!mmu)
		return;
	n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);
	/* release() zaps what each object maps; afterwards no callback runs. */
	for (int i = 0; i < n; i++)
		notifier_unsubscribe(mmu->slots[i].sub);
	zap_batch_init(&b);
	notifier_mutex_lock(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			root_evict_locked(mmu, &mmu->roots[r], &b);
	zap_batch_finish_locked(mmu, &b);
	notifier_mutex_unlock(&mmu->mmu_lock);
	for (int i = 0; i < n; i++) {
		for (uint64_t p = 0; p < mmu->slots[i].npages; p++)
			rmap_free(&mmu->slots[i].rmap[p]);
		free(mmu->slots[i].rmap);
		free(mmu->slots[i].young);
	}
	notifier_mutex_exit(&mmu->mmu_lock);
	free(mmu->roots);
	free(mmu->p2m);
	free(mmu);
}

/* ---- introspection --------------------------------------------------------------------- */

size_t shadow_mmu_rmap_count(struct shadow_mmu *mmu, int slot_id, uint64_t page)
{
	struct shadow_mmu_slot *slot = slot_of_id(mmu, slot_id);
	size_t n;

	if (!slot || page >= slot->npages)
		return 0;
	notifier_mutex_lock(&mmu->mmu_lock);
	n = slot->rmap[page].nr;
	notifier_mutex_unlock(&mmu->mmu_lock);
	return n;
}

void shadow_mmu_stats(const struct shadow_mmu *mmu, struct shadow_mmu_stats *stats)
{
	const uint64_t *src = (const uint64_t *)&mmu->stats;
	uint64_t *dst = (uint64_t *)stats;

	for (size_t i = 0; i < sizeof(*stats) / sizeof(uint64_t); i++)
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

struct shadow_pool *shadow_mmu_pool(const struct shadow_mmu *mmu)
{
	return mmu->pool;
}

const struct shadow_paging_mode *shadow_mmu_mode(const struct shadow_mmu *mmu)
{
	return &mmu->mode;
}

static uint64_t canonical(uint64_t va)
{
	return (uint64_t)((int64_t)(va << 16) >> 16);
}

static int check_table_locked(struct shadow_mmu *mmu, uint32_t page, uint32_t parent,
			      uint32_t index, uint64_t *leaves, uint64_t *tables)
{
	notifier_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptes = mmu_sptes(mmu, page);
	uint32_t present = 0;
	int ret;

	(*tables)++;
	if (!sp->level || __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) != 1 || !sp->users ||
	    sp->users->next || sp->users->mmu != mmu || sp->users->parent != parent ||
	    sp->users->index != index)
		return -EUCLEAN;
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);

		if (!spte_is_present(spte))
			continue;
		present++;
		if (!spte_is_accessed(spte))
			return -EUCLEAN;
		if (spte_is_leaf(spte, sp->level)) {
			struct shadow_mmu_slot *slot;
			uint64_t bp;
			uint32_t k;
			shadow_sptep_t s;
			bool found = false;

			if (sp->level != 1 || spte_is_writable(spte) != spte_is_dirty(spte) ||
			    (spte & SPTE_GLOBAL))
				return -EUCLEAN;
			slot = mmu_mpa_to_slot(mmu, spte_addr(spte), &bp);
			if (!slot)
				return -EUCLEAN;
			for_each_rmap_sptep(&slot->rmap[bp], k, s)
				found |= s == sptep_make(page, i);
			if (!found)
				return -EUCLEAN;
			(*leaves)++;
			continue;
		}
		uint32_t child = pool_page_index(spte_addr(spte));

		if (!shadow_pool_contains(mmu->pool, spte_addr(spte)) ||
		    mmu_page(mmu, child)->level != sp->level - 1 ||
		    mmu_page(mmu, child)->gva !=
			    canonical(sp->gva + ((uint64_t)i << SPTE_LEVEL_SHIFT(sp->level))))
			return -EUCLEAN;
		ret = check_table_locked(mmu, child, page, i, leaves, tables);
		if (ret)
			return ret;
	}
	return present == sp->nr_present ? 0 : -EUCLEAN;
}

int shadow_mmu_check(struct shadow_mmu *mmu)
{
	uint64_t leaves = 0, tables = 0, rmapped = 0;
	int n, ret = 0;

	notifier_mutex_lock(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots && !ret; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			ret = check_table_locked(mmu, mmu->roots[r].page, SHADOW_NO_PAGE, r, &leaves,
						 &tables);
	n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++)
		for (uint64_t p = 0; p < mmu->slots[i].npages; p++)
			rmapped += mmu->slots[i].rmap[p].nr;
	if (!ret && rmapped != leaves)
		ret = -EUCLEAN;
	{
		struct shadow_mmu_stats st;

		shadow_mmu_stats(mmu, &st);
		if (!ret && st.tables_created - st.tables_freed != tables)
			ret = -EUCLEAN;
	}
	notifier_mutex_unlock(&mmu->mmu_lock);
	return ret;
}
