/*
 * KVM suite "kvm_paging": guest paging under the shadow MMU as a CPU would
 * run it, on real KVM (scripts/kvm-test runs it where there is none):
 *
 *   invlpg       INVLPG of pinned pages that did not change is harmless;
 *   shared_table a change to a page table two address spaces share reaches
 *                the other vCPU's address space through SYNC_TABLE;
 *   nxe          EFER.NXE cleared and set with wrmsr: bit 63 reads as a
 *                reserved bit, then as NX again, and no fault loop.
 *
 * UMBRA_BIN and UMBRA_GUEST_DIR say where the program and the images are, as
 * for the "kvm" suite.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvm_run.h"
#include "tests.h"
#include "umbra/abi.h"

static struct run_result run;

/* Runs `umbra run IMAGE ARGS...` (@args NULL-terminated) into @r. */
static void run_image(const char *image, const char *const *args, struct run_result *r)
{
	char img[512];
	const char *argv[24] = { "run", img };
	int argc = 2;

	guest_image(image, img, sizeof(img));
	while (*args && argc < 23)
		argv[argc++] = *args++;
	argv[argc] = NULL;
	run_umbra(argv, r);
}

/* The count after "KEY=" on umbra's --stats hypercall line (0 if absent). */
static unsigned long hypercall_count(const struct run_result *r, const char *key)
{
	const char *line = strstr(r->err, "hypercalls:"), *p;
	char pat[64];

	snprintf(pat, sizeof(pat), " %s=", key);
	if (!line || !(p = strstr(line, pat)) || memchr(line, '\n', (size_t)(p - line)))
		return 0;
	return strtoul(p + strlen(pat), NULL, 10);
}

START_TEST(test_invlpg_of_pinned_pages_is_harmless)
{
	unsigned long setup_faults, faults;

	/* The same guest without the rounds: the faults of its setup (the
	 * pages it allocates, the heap: a guest fault and a fix per page). */
	run_image("invlpgpin", (const char *[]){ "--cmdline", "rounds=0", "--stats", NULL }, &run);
	assert_status(&run, 0);
	setup_faults = hypercall_count(&run, "page_fault");
	run_image("invlpgpin", (const char *[]){ "--cmdline", "rounds=1000", "--stats", NULL }, &run);
	assert_status(&run, 0);
	assert_contains(run.out, "invlpgpin: 1000 rounds: ok", &run);
	/* 6 pages a round, each with the INVLPG hypercall. */
	ck_assert_uint_eq(hypercall_count(&run, "invlpg"), 6 * 1000);
	/* The pinned pages kept their shadow: the rounds cost no fault. */
	faults = hypercall_count(&run, "page_fault");
	ck_assert_msg(faults <= setup_faults + 1, "page faults: expected the setup's %lu, got %lu\n%s", setup_faults,
		      faults, run.err);
}
END_TEST

START_TEST(test_shared_table_change_reaches_other_address_space)
{
	run_image("sharedpt", (const char *[]){ "--vcpus", "2", "--cmdline", "rounds=20", "--stats", NULL }, &run);
	assert_status(&run, 0);
	assert_contains(run.out, "sharedpt: 20 rounds: ok", &run);
	ck_assert_uint_eq(hypercall_count(&run, "sync_table"), 20);
}
END_TEST

START_TEST(test_invlpg_alone_leaves_other_address_space_stale)
{
	/* What SYNC_TABLE is for (docs/abi.md): INVLPG covers only the
	 * current address space, so vCPU 1 keeps the old frame. */
	run_image("sharedpt", (const char *[]){ "--vcpus", "2", "--cmdline", "rounds=2 sync=0", NULL }, &run);
	assert_status(&run, 1);
	assert_contains(run.out, "sharedpt: round 1: vCPU 1 read 0x8000200000: expected 0x5348415245440001, "
		    "got 0x5348415245440000", &run);
}
END_TEST

START_TEST(test_sync_table_with_unaligned_address_is_named)
{
	run_image("sharedpt", (const char *[]){ "--cmdline", "bad_sync", NULL }, &run);
	assert_status(&run, UMBRA_STATUS_GUEST_ERROR);
	assert_contains(run.err, "bad hypercall: sync_table 0x1008 (argument 0)", &run);
}
END_TEST

START_TEST(test_nxe_toggle_gives_reserved_bit_fault_then_nx)
{
	run_image("nxetoggle", (const char *[]){ "--cmdline", "rounds=10", NULL }, &run);
	assert_status(&run, 0);
	assert_contains(run.out, "nxetoggle: 10 rounds: ok", &run);
}
END_TEST

START_TEST(test_repeated_reserved_bit_faults_stop_the_vm)
{
	run_image("nxetoggle", (const char *[]){ "--cmdline", "fake_rsvd", NULL }, &run);
	assert_status(&run, UMBRA_STATUS_GUEST_ERROR);
	assert_contains(run.err, "reserved-bit faults in a row with EFER unchanged", &run);
}
END_TEST

Suite *kvm_paging_suite(void)
{
	Suite *s = suite_create("kvm_paging");
	TCase *invlpg = tcase_create("invlpg");
	TCase *shared = tcase_create("shared_table");
	TCase *nxe = tcase_create("nxe");

	tcase_set_timeout(invlpg, 120);
	tcase_add_test(invlpg, test_invlpg_of_pinned_pages_is_harmless);
	suite_add_tcase(s, invlpg);
	tcase_set_timeout(shared, 120);
	tcase_add_test(shared, test_shared_table_change_reaches_other_address_space);
	tcase_add_test(shared, test_invlpg_alone_leaves_other_address_space_stale);
	tcase_add_test(shared, test_sync_table_with_unaligned_address_is_named);
	suite_add_tcase(s, shared);
	tcase_set_timeout(nxe, 120);
	tcase_add_test(nxe, test_nxe_toggle_gives_reserved_bit_fault_then_nx);
	tcase_add_test(nxe, test_repeated_reserved_bit_faults_stop_the_vm);
	suite_add_tcase(s, nxe);
	return s;
}
