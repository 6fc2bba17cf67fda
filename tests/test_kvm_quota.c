/*
 * KVM suite kvm_quota: the bounded resources of a VM (docs/abi.md, "Pins";
 * docs/shadow.md, "Table quota"). A guest that asks for more than its
 * share is stopped with a message naming the limit; other VMs of the same
 * run finish; a VM whose working set fits its table quota keeps running
 * across reclaims (its pins come back before it runs again).
 */
#include <check.h>
#include <stdio.h>

#include "kvm_run.h"
#include "tests.h"
#include "umbra/abi.h"

static struct run_result result;

/* roomhog KIND alone: stopped as a guest error with @message. */
static void assert_roomhog_stopped(const char *kind, const char *message)
{
	char image[512];

	guest_image("roomhog", image, sizeof(image));
	run_umbra((const char *[]){ "run", image, "--cmdline", kind, NULL }, &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
	assert_contains(result.err, message, &result);
	ck_assert_msg(!strstr(result.out, "was not stopped"), "roomhog %s ran on:\n%s", kind, result.out);
}

START_TEST(test_pins_past_the_total_stop_the_guest)
{
	char message[256];

	/* The ninth PIN of 1 MiB (at USER_BASE + 8 MiB) passes 8 MiB. */
	snprintf(message, sizeof(message),
		 "bad hypercall: pin 0x8000800000+0x100000 (arguments 0, 1): the guest's pins would cover more "
		 "than %llu bytes in all (UMBRA_PIN_TOTAL_MAX)", (unsigned long long)UMBRA_PIN_TOTAL_MAX);
	assert_roomhog_stopped("pin-total", message);
}
END_TEST

START_TEST(test_flush_ack_without_an_nmi_stops_the_guest)
{
	assert_roomhog_stopped("flush-ack", "bad hypercall: FLUSH_ACK with no shootdown NMI pending");
}
END_TEST

/*
 * Two VMs in one run: one whose pins need more shadow tables than its
 * quota of 64 pages (the smallest quota the configuration takes) is
 * stopped with the quota message; the other VM finishes with 0.
 */
START_TEST(test_table_quota_stops_only_the_vm_that_exceeds_it)
{
	char cfg[256], json[2048], dir[512];

	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"vms\": [ { \"name\": \"hog\", \"image\": \"%s/roomhog.elf\", \"cmdline\": \"pin-tables\",\n"
		 "               \"table_quota\": 64 },\n"
		 "             { \"name\": \"good\", \"image\": \"%s/hello.elf\", \"vcpus\": 2 } ] }\n",
		 dir, dir);
	snprintf(cfg, sizeof(cfg), "%s/quota.json", tmpdir);
	write_text(cfg, json);
	run_umbra((const char *[]){ "run", "--config", cfg, "--stats", NULL }, &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
	assert_contains(result.err, "umbra: hog: ", &result);
	assert_contains(result.err, ": the VM's shadow-table quota (64 pages) is exhausted", &result);
	assert_contains(result.out, "[good/0] hello: all 2 vCPUs checked in", &result);
	assert_contains(result.err, "umbra: good: exit status 0", &result);
	ck_assert_msg(!strstr(result.out, "was not stopped"), "the hog ran on:\n%s", result.out);
}
END_TEST

/*
 * A VM with 128 MiB of RAM and a quota of 64 table pages writes and checks
 * all its RAM on two vCPUs (64 page tables' worth with 4 KiB shadow leaves,
 * --huge-leaves off, with the paths and the pins more than the quota): it
 * reclaims again and again, and every time
 * both vCPUs' pinned handlers and stacks are pre-faulted back before they
 * run: it finishes with 0. (Some 130,000 faults: slow under the sandbox's
 * emulation, hence the longer limit.)
 */
START_TEST(test_vm_whose_working_set_fits_runs_across_reclaims)
{
	char image[512];

	guest_image("memtouch", image, sizeof(image));
	run_umbra_timeout((const char *[]){ "run", image, "--mem", "128M", "--vcpus", "2", "--table-quota",
					    "64", "--huge-leaves", "off", "--stats", NULL },
			  240, &result);
	assert_status(&result, 0);
	ck_assert_msg(stat_value(result.err, " reclaims=") > 0, "expected reclaims, stderr:\n%s", result.err);
}
END_TEST

Suite *kvm_quota_suite(void)
{
	Suite *s = suite_create("kvm_quota");
	TCase *pins = tcase_create("pins");
	TCase *quota = tcase_create("table_quota");

	tcase_add_test(pins, test_pins_past_the_total_stop_the_guest);
	tcase_add_test(pins, test_flush_ack_without_an_nmi_stops_the_guest);
	tcase_set_timeout(pins, 120);
	suite_add_tcase(s, pins);
	/* Both need the table_quota config key and --table-quota. */
	tcase_add_checked_fixture(quota, tmpdir_setup, tmpdir_teardown);
	tcase_add_test(quota, test_table_quota_stops_only_the_vm_that_exceeds_it);
	tcase_add_test(quota, test_vm_whose_working_set_fits_runs_across_reclaims);
	tcase_set_timeout(quota, 400);
	suite_add_tcase(s, quota);
	return s;
}
