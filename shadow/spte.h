/*
 * x86-64 long-mode 4-level page-table entries: bit masks, predicates and
 * constructors, in the manner of Linux's arch/x86/kvm/mmu/spte.h.  Internal
 * to shadow/ (and its tests).
 *
 * The same layout serves two readers: the guest's own entries (read by the
 * guest walker, walk.c) and the shadow entries (SPTEs) that umbra writes into
 * the table pool and the CPU walks.  Names are SPTE_* for both; where a bit
 * matters only to one of them the comment says so.
 *
 * Shadow entries live in the table pool, twice: a private copy that umbra
 * reads and a visible one that the CPU walks, which the VMM maps read-only
 * where the hardware allows (on AMD nested paging it must be writable:
 * docs/shadow.md, "Table pool" and "Limits"); either way the CPU must never
 * need to set Accessed or Dirty in them (nothing is read back from the
 * visible copy): every present SPTE has A preset, and a leaf has D preset
 * where it is writable.  Access and dirty
 * tracking are done by the shadow MMU itself (a leaf is installed read-only
 * until the guest's own D bit is set, and young-ness is tracked in the
 * reverse map; docs/shadow.md, "Entry format").
 *
 * Levels are numbered as in KVM: 1 = PTE (4 KiB), 2 = PDE (2 MiB), 3 = PDPTE
 * (1 GiB), 4 = PML4E (512 GiB).
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
#define SPTE_DIRTY (1ull << 6)	  /* leaves only; ignored in non-leaf entries */
#define SPTE_LARGE (1ull << 7)	  /* PS: a 2 MiB (PDE) or 1 GiB (PDPTE) leaf; PAT in a PTE */
#define SPTE_GLOBAL (1ull << 8)	  /* leaves only */
#define SPTE_LARGE_PAT (1ull << 12) /* PAT bit of a 2 MiB / 1 GiB leaf */
#define SPTE_NX (1ull << 63)	  /* XD: reserved unless EFER.NXE */
#define SPTE_ADDR_MASK 0x000ffffffffff000ull /* bits 12..51: the architectural maximum */

#define SPTE_LEVELS 4
#define SPTE_INDEX_BITS 9			/* a level translates 9 address bits */
#define SPTE_ENTRIES 512			/* entries per table */
#define SPTE_INDEX_MASK (SPTE_ENTRIES - 1)	/* an entry index */
#define SPTE_LEVEL_SHIFT(level) (12 + SPTE_INDEX_BITS * ((level) - 1)) /* level 1 = PTE .. 4 = PML4E */
#define SPTE_LEVEL_SIZE(level) (1ull << SPTE_LEVEL_SHIFT(level))
#define SPTE_LEVEL_MASK(level) (~(SPTE_LEVEL_SIZE(level) - 1))
#define SPTE_INDEX(addr, level) (((addr) >> SPTE_LEVEL_SHIFT(level)) & SPTE_INDEX_MASK)

/* Frame address of a 2 MiB / 1 GiB leaf: bits 21.. / 30.. up to 51. */
#define SPTE_LARGE_ADDR_MASK(level) (SPTE_ADDR_MASK & SPTE_LEVEL_MASK(level))

_Static_assert(SPTE_LEVEL_SHIFT(1) == 12 && SPTE_LEVEL_SHIFT(2) == 21 && SPTE_LEVEL_SHIFT(3) == 30 &&
		       SPTE_LEVEL_SHIFT(4) == 39,
	       "4-level paging: 4K, 2M, 1G, 512G per entry");
_Static_assert((SPTE_ADDR_MASK & (SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER | SPTE_PWT | SPTE_PCD |
				  SPTE_ACCESSED | SPTE_DIRTY | SPTE_LARGE | SPTE_GLOBAL | SPTE_NX)) == 0,
	       "the address field overlaps no flag");
_Static_assert(SPTE_ADDR_MASK == (((1ull << 52) - 1) & ~0xfffull), "address: bits 12..51");
_Static_assert((SPTE_LARGE_PAT & SPTE_ADDR_MASK) && !(SPTE_LARGE_PAT & SPTE_LARGE_ADDR_MASK(2)),
	       "a large leaf's PAT bit lies below its frame address");
_Static_assert(SPTE_LARGE_ADDR_MASK(2) == 0x000fffffffe00000ull &&
		       SPTE_LARGE_ADDR_MASK(3) == 0x000fffffc0000000ull,
	       "2 MiB and 1 GiB frame masks");
_Static_assert(SPTE_ENTRIES * sizeof(uint64_t) == 4096, "a table is one 4 KiB page");
_Static_assert(SPTE_ENTRIES == 1 << SPTE_INDEX_BITS, "a table has one entry per index value");
_Static_assert(SPTE_NX == 0x8000000000000000ull, "XD is bit 63");

static inline bool spte_is_present(uint64_t spte) { return spte & SPTE_PRESENT; }
static inline bool spte_is_writable(uint64_t spte) { return spte & SPTE_WRITABLE; }
static inline bool spte_is_user(uint64_t spte) { return spte & SPTE_USER; }
static inline bool spte_is_executable(uint64_t spte) { return !(spte & SPTE_NX); }
static inline bool spte_is_dirty(uint64_t spte) { return spte & SPTE_DIRTY; }
static inline bool spte_is_accessed(uint64_t spte) { return spte & SPTE_ACCESSED; }
static inline uint64_t spte_addr(uint64_t spte) { return spte & SPTE_ADDR_MASK; }

/* A large leaf exists only at levels 2 and 3; at level 1 bit 7 is PAT. */
static inline bool spte_is_leaf(uint64_t spte, int level)
{
	return level == 1 || ((level == 2 || level == 3) && (spte & SPTE_LARGE));
}

/* The frame a leaf at @level maps (for a large leaf, its first byte). */
static inline uint64_t spte_leaf_addr(uint64_t spte, int level)
{
	return level == 1 ? spte_addr(spte) : spte & SPTE_LARGE_ADDR_MASK(level);
}

/*
 * Reserved bits of a present entry at @level for a CPU with @maxphyaddr
 * physical address bits (Intel SDM vol. 3A, 4.5.4 and table 4-14 to 4-19;
 * AMD APM vol. 2, 5.3.3):
 *  - bits maxphyaddr..51 at every level;
 *  - bit 63 (XD) unless EFER.NXE;
 *  - PS (bit 7) in a PML4E; PS in a PDPTE when 1 GiB pages are unsupported;
 *  - in a 2 MiB / 1 GiB leaf, the bits between PAT (12) and the frame
 *    (13..20, 13..29).
 * A PTE's bit 7 is PAT, never reserved.  AMD also reserves PML4E bit 8;
 * Intel ignores it: umbra follows Intel (docs/shadow.md).
 */
static inline uint64_t spte_rsvd_mask(uint64_t spte, int level, unsigned int maxphyaddr, bool nxe,
				      bool gbpages)
{
	uint64_t rsvd = SPTE_ADDR_MASK & ~((1ull << maxphyaddr) - 1);

	if (!nxe)
		rsvd |= SPTE_NX;
	if (level == 4)
		rsvd |= SPTE_LARGE;
	else if (level == 3 && !gbpages)
		rsvd |= SPTE_LARGE;
	else if ((level == 2 || level == 3) && (spte & SPTE_LARGE))
		rsvd |= SPTE_ADDR_MASK & ~SPTE_LARGE_ADDR_MASK(level) & ~SPTE_LARGE_PAT;
	return rsvd;
}

/* A non-leaf entry pointing at a lower table.  Intermediate entries carry the
 * most permissive rights; leaves carry the effective ones.  A is preset. */
static inline uint64_t spte_make_table(uint64_t table_pa)
{
	return (table_pa & SPTE_ADDR_MASK) | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER | SPTE_ACCESSED;
}

/* A 4 KiB leaf: A preset, D preset when writable (the CPU must never write
 * the pool).  Never global.  With SPTE_LARGE added, for a 2 MiB-aligned
 * @pa, the 2 MiB leaf of a PDE (PAT 0: write-back; docs/shadow.md, "2 MiB
 * shadow leaves"). */
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

/* Atomic access to an entry that a CPU (or a software vCPU) may be walking. */
static inline uint64_t spte_read(const uint64_t *sptep)
{
	return __atomic_load_n(sptep, __ATOMIC_ACQUIRE);
}

static inline void spte_write(uint64_t *sptep, uint64_t spte)
{
	__atomic_store_n(sptep, spte, __ATOMIC_RELEASE);
}

#endif
