/*
 * The budget and the reclaimer (docs/pager.md, "The budget and the
 * reclaimer"): present pages over every object of a pager are kept under a
 * hard limit by
 *
 *   - a background thread that sleeps until present > high (woken by an
 *     eventfd from pager_reclaim_note_fill, or by its 50 ms tick) and
 *     evicts batches of victims down to low;
 *   - direct reclaim: a thread with no lock held that is about to bring a
 *     page in at the limit evicts one batch itself first.
 *
 * Victims come from a policy: CLOCK (clock.c, aged by the notifier's young
 * queries, asking the pager's page states what is evictable) or ROUND_ROBIN
 * (the next evictable pages in address order).  A batch that could not be
 * written reports its error once per cause (pager_ops.write_error) and makes
 * every reclaimer back off: 100 ms, doubling to 1.6 s, reset by a pass that
 * evicts without error.
 *
 * Locks: pick_lock (UMBRA_LOCK_RANK_PAGER_RECLAIM, the outermost rank of
 * all) serialises the policy's state; it is held across a pick (young
 * queries, whose callbacks try-lock shadow locks, and the object locks of
 * the page-state checks) and never across an eviction, which runs with no
 * pager lock held (its invalidations take the VMs' mmu_locks).  Everything
 * the filling threads read (the budget, the backoff, the counters) is atomic,
 * so note_fill never blocks.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "pager_internal.h"
#include "umbra/trace.h"

#define RECLAIM_TICK_MS 50
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 1600u
/* Distinct write errors reported per pager (more are not reported). */
#define RECLAIM_MAX_ERRORS 16

struct pager_reclaim {
	struct pager *pager;
	/*
	 * pick_lock (UMBRA_LOCK_RANK_PAGER_RECLAIM): the policy's state (the
	 * clock, the objects it knows, the round-robin cursor) and the
	 * reclaimer thread's start and stop.  Held across a pick, never across
	 * an eviction or a wait.
	 */
	struct umbra_mutex pick_lock;
	struct pager_clock *clock;
	int clock_objects;		/* pager objects added to the clock */
	int rr_id;			/* round robin: the next page to look at */
	uint64_t rr_page;
	pthread_t thread;
	bool thread_started;

	/* The budget: stored before active is set (release), read after. */
	atomic_bool active;
	_Atomic enum pager_policy policy;
	atomic_uint_fast64_t limit, high, low;
	atomic_uint batch;

	int wake_fd;			/* eventfd: a fill passed high, or stop */
	atomic_bool stop;
	atomic_bool kicked;		/* wake_fd was written since the thread looked */
	atomic_uint_fast64_t backoff_until_ns;	/* no reclaim before (CLOCK_MONOTONIC) */
	atomic_uint backoff_ms;		/* the next backoff's length */
	atomic_int errors_reported[RECLAIM_MAX_ERRORS];	/* 0: free entry */

	struct {
		atomic_uint_fast64_t passes, direct, reclaimed, scanned, backoffs;
		atomic_uint_fast64_t over_limit, peak_present;
	} stats;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t present_pages(const struct pager_reclaim *r)
{
	return atomic_load_explicit(&r->pager->present_pages, memory_order_relaxed);
}

/* Records @present as the peak if it is. */
static void note_present(struct pager_reclaim *r, uint64_t present)
{
	uint64_t peak = atomic_load_explicit(&r->stats.peak_present, memory_order_relaxed);

	while (present > peak &&
	       !atomic_compare_exchange_weak_explicit(&r->stats.peak_present, &peak, present,
						      memory_order_relaxed, memory_order_relaxed))
		;
}

static void stat_add(atomic_uint_fast64_t *counter, uint64_t n)
{
	atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

/* ---- the policies ---------------------------------------------------- */

/* The clock's filter: the pager's page state says what may be a victim. */
static bool page_is_candidate(void *ctx, void *priv, uint64_t page)
{
	struct pager_object *po = priv;
	bool ok;

	(void)ctx;
	umbra_mutex_lock(&po->lock);
	ok = pager_page_is_evictable_locked(po, page);
	umbra_mutex_unlock(&po->lock);
	return ok;
}

/* Puts the objects added since the last pick under the clock. */
static void clock_sync_objects_locked(struct pager_reclaim *r)
{
	struct pager *pager = r->pager;
	int n = __atomic_load_n(&pager->nr_objects, __ATOMIC_ACQUIRE);

	umbra_mutex_assert_held(&r->pick_lock);
	for (; r->clock_objects < n; r->clock_objects++) {
		struct pager_object *po = pager->objects[r->clock_objects];

		if (pager_clock_add_object(r->clock, po->obj, true))
			return;	/* -ENOMEM: tried again at the next pick */
		(void)pager_clock_set_priv(r->clock, po->obj, po);
	}
}

static unsigned int pick_clock_locked(struct pager_reclaim *r, struct pager_victim *v,
				      unsigned int n)
{
	struct pager_clock_victim cv[PAGER_EVICT_BATCH];
	struct pager_clock_stats before, after;
	unsigned int got;

	clock_sync_objects_locked(r);
	pager_clock_stats(r->clock, &before);
	got = pager_clock_pick(r->clock, cv, n);
	pager_clock_stats(r->clock, &after);
	stat_add(&r->stats.scanned, after.scanned - before.scanned);
	for (unsigned int i = 0; i < got; i++) {
		const struct pager_object *po = cv[i].priv;

		v[i] = (struct pager_victim){ .id = po->id, .page = cv[i].page };
	}
	return got;
}

/* The evictable pages of one object from the cursor on, until @n victims
 * or @budget pages looked at. */
static unsigned int pick_object_locked(struct pager_reclaim *r, struct pager_object *po,
				       struct pager_victim *v, unsigned int n, uint64_t *budget)
{
	unsigned int found = 0;

	umbra_mutex_lock(&po->lock);
	for (; r->rr_page < po->npages && found < n && *budget; r->rr_page++, (*budget)--) {
		if (pager_page_is_evictable_locked(po, r->rr_page))
			v[found++] = (struct pager_victim){ .id = po->id, .page = r->rr_page };
	}
	umbra_mutex_unlock(&po->lock);
	return found;
}

/* Round robin: the next evictable pages in address order, once round. */
static unsigned int pick_round_robin_locked(struct pager_reclaim *r, struct pager_victim *v,
					    unsigned int n)
{
	struct pager *pager = r->pager;
	int nobj = __atomic_load_n(&pager->nr_objects, __ATOMIC_ACQUIRE);
	uint64_t total = 0, budget;
	unsigned int found = 0;

	umbra_mutex_assert_held(&r->pick_lock);
	for (int i = 0; i < nobj; i++)
		total += pager->objects[i]->npages;
	budget = total;
	while (found < n && budget) {
		if (r->rr_id >= nobj || r->rr_page >= pager->objects[r->rr_id]->npages) {
			r->rr_id = r->rr_id + 1 < nobj ? r->rr_id + 1 : 0;
			r->rr_page = 0;
			continue;
		}
		found += pick_object_locked(r, pager->objects[r->rr_id], v + found, n - found,
					    &budget);
	}
	stat_add(&r->stats.scanned, total - budget);
	return found;
}

/* Up to @n (<= PAGER_EVICT_BATCH) victims by the budget's policy. */
static unsigned int pick(struct pager_reclaim *r, struct pager_victim *v, unsigned int n)
{
	unsigned int got;

	umbra_mutex_lock(&r->pick_lock);
	if (atomic_load(&r->policy) == PAGER_POLICY_ROUND_ROBIN)
		got = pick_round_robin_locked(r, v, n);
	else
		got = pick_clock_locked(r, v, n);
	umbra_mutex_unlock(&r->pick_lock);
	return got;
}

/* ---- evicting -------------------------------------------------------- */

/* Calls write_error once per distinct @err per pager. */
static void report_write_error(struct pager_reclaim *r, int err)
{
	struct pager *pager = r->pager;

	for (int i = 0; i < RECLAIM_MAX_ERRORS; i++) {
		int seen = atomic_load(&r->errors_reported[i]);

		if (seen == err)
			return;
		if (seen)
			continue;
		if (!atomic_compare_exchange_strong(&r->errors_reported[i], &seen, err)) {
			if (seen == err)
				return;
			continue;	/* another error took the entry */
		}
		if (pager->ops.write_error)
			pager->ops.write_error(pager->ops_priv, err);
		return;
	}
}

/*
 * Picks and evicts one batch of up to @n pages (no lock held across the
 * eviction).  Adds the pages evicted to *@evicted and returns 0 or the
 * first write error (reported), and *@picked whether there was a victim.
 */
static int reclaim_batch(struct pager_reclaim *r, uint64_t n, uint64_t *evicted, bool *picked)
{
	struct pager_victim v[PAGER_EVICT_BATCH];
	unsigned int batch = atomic_load(&r->batch), got;
	uint64_t done = 0;
	int err;

	if (n > batch)
		n = batch;
	got = pick(r, v, (unsigned int)n);
	*picked = got > 0;
	if (!got)
		return 0;
	err = pager_evict_victims(r->pager, v, got, &done);
	stat_add(&r->stats.reclaimed, done);
	*evicted += done;
	if (err)
		report_write_error(r, err);
	return err;
}

/* Evicts batches until @target pages were evicted, a batch evicts nothing,
 * or an error.  Returns 0 or the error. */
static int reclaim_pages(struct pager_reclaim *r, uint64_t target, uint64_t *evicted)
{
	while (*evicted < target) {
		uint64_t before = *evicted;
		bool picked;
		int err = reclaim_batch(r, target - *evicted, evicted, &picked);

		if (err)
			return err;
		if (!picked || *evicted == before)
			break;
	}
	return 0;
}

/* A pass failed: no reclaim for the next backoff, which doubles. */
static void backoff_start(struct pager_reclaim *r)
{
	unsigned int ms = atomic_load(&r->backoff_ms);

	stat_add(&r->stats.backoffs, 1);
	atomic_store(&r->backoff_until_ns, now_ns() + (uint64_t)ms * 1000000u);
	atomic_store(&r->backoff_ms, ms * 2 < BACKOFF_MAX_MS ? ms * 2 : BACKOFF_MAX_MS);
}

static void backoff_reset(struct pager_reclaim *r)
{
	atomic_store(&r->backoff_ms, BACKOFF_MIN_MS);
}

static bool is_backing_off(struct pager_reclaim *r)
{
	return now_ns() < atomic_load(&r->backoff_until_ns);
}

/* ---- the reclaimer thread -------------------------------------------- */

/* Sleeps until wake_fd is written or @ms pass, then drains it. */
static void wait_wake(struct pager_reclaim *r, int ms)
{
	struct pollfd pfd = { .fd = r->wake_fd, .events = POLLIN };
	uint64_t count;

	if (poll(&pfd, 1, ms) > 0 && read(r->wake_fd, &count, sizeof(count)) < 0)
		return;	/* EAGAIN: drained by an earlier read */
}

/* Sleeps until @until (CLOCK_MONOTONIC ns), fill notices or not, or stop. */
static void wait_until(struct pager_reclaim *r, uint64_t until)
{
	while (!atomic_load(&r->stop)) {
		uint64_t now = now_ns();

		if (now >= until)
			return;
		wait_wake(r, (int)((until - now + 999999) / 1000000));
	}
}

/* Sleeps until present > high; false on stop. */
static bool wait_for_work(struct pager_reclaim *r)
{
	for (;;) {
		uint64_t present;

		if (atomic_load(&r->stop))
			return false;
		/* Cleared before the check: a fill after it writes wake_fd. */
		atomic_store(&r->kicked, false);
		present = present_pages(r);
		note_present(r, present);
		if (present > atomic_load(&r->high))
			return true;
		wait_wake(r, RECLAIM_TICK_MS);
	}
}

static void *reclaimer_main(void *arg)
{
	struct pager_reclaim *r = arg;
	unsigned int idle_ms = RECLAIM_TICK_MS;

	umbra_trace_thread_name("pager reclaimer");
	if (notifier_thread_init())
		return NULL;
	while (wait_for_work(r)) {
		uint64_t present = present_pages(r), low = atomic_load(&r->low), evicted = 0;
		int err = 0;

		if (!is_backing_off(r) && present > low)
			err = reclaim_pages(r, present - low, &evicted);
		if (evicted)
			stat_add(&r->stats.passes, 1);
		if (err) {
			backoff_start(r);
			wait_until(r, atomic_load(&r->backoff_until_ns));
		} else if (evicted) {
			backoff_reset(r);
			idle_ms = RECLAIM_TICK_MS;
		} else {
			/* Nothing evictable (every page pinned or busy) or a
			 * backoff: look again later, not at once, and later
			 * still each time (a pick may scan every page). */
			wait_until(r, atomic_load(&r->backoff_until_ns));
			wait_until(r, now_ns() + (uint64_t)idle_ms * 1000000u);
			idle_ms = idle_ms * 2 < BACKOFF_MAX_MS ? idle_ms * 2 : BACKOFF_MAX_MS;
		}
	}
	notifier_thread_exit();
	return NULL;
}

/* ---- state ----------------------------------------------------------- */

static struct pager_reclaim *reclaim_of(struct pager *pager)
{
	return __atomic_load_n(&pager->reclaim, __ATOMIC_ACQUIRE);
}

static struct pager_reclaim *reclaim_create(struct pager *pager)
{
	struct pager_reclaim *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->pager = pager;
	r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->wake_fd < 0)
		goto free_r;
	if (pager_clock_create(&pager_clock_notifier_young, NULL, &r->clock))
		goto close_fd;
	pager_clock_set_filter(r->clock, page_is_candidate, NULL);
	umbra_mutex_init(&r->pick_lock, "pager.reclaim.pick_lock", UMBRA_LOCK_RANK_PAGER_RECLAIM);
	atomic_store(&r->policy, PAGER_POLICY_CLOCK);
	atomic_store(&r->batch, PAGER_EVICT_BATCH);
	atomic_store(&r->backoff_ms, BACKOFF_MIN_MS);
	return r;
close_fd:
	close(r->wake_fd);
free_r:
	free(r);
	return NULL;
}

static void reclaim_destroy(struct pager_reclaim *r)
{
	pager_clock_destroy(r->clock);
	umbra_mutex_exit(&r->pick_lock);
	close(r->wake_fd);
	free(r);
}

/* The pager's reclaim state, made on first use (not by the handler). */
static struct pager_reclaim *reclaim_get(struct pager *pager)
{
	struct pager_reclaim *r = reclaim_of(pager), *expected = NULL;

	if (r)
		return r;
	r = reclaim_create(pager);
	if (!r)
		return NULL;
	if (!__atomic_compare_exchange_n(&pager->reclaim, &expected, r, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE)) {
		reclaim_destroy(r);
		return expected;
	}
	return r;
}

/* Fills the budget's defaults and checks it; 0 or -EINVAL. */
static int budget_resolve(const struct pager_budget *in, struct pager_budget *out)
{
	uint64_t step;

	*out = *in;
	if (!out->limit_pages || out->batch_pages > PAGER_EVICT_BATCH ||
	    (out->policy != PAGER_POLICY_CLOCK && out->policy != PAGER_POLICY_ROUND_ROBIN))
		return -EINVAL;
	if (!out->batch_pages)
		out->batch_pages = PAGER_EVICT_BATCH;
	step = out->limit_pages / 16 > out->batch_pages ? out->limit_pages / 16 : out->batch_pages;
	if (!out->high_pages)
		out->high_pages = out->limit_pages > step + 1 ? out->limit_pages - step : 1;
	if (!in->low_pages)
		out->low_pages = out->high_pages > step ? out->high_pages - step : 0;
	if (out->high_pages > out->limit_pages || out->low_pages >= out->high_pages)
		return -EINVAL;
	return 0;
}

int pager_reclaim_set_budget(struct pager *pager, const struct pager_budget *budget)
{
	struct pager_budget b;
	struct pager_reclaim *r;
	int ret;

	if (!pager || !budget || budget_resolve(budget, &b))
		return -EINVAL;
	r = reclaim_get(pager);
	if (!r)
		return -ENOMEM;
	umbra_mutex_lock(&r->pick_lock);
	ret = -EALREADY;
	if (atomic_load(&r->active))
		goto unlock;
	atomic_store(&r->limit, b.limit_pages);
	atomic_store(&r->high, b.high_pages);
	atomic_store(&r->low, b.low_pages);
	atomic_store(&r->batch, b.batch_pages);
	atomic_store(&r->policy, b.policy);
	atomic_store_explicit(&r->active, true, memory_order_release);
	ret = 0;
unlock:
	umbra_mutex_unlock(&r->pick_lock);
	return ret;
}

int pager_budget_start(struct pager *pager, const struct pager_budget *budget)
{
	struct pager_reclaim *r;
	int ret = pager_reclaim_set_budget(pager, budget);

	if (ret)
		return ret;
	r = reclaim_of(pager);
	umbra_mutex_lock(&r->pick_lock);
	atomic_store(&r->stop, false);
	ret = -pthread_create(&r->thread, NULL, reclaimer_main, r);
	if (ret)
		atomic_store(&r->active, false);
	else
		r->thread_started = true;
	umbra_mutex_unlock(&r->pick_lock);
	return ret;
}

void pager_budget_stop(struct pager *pager)
{
	struct pager_reclaim *r = pager ? reclaim_of(pager) : NULL;
	uint64_t one = 1;
	bool started;

	if (!r)
		return;
	umbra_mutex_lock(&r->pick_lock);
	started = r->thread_started;
	r->thread_started = false;
	atomic_store(&r->active, false);
	umbra_mutex_unlock(&r->pick_lock);
	if (!started)
		return;
	atomic_store(&r->stop, true);
	if (write(r->wake_fd, &one, sizeof(one)) < 0) {
		/* Cannot fail for an eventfd far from overflow; the tick
		 * would see stop anyway. */
	}
	pthread_join(r->thread, NULL);
}

void pager_reclaim_exit(struct pager *pager)
{
	struct pager_reclaim *r = reclaim_of(pager);

	if (!r)
		return;
	pager_budget_stop(pager);
	pager->reclaim = NULL;
	reclaim_destroy(r);
}

/* ---- the calls of the filling threads -------------------------------- */

void pager_reclaim_note_fill(struct pager *pager)
{
	struct pager_reclaim *r = reclaim_of(pager);
	uint64_t present, one = 1;

	if (!r || !atomic_load_explicit(&r->active, memory_order_acquire))
		return;
	present = present_pages(r);
	note_present(r, present);
	if (present > atomic_load_explicit(&r->limit, memory_order_relaxed))
		stat_add(&r->stats.over_limit, 1);
	if (present > atomic_load_explicit(&r->high, memory_order_relaxed) &&
	    !atomic_exchange(&r->kicked, true) && write(r->wake_fd, &one, sizeof(one)) < 0)
		atomic_store(&r->kicked, false);
}

void pager_reclaim_before_fill(struct pager *pager)
{
	struct pager_reclaim *r = reclaim_of(pager);
	uint64_t evicted = 0;
	bool picked;

	if (!r || !atomic_load_explicit(&r->active, memory_order_acquire))
		return;
	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_PAGER_RECLAIM, "direct reclaim with a lock held");
	if (present_pages(r) < atomic_load(&r->limit) || is_backing_off(r))
		return;
	stat_add(&r->stats.direct, 1);
	if (reclaim_batch(r, atomic_load(&r->batch), &evicted, &picked))
		backoff_start(r);
	else if (evicted)
		backoff_reset(r);
}

int64_t pager_reclaim(struct pager *pager, uint64_t npages)
{
	struct pager_reclaim *r;
	uint64_t evicted = 0;
	int err;

	if (!pager)
		return -EINVAL;
	r = reclaim_get(pager);
	if (!r)
		return -ENOMEM;
	err = reclaim_pages(r, npages, &evicted);
	return err && !evicted ? err : (int64_t)evicted;
}

void pager_reclaim_stats(struct pager *pager, struct pager_reclaim_stats *st)
{
	struct pager_reclaim *r = pager ? reclaim_of(pager) : NULL;

	*st = (struct pager_reclaim_stats){ 0 };
	if (!r)
		return;
	st->passes = atomic_load(&r->stats.passes);
	st->direct = atomic_load(&r->stats.direct);
	st->reclaimed = atomic_load(&r->stats.reclaimed);
	st->scanned = atomic_load(&r->stats.scanned);
	st->backoffs = atomic_load(&r->stats.backoffs);
	st->over_limit = atomic_load(&r->stats.over_limit);
	st->peak_present = atomic_load(&r->stats.peak_present);
}
