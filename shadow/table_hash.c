/*
 * One shadow per (guest table, role, gva) within a VM: a guest table that
 * several of the VM's address spaces share (a kernel half whose tables are
 * the same pages in every process's PML4, the identity map below every
 * root) is shadowed once, and every root of the VM that reaches it there
 * links that one shadow, as KVM's shadow MMU keys its shadow pages by guest
 * table and role.  The shadow then survives the eviction of any one root.
 *
 * The index is a direct-mapped cache of the tables the VM made, keyed by
 * level, role and gva (the gva too: a leaf cleared in the table is flushed
 * by address in every root that reaches it, so it must be at the same
 * address in all of them).  An entry is only a hint: the page may since
 * have been freed, or taken again for another table by another VM, so a
 * hit is checked against the page's role, level and gva and linked only if
 * every root it leads up to is this VM's (table_is_ours_alone, whatever
 * its use count).  A miss makes a new table.
 *
 * Locks: under the VM's mmu_lock (asserted); the check takes table locks
 * one at a time (the pmd-rmap walk).
 */
#include <errno.h>
#include <stdlib.h>

#include "mmu_internal.h"

static unsigned int table_hash_bucket(int level, const struct role *role, uint64_t gva)
{
	uint64_t k = role->gpa ^ (gva * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)level << 1) ^
		     ((uint64_t)role->access << 4) ^ (uint64_t)role->direct;

	k ^= k >> 29;
	k *= 0xbf58476d1ce4e5b9ull;
	k ^= k >> 32;
	return (unsigned int)(k & (TABLE_HASH_SIZE - 1));
}

int table_hash_init(struct shadow_mmu *mmu)
{
	mmu->table_hash = malloc(TABLE_HASH_SIZE * sizeof(*mmu->table_hash));
	if (!mmu->table_hash)
		return -ENOMEM;
	for (unsigned int k = 0; k < TABLE_HASH_SIZE; k++)
		mmu->table_hash[k] = SHADOW_NO_PAGE;
	return 0;
}

void table_hash_exit(struct shadow_mmu *mmu)
{
	free(mmu->table_hash);
	mmu->table_hash = NULL;
}

void table_hash_add_locked(struct shadow_mmu *mmu, uint32_t page)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const struct shadow_page *sp = mmu_page(mmu, page);
	const struct role role = { .direct = sp->direct, .access = sp->access, .gpa = sp->gpa };

	mmu->table_hash[table_hash_bucket(sp->level, &role, sp->gva)] = page;
}

bool table_hash_find_locked(struct shadow_mmu *mmu, int level, const struct role *role, uint64_t gva,
			    uint32_t *out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const uint32_t page = mmu->table_hash[table_hash_bucket(level, role, gva)];
	struct shadow_page *sp;

	/* A VM that was cloned may hold tables whose writable leaves of
	 * copy-on-write pages only a write-protected entry above guards: a
	 * second link would have to be write-protected too, and granting W
	 * through it later would take W from the whole table, under the
	 * other roots' vCPUs as well.  It makes a table per link instead. */
	if (page == SHADOW_NO_PAGE || mmu->cloned)
		return false;
	sp = mmu_page(mmu, page);
	/* A hint: the page may be another VM's by now (read atomically: its
	 * alloc writes these without our lock); table_is_shared decides. */
	if (__atomic_load_n(&sp->level, __ATOMIC_RELAXED) != level ||
	    __atomic_load_n(&sp->direct, __ATOMIC_RELAXED) != role->direct ||
	    __atomic_load_n(&sp->access, __ATOMIC_RELAXED) != role->access ||
	    __atomic_load_n(&sp->gpa, __ATOMIC_RELAXED) != role->gpa ||
	    __atomic_load_n(&sp->gva, __ATOMIC_RELAXED) != gva ||
	    !__atomic_load_n(&sp->use_count, __ATOMIC_ACQUIRE) ||
	    __atomic_load_n(&sp->canon, __ATOMIC_RELAXED))
		return false;
	/* Every user ours (so no other VM can drop or add one while we hold
	 * mmu_lock), and at least one: the table is live and ours.  Not the
	 * use count: a table with one user may be another VM's. */
	if (!table_is_ours_alone(mmu, page))
		return false;
	*out = page;
	return true;
}
