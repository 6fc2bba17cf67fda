/*
 * base/rcu.c - registration, grace periods and counted deferred work over
 * liburcu-memb (include/umbra/rcu.h).
 */
#include <stdint.h>
#include <time.h>

#include <urcu/urcu-memb.h>

#include "umbra/rcu.h"

#if defined(__SANITIZE_THREAD__)
#define UMBRA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UMBRA_TSAN 1
#endif
#endif
#ifndef UMBRA_TSAN
#define UMBRA_TSAN 0
#endif

#if UMBRA_TSAN
#include <sanitizer/tsan_interface.h>
#endif

_Static_assert(sizeof(struct rcu_head) <= sizeof(((struct umbra_rcu_work *)0)->head) &&
		       _Alignof(struct rcu_head) <= _Alignof(void *),
	       "struct umbra_rcu_work holds liburcu's rcu_head");

#if UMBRA_TSAN
/* What the TSan annotations synchronise on. */
static char rcu_tsan_token;
#endif

static inline struct rcu_head *work_head(struct umbra_rcu_work *work)
{
	return (struct rcu_head *)(void *)work->head;
}

static __thread bool rcu_thread_registered;

/* Callbacks queued and not yet run (umbra_rcu_barrier waits for 0). */
static uint32_t rcu_pending;

void umbra_rcu_register_thread(void)
{
	if (!rcu_thread_registered) {
		urcu_memb_register_thread();
		rcu_thread_registered = true;
	}
}

void umbra_rcu_unregister_thread(void)
{
	if (rcu_thread_registered) {
		urcu_memb_unregister_thread();
		rcu_thread_registered = false;
	}
}

bool umbra_rcu_thread_is_registered(void)
{
	return rcu_thread_registered;
}

void umbra_rcu_read_lock(void)
{
	urcu_memb_read_lock();
}

void umbra_rcu_read_unlock(void)
{
#if UMBRA_TSAN
	__tsan_release(&rcu_tsan_token);
#endif
	urcu_memb_read_unlock();
}

bool umbra_rcu_is_reader(void)
{
	return urcu_memb_read_ongoing();
}

/* Call after a grace period has elapsed (synchronize or callback). */
static inline void rcu_after_grace_period(void)
{
#if UMBRA_TSAN
	__tsan_acquire(&rcu_tsan_token);
#endif
}

void umbra_synchronize_rcu(void)
{
	urcu_memb_synchronize_rcu();
	rcu_after_grace_period();
}

static void rcu_work_run(struct rcu_head *head)
{
	struct umbra_rcu_work *work = umbra_container_of(head, struct umbra_rcu_work, head);

#if UMBRA_TSAN
	__tsan_acquire(head);
#endif
	rcu_after_grace_period();
	work->func(work);
	__atomic_fetch_sub(&rcu_pending, 1, __ATOMIC_RELEASE);
}

void umbra_call_rcu(struct umbra_rcu_work *work, void (*func)(struct umbra_rcu_work *work))
{
	work->func = func;
	__atomic_fetch_add(&rcu_pending, 1, __ATOMIC_RELAXED);
#if UMBRA_TSAN
	/* The hand-off through liburcu's queue is invisible to TSan. */
	__tsan_release(work_head(work));
#endif
	urcu_memb_call_rcu(work_head(work), rcu_work_run);
}

void umbra_rcu_worker_start(void)
{
	(void)urcu_memb_get_default_call_rcu_data();
}

/*
 * Our own barrier rather than urcu_memb_barrier(): the latter hands a
 * completion it allocates to liburcu's worker thread through uninstrumented
 * atomics, which ThreadSanitizer reports as a race on that allocation.
 * Counting our own callbacks is exact for what callers need (every deferred
 * work queued through umbra_call_rcu has run) and visible to TSan.
 */
void umbra_rcu_barrier(void)
{
	static const struct timespec tick = { .tv_nsec = 1000000 };

	while (__atomic_load_n(&rcu_pending, __ATOMIC_ACQUIRE) != 0)
		nanosleep(&tick, NULL);
}
