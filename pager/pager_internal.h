/*
 * Private to pager/: the pager, its objects and their page states
 * (pager.c), pins (pin.c), discarding (discard.c), statistics (stats.c), and
 * the userfaultfd calls and handler thread (uffd.c).
 */
#ifndef UMBRA_PAGER_INTERNAL_H
#define UMBRA_PAGER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "umbra/lock.h"
#include "umbra/pager.h"

/*
 * A page's state.  Every change happens under the object's lock; the busy
 * states (EVICTING, SWAPPING_IN, DISCARDING) belong to the one thread that
 * set them, which alone does the page's I/O and ioctls and, when it sets the
 * final state, broadcasts the object's condition variable and wakes the
 * faults waiting on the page (UFFDIO_WAKE).
 */
enum pager_page_state {
	PAGER_PAGE_RESIDENT,	/* in the memfd; dirty; no slot */
	PAGER_PAGE_CLEAN,	/* in the memfd, write-protected, equal to its slot */
	PAGER_PAGE_SWAPPED,	/* a hole; the content is only in its slot */
	PAGER_PAGE_EVICTING,	/* busy: an eviction owns it */
	PAGER_PAGE_SWAPPING_IN,	/* busy: a swap-in, a zero fill or a poison install owns it */
	PAGER_PAGE_HOLE,	/* never written or discarded: not in memory, no slot */
	/* its swap slot could not be read: a poison page is installed (counted
	 * present from the loss on), get_page fails */
	PAGER_PAGE_LOST,
	PAGER_PAGE_DISCARDING,	/* busy: a discard owns it (pager_discard) */
};

/* @st is one of the busy states: its owner settles it. */
static inline bool pager_page_state_is_busy(uint8_t st)
{
	return st == PAGER_PAGE_EVICTING || st == PAGER_PAGE_SWAPPING_IN ||
	       st == PAGER_PAGE_DISCARDING;
}

#define PAGER_NO_SLOT UINT64_MAX

/*
 * Swap-in latency histogram: bucket k counts the swap-ins that took
 * [2^(k/4), 2^((k+1)/4)) ns; the last bucket also takes everything longer.
 * 160 buckets reach 2^40 ns (18 minutes).
 */
#define PAGER_HIST_BUCKETS 160u

struct pager_hist {
	uint64_t count[PAGER_HIST_BUCKETS];
	uint64_t max_ns;
};

struct pager_object {
	struct pager *pager;
	int id;
	struct notifier_object *obj;	/* a reference */
	int memfd;
	char *host;
	uint64_t npages;
	/* lock (UMBRA_LOCK_RANK_PAGER_OBJECT): every field below; cond is
	 * broadcast when a busy page gets its final state. */
	struct umbra_mutex lock;
	pthread_cond_t cond;
	uint8_t *state;			/* [npages] enum pager_page_state */
	uint64_t *slot;			/* [npages] PAGER_NO_SLOT or the swap slot */
	/* [npages] the pager's eviction count just after the page's last
	 * eviction (refaults). */
	uint64_t *evicted_at;
	uint16_t *pins;			/* [npages] pin counts; NULL until the first pin */
	uint8_t *lost_err;		/* [npages] errno of a LOST page; NULL until the first loss */
	uint64_t swapped, present, pinned, lost;
	uint64_t swapouts_io, swapouts_cached, swapins, zero_fills, refaults;
	uint64_t write_errors, read_errors, discarded, busy_refusals;
	struct pager_hist swapin_ns;
};

struct pager_reclaim;
struct batch;

struct pager {
	struct pager_swap *swap;
	int uffd;			/* -1 until opened */
	int stop_fd;			/* eventfd that stops the handler */
	pthread_t handler;
	bool handler_started;
	/* Objects are appended (under add_lock) and never removed before
	 * pager_destroy; the handler reads nr_objects with acquire. */
	struct umbra_mutex add_lock;
	struct pager_object *objects[PAGER_MAX_OBJECTS];
	int nr_objects;
	/* Set before the first object is added (pager_set_ops); read-only
	 * after, so the handler reads them without a lock. */
	struct pager_ops ops;
	void *ops_priv;
	bool thread_id;			/* fault messages carry the thread id */
	/* Pages in host memory over every object: set from the memfds' data
	 * at add_object, +1 per zero fill, swap-in or lost page, -1 per
	 * page punched by an eviction or a discard (what the budget counts). */
	_Atomic uint64_t present_pages;
	_Atomic uint64_t evictions;	/* pages punched since create */
	_Atomic uint64_t refault_window;
	/* The budget and the reclaimer (reclaim.c): NULL until the first
	 * pager_budget_start() or pager_reclaim(), then kept (published with
	 * release, read with acquire) until pager_destroy. */
	struct pager_reclaim *reclaim;
	bool discard_at_destroy;	/* pager_set_discard_at_destroy (atomic) */
	bool nonblocking;		/* pager_set_nonblocking (atomic) */
	/* evict.c's spare batch (victims, ranges, 1 MiB of buffers), kept
	 * between calls: taken and given back with atomic exchanges. */
	struct batch *spare_batch;
};

/* Pages per eviction batch (one swap write, one buffer). */
#define PAGER_EVICT_BATCH 256u

/* Host address of @page of @po in the registered mapping. */
static inline char *pager_page_addr(struct pager_object *po, uint64_t page)
{
	return po->host + page * PAGER_PAGE_SIZE;
}

/* ---- uffd.c --------------------------------------------------------- */

/* Open the userfaultfd and negotiate missing + shmem write-protect. */
int pager_uffd_open(struct pager *pager);
/* Start / stop the handler thread (pager->uffd and stop_fd open). */
int pager_uffd_start(struct pager *pager);
void pager_uffd_stop(struct pager *pager);
int pager_uffd_register(struct pager *pager, void *host, uint64_t size);
int pager_uffd_unregister(struct pager *pager, void *host, uint64_t size);
/*
 * The page ioctls wake nobody: the owner of a page wakes its faults with
 * pager_uffd_wake() once it has settled the page's state, so that a woken
 * thread finds the state (and the counters) final.
 */
/* Install @buf at @addr (one page), write-protected if @protect.  -EEXIST
 * if present. */
int pager_uffd_copy(struct pager *pager, void *addr, const void *buf, bool protect);
/* Install a zero page at @addr.  -EEXIST if present. */
int pager_uffd_zero(struct pager *pager, void *addr);
/* Write-protect (@protect) or unprotect [@addr, @addr + @len). */
int pager_uffd_protect(struct pager *pager, void *addr, uint64_t len, bool protect);
/* Wake the faults waiting in [@addr, @addr + @len). */
void pager_uffd_wake(struct pager *pager, void *addr, uint64_t len);

/* ---- pager.c: what the handler calls -------------------------------- */

/* Object @id, or NULL if there is none. */
struct pager_object *pager_object_get(struct pager *pager, int id);
/* The object and page of host address @addr, or NULL. */
struct pager_object *pager_object_of(struct pager *pager, uint64_t addr, uint64_t *page);
/* A missing fault on @page by thread @tid (0 when the kernel does not say):
 * swap it in, zero-fill a never-written hole, report a lost page, or leave
 * it to the thread that owns it.  Handler thread only: never waits for
 * reclaim. */
void pager_fault_missing(struct pager_object *po, uint64_t page, pid_t tid);
/* A write-protect fault on @page: a clean page becomes dirty. */
void pager_fault_wp(struct pager_object *po, uint64_t page);
/* pager_get_page() on an object: makes @page resident (or fails) for the
 * calling thread @tid; calls pager_reclaim_before_fill() before any fill.
 * No lock held. */
int pager_page_get(struct pager_object *po, uint64_t page, pid_t tid);

/* May page @page be evicted: RESIDENT or CLEAN, and not pinned.  Object
 * lock held.  evict.c's pick uses it. */
bool pager_page_is_evictable_locked(const struct pager_object *po, uint64_t page);
/* Page @page was punched and becomes SWAPPED: state, present_pages,
 * evicted_at.  Object lock held.  evict.c's settle calls it. */
void pager_page_evicted_locked(struct pager_object *po, uint64_t page);
/* A page of @po left host memory: one present page less, in the object and
 * the pager.  Object lock held. */
void pager_page_absent_locked(struct pager_object *po);

/* ---- pin.c ------------------------------------------------------------ */

/* Drops every pin of @page (a discard: nobody needs it).  Object lock
 * held. */
void pager_page_pins_clear_locked(struct pager_object *po, uint64_t page);

/* ---- stats.c ---------------------------------------------------------- */

/* Counts a swap-in of @ns nanoseconds in @hist. */
void pager_hist_add(struct pager_hist *hist, uint64_t ns);
/* Nanoseconds since an arbitrary start (CLOCK_MONOTONIC). */
uint64_t pager_now_ns(void);

/* ---- reclaim.c (the budget) ----------------------------------------- */

/* A page became present (the handler thread's fills): never blocks; wakes the
 * reclaimer when present_pages > high.  Any thread, no lock. */
void pager_reclaim_note_fill(struct pager *pager);
/* A thread with no lock held (pager_get_page, pager_pin) is about to make a
 * page present: if present_pages >= limit, it reclaims one batch itself
 * (direct reclaim; blocks).  Never called by the handler thread. */
void pager_reclaim_before_fill(struct pager *pager);

/* ---- evict.c -------------------------------------------------------- */

/*
 * pager_evict_list() that also counts, in *@evicted, the pages it released
 * (the reclaimer's measure of progress).  Same contract.
 */
int pager_evict_victims(struct pager *pager, const struct pager_victim *v, unsigned int n,
			uint64_t *evicted);

/* pager_destroy: frees the spare batch (no eviction running). */
void pager_evict_exit(struct pager *pager);

/* ---- reclaim.c ------------------------------------------------------ */

/* Installs @budget (checked and completed as pager_budget_start() does)
 * without starting the reclaimer thread: reclaim is then direct only.
 * pager_budget_start() is this plus the thread; tests use it alone.
 * Returns 0, -EINVAL, -EALREADY or -ENOMEM. */
int pager_reclaim_set_budget(struct pager *pager, const struct pager_budget *budget);
/* pager_destroy: stops the reclaimer and frees its state (after the
 * handler thread has stopped). */
void pager_reclaim_exit(struct pager *pager);

#endif /* UMBRA_PAGER_INTERNAL_H */
