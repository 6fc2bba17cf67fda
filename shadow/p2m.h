/*
 * The P2M: what each guest frame (gfn) maps to in the VM's machine address
 * space, as a slot id and a page of that slot's memory object.  Encoding
 * only, no locks (p2m_tree.c walks and stores, under the rules there).
 *
 * An entry:
 *   bits  0..47  page of the slot's object
 *   bits 48..55  slot id + 1 (0: the gfn maps nothing)
 *
 * The P2M is a radix tree of P2M_NODE_ENTRIES-entry nodes, p2m_levels deep
 * (docs/shadow.md, "The P2M").  A level-1 node (a leaf) holds the entries
 * of 512 consecutive gfns; a node of level l > 1 holds, per entry, 0 (every
 * gfn below it maps nothing) or a pointer to its level l - 1 child; a
 * level-2 entry may also be P2M_LINEAR | e: gfn k of that 512-gfn chunk has
 * entry e with k added to its page (a run of a shared slot: a segment maps
 * with no leaf).  Nodes are shared between the VMs of a clone family by use
 * count: a node whose use count is 1 is its one VM's own (a private path
 * is one whose every node, root included, has use count 1).
 */
#ifndef UMBRA_SHADOW_P2M_H
#define UMBRA_SHADOW_P2M_H

#include <stdbool.h>
#include <stdint.h>

#include "umbra/rcu.h"
#include "umbra/shadow.h"

#define P2M_NONE 0ull			/* the entry of an unmapped gfn */
#define P2M_SLOT_SHIFT 48
#define P2M_SLOT_BITS 8
#define P2M_PAGE_MASK ((1ull << P2M_SLOT_SHIFT) - 1)
#define P2M_SLOT_MASK (((1ull << P2M_SLOT_BITS) - 1) << P2M_SLOT_SHIFT)

_Static_assert(SHADOW_MAX_SLOTS < (1u << P2M_SLOT_BITS), "slot id + 1 fits the slot field");
_Static_assert((P2M_PAGE_MASK & P2M_SLOT_MASK) == 0, "page and slot fields do not overlap");
_Static_assert(P2M_SLOT_SHIFT >= 52 - SHADOW_PAGE_SHIFT,
	       "a page index of any object below the 52-bit physical limit fits");

#define P2M_NODE_SHIFT 9
#define P2M_NODE_ENTRIES (1u << P2M_NODE_SHIFT)
#define P2M_CHUNK_PAGES ((uint64_t)P2M_NODE_ENTRIES)	/* gfns of one leaf */
#define P2M_LINEAR (1ull << 63)
#define P2M_MAX_LEVELS 5

_Static_assert((P2M_LINEAR & (P2M_PAGE_MASK | P2M_SLOT_MASK)) == 0,
	       "the linear tag is outside the entry's fields");
_Static_assert(P2M_MAX_LEVELS * P2M_NODE_SHIFT >= 52 - SHADOW_PAGE_SHIFT,
	       "P2M_MAX_LEVELS levels cover any guest-physical address");

/*
 * One node.  @use counts the references to it: the roots of the VMs whose
 * P2M it is (struct shadow_mmu.p2m_root) and the entries of parent nodes
 * (atomic; raised by a clone or a path copy, dropped by whoever replaces or
 * drops a reference; the one that drops it to 0 releases the node).  @e:
 * atomic entries (acquire loads, release stores).  @level and @rcu are for
 * the release: the node is freed after an RCU grace period (lock-free
 * readers may still hold it).  @next links the nodes a store batch releases.
 */
struct p2m_node {
	uint32_t use;
	uint8_t level;
	struct p2m_node *next;
	struct umbra_rcu_work rcu;
	uint64_t e[P2M_NODE_ENTRIES];
};

/* The index in a level-@level node of gfn @gfn's entry. */
static inline unsigned int p2m_index(uint64_t gfn, int level)
{
	return (unsigned int)(gfn >> ((level - 1) * P2M_NODE_SHIFT)) & (P2M_NODE_ENTRIES - 1);
}

/* The levels of a P2M of @pages gfns (at least 1). */
static inline int p2m_levels_for(uint64_t pages)
{
	int levels = 1;

	while (levels < P2M_MAX_LEVELS && (pages - 1) >> (levels * P2M_NODE_SHIFT))
		levels++;
	return levels;
}

static inline struct p2m_node *p2m_node_of(uint64_t x)
{
	return (struct p2m_node *)(uintptr_t)x;
}

static inline bool p2m_is_linear(uint64_t x)
{
	return (x & P2M_LINEAR) != 0;
}

/* The entry of gfn @k of the chunk of linear level-2 entry @x. */
static inline uint64_t p2m_linear_entry(uint64_t x, uint64_t k)
{
	return (x & ~P2M_LINEAR) + k;
}

/* The entry of a gfn that maps page @page of slot @slot_id. */
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

#endif
