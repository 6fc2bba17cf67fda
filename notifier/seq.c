/*
 * notifier/seq.c - the sequence/retry protocol (docs/notifiers.md, "The
 * sequence/retry protocol", has the two-thread diagram).
 *
 * Per object, under seq_lock: `seq`, advanced when a range ends (or aborts);
 * `in_progress`, the number of ranges started and not ended; and the list of
 * those ranges, so that a reader only waits for and retries on the ranges
 * that overlap the pages it reads.  This is KVM's mmu_invalidate_seq /
 * mmu_invalidate_in_progress / mmu_invalidate_range_{start,end}, with the
 * in-progress ranges kept exactly instead of merged.
 *
 * Readers skip seq_lock while no range is in progress: read_begin and
 * read_retry first load in_progress (sequentially consistent), and only if
 * it is 0 answer from seq alone (acquire), with no store to a line another
 * thread writes.  A range's finish advances seq (release) before it lowers
 * in_progress (release), so a reader that sees in_progress at 0 after a
 * range sees that range's seq too; a reader that loaded 0 before a range
 * began, and answered "no retry", was at that point right (the range's
 * callbacks take the subscriber's lock after it began, which the reader
 * holds around read_retry); read_begin may hand out a seq while a range it
 * did not see is beginning, which the range's read_retry catches (in
 * progress, or seq moved).  in_progress's increment and the walk's load of
 * next_gen are sequentially consistent, as is subscribe's store of
 * next_gen: a subscription a range's walk does not count in (its store
 * after that load) is made before its reader's loads of in_progress, which
 * then see the range (no store-buffering outcome in the total order).
 */
#include "seq.h"

void nt_seq_init(struct notifier_object *obj)
{
	umbra_mutex_init(&obj->seq_lock, "notifier.object.seq_lock", UMBRA_LOCK_RANK_NOTIFIER_SEQ);
	__atomic_store_n(&obj->seq, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&obj->in_progress, 0u, __ATOMIC_RELAXED);
	obj->active = NULL;
	obj->waiters = 0;
}

void nt_seq_exit(struct notifier_object *obj)
{
	umbra_mutex_exit(&obj->seq_lock);
}

static bool nt_overlaps_active_locked(struct notifier_object *obj, uint64_t first, uint64_t last)
{
	umbra_mutex_assert_held(&obj->seq_lock);
	for (const struct notifier_range *r = obj->active; r; r = r->internal.next_active)
		if (r->first <= last && first <= r->last)
			return true;
	return false;
}

/*
 * Mark @range in progress and return the subscriber generation the walks of
 * this invalidation use.  Called inside an RCU read-side critical section,
 * before any callback: a reader that takes seq_lock after this sees the
 * range; one that took it before is ordered before the walk, so either its
 * subscription is counted in (it was born before the generation read here)
 * and the walk reaches it, or its read_retry sees the range.
 */
uint64_t nt_seq_range_begin(struct notifier_object *obj, struct notifier_range *range)
{
	uint64_t gen;

	umbra_mutex_lock(&obj->seq_lock);
	__atomic_fetch_add(&obj->in_progress, 1u, __ATOMIC_SEQ_CST);
	range->internal.prev_active = NULL;
	range->internal.next_active = obj->active;
	if (obj->active)
		obj->active->internal.prev_active = range;
	obj->active = range;
	gen = __atomic_load_n(&obj->next_gen, __ATOMIC_SEQ_CST);
	umbra_mutex_unlock(&obj->seq_lock);
	return gen;
}

/* Take @range out of progress and advance the sequence (end or abort). */
void nt_seq_range_finish(struct notifier_object *obj, struct notifier_range *range)
{
	umbra_mutex_lock(&obj->seq_lock);
	if (range->internal.prev_active)
		range->internal.prev_active->internal.next_active = range->internal.next_active;
	else
		obj->active = range->internal.next_active;
	if (range->internal.next_active)
		range->internal.next_active->internal.prev_active = range->internal.prev_active;
	range->internal.prev_active = range->internal.next_active = NULL;
	/* seq first: a reader that sees in_progress lowered sees it moved. */
	__atomic_store_n(&obj->seq, __atomic_load_n(&obj->seq, __ATOMIC_RELAXED) + 1,
			 __ATOMIC_RELEASE);
	__atomic_fetch_sub(&obj->in_progress, 1u, __ATOMIC_RELEASE);
	if (obj->waiters)
		pthread_cond_broadcast(&obj->seq_cond);
	umbra_mutex_unlock(&obj->seq_lock);
}

uint64_t notifier_read_begin(struct notifier_object *obj, uint64_t first, uint64_t last)
{
	uint64_t seq;
	bool waited = false;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK, NT_RULE_READ_BEGIN);
	if (__atomic_load_n(&obj->in_progress, __ATOMIC_SEQ_CST) == 0) {
		seq = __atomic_load_n(&obj->seq, __ATOMIC_ACQUIRE);
		nt_count(obj, NT_CTR(read_begins), 1);
		return seq;
	}
	umbra_mutex_lock(&obj->seq_lock);
	while (nt_overlaps_active_locked(obj, first, last)) {
		if (!waited)
			nt_count(obj, NT_CTR(read_waits), 1);	/* counted as it starts to sleep */
		waited = true;
		obj->waiters++;
		umbra_cond_wait(&obj->seq_cond, &obj->seq_lock);
		obj->waiters--;
	}
	seq = __atomic_load_n(&obj->seq, __ATOMIC_RELAXED);
	umbra_mutex_unlock(&obj->seq_lock);
	nt_count(obj, NT_CTR(read_begins), 1);
	return seq;
}

bool notifier_read_retry(struct notifier_object *obj, uint64_t first, uint64_t last, uint64_t seq)
{
	bool retry;

	if (__atomic_load_n(&obj->in_progress, __ATOMIC_SEQ_CST) == 0 &&
	    __atomic_load_n(&obj->seq, __ATOMIC_ACQUIRE) == seq)
		return false;
	umbra_mutex_lock(&obj->seq_lock);
	retry = __atomic_load_n(&obj->seq, __ATOMIC_RELAXED) != seq ||
		nt_overlaps_active_locked(obj, first, last);
	umbra_mutex_unlock(&obj->seq_lock);
	nt_count(obj, NT_CTR(read_retries), retry);
	return retry;
}
