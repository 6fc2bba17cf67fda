/*
 * Discarding: pages that no VM needs any more (in a clone family, a layer
 * page whose last user copied it or exited) stop costing host memory or a
 * swap slot, and become holes (docs/pager.md, "Discarding pages").
 *
 * pager_discard() works a run of idle pages at a time: under the object's
 * lock each page of the run is claimed (DISCARDING, its state before kept);
 * with no lock held the run is punched out of the memfd with one fallocate;
 * under the lock again each page becomes a HOLE and the counters follow its
 * state before; then the slots are freed and the faults waiting on the run
 * woken.  A busy page (an eviction's, a swap-in's, another discard's) ends a
 * run; the next run starts by waiting for it on the object's cond, as
 * pager_get_page does, holding no claim meanwhile.
 *
 * No notifier invalidation is made: the caller guarantees that no VM maps
 * the pages.  The punch itself makes the host kernel's MMU notifier drop
 * whatever KVM mapped of them.
 *
 * Locks: the object's lock to claim and to settle (a leaf); the punch, the
 * slot frees and the wake run with no pager lock held.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>

#include "pager_internal.h"

/* Pages claimed and punched at once (the slots to free are kept on the
 * stack). */
#define DISCARD_RUN 256u

/* A run of claimed pages [first, first + n) of one object. */
struct discard_run {
	struct pager_object *po;
	uint64_t first;
	unsigned int n;
	uint8_t was[DISCARD_RUN];	/* each page's state before the claim */
	uint64_t slots[DISCARD_RUN];	/* slots to free after the settle */
	unsigned int nslots;
};

/*
 * Waits until page @first of the run's object is idle, then claims it and
 * the idle pages that follow it, up to @end or DISCARD_RUN pages: they
 * become DISCARDING.  Object lock held (released while waiting).
 */
static void run_claim_locked(struct discard_run *r, uint64_t first, uint64_t end)
{
	struct pager_object *po = r->po;

	umbra_mutex_assert_held(&po->lock);
	while (pager_page_state_is_busy(po->state[first]))
		umbra_cond_wait(&po->cond, &po->lock);
	r->first = first;
	r->n = 0;
	r->nslots = 0;
	for (uint64_t p = first; p < end && r->n < DISCARD_RUN; p++) {
		if (pager_page_state_is_busy(po->state[p]))
			break;
		r->was[r->n++] = po->state[p];
		po->state[p] = PAGER_PAGE_DISCARDING;
	}
}

/* The punch failed: every page of the run gets its state back.  Object lock
 * held. */
static void run_restore_locked(struct discard_run *r)
{
	struct pager_object *po = r->po;

	umbra_mutex_assert_held(&po->lock);
	for (unsigned int i = 0; i < r->n; i++)
		po->state[r->first + i] = r->was[i];
	pthread_cond_broadcast(&po->cond);
}

/*
 * The run is punched: each page becomes a HOLE, without pins; what it held
 * leaves the counters (a present page, a slot to free, a lost page).
 * Object lock held.
 */
static void run_settle_locked(struct discard_run *r)
{
	struct pager_object *po = r->po;

	umbra_mutex_assert_held(&po->lock);
	for (unsigned int i = 0; i < r->n; i++) {
		uint64_t page = r->first + i;

		switch (r->was[i]) {
		case PAGER_PAGE_RESIDENT:
			pager_page_absent_locked(po);
			break;
		case PAGER_PAGE_CLEAN:
			pager_page_absent_locked(po);
			r->slots[r->nslots++] = po->slot[page];
			break;
		case PAGER_PAGE_SWAPPED:
			po->swapped--;
			r->slots[r->nslots++] = po->slot[page];
			break;
		case PAGER_PAGE_LOST:
			/* Counted present from its loss (page_lose). */
			pager_page_absent_locked(po);
			po->lost--;
			if (po->lost_err)
				po->lost_err[page] = 0;
			break;
		default:	/* HOLE: nothing held */
			break;
		}
		if (r->was[i] != PAGER_PAGE_HOLE)
			po->discarded++;
		po->slot[page] = PAGER_NO_SLOT;
		pager_page_pins_clear_locked(po, page);
		po->state[page] = PAGER_PAGE_HOLE;
	}
	pthread_cond_broadcast(&po->cond);
}

/* Claims, punches and settles one run from @first; returns 0 and the first
 * page after the run in *@next, or the punch's -errno (the run restored). */
static int run_discard(struct discard_run *r, uint64_t first, uint64_t end, uint64_t *next)
{
	struct pager_object *po = r->po;
	int ret = 0;

	umbra_mutex_lock(&po->lock);
	run_claim_locked(r, first, end);
	umbra_mutex_unlock(&po->lock);
	if (fallocate(po->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)(r->first * PAGER_PAGE_SIZE), (off_t)r->n * PAGER_PAGE_SIZE) < 0)
		ret = -errno;
	umbra_mutex_lock(&po->lock);
	if (ret)
		run_restore_locked(r);
	else
		run_settle_locked(r);
	umbra_mutex_unlock(&po->lock);
	for (unsigned int i = 0; i < r->nslots; i++)
		pager_swap_free(po->pager->swap, r->slots[i]);
	/* A fault queued on a claimed page retries: a hole (zero fill), or
	 * the state it had. */
	pager_uffd_wake(po->pager, pager_page_addr(po, r->first), (uint64_t)r->n * PAGER_PAGE_SIZE);
	*next = r->first + r->n;
	return ret;
}

int pager_discard(struct pager *pager, int id, uint64_t first, uint64_t npages)
{
	struct pager_object *po;
	struct discard_run r;
	uint64_t p, end;
	int ret = 0;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
				   "pager_discard with a shadow lock held");
	po = pager_object_get(pager, id);
	if (!po || !npages || first >= po->npages || npages > po->npages - first)
		return -EINVAL;
	r.po = po;
	end = first + npages;
	for (p = first; p < end && !ret;)
		ret = run_discard(&r, p, end, &p);
	return ret;
}
