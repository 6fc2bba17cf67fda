/*
 * The root cache: shadow PML4s keyed by guest CR3 (its PML4 gpa), pinned by
 * the vCPUs running on them.  It holds a root for every address space in
 * use, growing as new ones are loaded, up to max_roots (the configured
 * bound, or SHADOW_MMU_MAX_ROOTS); at the bound, the least recently used
 * unpinned root is evicted when a new one is needed.  A CR3 load finds or
 * creates the root and syncs it (a CR3 load flushes the TLB).
 *
 * When the pool is full or the VM's table quota is reached, the VM first
 * evicts its least recently used unpinned roots, one at a time, and the
 * fault or CR3 load tries again after each; with none left to evict it
 * reclaims: it drops every root no vCPU runs on and every table below the
 * others (its own references only), and tries once more.  So the quota, not
 * a constant, bounds the address spaces a VM keeps shadowed.
 *
 * Locks: the cache is under the VM's mmu_lock (asserted by every *_locked
 * function); shadow_mmu_load_cr3 and mmu_reclaim take it, and wait for a
 * grace period with no lock held when the pool is full.
 */
#include <errno.h>

#include "iter.h"
#include "mmu_internal.h"

struct shadow_root *root_find_locked(struct shadow_mmu *mmu, uint64_t key)
{
	umbra_rwlock_assert_held(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE && mmu->roots[r].cr3 == key)
			return &mmu->roots[r];
	return NULL;
}

struct shadow_root *root_of_page_locked(struct shadow_mmu *mmu, uint64_t gpa)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE && pool_page_gpa(mmu->roots[r].page) == gpa)
			return &mmu->roots[r];
	return NULL;
}

void root_evict_locked(struct shadow_mmu *mmu, struct shadow_root *root, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint32_t page = root->page;

	root->page = SHADOW_NO_PAGE;
	batch_add_put(mmu, b, page, SHADOW_NO_PAGE, (uint32_t)(root - mmu->roots));
	b->zapped++; /* a root went away: flush (it was not pinned, but be exact) */
}

int root_cache_grow(struct shadow_mmu *mmu, unsigned int n)
{
	struct shadow_root *roots;

	if (n > mmu->max_roots)
		n = mmu->max_roots;
	if (n <= mmu->nr_roots)
		return 0;
	roots = realloc(mmu->roots, n * sizeof(*roots));
	if (!roots)
		return -ENOMEM;
	for (unsigned int r = mmu->nr_roots; r < n; r++)
		roots[r] = (struct shadow_root){ .page = SHADOW_NO_PAGE };
	mmu->roots = roots;
	mmu->nr_roots = n;
	return 0;
}

/* The least recently used root no vCPU runs on, or NULL.  mmu_lock. */
static struct shadow_root *root_lru_unpinned_locked(struct shadow_mmu *mmu)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct shadow_root *lru = NULL;

	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE && !mmu->roots[r].pins &&
		    (!lru || mmu->roots[r].last_used < lru->last_used))
			lru = &mmu->roots[r];
	return lru;
}

/* A free slot of the cache, grown if it is full and below its bound, else
 * the least recently used unpinned root, evicted and freed now (reusable
 * after a grace period: load_cr3 waits); NULL if every root is pinned.
 * mmu_lock. */
static struct shadow_root *root_slot_get_locked(struct shadow_mmu *mmu, struct zap_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const unsigned int n = mmu->nr_roots;
	struct shadow_root *slot;

	for (unsigned int r = 0; r < n; r++)
		if (mmu->roots[r].page == SHADOW_NO_PAGE)
			return &mmu->roots[r];
	if (!root_cache_grow(mmu, 2 * n) && mmu->nr_roots > n)
		return &mmu->roots[n];
	slot = root_lru_unpinned_locked(mmu);
	if (!slot)
		return NULL;
	root_evict_locked(mmu, slot, b);
	mmu_stat_inc(mmu, root_evictions);
	zap_batch_finish_locked(mmu, b);
	return slot;
}

static int root_create_locked(struct shadow_mmu *mmu, uint64_t key, struct zap_batch *b,
			      struct shadow_root **out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct role role = { .direct = false, .access = SHADOW_RIGHTS_ALL, .gpa = key };
	struct shadow_root *slot = root_slot_get_locked(mmu, b);
	uint32_t page;
	int ret;

	if (!slot)
		return -EBUSY;
	ret = table_alloc_locked(mmu, SPTE_LEVELS, &role, 0, &page);
	if (ret)
		return ret;
	ret = pool_user_add(mmu->pool, page, mmu, SHADOW_NO_PAGE, (uint32_t)(slot - mmu->roots));
	if (ret) {
		pool_free_index(mmu->pool, page);
		return ret;
	}
	mmu_stat_inc(mmu, tables_created);
	slot->cr3 = key;
	slot->page = page;
	slot->pins = 0;
	slot->mark = 0;
	*out = slot;
	return 0;
}

/* A CR3 load (@sync: the cached tree is brought up to date) or a resume
 * (shadow_mmu_resume_cr3: it is taken as it is). */
static int load_cr3_once(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3, bool sync,
			 uint64_t *root_gpa)
{
	uint64_t key = cr3_key(mmu, cr3);
	struct shadow_root *root, *old;
	struct zap_batch b;
	int ret = 0;

	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	mmu_stat_inc(mmu, cr3_loads);
	/* The vCPU leaves its current root first: that root may be evicted
	 * to make room (it is not in use any more once we switch). */
	old = tlb->root ? root_of_page_locked(mmu, tlb->root) : NULL;
	if (old)
		old->pins--;
	tlb->root = 0;
	tlb->cr3 = 0;
	root = root_find_locked(mmu, key);
	if (root && sync) {
		/* A CR3 load flushes the TLB: bring the cached tree up to date. */
		sync_table_locked(mmu, root->page, &b);
		mmu_stat_inc(mmu, syncs);
	} else if (!root) {
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
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return ret;
}

void mmu_reclaim(struct shadow_mmu *mmu)
{
	struct zap_batch b;
	unsigned int i;

	shadow_assert_no_lock_held();
	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	mmu_stat_inc(mmu, reclaims);
	/* Every vCPU flushed (on KVM: out of guest mode) before the pinned
	 * translations go, not only after: a vCPU still running could walk
	 * the emptied tables while it delivers an exception whose handler,
	 * IDT or stack is pinned, and take a double, then a triple fault.  A
	 * vCPU that sees the reclaims count move pre-faults its pins before
	 * it runs again, which needs this mmu_lock. */
	for (struct shadow_tlb *tlb = mmu->tlbs; tlb; tlb = tlb->next) {
		tlb->ops->flush_all(tlb);
		mmu_stat_inc(mmu, flushes_all);
	}
	for (unsigned int r = 0; r < mmu->nr_roots; r++) {
		struct shadow_root *root = &mmu->roots[r];

		if (root->page == SHADOW_NO_PAGE)
			continue;
		if (!root->pins) {
			root_evict_locked(mmu, root, &b);
			mmu_stat_inc(mmu, root_evictions);
			continue;
		}
		for_each_present_spte(mmu, root->page, i)
			zap_spte_locked(mmu, root->page, i, &b);
	}
	b.flush_all = true;
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	pool_wait_deferred(mmu->pool);
}

bool shadow_mmu_root_is_marked(struct shadow_mmu *mmu, uint64_t cr3, uint64_t *gen)
{
	struct shadow_root *root;
	bool marked;

	umbra_rwlock_write_lock(&mmu->mmu_lock);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	*gen = __atomic_load_n(&mmu->zap_gen, __ATOMIC_ACQUIRE) + 1;
	marked = root && root->mark == *gen;
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return marked;
}

void shadow_mmu_root_mark(struct shadow_mmu *mmu, uint64_t cr3, uint64_t gen)
{
	struct shadow_root *root;

	umbra_rwlock_write_lock(&mmu->mmu_lock);
	root = root_find_locked(mmu, cr3_key(mmu, cr3));
	if (root)
		root->mark = gen;
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
}

bool mmu_evict_lru_root(struct shadow_mmu *mmu, bool wait)
{
	struct shadow_root *lru;
	struct zap_batch b;

	shadow_assert_no_lock_held();
	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	lru = root_lru_unpinned_locked(mmu);
	if (lru) {
		root_evict_locked(mmu, lru, &b);
		mmu_stat_inc(mmu, root_evictions);
		bump_sync_seq_locked(mmu);
	}
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	if (lru && wait)
		pool_wait_deferred(mmu->pool);
	return lru != NULL;
}

static int load_cr3(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3, bool sync,
		    uint64_t *root_gpa)
{
	int ret = load_cr3_once(mmu, tlb, cr3, sync, root_gpa);

	/* Pool full: an evicted root's page, or pages freed just before,
	 * become reusable after a grace period. */
	if (ret == -ENOMEM && pool_wait_deferred(mmu->pool))
		ret = load_cr3_once(mmu, tlb, cr3, sync, root_gpa);
	/* Still no room, or the quota reached: the least recently used
	 * address spaces go, one at a time. */
	while ((ret == -ENOMEM || ret == -EDQUOT) && mmu_evict_lru_root(mmu, ret == -ENOMEM))
		ret = load_cr3_once(mmu, tlb, cr3, sync, root_gpa);
	/* Still no room: this VM's own tables go. */
	if (ret == -ENOMEM || ret == -EDQUOT) {
		mmu_reclaim(mmu);
		ret = load_cr3_once(mmu, tlb, cr3, sync, root_gpa);
	}
	return ret;
}

int shadow_mmu_load_cr3(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3,
			uint64_t *root_gpa)
{
	return load_cr3(mmu, tlb, cr3, true, root_gpa);
}

int shadow_mmu_resume_cr3(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3,
			  uint64_t *root_gpa)
{
	return load_cr3(mmu, tlb, cr3, false, root_gpa);
}
