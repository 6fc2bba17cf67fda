/*
 * Eviction: a batch of pages, of one object or of several, goes to swap and
 * its host memory is freed (docs/pager.md, "The pager").  Per batch: each
 * contiguous run of candidates of one object gets one SWAPOUT invalidation;
 * then the candidates still evictable are claimed (EVICTING) and each run
 * of them is write-protected; the dirty pages of the whole
 * batch are written in one pager_swap_write(); every page whose content is
 * safe in its slot is punched out of its memfd; the rest stay resident,
 * intact.
 *
 * pager_evict() (a range of one object) and pager_evict_list() (a list of
 * pages over several objects, the reclaimer's) share every step but the
 * pick.
 *
 * Locks: each object's lock only to pick and settle its victims; the
 * invalidations, I/O and ioctls run with no pager lock held.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pager_internal.h"

struct victim {
	struct pager_object *po;
	uint64_t page;
	uint64_t slot;
	bool clean;		/* was CLEAN: its slot is valid, no I/O */
	int result;		/* 0: content safe in slot; else stays resident */
};

struct batch {
	struct pager *pager;
	struct victim v[PAGER_EVICT_BATCH];
	unsigned int n;
	struct notifier_range ranges[PAGER_EVICT_BATCH];
	unsigned int nranges;
	bool nonblocking;	/* its invalidations were not blockable */
	char *bufs;		/* one page per victim */
};

/* Victims v[j - 1] and v[j] are neighbours of one object. */
static bool run_continues(const struct batch *b, unsigned int j)
{
	return j < b->n && b->v[j].po == b->v[j - 1].po && b->v[j].page == b->v[j - 1].page + 1;
}

/* Makes @page of @po a candidate if it may be evicted now.  Object lock
 * held.  It is claimed (EVICTING) only once its run is invalidated
 * (batch_claim). */
static void batch_take_locked(struct batch *b, struct pager_object *po, uint64_t page)
{
	umbra_mutex_assert_held(&po->lock);
	if (!pager_page_is_evictable_locked(po, page) ||
	    (b->n && b->v[b->n - 1].po == po && b->v[b->n - 1].page == page))
		return; /* not evictable, or listed twice (a sorted list: next to each other) */
	b->v[b->n++] = (struct victim){ .po = po, .page = page };
}

/* Takes the evictable, idle pages of [first, end) of @po; stops when the
 * batch is full.  Returns the first page not looked at. */
static uint64_t batch_pick_range(struct batch *b, struct pager_object *po, uint64_t first,
				 uint64_t end)
{
	uint64_t p;

	umbra_mutex_lock(&po->lock);
	for (p = first; p < end && b->n < PAGER_EVICT_BATCH; p++)
		batch_take_locked(b, po, p);
	umbra_mutex_unlock(&po->lock);
	return p;
}

/* Takes the evictable, idle pages of @v[0..@n) (sorted by object and
 * page), one object lock at a time; stops when the batch is full.  Returns
 * how many entries were looked at. */
static unsigned int batch_pick_list(struct batch *b, const struct pager_victim *v, unsigned int n)
{
	unsigned int i = 0;

	while (i < n && b->n < PAGER_EVICT_BATCH) {
		struct pager_object *po = pager_object_get(b->pager, v[i].id);

		umbra_mutex_lock(&po->lock);
		for (; i < n && v[i].id == po->id && b->n < PAGER_EVICT_BATCH; i++)
			batch_take_locked(b, po, v[i].page);
		umbra_mutex_unlock(&po->lock);
	}
	return i;
}

/*
 * One invalidation per run of candidates.  A run whose invalidation failed
 * gets the error in its candidates' result (they are not claimed).
 *
 * The runs are invalidated before any page is claimed or write-protected:
 * a vCPU that faults on a claimed page (a write to a clean page, a read of a
 * punched one) waits in the kernel, inside KVM_RUN, where a TLB-shootdown
 * kick cannot make it return, until the owner settles the page.  So the
 * owner must need no flush of any vCPU between its first claim and its
 * settle: every invalidation, whose callbacks flush and wait for the vCPUs
 * to leave guest mode, is done before (docs/locking.md, "The pager and
 * reclaim").
 */
static void batch_invalidate(struct batch *b)
{
	b->nonblocking = __atomic_load_n(&b->pager->nonblocking, __ATOMIC_ACQUIRE);
	const unsigned int flags = b->nonblocking ? 0 : NOTIFIER_RANGE_MAY_BLOCK;

	for (unsigned int i = 0, j; i < b->n; i = j) {
		struct notifier_range *r = &b->ranges[b->nranges];
		struct pager_object *po = b->v[i].po;
		int ret;

		for (j = i + 1; run_continues(b, j); j++)
			;
		notifier_range_init(r, po->obj, NOTIFIER_EVENT_SWAPOUT, b->v[i].page,
				    b->v[j - 1].page, flags);
		ret = notifier_invalidate_range_start(r);
		if (!ret)
			b->nranges++;
		for (unsigned int k = i; k < j; k++)
			b->v[k].result = ret;
	}
}

/*
 * Claims the candidates whose run is invalidated and that are still
 * evictable (another thread may have pinned, evicted or claimed one since
 * the pick): they become EVICTING and stay in the batch; the others leave
 * it.  Returns the first invalidation error.
 */
static int batch_claim(struct batch *b)
{
	unsigned int n = 0;
	int first_err = 0;

	for (unsigned int i = 0; i < b->n;) {
		struct pager_object *po = b->v[i].po;

		umbra_mutex_lock(&po->lock);
		for (; i < b->n && b->v[i].po == po; i++) {
			struct victim v = b->v[i];

			if (v.result == -EAGAIN && b->nonblocking) {
				/* A non-blocking invalidation refused: the page
				 * stays, which is not an error. */
				po->busy_refusals++;
				continue;
			}
			if (v.result) {
				if (!first_err)
					first_err = v.result;
				continue;
			}
			if (!pager_page_is_evictable_locked(po, v.page))
				continue;
			v.slot = po->slot[v.page];
			v.clean = po->state[v.page] == PAGER_PAGE_CLEAN;
			po->state[v.page] = PAGER_PAGE_EVICTING;
			b->v[n++] = v;
		}
		umbra_mutex_unlock(&po->lock);
	}
	b->n = n;
	return first_err;
}

/* Write-protects each run of claimed victims (a run whose protection
 * failed gets the error in its victims' result: they stay resident). */
static void batch_protect(struct batch *b)
{
	for (unsigned int i = 0, j; i < b->n; i = j) {
		struct pager_object *po = b->v[i].po;
		int ret;

		for (j = i + 1; run_continues(b, j); j++)
			;
		ret = pager_uffd_protect(b->pager, pager_page_addr(po, b->v[i].page),
					 (uint64_t)(j - i) * PAGER_PAGE_SIZE, true);
		for (unsigned int k = i; k < j; k++)
			b->v[k].result = ret;
	}
}

/* Copies the dirty victims into new slots with one batched write. */
/* Victim @i is dirty and got a slot: its page must be copied. */
static bool victim_needs_copy(const struct batch *b, unsigned int i)
{
	return !b->v[i].result && !b->v[i].clean;
}

/*
 * Copies victims [@i, @j) (neighbours in one object, each needing a copy)
 * into their buffers with one pread on the memfd: through the memfd, not
 * the mapping, so a hole reads as zeros without a fault and the protected
 * mapping stays untouched.  A page the read did not cover fails.
 */
static void batch_copy_run(struct batch *b, unsigned int i, unsigned int j)
{
	const struct victim *v = &b->v[i];
	size_t len = (size_t)(j - i) * PAGER_PAGE_SIZE, done = 0;
	int err = 0;

	while (done < len) {
		ssize_t got = pread(v->po->memfd, b->bufs + (size_t)i * PAGER_PAGE_SIZE + done, len - done,
				    (off_t)(v->page * PAGER_PAGE_SIZE + done));
		if (got <= 0) {
			err = got < 0 ? -errno : -EIO;
			break;
		}
		done += (size_t)got;
	}
	for (unsigned int k = i + (unsigned int)(done / PAGER_PAGE_SIZE); err && k < j; k++) {
		b->v[k].result = err;
		pager_swap_free(b->pager->swap, b->v[k].slot);
	}
}

/* Copies the dirty victims into new slots with one batched write. */
static void batch_write(struct batch *b)
{
	struct pager *pager = b->pager;
	struct pager_io ios[PAGER_EVICT_BATCH];
	unsigned int idx[PAGER_EVICT_BATCH], n = 0;

	for (unsigned int i = 0; i < b->n; i++)
		if (victim_needs_copy(b, i))
			b->v[i].result = pager_swap_alloc(pager->swap, &b->v[i].slot);
	for (unsigned int i = 0, j; i < b->n; i = j) {
		j = i + 1;
		if (!victim_needs_copy(b, i))
			continue;
		while (run_continues(b, j) && victim_needs_copy(b, j))
			j++;
		batch_copy_run(b, i, j);
	}
	for (unsigned int i = 0; i < b->n; i++) {
		if (!victim_needs_copy(b, i))
			continue;
		ios[n] = (struct pager_io){ .slot = b->v[i].slot, .buf = b->bufs + (size_t)i * PAGER_PAGE_SIZE };
		idx[n++] = i;
	}
	if (!n)
		return;
	(void)pager_swap_write(pager->swap, ios, n);
	for (unsigned int k = 0; k < n; k++) {
		struct victim *v = &b->v[idx[k]];

		v->result = ios[k].result;
		if (v->result)
			pager_swap_free(pager->swap, v->slot);
	}
}

/* Punches every run of victims whose content is safe. */
static void batch_punch(struct batch *b)
{
	for (unsigned int i = 0, j; i < b->n; i = j) {
		int ret = 0;

		j = i + 1;
		if (b->v[i].result)
			continue;
		while (run_continues(b, j) && !b->v[j].result)
			j++;
		if (fallocate(b->v[i].po->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)(b->v[i].page * PAGER_PAGE_SIZE),
			      (off_t)(j - i) * PAGER_PAGE_SIZE) < 0)
			ret = -errno;
		for (unsigned int k = i; k < j && ret; k++) {
			if (!b->v[k].clean)
				pager_swap_free(b->pager->swap, b->v[k].slot);
			b->v[k].result = ret;
		}
	}
}

/* Settles the victims of one object, from v[i] on; returns the first victim
 * of another object.  Counts the pages released in *@evicted and notes the
 * first error in *@first_err. */
static unsigned int batch_settle_object(struct batch *b, unsigned int i, uint64_t *evicted,
					int *first_err)
{
	struct pager_object *po = b->v[i].po;

	umbra_mutex_lock(&po->lock);
	for (; i < b->n && b->v[i].po == po; i++) {
		struct victim *v = &b->v[i];

		if (!v->result) {
			po->slot[v->page] = v->slot;
			po->swapped++;
			if (v->clean)
				po->swapouts_cached++;
			else
				po->swapouts_io++;
			pager_page_evicted_locked(po, v->page);
			(*evicted)++;
			continue;
		}
		if (!*first_err)
			*first_err = v->result;
		po->write_errors++;
		po->state[v->page] = v->clean ? PAGER_PAGE_CLEAN : PAGER_PAGE_RESIDENT;
	}
	pthread_cond_broadcast(&po->cond);
	umbra_mutex_unlock(&po->lock);
	return i;
}

/*
 * Settles every victim, lifts the protection of the dirty ones that stayed,
 * wakes the faults, ends the invalidations.  Returns the first error.
 */
static int batch_settle(struct batch *b, uint64_t *evicted)
{
	int first_err = 0;

	/* Unprotect the dirty pages that stay while they are still ours. */
	for (unsigned int i = 0; i < b->n; i++) {
		if (b->v[i].result && !b->v[i].clean)
			(void)pager_uffd_protect(b->pager, pager_page_addr(b->v[i].po, b->v[i].page),
						 PAGER_PAGE_SIZE, false);
	}
	for (unsigned int i = 0; i < b->n;)
		i = batch_settle_object(b, i, evicted, &first_err);
	for (unsigned int i = 0; i < b->n; i++)
		pager_uffd_wake(b->pager, pager_page_addr(b->v[i].po, b->v[i].page), PAGER_PAGE_SIZE);
	for (unsigned int r = 0; r < b->nranges; r++)
		notifier_invalidate_range_end(&b->ranges[r]);
	return first_err;
}

/* Steps 2 to 5 of the picked batch; resets it for the next pick. */
static int batch_evict(struct batch *b, uint64_t *evicted)
{
	int ret = 0, err;

	if (b->n) {
		batch_invalidate(b);
		ret = batch_claim(b);
		batch_protect(b);
		batch_write(b);
		batch_punch(b);
		err = batch_settle(b, evicted);
		if (err && !ret)
			ret = err;
	}
	b->n = 0;
	b->nranges = 0;
	return ret;
}

/* A batch for one eviction call: the pager's spare one if no other call
 * holds it (its 1 MiB of buffers is then already allocated and faulted
 * in), else a new one. */
static struct batch *batch_create(struct pager *pager)
{
	struct batch *b = __atomic_exchange_n(&pager->spare_batch, NULL, __ATOMIC_ACQ_REL);

	if (b)
		return b;
	b = malloc(sizeof(*b));

	if (!b)
		return NULL;
	b->bufs = aligned_alloc(PAGER_PAGE_SIZE, (size_t)PAGER_EVICT_BATCH * PAGER_PAGE_SIZE);
	if (!b->bufs) {
		free(b);
		return NULL;
	}
	b->pager = pager;
	b->n = 0;
	b->nranges = 0;
	return b;
}

/* Gives the batch back as the pager's spare, or frees it if there is one. */
static void batch_destroy(struct batch *b)
{
	struct batch *none = NULL;

	if (__atomic_compare_exchange_n(&b->pager->spare_batch, &none, b, false, __ATOMIC_ACQ_REL,
					__ATOMIC_RELAXED))
		return;
	free(b->bufs);
	free(b);
}

void pager_evict_exit(struct pager *pager)
{
	struct batch *b = __atomic_exchange_n(&pager->spare_batch, NULL, __ATOMIC_ACQ_REL);

	if (b) {
		free(b->bufs);
		free(b);
	}
}

int pager_evict(struct pager *pager, int id, uint64_t first, uint64_t npages)
{
	struct pager_object *po;
	uint64_t p, end, evicted = 0;
	struct batch *b;
	int ret = 0, err;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
				   "pager_evict with a shadow lock held");
	po = pager_object_get(pager, id);
	if (!po || !npages || first >= po->npages || npages > po->npages - first)
		return -EINVAL;
	b = batch_create(pager);
	if (!b)
		return -ENOMEM;
	end = first + npages;
	for (p = first; p < end;) {
		p = batch_pick_range(b, po, p, end);
		err = batch_evict(b, &evicted);
		if (err && !ret)
			ret = err;
	}
	batch_destroy(b);
	return ret;
}

static int victim_cmp(const void *a, const void *b)
{
	const struct pager_victim *x = a, *y = b;

	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return x->page < y->page ? -1 : x->page > y->page;
}

/* Every entry names a page of an object. */
static bool victims_are_valid(struct pager *pager, const struct pager_victim *v, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++) {
		struct pager_object *po = pager_object_get(pager, v[i].id);

		if (!po || v[i].page >= po->npages)
			return false;
	}
	return true;
}

int pager_evict_victims(struct pager *pager, const struct pager_victim *v, unsigned int n,
			uint64_t *evicted)
{
	struct pager_victim *sorted;
	struct batch *b;
	int ret = 0, err;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
				   "pager_evict_list with a shadow lock held");
	*evicted = 0;
	if (!pager || (n && !v) || !victims_are_valid(pager, v, n))
		return -EINVAL;
	if (!n)
		return 0;
	sorted = malloc((size_t)n * sizeof(*sorted));
	b = sorted ? batch_create(pager) : NULL;
	if (!b) {
		free(sorted);
		return -ENOMEM;
	}
	memcpy(sorted, v, (size_t)n * sizeof(*sorted));
	qsort(sorted, n, sizeof(*sorted), victim_cmp);
	for (unsigned int i = 0; i < n;) {
		i += batch_pick_list(b, sorted + i, n - i);
		err = batch_evict(b, evicted);
		if (err && !ret)
			ret = err;
	}
	batch_destroy(b);
	free(sorted);
	return ret;
}

int pager_evict_list(struct pager *pager, const struct pager_victim *v, unsigned int n)
{
	uint64_t evicted;

	return pager_evict_victims(pager, v, n, &evicted);
}
