/*
 * The pager's statistics: per-object counters summed by pager_stats, and the
 * swap-in latency histogram (buckets of a quarter power of two of
 * nanoseconds) from which the percentiles are read.
 *
 * Locks: each object's lock while its counters are read or its histogram
 * updated; nothing else.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "pager_internal.h"

/* 2^(q/4) for q = 0..3, scaled by 2^63: the bucket bounds within a power
 * of two. */
static const uint64_t quarter_pow2[4] = {
	0x8000000000000000ull,
	0x9837f0518db8a96full,
	0xb504f333f9de6484ull,
	0xd744fccad69d6af4ull,
};

uint64_t pager_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The bucket of @ns: floor(4 * log2(ns)), 0 for 0 and 1 ns. */
static unsigned int hist_bucket(uint64_t ns)
{
	unsigned int e, q = 0, k;
	uint64_t norm;

	if (ns < 2)
		return 0;
	e = 63u - (unsigned int)__builtin_clzll(ns);
	norm = ns << (63u - e);		/* top bit set: 2^63 * ns / 2^e */
	while (q < 3 && norm >= quarter_pow2[q + 1])
		q++;
	k = 4 * e + q;
	return k < PAGER_HIST_BUCKETS ? k : PAGER_HIST_BUCKETS - 1;
}

/* The upper bound of bucket @k: 2^((k+1)/4) ns, rounded up. */
static uint64_t hist_bound(unsigned int k)
{
	unsigned int e = (k + 1) / 4, q = (k + 1) % 4;

	if (e > 63)
		return UINT64_MAX;
	return (quarter_pow2[q] >> (63 - e)) + (q != 0);
}

void pager_hist_add(struct pager_hist *hist, uint64_t ns)
{
	hist->count[hist_bucket(ns)]++;
	if (ns > hist->max_ns)
		hist->max_ns = ns;
}

/* The @pct-th percentile of @hist: its bucket's upper bound, at most the
 * maximum; 0 for an empty histogram. */
static uint64_t hist_percentile(const struct pager_hist *hist, unsigned int pct)
{
	uint64_t total = 0, rank, seen = 0;

	for (unsigned int k = 0; k < PAGER_HIST_BUCKETS; k++)
		total += hist->count[k];
	if (!total)
		return 0;
	rank = (total * pct + 99) / 100;	/* the rank-th smallest, 1-based */
	for (unsigned int k = 0; k < PAGER_HIST_BUCKETS; k++) {
		seen += hist->count[k];
		if (seen >= rank) {
			uint64_t bound = hist_bound(k);

			return bound < hist->max_ns ? bound : hist->max_ns;
		}
	}
	return hist->max_ns;
}

static void hist_merge(struct pager_hist *into, const struct pager_hist *from)
{
	for (unsigned int k = 0; k < PAGER_HIST_BUCKETS; k++)
		into->count[k] += from->count[k];
	if (from->max_ns > into->max_ns)
		into->max_ns = from->max_ns;
}

static int object_stats_add(struct pager_object *po, struct pager_stats *st,
			    struct pager_hist *hist)
{
	struct stat sb;

	if (fstat(po->memfd, &sb) < 0)
		return -errno;
	umbra_mutex_lock(&po->lock);
	st->npages += po->npages;
	st->resident += po->npages - po->swapped - po->lost;
	st->swapped += po->swapped;
	st->swapouts_io += po->swapouts_io;
	st->swapouts_cached += po->swapouts_cached;
	st->swapins += po->swapins;
	st->zero_fills += po->zero_fills;
	st->write_errors += po->write_errors;
	st->busy_refusals += po->busy_refusals;
	st->read_errors += po->read_errors;
	st->discarded_pages += po->discarded;
	st->present += po->present;
	st->pinned += po->pinned;
	st->refaults += po->refaults;
	st->lost += po->lost;
	hist_merge(hist, &po->swapin_ns);
	umbra_mutex_unlock(&po->lock);
	st->host_bytes += (uint64_t)sb.st_blocks * 512;
	return 0;
}

int pager_stats(struct pager *pager, int id, struct pager_stats *st)
{
	struct pager_hist hist;
	struct pager_object *po;
	int ret = 0, n;

	memset(st, 0, sizeof(*st));
	memset(&hist, 0, sizeof(hist));
	if (id >= 0) {
		po = pager_object_get(pager, id);
		ret = po ? object_stats_add(po, st, &hist) : -EINVAL;
	} else if (id != -1 || !pager) {
		return -EINVAL;
	} else {
		n = __atomic_load_n(&pager->nr_objects, __ATOMIC_ACQUIRE);
		for (int i = 0; i < n && !ret; i++)
			ret = object_stats_add(pager->objects[i], st, &hist);
	}
	if (ret)
		return ret;
	st->swapin_ns_p50 = hist_percentile(&hist, 50);
	st->swapin_ns_p99 = hist_percentile(&hist, 99);
	st->swapin_ns_max = hist.max_ns;
	return 0;
}
