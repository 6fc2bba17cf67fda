/*
 * The table pool: a memfd of 4 KiB pages with a descriptor each
 * (shadow_internal.h, struct shadow_page), addressed by the guest-physical
 * address at which the VMM maps the pool (SHADOW_POOL_GPA + index * 4 KiB).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shadow_internal.h"

int shadow_pool_create(size_t nr_pages, struct shadow_pool **out)
{
	struct shadow_pool *pool;
	int ret;

	if (nr_pages == 0 || nr_pages > SHADOW_POOL_MAX_PAGES)
		return -EINVAL;
	pool = calloc(1, sizeof(*pool));
	if (!pool)
		return -ENOMEM;
	pool->nr_pages = nr_pages;
	pool->pages = calloc(nr_pages, sizeof(*pool->pages));
	if (!pool->pages) {
		ret = -ENOMEM;
		goto free_pool;
	}
	pool->fd = memfd_create("umbra-shadow-pool", MFD_CLOEXEC);
	if (pool->fd < 0) {
		ret = -errno;
		goto free_pages;
	}
	if (ftruncate(pool->fd, (off_t)(nr_pages * SHADOW_PAGE_SIZE)) < 0) {
		ret = -errno;
		goto close_fd;
	}
	pool->base = mmap(NULL, nr_pages * SHADOW_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
			  pool->fd, 0);
	if (pool->base == MAP_FAILED) {
		ret = -errno;
		goto close_fd;
	}
	for (size_t i = 0; i < nr_pages; i++) {
		pool->pages[i].next = i + 1 < nr_pages ? (uint32_t)(i + 1) : SHADOW_NO_PAGE;
		notifier_mutex_init(&pool->pages[i].lock, "shadow.page.lock", NOTIFIER_LOCK_RANK_TABLE);
	}
	pool->free_head = 0;
	pool->dying_head = SHADOW_NO_PAGE;
	pool->waiting_head = SHADOW_NO_PAGE;
	notifier_mutex_init(&pool->lock, "shadow.pool.lock", SHADOW_LOCK_RANK_POOL);
	notifier_mutex_init(&pool->objs_lock, "shadow.pool.objs_lock", SHADOW_LOCK_RANK_OBJS);
	notifier_mutex_init(&pool->mmus_lock, "shadow.pool.mmus_lock", SHADOW_LOCK_RANK_MMUS);
	*out = pool;
	return 0;

close_fd:
	close(pool->fd);
free_pages:
	free(pool->pages);
free_pool:
	free(pool);
	return ret;
}

void shadow_pool_destroy(struct shadow_pool *pool)
{
	if (!pool)
		return;
	pool_wait_deferred(pool); /* the queued callback touches the pool */
	munmap(pool->base, pool->nr_pages * SHADOW_PAGE_SIZE);
	close(pool->fd);
	for (size_t i = 0; i < pool->nr_pages; i++)
		notifier_mutex_exit(&pool->pages[i].lock);
	notifier_mutex_exit(&pool->lock);
	notifier_mutex_exit(&pool->objs_lock);
	notifier_mutex_exit(&pool->mmus_lock);
	free(pool->pages);
	free(pool);
}

int shadow_pool_fd(const struct shadow_pool *pool)
{
	return pool->fd;
}

size_t shadow_pool_nr_pages(const struct shadow_pool *pool)
{
	return pool->nr_pages;
}

bool shadow_pool_contains(const struct shadow_pool *pool, uint64_t gpa)
{
	return gpa >= SHADOW_POOL_GPA && gpa - SHADOW_POOL_GPA < pool->nr_pages * SHADOW_PAGE_SIZE;
}

static int page_index(const struct shadow_pool *pool, uint64_t gpa, uint32_t *index)
{
	if (!shadow_pool_contains(pool, gpa) || gpa % SHADOW_PAGE_SIZE)
		return -EINVAL;
	*index = pool_page_index(gpa);
	return 0;
}

int pool_alloc_index(struct shadow_pool *pool, int level, uint32_t *index)
{
	struct shadow_page *sp;
	uint32_t i;

	if (level < 1 || level > SPTE_LEVELS)
		return -EINVAL;
	notifier_mutex_lock(&pool->lock);
	i = pool->free_head;
	if (i == SHADOW_NO_PAGE) {
		notifier_mutex_unlock(&pool->lock);
		return -ENOMEM;
	}
	sp = &pool->pages[i];
	pool->free_head = sp->next;
	__atomic_store_n(&sp->level, (uint8_t)level, __ATOMIC_RELAXED); /* walk-ups read it racily */
	pool->in_use[level]++;
	notifier_mutex_unlock(&pool->lock);

	/* The page is ours alone until published. */
	sp->next = SHADOW_NO_PAGE;
	sp->direct = false;
	sp->access = 0;
	sp->gpa = 0;
	sp->gva = 0;
	sp->nr_present = 0;
	sp->users = NULL;
	sp->canon = false;
	sp->canon_obj = NULL;
	sp->canon_key = 0;
	__atomic_store_n(&sp->use_count, 0, __ATOMIC_RELAXED);
	memset(pool_entries(pool, i), 0, SHADOW_PAGE_SIZE);
	*index = i;
	return 0;
}

/* After a grace period: the waiting pages become free; what died since
 * waits for the next one. */
static void pool_deferred_free(struct notifier_rcu_work *work)
{
	struct shadow_pool *pool = caa_container_of(work, struct shadow_pool, rcu);
	bool requeue;

	notifier_mutex_lock(&pool->lock);
	while (pool->waiting_head != SHADOW_NO_PAGE) {
		uint32_t i = pool->waiting_head;

		pool->waiting_head = pool->pages[i].next;
		pool->pages[i].next = pool->free_head;
		pool->free_head = i;
		pool->nr_deferred--;
	}
	requeue = pool->dying_head != SHADOW_NO_PAGE;
	pool->waiting_head = pool->dying_head;
	pool->dying_head = SHADOW_NO_PAGE;
	pool->rcu_queued = requeue;
	notifier_mutex_unlock(&pool->lock);
	if (requeue)
		notifier_call_rcu(&pool->rcu, pool_deferred_free);
}

void pool_free_index(struct shadow_pool *pool, uint32_t index)
{
	struct shadow_page *sp = &pool->pages[index];
	bool queue = false;

	notifier_mutex_lock(&pool->lock);
	pool->in_use[sp->level]--;
	__atomic_store_n(&sp->level, 0, __ATOMIC_RELAXED);
	sp->next = pool->dying_head;
	pool->dying_head = index;
	pool->nr_deferred++;
	if (!pool->rcu_queued) {
		pool->waiting_head = pool->dying_head;
		pool->dying_head = SHADOW_NO_PAGE;
		pool->rcu_queued = queue = true;
	}
	notifier_mutex_unlock(&pool->lock);
	if (queue)
		notifier_call_rcu(&pool->rcu, pool_deferred_free);
}

bool pool_wait_deferred(struct shadow_pool *pool)
{
	size_t n;

	notifier_mutex_lock(&pool->lock);
	n = pool->nr_deferred;
	notifier_mutex_unlock(&pool->lock);
	if (n)
		notifier_barrier();
	return n != 0;
}

int shadow_pool_alloc(struct shadow_pool *pool, int level, uint64_t *gpa)
{
	uint32_t i;
	int ret = pool_alloc_index(pool, level, &i);

	if (ret)
		return ret;
	*gpa = pool_page_gpa(i);
	return 0;
}

int shadow_pool_free(struct shadow_pool *pool, uint64_t gpa)
{
	struct shadow_page *sp;
	uint32_t i;
	int ret = 0;

	if (page_index(pool, gpa, &i))
		return -EINVAL;
	sp = &pool->pages[i];
	notifier_mutex_lock(&pool->lock);
	if (sp->level == 0 || sp->users || __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED))
		ret = -EINVAL;
	notifier_mutex_unlock(&pool->lock);
	if (ret)
		return ret;
	pool_free_index(pool, i);
	pool_wait_deferred(pool); /* reusable on return, as documented */
	return 0;
}

uint64_t *shadow_pool_table(struct shadow_pool *pool, uint64_t gpa)
{
	uint32_t i;

	if (page_index(pool, gpa, &i))
		return NULL;
	return pool_entries(pool, i);
}

size_t shadow_pool_pages_in_use(struct shadow_pool *pool, int level)
{
	size_t n = 0;

	if (level < 0 || level > SPTE_LEVELS)
		return 0;
	notifier_mutex_lock(&pool->lock);
	for (int l = level ? level : 1; l <= (level ? level : SPTE_LEVELS); l++)
		n += pool->in_use[l];
	notifier_mutex_unlock(&pool->lock);
	return n;
}

int pool_user_link(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		   uint32_t parent, uint32_t slot)
{
	struct shadow_page *sp = &pool->pages[index];
	struct shadow_page_user *u = malloc(sizeof(*u));

	if (!u)
		return -ENOMEM;
	u->mmu = mmu;
	u->parent = parent;
	u->index = slot;
	notifier_mutex_lock(&sp->lock);
	u->next = sp->users;
	sp->users = u;
	notifier_mutex_unlock(&sp->lock);
	return 0;
}

int pool_user_add(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		  uint32_t parent, uint32_t slot)
{
	int ret = pool_user_link(pool, index, mmu, parent, slot);

	if (!ret)
		__atomic_fetch_add(&pool->pages[index].use_count, 1, __ATOMIC_ACQ_REL);
	return ret;
}

void pool_user_del(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		   uint32_t parent, uint32_t slot)
{
	struct shadow_page *sp = &pool->pages[index];
	struct shadow_page_user **pp, *u = NULL;

	notifier_mutex_lock(&sp->lock);
	for (pp = &sp->users; *pp; pp = &(*pp)->next) {
		/* A link below a root is named by its parent entry alone (the
		 * parent may be shared: whoever drops it removes the link). */
		if ((*pp)->parent == parent && (*pp)->index == slot &&
		    (parent != SHADOW_NO_PAGE || (*pp)->mmu == mmu)) {
			u = *pp;
			*pp = u->next;
			break;
		}
	}
	notifier_mutex_unlock(&sp->lock);
	free(u);
}

int pool_obj_get(struct shadow_pool *pool, struct notifier_object *obj, uint64_t mpa,
		 struct pool_obj **out)
{
	uint64_t npages = notifier_object_npages(obj), nruns = (npages + 511) / 512;
	struct pool_obj *po;
	int ret = 0;

	notifier_mutex_lock(&pool->objs_lock);
	for (po = pool->objs; po; po = po->next)
		if (po->obj == obj && po->mpa == mpa)
			break;
	if (po) {
		po->refs++;
		goto unlock;
	}
	po = calloc(1, sizeof(*po));
	if (!po) {
		ret = -ENOMEM;
		goto unlock;
	}
	po->rmap = calloc(npages, sizeof(*po->rmap));
	po->canon = malloc(nruns * CANON_KEYS_PER_RUN * sizeof(*po->canon));
	if (!po->rmap || !po->canon) {
		ret = -ENOMEM;
		goto free_po;
	}
	for (uint64_t k = 0; k < nruns * CANON_KEYS_PER_RUN; k++)
		po->canon[k] = SHADOW_NO_PAGE;
	for (unsigned int k = 0; k < POOL_OBJ_STRIPES; k++)
		notifier_mutex_init(&po->stripes[k], "shadow.obj.stripe", SHADOW_LOCK_RANK_RMAP);
	po->obj = obj;
	po->mpa = mpa;
	po->npages = npages;
	po->refs = 1;
	po->next = pool->objs;
	pool->objs = po;
	goto unlock;
free_po:
	free(po->rmap);
	free(po->canon);
	free(po);
	po = NULL;
unlock:
	notifier_mutex_unlock(&pool->objs_lock);
	*out = po;
	return ret;
}

void pool_obj_put(struct shadow_pool *pool, struct pool_obj *po)
{
	notifier_mutex_lock(&pool->objs_lock);
	if (--po->refs) {
		notifier_mutex_unlock(&pool->objs_lock);
		return;
	}
	for (struct pool_obj **pp = &pool->objs; *pp; pp = &(*pp)->next) {
		if (*pp == po) {
			*pp = po->next;
			break;
		}
	}
	notifier_mutex_unlock(&pool->objs_lock);
	for (unsigned int k = 0; k < POOL_OBJ_STRIPES; k++)
		notifier_mutex_exit(&po->stripes[k]);
	for (uint64_t p = 0; p < po->npages; p++)
		rmap_free(&po->rmap[p]);
	free(po->rmap);
	free(po->canon);
	free(po);
}
