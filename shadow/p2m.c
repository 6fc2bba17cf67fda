/*
 * Slots and the P2M of one VM: the memory objects placed in its machine
 * address space (slots, added and subscribed once, never moved), and the
 * map gfn -> (slot, page) that every fault looks up (entries: p2m.h).  Also
 * the guest's memory as the guest-table walker reads it, through the P2M.
 *
 * Locks: the P2M and the slot list are read lock-free (acquire loads of
 * entries and of nr_slots); P2M stores and the publication of a slot are
 * made under mmu_lock.  A slot is subscribed with no shadow lock held.
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

int p2m_get(struct shadow_mmu *mmu, uint64_t gfn, struct shadow_mmu_slot **slot, uint64_t *page)
{
	uint64_t e;

	if (gfn >= mmu->p2m_pages)
		return -EFAULT;
	e = p2m_entry_get(mmu, gfn);
	if (!p2m_entry_is_present(e))
		return -EFAULT;
	*slot = &mmu->slots[p2m_entry_slot_id(e)];
	*page = p2m_entry_page(e);
	return 0;
}

bool p2m_is_cow(struct shadow_mmu *mmu, uint64_t gfn)
{
	return gfn < mmu->p2m_pages && p2m_entry_is_cow(p2m_entry_get(mmu, gfn));
}

/* ---- the sparse P2M (p2m.h) ------------------------------------------------ */

int p2m_init(struct shadow_mmu *mmu)
{
	mmu->p2m_chunks = (mmu->p2m_pages + P2M_CHUNK_PAGES - 1) >> P2M_CHUNK_SHIFT;
	mmu->p2m_dir = calloc(mmu->p2m_chunks, sizeof(*mmu->p2m_dir));
	return mmu->p2m_dir ? 0 : -ENOMEM;
}

void p2m_exit(struct shadow_mmu *mmu)
{
	for (uint64_t c = 0; mmu->p2m_dir && c < mmu->p2m_chunks; c++)
		if (p2m_dir_is_array(mmu->p2m_dir[c]))
			free((void *)(uintptr_t)mmu->p2m_dir[c]);
	free(mmu->p2m_dir);
}

/* The array of chunk @c, made from its run (or emptiness) if it has none:
 * 0 or -ENOMEM.  Readers of the old directory entry compute the same
 * entries as the array holds.  mmu_lock. */
static int p2m_chunk_array_locked(struct shadow_mmu *mmu, uint64_t c, uint64_t **out)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	uint64_t d = __atomic_load_n(&mmu->p2m_dir[c], __ATOMIC_RELAXED);
	uint64_t *a;

	if (p2m_dir_is_array(d)) {
		*out = (uint64_t *)(uintptr_t)d;
		return 0;
	}
	a = malloc(P2M_CHUNK_PAGES * sizeof(*a));
	if (!a)
		return -ENOMEM;
	for (uint64_t k = 0; k < P2M_CHUNK_PAGES; k++)
		a[k] = p2m_dir_entry(d, k);
	__atomic_store_n(&mmu->p2m_dir[c], (uint64_t)(uintptr_t)a, __ATOMIC_RELEASE);
	*out = a;
	return 0;
}

int p2m_entry_set_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t e)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	const uint64_t c = gfn >> P2M_CHUNK_SHIFT, k = gfn & (P2M_CHUNK_PAGES - 1);
	uint64_t d = __atomic_load_n(&mmu->p2m_dir[c], __ATOMIC_RELAXED);
	uint64_t *a;
	int ret;

	if (!p2m_dir_is_array(d) && p2m_dir_entry(d, k) == e)
		return 0;
	ret = p2m_chunk_array_locked(mmu, c, &a);
	if (ret)
		return ret;
	__atomic_store_n(&a[k], e, __ATOMIC_RELEASE);
	return 0;
}

/* @e with the copy-on-write bit if it maps a page of a non-shared slot. */
static uint64_t p2m_entry_cow_for_clone(struct shadow_mmu *parent, uint64_t e)
{
	if (!p2m_entry_is_present(e) || parent->slots[p2m_entry_slot_id(e)].shared)
		return e;
	return p2m_entry_mark_cow(e);
}

/* Copies parent array @pa into child array @ca, marking both.  The
 * parent's mmu_lock. */
static void p2m_clone_array_locked(struct shadow_mmu *parent, uint64_t *pa, uint64_t *ca)
{
	umbra_mutex_assert_held(&parent->mmu_lock);
	for (uint64_t k = 0; k < P2M_CHUNK_PAGES; k++) {
		uint64_t e = __atomic_load_n(&pa[k], __ATOMIC_RELAXED), m = p2m_entry_cow_for_clone(parent, e);

		if (m != e)
			__atomic_store_n(&pa[k], m, __ATOMIC_RELEASE);
		ca[k] = m;
	}
}

int p2m_clone_locked(struct shadow_mmu *parent, struct shadow_mmu *child)
{
	umbra_mutex_assert_held(&parent->mmu_lock);
	/* The child's arrays first: a failure changes nothing of the parent's
	 * (the child's destroy frees what was made). */
	for (uint64_t c = 0; c < parent->p2m_chunks; c++) {
		if (!p2m_dir_is_array(__atomic_load_n(&parent->p2m_dir[c], __ATOMIC_RELAXED)))
			continue;
		uint64_t *a = malloc(P2M_CHUNK_PAGES * sizeof(*a));
		if (!a)
			return -ENOMEM;
		child->p2m_dir[c] = (uint64_t)(uintptr_t)a;
	}
	for (uint64_t c = 0; c < parent->p2m_chunks; c++) {
		uint64_t d = __atomic_load_n(&parent->p2m_dir[c], __ATOMIC_RELAXED), m;

		if (p2m_dir_is_array(d)) {
			p2m_clone_array_locked(parent, (uint64_t *)(uintptr_t)d,
					       (uint64_t *)(uintptr_t)child->p2m_dir[c]);
			continue;
		}
		if (!d)
			continue;
		m = p2m_entry_cow_for_clone(parent, d & ~P2M_DIR_LINEAR) | P2M_DIR_LINEAR;
		if (m != d)
			__atomic_store_n(&parent->p2m_dir[c], m, __ATOMIC_RELEASE);
		__atomic_store_n(&child->p2m_dir[c], m, __ATOMIC_RELEASE);
	}
	return 0;
}

int shadow_mmu_p2m_lookup(struct shadow_mmu *mmu, uint64_t gpa, uint64_t *mpa, void **host)
{
	struct shadow_mmu_slot *slot;
	uint64_t page, off = gpa & (SHADOW_PAGE_SIZE - 1);

	if (p2m_get(mmu, gpa >> SHADOW_PAGE_SHIFT, &slot, &page))
		return -EFAULT;
	*mpa = slot->s.mpa + (page << SHADOW_PAGE_SHIFT) + off;
	if (host)
		*host = (char *)slot->s.host + (page << SHADOW_PAGE_SHIFT) + off;
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

static int guest_cmpxchg(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val)
{
	struct shadow_mmu *mmu = ctx;
	struct shadow_mmu_slot *slot;
	uint64_t page;

	if (p2m_get(mmu, pa >> SHADOW_PAGE_SHIFT, &slot, &page))
		return -EFAULT;
	if (slot->s.readonly || p2m_is_cow(mmu, pa >> SHADOW_PAGE_SHIFT))
		return -EROFS; /* a COW guest table: shadow_mmu_fault copies it first */
	uint64_t *p = (uint64_t *)((char *)slot->s.host + (page << SHADOW_PAGE_SHIFT) +
				   (pa & (SHADOW_PAGE_SIZE - 1)));
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

int mmu_add_slot(struct shadow_mmu *mmu, const struct shadow_slot *s, bool shared, int *id)
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
	slot->rmap = slot->pobj->rmap;
	shadow_assert_no_lock_held();
	ret = notifier_subscribe(s->obj, &shadow_notifier_ops, slot, &slot->sub);
	if (ret)
		goto put_pobj;
	umbra_mutex_lock(&mmu->mmu_lock);
	__atomic_store_n(&mmu->nr_slots, n + 1, __ATOMIC_RELEASE);
	umbra_mutex_unlock(&mmu->mmu_lock);
	*id = n;
	return 0;

put_pobj:
	pool_obj_put(mmu->pool, slot->pobj);
	slot->rmap = NULL;
	slot->pobj = NULL;
	return ret;
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
static int p2m_set_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t e, struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	uint64_t old = p2m_entry_get(mmu, gfn);

	int ret;

	if (old == e)
		return 0;
	/* The new entry first, then the zap of the old page under its stripe:
	 * a fill in place that another VM makes in a table we share either
	 * sees the new entry or is found by the zap (fill.c). */
	ret = p2m_entry_set_locked(mmu, gfn, e);
	if (ret || !p2m_entry_is_present(old))
		return ret;
	zap_slot_range_local_locked(mmu, &mmu->slots[p2m_entry_slot_id(old)], p2m_entry_page(old),
				    p2m_entry_page(old), b);
	return 0;
}

/* Maps the @n gfns from @gfn, all in one chunk, to pages from @e's (P2M_NONE:
 * unmaps): a whole chunk without an array becomes one run (what it mapped
 * before zapped as one range), anything else entry by entry.  0 or -ENOMEM.
 * mmu_lock. */
static int p2m_map_chunk_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t n, uint64_t e,
				struct zap_batch *b)
{
	umbra_mutex_assert_held(&mmu->mmu_lock);
	const uint64_t c = gfn >> P2M_CHUNK_SHIFT;
	uint64_t chunk_end = (c + 1) << P2M_CHUNK_SHIFT;
	uint64_t d = __atomic_load_n(&mmu->p2m_dir[c], __ATOMIC_RELAXED);
	int ret;

	if (chunk_end > mmu->p2m_pages)
		chunk_end = mmu->p2m_pages;
	if (gfn == c << P2M_CHUNK_SHIFT && gfn + n == chunk_end && !p2m_dir_is_array(d)) {
		uint64_t nd = p2m_entry_is_present(e) ? e | P2M_DIR_LINEAR : 0;

		if (d == nd)
			return 0;
		/* The new run first, then the zap (as p2m_set_locked). */
		__atomic_store_n(&mmu->p2m_dir[c], nd, __ATOMIC_RELEASE);
		if (d) {
			uint64_t old = d & ~P2M_DIR_LINEAR, op = p2m_entry_page(old);

			zap_slot_range_local_locked(mmu, &mmu->slots[p2m_entry_slot_id(old)], op,
						    op + n - 1, b);
		}
		return 0;
	}
	for (uint64_t i = 0; i < n; i++) {
		ret = p2m_set_locked(mmu, gfn + i, p2m_entry_is_present(e) ? e + i : P2M_NONE, b);
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
	umbra_mutex_lock(&mmu->mmu_lock);
	while (done < npages && !ret) {
		uint64_t g = gfn + done, left = npages - done;
		uint64_t n = P2M_CHUNK_PAGES - (g & (P2M_CHUNK_PAGES - 1));

		if (n > left)
			n = left;
		ret = p2m_map_chunk_locked(mmu, g, n,
					   slot ? p2m_entry_make(slot_id, first_page + done) : P2M_NONE,
					   &b);
		done += n;
	}
	bump_sync_seq_locked(mmu);
	zap_batch_finish_locked(mmu, &b);
	umbra_mutex_unlock(&mmu->mmu_lock);
	return ret;
}
