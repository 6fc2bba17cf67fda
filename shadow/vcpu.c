/*
 * The software vCPU: a model of what a CPU does with the shadow tables.  It
 * walks the pool's visible copy (the one the CPU walks, which a guest may
 * have written: pool.c) from its root with the architectural walker
 * (walk.c) under the guest's paging mode, reading entries atomically as the
 * hardware walker does, and caches translations in a direct-mapped TLB of
 * configurable size.  The shadow MMU reaches it through struct
 * shadow_tlb_ops, the interface a KVM vCPU implements in vmm/.
 *
 * tlb_lock (rank UMBRA_LOCK_RANK_SUBSCRIBER_LEAF) protects the TLB, the
 * current root and the flush generation.  A TLB hit and the data access are
 * done under it, so an access that begins after a flush returned cannot use
 * a translation cached before: the model of "a flush IPI is taken at an
 * instruction boundary".
 *
 * The walk itself is lock-free, like the hardware's: it runs outside
 * tlb_lock, inside an RCU read-side critical section (umbra_rcu_read_lock),
 * so a flush does not wait for it.  A table the walk is reading may be
 * unlinked, flushed and freed meanwhile; the pool reuses a freed page only
 * after a grace period (pool.c), so the walk never reads a page reused
 * under it.  What it read may be stale: the fill happens under tlb_lock only
 * if no flush ran since the walk began (flush_gen unchanged), else the
 * access starts again.
 *
 * Threads that call the access functions must be registered with liburcu
 * (notifier_thread_init); debug builds abort otherwise.
 */
#include <errno.h>
#include <stdlib.h>

#include "shadow_internal.h"

struct tlb_entry {
	uint64_t vpn;		/* va >> 12 */
	uint64_t mpa;		/* machine address of the page */
	char *host;		/* host address of the page */
	unsigned int rights;
	bool valid;
};

struct shadow_vcpu {
	struct shadow_tlb tlb;	/* registered with the MMU */
	struct shadow_mmu *mmu;
	struct shadow_paging_mode mode;
	struct umbra_mutex tlb_lock;
	uint64_t root;		/* pool gpa of the current root; under tlb_lock */
	uint64_t flush_gen;	/* bumped by every flush and root change; under tlb_lock */
	unsigned int nr_entries;
	struct tlb_entry *entries; /* under tlb_lock */
	struct shadow_vcpu_stats stats; /* relaxed atomics */
};

#define vcpu_stat_inc(v, f) __atomic_fetch_add(&(v)->stats.f, 1, __ATOMIC_RELAXED)

static struct shadow_vcpu *tlb_to_vcpu(struct shadow_tlb *tlb)
{
	return (struct shadow_vcpu *)tlb; /* tlb is the first member */
}

static void tlb_flush_all_locked(struct shadow_vcpu *vcpu)
{
	umbra_mutex_assert_held(&vcpu->tlb_lock);
	vcpu->flush_gen++;
	for (unsigned int i = 0; i < vcpu->nr_entries; i++)
		vcpu->entries[i].valid = false;
}

static void vcpu_flush_all(struct shadow_tlb *tlb)
{
	struct shadow_vcpu *vcpu = tlb_to_vcpu(tlb);

	umbra_mutex_lock(&vcpu->tlb_lock);
	tlb_flush_all_locked(vcpu);
	umbra_mutex_unlock(&vcpu->tlb_lock);
	vcpu_stat_inc(vcpu, flushes_all);
}

static void tlb_flush_va_locked(struct shadow_vcpu *vcpu, uint64_t va)
{
	uint64_t vpn = va >> SHADOW_PAGE_SHIFT;
	struct tlb_entry *e;

	umbra_mutex_assert_held(&vcpu->tlb_lock);
	vcpu->flush_gen++; /* a walk in flight may have read the old entry */
	if (!vcpu->nr_entries)
		return;
	e = &vcpu->entries[vpn % vcpu->nr_entries];
	if (e->valid && e->vpn == vpn)
		e->valid = false;
}

static void vcpu_flush_va(struct shadow_tlb *tlb, uint64_t va)
{
	struct shadow_vcpu *vcpu = tlb_to_vcpu(tlb);

	umbra_mutex_lock(&vcpu->tlb_lock);
	tlb_flush_va_locked(vcpu, va);
	umbra_mutex_unlock(&vcpu->tlb_lock);
	vcpu_stat_inc(vcpu, flushes_va);
}

static const struct shadow_tlb_ops vcpu_tlb_ops = {
	.flush_all = vcpu_flush_all,
	.flush_va = vcpu_flush_va,
};

/* The pool as the CPU sees it: the visible copy, readable, never writable
 * (A/D writes fail); any address inside the pool reads what is there. */
static int pool_read(void *ctx, uint64_t pa, uint64_t *val)
{
	struct shadow_pool *pool = ctx;
	uint64_t *table;

	if (!shadow_pool_contains(pool, pa))
		return -EFAULT;
	table = shadow_pool_table(pool, pa & ~(uint64_t)(SHADOW_PAGE_SIZE - 1));
	*val = spte_read(table + (pa & (SHADOW_PAGE_SIZE - 1)) / sizeof(uint64_t));
	return 0;
}

static int pool_cmpxchg(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val)
{
	return -EROFS;
}

static const struct shadow_mem_ops pool_mem_ops = {
	.read = pool_read,
	.cmpxchg = pool_cmpxchg,
};

int shadow_vcpu_create(struct shadow_mmu *mmu, const struct shadow_vcpu_config *config,
		       struct shadow_vcpu **out)
{
	struct shadow_vcpu *vcpu = calloc(1, sizeof(*vcpu));

	if (!vcpu)
		return -ENOMEM;
	vcpu->mmu = mmu;
	vcpu->mode = *shadow_mmu_mode(mmu);
	vcpu->nr_entries = config ? config->tlb_entries : 0;
	if (vcpu->nr_entries) {
		vcpu->entries = calloc(vcpu->nr_entries, sizeof(*vcpu->entries));
		if (!vcpu->entries) {
			free(vcpu);
			return -ENOMEM;
		}
	}
	umbra_mutex_init(&vcpu->tlb_lock, "shadow.vcpu.tlb_lock",
			    UMBRA_LOCK_RANK_SUBSCRIBER_LEAF);
	vcpu->tlb.ops = &vcpu_tlb_ops;
	shadow_mmu_tlb_register(mmu, &vcpu->tlb);
	*out = vcpu;
	return 0;
}

void shadow_vcpu_destroy(struct shadow_vcpu *vcpu)
{
	if (!vcpu)
		return;
	shadow_mmu_tlb_unregister(vcpu->mmu, &vcpu->tlb);
	umbra_mutex_exit(&vcpu->tlb_lock);
	free(vcpu->entries);
	free(vcpu);
}

/* Points the vCPU at the root that a load (or resume) returned, @ret its
 * result. */
static int vcpu_set_root(struct shadow_vcpu *vcpu, int ret, uint64_t root)
{
	umbra_mutex_lock(&vcpu->tlb_lock);
	/* On failure the vCPU has no root (its old one was given up). */
	vcpu->root = ret ? 0 : root;
	tlb_flush_all_locked(vcpu); /* MOV CR3 flushes (no PCID, no global shadow entries) */
	umbra_mutex_unlock(&vcpu->tlb_lock);
	return ret;
}

int shadow_vcpu_load_cr3(struct shadow_vcpu *vcpu, uint64_t cr3)
{
	uint64_t root = 0;
	int ret = shadow_mmu_load_cr3(vcpu->mmu, &vcpu->tlb, cr3, &root);

	return vcpu_set_root(vcpu, ret, root);
}

int shadow_vcpu_resume_cr3(struct shadow_vcpu *vcpu, uint64_t cr3)
{
	uint64_t root = 0;
	int ret = shadow_mmu_resume_cr3(vcpu->mmu, &vcpu->tlb, cr3, &root);

	return vcpu_set_root(vcpu, ret, root);
}

static uint64_t vcpu_cr3(struct shadow_vcpu *vcpu)
{
	/* tlb.cr3 is written under mmu_lock by load_cr3, on this vCPU's own
	 * thread: reading it here, on the same thread, needs no lock. */
	return vcpu->tlb.cr3;
}

static int vcpu_access(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
		       struct shadow_vcpu_result *res, uint64_t *data);

int shadow_vcpu_access(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
		       struct shadow_vcpu_result *res)
{
	return vcpu_access(vcpu, va, access, res, NULL);
}

int shadow_vcpu_access64(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
			 uint64_t *val, struct shadow_vcpu_result *res)
{
	if (va % sizeof(uint64_t) || !val)
		return -EINVAL;
	return vcpu_access(vcpu, va, access, res, val);
}

/* The data access, done under tlb_lock like the translation: a flush that
 * returned before the access began is seen by both (one instruction). */
static void vcpu_data_op(void *host, unsigned int access, uint64_t *data)
{
	if (access & SHADOW_ACCESS_WRITE)
		__atomic_store_n((uint64_t *)host, *data, __ATOMIC_RELEASE);
	else
		*data = __atomic_load_n((uint64_t *)host, __ATOMIC_ACQUIRE);
}

/* The TLB's answer for @va, if entry @e (NULL: no TLB) holds it: the
 * permission check (a #PF invalidates the TLB entries of its address), then
 * the access.  True if it answered (*@ret set), false on a miss.
 * tlb_lock. */
static bool tlb_lookup_locked(struct shadow_vcpu *vcpu, struct tlb_entry *e, uint64_t va,
			      unsigned int access, struct shadow_vcpu_result *res, uint64_t *data,
			      int *ret)
{
	umbra_mutex_assert_held(&vcpu->tlb_lock);
	uint64_t off = va & (SHADOW_PAGE_SIZE - 1);
	uint32_t ec;

	if (!e || !e->valid || e->vpn != va >> SHADOW_PAGE_SHIFT)
		return false;
	ec = shadow_permission_fault(&vcpu->mode, e->rights, access);
	if (ec) {
		e->valid = false;
		res->error_code = ec;
		vcpu_stat_inc(vcpu, faults);
		*ret = -EFAULT;
		return true;
	}
	res->host = e->host + off;
	res->mpa = e->mpa + off;
	res->tlb_hit = true;
	if (data)
		vcpu_data_op(res->host, access, data);
	vcpu_stat_inc(vcpu, tlb_hits);
	*ret = 0;
	return true;
}

/* What walk @w of @va answered (@ret), with no flush since it began: a
 * fault drops the TLB entry of its address; a translation fills entry @e
 * (NULL: no TLB) and the access is done.  tlb_lock. */
static int tlb_fill_locked(struct shadow_vcpu *vcpu, struct tlb_entry *e, uint64_t va,
			   unsigned int access, int ret, const struct shadow_walk *w,
			   struct shadow_vcpu_result *res, uint64_t *data)
{
	umbra_mutex_assert_held(&vcpu->tlb_lock);
	uint64_t vpn = va >> SHADOW_PAGE_SHIFT, off = va & (SHADOW_PAGE_SIZE - 1);

	if (ret == -EFAULT) {
		if (e && e->valid && e->vpn == vpn)
			e->valid = false;
		res->error_code = w->error_code;
		vcpu_stat_inc(vcpu, faults);
		return ret;
	}
	if (ret)
		return ret;
	/* The walk asked for A/D writes only where they were missing (-EROFS
	 * above); a writable leaf without D would be written on this write. */
	uint64_t page_mpa = w->pa & ~(uint64_t)(SHADOW_PAGE_SIZE - 1), bp;
	struct shadow_mmu_slot *slot = mmu_mpa_to_slot(vcpu->mmu, page_mpa, &bp);

	if (!slot)
		return -EIO;
	res->host = (char *)slot->s.host + (bp << SHADOW_PAGE_SHIFT) + off;
	res->mpa = w->pa;
	if (e) {
		e->vpn = vpn;
		e->mpa = page_mpa;
		e->host = (char *)slot->s.host + (bp << SHADOW_PAGE_SHIFT);
		e->rights = w->rights;
		e->valid = true;
	}
	if (data)
		vcpu_data_op(res->host, access, data);
	return 0;
}

static int vcpu_access(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
		       struct shadow_vcpu_result *res, uint64_t *data)
{
	struct shadow_pool *pool = shadow_mmu_pool(vcpu->mmu);
	uint64_t vpn = va >> SHADOW_PAGE_SHIFT;
	struct tlb_entry *e;
	struct shadow_walk w;
	uint64_t root, gen;
	int ret;

	if (UMBRA_LOCK_DEBUG && !umbra_rcu_thread_is_registered())
		abort(); /* the walk needs an RCU reader: notifier_thread_init() */
	res->host = NULL;
	res->mpa = 0;
	res->error_code = 0;
	res->tlb_hit = false;
	vcpu_stat_inc(vcpu, accesses);
	umbra_mutex_lock(&vcpu->tlb_lock);
	for (;;) {
		if (!vcpu->root) {
			ret = -ENOENT;
			break;
		}
		e = vcpu->nr_entries ? &vcpu->entries[vpn % vcpu->nr_entries] : NULL;
		if (tlb_lookup_locked(vcpu, e, va, access, res, data, &ret))
			break;
		/* The lock-free walk (RCU), then the fill if no flush came between. */
		root = vcpu->root;
		gen = vcpu->flush_gen;
		umbra_mutex_unlock(&vcpu->tlb_lock);
		vcpu_stat_inc(vcpu, walks);
		umbra_rcu_read_lock();
		ret = shadow_walk(&vcpu->mode, &pool_mem_ops, pool, root, va, access,
				  SHADOW_WALK_SET_AD, &w);
		umbra_rcu_read_unlock();
		umbra_mutex_lock(&vcpu->tlb_lock);
		if (vcpu->flush_gen != gen)
			continue; /* flushed during the walk: it may have read stale entries */
		ret = tlb_fill_locked(vcpu, e, va, access, ret, &w, res, data);
		break;
	}
	umbra_mutex_unlock(&vcpu->tlb_lock);
	return ret;
}

/* Faults after which a fault-in gives up (-ELOOP): a translation that the
 * MMU keeps installing and something keeps zapping. */
#define VCPU_FAULT_IN_MAX_TRIES 1000000u

/* The fault-in loop of access and access64: @val NULL for access. */
static int access_fault_in(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access, uint64_t *val,
			   struct shadow_vcpu_result *res)
{
	for (unsigned int tries = 0; tries < VCPU_FAULT_IN_MAX_TRIES; tries++) {
		uint32_t ec;
		int ret = val ? shadow_vcpu_access64(vcpu, va, access, val, res) :
				shadow_vcpu_access(vcpu, va, access, res);

		if (ret != -EFAULT)
			return ret;
		ret = shadow_mmu_fault(vcpu->mmu, vcpu_cr3(vcpu), va, access, &ec);
		if (ret == SHADOW_FAULT_GUEST) {
			res->error_code = ec;
			return -EFAULT;
		}
		if (ret < 0)
			return ret;
	}
	return -ELOOP;
}

int shadow_vcpu_access_fault_in(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
				struct shadow_vcpu_result *res)
{
	return access_fault_in(vcpu, va, access, NULL, res);
}

void shadow_vcpu_invlpg(struct shadow_vcpu *vcpu, uint64_t va)
{
	shadow_mmu_invlpg(vcpu->mmu, &vcpu->tlb, vcpu_cr3(vcpu), va);
	umbra_mutex_lock(&vcpu->tlb_lock);
	tlb_flush_va_locked(vcpu, va);
	umbra_mutex_unlock(&vcpu->tlb_lock);
}

int shadow_vcpu_flush(struct shadow_vcpu *vcpu)
{
	int ret = shadow_mmu_flush(vcpu->mmu, vcpu_cr3(vcpu));

	umbra_mutex_lock(&vcpu->tlb_lock);
	tlb_flush_all_locked(vcpu);
	umbra_mutex_unlock(&vcpu->tlb_lock);
	return ret;
}

void shadow_vcpu_stats(const struct shadow_vcpu *vcpu, struct shadow_vcpu_stats *stats)
{
	stats->accesses = __atomic_load_n(&vcpu->stats.accesses, __ATOMIC_RELAXED);
	stats->tlb_hits = __atomic_load_n(&vcpu->stats.tlb_hits, __ATOMIC_RELAXED);
	stats->walks = __atomic_load_n(&vcpu->stats.walks, __ATOMIC_RELAXED);
	stats->faults = __atomic_load_n(&vcpu->stats.faults, __ATOMIC_RELAXED);
	stats->flushes_all = __atomic_load_n(&vcpu->stats.flushes_all, __ATOMIC_RELAXED);
	stats->flushes_va = __atomic_load_n(&vcpu->stats.flushes_va, __ATOMIC_RELAXED);
}

unsigned int shadow_vcpu_tlb_valid(struct shadow_vcpu *vcpu)
{
	unsigned int n = 0;

	umbra_mutex_lock(&vcpu->tlb_lock);
	for (unsigned int i = 0; i < vcpu->nr_entries; i++)
		n += vcpu->entries[i].valid;
	umbra_mutex_unlock(&vcpu->tlb_lock);
	return n;
}

int shadow_vcpu_access64_fault_in(struct shadow_vcpu *vcpu, uint64_t va, unsigned int access,
				  uint64_t *val, struct shadow_vcpu_result *res)
{
	return access_fault_in(vcpu, va, access, val, res);
}
