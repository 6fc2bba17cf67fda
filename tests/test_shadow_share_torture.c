/*
 * Sharing under concurrency: 8 VMs (4 base VMs and their clones, made
 * while the base VMs run), 2 software vCPUs each, against an evictor
 * (swapout of data and segment pages to the in-memory store, both delivery
 * modes), a remapper (guest page-table changes with invlpg, segment
 * permission changes, segment detach/attach in the P2M) and the vCPUs' own
 * copy-on-write and privatizing writes.  When every thread of a phase has
 * done its operations, the invariant checker runs (shadow_pool_check: use counts, users
 * lists, reverse maps, canonical tables, pool accounting; shadow_mmu_check
 * per VM, including write protection of copy-on-write data), then the clones
 * are destroyed (teardown of shared tables) and checked again.
 *
 * The oracle, on every data access (one instruction: shadow_vcpu_access64):
 *  - no access ever reads SHADOW_STORE_POISON: an evicted page is reached
 *    only through a stale translation (every sharer must have been flushed
 *    when the eviction's invalidate_range_start returned);
 *  - data page i of a VM is written only by its vCPU i % 2, with values
 *    tagged by the VM; the owner reads back exactly its last write (a lost
 *    write: a store through a stale translation into an evicted copy, or
 *    into a page another VM now owns); before a clone's first write, it
 *    reads a value tagged by its parent (or the base lineage) - never a
 *    sibling's, never the parent's writes made after its own copy.  The
 *    other vCPU reads only values tagged by this VM's lineage.
 *  - segment pages: each (VM, vCPU) owns one and reads back its last write
 *    (when the access succeeds: the remapper may have detached or
 *    write-protected the run).
 *
 * Size: 3 phases; in each, every thread runs a fixed number of operations
 * (VCPU_OPS accesses per vCPU, the evictor and remapper in proportion;
 * UMBRA_SHARE_TORTURE_OPS sets VCPU_OPS); the base VMs' threads, the evictor,
 * the remapper and the cloning test thread leave a common start gate
 * together.  The run fails if it takes longer than TEST_TORTURE_LIMIT_S.
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umbra/shadow.h"
#include "test_shadow_share_util.h"
#include "tests.h"

#define NBASE 4
#define NVMS (2 * NBASE)
#define NDATA 32
#define RAM_PAGES 2048
#define DATA_GPA 0x200000ull		/* data pages: RAM pages 512.. */
#define DATA_VA 0x0000004000000000ull
#define SEG_GPA 0x400000ull		/* the segment run, 2 MiB-aligned */
#define SEG_VA 0x0000008000000000ull
#define SEG_PAGES 512
#define POISON64 0xa5a5a5a5a5a5a5a5ull
#define TAG(vm) ((uint64_t)((vm) + 1) << 40)
#define TAG_OF(v) ((v) >> 40)
#define PHASES 3

/* Operations per thread and phase: a vCPU's accesses, and the evictor's and
 * remapper's as a share of them (VCPU_OPS / 5: with it they end about when
 * the vCPUs do).  Under TSan (about 10x slower here) the vCPUs do fewer. */
#define VCPU_OPS_DEFAULT (TEST_TSAN ? 45000ul : 500000ul)
#define EVICT_SHARE 5
#define REMAP_SHARE 5

struct tvm {
	int id, parent;			/* parent: -1 for a base VM */
	struct shadow_mmu *mmu;
	struct hobj ram;		/* base VMs: RAM with a store, their first own slot */
	struct gm gm;			/* base VMs: guest table builder */
	uint64_t cr3;
	struct shadow_vcpu *v[2];
	pthread_t thr[2];
	uint64_t exp[NDATA];		/* owner's last write, 0 = none yet */
	uint64_t seg_exp[2];
	int seg_slot;
	bool live;
};

struct torture {
	struct shadow_pool *pool;
	struct hobj seg;
	struct sh_owns owns;		/* the own slots the clones add */
	struct tvm vm[NVMS];
	uint64_t accesses, evictions, remaps, clones, seg_toggles; /* atomic */
	unsigned long vcpu_ops;		/* accesses per vCPU thread and phase */
	double start_s;			/* for TEST_TORTURE_LIMIT_S */
	struct test_gate gate;		/* a phase's start (base VMs' threads) */
	struct test_failures fails;	/* the first one stops every thread */
};

/* Tag of VM @vm's lineage: itself or its parent. */
static bool in_lineage(struct torture *t, int vm, uint64_t val)
{
	uint64_t tag = TAG_OF(val);

	return tag == (uint64_t)vm + 1 || (t->vm[vm].parent >= 0 && tag == (uint64_t)t->vm[vm].parent + 1);
}

struct vcpu_arg {
	struct torture *t;
	int vm, idx;
	bool gate;			/* pass t->gate first (base VMs) */
};

static void *vcpu_thread_body(void *p)
{
	struct vcpu_arg *a = p;
	struct torture *t = a->t;
	struct tvm *vm = &t->vm[a->vm];
	struct shadow_vcpu *v = vm->v[a->idx];
	struct shadow_vcpu_result res;
	uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(a->vm * 2 + a->idx + 1), ctr = 0;

	if (a->gate)
		test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "vcpu", n, t->vcpu_ops); n++) {
		uint64_t r = test_rnd(&seed), val;
		unsigned int i = (unsigned int)(r % NDATA);
		bool own = (int)(i % 2) == a->idx;
		int ret;

		/* Leave the cores to the evictor and remapper now and then. */
		if (__atomic_fetch_add(&t->accesses, 1, __ATOMIC_RELAXED) % 16 == 0)
			sched_yield();
		if ((r >> 8) % 8 == 0) {
			/* The segment: our own page in the run. */
			uint64_t va = SEG_VA + (uint64_t)(a->vm * 2 + a->idx) * GM_PAGE;

			if ((r >> 12) % 2) {
				val = TAG(a->vm) | ++ctr;
				ret = shadow_vcpu_access64_fault_in(v, va, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE,
								    &val, &res);
				if (ret == 0)
					vm->seg_exp[a->idx] = val;
			} else {
				ret = shadow_vcpu_access64_fault_in(v, va, SHADOW_ACCESS_USER, &val, &res);
				if (ret == 0 && val == POISON64)
					test_fail(&t->fails, "VM %d vCPU %d read an evicted segment page", a->vm, a->idx);
				else if (ret == 0 && vm->seg_exp[a->idx] && val != vm->seg_exp[a->idx])
					test_fail(&t->fails, "VM %d vCPU %d segment: expected %#llx, got %#llx", a->vm,
					     a->idx, (unsigned long long)vm->seg_exp[a->idx],
					     (unsigned long long)val);
			}
			if (ret && ret != -EFAULT)
				test_fail(&t->fails, "VM %d segment access: expected 0 or -EFAULT, got %d", a->vm, ret);
			continue;
		}
		uint64_t va = DATA_VA + (uint64_t)i * GM_PAGE;

		if (own && (r >> 16) % 3 == 0) {
			val = TAG(a->vm) | ++ctr;
			ret = shadow_vcpu_access64_fault_in(v, va, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE, &val,
							    &res);
			if (ret)
				test_fail(&t->fails, "VM %d vCPU %d write page %u: expected 0, got %d", a->vm, a->idx, i, ret);
			else
				__atomic_store_n(&vm->exp[i], val, __ATOMIC_RELAXED);
			continue;
		}
		ret = shadow_vcpu_access64_fault_in(v, va, SHADOW_ACCESS_USER, &val, &res);
		if (ret) {
			test_fail(&t->fails, "VM %d vCPU %d read page %u: expected 0, got %d", a->vm, a->idx, i, ret);
		} else if (val == POISON64) {
			test_fail(&t->fails, "VM %d vCPU %d read page %u: reached an evicted page", a->vm, a->idx, i);
		} else if (own && vm->exp[i] && val != vm->exp[i]) {
			test_fail(&t->fails, "VM %d vCPU %d page %u: expected its last write %#llx, got %#llx", a->vm,
			     a->idx, i, (unsigned long long)vm->exp[i], (unsigned long long)val);
		} else if (!in_lineage(t, a->vm, val)) {
			test_fail(&t->fails, "VM %d vCPU %d page %u: value %#llx is not of its lineage", a->vm, a->idx, i,
			     (unsigned long long)val);
		}
	}
	return NULL;
}

static void *vcpu_thread(void *p)
{
	return run_rcu_registered(vcpu_thread_body, p);
}

static void vm_start(struct torture *t, int k, struct vcpu_arg *args, bool gate)
{
	struct tvm *vm = &t->vm[k];

	for (int j = 0; j < 2; j++) {
		vm->v[j] = sh_vcpu(vm->mmu, 32, vm->cr3);
		args[k * 2 + j] = (struct vcpu_arg){ .t = t, .vm = k, .idx = j, .gate = gate };
		ck_assert_int_eq(pthread_create(&vm->thr[j], NULL, vcpu_thread, &args[k * 2 + j]), 0);
	}
}

static void vm_join(struct torture *t, int k)
{
	for (int j = 0; j < 2; j++) {
		pthread_join(t->vm[k].thr[j], NULL);
		shadow_vcpu_destroy(t->vm[k].v[j]);
		t->vm[k].v[j] = NULL;
	}
}

static void base_init(struct torture *t, int k)
{
	struct tvm *vm = &t->vm[k];
	struct shadow_mmu_config cfg = { .pool = t->pool, .max_gpa = RAM_PAGES * GM_PAGE,
					 .mode = shadow_default_mode };
	struct shadow_slot s;
	int id;

	memset(vm, 0, sizeof(*vm));
	vm->id = k;
	vm->parent = -1;
	hobj_init(&vm->ram, "ram", RAM_PAGES, true);
	ck_assert_int_eq(shadow_mmu_create(&cfg, &vm->mmu), 0);
	s = hobj_slot(&vm->ram, 0);
	ck_assert_int_eq(shadow_mmu_add_slot(vm->mmu, &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(vm->mmu, 0, RAM_PAGES, id, 0), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(vm->mmu, id), 0);
	s = hobj_slot(&t->seg, SH_SEG_MPA);
	ck_assert_int_eq(shadow_mmu_add_segment(vm->mmu, &s, &vm->seg_slot), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(vm->mmu, SEG_GPA, SEG_PAGES, vm->seg_slot, 0), 0);
	vm->gm.host = vm->ram.host;
	vm->gm.npages = RAM_PAGES;
	vm->gm.next_table = GM_TABLES;
	vm->cr3 = gm_table(&vm->gm);
	for (unsigned int i = 0; i < NDATA; i++) {
		gm_map(&vm->gm, vm->cr3, DATA_VA + i * GM_PAGE, DATA_GPA + i * GM_PAGE, 1,
		       SPTE_WRITABLE | SPTE_USER);
		*(uint64_t *)(vm->ram.host + DATA_GPA + i * GM_PAGE) = TAG(k);
	}
	gm_map(&vm->gm, vm->cr3, SEG_VA, SEG_GPA, 2, SPTE_WRITABLE | SPTE_USER | SPTE_DIRTY);
	__atomic_store_n(&vm->live, true, __ATOMIC_RELEASE);
}

static void clone_of(struct torture *t, int parent, int k)
{
	struct tvm *vm = &t->vm[k];

	/* The remapper may be looking at this slot (it reads nothing but
	 * @live until @live is published with a release store). */
	vm->id = k;
	vm->parent = parent;
	memset(vm->exp, 0, sizeof(vm->exp));
	memset(vm->seg_exp, 0, sizeof(vm->seg_exp));
	sh_clone(&t->owns, RAM_PAGES, t->vm[parent].mmu, &vm->mmu);
	vm->cr3 = t->vm[parent].cr3;
	vm->seg_slot = t->vm[parent].seg_slot;
	__atomic_store_n(&vm->live, true, __ATOMIC_RELEASE);
	__atomic_fetch_add(&t->clones, 1, __ATOMIC_RELAXED);
}

static void vm_fini(struct torture *t, int k)
{
	struct tvm *vm = &t->vm[k];
	__atomic_store_n(&vm->live, false, __ATOMIC_RELEASE);
	shadow_mmu_destroy(vm->mmu);
	vm->mmu = NULL;
}

/* Evictor: data pages of base VMs' RAM (shared copy-on-write with their
 * clones) and segment pages; the delivery mode flips now and then. */
static void *evictor_thread(void *p)
{
	struct torture *t = p;
	uint64_t seed = 0xfeedface;
	unsigned long total = t->vcpu_ops / EVICT_SHARE;

	notifier_thread_init();
	test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "evictor", n, total); n++) {
		uint64_t r = test_rnd(&seed);
		int k = (int)(r % NBASE), ret;

		if ((r >> 10) % 64 == 0) {
			enum notifier_mode m = (r >> 16) % 2 ? NOTIFIER_MODE_PAGE : NOTIFIER_MODE_RANGE;

			notifier_object_set_mode(t->vm[k].ram.obj, m);
			notifier_object_set_mode(t->seg.obj, m);
		}
		if ((r >> 20) % 4 == 0)
			ret = shadow_store_evict(t->seg.store, (r >> 24) % (2 * NVMS));
		else
			ret = shadow_store_evict(t->vm[k].ram.store,
						 DATA_GPA / GM_PAGE + (r >> 24) % NDATA);
		if (ret && ret != -EALREADY)
			test_fail(&t->fails, "evict: expected 0, got %d", ret);
		__atomic_fetch_add(&t->evictions, 1, __ATOMIC_RELAXED);
		sched_yield();
	}
	notifier_thread_exit();
	return NULL;
}

/* Remapper: guest page-table changes on live VMs (a copy-on-write guest
 * table in a clone), each followed by invlpg, and segment changes. */
static void *remapper_thread(void *p)
{
	struct torture *t = p;
	uint64_t seed = 0xabcdef12345ull;
	unsigned long total = t->vcpu_ops / REMAP_SHARE;

	test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "remapper", n, total); n++) {
		uint64_t r = test_rnd(&seed);
		int k = (int)(r % NVMS);
		struct tvm *vm = &t->vm[k];

		if (!__atomic_load_n(&vm->live, __ATOMIC_ACQUIRE))
			continue;
		struct tvm *base = &t->vm[vm->parent >= 0 ? vm->parent : k];

		/* Guest tables are at the same gpa in a clone: find the entry
		 * through the base's builder, write it through this VM's P2M. */
		uint64_t va, pte, val;
		uint64_t op = (r >> 8) % 4;

		if (op <= 1) {
			unsigned int i = (unsigned int)((r >> 16) % NDATA);

			va = DATA_VA + i * GM_PAGE;
			pte = gm_entry(&base->gm, base->cr3, va, 1);
			val = (DATA_GPA + i * GM_PAGE) | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
			if (op == 1)
				val |= SPTE_ACCESSED | SPTE_DIRTY;
		} else if (op == 2) {
			/* The segment run: writable or read-only (leaves and
			 * rejoins the canonical table). */
			va = SEG_VA;
			pte = gm_entry(&base->gm, base->cr3, va, 2);
			val = SEG_GPA | SPTE_PRESENT | SPTE_LARGE | SPTE_USER | SPTE_DIRTY |
			      ((r >> 20) % 2 ? SPTE_WRITABLE : 0);
		} else {
			/* Detach / attach the segment in this VM's P2M. */
			bool attach = (r >> 20) % 2;

			if (shadow_mmu_map_gpa(vm->mmu, SEG_GPA, SEG_PAGES, attach ? vm->seg_slot : -1, 0))
				test_fail(&t->fails, "segment %s failed", attach ? "attach" : "detach");
			__atomic_fetch_add(&t->seg_toggles, 1, __ATOMIC_RELAXED);
			continue;
		}
		if (shadow_mmu_cow_break(vm->mmu, pte)) {
			test_fail(&t->fails, "cow_break of a guest table failed");
			continue;
		}
		__atomic_store_n(vm_ptr(vm->mmu, pte), val, __ATOMIC_RELEASE);
		shadow_mmu_invlpg(vm->mmu, NULL, vm->cr3, va);
		__atomic_fetch_add(&t->remaps, 1, __ATOMIC_RELAXED);
		sched_yield();
	}
	return NULL;
}

static void check_all(struct torture *t, const char *when)
{
	int ret = shadow_pool_check(t->pool);

	ck_assert_msg(ret == 0, "%s: shadow_pool_check: expected 0, got %d", when, ret);
	for (int k = 0; k < NVMS; k++) {
		if (!__atomic_load_n(&t->vm[k].live, __ATOMIC_ACQUIRE))
			continue;
		ret = shadow_mmu_check(t->vm[k].mmu);
		ck_assert_msg(ret == 0, "%s: shadow_mmu_check(VM %d): expected 0, got %d", when, k, ret);
	}
}

/* Quiesced: every VM reads back exactly what its owners last wrote. */
static void check_contents(struct torture *t)
{
	for (int k = 0; k < NVMS; k++) {
		struct tvm *vm = &t->vm[k];
		struct shadow_vcpu *v = sh_vcpu(vm->mmu, 0, vm->cr3);

		for (unsigned int i = 0; i < NDATA; i++) {
			struct shadow_vcpu_result res;
			uint64_t val;
			int ret = shadow_vcpu_access64_fault_in(v, DATA_VA + i * GM_PAGE, SHADOW_ACCESS_USER,
								&val, &res);

			ck_assert_msg(ret == 0, "VM %d page %u: expected 0, got %d", k, i, ret);
			ck_assert_msg(!vm->exp[i] || val == vm->exp[i],
				      "VM %d page %u: expected %#llx, got %#llx", k, i,
				      (unsigned long long)vm->exp[i], (unsigned long long)val);
			ck_assert_msg(in_lineage(t, k, val), "VM %d page %u: %#llx not of its lineage", k, i,
				      (unsigned long long)val);
		}
		shadow_vcpu_destroy(v);
	}
}

START_TEST(test_share_torture_8_vms_2_vcpus_with_invariants_after_each_phase)
{
	struct torture *t = calloc(1, sizeof(*t));
	struct vcpu_arg args[NVMS * 2];
	int phases = PHASES;
	pthread_t ev, rm;

	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(notifier_thread_init(), 0);
	test_failures_init(&t->fails);
	t->vcpu_ops = test_env_ulong("UMBRA_SHARE_TORTURE_OPS", VCPU_OPS_DEFAULT);
	t->start_s = test_now_s();
	ck_assert_int_eq(shadow_pool_create(4096, &t->pool), 0);
	hobj_init(&t->seg, "segment", SEG_PAGES, true);
	for (int k = 0; k < NBASE; k++)
		base_init(t, k);
	for (int phase = 0; phase < phases && !t->fails.count; phase++) {
		/* The base VMs' vCPUs, the evictor, the remapper and us. */
		test_gate_init(&t->gate, NBASE * 2 + 3);
		for (int k = 0; k < NBASE; k++)
			vm_start(t, k, args, true);
		ck_assert_int_eq(pthread_create(&ev, NULL, evictor_thread, t), 0);
		ck_assert_int_eq(pthread_create(&rm, NULL, remapper_thread, t), 0);
		test_gate_pass(&t->gate);
		/* Clone each base VM while everything runs. */
		for (int k = 0; k < NBASE; k++) {
			clone_of(t, k, NBASE + k);
			vm_start(t, NBASE + k, args, false);
		}
		pthread_join(ev, NULL);
		pthread_join(rm, NULL);
		for (int k = 0; k < NVMS; k++)
			vm_join(t, k);
		test_gate_exit(&t->gate);
		if (t->fails.count)
			break;
		check_all(t, "after the phase");
		check_contents(t);
		/* The clones go: their shared tables lose a user each. */
		for (int k = NBASE; k < NVMS; k++) {
			vm_fini(t, k);
			check_all(t, "after a clone's destroy");
		}
	}
	test_failures_assert_none(&t->fails);
	/* Every thread ran all its operations. */
	ck_assert_msg(t->accesses == (uint64_t)phases * NVMS * 2 * t->vcpu_ops,
		      "expected %llu accesses, got %llu",
		      (unsigned long long)phases * NVMS * 2 * t->vcpu_ops, (unsigned long long)t->accesses);
	ck_assert_msg(t->evictions == (uint64_t)phases * (t->vcpu_ops / EVICT_SHARE),
		      "expected %llu evictions, got %llu",
		      (unsigned long long)phases * (t->vcpu_ops / EVICT_SHARE), (unsigned long long)t->evictions);
	ck_assert_msg(t->clones == NBASE * (uint64_t)phases, "expected %d clones, got %llu", NBASE * phases,
		      (unsigned long long)t->clones);
	for (int k = 0; k < NBASE; k++) {
		vm_fini(t, k);
		check_all(t, "after a base VM's destroy");
	}
	ck_assert_msg(shadow_pool_pages_in_use(t->pool, 0) == 0, "expected an empty pool, got %zu pages",
		      shadow_pool_pages_in_use(t->pool, 0));
	for (int k = 0; k < NBASE; k++)
		hobj_fini(&t->vm[k].ram);
	sh_owns_fini(&t->owns);
	hobj_fini(&t->seg);
	shadow_pool_destroy(t->pool);
	test_failures_exit(&t->fails);
	free(t);
}
END_TEST

/* ---- fills in place: read faults of sharers racing divergence ------------ */

/*
 * A base VM that only reads and FILL_CLONES clones of it, made afresh each
 * phase, all sharing the tables of FILL_PAGES data pages (PTEs accessed, as
 * Linux makes them, so that a read fault need not copy a guest table).  Each
 * VM's vCPU reads random pages (refaulting the evictor's pages, filling the
 * shared leaf table in place); the odd clones also write their own pages
 * now and then (copy-on-write break: their view diverges while the others
 * fill); a remapper points PTEs of clone FILL_REMAPPED (which never writes)
 * at the neighbouring page and back, each followed by invlpg, while the
 * others fill the entries it changes.  The oracle: no read sees poison;
 * every read sees exactly the VM's own last write of the page, or the
 * base's original value of the page its PTE maps, and a read of the
 * remapped clone that began after an invlpg returned (and ended before the
 * next change began) sees the new page.
 */
#define FILL_VMS 4
#define FILL_CLONES (FILL_VMS - 1)
#define FILL_PAGES 128
#define FILL_PHASES 3
#define FILL_OPS_DEFAULT (TEST_TSAN ? 20000ul : 200000ul)
#define FILL_ORIG(i) (TAG(0) | 0x100000ull | (i))
#define FILL_REMAPPED 2

struct fill_torture {
	struct shadow_pool *pool;
	struct hobj ram, own;		/* RAM; the base's first own slot */
	struct sh_owns owns;		/* the own slots the clones add */
	struct gm gm;
	uint64_t cr3;
	struct shadow_mmu *mmu[FILL_VMS];	/* [0]: the base */
	uint64_t exp[FILL_VMS][FILL_PAGES];	/* VM's own last write, 0: none */
	/* FILL_REMAPPED's PTEs: page i maps tgt[i] (i or i ^ 1); seq[i] is odd
	 * while the remapper changes it (until its invlpg returned). */
	uint64_t tgt[FILL_PAGES], seq[FILL_PAGES];	/* atomic */
	unsigned long ops;
	double start_s;
	uint64_t fills, reads;			/* atomic */
	struct test_gate gate;
	struct test_failures fails;
};

struct fill_arg {
	struct fill_torture *t;
	int vm;
};

/* What VM @k reads at page @i when its PTE maps page @tgt. */
static void fill_check_read(struct fill_torture *t, int k, unsigned int i, uint64_t tgt, int ret,
			    uint64_t val)
{
	uint64_t want = t->exp[k][i] ? t->exp[k][i] : FILL_ORIG(tgt);

	if (ret)
		test_fail(&t->fails, "VM %d page %u: expected 0, got %d", k, i, ret);
	else if (val == POISON64)
		test_fail(&t->fails, "VM %d page %u: reached an evicted page", k, i);
	else if (val != want)
		test_fail(&t->fails, "VM %d page %u: expected %#llx, got %#llx", k, i,
			  (unsigned long long)want, (unsigned long long)val);
}

static void fill_vcpu_check(struct fill_torture *t, int k, unsigned int i, int ret, uint64_t val)
{
	fill_check_read(t, k, i, k == FILL_REMAPPED ? __atomic_load_n(&t->tgt[i], __ATOMIC_ACQUIRE) : i,
			ret, val);
}

/* A read of FILL_REMAPPED's page @i: exact if no change overlapped it. */
static void fill_remapped_read(struct fill_torture *t, struct shadow_vcpu *v, unsigned int i)
{
	uint64_t s1 = __atomic_load_n(&t->seq[i], __ATOMIC_SEQ_CST), val;
	uint64_t tgt = __atomic_load_n(&t->tgt[i], __ATOMIC_SEQ_CST);
	struct shadow_vcpu_result res;
	int ret = shadow_vcpu_access64_fault_in(v, DATA_VA + (uint64_t)i * GM_PAGE, SHADOW_ACCESS_USER,
						&val, &res);

	if (__atomic_load_n(&t->seq[i], __ATOMIC_SEQ_CST) == s1 && !(s1 & 1))
		fill_check_read(t, FILL_REMAPPED, i, tgt, ret, val);
	else if (!ret && val != FILL_ORIG(i) && val != FILL_ORIG(i ^ 1))
		test_fail(&t->fails, "VM %d page %u (remapped): got %#llx", FILL_REMAPPED, i,
			  (unsigned long long)val);
}

static void *fill_vcpu_body(void *p)
{
	struct fill_arg *a = p;
	struct fill_torture *t = a->t;
	struct shadow_vcpu *v = sh_vcpu(t->mmu[a->vm], 0, t->cr3);
	uint64_t seed = 0x2545f4914f6cdd1dull * (uint64_t)(a->vm + 1), ctr = 0;

	test_gate_pass(&t->gate);
	for (unsigned long n = 0; test_torture_keep_going(&t->fails, t->start_s, "fill vcpu", n, t->ops);
	     n++) {
		uint64_t r = test_rnd(&seed), val;
		unsigned int i = (unsigned int)(r % FILL_PAGES);
		uint64_t va = DATA_VA + (uint64_t)i * GM_PAGE;
		struct shadow_vcpu_result res;
		int ret;

		if (a->vm % 2 && i % FILL_VMS == (unsigned int)a->vm && (r >> 16) % 64 == 0) {
			val = TAG(a->vm) | ++ctr;
			ret = shadow_vcpu_access64_fault_in(v, va, SHADOW_ACCESS_USER | SHADOW_ACCESS_WRITE,
							    &val, &res);
			if (ret)
				test_fail(&t->fails, "VM %d write page %u: expected 0, got %d", a->vm, i, ret);
			else
				t->exp[a->vm][i] = val;
			continue;
		}
		if (a->vm == FILL_REMAPPED) {
			fill_remapped_read(t, v, i);
		} else {
			ret = shadow_vcpu_access64_fault_in(v, va, SHADOW_ACCESS_USER, &val, &res);
			fill_vcpu_check(t, a->vm, i, ret, val);
		}
		__atomic_fetch_add(&t->reads, 1, __ATOMIC_RELAXED);
		if (n % 32 == 0)
			sched_yield();
	}
	shadow_vcpu_destroy(v);
	return NULL;
}

static void *fill_vcpu_thread(void *p)
{
	return run_rcu_registered(fill_vcpu_body, p);
}

static void *fill_evictor_thread(void *p)
{
	struct fill_torture *t = p;
	uint64_t seed = 0x1234567;

	notifier_thread_init();
	test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "fill evictor", n, t->ops / 8); n++) {
		uint64_t r = test_rnd(&seed);
		int ret = shadow_store_evict(t->ram.store, DATA_GPA / GM_PAGE + r % FILL_PAGES);

		if (ret && ret != -EALREADY)
			test_fail(&t->fails, "evict: expected 0, got %d", ret);
		sched_yield();
	}
	notifier_thread_exit();
	return NULL;
}

/* Points FILL_REMAPPED's PTE of page i at page i ^ 1 and back, through its
 * own (copy-on-write) copy of the page table, then invlpg.  Needs the
 * evictor's notifier thread registration (evict). */
static void *fill_remapper_thread(void *p)
{
	struct fill_torture *t = p;
	struct shadow_mmu *mmu = t->mmu[FILL_REMAPPED];
	uint64_t seed = 0x77aa55;

	notifier_thread_init();
	test_gate_pass(&t->gate);
	for (unsigned long n = 0;
	     test_torture_keep_going(&t->fails, t->start_s, "fill remapper", n, t->ops / 16); n++) {
		unsigned int i = (unsigned int)(test_rnd(&seed) % FILL_PAGES);
		uint64_t va = DATA_VA + (uint64_t)i * GM_PAGE, pte = gm_entry(&t->gm, t->cr3, va, 1);
		uint64_t tgt = __atomic_load_n(&t->tgt[i], __ATOMIC_RELAXED) ^ 1;
		uint64_t mpa;
		void *host;

		int ret;

		__atomic_fetch_add(&t->seq[i], 1, __ATOMIC_SEQ_CST);
		/* Evicted first, the shared leaf is gone: the invlpg keeps the
		 * shared table (nothing there disagrees), and the others' fills
		 * of that entry race the change. */
		ret = shadow_store_evict(t->ram.store, DATA_GPA / GM_PAGE + i);
		if (ret && ret != -EALREADY)
			test_fail(&t->fails, "remapper: evict: expected 0, got %d", ret);
		if (shadow_mmu_cow_break(mmu, pte) || shadow_mmu_p2m_lookup(mmu, pte, &mpa, &host)) {
			test_fail(&t->fails, "remapper: cow_break / lookup of the PTE failed");
			break;
		}
		__atomic_store_n((uint64_t *)host, (DATA_GPA + tgt * GM_PAGE) | SPTE_PRESENT |
					   SPTE_WRITABLE | SPTE_USER | SPTE_ACCESSED, __ATOMIC_RELEASE);
		shadow_mmu_invlpg(mmu, NULL, t->cr3, va);
		__atomic_store_n(&t->tgt[i], tgt, __ATOMIC_SEQ_CST);
		__atomic_fetch_add(&t->seq[i], 1, __ATOMIC_SEQ_CST);
		sched_yield();
	}
	notifier_thread_exit();
	return NULL;
}

static void fill_torture_init(struct fill_torture *t)
{
	struct shadow_mmu_config cfg = { .pool = NULL, .max_gpa = RAM_PAGES * GM_PAGE,
					 .mode = shadow_default_mode };
	struct shadow_slot s;
	int id;

	test_failures_init(&t->fails);
	t->ops = test_env_ulong("UMBRA_SHARE_TORTURE_OPS", FILL_OPS_DEFAULT);
	t->start_s = test_now_s();
	ck_assert_int_eq(shadow_pool_create(4096, &t->pool), 0);
	cfg.pool = t->pool;
	hobj_init(&t->ram, "ram", RAM_PAGES, true);
	hobj_init(&t->own, "own", RAM_PAGES, false);
	ck_assert_int_eq(shadow_mmu_create(&cfg, &t->mmu[0]), 0);
	s = hobj_slot(&t->ram, 0);
	ck_assert_int_eq(shadow_mmu_add_slot(t->mmu[0], &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(t->mmu[0], 0, RAM_PAGES, id, 0), 0);
	s = hobj_slot(&t->own, SH_COW_MPA(0));
	ck_assert_int_eq(shadow_mmu_add_slot(t->mmu[0], &s, &id), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(t->mmu[0], id), 0);
	t->gm.host = t->ram.host;
	t->gm.npages = RAM_PAGES;
	t->gm.next_table = GM_TABLES;
	t->cr3 = gm_table(&t->gm);
	for (unsigned int i = 0; i < FILL_PAGES; i++) {
		gm_map(&t->gm, t->cr3, DATA_VA + i * GM_PAGE, DATA_GPA + i * GM_PAGE, 1,
		       SPTE_WRITABLE | SPTE_USER | SPTE_ACCESSED);
		*(uint64_t *)(t->ram.host + DATA_GPA + i * GM_PAGE) = FILL_ORIG(i);
	}
	/* The base's tables: the upper levels, and half the leaves. */
	struct shadow_vcpu *v = sh_vcpu(t->mmu[0], 0, t->cr3);

	for (unsigned int i = 0; i < FILL_PAGES; i += 2) {
		struct shadow_vcpu_result res;
		uint64_t val;
		int ret = shadow_vcpu_access64_fault_in(v, DATA_VA + i * GM_PAGE, SHADOW_ACCESS_USER,
							&val, &res);

		fill_vcpu_check(t, 0, i, ret, val);
	}
	shadow_vcpu_destroy(v);
}

/* Quiesced: invariants, then every VM reads its exact view. */
static void fill_torture_check(struct fill_torture *t)
{
	ck_assert_int_eq(shadow_pool_check(t->pool), 0);
	for (int k = 0; k < FILL_VMS; k++) {
		struct shadow_vcpu *v = sh_vcpu(t->mmu[k], 0, t->cr3);

		ck_assert_msg(shadow_mmu_check(t->mmu[k]) == 0, "shadow_mmu_check(VM %d)", k);
		for (unsigned int i = 0; i < FILL_PAGES; i++) {
			struct shadow_vcpu_result res;
			uint64_t val;
			int ret = shadow_vcpu_access64_fault_in(v, DATA_VA + i * GM_PAGE, SHADOW_ACCESS_USER,
								&val, &res);

			fill_vcpu_check(t, k, i, ret, val);
		}
		shadow_vcpu_destroy(v);
	}
	test_failures_assert_none(&t->fails);
}

static void fill_torture_phase(struct fill_torture *t)
{
	struct fill_arg args[FILL_VMS];
	pthread_t thr[FILL_VMS], ev, rm;

	/* One CLONE of FILL_VMS - 1 children, as the VMM makes it: the base
	 * gets a new own slot at the first clone and keeps it for the next. */
	for (int k = 1; k < FILL_VMS; k++) {
		struct shadow_slot cs;

		if (k == 1) {
			sh_clone(&t->owns, RAM_PAGES, t->mmu[0], &t->mmu[k]);
		} else {
			cs = sh_own_new(&t->owns, RAM_PAGES);
			ck_assert_int_eq(shadow_mmu_clone(t->mmu[0], NULL, &cs, &t->mmu[k]), 0);
		}
		memset(t->exp[k], 0, sizeof(t->exp[k]));
	}
	for (unsigned int i = 0; i < FILL_PAGES; i++) {
		t->tgt[i] = i;
		t->seq[i] = 0;
	}
	test_gate_init(&t->gate, FILL_VMS + 2);
	for (int k = 0; k < FILL_VMS; k++) {
		args[k] = (struct fill_arg){ .t = t, .vm = k };
		ck_assert_int_eq(pthread_create(&thr[k], NULL, fill_vcpu_thread, &args[k]), 0);
	}
	ck_assert_int_eq(pthread_create(&ev, NULL, fill_evictor_thread, t), 0);
	ck_assert_int_eq(pthread_create(&rm, NULL, fill_remapper_thread, t), 0);
	pthread_join(ev, NULL);
	pthread_join(rm, NULL);
	for (int k = 0; k < FILL_VMS; k++)
		pthread_join(thr[k], NULL);
	test_gate_exit(&t->gate);
	test_failures_assert_none(&t->fails);
	fill_torture_check(t);
	for (int k = 1; k < FILL_VMS; k++) {
		struct shadow_mmu_stats st;

		shadow_mmu_stats(t->mmu[k], &st);
		t->fills += st.fills_in_place;
		shadow_mmu_destroy(t->mmu[k]);
		ck_assert_int_eq(shadow_pool_check(t->pool), 0);
	}
}

START_TEST(test_fill_torture_read_faults_race_cow_breaks_and_evictions)
{
	struct fill_torture *t = calloc(1, sizeof(*t));
	struct shadow_mmu_stats st;

	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq(notifier_thread_init(), 0);
	fill_torture_init(t);
	for (int phase = 0; phase < FILL_PHASES; phase++)
		fill_torture_phase(t);
	shadow_mmu_stats(t->mmu[0], &st);
	t->fills += st.fills_in_place;
	ck_assert_msg(t->fills > 0, "expected leaves filled in place, got none");
	shadow_mmu_destroy(t->mmu[0]);
	ck_assert_uint_eq(shadow_pool_pages_in_use(t->pool, 0), 0);
	hobj_fini(&t->ram);
	hobj_fini(&t->own);
	sh_owns_fini(&t->owns);
	shadow_pool_destroy(t->pool);
	test_failures_exit(&t->fails);
	free(t);
}
END_TEST

Suite *shadow_share_torture_suite(void)
{
	Suite *s = suite_create("shadow_share_torture");
	TCase *tc = tcase_create("torture");

	/* The run fails itself at TEST_TORTURE_LIMIT_S; Check's timeout is a
	 * backstop for a hang. */
	tcase_set_timeout(tc, TEST_TORTURE_LIMIT_S + 60);
	tcase_add_test(tc, test_share_torture_8_vms_2_vcpus_with_invariants_after_each_phase);
	suite_add_tcase(s, tc);
	tc = tcase_create("fill_in_place");
	tcase_set_timeout(tc, TEST_TORTURE_LIMIT_S + 60);
	tcase_add_test(tc, test_fill_torture_read_faults_race_cow_breaks_and_evictions);
	suite_add_tcase(s, tc);
	return s;
}
