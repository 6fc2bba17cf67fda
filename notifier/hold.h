/*
 * notifier/hold.h - in-flight references on a subscription (hold.c).
 * Private to notifier/.
 */
#ifndef UMBRA_NOTIFIER_HOLD_H
#define UMBRA_NOTIFIER_HOLD_H

#include "notifier_internal.h"

/* Take an in-flight reference on @sub (inside the walk that found it
 * present).  Lock-free, never blocks. */
static inline void nt_sub_hold(struct notifier_subscription *sub)
{
	__atomic_fetch_add(&sub->active, 1, __ATOMIC_RELAXED);
}

/* Drop it; wakes nt_sub_drain() when it was the last.  Never blocks. */
void nt_sub_unhold(struct notifier_subscription *sub);

/* Wait until no delivery holds @sub.  Its death must be assigned and a
 * grace period past, so no new hold can be taken.  Blocks (futex); no
 * lock of the subscriber held. */
void nt_sub_drain(struct notifier_subscription *sub);

#endif /* UMBRA_NOTIFIER_HOLD_H */
