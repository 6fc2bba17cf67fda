/*
 * base/lock.c - the per-thread state of the lock-rank checker and its
 * violation report (defined in every build type; only code built with
 * UMBRA_DEBUG=1 uses them), the claim and give-back of per-thread slots,
 * and the rwlock writer's wait for readers (include/umbra/lock.h).
 */
#include <pthread.h>
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

_Static_assert(UMBRA_THREAD_SLOTS >= 2 && UMBRA_THREAD_SLOTS <= 32,
	       "the owned slots are bits of one uint32_t, the shared slot comes after them");

/* Bit s set while a live thread owns slot s (atomic: claimed with acquire,
 * given back with release). */
static uint32_t slots_owned;
static pthread_key_t slot_key;
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;

/* Gives back slot @s - 1 (@arg: s) and sends any later use by this thread
 * to the shared slot.  The pthread key's destructor, at thread exit. */
static void slot_give_back(void *arg)
{
	const unsigned int s = (unsigned int)(uintptr_t)arg - 1;

	umbra_thread_slot_plus1 = UMBRA_THREAD_SLOT_SHARED + 1;
	__atomic_fetch_and(&slots_owned, ~(1u << s), __ATOMIC_RELEASE);
}

static void slot_key_create(void)
{
	if (pthread_key_create(&slot_key, slot_give_back))
		abort(); /* no key left in the process */
}

unsigned int umbra_thread_slot_assign(void)
{
	const uint32_t ownable = (1u << UMBRA_THREAD_SLOT_SHARED) - 1;
	uint32_t owned = __atomic_load_n(&slots_owned, __ATOMIC_RELAXED);
	unsigned int s;

	pthread_once(&slot_once, slot_key_create);
	do {
		if (!(~owned & ownable)) {
			umbra_thread_slot_plus1 = UMBRA_THREAD_SLOT_SHARED + 1;
			return UMBRA_THREAD_SLOT_SHARED;
		}
		s = (unsigned int)__builtin_ctz(~owned & ownable);
	} while (!__atomic_compare_exchange_n(&slots_owned, &owned, owned | (1u << s), true,
					      __ATOMIC_ACQUIRE, __ATOMIC_RELAXED));
	if (pthread_setspecific(slot_key, (void *)(uintptr_t)(s + 1))) {
		/* No memory for the key's value: nothing would give it back. */
		slot_give_back((void *)(uintptr_t)(s + 1));
		return UMBRA_THREAD_SLOT_SHARED;
	}
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
