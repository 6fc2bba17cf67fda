/*
 * notifier/object.c - memory objects, subscriptions, thread registration,
 * counters and the trace hook.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "hold.h"
#include "notifier_internal.h"
#include "seq.h"


/* ---- names ----------------------------------------------------------- */

const char *notifier_event_name(enum notifier_event event)
{
	static const char *const names[NOTIFIER_EVENT_NR] = {
		[NOTIFIER_EVENT_UNMAP] = "unmap",
		[NOTIFIER_EVENT_SWAPOUT] = "swapout",
		[NOTIFIER_EVENT_PROTECT] = "protect",
		[NOTIFIER_EVENT_COW] = "cow",
		[NOTIFIER_EVENT_RELEASE] = "release",
	};

	if ((unsigned int)event >= NOTIFIER_EVENT_NR)
		return "?";
	return names[event];
}

const char *notifier_mode_name(enum notifier_mode mode)
{
	switch (mode) {
	case NOTIFIER_MODE_RANGE:
		return "range";
	case NOTIFIER_MODE_PAGE:
		return "page";
	default:
		return "?";
	}
}

const char *notifier_trace_kind_name(enum notifier_trace_kind kind)
{
	static const char *const names[NOTIFIER_TRACE_KIND_NR] = {
		[NOTIFIER_TRACE_RANGE_START] = "range_start",
		[NOTIFIER_TRACE_RANGE_END] = "range_end",
		[NOTIFIER_TRACE_PAGE] = "page",
		[NOTIFIER_TRACE_CLEAR_YOUNG] = "clear_young",
		[NOTIFIER_TRACE_TEST_YOUNG] = "test_young",
		[NOTIFIER_TRACE_RELEASE] = "release",
	};

	if ((unsigned int)kind >= NOTIFIER_TRACE_KIND_NR)
		return "?";
	return names[kind];
}

const struct umbra_pseudo_lock nt_in_callback = {
	.name = "a notifier callback", .rank = UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
};

/* ---- threads ------------------------------------------------------- */

int notifier_thread_init(void)
{
	umbra_rcu_register_thread();
	return 0;
}

void notifier_thread_exit(void)
{
	umbra_rcu_unregister_thread();
}

void notifier_barrier(void)
{
	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
				   "notifier_barrier is not called from a notifier callback or with a subscriber's lock held");
	umbra_rcu_barrier();
}

/* ---- objects --------------------------------------------------------- */

int notifier_object_create(const char *name, uint64_t npages, struct notifier_object **objp)
{
	struct notifier_object *obj;

	if (!name || !objp || npages == 0)
		return -EINVAL;
	obj = calloc(1, sizeof(*obj));
	if (!obj)
		return -ENOMEM;
	if (pthread_cond_init(&obj->seq_cond, NULL) != 0)
		goto free_obj;
	strncpy(obj->name, name, sizeof(obj->name) - 1);
	obj->npages = npages;
	obj->refs = 1;
	obj->mode = NOTIFIER_MODE_RANGE;
	obj->next_gen = 1;	/* births start at 1 so that gen 0 sees nobody */
	umbra_mutex_init(&obj->lock, "notifier.object.lock", UMBRA_LOCK_RANK_NOTIFIER_OBJECT);
	nt_seq_init(obj);
	*objp = obj;
	return 0;

free_obj:
	free(obj);
	return -ENOMEM;
}

static void nt_object_free_rcu(struct umbra_rcu_work *work)
{
	struct notifier_object *obj = umbra_container_of(work, struct notifier_object, rcu);

	nt_seq_exit(obj);
	pthread_cond_destroy(&obj->seq_cond);
	umbra_mutex_exit(&obj->lock);
	free(obj);
}

void notifier_object_get(struct notifier_object *obj)
{
	uint32_t old = __atomic_fetch_add(&obj->refs, 1, __ATOMIC_RELAXED);

	NT_BUG_ON(old == 0);	/* get on a freed object */
}

void notifier_object_put(struct notifier_object *obj)
{
	uint32_t old = __atomic_fetch_sub(&obj->refs, 1, __ATOMIC_ACQ_REL);

	NT_BUG_ON(old == 0);	/* unbalanced put */
	if (old == 1) {
		struct nt_trace_hook *hook = __atomic_load_n(&obj->trace, __ATOMIC_ACQUIRE);

		free(hook);	/* no walk can run on an unreferenced object */
		umbra_call_rcu(&obj->rcu, nt_object_free_rcu);
	}
}

const char *notifier_object_name(const struct notifier_object *obj)
{
	return obj->name;
}

uint64_t notifier_object_npages(const struct notifier_object *obj)
{
	return obj->npages;
}

bool notifier_object_is_dead(const struct notifier_object *obj)
{
	return __atomic_load_n(&obj->dead, __ATOMIC_ACQUIRE);
}

int notifier_object_set_mode(struct notifier_object *obj, enum notifier_mode mode)
{
	if ((unsigned int)mode >= NOTIFIER_MODE_NR)
		return -EINVAL;
	__atomic_store_n(&obj->mode, (int)mode, __ATOMIC_RELAXED);
	return 0;
}

enum notifier_mode notifier_object_mode(const struct notifier_object *obj)
{
	return (enum notifier_mode)__atomic_load_n(&obj->mode, __ATOMIC_RELAXED);
}

/*
 * Assign the next generation as @sub's death (or birth): every walk that
 * reads the object generation after this store counts @sub out (in).
 */
static uint64_t nt_next_gen_locked(struct notifier_object *obj)
{
	uint64_t gen;

	umbra_mutex_assert_held(&obj->lock);
	gen = __atomic_load_n(&obj->next_gen, __ATOMIC_RELAXED);
	return gen;
}

static void nt_advance_gen_locked(struct notifier_object *obj)
{
	umbra_mutex_assert_held(&obj->lock);
	__atomic_store_n(&obj->next_gen, __atomic_load_n(&obj->next_gen, __ATOMIC_RELAXED) + 1,
			 __ATOMIC_SEQ_CST);
}

/* Unlink @sub from the RCU list; walkers already on it may keep reading it. */
static void nt_sub_unlink_locked(struct notifier_object *obj, struct notifier_subscription *sub)
{
	struct notifier_subscription *prev = NULL, *cur;

	umbra_mutex_assert_held(&obj->lock);
	for (cur = obj->head; cur && cur != sub; cur = cur->next)
		prev = cur;
	NT_BUG_ON(!cur);	/* not on the list: library bug */
	if (!cur)
		return;
	/* sub->next stays intact so that a walker standing on sub goes on. */
	if (prev)
		__atomic_store_n(&prev->next, sub->next, __ATOMIC_RELEASE);
	else
		__atomic_store_n(&obj->head, sub->next, __ATOMIC_RELEASE);
	if (obj->tail == sub)
		obj->tail = prev;
}

/* Call release() and take @sub off the list.  @sub has drained. */
static void nt_sub_release_locked(struct notifier_object *obj, struct notifier_subscription *sub)
{
	const struct nt_trace_hook *hook;

	umbra_mutex_assert_held(&obj->lock);
	if (sub->ops->release) {
		umbra_pseudo_lock_acquire(&nt_in_callback);
		sub->ops->release(sub, obj);
		umbra_pseudo_lock_release(&nt_in_callback);
	}
	sub->state = NT_SUB_RELEASED;
	nt_sub_unlink_locked(obj, sub);
	nt_count(obj, NT_CTR(releases), 1);
	hook = __atomic_load_n(&obj->trace, __ATOMIC_ACQUIRE);
	nt_trace(hook, NOTIFIER_TRACE_RELEASE, obj, sub, 0, obj->npages - 1,
		 NOTIFIER_EVENT_RELEASE, 0);
}

void notifier_object_destroy(struct notifier_object *obj)
{
	struct notifier_subscription *sub, *next;
	uint64_t death;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_OBJECT, NT_RULE_SUBSCRIBE);
	umbra_mutex_lock(&obj->lock);
	NT_BUG_ON(obj->dead);	/* destroyed twice */
	if (obj->dead) {
		umbra_mutex_unlock(&obj->lock);
		return;
	}
	__atomic_store_n(&obj->dead, true, __ATOMIC_RELEASE);
	death = nt_next_gen_locked(obj);
	for (sub = obj->head; sub; sub = sub->next) {
		if (sub->state == NT_SUB_ATTACHED) {
			__atomic_store_n(&sub->death, death, __ATOMIC_RELEASE);
			sub->state = NT_SUB_DETACHING;
		}
	}
	nt_advance_gen_locked(obj);
	/*
	 * No walk that starts from now on sees any subscription; wait out
	 * those that began earlier, then their ranges.  The lock stays held:
	 * deliveries never take it, and a concurrent unsubscribe waiting on it
	 * finds its subscription released when it gets it.
	 */
	umbra_synchronize_rcu();
	for (sub = obj->head; sub; sub = next) {
		next = sub->next;
		nt_sub_drain(sub);
		nt_sub_release_locked(obj, sub);
	}
	umbra_mutex_unlock(&obj->lock);
	notifier_object_put(obj);
}

/* ---- subscriptions --------------------------------------------------- */

int notifier_subscribe(struct notifier_object *obj, const struct notifier_ops *ops, void *priv,
		       struct notifier_subscription **subp)
{
	struct notifier_subscription *sub;
	int ret;

	if (!obj || !ops || !subp)
		return -EINVAL;
	if (!ops->invalidate_range_start != !ops->invalidate_page)
		return -EINVAL;
	sub = calloc(1, sizeof(*sub));
	if (!sub)
		return -ENOMEM;
	sub->obj = obj;
	sub->ops = ops;
	sub->priv = priv;
	sub->death = NT_GEN_ALIVE;
	sub->state = NT_SUB_ATTACHED;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_OBJECT, NT_RULE_SUBSCRIBE);
	umbra_mutex_lock(&obj->lock);
	if (obj->dead) {
		ret = -ENODEV;
		goto unlock;
	}
	notifier_object_get(obj);
	sub->birth = nt_next_gen_locked(obj);
	/* Publish sub (release), then let walks count it in (next_gen). */
	if (obj->tail)
		__atomic_store_n(&obj->tail->next, sub, __ATOMIC_RELEASE);
	else
		__atomic_store_n(&obj->head, sub, __ATOMIC_RELEASE);
	obj->tail = sub;
	nt_advance_gen_locked(obj);
	nt_count(obj, NT_CTR(subscribes), 1);
	umbra_mutex_unlock(&obj->lock);
	*subp = sub;
	return 0;

unlock:
	umbra_mutex_unlock(&obj->lock);
	free(sub);
	return ret;
}

static void nt_sub_free_rcu(struct umbra_rcu_work *work)
{
	free(umbra_container_of(work, struct notifier_subscription, rcu));
}

void notifier_unsubscribe(struct notifier_subscription *sub)
{
	struct notifier_object *obj = sub->obj;
	bool wait;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_OBJECT, NT_RULE_SUBSCRIBE);
	umbra_mutex_lock(&obj->lock);
	/*
	 * DETACHING under the lock means another unsubscribe of sub is
	 * running (destroy keeps the lock while its subscriptions detach).
	 */
	NT_BUG_ON(sub->state == NT_SUB_DETACHING);	/* unsubscribed twice */
	if (sub->state == NT_SUB_DETACHING) {
		umbra_mutex_unlock(&obj->lock);
		return;
	}
	wait = sub->state == NT_SUB_ATTACHED;
	if (wait) {
		__atomic_store_n(&sub->death, nt_next_gen_locked(obj), __ATOMIC_RELEASE);
		nt_advance_gen_locked(obj);
		sub->state = NT_SUB_DETACHING;
	}
	umbra_mutex_unlock(&obj->lock);

	if (wait) {
		/* Walks that could count sub in end, then the ranges they hold. */
		umbra_synchronize_rcu();
		nt_sub_drain(sub);
		umbra_mutex_lock(&obj->lock);
		/* destroy() may have released it meanwhile. */
		if (sub->state != NT_SUB_RELEASED)
			nt_sub_release_locked(obj, sub);
		umbra_mutex_unlock(&obj->lock);
	}
	nt_count(obj, NT_CTR(unsubscribes), 1);
	umbra_call_rcu(&sub->rcu, nt_sub_free_rcu);
	notifier_object_put(obj);
}

void *notifier_subscription_priv(const struct notifier_subscription *sub)
{
	return sub->priv;
}

struct notifier_object *notifier_subscription_object(const struct notifier_subscription *sub)
{
	return sub->obj;
}

/* ---- observability --------------------------------------------------- */

void notifier_object_stats(const struct notifier_object *obj, struct notifier_stats *stats)
{
	uint64_t *out = (uint64_t *)stats;

	for (size_t i = 0; i < sizeof(obj->counters[0].v) / sizeof(obj->counters[0].v[0]); i++) {
		out[i] = 0;
		for (unsigned int k = 0; k < UMBRA_THREAD_SLOTS; k++)
			out[i] += __atomic_load_n(&obj->counters[k].v[i], __ATOMIC_RELAXED);
	}
}

int notifier_object_set_trace(struct notifier_object *obj, notifier_trace_fn fn, void *arg)
{
	struct nt_trace_hook *hook = NULL, *old;

	if (fn) {
		hook = malloc(sizeof(*hook));
		if (!hook)
			return -ENOMEM;
		hook->fn = fn;
		hook->arg = arg;
	}
	umbra_mutex_lock(&obj->lock);
	old = obj->trace;
	__atomic_store_n(&obj->trace, hook, __ATOMIC_RELEASE);
	umbra_mutex_unlock(&obj->lock);
	if (old) {
		/* The old hook may be running: its arg is the caller's to free
		 * once we return, so wait for the walks using it. */
		umbra_synchronize_rcu();
		free(old);
	}
	return 0;
}
