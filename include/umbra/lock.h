/*
 * umbra/lock.h - mutexes that know their owner and their rank, and the one
 * rank table of every lock in umbra.
 *
 * umbra documents every lock where it is declared, with its place in the
 * nesting order, and asserts both in debug builds (UMBRA_DEBUG=1, the default
 * for CMAKE_BUILD_TYPE=Debug).  struct umbra_mutex is the small wrapper that
 * makes this possible; notifier/, shadow/ and vmm/ use it for all their
 * locks (struct umbra_rwlock, below, where readers may share one), so that
 * one rank table orders them all.
 *
 *   umbra_mutex_init(&m, "vm.mmu_lock", UMBRA_LOCK_RANK_MMU);
 *   umbra_mutex_lock(&m);
 *   umbra_mutex_assert_held(&m);      // in every foo_locked() function
 *   umbra_mutex_unlock(&m);
 *
 * Ranks.  A thread may only acquire a lock whose rank is strictly greater
 * than the rank of every ranked lock it already holds (locks are taken
 * outermost first).  Rank 0 means "unranked": never checked, for leaf locks
 * private to one file that call nothing while held.  Two locks of one rank
 * are never held together.  Debug builds print what was violated (the lock
 * taken, the lock held, the rule) to stderr and abort; release builds
 * compile all of this away to plain pthread calls.
 *
 * Pseudo-locks.  A rule that is not about a mutex ("a notifier callback does
 * not call back into the notifier library") is expressed as a pseudo-lock:
 * umbra_pseudo_lock_acquire() marks its rank held for the thread, so that
 * the rank checks of every lock and rule assertion below see it.
 *
 * Rule assertions.  umbra_assert_unlocked_from(rank, rule) aborts, naming
 * @rule and the offending lock, if the thread holds any lock of rank >=
 * @rank.  Library entry points that may block on other threads' callbacks
 * (notifier_read_begin, notifier_invalidate_range_start/end, subscribe,
 * unsubscribe, the shadow MMU's get_page calls) use it, so that a violation
 * aborts with the rule's name instead of deadlocking.
 *
 * The order, outermost first (docs/locking.md describes each lock):
 *
 *   NOTIFIER_OBJECT  notifier object's subscription lock (subscribe,
 *                    unsubscribe, destroy; the release callback runs under it)
 *   NOTIFIER_CALLBACK  pseudo-lock: held while a notifier callback runs
 *   MMU              a subscriber's main lock: the per-VM mmu_lock (a
 *                    struct umbra_rwlock: faults that only install a leaf
 *                    take it in read mode), taken by its notifier
 *                    callbacks and held around read_retry
 *   OBJS             shadow: the pool's list of memory objects
 *   RMAP             shadow: one reverse-map stripe of one object
 *   MMUS             shadow: the pool's list of MMUs
 *   TABLE            shadow: one shadow table's lock
 *   TLBS             shadow: one VM's list of vCPU TLBs (remote flush)
 *   SUBSCRIBER_LEAF  any other lock a callback takes, e.g. a software
 *                    vCPU's tlb_lock, the swap store's lock
 *   VMM_VCPU_MODE    vmm: a vCPU's in_guest / exit_seq (taken by the shadow
 *                    MMU's flush ops under shadow locks)
 *   VMM_VM           vmm: a VM's pins and stop state
 *   VMM_OUTPUT       vmm: whole lines of output
 *   VMM_EVICTOR      vmm: the evictor's stop flag
 *   VMM_VMS          vmm: the run's list of VMs, which clones join (a leaf,
 *                    taken alone)
 *   PAGER_SWAP_IO    pager: the swap file's ring, held across its I/O
 *   PAGER_SWAP       pager: the swap file's slot map, checksums, counters
 *   PAGER_OBJECT     pager: one object's page states and counters (a leaf
 *                    for the pager: no call out while held)
 *   NOTIFIER_SEQ     notifier object's sequence lock (leaf; taken by
 *                    read_begin/read_retry and by the invalidation side)
 *
 * Ranks are spaced so that a module can slot a new lock in between without
 * renumbering.
 */
#ifndef UMBRA_LOCK_H
#define UMBRA_LOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* UMBRA_DEBUG may be undefined (release builds); -Wundef wants it spelt out. */
#if defined(UMBRA_DEBUG) && UMBRA_DEBUG
#define UMBRA_LOCK_DEBUG 1
#else
#define UMBRA_LOCK_DEBUG 0
#endif

enum umbra_lock_rank {
	UMBRA_LOCK_RANK_NONE = 0,
	/* pager: the reclaimer's pick_lock, held across a victim pick (young
	 * queries into the shadow, page-state checks under object locks),
	 * never across an eviction; outermost, so only a thread that holds no
	 * other lock picks (docs/locking.md, "The pager and reclaim"). */
	UMBRA_LOCK_RANK_PAGER_RECLAIM = 2,
	UMBRA_LOCK_RANK_NOTIFIER_OBJECT = 4,
	UMBRA_LOCK_RANK_NOTIFIER_CALLBACK = 6,
	UMBRA_LOCK_RANK_MMU = 8,
	UMBRA_LOCK_RANK_OBJS = 9,
	UMBRA_LOCK_RANK_RMAP = 10,
	UMBRA_LOCK_RANK_MMUS = 11,
	UMBRA_LOCK_RANK_TABLE = 12,
	UMBRA_LOCK_RANK_TLBS = 14,
	/* shadow: a pool object's page reference counts (refcount.c); no lock
	 * is taken inside it. */
	UMBRA_LOCK_RANK_PAGE_REFS = 15,
	UMBRA_LOCK_RANK_SUBSCRIBER_LEAF = 20,
	UMBRA_LOCK_RANK_VMM_VCPU_MODE = 21,
	UMBRA_LOCK_RANK_VMM_VM = 22,
	UMBRA_LOCK_RANK_VMM_OUTPUT = 23,
	UMBRA_LOCK_RANK_VMM_EVICTOR = 24,
	UMBRA_LOCK_RANK_PAGER_SWAP_IO = 25,
	UMBRA_LOCK_RANK_PAGER_SWAP = 26,
	UMBRA_LOCK_RANK_PAGER_OBJECT = 27,
	UMBRA_LOCK_RANK_NOTIFIER_SEQ = 28,
	UMBRA_LOCK_RANK_VMM_VMS = 29,
	/* vmm: --dump-tables's graph (vmm/dump.c); taken alone. */
	UMBRA_LOCK_RANK_VMM_DUMP = 30,
	UMBRA_LOCK_RANK_MAX = 31,
};

struct umbra_mutex {
	pthread_mutex_t mutex;
#if UMBRA_LOCK_DEBUG
	uintptr_t owner;	/* pthread_self() of the holder, 0 if free (atomic) */
	const char *name;
	unsigned int rank;
#endif
};

/* A rule held for a stretch of code, with a rank like a lock's (above). */
struct umbra_pseudo_lock {
	const char *name;
	unsigned int rank;
};

/*
 * The checker's state and report (base/lock.c).  libumbra-base defines them
 * in every build type, so that a program built with UMBRA_DEBUG=1 links
 * against a Release library; only code built with UMBRA_DEBUG=1 uses them.
 *
 * umbra_lock_ranks_held: bit r set when this thread holds a lock of rank r.
 * umbra_lock_names_held[r]: the name of that lock.
 * umbra_lock_violation: prints "umbra: lock rule violated: @what" with the
 * lock @name (rank @rank) and every lock the thread holds, then aborts.
 */
extern __thread uint32_t umbra_lock_ranks_held;
extern __thread const char *umbra_lock_names_held[UMBRA_LOCK_RANK_MAX + 1];
void umbra_lock_violation(const char *what, const char *name, unsigned int rank)
	__attribute__((noreturn, cold));

/*
 * Initialise @m.  @name is kept (not copied) for the violation messages;
 * @rank is one of enum umbra_lock_rank.  Cannot fail (a default pthread
 * mutex needs no resources).
 */
static inline void umbra_mutex_init(struct umbra_mutex *m, const char *name, unsigned int rank)
{
	pthread_mutex_init(&m->mutex, NULL);
#if UMBRA_LOCK_DEBUG
	__atomic_store_n(&m->owner, (uintptr_t)0, __ATOMIC_RELAXED);
	m->name = name;
	m->rank = rank;
#else
	(void)name;
	(void)rank;
#endif
}

/* Release @m's resources.  @m must not be held. */
static inline void umbra_mutex_exit(struct umbra_mutex *m)
{
#if UMBRA_LOCK_DEBUG
	if (__atomic_load_n(&m->owner, __ATOMIC_RELAXED) != 0)
		umbra_lock_violation("destroying a mutex that is held", m->name, m->rank);
#endif
	pthread_mutex_destroy(&m->mutex);
}

/* True if the calling thread holds @m (debug builds only; true otherwise). */
static inline bool umbra_mutex_is_held(struct umbra_mutex *m)
{
#if UMBRA_LOCK_DEBUG
	return __atomic_load_n(&m->owner, __ATOMIC_RELAXED) == (uintptr_t)pthread_self();
#else
	(void)m;
	return true;
#endif
}

#if UMBRA_LOCK_DEBUG
#define umbra_mutex_assert_held(m)                                                         \
	do {                                                                               \
		if (!umbra_mutex_is_held(m))                                               \
			umbra_lock_violation("the caller must hold this lock (" __FILE__ ")", \
					     (m)->name, (m)->rank);                        \
	} while (0)
#define umbra_mutex_assert_not_held(m)                                                     \
	do {                                                                               \
		if (__atomic_load_n(&(m)->owner, __ATOMIC_RELAXED) == (uintptr_t)pthread_self()) \
			umbra_lock_violation("the caller must not hold this lock (" __FILE__ ")", \
					     (m)->name, (m)->rank);                        \
	} while (0)
/* Abort, naming @rule, if this thread holds any lock of rank >= @rank. */
#define umbra_assert_unlocked_from(rank, rule)                                             \
	do {                                                                               \
		if (umbra_lock_ranks_held >> (rank))                                       \
			umbra_lock_violation(rule, NULL, (rank));                          \
	} while (0)
#else
#define umbra_mutex_assert_held(m) ((void)(m))
#define umbra_mutex_assert_not_held(m) ((void)(m))
#define umbra_assert_unlocked_from(rank, rule) ((void)(rank), (void)(rule))
#endif

#if UMBRA_LOCK_DEBUG
static inline void umbra_lock_note_acquired(const char *name, unsigned int rank)
{
	if (rank) {
		umbra_lock_ranks_held |= 1u << rank;
		umbra_lock_names_held[rank] = name;
	}
}

static inline void umbra_lock_note_released(unsigned int rank)
{
	if (rank) {
		umbra_lock_ranks_held &= ~(1u << rank);
		umbra_lock_names_held[rank] = NULL;
	}
}

static inline void umbra_lock_check_order(const char *name, unsigned int rank)
{
	if (rank && (umbra_lock_ranks_held >> rank))
		umbra_lock_violation("rank order: a lock of equal or higher rank is held", name, rank);
}

static inline void umbra_mutex_note_acquired(struct umbra_mutex *m)
{
	__atomic_store_n(&m->owner, (uintptr_t)pthread_self(), __ATOMIC_RELAXED);
	umbra_lock_note_acquired(m->name, m->rank);
}

static inline void umbra_mutex_note_releasing(struct umbra_mutex *m)
{
	if (__atomic_load_n(&m->owner, __ATOMIC_RELAXED) != (uintptr_t)pthread_self())
		umbra_lock_violation("unlocking a mutex this thread does not hold", m->name, m->rank);
	umbra_lock_note_released(m->rank);
	__atomic_store_n(&m->owner, (uintptr_t)0, __ATOMIC_RELAXED);
}

static inline void umbra_mutex_check_order(struct umbra_mutex *m)
{
	if (__atomic_load_n(&m->owner, __ATOMIC_RELAXED) == (uintptr_t)pthread_self())
		umbra_lock_violation("recursive locking", m->name, m->rank);
	umbra_lock_check_order(m->name, m->rank);
}
#endif

/* Acquire @m; may block.  Debug builds check the rank order first. */
static inline void umbra_mutex_lock(struct umbra_mutex *m)
{
#if UMBRA_LOCK_DEBUG
	umbra_mutex_check_order(m);
#endif
	pthread_mutex_lock(&m->mutex);
#if UMBRA_LOCK_DEBUG
	umbra_mutex_note_acquired(m);
#endif
}

/*
 * Try to acquire @m without blocking: true if acquired.  Debug builds hold
 * trylock to the same rank order as umbra_mutex_lock().
 */
static inline bool umbra_mutex_trylock(struct umbra_mutex *m)
{
#if UMBRA_LOCK_DEBUG
	umbra_mutex_check_order(m);
#endif
	if (pthread_mutex_trylock(&m->mutex) != 0)
		return false;
#if UMBRA_LOCK_DEBUG
	umbra_mutex_note_acquired(m);
#endif
	return true;
}

/* Release @m, which the calling thread must hold. */
static inline void umbra_mutex_unlock(struct umbra_mutex *m)
{
#if UMBRA_LOCK_DEBUG
	umbra_mutex_note_releasing(m);
#endif
	pthread_mutex_unlock(&m->mutex);
}

/*
 * pthread_cond_wait() on @m, keeping the owner and rank bookkeeping right.
 * @m must be held; it is held again on return.
 */
static inline void umbra_cond_wait(pthread_cond_t *cond, struct umbra_mutex *m)
{
#if UMBRA_LOCK_DEBUG
	umbra_mutex_note_releasing(m);
#endif
	pthread_cond_wait(cond, &m->mutex);
#if UMBRA_LOCK_DEBUG
	umbra_mutex_note_acquired(m);
#endif
}

/*
 * pthread_cond_timedwait() on @m (@abstime in @cond's clock),
 * keeping the bookkeeping right.  Returns its result (0 or ETIMEDOUT).
 */
static inline int umbra_cond_timedwait(pthread_cond_t *cond, struct umbra_mutex *m,
				       const struct timespec *abstime)
{
	int ret;

#if UMBRA_LOCK_DEBUG
	umbra_mutex_note_releasing(m);
#endif
	ret = pthread_cond_timedwait(cond, &m->mutex, abstime);
#if UMBRA_LOCK_DEBUG
	umbra_mutex_note_acquired(m);
#endif
	return ret;
}

/*
 * Per-thread slots.  umbra_thread_slot() gives the calling thread one of
 * UMBRA_THREAD_SLOTS indices, so that up to UMBRA_THREAD_SLOTS threads (a
 * VM's vCPU threads) update per-slot state (a reader count, a statistics
 * block) on cache lines of their own instead of all on one.
 *
 * Owned slots.  Slots 0 .. UMBRA_THREAD_SLOTS - 2 are owned: at its first
 * call a thread claims the lowest free one (a bit of a process-wide
 * bitmap, by compare-and-exchange) and keeps it until it exits, when a
 * pthread key's destructor gives it back; no two live threads own one slot.
 * A thread that finds every owned slot taken uses UMBRA_THREAD_SLOT_SHARED
 * for its life, with every other such thread; so does a thread that uses a
 * slot after its own was given back (another key's destructor).
 *
 * What owning buys: state in an owned slot is written by its owner alone,
 * so the owner updates it with a relaxed load and a relaxed (or release)
 * store instead of a locked read-modify-write (umbra_slot_add,
 * umbra_rwlock_read_unlock); the shared slot takes atomic read-modify-
 * writes.  Every access is __atomic (readers sum or scan the slots with
 * atomic loads), so there is no data race and ThreadSanitizer sees none;
 * a reader sees each slot's count at some value it held.  The handover of
 * a slot orders the old owner's last stores before the new owner's first
 * loads (the release of the bitmap bit, the acquire of its claim), so the
 * new owner carries on from what the old one left: a statistic keeps
 * counting, a reader count is 0 (a thread exits holding no rwlock).
 */
#define UMBRA_THREAD_SLOTS 16u
#define UMBRA_THREAD_SLOT_SHARED (UMBRA_THREAD_SLOTS - 1)
extern __thread unsigned int umbra_thread_slot_plus1;
/* Claims a slot for the calling thread (the first call's slow path of
 * umbra_thread_slot).  Never blocks; cannot fail (the shared slot). */
unsigned int umbra_thread_slot_assign(void);
static inline unsigned int umbra_thread_slot(void)
{
	const unsigned int s = umbra_thread_slot_plus1;

	return s ? s - 1 : umbra_thread_slot_assign();
}

/* Is slot @slot (the caller's, from umbra_thread_slot) owned by the caller
 * alone? */
static inline bool umbra_thread_slot_is_owned(unsigned int slot)
{
	return slot != UMBRA_THREAD_SLOT_SHARED;
}

/* Adds @n to counter @ctr of the caller's slot @slot (from
 * umbra_thread_slot): a relaxed load and store on an owned slot, a relaxed
 * atomic add on the shared one.  Readers load it relaxed. */
static inline void umbra_slot_add(uint64_t *ctr, unsigned int slot, uint64_t n)
{
	if (umbra_thread_slot_is_owned(slot))
		__atomic_store_n(ctr, __atomic_load_n(ctr, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
	else
		__atomic_fetch_add(ctr, n, __ATOMIC_RELAXED);
}

/*
 * Reader-writer locks.  struct umbra_rwlock is held either by one writer or
 * by any number of readers, and has a rank like a mutex's: taking it in
 * either mode obeys the rank order, and a thread never holds two locks of
 * one rank (so it never takes the same rwlock twice, in either mode).  It
 * is writer-preferring (a writer that waits stops new readers), so readers
 * that keep coming cannot starve a writer.
 *
 *   umbra_rwlock_write_lock(&l);     // as umbra_mutex_lock
 *   umbra_rwlock_assert_held_write(&l);  // a function that changes what l protects
 *   umbra_rwlock_read_lock(&l);      // shared with other readers
 *   umbra_rwlock_assert_held(&l);    // held in either mode
 *
 * Made for short read sections taken often by several threads at once (a
 * VM's faults): a reader counts itself in its thread's slot
 * (umbra_thread_slot), on a cache line of its own, so readers on other
 * slots never write a line it reads or writes.  A reader adds itself to
 * its slot, then checks `writer`; a writer takes `writer_mutex` (writers
 * queue there), sets `writer`, then waits until every slot is 0 (spinning,
 * then yielding: read sections are short).  Both sides are sequentially
 * consistent, so one of them always sees the other.  A reader that finds
 * `writer` set takes itself out and waits on `writer_mutex` for the writer
 * to finish.  Readers get their section's effects to the next writer by
 * the release of their slot's decrement (on an owned slot a release store
 * of the count less one, no locked instruction: only its owner writes
 * it), writers to the next readers by the release of `writer`'s clearing
 * (all __atomic: ThreadSanitizer sees them).
 *
 * Debug builds keep the writer (owner) and, per thread, which rwlock of
 * each rank it holds in read mode (umbra_lock_read_held), so that both
 * assertions are exact for the calling thread.
 */
struct umbra_rwlock_slot {
	uint32_t readers;	/* atomic: readers counted in this slot */
	char pad[124];		/* 128 bytes apart: no two slots in one line, nor in one
				 * pair of lines that a CPU prefetches together */
};

struct umbra_rwlock {
	struct umbra_rwlock_slot slot[UMBRA_THREAD_SLOTS];
	uint32_t writer;		/* atomic: a writer holds it, or waits for readers */
	pthread_mutex_t writer_mutex;	/* held by the writer */
#if UMBRA_LOCK_DEBUG
	uintptr_t owner;	/* pthread_self() of the writer, 0 if none (atomic) */
	uint32_t readers;	/* threads holding it in read mode (atomic) */
	const char *name;
	unsigned int rank;
#endif
};

/* umbra_lock_read_held[r]: the rwlock of rank r this thread holds in read
 * mode, or NULL (base/lock.c). */
extern __thread const struct umbra_rwlock *umbra_lock_read_held[UMBRA_LOCK_RANK_MAX + 1];

/* Waits until no reader is counted in @l (its writer flag set): base/lock.c. */
void umbra_rwlock_wait_readers(struct umbra_rwlock *l);

/* Any reader counted in @l? */
static inline bool umbra_rwlock_has_readers(struct umbra_rwlock *l)
{
	for (unsigned int i = 0; i < UMBRA_THREAD_SLOTS; i++)
		if (__atomic_load_n(&l->slot[i].readers, __ATOMIC_SEQ_CST))
			return true;
	return false;
}

/* Initialise @l, as umbra_mutex_init. */
static inline void umbra_rwlock_init(struct umbra_rwlock *l, const char *name, unsigned int rank)
{
	for (unsigned int i = 0; i < UMBRA_THREAD_SLOTS; i++)
		__atomic_store_n(&l->slot[i].readers, 0u, __ATOMIC_RELAXED);
	__atomic_store_n(&l->writer, 0u, __ATOMIC_RELAXED);
	pthread_mutex_init(&l->writer_mutex, NULL);
#if UMBRA_LOCK_DEBUG
	__atomic_store_n(&l->owner, (uintptr_t)0, __ATOMIC_RELAXED);
	__atomic_store_n(&l->readers, 0u, __ATOMIC_RELAXED);
	l->name = name;
	l->rank = rank;
#else
	(void)name;
	(void)rank;
#endif
}

/* Release @l's resources.  @l must not be held in either mode. */
static inline void umbra_rwlock_exit(struct umbra_rwlock *l)
{
#if UMBRA_LOCK_DEBUG
	if (__atomic_load_n(&l->owner, __ATOMIC_RELAXED) != 0 ||
	    __atomic_load_n(&l->readers, __ATOMIC_RELAXED) != 0)
		umbra_lock_violation("destroying an rwlock that is held", l->name, l->rank);
#endif
	pthread_mutex_destroy(&l->writer_mutex);
}

/* True if the calling thread holds @l in write mode (debug builds only;
 * true otherwise). */
static inline bool umbra_rwlock_is_held_write(struct umbra_rwlock *l)
{
#if UMBRA_LOCK_DEBUG
	return __atomic_load_n(&l->owner, __ATOMIC_RELAXED) == (uintptr_t)pthread_self();
#else
	(void)l;
	return true;
#endif
}

/* True if the calling thread holds @l in read or write mode (debug builds
 * only; true otherwise). */
static inline bool umbra_rwlock_is_held(struct umbra_rwlock *l)
{
#if UMBRA_LOCK_DEBUG
	return umbra_rwlock_is_held_write(l) || umbra_lock_read_held[l->rank] == l;
#else
	(void)l;
	return true;
#endif
}

#if UMBRA_LOCK_DEBUG
#define umbra_rwlock_assert_held_write(l)                                                  \
	do {                                                                               \
		if (!umbra_rwlock_is_held_write(l))                                        \
			umbra_lock_violation("the caller must hold this lock in write mode (" \
					     __FILE__ ")", (l)->name, (l)->rank);          \
	} while (0)
#define umbra_rwlock_assert_held(l)                                                        \
	do {                                                                               \
		if (!umbra_rwlock_is_held(l))                                              \
			umbra_lock_violation("the caller must hold this lock (" __FILE__ ")", \
					     (l)->name, (l)->rank);                        \
	} while (0)
#define umbra_rwlock_assert_not_held(l)                                                    \
	do {                                                                               \
		if (umbra_rwlock_is_held(l))                                               \
			umbra_lock_violation("the caller must not hold this lock (" __FILE__ ")", \
					     (l)->name, (l)->rank);                        \
	} while (0)
#else
#define umbra_rwlock_assert_held_write(l) ((void)(l))
#define umbra_rwlock_assert_held(l) ((void)(l))
#define umbra_rwlock_assert_not_held(l) ((void)(l))
#endif

#if UMBRA_LOCK_DEBUG
static inline void umbra_rwlock_check_order(struct umbra_rwlock *l)
{
	if (umbra_rwlock_is_held(l))
		umbra_lock_violation("recursive locking", l->name, l->rank);
	umbra_lock_check_order(l->name, l->rank);
}

static inline void umbra_rwlock_note_write_acquired(struct umbra_rwlock *l)
{
	__atomic_store_n(&l->owner, (uintptr_t)pthread_self(), __ATOMIC_RELAXED);
	umbra_lock_note_acquired(l->name, l->rank);
}
#endif

/* Acquire @l in write mode (alone); may block.  Debug builds check the rank
 * order first. */
static inline void umbra_rwlock_write_lock(struct umbra_rwlock *l)
{
#if UMBRA_LOCK_DEBUG
	umbra_rwlock_check_order(l);
#endif
	pthread_mutex_lock(&l->writer_mutex);
	__atomic_store_n(&l->writer, 1u, __ATOMIC_SEQ_CST);
	if (umbra_rwlock_has_readers(l))
		umbra_rwlock_wait_readers(l);
#if UMBRA_LOCK_DEBUG
	umbra_rwlock_note_write_acquired(l);
#endif
}

/* Try to acquire @l in write mode without blocking: true if acquired
 * (false if a writer or a reader holds it). */
static inline bool umbra_rwlock_write_trylock(struct umbra_rwlock *l)
{
#if UMBRA_LOCK_DEBUG
	umbra_rwlock_check_order(l);
#endif
	if (pthread_mutex_trylock(&l->writer_mutex) != 0)
		return false;
	__atomic_store_n(&l->writer, 1u, __ATOMIC_SEQ_CST);
	if (umbra_rwlock_has_readers(l)) {
		__atomic_store_n(&l->writer, 0u, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&l->writer_mutex);
		return false;
	}
#if UMBRA_LOCK_DEBUG
	umbra_rwlock_note_write_acquired(l);
#endif
	return true;
}

/* Release @l, which the calling thread holds in write mode. */
static inline void umbra_rwlock_write_unlock(struct umbra_rwlock *l)
{
#if UMBRA_LOCK_DEBUG
	if (!umbra_rwlock_is_held_write(l))
		umbra_lock_violation("write-unlocking an rwlock this thread does not hold "
				     "in write mode", l->name, l->rank);
	umbra_lock_note_released(l->rank);
	__atomic_store_n(&l->owner, (uintptr_t)0, __ATOMIC_RELAXED);
#endif
	__atomic_store_n(&l->writer, 0u, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&l->writer_mutex);
}

/* Takes the calling thread's count (slot @slot) out of @readers, with
 * release: a release store on an owned slot, an atomic subtraction on the
 * shared one. */
static inline void umbra_rwlock_slot_leave(uint32_t *readers, unsigned int slot)
{
	if (umbra_thread_slot_is_owned(slot))
		__atomic_store_n(readers, __atomic_load_n(readers, __ATOMIC_RELAXED) - 1u,
				 __ATOMIC_RELEASE);
	else
		__atomic_fetch_sub(readers, 1u, __ATOMIC_RELEASE);
}

/* Acquire @l in read mode (shared with other readers); may block while a
 * writer holds or waits for it.  Debug builds check the rank order first. */
static inline void umbra_rwlock_read_lock(struct umbra_rwlock *l)
{
	const unsigned int slot = umbra_thread_slot();
	uint32_t *readers = &l->slot[slot].readers;

#if UMBRA_LOCK_DEBUG
	umbra_rwlock_check_order(l);
#endif
	for (;;) {
		__atomic_fetch_add(readers, 1u, __ATOMIC_SEQ_CST);
		if (!__atomic_load_n(&l->writer, __ATOMIC_SEQ_CST))
			break;
		/* A writer holds it or waits: step out, wait for it to finish. */
		umbra_rwlock_slot_leave(readers, slot);
		pthread_mutex_lock(&l->writer_mutex);
		pthread_mutex_unlock(&l->writer_mutex);
	}
#if UMBRA_LOCK_DEBUG
	__atomic_fetch_add(&l->readers, 1u, __ATOMIC_RELAXED);
	umbra_lock_read_held[l->rank] = l;
	umbra_lock_note_acquired(l->name, l->rank);
#endif
}

/* Release @l, which the calling thread holds in read mode. */
static inline void umbra_rwlock_read_unlock(struct umbra_rwlock *l)
{
	const unsigned int slot = umbra_thread_slot();

#if UMBRA_LOCK_DEBUG
	if (umbra_lock_read_held[l->rank] != l)
		umbra_lock_violation("read-unlocking an rwlock this thread does not hold "
				     "in read mode", l->name, l->rank);
	umbra_lock_read_held[l->rank] = NULL;
	umbra_lock_note_released(l->rank);
	__atomic_fetch_sub(&l->readers, 1u, __ATOMIC_RELAXED);
#endif
	umbra_rwlock_slot_leave(&l->slot[slot].readers, slot);
}

/*
 * Mark @p held by this thread until umbra_pseudo_lock_release(): taking it
 * obeys the rank order as a mutex does, and every lock or rule check made
 * meanwhile sees it.  Nothing to do in release builds.
 */
static inline void umbra_pseudo_lock_acquire(const struct umbra_pseudo_lock *p)
{
#if UMBRA_LOCK_DEBUG
	umbra_lock_check_order(p->name, p->rank);
	umbra_lock_note_acquired(p->name, p->rank);
#else
	(void)p;
#endif
}

static inline void umbra_pseudo_lock_release(const struct umbra_pseudo_lock *p)
{
#if UMBRA_LOCK_DEBUG
	umbra_lock_note_released(p->rank);
#else
	(void)p;
#endif
}

#endif /* UMBRA_LOCK_H */
