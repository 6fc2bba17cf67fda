/*
 * base/lock.c - the per-thread state of the lock-rank checker and its
 * violation report (include/umbra/lock.h).  Defined in every build type;
 * only code built with UMBRA_DEBUG=1 uses them.
 */
#include <sched.h>
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

__thread unsigned int umbra_thread_slot_plus1;

unsigned int umbra_thread_slot_assign(void)
{
	static unsigned int next;
	const unsigned int s = __atomic_fetch_add(&next, 1u, __ATOMIC_RELAXED) % UMBRA_THREAD_SLOTS;

	umbra_thread_slot_plus1 = s + 1;
	return s;
}

void umbra_rwlock_wait_readers(struct umbra_rwlock *l)
{
	for (unsigned int spins = 0; umbra_rwlock_has_readers(l); spins++) {
		if (spins >= 64)
			sched_yield();
#if defined(__x86_64__) || defined(__i386__)
		else
			__builtin_ia32_pause();
#endif
	}
}
