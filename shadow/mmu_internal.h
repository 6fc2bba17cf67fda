/*
 * Private to the per-VM shadow MMU's files: what each mechanism offers the
 * others.  Shape (after Linux's arch/x86/kvm/mmu/): spte.h and p2m.h encode,
 * iter.h walks, and the policy files decide.
 *
 *   p2m.c       slots and the P2M (gfn -> slot, page); the guest's memory
 *               as the walker reads it
 *   zap.c       entry writes, zap batches, table put / free, zaps of slot
 *               ranges (non-local) and of everything
 *   pmd_rmap.c  the remote flush: every VM that reaches a table, found by
 *               walking the users lists up to the roots
 *   sync.c      what the guest's tables say an entry should be; sync of
 *               tables, invlpg, full flush
 *   privatize.c local zaps: unshare the tables on this VM's paths to a
 *               leaf (table copy, write protection)
 *   canon.c     canonical tables of shared segments
 *   root.c      the root cache, CR3 loads and the reclaim of every table
 *   quota.c     the table quota: which VM's account each table page counts in
 *   fault.c     the fault path: guest walk, retry protocol, fault-around
 *   install.c   a fault's shadow path and leaf, in write or read mode
 *   huge.c      2 MiB shadow leaves: when, install, split or clear
 *   fill.c      fills in place: a read-only leaf written into a shared table
 *               when every VM that reaches it sees the same leaf
 *   access.c    access tracking: young bytes, access-tracked leaves and
 *               the fault's fast restore
 *   clone.c     clone and copy-on-write break
 *   check.c     the invariant checkers and table usage
 *   mmu.c       create / destroy, vCPU registration, statistics
 *
 * Rules every function of these files keeps (docs/locking.md, "shadow/"):
 *  - an entry of a table page is written only under the page's table lock,
 *    with pool_spte_write (release stores: the private copy, then the
 *    pool), and under the writing VM's mmu_lock in write mode, which
 *    serialises the structure of the tables that VM alone reaches; the
 *    one exception is a fault's read-mode install (fault.c): a leaf set
 *    from not present by compare-and-exchange, under mmu_lock in read
 *    mode and the page's stripe, in a table only that VM reaches;
 *  - a table page is freed only after every registered vCPU was flushed
 *    (zap_batch_finish_locked), so no vCPU uses a translation through it;
 *    a lock-free walk still reading it is an RCU reader, and the page is
 *    reused only after a grace period (pool.c);
 *  - a leaf changes only under the reverse-map stripe of the page it maps
 *    (the leaf rule, struct pool_obj); one stripe at a time;
 *  - a leaf is installed only under mmu_lock after notifier_read_retry() said
 *    no invalidation of its backing page began since notifier_read_begin(),
 *    and after a check that no guest-table sync began since the guest walk;
 *  - no shadow lock is held across notifier_read_begin(), a slot's
 *    get_page, notifier (un)subscribe or an invalidation
 *    (shadow_assert_no_lock_held).
 * A function named *_locked asserts the locks its comment says its caller
 * holds.
 */
#ifndef UMBRA_SHADOW_MMU_INTERNAL_H
#define UMBRA_SHADOW_MMU_INTERNAL_H

#include "shadow_internal.h"

/* A table's role: what it shadows (struct shadow_page). */
struct role {
	bool direct;
	uint8_t access;
	uint64_t gpa;
};

/* Bumped under mmu_lock by every sync and P2M change: a fault whose guest
 * walk began before walks again under the lock (fault.c). */
static inline void bump_sync_seq_locked(struct shadow_mmu *mmu)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	__atomic_fetch_add(&mmu->sync_seq, 1, __ATOMIC_RELEASE);
}

/* ---- p2m.c: slots and the P2M -------------------------------------------- */

/* What a P2M store releases once mmu_lock is dropped (p2m_batch_finish):
 * nodes whose last reference it dropped, pages whose count reached 0. */
struct p2m_page_put {
	struct shadow_mmu_slot *slot;
	uint64_t page;
};
struct p2m_batch {
	struct p2m_node *nodes;
	struct p2m_page_put *pages;
	size_t nr_pages, cap;
};
void p2m_batch_init(struct p2m_batch *b);
/* Queues page @page of @slot for put_page (dropped silently if no memory:
 * the page then stays with its owner). */
void p2m_batch_add_page(struct p2m_batch *b, struct shadow_mmu_slot *slot, uint64_t page);
/* Releases what @b holds: node children and page references, put_page
 * calls.  No shadow lock held (asserted): may block. */
void p2m_batch_finish(struct shadow_mmu *mmu, struct p2m_batch *b);

/* The P2M entry of @gfn (< p2m_pages), and in *@private (if not NULL)
 * whether every node of its path is this VM's alone.  Lock-free snapshot
 * (an RCU read-side section of its own); exact under mmu_lock. */
uint64_t p2m_entry_lookup(struct shadow_mmu *mmu, uint64_t gfn, bool *private);
static inline uint64_t p2m_entry_get(struct shadow_mmu *mmu, uint64_t gfn)
{
	return p2m_entry_lookup(mmu, gfn, NULL);
}
/* The same under mmu_lock, with no read-side section (the nodes our tree
 * reaches are held by our references, which only we drop). */
uint64_t p2m_entry_lookup_locked(struct shadow_mmu *mmu, uint64_t gfn, bool *private);
/*
 * Several lookups in one RCU read-side section (p2m_tree.c): between
 * p2m_reader_begin and p2m_reader_end, p2m_reader_lookup is
 * p2m_entry_lookup (@gfn < p2m_pages) without a section of its own, and a
 * lookup in the chunk of the one before it reads the chunk that one
 * reached without a walk from the root.  Each lookup is a snapshot of
 * the P2M at some point since the reader's first walk into its chunk:
 * a store made since may not be seen (the caller re-checks sync_seq).
 * The section is held from begin to end: nothing between them may wait
 * for a grace period.  No lock taken; never blocks.
 */
struct p2m_reader {
	struct shadow_mmu *mmu;
	uint64_t chunk;		/* gfn / P2M_CHUNK_PAGES of @x, UINT64_MAX: none yet */
	uint64_t x;		/* that chunk as its walk reached it (p2m_walk_to_chunk) */
	bool private_above;	/* every node above @x had one user at that walk */
};
void p2m_reader_begin(struct p2m_reader *r, struct shadow_mmu *mmu);
uint64_t p2m_reader_lookup(struct p2m_reader *r, uint64_t gfn, bool *private);
void p2m_reader_end(struct p2m_reader *r);
/* The linear entry (P2M_LINEAR | e) that maps @gfn's whole chunk, or 0 if
 * the chunk's gfns have entries of their own (or none).  mmu_lock. */
uint64_t p2m_chunk_linear_locked(struct shadow_mmu *mmu, uint64_t gfn);
/* Stores @e as @gfn's entry (nothing zapped), the path made private
 * first; the page @e maps gets count 1, the old one loses one reference
 * (to @b when it reaches 0).  0 or -ENOMEM.  mmu_lock. */
int p2m_entry_set_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t e, struct p2m_batch *b);
/* Makes the path to @gfn's entry private (if there is one).  0 or
 * -ENOMEM.  mmu_lock. */
int p2m_path_privatize_locked(struct shadow_mmu *mmu, uint64_t gfn, struct p2m_batch *b);
/* Stores @x (P2M_LINEAR | entry, or 0) as the level-2 entry of the chunk
 * from @gfn, *@old the entry it replaces: 0, 1 if the chunk has a leaf
 * (or the P2M has one level: store entry by entry), -ENOMEM.  mmu_lock. */
int p2m_chunk_set_linear_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t x,
				struct p2m_batch *b, uint64_t *old);
/* The empty P2M of @mmu->p2m_pages gfns (no node until a store), and its
 * drop: our references go, a page of slot @skip_id excepted (the own slot
 * of a VM being destroyed: nobody else maps it).  p2m_exit: no shadow lock
 * held (put_page). */
int p2m_init(struct shadow_mmu *mmu);
void p2m_exit(struct shadow_mmu *mmu, int skip_id);
/* Gives @child (new, empty P2M) the parent's tree: one more use of its
 * root.  O(1).  The parent's mmu_lock. */
void p2m_share_locked(struct shadow_mmu *parent, struct shadow_mmu *child);
/* Visits every node of the tree, parents first; @private: the path to it,
 * the node included, is this VM's alone. */
struct p2m_walker {
	void (*node)(void *ctx, struct p2m_node *node, uint64_t first_gfn, bool private);
	void *ctx;
};
void p2m_walk_locked(struct shadow_mmu *mmu, const struct p2m_walker *w);
/* The same with the pool quiescent (shadow_pool_check). */
void p2m_walk_quiescent(struct shadow_mmu *mmu, const struct p2m_walker *w);
/* Does a write to the page of entry @e (on a path @private or not) need a
 * copy-on-write break (docs/sharing.md)?  Lock-free; exact under mmu_lock. */
bool p2m_entry_needs_break(struct shadow_mmu *mmu, uint64_t e, bool private);
/* The published slot @id, or NULL.  Lock-free. */
struct shadow_mmu_slot *slot_of_id(struct shadow_mmu *mmu, int id);
/* Entry @e -> (slot, page): 0, or -EFAULT if it maps nothing.  Pure. */
int p2m_entry_to_page(struct shadow_mmu *mmu, uint64_t e, struct shadow_mmu_slot **slot,
		      uint64_t *page);
/* gfn -> (slot, page): 0, or -EFAULT if unmapped.  Lock-free snapshot. */
int p2m_get(struct shadow_mmu *mmu, uint64_t gfn, struct shadow_mmu_slot **slot, uint64_t *page);
/* The same inside @r's section (p2m_reader_lookup), with in *@private (if
 * not NULL) whether the entry's path is this VM's alone. */
int p2m_reader_get(struct p2m_reader *r, uint64_t gfn, struct shadow_mmu_slot **slot,
		   uint64_t *page, bool *private);
/* True if a write to @gfn needs a copy-on-write break first
 * (p2m_entry_needs_break).  Lock-free snapshot; exact under mmu_lock. */
bool p2m_is_cow(struct shadow_mmu *mmu, uint64_t gfn);
/* The read side of the sequence/retry protocol (docs/notifiers.md) for
 * page @page of @slot: *@seq from notifier_read_begin(), then the page made
 * resident (get_page, @write if it will be mapped writable).  May block; no
 * shadow lock held (asserted).  0 or get_page's -errno. */
int slot_page_get(struct shadow_mmu_slot *slot, uint64_t page, bool write, uint64_t *seq);
/* Reads the guest's 8 bytes at guest-physical @pa through the P2M. */
int guest_read(void *ctx, uint64_t pa, uint64_t *val);
/* The guest's memory as the walker sees it (ctx: the MMU). */
extern const struct shadow_mem_ops guest_mem_ops;
/* guest_read through the struct p2m_reader @ctx, inside its section (a
 * walk's lookups share it).  p2m.c. */
int guest_reader_read(void *ctx, uint64_t pa, uint64_t *val);
/* shadow_walk(@mode, ops reading with guest_reader_read through @r, no
 * cmpxchg, @cr3, @va, @access, no flags, @w): a read-only guest walk
 * inside @r's section, its reads called directly (no call through an ops
 * table per level).  The fault's first walk (fault.c).  walk.c. */
int walk_guest_reader(const struct shadow_paging_mode *mode, struct p2m_reader *r, uint64_t cr3,
		      uint64_t va, unsigned int access, struct shadow_walk *w);
/* Adds and subscribes a slot (a segment if @shared).  Takes no lock around
 * the subscribe; mmu_lock to publish.  May block. */
int mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *s, bool shared, int *id);
/* The two halves of mmu_add_slot: prepare fills slots[nr_slots] and
 * subscribes it (no lock held; 0 or the errors of add_slot), publish makes
 * it visible (mmu_lock), unprepare undoes a prepared slot never published
 * (no lock held). */
int mmu_slot_prepare(struct shadow_mmu *mmu, const struct shadow_slot *s, bool shared, int *id);
void mmu_slot_publish_locked(struct shadow_mmu *mmu, int id);
void mmu_slot_unprepare(struct shadow_mmu *mmu, int id);

/* ---- refcount.c: page reference counts ----------------------------------- */

/* Are the pages of @slot reference-counted: a layer, or the own slot?  (A
 * slot becomes counted when a clone makes it a layer, and stays so; its
 * pages are then mapped once each, count 1, as before.)  Lock-free. */
static inline bool slot_is_counted(struct shadow_mmu *mmu, const struct shadow_mmu_slot *slot)
{
	return !slot->shared && (__atomic_load_n(&slot->layer, __ATOMIC_ACQUIRE) ||
				 slot->id == __atomic_load_n(&mmu->own_slot, __ATOMIC_RELAXED));
}

/* Makes the counts of @page's run exist: 0 or -ENOMEM.  Lock-free. */
int page_ref_prepare(struct pool_obj *po, uint64_t page);
/* Run @run's counts, or NULL (every count 1).  Lock-free. */
static inline uint32_t *page_ref_run(struct pool_obj *po, uint64_t run)
{
	uint32_t **runs = __atomic_load_n(&po->page_refs, __ATOMIC_ACQUIRE);

	return runs ? __atomic_load_n(&runs[run], __ATOMIC_ACQUIRE) : NULL;
}
/* The count of @page: its own (1 if its run has none) and its run's.
 * refs_lock. */
uint32_t page_ref_read(struct pool_obj *po, uint64_t page);
/* One more reference (the run prepared).  refs_lock. */
void page_ref_get(struct pool_obj *po, uint64_t page);
/* One reference less: true when it was the last.  refs_lock. */
bool page_ref_put(struct pool_obj *po, uint64_t page);
/* A store maps @page: its count is 1.  refs_lock. */
void page_ref_set_one(struct pool_obj *po, uint64_t page);
/* The same for the 512 pages of a linear P2M run from page @first: a
 * whole run of the object (aligned) counts one reference in run_refs, any
 * other per page.  _prepare makes the arrays a _get needs (0 or -ENOMEM);
 * _put_run sets in @freed (a bitmap of the 512 pages) the pages whose last
 * reference went and returns how many; _expand_run moves the run's
 * reference to each page, as the run becomes a leaf of 512 entries (0 or
 * -ENOMEM, nothing changed); _set_one_run: a store maps the run, each
 * page's count is 1.  refs_lock. */
int page_ref_prepare_run(struct pool_obj *po, uint64_t first);
void page_ref_get_run(struct pool_obj *po, uint64_t first);
unsigned int page_ref_put_run(struct pool_obj *po, uint64_t first, uint64_t freed[SPTE_ENTRIES / 64]);
int page_ref_expand_run(struct pool_obj *po, uint64_t first);
void page_ref_set_one_run(struct pool_obj *po, uint64_t first);
/* The recount of every node's use and page's count against the pool's
 * P2Ms.  objs_lock and mmus_lock, the pool quiescent.  0, -EUCLEAN or
 * -ENOMEM. */
int page_refs_check_locked(struct shadow_pool *pool);

/* ---- zap.c: entry writes, zap batches ------------------------------------ */

/* Writes entry @i of @page under its table lock; returns the old value.
 * mmu_lock held; for a leaf, also the stripe of the page it maps. */
uint64_t spte_set_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, uint64_t spte);
/* The same, with @page's table lock already held by the caller (a check and
 * the write under one hold of the lock: fill.c). */
uint64_t spte_set_table_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i,
			       uint64_t spte);
/* The stripe of the page leaf @spte maps, with its slot and page; NULL if no
 * slot of ours holds it.  Lock-free. */
struct umbra_mutex *leaf_stripe(struct shadow_mmu *mmu, uint64_t spte,
				   struct shadow_mmu_slot **slot, uint64_t *bp);

void zap_batch_init(struct zap_batch *b);
void batch_add_table(struct zap_batch *b, uint32_t page);
/* Queues this VM's flush of the va of entry @i of leaf table @page. */
void batch_add_leaf_va(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct zap_batch *b);
/* Queues the drop of @parent's entry @index reference on @child for after
 * the batch's flush (finishing the batch first if it is full).  mmu_lock. */
void batch_add_put(struct shadow_mmu *mmu, struct zap_batch *b, uint32_t child, uint32_t parent,
		   uint32_t index);
/* Flushes every registered vCPU as @b requires, the other VMs that reach
 * its tables, then drops its references and frees its pages.  mmu_lock. */
void zap_batch_finish_locked(struct shadow_mmu *mmu, struct zap_batch *b);

/* Clears leaf @i of @page in place, if present, under the stripe of the page
 * it maps.  Returns the old entry.  mmu_lock held, no stripe. */
uint64_t leaf_clear(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct zap_batch *b);
/* Zaps entry @i of @page (a leaf in place; a table entry only in a table
 * this VM alone reaches, its reference put after the flush).  mmu_lock. */
void zap_spte_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct zap_batch *b);
/* A new empty table of @level with @role, covering linear addresses from
 * @gva, not yet linked, charged to @mmu's table quota: 0, -EDQUOT (the
 * quota is reached; no pool page taken) or -ENOMEM (pool full).  mmu_lock. */
int table_alloc_locked(struct shadow_mmu *mmu, int level, const struct role *role, uint64_t gva,
		       uint32_t *out);
/* The same, charged to @account instead (NULL: to nobody, a canonical
 * table; a clone's account for the copies of its roots).  mmu_lock. */
int table_alloc_charged_locked(struct shadow_mmu *mmu, struct table_account *account, int level,
			       const struct role *role, uint64_t gva, uint32_t *out);
/* Frees table @page, whose use count dropped to 0.  mmu_lock. */
void table_free_locked(struct shadow_mmu *mmu, uint32_t page);
/* Non-local: zaps every SPTE in the pool mapping pages [first, last] of
 * @slot (rmap walk), for every VM.  mmu_lock held, no stripe. */
void zap_slot_range_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t first,
			   uint64_t last, struct zap_batch *b);

/* ---- pmd_rmap.c: the remote flush ---------------------------------------- */

/* Flushes every vCPU of @mmu (from another VM's zap): takes its tlbs_lock.
 * Recorded as a "remote flush" span in a --trace (umbra/trace.h). */
void mmu_flush_remote(struct shadow_mmu *mmu);
/* Flushes every VM that reaches a table of @b in which a leaf was cleared
 * in place (every VM of the pool on overflow), then forgets those tables.
 * Called with @mmu's mmu_lock (and, from a non-local zap, the stripe of the
 * cleared pages); takes table locks, tlbs_lock, maybe pool->mmus_lock. */
void batch_flush_remote(struct shadow_mmu *mmu, struct zap_batch *b);
/*
 * Calls @fn(@ctx, vm, path_shared) for every root user found by walking the
 * users lists up from table @page (at @level): every VM that reaches @page,
 * and possibly some that reached it a moment ago (links whose put is
 * pending).  @path_shared: a table on the way (@page included) was shared.
 * @fn runs with that root's table lock held, so @vm is not freed meanwhile
 * (destroy unlinks its roots under that lock); it may take tlbs_lock, no
 * other table lock.  The walk stops when @fn returns false.  Returns 1 if
 * every call returned true, 0 if one returned false, -ENOMEM (the walk could
 * not finish).  Called under @self's mmu_lock; one table lock at a time.
 */
int pmd_rmap_for_each_root(struct shadow_mmu *self, uint32_t page, int level,
			   bool (*fn)(void *ctx, struct shadow_mmu *vm, bool path_shared),
			   void *ctx);

/* ---- sync.c: what the guest's tables say --------------------------------- */

/* Rights of a leaf as the shadow may grant them: W only once dirty. */
static inline unsigned int leaf_rights(unsigned int rights, bool dirty)
{
	return dirty ? rights : rights & ~SHADOW_RIGHT_WRITE;
}

static inline bool role_matches(const struct shadow_page *sp, const struct role *role)
{
	/* One test of the three fields, the gpa first: compared byte by byte
	 * with &&, GCC merges direct and access into one 16-bit compare built
	 * in a high-byte register, which stalls the fault's path check. */
	return ((sp->gpa ^ role->gpa) | (uint64_t)(sp->access ^ role->access) |
		(uint64_t)(sp->direct ^ role->direct)) == 0;
}

/* The leaf a fault installs for machine address @mpa with @rights. */
static inline uint64_t make_leaf(const struct shadow_mmu *mmu, uint64_t mpa, unsigned int rights,
				 bool readonly)
{
	return spte_make_leaf(mpa, (rights & SHADOW_RIGHT_WRITE) && !readonly,
			      rights & SHADOW_RIGHT_USER,
			      !mmu->mode.nxe || (rights & SHADOW_RIGHT_EXEC));
}

/* The 2 MiB leaf for @mpa, the first byte of a 2 MiB-aligned run. */
static inline uint64_t make_huge_leaf(const struct shadow_mmu *mmu, uint64_t mpa, unsigned int rights)
{
	return make_leaf(mmu, mpa, rights, false) | SPTE_LARGE;
}

/*
 * Shared: another VM may reach it, or it is a segment's canonical table.
 * For @page linked from an entry of a table this VM alone reaches (the
 * descent from a root is top-down, so the caller has checked the parent):
 * a table with one user is not shared, its one user being that entry; one
 * with several is shared unless table_is_ours_alone.  mmu_lock held, no
 * table lock (pmd_rmap.c).
 */
bool table_is_shared(struct shadow_mmu *mmu, uint32_t page);
/*
 * Does every root that @page's users lists lead up to (the pmd-rmap walk)
 * belong to this VM, and is there one: several address spaces of the VM
 * use one shadow of a guest table (table_hash.c)?  Whatever its use count:
 * a table found some other way than down from our roots (an index hint)
 * may have another VM's one link.  The answer "ours alone" is cached in
 * the page until the VM is next cloned (clone_gen: only a clone makes a
 * VM's tables reachable by another VM).  mmu_lock held, no table lock.
 */
bool table_is_ours_alone(struct shadow_mmu *mmu, uint32_t page);

/* Brings the subtree at @page (this VM's alone) in line with the guest's
 * tables: zaps what no longer matches.  mmu_lock. */
void sync_table_locked(struct shadow_mmu *mmu, uint32_t page, struct zap_batch *b);
/* Where the guest's entry that entry @i of this VM's shadow @page (of a
 * guest page table) shadows maps a large page now (present, accessed, no
 * reserved bit): true, and in *@role the direct role of the table that
 * stands for it (its frame, its leaf rights: W only once dirty).  Reads
 * guest memory, validated as sync's every read is.  mmu_lock. */
bool expect_large_page_locked(struct shadow_mmu *mmu, uint32_t page, unsigned int i, struct role *role);

/* ---- privatize.c: local zaps --------------------------------------------- */

/* Copies shared table @old, which entry @i of @parent (this VM's alone)
 * points at, into a private write-protected copy and points the entry at
 * it.  mmu_lock held, no stripe.  0 and the copy in *@out, or -ENOMEM. */
int table_copy_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i, uint32_t old,
		      uint64_t gva, struct zap_batch *b, uint32_t *out);
/* Removes W from every entry of @page (this VM's alone).  mmu_lock held, no
 * stripe. */
void table_wrprot_locked(struct shadow_mmu *mmu, uint32_t page);
/* Local zap: this VM stops reaching every leaf of pages [first, last] of
 * @slot, other VMs keep theirs.  mmu_lock held, no stripe. */
void zap_slot_range_local_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot,
				 uint64_t first, uint64_t last, struct zap_batch *b);

/* ---- fill.c: leaves filled in place into shared tables ------------------ */

/* Results of fill_in_place_locked besides 0 and -errno. */
#define FILL_REFUSED 1	/* the VMs' views may differ: privatize and install instead */

/*
 * Tries to fill leaf @spte (read-only), which maps page @page of @slot for
 * guest walk @w, in place at entry @i of level-1 table @table, which is
 * shared or below a shared table and reached from our root by the path of
 * @w.  0: the leaf is there (filled, or found); FILL_REFUSED: nothing
 * written (a sharer's view differs, or may have changed since the check
 * began: the caller privatizes); -ENOMEM (no memory for the reverse-map
 * entry).  mmu_lock held, no stripe.
 */
int fill_in_place_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			 const struct shadow_walk *w, struct shadow_mmu_slot *slot, uint64_t page,
			 uint64_t spte);
/*
 * Orders a VM's check of shared level-1 table @page against its own view
 * (sync, invlpg, a mode change) after every fill in place of @page in
 * progress, and makes every fill that has not yet taken @page's table lock
 * refuse: call it after what changed the VM's view (a P2M store, a guest
 * write the VM syncs for) and before reading @page's leaves.  mmu_lock held,
 * no table lock.
 */
void fill_barrier_locked(struct shadow_mmu *mmu, uint32_t page);

/* ---- install.c: the shadow path and the leaf of a fault ------------------ */

/* The role of the level-@level table on @w's path (with @rights below a
 * guest large page). */
struct role install_role(const struct shadow_walk *w, int level, unsigned int rights);
/* The leaf a fault installs for @w (page @page of @slot); *@want_w: does
 * it grant writes. */
uint64_t fault_leaf(struct shadow_mmu *mmu, const struct shadow_walk *w,
		    struct shadow_mmu_slot *slot, uint64_t page, bool *want_w);
/* Installs @w's path and leaf below @root (write mode; @seq: the fault's
 * notifier_read_begin); its level-1 table in *@leaf_table (SHADOW_NO_PAGE
 * for a 2 MiB leaf).  0 or -errno. */
int install_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
		   struct shadow_mmu_slot *slot, uint64_t page, uint64_t seq, struct zap_batch *b,
		   uint32_t *leaf_table);
/* Writes leaf @spte at entry @i of level-1 table @table (write mode). */
int install_leaf_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			struct shadow_mmu_slot *slot, uint64_t page, uint64_t spte,
			struct zap_batch *b);
/* After leaf @i of @table was installed or found: the visible copy, young,
 * counters (either mode). */
void leaf_installed_locked(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			   struct shadow_mmu_slot *slot, uint64_t page, bool want_w);
/* The level-1 table of @w's path if every table is there with its role
 * (either mode; install.c says what @private_only and @want_w require). */
bool path_find(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
	       unsigned int rights, bool private_only, bool want_w, uint32_t *table, bool *shared);
/* Sets leaf @spte from not present by compare-and-exchange (read mode):
 * 0, -EBUSY (another leaf there) or -ENOMEM. */
int install_leaf_read_mode(struct shadow_mmu *mmu, uint32_t table, unsigned int i,
			   struct shadow_mmu_slot *slot, uint64_t page, uint64_t spte);

/* Descends from @root along @w's path to the level-@stop table (1 or 2),
 * in *@table.  0 or -errno.  mmu_lock. */
int install_tables_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
			  unsigned int rights, bool want_w, int stop, struct zap_batch *b,
			  uint32_t *table);

/* ---- huge.c: 2 MiB shadow leaves ----------------------------------------- */

/* install_huge_locked's answer where no 2 MiB leaf may serve (not an errno). */
#define HUGE_REFUSED 1
/*
 * Installs @w's translation (page @page of @slot) below @root as one 2 MiB
 * leaf if the guest maps a 2 MiB page there and a 2 MiB leaf may serve it
 * (huge.c says when); *@leaf_table is then SHADOW_NO_PAGE (nothing to map
 * around).  @seq: the fault's notifier_read_begin, checked for the whole
 * run.  0, HUGE_REFUSED (install 4 KiB leaves) or -errno.  mmu_lock.
 */
int install_huge_locked(struct shadow_mmu *mmu, uint32_t root, const struct shadow_walk *w,
			struct shadow_mmu_slot *slot, uint64_t page, uint64_t seq, struct zap_batch *b,
			uint32_t *leaf_table);
/* Every 2 MiB leaf that maps run @r of @slot's object (@run: its side
 * arrays), while pages [@first, @last] of the run are zapped: cleared if
 * the range is the whole run, else split where it can be (the run's other
 * pages stay mapped by 4 KiB leaves), else cleared.  mmu_lock, the run's
 * stripe, no table lock. */
void huge_zap_run_locked(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, struct pool_obj_run *run,
			 uint64_t r, uint64_t first, uint64_t last, struct zap_batch *b);
/* Does 2 MiB leaf @spte shadow the guest 2 MiB page that direct role
 * @role stands for (its frame, its leaf rights: expect_large_page_locked)
 * as the P2M maps it now: the leaf a fault would install, or its read-only
 * form from before the guest's D?  Its rights in *@rights (may be NULL).
 * mmu_lock. */
bool huge_leaf_matches(struct shadow_mmu *mmu, uint64_t spte, const struct role *role,
		       unsigned int *rights);
/* Clears every 2 MiB leaf below this VM's cached roots (before a clone,
 * which shares pages copy-on-write, page by page).  mmu_lock. */
void huge_zap_all_locked(struct shadow_mmu *mmu, struct zap_batch *b);
/* Removes location (@page, @i), a leaf mapping page @bp of @slot, from its
 * reverse map: the page's, or for a 2 MiB leaf (@page a level-2 table) its
 * run's.  The stripe held. */
void leaf_rmap_del(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t bp, uint32_t page,
		   unsigned int i);

/* ---- table_hash.c: one shadow per guest table and role within a VM ------- */

/* Buckets of a VM's table index (a power of two). */
#define TABLE_HASH_SIZE 4096u
/* The index, empty, and its release: 0 or -ENOMEM. */
int table_hash_init(struct shadow_mmu *mmu);
void table_hash_exit(struct shadow_mmu *mmu);
/* Enters table @page (made by this VM: its level, role and gva set) in the
 * index, in place of what its bucket held.  mmu_lock. */
void table_hash_add_locked(struct shadow_mmu *mmu, uint32_t page);
/* A live table of @level with @role at @gva that no other VM reaches and
 * this VM may link under another parent entry: true and *@out, or false.
 * mmu_lock held, no table lock. */
bool table_hash_find_locked(struct shadow_mmu *mmu, int level, const struct role *role, uint64_t gva,
			    uint32_t *out);

/* ---- canon.c: canonical tables of shared segments ------------------------ */

/* The canonical table of @level (1: a 2 MiB run, 2: a GiB) for @role (a
 * direct role) with a reference for the caller, found or created under the
 * run's stripe: 0, -ENOENT (not eligible) or -ENOMEM.  mmu_lock held, no
 * stripe. */
int canon_get_locked(struct shadow_mmu *mmu, int level, const struct role *role, uint64_t gva,
		     uint32_t *out);
/* The child for entry @i of canonical level-2 table @parent, with direct
 * level-1 role @role: the canonical table of that run, linked there (once,
 * for every user) if the entry was empty.  0; -EXDEV if the entry cannot
 * be served so (not that run, or not eligible in this VM's P2M: the caller
 * leaves @parent); -ENOMEM (a reference taken is dropped through @b).
 * mmu_lock held, no stripe. */
int canon_child_get_locked(struct shadow_mmu *mmu, uint32_t parent, unsigned int i,
			   const struct role *role, uint64_t gva, struct zap_batch *b,
			   uint32_t *out);
/* Is @child what entry @i of canonical level-2 table @sp links: the
 * canonical level-1 table of run i of its GiB, with its readonly flag and
 * rights? */
static inline bool canon_child_is(const struct shadow_page *sp, unsigned int i,
				  const struct shadow_page *child)
{
	return child->canon && child->canon_obj == sp->canon_obj && child->direct &&
	       child->canon_key == sp->canon_key - CANON_KEY_LEVEL2 + i * CANON_KEYS_PER_RUN &&
	       child->access == sp->access && child->gpa == sp->gpa + (uint64_t)i * SPTE_LEVEL_SIZE(2);
}
/* Links into every empty entry of canonical level-2 table @canon the
 * canonical level-1 table that the same entry of @from (a level-2 table of
 * this VM's, same GiB) links, so that what this VM had mapped stays mapped
 * for every user.  mmu_lock held, no stripe. */
void canon_adopt_locked(struct shadow_mmu *mmu, uint32_t canon, uint32_t from);
/* Does the guest's page directory at @pd (read through this VM's P2M now),
 * under entries granting @rights, map what a level-2 table of direct role
 * @direct maps: 512 accessed 2 MiB pages at direct->gpa + i * 2 MiB, each
 * with the leaf rights direct->access?  Then such a table shadows it.
 * mmu_lock. */
bool canon_guest_pd_matches(struct shadow_mmu *mmu, uint64_t pd, unsigned int rights,
			    const struct role *direct);
/* Removes canonical table @page, being freed, from its object's array.
 * mmu_lock held, no stripe (takes the run's). */
void canon_forget_locked(struct shadow_mmu *mmu, uint32_t page);

/* ---- root.c: the root cache ---------------------------------------------- */

/* The root-cache key of guest @cr3: its PML4 gpa. */
static inline uint64_t cr3_key(const struct shadow_mmu *mmu, uint64_t cr3)
{
	return cr3 & SPTE_ADDR_MASK & ((1ull << mmu->mode.maxphyaddr) - 1);
}

/* The cached root for @key, or NULL; changes nothing (no LRU tick).
 * mmu_lock in either mode. */
struct shadow_root *root_find_locked(struct shadow_mmu *mmu, uint64_t key);
/* The cached root whose table is at pool gpa @gpa, or NULL.  mmu_lock. */
struct shadow_root *root_of_page_locked(struct shadow_mmu *mmu, uint64_t gpa);
/* Empties root-cache slot @root, its reference put after @b's flush.
 * mmu_lock. */
void root_evict_locked(struct shadow_mmu *mmu, struct shadow_root *root, struct zap_batch *b);
/* The root cache's first size (it doubles when full, up to max_roots). */
#define ROOT_CACHE_FIRST 8u
/* Grows @mmu's root cache to at least @n slots (at most max_roots), the new
 * ones empty: 0 or -ENOMEM.  Under mmu_lock, or before anyone else uses
 * @mmu (a clone being made). */
int root_cache_grow(struct shadow_mmu *mmu, unsigned int n);
/*
 * Makes room when a table allocation was refused (the quota reached, or
 * the pool full: then after the freed pages' grace period): evicts the
 * least recently used root no vCPU runs on.  False if there was none.
 * Takes mmu_lock; the caller holds no shadow lock and is not in a
 * read-side section.
 */
bool mmu_evict_lru_root(struct shadow_mmu *mmu, bool wait);
/*
 * Makes room when the pool is full or the quota reached: drops every root
 * no vCPU runs on and every table below the others, of this VM only (other
 * VMs lose nothing: tables shared with them lose this VM's reference), and
 * counts a reclaim (before the zap's flush: a vCPU flushed by it sees the
 * count moved).  Then waits for the freed pages' grace period.  Takes
 * mmu_lock; the caller holds no shadow lock and is not in a read-side
 * section.
 */
void mmu_reclaim(struct shadow_mmu *mmu);

/* ---- access.c: access tracking ----------------------------------------- */

/* The fault's fast path: if the private shadow path of @va under @cr3's
 * root reaches a present leaf that grants @access (an access-tracked leaf,
 * or one whose visible copy a guest changed), restores its visible copy,
 * marks the page young and returns true; false: the slow path is needed.
 * Takes mmu_lock; the caller holds no shadow lock. */
bool fault_fast_restore(struct shadow_mmu *mmu, uint64_t cr3, uint64_t va, unsigned int access);

/* ---- quota.c: the table quota -------------------------------------------- */

/* A new account with quota @max (0: none), with the MMU's reference. */
int table_account_create(uint64_t max, struct table_account **out);
/* Drops the MMU's reference (the account lives on while pages are
 * charged to it).  NULL is a no-op. */
void table_account_put(struct table_account *a);
/* Pages charged now.  Lock-free. */
uint64_t table_account_held(const struct table_account *a);
/* May one more page be charged?  Under the charged VM's mmu_lock (only
 * uncharges can run meanwhile, so the answer stays true until the charge). */
bool table_account_has_room(const struct table_account *a);
/* Charges page @sp (just allocated) to @a. */
void table_charge(struct table_account *a, struct shadow_page *sp);

#endif
