/*
 * canon_pd.pml: Promela model of umbra's canonical level-2 table of a
 * segment's GiB (docs/sharing.md, "A canonical level-2 table per GiB"):
 * VMs attach the canonical level-2 table (PD) with inc-not-zero, any user
 * links the canonical leaf table (PT) of a run into its empty entry under
 * the run's stripe, a VM leaves by zapping its own entry to the PD (flush,
 * then put), the last put frees the PD, which puts its PT; a VM with a PD
 * of its own linking the canonical PT exchanges it for the canonical PD
 * (pd_exchange_locked, canon_adopt_locked); the swapout clears the leaf in
 * the PT and flushes every VM found by walking up PT users -> PD -> PD
 * users (the VMs' roots); vCPU walks go root -> PD -> PT -> leaf in three
 * steps.
 *
 * tests/model/sharing.pml models the one-level protocol (clone, canonical
 * leaf table, privatize, swapout, teardown) with the same abstractions;
 * this file adds the level above it.  docs/model.md maps every step to the
 * C code and argues the abstractions; scripts/model-check verifies both
 * models exhaustively with spin and checks that spin finds each seeded bug.
 *
 * What is modelled.  A pool of NPD level-2 tables (PDs) and NPT level-1
 * tables (PTs).  A PD has one entry (entry i = 0 of the GiB: its run's
 * stripe is also the stripe of the GiB's array entry) that links a PT or
 * nothing; a PT has the one leaf that maps (or not) the one backing page.
 * Each VM's root (never shared) has one entry that points at a PD or at
 * nothing.  Every PT is a canonical one (the run's); a PD is the GiB's
 * canonical one or a VM's own (private).  A PT's users are PDs (one link
 * per PD entry); a PD's users are VMs (their roots).  A PT whose count
 * reaches 0 (put by a PD's free) is freed in the same step: nothing but
 * the array can find it, and a lookup that finds it at 0 makes a new one
 * either way (docs/model.md argues it); so at most one PT is live at a
 * time and NPT = 2 leaves room for a seeded bug's leaked one.
 *
 * Processes, all looping forever:
 *   vm(v)    the shadow MMU operations of VM v under its mmu_lock: attach
 *            the canonical PD, build a PD of its own, link the canonical PT
 *            into an empty PD entry, fault (install the leaf), exchange its
 *            own PD for the canonical one, leave (zap its root entry: flush,
 *            put; the last put frees), unsubscribe;
 *   vcpu(v)  the software vCPU: a one-entry TLB and a walk in three steps
 *            (root entry, PD entry, leaf) that a flush waits for;
 *   swapper  shadow_store_evict, again and again.
 *
 * Locks, properties and the deadlock check are those of sharing.pml:
 * rmap_held is the run's stripe held across the remote flushes; at every
 * quiescent point use count == size of the users list == the entries that
 * point at the table, and no leak; no walk in a freed table, no table freed
 * under a walk, none freed twice; after invalidate_range_start returns, no
 * leaf and no TLB maps the page; no deadlock (init may set stop).
 *
 * Seeded bugs (spin must find each; scripts/model-check checks it):
 *   BUG_LINK_NO_RECHECK   a user links the canonical PT into the canonical
 *                         PD's entry having seen it empty before taking the
 *                         stripe, and does not look again under it: two
 *                         users both link (PT count 2, one entry).
 *   BUG_FLUSH_STOPS_AT_PD the swapout's pmd-rmap walk stops at the PT's
 *                         users (PDs, not roots) and does not go up to the
 *                         PDs' users: another VM's vCPU keeps the page.
 *   BUG_PD_FREE_NO_PUT    table_free_locked of a PD clears its entry but
 *                         does not put the PT it linked: the PT leaks.
 *   BUG_XCHG_PUT_BEFORE_FLUSH  the exchange drops (and frees) the VM's own
 *                         PD before flushing the VM's vCPUs: the PD is
 *                         freed under the vCPU's walk.
 *   BUG_PD_INC            canon_get_locked (level 2) raises the count of
 *                         the canonical PD even at 0: a PD being freed is
 *                         revived, then freed twice.
 */

#define NPD 3		/* level-2 tables in the pool */
#define NPT 2		/* level-1 tables in the pool */
#define NVM 3		/* VMs, one vCPU each; the macros below assume 3 */

#define NONE 7		/* no table (in either pool) */
#define BIT(v) (1 << (v))
#define LOW(s) (((s) & 1) -> 0 : (((s) & 2) -> 1 : 2))	/* lowest of a non-empty set */
#define POP(x) (((x) & 1) + (((x) >> 1) & 1) + (((x) >> 2) & 1))

/* ---- the pool ----------------------------------------------------------- */
bool pd_live[NPD];	/* allocated */
byte pd_count[NPD];	/* use_count */
byte pd_users[NPD];	/* users: a set of VMs (root entries) */
bool pd_canon[NPD];	/* sp->canon */
byte pd_ent[NPD] = NONE;	/* entry 0: a PT, or NONE */
bool pt_live[NPT];
byte pt_count[NPT];
byte pt_users[NPT];	/* users: a set of PDs (their entry 0) */
bool pt_canon[NPT];
bool pt_leaf[NPT];	/* the leaf that maps the page (and its rmap entry) */
byte canon_pd = NONE;	/* the array entry of the GiB (level-2 key) */
byte canon_pt = NONE;	/* the array entry of the run (level-1 key) */
bool rmap_held;		/* the run's stripe held across a wait */
bool stop;

/* ---- per VM ----------------------------------------------------------- */
byte root[NVM] = NONE;	/* the VM's root entry: a PD, or NONE */
byte mmu_lock[NVM];	/* 0 free, else holder + 1 */
bool tlb[NVM];
byte wpd[NVM] = NONE;	/* the PD the vCPU's walk is reading, or NONE */
byte wpt[NVM] = NONE;	/* the PT the vCPU's walk is reading, or NONE */
byte held[NVM] = NONE;	/* the PD VM v's operation is dropping */
byte xc[NVM] = NONE;	/* the canonical PD of VM v's exchange (or attach) in
			 * progress: a local of vm(v), global for relabel */

/* ---- the notifier ------------------------------------------------------ */
bool inprog;
byte sub;
byte snap;

/* ---- invariants ------------------------------------------------------- */
#define ROOTS(p) ((root[0] == (p)) + 2 * (root[1] == (p)) + 4 * (root[2] == (p)))
/* the live PDs whose entry links PT t */
#define PDREFS(t) ((pd_live[0] && pd_ent[0] == (t)) + 2 * (pd_live[1] && pd_ent[1] == (t)) + \
		   4 * (pd_live[2] && pd_ent[2] == (t)))
#define WALK_PD(p) (wpd[0] == (p) || wpd[1] == (p) || wpd[2] == (p))
#define WALK_PT(t) (wpt[0] == (t) || wpt[1] == (t) || wpt[2] == (t))
#define NOWALK(v) (wpd[v] == NONE && wpt[v] == NONE)
#define PD_OK(p) ((!pd_live[p] && pd_count[p] == 0 && pd_users[p] == 0 && !pd_canon[p] && \
		   pd_ent[p] == NONE && ROOTS(p) == 0) || \
		  (pd_live[p] && pd_users[p] == ROOTS(p) && pd_count[p] == POP(pd_users[p]) && \
		   pd_count[p] > 0 && pd_canon[p] == (canon_pd == (p)) && \
		   (pd_ent[p] == NONE || pt_live[pd_ent[p]])))
#define PT_OK(t) ((!pt_live[t] && pt_count[t] == 0 && pt_users[t] == 0 && !pt_canon[t] && \
		   !pt_leaf[t] && PDREFS(t) == 0) || \
		  (pt_live[t] && pt_users[t] == PDREFS(t) && pt_count[t] == POP(pt_users[t]) && \
		   pt_count[t] > 0 && pt_canon[t] == (canon_pt == (t))))
#define ALLOK (PD_OK(0) && PD_OK(1) && PD_OK(2) && PT_OK(0) && PT_OK(1))
#define NOLEAF (!pt_leaf[0] && !pt_leaf[1])
#define QUIESCENT (mmu_lock[0] == 0 && mmu_lock[1] == 0 && mmu_lock[2] == 0)

/*
 * Symmetry reduction over table indices, as in sharing.pml: every
 * transition and property is the same under a renaming of the pool's pages
 * of one level, so after each VM step the PDs are renamed into a canonical
 * order by their first reference (root[0..2], held[0..2], xc[0..2],
 * wpd[0..2], canon_pd), then the PTs by theirs (the PDs' entries in the new
 * order, wpt[0..2], canon_pt); free pages last.  A PT's users (a set of
 * PDs) are renamed with the PDs.  hidden variables are not part of the
 * state.
 */
hidden byte rl_i, rl_j, rl_n;
hidden byte rl_key[NPD], rl_pm[NPD], rl_a[NPD], rl_b[NPD], rl_c[NPD], rl_d[NPD], rl_e[NPD];
#define RL_KEY(x, k) if :: (x) != NONE && rl_key[x] > (k) -> rl_key[x] = (k) :: else -> skip fi
#define RL_MAP(x) if :: (x) != NONE -> x = rl_pm[x] :: else -> skip fi
#define RL_PERM(N) \
	rl_i = 0; \
	do \
	:: rl_i < N -> \
		rl_n = 0; rl_j = 0; \
		do \
		:: rl_j < N -> \
			if \
			:: rl_key[rl_j] < rl_key[rl_i] || (rl_key[rl_j] == rl_key[rl_i] && rl_j < rl_i) -> rl_n++ \
			:: else -> skip \
			fi; \
			rl_j++ \
		:: else -> break \
		od; \
		rl_pm[rl_i] = rl_n; \
		rl_i++ \
	:: else -> break \
	od
#define RL_BITS(x) x = ((x) & 1 -> BIT(rl_pm[0]) : 0) | ((x) & 2 -> BIT(rl_pm[1]) : 0) | \
		       ((x) & 4 -> BIT(rl_pm[2]) : 0)
inline relabel() {
	d_step {
		/* the PDs */
		rl_i = 0;
		do
		:: rl_i < NPD ->
			rl_key[rl_i] = 255;
			rl_a[rl_i] = pd_live[rl_i]; rl_b[rl_i] = pd_count[rl_i]; rl_c[rl_i] = pd_users[rl_i];
			rl_d[rl_i] = pd_canon[rl_i]; rl_e[rl_i] = pd_ent[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM ->
			RL_KEY(root[rl_i], rl_i); RL_KEY(held[rl_i], NVM + rl_i);
			RL_KEY(xc[rl_i], 2 * NVM + rl_i); RL_KEY(wpd[rl_i], 3 * NVM + rl_i);
			rl_i++
		:: else -> break
		od;
		RL_KEY(canon_pd, 4 * NVM);
		RL_PERM(NPD);
		rl_i = 0;
		do
		:: rl_i < NPD ->
			pd_live[rl_pm[rl_i]] = rl_a[rl_i]; pd_count[rl_pm[rl_i]] = rl_b[rl_i];
			pd_users[rl_pm[rl_i]] = rl_c[rl_i]; pd_canon[rl_pm[rl_i]] = rl_d[rl_i];
			pd_ent[rl_pm[rl_i]] = rl_e[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM ->
			RL_MAP(root[rl_i]); RL_MAP(held[rl_i]); RL_MAP(xc[rl_i]); RL_MAP(wpd[rl_i]);
			rl_i++
		:: else -> break
		od;
		RL_MAP(canon_pd);
		rl_i = 0;
		do
		:: rl_i < NPT -> RL_BITS(pt_users[rl_i]); rl_i++
		:: else -> break
		od;
		/* the PTs */
		rl_i = 0;
		do
		:: rl_i < NPT ->
			rl_key[rl_i] = 255;
			rl_a[rl_i] = pt_live[rl_i]; rl_b[rl_i] = pt_count[rl_i]; rl_c[rl_i] = pt_users[rl_i];
			rl_d[rl_i] = pt_canon[rl_i]; rl_e[rl_i] = pt_leaf[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NPD -> RL_KEY(pd_ent[rl_i], rl_i); rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM -> RL_KEY(wpt[rl_i], NPD + rl_i); rl_i++
		:: else -> break
		od;
		RL_KEY(canon_pt, NPD + NVM);
		RL_PERM(NPT);
		rl_i = 0;
		do
		:: rl_i < NPT ->
			pt_live[rl_pm[rl_i]] = rl_a[rl_i]; pt_count[rl_pm[rl_i]] = rl_b[rl_i];
			pt_users[rl_pm[rl_i]] = rl_c[rl_i]; pt_canon[rl_pm[rl_i]] = rl_d[rl_i];
			pt_leaf[rl_pm[rl_i]] = rl_e[rl_i];
			rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NPD -> RL_MAP(pd_ent[rl_i]); rl_i++
		:: else -> break
		od;
		rl_i = 0;
		do
		:: rl_i < NVM -> RL_MAP(wpt[rl_i]); rl_i++
		:: else -> break
		od;
		RL_MAP(canon_pt);
		rl_i = 0; rl_j = 0; rl_n = 0
	}
}

inline unlock_mmu(ul_vm) {
	mmu_lock[ul_vm] = 0;
	if
	:: QUIESCENT -> assert(ALLOK)
	:: else -> skip
	fi
}

/* pool_alloc_index: the lowest free page of a level, zeroed; NONE when
 * none is free (-ENOMEM) */
inline alloc_pd(al_p) {
	al_p = 0;
	do
	:: al_p < NPD && pd_live[al_p] -> al_p++
	:: else -> break
	od;
	if
	:: al_p < NPD ->
		assert(pd_count[al_p] == 0 && pd_users[al_p] == 0 && pd_ent[al_p] == NONE && !pd_canon[al_p]);
		pd_live[al_p] = 1
	:: else -> al_p = NONE
	fi
}
inline alloc_pt(al_t) {
	al_t = 0;
	do
	:: al_t < NPT && pt_live[al_t] -> al_t++
	:: else -> break
	od;
	if
	:: al_t < NPT ->
		assert(pt_count[al_t] == 0 && pt_users[al_t] == 0 && !pt_leaf[al_t] && !pt_canon[al_t]);
		pt_live[al_t] = 1
	:: else -> al_t = NONE
	fi
}

/*
 * table_free_locked of a PD whose count reached 0 (the run's stripe free):
 * its entry is cleared and its PT put (table_put_now_locked: pool_user_del,
 * decrement; at 0 table_free_locked of the PT: the leaf leaves the pool and
 * the rmap, canon_forget_locked), then canon_forget_locked of the PD, then
 * pool_free_index.  pt is a scratch variable of the caller.
 */
inline free_pt(ft_t) {
	assert(pt_live[ft_t]);				/* freed exactly once */
	assert(pt_count[ft_t] == 0 && pt_users[ft_t] == 0);
	assert(!WALK_PT(ft_t));				/* no walk inside it */
	pt_leaf[ft_t] = 0;
	if :: canon_pt == ft_t -> canon_pt = NONE :: else -> skip fi;
	pt_canon[ft_t] = 0;
	pt_live[ft_t] = 0
}
#ifdef BUG_PD_FREE_NO_PUT
#define PUT_PT(t, p) skip
#else
#define PUT_PT(t, p) \
	assert(pt_users[t] & BIT(p)); \
	pt_users[t] = pt_users[t] & ~BIT(p); \
	pt_count[t]--; \
	if :: pt_count[t] == 0 -> free_pt(t) :: else -> skip fi
#endif
inline free_pd(fp_p, fp_t) {
	assert(pd_live[fp_p]);				/* freed exactly once */
	assert(pd_count[fp_p] == 0 && pd_users[fp_p] == 0 && ROOTS(fp_p) == 0);
	assert(!WALK_PD(fp_p));				/* no walk inside it */
	fp_t = pd_ent[fp_p];
	pd_ent[fp_p] = NONE;
	if
	:: fp_t != NONE -> PUT_PT(fp_t, fp_p)
	:: else -> skip
	fi;
	fp_t = NONE;
	if :: canon_pd == fp_p -> canon_pd = NONE :: else -> skip fi;
	pd_canon[fp_p] = 0;
	pd_live[fp_p] = 0
}

/*
 * Dropping VM v's reference to PD p once v's root entry to it is gone
 * (batch_add_put, zap_batch_finish_locked): flush v's vCPU (waits for its
 * walk), pool_user_del, decrement; at 0 a private PD is freed in the same
 * step, a canonical one in [free-canon] (a lookup under the stripe can
 * find it at 0 in between).  As in sharing.pml.
 */
#define DROP_GUARD(p) (NOWALK(v) && (pd_count[p] > 1 || pd_canon[p] || !rmap_held))
#define DROP_FIRST(p) \
	tlb[v] = 0;					/* flush ... */ \
	assert(pd_users[p] & BIT(v)); \
	pd_users[p] = pd_users[p] & ~BIT(v);		/* ... before put */ \
	pd_count[p]--; \
	if \
	:: pd_count[p] == 0 && pd_canon[p] -> last = 1 \
	:: pd_count[p] == 0 && !pd_canon[p] -> free_pd(p, t); p = NONE; unlock_mmu(v) \
	:: pd_count[p] > 0 -> p = NONE; unlock_mmu(v) \
	fi
inline drop_rest() {
	if
	:: last -> atomic { !rmap_held -> free_pd(held[v], t); last = 0; held[v] = NONE; unlock_mmu(v); relabel() }	/* [free-canon] */
	:: else -> skip
	fi
}

#ifdef BUG_NO_RETRY
#define RETRY_OK 1
#else
#define RETRY_OK (!inprog)
#endif

/* canon_get_locked (level 2) under the stripe: the canonical PD with a
 * reference (inc-not-zero), or a new one (entry empty) entered in the
 * array; NONE if the pool is full */
inline canon_pd_get(cg_p) {
	cg_p = canon_pd;
	if
#ifdef BUG_PD_INC
	:: cg_p != NONE -> pd_count[cg_p]++
#else
	:: cg_p != NONE && pd_count[cg_p] > 0 -> pd_count[cg_p]++
#endif
	:: else ->
		alloc_pd(cg_p);
		if
		:: cg_p != NONE -> pd_count[cg_p] = 1; pd_canon[cg_p] = 1; canon_pd = cg_p
		:: else -> skip
		fi
	fi
}

/* under the run's stripe: the canonical PT with a reference (inc-not-zero),
 * or a new one entered in the array; NONE if the pool is full */
inline canon_pt_get(cg_t) {
	cg_t = canon_pt;
	if
	:: cg_t != NONE && pt_count[cg_t] > 0 -> pt_count[cg_t]++
	:: else ->
		alloc_pt(cg_t);
		if
		:: cg_t != NONE -> pt_count[cg_t] = 1; pt_canon[cg_t] = 1; canon_pt = cg_t
		:: else -> skip
		fi
	fi
}

/* ---- one VM ------------------------------------------------------------ */
proctype vm(byte v)
{
	byte t = NONE;		/* a PT in the step at hand */
	bool last = 0;		/* our decrement took held[v] to 0 */

end_idle:
	do
	/* [attach] child_get_locked -> canon_get_locked (level 2), under the
	 * stripe: the canonical PD with inc-not-zero, or a new one; link
	 * (pool_user_link), then our root entry (child_link_canon_locked). */
	:: atomic {
		!stop && !(sub & BIT(v)) && !rmap_held ->
		canon_pd_get(xc[v]);
		if
		:: xc[v] != NONE -> pd_users[xc[v]] = pd_users[xc[v]] | BIT(v); root[v] = xc[v]; sub = sub | BIT(v)
		:: else -> skip
		fi;
		xc[v] = NONE; unlock_mmu(v); relabel()
	   }

	/* [own-pd] child_create_locked: a PD of our own (the guest directory's
	 * entries were not all accessed yet: no canonical one) */
	:: atomic {
		!stop && !(sub & BIT(v)) ->
		alloc_pd(xc[v]);
		if
		:: xc[v] != NONE -> pd_count[xc[v]] = 1; pd_users[xc[v]] = BIT(v); root[v] = xc[v]; sub = sub | BIT(v)
		:: else -> skip
		fi;
		xc[v] = NONE; unlock_mmu(v); relabel()
	   }

	/* [link] the fault's path below a PD whose entry is empty: for the
	 * canonical PD canon_child_get_locked (under the run's stripe: the entry
	 * read again, the canonical PT got, pool_user_link, the entry set); for
	 * our own PD child_get_locked (canon_get_locked under the stripe, then
	 * child_link_canon_locked; only we change our PD's entries). */
#ifdef BUG_LINK_NO_RECHECK
	/* [link-check] the entry seen empty before the stripe is taken ... */
	:: atomic {
		!stop && root[v] != NONE && pd_canon[root[v]] && pd_ent[root[v]] == NONE && mmu_lock[v] == 0 ->
		mmu_lock[v] = v + 1
	   }
		/* [link-late] ... and linked under it without a second look */
		atomic {
			!rmap_held ->
			canon_pt_get(t);
			if
			:: t != NONE -> pt_users[t] = pt_users[t] | BIT(root[v]); pd_ent[root[v]] = t
			:: else -> skip
			fi;
			t = NONE; unlock_mmu(v); relabel()
		}
	:: atomic {
		!stop && root[v] != NONE && !pd_canon[root[v]] && pd_ent[root[v]] == NONE && mmu_lock[v] == 0 &&
		!rmap_held ->
#else
	:: atomic {
		!stop && root[v] != NONE && pd_ent[root[v]] == NONE && mmu_lock[v] == 0 && !rmap_held ->
#endif
		canon_pt_get(t);
		if
		:: t != NONE -> pt_users[t] = pt_users[t] | BIT(root[v]); pd_ent[root[v]] = t
		:: else -> skip				/* pool full */
		fi;
		t = NONE; unlock_mmu(v); relabel()
	   }

	/* [fault] install_leaf_locked in place in the canonical PT on our path,
	 * under the stripe, if notifier_read_retry allows */
	:: atomic {
		!stop && root[v] != NONE && pd_ent[root[v]] != NONE && !pt_leaf[pd_ent[root[v]]] &&
		mmu_lock[v] == 0 && !rmap_held && RETRY_OK ->
		assert(pd_live[root[v]] && pt_live[pd_ent[root[v]]] && pt_canon[pd_ent[root[v]]]);
		pt_leaf[pd_ent[root[v]]] = 1;
		unlock_mmu(v)
	   }

	/* [xchg-get] pd_exchange_locked: our own PD has its (last) entry
	 * filled: canon_get_locked (level 2) under the stripe, the canonical
	 * PD with a reference (inc-not-zero) or a new one; mmu_lock held */
	:: atomic {
		!stop && root[v] != NONE && !pd_canon[root[v]] && pd_ent[root[v]] != NONE &&
		mmu_lock[v] == 0 && !rmap_held ->
		canon_pd_get(xc[v]);
		if
		:: xc[v] != NONE -> mmu_lock[v] = v + 1
		:: else -> unlock_mmu(v)		/* pool full: no exchange */
		fi;
		relabel()
	   }
		if
		:: xc[v] != NONE ->
			/* [xchg-adopt] canon_adopt_locked, under the stripe: our PD's
			 * PT into the canonical PD's entry if that is empty
			 * (pool_user_add); then zap_spte_locked of our root entry
			 * (batch_add_put of our PD) and child_link_canon_locked
			 * (pool_user_link, our root entry to the canonical PD) */
			atomic {
				!rmap_held ->
				t = pd_ent[root[v]];
				if
				:: pd_ent[xc[v]] == NONE && pt_canon[t] ->
					assert(pt_live[t] && pt_count[t] > 0);	/* under our PD's reference */
					pt_count[t]++; pt_users[t] = pt_users[t] | BIT(xc[v]); pd_ent[xc[v]] = t
				:: else -> skip
				fi;
				t = NONE;
				held[v] = root[v];
				pd_users[xc[v]] = pd_users[xc[v]] | BIT(v); root[v] = xc[v];
				xc[v] = NONE;
				relabel()
			}
#ifdef BUG_XCHG_PUT_BEFORE_FLUSH
			/* [xchg-put-early] our PD put (freed at 0) before the flush */
			atomic {
				!rmap_held ->
				pd_users[held[v]] = pd_users[held[v]] & ~BIT(v);
				pd_count[held[v]]--;
				if :: pd_count[held[v]] == 0 -> free_pd(held[v], t) :: else -> skip fi;
				held[v] = NONE;
				relabel()
			}
			atomic { NOWALK(v) -> tlb[v] = 0; unlock_mmu(v); relabel() }	/* the flush, late */
#else
			/* [put] zap_batch_finish_locked: flush, then put our PD */
			atomic { DROP_GUARD(held[v]) -> DROP_FIRST(held[v]); relabel() }
			drop_rest()
#endif
		:: else -> skip
		fi

	/* [leave] our root entry to the PD zapped (a differing guest entry,
	 * sync, an ineligible run, teardown): flush, put */
	:: atomic {
		!stop && root[v] != NONE && mmu_lock[v] == 0 && DROP_GUARD(root[v]) ->
		mmu_lock[v] = v + 1;
		held[v] = root[v];
		root[v] = NONE;
		DROP_FIRST(held[v]);
		relabel()
	   }
		drop_rest()

	/* [unsubscribe] notifier_unsubscribe, once no range counted us in */
	:: atomic { !stop && root[v] == NONE && (sub & BIT(v)) && !(snap & BIT(v)) -> sub = sub & ~BIT(v) }
	od
}

/* ---- the vCPU of VM v -------------------------------------------------- */
proctype vcpu(byte v)
{
end_idle:
	do
	/* [walk-root] a TLB miss: read the root entry */
	:: atomic { !stop && NOWALK(v) && !tlb[v] && root[v] != NONE -> wpd[v] = root[v] }
	/* [walk-pd] the PD's entry (the PD may have been left or freed since):
	 * not present ends the walk (#PF) */
	:: atomic {
		wpd[v] != NONE ->
		assert(pd_live[wpd[v]]);		/* no walk in a freed table */
		wpt[v] = pd_ent[wpd[v]];
		wpd[v] = NONE
	   }
	/* [walk-leaf] the PT's leaf: fill the TLB (0: #PF), the walk ends */
	:: atomic {
		wpt[v] != NONE ->
		assert(pt_live[wpt[v]]);
		tlb[v] = pt_leaf[wpt[v]];
		wpt[v] = NONE
	   }
	od
}

/* ---- the swapper -------------------------------------------------------- */
/*
 * zap_pages for VM u under u's mmu_lock and the stripe: the leaf cleared in
 * every PT (the pool-wide rmap), and pmd_rmap_flush_up from each cleared PT:
 * its users (PDs), their users (roots: VMs).  A canonical PT makes the path
 * shared, so u is among them.
 */
#define PD_UP(p) (pd_live[p] -> pd_users[p] : 0)
#ifdef BUG_FLUSH_STOPS_AT_PD
#define PT_UP(t) 0		/* the walk ends at the PDs: no root reached */
#else
#define PT_UP(t) (pt_leaf[t] -> (((pt_users[t] & 1) -> PD_UP(0) : 0) | \
				  ((pt_users[t] & 2) -> PD_UP(1) : 0) | \
				  ((pt_users[t] & 4) -> PD_UP(2) : 0)) : 0)
#endif
#define CLEAR_ALL \
	us = PT_UP(0) | PT_UP(1); \
	zapped = pt_leaf[0] || pt_leaf[1]; \
	pt_leaf[0] = 0; pt_leaf[1] = 0

/* [range-end] invalidate_range_start has returned: no leaf and no TLB maps
 * the page; the eviction; invalidate_range_end */
#define RANGE_DONE \
	assert(!tlb[0] && !tlb[1] && !tlb[2] && NOLEAF); \
	inprog = 0; snap = 0; v = 0

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
	/* [range-start] */
	:: atomic {
		!stop && !inprog ->
		inprog = 1; snap = sub; left = snap; PICK;
		if :: v == NVM -> RANGE_DONE; goto end_idle :: else -> skip fi
	   }
		do
		/* [zap] clear and collect */
		:: atomic {
			mmu_lock[v] == 0 && !rmap_held ->
			CLEAR_ALL;
			if
			:: us == 0 && (!zapped || NOWALK(v)) ->
				tlb[v] = tlb[v] && !zapped;
				zapped = 0; PICK;
				if :: v == NVM -> RANGE_DONE; goto end_idle :: else -> skip fi
			:: else ->
				mmu_lock[v] = NVM + 1; rmap_held = (us != 0)
			fi
		   }
		/* [flush-remote] each collected VM, under the stripe */
		:: atomic {
			mmu_lock[v] == NVM + 1 && us != 0 && NOWALK(LOW(us)) ->
			tlb[LOW(us)] = 0; us = us & ~BIT(LOW(us));
			rmap_held = (us != 0)
		   }
		/* [flush-own] our own vCPU, unlock, the callback returns */
		:: atomic {
			mmu_lock[v] == NVM + 1 && us == 0 && (!zapped || NOWALK(v)) ->
			tlb[v] = tlb[v] && !zapped;
			zapped = 0; unlock_mmu(v); PICK;
			if :: v == NVM -> RANGE_DONE; goto end_idle :: else -> skip fi
		   }
		od
	od
}

init
{
	atomic {
		run vm(0); run vm(1); run vm(2);
		run vcpu(0); run vcpu(1); run vcpu(2);
		run swapper()
	}
	stop = 1
}
