/*
 * The table pool: 4 KiB table pages with a descriptor each
 * (shadow_internal.h, struct shadow_page), addressed by the guest-physical
 * address at which the VMM maps the pool (SHADOW_POOL_GPA + index * 4 KiB).
 * Every page exists twice: the private, authoritative copy (anonymous
 * memory no guest can reach), which every read of the shadow MMU uses, and
 * the visible copy (the memfd the VMM maps into its VMs, which the CPU
 * walks), which umbra only ever writes (pool_spte_write).
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
	/* The deferred frees' worker from the start (umbra/rcu.h). */
	umbra_rcu_worker_start();
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
	pool->visible = mmap(NULL, nr_pages * SHADOW_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
			     pool->fd, 0);
	if (pool->visible == MAP_FAILED) {
		ret = -errno;
		goto close_fd;
	}
	/* Sparse: a page takes memory once a table is allocated there. */
	pool->entries = mmap(NULL, nr_pages * SHADOW_PAGE_SIZE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (pool->entries == MAP_FAILED) {
		ret = -errno;
		goto unmap_visible;
	}
	for (size_t i = 0; i < nr_pages; i++) {
		pool->pages[i].next = i + 1 < nr_pages ? (uint32_t)(i + 1) : SHADOW_NO_PAGE;
		umbra_mutex_init(&pool->pages[i].lock, "shadow.page.lock", UMBRA_LOCK_RANK_TABLE);
	}
	pool->free_top = 0; /* page 0, tag 0 */
	pool->dying_head = SHADOW_NO_PAGE;
	pool->waiting_head = SHADOW_NO_PAGE;
	umbra_mutex_init(&pool->objs_lock, "shadow.pool.objs_lock", UMBRA_LOCK_RANK_OBJS);
	umbra_mutex_init(&pool->mmus_lock, "shadow.pool.mmus_lock", UMBRA_LOCK_RANK_MMUS);
	*out = pool;
	return 0;

unmap_visible:
	munmap(pool->visible, nr_pages * SHADOW_PAGE_SIZE);
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
	/* Not pool_wait_deferred: a callback still touches the pool after
	 * its pages are counted free; the barrier waits for it to return. */
	notifier_barrier();
	munmap(pool->entries, pool->nr_pages * SHADOW_PAGE_SIZE);
	munmap(pool->visible, pool->nr_pages * SHADOW_PAGE_SIZE);
	close(pool->fd);
	for (size_t i = 0; i < pool->nr_pages; i++)
		umbra_mutex_exit(&pool->pages[i].lock);
	umbra_mutex_exit(&pool->objs_lock);
	umbra_mutex_exit(&pool->mmus_lock);
	free(pool->pages);
	free(pool);
}

void shadow_pool_memory(const struct shadow_pool *pool, struct shadow_pool_memory *mem)
{
	mem->gpa = SHADOW_POOL_GPA;
	mem->bytes = pool->nr_pages * SHADOW_PAGE_SIZE;
	mem->host = pool->visible;
	mem->fd = pool->fd;
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

/*
 * The free list is a Treiber stack of page indices, lock-free: free_top is
 * (tag << 32 | index of the top page), and every change bumps the tag, so a
 * pop that read a stale top (popped, freed and pushed back meanwhile) fails
 * its compare-and-swap (no ABA).  Pages are pushed only by the RCU callback
 * (a whole chain at once) and popped by alloc; `next` is read and written
 * atomically because a stale pop may read it while the page is in use.
 */
#define FREE_TOP_TAG_SHIFT 32
#define FREE_TOP(tag, index) ((uint64_t)(tag) << FREE_TOP_TAG_SHIFT | (index))
#define FREE_TOP_INDEX(top) ((uint32_t)(top))
#define FREE_TOP_TAG(top) ((uint32_t)((top) >> FREE_TOP_TAG_SHIFT))

static uint32_t page_next(struct shadow_pool *pool, uint32_t i)
{
	return __atomic_load_n(&pool->pages[i].next, __ATOMIC_RELAXED);
}

static void page_set_next(struct shadow_pool *pool, uint32_t i, uint32_t next)
{
	__atomic_store_n(&pool->pages[i].next, next, __ATOMIC_RELAXED);
}

int pool_alloc_index(struct shadow_pool *pool, int level, uint32_t *index)
{
	struct shadow_page *sp;
	uint64_t top, new_top;
	uint32_t i;

	if (level < 1 || level > SPTE_LEVELS)
		return -EINVAL;
	top = __atomic_load_n(&pool->free_top, __ATOMIC_ACQUIRE);
	do {
		i = FREE_TOP_INDEX(top);
		if (i == SHADOW_NO_PAGE)
			return -ENOMEM;
		new_top = FREE_TOP(FREE_TOP_TAG(top) + 1, page_next(pool, i));
	} while (!__atomic_compare_exchange_n(&pool->free_top, &top, new_top, false,
					      __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
	sp = &pool->pages[i];
	__atomic_store_n(&sp->level, (uint8_t)level, __ATOMIC_RELAXED); /* walk-ups read it racily */
	__atomic_fetch_add(&sp->alloc_gen, 1, __ATOMIC_RELAXED);       /* names this table: dumps */
	__atomic_fetch_add(&pool->in_use[level], 1, __ATOMIC_RELAXED);

	/* The page is ours alone until published, except that a walk up the
	 * users lists (pmd_rmap_flush_up, find_chain) that followed a stale
	 * link may look at it, under its table lock: what it reads there is
	 * reset under that lock (it finds no users, or ours later: extra
	 * flushes at most). */
	page_set_next(pool, i, SHADOW_NO_PAGE);
	/* Atomic: a VM's index of its tables may still name this page and read
	 * them without a lock (table_hash_find_locked). */
	__atomic_store_n(&sp->direct, false, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->access, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->gpa, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->gva, 0, __ATOMIC_RELAXED);
	umbra_mutex_lock(&sp->lock);
	sp->nr_present = 0;
	sp->users = NULL;
	__atomic_store_n(&sp->canon, false, __ATOMIC_RELAXED);
	sp->canon_obj = NULL;
	sp->canon_key = 0;
	umbra_mutex_unlock(&sp->lock);
	__atomic_store_n(&sp->private_mmu, NULL, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->private_gen, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->use_count, 0, __ATOMIC_RELAXED);
	/* Both copies; the release store that publishes the page orders
	 * these writes before it. */
	memset(pool_entries(pool, i), 0, SHADOW_PAGE_SIZE);
	memset(pool_visible_entries(pool, i), 0, SHADOW_PAGE_SIZE);
	*index = i;
	return 0;
}

static void pool_deferred_free(struct umbra_rcu_work *work);

/*
 * Hands the dying pages to a grace period, unless a callback is queued (it
 * looks again when it is done).  Whoever sets rcu_queued owns waiting_head
 * until its callback has run.  Lock-free; never blocks.
 */
static void pool_queue_dying(struct shadow_pool *pool)
{
	while (__atomic_load_n(&pool->dying_head, __ATOMIC_SEQ_CST) != SHADOW_NO_PAGE &&
	       !__atomic_exchange_n(&pool->rcu_queued, true, __ATOMIC_SEQ_CST)) {
		uint32_t w = __atomic_exchange_n(&pool->dying_head, SHADOW_NO_PAGE, __ATOMIC_SEQ_CST);

		if (w != SHADOW_NO_PAGE) {
			pool->waiting_head = w;
			umbra_call_rcu(&pool->rcu, pool_deferred_free);
			return;
		}
		__atomic_store_n(&pool->rcu_queued, false, __ATOMIC_SEQ_CST);
	}
}

/* After a grace period: the waiting pages go on the free list (one push
 * of the whole chain); what died since gets its own grace period. */
static void pool_deferred_free(struct umbra_rcu_work *work)
{
	struct shadow_pool *pool = umbra_container_of(work, struct shadow_pool, rcu);
	uint32_t head = pool->waiting_head, tail = head;
	uint64_t top, n = 1;

	while (page_next(pool, tail) != SHADOW_NO_PAGE) {
		tail = page_next(pool, tail);
		n++;
	}
	pool->waiting_head = SHADOW_NO_PAGE;
	top = __atomic_load_n(&pool->free_top, __ATOMIC_ACQUIRE);
	do
		page_set_next(pool, tail, FREE_TOP_INDEX(top));
	while (!__atomic_compare_exchange_n(&pool->free_top, &top,
					    FREE_TOP(FREE_TOP_TAG(top) + 1, head), false,
					    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
	__atomic_fetch_sub(&pool->nr_deferred, n, __ATOMIC_RELEASE);
	__atomic_store_n(&pool->rcu_queued, false, __ATOMIC_SEQ_CST);
	pool_queue_dying(pool);
}

void pool_free_index(struct shadow_pool *pool, uint32_t index)
{
	struct shadow_page *sp = &pool->pages[index];
	uint32_t top;

	table_uncharge(sp);
	__atomic_fetch_add(&pool->nr_deferred, 1, __ATOMIC_RELAXED);
	__atomic_fetch_sub(&pool->in_use[sp->level], 1, __ATOMIC_RELAXED);
	__atomic_store_n(&sp->level, 0, __ATOMIC_RELAXED);
	/* Push on the dying stack (push-only: the consumer takes it whole). */
	top = __atomic_load_n(&pool->dying_head, __ATOMIC_ACQUIRE);
	do
		page_set_next(pool, index, top);
	while (!__atomic_compare_exchange_n(&pool->dying_head, &top, index, false, __ATOMIC_SEQ_CST,
					    __ATOMIC_ACQUIRE));
	pool_queue_dying(pool);
}

bool pool_wait_deferred(struct shadow_pool *pool)
{
	if (!__atomic_load_n(&pool->nr_deferred, __ATOMIC_ACQUIRE))
		return false;
	shadow_assert_no_lock_held();
	notifier_barrier();
	return true;
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
	if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) == 0 || sp->users ||
	    __atomic_load_n(&sp->use_count, __ATOMIC_RELAXED))
		ret = -EINVAL;
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
	return pool_visible_entries(pool, i);
}

void pool_entry_mirror(struct shadow_pool *pool, uint32_t index, unsigned int i)
{
	struct shadow_page *sp = &pool->pages[index];
	uint64_t *visible = pool_visible_entries(pool, index) + i;
	const uint64_t *entry = pool_entries(pool, index) + i;

	/* Equal now: any later write goes to both under the table lock, or,
	 * tracking access (access.c), makes the visible one not present. */
	if (spte_read(visible) == spte_read(entry))
		return;
	umbra_mutex_lock(&sp->lock);
	spte_write(visible, spte_read(entry));
	umbra_mutex_unlock(&sp->lock);
}

size_t shadow_pool_pages_in_use(struct shadow_pool *pool, int level)
{
	size_t n = 0;

	if (level < 0 || level > SPTE_LEVELS)
		return 0;
	for (int l = level ? level : 1; l <= (level ? level : SPTE_LEVELS); l++)
		n += __atomic_load_n(&pool->in_use[l], __ATOMIC_RELAXED);
	return n;
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
	umbra_mutex_lock(&sp->lock);
	u->next = sp->users;
	sp->users = u;
	umbra_mutex_unlock(&sp->lock);
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

	umbra_mutex_lock(&sp->lock);
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
	umbra_mutex_unlock(&sp->lock);
	free(u);
}

int pool_obj_get(struct shadow_pool *pool, struct notifier_object *obj, uint64_t mpa,
		 struct pool_obj **out)
{
	uint64_t npages = notifier_object_npages(obj);
	struct pool_obj *po;
	int ret = 0;

	umbra_mutex_lock(&pool->objs_lock);
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
	/* One pointer per GiB; the directory's pages and the runs' arrays
	 * come with their first use (pool_obj_run_get_or_alloc). */
	po->runs = calloc(pool_obj_nr_dirs(npages), sizeof(*po->runs));
	if (!po->runs) {
		ret = -ENOMEM;
		goto free_po;
	}
	for (unsigned int k = 0; k < POOL_OBJ_STRIPES; k++)
		umbra_mutex_init(&po->stripes[k], "shadow.obj.stripe", UMBRA_LOCK_RANK_RMAP);
	umbra_mutex_init(&po->refs_lock, "shadow.obj.refs", UMBRA_LOCK_RANK_PAGE_REFS);
	po->obj = obj;
	po->mpa = mpa;
	po->npages = npages;
	po->refs = 1;
	po->next = pool->objs;
	pool->objs = po;
	goto unlock;
free_po:
	free(po);
	po = NULL;
unlock:
	umbra_mutex_unlock(&pool->objs_lock);
	*out = po;
	return ret;
}

void pool_obj_put(struct shadow_pool *pool, struct pool_obj *po)
{
	umbra_mutex_lock(&pool->objs_lock);
	if (--po->refs) {
		umbra_mutex_unlock(&pool->objs_lock);
		return;
	}
	for (struct pool_obj **pp = &pool->objs; *pp; pp = &(*pp)->next) {
		if (*pp == po) {
			*pp = po->next;
			break;
		}
	}
	umbra_mutex_unlock(&pool->objs_lock);
	for (unsigned int k = 0; k < POOL_OBJ_STRIPES; k++)
		umbra_mutex_exit(&po->stripes[k]);
	umbra_mutex_exit(&po->refs_lock);
	for (uint64_t d = 0; d < pool_obj_nr_dirs(po->npages); d++) {
		struct pool_obj_run **dir = po->runs[d];

		for (unsigned int r = 0; dir && r < POOL_OBJ_RUNS_PER_DIR; r++) {
			struct pool_obj_run *run = dir[r];

			if (!run)
				continue;
			for (unsigned int p = 0; p < SPTE_ENTRIES; p++)
				rmap_free(&run->rmap[p]);
			rmap_free(&run->huge);
			free(run);
		}
		free(dir);
	}
	free(po->runs);
	page_refs_exit(po);
	free(po);
}

int pool_obj_run_get_or_alloc(struct pool_obj *po, uint64_t run, struct pool_obj_run **out)
{
	umbra_mutex_assert_held(pool_obj_stripe(po, run * SPTE_ENTRIES));
	struct pool_obj_run ***slot = &po->runs[run / POOL_OBJ_RUNS_PER_DIR];
	struct pool_obj_run **dir = __atomic_load_n(slot, __ATOMIC_ACQUIRE), **fresh;
	struct pool_obj_run *r;

	if (!dir) {
		/* Another stripe's run of the same GiB may make it too: the
		 * first published wins. */
		fresh = calloc(POOL_OBJ_RUNS_PER_DIR, sizeof(*fresh));
		if (!fresh)
			return -ENOMEM;
		dir = NULL;
		if (__atomic_compare_exchange_n(slot, &dir, fresh, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			dir = fresh;
		else
			free(fresh);
	}
	r = __atomic_load_n(&dir[run % POOL_OBJ_RUNS_PER_DIR], __ATOMIC_ACQUIRE);
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return -ENOMEM;
		/* Release: a lock-free reader (young bytes) sees it zeroed. */
		__atomic_store_n(&dir[run % POOL_OBJ_RUNS_PER_DIR], r, __ATOMIC_RELEASE);
	}
	*out = r;
	return 0;
}

int pool_obj_rmap_add(struct pool_obj *po, uint64_t page, shadow_sptep_t sptep)
{
	struct pool_obj_run *run;
	int ret;

	ret = pool_obj_run_get_or_alloc(po, page / SPTE_ENTRIES, &run);
	if (ret)
		return ret;
	ret = rmap_add(&run->rmap[page % SPTE_ENTRIES], sptep);
	if (!ret)
		run->mapped[page % SPTE_ENTRIES / 64] |= 1ull << (page % 64);
	return ret;
}

void pool_obj_rmap_del(struct pool_obj *po, uint64_t page, shadow_sptep_t sptep)
{
	struct pool_obj_run *run = pool_obj_run(po, page / SPTE_ENTRIES);

	if (run && rmap_del(&run->rmap[page % SPTE_ENTRIES], sptep) &&
	    !rmap_nr(&run->rmap[page % SPTE_ENTRIES]))
		run->mapped[page % SPTE_ENTRIES / 64] &= ~(1ull << (page % 64));
}

int pool_obj_huge_rmap_add(struct pool_obj *po, uint64_t run, shadow_sptep_t sptep)
{
	struct pool_obj_run *r;
	int ret;

	ret = pool_obj_run_get_or_alloc(po, run, &r);
	return ret ? ret : rmap_add(&r->huge, sptep);
}

void pool_obj_huge_rmap_del(struct pool_obj *po, uint64_t run, shadow_sptep_t sptep)
{
	struct pool_obj_run *r = pool_obj_run(po, run);

	if (r)
		rmap_del(&r->huge, sptep);
}
