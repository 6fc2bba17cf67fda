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
 * does; pmd_rmap_flush_up walks the users lists level by level).
 *
 * Processes, all looping forever (no budgets: every interleaving of any
 * number of operations is explored; the state space is finite):
 *   vm(v)    the shadow MMU operations of VM v, each under its mmu_lock:
 *            create, clone, attach a segment (canonical table), fault,
 *            privatize, teardown, unsubscribe;
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
 */

#ifndef NT
#define NT 4		/* leaf tables in the pool (3 or 4) */
#endif
#define NVM 3		/* VMs, one vCPU each; the macros below assume 3 */

#define NONE NT		/* no table */
#define BIT(v) (1 << (v))
#define LOW(s) (((s) & 1) -> 0 : (((s) & 2) -> 1 : 2))	/* lowest VM of a non-empty set */

/* ---- the pool: descriptors (struct shadow_page) and entries ---------- */
bool live[NT];		/* allocated (sp->level != 0) */
byte count[NT];		/* sp->use_count (atomic) */
byte users[NT];		/* sp->users, the pmd-rmap, as a set of VMs (table lock) */
bool iscanon[NT];	/* sp->canon */
bool entry[NT];		/* the leaf that maps the page is present; every
			 * present leaf is in the pool-wide rmap (I4) */
byte canon = NONE;	/* pool_obj.canon[key] of the segment run (rmap_lock) */
bool rmap_held;		/* the page's stripe ("rmap_lock") held across a wait */
bool stop;		/* no operation starts any more (the deadlock check) */

/* ---- per VM ----------------------------------------------------------- */
byte root[NVM] = NONE;	/* the VM's root entry: a leaf table, or NONE */
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
#define POP(x) (((x) & 1) + (((x) >> 1) & 1) + (((x) >> 2) & 1))
/* the VMs whose root entry points at table t */
#define ROOTS(t) ((root[0] == (t)) + 2 * (root[1] == (t)) + 4 * (root[2] == (t)))
#define WALKED(t) (walk[0] == (t) || walk[1] == (t) || walk[2] == (t))
/* table t is consistent (I1): free and unreferenced, or allocated with the
 * users list exactly the VMs that point at it and the use count its size,
 * at least 1 (no leak), canonical exactly when the array names it */
#define TOK(t) ((!live[t] && count[t] == 0 && users[t] == 0 && !iscanon[t] && \
		 !entry[t] && ROOTS(t) == 0) || \
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
 * (root[0..2], then held[0..2], walk[0..2], canon), free pages last.  One
 * state stands for all its renamings; nothing is lost.  hidden variables
 * are not part of the state.
 */
hidden byte rl_i, rl_j, rl_n;
hidden byte rl_key[NT], rl_pm[NT], rl_count[NT], rl_users[NT];
hidden byte rl_live[NT], rl_iscanon[NT], rl_entry[NT];
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
			rl_entry[rl_i] = entry[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM ->
			RL_KEY(root[rl_i], rl_i); RL_KEY(held[rl_i], NVM + rl_i);
			RL_KEY(walk[rl_i], 2 * NVM + rl_i);
			rl_i++
		:: else -> break
		od;
		RL_KEY(canon, 3 * NVM);
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
			entry[rl_pm[rl_i]] = rl_entry[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM -> RL_MAP(root[rl_i]); RL_MAP(held[rl_i]); RL_MAP(walk[rl_i]); rl_i++
		:: else -> break
		od;
		RL_MAP(canon);
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
	live[fr_t] = 0
}

/*
 * Dropping VM v's reference to table t once v's entry to t is gone
 * (batch_add_put, zap_batch_finish_locked): flush v's vCPUs
 * (tlb->ops->flush_all takes tlb_lock, so it waits for a walk in
 * progress), then table_put_now_locked: pool_user_del, and
 * __atomic_sub_fetch on the use count; the caller that takes it to 0 frees
 * the table (table_free_locked, rmap_lock); then mmu_lock is released.
 *
 * DROP_GUARD(t) and DROP_FIRST(t, v) are the first step, [put] (its guard,
 * its body), drop_rest(t, v) the steps after it ([free-canon]; the seeded
 * bugs reorder them).  In the correct protocol the
 * flush and the put are one step (after the flush v's vCPU can only walk
 * the table v's root entry names now, never t); a non-canonical table at 0
 * is freed in that step too (nothing can find it), a canonical one in a
 * later step (its lookup under rmap_lock may find it at 0 in between).
 */
#if defined(BUG_PUT_BEFORE_FLUSH)
#define DROP_GUARD(t) 1
#define DROP_FIRST(t, v) \
	users[t] = users[t] & ~BIT(v); \
	count[t]--; \
	last = (count[t] == 0)
inline drop_rest(d_t, d_v) {
	if
	:: last -> atomic { !rmap_held -> free_table(d_t); last = 0; relabel() }
	:: else -> skip
	fi;
	atomic { walk[d_v] == NONE -> tlb[d_v] = 0; d_t = NONE; unlock_mmu(d_v); relabel() }	/* flush, late */
}
#elif defined(BUG_FREE_WITHOUT_COUNT)
#define DROP_GUARD(t) (walk[v] == NONE)
#define DROP_FIRST(t, v) \
	tlb[v] = 0; \
	users[t] = users[t] & ~BIT(v); \
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
#define DROP_FIRST(t, v) \
	tlb[v] = 0;					/* flush ... */ \
	assert(users[t] & BIT(v)); \
	users[t] = users[t] & ~BIT(v);			/* ... before put (I2) */ \
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

/* ---- one VM: shadow MMU operations -------------------------------------- */

proctype vm(byte v)
{
	byte c = NONE;		/* a table in the step at hand */
	bool last = 0;		/* our decrement took held[v] to 0 */

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
	 * other VM) under u's mmu_lock only: pool_user_add (link, then count)
	 * on the table below u's root, then the child's root entry (I2).  The
	 * child subscribed first (mmu_add_slot); the model subscribes it here,
	 * later, which can only give it fewer callbacks.  (The clone's flush of
	 * the parent's vCPUs, for write protection, is left out: fewer flushes
	 * only make the model harder to pass.) */
	:: atomic {
		!stop && !(sub & BIT(v)) && root[(v + 1) % NVM] != NONE && mmu_lock[(v + 1) % NVM] == 0 ->
		c = root[(v + 1) % NVM];
		assert(live[c] && count[c] > 0);	/* under a held reference */
		users[c] = users[c] | BIT(v); count[c]++; root[v] = c;
		sub = sub | BIT(v);
		c = NONE; unlock_mmu((v + 1) % NVM); relabel()
	   }
	:: atomic {
		!stop && !(sub & BIT(v)) && root[(v + 2) % NVM] != NONE && mmu_lock[(v + 2) % NVM] == 0 ->
		c = root[(v + 2) % NVM];
		assert(live[c] && count[c] > 0);
		users[c] = users[c] | BIT(v); count[c]++; root[v] = c;
		sub = sub | BIT(v);
		c = NONE; unlock_mmu((v + 2) % NVM); relabel()
	   }

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
	 * the leaf (and its rmap entry) under rmap_lock, in a table only we
	 * reach (use count 1; I3) or in place in a canonical one.  A shared
	 * table is privatized first (the next operation). */
	:: atomic {
		!stop && root[v] != NONE && !entry[root[v]] && (count[root[v]] == 1 || iscanon[root[v]]) &&
		mmu_lock[v] == 0 && !rmap_held && RETRY_OK ->
		assert(live[root[v]] && (iscanon[root[v]] || users[root[v]] == BIT(v)));
		entry[root[v]] = 1;
		unlock_mmu(v)
	   }

	/* [privatize] table_copy_locked (from child_get_locked for a shared
	 * table, from zap_local_locked also for a canonical one): allocate,
	 * copy the leaf and register it in the rmap under rmap_lock,
	 * pool_user_add the copy, point our entry at it (I2); batch_add_put the
	 * old table, dropped after the flush. */
	:: atomic {
		!stop && root[v] != NONE && (count[root[v]] > 1 || iscanon[root[v]]) &&
		mmu_lock[v] == 0 && !rmap_held ->
		alloc(c);
		if
		:: c != NONE ->
			mmu_lock[v] = v + 1;
			held[v] = root[v];
			entry[c] = entry[held[v]];
			users[c] = BIT(v); count[c] = 1;
			root[v] = c
		:: else -> unlock_mmu(v)		/* pool full: -ENOMEM */
		fi;
		c = NONE; relabel()
	   }
		if
		:: held[v] != NONE ->
			atomic { DROP_GUARD(held[v]) -> DROP_FIRST(held[v], v); relabel() }	/* [put] */
			drop_rest(held[v], v)
		:: else -> skip
		fi

	/* [teardown] shadow_mmu_destroy: root_evict_locked (our entry goes,
	 * batch_add_put) and zap_batch_finish_locked under our mmu_lock: the
	 * eviction is one step with [put] (only our own vCPU could tell them
	 * apart, and the flush waits for its walk either way). */
	:: atomic {
		!stop && root[v] != NONE && mmu_lock[v] == 0 && DROP_GUARD(root[v]) ->
		mmu_lock[v] = v + 1;
		held[v] = root[v];
		root[v] = NONE;
		DROP_FIRST(held[v], v);
		relabel()
	   }
		drop_rest(held[v], v)

	/* [unsubscribe] then notifier_unsubscribe: waits for a grace period
	 * and drains the ranges that counted us in */
	:: atomic { !stop && root[v] == NONE && (sub & BIT(v)) && !(snap & BIT(v)) -> sub = sub & ~BIT(v) }
	od
}

/* ---- the vCPU of VM v: shadow_vcpu_access (a TLB miss) ------------------- */
proctype vcpu(byte v)
{
end_idle:
	do
	/* [walk-root] take tlb_lock, read our root's entry ... */
	:: atomic { !stop && walk[v] == NONE && !tlb[v] && root[v] != NONE -> walk[v] = root[v] }
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
#define PMD_RMAP(t) (entry[t] -> ((count[t] > 1 || iscanon[t]) -> users[t] : (users[t] & ~BIT(v))) : 0)
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
		run vm(0); run vm(1); run vm(2);
		run vcpu(0); run vcpu(1); run vcpu(2);
		run swapper()
	}
	stop = 1
}
