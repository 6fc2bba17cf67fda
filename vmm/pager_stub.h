#ifndef PAGER_STUB_H
#define PAGER_STUB_H
#include "umbra/pager.h"
/* ---- budget and reclaim (P2) ---- */
enum pager_policy {
	PAGER_POLICY_CLOCK,		/* second chance by access tracking (clock.c) */
	PAGER_POLICY_ROUND_ROBIN,	/* the next evictable page, young or not */
};
struct pager_budget {
	uint64_t limit_pages;	/* hard limit on present pages over all objects (pinned included), > 0 */
	uint64_t high_pages;	/* the reclaimer wakes above this; 0: limit - max(limit/16, 1 batch) (at least 1) */
	uint64_t low_pages;	/* ... and evicts down to this; 0: high - max(limit/16, 1 batch) (at least 0) */
	enum pager_policy policy;
	unsigned int batch_pages; /* victims per eviction batch; 0: 256 */
};
/* Starts the reclaimer thread (registered with liburcu).  Objects added
 * before or after are covered.  Returns 0, -EINVAL, -EALREADY, or
 * pthread_create's -errno. */
int pager_budget_start(struct pager *pager, const struct pager_budget *budget);
/* Stops and joins the reclaimer (no-op if none); pager_destroy calls it. */
void pager_budget_stop(struct pager *pager);
/* Evicts up to @npages pages chosen by the budget's policy (CLOCK without a
 * budget), in the caller: tests and benchmarks.  Returns the pages evicted or
 * -errno.  Caller registered with liburcu, holding no shadow or pager lock. */
int64_t pager_reclaim(struct pager *pager, uint64_t npages);
struct pager_reclaim_stats {
	uint64_t passes;	/* background reclaim passes (wake-ups that evicted) */
	uint64_t direct;	/* direct reclaims: a filling thread at the limit reclaimed itself */
	uint64_t reclaimed;	/* pages evicted by reclaim (background + direct + pager_reclaim) */
	uint64_t scanned;	/* pages the policy looked at */
	uint64_t backoffs;	/* passes that stopped on errors and waited before trying again */
	uint64_t over_limit;	/* fills past the hard limit (nothing could be evicted, or by the handler) */
	uint64_t peak_present;	/* most present pages seen (sampled at each fill notice and pass) */
};
void pager_reclaim_stats(struct pager *pager, struct pager_reclaim_stats *st);

#endif
