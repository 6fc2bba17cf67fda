/*
 * The pager: memory objects whose pages are evicted to swap slots (an
 * invalidation per run, one batched write, a hole punched in the memfd) and
 * brought back with their content on any access (docs/pager.md, "The pager").
 *
 * Each page has a state (pager_internal.h) changed under its object's lock.
 * A thread that finds a page RESIDENT/CLEAN (eviction), SWAPPED (swap-in) or
 * idle in any state (a discard, discard.c) marks it busy and then owns it:
 * it does the I/O and the ioctls with no lock held, sets the final state
 * under the lock, broadcasts the object's cond and wakes the page's waiting
 * faults.  Whoever else meets a busy page waits
 * (get_page) or leaves the fault to the owner (the handler thread), so a page
 * is read from swap once however many threads fault on it.  A page whose
 * slot cannot be read is lost: its user is told (ops.page_lost) and a poison
 * page is installed, so that no faulting thread waits forever.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pager_internal.h"

/* Sets @page's final state (from a busy one), wakes the waiters. */
static void page_settle_locked(struct pager_object *po, uint64_t page, enum pager_page_state st)
{
	umbra_mutex_assert_held(&po->lock);
	po->state[page] = (uint8_t)st;
	pthread_cond_broadcast(&po->cond);
}

int pager_create(struct pager_swap *swap, struct pager **out)
{
	struct pager *pager;
	int ret;

	if (!swap || !out)
		return -EINVAL;
	pager = calloc(1, sizeof(*pager));
	if (!pager)
		return -ENOMEM;
	pager->swap = swap;
	pager->uffd = -1;
	atomic_init(&pager->present_pages, 0);
	atomic_init(&pager->evictions, 0);
	atomic_init(&pager->refault_window, PAGER_REFAULT_WINDOW_DEFAULT);
	pager->stop_fd = -1;
	umbra_mutex_init(&pager->add_lock, "pager.add_lock", UMBRA_LOCK_RANK_NONE);
	ret = pager_uffd_open(pager);
	if (ret)
		goto free_pager;
	ret = pager_uffd_start(pager);
	if (ret)
		goto close_uffd;
	*out = pager;
	return 0;
close_uffd:
	close(pager->uffd);
free_pager:
	umbra_mutex_exit(&pager->add_lock);
	free(pager);
	return ret;
}

static void object_free(struct pager_object *po)
{
	pthread_cond_destroy(&po->cond);
	umbra_mutex_exit(&po->lock);
	free(po->state);
	free(po->slot);
	free(po->evicted_at);
	free(po->pins);
	free(po->lost_err);
	free(po);
}

void pager_set_discard_at_destroy(struct pager *pager, bool discard)
{
	__atomic_store_n(&pager->discard_at_destroy, discard, __ATOMIC_RELEASE);
}

void pager_set_nonblocking(struct pager *pager, bool nonblocking)
{
	__atomic_store_n(&pager->nonblocking, nonblocking, __ATOMIC_RELEASE);
}

/* Brings every page of @po back (unless the contents are discarded) and
 * unregisters its mapping. */
static void object_unregister(struct pager *pager, struct pager_object *po)
{
	bool discard = __atomic_load_n(&pager->discard_at_destroy, __ATOMIC_ACQUIRE);

	for (uint64_t p = 0; p < po->npages && !discard; p++) {
		if (pager_is_swapped(pager, po->id, p))
			(void)pager_get_page(pager, po->id, p);
	}
	(void)pager_uffd_protect(pager, po->host, po->npages * PAGER_PAGE_SIZE, false);
	(void)pager_uffd_unregister(pager, po->host, po->npages * PAGER_PAGE_SIZE);
}

/* Frees @po's slots and @po (the handler thread has stopped). */
static void object_release(struct pager *pager, struct pager_object *po)
{
	for (uint64_t p = 0; p < po->npages; p++) {
		if (po->slot[p] != PAGER_NO_SLOT)
			pager_swap_free(pager->swap, po->slot[p]);
	}
	notifier_object_put(po->obj);
	object_free(po);
}

void pager_destroy(struct pager *pager)
{
	if (!pager)
		return;
	pager_budget_stop(pager);
	for (int i = 0; i < pager->nr_objects; i++)
		object_unregister(pager, pager->objects[i]);
	/* A message read before the unregistration may still be handled:
	 * the objects are freed only once the handler has stopped. */
	pager_uffd_stop(pager);
	pager_reclaim_exit(pager);
	pager_evict_exit(pager);
	for (int i = 0; i < pager->nr_objects; i++)
		object_release(pager, pager->objects[i]);
	close(pager->uffd);
	umbra_mutex_exit(&pager->add_lock);
	free(pager);
}

static int object_alloc(struct pager *pager, struct notifier_object *obj, int memfd, void *host,
			uint64_t npages, struct pager_object **out)
{
	struct pager_object *po = calloc(1, sizeof(*po));

	if (!po)
		return -ENOMEM;
	umbra_mutex_init(&po->lock, "pager.object.lock", UMBRA_LOCK_RANK_PAGER_OBJECT);
	pthread_cond_init(&po->cond, NULL);
	po->state = malloc(npages * sizeof(*po->state));
	po->slot = malloc(npages * sizeof(*po->slot));
	po->evicted_at = calloc(npages, sizeof(*po->evicted_at));
	if (!po->state || !po->slot || !po->evicted_at) {
		object_free(po);
		return -ENOMEM;
	}
	memset(po->state, PAGER_PAGE_HOLE, npages * sizeof(*po->state));
	for (uint64_t p = 0; p < npages; p++)
		po->slot[p] = PAGER_NO_SLOT;
	po->pager = pager;
	po->obj = obj;
	po->memfd = memfd;
	po->host = host;
	po->npages = npages;
	*out = po;
	return 0;
}

/*
 * Marks RESIDENT the pages of @po that hold data in its memfd (the rest stay
 * HOLE) and counts them in po->present.  The memfd's file offset is kept.
 * Returns 0 or lseek's -errno.
 */
static int object_scan_data(struct pager_object *po)
{
	off_t size = (off_t)(po->npages * PAGER_PAGE_SIZE);
	off_t pos = lseek(po->memfd, 0, SEEK_CUR), data, hole;
	int ret = 0;

	if (pos < 0)
		return -errno;
	for (off_t off = 0; off < size; off = hole) {
		data = lseek(po->memfd, off, SEEK_DATA);
		if (data < 0) {
			ret = errno == ENXIO ? 0 : -errno;
			break;
		}
		if (data >= size)
			break;
		hole = lseek(po->memfd, data, SEEK_HOLE);
		if (hole < 0) {
			ret = -errno;
			break;
		}
		if (hole > size)
			hole = size;
		for (uint64_t p = (uint64_t)data / PAGER_PAGE_SIZE;
		     p < ((uint64_t)hole + PAGER_PAGE_SIZE - 1) / PAGER_PAGE_SIZE; p++) {
			po->state[p] = PAGER_PAGE_RESIDENT;
			po->present++;
		}
	}
	if (lseek(po->memfd, pos, SEEK_SET) < 0 && !ret)
		ret = -errno;
	return ret;
}

int pager_add_object(struct pager *pager, struct notifier_object *obj, int memfd, void *host,
		     uint64_t size, int *id)
{
	struct pager_object *po;
	int ret;

	if (!pager || !obj || memfd < 0 || !host || !size || size % PAGER_PAGE_SIZE ||
	    (uintptr_t)host % PAGER_PAGE_SIZE || size / PAGER_PAGE_SIZE != notifier_object_npages(obj))
		return -EINVAL;
	umbra_mutex_lock(&pager->add_lock);
	ret = -ENOSPC;
	if (pager->nr_objects == PAGER_MAX_OBJECTS)
		goto unlock;
	ret = object_alloc(pager, obj, memfd, host, size / PAGER_PAGE_SIZE, &po);
	if (ret)
		goto unlock;
	ret = object_scan_data(po);
	if (!ret)
		ret = pager_uffd_register(pager, host, size);
	if (ret) {
		object_free(po);
		goto unlock;
	}
	notifier_object_get(obj);
	po->id = pager->nr_objects;
	atomic_fetch_add(&pager->present_pages, po->present);
	pager->objects[po->id] = po;
	__atomic_store_n(&pager->nr_objects, po->id + 1, __ATOMIC_RELEASE);
	*id = po->id;
unlock:
	umbra_mutex_unlock(&pager->add_lock);
	return ret;
}

void pager_set_ops(struct pager *pager, const struct pager_ops *ops, void *priv)
{
	if (ops)
		pager->ops = *ops;
	else
		memset(&pager->ops, 0, sizeof(pager->ops));
	pager->ops_priv = priv;
}

void pager_set_refault_window(struct pager *pager, uint64_t pages)
{
	atomic_store(&pager->refault_window, pages);
}

struct pager_object *pager_object_get(struct pager *pager, int id)
{
	if (!pager || id < 0 || id >= __atomic_load_n(&pager->nr_objects, __ATOMIC_ACQUIRE))
		return NULL;
	return pager->objects[id];
}

struct pager_object *pager_object_of(struct pager *pager, uint64_t addr, uint64_t *page)
{
	int n = __atomic_load_n(&pager->nr_objects, __ATOMIC_ACQUIRE);

	for (int i = 0; i < n; i++) {
		struct pager_object *po = pager->objects[i];
		uint64_t base = (uintptr_t)po->host;

		if (addr >= base && addr - base < po->npages * PAGER_PAGE_SIZE) {
			*page = (addr - base) / PAGER_PAGE_SIZE;
			return po;
		}
	}
	return NULL;
}

/* ---- page states the budget and eviction use ------------------------- */

bool pager_page_is_evictable_locked(const struct pager_object *po, uint64_t page)
{
	uint8_t st = po->state[page];

	umbra_mutex_assert_held((struct umbra_mutex *)&po->lock);
	if (st != PAGER_PAGE_RESIDENT && st != PAGER_PAGE_CLEAN)
		return false;
	return !po->pins || !po->pins[page];
}

void pager_page_absent_locked(struct pager_object *po)
{
	umbra_mutex_assert_held(&po->lock);
	po->present--;
	atomic_fetch_sub(&po->pager->present_pages, 1);
}

void pager_page_evicted_locked(struct pager_object *po, uint64_t page)
{
	umbra_mutex_assert_held(&po->lock);
	po->state[page] = PAGER_PAGE_SWAPPED;
	pager_page_absent_locked(po);
	po->evicted_at[page] = atomic_fetch_add(&po->pager->evictions, 1) + 1;
}

/* A page of @po became present (zero fill, swap-in, lost page). */
static void page_present_locked(struct pager_object *po)
{
	umbra_mutex_assert_held(&po->lock);
	po->present++;
	atomic_fetch_add(&po->pager->present_pages, 1);
}

/* ---- bringing pages back -------------------------------------------- */

/* The content of a lost page. */
static const uint64_t poison_page[PAGER_PAGE_SIZE / 8] __attribute__((aligned(PAGER_PAGE_SIZE))) = {
	[0 ... PAGER_PAGE_SIZE / 8 - 1] = PAGER_POISON_WORD,
};

static void page_lost_report(struct pager_object *po, uint64_t page, int err, pid_t tid)
{
	struct pager *pager = po->pager;

	if (pager->ops.page_lost)
		pager->ops.page_lost(pager->ops_priv, po->id, page, err, tid);
}

/* Installs the poison page at @page (not write-protected), unless a page is
 * there already.  Returns 0 or the ioctl's -errno (-EEXIST: already there). */
static int page_install_poison(struct pager_object *po, uint64_t page)
{
	return pager_uffd_copy(po->pager, pager_page_addr(po, page), poison_page, false);
}

/* The error recorded for the LOST page @page. */
static int page_lost_err_locked(const struct pager_object *po, uint64_t page)
{
	return po->lost_err && po->lost_err[page] ? -(int)po->lost_err[page] : -EIO;
}

/*
 * The read of @page's slot failed with @err (the caller owns the page,
 * SWAPPING_IN): the page is lost.  Its user is told for thread @tid before
 * anyone waiting is released, a poison page is installed, the slot freed,
 * and the waiting faults woken.  A lost page is counted present from here
 * on, whether this install succeeded or the next fault's will (what
 * pager_discard takes back).
 */
static void page_lose(struct pager_object *po, uint64_t page, int err, pid_t tid)
{
	struct pager *pager = po->pager;
	uint64_t slot = po->slot[page];	/* the owner's: stable while busy */

	page_lost_report(po, page, err, tid);
	(void)page_install_poison(po, page);
	umbra_mutex_lock(&po->lock);
	if (!po->lost_err)
		po->lost_err = calloc(po->npages, sizeof(*po->lost_err));
	if (po->lost_err && -err > 0 && -err <= UINT8_MAX)
		po->lost_err[page] = (uint8_t)-err;
	po->slot[page] = PAGER_NO_SLOT;
	po->read_errors++;
	po->swapped--;
	po->lost++;
	page_present_locked(po);
	page_settle_locked(po, page, PAGER_PAGE_LOST);
	umbra_mutex_unlock(&po->lock);
	pager_swap_free(pager->swap, slot);
	pager_uffd_wake(pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
}

/* Counts a swap-in of @page that started at @start_ns (a refault if it was
 * evicted fewer than refault_window evictions ago). */
static void page_swapped_in_locked(struct pager_object *po, uint64_t page, uint64_t start_ns)
{
	struct pager *pager = po->pager;
	uint64_t since = atomic_load(&pager->evictions) - po->evicted_at[page];

	umbra_mutex_assert_held(&po->lock);
	po->swapins++;
	po->swapped--;
	if (since < atomic_load(&pager->refault_window))
		po->refaults++;
	pager_hist_add(&po->swapin_ns, pager_now_ns() - start_ns);
	page_present_locked(po);
}

/*
 * Swap @page in for thread @tid: the caller set it SWAPPING_IN.  Reads its
 * slot and installs it write-protected (CLEAN, the slot kept as its swap
 * cache).  A read error loses the page (page_lose) and is returned.
 */
static int page_swap_in(struct pager_object *po, uint64_t page, pid_t tid)
{
	struct pager *pager = po->pager;
	uint64_t buf[PAGER_PAGE_SIZE / 8];	/* no allocation that could fail */
	struct pager_io io = { .slot = po->slot[page], .buf = buf };
	enum pager_page_state st = PAGER_PAGE_CLEAN;
	uint64_t free_slot = PAGER_NO_SLOT, start = pager_now_ns();
	int ret;

	ret = pager_swap_read(pager->swap, &io, 1);
	if (ret) {
		page_lose(po, page, ret, tid);
		return ret;
	}
	ret = pager_uffd_copy(pager, pager_page_addr(po, page), buf, true);
	if (ret == -EEXIST) {
		/* Filled behind the mapping (a write() on the memfd): what is
		 * there is newer than the slot. */
		st = PAGER_PAGE_RESIDENT;
		free_slot = io.slot;
		ret = 0;
	}
	umbra_mutex_lock(&po->lock);
	if (ret) {
		/* The install failed (-ENOMEM...): the page stays out, a
		 * later access tries again. */
		page_settle_locked(po, page, PAGER_PAGE_SWAPPED);
	} else {
		page_swapped_in_locked(po, page, start);
		if (free_slot != PAGER_NO_SLOT)
			po->slot[page] = PAGER_NO_SLOT;
		page_settle_locked(po, page, st);
	}
	umbra_mutex_unlock(&po->lock);
	if (free_slot != PAGER_NO_SLOT)
		pager_swap_free(pager->swap, free_slot);
	pager_uffd_wake(pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
	return ret;
}

/*
 * Zero-fill @page, a hole nobody wrote (the caller set it SWAPPING_IN from
 * @was: HOLE, or RESIDENT for a hole punched behind the pager's back, which
 * is already counted present).  Returns 0 or the ioctl's error (the page
 * goes back to @was).
 */
static int page_zero_fill(struct pager_object *po, uint64_t page, enum pager_page_state was)
{
	int ret = pager_uffd_zero(po->pager, pager_page_addr(po, page));

	if (ret == -EEXIST)
		ret = 0;	/* filled behind the mapping: in memory anyway */
	umbra_mutex_lock(&po->lock);
	if (!ret) {
		po->zero_fills++;
		if (was == PAGER_PAGE_HOLE)
			page_present_locked(po);
	}
	page_settle_locked(po, page, ret ? was : PAGER_PAGE_RESIDENT);
	umbra_mutex_unlock(&po->lock);
	pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
	return ret;
}

/*
 * A fault on the LOST page @page (the caller set it SWAPPING_IN), queued
 * from another thread before the poison page was installed, or after its
 * install failed: that thread is told, the poison page installed if it is
 * still missing (the page is counted present already), the fault woken.
 */
static void page_lost_fault(struct pager_object *po, uint64_t page, int err, pid_t tid)
{
	page_lost_report(po, page, err, tid);
	(void)page_install_poison(po, page);
	umbra_mutex_lock(&po->lock);
	page_settle_locked(po, page, PAGER_PAGE_LOST);
	umbra_mutex_unlock(&po->lock);
	pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
}

void pager_fault_missing(struct pager_object *po, uint64_t page, pid_t tid)
{
	enum pager_page_state st;
	int err = 0;

	umbra_mutex_lock(&po->lock);
	st = po->state[page];
	if (st == PAGER_PAGE_SWAPPED || st == PAGER_PAGE_RESIDENT || st == PAGER_PAGE_HOLE ||
	    st == PAGER_PAGE_LOST)
		po->state[page] = PAGER_PAGE_SWAPPING_IN;
	if (st == PAGER_PAGE_LOST)
		err = page_lost_err_locked(po, page);
	umbra_mutex_unlock(&po->lock);
	switch (st) {
	case PAGER_PAGE_SWAPPED:
		/* A read error loses the page: the thread reads poison. */
		(void)page_swap_in(po, page, tid);
		break;
	case PAGER_PAGE_RESIDENT:
	case PAGER_PAGE_HOLE:
		(void)page_zero_fill(po, page, st);
		break;
	case PAGER_PAGE_LOST:
		page_lost_fault(po, page, err, tid);
		return;
	case PAGER_PAGE_CLEAN:
		/* Installed since the fault was queued. */
		pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
		return;
	default:
		/* Busy: its owner wakes the fault when it settles the page. */
		return;
	}
	pager_reclaim_note_fill(po->pager);
}

void pager_fault_wp(struct pager_object *po, uint64_t page)
{
	uint64_t free_slot = PAGER_NO_SLOT;
	enum pager_page_state st;

	umbra_mutex_lock(&po->lock);
	st = po->state[page];
	if (st == PAGER_PAGE_CLEAN || st == PAGER_PAGE_RESIDENT) {
		/* The first write: the slot no longer holds the content.
		 * Busy while unprotecting, so that no eviction protects and
		 * copies it in between (the write would then be lost). */
		free_slot = po->slot[page];
		po->slot[page] = PAGER_NO_SLOT;
		po->state[page] = PAGER_PAGE_SWAPPING_IN;
	}
	umbra_mutex_unlock(&po->lock);
	switch (st) {
	case PAGER_PAGE_CLEAN:
	case PAGER_PAGE_RESIDENT:
		if (free_slot != PAGER_NO_SLOT)
			pager_swap_free(po->pager->swap, free_slot);
		(void)pager_uffd_protect(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE, false);
		umbra_mutex_lock(&po->lock);
		page_settle_locked(po, page, PAGER_PAGE_RESIDENT);
		umbra_mutex_unlock(&po->lock);
		pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
		break;
	case PAGER_PAGE_EVICTING:
	case PAGER_PAGE_SWAPPING_IN:
	case PAGER_PAGE_DISCARDING:
		/* Busy: its owner wakes the writer when it settles the page. */
		break;
	default:
		/* Evicted since (the retry takes a missing fault), or a page
		 * that is not write-protected: let the write retry. */
		pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
		break;
	}
}

int pager_page_get(struct pager_object *po, uint64_t page, pid_t tid)
{
	bool reclaimed = false;
	int err;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
				   "pager_get_page with a shadow lock held");
	umbra_mutex_lock(&po->lock);
	for (;;) {
		enum pager_page_state st = po->state[page];

		switch (st) {
		case PAGER_PAGE_RESIDENT:
		case PAGER_PAGE_CLEAN:
			umbra_mutex_unlock(&po->lock);
			return 0;
		case PAGER_PAGE_LOST:
			err = page_lost_err_locked(po, page);
			umbra_mutex_unlock(&po->lock);
			page_lost_report(po, page, err, tid);
			return err;
		case PAGER_PAGE_SWAPPED:
		case PAGER_PAGE_HOLE:
			if (!reclaimed) {
				/* Let the budget make room first (it may
				 * evict, so look at the page again after). */
				umbra_mutex_unlock(&po->lock);
				pager_reclaim_before_fill(po->pager);
				reclaimed = true;
				umbra_mutex_lock(&po->lock);
				break;
			}
			po->state[page] = PAGER_PAGE_SWAPPING_IN;
			umbra_mutex_unlock(&po->lock);
			if (st == PAGER_PAGE_HOLE)
				return page_zero_fill(po, page, st);
			return page_swap_in(po, page, tid);
		default:
			umbra_cond_wait(&po->cond, &po->lock);
			break;
		}
	}
}

int pager_get_page(struct pager *pager, int id, uint64_t page)
{
	struct pager_object *po = pager_object_get(pager, id);

	if (!po || page >= po->npages)
		return -EINVAL;
	return pager_page_get(po, page, gettid());
}

bool pager_is_swapped(struct pager *pager, int id, uint64_t page)
{
	struct pager_object *po = pager_object_get(pager, id);
	bool swapped;

	if (!po || page >= po->npages)
		return false;
	umbra_mutex_lock(&po->lock);
	swapped = po->state[page] == PAGER_PAGE_SWAPPED;
	umbra_mutex_unlock(&po->lock);
	return swapped;
}

static int slot_get_page(void *priv, uint64_t page, bool write)
{
	struct pager_object *po = priv;

	(void)write;	/* a write to a clean page is caught by write-protect */
	return pager_get_page(po->pager, po->id, page);
}

/* Resident and usable as it is: in the memfd, dirty or clean (a write to
 * a clean page is caught by write-protect).  po->lock, a leaf here. */
static bool slot_is_resident(void *priv, uint64_t page)
{
	struct pager_object *po = priv;
	bool resident;

	if (page >= po->npages)
		return false;
	umbra_mutex_lock(&po->lock);
	resident = po->state[page] == PAGER_PAGE_RESIDENT || po->state[page] == PAGER_PAGE_CLEAN;
	umbra_mutex_unlock(&po->lock);
	return resident;
}

const struct shadow_slot_ops pager_slot_ops = {
	.get_page = slot_get_page,
	.is_resident = slot_is_resident,
};

void pager_object_slot(struct pager *pager, int id, struct shadow_slot *slot)
{
	struct pager_object *po = pager_object_get(pager, id);

	if (!po)
		return;
	slot->obj = po->obj;
	slot->host = po->host;
	slot->ops = &pager_slot_ops;
	slot->priv = po;
}
