/*
 * The Check suites. Each tests/test_<module>.c exports <module>_suite();
 * runner.c runs the suites listed by the executable's suite table.
 */
#ifndef UMBRA_TESTS_H
#define UMBRA_TESTS_H

#include <check.h>

struct test_suite_entry {
	const char *name;
	Suite *(*create)(void);
};

/* Defined once per runner executable (native_suites.c, kvm_suites.c). */
extern const struct test_suite_entry test_suites[];

Suite *base_suite(void);
Suite *notifier_suite(void);
Suite *notifier_torture_suite(void);
Suite *shadow_suite(void);
Suite *shadow_walk_suite(void);
Suite *shadow_torture_suite(void);
Suite *shadow_share_suite(void);
TCase *shadow_clone_p2m_tcase(void); /* test_shadow_clone.c, in shadow_share */
void shadow_huge_add_tcase(Suite *s); /* test_shadow_huge.c, in shadow */
Suite *shadow_share_torture_suite(void);
Suite *shadow_hostile_suite(void);
Suite *shadow_young_suite(void);
Suite *pager_swap_suite(void);
Suite *pager_suite(void);
Suite *pager_reclaim_suite(void);
Suite *pager_discard_suite(void);
Suite *vmm_suite(void);
Suite *kvm_suite(void);
Suite *kvm_paging_suite(void);
Suite *kvm_hostile_suite(void);
Suite *kvm_quota_suite(void);
Suite *kvm_pager_suite(void);
Suite *kvm_clone_suite(void);

#endif
