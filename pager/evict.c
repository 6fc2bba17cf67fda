/*
 * Eviction: a batch of pages of one object goes to swap and its host memory
 * is freed (docs/pager.md, "The pager").  Per batch: the victims are marked
 * EVICTING; each contiguous run gets one SWAPOUT invalidation and is
 * write-protected; the dirty pages are written in one pager_swap_write();
 * every page whose content is safe in its slot is punched out of the memfd;
 * the rest stay resident, intact.
 *
 * Locks: the object's lock only to pick and settle victims; the
 * invalidations, I/O and ioctls run with no pager lock held.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pager_internal.h"

/* Pages per eviction batch (one swap write, one buffer). */
#define PAGER_EVICT_BATCH 256u

struct victim {
	uint64_t page;
	uint64_t slot;
	bool clean;		/* was CLEAN: its slot is valid, no I/O */
	int result;		/* 0: content safe in slot; else stays resident */
};

struct batch {
	struct pager_object *po;
	struct victim v[PAGER_EVICT_BATCH];
	unsigned int n;
	struct notifier_range ranges[PAGER_EVICT_BATCH];
	unsigned int nranges;
	char *bufs;		/* one page per victim */
};

/* Victims are contiguous from v[i] to v[j] (inclusive). */
static bool run_continues(const struct batch *b, unsigned int j)
{
	return j < b->n && b->v[j].page == b->v[j - 1].page + 1;
}

/* Marks the evictable pages of [first, end) EVICTING; stops when full. */
static uint64_t batch_pick(struct batch *b, uint64_t first, uint64_t end)
{
	struct pager_object *po = b->po;
	uint64_t p;

	umbra_mutex_lock(&po->lock);
	for (p = first; p < end && b->n < PAGER_EVICT_BATCH; p++) {
		if (!pager_page_is_evictable_locked(po, p))
			continue;
		b->v[b->n++] = (struct victim){
			.page = p,
			.slot = po->slot[p],
			.clean = po->state[p] == PAGER_PAGE_CLEAN,
		};
		po->state[p] = PAGER_PAGE_EVICTING;
	}
	umbra_mutex_unlock(&po->lock);
	return p;
}

/*
 * One invalidation per run, then write-protect the run.  A run whose
 * invalidation or protection failed gets that error in its victims' result
 * (its range, if started, stays in ranges[] to be ended).
 */
static void batch_isolate(struct batch *b)
{
	struct pager_object *po = b->po;

	for (unsigned int i = 0, j; i < b->n; i = j) {
		struct notifier_range *r = &b->ranges[b->nranges];
		int ret;

		for (j = i + 1; run_continues(b, j); j++)
			;
		notifier_range_init(r, po->obj, NOTIFIER_EVENT_SWAPOUT, b->v[i].page,
				    b->v[j - 1].page, NOTIFIER_RANGE_MAY_BLOCK);
		ret = notifier_invalidate_range_start(r);
		if (!ret) {
			b->nranges++;
			ret = pager_uffd_protect(po->pager, pager_page_addr(po, b->v[i].page),
						 (uint64_t)(j - i) * PAGER_PAGE_SIZE, true);
		}
		for (unsigned int k = i; k < j; k++)
			b->v[k].result = ret;
	}
}

/* Copies the dirty victims into new slots with one batched write. */
static void batch_write(struct batch *b)
{
	struct pager_object *po = b->po;
	struct pager *pager = po->pager;
	struct pager_io ios[PAGER_EVICT_BATCH];
	unsigned int idx[PAGER_EVICT_BATCH], n = 0;

	for (unsigned int i = 0; i < b->n; i++) {
		struct victim *v = &b->v[i];
		char *buf = b->bufs + (size_t)i * PAGER_PAGE_SIZE;
		ssize_t got;

		if (v->result || v->clean)
			continue;
		v->result = pager_swap_alloc(pager->swap, &v->slot);
		if (v->result)
			continue;
		/* Through the memfd, not the mapping: a hole reads as zeros
		 * without a fault, and the protected mapping stays untouched. */
		got = pread(po->memfd, buf, PAGER_PAGE_SIZE, (off_t)(v->page * PAGER_PAGE_SIZE));
		if (got != PAGER_PAGE_SIZE) {
			v->result = got < 0 ? -errno : -EIO;
			pager_swap_free(pager->swap, v->slot);
			continue;
		}
		ios[n] = (struct pager_io){ .slot = v->slot, .buf = buf };
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
	struct pager_object *po = b->po;

	for (unsigned int i = 0, j; i < b->n; i = j) {
		int ret = 0;

		j = i + 1;
		if (b->v[i].result)
			continue;
		while (run_continues(b, j) && !b->v[j].result)
			j++;
		if (fallocate(po->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			      (off_t)(b->v[i].page * PAGER_PAGE_SIZE),
			      (off_t)(j - i) * PAGER_PAGE_SIZE) < 0)
			ret = -errno;
		for (unsigned int k = i; k < j && ret; k++) {
			if (!b->v[k].clean)
				pager_swap_free(po->pager->swap, b->v[k].slot);
			b->v[k].result = ret;
		}
	}
}

/*
 * Settles every victim, lifts the protection of the dirty ones that stayed,
 * wakes the faults, ends the invalidations.  Returns the first error.
 */
static int batch_settle(struct batch *b)
{
	struct pager_object *po = b->po;
	int first_err = 0;

	/* Unprotect the dirty pages that stay while they are still ours. */
	for (unsigned int i = 0; i < b->n; i++) {
		if (b->v[i].result && !b->v[i].clean)
			(void)pager_uffd_protect(po->pager, pager_page_addr(po, b->v[i].page),
						 PAGER_PAGE_SIZE, false);
	}
	umbra_mutex_lock(&po->lock);
	for (unsigned int i = 0; i < b->n; i++) {
		struct victim *v = &b->v[i];

		if (!v->result) {
			po->slot[v->page] = v->slot;
			po->swapped++;
			if (v->clean)
				po->swapouts_cached++;
			else
				po->swapouts_io++;
			pager_page_evicted_locked(po, v->page);
			continue;
		}
		if (!first_err)
			first_err = v->result;
		po->write_errors++;
		po->state[v->page] = v->clean ? PAGER_PAGE_CLEAN : PAGER_PAGE_RESIDENT;
	}
	pthread_cond_broadcast(&po->cond);
	umbra_mutex_unlock(&po->lock);
	for (unsigned int i = 0; i < b->n; i++)
		pager_uffd_wake(po->pager, pager_page_addr(po, b->v[i].page), PAGER_PAGE_SIZE);
	for (unsigned int r = 0; r < b->nranges; r++)
		notifier_invalidate_range_end(&b->ranges[r]);
	return first_err;
}

int pager_evict(struct pager *pager, int id, uint64_t first, uint64_t npages)
{
	struct pager_object *po;
	struct batch *b;
	uint64_t p, end;
	int ret = 0, err;

	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_NOTIFIER_CALLBACK,
				   "pager_evict with a shadow lock held");
	po = pager_object_get(pager, id);
	if (!po || !npages || first >= po->npages || npages > po->npages - first)
		return -EINVAL;
	b = malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->bufs = aligned_alloc(PAGER_PAGE_SIZE, (size_t)PAGER_EVICT_BATCH * PAGER_PAGE_SIZE);
	if (!b->bufs) {
		free(b);
		return -ENOMEM;
	}
	b->po = po;
	end = first + npages;
	for (p = first; p < end;) {
		b->n = 0;
		b->nranges = 0;
		p = batch_pick(b, p, end);
		if (!b->n)
			continue;
		batch_isolate(b);
		batch_write(b);
		batch_punch(b);
		err = batch_settle(b);
		if (err && !ret)
			ret = err;
	}
	free(b->bufs);
	free(b);
	return ret;
}
