/*
 * notifier/notifier_internal.h - private to the notifier library sources.
 *
 * Who may deliver to a subscription: generations.
 *
 * Each object counts generations (next_gen, only advanced under obj->lock).
 * A subscription is born at generation `birth` when it is linked, and dies at
 * generation `death` when unsubscribe or destroy begins (UINT64_MAX while it
 * lives).  A walk reads the object's generation G once, inside its RCU
 * read-side critical section, and delivers to exactly the subscriptions with
 *
 *	birth < G <= death			("present for G")
 *
 * That set is fixed for G: it does not change however the list changes
 * during the walk, so an invalidation's start walk, its unwind walk and its
 * end walk (a later critical section, same G) all agree on who got a start.
 *
 * Why a dying subscription stays safe to call: unsubscribe advances next_gen
 * (assigning `death`), then waits for a grace period.  Any walk whose
 * critical section began after that sees G > death; any walk that began
 * before has finished (grace period).  Deliveries that span critical
 * sections (a range's start ... end, the pages of a page-mode range) hold a
 * reference in sub->active, taken in the start walk, and unsubscribe waits
 * for active to drain before it calls release() and unlinks.  After that no
 * walk can ever count the subscription present again.
 *
 * Memory: a subscription is unlinked under obj->lock after it has drained
 * and is freed by call_rcu, so a walker that still holds a pointer to it
 * (it read `next` before the unlink) can read its generations safely.
 *
 * The list itself is a singly-linked RCU list written with C11 atomics
 * (__atomic_* builtins): release stores publish, acquire loads traverse.
 * liburcu's rculist macros use volatile accesses plus fences, which are
 * correct but invisible to ThreadSanitizer; atomics keep TSan exact.
 */
#ifndef UMBRA_NOTIFIER_INTERNAL_H
#define UMBRA_NOTIFIER_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "umbra/lock.h"
#include "umbra/notifier.h"
#include "umbra/rcu.h"


/*
 * Misuse by the caller or a broken invariant: abort in debug builds (like
 * assert); release builds carry on where the code says how.
 */
#if UMBRA_LOCK_DEBUG
#define NT_BUG_ON(cond) do { if (cond) abort(); } while (0)
#else
#define NT_BUG_ON(cond) ((void)sizeof(cond))
#endif

/*
 * The rules of the library's entry points (docs/locking.md), checked in
 * debug builds: a violation prints the rule and the locks held, and aborts,
 * where it would otherwise deadlock.  Every callback runs with the
 * pseudo-lock nt_in_callback (rank UMBRA_LOCK_RANK_NOTIFIER_CALLBACK) held,
 * so that a callback calling back into the library is caught by the same
 * checks as a caller holding its mmu_lock.
 */
#define NT_RULE_DELIVER                                                              \
	"invalidations and young queries are not started from a notifier callback " \
	"or with a subscriber's lock held: their callbacks take that lock"
#define NT_RULE_READ_BEGIN                                                            \
	"notifier_read_begin is not called from a notifier callback or with a "      \
	"subscriber's lock held: it may sleep until an invalidation ends, whose "    \
	"callbacks take that lock"
#define NT_RULE_SUBSCRIBE                                                             \
	"notifier_subscribe, notifier_unsubscribe and notifier_object_destroy are "   \
	"not called from a notifier callback or with a subscriber's lock held: they " \
	"wait for deliveries whose callbacks take that lock"

extern const struct umbra_pseudo_lock nt_in_callback;

/* Checks @rule, then marks the thread as running callbacks. */
static inline void nt_callbacks_begin(const char *rule)
{
	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK, rule);
	umbra_pseudo_lock_acquire(&nt_in_callback);
}

static inline void nt_callbacks_end(void)
{
	umbra_pseudo_lock_release(&nt_in_callback);
}

#define NT_GEN_ALIVE UINT64_MAX

/* sub->active: references held by in-flight deliveries; bit 31 = waiter. */
#define NT_ACTIVE_WAITER 0x80000000u
#define NT_ACTIVE_MASK 0x7fffffffu

/* sub->state, under obj->lock. */
enum nt_sub_state {
	NT_SUB_ATTACHED,	/* on the list, death == NT_GEN_ALIVE */
	NT_SUB_DETACHING,	/* death assigned, draining */
	NT_SUB_RELEASED,	/* release() done, unlinked */
};

/* range->internal.state */
enum nt_range_state {
	NT_RANGE_IDLE = 0,
	NT_RANGE_STARTED = 0x5157a27d,
};

struct notifier_subscription {
	struct notifier_subscription *next;	/* RCU list link (atomic) */
	struct notifier_object *obj;		/* immutable */
	const struct notifier_ops *ops;		/* immutable */
	void *priv;				/* immutable */
	uint64_t birth;				/* immutable once published */
	uint64_t death;				/* atomic; NT_GEN_ALIVE while attached */
	uint32_t active;			/* atomic; see NT_ACTIVE_* */
	enum nt_sub_state state;		/* under obj->lock */
	struct umbra_rcu_work rcu;
};

struct nt_trace_hook {
	notifier_trace_fn fn;
	void *arg;
};

/* Counters: each thread adds to its slot's (umbra_slot_add), readers sum
 * them with relaxed loads. */
/* One thread slot's counters (umbra_thread_slot), padded so that two
 * slots' counters never share a cache line, nor a pair of lines that a CPU
 * prefetches together: the readers of an object (a VM's vCPU threads
 * faulting) count on lines of their own. */
struct nt_counters {
	uint64_t v[sizeof(struct notifier_stats) / sizeof(uint64_t)];
	char pad[128];
};

struct notifier_object {
	char name[NOTIFIER_NAME_MAX];
	uint64_t npages;
	uint32_t refs;				/* atomic */
	int mode;				/* atomic, enum notifier_mode */

	/*
	 * lock - the subscription lock (rank UMBRA_LOCK_RANK_NOTIFIER_OBJECT).
	 * Protects: the list's shape (head/tail/next stores), next_gen
	 * stores, every sub->state, dead, trace stores.  Held across
	 * release() callbacks.  Never taken by deliveries.
	 */
	struct umbra_mutex lock;
	struct notifier_subscription *head;	/* RCU list (atomic) */
	struct notifier_subscription *tail;	/* under lock */
	uint64_t next_gen;			/* atomic; stored under lock */
	bool dead;				/* atomic; stored under lock */
	struct nt_trace_hook *trace;		/* RCU pointer (atomic); under lock */

	/*
	 * seq_lock - the sequence lock (rank UMBRA_LOCK_RANK_NOTIFIER_SEQ, a leaf:
	 * nothing is taken while it is held).  Protects the active range
	 * list and waiters, and every store to seq and in_progress (atomic:
	 * read_begin and read_retry read them without it while no range is
	 * in progress, seq.c); seq_cond waits on it.
	 */
	struct umbra_mutex seq_lock;
	pthread_cond_t seq_cond;
	uint64_t seq;				/* atomic; advanced at every end/abort */
	unsigned int in_progress;		/* atomic; ranges started and not ended */
	struct notifier_range *active;		/* those ranges, doubly linked */
	unsigned int waiters;			/* threads in read_begin's wait */

	struct nt_counters counters[UMBRA_THREAD_SLOTS];	/* notifier_object_stats sums them */
	struct umbra_rcu_work rcu;
};

/* Index of a notifier_stats field in nt_counters. */
#define NT_CTR(field) (offsetof(struct notifier_stats, field) / sizeof(uint64_t))
#define NT_CTR_EVENT(ev) (NT_CTR(events) + (size_t)(ev))
#define NT_CTR_MODE(m) (NT_CTR(starts_by_mode) + (size_t)(m))

static inline void nt_count(struct notifier_object *obj, size_t idx, uint64_t n)
{
	if (n) {
		const unsigned int slot = umbra_thread_slot();

		umbra_slot_add(&obj->counters[slot].v[idx], slot, n);
	}
}


static inline bool nt_sub_is_present(const struct notifier_subscription *sub, uint64_t gen)
{
	return sub->birth < gen && gen <= __atomic_load_n(&sub->death, __ATOMIC_ACQUIRE);
}

/* The loop test of nt_for_each_sub: debug builds check that the walker is
 * in an RCU read-side critical section, as KVM's root iterators assert
 * their lock in the loop condition. */
static inline bool nt_sub_walk_continues(const struct notifier_subscription *sub)
{
#if UMBRA_LOCK_DEBUG
	if (!umbra_rcu_is_reader())
		umbra_lock_violation("the subscriber list is walked inside umbra_rcu_read_lock()",
				     "the RCU read side", 0);
#endif
	return sub != NULL;
}

static inline struct notifier_subscription *nt_first(struct notifier_object *obj)
{
	return __atomic_load_n(&obj->head, __ATOMIC_ACQUIRE);
}

static inline struct notifier_subscription *nt_next(const struct notifier_subscription *sub)
{
	return __atomic_load_n(&sub->next, __ATOMIC_ACQUIRE);
}

/* Walk the RCU list; caller is in a read-side critical section. */
#define nt_for_each_sub(sub, obj) \
	for ((sub) = nt_first(obj); nt_sub_walk_continues(sub); (sub) = nt_next(sub))

/* Walk the subscriptions present for generation @gen. */
#define nt_for_each_present_sub(sub, obj, gen) \
	nt_for_each_sub(sub, obj) if (!nt_sub_is_present(sub, gen)) {} else

/* A timestamp for trace records (CLOCK_MONOTONIC, ns). */
static inline uint64_t nt_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Report one delivery to the trace hook @hook (may be NULL). */
static inline void nt_trace(const struct nt_trace_hook *hook, enum notifier_trace_kind kind,
			    const struct notifier_object *obj,
			    const struct notifier_subscription *sub, uint64_t first,
			    uint64_t last, enum notifier_event event, int result)
{
	if (__builtin_expect(hook != NULL, 0)) {
		struct notifier_trace_record rec = {
			.kind = kind, .time_ns = nt_now_ns(), .obj = obj, .sub = sub,
			.first = first, .last = last, .event = event, .result = result,
		};
		hook->fn(hook->arg, &rec);
	}
}

static inline const struct nt_trace_hook *nt_trace_hook(struct notifier_object *obj)
{
	return __atomic_load_n(&obj->trace, __ATOMIC_ACQUIRE);
}

#endif /* UMBRA_NOTIFIER_INTERNAL_H */
