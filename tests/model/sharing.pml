/*
 * sharing.pml: Promela model of umbra's cross-VM shadow-table sharing:
 * share (clone, canonical segment table), privatize (lock-free
 * unshare), swapout-zap through the notifiers and the pmd-rmap, teardown,
 * with the use count and the users list of every table.
 *
 * docs/model.md maps every step to the C code (shadow/, notifier/) and argues the
 * abstractions; scripts/model-check verifies it exhaustively with spin
 * (assertions and invalid end states, 3 VMs) and checks that spin finds
 * each seeded bug below.
 *
 * What is modelled.  One shareable level: NT leaf tables of the pool, each
 * with the one entry that maps (or not) the one backing page.  Each VM has
 * its own root (roots are never shared) whose one entry points at a leaf
 * table or at nothing (NONE: the VM has no tables).  Sharing one level up
 * is the same protocol (a copy raises its children's counts as a clone
 * does; pmd_rmap_flush_up walks the users lists level by level).  A table's
 * users are root slots (one link per root entry).
 *
 * Sharing within a VM (built with -DROOT2): VM 0 has a second root, slot
 * R2, which links a table of VM 0's other root ([link-own]: the
 * table_hash hit that table_is_shared allows, with its cache priv[] and
 * the clone generation that [clone] bumps), and which VM 0 evicts on its
 * own ([evict-root]); VM 0's fault writes through either root only in a
 * table that only VM 0's roots reach.  VM 2 stays empty and there is no
 * canonical table in that build (the state space; docs/model.md).
 *
 * Processes, all looping forever (no budgets: every interleaving of any
 * number of operations is explored; the state space is finite):
 *   vm(v)    the shadow MMU operations of VM v, each under its mmu_lock:
 *            create, clone, attach a segment (canonical table), fault,
 *            privatize, teardown, unsubscribe; with ROOT2, VM 0 also
 *            links its own table from its second root and evicts it;
 *   vcpu(v)  the software vCPU of VM v: a one-entry TLB and a walk of the
 *            pool in two steps (root entry, leaf entry) that a flush waits
 *            for (the C walk is lock-free and a flush does not wait: a walk
 *            that a flush overlapped fills nothing and restarts, so it has
 *            the same effect; docs/model.md);
 *   swapper  shadow_store_evict, again and again: range_start, whose shadow
 *            callback (zap_pages) runs for each subscribed VM, the
 *            eviction, range_end.
 *
 * Locks.  mmu_lock[v] and the vCPU's walk (walk[v] != NONE) are held
 * across steps.  rmap_lock below names the page's reverse-map stripe (the
 * model has one page, so one stripe; pool_obj.stripes in C): a step's
 * atomicity, except where the C code holds it while it waits (the remote
 * flushes of a non-local zap): there rmap_held is set, and every step that
 * takes the stripe waits for it.  Table locks and the lock-free pool
 * allocator are atomicity (they wait for nothing).
 *
 * Properties (assertions, checked in every reachable state where they
 * apply): no vCPU walk inside a freed table and no table freed under a walk
 * (use after free); every table freed exactly once, by the caller whose
 * decrement took its count to 0, with no users left; at every quiescent
 * point use count == size of the users list == number of VMs pointing at
 * it, and no leak; when invalidate_range_start returns, no leaf in the pool
 * and no TLB maps the page.  Deadlock: see init.  The state space is
 * reduced by renaming tables into a canonical order (relabel) and by
 * merging steps that other processes cannot tell apart; docs/model.md
 * argues both.
 *
 * Seeded bugs (spin must find each; scripts/model-check checks it):
 *   BUG_FREE_WITHOUT_COUNT  table_put_now_locked decrements, then decides
 *                           "last" by reading the count again: two racing
 *                           putters both see 0 and both free the table.
 *   BUG_SKIP_NOTIFY         the swapout zap clears leaves in place but skips
 *                           the pmd-rmap flush (batch_flush_remote_locked):
 *                           another user VM's vCPU keeps the evicted page.
 *   BUG_PUT_BEFORE_FLUSH    privatize/teardown drop their reference (and
 *                           free at 0) before flushing their own vCPUs: a
 *                           table is freed under a vCPU's walk.
 *   BUG_CANON_INC           canon_get_locked raises the use count of the
 *                           canonical table even when it is 0 (no
 *                           inc-not-zero): it revives a table being freed.
 *   BUG_NO_RETRY            the fault installs without notifier_read_retry:
 *                           a leaf comes back while the range is in progress.
 *   BUG_REMOTE_MMU_LOCK     the remote flush of a user VM also waits for that
 *                           VM's mmu_lock, under rmap_lock: a VM that holds
 *                           its mmu_lock and waits for rmap_lock deadlocks.
 *   BUG_CANON_DEC           canon_get_locked as it was before commit
 *                           301e13e, on its "same run at another
 *                           guest-physical address" path: inc-not-zero, then
 *                           __atomic_fetch_sub with its result ignored; a
 *                           racing put leaves the table at count 0, never
 *                           freed (a leak).  The code now checks the gpa
 *                           before taking a reference: that path changes
 *                           nothing, and the main model has no step for it.
 * With ROOT2:
 *   BUG_NO_CLONE_GEN        the clone does not bump the parent's clone_gen:
 *                           a cached "VM 0 alone" outlives the clone, and
 *                           VM 0 links or writes a table its clone reaches.
 *   BUG_ROOT_NOT_OURS       table_is_shared's walk counts the roots it finds
 *                           but does not check they are the VM's own.
 *   BUG_EVICT_PUT_EARLY     [evict-root] puts (and frees at 0) before it
 *                           flushes VM 0's vCPU: a table freed under a walk.
 *   BUG_LINK_COUNT1         the index hit is checked with table_is_shared,
 *                           whose "use count 1: not shared" holds only for
 *                           a table reached down from our own roots: a
 *                           hint to a table another VM alone links (count
 *                           1) is linked (docs/model.md, "Sharing within a
 *                           VM").
 */

#ifndef NT
#define NT 4		/* leaf tables in the pool (3 or 4) */
#endif
#define NVM 3		/* VMs, one vCPU each; the macros below assume 3 */

#define NONE NT		/* no table */
#define NR 4		/* root slots: slot v is VM v's root, slot 3 VM 0's second */
#define R2 3		/* VM 0's second root */
#define BIT(v) (1 << (v))
#define SLOTS(v) ((v) == 0 -> (BIT(0) | BIT(R2)) : BIT(v))	/* VM v's root slots */
#define VMS(s) (((s) & 7) | (((s) >> R2) & 1))	/* the VMs of a set of root slots */
#define LOW(s) (((s) & 1) -> 0 : (((s) & 2) -> 1 : 2))	/* lowest VM of a non-empty set */

/* ---- the pool: descriptors (struct shadow_page) and entries ---------- */
bool live[NT];		/* allocated (sp->level != 0) */
byte count[NT];		/* sp->use_count (atomic) */
byte users[NT];		/* sp->users, the pmd-rmap, as a set of root slots
			 * (table lock): one link per root entry */
byte priv[NT];		/* table_is_shared's cache (sp->private_mmu,
			 * sp->private_gen): v + 1 while the cache says "VM v
			 * alone" at v's current clone_gen, else 0 */
bool iscanon[NT];	/* sp->canon */
bool entry[NT];		/* the leaf that maps the page is present; every
			 * present leaf is in the pool-wide rmap (I4) */
byte canon = NONE;	/* pool_obj.canon[key] of the segment run (rmap_lock) */
bool rmap_held;		/* the page's stripe ("rmap_lock") held across a wait */
bool stop;		/* no operation starts any more (the deadlock check) */

/* ---- per VM ----------------------------------------------------------- */
byte root[NR] = NONE;	/* root slot s's entry: a leaf table, or NONE; slot v
			 * is VM v's root, slot R2 VM 0's second root */
byte mmu_lock[NVM];	/* shadow_mmu.mmu_lock: 0 free, else holder + 1 */
bool tlb[NVM];		/* the vCPU's TLB caches the page's translation */
byte walk[NVM] = NONE;	/* the table the vCPU's walk is in (tlb_lock held),
			 * NONE when no walk is in progress */
byte held[NVM] = NONE;	/* the table VM v's operation in progress is
			 * dropping (a local of vm(v), global for relabel) */

/* ---- the notifier ------------------------------------------------------ */
bool inprog;		/* a range of the page is in progress */
byte sub;		/* subscribed VMs (a set) */
byte snap;		/* the subscribers the range in progress counted in
			 * (its generation); they are held until range_end */

/* ---- invariants ------------------------------------------------------- */
#define POP(x) (((x) & 1) + (((x) >> 1) & 1) + (((x) >> 2) & 1) + (((x) >> 3) & 1))
/* the root slots whose entry points at table t */
#define ROOTS(t) ((root[0] == (t)) + 2 * (root[1] == (t)) + 4 * (root[2] == (t)) + \
		  8 * (root[R2] == (t)))
#define WALKED(t) (walk[0] == (t) || walk[1] == (t) || walk[2] == (t))
/* table t is consistent (I1): free and unreferenced, or allocated with the
 * users list exactly the VMs that point at it and the use count its size,
 * at least 1 (no leak), canonical exactly when the array names it */
#define TOK(t) ((!live[t] && count[t] == 0 && users[t] == 0 && !iscanon[t] && \
		 !entry[t] && priv[t] == 0 && ROOTS(t) == 0) || \
		(live[t] && users[t] == ROOTS(t) && count[t] == POP(users[t]) && count[t] > 0 && \
		 iscanon[t] == (canon == (t))))
#if NT == 4
#define ALLTOK (TOK(0) && TOK(1) && TOK(2) && TOK(3))
#define NOLEAF (!entry[0] && !entry[1] && !entry[2] && !entry[3])
#elif NT == 3
#define ALLTOK (TOK(0) && TOK(1) && TOK(2))
#define NOLEAF (!entry[0] && !entry[1] && !entry[2])
#else
#error "NT must be 3 or 4"
#endif
#define QUIESCENT (mmu_lock[0] == 0 && mmu_lock[1] == 0 && mmu_lock[2] == 0)

/*
 * Symmetry reduction over table indices.  Every transition and property is
 * the same under a renaming of the pool's pages (a free page is zeroed and
 * unreferenced: which one pool_alloc_index returns does not matter), so
 * after a step that changes which table is referenced from where, the
 * tables are renamed into a canonical order: by their first reference
 * (root[0..3], then held[0..2], walk[0..2], canon), free pages last.  One
 * state stands for all its renamings; nothing is lost.  hidden variables
 * are not part of the state.
 */
hidden byte rl_i, rl_j, rl_n;
hidden byte rl_key[NT], rl_pm[NT], rl_count[NT], rl_users[NT];
hidden byte rl_live[NT], rl_iscanon[NT], rl_entry[NT], rl_priv[NT];
#define RL_KEY(x, k) if :: (x) != NONE && rl_key[x] > (k) -> rl_key[x] = (k) :: else -> skip fi
#define RL_MAP(x) if :: (x) != NONE -> x = rl_pm[x] :: else -> skip fi
inline relabel() {
	d_step {
		rl_i = 0;
		do
		:: rl_i < NT ->
			rl_key[rl_i] = 255;
			rl_live[rl_i] = live[rl_i]; rl_count[rl_i] = count[rl_i];
			rl_users[rl_i] = users[rl_i]; rl_iscanon[rl_i] = iscanon[rl_i];
			rl_entry[rl_i] = entry[rl_i]; rl_priv[rl_i] = priv[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM ->
			RL_KEY(root[rl_i], rl_i); RL_KEY(held[rl_i], NR + rl_i);
			RL_KEY(walk[rl_i], NR + NVM + rl_i);
			rl_i++
		:: else -> break
		od;
		RL_KEY(root[R2], R2);
		RL_KEY(canon, NR + 2 * NVM);
		rl_i = 0;
		do
		:: rl_i < NT ->
			rl_n = 0; rl_j = 0;
			do
			:: rl_j < NT ->
				if
				:: rl_key[rl_j] < rl_key[rl_i] || (rl_key[rl_j] == rl_key[rl_i] && rl_j < rl_i) -> rl_n++
				:: else -> skip
				fi;
				rl_j++
			:: else -> break
			od;
			rl_pm[rl_i] = rl_n;
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NT ->
			live[rl_pm[rl_i]] = rl_live[rl_i]; count[rl_pm[rl_i]] = rl_count[rl_i];
			users[rl_pm[rl_i]] = rl_users[rl_i]; iscanon[rl_pm[rl_i]] = rl_iscanon[rl_i];
			entry[rl_pm[rl_i]] = rl_entry[rl_i]; priv[rl_pm[rl_i]] = rl_priv[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM -> RL_MAP(root[rl_i]); RL_MAP(held[rl_i]); RL_MAP(walk[rl_i]); rl_i++
		:: else -> break
		od;
		RL_MAP(root[R2]); RL_MAP(canon);
		rl_i = 0; rl_j = 0; rl_n = 0
	}
}

/*
 * Releasing mmu_lock.  At every quiescent point (no VM operation and no
 * callback in progress) use counts, users lists, roots and the canonical
 * array agree, and no table is leaked.  Descriptors change only under some
 * mmu_lock, so a state becomes quiescent only through an unlock: checking
 * here covers every quiescent state (and keeps spin's invalid-end-state
 * check, which a never claim would turn off).
 */
inline unlock_mmu(ul_vm) {
	mmu_lock[ul_vm] = 0;
	if
	:: QUIESCENT -> assert(ALLTOK && (canon == NONE || live[canon]))
	:: else -> skip
	fi
}

/* pool_alloc_index: the lowest free page (the model's free list), zeroed,
 * use count 0, no users; NONE when the pool is full (-ENOMEM). */
inline alloc(al_t) {
	al_t = 0;
	do
	:: al_t < NT && live[al_t] -> al_t++
	:: else -> break
	od;
	if
	:: al_t < NT ->
		assert(count[al_t] == 0 && users[al_t] == 0 && !entry[al_t] && !iscanon[al_t]);
		live[al_t] = 1
	:: else -> skip
	fi
}

/* table_free_locked + pool_free_index: the page's leaves leave the pool and
 * the rmap (under rmap_lock); it leaves the canonical array if the array
 * still names it (a lookup may have replaced it). */
inline free_table(fr_t) {
	assert(live[fr_t]);				/* freed exactly once */
	assert(count[fr_t] == 0 && users[fr_t] == 0 && ROOTS(fr_t) == 0);
	assert(!WALKED(fr_t));				/* no walk inside it (I5) */
	entry[fr_t] = 0;
	if
	:: canon == fr_t -> canon = NONE
	:: else -> skip
	fi;
	iscanon[fr_t] = 0;
	priv[fr_t] = 0;		/* (C resets it at the next alloc; nothing reads
				 * it in between: a lookup sees count 0 first) */
	live[fr_t] = 0
}

/*
 * Dropping the reference of VM v's root slot s (users bit sb = BIT(s)) to
 * table t once the slot's entry to t is gone
 * (batch_add_put, zap_batch_finish_locked): flush v's vCPUs
 * (tlb->ops->flush_all takes tlb_lock, so it waits for a walk in
 * progress), then table_put_now_locked: pool_user_del, and
 * __atomic_sub_fetch on the use count; the caller that takes it to 0 frees
 * the table (table_free_locked, rmap_lock); then mmu_lock is released.
 *
 * DROP_GUARD(t) and DROP_FIRST(t, v, sb) are the first step, [put] (its guard,
 * its body), drop_rest(t, v) the steps after it ([free-canon]; the seeded
 * bugs reorder them).  In the correct protocol the
 * flush and the put are one step (after the flush v's vCPU can only walk
 * the table v's root entry names now, never t); a non-canonical table at 0
 * is freed in that step too (nothing can find it), a canonical one in a
 * later step (its lookup under rmap_lock may find it at 0 in between).
 */
/* put before flush (seeded bugs): the put, the free at 0, the flush late */
#define PBF_FIRST(t, sb) \
	users[t] = users[t] & ~(sb); \
	count[t]--; \
	last = (count[t] == 0)
inline pbf_rest(d_t, d_v) {
	if
	:: last -> atomic { !rmap_held -> free_table(d_t); last = 0; relabel() }
	:: else -> skip
	fi;
	atomic { walk[d_v] == NONE -> tlb[d_v] = 0; d_t = NONE; unlock_mmu(d_v); relabel() }	/* flush, late */
}
#if defined(BUG_PUT_BEFORE_FLUSH)
#define DROP_GUARD(t) 1
#define DROP_FIRST(t, v, sb) PBF_FIRST(t, sb)
#define drop_rest(d_t, d_v) pbf_rest(d_t, d_v)
#elif defined(BUG_FREE_WITHOUT_COUNT)
#define DROP_GUARD(t) (walk[v] == NONE)
#define DROP_FIRST(t, v, sb) \
	tlb[v] = 0; \
	users[t] = users[t] & ~(sb); \
	count[t]--
inline drop_rest(d_t, d_v) {
	atomic {
		!rmap_held ->
		last = (count[d_t] == 0);			/* a second read */
		if :: last -> free_table(d_t) :: else -> skip fi;
		last = 0; d_t = NONE; unlock_mmu(d_v); relabel()
	}
}
#else
#define DROP_GUARD(t) (walk[v] == NONE && (count[t] > 1 || iscanon[t] || !rmap_held))
#define DROP_FIRST(t, v, sb) \
	tlb[v] = 0;					/* flush ... */ \
	assert(users[t] & (sb)); \
	users[t] = users[t] & ~(sb);			/* ... before put (I2) */ \
	count[t]--; \
	if \
	:: count[t] == 0 && iscanon[t] -> last = 1	/* our decrement's result */ \
	:: count[t] == 0 && !iscanon[t] -> free_table(t); t = NONE; unlock_mmu(v) \
	:: count[t] > 0 -> t = NONE; unlock_mmu(v) \
	fi
inline drop_rest(d_t, d_v) {
	if
	:: last -> atomic { !rmap_held -> free_table(d_t); last = 0; d_t = NONE; unlock_mmu(d_v); relabel() }
	:: else -> skip
	fi
}
#endif

#ifdef BUG_NO_RETRY
#define RETRY_OK 1
#else
#define RETRY_OK (!inprog)	/* notifier_read_retry: no range in progress */
#endif

/*
 * table_is_shared(mmu v, t), under v's mmu_lock: a canonical table is
 * shared; one with use count 1 is not; else the cache (priv[t] == v + 1:
 * private_mmu is v and private_gen v's clone_gen) says "not shared"; else
 * the pmd-rmap walk up to the roots: not shared when it finds at least one
 * root and every root it finds is one of v's, and that answer is cached
 * (CACHE, in the step that acts on it).  The walk reads the users lists
 * under table locks while v holds mmu_lock: no other VM adds a link to a
 * table only v reaches (a clone of v waits for v's mmu_lock), so the walk
 * is one read.
 */
#ifdef BUG_ROOT_NOT_OURS
#define WALK_SHARED(t, v) (users[t] == 0)	/* roots counted, not compared */
#else
#define WALK_SHARED(t, v) (users[t] == 0 || (users[t] & ~SLOTS(v)) != 0)
#endif
#define SHARED(t, v) (iscanon[t] || (count[t] > 1 && priv[t] != (v) + 1 && WALK_SHARED(t, v)))
/* table_is_ours_alone: at least one root found and every one v's, or the
 * cache; whatever the use count (the index hit's check). */
#define OURS_ALONE(t, v) (!iscanon[t] && (priv[t] == (v) + 1 || !WALK_SHARED(t, v)))
#define CACHE_ALONE(t, v) if :: !iscanon[t] -> priv[t] = (v) + 1 :: else -> skip fi
#define CACHE(t, v) \
	if \
	:: !iscanon[t] && count[t] > 1 && priv[t] != (v) + 1 -> priv[t] = (v) + 1 \
	:: else -> skip \
	fi

/* clone_share_locked bumps the parent u's clone_gen under its mmu_lock
 * before it links the child: every "u alone" answer cached so far goes
 * stale (the tables whose priv is u + 1 lose it; a generation never comes
 * back, so the cache compares equal again only once set anew). */
#define UNPRIV(t, u) if :: priv[t] == (u) + 1 -> priv[t] = 0 :: else -> skip fi
#if defined(BUG_NO_CLONE_GEN)
#define CLONE_GEN(u) skip
#elif NT == 4
#define CLONE_GEN(u) UNPRIV(0, u); UNPRIV(1, u); UNPRIV(2, u); UNPRIV(3, u)
#else
#define CLONE_GEN(u) UNPRIV(0, u); UNPRIV(1, u); UNPRIV(2, u)
#endif

/* ---- one VM: shadow MMU operations -------------------------------------- */

/* [clone] from parent u's root slot ps (under u's mmu_lock) */
#define CLONE_OK(u) (!stop && !(sub & BIT(v)) && root[(u) % NVM] != NONE && mmu_lock[(u) % NVM] == 0)
inline clone_from(ps, u) {
	CLONE_GEN(u);
	c = root[ps];
	assert(live[c] && count[c] > 0);	/* under a held reference */
	users[c] = users[c] | BIT(v); count[c]++; root[v] = c;
	sub = sub | BIT(v);
	c = NONE; unlock_mmu(u); relabel()
}

/* [fault] through root slot s of VM v */
#define FAULT_OK(s) (!stop && root[s] != NONE && !entry[root[s]] && \
		     (iscanon[root[s]] || !SHARED(root[s], v)) && \
		     mmu_lock[v] == 0 && !rmap_held && RETRY_OK)
inline fault_in(s) {
	CACHE(root[s], v);
	/* I3: no other VM's root reaches the table we write */
	assert(live[root[s]] && (iscanon[root[s]] || (users[root[s]] & ~SLOTS(v)) == 0));
	entry[root[s]] = 1;
	unlock_mmu(v)
}

/* [privatize] the table below root slot s of VM v */
#define PRIV_OK(s) (!stop && root[s] != NONE && (count[root[s]] > 1 || iscanon[root[s]]) && \
		    mmu_lock[v] == 0 && !rmap_held)
inline privatize(s) {
	alloc(c);
	if
	:: c != NONE ->
		mmu_lock[v] = v + 1;
		held[v] = root[s]; sb = BIT(s);
		entry[c] = entry[held[v]];
		users[c] = BIT(s); count[c] = 1;
		root[s] = c
	:: else -> unlock_mmu(v)		/* pool full: -ENOMEM */
	fi;
	c = NONE; relabel()
}

/* [link-own] the hash hint c, if table_is_ours_alone lets VM 0 link it.
 * The hint may name any live table, as the C hint may (a bucket keeps the
 * page it last named, whoever has it now). */
#ifdef BUG_LINK_COUNT1
#define LINK_CHECK(t) (!SHARED(t, 0))
#define LINK_CACHE(t) CACHE(t, 0)
#else
#define LINK_CHECK(t) OURS_ALONE(t, 0)
#define LINK_CACHE(t) CACHE_ALONE(t, 0)
#endif
#define LINKABLE(t) (live[t] && count[t] > 0 && !iscanon[t] && LINK_CHECK(t))
#if NT == 4
#define ANY_LINKABLE (LINKABLE(0) || LINKABLE(1) || LINKABLE(2) || LINKABLE(3))
#else
#define ANY_LINKABLE (LINKABLE(0) || LINKABLE(1) || LINKABLE(2))
#endif
inline link_own(s) {
	if
	:: LINKABLE(0) -> c = 0
	:: LINKABLE(1) -> c = 1
	:: LINKABLE(2) -> c = 2
#if NT == 4
	:: LINKABLE(3) -> c = 3
#endif
	fi;
	LINK_CACHE(c);				/* table_hash_find_locked's answer */
	assert((users[c] & ~SLOTS(0)) == 0);	/* only our roots reach what we link */
	users[c] = users[c] | BIT(s); count[c]++; root[s] = c;
	if
	:: !SHARED(c, 0) -> CACHE(c, 0)		/* child_reuse_locked's */
	:: else -> skip
	fi;
	c = NONE; unlock_mmu(0); relabel()
}


proctype vm(byte v)
{
	byte c = NONE;		/* a table in the step at hand */
	bool last = 0;		/* our decrement took held[v] to 0 */
	byte sb = 0;		/* the users bit of the root slot that drops held[v] */

	/*
	 * Taking mmu_lock is merged with the steps after it up to the first
	 * one another process can tell apart, and releasing it with the step
	 * before (acquire moves right, release moves left).  Steps that take
	 * rmap_lock wait while it is held across a wait (!rmap_held).
	 */
end_idle:
	do
	/* [create] shadow_mmu_create, mmu_add_slot (notifier_subscribe), and
	 * the first root_create_locked / child_get_locked: a private table. */
	:: atomic {
		!stop && !(sub & BIT(v)) ->
		alloc(c);
		if
		:: c != NONE ->
			count[c] = 1; users[c] = BIT(v); root[v] = c;
			sub = sub | BIT(v)
		:: else -> skip				/* pool full */
		fi;
		c = NONE; unlock_mmu(v); relabel()
	   }

	/* [clone] share, fork-style: shadow_mmu_clone from parent u (either
	 * other VM) under u's mmu_lock only: clone_share_locked bumps u's
	 * clone_gen (CLONE_GEN), then pool_user_add (link, then count) on the
	 * table below u's root, then the child's root entry (I2).  VM 0 as the
	 * parent gives the child the table of either of its roots (the child
	 * has one root slot).  The child subscribed first (mmu_add_slot); the
	 * model subscribes it here, later, which can only give it fewer
	 * callbacks.  (The clone's flush of the parent's vCPUs, for write
	 * protection, is left out: fewer flushes only make the model harder to
	 * pass.) */
	:: atomic {
		CLONE_OK(v + 1) ->
		clone_from((v + 1) % NVM, (v + 1) % NVM)
	   }
	:: atomic {
		CLONE_OK(v + 2) ->
		clone_from((v + 2) % NVM, (v + 2) % NVM)
	   }
	:: atomic {
		v != 0 && !stop && !(sub & BIT(v)) && root[R2] != NONE && mmu_lock[0] == 0 ->
		clone_from(R2, 0)
	   }

#ifndef ROOT2
	/* [attach] share, segment-style: child_get_locked -> canon_get_locked
	 * under rmap_lock: the run's canonical table with inc-not-zero, else a
	 * new one, made the array's; then pool_user_link and our entry (I2). */
	:: atomic {
		!stop && !(sub & BIT(v)) && !rmap_held ->
		c = canon;
		if
#ifdef BUG_CANON_INC
		:: c != NONE -> count[c]++
#else
		:: c != NONE && count[c] > 0 -> count[c]++
#endif
		:: else ->
			alloc(c);
			if
			:: c != NONE -> count[c] = 1; iscanon[c] = 1; canon = c
			:: else -> skip			/* pool full */
			fi
		fi;
		if
		:: c != NONE -> users[c] = users[c] | BIT(v); root[v] = c; sub = sub | BIT(v)
		:: else -> skip
		fi;
		c = NONE; unlock_mmu(v); relabel()
	   }
#endif

#ifdef BUG_CANON_DEC
	/* [mismatch-inc], [mismatch-dec] canon_get_locked (before 301e13e) when
	 * the canonical table maps the run at another guest-physical address:
	 * inc-not-zero succeeds, then __atomic_fetch_sub(&sp->use_count, 1)
	 * with its result ignored, still under rmap_lock (puts do not take
	 * it); -ENOENT. */
	:: atomic {
		!stop && !(sub & BIT(v)) && !rmap_held && canon != NONE && count[canon] > 0 ->
		mmu_lock[v] = v + 1; rmap_held = 1;
		held[v] = canon; count[held[v]]++; relabel()
	   }
		atomic { count[held[v]]--; rmap_held = 0; held[v] = NONE; unlock_mmu(v); relabel() }
#endif

	/* [fault] shadow_mmu_fault.  notifier_read_begin and get_page (no lock),
	 * then under mmu_lock notifier_read_retry, and install_locked writes
	 * the leaf (and its rmap entry) under rmap_lock, in the table below
	 * root slot s of ours if only our roots reach it (table_is_shared says
	 * no, I3: then the answer is cached) or in place in a canonical one.  A
	 * shared table is privatized first (the next operation). */
	:: atomic { FAULT_OK(v) -> fault_in(v) }
	:: atomic { v == 0 && FAULT_OK(R2) -> fault_in(R2) }

	/* [privatize] table_copy_locked (from child_get_locked for a shared
	 * table, from zap_local_locked also for a canonical one): allocate,
	 * copy the leaf and register it in the rmap under rmap_lock,
	 * pool_user_add the copy, point root slot s's entry at it (I2);
	 * batch_add_put the old table, dropped after the flush. */
	:: atomic {
		PRIV_OK(v) || (v == 0 && PRIV_OK(R2)) ->
		if
		:: PRIV_OK(v) -> privatize(v)
		:: v == 0 && PRIV_OK(R2) -> privatize(R2)
		fi
	   }
		if
		:: held[v] != NONE ->
			atomic { DROP_GUARD(held[v]) -> DROP_FIRST(held[v], v, sb); sb = 0; relabel() }	/* [put] */
			drop_rest(held[v], v)
		:: else -> skip
		fi

	/* [link-own] VM 0 links its own table from its other root:
	 * child_get_locked -> table_hash_find_locked, a hit (a hint: any live
	 * table with use count > 0, not canonical) that table_is_shared says
	 * only our roots reach (count 1, or the cache, or the walk), then
	 * child_link_shared_locked: pool_user_add and the entry (I2); its
	 * child_reuse_locked asks table_is_shared again (now the walk, with
	 * the new count) and caches a "not shared".  A table that is shared by
	 * then is copied by [privatize], as child_reuse_locked would. */
#ifdef ROOT2
	:: atomic {
		v == 0 && !stop && (sub & 1) && mmu_lock[0] == 0 && root[0] == NONE && root[R2] != NONE &&
		ANY_LINKABLE ->
		link_own(0)
	   }
	:: atomic {
		v == 0 && !stop && (sub & 1) && mmu_lock[0] == 0 && root[R2] == NONE && root[0] != NONE &&
		ANY_LINKABLE ->
		link_own(R2)
	   }
#endif

	/* [teardown] shadow_mmu_destroy: root_evict_locked (our entry goes,
	 * batch_add_put) and zap_batch_finish_locked under our mmu_lock: the
	 * eviction is one step with [put] (only our own vCPU could tell them
	 * apart, and the flush waits for its walk either way).  For VM 0 this
	 * evicts its first root; destroy evicts the roots one by one, as
	 * [evict-root] and [teardown] do. */
	:: atomic {
		!stop && root[v] != NONE && mmu_lock[v] == 0 && DROP_GUARD(root[v]) ->
		mmu_lock[v] = v + 1;
		held[v] = root[v];
		root[v] = NONE;
		DROP_FIRST(held[v], v, BIT(v));
		relabel()
	   }
		drop_rest(held[v], v)

	/* [evict-root] VM 0 evicts its second root: root_slot_get_locked or
	 * mmu_reclaim -> root_evict_locked (the entry goes, batch_add_put),
	 * zap_batch_finish_locked: flush our vCPUs, then put (a table another
	 * root of ours links survives: count > 0). */
#if defined(ROOT2) && defined(BUG_EVICT_PUT_EARLY)
	:: atomic {
		v == 0 && !stop && root[R2] != NONE && mmu_lock[0] == 0 ->
		mmu_lock[0] = 1;
		held[0] = root[R2];
		root[R2] = NONE;
		PBF_FIRST(held[0], BIT(R2));
		relabel()
	   }
		pbf_rest(held[0], 0)
#elif defined(ROOT2)
	:: atomic {
		v == 0 && !stop && root[R2] != NONE && mmu_lock[0] == 0 && DROP_GUARD(root[R2]) ->
		mmu_lock[0] = 1;
		held[0] = root[R2];
		root[R2] = NONE;
		DROP_FIRST(held[0], 0, BIT(R2));
		relabel()
	   }
		drop_rest(held[0], 0)
#endif

	/* [unsubscribe] then notifier_unsubscribe: waits for a grace period
	 * and drains the ranges that counted us in */
	:: atomic {
		!stop && root[v] == NONE && (v != 0 || root[R2] == NONE) && (sub & BIT(v)) &&
		!(snap & BIT(v)) ->
		sub = sub & ~BIT(v)
	   }
	od
}

/* ---- the vCPU of VM v: shadow_vcpu_access (a TLB miss) ------------------- */
proctype vcpu(byte v)
{
end_idle:
	do
	/* [walk-root] take tlb_lock, read our root's entry (VM 0's vCPU runs
	 * on either of its roots: a CR3 load may come between any two walks) ... */
	:: atomic {
		!stop && walk[v] == NONE && !tlb[v] && (root[v] != NONE || (v == 0 && root[R2] != NONE)) ->
		if
		:: root[v] != NONE -> walk[v] = root[v]
		:: v == 0 && root[R2] != NONE -> walk[v] = root[R2]
		fi
	   }
	/* [walk-leaf] ... then, another step (the table may change or be freed
	 * in between), the leaf table's entry: fill the TLB; release tlb_lock */
		atomic {
			assert(live[walk[v]]);			/* no walk through a freed table */
			tlb[v] = entry[walk[v]];		/* (0: #PF, the VM's fault) */
			walk[v] = NONE
		}
	od
}

/* ---- the swapper: shadow_store_evict, forever --------------------------- */
/*
 * zap_pages for VM v, as far as it can go in one step: under v's mmu_lock
 * and rmap_lock, zap_slot_range_locked clears every leaf in the pool that
 * maps the page (pool-wide rmap), whichever VM installed it, and
 * batch_flush_remote_locked -> pmd_rmap_flush_up collects every VM on the
 * users list of each cleared table (v itself only if the table is shared:
 * else its own batch flushes it).  Those are flushed (mmu_flush_remote)
 * under rmap_lock, each waiting for a walk in progress; then
 * zap_batch_finish_locked flushes v's own vCPUs if it cleared something,
 * mmu_lock is released and the callback returns.
 */
#ifdef BUG_REMOTE_MMU_LOCK
#define REMOTE_LOCK_OK (LOW(us) == v || mmu_lock[LOW(us)] == 0)
#else
#define REMOTE_LOCK_OK 1
#endif
#ifdef BUG_SKIP_NOTIFY
#define PMD_RMAP(t) 0
#else
#define PMD_RMAP(t) (entry[t] -> ((count[t] > 1 || iscanon[t]) -> VMS(users[t]) : (VMS(users[t]) & ~BIT(v))) : 0)
#endif
#if NT == 4
#define CLEAR_ALL \
	us = PMD_RMAP(0) | PMD_RMAP(1) | PMD_RMAP(2) | PMD_RMAP(3); \
	zapped = entry[0] || entry[1] || entry[2] || entry[3]; \
	entry[0] = 0; entry[1] = 0; entry[2] = 0; entry[3] = 0
#else
#define CLEAR_ALL \
	us = PMD_RMAP(0) | PMD_RMAP(1) | PMD_RMAP(2); \
	zapped = entry[0] || entry[1] || entry[2]; \
	entry[0] = 0; entry[1] = 0; entry[2] = 0
#endif

/* [range-end] invalidate_range_start has returned: no table and no TLB may
 * reach the page.  The eviction saves and poisons it; invalidate_range_end:
 * seq advances, the range ends, its held subscriptions drain.  (A later
 * fault's get_page restores it.) */
#define RANGE_DONE \
	assert(!tlb[0] && !tlb[1] && !tlb[2] && NOLEAF); \
	inprog = 0; snap = 0; v = 0

/* the next callback: any VM the range counted in and has not called yet (the
 * library calls them in list order, i.e. subscription order, which can be
 * any order of the VMs); NVM when none is left */
#define PICK \
	if \
	:: left & 1 -> v = 0 \
	:: left & 2 -> v = 1 \
	:: left & 4 -> v = 2 \
	:: left == 0 -> v = NVM \
	fi; \
	left = left & ~(v < NVM -> BIT(v) : 0)

proctype swapper()
{
	byte v = 0, us = 0, left = 0;
	bool zapped = 0;

end_idle:
	do
	/* [range-start] notifier_invalidate_range_start: nt_seq_range_begin (faults retry
	 * from now on) and the generation (the subscribers it counts in) */
	:: atomic {
		!stop && !inprog ->
		inprog = 1; snap = sub; left = snap; PICK;
		if :: v == NVM -> RANGE_DONE; goto end_idle :: else -> skip fi
	   }
		do	/* (not an end state: the range is in progress) */
		/* [zap] the callback for VM v: clear and collect (see above) ... */
		:: atomic {
			mmu_lock[v] == 0 && !rmap_held ->
			CLEAR_ALL;
			if
			:: us == 0 && (!zapped || walk[v] == NONE) ->	/* nothing to wait for */
				tlb[v] = tlb[v] && !zapped;
				zapped = 0; PICK;
				if :: v == NVM -> RANGE_DONE; goto end_idle :: else -> skip fi
			:: else ->
				mmu_lock[v] = NVM + 1; rmap_held = (us != 0)
			fi
		   }
		/* [flush-remote] ... the remote flushes, under rmap_lock ... */
		:: atomic {
			mmu_lock[v] == NVM + 1 && us != 0 && walk[LOW(us)] == NONE && REMOTE_LOCK_OK ->
			tlb[LOW(us)] = 0; us = us & ~BIT(LOW(us));
			rmap_held = (us != 0)
		   }
		/* [flush-own] ... our own vCPUs, unlock, the callback returns */
		:: atomic {
			mmu_lock[v] == NVM + 1 && us == 0 && (!zapped || walk[v] == NONE) ->
			tlb[v] = tlb[v] && !zapped;
			zapped = 0; unlock_mmu(v); PICK;
			if :: v == NVM -> RANGE_DONE; goto end_idle :: else -> skip fi
		   }
		od
	od
}

/*
 * Deadlock.  Every process loops forever, so a set of processes that wait
 * for each other while the others go on is no global deadlock, which is
 * all that spin's invalid-end-state check sees.  So at any point init may
 * set stop: from then on no operation (and no walk, no range) starts, and
 * those in progress must complete.  A state where one cannot (some process
 * blocked outside its idle point, end_idle) is an invalid end state.
 */
init
{
	atomic {
#ifdef ROOT2
		run vm(0); run vm(1);			/* VM 2 stays empty */
		run vcpu(0); run vcpu(1);
#else
		run vm(0); run vm(1); run vm(2);
		run vcpu(0); run vcpu(1); run vcpu(2);
#endif
		run swapper()
	}
	stop = 1
}
