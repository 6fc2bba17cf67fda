/*
 * The P2M entry: what one guest frame (gfn) maps to in the VM's machine
 * address space, as a slot id and a page of that slot's memory object, plus
 * the copy-on-write bit.  Encoding only, no locks: the P2M
 * (struct shadow_mmu.p2m_dir) is read lock-free with acquire loads and
 * stored under mmu_lock with release stores (p2m.c).
 *
 *   bits  0..47  page of the slot's object
 *   bits 48..55  slot id + 1 (0: the gfn maps nothing)
 *   bit  62      P2M_COW: shared copy-on-write with a clone (docs/sharing.md)
 *
 * The P2M is sparse: a directory with one entry per chunk of
 * P2M_CHUNK_PAGES gfns (2 MiB of guest-physical space), each
 *   0                    every gfn of the chunk maps nothing;
 *   P2M_DIR_LINEAR | e   gfn k of the chunk has entry e with k added to its
 *                        page (a run of consecutive pages of one slot, as
 *                        the VMM's RAM and segments are mapped);
 *   otherwise            a pointer to the chunk's array of P2M_CHUNK_PAGES
 *                        entries (user-space pointers have bit 63 clear),
 *                        made when one gfn of the chunk breaks the run and
 *                        kept until the MMU is destroyed (lock-free readers
 *                        may hold it).
 */
#ifndef UMBRA_SHADOW_P2M_H
#define UMBRA_SHADOW_P2M_H

#include <stdbool.h>
#include <stdint.h>

#include "umbra/shadow.h"

#define P2M_NONE 0ull			/* the entry of an unmapped gfn */
#define P2M_SLOT_SHIFT 48
#define P2M_SLOT_BITS 8
#define P2M_PAGE_MASK ((1ull << P2M_SLOT_SHIFT) - 1)
#define P2M_SLOT_MASK (((1ull << P2M_SLOT_BITS) - 1) << P2M_SLOT_SHIFT)
#define P2M_COW (1ull << 62)

_Static_assert(SHADOW_MAX_SLOTS < (1u << P2M_SLOT_BITS), "slot id + 1 fits the slot field");
_Static_assert((P2M_PAGE_MASK & P2M_SLOT_MASK) == 0 && ((P2M_PAGE_MASK | P2M_SLOT_MASK) & P2M_COW) == 0,
	       "page, slot and COW fields do not overlap");
_Static_assert(P2M_SLOT_SHIFT >= 52 - SHADOW_PAGE_SHIFT,
	       "a page index of any object below the 52-bit physical limit fits");

#define P2M_CHUNK_SHIFT 9
#define P2M_CHUNK_PAGES (1ull << P2M_CHUNK_SHIFT)
#define P2M_DIR_LINEAR (1ull << 63)

_Static_assert((P2M_DIR_LINEAR & (P2M_PAGE_MASK | P2M_SLOT_MASK | P2M_COW)) == 0,
	       "the linear tag is outside the entry's fields");

/* The entry of gfn @k of a chunk whose directory entry is @d, which is
 * not an array. */
static inline uint64_t p2m_dir_entry(uint64_t d, uint64_t k)
{
	return d ? (d & ~P2M_DIR_LINEAR) + k : P2M_NONE;
}

static inline bool p2m_dir_is_array(uint64_t d)
{
	return d && !(d & P2M_DIR_LINEAR);
}

/* The entry of a gfn that maps page @page of slot @slot_id, not COW. */
static inline uint64_t p2m_entry_make(int slot_id, uint64_t page)
{
	return ((uint64_t)(slot_id + 1) << P2M_SLOT_SHIFT) | (page & P2M_PAGE_MASK);
}

static inline bool p2m_entry_is_present(uint64_t e)
{
	return (e & P2M_SLOT_MASK) != 0;
}

/* The slot id of a present entry. */
static inline int p2m_entry_slot_id(uint64_t e)
{
	return (int)((e & P2M_SLOT_MASK) >> P2M_SLOT_SHIFT) - 1;
}

/* The page (of its slot's object) of a present entry. */
static inline uint64_t p2m_entry_page(uint64_t e)
{
	return e & P2M_PAGE_MASK;
}

static inline bool p2m_entry_is_cow(uint64_t e)
{
	return (e & P2M_COW) != 0;
}

static inline uint64_t p2m_entry_mark_cow(uint64_t e)
{
	return e | P2M_COW;
}

#endif
