/*
 * shadow/: the shadow MMU library (docs/shadow.md is the design as built,
 * docs/locking.md the lock order).
 *
 * A guest owns its page tables (guest virtual -> guest physical, in its own
 * RAM); umbra's P2M maps guest-physical pages to pages of memory objects
 * (notifier/), and each memory object sits at a fixed *machine* address (the
 * KVM guest-physical address of its memslot).  The shadow MMU composes the
 * two into x86-64 4-level tables, kept in one table pool that the VMM maps
 * at SHADOW_POOL_GPA in every VM (read-only where the hardware allows:
 * docs/shadow.md, "Limits"): those are the tables the CPU really walks.
 *
 * Pieces, one mechanism per file (docs/shadow.md has the source map):
 *   spte.h, p2m.h   entry encodings;  iter.h  the shadow-table iterator
 *   pool.c   the table pool and its per-page descriptors
 *   walk.c   the x86 page walker (guest tables, and the software vCPU's walk
 *            of the shadow tables), effective rights and error codes
 *   mmu.c    per-VM shadow MMU: create / destroy, vCPU registration, stats;
 *            its mechanisms: p2m.c, zap.c, pmd_rmap.c, sync.c, privatize.c,
 *            canon.c, root.c, fault.c, clone.c, check.c (mmu_internal.h)
 *   rmap.c   reverse map: backing page -> shadow entries
 *   notify.c the MMU-notifier subscription of each slot
 *   vcpu.c   the software vCPU (walker + TLB)
 *   store.c  the in-memory swap store
 *
 * Errors are 0 or -errno (plus the documented positive fault results); the
 * library never prints or exits.  Threads that run the software vCPU's
 * accesses (its lock-free walk is an RCU reader) or invalidate memory
 * objects are registered with liburcu (notifier_thread_init, as
 * umbra/notifier.h says); shadow_mmu_fault(), shadow_mmu_load_cr3() and
 * shadow_mmu_destroy() need no registration, but must not run inside a
 * read-side critical section (on a full pool they wait for a grace period).
 */
#ifndef UMBRA_SHADOW_H
#define UMBRA_SHADOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "umbra/notifier.h"

/* Guest-physical base of the pool in every VM: above all guest RAM and shared
 * segments (the VMM keeps those below 512 GiB). */
#define SHADOW_POOL_GPA (1ull << 39)
#define SHADOW_PAGE_SIZE 4096u
#define SHADOW_PAGE_SHIFT 12
/* Most table pages one pool can have (entry locations are 32-bit). */
#define SHADOW_POOL_MAX_PAGES (1u << 23)
/* x86-64 4-level paging. */
#define SHADOW_LEVELS 4

/* ---- the table pool ------------------------------------------------- */

struct shadow_pool;

/*
 * Creates a pool of @nr_pages table pages (1..SHADOW_POOL_MAX_PAGES).  The
 * pool keeps two copies of every table page: a private, authoritative copy
 * in host memory no guest can reach, which the shadow MMU reads, and the
 * visible copy, a memfd (shadow_pool_memory() describes it to the VMM), which
 * the CPU walks and the shadow MMU only writes (every entry write goes to
 * both).  A guest that writes the visible copy (where its memslot is
 * writable) breaks at most the translations of the VMs that use the pool;
 * nothing umbra does depends on what it wrote.  Table memory is therefore
 * twice the tables' size; both copies are sparse (a page takes memory once a
 * table was allocated there).  Starts liburcu's worker thread if it is not
 * running (umbra_rcu_worker_start: the pool's deferred frees run there).
 * May block (allocates).  Returns 0 and sets
 * *@out, -EINVAL, -ENOMEM or the memfd's -errno.
 */
int shadow_pool_create(size_t nr_pages, struct shadow_pool **out);
/* Frees the pool.  Every page must have been freed (every shadow MMU using
 * it destroyed).  Waits for the pages still waiting for a grace period
 * (below).  May block: not from a read-side section. */
void shadow_pool_destroy(struct shadow_pool *pool);

/*
 * The pool's visible copy as one range, for the VMM to give its VMs as a
 * memslot at @gpa.  @host is the library's own read-write mapping of it
 * (the VMM may back a writable memslot with it); @fd is the memfd behind it,
 * which the VMM may mmap again (read-only, for a read-only memslot).  Both
 * stay valid until shadow_pool_destroy(); the pool owns them (do not unmap
 * @host or close @fd).  The VMM must never write table pages through @host:
 * the shadow MMU alone writes them, under its locks.  The shadow MMU never
 * reads them back (it reads its private copy).
 */
struct shadow_pool_memory {
	uint64_t gpa;		/* guest-physical base: SHADOW_POOL_GPA */
	size_t bytes;		/* nr_pages * SHADOW_PAGE_SIZE */
	void *host;		/* read-write host mapping of @bytes bytes */
	int fd;			/* the memfd: offset 0 is @gpa */
};

/* Fills *@mem with the pool's memory (above).  Lock-free, cannot fail. */
void shadow_pool_memory(const struct shadow_pool *pool, struct shadow_pool_memory *mem);
/* Number of table pages.  Lock-free. */
size_t shadow_pool_nr_pages(const struct shadow_pool *pool);

/*
 * Table pages are reused only after an RCU grace period (liburcu-memb,
 * through umbra_call_rcu): the lock-free walker of the tables (the
 * software vCPU's page walk) runs in umbra_rcu_read_lock() and never
 * reads a page that was freed and reused under it.  A freed page leaves the
 * in-use counts at once and becomes allocatable after the grace period.
 * Allocation and free are lock-free (no pool-wide lock).
 *
 * Allocates one zeroed table page at @level (1..4) and returns its
 * guest-physical address in *@gpa.  The page's descriptor starts with use
 * count 0, no users, not direct, shadowing nothing.  Thread-safe, lock-free,
 * never blocks.  Returns 0, -ENOMEM when no page is free (pages freed less
 * than a grace period ago are not), -EINVAL for a bad level.
 */
int shadow_pool_alloc(struct shadow_pool *pool, int level, uint64_t *gpa);
/* Returns a page to the pool; its use count must be 0 and its users list
 * empty.  Waits for the grace period, so that the page
 * can be allocated again on return (may block: not from a read-side
 * section).  -EINVAL if @gpa is not an allocated page or still has users. */
int shadow_pool_free(struct shadow_pool *pool, uint64_t gpa);
/* Host pointer to the 512 entries of the page at @gpa in the visible copy
 * (what the CPU walks; what a guest may have written there), or NULL if
 * @gpa is not a page of the pool.  For tests and the software vCPU: the
 * shadow MMU reads its private copy.  Lock-free. */
uint64_t *shadow_pool_table(struct shadow_pool *pool, uint64_t gpa);
/* True if @gpa lies inside the pool's guest-physical range. */
bool shadow_pool_contains(const struct shadow_pool *pool, uint64_t gpa);
/* Pages in use at a level (1..4), or in all levels for level 0.  Takes the
 * free-list lock. */
size_t shadow_pool_pages_in_use(struct shadow_pool *pool, int level);

/* ---- x86 paging: access kinds, error codes, the walker --------------- */

/* @va sign-extended from bit 47: what a 4-level x86-64 address means. */
static inline uint64_t shadow_va_canonical(uint64_t va)
{
	return (uint64_t)((int64_t)(va << 16) >> 16);
}

/* True if @va is canonical (bits 63..47 all equal): any other address
 * raises #GP, not #PF, on x86-64 with 4-level paging. */
static inline bool shadow_va_is_canonical(uint64_t va)
{
	return shadow_va_canonical(va) == va;
}

/* Page-fault error code bits (Intel SDM vol. 3A 4.7, AMD APM vol. 2 8.4.2). */
#define SHADOW_PFERR_PRESENT (1u << 0) /* 0: not present; 1: protection or reserved bit */
#define SHADOW_PFERR_WRITE (1u << 1)
#define SHADOW_PFERR_USER (1u << 2)
#define SHADOW_PFERR_RSVD (1u << 3)
#define SHADOW_PFERR_FETCH (1u << 4) /* only when EFER.NXE or CR4.SMEP */

/* An access is a set of these; they are the error code's W, U and I/D bits.
 * A read is 0 (supervisor) or SHADOW_ACCESS_USER. */
#define SHADOW_ACCESS_WRITE SHADOW_PFERR_WRITE
#define SHADOW_ACCESS_USER SHADOW_PFERR_USER
#define SHADOW_ACCESS_FETCH SHADOW_PFERR_FETCH
#define SHADOW_ACCESS_MASK (SHADOW_ACCESS_WRITE | SHADOW_ACCESS_USER | SHADOW_ACCESS_FETCH)

/* Effective rights of a translation (AND of W and U, OR of XD, over levels). */
#define SHADOW_RIGHT_WRITE (1u << 0)
#define SHADOW_RIGHT_USER (1u << 1)
#define SHADOW_RIGHT_EXEC (1u << 2)
#define SHADOW_RIGHTS_ALL (SHADOW_RIGHT_WRITE | SHADOW_RIGHT_USER | SHADOW_RIGHT_EXEC)

/* The paging controls of a (guest) CPU that change the walk's outcome. */
struct shadow_paging_mode {
	bool wp;		/* CR0.WP: supervisor writes obey R/W */
	bool nxe;		/* EFER.NXE: XD honoured (else bit 63 is reserved) */
	bool smep;		/* CR4.SMEP: no supervisor fetch from user pages */
	bool gbpages;		/* CPUID 1 GiB pages (else PDPTE.PS is reserved) */
	unsigned int maxphyaddr; /* physical address bits, 32..52 */
};

/* The mode umbra's guests boot in (docs/abi.md): WP, NXE, 1 GiB pages, 46 bits. */
extern const struct shadow_paging_mode shadow_default_mode;

/* How the walker reads (and, for A/D, updates) the tables it walks. */
struct shadow_mem_ops {
	/* Reads the 8-byte entry at physical address @pa (8-aligned) into *@val
	 * atomically.  Returns 0 or -EFAULT when @pa is not readable memory. */
	int (*read)(void *ctx, uint64_t pa, uint64_t *val);
	/* Replaces the entry at @pa by @new if it still holds @old (atomic
	 * compare-and-exchange).  Returns 0, -EAGAIN if it changed, -EFAULT, or
	 * -EROFS when the memory must not be written (the shadow pool).  NULL
	 * when the walker must never write (then A/D are not updated). */
	int (*cmpxchg)(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val);
};

/* shadow_walk() flags */
#define SHADOW_WALK_SET_AD (1u << 0) /* set A in every entry used, D in the leaf on a write,
				      * as a CPU does, on a walk that succeeds */

/* What one walk found. */
struct shadow_walk {
	uint64_t va;
	unsigned int access;		/* the access asked for */
	int leaf_level;			/* 1, 2 (2 MiB) or 3 (1 GiB); 0 if no leaf reached */
	int fault_level;		/* level of the entry that faulted; 0 if none */
	uint64_t table[SHADOW_LEVELS + 1];	/* [level]: pa of the table read at that level */
	uint64_t entry[SHADOW_LEVELS + 1];	/* [level]: the entry read there */
	unsigned int rights_above[SHADOW_LEVELS + 1]; /* [level]: rights of levels > level */
	unsigned int rights;		/* effective rights at the leaf */
	bool dirty;			/* the leaf's D bit (after a SET_AD write) */
	uint64_t pa;			/* translation of va (valid on success) */
	uint32_t error_code;		/* on -EFAULT: what the CPU reports */
};

/*
 * Walks the 4-level tables rooted at @cr3 (bits 12..maxphyaddr-1 are the
 * PML4 address; the rest of @cr3 is ignored: no PCID) for a linear address
 * @va and an access @access (SHADOW_ACCESS_*), as the CPU does under @mode:
 * stops at the first not-present entry (error code P=0) or the first present
 * entry with a reserved bit set (P=1, RSVD=1); then checks the effective
 * rights (U/S and R/W ANDed, XD ORed over all levels; CR0.WP, EFER.NXE and
 * CR4.SMEP as in Intel SDM vol. 3A 4.6) and reports a protection fault with
 * P=1.  The error code always carries the access's W and U bits, and I/D for
 * a fetch only when EFER.NXE or CR4.SMEP is set.
 *
 * Reads go through @ops->read (entries may change under it: each is read
 * once, atomically).  With SHADOW_WALK_SET_AD, a successful walk sets A in
 * each entry it used and D in the leaf for a write, by @ops->cmpxchg
 * (re-walking if an entry changed meanwhile, at most 64 walks in all).
 * Locks: none taken; may block only if @ops do.
 * Returns 0 (translation in @w->pa, rights in @w->rights), -EFAULT (a page
 * fault: @w->error_code), -EINVAL (@va is not canonical: a #GP, not a #PF),
 * -EIO (@ops->read failed: a table outside memory), -EROFS (an A/D update
 * was refused: @ops->cmpxchg answered -EROFS), or -EAGAIN (the entries kept
 * changing under the A/D updates for 64 walks).
 */
int shadow_walk(const struct shadow_paging_mode *mode, const struct shadow_mem_ops *ops, void *ctx,
		uint64_t cr3, uint64_t va, unsigned int access, unsigned int flags,
		struct shadow_walk *w);

/*
 * The protection check alone: would an access @access to a translation with
 * effective @rights fault under @mode?  Returns 0 if allowed, else the error
 * code (P=1 plus the access's bits).  Pure function.
 */
uint32_t shadow_permission_fault(const struct shadow_paging_mode *mode, unsigned int rights,
				 unsigned int access);

/* Error code bits of @access alone (W, U, and I/D where @mode reports it). */
uint32_t shadow_access_error_code(const struct shadow_paging_mode *mode, unsigned int access);

/* ---- TLB flush interface (the software vCPU, vcpu.c; the KVM vCPU, vmm/) */

struct shadow_tlb;

/*
 * What the shadow MMU asks of every vCPU that may cache its translations.
 * Both are called from any thread with either the VM's mmu_lock held, or,
 * when another VM's zap of a shared table flushes this VM (pmd-rmap), with
 * that VM's mmu_lock and this VM's tlbs_lock held (and possibly a table
 * lock, rank UMBRA_LOCK_RANK_TABLE).  They must not take an mmu_lock, a
 * table lock or a reverse-map stripe; they may take a lock of rank
 * UMBRA_LOCK_RANK_SUBSCRIBER_LEAF and may wait, briefly, for a vCPU in
 * guest mode to acknowledge (a vCPU not in guest mode may be flushed at its
 * next entry instead, as KVM's remote flush does).
 * On return: the vCPU will not use any translation it cached before the call
 * (for flush_va: any translation of the page containing @va) for an access
 * that begins after the call returned, and a walk of the shadow tables it
 * had in progress either has finished or will not fill its TLB from what it
 * read (the software vCPU restarts such a walk: flush_gen).  Such a walk
 * may still be reading a table zapped before the call: the page is freed
 * at once but reused only after an RCU grace period (the walk is an RCU
 * reader; a KVM vCPU's hardware walk is over once it acknowledged).
 */
struct shadow_tlb_ops {
	void (*flush_all)(struct shadow_tlb *tlb);
	void (*flush_va)(struct shadow_tlb *tlb, uint64_t va);
};

/* Embedded in each vCPU; registered with shadow_mmu_tlb_register(). */
struct shadow_tlb {
	const struct shadow_tlb_ops *ops;
	/* Owned by the shadow MMU while registered (under its mmu_lock). */
	struct shadow_tlb *next;
	uint64_t root;	/* pool gpa of the root this vCPU runs on, 0 if none */
	uint64_t cr3;	/* the guest CR3 that root shadows */
};

/* ---- per-VM shadow MMU ---------------------------------------------- */

struct shadow_mmu;

/*
 * A slot: one memory object placed in the VM's machine address space (the
 * KVM guest-physical address of its memslot), readable by the host at @host.
 */
struct shadow_slot_ops {
	/*
	 * get_page - make page @page of the slot's object resident (fault it in,
	 * swap it in) before the shadow MMU maps it; @write if the mapping will
	 * be writable.  Called by shadow_mmu_fault() between
	 * notifier_read_begin() and notifier_read_retry(), with no shadow lock
	 * held.  May block.  Returns 0 or -errno (the fault then fails with it).
	 * NULL: every page is always resident.
	 */
	int (*get_page)(void *priv, uint64_t page, bool write);
	/*
	 * is_resident - would get_page(@page) return 0 at once, with nothing
	 * to do (the page in memory)?  Asked by fault-around
	 * (shadow_mmu_config.fault_around) for the neighbours of a faulting
	 * page, which it maps only if resident: it never makes a page
	 * resident.  Called with the VM's mmu_lock held (no other shadow
	 * lock): must not block, and may take only locks that rank above
	 * UMBRA_LOCK_RANK_TLBS.  An answer that is stale by the time the
	 * leaf is installed is harmless: a page that goes out meanwhile is
	 * invalidated (notifier_read_retry catches it).  NULL with a
	 * get_page: no page of the slot is mapped around a fault; NULL
	 * without one: every page is resident.
	 */
	bool (*is_resident)(void *priv, uint64_t page);
	/*
	 * put_page - page @page of the slot's object (a layer or an own slot:
	 * the pages that are reference-counted) is no longer mapped by any
	 * VM's P2M (its last reference went: every VM that shared it copied it
	 * or is gone; docs/sharing.md).  Called with no shadow lock held, once
	 * per time the count reaches 0; not for the pages of a VM's own slot
	 * when that VM is destroyed.  May block.  NULL: nothing is done.
	 */
	void (*put_page)(void *priv, uint64_t page);
};

struct shadow_slot {
	struct notifier_object *obj;	/* the object (a reference is taken) */
	uint64_t mpa;			/* machine address of its page 0, page-aligned */
	void *host;			/* host mapping of the whole object */
	bool readonly;			/* never map it writable */
	const struct shadow_slot_ops *ops; /* may be NULL */
	void *priv;			/* for @ops */
};

/* Most slots per shadow MMU. */
#define SHADOW_MAX_SLOTS 64

/* The most roots a root cache holds (shadow_mmu_config.nr_roots). */
#define SHADOW_MMU_MAX_ROOTS 4096u
/* The largest fault-around window, in pages (it bounds the extra work a
 * fault does under mmu_lock: one guest walk per page of the window). */
#define SHADOW_FAULT_AROUND_MAX 64u

/* The smallest table quota (shadow_mmu_config.max_tables other than 0): one
 * root and the three tables below it that one translation needs.  Each vCPU
 * running on its own root needs its root on top. */
#define SHADOW_MMU_MIN_TABLES 4u

/*
 * The table quota (docs/shadow.md, "Table quota"): the pool pages charged
 * to the VM, which are the roots, private tables and privatized copies it
 * allocated and that are not yet freed (the root copies of a clone are the
 * clone's; a table shared with a clone stays charged to the VM that made it
 * until the last user drops it); canonical tables of segments are charged
 * to no VM.  A table allocation past the quota fails with -EDQUOT; a fault
 * or CR3 load then reclaims (drops every table of this VM, never another
 * VM's) and tries once more.
 */
struct shadow_mmu_config {
	struct shadow_pool *pool;	/* shared by the VMs of one trust group; must outlive the MMU */
	uint64_t max_gpa;		/* guest-physical space covered by the P2M */
	unsigned int nr_roots;		/* root cache bound, 1..SHADOW_MMU_MAX_ROOTS; 0: the
					 * address spaces in use, up to SHADOW_MMU_MAX_ROOTS,
					 * bounded by max_tables and the pool (the least
					 * recently used unpinned root makes room) */
	unsigned int fault_around;	/* fault-around window in pages: 0 or 1 off, else a
					 * power of two <= SHADOW_FAULT_AROUND_MAX
					 * (shadow_mmu_fault) */
	unsigned long max_tables;	/* table pages the MMU may hold (a quota); 0: no limit */
	struct shadow_paging_mode mode;	/* the guest's paging controls */
	bool huge_leaves;		/* a guest 2 MiB page over a whole 2 MiB run of
					 * contiguous resident backing gets one 2 MiB shadow
					 * leaf, split when part of it is invalidated
					 * (shadow_mmu_fault); false: 4 KiB leaves only */
};

/* Counters, monotonic since creation (read without a snapshot guarantee). */
struct shadow_mmu_stats {
	uint64_t faults;		/* shadow_mmu_fault calls */
	uint64_t fixed;			/* ... that installed (or found) a mapping */
	uint64_t guest_faults;		/* ... reflected to the guest */
	uint64_t retries;		/* seq/retry collisions (notifier or guest-table sync) */
	uint64_t installs;		/* leaf SPTEs written */
	uint64_t faulted_around;	/* ... of them by fault-around, for a page that
					 * did not fault */
	uint64_t zapped;		/* present SPTEs cleared (leaves and tables) */
	uint64_t tables_created;
	uint64_t tables_freed;
	uint64_t invlpg;
	uint64_t cr3_loads;
	uint64_t root_evictions;
	uint64_t syncs;			/* whole-root syncs (CR3 load, full flush) */
	uint64_t flushes_all;		/* flush_all requests sent to vCPUs */
	uint64_t flushes_va;		/* flush_va requests sent to vCPUs */
	uint64_t invalidations;		/* notifier invalidations (range or page) handled */
	uint64_t rmap_scans;		/* pages whose reverse map this VM's non-local zaps
					 * cleared (only pages that had a leaf are visited) */
	/* access tracking (docs/shadow.md, "Access tracking") */
	uint64_t access_tracked;	/* leaves made access-tracked by this VM's clear_young */
	uint64_t fast_restores;		/* faults fixed by the fast path (no guest walk, no
					 * install): an access-tracked leaf restored, or a
					 * leaf another vCPU or VM had already made visible */
	/* sharing across VMs (docs/sharing.md) */
	uint64_t clones;		/* shadow_mmu_clone() calls that made this MMU's clone */
	uint64_t privatizations;	/* shared tables copied before a change (unshare) */
	uint64_t cow_breaks;		/* guest pages copied on write (P2M copy-on-write) */
	uint64_t fills_in_place;	/* leaves filled into a shared (non-canonical) table,
					 * or below one, without privatizing it */
	uint64_t cow_takeovers;		/* writable leaves installed in place on a taken-over
					 * layer's page (refcount 1, no copy) */
	uint64_t pages_freed;		/* pages whose last reference this VM dropped (put_page) */
	uint64_t p2m_nodes_copied;	/* P2M radix nodes privatized (path copies) */
	uint64_t canon_created;		/* canonical segment tables created (leaf tables of a
					 * 2 MiB run, level-2 tables of a GiB) */
	uint64_t canon_reused;		/* ... and found already there */
	uint64_t canon_exchanged;	/* own shadows of a guest page directory exchanged for
					 * a segment's canonical level-2 table once full */
	uint64_t tables_reused;		/* links to a shadow of a guest table that another
					 * of the VM's address spaces had made (one shadow
					 * per guest table, role and address) */
	uint64_t remote_flushes;	/* times another VM's zap flushed this VM (pmd-rmap) */
	/* room (the table quota, a full pool) */
	uint64_t quota_refusals;	/* table allocations refused: the quota was reached */
	uint64_t reclaims;		/* every table of this VM dropped to make room, to retry
					 * a fault or CR3 load (pool full or quota reached) */
	/* the fault path (docs/shadow.md, "Fault path") */
	uint64_t read_mode_installs;	/* leaves installed by a fault holding mmu_lock in
					 * read mode (its shadow path all there and the VM's
					 * alone); counted in installs too */
	/* 2 MiB shadow leaves (docs/shadow.md, "2 MiB shadow leaves") */
	uint64_t huge_installs;		/* 2 MiB leaves installed (counted in installs too) */
	uint64_t huge_splits;		/* 2 MiB leaves split into a table of 4 KiB leaves
					 * by an invalidation of part of them */
};

/*
 * Creates an empty shadow MMU for one VM: no slots, identity-free P2M (every
 * gfn unmapped), no roots.  Its bookkeeping grows with the memory the VM
 * maps and uses, not with max_gpa (no P2M node until a gfn is mapped).  May block.
 * Returns 0 and sets *@out, -EINVAL (no pool, max_gpa not page-aligned or 0,
 * bad mode, max_tables below SHADOW_MMU_MIN_TABLES), -ENOMEM.
 */
int shadow_mmu_create(const struct shadow_mmu_config *config, struct shadow_mmu **out);

/*
 * Tears the MMU down: unsubscribes from every slot's object, zaps and frees
 * every shadow table (the pool's pages in use drop by all this MMU held),
 * frees the reverse maps and the P2M.  Every registered TLB must have been
 * unregistered.  Locks: takes mmu_lock and object locks; the caller holds
 * none.  May block (notifier grace periods).  Not from a notifier callback.
 */
void shadow_mmu_destroy(struct shadow_mmu *mmu);

/*
 * Adds a slot and subscribes to its object (from now on every invalidation of
 * the object zaps what the MMU maps of it).  Returns 0 and the slot's id in
 * *@id, -EINVAL (bad slot, overlap of machine ranges), -ENOSPC (too many
 * slots), -ENODEV (object being destroyed), -ENOMEM.  Caller holds no shadow
 * lock.  May block.
 */
int shadow_mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *slot, int *id);

/*
 * Points the P2M at slot @slot_id for @npages guest-physical pages from @gpa:
 * gfn gpa/4K + i -> page @first_page + i of the slot's object.  Replacing an
 * existing entry zaps every shadow entry mapping the old backing page (and
 * flushes vCPUs) before returning; a page of a layer or an own slot that
 * no P2M maps any more goes to the slot's put_page (after mmu_lock is
 * dropped).  Such a page is mapped at one gfn (its reference count is set
 * to 1: docs/sharing.md, "Page references").  @slot_id < 0 unmaps.
 * Takes mmu_lock; the caller holds no shadow lock.  Returns 0, -EINVAL
 * (outside max_gpa, outside the object, bad slot), or -ENOMEM (a P2M node
 * could not be allocated; the range is then mapped up to some gfn).
 */
int shadow_mmu_map_gpa(struct shadow_mmu *mmu, uint64_t gpa, uint64_t npages, int slot_id,
		       uint64_t first_page);

/*
 * Looks @gpa up in the P2M: 0 and the machine address of the backing byte in
 * *@mpa (and its host pointer in *@host if non-NULL), or -EFAULT if @gpa is
 * not backed.  Lock-free (a snapshot, read in an RCU read-side section;
 * the calling thread is registered with liburcu on its first lookup and
 * unregistered when it exits).  Never blocks after the first call.
 */
int shadow_mmu_p2m_lookup(struct shadow_mmu *mmu, uint64_t gpa, uint64_t *mpa, void **host);

/*
 * Registers @tlb (its ops set) as a vCPU that may cache the MMU's
 * translations: from now on every zap reaches it.  Unregister drops its root
 * pin and removes it; after unregister returns no op of @tlb is running or
 * will run.  Both take mmu_lock.  Cannot fail.
 */
void shadow_mmu_tlb_register(struct shadow_mmu *mmu, struct shadow_tlb *tlb);
void shadow_mmu_tlb_unregister(struct shadow_mmu *mmu, struct shadow_tlb *tlb);

/*
 * CR3 load on the vCPU of @tlb: find the root for @cr3 in the cache, or make
 * one (evicting the least recently used root that no vCPU runs on), sync it
 * against the guest's tables (a CR3 load flushes the TLB), pin it for @tlb
 * (unpinning the previous one) and return its pool gpa in *@root.  Other
 * vCPUs that may cache zapped entries are flushed; @tlb itself is not (the
 * caller flushes its own TLB, as a CR3 load does).
 * @tlb gives up its previous root first (it becomes evictable).
 * When the pool is full or the table quota is reached, the VM reclaims
 * (stats.reclaims: every root no vCPU runs on and every table below the
 * others go, this VM's only) and tries once more.
 * Locks: takes mmu_lock.  Returns 0, -EBUSY (every cached root is in use by
 * other vCPUs and the cache is full), -ENOMEM (pool full, even after the
 * reclaim), -EDQUOT (the quota is reached even after the reclaim: the roots
 * other vCPUs run on fill it); on failure @tlb runs on no root (tlb->root
 * is 0).
 */
int shadow_mmu_load_cr3(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3,
			uint64_t *root);

/*
 * As shadow_mmu_load_cr3(), without the sync when @cr3's root is cached:
 * for a vCPU that goes on where another left off rather than loading CR3,
 * as a clone's vCPU does from its parent's (shadow_mmu_clone copied the
 * parent's cached roots: the clone's tree holds what the parent's did, and
 * an entry in it that is stale against the guest's tables is one that the
 * parent's vCPU could use as a stale TLB entry too, until the guest's next
 * INVLPG or CR3 load).  The cost does not grow with what the tree maps.
 * Same locks and results.
 */
int shadow_mmu_resume_cr3(struct shadow_mmu *mmu, struct shadow_tlb *tlb, uint64_t cr3,
			  uint64_t *root);

/*
 * Marks for work a caller does once per root (the VMM's pre-fault of the
 * pinned ranges): shadow_mmu_root_is_marked() says whether @cr3's root is
 * cached and nothing of this VM was zapped since the caller marked it with
 * the generation it returned in *@gen before doing that work
 * (shadow_mmu_root_mark(): a zap during the work makes the mark stale).
 * Any zap of the VM's tables, its own or another VM's reaching it, and any
 * eviction or reclaim, makes every mark stale; a root created anew has none.
 * Take mmu_lock; may block.
 */
bool shadow_mmu_root_is_marked(struct shadow_mmu *mmu, uint64_t cr3, uint64_t *gen);
void shadow_mmu_root_mark(struct shadow_mmu *mmu, uint64_t cr3, uint64_t gen);

/* Results of shadow_mmu_fault() besides -errno. */
#define SHADOW_FAULT_FIXED 0	/* the shadow now allows the access: retry it */
#define SHADOW_FAULT_GUEST 1	/* the guest's own tables forbid it: inject #PF */

/*
 * Resolves a page fault taken at @va with the access @access on the vCPU
 * running the root of @cr3: walks the guest's tables (setting A/D as a CPU
 * would); if they forbid the access returns SHADOW_FAULT_GUEST with the x86
 * error code in *@error_code; else looks the guest-physical page up in the
 * P2M, makes the backing page resident (slot get_page), and installs the
 * shadow entries with the notifier sequence/retry protocol (and the MMU's own
 * guest-table sync sequence), retrying instead of installing a mapping an
 * invalidation or an invlpg began to remove.  Returns SHADOW_FAULT_FIXED.
 * Locks: takes mmu_lock and table locks; the caller holds none.  May block
 * (notifier_read_begin waits for overlapping invalidations; get_page).
 * Every loop on what the guest controls is bounded: a fault walks the
 * guest's tables again when they changed under it (A/D updates that lost a
 * race, a guest table copied copy-on-write, entries changed since the walk)
 * at most 64 times; retries after an invalidation of the page (the host's)
 * are not bounded.
 * Errors: -EINVAL (non-canonical @va), -ENOENT (no root for @cr3: load it
 * first), -EFAULT (the guest-physical page, or a guest table, has no
 * backing: MMIO or a wild address), -EACCES (a write to a read-only
 * slot that the guest's own tables allow), -EROFS (a guest page table of
 * the walk lies in a read-only slot and needs its Accessed or Dirty bit
 * set, which umbra cannot do there), -ELOOP (the guest's tables kept
 * changing under the fault: 64 walks), -ENODEV (the object was released),
 * -ENOMEM (pool full), -EDQUOT (table quota reached), or get_page's error.
 * On a full pool or a reached quota the fault reclaims once (as
 * shadow_mmu_load_cr3 does: this VM's tables only, never another VM's; the
 * pinned translations of its vCPUs go too, and stats.reclaims says so) and
 * retries; -ENOMEM and -EDQUOT mean it still did not fit.
 *
 * Fault-around (shadow_mmu_config.fault_around = W > 1): once the faulting
 * leaf is in a level-1 table that this VM alone reaches, the fault also
 * maps the other pages of the aligned W-page window around @va that are not
 * mapped yet, where (1) the guest's tables already map them through the
 * same guest tables with the Accessed bit set on every level (a neighbour
 * under a guest large page always qualifies: its one leaf was just
 * accessed), with the rights a fault would give (writable only if the
 * guest's leaf is dirty); (2) the P2M maps them to the same slot as the
 * faulting page (same notifier object), not copy-on-write for a write; (3)
 * the slot says they are resident (is_resident).  It never writes guest
 * memory, never calls get_page, never waits: a neighbour that fails a test
 * is left to fault on its own.  The pages mapped count as accessed
 * (young), as Linux's fault-around maps young PTEs on x86; stats.faulted_around
 * counts them.  A shared or canonical leaf table gets no fault-around.
 * Tracing (umbra/trace.h): each call is a "fault" span (address, access,
 * outcome) when faults are recorded.
 */
int shadow_mmu_fault(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, unsigned int access,
		     uint32_t *error_code);

/*
 * The guest-physical address that linear address @va translates to in the
 * guest's address space @cr3, by the guest's own tables (a read access, as
 * the CPU would walk them; no A/D update, no shadow entry made).  No lock
 * held; reads guest memory (which may fault it in).  Returns 0 and *@gpa,
 * -EFAULT (@va is not mapped, or a guest table has no backing) or -EINVAL
 * (non-canonical @va).
 */
int shadow_mmu_translate(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, uint64_t *gpa);

/*
 * invlpg @va in the address space @cr3: re-validates every shadow entry on
 * the path of @va, the leaf included, against the guest's tables now, zaps
 * each that no longer matches (a table with everything below it) and flushes
 * what went from every registered vCPU.  An entry that still matches (same
 * frame, the rights a fault would give now or those without W, the guest's
 * A set, and its D set if the leaf is writable) stays: an invlpg of an
 * unchanged mapping is harmless, as on x86.  No-op if @cr3 has no root.
 * @self: NULL, or the TLB of the vCPU that executes the invlpg and then
 * invalidates @va in its own TLB (as the CPU's INVLPG does; on KVM the
 * guest runs invlpg after UMBRA_HC_INVLPG): when the call cleared no more
 * than the leaf of @va, @self is sent no flush (on KVM: no shootdown NMI to
 * the vCPU that asked).  A removed table flushes every vCPU, @self
 * included (paging-structure caches).  On return no vCPU but @self can
 * reach what @va mapped before the call unless the guest's tables still
 * map it, and @self only until it invalidates @va; what it may still reach
 * is the guest's own page, at the address the guest gave it.  Takes
 * mmu_lock.
 */
void shadow_mmu_invlpg(struct shadow_mmu *mmu, struct shadow_tlb *self, uint64_t cr3, uint64_t va);

/*
 * Full flush of the address space @cr3 (MOV CR3 without a switch, CR4.PGE
 * toggle): syncs the whole root against the guest's tables (every entry that
 * no longer matches is zapped) and flushes vCPUs if anything was zapped.
 * Returns 0, or -ENOENT if @cr3 has no root.  Takes mmu_lock.
 */
int shadow_mmu_flush(struct shadow_mmu *mmu, uint64_t cr3);

/*
 * The guest changed the page table at guest-physical @gpa, which several of
 * its address spaces may use (two PML4s pointing at one PDPT, say): finds
 * every shadow table of this MMU whose guest table is that page (below every
 * cached root: a scan of the tables this VM reaches, bounded by how many it
 * holds), zaps each of its entries that no longer matches the guest's page
 * (a shared table is never changed for one VM: the entry that reaches it goes
 * instead), and flushes every registered vCPU that may cache what went.
 * Entries that still match stay.  When: the guest's "shared table changed"
 * request (docs/abi.md, SYNC_TABLE).  Takes mmu_lock; the caller holds no
 * shadow lock.  May block on locks.  Returns the number of shadow tables of
 * that page it found (0: none is cached), or -EINVAL (@gpa not 4 KiB-aligned
 * or beyond the P2M).  On return no vCPU can reach a translation through
 * an entry of that page the guest no longer has.
 */
int shadow_mmu_sync_guest_table(struct shadow_mmu *mmu, uint64_t gpa);

/*
 * Switches the MMU to the paging controls @mode (the guest changed EFER.NXE,
 * say: what bit 63 of an entry means changes), as KVM resets its MMU
 * context on an EFER write: swaps the mode under mmu_lock, syncs every
 * cached root against the guest's tables read under the new mode (what
 * would now be shadowed differently is zapped, with the tables below it;
 * what reads the same, such as entries without bit 63, stays) and flushes
 * every vCPU that may cache what went.  The cost: a sync of every cached
 * address space, as a CR3 load does for one, and the faults that follow.  A
 * mode equal to the current one changes nothing.  Takes mmu_lock; the caller
 * holds no shadow lock.  May block on locks.  Returns 0, or -EINVAL (@mode
 * invalid, or its maxphyaddr differs: that is the CPU's, not the guest's).
 * On return no vCPU reaches a shadow entry that differs from what a fault
 * would install under @mode.
 */
int shadow_mmu_set_mode(struct shadow_mmu *mmu, const struct shadow_paging_mode *mode);

/*
 * Names the MMU in a --trace (umbra/trace.h): its callbacks and remote
 * flushes carry @id as their "vm" argument (the VMM passes the VM's trace
 * process id).  0 until set.  Any time, no lock; never blocks.
 */
void shadow_mmu_set_trace_id(struct shadow_mmu *mmu, uint32_t id);

/*
 * Zaps every shadow entry that maps pages [first, last] of slot @slot_id's
 * object, through the reverse map, and flushes every vCPU that may cache one,
 * before returning.  Takes mmu_lock.  Returns the number of entries zapped,
 * or -EINVAL.  (The notifier callbacks do the same under their own rules.)
 */
long shadow_mmu_zap_range(struct shadow_mmu *mmu, int slot_id, uint64_t first, uint64_t last);

/*
 * Zaps every shadow table below every root (roots stay cached and pinned;
 * vCPUs fault their translations back).  Takes mmu_lock.
 */
void shadow_mmu_zap_all(struct shadow_mmu *mmu);

/* Number of shadow entries that map page @page of slot @slot_id (reverse
 * map size).  Takes mmu_lock. */
size_t shadow_mmu_rmap_count(struct shadow_mmu *mmu, int slot_id, uint64_t page);

/* Copies the counters.  Lock-free. */
void shadow_mmu_stats(const struct shadow_mmu *mmu, struct shadow_mmu_stats *stats);
/* The reclaims counter alone (stats.reclaims), for a check before every
 * guest entry: one atomic load.  Lock-free. */
uint64_t shadow_mmu_reclaims(const struct shadow_mmu *mmu);

/* Table pages charged to the MMU's quota now (shadow_mmu_config.max_tables;
 * tables freed by another VM leave it at once).  Lock-free. */
size_t shadow_mmu_tables_charged(const struct shadow_mmu *mmu);

/*
 * The table pages this VM reaches now, through the roots it has cached:
 * each distinct page counted once, as shared when another parent entry (of
 * this VM or of another) also points at it or it is a segment's canonical
 * table, private otherwise.  The sum of @tables over every VM of a pool is
 * the table memory the VMs would need without sharing; the pool's pages in
 * use are what they need with it.
 */
struct shadow_table_usage {
	uint64_t tables;		/* distinct table pages reached */
	uint64_t shared;		/* ... with more than one user, or canonical */
	uint64_t private_;		/* ... with this one user */
	uint64_t by_level[SHADOW_LEVELS + 1];	/* [1..4]: PT, PD, PDPT, PML4 */
};

/*
 * Fills @usage by walking the VM's cached roots.  Takes mmu_lock (the
 * tables it reaches hold still: a shared table's non-leaf entries change
 * only once it has one user left, but for a canonical level-2 table's empty
 * entries, which other VMs may link); counts of another VM's tables may be
 * stale by the time it returns.  May block.  Returns 0 or -ENOMEM.
 */
int shadow_mmu_table_usage(struct shadow_mmu *mmu, struct shadow_table_usage *usage);

/* One table, as shadow_mmu_for_each_link() reports it. */
struct shadow_table_ref {
	uint32_t page;		/* its page in the pool */
	uint32_t alloc_gen;	/* times the pool had allocated that page: (page,
				 * alloc_gen) names one table for the pool's life */
	int level;		/* 4: a PML4 (a root) .. 1: a PT */
	bool canonical;		/* a shared segment's canonical table */
	bool direct;		/* shadows part of a guest large page */
	uint32_t users;		/* entries (and root slots) of every VM that point at it */
};

/*
 * Called for each link of a VM's tables: @parent NULL for a root (cached
 * for guest CR3 @cr3 in root slot @index), else entry @index of @parent
 * points at @child; @cr3 is the root the walk came from.  Runs under the
 * VM's mmu_lock: it must not call into the shadow MMU.
 */
typedef void (*shadow_link_fn)(void *arg, uint64_t cr3, const struct shadow_table_ref *parent, unsigned int index,
			       const struct shadow_table_ref *child);
/*
 * Reports every table @mmu reaches, from each cached root down: each link
 * from a root, and the links below a table the first time the walk reaches
 * it (a table several roots of the VM link is reported once per link, its
 * children once).  Another VM's table's users may change meanwhile.  Takes
 * mmu_lock; may block.  Returns 0 or -ENOMEM (nothing reported).
 */
int shadow_mmu_for_each_link(struct shadow_mmu *mmu, shadow_link_fn fn, void *arg);

/* The pool and paging mode given at creation. */
struct shadow_pool *shadow_mmu_pool(const struct shadow_mmu *mmu);
const struct shadow_paging_mode *shadow_mmu_mode(const struct shadow_mmu *mmu);

/*
 * Debug check of the MMU's invariants (every present leaf is in the reverse
 * map and vice versa; use counts match parents; accounting): 0, -EUCLEAN
 * on the first violation, or -ENOMEM.  Takes mmu_lock.  For tests.
 */
int shadow_mmu_check(struct shadow_mmu *mmu);

/* ---- sharing across VMs (docs/sharing.md) --------------------------- */

/*
 * Names slot @slot_id (a private object of this VM: not shared, not
 * read-only, not a layer, npages >= every gfn that maps a non-shared slot)
 * as where this VM's private copies go: the copy of gfn g is page g
 * (docs/sharing.md, "Fork-style sharing: clone").  Required before
 * shadow_mmu_clone() on the parent.  Takes mmu_lock.  Returns 0 or -EINVAL.
 */
int shadow_mmu_set_own_slot(struct shadow_mmu *mmu, int slot_id);

/*
 * Layer slot @slot_id is now this VM's alone (the VMM made its memslot
 * writable: every other VM that held the layer is gone): a write to one of
 * its pages that no other VM's P2M maps (reference count 1, on a P2M path of
 * this VM's alone) is made writable in place, without a copy.  A later
 * clone of this VM ends the take-over (the layer is shared again).  Takes
 * mmu_lock.  Returns 0 or -EINVAL (not a layer).
 */
int shadow_mmu_slot_take_over(struct shadow_mmu *mmu, int slot_id);

/*
 * Adds a slot for a shared segment: as shadow_mmu_add_slot(), and where the
 * guest maps a 2 MiB-aligned run of the object with one 2 MiB (or 1 GiB)
 * page, contiguously in the P2M (and not copy-on-write), the VM uses the
 * run's canonical shadow table: one per (run, guest-physical address,
 * @slot->readonly, rights), created on first use, shared by every VM that maps the run that
 * way, counted by users and freed by the last.  Every VM must place the
 * object at the same @slot->mpa (and, to share, at the same guest-physical
 * address).  A clone keeps it shared (never copy-on-write).  Same locking
 * and errors as shadow_mmu_add_slot().
 */
int shadow_mmu_add_segment(struct shadow_mmu *mmu, const struct shadow_slot *slot, int *id);

/*
 * Clones @parent (fork-style sharing, docs/sharing.md): the parent's
 * non-shared writable slots (its own slot among them) become layers, frozen
 * and never mapped writable by either VM (but after a take-over); @parent_own
 * is added to the parent as its new own slot, with id n (the parent's slot
 * count before the call); the child gets the parent's slots with the same
 * ids, objects and machine addresses, then @child_own as its own slot, also
 * id n.  @parent_own NULL: the parent keeps its own slot, which must map no
 * page yet (as after a clone, before the parent runs again: how one CLONE
 * makes several children), and @child_own takes that slot's id in the
 * child.  @parent_own NULL: the parent keeps its own slot as it is, not
 * frozen, and the child's own slot @child_own takes its id; for the second
 * and later clones of one fork-like call, when the parent's own slot maps
 * nothing yet (the caller's duty: the parent has not run since its own
 * slot was made).  The P2M is shared by use count: the child takes one more reference
 * to the parent's root node, nothing is copied, and whichever VM stores
 * into a shared node first copies the nodes on its path.  Each cached root
 * of the parent is copied (entries pointing at the parent's tables, whose
 * use counts go up by one; one page per root, charged to the child's quota,
 * which is the parent's max_tables); both roots' entries lose W and the
 * parent's vCPUs are flushed before it returns.  The cost is flat in guest
 * size.  The child has no vCPUs.
 * Locks: takes the parent's mmu_lock (after subscribing the new slots with
 * none held); the caller holds no shadow lock.  May block.  Must not run
 * concurrently with shadow_mmu_add_slot() or shadow_mmu_add_segment() on
 * @parent (the caller serializes them).
 * Returns 0 and *@out, -EINVAL (no own slot on the parent, bad slots),
 * -ENOSPC (SHADOW_MAX_SLOTS reached), -ENOMEM, -EDQUOT (the parent has more
 * cached roots than its quota), or add_slot's errors; on failure the parent
 * is unchanged.
 */
int shadow_mmu_clone(struct shadow_mmu *parent, const struct shadow_slot *parent_own,
		     const struct shadow_slot *child_own, struct shadow_mmu **out);

/*
 * Gives guest-physical page @gpa of a write-ready P2M entry (what the first
 * guest write does; the VMM calls it before writing guest memory on the
 * guest's behalf): makes the P2M path of @gpa this VM's alone; then, if the
 * page still needs it (a page of a layer, or shared with a clone, unless
 * taken over with reference count 1), copies it into page gfn of the own
 * slot, points the P2M there, drops a reference to the old page (put_page
 * if it was the last), and zaps this VM's shadow entries of the old page
 * (other sharers keep theirs).  No-op if no copy is needed.
 * Locks: takes mmu_lock; the caller holds none (uses notifier_read_begin(),
 * get_page and put_page: may block).  Returns 0, -EINVAL, -EROFS (no own
 * slot), -ENOMEM (no memory for a P2M node, or the own slot does not cover
 * @gpa), or get_page's error.
 */
int shadow_mmu_cow_break(struct shadow_mmu *mmu, uint64_t gpa);

/* ---- eviction to an in-memory store (a test mode) ----------------------
 *
 * The engine's own swapout, for the native tests and the spin model: the
 * content is kept in malloc'd memory and the page poisoned in place, so it
 * frees no host memory.  The umbra program swaps with the pager instead
 * (umbra/pager.h: a swap file, memory released, every access path). */

struct shadow_store;

/* Byte that fills an evicted page until it is restored. */
#define SHADOW_STORE_POISON 0xa5

/*
 * Creates an in-memory swap store for @obj, whose pages the host reaches at
 * @host.  Give every VM's slot of @obj { .ops = &shadow_store_slot_ops,
 * .priv = store }: its get_page is the restore hook.  May block.
 * Returns 0 and *@out, -EINVAL, -ENOMEM.
 */
int shadow_store_create(struct notifier_object *obj, void *host, struct shadow_store **out);
/* Frees the store and what it holds (evicted contents are lost).  No
 * eviction or restore may be running. */
void shadow_store_destroy(struct shadow_store *st);

/*
 * evict(object, page): sends a swapout invalidation of @page to every
 * subscriber of the object (every VM that maps it, through private or
 * shared tables: each VM's callback clears every leaf of the page in the
 * pool and flushes every vCPU of every VM that reaches those tables, found
 * through the pmd-rmap), then saves the content and poisons the page
 * (SHADOW_STORE_POISON).  The next access faults, and the slot's get_page
 * (the restore hook) copies the content back before the page is mapped.
 * On return 0: no vCPU of any VM reaches the page until it is restored.
 * Locks: the caller holds none; the thread is registered with liburcu
 * (notifier_thread_init).  May block.  Returns 0, -EALREADY (already
 * evicted; the invalidation was still sent), -EINVAL, -ENOMEM.
 */
int shadow_store_evict(struct shadow_store *st, uint64_t page);
/* True if @page is in memory.  Takes the store lock. */
bool shadow_store_is_resident(struct shadow_store *st, uint64_t page);
/* Counters: evictions done and restores done. */
void shadow_store_stats(struct shadow_store *st, uint64_t *evictions, uint64_t *restores);
/* get_page = restore from the store (priv: the store). */
extern const struct shadow_slot_ops shadow_store_slot_ops;

/* ---- pool-wide checks -------------------------------------------------- */

/*
 * Debug check of the whole pool, across every VM (tests, with no other
 * thread using the pool): each allocated page's use count equals its users
 * list, each user's parent entry (or root-cache slot of a live VM) points
 * at it; every present leaf is in the reverse map of its object page and
 * every reverse-map entry is a present leaf of that page; canonical tables
 * and their arrays agree; the per-level counts equal the allocated pages.
 * Takes the pool's list locks and table locks.  Returns 0 or -EUCLEAN.
 */
int shadow_pool_check(struct shadow_pool *pool);
/* Number of table pages with more than one user (shared).  Lock-free
 * snapshot (exact on a quiescent pool). */
size_t shadow_pool_shared_pages(struct shadow_pool *pool);

/* ---- the software vCPU ---------------------------------------------- */

struct shadow_vcpu;

struct shadow_vcpu_config {
	unsigned int tlb_entries;	/* direct-mapped TLB size; 0: no TLB */
};

/* What an access reached. */
struct shadow_vcpu_result {
	void *host;			/* host pointer of the byte at va */
	uint64_t mpa;			/* its machine address */
	uint32_t error_code;		/* on -EFAULT */
	bool tlb_hit;
};

struct shadow_vcpu_stats {
	uint64_t accesses, tlb_hits, walks, faults, flushes_all, flushes_va;
};

/*
 * Creates a software vCPU of @mmu (using the MMU's paging mode) and registers
 * its TLB with the MMU.  It has no root until shadow_vcpu_load_cr3().
 * Returns 0, -ENOMEM.  Takes mmu_lock.  May block.
 */
int shadow_vcpu_create(struct shadow_mmu *mmu, const struct shadow_vcpu_config *config,
		       struct shadow_vcpu **out);
/* Unregisters and frees it.  Not concurrently with its own accesses. */
void shadow_vcpu_destroy(struct shadow_vcpu *vcpu);

/*
 * MOV CR3: shadow_mmu_load_cr3() then a flush of this vCPU's TLB.  Returns
 * shadow_mmu_load_cr3()'s result.  Not concurrently with this vCPU's access.
 */
int shadow_vcpu_load_cr3(struct shadow_vcpu *vcpu, uint64_t cr3);
/*
 * A vCPU that goes on where another left off (a clone's): shadow_mmu_resume_cr3()
 * then a flush of this vCPU's TLB.  Returns its result.  Not concurrently
 * with this vCPU's access.
 */
int shadow_vcpu_resume_cr3(struct shadow_vcpu *vcpu, uint64_t cr3);

/*
 * One access at @va of kind @access, as the CPU performs it on the shadow
 * tables: TLB lookup, else a hardware walk of the pool's visible copy from
 * the current root (4-level, with the MMU's paging mode) and a TLB fill.  A
 * fault drops the TLB entry of @va (as a #PF does).
 * Returns 0 (*@res: host pointer and machine address), -EFAULT (a #PF,
 * res->error_code), -EINVAL (non-canonical), -ENOENT (no root loaded),
 * -EROFS (the walk would have had to write A/D into the read-only pool: a
 * shadow entry without A, or a writable leaf without D), -EIO (a shadow
 * entry points outside the pool or at no slot of this VM).  The last two
 * are a bug, or a guest wrote the visible copy.
 * Locks: takes only the vCPU's TLB lock (rank SUBSCRIBER_LEAF).  Never
 * blocks.  One thread per vCPU.
 */
int shadow_vcpu_access(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
		       struct shadow_vcpu_result *res);

/* access, and on a page fault shadow_mmu_fault() + access again, until it
 * succeeds or the fault is the guest's (-EFAULT with res->error_code) or
 * another error.  May block. */
int shadow_vcpu_access_fault_in(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
				struct shadow_vcpu_result *res);

/*
 * One 8-byte data access at @va (8-aligned) as one instruction: the
 * translation as shadow_vcpu_access() does it, and, under the same TLB lock,
 * the load into *@val (read, fetch) or the store of *@val (write).  A flush
 * that returned before the call is seen by the translation and the data
 * access alike; one that begins during it waits for both.  Returns as
 * shadow_vcpu_access(), or -EINVAL for a misaligned @va.  Never blocks.
 */
int shadow_vcpu_access64(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
			 uint64_t *val, struct shadow_vcpu_result *res);
/* access64, with shadow_mmu_fault() on page faults, as
 * shadow_vcpu_access_fault_in().  May block. */
int shadow_vcpu_access64_fault_in(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
				  uint64_t *val, struct shadow_vcpu_result *res);

/* invlpg: shadow_mmu_invlpg() on the current CR3, and the local flush. */
void shadow_vcpu_invlpg(struct shadow_vcpu *vcpu, uint64_t va);
/* full flush: shadow_mmu_flush() on the current CR3, and the local flush. */
int shadow_vcpu_flush(struct shadow_vcpu *vcpu);

/* Copies the vCPU's counters (relaxed reads).  Lock-free. */
void shadow_vcpu_stats(const struct shadow_vcpu *vcpu, struct shadow_vcpu_stats *stats);
/* Number of valid TLB entries (tests). */
unsigned int shadow_vcpu_tlb_valid(struct shadow_vcpu *vcpu);

#endif
