/*
 * Pins: a page with a pin count above zero stays resident (eviction and the
 * budget's reclaim skip it, pager_page_is_evictable_locked), for the VMM's
 * resident set.  The counts live in a per-object array allocated at the
 * object's first pin.  A discarded page loses all its pins
 * (pager_page_pins_clear_locked, for discard.c).
 *
 * Locks: the object's lock around the counts; the swap-ins of pager_pin run
 * with no lock held (pager_page_get).
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "pager_internal.h"

#define PAGER_PIN_MAX UINT16_MAX

/* Drops one pin of each page of [first, end).  Object lock held. */
static void pins_drop_locked(struct pager_object *po, uint64_t first, uint64_t end)
{
	umbra_mutex_assert_held(&po->lock);
	if (!po->pins)
		return;
	for (uint64_t p = first; p < end; p++) {
		if (!po->pins[p])
			continue;	/* not pinned: an unbalanced unpin */
		if (!--po->pins[p])
			po->pinned--;
	}
}

void pager_page_pins_clear_locked(struct pager_object *po, uint64_t page)
{
	umbra_mutex_assert_held(&po->lock);
	if (!po->pins || !po->pins[page])
		return;
	po->pins[page] = 0;
	po->pinned--;
}

/* Takes one pin of each page of [first, end), or none: -EOVERFLOW,
 * -ENOMEM.  Object lock held. */
static int pins_take_locked(struct pager_object *po, uint64_t first, uint64_t end)
{
	umbra_mutex_assert_held(&po->lock);
	if (!po->pins) {
		po->pins = calloc(po->npages, sizeof(*po->pins));
		if (!po->pins)
			return -ENOMEM;
	}
	for (uint64_t p = first; p < end; p++) {
		if (po->pins[p] == PAGER_PIN_MAX)
			return -EOVERFLOW;
	}
	for (uint64_t p = first; p < end; p++) {
		if (!po->pins[p]++)
			po->pinned++;
	}
	return 0;
}

static struct pager_object *pin_object(struct pager *pager, int id, uint64_t first,
				       uint64_t npages)
{
	struct pager_object *po = pager_object_get(pager, id);

	if (!po || !npages || first >= po->npages || npages > po->npages - first)
		return NULL;
	return po;
}

int pager_pin(struct pager *pager, int id, uint64_t first, uint64_t npages)
{
	struct pager_object *po = pin_object(pager, id, first, npages);
	pid_t tid = gettid();
	int ret;

	if (!po)
		return -EINVAL;
	/* Pinned first, so that no eviction picks a page once it is in. */
	umbra_mutex_lock(&po->lock);
	ret = pins_take_locked(po, first, first + npages);
	umbra_mutex_unlock(&po->lock);
	if (ret)
		return ret;
	for (uint64_t p = first; p < first + npages && !ret; p++)
		ret = pager_page_get(po, p, tid);
	if (ret)
		pager_unpin(pager, id, first, npages);
	return ret;
}

void pager_unpin(struct pager *pager, int id, uint64_t first, uint64_t npages)
{
	struct pager_object *po = pin_object(pager, id, first, npages);

	if (!po)
		return;
	umbra_mutex_lock(&po->lock);
	pins_drop_locked(po, first, first + npages);
	umbra_mutex_unlock(&po->lock);
}
