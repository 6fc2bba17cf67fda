#ifndef PAGER_STUB_H
#define PAGER_STUB_H
#include <sys/types.h>
#include "umbra/pager.h"

/* PAGER_MAX_OBJECTS becomes 1024 (256 VMs' RAM + segments, with room). */

/* ---- callbacks to the pager's user (P1 implements the calls of page_lost;
 *      P2 the calls of write_error) ---- */
struct pager_ops {
	/* Page @page of object @id could not be brought back from swap (@err:
	 * -EIO or another read error, -EBADMSG for a checksum mismatch) for
	 * thread @tid: the thread whose access faulted (the userfaultfd
	 * message's thread id, UFFD_FEATURE_THREAD_ID), or the caller of
	 * pager_get_page()/pager_pin() (gettid()).  Called once per failed
	 * access, before that thread is released, from the handler thread or
	 * the caller, with no pager lock held.  Must not touch guest memory,
	 * block on reclaim or call the pager; may take leaf locks and send
	 * signals (the VMM kicks the faulting vCPU out of KVM_RUN so it runs no
	 * further guest instruction, and stops its VM). May be NULL. */
	void (*page_lost)(void *priv, int id, uint64_t page, int err, pid_t tid);
	/* An eviction could not write a page out (@err: -ENOSPC for a full swap
	 * file, -EIO, -EFBIG...); the page stayed resident and intact.  Called
	 * by the reclaiming thread with no pager lock held, at most once per
	 * distinct @err value per pager (the VMM warns once per cause).  May
	 * be NULL. */
	void (*write_error)(void *priv, int err);
};
/* Set before the first pager_add_object(); @ops is copied. */
void pager_set_ops(struct pager *pager, const struct pager_ops *ops, void *priv);

/* ---- pins (P1) ---- */
/* Makes pages [first, first + npages) of object @id resident (each as
 * pager_get_page) and pins them: a pinned page is never evicted (pager_evict
 * and the reclaimer skip it) until as many pager_unpin() calls.  Returns 0,
 * -EINVAL (bad id/range), -EOVERFLOW (a page pinned 65535 times), or a
 * swap-in error (the pins this call took are dropped again).  No lock held. */
int pager_pin(struct pager *pager, int id, uint64_t first, uint64_t npages);
void pager_unpin(struct pager *pager, int id, uint64_t first, uint64_t npages);

/* Refault window (P1): a swap-in of a page evicted fewer than @pages evictions
 * ago (over the whole pager) counts as a refault.  Default
 * PAGER_REFAULT_WINDOW_DEFAULT (65536); the VMM sets it to the limit's pages. */
#define PAGER_REFAULT_WINDOW_DEFAULT_X 65536u
void pager_set_refault_window(struct pager *pager, uint64_t pages);

/* struct pager_stats gains (P1):
 *	uint64_t present;	   pages in host memory (what the budget counts)
 *	uint64_t pinned;	   pages pinned at least once
 *	uint64_t refaults;	   swap-ins within the refault window
 *	uint64_t lost;		   pages that could not be brought back (stay lost)
 *	uint64_t swapin_ns_p50, swapin_ns_p99, swapin_ns_max;  latency of swap-ins
 *	   (a swap-in: from the decision to read the slot to the page installed),
 *	   from a histogram with buckets 2^(k/4) ns (per object; summed for id -1) */

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
