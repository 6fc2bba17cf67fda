#include <stddef.h>

#include "tests.h"

const struct test_suite_entry test_suites[] = {
	{ "notifier", notifier_suite },
	{ "notifier_torture", notifier_torture_suite },
	{ "shadow", shadow_suite },
	{ "vmm", vmm_suite },
	{ NULL, NULL },
};
