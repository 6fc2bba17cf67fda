/*
 * notifier/lock.h - a pthread mutex that knows its owner and its rank.
 *
 * umbra documents every lock where it is declared, with its place in the
 * nesting order, and asserts both in debug builds (UMBRA_DEBUG=1, the default
 * for CMAKE_BUILD_TYPE=Debug).  struct notifier_mutex is the small wrapper
 * that makes this possible; shadow/ and vmm/ use it for their own locks
 * (e.g. the per-VM mmu_lock) so that one rank table orders them all.
 *
 *   notifier_mutex_init(&m, "vm.mmu_lock", NOTIFIER_LOCK_RANK_MMU);
 *   notifier_mutex_lock(&m);
 *   notifier_mutex_assert_held(&m);      // in every foo_locked() function
 *   notifier_mutex_unlock(&m);
 *
 * Ranks.  A thread may only acquire a lock whose rank is strictly greater
 * than the rank of every ranked lock it already holds (locks are taken
 * outermost first).  Rank 0 means "unranked": never checked, use it only for
 * leaf locks private to one file.  Debug builds abort on a violation; release
 * builds compile all of this away to plain pthread calls.
 *
 * The project-wide order (outermost first) is fixed here so that every module
 * sees it:
 *
 *   NOTIFIER_LOCK_RANK_OBJECT   notifier object's subscription lock
 *                               (subscribe / unsubscribe / destroy; the
 *                               release callback runs under it)
 *   NOTIFIER_LOCK_RANK_MMU      a subscriber's main lock, e.g. the per-VM
 *                               mmu_lock taken by its notifier callbacks and
 *                               held around notifier_read_retry()
 *   NOTIFIER_LOCK_RANK_TABLE    per shadow-table lock (inside mmu_lock)
 *   NOTIFIER_LOCK_RANK_SUBSCRIBER_LEAF  any other lock a callback takes
 *   NOTIFIER_LOCK_RANK_SEQ      notifier object's sequence lock (leaf; taken
 *                               by notifier_read_begin/read_retry and by the
 *                               invalidation side for a few instructions)
 *
 * Ranks are spaced so that a module can slot a new lock in between without
 * renumbering.
 */
#ifndef UMBRA_NOTIFIER_LOCK_H
#define UMBRA_NOTIFIER_LOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* UMBRA_DEBUG may be undefined (release builds); -Wundef wants it spelt out. */
#if defined(UMBRA_DEBUG) && UMBRA_DEBUG
#define NOTIFIER_DEBUG 1
#else
#define NOTIFIER_DEBUG 0
#endif

enum notifier_lock_rank {
	NOTIFIER_LOCK_RANK_NONE = 0,
	NOTIFIER_LOCK_RANK_OBJECT = 4,
	NOTIFIER_LOCK_RANK_MMU = 8,
	NOTIFIER_LOCK_RANK_TABLE = 12,
	NOTIFIER_LOCK_RANK_SUBSCRIBER_LEAF = 20,
	NOTIFIER_LOCK_RANK_SEQ = 28,
	NOTIFIER_LOCK_RANK_MAX = 31,
};

struct notifier_mutex {
	pthread_mutex_t mutex;
#if NOTIFIER_DEBUG
	uintptr_t owner;	/* pthread_self() of the holder, 0 if free (atomic) */
	const char *name;
	unsigned int rank;
#endif
};

#if NOTIFIER_DEBUG
/* Bit r set: this thread holds a lock of rank r (defined in lock.c). */
extern __thread uint32_t notifier_lock_ranks_held;
#endif

/*
 * Initialise @m.  @name is kept (not copied) for debugging; @rank is one of
 * enum notifier_lock_rank.  Cannot fail (a default pthread mutex needs no
 * resources).
 */
static inline void notifier_mutex_init(struct notifier_mutex *m, const char *name,
				       unsigned int rank)
{
	pthread_mutex_init(&m->mutex, NULL);
#if NOTIFIER_DEBUG
	__atomic_store_n(&m->owner, (uintptr_t)0, __ATOMIC_RELAXED);
	m->name = name;
	m->rank = rank;
#else
	(void)name;
	(void)rank;
#endif
}

/* Release @m's resources.  @m must not be held. */
static inline void notifier_mutex_exit(struct notifier_mutex *m)
{
#if NOTIFIER_DEBUG
	if (__atomic_load_n(&m->owner, __ATOMIC_RELAXED) != 0)
		abort();
#endif
	pthread_mutex_destroy(&m->mutex);
}

/* True if the calling thread holds @m (debug builds only; true otherwise). */
static inline bool notifier_mutex_is_held(struct notifier_mutex *m)
{
#if NOTIFIER_DEBUG
	return __atomic_load_n(&m->owner, __ATOMIC_RELAXED) == (uintptr_t)pthread_self();
#else
	(void)m;
	return true;
#endif
}

#if NOTIFIER_DEBUG
#define notifier_mutex_assert_held(m) do { if (!notifier_mutex_is_held(m)) abort(); } while (0)
#define notifier_mutex_assert_not_held(m) \
	do { if (__atomic_load_n(&(m)->owner, __ATOMIC_RELAXED) == (uintptr_t)pthread_self()) abort(); } while (0)
/* Abort if this thread holds any ranked lock of rank >= @rank. */
#define notifier_assert_no_lock_from_rank(rank) \
	do { if (notifier_lock_ranks_held >> (rank)) abort(); } while (0)
#else
#define notifier_mutex_assert_held(m) ((void)(m))
#define notifier_mutex_assert_not_held(m) ((void)(m))
#define notifier_assert_no_lock_from_rank(rank) ((void)(rank))
#endif

#if NOTIFIER_DEBUG
static inline void notifier_mutex_note_acquired(struct notifier_mutex *m)
{
	__atomic_store_n(&m->owner, (uintptr_t)pthread_self(), __ATOMIC_RELAXED);
	if (m->rank)
		notifier_lock_ranks_held |= 1u << m->rank;
}

static inline void notifier_mutex_note_releasing(struct notifier_mutex *m)
{
	if (__atomic_load_n(&m->owner, __ATOMIC_RELAXED) != (uintptr_t)pthread_self())
		abort();	/* unlocking a mutex this thread does not hold */
	if (m->rank)
		notifier_lock_ranks_held &= ~(1u << m->rank);
	__atomic_store_n(&m->owner, (uintptr_t)0, __ATOMIC_RELAXED);
}

static inline void notifier_mutex_check_order(struct notifier_mutex *m)
{
	if (__atomic_load_n(&m->owner, __ATOMIC_RELAXED) == (uintptr_t)pthread_self())
		abort();	/* recursive locking */
	if (m->rank && (notifier_lock_ranks_held >> m->rank))
		abort();	/* rank order violated: a lock of equal or higher rank is held */
}
#endif

/* Acquire @m; may block.  Debug builds check the rank order first. */
static inline void notifier_mutex_lock(struct notifier_mutex *m)
{
#if NOTIFIER_DEBUG
	notifier_mutex_check_order(m);
#endif
	pthread_mutex_lock(&m->mutex);
#if NOTIFIER_DEBUG
	notifier_mutex_note_acquired(m);
#endif
}

/*
 * Try to acquire @m without blocking: true if acquired.  Debug builds hold
 * trylock to the same rank order as notifier_mutex_lock().
 */
static inline bool notifier_mutex_trylock(struct notifier_mutex *m)
{
#if NOTIFIER_DEBUG
	notifier_mutex_check_order(m);
#endif
	if (pthread_mutex_trylock(&m->mutex) != 0)
		return false;
#if NOTIFIER_DEBUG
	notifier_mutex_note_acquired(m);
#endif
	return true;
}

/* Release @m, which the calling thread must hold. */
static inline void notifier_mutex_unlock(struct notifier_mutex *m)
{
#if NOTIFIER_DEBUG
	notifier_mutex_note_releasing(m);
#endif
	pthread_mutex_unlock(&m->mutex);
}

/*
 * pthread_cond_wait() on @m, keeping the owner and rank bookkeeping right.
 * @m must be held; it is held again on return.
 */
static inline void notifier_cond_wait(pthread_cond_t *cond, struct notifier_mutex *m)
{
#if NOTIFIER_DEBUG
	notifier_mutex_note_releasing(m);
#endif
	pthread_cond_wait(cond, &m->mutex);
#if NOTIFIER_DEBUG
	notifier_mutex_note_acquired(m);
#endif
}

#endif /* UMBRA_NOTIFIER_LOCK_H */
