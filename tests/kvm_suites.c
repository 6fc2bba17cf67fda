#include <stddef.h>

#include "tests.h"

const struct test_suite_entry test_suites[] = {
	{ "kvm", kvm_suite },
	{ "kvm_paging", kvm_paging_suite },
	{ "kvm_hostile", kvm_hostile_suite },
	{ "kvm_quota", kvm_quota_suite },
	{ "kvm_pager", kvm_pager_suite },
	{ "kvm_clone", kvm_clone_suite },
	{ NULL, NULL },
};
