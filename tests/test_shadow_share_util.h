/*
 * Helpers of the sharing suites (test_shadow_share.c, test_shadow_share_torture.c):
 * VMs on one pool, each with private RAM (identity P2M at machine address 0
 * for the first VM; a clone shares it copy-on-write), an own slot (where a
 * VM's private copies go; sh_clone adds one to each VM of a clone),
 * optionally a shared segment, and guest tables built in RAM.
 */
#ifndef UMBRA_TEST_SHADOW_SHARE_UTIL_H
#define UMBRA_TEST_SHADOW_SHARE_UTIL_H

#include "test_shadow_util.h"

/* A host-side memory object: the notifier object, its pages, its store. */
struct hobj {
	struct notifier_object *obj;
	uint8_t *host;
	uint64_t npages;
	struct shadow_store *store;
};

static inline void hobj_init(struct hobj *h, const char *name, uint64_t npages, bool store)
{
	memset(h, 0, sizeof(*h));
	h->npages = npages;
	h->host = mmap(NULL, npages * GM_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		       0);
	ck_assert_ptr_ne(h->host, MAP_FAILED);
	ck_assert_int_eq(notifier_object_create(name, npages, &h->obj), 0);
	if (store)
		ck_assert_int_eq(shadow_store_create(h->obj, h->host, &h->store), 0);
}

static inline void hobj_fini(struct hobj *h)
{
	notifier_object_destroy(h->obj);
	shadow_store_destroy(h->store);
	munmap(h->host, h->npages * GM_PAGE);
}

static inline struct shadow_slot hobj_slot(struct hobj *h, uint64_t mpa)
{
	struct shadow_slot s = { .obj = h->obj, .mpa = mpa, .host = h->host };

	if (h->store) {
		s.ops = &shadow_store_slot_ops;
		s.priv = h->store;
	}
	return s;
}

/* Machine addresses: RAM at 0, segments at 1 GiB, first own slots from
 * 4 GiB, the own slots that clones add from 32 GiB. */
#define SH_SEG_MPA (1ull << 30)
#define SH_COW_MPA(k) ((4ull << 30) + (uint64_t)(k) * (256ull << 20))
#define SH_OWN_MPA(i) ((32ull << 30) + (uint64_t)(i) * (64ull << 20))
#define SH_OWN_MAX 256

/* The own-slot objects that the clones of one test add (each clone: the
 * parent's new own slot and the child's), freed after every VM. */
struct sh_owns {
	struct hobj obj[SH_OWN_MAX];
	unsigned int n;			/* atomic: clones may run in several threads */
};

/* A new own object of @npages pages (at least every gfn of the guest). */
static inline struct shadow_slot sh_own_new(struct sh_owns *o, uint64_t npages)
{
	unsigned int i = __atomic_fetch_add(&o->n, 1, __ATOMIC_RELAXED);

	ck_assert_uint_lt(i, SH_OWN_MAX);
	hobj_init(&o->obj[i], "own", npages, false);
	return hobj_slot(&o->obj[i], SH_OWN_MPA(i));
}

/* Clones @parent into *@out, both with new own slots of @npages pages. */
static inline void sh_clone(struct sh_owns *o, uint64_t npages, struct shadow_mmu *parent,
			    struct shadow_mmu **out)
{
	struct shadow_slot ps = sh_own_new(o, npages), cs = sh_own_new(o, npages);

	ck_assert_int_eq(shadow_mmu_clone(parent, &ps, &cs, out), 0);
}

static inline void sh_owns_fini(struct sh_owns *o)
{
	for (unsigned int i = 0; i < o->n; i++)
		hobj_fini(&o->obj[i]);
	o->n = 0;
}

/* Host pointer of guest-physical @gpa in @mmu (through its P2M). */
static inline uint64_t *vm_ptr(struct shadow_mmu *mmu, uint64_t gpa)
{
	uint64_t mpa;
	void *host;

	ck_assert_int_eq(shadow_mmu_p2m_lookup(mmu, gpa, &mpa, &host), 0);
	return host;
}

/* The host writes guest memory of @mmu for its guest: copy-on-write first. */
static inline void vm_write(struct shadow_mmu *mmu, uint64_t gpa, uint64_t val)
{
	ck_assert_int_eq(shadow_mmu_cow_break(mmu, gpa), 0);
	__atomic_store_n(vm_ptr(mmu, gpa), val, __ATOMIC_RELEASE);
}

static inline uint64_t vm_read(struct shadow_mmu *mmu, uint64_t gpa)
{
	return __atomic_load_n(vm_ptr(mmu, gpa), __ATOMIC_ACQUIRE);
}

static inline void assert_pool_check(struct shadow_pool *pool)
{
	int ret = shadow_pool_check(pool);

	ck_assert_msg(ret == 0, "shadow_pool_check: expected 0, got %d", ret);
}

#endif
