/*
 * bench-notifier - cost of delivering one invalidation as a range
 * (invalidate_range_start/end) versus per page (invalidate_page), the 2008
 * question, on the same object and the same subscribers.
 *
 *   bench-notifier [-r REPS] [-t MIN_MS]
 *
 * For 1, 512 and 262144 pages and 1, 16 and 256 subscribers it times
 * notifier_invalidate_range_start + notifier_invalidate_range_end of the
 * whole range in each mode and prints one row: the best-of-REPS time per
 * invalidation in each mode and their ratio (per-page / range).  Each
 * subscriber does the minimal realistic work of a secondary MMU: take its own
 * lock, update a counter, drop the lock, in every callback.  One thread, no
 * contention: this measures the delivery itself.
 *
 * A benchmark, not a test: it prints a table and exits 0 (1 on setup error).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "umbra/notifier.h"
#include "bench_util.h"

#define OBJ_PAGES 262144u
#define MAX_SUBS 256

struct bsub {
	struct umbra_mutex lock;
	uint64_t invalidated;	/* pages this subscriber has been told about */
	uint64_t ends;
} __attribute__((aligned(64)));

static struct bsub subs[MAX_SUBS];

static int b_start(struct notifier_subscription *sub, const struct notifier_range *r)
{
	struct bsub *b = notifier_subscription_priv(sub);

	umbra_mutex_lock(&b->lock);
	b->invalidated += notifier_range_npages(r);
	umbra_mutex_unlock(&b->lock);
	return 0;
}

static void b_end(struct notifier_subscription *sub, const struct notifier_range *r)
{
	struct bsub *b = notifier_subscription_priv(sub);

	umbra_mutex_lock(&b->lock);
	b->ends++;
	umbra_mutex_unlock(&b->lock);
}

static int b_page(struct notifier_subscription *sub, const struct notifier_range *r,
		  uint64_t page)
{
	struct bsub *b = notifier_subscription_priv(sub);

	umbra_mutex_lock(&b->lock);
	b->invalidated++;
	umbra_mutex_unlock(&b->lock);
	return 0;
}

static const struct notifier_ops bench_ops = {
	.invalidate_range_start = b_start,
	.invalidate_range_end = b_end,
	.invalidate_page = b_page,
};

/* Best-of-@reps ns for one invalidation of @npages pages in @mode. */
static double time_mode(struct notifier_object *obj, enum notifier_mode mode, uint64_t npages,
			int reps, uint64_t min_ns, int *err)
{
	double best = 0;

	notifier_object_set_mode(obj, mode);
	for (int rep = 0; rep < reps; rep++) {
		double t0 = now_ns(), t1;
		uint64_t iters = 0;

		do {
			struct notifier_range r;

			notifier_range_init(&r, obj, NOTIFIER_EVENT_SWAPOUT, 0, npages - 1,
					    NOTIFIER_RANGE_MAY_BLOCK);
			if (notifier_invalidate_range_start(&r) != 0) {
				*err = 1;
				return 0;
			}
			notifier_invalidate_range_end(&r);
			iters++;
			t1 = now_ns();
		} while (t1 - t0 < (double)min_ns);
		double per = (t1 - t0) / (double)iters;

		if (rep == 0 || per < best)
			best = per;
	}
	return best;
}

int main(int argc, char **argv)
{
	static const uint64_t pages[] = { 1, 512, 262144 };
	static const unsigned int nsubs[] = { 1, 16, 256 };
	struct notifier_subscription *handles[MAX_SUBS];
	struct notifier_object *obj;
	int reps = 3, opt, err = 0;
	long min_ms = 50;

	while ((opt = getopt(argc, argv, "r:t:")) != -1) {
		switch (opt) {
		case 'r':
			reps = atoi(optarg);
			break;
		case 't':
			min_ms = atol(optarg);
			break;
		default:
			fprintf(stderr, "usage: %s [-r REPS] [-t MIN_MS]\n", argv[0]);
			return 1;
		}
	}
	if (reps < 1 || min_ms < 0) {
		fprintf(stderr, "%s: REPS must be >= 1 and MIN_MS >= 0\n", argv[0]);
		return 1;
	}

	notifier_thread_init();
	if (notifier_object_create("bench", OBJ_PAGES, &obj) != 0) {
		fprintf(stderr, "%s: cannot create the memory object\n", argv[0]);
		return 1;
	}
	for (unsigned int i = 0; i < MAX_SUBS; i++)
		umbra_mutex_init(&subs[i].lock, "bench.sub", UMBRA_LOCK_RANK_MMU);

	printf("# bench-notifier: one invalidation of N pages, range (start+end) vs per-page "
	       "(invalidate_page), best of %d runs of >= %ld ms\n", reps, min_ms);
	printf("%8s %12s %14s %14s %9s\n", "pages", "subscribers", "range ns", "per-page ns", "ratio");
	for (size_t si = 0; si < sizeof(nsubs) / sizeof(nsubs[0]); si++) {
		unsigned int n = nsubs[si];

		for (unsigned int i = 0; i < n; i++) {
			if (notifier_subscribe(obj, &bench_ops, &subs[i], &handles[i]) != 0) {
				fprintf(stderr, "%s: subscribe failed\n", argv[0]);
				return 1;
			}
		}
		for (size_t pi = 0; pi < sizeof(pages) / sizeof(pages[0]); pi++) {
			double range_ns = time_mode(obj, NOTIFIER_MODE_RANGE, pages[pi], reps,
						    (uint64_t)min_ms * 1000000ull, &err);
			double page_ns = time_mode(obj, NOTIFIER_MODE_PAGE, pages[pi], reps,
						   (uint64_t)min_ms * 1000000ull, &err);

			if (err) {
				fprintf(stderr, "%s: invalidation failed\n", argv[0]);
				return 1;
			}
			printf("%8llu %12u %14.0f %14.0f %9.1f\n", (unsigned long long)pages[pi], n,
			       range_ns, page_ns, page_ns / range_ns);
			fflush(stdout);
		}
		for (unsigned int i = 0; i < n; i++)
			notifier_unsubscribe(handles[i]);
	}
	notifier_object_destroy(obj);
	notifier_barrier();
	for (unsigned int i = 0; i < MAX_SUBS; i++)
		umbra_mutex_exit(&subs[i].lock);
	notifier_thread_exit();
	return 0;
}
