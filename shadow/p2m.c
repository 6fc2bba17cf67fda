/*
 * Slots and the P2M of one VM: the memory objects placed in its machine
 * address space (slots, added and subscribed once, never moved), and the
 * map gfn -> (slot, page) that every fault looks up (entries: p2m.h, the
 * tree: p2m_tree.c), with the copy-on-write rule.  Also the guest's memory
 * as the guest-table walker reads it, through the P2M.
 *
 * Locks: the P2M and the slot list are read lock-free (RCU lookups of
 * entries, acquire loads of nr_slots); P2M stores and the publication of a
 * slot are made under mmu_lock.  A slot is subscribed with no shadow lock
 * held.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mmu_internal.h"

struct shadow_mmu_slot *slot_of_id(struct shadow_mmu *mmu, int id)
{
	if (id < 0 || id >= __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE))
		return NULL;
	return &mmu->slots[id];
}

struct shadow_mmu_slot *mmu_mpa_to_slot(struct shadow_mmu *mmu, uint64_t mpa, uint64_t *page)
{
	int n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);

	for (int i = 0; i < n; i++) {
		struct shadow_mmu_slot *slot = &mmu->slots[i];

		if (mpa >= slot->s.mpa && (mpa - slot->s.mpa) >> SHADOW_PAGE_SHIFT < slot->npages) {
			*page = (mpa - slot->s.mpa) >> SHADOW_PAGE_SHIFT;
			return slot;
		}
	}
	return NULL;
}

int p2m_entry_to_page(struct shadow_mmu *mmu, uint64_t e, struct shadow_mmu_slot **slot,
		      uint64_t *page)
{
	if (!p2m_entry_is_present(e))
		return -EFAULT;
	*slot = &mmu->slots[p2m_entry_slot_id(e)];
	*page = p2m_entry_page(e);
	return 0;
}

int p2m_get(struct shadow_mmu *mmu, uint64_t gfn, struct shadow_mmu_slot **slot, uint64_t *page)
{
	if (gfn >= mmu->p2m_pages)
		return -EFAULT;
	return p2m_entry_to_page(mmu, p2m_entry_get(mmu, gfn), slot, page);
}

int p2m_reader_get(struct p2m_reader *r, uint64_t gfn, struct shadow_mmu_slot **slot,
		   uint64_t *page, bool *private)
{
	if (gfn >= r->mmu->p2m_pages)
		return -EFAULT;
	return p2m_entry_to_page(r->mmu, p2m_reader_lookup(r, gfn, private), slot, page);
}

bool p2m_entry_needs_break(struct shadow_mmu *mmu, uint64_t e, bool private)
{
	struct shadow_mmu_slot *slot;

	if (!p2m_entry_is_present(e))
		return false;
	slot = &mmu->slots[p2m_entry_slot_id(e)];
	if (slot->shared || slot->s.readonly)
		return false; /* never copy-on-write */
	if (!private)
		return true; /* another VM's P2M holds the same entry */
	if (!__atomic_load_n(&slot->layer, __ATOMIC_ACQUIRE))
		return false;
	return !__atomic_load_n(&slot->taken_over, __ATOMIC_ACQUIRE) ||
	       page_ref_read(slot->pobj, p2m_entry_page(e)) != 1;
}

bool p2m_is_cow(struct shadow_mmu *mmu, uint64_t gfn)
{
	bool private;
	uint64_t e;

	if (gfn >= mmu->p2m_pages)
		return false;
	e = p2m_entry_lookup(mmu, gfn, &private);
	return p2m_entry_needs_break(mmu, e, private);
}

/* The host address of guest-physical @pa, in page @page of @slot. */
static void *guest_host(const struct shadow_mmu_slot *slot, uint64_t page, uint64_t pa)
{
	return (char *)slot->s.host + (page << SHADOW_PAGE_SHIFT) + (pa & (SHADOW_PAGE_SIZE - 1));
}

int shadow_mmu_p2m_lookup(struct shadow_mmu *mmu, uint64_t gpa, uint64_t *mpa, void **host)
{
	struct shadow_mmu_slot *slot;
	uint64_t page, off = gpa & (SHADOW_PAGE_SIZE - 1);

	if (p2m_get(mmu, gpa >> SHADOW_PAGE_SHIFT, &slot, &page))
		return -EFAULT;
	*mpa = slot->s.mpa + (page << SHADOW_PAGE_SHIFT) + off;
	if (host)
		*host = guest_host(slot, page, gpa);
	return 0;
}

int guest_read(void *ctx, uint64_t pa, uint64_t *val)
{
	uint64_t mpa;
	void *host;

	if (shadow_mmu_p2m_lookup(ctx, pa, &mpa, &host))
		return -EFAULT;
	*val = __atomic_load_n((uint64_t *)host, __ATOMIC_ACQUIRE);
	return 0;
}

int guest_reader_read(void *ctx, uint64_t pa, uint64_t *val)
{
	struct shadow_mmu_slot *slot;
	uint64_t page;

	if (p2m_reader_get(ctx, pa >> SHADOW_PAGE_SHIFT, &slot, &page, NULL))
		return -EFAULT;
	*val = __atomic_load_n((uint64_t *)guest_host(slot, page, pa), __ATOMIC_ACQUIRE);
	return 0;
}

static int guest_cmpxchg(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val)
{
	struct shadow_mmu *mmu = ctx;
	struct shadow_mmu_slot *slot;
	uint64_t page;

	if (p2m_get(mmu, pa >> SHADOW_PAGE_SHIFT, &slot, &page))
		return -EFAULT;
	if (slot->s.readonly || p2m_is_cow(mmu, pa >> SHADOW_PAGE_SHIFT))
		return -EROFS; /* a COW guest table: shadow_mmu_fault copies it first */
	uint64_t *p = guest_host(slot, page, pa);
	return __atomic_compare_exchange_n(p, &old, new_val, false, __ATOMIC_ACQ_REL,
					   __ATOMIC_ACQUIRE)
		       ? 0
		       : -EAGAIN;
}

const struct shadow_mem_ops guest_mem_ops = {
	.read = guest_read,
	.cmpxchg = guest_cmpxchg,
};

int slot_page_get(struct shadow_mmu_slot *slot, uint64_t page, bool write, uint64_t *seq)
{
	shadow_assert_no_lock_held();
	*seq = notifier_read_begin(slot->s.obj, page, page);
	if (!slot->s.ops || !slot->s.ops->get_page)
		return 0;
	return slot->s.ops->get_page(slot->s.priv, page, write);
}

/* Is @s a valid new slot of @npages pages for @mmu: aligned, outside the
 * pool, overlapping no slot of the first @n? */
static bool slot_fits(struct shadow_mmu *mmu, const struct shadow_slot *s, uint64_t npages, int n)
{
	if (s->mpa + npages * SHADOW_PAGE_SIZE < s->mpa ||
	    (shadow_pool_contains(mmu->pool, s->mpa) ||
	     shadow_pool_contains(mmu->pool, s->mpa + npages * SHADOW_PAGE_SIZE - 1)))
		return false;
	for (int i = 0; i < n; i++) {
		const struct shadow_mmu_slot *o = &mmu->slots[i];

		if (s->mpa < o->s.mpa + o->npages * SHADOW_PAGE_SIZE &&
		    o->s.mpa < s->mpa + npages * SHADOW_PAGE_SIZE)
			return false;
	}
	return true;
}

int mmu_slot_prepare(struct shadow_mmu *mmu, const struct shadow_slot *s, bool shared, int *id)
{
	struct shadow_mmu_slot *slot;
	uint64_t npages;
	int n, ret;

	if (!s || !s->obj || !s->host || s->mpa % SHADOW_PAGE_SIZE)
		return -EINVAL;
	npages = notifier_object_npages(s->obj);
	n = __atomic_load_n(&mmu->nr_slots, __ATOMIC_ACQUIRE);
	if (!slot_fits(mmu, s, npages, 0))
		return -EINVAL;
	if (n == SHADOW_MAX_SLOTS)
		return -ENOSPC;
	if (!slot_fits(mmu, s, npages, n))
		return -EINVAL;
	slot = &mmu->slots[n];
	memset(slot, 0, sizeof(*slot));
	slot->s = *s;
	slot->npages = npages;
	slot->shared = shared;
	slot->id = n;
	slot->mmu = mmu;
	ret = pool_obj_get(mmu->pool, s->obj, s->mpa, &slot->pobj);
	if (ret)
		return ret;
	shadow_assert_no_lock_held();
	ret = notifier_subscribe(s->obj, &shadow_notifier_ops, slot, &slot->sub);
	if (ret)
		goto put_pobj;
	*id = n;
	return 0;

put_pobj:
	pool_obj_put(mmu->pool, slot->pobj);
	slot->pobj = NULL;
	return ret;
}

void mmu_slot_publish_locked(struct shadow_mmu *mmu, int id)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	__atomic_store_n(&mmu->nr_slots, id + 1, __ATOMIC_RELEASE);
}

void mmu_slot_unprepare(struct shadow_mmu *mmu, int id)
{
	struct shadow_mmu_slot *slot = &mmu->slots[id];

	shadow_assert_no_lock_held();
	notifier_unsubscribe(slot->sub);
	pool_obj_put(mmu->pool, slot->pobj);
	memset(slot, 0, sizeof(*slot));
}

int mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *s, bool shared, int *id)
{
	int ret = mmu_slot_prepare(mmu, s, shared, id);

	if (ret)
		return ret;
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	mmu_slot_publish_locked(mmu, *id);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	return 0;
}

int shadow_mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *s, int *id)
{
	return mmu_add_slot(mmu, s, false, id);
}

int shadow_mmu_add_segment(struct shadow_mmu *mmu, const struct shadow_slot *s, int *id)
{
	return mmu_add_slot(mmu, s, true, id);
}

/* Stores @e as gfn @gfn's entry, then zaps whatever mapped the old backing
 * page in this VM (conservative: every entry of that page, whichever gfn it
 * came from; other VMs keep theirs).  0 or -ENOMEM (nothing changed).
 * mmu_lock. */
static int p2m_set_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t e, struct zap_batch *b,
			  struct p2m_batch *pb)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t old = p2m_entry_lookup_locked(mmu, gfn, NULL);

	int ret;

	if (old == e)
		return 0;
	/* The new entry first, then the zap of the old page under its stripe:
	 * a fill in place that another VM makes in a table we share either
	 * sees the new entry or is found by the zap (fill.c). */
	ret = p2m_entry_set_locked(mmu, gfn, e, pb);
	if (ret || !p2m_entry_is_present(old))
		return ret;
	zap_slot_range_local_locked(mmu, &mmu->slots[p2m_entry_slot_id(old)], p2m_entry_page(old),
				    p2m_entry_page(old), b);
	return 0;
}

/* Maps the @n gfns from @gfn, all in one chunk, to pages from @e's (P2M_NONE:
 * unmaps): a whole chunk with no leaf becomes one linear entry (what it
 * mapped before zapped as one range), anything else entry by entry.  0 or
 * -ENOMEM.  mmu_lock. */
static int p2m_map_chunk_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t n, uint64_t e,
				struct zap_batch *b, struct p2m_batch *pb)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	const bool present = p2m_entry_is_present(e);
	uint64_t old;
	int ret;

	if (!(gfn & (P2M_CHUNK_PAGES - 1)) && n == P2M_CHUNK_PAGES) {
		/* The new run first, then the zap (as p2m_set_locked). */
		ret = p2m_chunk_set_linear_locked(mmu, gfn, present ? e | P2M_LINEAR : 0, pb, &old);
		if (ret <= 0) {
			if (!ret && old && old != (present ? e | P2M_LINEAR : 0)) {
				uint64_t oe = p2m_linear_entry(old, 0), op = p2m_entry_page(oe);

				zap_slot_range_local_locked(mmu, &mmu->slots[p2m_entry_slot_id(oe)],
							    op, op + n - 1, b);
			}
			return ret;
		}
	}
	for (uint64_t i = 0; i < n; i++) {
		ret = p2m_set_locked(mmu, gfn + i, present ? e + i : P2M_NONE, b, pb);
		if (ret)
			return ret;
	}
	return 0;
}

int shadow_mmu_map_gpa(struct shadow_mmu *mmu, uint64_t gpa, uint64_t npages, int slot_id,
		       uint64_t first_page)
{
	struct shadow_mmu_slot *slot = NULL;
	uint64_t gfn = gpa >> SHADOW_PAGE_SHIFT, done = 0;
	struct p2m_batch pb;
	struct zap_batch b;
	int ret = 0;

	if (gpa % SHADOW_PAGE_SIZE || gfn > mmu->p2m_pages || npages > mmu->p2m_pages - gfn)
		return -EINVAL;
	if (slot_id >= 0) {
		slot = slot_of_id(mmu, slot_id);
		if (!slot || first_page > slot->npages || npages > slot->npages - first_page)
			return -EINVAL;
	}
	zap_batch_init(&b);
	p2m_batch_init(&pb);
	umbra_rwlock_write_lock(&mmu->mmu_lock);
	while (done < npages && !ret) {
		uint64_t g = gfn + done, left = npages - done;
		uint64_t n = P2M_CHUNK_PAGES - (g & (P2M_CHUNK_PAGES - 1));

		if (n > left)
			n = left;
		ret = p2m_map_chunk_locked(mmu, g, n,
					   slot ? p2m_entry_make(slot_id, first_page + done) : P2M_NONE,
					   &b, &pb);
		done += n;
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_rwlock_write_unlock(&mmu->mmu_lock);
	p2m_batch_finish(mmu, &pb);
	return ret;
}
