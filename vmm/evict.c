/*
 * The evictor (testing, --evict-ms): swaps shared segment pages out through
 * the pager on a timer while the guests run, in address order whatever their
 * use, so that every VM mapping a page has it invalidated under it, its vCPUs
 * shot down (NMI), and the page swapped back in with its content on its next
 * access.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "umbra/trace.h"
#include "vmm.h"

#define MS_PER_S 1000u
#define NS_PER_MS 1000000L
#define NS_PER_S 1000000000L

struct evictor {
	pthread_t thread;
	/* lock (UMBRA_LOCK_RANK_VMM_EVICTOR) protects stop; cond (CLOCK_MONOTONIC)
	 * wakes the thread early to stop. */
	struct umbra_mutex lock;
	pthread_cond_t cond;
	bool stop;
	unsigned int interval_ms, pages, nr_segments;
	struct segment *segments[UMBRA_MAX_SEGMENTS];
	uint64_t cursor[UMBRA_MAX_SEGMENTS];	/* next page to evict, per segment */
	bool warned[UMBRA_MAX_SEGMENTS];
};

/* Waits until the next tick; returns false when asked to stop. */
static bool evictor_wait(struct evictor *ev)
{
	struct timespec until;
	bool go;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += ev->interval_ms / MS_PER_S;
	until.tv_nsec += (long)(ev->interval_ms % MS_PER_S) * NS_PER_MS;
	if (until.tv_nsec >= NS_PER_S) {
		until.tv_sec++;
		until.tv_nsec -= NS_PER_S;
	}
	umbra_mutex_lock(&ev->lock);
	while (!ev->stop && umbra_cond_timedwait(&ev->cond, &ev->lock, &until) != ETIMEDOUT)
		;
	go = !ev->stop;
	umbra_mutex_unlock(&ev->lock);
	return go;
}

static void evict_some(struct evictor *ev, unsigned int i)
{
	struct segment *seg = ev->segments[i];
	uint64_t npages = seg->size / NOTIFIER_PAGE_SIZE;

	uint64_t left = ev->pages < npages ? ev->pages : npages;

	while (left) {
		uint64_t first = ev->cursor[i], n = npages - first < left ? npages - first : left;
		/* Pages already out or busy are skipped, not errors. */
		int ret = vmm_memory_evict(seg->memory, seg->pager_id, first, n);

		ev->cursor[i] = (first + n) % npages;
		left -= n;
		if (ret && !ev->warned[i]) {
			fprintf(stderr, "umbra: warning: evicting pages %" PRIu64 "..%" PRIu64 " of segment '%s': %s\n",
				first, first + n - 1, seg->name, strerror(-ret));
			ev->warned[i] = true;
		}
	}
}

static void *evictor_thread(void *arg)
{
	struct evictor *ev = arg;

	umbra_trace_thread_name("evictor");
	if (notifier_thread_init()) {
		fprintf(stderr, "umbra: warning: the evictor could not register with liburcu; no evictions\n");
		return NULL;
	}
	while (evictor_wait(ev))
		for (unsigned int i = 0; i < ev->nr_segments; i++)
			evict_some(ev, i);
	notifier_thread_exit();
	return NULL;
}

int evictor_start(struct segment *const *segments, unsigned int nr_segments, unsigned int interval_ms,
		  unsigned int pages, struct evictor **out, struct vmm_error *err)
{
	struct evictor *ev;
	pthread_condattr_t attr;
	int ret;

	if (nr_segments > UMBRA_MAX_SEGMENTS || interval_ms == 0 || pages == 0)
		return vmm_error_set(err, EINVAL, "evictor: %u segments, every %u ms, %u pages: out of range",
				     nr_segments, interval_ms, pages);
	for (unsigned int i = 0; i < nr_segments; i++)
		if (!segments[i]->memory)
			return vmm_error_set(err, EINVAL, "evictor: segment '%s' is not under the pager",
					     segments[i]->name);
	ev = calloc(1, sizeof(*ev));
	if (!ev)
		return vmm_error_set(err, ENOMEM, "evictor: out of memory");
	ev->interval_ms = interval_ms;
	ev->pages = pages;
	ev->nr_segments = nr_segments;
	memcpy(ev->segments, segments, nr_segments * sizeof(*segments));
	umbra_mutex_init(&ev->lock, "vmm.evictor.lock", UMBRA_LOCK_RANK_VMM_EVICTOR);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&ev->cond, &attr);
	pthread_condattr_destroy(&attr);
	ret = pthread_create(&ev->thread, NULL, evictor_thread, ev);
	if (ret) {
		vmm_error_set(err, ret, "evictor: cannot create its thread: %s", strerror(ret));
		goto destroy_sync;
	}
	*out = ev;
	return 0;

destroy_sync:
	pthread_cond_destroy(&ev->cond);
	umbra_mutex_exit(&ev->lock);
	free(ev);
	return -ret;
}

void evictor_stop(struct evictor *ev)
{
	if (!ev)
		return;
	umbra_mutex_lock(&ev->lock);
	ev->stop = true;
	pthread_cond_signal(&ev->cond);
	umbra_mutex_unlock(&ev->lock);
	pthread_join(ev->thread, NULL);
	pthread_cond_destroy(&ev->cond);
	umbra_mutex_exit(&ev->lock);
	free(ev);
}
