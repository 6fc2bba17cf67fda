/*
 * The x86-64 4-level page walker: one implementation of the architectural
 * rules (Intel SDM vol. 3A ch. 4.5-4.7, AMD APM vol. 2 ch. 5), used both to
 * walk a guest's own tables (the fault path, through the P2M) and, as the
 * software vCPU's "hardware", to walk the shadow tables in the pool.
 */
#include <errno.h>

#include "mmu_internal.h"

/* Physical address bits: what a default mode has, and the valid range
 * (52: the architectural maximum, SPTE_ADDR_MASK). */
#define WALK_DEFAULT_MAXPHYADDR 46u
#define WALK_MIN_MAXPHYADDR 32u
#define WALK_MAX_MAXPHYADDR 52u
_Static_assert(SPTE_ADDR_MASK >> (WALK_MAX_MAXPHYADDR - 1) == 1, "SPTE_ADDR_MASK ends at bit 51");

/* Walks in a row after which an A/D update that keeps losing its
 * compare-and-exchange (another thread, or a guest vCPU, keeps changing the
 * entries) gives up with -EAGAIN. */
#define WALK_MAX_TRIES 64u

const struct shadow_paging_mode shadow_default_mode = {
	.wp = true, .nxe = true, .smep = false, .gbpages = true,
	.maxphyaddr = WALK_DEFAULT_MAXPHYADDR,
};

bool walk_mode_is_valid(const struct shadow_paging_mode *mode)
{
	return mode->maxphyaddr >= WALK_MIN_MAXPHYADDR && mode->maxphyaddr <= WALK_MAX_MAXPHYADDR;
}

unsigned int walk_entry_rights(const struct shadow_paging_mode *mode, uint64_t entry)
{
	unsigned int rights = 0;

	if (entry & SPTE_WRITABLE)
		rights |= SHADOW_RIGHT_WRITE;
	if (entry & SPTE_USER)
		rights |= SHADOW_RIGHT_USER;
	if (!(mode->nxe && (entry & SPTE_NX)))
		rights |= SHADOW_RIGHT_EXEC;
	return rights;
}

uint32_t shadow_access_error_code(const struct shadow_paging_mode *mode, unsigned int access)
{
	uint32_t ec = access & (SHADOW_PFERR_WRITE | SHADOW_PFERR_USER);

	/* SDM 4.7: I/D is set for a fetch only if CR4.SMEP = 1, or PAE/4-level
	 * paging with IA32_EFER.NXE = 1. */
	if ((access & SHADOW_ACCESS_FETCH) && (mode->nxe || mode->smep))
		ec |= SHADOW_PFERR_FETCH;
	return ec;
}

uint32_t shadow_permission_fault(const struct shadow_paging_mode *mode, unsigned int rights,
				 unsigned int access)
{
	bool write = access & SHADOW_ACCESS_WRITE;
	bool fetch = access & SHADOW_ACCESS_FETCH;
	bool fault;

	if (access & SHADOW_ACCESS_USER) {
		/* SDM 4.6.1: user-mode accesses need U/S=1 at every level; writes
		 * need R/W=1 at every level whatever CR0.WP; fetches need XD=0. */
		fault = !(rights & SHADOW_RIGHT_USER) || (write && !(rights & SHADOW_RIGHT_WRITE)) ||
			(fetch && !(rights & SHADOW_RIGHT_EXEC));
	} else {
		/* Supervisor: reads always; writes need R/W=1 only with CR0.WP=1;
		 * fetches need XD=0, and with CR4.SMEP not a user-mode address. */
		fault = (write && mode->wp && !(rights & SHADOW_RIGHT_WRITE)) ||
			(fetch && !(rights & SHADOW_RIGHT_EXEC)) ||
			(fetch && mode->smep && (rights & SHADOW_RIGHT_USER));
	}
	return fault ? SHADOW_PFERR_PRESENT | shadow_access_error_code(mode, access) : 0;
}

/* @w as a walk of @va for @access that has read nothing: every other field
 * 0.  Field by field, not memset: a fault walks on every call, and the
 * string store a memset of this size compiles to costs more than the
 * stores. */
static void walk_reset(struct shadow_walk *w, uint64_t va, unsigned int access)
{
	w->va = va;
	w->access = access;
	w->leaf_level = 0;
	w->fault_level = 0;
	for (int l = 0; l <= SHADOW_LEVELS; l++) {
		w->table[l] = 0;
		w->entry[l] = 0;
		w->rights_above[l] = 0;
	}
	w->rights = 0;
	w->dirty = false;
	w->pa = 0;
	w->error_code = 0;
}

/* shadow_walk with its memory operations as @read and @cmpxchg (NULL: none,
 * as in struct shadow_mem_ops): inlined into each caller below, so that a
 * caller that names its read calls it directly. */
static inline __attribute__((always_inline)) int
walk_impl(const struct shadow_paging_mode *mode, int (*read)(void *ctx, uint64_t pa, uint64_t *val),
	  int (*cmpxchg)(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val), void *ctx,
	  uint64_t cr3, uint64_t va, unsigned int access, unsigned int flags, struct shadow_walk *w)
{
	const uint64_t pa_mask = SPTE_ADDR_MASK & ((1ull << mode->maxphyaddr) - 1);
	unsigned int tries = 0;
	int level, ret;

	if ((access & ~SHADOW_ACCESS_MASK) ||
	    ((access & SHADOW_ACCESS_WRITE) && (access & SHADOW_ACCESS_FETCH)))
		return -EINVAL;
	if (!shadow_va_is_canonical(va))
		return -EINVAL;
again:
	walk_reset(w, va, access);
	uint64_t table = cr3 & pa_mask;
	unsigned int rights = SHADOW_RIGHTS_ALL;

	for (level = SPTE_LEVELS; level >= 1; level--) {
		uint64_t entry;

		if (read(ctx, table + SPTE_INDEX(va, level) * sizeof(uint64_t), &entry))
			return -EIO;
		w->table[level] = table;
		w->entry[level] = entry;
		w->rights_above[level] = rights;
		if (!spte_is_present(entry)) {
			w->fault_level = level;
			w->error_code = shadow_access_error_code(mode, access);
			return -EFAULT;
		}
		if (entry & spte_rsvd_mask(entry, level, mode->maxphyaddr, mode->nxe, mode->gbpages)) {
			w->fault_level = level;
			w->error_code = SHADOW_PFERR_PRESENT | SHADOW_PFERR_RSVD |
					shadow_access_error_code(mode, access);
			return -EFAULT;
		}
		rights &= walk_entry_rights(mode, entry);
		if (spte_is_leaf(entry, level))
			break;
		table = spte_addr(entry);
	}
	w->leaf_level = level;
	w->rights = rights;
	w->pa = spte_leaf_addr(w->entry[level], level) | (va & (SPTE_LEVEL_SIZE(level) - 1));
	w->dirty = spte_is_dirty(w->entry[level]);
	w->error_code = shadow_permission_fault(mode, rights, access);
	if (w->error_code) {
		w->fault_level = level;
		return -EFAULT;
	}
	if (!(flags & SHADOW_WALK_SET_AD) || !cmpxchg)
		return 0;
	/* The CPU sets A in every entry it used and D in the leaf of a write
	 * (SDM 4.8), atomically; if an entry changed meanwhile, walk again. */
	for (int l = SPTE_LEVELS; l >= w->leaf_level; l--) {
		uint64_t old = w->entry[l], want = old | SPTE_ACCESSED;

		if (l == w->leaf_level && (access & SHADOW_ACCESS_WRITE))
			want |= SPTE_DIRTY;
		if (want == old)
			continue;
		ret = cmpxchg(ctx, w->table[l] + SPTE_INDEX(va, l) * sizeof(uint64_t), old, want);
		if (ret == -EAGAIN && ++tries < WALK_MAX_TRIES)
			goto again;
		if (ret == -EAGAIN)
			return -EAGAIN;
		if (ret)
			return ret == -EROFS ? -EROFS : -EIO;
		w->entry[l] = want;
	}
	if (access & SHADOW_ACCESS_WRITE)
		w->dirty = true;
	return 0;
}

int shadow_walk(const struct shadow_paging_mode *mode, const struct shadow_mem_ops *ops, void *ctx,
		uint64_t cr3, uint64_t va, unsigned int access, unsigned int flags,
		struct shadow_walk *w)
{
	return walk_impl(mode, ops->read, ops->cmpxchg, ctx, cr3, va, access, flags, w);
}

int walk_guest_reader(const struct shadow_paging_mode *mode, struct p2m_reader *r, uint64_t cr3,
		      uint64_t va, unsigned int access, struct shadow_walk *w)
{
	return walk_impl(mode, guest_reader_read, NULL, r, cr3, va, access, 0, w);
}
