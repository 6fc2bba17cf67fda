#include <stddef.h>

#include "tests.h"

const struct test_suite_entry test_suites[] = {
	{ "kvm", kvm_suite },
	{ "kvm_quota", kvm_quota_suite },
	{ NULL, NULL },
};
