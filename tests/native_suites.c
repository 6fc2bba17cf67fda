#include <stddef.h>

#include "tests.h"

const struct test_suite_entry test_suites[] = {
	{ "base", base_suite },
	{ "notifier", notifier_suite },
	{ "notifier_torture", notifier_torture_suite },
	{ "shadow", shadow_suite },
	{ "shadow_walk", shadow_walk_suite },
	{ "shadow_torture", shadow_torture_suite },
	{ "shadow_share", shadow_share_suite },
	{ "shadow_share_torture", shadow_share_torture_suite },
	{ "shadow_hostile", shadow_hostile_suite },
	{ "shadow_young", shadow_young_suite },
	{ "pager_swap", pager_swap_suite },
	{ "pager", pager_suite },
	{ "pager_reclaim", pager_reclaim_suite },
	{ "pager_discard", pager_discard_suite },
	{ "vmm", vmm_suite },
	{ NULL, NULL },
};
