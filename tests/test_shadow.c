/*
 * shadow/: the entry format and the table pool.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "shadow.h"
#include "spte.h"
#include "tests.h"

static const struct {
	bool writable, user, executable;
} leaf_rights[] = {
	{ false, false, false }, { true, false, false }, { false, true, false }, { false, false, true },
	{ true, true, true },
};

START_TEST(test_leaf_presets_accessed_and_dirty_only_when_writable)
{
	const uint64_t pa = 0x123456789000ull;
	uint64_t spte = spte_make_leaf(pa, leaf_rights[_i].writable, leaf_rights[_i].user,
				       leaf_rights[_i].executable);

	ck_assert(spte_is_present(spte));
	ck_assert_msg(spte & SPTE_ACCESSED, "A must be preset: the pool is read-only to guests");
	ck_assert_msg(!!(spte & SPTE_DIRTY) == leaf_rights[_i].writable, "D preset: expected %d, got %d",
		      leaf_rights[_i].writable, !!(spte & SPTE_DIRTY));
	ck_assert_int_eq(spte_is_writable(spte), leaf_rights[_i].writable);
	ck_assert_int_eq(spte_is_user(spte), leaf_rights[_i].user);
	ck_assert_int_eq(spte_is_executable(spte), leaf_rights[_i].executable);
	ck_assert_uint_eq(spte_addr(spte), pa);
}
END_TEST

START_TEST(test_table_entry_is_permissive_and_masks_address)
{
	uint64_t spte = spte_make_table(0xfff0000000001fffull);

	ck_assert_uint_eq(spte_addr(spte), 0x0000000000001000ull);
	ck_assert(spte_is_present(spte) && spte_is_writable(spte) && spte_is_user(spte) &&
		  spte_is_executable(spte));
	ck_assert(!spte_is_leaf(spte, 2));
	ck_assert(spte_is_leaf(spte | SPTE_LARGE, 2) && spte_is_leaf(spte | SPTE_LARGE, 3));
	ck_assert(!spte_is_leaf(spte | SPTE_LARGE, 4));
	ck_assert(spte_is_leaf(spte, 1));
}
END_TEST

START_TEST(test_index_follows_x86_levels)
{
	const uint64_t va = 0x00007fabcdef1234ull;

	ck_assert_uint_eq(SPTE_INDEX(va, 1), (va >> 12) & 511);
	ck_assert_uint_eq(SPTE_INDEX(va, 2), (va >> 21) & 511);
	ck_assert_uint_eq(SPTE_INDEX(va, 3), (va >> 30) & 511);
	ck_assert_uint_eq(SPTE_INDEX(va, 4), (va >> 39) & 511);
}
END_TEST

START_TEST(test_pool_allocates_zeroed_pages_until_full)
{
	struct shadow_pool *pool;
	uint64_t gpa[4], extra;

	ck_assert_int_eq(shadow_pool_create(4, &pool), 0);
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(shadow_pool_alloc(pool, 1 + i % 4, &gpa[i]), 0);
		ck_assert_uint_ge(gpa[i], SHADOW_POOL_GPA);
		uint64_t *t = shadow_pool_table(pool, gpa[i]);
		ck_assert_ptr_nonnull(t);
		for (int e = 0; e < SPTE_ENTRIES; e++)
			ck_assert_uint_eq(t[e], 0);
		t[7] = 0xdead; /* dirty it: a reused page must come back zeroed */
		for (int j = 0; j < i; j++)
			ck_assert_msg(gpa[j] != gpa[i], "page %#llx handed out twice", (unsigned long long)gpa[i]);
	}
	ck_assert_int_eq(shadow_pool_alloc(pool, 1, &extra), -ENOMEM);
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 0), 4);
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 1), 1);
	ck_assert_int_eq(shadow_pool_free(pool, gpa[2]), 0);
	ck_assert_int_eq(shadow_pool_free(pool, gpa[2]), -EINVAL); /* double free */
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 3), 0);
	ck_assert_int_eq(shadow_pool_alloc(pool, 2, &extra), 0);
	ck_assert_uint_eq(extra, gpa[2]);
	ck_assert_uint_eq(shadow_pool_table(pool, extra)[7], 0);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(shadow_pool_free(pool, i == 2 ? extra : gpa[i]), 0);
	ck_assert_uint_eq(shadow_pool_pages_in_use(pool, 0), 0);
	shadow_pool_destroy(pool);
}
END_TEST

START_TEST(test_pool_rejects_foreign_addresses_and_levels)
{
	struct shadow_pool *pool;
	uint64_t gpa;

	ck_assert_int_eq(shadow_pool_create(2, &pool), 0);
	ck_assert_int_eq(shadow_pool_alloc(pool, 0, &gpa), -EINVAL);
	ck_assert_int_eq(shadow_pool_alloc(pool, 5, &gpa), -EINVAL);
	ck_assert_ptr_null(shadow_pool_table(pool, SHADOW_POOL_GPA - SHADOW_PAGE_SIZE));
	ck_assert_ptr_null(shadow_pool_table(pool, SHADOW_POOL_GPA + 2 * SHADOW_PAGE_SIZE));
	ck_assert_ptr_null(shadow_pool_table(pool, SHADOW_POOL_GPA + 8));
	ck_assert_int_eq(shadow_pool_free(pool, SHADOW_POOL_GPA + 8), -EINVAL);
	shadow_pool_destroy(pool);
	ck_assert_int_eq(shadow_pool_create(0, &pool), -EINVAL);
}
END_TEST

START_TEST(test_pool_memfd_shows_entries_to_a_second_mapping)
{
	struct shadow_pool *pool;
	uint64_t gpa;

	/* The VMM maps the pool's memfd into guests: a write through the
	 * library's mapping must be visible through any other mapping. */
	ck_assert_int_eq(shadow_pool_create(8, &pool), 0);
	ck_assert_int_eq(shadow_pool_alloc(pool, 4, &gpa), 0);
	shadow_pool_table(pool, gpa)[3] = spte_make_table(0x5000);
	uint64_t *view = mmap(NULL, 8 * SHADOW_PAGE_SIZE, PROT_READ, MAP_SHARED, shadow_pool_fd(pool), 0);
	ck_assert_ptr_ne(view, MAP_FAILED);
	ck_assert_uint_eq(view[(gpa - SHADOW_POOL_GPA) / 8 + 3], spte_make_table(0x5000));
	munmap(view, 8 * SHADOW_PAGE_SIZE);
	ck_assert_int_eq(shadow_pool_free(pool, gpa), 0);
	shadow_pool_destroy(pool);
}
END_TEST

Suite *shadow_suite(void)
{
	Suite *s = suite_create("shadow");
	TCase *spte = tcase_create("spte");
	TCase *pool = tcase_create("pool");

	tcase_add_loop_test(spte, test_leaf_presets_accessed_and_dirty_only_when_writable, 0,
			    sizeof(leaf_rights) / sizeof(leaf_rights[0]));
	tcase_add_test(spte, test_table_entry_is_permissive_and_masks_address);
	tcase_add_test(spte, test_index_follows_x86_levels);
	suite_add_tcase(s, spte);
	tcase_add_test(pool, test_pool_allocates_zeroed_pages_until_full);
	tcase_add_test(pool, test_pool_rejects_foreign_addresses_and_levels);
	tcase_add_test(pool, test_pool_memfd_shows_entries_to_a_second_mapping);
	suite_add_tcase(s, pool);
	return s;
}
