/*
 * The per-VM shadow MMU's life: create and destroy, the registration of
 * vCPU TLBs, and statistics and introspection.  The mechanisms live in the
 * files mmu_internal.h lists.
 *
 * Locks: create and destroy take pool->mmus_lock to (un)list the MMU, and
 * destroy takes mmu_lock to drop its roots, then unsubscribes its slots
 * with no shadow lock held (asserted).  The TLB list is written under both
 * mmu_lock and tlbs_lock.
 */
#include <errno.h>
#include <stdlib.h>

#include "mmu_internal.h"

int shadow_mmu_create(const struct shadow_mmu_config *config, struct shadow_mmu **out)
{
	struct shadow_mmu *mmu;
	int ret;

	if (!config || !config->pool || !config->max_gpa || config->max_gpa % SHADOW_PAGE_SIZE ||
	    config->max_gpa > SHADOW_POOL_GPA || !walk_mode_is_valid(&config->mode) ||
	    (config->max_tables && config->max_tables < SHADOW_MMU_MIN_TABLES) ||
	    config->fault_around > SHADOW_FAULT_AROUND_MAX || config->nr_roots > SHADOW_MMU_MAX_ROOTS ||
	    (config->fault_around & (config->fault_around - 1)))
		return -EINVAL;
	mmu = calloc(1, sizeof(*mmu));
	if (!mmu)
		return -ENOMEM;
	mmu->pool = config->pool;
	mmu->mode = config->mode;
	mmu->p2m_pages = config->max_gpa >> SHADOW_PAGE_SHIFT;
	ret = p2m_init(mmu);
	if (ret)
		goto free_mmu;
	ret = table_account_create(config->max_tables, &mmu->account);
	if (ret)
		goto exit_p2m;
	mmu->max_roots = config->nr_roots ? config->nr_roots : SHADOW_MMU_MAX_ROOTS;
	mmu->fault_around = config->fault_around > 1 ? config->fault_around : 1;
	mmu->huge_leaves = config->huge_leaves;
	ret = root_cache_grow(mmu, ROOT_CACHE_FIRST);
	if (ret)
		goto put_account;
	ret = table_hash_init(mmu);
	if (ret)
		goto free_roots;
	umbra_rwlock_init(&mmu->mmu_lock, "shadow.mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_mutex_init(&mmu->tlbs_lock, "shadow.mmu.tlbs_lock", UMBRA_LOCK_RANK_TLBS);
	mmu->own_slot = -1;
	umbra_mutex_lock(&mmu->pool->mmus_lock);
	mmu->pool_next = mmu->pool->mmus;
	mmu->pool->mmus = mmu;
	umbra_mutex_unlock(&mmu->pool->mmus_lock);
	*out = mmu;
	return 0;

free_roots:
	free(mmu->roots);
put_account:
	table_account_put(mmu->account);
exit_p2m:
	p2m_exit(mmu, -1);
free_mmu:
	free(mmu);
	return ret;
}

/* Drops every root: tables shared with other VMs lose one user (and stay
 * theirs); tables only we reached are freed after the flush.  From then
 * on, release() has nothing of ours left to zap. */
static void mmu_drop_roots(struct shadow_mmu *mmu)
{
	struct zap_batch b;

	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	for (unsigned int r = 0; r < mmu->nr_roots; r++)
		if (mmu->roots[r].page != SHADOW_NO_PAGE)
			root_evict_locked(mmu, &mmu->roots[r], &b);
	zap_batch_finish_locked(mmu, &b);
	mmu->destroying = true;
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
}

/* Takes @mmu off the pool's list (the flush-everyone fallback's). */
static void mmu_unlist(struct shadow_mmu *mmu)
{
	umbra_mutex_lock(&mmu->pool->mmus_lock);
	for (struct shadow_mmu **pp = &mmu->pool->mmus; *pp; pp = &(*pp)->pool_next) {
		if (*pp == mmu) {
			*pp = mmu->pool_next;
			break;
		}
	}
	umbra_mutex_unlock(&mmu->pool->mmus_lock);
}

void shadow_mmu_destroy(struct shadow_mmu *mmu)
{
	int n;

	if (!mmu)
		return;
	n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);
	mmu_drop_roots(mmu);
	/* Afterwards no callback runs. */
	shadow_assert_no_lock_held();
	for (int i = 0; i < n; i++)
		notifier_unsubscribe(mmu->slots[i].sub);
	/* Our P2M references go while the slots' objects are still held (the
	 * page counts are theirs); our own slot's pages are ours alone. */
	p2m_exit(mmu, mmu->own_slot);
	mmu_unlist(mmu);
	for (int i = 0; i < n; i++)
		pool_obj_put(mmu->pool, mmu->slots[i].pobj);
	umbra_mutex_exit(&mmu->tlbs_lock);
	umbra_rwlock_exit(&mmu->mmu_lock);
	free(mmu->roots);
	table_hash_exit(mmu);
	table_account_put(mmu->account); /* pages a clone still reaches keep it */
	free(mmu);
}

/* ---- vCPUs ---------------------------------------------------------------- */

void shadow_mmu_tlb_register(struct shadow_mmu *mmu, struct shadow_tlb *tlb)
{
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	tlb->root = 0;
	tlb->cr3 = 0;
	umbra_mutex_lock(&mmu->tlbs_lock);
	tlb->next = mmu->tlbs;
	mmu->tlbs = tlb;
	umbra_mutex_unlock(&mmu->tlbs_lock);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
}

void shadow_mmu_tlb_unregister(struct shadow_mmu *mmu, struct shadow_tlb *tlb)
{
	umbra_rwlock_write_lock(&mmu->mmu_lock);
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
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
}

/* ---- introspection ---------------------------------------------------------- */

size_t shadow_mmu_rmap_count(struct shadow_mmu *mmu, int slot_id, uint64_t page)
{
	struct shadow_mmu_slot *slot = slot_of_id(mmu, slot_id);
	size_t n;

	if (!slot || page >= slot->npages)
		return 0;
	umbra_mutex_lock(pool_obj_stripe(slot->pobj, page));
	n = rmap_nr(pool_obj_rmap(slot->pobj, page));
	umbra_mutex_unlock(pool_obj_stripe(slot->pobj, page));
	return n;
}

void shadow_mmu_stats(const struct shadow_mmu *mmu, struct shadow_mmu_stats *stats)
{
	uint64_t *dst = (uint64_t *)stats;

	for (size_t i = 0; i < sizeof(*stats) / sizeof(uint64_t); i++) {
		dst[i] = 0;
		for (unsigned int k = 0; k < UMBRA_THREAD_SLOTS; k++)
			dst[i] += __atomic_load_n((const uint64_t *)&mmu->stats[k].s + i,
						  __ATOMIC_RELAXED);
	}
}

uint64_t shadow_mmu_reclaims(const struct shadow_mmu *mmu)
{
	uint64_t n = 0;

	for (unsigned int k = 0; k < UMBRA_THREAD_SLOTS; k++)
		n += __atomic_load_n(&mmu->stats[k].s.reclaims, __ATOMIC_RELAXED);
	return n;
}

struct shadow_pool *shadow_mmu_pool(const struct shadow_mmu *mmu)
{
	return mmu->pool;
}

const struct shadow_paging_mode *shadow_mmu_mode(const struct shadow_mmu *mmu)
{
	return &mmu->mode;
}

/* ---- paging mode ------------------------------------------------------------ */

void shadow_mmu_set_trace_id(struct shadow_mmu *mmu, uint32_t id)
{
	__atomic_store_n(&mmu->trace_id, id, __ATOMIC_RELAXED);
}

int shadow_mmu_set_mode(struct shadow_mmu *mmu, const struct shadow_paging_mode *mode)
{
	struct shadow_paging_mode *cur = &mmu->mode;
	struct zap_batch b;

	if (!mode || !walk_mode_is_valid(mode) || mode->maxphyaddr != cur->maxphyaddr)
		return -EINVAL;
	zap_batch_init(&b);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	if (cur->wp != mode->wp || cur->nxe != mode->nxe || cur->smep != mode->smep ||
	    cur->gbpages != mode->gbpages) {
		/* Field by field, atomically: a fault's lock-free guest walk may
		 * read the mode meanwhile; it sees sync_seq move and walks again
		 * under mmu_lock (fault.c) before it installs anything. */
		__atomic_store_n(&cur->wp, mode->wp, __ATOMIC_RELAXED);
		__atomic_store_n(&cur->nxe, mode->nxe, __ATOMIC_RELAXED);
		__atomic_store_n(&cur->smep, mode->smep, __ATOMIC_RELAXED);
		__atomic_store_n(&cur->gbpages, mode->gbpages, __ATOMIC_RELAXED);
		/* Every cached address space against the guest's tables, read
		 * under the new mode: what it shadows differently goes. */
		for (unsigned int r = 0; r < mmu->nr_roots; r++) {
			if (mmu->roots[r].page == SHADOW_NO_PAGE)
				continue;
			sync_table_locked(mmu, mmu->roots[r].page, &b);
			mmu_stat_inc(mmu, syncs);
		}
		bump_sync_seq_locked(mmu);
	}
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return 0;
}
