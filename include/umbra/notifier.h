/*
 * umbra/notifier.h - MMU notifiers for guest memory.
 *
 * A *memory object* is host memory that guests map: a VM's private RAM, a
 * named shared segment.  It is page-granular (NOTIFIER_PAGE_SIZE) and sized in
 * pages.  Whoever changes what a page of the object holds (swapout, eviction,
 * segment teardown, protection change, copy-on-write, release) is the
 * *primary*; every secondary MMU that may cache a translation of the object
 * (each VM's shadow MMU, and observers such as tracers) is a *subscriber*.
 *
 * The primary brackets every change with
 *
 *	notifier_range_init(&r, obj, NOTIFIER_EVENT_SWAPOUT, first, last,
 *			    NOTIFIER_RANGE_MAY_BLOCK);
 *	notifier_invalidate_range_start(&r);	// every subscriber unmaps
 *	... change the pages [first, last] ...
 *	notifier_invalidate_range_end(&r);	// subscribers may map again
 *
 * and the library tells each subscriber, in one of two delivery modes chosen
 * per object at run time (notifier_object_set_mode()):
 *
 *   NOTIFIER_MODE_RANGE  one invalidate_range_start() at start and one
 *                        invalidate_range_end() at end (today's Linux);
 *   NOTIFIER_MODE_PAGE   one invalidate_page() per page at start, nothing at
 *                        end (the 2008 design).
 *
 * Both modes give the same guarantee: when notifier_invalidate_range_start()
 * returns 0, no subscriber maps any page of the range, and none can map one
 * again until notifier_invalidate_range_end() (the sequence/retry protocol
 * below stops it).  The model is Linux's include/linux/mmu_notifier.h; see
 * docs/notifiers.md for the mapping between the two and where they differ.
 *
 * Subscriber lists are RCU-protected (liburcu, urcu-memb flavour):
 * deliveries walk them without taking any lock; subscribe/unsubscribe
 * serialise on the object's subscription lock and free after a grace period.
 *
 * Threads.  Every thread that calls a delivery function (invalidate_*,
 * clear_young, test_young) must be registered with liburcu-memb, either by
 * notifier_thread_init() or by urcu_memb_register_thread() (one or the other,
 * never both).
 *
 * Errors are 0 or a negative errno; the library never prints or exits.
 *
 * Locks (see include/umbra/lock.h for the rank table):
 *   object->lock  (UMBRA_LOCK_RANK_NOTIFIER_OBJECT) serialises subscribe,
 *                 unsubscribe, destroy and set_trace; release() runs under it.
 *   object->seq_lock (UMBRA_LOCK_RANK_NOTIFIER_SEQ, leaf) guards the sequence /
 *                 in-progress state; held only inside the library.
 *   No library lock is held while invalidate_range_start/end,
 *   invalidate_page, clear_young or test_young run.
 */
#ifndef UMBRA_NOTIFIER_H
#define UMBRA_NOTIFIER_H

#include <stdbool.h>
#include <stdint.h>

#include "umbra/lock.h"
#include "umbra/rcu.h"

#define NOTIFIER_PAGE_SHIFT 12
#define NOTIFIER_PAGE_SIZE (1ull << NOTIFIER_PAGE_SHIFT)
/* Longest object name kept, including the terminating NUL. */
#define NOTIFIER_NAME_MAX 64

struct notifier_object;
struct notifier_subscription;

/* Why a range is invalidated.  Extensible: add before NOTIFIER_EVENT_NR. */
enum notifier_event {
	NOTIFIER_EVENT_UNMAP,	/* unmap / teardown of (part of) the object */
	NOTIFIER_EVENT_SWAPOUT,	/* page contents move out (swap, eviction) */
	NOTIFIER_EVENT_PROTECT,	/* permissions reduced (e.g. made read-only) */
	NOTIFIER_EVENT_COW,	/* copy-on-write: a new page replaces the old */
	NOTIFIER_EVENT_RELEASE,	/* the object is going away */
	NOTIFIER_EVENT_NR,
};

/* Static name of @event ("unmap", "swapout", ...), "?" if out of range. */
const char *notifier_event_name(enum notifier_event event);

#define notifier_for_each_event(ev) \
	for ((ev) = (enum notifier_event)0; (ev) < NOTIFIER_EVENT_NR; (ev) = (enum notifier_event)((ev) + 1))

/* How an invalidation reaches subscribers; see the top of this file. */
enum notifier_mode {
	NOTIFIER_MODE_RANGE,
	NOTIFIER_MODE_PAGE,
	NOTIFIER_MODE_NR,
};

/* Static name of @mode ("range", "page"), "?" if out of range. */
const char *notifier_mode_name(enum notifier_mode mode);

/* notifier_range.flags */
#define NOTIFIER_RANGE_MAY_BLOCK (1u << 0)	/* callbacks may sleep */

/*
 * One invalidation: pages [first, last] (inclusive, page indices) of @obj.
 * The caller owns it (usually on its stack) from notifier_range_init() until
 * notifier_invalidate_range_end() returns, or until a failed
 * notifier_invalidate_range_start() returns.  Callbacks get it const.
 */
struct notifier_range {
	struct notifier_object *obj;
	uint64_t first;
	uint64_t last;
	enum notifier_event event;
	unsigned int flags;
	/* Library-private; valid between start and end.  Do not touch. */
	struct {
		struct notifier_range *prev_active, *next_active; /* under seq_lock */
		uint64_t gen;		/* subscriber generation snapshot */
		enum notifier_mode mode;	/* mode snapshot taken at start */
		unsigned int state;
		uint64_t trace_id;	/* umbra/trace.h invalidation id, 0 if untraced */
	} internal;
};

/* True if the callbacks for @range may sleep. */
static inline bool notifier_range_may_block(const struct notifier_range *range)
{
	return range->flags & NOTIFIER_RANGE_MAY_BLOCK;
}

/* Number of pages in @range. */
static inline uint64_t notifier_range_npages(const struct notifier_range *range)
{
	return range->last - range->first + 1;
}

/*
 * The subscriber's operations.  Every pointer may be NULL (the call is then
 * skipped), except that a subscriber that implements either
 * invalidate_range_start or invalidate_page must implement both, because the
 * delivery mode is the object's choice, not the subscriber's.  The table must
 * stay valid and unchanged until notifier_unsubscribe() returns.
 *
 * Common rules for every callback:
 *  - It runs in an RCU read-side critical section of liburcu-memb.  It must
 *    not call anything that waits for a grace period on the calling thread
 *    (notifier_unsubscribe, notifier_object_destroy, notifier_object_set_trace,
 *    notifier_barrier, urcu_memb_synchronize_rcu): that deadlocks.
 *  - It must not call notifier_invalidate_range_start/end, clear_young or
 *    test_young on the same object (recursion into the same walk).
 *  - Several callbacks of one subscriber may run at the same time on
 *    different threads (overlapping invalidations, young queries): the
 *    subscriber serialises with its own lock (e.g. the per-VM mmu_lock, rank
 *    UMBRA_LOCK_RANK_MMU), which is the lock it must also hold around
 *    notifier_read_retry().
 *  - No callback runs after release() has been called, and release() runs
 *    exactly once, after every other callback of the subscription returned.
 */
struct notifier_ops {
	/*
	 * invalidate_range_start - pages [range->first, range->last] of
	 * range->obj are about to change (range->event says why).
	 *
	 * When: from notifier_invalidate_range_start() in NOTIFIER_MODE_RANGE,
	 *   once per subscriber present when the invalidation started.  Ranges
	 *   of one object may overlap and be in progress concurrently.
	 * Locks held: none of the library's.
	 * May block: only if notifier_range_may_block(range).  Otherwise it
	 *   must not sleep, and it may answer -EAGAIN when it would have to
	 *   (e.g. its lock is contended); no other error is allowed, and a
	 *   blockable call must return 0.
	 * On return 0: the subscriber maps no page of the range any more, and
	 *   every TLB (vCPU) that may cache a translation of it has been
	 *   flushed.  It must not map any page of the range again before the
	 *   matching invalidate_range_end(): it installs mappings only through
	 *   the notifier_read_begin()/notifier_read_retry() protocol, which
	 *   refuses them while the range is in progress.
	 * Pairing: a start that returned 0 gets exactly one
	 *   invalidate_range_end() with the same range pointer.  A start that
	 *   returned -EAGAIN gets no end (the invalidation is aborted: starts
	 *   that had succeeded on other subscribers are ended at once and
	 *   notifier_invalidate_range_start() returns -EAGAIN).
	 */
	int (*invalidate_range_start)(struct notifier_subscription *sub,
				      const struct notifier_range *range);

	/*
	 * invalidate_range_end - the change announced by the matching
	 * invalidate_range_start() is complete.
	 *
	 * When: from notifier_invalidate_range_end() (or from an aborted
	 *   notifier_invalidate_range_start(), see the pairing rule above),
	 *   only for a subscriber whose start returned 0 for this range (a
	 *   subscriber without invalidate_range_start counts as started).
	 * Locks held: none of the library's.
	 * May block: only if notifier_range_may_block(range).  Cannot fail.
	 * On return: nothing is required; a subscriber that keeps its own
	 *   in-progress count (like KVM's mmu_invalidate_in_progress) drops it
	 *   here.  The library's own sequence is advanced after every end
	 *   callback has returned.
	 */
	void (*invalidate_range_end)(struct notifier_subscription *sub,
				     const struct notifier_range *range);

	/*
	 * invalidate_page - page @page of range->obj is about to change.
	 *
	 * When: from notifier_invalidate_range_start() in NOTIFIER_MODE_PAGE,
	 *   once per page of the range and per subscriber (page-major: every
	 *   subscriber for page first, then for page first+1, ...).  @range is
	 *   the whole invalidation (event, flags); only @page is concerned.
	 * Locks held: none of the library's.
	 * May block: only if notifier_range_may_block(range); otherwise it may
	 *   answer -EAGAIN, which aborts the invalidation (pages already
	 *   delivered stay invalidated; that is always safe).
	 * On return 0: the subscriber no longer maps @page and has flushed the
	 *   TLBs that may cache it; it must not map it again before
	 *   notifier_invalidate_range_end() for @range (the sequence/retry
	 *   protocol refuses it).  No end callback follows in this mode.
	 */
	int (*invalidate_page)(struct notifier_subscription *sub,
			       const struct notifier_range *range, uint64_t page);

	/*
	 * clear_young - clear the accessed ("young") state the subscriber
	 * keeps for pages [first, last] of the object, and say whether any
	 * was set.  A page is young for a subscriber when one of its mappings
	 * was used since the page's state was last cleared.
	 *
	 * When: from notifier_clear_young(), e.g. by page aging before
	 *   choosing what to swap out.  Not an invalidation: the sequence is
	 *   not advanced; the translations' content stays (a subscriber that
	 *   tracks access by making mappings fault, as the shadow MMU does,
	 *   restores them at the next access).  It need not flush TLBs: a
	 *   translation still cached may be used without marking the page
	 *   young again, which only makes the page look older.
	 * Locks held: none of the library's.
	 * May block: no.  It must not sleep, nor wait for a lock that a
	 *   thread may hold while it sleeps or waits (a fault path that waits
	 *   for the page, a flush that waits for vCPUs): it try-locks, and
	 *   where it cannot clear a page without waiting, leaves that page's
	 *   state as it is and reports it young.  The aging caller (a
	 *   reclaimer) may be what a faulting vCPU waits on.
	 * Returns: nonzero if any page in the range was young (or could not be
	 *   cleared), else 0.
	 */
	int (*clear_young)(struct notifier_subscription *sub, struct notifier_object *obj,
			   uint64_t first, uint64_t last);

	/*
	 * test_young - say whether the subscriber saw @page accessed since its
	 * young state was last cleared, without clearing it.
	 *
	 * When: from notifier_test_young().
	 * Locks held: none of the library's.
	 * May block: no, and it takes no lock that clear_young may not: it
	 *   only reads (changes no mapping and no state).
	 * Returns: nonzero if young, else 0.
	 */
	int (*test_young)(struct notifier_subscription *sub, struct notifier_object *obj,
			  uint64_t page);

	/*
	 * release - the subscription ends: the subscriber is leaving
	 * (notifier_unsubscribe()) or the object is being destroyed
	 * (notifier_object_destroy()), whichever comes first.
	 *
	 * When: exactly once per subscription, after every other callback of
	 *   it has returned and after every invalidate_range_start() of it has
	 *   been ended; no callback follows.
	 * Locks held: the object's subscription lock (rank
	 *   UMBRA_LOCK_RANK_NOTIFIER_OBJECT), so it may take the subscriber's own
	 *   locks but must not subscribe to or unsubscribe from @obj.
	 * May block: yes.  Cannot fail.
	 * On return: the subscriber maps no page of @obj and has flushed every
	 *   TLB that may cache one; it will never map one again through this
	 *   subscription.  Its private data stays its own business: the
	 *   library touches @sub's private pointer no more after release.
	 */
	void (*release)(struct notifier_subscription *sub, struct notifier_object *obj);
};

/* ---- threads -------------------------------------------------------- */

/*
 * Register the calling thread with liburcu-memb (umbra_rcu_register_thread)
 * so that it may call the delivery functions.  Idempotent per thread.
 * Returns 0.
 */
int notifier_thread_init(void);

/*
 * Unregister a thread registered by notifier_thread_init().  Must not be
 * called inside a delivery or with one half done.  No-op if not registered.
 */
void notifier_thread_exit(void);

/*
 * Wait until every deferred free queued by the library (subscriptions and
 * objects freed after a grace period) and every other umbra_call_rcu work
 * has run (umbra_rcu_barrier).  May block; not from a callback, with a
 * subscriber's lock held, or in a read-side critical section.  Tests and
 * programs call it before exit.
 */
void notifier_barrier(void);

/* ---- memory objects ------------------------------------------------- */

/*
 * Create a memory object called @name (truncated to NOTIFIER_NAME_MAX - 1
 * bytes) of @npages pages, in NOTIFIER_MODE_RANGE, with one reference owned
 * by the caller.  May block (allocates).
 * Returns 0 and sets *objp, -EINVAL if @npages is 0 or @name NULL, or
 * -ENOMEM.
 */
int notifier_object_create(const char *name, uint64_t npages, struct notifier_object **objp);

/*
 * Tear the object down (the owner's last act on it): refuse new
 * subscriptions, end every subscription (each subscriber still subscribed
 * gets release() exactly once, after its in-flight callbacks finished), then
 * drop the creator's reference.  Subscribers still call
 * notifier_unsubscribe() on their handles afterwards (it then only frees).
 *
 * Locks: takes the subscription lock; caller must hold no notifier lock.
 * May block: yes (waits for a grace period and for in-flight range
 * invalidations to end).  Not from a callback; not while the calling thread
 * has a range of this object started and not ended.
 */
void notifier_object_destroy(struct notifier_object *obj);

/* Take a reference on @obj (which must already be referenced).  Never fails. */
void notifier_object_get(struct notifier_object *obj);

/*
 * Drop a reference; the last one frees the object after a grace period.
 * Does not block.
 */
void notifier_object_put(struct notifier_object *obj);

/* The object's name, as stored (valid while a reference is held). */
const char *notifier_object_name(const struct notifier_object *obj);

/* The object's size in pages. */
uint64_t notifier_object_npages(const struct notifier_object *obj);

/* True once notifier_object_destroy() has begun. */
bool notifier_object_is_dead(const struct notifier_object *obj);

/*
 * Choose how later invalidations of @obj are delivered.  Takes effect for
 * invalidations that start after it; one already started keeps the mode it
 * started with (its end matches its start).  Lock-free; never blocks.
 * Returns 0 or -EINVAL for an unknown mode.
 */
int notifier_object_set_mode(struct notifier_object *obj, enum notifier_mode mode);

/* The delivery mode new invalidations of @obj use. */
enum notifier_mode notifier_object_mode(const struct notifier_object *obj);

/* ---- subscriptions -------------------------------------------------- */

/*
 * Subscribe to @obj with @ops and private pointer @priv.  The subscriber
 * receives the callbacks of every invalidation that starts after this returns
 * (an invalidation already in progress is not delivered to it, but the
 * sequence/retry protocol keeps it from mapping that range until it ends).
 * Takes a reference on @obj, dropped by notifier_unsubscribe().
 *
 * Locks: takes the subscription lock.  May block (allocates).  May run
 * concurrently with deliveries on other threads.
 * Returns 0 and sets *subp, -EINVAL for a NULL argument or an ops table that
 * implements only one of invalidate_range_start / invalidate_page, -ENODEV if
 * the object is being destroyed, -ENOMEM.
 */
int notifier_subscribe(struct notifier_object *obj, const struct notifier_ops *ops, void *priv,
		       struct notifier_subscription **subp);

/*
 * End @sub: no new callback starts on it; wait until every callback already
 * running has returned and every started range has been ended; call
 * release() (unless notifier_object_destroy() already did); drop the object
 * reference; free @sub after a grace period.  When it returns no callback of
 * @sub is running or will run, so the subscriber may free @priv at once.
 *
 * Locks: takes the subscription lock.  May block (grace period, in-flight
 * ranges).  Not from a callback; not while the calling thread holds a lock a
 * callback takes, nor while it has a range of this object started and not
 * ended (that would deadlock).  Each subscription is unsubscribed once.
 */
void notifier_unsubscribe(struct notifier_subscription *sub);

/* The private pointer given to notifier_subscribe(). */
void *notifier_subscription_priv(const struct notifier_subscription *sub);

/* The object @sub is subscribed to. */
struct notifier_object *notifier_subscription_object(const struct notifier_subscription *sub);

/* ---- invalidation --------------------------------------------------- */

/*
 * Fill @range for pages [first, last] of @obj (no side effect).
 * @flags: 0 or NOTIFIER_RANGE_MAY_BLOCK.
 */
void notifier_range_init(struct notifier_range *range, struct notifier_object *obj,
			 enum notifier_event event, uint64_t first, uint64_t last,
			 unsigned int flags);

/*
 * Begin invalidating @range: mark it in progress for the sequence/retry
 * protocol, then deliver it to every subscriber in the object's current
 * mode (invalidate_range_start, or invalidate_page per page).
 *
 * Locks: caller must not hold any lock a callback takes.  The subscriber
 * list is walked without a lock (RCU); seq_lock is taken briefly.
 * May block: if and only if the range is NOTIFIER_RANGE_MAY_BLOCK (the
 * library itself only takes seq_lock for a few instructions).
 * Returns 0: no subscriber maps any page of the range, until
 *   notifier_invalidate_range_end(@range), which the caller must then call
 *   exactly once.
 * Returns -EAGAIN (non-blocking ranges only): a subscriber could not proceed
 *   without sleeping.  The invalidation is aborted and fully unwound (starts
 *   that succeeded were ended); the caller must not call end, and should
 *   retry later in blockable context or give up.
 * Returns -EINVAL: the range does not fit the object, or bad flags; nothing
 *   was done.
 * Tracing (umbra/trace.h): a recorded invalidation begins here and ends when
 *   notifier_invalidate_range_end returns (or here, "aborted", on -EAGAIN).
 */
int notifier_invalidate_range_start(struct notifier_range *range);

/*
 * End @range, started by a successful notifier_invalidate_range_start():
 * deliver invalidate_range_end (NOTIFIER_MODE_RANGE), then advance the
 * object's sequence and take the range out of progress, waking readers
 * waiting in notifier_read_begin().
 * Locks and blocking as for notifier_invalidate_range_start().
 */
void notifier_invalidate_range_end(struct notifier_range *range);

/*
 * Ask every subscriber to clear the young state of pages [first, last]:
 * the page aging of a pager (a page is young if any subscriber, e.g. any VM
 * that maps it, used it since the last clear).  Returns 1 if any subscriber
 * reported young, 0 if none, -EINVAL for a range outside the object.
 * Never blocks (the library takes no lock; clear_young may not block).
 */
int notifier_clear_young(struct notifier_object *obj, uint64_t first, uint64_t last);

/*
 * Ask the subscribers whether @page is young; stops at the first that says
 * so.  Read-only; never blocks.  Returns 1 if young, 0 if not, -EINVAL for
 * a page outside the object.
 */
int notifier_test_young(struct notifier_object *obj, uint64_t page);

/* ---- sequence / retry ----------------------------------------------- */

/*
 * The fault path's side of the protocol (docs/notifiers.md has the diagram):
 *
 *	again:
 *		seq = notifier_read_begin(obj, first, last);
 *		... find what backs the pages (no subscriber lock held) ...
 *		lock(mmu_lock);		// the lock the callbacks also take
 *		if (notifier_read_retry(obj, first, last, seq)) {
 *			unlock(mmu_lock);
 *			goto again;
 *		}
 *		... install the mapping ...
 *		unlock(mmu_lock);
 *
 * notifier_read_begin - begin reading pages [first, last] of @obj.  If an
 * invalidation overlapping them is in progress, sleeps until none is, then
 * returns the object's sequence.  Locks: takes seq_lock; the caller must not
 * hold a lock that a callback takes (the invalidation it waits for could not
 * end).  May block.
 */
uint64_t notifier_read_begin(struct notifier_object *obj, uint64_t first, uint64_t last);

/*
 * notifier_read_retry - true if what was read since notifier_read_begin()
 * returned @seq may be stale: an invalidation overlapping [first, last] is in
 * progress, or any invalidation of the object ended since (the sequence is
 * per object, like KVM's mmu_invalidate_seq, so unrelated ends also cause a
 * retry; that is only a cost).  False means it is safe to install, provided
 * the caller holds the lock its invalidate callbacks take, and keeps holding
 * it until the mapping is installed.  Takes seq_lock (a leaf) briefly; never
 * sleeps otherwise.
 */
bool notifier_read_retry(struct notifier_object *obj, uint64_t first, uint64_t last,
			 uint64_t seq);

/* ---- observability -------------------------------------------------- */

/*
 * Counters of one object, monotonic since creation.  "Invalidations" count
 * notifier_invalidate_range_start/end calls; "deliveries" count callbacks.
 */
struct notifier_stats {
	uint64_t starts;		/* successful invalidate_range_start calls */
	uint64_t ends;			/* invalidate_range_end calls */
	uint64_t aborts;		/* starts that returned -EAGAIN */
	uint64_t pages;			/* pages covered by successful starts */
	uint64_t events[NOTIFIER_EVENT_NR];	/* successful starts per event */
	uint64_t starts_by_mode[NOTIFIER_MODE_NR];
	uint64_t cb_range_start;	/* invalidate_range_start callbacks */
	uint64_t cb_range_end;		/* invalidate_range_end callbacks */
	uint64_t cb_page;		/* invalidate_page callbacks */
	uint64_t cb_eagain;		/* callbacks that answered -EAGAIN */
	uint64_t clear_young;		/* notifier_clear_young calls */
	uint64_t test_young;		/* notifier_test_young calls */
	uint64_t subscribes;
	uint64_t unsubscribes;
	uint64_t releases;		/* release callbacks (or subscriptions ended) */
	uint64_t read_begins;		/* read_begin calls that returned */
	uint64_t read_waits;		/* read_begin calls that slept (counted when they start to) */
	uint64_t read_retries;		/* read_retry calls that answered true */
};

/*
 * Copy @obj's counters into *@stats.  Each counter is read atomically; the
 * set is not a snapshot of one instant.  Never blocks.
 */
void notifier_object_stats(const struct notifier_object *obj, struct notifier_stats *stats);

/* What a trace record describes. */
enum notifier_trace_kind {
	NOTIFIER_TRACE_RANGE_START,	/* invalidate_range_start delivered */
	NOTIFIER_TRACE_RANGE_END,	/* invalidate_range_end delivered */
	NOTIFIER_TRACE_PAGE,		/* invalidate_page delivered (first == last) */
	NOTIFIER_TRACE_CLEAR_YOUNG,
	NOTIFIER_TRACE_TEST_YOUNG,	/* first == last == the page */
	NOTIFIER_TRACE_RELEASE,
	NOTIFIER_TRACE_KIND_NR,
};

/* Static name of @kind ("range_start", ...), "?" if out of range. */
const char *notifier_trace_kind_name(enum notifier_trace_kind kind);

/* One delivered callback, after it returned. */
struct notifier_trace_record {
	enum notifier_trace_kind kind;
	uint64_t time_ns;		/* CLOCK_MONOTONIC, taken after the callback */
	const struct notifier_object *obj;
	const struct notifier_subscription *sub;
	uint64_t first, last;
	enum notifier_event event;	/* NOTIFIER_EVENT_NR for young queries */
	int result;			/* the callback's return value, 0 if void */
};

/*
 * Trace hook.  Called on the delivering thread right after each callback,
 * concurrently from many threads; must not block or call into the library.
 */
typedef void (*notifier_trace_fn)(void *arg, const struct notifier_trace_record *rec);

/*
 * Install (@fn non-NULL) or remove (@fn NULL) @obj's trace hook.  When no
 * hook is installed a delivery pays one pointer load per walk.  On return the
 * new hook applies to walks that start afterwards and the old one is no
 * longer running, so its @arg may be freed.
 * Locks: takes the subscription lock.  May block (grace period); not from a
 * callback.  Returns 0 or -ENOMEM.
 */
int notifier_object_set_trace(struct notifier_object *obj, notifier_trace_fn fn, void *arg);

#endif /* UMBRA_NOTIFIER_H */
