/*
 * Private to pager/: the pager, its objects and their page states
 * (pager.c), and the userfaultfd calls and handler thread (uffd.c).
 */
#ifndef UMBRA_PAGER_INTERNAL_H
#define UMBRA_PAGER_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "umbra/lock.h"
#include "umbra/pager.h"

/*
 * A page's state.  Every change happens under the object's lock; the two
 * busy states (EVICTING, SWAPPING_IN) belong to the one thread that set them,
 * which alone does the page's I/O and ioctls and, when it sets the final
 * state, broadcasts the object's condition variable and wakes the faults
 * waiting on the page (UFFDIO_WAKE).
 */
enum pager_page_state {
	PAGER_PAGE_RESIDENT,	/* in the memfd (or a never-written hole); dirty; no slot */
	PAGER_PAGE_CLEAN,	/* in the memfd, write-protected, equal to its slot */
	PAGER_PAGE_SWAPPED,	/* a hole; the content is only in its slot */
	PAGER_PAGE_EVICTING,	/* busy: an eviction owns it */
	PAGER_PAGE_SWAPPING_IN,	/* busy: a swap-in (or a zero fill) owns it */
};

#define PAGER_NO_SLOT UINT64_MAX

struct pager_object {
	struct pager *pager;
	int id;
	struct notifier_object *obj;	/* a reference */
	int memfd;
	char *host;
	uint64_t npages;
	/* lock (UMBRA_LOCK_RANK_PAGER_OBJECT): state[], slot[], the counters;
	 * cond is broadcast when a busy page gets its final state. */
	struct umbra_mutex lock;
	pthread_cond_t cond;
	uint8_t *state;			/* [npages] enum pager_page_state */
	uint64_t *slot;			/* [npages] PAGER_NO_SLOT or the swap slot */
	uint64_t swapped;
	uint64_t swapouts_io, swapouts_cached, swapins, zero_fills;
	uint64_t write_errors, read_errors;
	uint16_t *pins;			/* [npages] STUB: helper P1 (pager_pin) */
};

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
	/* STUB: helper P1: pages in memory over every object, approximated
	 * from st_blocks at add_object, +1 per fill, -1 per punch. */
	_Atomic uint64_t present_pages;
	/* STUB: helper P1: the user's callbacks (pager_set_ops). */
	struct pager_ops ops;
	void *ops_priv;
	/* The budget and the reclaimer (reclaim.c): NULL until the first
	 * pager_budget_start() or pager_reclaim(), then kept (published with
	 * release, read with acquire) until pager_destroy. */
	struct pager_reclaim *reclaim;
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
/* Install @buf at @addr (one page), write-protected.  -EEXIST if present. */
int pager_uffd_copy_wp(struct pager *pager, void *addr, const void *buf);
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
/* A missing fault on @page: swap it in, zero-fill a never-written hole, or
 * leave it to the thread that owns it. */
void pager_fault_missing(struct pager_object *po, uint64_t page);
/* A write-protect fault on @page: a clean page becomes dirty. */
void pager_fault_wp(struct pager_object *po, uint64_t page);

/* STUB: helper P1: may @page be evicted: RESIDENT or CLEAN, and not
 * pinned.  Object lock held.  evict.c's pick and the reclaimer's policies
 * use it. */
bool pager_page_is_evictable_locked(const struct pager_object *po, uint64_t page);
/* STUB: helper P1: @page was punched and becomes SWAPPED (state,
 * present_pages).  Object lock held.  evict.c's settle calls it. */
void pager_page_evicted_locked(struct pager_object *po, uint64_t page);

/* ---- evict.c -------------------------------------------------------- */

/*
 * pager_evict_list() that also counts, in *@evicted, the pages it released
 * (the reclaimer's measure of progress).  Same contract.
 */
int pager_evict_victims(struct pager *pager, const struct pager_victim *v, unsigned int n,
			uint64_t *evicted);

/* ---- reclaim.c ------------------------------------------------------ */

/* A page became present (any thread, the handler's included): never
 * blocks; wakes the reclaimer when present_pages > high. */
void pager_reclaim_note_fill(struct pager *pager);
/* A thread with no lock held (pager_get_page, pager_pin) is about to make a
 * page present: if present_pages >= limit, it reclaims one batch itself
 * (direct reclaim; blocks).  Never called by the handler thread. */
void pager_reclaim_before_fill(struct pager *pager);
/* Installs @budget (checked and completed as pager_budget_start() does)
 * without starting the reclaimer thread: reclaim is then direct only.
 * pager_budget_start() is this plus the thread; tests use it alone.
 * Returns 0, -EINVAL, -EALREADY or -ENOMEM. */
int pager_reclaim_set_budget(struct pager *pager, const struct pager_budget *budget);
/* pager_destroy: stops the reclaimer and frees its state (after the
 * handler thread has stopped). */
void pager_reclaim_exit(struct pager *pager);

#endif /* UMBRA_PAGER_INTERNAL_H */
