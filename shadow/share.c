/*
 * Sharing across VMs, the pieces that are not the per-VM MMU (mmu.c has
 * clone, privatize, copy-on-write, canonical tables and the pmd-rmap flush):
 * the in-memory swap store with its eviction API and restore hook, and the
 * pool-wide invariant checker.  docs/sharing.md is the design.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shadow_internal.h"

/* ---- eviction: an in-memory store ---------------------------------------- */

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

const struct shadow_slot_ops shadow_store_slot_ops = {
	.get_page = store_get_page,
};

/* ---- the pool-wide invariant checker --------------------------------------- */

static bool mmu_is_live_locked(struct shadow_pool *pool, struct shadow_mmu *mmu)
{
	for (struct shadow_mmu *m = pool->mmus; m; m = m->pool_next)
		if (m == mmu)
			return true;
	return false;
}

/* Is location @s in some object's reverse map for the leaf @spte? */
static bool leaf_is_rmapped_locked(struct shadow_pool *pool, uint64_t spte, shadow_sptep_t s)
{
	uint64_t mpa = spte_addr(spte);

	for (struct pool_obj *po = pool->objs; po; po = po->next) {
		uint32_t k;
		shadow_sptep_t t;

		if (mpa < po->mpa || (mpa - po->mpa) >> SHADOW_PAGE_SHIFT >= po->npages)
			continue;
		for_each_rmap_sptep(&po->rmap[(mpa - po->mpa) >> SHADOW_PAGE_SHIFT], k, t)
			if (t == s)
				return true;
	}
	return false;
}

static int check_page_locked(struct shadow_pool *pool, uint32_t page, size_t *in_use)
{
	struct shadow_page *sp = pool_page(pool, page);
	uint64_t *sptes = pool_entries(pool, page);
	uint32_t nr_users = 0, present = 0;
	int ret = 0;

	in_use[sp->level]++;
	umbra_mutex_lock(&sp->lock);
	for (struct shadow_page_user *u = sp->users; u && !ret; u = u->next) {
		nr_users++;
		if (u->parent == SHADOW_NO_PAGE) {
			/* A root: its VM's root cache slot holds it. */
			if (sp->level != SPTE_LEVELS || !mmu_is_live_locked(pool, u->mmu) ||
			    u->index >= u->mmu->nr_roots || u->mmu->roots[u->index].page != page)
				ret = -EUCLEAN;
			continue;
		}
		/* Below a root: the parent entry points here. */
		if (u->parent >= pool->nr_pages || pool_page(pool, u->parent)->level != sp->level + 1 ||
		    u->index >= SPTE_ENTRIES)
			ret = -EUCLEAN;
		else if (spte_addr(spte_read(pool_entries(pool, u->parent) + u->index)) !=
			 pool_page_gpa(page))
			ret = -EUCLEAN;
	}
	umbra_mutex_unlock(&sp->lock);
	if (ret)
		return ret;
	if (!nr_users || __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) != nr_users)
		return -EUCLEAN;
	if (sp->canon && (sp->level != 1 || sp->canon_obj->canon[sp->canon_key] != page))
		return -EUCLEAN;
	for (unsigned int i = 0; i < SPTE_ENTRIES; i++) {
		uint64_t spte = spte_read(&sptes[i]);

		if (!spte_is_present(spte))
			continue;
		present++;
		if (spte_is_leaf(spte, sp->level)) {
			if (!leaf_is_rmapped_locked(pool, spte, sptep_make(page, i)))
				return -EUCLEAN;
		} else if (!shadow_pool_contains(pool, spte_addr(spte)) ||
			   pool_page(pool, pool_page_index(spte_addr(spte)))->level != sp->level - 1) {
			return -EUCLEAN;
		}
	}
	return present == __atomic_load_n(&sp->nr_present, __ATOMIC_RELAXED) ? 0 : -EUCLEAN;
}

int shadow_pool_check(struct shadow_pool *pool)
{
	size_t in_use[SPTE_LEVELS + 1] = { 0 };
	int ret = 0;

	/* Quiescent pool (the contract): the lists held still, and no stripe
	 * is needed to read the reverse maps. */
	umbra_mutex_lock(&pool->objs_lock);
	umbra_mutex_lock(&pool->mmus_lock);
	for (uint32_t page = 0; page < pool->nr_pages && !ret; page++)
		if (pool_page(pool, page)->level)
			ret = check_page_locked(pool, page, in_use);
	/* Reverse maps: every entry is a present leaf mapping that page. */
	for (struct pool_obj *po = pool->objs; po && !ret; po = po->next) {
		for (uint64_t p = 0; p < po->npages && !ret; p++) {
			uint32_t k;
			shadow_sptep_t s;

			for_each_rmap_sptep(&po->rmap[p], k, s) {
				uint64_t spte = spte_read(pool_entries(pool, sptep_page(s)) + sptep_index(s));

				if (pool_page(pool, sptep_page(s))->level != 1 || !spte_is_present(spte) ||
				    spte_addr(spte) != po->mpa + (p << SHADOW_PAGE_SHIFT))
					ret = -EUCLEAN;
			}
		}
		for (uint64_t k = 0; k < (po->npages + 511) / 512 * CANON_KEYS_PER_RUN && !ret;
		     k++) {
			uint32_t c = po->canon[k];

			if (c != SHADOW_NO_PAGE &&
			    (!pool_page(pool, c)->canon || pool_page(pool, c)->canon_obj != po ||
			     pool_page(pool, c)->canon_key != k))
				ret = -EUCLEAN;
		}
	}
	umbra_mutex_unlock(&pool->mmus_lock);
	umbra_mutex_unlock(&pool->objs_lock);
	/* Pool accounting: the per-level counts are the allocated pages. */
	for (int l = 1; l <= SPTE_LEVELS && !ret; l++)
		if (shadow_pool_pages_in_use(pool, l) != in_use[l])
			ret = -EUCLEAN;
	return ret;
}

size_t shadow_pool_shared_pages(struct shadow_pool *pool)
{
	size_t n = 0;

	for (uint32_t page = 0; page < pool->nr_pages; page++) {
		struct shadow_page *sp = pool_page(pool, page);

		if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) &&
		    __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED) > 1)
			n++;
	}
	return n;
}
