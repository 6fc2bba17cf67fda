/*
 * Private to shadow/: the pool's descriptors, the MMU's structures, the
 * pool, reverse-map and walker helpers the files share (mmu_internal.h has
 * what the MMU's own files offer each other).  docs/shadow.md describes
 * them; docs/locking.md gives the lock order.
 *
 * Lock order (outermost first; ranks UMBRA_LOCK_RANK_* from the one table
 * in include/umbra/lock.h):
 *
 *   notifier object lock   NOTIFIER_OBJECT  (release() runs under it)
 *   mmu->mmu_lock          MMU              (one VM's only, never two)
 *   pool->objs_lock        OBJS             (the list of objects)
 *   pool_obj.stripes[k]    RMAP             (one stripe at a time)
 *   pool->mmus_lock        MMUS             (the list of MMUs)
 *   shadow_page.lock       TABLE            (one at a time)
 *   mmu->tlbs_lock         TLBS             (another VM's, for a remote flush)
 *   vcpu->tlb_lock         SUBSCRIBER_LEAF
 *   notifier seq_lock      NOTIFIER_SEQ     (leaf, inside read_retry)
 */
#ifndef UMBRA_SHADOW_INTERNAL_H
#define UMBRA_SHADOW_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "umbra/lock.h"
#include "umbra/shadow.h"
#include "umbra/trace.h"
#include "p2m.h"
#include "spte.h"

_Static_assert(SHADOW_LEVELS == SPTE_LEVELS, "one level count");

_Static_assert(UMBRA_LOCK_RANK_MMU < UMBRA_LOCK_RANK_OBJS && UMBRA_LOCK_RANK_OBJS < UMBRA_LOCK_RANK_RMAP &&
		       UMBRA_LOCK_RANK_RMAP < UMBRA_LOCK_RANK_MMUS && UMBRA_LOCK_RANK_MMUS < UMBRA_LOCK_RANK_TABLE &&
		       UMBRA_LOCK_RANK_TABLE < UMBRA_LOCK_RANK_TLBS &&
		       UMBRA_LOCK_RANK_TLBS < UMBRA_LOCK_RANK_SUBSCRIBER_LEAF,
	       "mmu_lock < objs_lock < stripe < mmus_lock < table lock < tlbs_lock < vCPU tlb_lock");

/*
 * No shadow lock held: mmu_lock is the outermost shadow lock, so a thread
 * that holds no lock of its rank or above holds none of them.  Asserted
 * before calling out to what may block or re-enter the shadow MMU
 * (notifier_read_begin, a slot's get_page, notifier (un)subscribe, an
 * invalidation).
 */
#define shadow_assert_no_lock_held()                                                      \
	umbra_assert_unlocked_from(UMBRA_LOCK_RANK_MMU,                                   \
				   "the shadow MMU calls notifier_read_begin, a slot's get_page, " \
				   "(un)subscribe and invalidations with no shadow lock held")

#define SHADOW_NO_PAGE UINT32_MAX
_Static_assert((uint32_t)(SHADOW_NO_PAGE + 1u) == 0, "SHADOW_NO_PAGE + 1 wraps to 0 (canon_table_get)");

/*
 * One user of a table page: the "pmd-rmap" entry.  @parent is the pool index
 * of the table whose entry @index points at the page, or SHADOW_NO_PAGE for a
 * root (then @index is its slot in @mmu's root cache).  A private table has
 * one user; a table shared between VMs (a clone's, a segment's canonical
 * table: docs/sharing.md) has one per parent entry that points at it, and a
 * non-local operation walks these lists up to the roots to reach every VM
 * that maps the table (pmd_rmap.c).
 */
struct shadow_page_user {
	/* The VM that made the link: exact for a root (parent SHADOW_NO_PAGE),
	 * informational below (the parent table may be shared by many VMs; the
	 * VMs reaching a table are found by walking up to the roots). */
	struct shadow_mmu *mmu;
	uint32_t parent;
	uint32_t index;
	struct shadow_page_user *next;
};

/*
 * The descriptor of one pool page.
 *
 *  level       0 when free; 1..4 while allocated.  Written (atomically)
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
 *  lock        the per-table lock (rank UMBRA_LOCK_RANK_TABLE): held for
 *              every write of one of the page's 512 entries and for
 *              nr_present and users, but for one: a fault holding mmu_lock
 *              in read mode sets a not-present leaf entry of a table only
 *              its VM reaches by compare-and-exchange under the page's
 *              stripe, without it (install.c, install_leaf_read_mode).
 *              Taken inside mmu_lock; never two at a time.
 *  nr_present  present entries in the page (atomic; changed under lock,
 *              or by that read-mode install).
 *  users       the pmd-rmap list (under lock).
 *  next        free-list, dying or waiting link while free (atomic: see
 *              pool.c's lock-free stacks); zap-list link (under the zapping
 *              MMU's mmu_lock) while waiting to be freed.
 */
struct shadow_page {
	uint8_t level;
	bool direct;
	uint8_t access;
	uint64_t gpa;
	uint64_t gva;
	uint32_t use_count;
	uint32_t nr_present;
	uint32_t alloc_gen;	/* times the pool allocated the page (atomic; read racily) */
	struct umbra_mutex lock;
	struct shadow_page_user *users;
	uint32_t next;
	bool canon;		/* a segment's canonical table (in pool_obj.canon) */
	struct pool_obj *canon_obj; /* its object while canon */
	uint32_t canon_key;	/* its index in canon_obj->canon */
	struct table_account *charge; /* the VM's quota it counts in, NULL: none
				       * (quota.c); set at alloc, dropped at free */
	/* The VM that alone reached it at its clone generation private_gen,
	 * when last checked (table_is_shared's cache; atomic, reset at
	 * alloc). */
	struct shadow_mmu *private_mmu;
	uint64_t private_gen;
};

/*
 * The table pages charged to one VM (quota.c; docs/shadow.md, "Table
 * quota").  A page is charged to the account of the VM that allocated it
 * (a clone's root copies to the clone), canonical tables to none; the
 * charge is dropped when the page is freed, whichever VM frees it.  The
 * account outlives its MMU while pages charged to it exist (a clone may
 * still reach them): @refs is the pages charged plus one while the MMU
 * lives, and whoever drops it to 0 frees the account.
 */
struct table_account {
	uint64_t refs;		/* atomic */
	uint64_t max;		/* immutable: the quota, 0 for none */
};

/* Drops the charge of page @sp, if any (pool_free_index). Lock-free. */
void table_uncharge(struct shadow_page *sp);

/* An SPTE's location: pool index * 512 + entry index. */
typedef uint32_t shadow_sptep_t;

static inline shadow_sptep_t sptep_make(uint32_t page, unsigned int index)
{
	return page * SPTE_ENTRIES + index;
}

static inline uint32_t sptep_page(shadow_sptep_t s) { return s / SPTE_ENTRIES; }
static inline unsigned int sptep_index(shadow_sptep_t s) { return s % SPTE_ENTRIES; }

/* The SPTEs mapping one backing page: its reverse map (rmap.c).  Under the
 * page's stripe (struct pool_obj). */
struct shadow_rmap {
	uint32_t nr, cap;
	union {
		shadow_sptep_t one; /* cap <= 1 */
		shadow_sptep_t *many;
	};
};

/* Keys of one 2 MiB run in its canonical array: the table's level (a
 * level-2 table, which maps a whole GiB, is in the array of the GiB's first
 * run), the slot's readonly flag and the table's rights (SHADOW_RIGHTS_ALL,
 * 3 bits). */
#define CANON_KEY_READONLY (SHADOW_RIGHTS_ALL + 1u)
#define CANON_KEY_LEVEL2 (2u * CANON_KEY_READONLY)
#define CANON_KEYS_PER_RUN (2u * CANON_KEY_LEVEL2)
_Static_assert((CANON_KEY_READONLY & SHADOW_RIGHTS_ALL) == 0, "the readonly key bit is above the rights");
_Static_assert((CANON_KEY_LEVEL2 & (CANON_KEY_READONLY | SHADOW_RIGHTS_ALL)) == 0,
	       "the level key bit is above the readonly bit");
static inline uint32_t canon_key(uint64_t run, int level, bool readonly, unsigned int rights)
{
	return (uint32_t)(run * CANON_KEYS_PER_RUN + (level == 2 ? CANON_KEY_LEVEL2 : 0u) +
			  (readonly ? CANON_KEY_READONLY : 0u) + (rights & SHADOW_RIGHTS_ALL));
}

/*
 * The per-page side arrays of one 2 MiB run of an object (SPTE_ENTRIES
 * pages), allocated when the run is first used (pool_obj_run_get_or_alloc):
 *  rmap   page -> every leaf location in the pool that maps it, whichever
 *         VM installed it (under the run's stripe);
 *  mapped a bit per page, set exactly while its reverse map is not empty
 *         (under the run's stripe; changed only by pool_obj_rmap_add /
 *         _del and the non-local zap): a zap of a range visits the pages
 *         whose bit is set and no other, so the later callbacks of one
 *         invalidation of a shared object do not rescan what the first one
 *         emptied;
 *  young  per page: 1 once any VM's fault mapped it since the last
 *         clear_young (access.c).  Atomic bytes; cleared under the run's
 *         stripe, set without a lock;
 *  huge   every 2 MiB leaf in the pool that maps the whole run (its first
 *         page 2 MiB-aligned in machine memory: docs/shadow.md, "2 MiB
 *         shadow leaves"), whichever VM installed it; a zap of any page of
 *         the run visits it (under the run's stripe);
 *  canon  the run's canonical tables (segments only): [key % CANON_KEYS_PER_RUN]
 *         -> pool index + 1, 0 for none (canon_table_get / _set); the
 *         level-1 tables of the run and, in a GiB's first run, the level-2
 *         tables of the GiB; a read-only and a writable attachment of the
 *         segment never share a table (under the run's stripe; the table
 *         holds no reference: it is in the array exactly while its use count
 *         is > 0).
 */
struct pool_obj_run {
	struct shadow_rmap rmap[SPTE_ENTRIES];
	uint64_t mapped[SPTE_ENTRIES / 64];
	uint8_t young[SPTE_ENTRIES];
	struct shadow_rmap huge;
	uint32_t canon[CANON_KEYS_PER_RUN];
};

/*
 * What the pool knows of one memory object placed at one machine address
 * (shared by every VM's slot of that object at that address; a shared table
 * maps the same object at the same machine address for all its users).
 *  stripes  the reverse-map locks (UMBRA_LOCK_RANK_RMAP): 2 MiB run r of
 *         the object (pages [r * 512, r * 512 + 511]) is under
 *         stripes[r % POOL_OBJ_STRIPES].  A stripe protects the side arrays
 *         of its runs (reverse map, canonical tables) and is held for every
 *         write of a *leaf* entry that maps one of its pages (with the table
 *         lock inside it), whichever VM writes: a leaf and its reverse-map
 *         entry change together.  A thread holds one stripe at a time (no
 *         global lock, no stripe order to follow).
 *  runs   the directory of the runs' side arrays, in two levels: one
 *         pointer per GiB of the object (POOL_OBJ_RUNS_PER_DIR runs), NULL
 *         until a run of that GiB is first used, then a page of one pointer
 *         per run, NULL until the run is first used (a leaf added to its
 *         reverse map, a canonical table created).  A run's pointer is set
 *         once, under the run's stripe, with a release store; a GiB's page
 *         is published with a compare-and-swap (two stripes may race to
 *         make it); both are kept until the pool_obj is freed.  Read with
 *         acquire loads (pool_obj_run), locked or not.  A run never used is
 *         an empty reverse map, no young page and no canonical table: adding
 *         a slot of an object costs 8 bytes per GiB, not per page or run.
 *
 * Leaf rule: a present leaf that maps page p of the object is in p's
 * reverse map; a leaf goes from not present to mapping p, or from mapping p
 * to not present (or keeps p and changes rights), always under p's stripe.
 * A leaf never goes from p to another page in one write (clear, then
 * install).
 */
#define POOL_OBJ_STRIPES 64u
struct pool_obj {
	struct notifier_object *obj;
	uint64_t mpa;
	uint64_t npages;
	unsigned int refs;		/* slots using it, under pool->objs_lock */
	struct umbra_mutex stripes[POOL_OBJ_STRIPES];
	struct pool_obj_run ***runs;	/* [pool_obj_nr_dirs(npages)] of NULL or
					 * [POOL_OBJ_RUNS_PER_DIR]; atomic pointers */
	struct pool_obj *next;		/* pool->objs, under pool->objs_lock */
	uint32_t **page_refs;		/* page reference counts (refcount.c): NULL or
					 * [nr_runs] arrays of SPTE_ENTRIES counts, each
					 * NULL (every count 1) until first needed */
	uint32_t *run_refs;		/* refcount.c: NULL or [nr_runs] references of
					 * linear P2M runs to a whole run, beyond page_refs */
	struct umbra_mutex refs_lock;	/* page_refs and run_refs (UMBRA_LOCK_RANK_PAGE_REFS) */
};

/* The 2 MiB runs of an object of @npages pages (the last may be partial). */
static inline uint64_t pool_obj_nr_runs(uint64_t npages)
{
	return (npages + SPTE_ENTRIES - 1) / SPTE_ENTRIES;
}

/* The runs of one page of the runs directory: 1 GiB of the object. */
#define POOL_OBJ_RUNS_PER_DIR 512u

/* The pages of the runs directory of an object of @npages pages. */
static inline uint64_t pool_obj_nr_dirs(uint64_t npages)
{
	return (pool_obj_nr_runs(npages) + POOL_OBJ_RUNS_PER_DIR - 1) / POOL_OBJ_RUNS_PER_DIR;
}

/* The side arrays of run @run of @po, or NULL (never used).  Lock-free: a
 * published run is never freed before the pool_obj. */
static inline struct pool_obj_run *pool_obj_run(const struct pool_obj *po, uint64_t run)
{
	struct pool_obj_run **dir = __atomic_load_n(&po->runs[run / POOL_OBJ_RUNS_PER_DIR], __ATOMIC_ACQUIRE);

	return dir ? __atomic_load_n(&dir[run % POOL_OBJ_RUNS_PER_DIR], __ATOMIC_ACQUIRE) : NULL;
}

/* The side arrays of run @run of @po, allocated (zero-filled) if it has
 * none.  The run's stripe held.  0 or -ENOMEM (pool.c). */
int pool_obj_run_get_or_alloc(struct pool_obj *po, uint64_t run, struct pool_obj_run **out);

/* The reverse map of page @page of @po, or NULL for an empty one whose run
 * was never used (the for_each_rmap_sptep loop, rmap_nr and rmap_del take
 * NULL as empty).  The page's stripe held (or a quiescent pool). */
static inline struct shadow_rmap *pool_obj_rmap(const struct pool_obj *po, uint64_t page)
{
	struct pool_obj_run *run = pool_obj_run(po, page / SPTE_ENTRIES);

	return run ? &run->rmap[page % SPTE_ENTRIES] : NULL;
}

/* Adds location @sptep to the reverse map of page @page of @po, allocating
 * the run's side arrays on its first use.  The page's stripe held.  0 or
 * -ENOMEM (nothing changed).  pool.c. */
int pool_obj_rmap_add(struct pool_obj *po, uint64_t page, shadow_sptep_t sptep);
/* Removes @sptep from page @page's reverse map if there (and the page's
 * mapped bit with the last location).  The page's stripe held. */
void pool_obj_rmap_del(struct pool_obj *po, uint64_t page, shadow_sptep_t sptep);

/* Adds location @sptep (a 2 MiB leaf mapping all of run @run) to the run's
 * reverse map of 2 MiB leaves, allocating the run's side arrays on first
 * use.  The run's stripe held.  0 or -ENOMEM (nothing changed).  pool.c. */
int pool_obj_huge_rmap_add(struct pool_obj *po, uint64_t run, shadow_sptep_t sptep);
/* Removes @sptep from run @run's 2 MiB leaves if there.  The run's stripe
 * held. */
void pool_obj_huge_rmap_del(struct pool_obj *po, uint64_t run, shadow_sptep_t sptep);
/* The reverse map of the 2 MiB leaves of the run of page @page of @po, or
 * NULL (empty, the run never used).  The run's stripe held. */
static inline struct shadow_rmap *pool_obj_huge_rmap(const struct pool_obj *po, uint64_t page)
{
	struct pool_obj_run *run = pool_obj_run(po, page / SPTE_ENTRIES);

	return run ? &run->huge : NULL;
}

/* Frees @po's page reference counts (refcount.c): its last slot went.
 * objs_lock. */
void page_refs_exit(struct pool_obj *po);

/* The canonical table at @key of @po, or SHADOW_NO_PAGE.  The key's stripe
 * held (or a quiescent pool). */
static inline uint32_t canon_table_get(const struct pool_obj *po, uint32_t key)
{
	struct pool_obj_run *run = pool_obj_run(po, key / CANON_KEYS_PER_RUN);

	/* Stored as page + 1: 0 - 1 == SHADOW_NO_PAGE. */
	return run ? run->canon[key % CANON_KEYS_PER_RUN] - 1 : SHADOW_NO_PAGE;
}

/* Enters @page (SHADOW_NO_PAGE: none) at @key of @po, whose run was
 * allocated when the table was created (pool_obj_run_get_or_alloc).  The
 * key's stripe held. */
static inline void canon_table_set(struct pool_obj *po, uint32_t key, uint32_t page)
{
	struct pool_obj_run *run = pool_obj_run(po, key / CANON_KEYS_PER_RUN);

	run->canon[key % CANON_KEYS_PER_RUN] = page + 1; /* SHADOW_NO_PAGE + 1 == 0 */
}

/* Page @page of @po was touched (a fault mapped it: the leaf is in the
 * page's reverse map, so its run exists).  Lock-free. */
static inline void pool_obj_mark_young(struct pool_obj *po, uint64_t page)
{
	struct pool_obj_run *run = pool_obj_run(po, page / SPTE_ENTRIES);
	uint8_t *young = run ? &run->young[page % SPTE_ENTRIES] : NULL;

	if (young && !__atomic_load_n(young, __ATOMIC_RELAXED))
		__atomic_store_n(young, 1, __ATOMIC_RELAXED);
}

/* Marks every page of the 2 MiB run from @page0 young (a 2 MiB leaf maps
 * them all). */
static inline void pool_obj_mark_run_young(struct pool_obj *po, uint64_t page0)
{
	for (uint64_t k = 0; k < SPTE_ENTRIES; k++)
		pool_obj_mark_young(po, page0 + k);
}

/* Page @page of @po touched since the last clear?  Read-only, lock-free. */
static inline bool pool_obj_is_young(const struct pool_obj *po, uint64_t page)
{
	struct pool_obj_run *run = pool_obj_run(po, page / SPTE_ENTRIES);

	return run && __atomic_load_n(&run->young[page % SPTE_ENTRIES], __ATOMIC_RELAXED);
}

/* Page @page of @po is no longer young.  The page's stripe held. */
static inline void pool_obj_clear_young_mark(struct pool_obj *po, uint64_t page)
{
	struct pool_obj_run *run = pool_obj_run(po, page / SPTE_ENTRIES);

	if (run)
		__atomic_store_n(&run->young[page % SPTE_ENTRIES], 0, __ATOMIC_RELAXED);
}

/*
 * Clears page @page's young byte and makes every leaf that maps it
 * access-tracked (access.c), adding the leaves tracked to *@tracked.
 * Returns whether it was young; 1 without clearing if the page's stripe or
 * a leaf's table lock is contended.  Try-locks only: never sleeps.  The
 * caller holds no stripe or table lock.
 */
int pool_obj_clear_young(struct shadow_pool *pool, struct pool_obj *po, uint64_t page,
			 uint64_t *tracked);

/* The stripe of page @page of @po. */
static inline struct umbra_mutex *pool_obj_stripe(struct pool_obj *po, uint64_t page)
{
	return &po->stripes[(page / SPTE_ENTRIES) % POOL_OBJ_STRIPES];
}

/* Takes @want in place of @held (either may be NULL); returns @want.  For
 * loops over leaves that mostly map pages of one stripe (one held at a
 * time). */
static inline struct umbra_mutex *stripe_switch(struct umbra_mutex *held,
						   struct umbra_mutex *want)
{
	if (held == want)
		return held;
	if (held)
		umbra_mutex_unlock(held);
	if (want)
		umbra_mutex_lock(want);
	return want;
}

/*
 * The pool keeps two copies of every table page (2x the table memory; both
 * sparse: a page takes memory once allocated):
 *  entries  the private, authoritative copy, in anonymous memory that no
 *           guest can reach: every read of the shadow MMU (iterators, zaps,
 *           sync, checks, privatize, clone, the fault path) uses it, so no
 *           structure is ever derived from memory a guest can write;
 *  visible  the memfd mapping that the VMM maps into its VMs (writable on
 *           AMD) and the CPU walks: umbra only ever writes it, with every
 *           entry write (pool_spte_write), and reads it only to compare it
 *           with the private copy (pool_entry_mirror); the software vCPU
 *           walks it as the CPU does.
 * The CPU never writes the pool (A/D are preset in every SPTE: spte.h), so
 * nothing needs reading back; a guest that writes it breaks at most the
 * translations of the VMs that use its pool.  The copies differ on purpose
 * only for an access-tracked leaf (access.c): not present in the visible
 * copy, unchanged in the private one.
 */
struct shadow_pool {
	int fd;
	size_t nr_pages;
	uint64_t *entries;	/* the private copy of the whole pool */
	uint64_t *visible;	/* the memfd's mapping: what the CPU walks */
	/* Set (atomically, never cleared) once clear_young has hidden a leaf:
	 * until then no fault can be a fast restore (access.c). */
	bool young_tracked;
	struct shadow_page *pages;
	/*
	 * Allocation and free take no lock (pool.c): the free list is a
	 * tagged lock-free stack, free_top = tag << 32 | top index
	 * (SHADOW_NO_PAGE: the pool is full); in_use[] are atomic counters.
	 *
	 * Deferred reuse (RCU): a freed page leaves in_use at once (level 0)
	 * but joins the free list only after a grace period, so a lock-free
	 * walker inside umbra_rcu_read_lock() never reads a page that was
	 * reused under it.  dying: a push-only lock-free stack of pages freed
	 * since the queued callback was queued; waiting: what the queued
	 * callback returns to the free list (owned by whoever set rcu_queued,
	 * atomic), after which the dying pages get their grace period.  Both
	 * linked through shadow_page.next.  nr_deferred (atomic) counts both.
	 */
	uint64_t free_top;
	size_t in_use[SPTE_LEVELS + 1];
	uint32_t dying_head, waiting_head;
	size_t nr_deferred;
	bool rcu_queued;
	struct umbra_rcu_work rcu;
	/* objs_lock (UMBRA_LOCK_RANK_OBJS) protects the list of objects and
	 * their refs; taken when a slot is added or removed and by the pool
	 * check, never on a fault, privatize or zap path.  Each object's
	 * reverse maps are under its own stripes (struct pool_obj). */
	struct umbra_mutex objs_lock;
	struct pool_obj *objs;
	/* mmus_lock (UMBRA_LOCK_RANK_MMUS) protects the list of MMUs: taken
	 * by create / destroy and by the flush-everyone fallback of a remote
	 * flush (inside a stripe); a listed MMU is not freed under it. */
	struct umbra_mutex mmus_lock;
	struct shadow_mmu *mmus;	/* every MMU of the pool (flush-everyone fallback) */
	uint64_t flush_gen;		/* atomic: batch ids for remote-flush dedup */
	uint64_t fill_seq;		/* atomic: bumped by every fill_barrier_locked; a fill
					 * in place that sees it move refuses (fill.c) */
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

/* The private, authoritative entries of page @index: what umbra reads. */
static inline uint64_t *pool_entries(struct shadow_pool *pool, uint32_t index)
{
	return pool->entries + (size_t)index * SPTE_ENTRIES;
}

/* The visible entries of page @index (what the CPU walks): write-only for
 * the shadow MMU (pool_spte_write, pool_entry_mirror). */
static inline uint64_t *pool_visible_entries(struct shadow_pool *pool, uint32_t index)
{
	return pool->visible + (size_t)index * SPTE_ENTRIES;
}

/*
 * Writes entry @i of page @index: the private copy, then the visible one,
 * both with release stores, so a CPU that walks the visible copy sees a
 * child's entries before the entry that links it.  The caller holds the
 * page's table lock, or the page is not yet published (nothing else writes
 * it).
 */
static inline void pool_spte_write(struct shadow_pool *pool, uint32_t index, unsigned int i,
				   uint64_t spte)
{
	spte_write(pool_entries(pool, index) + i, spte);
	spte_write(pool_visible_entries(pool, index) + i, spte);
}

/* Rewrites entry @i of page @index in the visible copy from the private
 * one if they differ (a guest wrote the visible copy).  Takes the page's
 * table lock when it writes; the caller holds no table lock. */
void pool_entry_mirror(struct shadow_pool *pool, uint32_t index, unsigned int i);

/* Takes a free page for a table of @level: 0, or -ENOMEM (none free now;
 * see pool_wait_deferred). */
int pool_alloc_index(struct shadow_pool *pool, int level, uint32_t *index);
/* Frees page @index, which nothing links any more: reusable after an RCU
 * grace period.  Never blocks (callable from a read-side section). */
void pool_free_index(struct shadow_pool *pool, uint32_t index);
/* If freed pages wait for a grace period, waits until they are reusable and
 * returns true.  May block: the caller holds no lock and is not in a
 * read-side section. */
bool pool_wait_deferred(struct shadow_pool *pool);
/* Adds / removes a user of page @index (takes its table lock). */
int pool_user_add(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		  uint32_t parent, uint32_t slot);
void pool_user_del(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		   uint32_t parent, uint32_t slot);
/* Adds a user without raising the use count (the caller already did). */
int pool_user_link(struct shadow_pool *pool, uint32_t index, struct shadow_mmu *mmu,
		   uint32_t parent, uint32_t slot);
/* The pool_obj of @obj placed at @mpa, created with one reference, or an
 * extra reference on the existing one; put drops it.  Take objs_lock. */
int pool_obj_get(struct shadow_pool *pool, struct notifier_object *obj, uint64_t mpa,
		 struct pool_obj **out);
void pool_obj_put(struct shadow_pool *pool, struct pool_obj *po);

/* ---- the walker's helpers (walk.c) ------------------------------------ */

/* Rights an entry grants by itself under @mode. */
unsigned int walk_entry_rights(const struct shadow_paging_mode *mode, uint64_t entry);
bool walk_mode_is_valid(const struct shadow_paging_mode *mode);

/* ---- reverse map (rmap.c) --------------------------------------------- */

/* Adds @sptep to @rmap: 0 or -ENOMEM (nothing changed). */
int rmap_add(struct shadow_rmap *rmap, shadow_sptep_t sptep);
/* Removes @sptep from @rmap if there (NULL: an empty map, nothing to do):
 * true if it was there. */
bool rmap_del(struct shadow_rmap *rmap, shadow_sptep_t sptep);
/* Frees @rmap's array, leaving it empty. */
void rmap_free(struct shadow_rmap *rmap);
static inline shadow_sptep_t rmap_get(const struct shadow_rmap *rmap, uint32_t i)
{
	return rmap->cap <= 1 ? rmap->one : rmap->many[i];
}

/* Locations in @rmap (NULL: an empty reverse map, pool_obj_rmap). */
static inline uint32_t rmap_nr(const struct shadow_rmap *rmap)
{
	return rmap ? rmap->nr : 0;
}

/* The loop test of for_each_rmap_sptep: @lock (the page's stripe, or, for
 * the quiescent-pool checker, pool->objs_lock) is held. */
static inline bool rmap_iter_valid(const struct shadow_rmap *rmap, uint32_t i,
				   struct umbra_mutex *lock)
{
	umbra_mutex_assert_held(lock);
	return i < rmap_nr(rmap);
}

/* Every location @s (index @i) in @rmap (NULL: empty), read under @lock:
 * the stripe of the rmap's page (asserted at every step). */
#define for_each_rmap_sptep(rmap, lock, i, s) \
	for ((i) = 0; rmap_iter_valid((rmap), (i), (lock)) && ((s) = rmap_get((rmap), (i)), 1); (i)++)

/* ---- the MMU (mmu.c and the files of mmu_internal.h) ----------------- */

struct shadow_mmu_slot {
	struct shadow_slot s;		/* immutable after add */
	bool shared;			/* a segment (shadow_mmu_add_segment), immutable */
	uint64_t npages;		/* immutable */
	int id;
	struct shadow_mmu *mmu;
	struct notifier_subscription *sub;
	struct pool_obj *pobj;		/* shared with other VMs' slots of the object */
	bool released;			/* atomic; set under mmu_lock by release() */
	/* A frozen own slot shared with clones (docs/sharing.md): never mapped
	 * writable, but for a page of a taken-over layer that no other VM
	 * maps.  Atomic; set under mmu_lock (clone, take-over). */
	bool layer;
	bool taken_over;
};

struct shadow_root {
	uint64_t cr3;			/* guest PML4 gpa (masked) */
	uint32_t page;			/* pool index; SHADOW_NO_PAGE: slot empty */
	unsigned int pins;		/* vCPUs running on it */
	uint64_t last_used;
	uint64_t mark;			/* shadow_mmu_root_mark's generation, 0: none */
};

/*
 * Zap batch (under mmu_lock): what to flush, and what to do once flushed.
 *  va / flush_all   this VM's own vCPUs;
 *  tables           tables in which a leaf was cleared in place: every VM
 *                   that reaches one (pmd-rmap walk up to the roots) is
 *                   flushed too (tables_overflow: flush every VM of the pool);
 *  puts             table references dropped from a parent entry: the
 *                   use count is decremented only after the flush, so a
 *                   racing unsharer that frees the table cannot free it
 *                   under a walk of one of our vCPUs (flush before put);
 *  free_head        pages to free after the flush.
 */
#define ZAP_MAX_VA 16
#define ZAP_MAX_TABLES 32
#define ZAP_MAX_PUTS 64
struct zap_put {
	uint32_t child, parent, index;
};
struct zap_batch {
	unsigned int nr_va;
	bool flush_all;
	uint64_t va[ZAP_MAX_VA];
	unsigned int nr_tables;
	bool tables_overflow;
	uint32_t tables[ZAP_MAX_TABLES];
	unsigned int nr_puts;
	struct zap_put puts[ZAP_MAX_PUTS];
	uint32_t free_head;		/* pages to free after the flush */
	uint64_t zapped;
	/* An invlpg's caller, which invalidates self_va itself: not sent a
	 * flush for that va alone (shadow_mmu_invlpg); NULL otherwise. */
	struct shadow_tlb *self;
	uint64_t self_va;
};

/* One thread slot's statistics, padded so that the counters of two slots
 * never share a cache line, nor a pair of lines that a CPU prefetches
 * together. */
struct mmu_stats_slot {
	struct shadow_mmu_stats s;
	char pad[128];
};

struct shadow_mmu {
	struct shadow_pool *pool;	/* immutable */
	struct shadow_paging_mode mode; /* written under mmu_lock (atomic stores,
					 * shadow_mmu_set_mode); read anywhere */

	/*
	 * mmu_lock (UMBRA_LOCK_RANK_MMU): the per-VM lock, a reader-writer
	 * lock.  Write mode protects the structure of this VM's shadow
	 * tables (which tables exist, their users entries for this VM), the
	 * reverse maps, the root cache, the TLB list, P2M stores and
	 * sync_seq stores; every *_locked function asserts write mode unless
	 * its comment says "either mode".  Taken in write mode by the fault
	 * path's full install (around notifier_read_retry and the install),
	 * invlpg, CR3 loads, flushes, zaps, clones and the notifier
	 * callbacks.  Read mode is taken only by a fault whose shadow path is
	 * all there and this VM's alone (fault.c, fault_install_read_mode):
	 * it changes nothing but one not-present leaf entry of a table no
	 * other VM reaches (by compare-and-exchange, under the page's
	 * stripe), its reverse-map entry, atomic counters and young bytes,
	 * so read-mode faults run together and every write-mode holder
	 * excludes them.  Never held while calling notifier_read_begin(),
	 * get_page or notifier (un)subscribe.
	 */
	struct umbra_rwlock mmu_lock;
	uint64_t sync_seq;		/* atomic; bumped under mmu_lock by every sync / P2M change */
	uint32_t trace_id;		/* atomic: the "vm" of its trace events (umbra/trace.h) */
	uint64_t zap_gen;		/* atomic; bumped (from 1) whenever a translation of this
					 * VM may have gone: its own zaps, another VM's remote
					 * flush of it (shadow_mmu_root_is_marked) */

	/* The P2M (p2m.h, p2m_tree.c): a radix tree of p2m_levels levels over
	 * p2m_pages gfns, whose nodes are shared with clones by use count;
	 * @p2m_root: the root node's pointer, 0 while nothing is mapped
	 * (atomic: written under mmu_lock, read lock-free). */
	uint64_t p2m_pages;
	uint64_t p2m_root;
	int p2m_levels;

	struct table_account *account;	/* the table quota (quota.c) */

	struct shadow_mmu_slot slots[SHADOW_MAX_SLOTS];
	int nr_slots;			/* atomic (release): slots[0..nr) are published;
					 * add_slot is not concurrent with itself */

	unsigned int nr_roots;		/* slots in @roots: grows up to max_roots */
	unsigned int max_roots;		/* immutable: the cache's bound */
	struct shadow_root *roots;	/* [nr_roots], under mmu_lock */
	unsigned int fault_around;	/* immutable: window in pages, 1 = off (fault.c) */
	/* One shadow per (guest table, role, gva) within the VM (table_hash.c):
	 * a direct-mapped cache of the tables it made, under mmu_lock. */
	uint32_t *table_hash;		/* [TABLE_HASH_SIZE]; SHADOW_NO_PAGE: none */
	uint64_t clone_gen;		/* bumped under mmu_lock by each clone of the VM:
					 * only a clone makes its tables reachable by
					 * another VM (private_gen) */
	uint64_t tick;			/* LRU clock, under mmu_lock */

	/* tlbs_lock (UMBRA_LOCK_RANK_TLBS): lets another VM's zap flush our
	 * vCPUs (pmd-rmap) without our mmu_lock.  The list is written under
	 * both mmu_lock and tlbs_lock, read under either. */
	struct umbra_mutex tlbs_lock;
	struct shadow_tlb *tlbs;	/* registered vCPUs */
	uint64_t flush_mark;		/* atomic: last remote-flush batch id */
	struct shadow_mmu *pool_next;	/* pool->mmus link, under pool->mmus_lock */

	int own_slot;			/* where gfn g's private copy is page g, -1: none
					 * (atomic: written under mmu_lock) */
	bool sharing;			/* ever cloned or used a canonical table */
	bool huge_leaves;		/* 2 MiB shadow leaves allowed (config; immutable) */
	bool huge_used;			/* ever installed a 2 MiB leaf (under mmu_lock) */
	bool cloned;			/* ever cloned or made by a clone: its tables may
					 * hold writable leaves of copy-on-write pages
					 * behind write-protected entries (under mmu_lock) */
	bool destroying;		/* roots dropped by destroy (under mmu_lock) */

	/* Each thread counts in its slot's block (umbra_thread_slot: the
	 * vCPU threads of a VM count on lines of their own; umbra_slot_add:
	 * no locked instruction on an owned slot); shadow_mmu_stats sums
	 * them with relaxed loads. */
	struct mmu_stats_slot stats[UMBRA_THREAD_SLOTS];
};

static inline struct shadow_page *mmu_page(struct shadow_mmu *mmu, uint32_t index)
{
	return pool_page(mmu->pool, index);
}

static inline uint64_t *mmu_sptes(struct shadow_mmu *mmu, uint32_t index)
{
	return pool_entries(mmu->pool, index);
}

#define mmu_stat_add(mmu, field, n)                                                       \
	do {                                                                               \
		const unsigned int mmu_stat_slot_ = umbra_thread_slot();                   \
		umbra_slot_add(&(mmu)->stats[mmu_stat_slot_].s.field, mmu_stat_slot_, (n)); \
	} while (0)
#define mmu_stat_inc(mmu, field) mmu_stat_add(mmu, field, 1)

/* Machine address -> (slot, page); NULL if no slot holds it.  Lock-free
 * (the slots are published, never moved).  p2m.c. */
struct shadow_mmu_slot *mmu_mpa_to_slot(struct shadow_mmu *mmu, uint64_t mpa, uint64_t *page);

/* notify.c */
extern const struct notifier_ops shadow_notifier_ops;

/* The "vm" of @mmu's trace events (umbra/trace.h). */
static inline uint32_t mmu_trace_id(const struct shadow_mmu *mmu)
{
	return __atomic_load_n(&mmu->trace_id, __ATOMIC_RELAXED);
}

#endif
