/*
 * Fork-style clones and the shared P2M (docs/sharing.md, "Fork-style
 * sharing: clone"): the P2M radix shared by use count (O(1) clone, path
 * copies on the first store), private copies in own slots, page reference
 * counts (put_page when the last user goes), take-over of a layer.  The
 * guests here need no page tables: the host writes guest memory as the VMM
 * does for its guest (shadow_mmu_cow_break first, then through the P2M).
 */
#include <check.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "umbra/notifier.h"
#include "umbra/shadow.h"
#include "mmu_internal.h"
#include "test_shadow_share_util.h"
#include "tests.h"

#define CL_MAX_VMS 4
#define CL_RAM_PAGES 1024ull		/* 4 MiB, unless a case says otherwise */
#define CL_PATTERN(g) (0x1000 + (g))	/* RAM page g's first word, g < CL_RAM_PAGES */

/* put_page calls per page of the RAM (the first layer) object. */
struct put_log {
	uint64_t npages;
	unsigned int *calls;
};

static void put_log_page(void *priv, uint64_t page)
{
	struct put_log *l = priv;

	ck_assert_uint_lt(page, l->npages);
	__atomic_add_fetch(&l->calls[page], 1, __ATOMIC_RELAXED);
}

static const struct shadow_slot_ops put_log_ops = { .put_page = put_log_page };

/* A base VM whose RAM (slot 0, P2M identity, its first own slot) holds
 * CL_PATTERN(g) at the start of page g < CL_RAM_PAGES, and its clones. */
struct cl {
	struct shadow_pool *pool;
	uint64_t pages;
	struct hobj ram;
	struct put_log log;
	struct sh_owns owns;
	struct shadow_mmu *vm[CL_MAX_VMS];
};

static void cl_init(struct cl *c, uint64_t pages)
{
	struct shadow_mmu_config cfg = { .max_gpa = pages * GM_PAGE, .mode = shadow_default_mode };
	struct shadow_slot s;
	int id;

	memset(c, 0, sizeof(*c));
	ck_assert_int_eq(notifier_thread_init(), 0);
	c->pages = pages;
	ck_assert_int_eq(shadow_pool_create(64, &c->pool), 0);
	cfg.pool = c->pool;
	hobj_init(&c->ram, "ram", pages, false);
	c->log.npages = pages;
	c->log.calls = calloc(pages, sizeof(*c->log.calls));
	ck_assert_ptr_nonnull(c->log.calls);
	ck_assert_int_eq(shadow_mmu_create(&cfg, &c->vm[0]), 0);
	s = hobj_slot(&c->ram, 0);
	s.ops = &put_log_ops;
	s.priv = &c->log;
	ck_assert_int_eq(shadow_mmu_add_slot(c->vm[0], &s, &id), 0);
	ck_assert_int_eq(id, 0);
	ck_assert_int_eq(shadow_mmu_map_gpa(c->vm[0], 0, pages, id, 0), 0);
	ck_assert_int_eq(shadow_mmu_set_own_slot(c->vm[0], id), 0);
	for (uint64_t g = 0; g < pages && g < CL_RAM_PAGES; g++)
		*(uint64_t *)(c->ram.host + g * GM_PAGE) = CL_PATTERN(g);
}

static void cl_clone(struct cl *c, int parent, int k)
{
	sh_clone(&c->owns, c->pages, c->vm[parent], &c->vm[k]);
}

static void cl_destroy(struct cl *c, int k)
{
	shadow_mmu_destroy(c->vm[k]);
	c->vm[k] = NULL;
	assert_pool_check(c->pool);
}

static void cl_fini(struct cl *c)
{
	for (int k = CL_MAX_VMS - 1; k >= 0; k--)
		if (c->vm[k])
			cl_destroy(c, k);
	ck_assert_uint_eq(shadow_pool_pages_in_use(c->pool, 0), 0);
	shadow_pool_destroy(c->pool);
	hobj_fini(&c->ram);
	sh_owns_fini(&c->owns);
	free(c->log.calls);
	notifier_thread_exit();
}

static struct shadow_mmu_stats cl_stats(struct cl *c, int k)
{
	struct shadow_mmu_stats st;

	shadow_mmu_stats(c->vm[k], &st);
	return st;
}

static uint64_t cl_nodes(struct cl *c, int k)
{
	return cl_stats(c, k).p2m_nodes_copied;
}

/* Where gfn @g of VM @k lies: the host page. */
static uint8_t *cl_host(struct cl *c, int k, uint64_t g)
{
	return (uint8_t *)vm_ptr(c->vm[k], g * GM_PAGE);
}

/* Page @g's count in the RAM object (the first layer). */
static uint32_t cl_ram_ref(struct cl *c, uint64_t g)
{
	return page_ref_read(c->vm[0] ? c->vm[0]->slots[0].pobj : c->vm[1]->slots[0].pobj, g);
}

/* ---- O(1) clone ------------------------------------------------------------ */

/* Guest sizes: 2 MiB (one P2M level: one leaf), 64 MiB (two: a root of
 * linear runs), over 1 GiB (three); the nodes a first store copies (a linear
 * run becomes a new leaf, not a copy). */
static const struct { uint64_t pages; int levels; uint64_t copied; } clone_sizes[] = {
	{ 512, 1, 1 },
	{ 16384, 2, 1 },
	{ 262656, 3, 2 },	/* 1 GiB + 2 MiB */
};

/* _i: clone_sizes.  The clone copies no P2M node and takes no page
 * reference, whatever the guest's size; the first store copies the nodes
 * of one path. */
START_TEST(test_clone_cost_is_flat_in_guest_size)
{
	struct cl c;
	const uint64_t g = clone_sizes[_i].pages - 1;

	cl_init(&c, clone_sizes[_i].pages);
	ck_assert_int_eq(c.vm[0]->p2m_levels, clone_sizes[_i].levels);
	cl_clone(&c, 0, 1);
	ck_assert_uint_eq(c.vm[1]->p2m_root, c.vm[0]->p2m_root);
	ck_assert_uint_eq(p2m_node_of(c.vm[0]->p2m_root)->use, 2);
	ck_assert_uint_eq(cl_nodes(&c, 0), 0);
	ck_assert_uint_eq(cl_nodes(&c, 1), 0);
	ck_assert_ptr_null(c.vm[0]->slots[0].pobj->page_refs); /* no count made */
	vm_write(c.vm[1], g * GM_PAGE, 0xc1);
	ck_assert_uint_eq(cl_nodes(&c, 1), clone_sizes[_i].copied);
	/* The child took the copies: the parent's path is its alone again,
	 * its write copies the page (a layer's), no node. */
	vm_write(c.vm[0], g * GM_PAGE, 0xb0);
	ck_assert_uint_eq(cl_nodes(&c, 0), 0);
	ck_assert_uint_eq(cl_stats(&c, 0).cow_breaks, 1);
	ck_assert_uint_eq(vm_read(c.vm[1], g * GM_PAGE), 0xc1);
	ck_assert_uint_eq(vm_read(c.vm[0], g * GM_PAGE), 0xb0);
	assert_pool_check(c.pool);
	cl_fini(&c);
}
END_TEST

/* ---- divergence ------------------------------------------------------------- */

/* Who writes what, in order, and what each VM must read at the end. */
struct cl_write {
	int vm;
	uint64_t gfn, val;
};

static const struct cl_write diverge_writes[] = {
	{ 0, 3, 0xa3 },	/* parent first */
	{ 1, 5, 0xc5 },	/* child first */
	{ 1, 3, 0xc3 },	/* both, parent first */
	{ 0, 5, 0xa5 },	/* both, child first */
	{ 0, 700, 0xa700 }, /* another leaf's path */
};

START_TEST(test_parent_and_child_diverge_and_never_see_later_writes)
{
	static const struct { uint64_t gfn, want[2]; } want[] = {
		{ 3, { 0xa3, 0xc3 } },
		{ 5, { 0xa5, 0xc5 } },
		{ 700, { 0xa700, CL_PATTERN(700) } },
		{ 64, { CL_PATTERN(64), CL_PATTERN(64) } },
	};
	struct cl c;

	cl_init(&c, CL_RAM_PAGES);
	cl_clone(&c, 0, 1);
	for (size_t i = 0; i < sizeof(diverge_writes) / sizeof(diverge_writes[0]); i++)
		vm_write(c.vm[diverge_writes[i].vm], diverge_writes[i].gfn * GM_PAGE,
			 diverge_writes[i].val);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		for (int k = 0; k < 2; k++)
			ck_assert_msg(vm_read(c.vm[k], want[i].gfn * GM_PAGE) == want[i].want[k],
				      "VM %d gfn %llu: expected %#llx, got %#llx", k,
				      (unsigned long long)want[i].gfn, (unsigned long long)want[i].want[k],
				      (unsigned long long)vm_read(c.vm[k], want[i].gfn * GM_PAGE));
	/* The layer keeps the content of the clone's time. */
	ck_assert_uint_eq(*(uint64_t *)(c.ram.host + 3 * GM_PAGE), CL_PATTERN(3));
	ck_assert_uint_eq(cl_stats(&c, 0).cow_breaks, 3);
	ck_assert_uint_eq(cl_stats(&c, 1).cow_breaks, 2);
	assert_mmu_check(c.vm[0]);
	assert_mmu_check(c.vm[1]);
	assert_pool_check(c.pool);
	cl_fini(&c);
}
END_TEST

/* One CLONE(2) as the VMM makes it: the first clone gives the parent a new
 * own slot, the second (parent_own NULL) keeps it, and the second child's
 * own slot takes its id.  The three VMs share the clone-time state; the
 * writes of each reach no other, and the parent's slot count grew once. */
START_TEST(test_second_clone_of_one_clone_keeps_the_parents_own_slot)
{
	struct cl c;
	struct shadow_slot ps, cs;

	cl_init(&c, CL_RAM_PAGES);
	vm_write(c.vm[0], 20 * GM_PAGE, 0xa20);	/* before: every VM sees it */
	cl_clone(&c, 0, 1);
	cs = sh_own_new(&c.owns, c.pages);
	ck_assert_int_eq(shadow_mmu_clone(c.vm[0], NULL, &cs, &c.vm[2]), 0);
	ck_assert_int_eq(c.vm[0]->own_slot, 1);
	ck_assert_int_eq(c.vm[1]->own_slot, 1);
	ck_assert_int_eq(c.vm[2]->own_slot, 1);
	ck_assert(c.vm[2]->slots[0].layer && !c.vm[2]->slots[1].layer && !c.vm[0]->slots[1].layer);
	vm_write(c.vm[1], 21 * GM_PAGE, 0xc21);
	vm_write(c.vm[2], 21 * GM_PAGE, 0xd21);
	vm_write(c.vm[0], 21 * GM_PAGE, 0xa21);
	for (int k = 0; k < 3; k++) {
		static const uint64_t want21[3] = { 0xa21, 0xc21, 0xd21 };

		ck_assert_msg(vm_read(c.vm[k], 20 * GM_PAGE) == 0xa20, "VM %d gfn 20: expected 0xa20, got %#llx",
			      k, (unsigned long long)vm_read(c.vm[k], 20 * GM_PAGE));
		ck_assert_msg(vm_read(c.vm[k], 21 * GM_PAGE) == want21[k],
			      "VM %d gfn 21: expected %#llx, got %#llx", k, (unsigned long long)want21[k],
			      (unsigned long long)vm_read(c.vm[k], 21 * GM_PAGE));
		assert_mmu_check(c.vm[k]);
	}
	/* After the parent wrote, a clone gives it a new own slot again. */
	ps = sh_own_new(&c.owns, c.pages);
	cs = sh_own_new(&c.owns, c.pages);
	ck_assert_int_eq(shadow_mmu_clone(c.vm[0], &ps, &cs, &c.vm[3]), 0);
	ck_assert_uint_eq(vm_read(c.vm[3], 21 * GM_PAGE), 0xa21);
	ck_assert_int_eq(c.vm[0]->own_slot, 2);
	assert_pool_check(c.pool);
	cl_fini(&c);
}
END_TEST

/* A clone of a clone sees its parent's writes of before, none of after;
 * its own writes reach nobody. */
START_TEST(test_clone_of_a_clone_sees_the_state_of_its_clone_time)
{
	struct cl c;

	cl_init(&c, CL_RAM_PAGES);
	cl_clone(&c, 0, 1);
	vm_write(c.vm[1], 10 * GM_PAGE, 0xc10);
	cl_clone(&c, 1, 2);
	vm_write(c.vm[1], 10 * GM_PAGE, 0xc11);	/* after: the grandchild keeps 0xc10 */
	vm_write(c.vm[1], 11 * GM_PAGE, 0xc12);
	vm_write(c.vm[2], 12 * GM_PAGE, 0xd12);
	ck_assert_uint_eq(vm_read(c.vm[2], 10 * GM_PAGE), 0xc10);
	ck_assert_uint_eq(vm_read(c.vm[2], 11 * GM_PAGE), CL_PATTERN(11));
	ck_assert_uint_eq(vm_read(c.vm[1], 10 * GM_PAGE), 0xc11);
	ck_assert_uint_eq(vm_read(c.vm[1], 12 * GM_PAGE), CL_PATTERN(12));
	ck_assert_uint_eq(vm_read(c.vm[0], 10 * GM_PAGE), CL_PATTERN(10));
	ck_assert_uint_eq(vm_read(c.vm[0], 12 * GM_PAGE), CL_PATTERN(12));
	/* Slot ids: the child's own slot is id 1 in VMs 0 and 1 (other
	 * objects), the grandchild's id 2, VM 1's new own slot id 2. */
	ck_assert_int_eq(c.vm[1]->own_slot, 2);
	ck_assert_int_eq(c.vm[2]->own_slot, 2);
	ck_assert(c.vm[2]->slots[1].layer && c.vm[1]->slots[1].layer && !c.vm[0]->slots[1].layer);
	assert_pool_check(c.pool);
	cl_fini(&c);
}
END_TEST

/* ---- page references --------------------------------------------------------- */

/* The first store into a shared node copies it: every page it maps (here
 * through linear runs of the RAM) gains a reference, but the one
 * re-pointed, which loses the writer's. */
START_TEST(test_p2m_path_copy_increments_page_refcounts)
{
	struct cl c;

	cl_init(&c, CL_RAM_PAGES);
	cl_clone(&c, 0, 1);
	vm_write(c.vm[1], 7 * GM_PAGE, 0xc7);
	for (uint64_t g = 0; g < CL_RAM_PAGES; g++) {
		uint32_t want = g == 7 ? 1 : 2;

		ck_assert_msg(cl_ram_ref(&c, g) == want, "page %llu: expected %u references, got %u",
			      (unsigned long long)g, want, cl_ram_ref(&c, g));
	}
	assert_pool_check(c.pool);
	/* The child goes: its copied leaf's references go with it. */
	cl_destroy(&c, 1);
	for (uint64_t g = 0; g < CL_RAM_PAGES; g++)
		ck_assert_uint_eq(cl_ram_ref(&c, g), 1);
	for (uint64_t g = 0; g < CL_RAM_PAGES; g++)
		ck_assert_uint_eq(c.log.calls[g], 0);
	cl_fini(&c);
}
END_TEST

/* 64 MiB: a P2M root of 32 linear runs.  The child's first store copies the
 * root: each linear run it copies takes one reference to its whole run (no
 * per-page count is made), but the run the store expands into a leaf,
 * whose reference passes to its 512 pages.  Every page then counts 2
 * (the written one 1); when the child goes, 1 again, and nothing is
 * freed. */
START_TEST(test_path_copy_counts_a_linear_run_once_per_run)
{
	const uint64_t pages = 16384, g = 5;
	struct pool_obj *po;
	struct cl c;

	cl_init(&c, pages);
	cl_clone(&c, 0, 1);
	vm_write(c.vm[1], g * GM_PAGE, 0xc5);
	po = c.vm[0]->slots[0].pobj;
	ck_assert_ptr_nonnull(po->run_refs);
	for (uint64_t r = 0; r < pages / 512; r++) {
		ck_assert_msg(po->run_refs[r] == (r ? 1u : 0u), "run %llu: expected %u run references, got %u",
			      (unsigned long long)r, r ? 1u : 0u, po->run_refs[r]);
		ck_assert_msg((page_ref_run(po, r) != NULL) == (r == 0),
			      "run %llu: per-page counts %s", (unsigned long long)r,
			      r ? "made for a run copied whole" : "missing for the expanded run");
	}
	for (uint64_t p = 0; p < pages; p++) {
		uint32_t want = p == g ? 1 : 2;

		ck_assert_msg(page_ref_read(po, p) == want, "page %llu: expected %u references, got %u",
			      (unsigned long long)p, want, page_ref_read(po, p));
	}
	assert_pool_check(c.pool);
	cl_destroy(&c, 1);
	for (uint64_t p = 0; p < pages; p++)
		ck_assert_msg(page_ref_read(po, p) == 1 && c.log.calls[p] == 0,
			      "page %llu: %u references, %u put_page calls after the child went",
			      (unsigned long long)p, page_ref_read(po, p), c.log.calls[p]);
	cl_fini(&c);
}
END_TEST

/* Both copy page 9: the second copy drops its last reference, put_page
 * runs once. */
START_TEST(test_page_freed_once_when_every_sharer_copied_it)
{
	struct cl c;

	cl_init(&c, CL_RAM_PAGES);
	cl_clone(&c, 0, 1);
	vm_write(c.vm[0], 9 * GM_PAGE, 0xa9);
	ck_assert_uint_eq(c.log.calls[9], 0);
	vm_write(c.vm[1], 9 * GM_PAGE, 0xc9);
	for (uint64_t g = 0; g < CL_RAM_PAGES; g++)
		ck_assert_msg(c.log.calls[g] == (g == 9), "page %llu: %u put_page calls",
			      (unsigned long long)g, c.log.calls[g]);
	ck_assert_uint_eq(cl_stats(&c, 0).pages_freed + cl_stats(&c, 1).pages_freed, 1);
	ck_assert_uint_eq(cl_ram_ref(&c, 9), 0);
	assert_pool_check(c.pool);
	cl_fini(&c);
	/* cl_fini destroyed both VMs: their own slots are not given back, no
	 * layer page was dropped a second time (checked per page above). */
}
END_TEST

/* What the parent's write costs once its only clone is gone: _i = 0 the
 * layer not taken over (copy, the original given back), 1 taken over (in
 * place, no copy).  Gfn 5: a page the child copied; 600: one it never
 * touched. */
START_TEST(test_write_after_the_clone_is_gone_copies_unless_taken_over)
{
	static const uint64_t gfns[] = { 5, 600 };
	struct cl c;

	cl_init(&c, CL_RAM_PAGES);
	cl_clone(&c, 0, 1);
	vm_write(c.vm[1], 5 * GM_PAGE, 0xc5);
	cl_destroy(&c, 1);
	if (_i)
		ck_assert_int_eq(shadow_mmu_slot_take_over(c.vm[0], 0), 0);
	ck_assert_int_eq(shadow_mmu_slot_take_over(c.vm[0], 1), -EINVAL); /* its own slot */
	for (size_t i = 0; i < 2; i++) {
		uint64_t g = gfns[i];

		vm_write(c.vm[0], g * GM_PAGE, 0xa000 + g);
		ck_assert_msg((cl_host(&c, 0, g) == c.ram.host + g * GM_PAGE) == (_i == 1),
			      "gfn %llu: expected the write %s", (unsigned long long)g,
			      _i ? "in the layer's page" : "in a copy");
		ck_assert_uint_eq(c.log.calls[g], _i ? 0u : 1u);
	}
	ck_assert_uint_eq(cl_stats(&c, 0).cow_breaks, _i ? 0 : 2);
	ck_assert_uint_eq(cl_stats(&c, 0).pages_freed, _i ? 0 : 2);
	ck_assert(!p2m_is_cow(c.vm[0], 5) && !p2m_is_cow(c.vm[0], 600));
	assert_mmu_check(c.vm[0]);
	assert_pool_check(c.pool);
	cl_fini(&c);
}
END_TEST

/* A taken-over layer shared again by a new clone: writes copy again. */
START_TEST(test_clone_ends_a_take_over)
{
	struct cl c;

	cl_init(&c, CL_RAM_PAGES);
	cl_clone(&c, 0, 1);
	cl_destroy(&c, 1);
	ck_assert_int_eq(shadow_mmu_slot_take_over(c.vm[0], 0), 0);
	cl_clone(&c, 0, 2);
	ck_assert(!c.vm[0]->slots[0].taken_over);
	vm_write(c.vm[0], 20 * GM_PAGE, 0xa20);
	ck_assert_ptr_ne(cl_host(&c, 0, 20), c.ram.host + 20 * GM_PAGE);
	ck_assert_uint_eq(vm_read(c.vm[2], 20 * GM_PAGE), CL_PATTERN(20));
	ck_assert_uint_eq(cl_stats(&c, 0).cow_breaks, 1);
	assert_pool_check(c.pool);
	cl_fini(&c);
}
END_TEST

/* The API's refusals, and a failed clone leaves the parent unchanged. */
START_TEST(test_clone_refusals_leave_the_parent_unchanged)
{
	struct shadow_slot ps, cs;
	struct shadow_mmu *child = NULL;
	struct cl c;

	cl_init(&c, CL_RAM_PAGES);
	ps = sh_own_new(&c.owns, CL_RAM_PAGES);
	cs = sh_own_new(&c.owns, CL_RAM_PAGES);
	ck_assert_int_eq(shadow_mmu_clone(c.vm[0], &ps, NULL, &child), -EINVAL);
	/* The child's own slot overlaps the RAM: the child cannot take it. */
	cs.mpa = 0;
	ck_assert_int_eq(shadow_mmu_clone(c.vm[0], &ps, &cs, &child), -EINVAL);
	ck_assert_ptr_null(child);
	ck_assert_int_eq(__atomic_load_n(&c.vm[0]->nr_slots, __ATOMIC_RELAXED), 1);
	ck_assert(!c.vm[0]->slots[0].layer);
	ck_assert_int_eq(c.vm[0]->own_slot, 0);
	ck_assert_uint_eq(p2m_node_of(c.vm[0]->p2m_root)->use, 1);
	vm_write(c.vm[0], 3 * GM_PAGE, 0xa3); /* in place: nothing shared */
	ck_assert_ptr_eq(cl_host(&c, 0, 3), c.ram.host + 3 * GM_PAGE);
	ck_assert_int_eq(shadow_mmu_set_own_slot(c.vm[0], 5), -EINVAL);
	assert_pool_check(c.pool);
	cl_fini(&c);
}
END_TEST

TCase *shadow_clone_p2m_tcase(void)
{
	TCase *tc = tcase_create("clone_p2m");

	/* Room for the sanitizer builds (the checkers read every page of a
	 * 1 GiB guest); a Debug build takes well under a second a case. */
	tcase_set_timeout(tc, 60);

	tcase_add_loop_test(tc, test_clone_cost_is_flat_in_guest_size, 0,
			    (int)(sizeof(clone_sizes) / sizeof(clone_sizes[0])));
	tcase_add_test(tc, test_parent_and_child_diverge_and_never_see_later_writes);
	tcase_add_test(tc, test_second_clone_of_one_clone_keeps_the_parents_own_slot);
	tcase_add_test(tc, test_clone_of_a_clone_sees_the_state_of_its_clone_time);
	tcase_add_test(tc, test_p2m_path_copy_increments_page_refcounts);
	tcase_add_test(tc, test_path_copy_counts_a_linear_run_once_per_run);
	tcase_add_test(tc, test_page_freed_once_when_every_sharer_copied_it);
	tcase_add_loop_test(tc, test_write_after_the_clone_is_gone_copies_unless_taken_over, 0, 2);
	tcase_add_test(tc, test_clone_ends_a_take_over);
	tcase_add_test(tc, test_clone_refusals_leave_the_parent_unchanged);
	return tc;
}
