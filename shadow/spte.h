/*
 * x86-64 long-mode 4-level page-table entries: bit masks, predicates and
 * constructors for shadow entries (SPTEs), in the manner of Linux's
 * arch/x86/kvm/mmu/spte.h. Internal to shadow/.
 *
 * Shadow entries live in the table pool, which every guest sees read-only, so
 * the CPU can never set Accessed or Dirty in them: every present leaf SPTE has
 * A preset, and D preset where it is writable. Access and dirty tracking are
 * done by the shadow MMU itself (clearing the present bit and recording the
 * next fault).
 */
#ifndef UMBRA_SHADOW_SPTE_H
#define UMBRA_SHADOW_SPTE_H

#include <stdbool.h>
#include <stdint.h>

#define SPTE_PRESENT (1ull << 0)
#define SPTE_WRITABLE (1ull << 1)
#define SPTE_USER (1ull << 2)
#define SPTE_PWT (1ull << 3)
#define SPTE_PCD (1ull << 4)
#define SPTE_ACCESSED (1ull << 5)
#define SPTE_DIRTY (1ull << 6)
#define SPTE_LARGE (1ull << 7) /* PS: a 2 MiB (PDE) or 1 GiB (PDPTE) leaf */
#define SPTE_GLOBAL (1ull << 8)
#define SPTE_NX (1ull << 63)
#define SPTE_ADDR_MASK 0x000ffffffffff000ull /* bits 12..51 */

#define SPTE_LEVELS 4
#define SPTE_ENTRIES 512
#define SPTE_LEVEL_SHIFT(level) (12 + 9 * ((level) - 1)) /* level 1 = PTE .. 4 = PML4E */
#define SPTE_INDEX(addr, level) (((addr) >> SPTE_LEVEL_SHIFT(level)) & (SPTE_ENTRIES - 1))

_Static_assert(SPTE_LEVEL_SHIFT(1) == 12 && SPTE_LEVEL_SHIFT(2) == 21 && SPTE_LEVEL_SHIFT(3) == 30 &&
	       SPTE_LEVEL_SHIFT(4) == 39, "4-level paging: 4K, 2M, 1G, 512G per entry");
_Static_assert((SPTE_ADDR_MASK & (SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER | SPTE_ACCESSED |
				  SPTE_DIRTY | SPTE_LARGE | SPTE_GLOBAL | SPTE_NX)) == 0,
	       "the address field overlaps no flag");
_Static_assert(SPTE_ENTRIES * sizeof(uint64_t) == 4096, "a table is one 4 KiB page");

static inline bool spte_is_present(uint64_t spte) { return spte & SPTE_PRESENT; }
static inline bool spte_is_writable(uint64_t spte) { return spte & SPTE_WRITABLE; }
static inline bool spte_is_user(uint64_t spte) { return spte & SPTE_USER; }
static inline bool spte_is_executable(uint64_t spte) { return !(spte & SPTE_NX); }
static inline uint64_t spte_addr(uint64_t spte) { return spte & SPTE_ADDR_MASK; }

/* A large leaf exists only at levels 2 and 3; at level 1 bit 7 is PAT. */
static inline bool spte_is_leaf(uint64_t spte, int level)
{
	return level == 1 || ((level == 2 || level == 3) && (spte & SPTE_LARGE));
}

/* A non-leaf entry pointing at a lower table. Intermediate entries carry the
 * most permissive rights; leaves carry the effective ones. A is preset. */
static inline uint64_t spte_make_table(uint64_t table_pa)
{
	return (table_pa & SPTE_ADDR_MASK) | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER | SPTE_ACCESSED;
}

/* A 4 KiB leaf: A preset, D preset when writable (the pool is read-only to
 * guests, so the CPU could not set them). */
static inline uint64_t spte_make_leaf(uint64_t pa, bool writable, bool user, bool executable)
{
	uint64_t spte = (pa & SPTE_ADDR_MASK) | SPTE_PRESENT | SPTE_ACCESSED;

	if (writable)
		spte |= SPTE_WRITABLE | SPTE_DIRTY;
	if (user)
		spte |= SPTE_USER;
	if (!executable)
		spte |= SPTE_NX;
	return spte;
}

#endif
