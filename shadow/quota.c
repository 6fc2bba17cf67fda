/*
 * The table quota: how many pool pages each VM's tables may hold
 * (shadow_mmu_config.max_tables; docs/shadow.md, "Table quota").
 *
 * A page is charged, when it is allocated, to the account of the VM it is
 * allocated for (struct table_account), and uncharged when it is freed,
 * whichever VM frees it (a table shared with a clone may be freed by the
 * clone).  Canonical tables of segments are charged to nobody.  An
 * allocation past the quota fails with -EDQUOT before it takes a pool page;
 * the fault path and the CR3 load then reclaim (root.c) and try once more.
 *
 * Locks: none.  Charges are made under the charged VM's mmu_lock (one
 * allocator at a time per account, so the check and the charge cannot be
 * overtaken by another charge); uncharges come from any VM's free, with
 * atomics only.
 */
#include <errno.h>
#include <stdlib.h>

#include "mmu_internal.h"

int table_account_create(uint64_t max, struct table_account **out)
{
	struct table_account *a = calloc(1, sizeof(*a));

	if (!a)
		return -ENOMEM;
	a->refs = 1; /* the MMU's */
	a->max = max;
	*out = a;
	return 0;
}

static void table_account_unref(struct table_account *a)
{
	if (__atomic_sub_fetch(&a->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free(a);
}

void table_account_put(struct table_account *a)
{
	if (a)
		table_account_unref(a);
}

uint64_t table_account_held(const struct table_account *a)
{
	return __atomic_load_n(&a->refs, __ATOMIC_ACQUIRE) - 1;
}

bool table_account_has_room(const struct table_account *a)
{
	return !a->max || table_account_held(a) < a->max;
}

void table_charge(struct table_account *a, struct shadow_page *sp)
{
	__atomic_fetch_add(&a->refs, 1, __ATOMIC_RELAXED);
	sp->charge = a;
}

void table_uncharge(struct shadow_page *sp)
{
	struct table_account *a = sp->charge;

	if (!a)
		return;
	sp->charge = NULL;
	table_account_unref(a);
}

size_t shadow_mmu_tables_charged(const struct shadow_mmu *mmu)
{
	return (size_t)table_account_held(mmu->account);
}
