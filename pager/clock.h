/*
 * pager/clock.h - the pager's victim policy: a CLOCK (second chance) over
 * the pages of several memory objects, aged by access tracking.  Private to
 * the pager library.
 *
 * The hand sweeps the resident pages of every object in turn.  A page that
 * was touched since the hand last passed (test_young: any VM that maps it
 * touched it) gets a second chance: its young state is cleared and the hand
 * moves on; a page that was not is a victim.  Pages the pager marks
 * non-resident (evicted) are skipped.  The young state comes from a
 * source (struct pager_clock_young_ops): the notifier's young queries, which
 * reach every VM subscribed to the object (pager_clock_notifier_young), or a
 * fake one in tests.
 *
 * Threads: a clock is not thread-safe; its user serialises every call (the
 * pager's reclaim lock).  pager_clock_pick() delivers young queries, so it
 * is called as notifier_clear_young() is: from a thread registered with
 * liburcu, holding no lock a notifier callback takes.
 */
#ifndef UMBRA_PAGER_CLOCK_H
#define UMBRA_PAGER_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

#include "umbra/notifier.h"

/*
 * Where the clock reads and clears young state.  Both are called only from
 * pager_clock_pick(), with the clock's user's serialisation held.
 */
struct pager_clock_young_ops {
	/* Nonzero if @page of @obj was touched since its young state was last
	 * cleared; read-only.  A negative errno counts as not young. */
	int (*test_young)(void *ctx, struct notifier_object *obj, uint64_t page);
	/* Clears @page's young state; returns nonzero if it was young. */
	int (*clear_young)(void *ctx, struct notifier_object *obj, uint64_t page);
};

/* notifier_test_young() / notifier_clear_young() on the object (@ctx unused):
 * every VM subscribed to it answers.  Never sleeps (umbra/notifier.h). */
extern const struct pager_clock_young_ops pager_clock_notifier_young;

struct pager_clock;

/* One page chosen for eviction. */
struct pager_clock_victim {
	struct notifier_object *obj;
	uint64_t page;
	void *priv;		/* the object's, from pager_clock_set_priv() */
};

/*
 * The clock's user says whether @page of the object with @priv may be a
 * victim now (the pager: resident, idle and not pinned).  Called only from
 * pager_clock_pick(), under the user's serialisation, before the page's
 * young state is looked at.  Must not block for long (it may take a leaf
 * lock).
 */
typedef bool (*pager_clock_filter_fn)(void *ctx, void *priv, uint64_t page);

/* Counters, monotonic since creation. */
struct pager_clock_stats {
	uint64_t picks;		/* pager_clock_pick() calls */
	uint64_t scanned;	/* resident (or filter-accepted) pages the hand looked at */
	uint64_t second_chances; /* ... found young (and cleared) */
	uint64_t victims;	/* ... returned as victims */
};

/* A clock with no object, reading young state through @ops with @ctx.
 * Returns 0 and *@out, -EINVAL (@ops incomplete) or -ENOMEM. */
int pager_clock_create(const struct pager_clock_young_ops *ops, void *ctx,
		       struct pager_clock **out);
/* Frees the clock and drops its object references. */
void pager_clock_destroy(struct pager_clock *clock);

/*
 * Adds @obj's pages to the sweep, all resident if @resident, else none,
 * and takes a reference on @obj until it is removed.  Returns 0, -EEXIST
 * (already added) or -ENOMEM.
 */
int pager_clock_add_object(struct pager_clock *clock, struct notifier_object *obj, bool resident);
/* Removes @obj (no-op if absent); the hand moves to the next object if it
 * was on it. */
void pager_clock_remove_object(struct pager_clock *clock, struct notifier_object *obj);

/* Sets the private pointer given with @obj's victims and to the filter.
 * Returns 0 or -ENOENT (@obj not added). */
int pager_clock_set_priv(struct pager_clock *clock, struct notifier_object *obj, void *priv);

/*
 * Makes the clock ask @fn (with @ctx) whether each page under the hand may
 * be a victim, instead of keeping residency itself: the pager's page states
 * are then the one record of what is resident.  With a filter, objects are
 * added resident (every page in the sweep), victims stay in the sweep (the
 * filter rejects them once they are evicted, and accepts them again when
 * they come back), and pager_clock_set_resident() is not needed.  Set it
 * before the first pick.
 */
void pager_clock_set_filter(struct pager_clock *clock, pager_clock_filter_fn fn, void *ctx);

/* Marks @page of @obj resident (swapped in) or not (evicted).  Returns 0, or
 * -ENOENT (@obj not added) / -EINVAL (@page outside it). */
int pager_clock_set_resident(struct pager_clock *clock, struct notifier_object *obj,
			     uint64_t page, bool resident);
/* Whether @page of @obj is resident for the clock (false if unknown). */
bool pager_clock_is_resident(const struct pager_clock *clock, const struct notifier_object *obj,
			     uint64_t page);

/*
 * Sweeps the hand until @n victims are found or the hand went twice round
 * every object (the first pass clears what is young, the second finds it
 * old unless touched again meanwhile).  Writes the victims to @victims in
 * hand order and returns how many (0..@n).  Without a filter, victims leave
 * the sweep (they are non-resident for the clock, so no page is returned
 * twice) and the user marks a victim it could not evict resident again;
 * with one, they stay and the filter decides.
 */
unsigned int pager_clock_pick(struct pager_clock *clock, struct pager_clock_victim *victims,
			      unsigned int n);

/* Copies the counters. */
void pager_clock_stats(const struct pager_clock *clock, struct pager_clock_stats *stats);

#endif /* UMBRA_PAGER_CLOCK_H */
