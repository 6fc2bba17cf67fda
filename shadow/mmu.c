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
 *    (zap_batch_finish_locked), so no vCPU uses a translation through it;
 *    a lock-free walk still reading it is an RCU reader, and the page is
 *    reused only after a grace period (pool.c);
 *  - a leaf changes only under the reverse-map stripe of the page it maps
 *    (the leaf rule, struct pool_obj); one stripe at a time;
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
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
	*slot = &mmu->slots[((e & P2M_SLOT_MASK) >> P2M_SLOT_SHIFT) - 1];
	*page = e & P2M_PAGE_MASK;
	return 0;
}

/* True if gfn is shared copy-on-write with a clone (lock-free snapshot). */
static bool p2m_is_cow(struct shadow_mmu *mmu, uint64_t gfn)
{
	return gfn < mmu->p2m_pages && (__atomic_load_n(&mmu->p2m[gfn], __ATOMIC_ACQUIRE) & P2M_COW);
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
	if (slot->s.readonly || p2m_is_cow(mmu, pa >> SHADOW_PAGE_SHIFT))
		return -EROFS; /* a COW guest table: shadow_mmu_fault copies it first */
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

/* Writes entry @i of @page under its table lock; returns the old value. */
static uint64_t spte_set_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
				uint64_t spte)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptep = mmu_sptes(mmu, page) + i;
	uint64_t old;

	umbra_mutex_lock(&sp->lock);
	old = spte_read(sptep);
	assert_leaf_stripe_held(mmu, sp->level, old);
	assert_leaf_stripe_held(mmu, sp->level, spte);
	spte_write(sptep, spte);
	if (spte_is_present(old) && !spte_is_present(spte))
		__atomic_fetch_sub(&sp->nr_present, 1, __ATOMIC_RELAXED);
	else if (!spte_is_present(old) && spte_is_present(spte))
		__atomic_fetch_add(&sp->nr_present, 1, __ATOMIC_RELAXED);
	umbra_mutex_unlock(&sp->lock);
	return old;
}

void zap_batch_init(struct zap_batch *b)
{
	b->nr_va = 0;
	b->flush_all = false;
	b->nr_tables = 0;
	b->tables_overflow = false;
	b->nr_puts = 0;
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

void batch_add_table(struct zap_batch *b, uint32_t page)
{
	for (unsigned int k = 0; k < b->nr_tables; k++)
		if (b->tables[k] == page)
			return;
	if (b->nr_tables < ZAP_MAX_TABLES)
		b->tables[b->nr_tables++] = page;
	else
		b->tables_overflow = true;
}

/* The reverse-map stripe of the page leaf @spte maps, with its slot and
 * page; NULL if no slot of ours holds that page (then no reverse map has
 * the leaf).  Lock-free (the slots are published, never moved). */
static struct umbra_mutex *leaf_stripe(struct shadow_mmu *mmu, uint64_t spte,
					  struct shadow_mmu_slot **slot, uint64_t *bp)
{
	*slot = mmu_mpa_to_slot(mmu, spte_addr(spte), bp);
	return *slot ? pool_obj_stripe((*slot)->pobj, *bp) : NULL;
}

/* The va of entry @i of leaf table @page, for this VM's flush. */
static void batch_add_leaf_va(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
			      struct zap_batch *b)
{
	struct shadow_page *sp = mmu_page(mmu, page);

	if (sp->canon)
		b->flush_all = true; /* one table, a different va in each VM */
	else
		batch_add_va(b, sp->gva + ((uint64_t)i << SHADOW_PAGE_SHIFT));
}

/*
 * The leaf rule's clear (struct pool_obj): read the leaf, take the stripe of
 * the page it maps, and clear it there if it still maps that page (a leaf
 * that went to another page meanwhile is read again).  @b may be NULL (an
 * unreachable table being freed: nothing to flush).
 */
uint64_t leaf_clear(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
			rmap_del(&slot->rmap[bp], sptep_make(page, i));
		if (stripe)
			umbra_mutex_unlock(stripe);
		if (spte_is_present(old) && b) {
			b->zapped++;
			batch_add_leaf_va(mmu, page, i, b);
		}
		return old;
	}
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
static void table_free_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
	if (sp->canon) {
		struct umbra_mutex *stripe = pool_obj_stripe(
			sp->canon_obj, (uint64_t)(sp->canon_key / CANON_KEYS_PER_RUN) * SPTE_ENTRIES);

		umbra_mutex_lock(stripe);
		if (sp->canon_obj->canon[sp->canon_key] == page)
			sp->canon_obj->canon[sp->canon_key] = SHADOW_NO_PAGE;
		umbra_mutex_unlock(stripe);
		sp->canon = false;
		sp->canon_obj = NULL;
	}
	pool_free_index(mmu->pool, page);
	mmu_stat_inc(mmu, tables_freed);
}

/* Drops the reference of entry @index of @parent (root slot @index when
 * @parent is SHADOW_NO_PAGE) on @child, now: the caller has flushed. */
static void table_put_now_locked(struct shadow_mmu *mmu, uint32_t child, uint32_t parent,
				 uint32_t index)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, child);

	pool_user_del(mmu->pool, child, mmu, parent, index);
	if (__atomic_sub_fetch(&sp->use_count, 1, __ATOMIC_ACQ_REL) == 0)
		table_free_locked(mmu, child);
}

/* Queues the drop of a table reference for after the batch's flush. */
static void batch_add_put(struct shadow_mmu *mmu, struct zap_batch *b, uint32_t child,
			  uint32_t parent, uint32_t index)
{
	if (b->nr_puts == ZAP_MAX_PUTS)
		zap_batch_finish_locked(mmu, b);
	b->puts[b->nr_puts++] = (struct zap_put){ .child = child, .parent = parent, .index = index };
	b->flush_all = true; /* paging-structure caches too */
}

static void zap_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
			    struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
	umbra_mutex_assert_held(&mmu->mmu_lock);
	uint64_t *sptes = mmu_sptes(mmu, page);

	for (unsigned int i = 0;
	     i < SPTE_ENTRIES && __atomic_load_n(&mmu_page(mmu, page)->nr_present, __ATOMIC_RELAXED);
	     i++)
		if (spte_is_present(spte_read(&sptes[i])))
			zap_spte_locked(mmu, page, i, b);
}

/* A growable array of 32-bit values (pool indices, entry locations): on the
 * stack up to 16, then on the heap.  Not to be copied. */
struct u32_vec {
	uint32_t *v;
	uint32_t nr, cap;
	uint32_t stack[16];
};

static void u32_vec_init(struct u32_vec *a)
{
	a->v = a->stack;
	a->nr = 0;
	a->cap = 16;
}

/* Appends @x.  Returns 0, or -ENOMEM (the array unchanged). */
static int u32_vec_push(struct u32_vec *a, uint32_t x)
{
	if (a->nr == a->cap) {
		uint32_t *n = malloc(2 * (size_t)a->cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		memcpy(n, a->v, a->nr * sizeof(*n));
		if (a->v != a->stack)
			free(a->v);
		a->v = n;
		a->cap *= 2;
	}
	a->v[a->nr++] = x;
	return 0;
}

static void u32_vec_fini(struct u32_vec *a)
{
	if (a->v != a->stack)
		free(a->v);
}

void mmu_flush_remote(struct shadow_mmu *mmu)
{
	umbra_mutex_lock(&mmu->tlbs_lock);
	for (struct shadow_tlb *tlb = mmu->tlbs; tlb; tlb = tlb->next) {
		tlb->ops->flush_all(tlb);
		mmu_stat_inc(mmu, flushes_all);
	}
	umbra_mutex_unlock(&mmu->tlbs_lock);
	mmu_stat_inc(mmu, remote_flushes);
}

/* Flushes every vCPU of every MMU of @pool but @except (NULL: none). */
static void flush_every_mmu(struct shadow_pool *pool, struct shadow_mmu *except)
{
	umbra_mutex_lock(&pool->mmus_lock);
	for (struct shadow_mmu *m = pool->mmus; m; m = m->pool_next)
		if (m != except)
			mmu_flush_remote(m);
	umbra_mutex_unlock(&pool->mmus_lock);
}

/*
 * The pmd-rmap walk: flush every VM that reaches table @page (level
 * @level), by following the users lists up to the roots.  A root's user
 * names its VM exactly; it is flushed while the root's table lock is held,
 * so it cannot be destroyed meanwhile (destroy unlinks its roots under that
 * lock).  @self is flushed only when the path is shared (otherwise its own
 * batch flushes it, by va).  Each VM is flushed once per batch (@gen).  A
 * parent freed and reused between two steps only costs extra flushes: every
 * VM that reached @page through it flushed before dropping it.
 */
static void pmd_rmap_flush_up(struct shadow_mmu *self, uint32_t page, int level, bool shared,
			      uint64_t gen)
{
	struct shadow_page *sp = mmu_page(self, page);
	struct u32_vec parents;

	u32_vec_init(&parents);
	umbra_mutex_lock(&sp->lock);
	/* Freed and reused since we read the link? (level is written by
	 * alloc/free without a lock, so read it atomically; alloc resets what
	 * we read here under this lock.) */
	if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) != level) {
		umbra_mutex_unlock(&sp->lock);
		return;
	}
	shared |= __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) > 1 || sp->canon;
	for (struct shadow_page_user *u = sp->users; u; u = u->next) {
		if (u->parent == SHADOW_NO_PAGE) {
			if ((u->mmu != self || shared) &&
			    __atomic_exchange_n(&u->mmu->flush_mark, gen, __ATOMIC_ACQ_REL) != gen)
				mmu_flush_remote(u->mmu);
			continue;
		}
		if (u32_vec_push(&parents, u->parent)) {
			/* No memory: flush everyone instead. */
			umbra_mutex_unlock(&sp->lock);
			goto flush_everyone;
		}
	}
	umbra_mutex_unlock(&sp->lock);
	for (uint32_t k = 0; k < parents.nr; k++)
		if (level < SPTE_LEVELS)
			pmd_rmap_flush_up(self, parents.v[k], level + 1, shared, gen);
	u32_vec_fini(&parents);
	return;
flush_everyone:
	u32_vec_fini(&parents);
	flush_every_mmu(self->pool, NULL);
}

/*
 * The remote half of a batch: flush every VM that reaches a table in which
 * a leaf was cleared in place (pmd-rmap walk), or every VM of the pool on
 * overflow.  A non-local zap calls it with the stripe of the cleared pages
 * held, so that a later clearer of the same page, which finds the reverse
 * map already empty, cannot return before these flushes are done (two
 * invalidations of one page racing).
 */
static void batch_flush_remote(struct shadow_mmu *mmu, struct zap_batch *b)
{
	if (b->tables_overflow) {
		flush_every_mmu(mmu->pool, mmu);
	} else if (b->nr_tables) {
		uint64_t gen = __atomic_add_fetch(&mmu->pool->flush_gen, 1, __ATOMIC_RELAXED);

		for (unsigned int k = 0; k < b->nr_tables; k++)
			pmd_rmap_flush_up(mmu, b->tables[k], 1, false, gen);
	}
	b->nr_tables = 0;
	b->tables_overflow = false;
}

void zap_batch_finish_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	if (b->zapped || b->nr_puts || b->free_head != SHADOW_NO_PAGE) {
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

/* Clears every leaf in @rmap (one page's, its stripe held), in place, and
 * queues the tables for the remote flush. */
static void zap_page_rmap_locked(struct shadow_mmu *mmu, struct shadow_rmap *rmap,
				 struct zap_batch *b)
{
	while (rmap->nr) {
		shadow_sptep_t s = rmap_get(rmap, rmap->nr - 1);
		uint64_t old = spte_set_locked(mmu, sptep_page(s), sptep_index(s), 0);

		rmap_del(rmap, s);
		if (!spte_is_present(old))
			continue;
		b->zapped++;
		batch_add_leaf_va(mmu, sptep_page(s), sptep_index(s), b);
		batch_add_table(b, sptep_page(s));
	}
}

/*
 * Non-local: clears, in place, every leaf in the pool that maps pages
 * [first, last] of @slot's object (whichever VM installed it, private or
 * shared table), and flushes every other VM that reaches those tables.  One
 * stripe at a time: the pages of the range under stripe k (runs r with
 * r % POOL_OBJ_STRIPES == k) are cleared and the remote flush done before
 * that stripe is dropped, so at most POOL_OBJ_STRIPES remote flushes
 * whatever the range's size.
 */
void zap_slot_range_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t first,
			   uint64_t last, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	if (last >= slot->npages)
		last = slot->npages - 1;
	if (first > last)
		return;
	const uint64_t r0 = first / SPTE_ENTRIES, r1 = last / SPTE_ENTRIES;
	const uint64_t nr_stripes = r1 - r0 + 1 < POOL_OBJ_STRIPES ? r1 - r0 + 1 : POOL_OBJ_STRIPES;

	for (uint64_t k = 0; k < nr_stripes; k++) {
		struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, (r0 + k) * SPTE_ENTRIES);

		umbra_mutex_lock(stripe);
		for (uint64_t r = r0 + k; r <= r1; r += POOL_OBJ_STRIPES) {
			uint64_t p = r * SPTE_ENTRIES > first ? r * SPTE_ENTRIES : first;
			uint64_t end = r * SPTE_ENTRIES + SPTE_ENTRIES - 1 < last ?
					       r * SPTE_ENTRIES + SPTE_ENTRIES - 1 : last;

			for (; p <= end; p++)
				zap_page_rmap_locked(mmu, &slot->rmap[p], b);
		}
		/* Other VMs' vCPUs are flushed before the reverse map shows
		 * the pages unmapped (our own ones in zap_batch_finish_locked,
		 * under our mmu_lock, before our callback returns). */
		batch_flush_remote(mmu, b);
		umbra_mutex_unlock(stripe);
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
	/* A copy-on-write page is installed read-only; a writable leaf of one
	 * made before the clone stays valid behind the write-protected entries
	 * above it (docs/sharing.md, "Write protection"). */
	return spte == make_leaf(mmu, mpa, e->rights, slot->s.readonly) ||
	       spte == make_leaf(mmu, mpa, e->rights & ~SHADOW_RIGHT_WRITE, true);
}

/* ---- sync ---------------------------------------------------------------- */

static void sync_table_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b);

/* Shared: more than one parent entry (or root) points at it, or it is a
 * segment's canonical table.  A VM changes only tables it alone reaches,
 * i.e. non-shared tables below non-shared tables (roots are never shared). */
static bool table_is_shared(struct shadow_mmu *mmu, uint32_t page)
{
	struct shadow_page *sp = mmu_page(mmu, page);

	return __atomic_load_n(&sp->use_count, __ATOMIC_ACQUIRE) > 1 || sp->canon;
}

/* Read-only: does every present entry of the subtree at @page agree with
 * this VM's guest tables and P2M now? */
static bool subtree_matches_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptes = mmu_sptes(mmu, page);

	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);
		struct expect e;

		if (!spte_is_present(spte))
			continue;
		expect_entry(mmu, sp, i, &e);
		if (sp->level == 1) {
			if (!leaf_matches(mmu, spte, &e))
				return false;
			continue;
		}
		uint32_t child = pool_page_index(spte_addr(spte));

		if (e.kind != EXPECT_TABLE || !role_matches(mmu_page(mmu, child), &e.role) ||
		    !subtree_matches_locked(mmu, child))
			return false;
	}
	return true;
}

/*
 * Checks present entry @i of @page against the guest's tables; zaps it (and
 * what hangs below it) if it no longer matches.  With @recurse, syncs the
 * child table too.  Returns true if the entry is still present.
 */
static bool sync_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, bool recurse,
			     struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
	if (recurse) {
		if (table_is_shared(mmu, child)) {
			/* Never change a shared table for one VM: if anything
			 * below differs from our guest's tables, leave it. */
			if (!subtree_matches_locked(mmu, child)) {
				zap_spte_locked(mmu, page, i, b);
				return false;
			}
		} else {
			sync_table_locked(mmu, child, b);
		}
	}
	return true;
}

static void sync_table_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	uint64_t *sptes = mmu_sptes(mmu, page);

	for (unsigned int i = 0; i < SPTE_ENTRIES && __atomic_load_n(&mmu_page(mmu, page)->nr_present, __ATOMIC_RELAXED); i++)
		if (spte_is_present(spte_read(&sptes[i])))
			sync_spte_locked(mmu, page, i, true, b);
}

/* Read-only: does the path of @va below @page agree with our guest now? */
static bool path_matches_locked(struct shadow_mmu *mmu, uint32_t page, uint64_t va)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	for (;;) {
		struct shadow_page *sp = mmu_page(mmu, page);
		unsigned int i = SPTE_INDEX(va, sp->level);
		uint64_t spte = spte_read(mmu_sptes(mmu, page) + i);
		struct expect e;

		if (!spte_is_present(spte))
			return true;
		expect_entry(mmu, sp, i, &e);
		if (sp->level == 1)
			return leaf_matches(mmu, spte, &e);
		page = pool_page_index(spte_addr(spte));
		if (e.kind != EXPECT_TABLE || !role_matches(mmu_page(mmu, page), &e.role))
			return false;
	}
}


/*
 * Local zap (a change for this VM only: a P2M redirect, a copy-on-write
 * break): this VM stops reaching leaf @s, without changing what any other
 * VM reaches.  The pmd-rmap walk up from the leaf's table finds this VM's
 * paths to it; on each, the topmost shared table is left (our entry to it,
 * in a table we alone reach, is zapped), or, if nothing on the path is
 * shared, the leaf itself is cleared.  No bound: every user of every table
 * on the way up is followed, and every path of ours is handled.
 */
struct chain_link {
	uint32_t table;
	unsigned int index;
};

/*
 * Finds a path from one of this VM's roots down to table @page (at @level),
 * filling chain[depth..]: 1 if found, 0 if we do not reach @page, -ENOMEM.
 * A link whose parent entry no longer points at @page is skipped: its entry
 * was cleared or redirected (to a copy) and its put is pending until the
 * batch's flush, or it is another VM's link changing under us.  The links
 * that are ours cannot change under our mmu_lock, so a path found is valid.
 */
static int find_chain(struct shadow_mmu *mmu, uint32_t page, int level, struct chain_link *chain,
		      int depth)
{
	struct shadow_page *sp = mmu_page(mmu, page);
	struct u32_vec up;
	bool root = false;
	int ret = 0;

	u32_vec_init(&up);
	umbra_mutex_lock(&sp->lock);
	/* Freed and reused since we read the link? (level is written by
	 * alloc/free without a lock, so read it atomically; alloc resets what
	 * we read here under this lock.) */
	if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) != level) {
		umbra_mutex_unlock(&sp->lock);
		return 0;
	}
	for (struct shadow_page_user *u = sp->users; u && !root; u = u->next) {
		if (u->parent == SHADOW_NO_PAGE)
			root = u->mmu == mmu && mmu->roots[u->index].page == page;
		else if (!ret && level < SPTE_LEVELS)
			ret = u32_vec_push(&up, sptep_make(u->parent, u->index));
	}
	umbra_mutex_unlock(&sp->lock);
	if (root)
		ret = 1;
	for (uint32_t k = 0; k < up.nr && !ret; k++) {
		uint32_t parent = sptep_page(up.v[k]);
		unsigned int i = sptep_index(up.v[k]);
		uint64_t e = spte_read(mmu_sptes(mmu, parent) + i);

		if (!spte_is_present(e) || spte_is_leaf(e, level + 1) ||
		    pool_page_index(spte_addr(e)) != page)
			continue;
		chain[depth] = (struct chain_link){ .table = parent, .index = i };
		ret = find_chain(mmu, parent, level + 1, chain, depth + 1);
	}
	u32_vec_fini(&up);
	return ret;
}

static int table_copy_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			     uint32_t old, uint64_t gva, struct zap_batch *b, uint32_t *out);

/* The fallback of a local zap: clear leaf @s in place, for every VM that
 * reaches it (they refault), as an invalidation does. */
static void zap_leaf_everywhere_locked(struct shadow_mmu *mmu, shadow_sptep_t s,
				       struct zap_batch *b)
{
	if (spte_is_present(leaf_clear(mmu, sptep_page(s), sptep_index(s), b)))
		batch_add_table(b, sptep_page(s));
}

/* Returns true if it changed anything.  Each round removes at least one of
 * our paths to @s (the leaf is cleared, an entry of ours is zapped, or our
 * entry to the leaf's table now points at a copy, its old link skipped by
 * find_chain): it ends when none is left. */
static bool zap_local_locked(struct shadow_mmu *mmu, shadow_sptep_t s, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	const int depth = SPTE_LEVELS - 1; /* leaves live in level-1 tables */
	struct chain_link chain[SPTE_LEVELS + 1];
	bool changed = false;

	for (;;) {
		chain[0] = (struct chain_link){ .table = sptep_page(s), .index = sptep_index(s) };
		if (!spte_is_present(spte_read(mmu_sptes(mmu, chain[0].table) + chain[0].index)))
			return changed;
		int found = find_chain(mmu, chain[0].table, 1, chain, 1);

		if (!found)
			return changed; /* we do not reach it */
		/* Check the path from our root down (our root and the tables
		 * below it that we hold cannot change under our mmu_lock). */
		bool valid = found > 0;

		for (int k = depth; k >= 1 && valid; k--) {
			uint64_t e = spte_read(mmu_sptes(mmu, chain[k].table) + chain[k].index);

			valid = spte_is_present(e) && !spte_is_leaf(e, k + 1) &&
				pool_page_index(spte_addr(e)) == chain[k - 1].table;
		}
		if (!valid) {
			/* No memory for the walk up (or a path that changed,
			 * which find_chain does not return): never leave the
			 * mapping, clear it for everyone. */
			zap_leaf_everywhere_locked(mmu, s, b);
			return true;
		}
		changed = true;
		/* chain[k] is an entry of a level k + 1 table; chain[depth] is in
		 * our root.  Privatize the shared tables on the path, top-down
		 * (each copy makes the next table down shared), then clear the
		 * leaf in our own copy; if a copy fails, leave the shared
		 * table instead (zap our entry to it). */
		uint64_t va = 0;

		for (int k = depth; k >= 0; k--)
			va |= (uint64_t)chain[k].index << SPTE_LEVEL_SHIFT(k + 1);
		va = shadow_va_canonical(va);
		for (int k = depth - 1; k >= 0; k--) {
			uint32_t copy;

			if (!table_is_shared(mmu, chain[k].table))
				continue;
			if (table_copy_locked(mmu, chain[k + 1].table, chain[k + 1].index, chain[k].table,
					      va & SPTE_LEVEL_MASK(k + 2), b, &copy)) {
				zap_spte_locked(mmu, chain[k + 1].table, chain[k + 1].index, b);
				goto next;
			}
			chain[k].table = copy;
			/* An entry the copy could not take (no memory) is not in
			 * it: our path ends there (it faults back). */
			if (k > 0 && !spte_is_present(spte_read(mmu_sptes(mmu, copy) + chain[k].index)))
				goto next;
		}
		zap_spte_locked(mmu, chain[0].table, chain[0].index, b);
next:;
	}
}

/*
 * Every leaf of pages [first, last] of @slot that this VM reaches, local
 * zap.  A pass handles a snapshot of the page's reverse map (every entry);
 * a copy made on the way may hold another leaf of the page, so passes go on
 * until one changes nothing.  Without memory for the snapshot, the page is
 * zapped for every VM instead (never left mapped).
 */
static void zap_slot_range_local_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot,
					uint64_t first, uint64_t last, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	for (uint64_t p = first; p <= last && p < slot->npages; p++) {
		bool changed;

		do {
			struct u32_vec snap;
			uint32_t k;
			shadow_sptep_t s;
			int ret = 0;

			u32_vec_init(&snap);
			umbra_mutex_lock(pool_obj_stripe(slot->pobj, p));
			for_each_rmap_sptep(&slot->rmap[p], k, s)
				if (!ret)
					ret = u32_vec_push(&snap, s);
			umbra_mutex_unlock(pool_obj_stripe(slot->pobj, p));
			if (ret) {
				u32_vec_fini(&snap);
				zap_slot_range_locked(mmu, slot, p, p, b);
				break;
			}
			changed = false;
			for (k = 0; k < snap.nr; k++)
				changed |= zap_local_locked(mmu, snap.v[k], b);
			u32_vec_fini(&snap);
		} while (changed);
	}
}

/* ---- roots ----------------------------------------------------------------- */

static struct shadow_root *root_find_locked(struct shadow_mmu *mmu, uint64_t key)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE && mmu->roots[r].cr3 == key)
			return &mmu->roots[r];
	return NULL;
}

static struct shadow_root *root_of_page_locked(struct shadow_mmu *mmu, uint64_t gpa)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE && pool_page_gpa(mmu->roots[r].page) == gpa)
			return &mmu->roots[r];
	return NULL;
}

static void root_evict_locked(struct shadow_mmu *mmu, struct shadow_root *root, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	uint32_t page = root->page;

	root->page = SHADOW_NO_PAGE;
	batch_add_put(mmu, b, page, SHADOW_NO_PAGE, (uint32_t)(root - mmu->roots));
	b->zapped++; /* a root went away: flush (it was not pinned, but be exact) */
}

static int root_create_locked(struct shadow_mmu *mmu, uint64_t key, struct zap_batch *b,
			      struct shadow_root **out)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
		/* Free it now (reusable after a grace period: load_cr3 waits). */
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

static int load_cr3_once(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3,
			 uint64_t *root_gpa)
{
	uint64_t key = cr3_key(mmu, cr3);
	struct shadow_root *root, *old;
	struct zap_batch b;
	int ret = 0;

	zap_batch_init(&b);
	umbra_mutex_lock(&mmu->mmu_lock);
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
	umbra_mutex_unlock(&mmu->mmu_lock);
	return ret;
}

int shadow_mmu_load_cr3(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3,
			uint64_t *root_gpa)
{
	int ret = load_cr3_once(mmu, tlb, cr3, root_gpa);

	/* Pool full: an evicted root's page, or pages freed just before,
	 * become reusable after a grace period. */
	if (ret == -ENOMEM && pool_wait_deferred(mmu->pool))
		ret = load_cr3_once(mmu, tlb, cr3, root_gpa);
	return ret;
}

/* ---- fault ------------------------------------------------------------------ */

/*
 * Privatize (unshare) the shared table @old that entry @i of @parent points
 * at: copy its entries into a new table that only this VM reaches, point
 * @parent's entry at the copy, and queue the drop of our reference on @old
 * for after the flush.  The lock-free use-count protocol (docs/sharing.md):
 * no lock of any other VM is taken; two VMs that privatize @old at once both
 * copy, and whichever drops the count to 0 frees it.  @parent is this VM's
 * alone, so nobody else writes the entry; @old's non-leaf entries do not
 * change while we hold our reference (only a table's last user changes
 * them); its leaves may be cleared under us by a non-local zap, so each is
 * read again and registered in the reverse map under its page's stripe (one
 * stripe at a time, kept across leaves of the same stripe), and written into
 * the copy there: a zap that takes the stripe later finds both locations.
 * The copy is write-protected (every entry loses W, leaves lose D): entries
 * that point at copy-on-write data or at still-shared tables must not grant
 * writes (docs/sharing.md, "Write protection").
 */
static int table_copy_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			     uint32_t old, uint64_t gva, struct zap_batch *b, uint32_t *out)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *osp = mmu_page(mmu, old), *sp;
	uint64_t *from = mmu_sptes(mmu, old);
	struct umbra_mutex *held = NULL;
	uint32_t copy;
	int ret;

	ret = pool_alloc_index(mmu->pool, osp->level, &copy);
	if (ret)
		return ret;
	sp = mmu_page(mmu, copy);
	sp->direct = osp->direct;
	sp->access = osp->access;
	sp->gpa = osp->gpa;
	sp->gva = gva;
	for (unsigned int k = 0; k < SPTE_ENTRIES; k++) {
		uint64_t e = spte_read(&from[k]);

		if (!spte_is_present(e))
			continue;
		if (spte_is_leaf(e, osp->level)) {
			struct shadow_mmu_slot *slot;
			uint64_t bp, addr = spte_addr(e);

			held = stripe_switch(held, leaf_stripe(mmu, e, &slot, &bp));
			e = spte_read(&from[k]);
			if (!held || !spte_is_present(e) || spte_addr(e) != addr ||
			    rmap_add(&slot->rmap[bp], sptep_make(copy, k)))
				continue; /* not copied: it faults back */
			e &= ~(SPTE_WRITABLE | SPTE_DIRTY);
		} else {
			if (pool_user_add(mmu->pool, pool_page_index(spte_addr(e)), mmu, copy, k))
				continue;
			e &= ~SPTE_WRITABLE;
		}
		/* Under the copy's table lock: a zap may clear it as soon as
		 * the stripe is dropped, and keeps nr_present right. */
		spte_set_locked(mmu, copy, k, e);
	}
	stripe_switch(held, NULL);
	ret = pool_user_add(mmu->pool, copy, mmu, parent, i);
	if (ret) {
		table_free_locked(mmu, copy); /* unpublished: undo the copy */
		return ret;
	}
	/* Release store: the copy's entries are visible before the copy is. */
	spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(copy)));
	mmu_stat_inc(mmu, tables_created);
	mmu_stat_inc(mmu, privatizations);
	b->zapped++;
	batch_add_put(mmu, b, old, parent, i);
	*out = copy;
	return 0;
}

/* Removes W from every entry of @page, which this VM alone reaches, before
 * an entry above it grants W again (docs/sharing.md, "Write protection").
 * No flush: no vCPU could write through it (the entry above lacked W). */
static void table_wrprot_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	uint64_t *sptes = mmu_sptes(mmu, page);
	int level = mmu_page(mmu, page)->level;
	struct umbra_mutex *held = NULL;

	for (unsigned int k = 0; k < SPTE_ENTRIES; k++) {
		uint64_t e = spte_read(&sptes[k]);

		if (!spte_is_present(e) || !(e & SPTE_WRITABLE))
			continue;
		if (spte_is_leaf(e, level)) {
			/* A leaf changes under its page's stripe (a zap may
			 * clear it meanwhile: read it again there). */
			struct shadow_mmu_slot *slot;
			uint64_t bp, addr = spte_addr(e);

			held = stripe_switch(held, leaf_stripe(mmu, e, &slot, &bp));
			e = spte_read(&sptes[k]);
			if (!spte_is_present(e) || spte_addr(e) != addr)
				continue;
			e &= ~(SPTE_WRITABLE | SPTE_DIRTY);
		} else {
			e &= ~SPTE_WRITABLE;
		}
		spte_set_locked(mmu, page, k, e);
	}
	stripe_switch(held, NULL);
}

/*
 * The canonical table of a 2 MiB run of a shared segment, if the guest maps
 * it that way: the 512 pages from @role->gpa are, in this VM's P2M, pages
 * run * 512 .. run * 512 + 511 of one shared slot (no copy-on-write).
 * Found or created under the run's stripe, with its use count raised for the caller
 * (inc-not-zero: a table whose count reached 0 is being freed and is not
 * reused).  Returns 0 and the table in *@out, or -ENOENT (not eligible).
 */
static int canon_get_locked(struct shadow_mmu *mmu, const struct role *role, uint64_t gva,
			    uint32_t *out)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_mmu_slot *slot = NULL, *s;
	uint64_t gfn = role->gpa >> SHADOW_PAGE_SHIFT, first = 0, pg;
	struct umbra_mutex *stripe;
	struct pool_obj *po;
	struct shadow_page *sp;
	uint32_t key, idx;
	int ret = 0;

	if (role->gpa % SPTE_LEVEL_SIZE(2))
		return -ENOENT;
	for (uint64_t k = 0; k < SPTE_ENTRIES; k++) {
		if (p2m_get(mmu, gfn + k, &s, &pg) || p2m_is_cow(mmu, gfn + k))
			return -ENOENT;
		if (k == 0) {
			slot = s;
			first = pg;
			if (!slot->shared || first % SPTE_ENTRIES)
				return -ENOENT;
		} else if (s != slot || pg != first + k) {
			return -ENOENT;
		}
	}
	po = slot->pobj;
	key = canon_key(first / SPTE_ENTRIES, slot->s.readonly, role->access);
	stripe = pool_obj_stripe(po, first);
	umbra_mutex_lock(stripe);
	idx = po->canon[key];
	if (idx != SHADOW_NO_PAGE) {
		sp = mmu_page(mmu, idx);
		/* In the array under the stripe: still allocated (its free leaves
		 * the array first), so its role is stable.  Check it before
		 * taking a reference, which then never needs handing back. */
		if (sp->gpa != role->gpa) {
			/* Same run at another guest-physical address: not ours. */
			ret = -ENOENT;
			goto unlock;
		}
		uint32_t c = __atomic_load_n(&sp->use_count, __ATOMIC_ACQUIRE);

		while (c && !__atomic_compare_exchange_n(&sp->use_count, &c, c + 1, false,
							 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			;
		if (c) {
			mmu_stat_inc(mmu, canon_reused);
			goto found;
		}
	}
	ret = pool_alloc_index(mmu->pool, 1, &idx);
	if (ret)
		goto unlock;
	sp = mmu_page(mmu, idx);
	sp->direct = true;
	sp->access = role->access;
	sp->gpa = role->gpa;
	sp->gva = gva;
	sp->canon = true;
	sp->canon_obj = po;
	sp->canon_key = key;
	__atomic_store_n(&sp->use_count, 1, __ATOMIC_RELEASE);
	po->canon[key] = idx;
	mmu_stat_inc(mmu, tables_created);
	mmu_stat_inc(mmu, canon_created);
found:
	mmu->sharing = true;
	*out = idx;
unlock:
	umbra_mutex_unlock(stripe);
	return ret;
}

/*
 * Returns the child table for entry @i of @parent (a table this VM alone
 * reaches) with role @role, creating it (and zapping a stale one) as
 * needed; a shared child is privatized first (except a canonical leaf
 * table, whose leaves are the same for every user and are filled in place).
 * With @want_w the entry is left granting writes (the child write-protected
 * first if the entry did not).
 */
static int child_get_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			    const struct role *role, uint64_t gva, bool want_w,
			    struct zap_batch *b, uint32_t *out)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	uint64_t spte = spte_read(mmu_sptes(mmu, parent) + i);
	int level = mmu_page(mmu, parent)->level - 1;
	struct shadow_page *sp;
	uint32_t child;
	int ret;

	if (spte_is_present(spte)) {
		child = pool_page_index(spte_addr(spte));
		sp = mmu_page(mmu, child);
		if (role_matches(sp, role)) {
			if (sp->canon) {
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
		zap_spte_locked(mmu, parent, i, b); /* shadows what the guest no longer has */
	}
	if (level == 1 && role->direct && canon_get_locked(mmu, role, gva, &child) == 0) {
		ret = pool_user_link(mmu->pool, child, mmu, parent, i);
		if (ret) {
			batch_add_put(mmu, b, child, SHADOW_NO_PAGE, UINT32_MAX);
			return ret;
		}
		spte_set_locked(mmu, parent, i, spte_make_table(pool_page_gpa(child)));
		*out = child;
		return 0;
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
	umbra_mutex_assert_held(&mmu->mmu_lock);
	const uint64_t va = w->va;
	const int leaf = w->leaf_level;
	const bool cow = p2m_is_cow(mmu, w->pa >> SHADOW_PAGE_SHIFT);
	const unsigned int rights = leaf_rights(w->rights, w->dirty);
	const bool want_w = (rights & SHADOW_RIGHT_WRITE) && !cow && !slot->s.readonly;
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
				       va & SPTE_LEVEL_MASK(level), want_w, b, &table);
		if (ret)
			return ret;
	}

	unsigned int i = SPTE_INDEX(va, 1);
	uint64_t mpa = slot->s.mpa + (page << SHADOW_PAGE_SHIFT);
	uint64_t spte = make_leaf(mmu, mpa, rights, slot->s.readonly || cow);
	uint64_t *sptep = mmu_sptes(mmu, table) + i;
	struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, page);
	uint64_t old;

	/* The leaf rule (struct pool_obj): a leaf and its reverse-map entry
	 * change together under the page's stripe, and a leaf that maps
	 * another page is cleared first (under that page's stripe). */
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
		ret = rmap_add(&slot->rmap[page], sptep_make(table, i));
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
		if (ret == -EROFS) {
			/* A/D must go into a guest table shared copy-on-write
			 * with a clone: copy those tables first. */
			for (int l = SPTE_LEVELS; l >= w.leaf_level && l >= 1; l--) {
				bool needs_ad = !(w.entry[l] & SPTE_ACCESSED) ||
						(l == w.leaf_level && (access & SHADOW_ACCESS_WRITE) &&
						 !(w.entry[l] & SPTE_DIRTY));

				if (!needs_ad || !p2m_is_cow(mmu, w.table[l] >> SHADOW_PAGE_SHIFT))
					continue;
				ret = shadow_mmu_cow_break(mmu, w.table[l]);
				if (ret)
					return ret;
			}
			continue;
		}
		if (ret)
			return ret == -EIO ? -EFAULT : ret;
		if (p2m_get(mmu, w.pa >> SHADOW_PAGE_SHIFT, &slot, &page))
			return -EFAULT;
		if ((access & SHADOW_ACCESS_WRITE) && p2m_is_cow(mmu, w.pa >> SHADOW_PAGE_SHIFT)) {
			/* The first write to a page shared with a clone. */
			ret = shadow_mmu_cow_break(mmu, w.pa);
			if (ret)
				return ret;
			continue;
		}
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
		umbra_mutex_lock(&mmu->mmu_lock);
		if (notifier_read_retry(slot->s.obj, page, page, nseq))
			goto retry;
		if (__atomic_load_n(&slot->released, __ATOMIC_RELAXED)) {
			umbra_mutex_unlock(&mmu->mmu_lock);
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
			umbra_mutex_unlock(&mmu->mmu_lock);
			return -ENOENT;
		}
		ret = install_locked(mmu, root->page, &w, slot, page, &b);
		zap_batch_finish_locked(mmu, &b);
		umbra_mutex_unlock(&mmu->mmu_lock);
		if (ret == -ENOMEM && !zapped_all) {
			/* Pool full: drop every shadow table and try once more,
			 * when their pages are reusable (after a grace period). */
			shadow_mmu_zap_all(mmu);
			zapped_all = true;
			pool_wait_deferred(mmu->pool);
			continue;
		}
		if (ret)
			return ret;
		mmu_stat_inc(mmu, fixed);
		return SHADOW_FAULT_FIXED;
retry:
		umbra_mutex_unlock(&mmu->mmu_lock);
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
	umbra_mutex_lock(&mmu->mmu_lock);
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
	umbra_mutex_unlock(&mmu->mmu_lock);
}

int shadow_mmu_flush(struct shadow_mmu *mmu, uint64_t cr3)
{
	struct shadow_root *root;
	struct zap_batch b;
	int ret = 0;

	zap_batch_init(&b);
	umbra_mutex_lock(&mmu->mmu_lock);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	if (root) {
		sync_table_locked(mmu, root->page, &b);
		mmu_stat_inc(mmu, syncs);
	} else {
		ret = -ENOENT;
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_mutex_unlock(&mmu->mmu_lock);
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
	umbra_mutex_lock(&mmu->mmu_lock);
	zap_slot_range_locked(mmu, slot, first, last, &b);
	n = (long)b.zapped;
	zap_batch_finish_locked(mmu, &b);
	umbra_mutex_unlock(&mmu->mmu_lock);
	return n;
}

static void zap_all_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
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
	umbra_mutex_lock(&mmu->mmu_lock);
	zap_all_locked(mmu, &b);
	zap_batch_finish_locked(mmu, &b);
	umbra_mutex_unlock(&mmu->mmu_lock);
}

/* ---- slots and P2M --------------------------------------------------------------- */

static int mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *s, bool shared, int *id)
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
	slot->shared = shared;
	slot->id = n;
	slot->mmu = mmu;
	ret = pool_obj_get(mmu->pool, s->obj, s->mpa, &slot->pobj);
	if (ret)
		return ret;
	slot->rmap = slot->pobj->rmap;
	slot->young = calloc(npages, 1);
	if (!slot->young) {
		ret = -ENOMEM;
		goto free_arrays;
	}
	ret = notifier_subscribe(s->obj, &shadow_notifier_ops, slot, &slot->sub);
	if (ret)
		goto free_arrays;
	umbra_mutex_lock(&mmu->mmu_lock);
	__atomic_store_n(&mmu->nr_slots, n + 1, __ATOMIC_RELEASE);
	umbra_mutex_unlock(&mmu->mmu_lock);
	*id = n;
	return 0;

free_arrays:
	free(slot->young);
	pool_obj_put(mmu->pool, slot->pobj);
	slot->young = NULL;
	slot->rmap = NULL;
	slot->pobj = NULL;
	return ret;
}

int shadow_mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *s, int *id)
{
	return mmu_add_slot(mmu, s, false, id);
}

int shadow_mmu_add_segment(struct shadow_mmu *mmu, const struct shadow_slot *s, int *id)
{
	return mmu_add_slot(mmu, s, true, id);
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
	umbra_mutex_lock(&mmu->mmu_lock);
	for (uint64_t i = 0; i < npages; i++) {
		uint64_t e = slot ? ((uint64_t)(slot_id + 1) << P2M_SLOT_SHIFT) | (first_page + i) : 0;
		uint64_t old = __atomic_load_n(&mmu->p2m[gfn + i], __ATOMIC_RELAXED);

		if (old == e)
			continue;
		if (old) {
			/* Whatever maps the old backing page goes (conservative:
			 * every entry of that page, whichever gfn it came from). */
			struct shadow_mmu_slot *os =
				&mmu->slots[((old & P2M_SLOT_MASK) >> P2M_SLOT_SHIFT) - 1];
			uint64_t op = old & P2M_PAGE_MASK;

			zap_slot_range_local_locked(mmu, os, op, op, &b);
		}
		__atomic_store_n(&mmu->p2m[gfn + i], e, __ATOMIC_RELEASE);
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_mutex_unlock(&mmu->mmu_lock);
	return 0;
}

/* ---- vCPUs ------------------------------------------------------------------------- */

void shadow_mmu_tlb_register(struct shadow_mmu *mmu, struct shadow_tlb *tlb)
{
	umbra_mutex_lock(&mmu->mmu_lock);
	tlb->root = 0;
	tlb->cr3 = 0;
	umbra_mutex_lock(&mmu->tlbs_lock);
	tlb->next = mmu->tlbs;
	mmu->tlbs = tlb;
	umbra_mutex_unlock(&mmu->tlbs_lock);
	umbra_mutex_unlock(&mmu->mmu_lock);
}

void shadow_mmu_tlb_unregister(struct shadow_mmu *mmu, struct shadow_tlb *tlb)
{
	umbra_mutex_lock(&mmu->mmu_lock);
	umbra_mutex_lock(&mmu->tlbs_lock);
	for (struct shadow_tlb **pp = &mmu->tlbs; *pp; pp = &(*pp)->next) {
		if (*pp == tlb) {
			*pp = tlb->next;
			break;
		}
	}
	umbra_mutex_unlock(&mmu->tlbs_lock);
	if (tlb->root) {
		struct shadow_root *root = root_of_page_locked(mmu, tlb->root);

		if (root)
			root->pins--;
		tlb->root = 0;
	}
	umbra_mutex_unlock(&mmu->mmu_lock);
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
	umbra_mutex_init(&mmu->mmu_lock, "shadow.mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_mutex_init(&mmu->tlbs_lock, "shadow.mmu.tlbs_lock", UMBRA_LOCK_RANK_TLBS);
	mmu->cow_slot = -1;
	umbra_mutex_lock(&mmu->pool->mmus_lock);
	mmu->pool_next = mmu->pool->mmus;
	mmu->pool->mmus = mmu;
	umbra_mutex_unlock(&mmu->pool->mmus_lock);
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
	/* First drop every root: tables shared with other VMs lose one user
	 * (and stay theirs); tables only we reached are freed. */
	zap_batch_init(&b);
	umbra_mutex_lock(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			root_evict_locked(mmu, &mmu->roots[r], &b);
	zap_batch_finish_locked(mmu, &b);
	mmu->destroying = true;
	umbra_mutex_unlock(&mmu->mmu_lock);
	/* release() has nothing of ours left to zap; afterwards no callback runs. */
	for (int i = 0; i < n; i++)
		notifier_unsubscribe(mmu->slots[i].sub);
	umbra_mutex_lock(&mmu->pool->mmus_lock);
	for (struct shadow_mmu **pp = &mmu->pool->mmus; *pp; pp = &(*pp)->pool_next) {
		if (*pp == mmu) {
			*pp = mmu->pool_next;
			break;
		}
	}
	umbra_mutex_unlock(&mmu->pool->mmus_lock);
	for (int i = 0; i < n; i++) {
		pool_obj_put(mmu->pool, mmu->slots[i].pobj);
		free(mmu->slots[i].young);
	}
	umbra_mutex_exit(&mmu->tlbs_lock);
	umbra_mutex_exit(&mmu->mmu_lock);
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
	umbra_mutex_lock(pool_obj_stripe(slot->pobj, page));
	n = slot->rmap[page].nr;
	umbra_mutex_unlock(pool_obj_stripe(slot->pobj, page));
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

struct check_ctx {
	uint64_t leaves, tables;
	uint8_t *cow[SHADOW_MAX_SLOTS];	/* [slot][page]: shared copy-on-write in our P2M */
};

static bool users_has_locked(struct shadow_page *sp, struct shadow_mmu *mmu, uint32_t parent,
			     uint32_t index, uint32_t *nr)
{
	bool found = false;

	*nr = 0;
	for (struct shadow_page_user *u = sp->users; u; u = u->next) {
		(*nr)++;
		found |= u->parent == parent && u->index == index &&
			 (parent != SHADOW_NO_PAGE || u->mmu == mmu);
	}
	return found;
}

/*
 * @path_w: every entry above grants W.  Called with mmu_lock.  Another VM's
 * zap may clear leaves of the table meanwhile: the entries are read and
 * counted under the table lock, and each leaf is then checked against the
 * reverse map under its page's stripe, if it still maps that page.
 */
static int check_table_locked(struct shadow_mmu *mmu, uint32_t page, uint32_t parent,
			      uint32_t index, bool path_w, struct check_ctx *c)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	uint64_t *sptes = mmu_sptes(mmu, page);
	uint64_t snap[SPTE_ENTRIES];
	uint32_t present = 0, nr_present, nr_users;
	bool linked;
	int ret;

	c->tables++;
	umbra_mutex_lock(&sp->lock);
	linked = users_has_locked(sp, mmu, parent, index, &nr_users);
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		snap[i] = spte_read(&sptes[i]);
		present += spte_is_present(snap[i]);
	}
	nr_present = __atomic_load_n(&sp->nr_present, __ATOMIC_RELAXED);
	umbra_mutex_unlock(&sp->lock);
	if (!sp->level || !linked || __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) != nr_users ||
	    present != nr_present)
		return -EUCLEAN;
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = snap[i];

		if (!spte_is_present(spte))
			continue;
		if (!spte_is_accessed(spte))
			return -EUCLEAN;
		if (spte_is_leaf(spte, sp->level)) {
			struct shadow_mmu_slot *slot;
			struct umbra_mutex *stripe;
			uint64_t bp, now;
			uint32_t k;
			shadow_sptep_t s;
			bool found = false;

			if (sp->level != 1 || spte_is_writable(spte) != spte_is_dirty(spte) ||
			    (spte & SPTE_GLOBAL))
				return -EUCLEAN;
			stripe = leaf_stripe(mmu, spte, &slot, &bp);
			if (!stripe)
				return -EUCLEAN;
			/* Write protection: no write can reach shared data. */
			if (path_w && spte_is_writable(spte) && c->cow[slot->id] && c->cow[slot->id][bp])
				return -EUCLEAN;
			umbra_mutex_lock(stripe);
			now = spte_read(&sptes[i]);
			if (spte_is_present(now) && spte_addr(now) == spte_addr(spte))
				for_each_rmap_sptep(&slot->rmap[bp], k, s)
					found |= s == sptep_make(page, i);
			else
				found = true; /* cleared by a zap since: nothing to check */
			umbra_mutex_unlock(stripe);
			if (!found)
				return -EUCLEAN;
			c->leaves++;
			continue;
		}
		uint32_t child = pool_page_index(spte_addr(spte));
		struct shadow_page *csp = mmu_page(mmu, child);

		if (!shadow_pool_contains(mmu->pool, spte_addr(spte)) || csp->level != sp->level - 1 ||
		    (!csp->canon &&
		     csp->gva != shadow_va_canonical(sp->gva + ((uint64_t)i << SPTE_LEVEL_SHIFT(sp->level)))))
			return -EUCLEAN;
		ret = check_table_locked(mmu, child, page, i, path_w && spte_is_writable(spte), c);
		if (ret)
			return ret;
	}
	return 0;
}

int shadow_mmu_check(struct shadow_mmu *mmu)
{
	struct check_ctx c = { 0 };
	int n, ret = 0;

	umbra_mutex_lock(&mmu->mmu_lock);
	n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);
	for (uint64_t g = 0; g < mmu->p2m_pages && !ret; g++) {
		uint64_t e = __atomic_load_n(&mmu->p2m[g], __ATOMIC_RELAXED);
		int id = (int)((e & P2M_SLOT_MASK) >> P2M_SLOT_SHIFT) - 1;

		if (!(e & P2M_COW))
			continue;
		if (!c.cow[id])
			c.cow[id] = calloc(mmu->slots[id].npages, 1);
		if (!c.cow[id])
			ret = -ENOMEM;
		else
			c.cow[id][e & P2M_PAGE_MASK] = 1;
	}
	for (unsigned int r = 0; r < mmu->nr_roots && !ret; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			ret = check_table_locked(mmu, mmu->roots[r].page, SHADOW_NO_PAGE, r, true, &c);
	/* The other direction: every reverse-map entry is a present leaf
	 * mapping that page (whichever VM's table it is in), under the
	 * page's stripe. */
	for (int i = 0; i < n && !ret; i++) {
		struct shadow_mmu_slot *slot = &mmu->slots[i];

		for (uint64_t p = 0; p < slot->npages && !ret; p++) {
			struct umbra_mutex *stripe = pool_obj_stripe(slot->pobj, p);
			uint32_t k;
			shadow_sptep_t s;

			umbra_mutex_lock(stripe);
			for_each_rmap_sptep(&slot->rmap[p], k, s) {
				uint64_t spte = spte_read(mmu_sptes(mmu, sptep_page(s)) + sptep_index(s));

				if (!spte_is_present(spte) ||
				    __atomic_load_n(&mmu_page(mmu, sptep_page(s))->level,
						    __ATOMIC_RELAXED) != 1 ||
				    spte_addr(spte) != slot->s.mpa + (p << SHADOW_PAGE_SHIFT))
					ret = -EUCLEAN;
			}
			umbra_mutex_unlock(stripe);
		}
	}
	if (!ret && !mmu->sharing) {
		struct shadow_mmu_stats st;
		uint64_t rmapped = 0;

		/* Alone in its objects: everything is its own. */
		for (int i = 0; i < n; i++)
			if (mmu->slots[i].pobj->refs == 1)
				for (uint64_t p = 0; p < mmu->slots[i].npages; p++)
					rmapped += mmu->slots[i].rmap[p].nr;
		shadow_mmu_stats(mmu, &st);
		if (st.tables_created - st.tables_freed != c.tables)
			ret = -EUCLEAN;
		bool alone = true;

		for (int i = 0; i < n; i++)
			alone &= mmu->slots[i].pobj->refs == 1;
		if (!ret && alone && rmapped != c.leaves)
			ret = -EUCLEAN;
	}
	umbra_mutex_unlock(&mmu->mmu_lock);
	for (int i = 0; i < SHADOW_MAX_SLOTS; i++)
		free(c.cow[i]);
	return ret;
}

/* Counts @page and the tables below it, each once (@seen: one bit per pool
 * page).  Called with mmu_lock. */
static void usage_table_locked(struct shadow_mmu *mmu, uint32_t page, uint8_t *seen,
			       struct shadow_table_usage *u)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	struct shadow_page *sp = mmu_page(mmu, page);
	const uint64_t *sptes = mmu_sptes(mmu, page);

	if (seen[page / 8] & (1u << (page % 8)))
		return;
	seen[page / 8] |= (uint8_t)(1u << (page % 8));
	u->tables++;
	if (sp->level >= 1 && sp->level <= SHADOW_LEVELS)
		u->by_level[sp->level]++;
	if (__atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) > 1 || sp->canon)
		u->shared++;
	else
		u->private_++;
	if (sp->level <= 1)
		return;
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);

		if (spte_is_present(spte) && !spte_is_leaf(spte, sp->level) &&
		    shadow_pool_contains(mmu->pool, spte_addr(spte)))
			usage_table_locked(mmu, pool_page_index(spte_addr(spte)), seen, u);
	}
}

int shadow_mmu_table_usage(struct shadow_mmu *mmu, struct shadow_table_usage *usage)
{
	size_t nr_pages = shadow_pool_nr_pages(mmu->pool);
	uint8_t *seen = calloc((nr_pages + 7) / 8, 1);

	memset(usage, 0, sizeof(*usage));
	if (!seen)
		return -ENOMEM;
	umbra_mutex_lock(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			usage_table_locked(mmu, mmu->roots[r].page, seen, usage);
	umbra_mutex_unlock(&mmu->mmu_lock);
	free(seen);
	return 0;
}

/* ---- sharing: clone, copy-on-write (docs/sharing.md) ---------------------------------- */

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

int shadow_mmu_cow_break(struct shadow_mmu *mmu, uint64_t gpa)
{
	uint64_t gfn = gpa >> SHADOW_PAGE_SHIFT;
	struct zap_batch b;
	int ret;

	if (gfn >= mmu->p2m_pages)
		return -EINVAL;
	for (;;) {
		uint64_t e = __atomic_load_n(&mmu->p2m[gfn], __ATOMIC_ACQUIRE), p, q, seq_s, seq_c;
		struct shadow_mmu_slot *s, *cs;

		if (!(e & P2M_COW))
			return 0;
		cs = slot_of_id(mmu, __atomic_load_n(&mmu->cow_slot, __ATOMIC_RELAXED));
		if (!cs)
			return -EROFS;
		q = __atomic_fetch_add(&mmu->cow_next, 1, __ATOMIC_RELAXED);
		if (q >= cs->npages)
			return -ENOMEM;
		s = &mmu->slots[((e & P2M_SLOT_MASK) >> P2M_SLOT_SHIFT) - 1];
		p = e & P2M_PAGE_MASK;
		/* Both pages with the sequence/retry protocol, no lock held. */
		seq_s = notifier_read_begin(s->s.obj, p, p);
		if (s->s.ops && s->s.ops->get_page && (ret = s->s.ops->get_page(s->s.priv, p, false)))
			return ret;
		seq_c = notifier_read_begin(cs->s.obj, q, q);
		if (cs->s.ops && cs->s.ops->get_page && (ret = cs->s.ops->get_page(cs->s.priv, q, true)))
			return ret;
		umbra_mutex_lock(&mmu->mmu_lock);
		if (__atomic_load_n(&mmu->p2m[gfn], __ATOMIC_RELAXED) != e ||
		    notifier_read_retry(s->s.obj, p, p, seq_s) ||
		    notifier_read_retry(cs->s.obj, q, q, seq_c)) {
			umbra_mutex_unlock(&mmu->mmu_lock);
			mmu_stat_inc(mmu, retries);
			continue; /* page q is lost: the bump allocator never reuses */
		}
		/* Nobody writes p (every sharer maps it read-only) and no
		 * invalidation of p or q can pass our mmu_lock: copy. */
		memcpy((char *)cs->s.host + (q << SHADOW_PAGE_SHIFT),
		       (char *)s->s.host + (p << SHADOW_PAGE_SHIFT), SHADOW_PAGE_SIZE);
		__atomic_store_n(&mmu->p2m[gfn], ((uint64_t)(cs->id + 1) << P2M_SLOT_SHIFT) | q,
				 __ATOMIC_RELEASE);
		bump_sync_seq_locked(mmu);
		/* Our mappings of the old page go; the other sharers keep
		 * theirs (we leave the shared tables that hold them). */
		zap_batch_init(&b);
		zap_slot_range_local_locked(mmu, s, p, p, &b);
		zap_batch_finish_locked(mmu, &b);
		umbra_mutex_unlock(&mmu->mmu_lock);
		mmu_stat_inc(mmu, cow_breaks);
		return 0;
	}
}

int shadow_mmu_clone(struct shadow_mmu *parent, const struct shadow_slot *cow,
		     struct shadow_mmu **out)
{
	struct shadow_mmu_config cfg = {
		.pool = parent->pool,
		.max_gpa = parent->p2m_pages << SHADOW_PAGE_SHIFT,
		.nr_roots = parent->nr_roots,
		.mode = parent->mode,
	};
	struct shadow_mmu *child;
	struct zap_batch b;
	int n, id, ret;

	if (!cow || __atomic_load_n(&parent->cow_slot, __ATOMIC_RELAXED) < 0)
		return -EINVAL;
	ret = shadow_mmu_create(&cfg, &child);
	if (ret)
		return ret;
	n = __atomic_load_n(&parent->nr_slots, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++) {
		ret = mmu_add_slot(child, &parent->slots[i].s, parent->slots[i].shared, &id);
		if (ret)
			goto destroy_child;
	}
	ret = shadow_mmu_add_slot(child, cow, &id);
	if (ret)
		goto destroy_child;
	child->cow_slot = id;

	zap_batch_init(&b);
	umbra_mutex_lock(&parent->mmu_lock);
	/* Roots first (they can fail): a copy of each, whose entries point at
	 * the parent's tables, one more reference each.  No lower level is
	 * walked: the cost is 512 entries per cached root. */
	for (unsigned int r = 0; r < parent->nr_roots; r++) {
		struct shadow_root *pr = &parent->roots[r];
		uint64_t *from, *to;
		uint32_t page, present = 0;
		struct shadow_page *sp;

		if (pr->page == SHADOW_NO_PAGE)
			continue;
		ret = pool_alloc_index(parent->pool, SPTE_LEVELS, &page);
		if (ret)
			goto unlock_parent;
		sp = mmu_page(parent, page);
		sp->access = SHADOW_RIGHTS_ALL;
		sp->gpa = pr->cr3;
		ret = pool_user_add(parent->pool, page, child, SHADOW_NO_PAGE, r);
		if (ret) {
			pool_free_index(parent->pool, page);
			goto unlock_parent;
		}
		child->roots[r] = (struct shadow_root){ .cr3 = pr->cr3, .page = page,
							.last_used = pr->last_used };
		mmu_stat_inc(child, tables_created);
		from = mmu_sptes(parent, pr->page);
		to = mmu_sptes(parent, page);
		for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
			uint64_t e = spte_read(&from[i]);

			if (!spte_is_present(e))
				continue;
			ret = pool_user_add(parent->pool, pool_page_index(spte_addr(e)), child, page, i);
			if (ret)
				goto unlock_parent; /* the child's destroy drops what we took */
			/* Write protection: a write through either root faults. */
			spte_write(&to[i], e & ~SPTE_WRITABLE);
			__atomic_store_n(&sp->nr_present, ++present, __ATOMIC_RELAXED);
			if (e & SPTE_WRITABLE)
				spte_set_locked(parent, pr->page, i, e & ~SPTE_WRITABLE);
		}
	}
	/* The P2M: every private page becomes copy-on-write for both. */
	for (uint64_t g = 0; g < parent->p2m_pages; g++) {
		uint64_t e = __atomic_load_n(&parent->p2m[g], __ATOMIC_RELAXED);

		if (!e)
			continue;
		if (!parent->slots[((e & P2M_SLOT_MASK) >> P2M_SLOT_SHIFT) - 1].shared &&
		    !(e & P2M_COW)) {
			e |= P2M_COW;
			__atomic_store_n(&parent->p2m[g], e, __ATOMIC_RELEASE);
		}
		__atomic_store_n(&child->p2m[g], e, __ATOMIC_RELEASE);
	}
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
