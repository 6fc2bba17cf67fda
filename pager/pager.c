/*
 * The pager: memory objects whose pages are evicted to swap slots (an
 * invalidation per run, one batched write, a hole punched in the memfd) and
 * brought back with their content on any access (docs/pager.md, "The pager").
 *
 * Each page has a state (pager_internal.h) changed under its object's lock.
 * A thread that finds a page RESIDENT/CLEAN (eviction) or SWAPPED (swap-in)
 * marks it busy and then owns it: it does the I/O and the ioctls with no lock
 * held, sets the final state under the lock, broadcasts the object's cond and
 * wakes the page's waiting faults.  Whoever else meets a busy page waits
 * (get_page) or leaves the fault to the owner (the handler thread), so a page
 * is read from swap once however many threads fault on it.
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
	free(po->pins);	/* STUB: helper P1 */
	free(po);
}

/* Brings every page of @po back and unregisters its mapping. */
static void object_unregister(struct pager *pager, struct pager_object *po)
{
	for (uint64_t p = 0; p < po->npages; p++) {
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
	po->state = calloc(npages, sizeof(*po->state));
	po->slot = malloc(npages * sizeof(*po->slot));
	po->pins = calloc(npages, sizeof(*po->pins));	/* STUB: helper P1 */
	if (!po->state || !po->slot || !po->pins) {
		free(po->pins);
		free(po->state);
		free(po->slot);
		free(po);
		return -ENOMEM;
	}
	for (uint64_t p = 0; p < npages; p++)
		po->slot[p] = PAGER_NO_SLOT;
	po->pager = pager;
	po->obj = obj;
	po->memfd = memfd;
	po->host = host;
	po->npages = npages;
	umbra_mutex_init(&po->lock, "pager.object.lock", UMBRA_LOCK_RANK_PAGER_OBJECT);
	pthread_cond_init(&po->cond, NULL);
	*out = po;
	return 0;
}

/* STUB: helper P1: the pages a memfd holds, from st_blocks. */
static uint64_t memfd_present_pages(int memfd, uint64_t npages)
{
	struct stat sb;
	uint64_t pages;

	if (fstat(memfd, &sb) < 0)
		return 0;
	pages = (uint64_t)sb.st_blocks * 512 / PAGER_PAGE_SIZE;
	return pages < npages ? pages : npages;
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
	ret = pager_uffd_register(pager, host, size);
	if (ret) {
		object_free(po);
		goto unlock;
	}
	notifier_object_get(obj);
	pager->present_pages += memfd_present_pages(memfd, po->npages); /* STUB: helper P1 */
	po->id = pager->nr_objects;
	pager->objects[po->id] = po;
	__atomic_store_n(&pager->nr_objects, po->id + 1, __ATOMIC_RELEASE);
	*id = po->id;
unlock:
	umbra_mutex_unlock(&pager->add_lock);
	return ret;
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

/* ---- bringing pages back -------------------------------------------- */

/*
 * Swap @page in: the caller set it SWAPPING_IN.  Reads its slot and installs
 * it write-protected (CLEAN, the slot kept as its swap cache).  On a read
 * error the page goes back to SWAPPED and the error is returned.
 */
static int page_swap_in(struct pager_object *po, uint64_t page)
{
	struct pager *pager = po->pager;
	struct pager_io io = { .slot = po->slot[page] };
	enum pager_page_state st = PAGER_PAGE_CLEAN;
	uint64_t free_slot = PAGER_NO_SLOT;
	int ret;

	io.buf = aligned_alloc(PAGER_PAGE_SIZE, PAGER_PAGE_SIZE);
	if (!io.buf)
		ret = -ENOMEM;
	else
		ret = pager_swap_read(pager->swap, &io, 1);
	if (!ret) {
		ret = pager_uffd_copy_wp(pager, pager_page_addr(po, page), io.buf);
		if (ret == -EEXIST) {
			/* Filled behind the mapping (a write() on the memfd):
			 * what is there is newer than the slot. */
			st = PAGER_PAGE_RESIDENT;
			free_slot = io.slot;
			ret = 0;
		}
	}
	free(io.buf);
	umbra_mutex_lock(&po->lock);
	if (ret) {
		po->read_errors++;
		page_settle_locked(po, page, PAGER_PAGE_SWAPPED);
	} else {
		po->swapins++;
		po->swapped--;
		if (free_slot != PAGER_NO_SLOT)
			po->slot[page] = PAGER_NO_SLOT;
		page_settle_locked(po, page, st);
	}
	umbra_mutex_unlock(&po->lock);
	if (free_slot != PAGER_NO_SLOT)
		pager_swap_free(pager->swap, free_slot);
	if (!ret && free_slot == PAGER_NO_SLOT) {	/* STUB: helper P1 */
		pager->present_pages++;
		pager_reclaim_note_fill(pager);
	}
	pager_uffd_wake(pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
	return ret;
}

/* Zero-fill the never-written hole @page (the caller set it SWAPPING_IN). */
static void page_zero_fill(struct pager_object *po, uint64_t page)
{
	int ret = pager_uffd_zero(po->pager, pager_page_addr(po, page));

	umbra_mutex_lock(&po->lock);
	if (!ret)
		po->zero_fills++;
	page_settle_locked(po, page, PAGER_PAGE_RESIDENT);
	umbra_mutex_unlock(&po->lock);
	if (!ret) {	/* STUB: helper P1 */
		po->pager->present_pages++;
		pager_reclaim_note_fill(po->pager);
	}
	pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
}

void pager_fault_missing(struct pager_object *po, uint64_t page)
{
	enum pager_page_state st;

	umbra_mutex_lock(&po->lock);
	st = po->state[page];
	if (st == PAGER_PAGE_SWAPPED || st == PAGER_PAGE_RESIDENT)
		po->state[page] = PAGER_PAGE_SWAPPING_IN;
	umbra_mutex_unlock(&po->lock);
	switch (st) {
	case PAGER_PAGE_SWAPPED:
		/* A read error leaves the faulting thread waiting: no page
		 * is better than a wrong one (counted in read_errors). */
		(void)page_swap_in(po, page);
		break;
	case PAGER_PAGE_RESIDENT:
		page_zero_fill(po, page);
		break;
	case PAGER_PAGE_CLEAN:
		/* Installed since the fault was queued. */
		pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
		break;
	default:
		/* Busy: its owner wakes the fault when it settles the page. */
		break;
	}
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
	case PAGER_PAGE_SWAPPED:
		/* Evicted since: the retry takes a missing fault. */
		pager_uffd_wake(po->pager, pager_page_addr(po, page), PAGER_PAGE_SIZE);
		break;
	default:
		/* Busy: its owner wakes the writer when it settles the page. */
		break;
	}
}

int pager_get_page(struct pager *pager, int id, uint64_t page)
{
	struct pager_object *po = pager_object_get(pager, id);
	bool reclaimed = false;	/* STUB: helper P1 */

	if (!po || page >= po->npages)
		return -EINVAL;
	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
				   "pager_get_page with a shadow lock held");
	umbra_mutex_lock(&po->lock);
	for (;;) {
		switch (po->state[page]) {
		case PAGER_PAGE_RESIDENT:
		case PAGER_PAGE_CLEAN:
			umbra_mutex_unlock(&po->lock);
			return 0;
		case PAGER_PAGE_SWAPPED:
			if (!reclaimed) {	/* STUB: helper P1 */
				umbra_mutex_unlock(&po->lock);
				pager_reclaim_before_fill(pager);
				reclaimed = true;
				umbra_mutex_lock(&po->lock);
				break;
			}
			po->state[page] = PAGER_PAGE_SWAPPING_IN;
			umbra_mutex_unlock(&po->lock);
			return page_swap_in(po, page);
		default:
			umbra_cond_wait(&po->cond, &po->lock);
			break;
		}
	}
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

const struct shadow_slot_ops pager_slot_ops = {
	.get_page = slot_get_page,
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

/* ---- statistics ----------------------------------------------------- */

static int object_stats_add(struct pager_object *po, struct pager_stats *st)
{
	struct stat sb;

	if (fstat(po->memfd, &sb) < 0)
		return -errno;
	umbra_mutex_lock(&po->lock);
	st->npages += po->npages;
	st->resident += po->npages - po->swapped;
	st->swapped += po->swapped;
	st->swapouts_io += po->swapouts_io;
	st->swapouts_cached += po->swapouts_cached;
	st->swapins += po->swapins;
	st->zero_fills += po->zero_fills;
	st->write_errors += po->write_errors;
	st->read_errors += po->read_errors;
	umbra_mutex_unlock(&po->lock);
	st->host_bytes += (uint64_t)sb.st_blocks * 512;
	return 0;
}

int pager_stats(struct pager *pager, int id, struct pager_stats *st)
{
	struct pager_object *po;
	int ret, n;

	memset(st, 0, sizeof(*st));
	if (id >= 0) {
		po = pager_object_get(pager, id);
		return po ? object_stats_add(po, st) : -EINVAL;
	}
	if (id != -1 || !pager)
		return -EINVAL;
	n = __atomic_load_n(&pager->nr_objects, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++) {
		ret = object_stats_add(pager->objects[i], st);
		if (ret)
			return ret;
	}
	return 0;
}

/* ---- STUB: helper P1: callbacks, pins, evictability ------------------ */

void pager_set_ops(struct pager *pager, const struct pager_ops *ops, void *priv)
{
	pager->ops = *ops;
	pager->ops_priv = priv;
}

int pager_pin(struct pager *pager, int id, uint64_t first, uint64_t npages)
{
	struct pager_object *po = pager_object_get(pager, id);
	int ret;

	if (!po || !npages || first >= po->npages || npages > po->npages - first)
		return -EINVAL;
	for (uint64_t p = first; p < first + npages; p++) {
		umbra_mutex_lock(&po->lock);
		po->pins[p]++;
		umbra_mutex_unlock(&po->lock);
		ret = pager_get_page(pager, id, p);
		if (ret) {
			pager_unpin(pager, id, first, p - first + 1);
			return ret;
		}
	}
	return 0;
}

void pager_unpin(struct pager *pager, int id, uint64_t first, uint64_t npages)
{
	struct pager_object *po = pager_object_get(pager, id);

	if (!po)
		return;
	umbra_mutex_lock(&po->lock);
	for (uint64_t p = first; p < first + npages && p < po->npages; p++)
		po->pins[p]--;
	umbra_mutex_unlock(&po->lock);
}

bool pager_page_is_evictable_locked(const struct pager_object *po, uint64_t page)
{
	uint8_t st = po->state[page];

	return (st == PAGER_PAGE_RESIDENT || st == PAGER_PAGE_CLEAN) && !po->pins[page];
}

void pager_page_evicted_locked(struct pager_object *po, uint64_t page)
{
	umbra_mutex_assert_held(&po->lock);
	po->state[page] = PAGER_PAGE_SWAPPED;
	po->pager->present_pages--;
}
