/*
 * Private to shadow/: the pool's descriptors, the MMU's structures, the
 * helpers the files share.  docs/shadow.md describes them; docs/locking.md
 * gives the lock order.
 *
 * Lock order (outermost first; ranks from notifier/lock.h):
 *
 *   notifier object lock     NOTIFIER_LOCK_RANK_OBJECT  (release() runs under it)
 *   mmu->mmu_lock            NOTIFIER_LOCK_RANK_MMU
 *   shadow_page.lock         NOTIFIER_LOCK_RANK_TABLE   (one at a time)
 *   vcpu->tlb_lock           NOTIFIER_LOCK_RANK_SUBSCRIBER_LEAF
 *   pool->lock               SHADOW_LOCK_RANK_POOL      (leaf)
 *   notifier seq_lock        NOTIFIER_LOCK_RANK_SEQ     (leaf, inside read_retry)
 */
#ifndef UMBRA_SHADOW_INTERNAL_H
#define UMBRA_SHADOW_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "notifier/lock.h"
#include "shadow.h"
#include "spte.h"

_Static_assert(SHADOW_LEVELS == SPTE_LEVELS, "one level count");

/* The pool's free-list lock: a leaf, below every other shadow lock. */
#define SHADOW_LOCK_RANK_POOL (NOTIFIER_LOCK_RANK_SUBSCRIBER_LEAF + 2)
_Static_assert(SHADOW_LOCK_RANK_POOL < NOTIFIER_LOCK_RANK_SEQ, "pool lock slots below seq_lock");

#define SHADOW_NO_PAGE UINT32_MAX

/*
 * One user of a table page: the "pmd-rmap" entry.  @parent is the pool index
 * of the table whose entry @index points at the page, or SHADOW_NO_PAGE for a
 * root (then @index is its slot in @mmu's root cache).  In issue 4 every page
 * has exactly one user; issue 5's shared tables have one per sharer, and a
 * non-local operation walks this list to reach every VM that maps the table.
 */
struct shadow_page_user {
	struct shadow_mmu *mmu;
	uint32_t parent;
	uint32_t index;
	struct shadow_page_user *next;
};

/*
 * The descriptor of one pool page.
 *
 *  level       0 when free; 1..4 while allocated.  Written under pool->lock
 *              by alloc/free; stable while the page is allocated.
 *  direct .. gva   the role: what the page shadows.  Written by the creator
 *              before the page is published (the parent entry's release
 *              store), immutable until it is freed.
 *                direct=false: the guest table at guest-physical @gpa, with
 *                  @access the rights of the guest levels above it;
 *                direct=true: part of a guest 2 MiB / 1 GiB page: the
 *                  guest-physical range from @gpa covered by this table, with
 *                  @access the large page's effective rights (W only if the
 *                  guest's D was set).
 *              @gva is the first linear address the page covers.
 *  use_count   atomic: how many users point at the page (parent entries and
 *              root-cache references).  The user that drops it to 0 frees it
 *              (after the TLB flush).
 *  lock        the per-table lock (rank NOTIFIER_LOCK_RANK_TABLE): held for
 *              every write of one of the page's 512 entries and for
 *              nr_present and users.  Taken inside mmu_lock; never two at a
 *              time.
 *  nr_present  present entries in the page (under lock).
 *  users       the pmd-rmap list (under lock).
 *  next        free-list link (under pool->lock) while free; zap-list link
 *              (under the zapping MMU's mmu_lock) while waiting to be freed.
 */
struct shadow_page {
	uint8_t level;
	bool direct;
	uint8_t access;
	uint64_t gpa;
	uint64_t gva;
	uint32_t use_count;
	uint32_t nr_present;
	struct notifier_mutex lock;
	struct shadow_page_user *users;
	uint32_t next;
};

struct shadow_pool {
	int fd;
	size_t nr_pages;
	uint64_t *base; /* host mapping of the whole pool */
	struct shadow_page *pages;
	/* lock (SHADOW_LOCK_RANK_POOL, a leaf) protects level of every
	 * descriptor, free_head, the free list and in_use[]. */
	struct notifier_mutex lock;
	uint32_t free_head; /* SHADOW_NO_PAGE when the pool is full */
	size_t in_use[SPTE_LEVELS + 1];
};

/* Pool index <-> gpa; entry locations (index * 512 + entry) fit 32 bits. */
static inline uint64_t pool_page_gpa(uint32_t index)
{
	return SHADOW_POOL_GPA + (uint64_t)index * SHADOW_PAGE_SIZE;
}

static inline uint32_t pool_page_index(uint64_t gpa)
{
	return (uint32_t)((gpa - SHADOW_POOL_GPA) >> SHADOW_PAGE_SHIFT);
}

static inline struct shadow_page *pool_page(struct shadow_pool *pool, uint32_t index)
{
	return &pool->pages[index];
}

static inline uint64_t *pool_entries(struct shadow_pool *pool, uint32_t index)
{
	return pool->base + (size_t)index * SPTE_ENTRIES;
}

int pool_alloc_index(struct shadow_pool *pool, int level, uint32_t *index);
void pool_free_index(struct shadow_pool *pool, uint32_t index);
/* Adds / removes a user of page @index (takes its table lock). */
int pool_user_add(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		  uint32_t parent, uint32_t slot);
void pool_user_del(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		   uint32_t parent, uint32_t slot);

/* ---- the walker's helpers (walk.c) ------------------------------------ */

/* Rights an entry grants by itself under @mode. */
unsigned int walk_entry_rights(const struct shadow_paging_mode *mode, uint64_t entry);
bool walk_mode_is_valid(const struct shadow_paging_mode *mode);

/* ---- reverse map (rmap.c) --------------------------------------------- */

/* An SPTE's location: pool index * 512 + entry index. */
typedef uint32_t shadow_sptep_t;

static inline shadow_sptep_t sptep_make(uint32_t page, unsigned int index)
{
	return page * SPTE_ENTRIES + index;
}

static inline uint32_t sptep_page(shadow_sptep_t s) { return s / SPTE_ENTRIES; }
static inline unsigned int sptep_index(shadow_sptep_t s) { return s % SPTE_ENTRIES; }

/* The SPTEs mapping one backing page.  Under mmu_lock. */
struct shadow_rmap {
	uint32_t nr, cap;
	union {
		shadow_sptep_t one; /* cap <= 1 */
		shadow_sptep_t *many;
	};
};

int rmap_add(struct shadow_rmap *rmap, shadow_sptep_t sptep);
void rmap_del(struct shadow_rmap *rmap, shadow_sptep_t sptep);
void rmap_free(struct shadow_rmap *rmap);
static inline shadow_sptep_t rmap_get(const struct shadow_rmap *rmap, uint32_t i)
{
	return rmap->cap <= 1 ? rmap->one : rmap->many[i];
}

#define for_each_rmap_sptep(rmap, i, s) \
	for ((i) = 0; (i) < (rmap)->nr && ((s) = rmap_get((rmap), (i)), 1); (i)++)

/* ---- the MMU (mmu.c) -------------------------------------------------- */

struct shadow_mmu_slot {
	struct shadow_slot s;		/* immutable after add */
	uint64_t npages;		/* immutable */
	int id;
	struct shadow_mmu *mmu;
	struct notifier_subscription *sub;
	struct shadow_rmap *rmap;	/* [npages], under mmu_lock */
	uint8_t *young;			/* [npages], atomic bytes */
	bool released;			/* atomic; set under mmu_lock by release() */
};

struct shadow_root {
	uint64_t cr3;			/* guest PML4 gpa (masked) */
	uint32_t page;			/* pool index; SHADOW_NO_PAGE: slot empty */
	unsigned int pins;		/* vCPUs running on it */
	uint64_t last_used;
};

/* Zap batch: what to flush and what to free once flushed (under mmu_lock). */
#define ZAP_MAX_VA 16
struct zap_batch {
	unsigned int nr_va;
	bool flush_all;
	uint64_t va[ZAP_MAX_VA];
	uint32_t free_head;		/* pages to free after the flush */
	uint64_t zapped;
};

struct shadow_mmu {
	struct shadow_pool *pool;	/* immutable */
	struct shadow_paging_mode mode; /* immutable */

	/*
	 * mmu_lock (NOTIFIER_LOCK_RANK_MMU): the per-VM lock.  Protects the
	 * structure of this VM's shadow tables (which tables exist, their
	 * users entries for this VM), the reverse maps, the root cache, the
	 * TLB list, P2M stores and sync_seq stores.  Taken by the fault
	 * path (around notifier_read_retry and the install), invlpg, CR3
	 * loads, flushes, zaps and the notifier callbacks.  Never held while
	 * calling notifier_read_begin(), get_page or notifier (un)subscribe.
	 */
	struct notifier_mutex mmu_lock;
	uint64_t sync_seq;		/* atomic; bumped under mmu_lock by every sync / P2M change */

	uint64_t p2m_pages;
	uint64_t *p2m;			/* atomic entries: 0, or (slot + 1) << 48 | page */

	struct shadow_mmu_slot slots[SHADOW_MAX_SLOTS];
	int nr_slots;			/* atomic (release): slots[0..nr) are published;
					 * add_slot is not concurrent with itself */

	unsigned int nr_roots;
	struct shadow_root *roots;	/* under mmu_lock */
	uint64_t tick;			/* LRU clock, under mmu_lock */

	struct shadow_tlb *tlbs;	/* registered vCPUs, under mmu_lock */

	struct shadow_mmu_stats stats;	/* relaxed atomic adds */
};

#define P2M_SLOT_SHIFT 48
#define P2M_PAGE_MASK ((1ull << P2M_SLOT_SHIFT) - 1)

#define mmu_stat_add(mmu, field, n) __atomic_fetch_add(&(mmu)->stats.field, (n), __ATOMIC_RELAXED)
#define mmu_stat_inc(mmu, field) mmu_stat_add(mmu, field, 1)

/* Machine address -> (slot, page); NULL if no slot holds it.  Lock-free. */
struct shadow_mmu_slot *mmu_mpa_to_slot(struct shadow_mmu *mmu, uint64_t mpa, uint64_t *page);

void zap_batch_init(struct zap_batch *b);
/* Flush every registered vCPU as @b requires, then free its pages. */
void zap_batch_finish_locked(struct shadow_mmu *mmu, struct zap_batch *b);
/* Zap every SPTE mapping pages [first, last] of @slot (rmap walk). */
void zap_slot_range_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t first,
			   uint64_t last, struct zap_batch *b);

/* notify.c */
extern const struct notifier_ops shadow_notifier_ops;

#endif
