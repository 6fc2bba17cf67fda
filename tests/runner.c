/*
 * Check runner shared by the native and the KVM test executables.
 *
 *   umbra-tests [SUITE ...]     run the named suites (default: all)
 *   umbra-tests --list          list the suites
 *
 * CK_FORK, CK_DEFAULT_TIMEOUT and CK_VERBOSITY work as documented by Check.
 * Exit status: 0 when every test passed, 1 otherwise, 2 for an unknown suite.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests.h"

static const struct test_suite_entry *find_suite(const char *name)
{
	for (const struct test_suite_entry *e = test_suites; e->name; e++)
		if (strcmp(e->name, name) == 0)
			return e;
	return NULL;
}

int main(int argc, char **argv)
{
	SRunner *runner = NULL;

	if (argc == 2 && strcmp(argv[1], "--list") == 0) {
		for (const struct test_suite_entry *e = test_suites; e->name; e++)
			printf("%s\n", e->name);
		return 0;
	}
	for (int i = 1; i < argc; i++) {
		if (!find_suite(argv[i])) {
			fprintf(stderr, "%s: unknown suite '%s' (--list shows them)\n", argv[0], argv[i]);
			return 2;
		}
	}
	for (const struct test_suite_entry *e = test_suites; e->name; e++) {
		int wanted = argc == 1;
		for (int i = 1; i < argc; i++)
			wanted |= strcmp(argv[i], e->name) == 0;
		if (!wanted)
			continue;
		if (!runner)
			runner = srunner_create(e->create());
		else
			srunner_add_suite(runner, e->create());
	}
	srunner_run_all(runner, CK_ENV);
	int failed = srunner_ntests_failed(runner);
	srunner_free(runner);
	return failed == 0 ? 0 : 1;
}
