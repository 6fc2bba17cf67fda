/*
 * base/lock.c - the per-thread state of the lock-rank checker and its
 * violation report (include/umbra/lock.h).  Defined in every build type;
 * only code built with UMBRA_DEBUG=1 uses them.
 */
#include <stdio.h>

#include "umbra/lock.h"

__thread uint32_t umbra_lock_ranks_held;
__thread const char *umbra_lock_names_held[UMBRA_LOCK_RANK_MAX + 1];
__thread const struct umbra_rwlock *umbra_lock_read_held[UMBRA_LOCK_RANK_MAX + 1];

void umbra_lock_violation(const char *what, const char *name, unsigned int rank)
{
	unsigned int r;

	if (name)
		fprintf(stderr, "umbra: lock rule violated: %s: lock '%s' (rank %u)\n", what, name, rank);
	else
		fprintf(stderr, "umbra: lock rule violated: %s (rank %u and above)\n", what, rank);
	for (r = 1; r <= UMBRA_LOCK_RANK_MAX; r++)
		if (umbra_lock_ranks_held & (1u << r))
			fprintf(stderr, "umbra:   this thread holds '%s' (rank %u)\n",
				umbra_lock_names_held[r] ? umbra_lock_names_held[r] : "?", r);
	fflush(stderr);
	abort();
}
