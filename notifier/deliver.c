/*
 * notifier/deliver.c - delivering invalidations and young queries.
 *
 * Every walk runs inside an RCU read-side critical section and counts in the
 * subscriptions present for the invalidation's generation (see
 * notifier_internal.h).  No lock is taken on the list.
 */
#include <errno.h>
#include <string.h>

#include "hold.h"
#include "notifier_internal.h"
#include "seq.h"
#include "umbra/trace.h"

void notifier_range_init(struct notifier_range *range, struct notifier_object *obj,
			 enum notifier_event event, uint64_t first, uint64_t last,
			 unsigned int flags)
{
	memset(range, 0, sizeof(*range));
	range->obj = obj;
	range->first = first;
	range->last = last;
	range->event = event;
	range->flags = flags;
}

static bool nt_pages_valid(const struct notifier_object *obj, uint64_t first, uint64_t last)
{
	return first <= last && last < obj->npages;
}

static bool nt_range_valid(const struct notifier_range *range)
{
	return range->obj && nt_pages_valid(range->obj, range->first, range->last) &&
	       (unsigned int)range->event < NOTIFIER_EVENT_NR &&
	       (range->flags & ~NOTIFIER_RANGE_MAY_BLOCK) == 0 &&
	       range->internal.state != NT_RANGE_STARTED;
}

/* A callback's answer: 0, or -EAGAIN allowed only when it may not block. */
static int nt_check_answer(const struct notifier_range *range, int r)
{
	if (r == 0)
		return 0;
	NT_BUG_ON(notifier_range_may_block(range) || r != -EAGAIN);
	return -EAGAIN;
}

/* Deliver invalidate_range_end to @sub (held by the start walk) and drop it. */
static void nt_end_one(struct notifier_object *obj, struct notifier_subscription *sub,
		       const struct notifier_range *range, const struct nt_trace_hook *hook)
{
	sub->ops->invalidate_range_end(sub, range);
	nt_trace(hook, NOTIFIER_TRACE_RANGE_END, obj, sub, range->first, range->last,
		 range->event, 0);
	nt_sub_unhold(sub);
}

/*
 * NOTIFIER_MODE_RANGE, inside the critical section that read @gen.
 * Subscriptions with an end callback are held from their start to their end.
 * On the first failure the starts that succeeded are ended (they are exactly
 * the present subscriptions before the failed one: presence for @gen cannot
 * change and the list order of present subscriptions is stable) and -EAGAIN
 * is returned.
 */
static int nt_start_range_mode(struct notifier_object *obj, struct notifier_range *range,
			       const struct nt_trace_hook *hook)
{
	uint64_t gen = range->internal.gen;
	struct notifier_subscription *sub, *failed = NULL;
	uint64_t ncb = 0, nend = 0;

	nt_for_each_present_sub(sub, obj, gen) {
		const struct notifier_ops *ops = sub->ops;
		int r;

		if (ops->invalidate_range_end)
			nt_sub_hold(sub);
		if (!ops->invalidate_range_start)
			continue;
		r = ops->invalidate_range_start(sub, range);
		ncb++;
		nt_trace(hook, NOTIFIER_TRACE_RANGE_START, obj, sub, range->first, range->last,
			 range->event, r);
		if (nt_check_answer(range, r)) {
			if (ops->invalidate_range_end)
				nt_sub_unhold(sub);
			failed = sub;
			break;
		}
	}
	nt_count(obj, NT_CTR(cb_range_start), ncb);
	if (!failed)
		return 0;

	nt_count(obj, NT_CTR(cb_eagain), 1);
	nt_for_each_present_sub(sub, obj, gen) {
		if (sub == failed)
			break;
		if (sub->ops->invalidate_range_end) {
			nt_end_one(obj, sub, range, hook);
			nend++;
		}
	}
	nt_count(obj, NT_CTR(cb_range_end), nend);
	return -EAGAIN;
}

static void nt_unhold_page_subs(struct notifier_object *obj, uint64_t gen)
{
	struct notifier_subscription *sub;

	umbra_rcu_read_lock();
	nt_for_each_present_sub(sub, obj, gen)
		if (sub->ops->invalidate_page)
			nt_sub_unhold(sub);
	umbra_rcu_read_unlock();
}

/*
 * NOTIFIER_MODE_PAGE, entered inside the critical section that read @gen;
 * returns outside it.  Each page is its own walk in its own critical section
 * (as each 2008 invalidate_page call was); the subscriptions are held across
 * them so that a concurrent unsubscribe waits for the last page.
 */
static int nt_start_page_mode(struct notifier_object *obj, struct notifier_range *range,
			      const struct nt_trace_hook *hook)
{
	uint64_t gen = range->internal.gen;
	struct notifier_subscription *sub;
	uint64_t ncb = 0;
	int ret = 0;

	nt_for_each_present_sub(sub, obj, gen)
		if (sub->ops->invalidate_page)
			nt_sub_hold(sub);
	umbra_rcu_read_unlock();

	for (uint64_t page = range->first; page <= range->last && !ret; page++) {
		umbra_rcu_read_lock();
		hook = nt_trace_hook(obj);
		nt_for_each_present_sub(sub, obj, gen) {
			int r;

			if (!sub->ops->invalidate_page)
				continue;
			r = sub->ops->invalidate_page(sub, range, page);
			ncb++;
			nt_trace(hook, NOTIFIER_TRACE_PAGE, obj, sub, page, page, range->event, r);
			if (nt_check_answer(range, r)) {
				nt_count(obj, NT_CTR(cb_eagain), 1);
				ret = -EAGAIN;
				break;
			}
		}
		umbra_rcu_read_unlock();
	}
	nt_count(obj, NT_CTR(cb_page), ncb);
	nt_unhold_page_subs(obj, gen);
	return ret;
}

/* The invalidation's bracket in a --trace (umbra/trace.h), ended with
 * @result ("ok", "aborted"). */
static uint64_t nt_trace_begin(const struct notifier_range *range, enum notifier_mode mode)
{
	if (!umbra_trace_on(UMBRA_TRACE_INVALIDATE))
		return 0;
	return umbra_trace_invalidation_begin(&(struct umbra_trace_args){
		.key = { "first", "last", "pages", "blockable" },
		.val = { range->first, range->last, notifier_range_npages(range),
			 notifier_range_may_block(range) },
		.skey = { "event", "mode" },
		.sval = { notifier_event_name(range->event), notifier_mode_name(mode) } });
}

static void nt_trace_end(uint64_t id, const char *result)
{
	if (id)
		umbra_trace_invalidation_end(id, &(struct umbra_trace_args){
			.skey = { "result" }, .sval = { result } });
}

int notifier_invalidate_range_start(struct notifier_range *range)
{
	struct notifier_object *obj = range->obj;
	const struct nt_trace_hook *hook;
	enum notifier_mode mode;
	int ret;

	if (!nt_range_valid(range))
		return -EINVAL;
	nt_callbacks_begin(NT_RULE_DELIVER);
	mode = notifier_object_mode(obj);
	range->internal.mode = mode;
	range->internal.trace_id = nt_trace_begin(range, mode);

	umbra_rcu_read_lock();
	range->internal.gen = nt_seq_range_begin(obj, range);
	hook = nt_trace_hook(obj);
	if (mode == NOTIFIER_MODE_RANGE) {
		ret = nt_start_range_mode(obj, range, hook);
		umbra_rcu_read_unlock();
	} else {
		ret = nt_start_page_mode(obj, range, hook);	/* unlocks */
	}

	nt_callbacks_end();
	if (ret) {
		nt_seq_range_finish(obj, range);
		nt_count(obj, NT_CTR(aborts), 1);
		nt_trace_end(range->internal.trace_id, "aborted");
		return ret;
	}
	range->internal.state = NT_RANGE_STARTED;
	nt_count(obj, NT_CTR(starts), 1);
	nt_count(obj, NT_CTR(pages), notifier_range_npages(range));
	nt_count(obj, NT_CTR_EVENT(range->event), 1);
	nt_count(obj, NT_CTR_MODE(mode), 1);
	return 0;
}

void notifier_invalidate_range_end(struct notifier_range *range)
{
	struct notifier_object *obj = range->obj;

	NT_BUG_ON(range->internal.state != NT_RANGE_STARTED);
	if (range->internal.state != NT_RANGE_STARTED)
		return;	/* release builds: ignore an end without a start */

	if (range->internal.mode == NOTIFIER_MODE_RANGE) {
		uint64_t gen = range->internal.gen, nend = 0;
		const struct nt_trace_hook *hook;
		struct notifier_subscription *sub;

		nt_callbacks_begin(NT_RULE_DELIVER);
		umbra_rcu_read_lock();
		hook = nt_trace_hook(obj);
		nt_for_each_present_sub(sub, obj, gen) {
			if (sub->ops->invalidate_range_end) {
				nt_end_one(obj, sub, range, hook);
				nend++;
			}
		}
		umbra_rcu_read_unlock();
		nt_callbacks_end();
		nt_count(obj, NT_CTR(cb_range_end), nend);
	}
	nt_seq_range_finish(obj, range);
	range->internal.state = NT_RANGE_IDLE;
	nt_count(obj, NT_CTR(ends), 1);
	nt_trace_end(range->internal.trace_id, "ok");
}

/*
 * One walk for both young queries: clear_young asks every present
 * subscriber (each clears its own accessed bits) and ORs the answers;
 * test_young (@test) stops at the first subscriber that says young.
 */
static int nt_young_walk(struct notifier_object *obj, uint64_t first, uint64_t last, bool test)
{
	const enum notifier_trace_kind kind = test ? NOTIFIER_TRACE_TEST_YOUNG : NOTIFIER_TRACE_CLEAR_YOUNG;
	struct notifier_subscription *sub;
	const struct nt_trace_hook *hook;
	int young = 0;
	uint64_t gen;

	if (!nt_pages_valid(obj, first, last))
		return -EINVAL;
	nt_callbacks_begin(NT_RULE_DELIVER);
	umbra_rcu_read_lock();
	gen = __atomic_load_n(&obj->next_gen, __ATOMIC_ACQUIRE);
	hook = nt_trace_hook(obj);
	nt_for_each_present_sub(sub, obj, gen) {
		int r;

		if (test ? !sub->ops->test_young : !sub->ops->clear_young)
			continue;
		r = test ? sub->ops->test_young(sub, obj, first) : sub->ops->clear_young(sub, obj, first, last);
		nt_trace(hook, kind, obj, sub, first, last, NOTIFIER_EVENT_NR, r);
		young |= r != 0;
		if (young && test)
			break;
	}
	umbra_rcu_read_unlock();
	nt_callbacks_end();
	nt_count(obj, test ? NT_CTR(test_young) : NT_CTR(clear_young), 1);
	return young;
}

int notifier_clear_young(struct notifier_object *obj, uint64_t first, uint64_t last)
{
	return nt_young_walk(obj, first, last, false);
}

int notifier_test_young(struct notifier_object *obj, uint64_t page)
{
	return nt_young_walk(obj, page, page, true);
}
