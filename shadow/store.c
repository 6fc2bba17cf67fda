/*
 * The in-memory swap store: evicts pages of a memory object (an
 * invalidation, then the contents saved and the page poisoned) and restores
 * them through the slot's get_page hook (docs/sharing.md, "Swapout: the store").
 *
 * Locks: the store's lock (below) only; eviction and the restore hook run
 * with no shadow lock held (asserted before the invalidation; the fault
 * path asserts it before get_page), since the invalidation's callbacks take
 * mmu_lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shadow_internal.h"

struct shadow_store {
	struct notifier_object *obj;
	char *host;
	uint64_t npages;
	/* lock (UMBRA_LOCK_RANK_SUBSCRIBER_LEAF): saved[], the counters,
	 * and the page contents while they move.  Taken with no shadow lock
	 * held (get_page runs outside them; evict outside the invalidation's
	 * callbacks). */
	struct umbra_mutex lock;
	void **saved;			/* [npages]: NULL = resident */
	uint64_t evictions, restores;
};

int shadow_store_create(struct notifier_object *obj, void *host, struct shadow_store **out)
{
	struct shadow_store *st;

	if (!obj || !host)
		return -EINVAL;
	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->npages = notifier_object_npages(obj);
	st->saved = calloc(st->npages, sizeof(*st->saved));
	if (!st->saved) {
		free(st);
		return -ENOMEM;
	}
	st->obj = obj;
	st->host = host;
	umbra_mutex_init(&st->lock, "shadow.store.lock", UMBRA_LOCK_RANK_SUBSCRIBER_LEAF);
	*out = st;
	return 0;
}

void shadow_store_destroy(struct shadow_store *st)
{
	if (!st)
		return;
	for (uint64_t p = 0; p < st->npages; p++)
		free(st->saved[p]);
	umbra_mutex_exit(&st->lock);
	free(st->saved);
	free(st);
}

int shadow_store_evict(struct shadow_store *st, uint64_t page)
{
	struct notifier_range range;
	void *buf;
	int ret;

	if (page >= st->npages)
		return -EINVAL;
	buf = malloc(SHADOW_PAGE_SIZE);
	if (!buf)
		return -ENOMEM;
	notifier_range_init(&range, st->obj, NOTIFIER_EVENT_SWAPOUT, page, page,
			    NOTIFIER_RANGE_MAY_BLOCK);
	shadow_assert_no_lock_held();
	ret = notifier_invalidate_range_start(&range);
	if (ret) {
		free(buf);
		return ret;
	}
	/* No VM maps the page now, and none can map it until the end. */
	umbra_mutex_lock(&st->lock);
	if (!st->saved[page]) {
		memcpy(buf, st->host + page * SHADOW_PAGE_SIZE, SHADOW_PAGE_SIZE);
		/* Poison: a stale translation would read this, not the data. */
		memset(st->host + page * SHADOW_PAGE_SIZE, SHADOW_STORE_POISON, SHADOW_PAGE_SIZE);
		st->saved[page] = buf;
		buf = NULL;
		st->evictions++;
	} else {
		ret = -EALREADY;
	}
	umbra_mutex_unlock(&st->lock);
	shadow_assert_no_lock_held();
	notifier_invalidate_range_end(&range);
	free(buf);
	return ret;
}

bool shadow_store_is_resident(struct shadow_store *st, uint64_t page)
{
	bool resident;

	umbra_mutex_lock(&st->lock);
	resident = page < st->npages && !st->saved[page];
	umbra_mutex_unlock(&st->lock);
	return resident;
}

void shadow_store_stats(struct shadow_store *st, uint64_t *evictions, uint64_t *restores)
{
	umbra_mutex_lock(&st->lock);
	*evictions = st->evictions;
	*restores = st->restores;
	umbra_mutex_unlock(&st->lock);
}

/* The restore hook: the slot's get_page. */
static int store_get_page(void *priv, uint64_t page, bool write)
{
	struct shadow_store *st = priv;

	(void)write;
	if (page >= st->npages)
		return -EINVAL;
	umbra_mutex_lock(&st->lock);
	if (st->saved[page]) {
		memcpy(st->host + page * SHADOW_PAGE_SIZE, st->saved[page], SHADOW_PAGE_SIZE);
		free(st->saved[page]);
		st->saved[page] = NULL;
		st->restores++;
	}
	umbra_mutex_unlock(&st->lock);
	return 0;
}

static bool store_is_resident(void *priv, uint64_t page)
{
	return shadow_store_is_resident(priv, page);
}

const struct shadow_slot_ops shadow_store_slot_ops = {
	.get_page = store_get_page,
	.is_resident = store_is_resident,
};
