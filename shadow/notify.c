/*
 * The shadow MMU as a subscriber of each slot's memory object
 * (umbra/notifier.h has the callback contracts).  Every invalidation
 * callback serialises on the VM's mmu_lock, the lock the fault path holds around
 * notifier_read_retry() and the install: so once a callback has zapped a
 * range under mmu_lock and flushed the vCPUs, no fault can install an entry
 * for it until the invalidation ends (read_retry answers "retry").
 *
 * Locks: each invalidation callback takes the slot's VM's mmu_lock (a
 * try-lock where it may not block) and zaps through zap.c; the young
 * callbacks take no mmu_lock (access.c: try-locks on a stripe and table
 * locks, or nothing); release() runs under the object's lock, which ranks
 * outside mmu_lock (umbra/lock.h).
 */
#include <errno.h>

#include "mmu_internal.h"

/* Takes mmu_lock as the range allows: blocking, or try (else -EAGAIN). */
static int lock_for_range(struct shadow_mmu *mmu, bool may_block)
{
	if (may_block) {
		umbra_rwlock_write_lock(&mmu->mmu_lock);
		return 0;
	}
	return umbra_rwlock_write_trylock(&mmu->mmu_lock) ? 0 : -EAGAIN;
}

/* The callback's span in a --trace: the VM, the invalidation it serves,
 * the pages, the leaves it cleared, and whether it could take mmu_lock. */
static void trace_callback(struct shadow_mmu *mmu, const char *op, uint64_t t0, uint64_t first,
			   uint64_t last, uint64_t zapped, int ret)
{
	umbra_trace_span(UMBRA_TRACE_CALLBACK, "callback", t0, &(struct umbra_trace_args){
		.key = { "vm", "inv", "first", "zapped" },
		.val = { mmu_trace_id(mmu), umbra_trace_current_invalidation(), first, zapped },
		.skey = { "op", "result" },
		.sval = { op, ret ? "eagain" : "ok" } });
}

static int zap_pages(struct shadow_mmu_slot *slot, const struct notifier_range *range,
		     uint64_t first, uint64_t last, const char *op)
{
	struct shadow_mmu *mmu = slot->mmu;
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_CALLBACK);
	struct zap_batch b;
	int ret;

	ret = lock_for_range(mmu, notifier_range_may_block(range));
	if (ret) {
		if (t0)
			trace_callback(mmu, op, t0, first, last, 0, ret);
		return ret;
	}
	zap_batch_init(&b);
	zap_slot_range_locked(mmu, slot, first, last, &b);
	zap_batch_finish_locked(mmu, &b); /* every vCPU flushed before we return */
	mmu_stat_inc(mmu, invalidations);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	if (t0)
		trace_callback(mmu, op, t0, first, last, b.zapped, 0);
	return 0;
}

static int shadow_invalidate_range_start(struct notifier_subscription *sub,
					 const struct notifier_range *range)
{
	return zap_pages(notifier_subscription_priv(sub), range, range->first, range->last,
			 "range_start");
}

static void shadow_invalidate_range_end(struct notifier_subscription *sub,
					const struct notifier_range *range)
{
	/* Nothing to undo: the library's sequence advances after this, and
	 * faults that collided with the range retry. */
}

static int shadow_invalidate_page(struct notifier_subscription *sub,
				  const struct notifier_range *range, uint64_t page)
{
	return zap_pages(notifier_subscription_priv(sub), range, page, page, "page");
}

/*
 * Young state (access.c): one byte per page of the object in the pool,
 * shared by every VM of the pool, so the first VM asked clears it for all
 * (the others answer 0; the library ORs the answers).  Clearing makes
 * every leaf of the page access-tracked, so the next access by any VM
 * faults once and marks the page young again.  Never sleeps (try-locks,
 * no mmu_lock, no TLB flush): a page whose locks are contended is answered
 * young and left as it was.
 */
static int shadow_clear_young(struct notifier_subscription *sub, struct notifier_object *obj,
			      uint64_t first, uint64_t last)
{
	struct shadow_mmu_slot *slot = notifier_subscription_priv(sub);
	uint64_t tracked = 0;
	int young = 0;

	for (uint64_t p = first; p <= last && p < slot->npages; p++)
		young |= pool_obj_clear_young(slot->mmu->pool, slot->pobj, p, &tracked);
	mmu_stat_add(slot->mmu, access_tracked, tracked);
	return young;
}

/* Read-only: one atomic load. */
static int shadow_test_young(struct notifier_subscription *sub, struct notifier_object *obj,
			     uint64_t page)
{
	struct shadow_mmu_slot *slot = notifier_subscription_priv(sub);

	return page < slot->npages && pool_obj_is_young(slot->pobj, page);
}

static void shadow_release(struct notifier_subscription *sub, struct notifier_object *obj)
{
	struct shadow_mmu_slot *slot = notifier_subscription_priv(sub);
	struct shadow_mmu *mmu = slot->mmu;
	struct zap_batch b;

	umbra_rwlock_write_lock(&mmu->mmu_lock);
	__atomic_store_n(&slot->released, true, __ATOMIC_RELEASE);
	zap_batch_init(&b);
	/* A VM being destroyed has dropped its roots already: the leaves of
	 * the object still in the pool belong to other VMs' (shared) tables,
	 * which stay valid for them.  Otherwise (the object goes away) every
	 * leaf of it goes, for every VM (the non-local zap). */
	if (!mmu->destroying)
		zap_slot_range_locked(mmu, slot, 0, slot->npages - 1, &b);
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
}

const struct notifier_ops shadow_notifier_ops = {
	.invalidate_range_start = shadow_invalidate_range_start,
	.invalidate_range_end = shadow_invalidate_range_end,
	.invalidate_page = shadow_invalidate_page,
	.clear_young = shadow_clear_young,
	.test_young = shadow_test_young,
	.release = shadow_release,
};
