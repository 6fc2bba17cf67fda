/*
 * The shadow-table iterators, after KVM's: for_each_shadow_entry walks the
 * shadow path of one linear address down from a table; for_each_present_spte
 * visits the present entries of one table.  The structure of the
 * tables a VM reaches is under its mmu_lock, which the loop test asserts at
 * every step (as KVM's for_each_tdp_mmu_root asserts its lock); entries are
 * read atomically (another VM's non-local zap may clear a leaf meanwhile).
 */
#ifndef UMBRA_SHADOW_ITER_H
#define UMBRA_SHADOW_ITER_H

#include "shadow_internal.h"

/* One step: @page is the table at @level, @index the entry for the va in
 * it, @sptep that entry. */
struct shadow_iter {
	uint32_t page;
	int level;
	unsigned int index;
	uint64_t *sptep;
};

static inline void shadow_iter_init(struct shadow_mmu *mmu, struct shadow_iter *it,
				    uint32_t table, uint64_t va)
{
	it->page = table;
	it->level = mmu_page(mmu, table)->level;
	it->index = SPTE_INDEX(va, it->level);
	it->sptep = mmu_sptes(mmu, table) + it->index;
}

/* Into the child, if the entry is a present non-leaf entry; else false. */
static inline bool shadow_iter_next(struct shadow_mmu *mmu, struct shadow_iter *it, uint64_t va)
{
	uint64_t spte = spte_read(it->sptep);

	if (it->level == 1 || !spte_is_present(spte) || spte_is_leaf(spte, it->level))
		return false;
	it->page = pool_page_index(spte_addr(spte));
	it->level--;
	it->index = SPTE_INDEX(va, it->level);
	it->sptep = mmu_sptes(mmu, it->page) + it->index;
	return true;
}

/* The loop test: mmu_lock is held (asserted), and the walk goes on. */
static inline bool shadow_iter_valid_locked(struct shadow_mmu *mmu, const struct shadow_iter *it)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	return it->level > 0;
}

/*
 * for_each_shadow_entry - walk the shadow path of @va from table @table (a
 * root, or any table on the path): at each step @it.page is the table at
 * @it.level and @it.index the entry for @va in it.  The body may stop the
 * walk with break; it continues into the child while the entry is a present
 * non-leaf entry.  mmu_lock held.
 */
#define for_each_shadow_entry(mmu, it, table, va) \
	for (shadow_iter_init((mmu), &(it), (table), (va)); shadow_iter_valid_locked((mmu), &(it)); \
	     (it).level = shadow_iter_next((mmu), &(it), (va)) ? (it).level : 0)

/* The loop test of for_each_present_spte: mmu_lock is held (asserted), and
 * entries remain, up to the last present one (nr_present drops to 0 as the
 * body zaps them). */
static inline bool present_iter_valid_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	return i < SPTE_ENTRIES && __atomic_load_n(&mmu_page(mmu, page)->nr_present, __ATOMIC_RELAXED);
}

/*
 * for_each_present_spte - every present entry @i of table @page, in index
 * order, while the table has present entries.  The body may zap the entry.
 * mmu_lock held.
 */
#define for_each_present_spte(mmu, page, i) \
	for ((i) = 0; present_iter_valid_locked((mmu), (page), (i)); (i)++) \
		if (!spte_is_present(spte_read(mmu_sptes((mmu), (page)) + (i)))) { \
		} else

#endif
