/*
 * notifier/hold.c - in-flight references on a subscription: a delivery that
 * spans read-side critical sections (a range between its start and end, the
 * pages of a page-mode range) holds the subscription, and unsubscribe waits
 * for the holds to drain (futex) before it calls release().
 * notifier_internal.h describes the protocol.
 */
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hold.h"

static void nt_futex_wait(uint32_t *addr, uint32_t val)
{
	syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void nt_futex_wake_all(uint32_t *addr)
{
	syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

void nt_sub_unhold(struct notifier_subscription *sub)
{
	uint32_t old = __atomic_fetch_sub(&sub->active, 1, __ATOMIC_RELEASE);

	if ((old & NT_ACTIVE_MASK) == 1 && (old & NT_ACTIVE_WAITER))
		nt_futex_wake_all(&sub->active);
}

/* Wait until no delivery holds @sub (its death is assigned, grace period past). */
void nt_sub_drain(struct notifier_subscription *sub)
{
	uint32_t v = __atomic_or_fetch(&sub->active, NT_ACTIVE_WAITER, __ATOMIC_ACQ_REL);

	while (v & NT_ACTIVE_MASK) {
		nt_futex_wait(&sub->active, v);
		v = __atomic_load_n(&sub->active, __ATOMIC_ACQUIRE);
	}
}
