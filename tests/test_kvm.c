/*
 * Integration suite: the umbra program runs guest images on real KVM (directly
 * where /dev/kvm exists, otherwise inside the sandbox, see scripts/kvm-test).
 * kvm_run.h runs the program.
 */
#include <check.h>
#include <elf.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvm_run.h"
#include "tests.h"
#include "umbra/abi.h"

static struct run_result result;

/* The pages of image @path's PT_LOAD segments that carry UMBRA_PF_RESIDENT
 * (resident) or do not (!resident). */
static unsigned long image_pages(const char *path, bool resident)
{
	static char buf[64 * 1024];
	size_t len = read_file(path, buf, sizeof(buf));
	Elf64_Ehdr eh;
	unsigned long pages = 0;

	ck_assert_msg(len >= sizeof(eh), "%s: too short for an ELF header", path);
	memcpy(&eh, buf, sizeof(eh));
	for (unsigned int i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;

		ck_assert(eh.e_phoff + (i + 1) * sizeof(ph) <= len);
		memcpy(&ph, buf + eh.e_phoff + i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_LOAD || ph.p_memsz == 0 || !(ph.p_flags & UMBRA_PF_RESIDENT) != !resident)
			continue;
		pages += ((ph.p_paddr + ph.p_memsz + 4095) / 4096) - ph.p_paddr / 4096;
	}
	return pages;
}

/* The most page_fault hypercalls a guest that uses no free RAM can make:
 * each page of the image that is not resident and the boot-information
 * page faults in at most twice (a read, then its first write: docs/abi.md,
 * "Accessed and dirty bits"). */
static unsigned long demand_fault_bound(const char *img)
{
	return 2 * (image_pages(img, false) + 1);
}

/* umbra's fault-around window when --fault-around is not given. */
#define DEFAULT_FAULT_AROUND 32u

/* The page_fault hypercalls of --stats output (0 when none was made). */
static unsigned long page_fault_calls(const char *err)
{
	return strstr(err, "page_fault=") ? stat_value(err, "page_fault=") : 0;
}

START_TEST(test_hello_prints_and_exits_zero)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, NULL }, &result);
	assert_status(&result, 0);
	assert_contains(result.out, "hello from vCPU 0 of 1 (abi 3, 64 MiB RAM)", &result);
	assert_contains(result.out, "hello: all 1 vCPUs checked in", &result);
	/* Nothing on stderr, but the note about the pool on AMD nested paging. */
	const char *err = result.err;
	if (strncmp(err, "umbra: note: AMD nested paging", 30) == 0)
		err = strchr(err, '\n') + 1;
	ck_assert_msg(err[0] == '\0', "expected nothing on stderr, got:\n%s", result.err);
}
END_TEST

START_TEST(test_uart_port_prints_bytes)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", "uart", "--stats", NULL }, &result);
	assert_status(&result, 0);
	assert_contains(result.out, "hello: all 1 vCPUs checked in\nhello through the UART\n", &result);
	/* 23 bytes, each a status-register read and a data write; hypercalls:
	 * ready, two console writes, exit and the image's demand faults. */
	unsigned long pf = page_fault_calls(result.err);
	char line[128];
	snprintf(line, sizeof(line), "umbra: vm0: exit status 0, %lu KVM exits: console=46 hypercall=%lu\n", 50 + pf,
		 4 + pf);
	assert_contains(result.err, line, &result);
	ck_assert_msg(pf <= demand_fault_bound(img), "page_fault hypercalls: expected at most %lu, got %lu",
		      demand_fault_bound(img), pf);
}
END_TEST

/* The guest's exit code is umbra's exit status, for the codes at the edges. */
static const int exit_codes[] = { 0, 1, 7, 42, UMBRA_EXIT_CODE_MAX };

START_TEST(test_exit_code_is_umbra_status)
{
	char img[512], cmdline[32];

	guest_image("hello", img, sizeof(img));
	snprintf(cmdline, sizeof(cmdline), "exit=%d", exit_codes[_i]);
	run_umbra((const char *[]){ "run", img, "--cmdline", cmdline, NULL }, &result);
	assert_status(&result, exit_codes[_i]);
}
END_TEST

START_TEST(test_every_vcpu_runs_with_its_own_boot_info)
{
	char img[512], line[128];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vcpus", "4", "--mem", "128M", NULL }, &result);
	assert_status(&result, 0);
	for (int i = 0; i < 4; i++) {
		snprintf(line, sizeof(line), "[vm0/%d] hello from vCPU %d of 4 (abi 3, 128 MiB RAM)", i, i);
		assert_contains(result.out, line, &result);
	}
	assert_contains(result.out, "[vm0/0] hello: all 4 vCPUs checked in", &result);
}
END_TEST

START_TEST(test_stats_count_exits_of_hello)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--stats", NULL }, &result);
	assert_status(&result, 0);
	/* hello announces its NMI handler (ready), makes two printf calls, each
	 * one console-write hypercall, then the exit hypercall: four exits,
	 * and one per shadow fault on the pages that are not resident (its
	 * code, data and bss, the boot information), each once or twice, but
	 * for those that the pre-faults of its pins mapped around themselves
	 * (fault-around): often all of them. */
	unsigned long pf = page_fault_calls(result.err);
	char line[128];
	ck_assert_msg(pf <= demand_fault_bound(img), "page_fault hypercalls: expected 0 to %lu, got %lu\n%s",
		      demand_fault_bound(img), pf, result.err);
	snprintf(line, sizeof(line), "umbra: vm0: exit status 0, %lu KVM exits: hypercall=%lu\n", 4 + pf, 4 + pf);
	assert_contains(result.err, line, &result);
	if (pf)
		snprintf(line, sizeof(line), "umbra: vm0: hypercalls: exit=1 console_write=2 page_fault=%lu ready=1\n", pf);
	else
		snprintf(line, sizeof(line), "umbra: vm0: hypercalls: exit=1 console_write=2 ready=1\n");
	assert_contains(result.err, line, &result);
}
END_TEST

/* Exceptions raised on purpose by the fault image, and what umbra must report. */
static const struct {
	const char *kind;
	const char *report;
} faults[] = {
	{ "pf-write", "guest exception #PF (vector 14) at RIP 0x" },
	{ "pf-read", "guest exception #PF (vector 14) at RIP 0x" },
	{ "ud", "guest exception #UD (vector 6) at RIP 0x" },
	{ "de", "guest exception #DE (vector 0) at RIP 0x" },
	{ "gp", "guest exception #GP (vector 13) at RIP 0x" },
	{ "triple", "triple fault (KVM_EXIT_SHUTDOWN)" },
};

START_TEST(test_fault_is_reported_and_stops_vm)
{
	char img[512];

	guest_image("fault", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", faults[_i].kind, NULL }, &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
	assert_contains(result.err, faults[_i].report, &result);
	ck_assert_msg(strstr(result.out, "did not fault") == NULL, "%s did not fault:\n%s", faults[_i].kind,
		      result.out);
}
END_TEST

START_TEST(test_page_fault_reports_error_code_and_cr2)
{
	char img[512];

	guest_image("fault", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", "pf-write", NULL }, &result);
	assert_contains(result.err, ", error code 0x2, CR2 0x7f0000001000", &result);
	run_umbra((const char *[]){ "run", img, "--cmdline", "pf-read", NULL }, &result);
	assert_contains(result.err, ", error code 0, CR2 0x7f0000001000", &result);
}
END_TEST

START_TEST(test_triple_fault_dumps_registers)
{
	char img[512];

	guest_image("fault", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", "triple", NULL }, &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
	/* The dump is there; its values are not checked: after a shutdown, AMD's
	 * KVM re-initialises the VMCB, so it shows the reset state there (Intel
	 * keeps the faulting state). */
	assert_contains(result.err, "RIP=", &result);
	assert_contains(result.err, "CR0=", &result);
	assert_contains(result.err, "EFER=", &result);
}
END_TEST

/* A guest that breaks the ABI is stopped with a clear error. */
static const struct {
	const char *kind;
	const char *report;
} misbehaviours[] = {
	{ "bad-hypercall", "bad hypercall: unknown number 999 (RAX)" },
	{ "bad-exit-code", "bad hypercall: exit code 200 (argument 0) is outside 0..119" },
	{ "bad-port", "unhandled port I/O: out to port 0x80, size 1, count 1" },
	{ "mmio", "page fault at 0x8000000000: the guest's page tables map it to guest-physical 0xc0000000, where "
		  "there is no RAM or segment" },
	{ "write-shadow-table", "write at 0x8000000000: the guest's page tables map it to guest-physical "
				"0x8000000000, a shadow page table" },
	{ "bad-cr3", "bad hypercall: set_cr3: guest CR3 0x1234 (argument 0) is not a 4 KiB-aligned page in RAM" },
	{ "pin-huge", "bad hypercall: pin 0x8000000000+0x40000000 (arguments 0, 1): must be 1 byte to 64 MiB" },
	/* error codes no CPU gives: refused before the shadow MMU sees them */
	{ "pf-write-fetch", "bad hypercall: page fault at 0x8000000000: error code 0x12 (argument 1) has both "
			    "write and fetch set" },
	{ "pf-wide-error-code", "bad hypercall: page fault at 0x8000000000: error code 0x100000002 (argument 1) "
				"is wider than 32 bits" },
	{ "console-outside-ram", "bad hypercall: console write buffer 0xc0000000+16 (arguments 0, 1) is outside guest RAM" },
	{ "console-too-long", "bad hypercall: console write of 4097 bytes (argument 1) is outside 1..4096" },
	{ "halt", "every vCPU halted without the exit hypercall" },
};

START_TEST(test_misbehaving_guest_is_stopped)
{
	char img[512];

	guest_image("misbehave", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vcpus", "2", "--cmdline", misbehaviours[_i].kind, NULL },
		  &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
	assert_contains(result.err, misbehaviours[_i].report, &result);
	ck_assert_msg(strstr(result.out, "was not stopped") == NULL, "%s was not stopped:\n%s",
		      misbehaviours[_i].kind, result.out);
}
END_TEST

/* ---- many VMs, segments, config files, statistics ---- */




START_TEST(test_many_vms_each_prefix_their_lines_and_status_is_first_failure)
{
	char img[512], line[64];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vms", "4", "--mem", "16M", NULL }, &result);
	assert_status(&result, 0);
	for (int i = 0; i < 4; i++) {
		snprintf(line, sizeof(line), "[vm%d] hello from vCPU 0 of 1 (abi 3, 16 MiB RAM)\n", i);
		assert_contains(result.out, line, &result);
	}
}
END_TEST

START_TEST(test_memtouch_verifies_ram_on_every_vcpu)
{
	char img[512];

	guest_image("memtouch", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vcpus", "2", "--mem", "32M", "--cmdline", "mib=16 rounds=2",
				    NULL }, &result);
	assert_status(&result, 0);
	assert_contains(result.out, "memtouch: 16 MiB x 2 rounds on 2 vCPUs: ok", &result);
}
END_TEST


/* A config with a preloaded read-only segment read by 4 VMs, and a writable
 * segment that one VM fills while another attaches it too. */


START_TEST(test_config_runs_vms_sharing_segments_with_preloaded_content)
{
	static uint8_t data[4 << 20];
	char cfg[256], json[4096], dir[512], expect[80], stats[256];

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7 + (i >> 12));
	uint64_t sum = write_segment_file("seg.bin", data, 3 << 20); /* the last MiB stays zero */
	static const uint8_t zeroes[1 << 20];
	sum = fnv1a(sum, zeroes, sizeof(zeroes));
	snprintf(expect, sizeof(expect), "seg=data rounds=3 expect=%#llx", (unsigned long long)sum);
	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [\n"
		 "    { \"name\": \"data\", \"size\": \"4M\", \"gpa\": \"0x2000000000\", \"writable\": false, \"file\": \"seg.bin\" },\n"
		 "    { \"name\": \"scratch\", \"size\": 2097152, \"gpa\": \"0x2000400000\" } ],\n"
		 "  \"vms\": [\n"
		 "    { \"name\": \"reader\", \"count\": 4, \"image\": \"%s/segread.elf\", \"mem\": \"8M\",\n"
		 "      \"cmdline\": \"%s\", \"segments\": [\"data\"] },\n"
		 "    { \"name\": \"writer\", \"image\": \"%s/segwrite.elf\", \"mem\": \"8M\", \"vcpus\": 2,\n"
		 "      \"cmdline\": \"seg=scratch value=5\", \"segments\": [\"data\", \"scratch\"] } ] }\n",
		 dir, expect, dir);
	snprintf(cfg, sizeof(cfg), "%s/run.json", tmpdir);
	write_text(cfg, json);
	snprintf(stats, sizeof(stats), "%s/stats.json", tmpdir);
	run_umbra((const char *[]){ "run", "--config", cfg, "--stats-json", stats, NULL }, &result);
	assert_status(&result, 0);
	char line[160];
	for (int i = 0; i < 4; i++) {
		snprintf(line, sizeof(line), "[reader%d] segread: data at 0x2000000000, 4 MiB, 3 rounds: sum %#llx\n", i,
			 (unsigned long long)sum);
		assert_contains(result.out, line, &result);
	}
	assert_contains(result.out, "[writer/0] segwrite: scratch filled, sum 0x", &result);

	/* The statistics file is JSON naming every VM with its status and exits. */
	static char json_out[64 * 1024];
	size_t n = read_file(stats, json_out, sizeof(json_out) - 1);
	json_out[n] = '\0';
	assert_contains(json_out, "\"name\": \"reader3\"", &result);
	assert_contains(json_out, "\"exit_status\": 0", &result);
	assert_contains(json_out, "\"console_write\": 1", &result); /* segread: one printf */
	assert_contains(json_out, "\"shootdowns\": {", &result);
	assert_contains(json_out, "\"writable\": false", &result);
}
END_TEST

/* Misbehaving VMs among well-behaved ones that share a segment with them:
 * each is stopped with its error, the others finish and verify their data. */
START_TEST(test_misbehaving_vms_are_stopped_while_the_others_finish)
{
	static uint8_t data[2 << 20];
	char cfg[256], json[4096], dir[512], expect[96];

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 13 + (i >> 9));
	uint64_t sum = write_segment_file("seg2.bin", data, sizeof(data));
	snprintf(expect, sizeof(expect), "seg=data rounds=20 expect=%#llx", (unsigned long long)sum);
	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [ { \"name\": \"data\", \"size\": \"2M\", \"gpa\": \"0x2000000000\",\n"
		 "                    \"writable\": false, \"file\": \"seg2.bin\" } ],\n"
		 "  \"vms\": [ { \"name\": \"reader\", \"count\": 3, \"image\": \"%s/segread.elf\", \"mem\": \"8M\",\n"
		 "              \"cmdline\": \"%s\", \"segments\": [\"data\"] },\n"
		 "            { \"name\": \"tablewriter\", \"image\": \"%s/misbehave.elf\", \"mem\": \"8M\", \"vcpus\": 2,\n"
		 "              \"cmdline\": \"write-shadow-table\", \"segments\": [\"data\"] },\n"
		 "            { \"name\": \"badcr3\", \"image\": \"%s/misbehave.elf\", \"mem\": \"8M\",\n"
		 "              \"cmdline\": \"bad-cr3\", \"segments\": [\"data\"] } ] }\n",
		 dir, expect, dir, dir);
	snprintf(cfg, sizeof(cfg), "%s/mixed.json", tmpdir);
	write_text(cfg, json);
	run_umbra((const char *[]){ "run", "--config", cfg, NULL }, &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
	char line[160];
	for (int i = 0; i < 3; i++) {
		snprintf(line, sizeof(line), "[reader%d] segread: data at 0x2000000000, 2 MiB, 20 rounds: sum %#llx\n", i,
			 (unsigned long long)sum);
		assert_contains(result.out, line, &result);
	}
	assert_contains(result.err, "write at 0x8000000000: the guest's page tables map it to guest-physical "
				    "0x8000000000, a shadow page table", &result);
	assert_contains(result.err, "set_cr3: guest CR3 0x1234 (argument 0) is not a 4 KiB-aligned page in RAM",
			&result);
	assert_contains(result.err, "umbra: tablewriter: exit status 120", &result);
	assert_contains(result.err, "umbra: badcr3: exit status 120", &result);
	ck_assert_msg(strstr(result.err, "umbra: reader") == NULL, "a reader failed:\n%s", result.err);
}
END_TEST

START_TEST(test_write_to_read_only_segment_stops_only_that_vm)
{
	char cfg[256], json[4096], dir[512];

	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [ { \"name\": \"ro\", \"size\": \"2M\", \"gpa\": \"0x4000000000\", \"writable\": false } ],\n"
		 "  \"vms\": [ { \"name\": \"bad\", \"image\": \"%s/segwrite.elf\", \"mem\": \"8M\",\n"
		 "               \"cmdline\": \"seg=ro\", \"segments\": [\"ro\"] },\n"
		 "             { \"name\": \"good\", \"count\": 2, \"image\": \"%s/segread.elf\", \"mem\": \"8M\",\n"
		 "               \"cmdline\": \"seg=ro rounds=2\", \"segments\": [\"ro\"] } ] }\n",
		 dir, dir);
	snprintf(cfg, sizeof(cfg), "%s/ro.json", tmpdir);
	write_text(cfg, json);
	run_umbra((const char *[]){ "run", "--config", cfg, NULL }, &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
	assert_contains(result.err, "umbra: bad vCPU 0: write at 0x4000000000 to a read-only segment", &result);
	assert_contains(result.out, "[good0] segread: ro at 0x4000000000, 2 MiB, 2 rounds: sum 0x", &result);
	assert_contains(result.out, "[good1] segread: ro at 0x4000000000, 2 MiB, 2 rounds: sum 0x", &result);
	assert_contains(result.err, "umbra: bad: exit status 120", &result);
}
END_TEST

START_TEST(test_bad_config_is_named)
{
	char cfg[256];

	snprintf(cfg, sizeof(cfg), "%s/bad.json", tmpdir);
	write_text(cfg, "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x.elf\", \"mem\": \"3M\" } ] }");
	run_umbra((const char *[]){ "run", "--config", cfg, NULL }, &result);
	assert_status(&result, UMBRA_STATUS_USAGE);
	assert_contains(result.err, "vms[0].mem: 3145728 bytes: must be a multiple of 2M", &result);
	run_umbra((const char *[]){ "run", "--config", "/nonexistent.json", NULL }, &result);
	assert_status(&result, UMBRA_STATUS_USAGE);
	assert_contains(result.err, "cannot open config '/nonexistent.json': No such file or directory", &result);
}
END_TEST

/* A guest that bypasses shadow paging (loads a CR3 of its own) and writes a
 * shadow table: where the pool is read-only (Intel EPT) the VM is stopped;
 * on AMD nested paging the pool must be writable (docs/abi.md) and umbra
 * says so when it starts. */
/* True where KVM runs AMD nested paging: the pool is a writable memslot. */
static bool pool_is_guest_writable(void)
{
	char c = 0;
	FILE *f = fopen("/sys/module/kvm_amd/parameters/npt", "re");

	if (!f)
		return false;
	if (fread(&c, 1, 1, f) != 1)
		c = 0;
	fclose(f);
	return c == 'Y' || c == '1';
}

START_TEST(test_guest_bypassing_shadow_paging_cannot_write_tables_unseen)
{
	char img[512];

	guest_image("misbehave", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", "bypass-shadow", NULL }, &result);
	if (pool_is_guest_writable()) {
		assert_status(&result, 1); /* the write went through: the guest says it was not stopped */
		assert_contains(result.out, "misbehave: bypass-shadow was not stopped", &result);
	} else {
		assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
		assert_contains(result.err, "write of 8 bytes at guest-physical 0x8000000000, a shadow page table", &result);
	}
}
END_TEST

/* ---- shadow paging on KVM ---- */


/* Fault-around windows for memtouch with 4 KiB leaves only: off, and the
 * default (none given). */
static const unsigned int memtouch_windows[] = { 1, 0 };

START_TEST(test_memtouch_costs_one_exit_per_shadow_fault)
{
	const unsigned int window = memtouch_windows[_i] ? memtouch_windows[_i] : DEFAULT_FAULT_AROUND;
	char img[512], around[16];

	guest_image("memtouch", img, sizeof(img));
	snprintf(around, sizeof(around), "%u", window);
	if (memtouch_windows[_i])
		run_umbra((const char *[]){ "run", img, "--mem", "16M", "--cmdline", "mib=8 rounds=2", "--stats",
					    "--fault-around", around, "--huge-leaves", "off", NULL },
			  &result);
	else
		run_umbra((const char *[]){ "run", img, "--mem", "16M", "--cmdline", "mib=8 rounds=2", "--stats",
					    "--huge-leaves", "off", NULL },
			  &result);
	assert_status(&result, 0);
	unsigned long nr_faults = stat_value(result.err, "shadow: faults=");
	unsigned long pf_calls = stat_value(result.err, "page_fault=");
	unsigned long exits = stat_value(result.err, "exit status 0, ");
	unsigned long faulted_around = stat_value(result.err, "faulted_around=");
	/* 8 MiB is 2048 pages, written first (a write: no read-only install
	 * first), under the boot tables' 2 MiB pages. Without fault-around
	 * each is faulted in by one page_fault hypercall; with a window of W
	 * one fault maps W of them (every page of the window is resident and
	 * under the same dirty guest large page), so 2048 / W faults. Besides
	 * these: the pages of the image that are not resident; the shadow MMU
	 * also counts umbra's pre-faults of the pinned pages. */
	unsigned long data_faults = 2048 / window;
	ck_assert_msg(pf_calls >= data_faults && pf_calls <= data_faults + demand_fault_bound(img),
		      "window %u: page_fault hypercalls: expected %lu to %lu, got %lu\n%s", window, data_faults,
		      data_faults + demand_fault_bound(img), pf_calls, result.err);
	ck_assert_msg(nr_faults > pf_calls, "shadow faults: expected more than %lu, got %lu", pf_calls, nr_faults);
	ck_assert_msg(window == 1 ? faulted_around == 0 : faulted_around >= 2048 - data_faults,
		      "window %u: pages faulted around: expected %s %lu, got %lu", window,
		      window == 1 ? "exactly" : "at least", window == 1 ? 0ul : 2048 - data_faults,
		      faulted_around);
	/* and nothing else exits: ready, one printf and the exit hypercall */
	ck_assert_msg(exits == pf_calls + 3, "exits: expected %lu (page faults + ready, printf, exit), got %lu\n%s",
		      pf_calls + 3, exits, result.err);
	/* The goal of fault-around: at most one exit per 16 pages touched. */
	if (window >= 16)
		ck_assert_msg(exits * 16 <= 2048 + 16 * (3 + demand_fault_bound(img)),
			      "exits per page: expected at most 1/16 for the 2048 data pages, got %lu exits", exits);
}
END_TEST

/* With 2 MiB shadow leaves (the default): memtouch's 8 MiB lie in guest
 * 2 MiB pages over whole runs of RAM, so each whole 2 MiB page of it is
 * one 2 MiB leaf and one exit; what the guest maps with 4 KiB pages, or a
 * 2 MiB page it shares with its image, still goes by fault-around windows.
 * Never more exits than fault-around alone makes, and at most 1/16 a page. */
START_TEST(test_memtouch_maps_2m_pages_with_one_exit_each)
{
	char img[512];

	guest_image("memtouch", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--mem", "16M", "--cmdline", "mib=8 rounds=2", "--stats", NULL },
		  &result);
	assert_status(&result, 0);
	unsigned long pf_calls = stat_value(result.err, "page_fault=");
	unsigned long exits = stat_value(result.err, "exit status 0, ");
	unsigned long huge = stat_value(result.err, "huge_installs=");

	printf("memtouch 8 MiB with 2 MiB leaves: %lu page_fault hypercalls, %lu exits, %lu 2 MiB leaves\n",
	       pf_calls, exits, huge);
	ck_assert_msg(huge >= 3, "2 MiB leaves: expected at least 3 (8 MiB holds 3 whole 2 MiB pages), got %lu\n%s",
		      huge, result.err);
	ck_assert_msg(pf_calls <= 2048 / DEFAULT_FAULT_AROUND + demand_fault_bound(img),
		      "page_fault hypercalls: expected at most %lu (fault-around alone), got %lu\n%s",
		      2048 / DEFAULT_FAULT_AROUND + demand_fault_bound(img), pf_calls, result.err);
	ck_assert_msg(exits == pf_calls + 3, "exits: expected %lu (page faults + ready, printf, exit), got %lu\n%s",
		      pf_calls + 3, exits, result.err);
	ck_assert_msg(exits * 16 <= 2048 + 16 * (3 + demand_fault_bound(img)),
		      "exits per page: expected at most 1/16 for the 2048 data pages, got %lu exits", exits);
	ck_assert_uint_eq(stat_value(result.err, "huge_splits="), 0);
}
END_TEST

START_TEST(test_page_table_churn_is_seen_exactly)
{
	char img[512];

	guest_image("ptchurn", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", "rounds=10 spaces=8", "--stats", NULL }, &result);
	assert_status(&result, 0);
	assert_contains(result.out, "ptchurn: 10 rounds in 8 address spaces on 1 vCPUs: ok", &result);
	/* Per round: one switch per space and back to the boot space; per space
	 * 6 invlpg (remap, protect, unmap, each undone), plus the shared page. */
	ck_assert_uint_eq(stat_value(result.err, "set_cr3="), 10 * (8 + 1));
	ck_assert_uint_eq(stat_value(result.err, "invlpg="), 10 * (8 * 6 + 1));
	/* One vCPU, which runs invlpg itself after each INVLPG: those send it
	 * no shootdown NMI (only a SET_CR3 whose sync dropped something may). */
	ck_assert_msg(stat_value(result.err, "nmis=") <= 10 * (8 + 1),
		      "shootdown NMIs to the only vCPU: expected at most one per SET_CR3 (%d), got %lu\n%s",
		      10 * (8 + 1), stat_value(result.err, "nmis="), result.err);
}
END_TEST

START_TEST(test_remap_is_shot_down_on_the_other_vcpu)
{
	char img[512];

	guest_image("ptchurn", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vcpus", "2", "--cmdline", "rounds=30 spaces=2", "--stats", NULL },
		  &result);
	assert_status(&result, 0);
	assert_contains(result.out, "[vm0/0] ptchurn: 30 rounds in 2 address spaces on 2 vCPUs: ok", &result);
	/* vCPU 1 ran the boot address space throughout: every remap of the
	 * shared page had to reach it, by kick and NMI, acknowledged. */
	unsigned long kicks = stat_value(result.err, "shootdowns: requests="), nmis = stat_value(result.err, " nmis=");
	unsigned long acks = stat_value(result.err, " acks=");
	ck_assert_msg(kicks >= 30, "flush requests: expected >= 30, got %lu\n%s", kicks, result.err);
	ck_assert_msg(nmis >= 1 && acks >= 1, "NMIs and acks: expected >= 1, got %lu and %lu\n%s", nmis, acks,
		      result.err);
}
END_TEST

/* ---- bad images and command lines, end to end through the program ---- */

enum patch { PATCH_NONE, PATCH_CLASS32, PATCH_MACHINE, PATCH_PADDR_LOW, PATCH_TRUNCATE, PATCH_MAGIC };

static const struct {
	enum patch patch;
	const char *report;
} bad_images[] = {
	{ PATCH_MAGIC, "not an ELF file (bad magic)" },
	{ PATCH_CLASS32, "not ELF64" },
	{ PATCH_MACHINE, "wrong machine 3 (want x86-64, 62)" },
	{ PATCH_PADDR_LOW, "lies outside the loadable RAM" },
	{ PATCH_TRUNCATE, "lies outside the file" },
};

START_TEST(test_malformed_image_is_rejected)
{
	static char buf[1 << 20];
	char img[512], bad[] = "/tmp/umbra-bad-XXXXXX";
	size_t len;

	guest_image("hello", img, sizeof(img));
	len = read_file(img, buf, sizeof(buf));
	switch (bad_images[_i].patch) {
	case PATCH_MAGIC: buf[1] = 'X'; break;
	case PATCH_CLASS32: buf[4] = 1; break;
	case PATCH_MACHINE: buf[18] = 3; buf[19] = 0; break;
	case PATCH_PADDR_LOW: {
		uint64_t phoff, paddr = 0x1000;
		memcpy(&phoff, buf + 32, 8);
		memcpy(buf + phoff + 24, &paddr, 8); /* first phdr's p_paddr */
		memcpy(buf + phoff + 16, &paddr, 8); /* and p_vaddr */
		break;
	}
	case PATCH_TRUNCATE: len = 0x1100; break;
	case PATCH_NONE: break;
	}
	int fd = mkstemp(bad);
	ck_assert_int_ge(fd, 0);
	close(fd);
	write_file(bad, buf, len);
	run_umbra((const char *[]){ "run", bad, NULL }, &result);
	unlink(bad);
	assert_status(&result, UMBRA_STATUS_IMAGE_ERROR);
	assert_contains(result.err, bad_images[_i].report, &result);
}
END_TEST

START_TEST(test_missing_image_is_named)
{
	run_umbra((const char *[]){ "run", "/nonexistent/image.elf", NULL }, &result);
	assert_status(&result, UMBRA_STATUS_IMAGE_ERROR);
	assert_contains(result.err, "cannot open image '/nonexistent/image.elf': No such file or directory", &result);
}
END_TEST

static const struct {
	const char *args[6];
	const char *report;
} bad_command_lines[] = {
	{ { "run", NULL }, "run: no IMAGE given" },
	{ { "run", "x.elf", "--mem", "3M", NULL }, "--mem '3M': must be a multiple of 2M from 4M to 64G" },
	{ { "run", "x.elf", "--mem", "lots", NULL }, "--mem 'lots': not a size" },
	{ { "run", "x.elf", "--vcpus", "0", NULL }, "--vcpus '0': must be a number from 1 to 64" },
	{ { "run", "x.elf", "--vcpus", NULL }, "--vcpus needs a number" },
	{ { "run", "x.elf", "--frobnicate", NULL }, "unknown option '--frobnicate'" },
	{ { "launch", NULL }, "unknown command 'launch'" },
};

START_TEST(test_bad_command_line_is_named)
{
	run_umbra(bad_command_lines[_i].args, &result);
	assert_status(&result, UMBRA_STATUS_USAGE);
	assert_contains(result.err, bad_command_lines[_i].report, &result);
}
END_TEST

START_TEST(test_help_documents_every_option)
{
	static const char *const options[] = { "--mem SIZE", "--vcpus N", "--cmdline STRING", "--stats",
					       "--help", "--version", "--evict-ms MS", "--evict-pages N",
					       "--group NAME", "--table-quota PAGES", "--notifier-mode M", "--reclaim-nonblocking", "--dump-tables FILE",
					       "--trace FILE", "--trace-events LIST", "--trace-buffer EVENTS", "trace-report",
					       "exit status" };

	run_umbra((const char *[]){ "--help", NULL }, &result);
	assert_status(&result, 0);
	for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++)
		assert_contains(result.out, options[i], &result);
}
END_TEST

/* ---- many VMs on shared segment tables, with evictions ---- */

/*
 * Writes a config of @count segread readers ("reader0".., @vcpus vCPUs,
 * 8 MiB each, @rounds passes, in trust group "readers" if @group) of
 * "data": a 4 MiB read-only segment from file @stem.bin, filled with the
 * pattern of @seed (@seg_extra goes inside the segment's object).  Its
 * path into @cfg.
 */
static void write_readers_config(const char *stem, uint64_t seed, unsigned int count, unsigned int vcpus,
				 unsigned int rounds, const char *seg_extra, bool group, char *cfg, size_t len)
{
	static uint8_t data[4u << 20];
	char json[2048], dir[512], file[64];

	fill_pattern(data, sizeof(data), seed);
	snprintf(file, sizeof(file), "%s.bin", stem);
	uint64_t sum = write_segment_file(file, data, sizeof(data));
	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [ { \"name\": \"data\", \"size\": \"4M\", \"gpa\": \"0x2000000000\",\n"
		 "    \"writable\": false, \"file\": \"%s\"%s } ],\n"
		 "  \"vms\": [ { \"name\": \"reader\", \"count\": %u, \"image\": \"%s/segread.elf\", \"mem\": \"8M\",\n"
		 "              \"vcpus\": %u, \"cmdline\": \"seg=data rounds=%u expect=%#llx\",\n"
		 "              \"segments\": [\"data\"]%s } ] }\n",
		 file, seg_extra, count, dir, vcpus, rounds, (unsigned long long)sum,
		 group ? ", \"group\": \"readers\"" : "");
	snprintf(cfg, len, "%s/%s.json", tmpdir, stem);
	write_text(cfg, json);
}

/*
 * --dump-tables: eight readers of a 4 MiB segment (two 2 MiB runs) in one
 * trust group. The picture names each VM and its root, and the two
 * canonical leaf tables of the segment drawn as one node ("2 PTs") that
 * each VM's own page directory points at: eight parents.
 */
START_TEST(test_dump_tables_pictures_eight_vms_on_one_canonical_pair)
{
	char cfg[256], dot[256], line[256];
	static char text[1 << 20];

	write_readers_config("dt", 0x6a09e667f3bcc909ull, 8, 1, 2, "", true, cfg, sizeof(cfg));
	snprintf(dot, sizeof(dot), "%s/tables.dot", tmpdir);
	run_umbra_timeout((const char *[]){ "run", "--config", cfg, "--dump-tables", dot, NULL }, 120, &result);
	assert_status(&result, 0);

	FILE *f = fopen(dot, "re");
	ck_assert_msg(f, "no %s: %s", dot, strerror(errno));
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	ck_assert_msg(strstr(text, "digraph shadow_tables {") && n > 0 && text[n - 2] == '}',
		      "not a whole DOT graph:\n%.400s", text);
	for (int i = 0; i < 8; i++) {
		snprintf(line, sizeof(line), "\"vm reader%d\" [shape=ellipse", i);
		ck_assert_msg(strstr(text, line), "no node for reader%d", i);
		snprintf(line, sizeof(line), "\"vm reader%d\" -> ", i);
		ck_assert_msg(strstr(text, line), "no root of reader%d", i);
	}
	/* The canonical pair: one drawn node, and its name's in-edges. */
	const char *canon = strstr(text, "comment=\"level=1 kind=canonical tables=2 ");
	ck_assert_msg(canon, "no node for the two canonical leaf tables:\n%s", text);
	const char *start = canon;
	while (start > text && start[-1] != '\n')
		start--;
	char name[64];
	ck_assert_int_eq(sscanf(start, " %63s", name), 1);
	unsigned int parents = 0, roots = 0;
	for (const char *p = text; (p = strstr(p, "\n  ")); p++) {
		char from[64], to[64];
		const char *end = strchr(p + 1, '\n'), *arrow = strstr(p, " -> ");

		if (strncmp(p + 3, "\"vm ", 4) == 0 && arrow && end && arrow < end)
			roots++; /* "vm NAME" -> root */
		else if (sscanf(p, " %63s -> %63s", from, to) == 2) {
			to[strcspn(to, ";")] = '\0';
			parents += strcmp(to, name) == 0;
		}
	}
	ck_assert_msg(parents == 8, "the canonical pair: expected 8 parents (each VM's page directory), got %u",
		      parents);
	ck_assert_msg(roots >= 8, "expected a root for each of 8 VMs, got %u links from VMs", roots);
	printf("dump-tables: %zu bytes of DOT, %u VM roots, the canonical pair under %u directories\n", n, roots,
	       parents);
}
END_TEST

/*
 * The delivery mode of invalidations on live VMs: two readers of a segment
 * whose pages the evictor swaps out while they checksum it, with
 * --notifier-mode MODE and, in the last case, the segment's own
 * "notifier_mode" over it. The segment's notifier counts its starts and
 * callbacks in its mode only; the VMs' RAM objects take --notifier-mode.
 * With --reclaim-nonblocking (the last case) an invalidation that a VM
 * refuses (its mmu_lock busy: -EAGAIN) leaves its pages resident: the
 * pager counts each page, the notifier each refused start, and the
 * readers' sums stay right.
 */
static const struct {
	const char *option, *segment; /* --notifier-mode; the segment's key (NULL: none) */
	const char *seg_mode, *ram_mode;
	bool nonblocking;
} notifier_mode_cases[] = {
	{ "range", NULL, "range", "range", false },
	{ "page", NULL, "page", "page", false },
	{ "range", "page", "page", "range", false },
	{ "range", NULL, "range", "range", true },
};

START_TEST(test_notifier_mode_chooses_how_evictions_reach_the_vms)
{
	char cfg[256], stats[256], seg_key[64] = "";
	const char *want = notifier_mode_cases[_i].seg_mode;

	if (notifier_mode_cases[_i].segment)
		snprintf(seg_key, sizeof(seg_key), ", \"notifier_mode\": \"%s\"", notifier_mode_cases[_i].segment);
	write_readers_config("nm", 0xbb67ae8584caa73bull, 2, 1, 8, seg_key, false, cfg, sizeof(cfg));
	snprintf(stats, sizeof(stats), "%s/nm-stats.json", tmpdir);
	run_umbra_timeout((const char *[]){ "run", "--config", cfg, "--stats", "--stats-json", stats, "--evict-ms", "5",
					    "--evict-pages", "128", "--notifier-mode", notifier_mode_cases[_i].option,
					    notifier_mode_cases[_i].nonblocking ? "--reclaim-nonblocking" : NULL, NULL },
			  120, &result);
	assert_status(&result, 0);

	struct json_object *root = json_object_from_file(stats), *segs, *vms, *mode;
	ck_assert_msg(root, "cannot parse %s: %s", stats, json_util_get_last_err());
	ck_assert(json_object_object_get_ex(root, "segments", &segs));
	struct json_object *seg = json_object_array_get_idx(segs, 0), *n;
	ck_assert(json_object_object_get_ex(seg, "notifier", &n));
	ck_assert(json_object_object_get_ex(n, "mode", &mode));
	ck_assert_msg(strcmp(json_object_get_string(mode), want) == 0, "segment's mode: expected %s, got %s", want,
		      json_object_get_string(mode));
	uint64_t starts = json_u64(seg, "notifier.starts"), evictions = json_u64(seg, "evictions");
	uint64_t range_cb = json_u64(seg, "notifier.cb_range_start"), page_cb = json_u64(seg, "notifier.cb_page");
	ck_assert_msg(starts > 0 && evictions > 0, "expected evictions and invalidations, got %llu and %llu",
		      (unsigned long long)evictions, (unsigned long long)starts);
	ck_assert_uint_eq(json_u64(seg, "notifier.ends"), starts);
	uint64_t aborts = json_u64(seg, "notifier.aborts"), refused = 0;
	struct json_object *pager, *objects;
	ck_assert(json_object_object_get_ex(root, "pager", &pager));
	ck_assert(json_object_object_get_ex(pager, "objects", &objects));
	for (size_t k = 0; k < json_object_array_length(objects); k++) {
		struct json_object *o = json_object_array_get_idx(objects, k), *name;
		if (json_object_object_get_ex(o, "name", &name) &&
		    strcmp(json_object_get_string(name), "segment data") == 0)
			refused = json_u64(o, "busy_refusals");
	}
	if (!notifier_mode_cases[_i].nonblocking) {
		ck_assert_msg(aborts == 0 && refused == 0, "blocking evictions: expected no refusal, got %llu and %llu",
			      (unsigned long long)aborts, (unsigned long long)refused);
	} else {
		/* Each refused start is one run of at most 128 pages, each
		 * page of it counted once. */
		ck_assert_msg((aborts == 0) == (refused == 0) && refused <= aborts * 128 &&
				      json_u64(seg, "notifier.cb_eagain") >= aborts,
			      "non-blocking evictions: %llu refused starts, %llu refused pages, %llu -EAGAIN callbacks",
			      (unsigned long long)aborts, (unsigned long long)refused,
			      (unsigned long long)json_u64(seg, "notifier.cb_eagain"));
		printf("notifier_mode nonblocking: %llu starts, %llu refused (%llu pages left resident), %llu evictions\n",
		       (unsigned long long)starts, (unsigned long long)aborts, (unsigned long long)refused,
		       (unsigned long long)evictions);
	}
	if (strcmp(want, "range") == 0) {
		ck_assert_uint_eq(json_u64(seg, "notifier.range_starts"), starts);
		ck_assert_msg(range_cb > 0 && page_cb == 0, "range mode: expected range callbacks only, got %llu and %llu",
			      (unsigned long long)range_cb, (unsigned long long)page_cb);
	} else {
		ck_assert_uint_eq(json_u64(seg, "notifier.page_starts"), starts);
		/* One callback per page per subscriber that maps it: at least
		 * one per invalidation. */
		ck_assert_msg(page_cb >= starts && range_cb == 0,
			      "page mode: expected at least %llu page callbacks and no range ones, got %llu and %llu",
			      (unsigned long long)starts, (unsigned long long)page_cb, (unsigned long long)range_cb);
	}
	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	for (size_t i = 0; i < 2; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i), *vn;
		ck_assert(json_object_object_get_ex(vm, "notifier", &vn));
		ck_assert(json_object_object_get_ex(vn, "mode", &mode));
		ck_assert_msg(strcmp(json_object_get_string(mode), notifier_mode_cases[_i].ram_mode) == 0,
			      "reader%zu's RAM: expected mode %s, got %s", i, notifier_mode_cases[_i].ram_mode,
			      json_object_get_string(mode));
		ck_assert_msg(json_u64(vm, "notifier.subscribes") > 0, "reader%zu's RAM: no subscriber", i);
	}
	json_object_put(root);
	char line[128];
	snprintf(line, sizeof(line), "umbra: segment 'data': evictions=");
	assert_contains(result.err, line, &result);
	snprintf(line, sizeof(line), "; notifier: mode=%s starts=", want);
	assert_contains(result.err, line, &result);
	snprintf(line, sizeof(line), "umbra: reader0: notifier (RAM): mode=%s starts=", notifier_mode_cases[_i].ram_mode);
	assert_contains(result.err, line, &result);
	const char *p = strstr(result.err, "umbra: segment 'data':"), *end = p ? strchr(p, '\n') : NULL;
	if (p && end)
		printf("notifier_mode %s: %.*s\n", want, (int)(end - p), p);
}
END_TEST


/* ---- --trace: an eviction followed to every VM and vCPU ---- */

/* The trace's process id of each VM name "readerK" (from the process_name
 * metadata events) into pid_of[K]; the count found. */
static unsigned int trace_reader_pids(struct json_object *events, uint64_t *pid_of, unsigned int max)
{
	unsigned int found = 0;

	for (size_t i = 0; i < json_object_array_length(events); i++) {
		struct json_object *e = json_object_array_get_idx(events, i), *v, *args;
		unsigned int k;

		if (!json_object_object_get_ex(e, "name", &v) ||
		    strcmp(json_object_get_string(v), "process_name") != 0 ||
		    !json_object_object_get_ex(e, "args", &args) || !json_object_object_get_ex(args, "name", &v) ||
		    sscanf(json_object_get_string(v), "reader%u", &k) != 1 || k >= max)
			continue;
		pid_of[k] = json_u64(e, "pid");
		found++;
	}
	return found;
}

/* Key @key of @o as a number, 0 if absent. */
static uint64_t u64_or_0(struct json_object *o, const char *key)
{
	struct json_object *v;

	return o && json_object_object_get_ex(o, key, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

static bool event_is(struct json_object *e, const char *ph, const char *name)
{
	struct json_object *v;

	return json_object_object_get_ex(e, "ph", &v) && strcmp(json_object_get_string(v), ph) == 0 &&
	       json_object_object_get_ex(e, "name", &v) && strcmp(json_object_get_string(v), name) == 0;
}

#define TRACE_READERS 3
#define TRACE_INVS_MAX 65536

/*
 * --trace on three readers (two vCPUs each) of a segment that the evictor
 * swaps out every 5 ms, in each delivery mode. Checked with json-c: every
 * invalidation that begins ends; the VMs whose callbacks serve each
 * invalidation are exactly the three that map the segment; every NMI
 * injected is acknowledged (but a vCPU's last, which may be in flight when
 * its VM stops); nothing was dropped. Then `umbra trace-report` prints
 * totals equal to what --stats-json counts.
 */
static const char *const trace_modes[] = { "range", "page" };

START_TEST(test_trace_follows_each_eviction_to_every_vm_and_vcpu)
{
	char cfg[256], stats[256], trace[256];
	static uint64_t inv_vms[TRACE_INVS_MAX];	/* bit k: readerK's callback seen */
	static uint8_t inv_state[TRACE_INVS_MAX];	/* 1 begun, 2 ended, 3 aborted */
	static double inv_begin[TRACE_INVS_MAX], inv_end[TRACE_INVS_MAX]; /* us */
	double first_ts[TRACE_READERS], last_ts[TRACE_READERS];

	write_readers_config("tr", 0x3c6ef372fe94f82bull, TRACE_READERS, 2, 4, "", true, cfg, sizeof(cfg));
	snprintf(stats, sizeof(stats), "%s/tr-stats.json", tmpdir);
	snprintf(trace, sizeof(trace), "%s/trace.json", tmpdir);
	run_umbra_timeout((const char *[]){ "run", "--config", cfg, "--stats-json", stats, "--evict-ms", "5",
					    "--evict-pages", "128", "--notifier-mode", trace_modes[_i], "--trace",
					    trace, NULL },
			  180, &result);
	assert_status(&result, 0);
	assert_contains(result.err, " 0 dropped", &result);

	struct json_object *root = json_object_from_file(trace), *events, *v;
	ck_assert_msg(root, "cannot parse the trace %s: %s", trace, json_util_get_last_err());
	ck_assert(json_object_object_get_ex(root, "traceEvents", &events));
	uint64_t pid_of[TRACE_READERS];
	ck_assert_uint_eq(trace_reader_pids(events, pid_of, TRACE_READERS), TRACE_READERS);

	/* Invalidations: begun, ended, and their callbacks' VMs. */
	uint64_t nr_inv = 0, max_inv = 0, nr_callbacks = 0, nmis = 0, acks = 0;
	memset(inv_vms, 0, sizeof(inv_vms));
	memset(inv_state, 0, sizeof(inv_state));
	for (int k = 0; k < TRACE_READERS; k++)
		first_ts[k] = 1e300, last_ts[k] = 0;
	for (size_t i = 0; i < json_object_array_length(events); i++) {
		struct json_object *e = json_object_array_get_idx(events, i), *args = NULL;
		json_object_object_get_ex(e, "args", &args);
		uint64_t inv = u64_or_0(args, "inv");
		double ts = json_object_object_get_ex(e, "ts", &v) ? json_object_get_double(v) : 0;

		/* A reader's life as its vCPUs' events show it. */
		for (int k = 0; k < TRACE_READERS; k++)
			if (!event_is(e, "M", "thread_name") && !event_is(e, "M", "process_name") &&
			    u64_or_0(e, "pid") == pid_of[k]) {
				first_ts[k] = ts < first_ts[k] ? ts : first_ts[k];
				last_ts[k] = ts > last_ts[k] ? ts : last_ts[k];
			}

		ck_assert_msg(inv < TRACE_INVS_MAX, "invalidation id %llu out of the test's range",
			      (unsigned long long)inv);
		if (event_is(e, "B", "invalidate")) {
			ck_assert_msg(inv && !inv_state[inv], "invalidation %llu begins twice", (unsigned long long)inv);
			ck_assert(json_object_object_get_ex(args, "mode", &v));
			ck_assert_msg(strcmp(json_object_get_string(v), trace_modes[_i]) == 0,
				      "invalidation %llu: expected mode %s, got %s", (unsigned long long)inv,
				      trace_modes[_i], json_object_get_string(v));
			inv_state[inv] = 1;
			inv_begin[inv] = ts;
			nr_inv++;
			max_inv = inv > max_inv ? inv : max_inv;
		} else if (event_is(e, "E", "invalidate")) {
			ck_assert_msg(inv_state[inv] == 1, "invalidation %llu ends without a begin (state %u)",
				      (unsigned long long)inv, inv_state[inv]);
			ck_assert(json_object_object_get_ex(args, "result", &v));
			inv_state[inv] = strcmp(json_object_get_string(v), "aborted") == 0 ? 3 : 2;
			inv_end[inv] = ts;
		} else if (event_is(e, "X", "callback")) {
			uint64_t vm = json_u64(args, "vm");
			int k;
			for (k = 0; k < TRACE_READERS && pid_of[k] != vm; k++)
				;
			ck_assert_msg(k < TRACE_READERS, "a callback of vm %llu, which is no reader",
				      (unsigned long long)vm);
			ck_assert_msg(inv, "a callback outside any invalidation");
			inv_vms[inv] |= 1ull << k;
			nr_callbacks++;
		} else if (event_is(e, "X", "nmi")) {
			nmis++;
		} else if (event_is(e, "X", "ack")) {
			acks++;
		}
	}
	ck_assert_msg(nr_inv > 0, "no invalidation in the trace");
	/* While all three run (from the last first event of a reader to the
	 * first last one), each maps the segment: every invalidation then
	 * reaches all three. Before and after, a reader that has not
	 * subscribed yet or has gone may be missing, never another VM. */
	double all_from = 0, all_to = 1e300;
	unsigned int checked = 0;
	for (int k = 0; k < TRACE_READERS; k++) {
		all_from = first_ts[k] > all_from ? first_ts[k] : all_from;
		all_to = last_ts[k] < all_to ? last_ts[k] : all_to;
	}
	for (uint64_t inv = 1; inv <= max_inv; inv++) {
		ck_assert_msg(inv_state[inv] >= 2, "invalidation %llu never ends", (unsigned long long)inv);
		if (inv_state[inv] != 2 || inv_begin[inv] < all_from || inv_end[inv] > all_to)
			continue;
		checked++;
		ck_assert_msg(inv_vms[inv] == (1u << TRACE_READERS) - 1,
			      "invalidation %llu: expected callbacks of the %d VMs that map the segment "
			      "(mask %#x), got mask %#llx",
			      (unsigned long long)inv, TRACE_READERS, (1u << TRACE_READERS) - 1,
			      (unsigned long long)inv_vms[inv]);
	}
	ck_assert_msg(checked > 0, "no invalidation while all three readers ran (of %llu)",
		      (unsigned long long)nr_inv);

	/* Every NMI acknowledged: per vCPU (process, thread), NMI n has an
	 * ack n, but for its last NMI. */
	static struct { uint64_t pid, tid, n; } nmi_seen[8192], ack_seen[8192];
	size_t nr_nmi = 0, nr_ack = 0;
	for (size_t i = 0; i < json_object_array_length(events); i++) {
		struct json_object *e = json_object_array_get_idx(events, i), *args;
		bool is_nmi = event_is(e, "X", "nmi");
		if ((!is_nmi && !event_is(e, "X", "ack")) || !json_object_object_get_ex(e, "args", &args))
			continue;
		ck_assert_msg(nr_nmi < 8192 && nr_ack < 8192, "more NMIs than the test counts");
		if (is_nmi)
			nmi_seen[nr_nmi++] = (typeof(nmi_seen[0])){ json_u64(e, "pid"), json_u64(e, "tid"),
								    json_u64(args, "nmi") };
		else
			ack_seen[nr_ack++] = (typeof(ack_seen[0])){ json_u64(e, "pid"), json_u64(e, "tid"),
								    json_u64(args, "nmi") };
	}
	for (size_t i = 0; i < nr_nmi; i++) {
		bool acked = false, later = false;
		for (size_t j = 0; j < nr_ack && !acked; j++)
			acked = ack_seen[j].pid == nmi_seen[i].pid && ack_seen[j].tid == nmi_seen[i].tid &&
				ack_seen[j].n == nmi_seen[i].n;
		for (size_t j = 0; j < nr_nmi && !later; j++)
			later = nmi_seen[j].pid == nmi_seen[i].pid && nmi_seen[j].tid == nmi_seen[i].tid &&
				nmi_seen[j].n > nmi_seen[i].n;
		ck_assert_msg(acked || !later, "vm %llu vCPU thread %llu: NMI %llu was never acknowledged",
			      (unsigned long long)nmi_seen[i].pid, (unsigned long long)nmi_seen[i].tid,
			      (unsigned long long)nmi_seen[i].n);
	}
	json_object_put(root);

	/* The report's totals against --stats-json. */
	struct json_object *st = json_object_from_file(stats), *vms, *segs;
	ck_assert_msg(st, "cannot parse %s: %s", stats, json_util_get_last_err());
	ck_assert(json_object_object_get_ex(st, "vms", &vms));
	ck_assert(json_object_object_get_ex(st, "segments", &segs));
	struct json_object *seg = json_object_array_get_idx(segs, 0);
	uint64_t want_inv = json_u64(seg, "notifier.starts") + json_u64(seg, "notifier.aborts");
	uint64_t want_cb = json_u64(seg, "notifier.cb_range_start") + json_u64(seg, "notifier.cb_page");
	uint64_t want_req = 0, want_nmi = 0, want_ack = 0, want_early = 0;
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i);
		want_inv += json_u64(vm, "notifier.starts") + json_u64(vm, "notifier.aborts");
		want_cb += json_u64(vm, "notifier.cb_range_start") + json_u64(vm, "notifier.cb_page");
		want_req += json_u64(vm, "shootdowns.requests");
		want_nmi += json_u64(vm, "shootdowns.nmis");
		want_ack += json_u64(vm, "shootdowns.acks");
		want_early += json_u64(vm, "shootdowns.early_flushes");
	}
	json_object_put(st);
	ck_assert_uint_eq(nr_callbacks, want_cb);
	ck_assert_uint_eq(nmis, want_nmi);
	ck_assert_uint_eq(acks, want_ack);

	run_umbra((const char *[]){ "trace-report", trace, NULL }, &result);
	assert_status(&result, 0);
	unsigned long long inv, cb, req, nmi, ack, early;
	const char *tot = strstr(result.out, "totals: ");
	ck_assert_msg(tot && sscanf(tot, "totals: invalidations %llu, callbacks %llu, shootdown requests %llu, "
					 "NMIs %llu, acks %llu, early flushes %llu",
				    &inv, &cb, &req, &nmi, &ack, &early) == 6,
		      "no totals line in the report:\n%s", result.out);
	ck_assert_msg(inv == want_inv && cb == want_cb && req == want_req && nmi == want_nmi && ack == want_ack &&
			      early == want_early,
		      "report totals against --stats: invalidations %llu/%llu, callbacks %llu/%llu, requests "
		      "%llu/%llu, NMIs %llu/%llu, acks %llu/%llu, early flushes %llu/%llu",
		      inv, (unsigned long long)want_inv, cb, (unsigned long long)want_cb, req,
		      (unsigned long long)want_req, nmi, (unsigned long long)want_nmi, ack,
		      (unsigned long long)want_ack, early, (unsigned long long)want_early);
	char row[32];
	snprintf(row, sizeof(row), "| %s | ", trace_modes[_i]);
	assert_contains(result.out, row, &result);
	printf("trace %s: %llu invalidations (%u while all %d VMs ran), %llu callbacks, %llu requests, %llu NMIs, "
	       "%llu acks\n%s",
	       trace_modes[_i], inv, checked, TRACE_READERS, cb, req, nmi, ack, result.out);
}
END_TEST

/* --trace-events keeps to the kinds named: a memtouch run with "fault"
 * holds fault spans and nothing else but the names of the tracks. */
START_TEST(test_trace_events_records_only_the_kinds_named)
{
	char image[600], dir[512], trace[256];
	guest_image_dir(dir, sizeof(dir));
	snprintf(image, sizeof(image), "%s/memtouch.elf", dir);
	snprintf(trace, sizeof(trace), "%s/fault_spans.json", tmpdir);
	run_umbra_timeout((const char *[]){ "run", image, "--trace", trace, "--trace-events", "fault", NULL }, 120,
			  &result);
	assert_status(&result, 0);
	struct json_object *root = json_object_from_file(trace), *events, *v;
	ck_assert_msg(root, "cannot parse the trace %s: %s", trace, json_util_get_last_err());
	ck_assert(json_object_object_get_ex(root, "traceEvents", &events));
	uint64_t fault_spans = 0;
	for (size_t i = 0; i < json_object_array_length(events); i++) {
		struct json_object *e = json_object_array_get_idx(events, i);
		ck_assert(json_object_object_get_ex(e, "ph", &v));
		if (strcmp(json_object_get_string(v), "M") == 0)
			continue;
		ck_assert(json_object_object_get_ex(e, "cat", &v));
		ck_assert_msg(strcmp(json_object_get_string(v), "fault") == 0, "expected only fault_spans, got a '%s' event",
			      json_object_get_string(v));
		fault_spans++;
	}
	json_object_put(root);
	ck_assert_msg(fault_spans > 0, "expected fault spans, got none");
	run_umbra((const char *[]){ "run", image, "--trace", trace, "--trace-events", "fault,bogus", NULL }, &result);
	assert_status(&result, UMBRA_STATUS_USAGE);
	assert_contains(result.err, "--trace-events 'fault,bogus': unknown kind at 'bogus'", &result);
}
END_TEST

/* A guest that faults more than a thread's buffer holds cannot grow the
 * trace: memtouch faults every page of 16 MiB one by one (no fault-around,
 * no 2 MiB leaves)
 * under --trace-buffer 1024; the vCPU's thread keeps 1024 events, the rest
 * are counted as dropped, in the file and on stderr, and the run is as
 * without a trace. */
START_TEST(test_trace_buffer_bounds_what_a_guest_can_record)
{
	char image[600], dir[512], trace[256];
	unsigned long long events, threads, dropped, cap;

	guest_image_dir(dir, sizeof(dir));
	snprintf(image, sizeof(image), "%s/memtouch.elf", dir);
	snprintf(trace, sizeof(trace), "%s/bounded.json", tmpdir);
	run_umbra_timeout((const char *[]){ "run", image, "--mem", "32M", "--cmdline", "mib=16 rounds=1",
					    "--fault-around", "1", "--huge-leaves", "off", "--trace", trace,
					    "--trace-buffer", "1024", NULL },
			  120, &result);
	assert_status(&result, 0);
	const char *line = strstr(result.err, "umbra: trace: ");
	ck_assert_msg(line && sscanf(line, "umbra: trace: %llu events of %llu threads in %*s %llu dropped (at most %llu",
				     &events, &threads, &dropped, &cap) == 4,
		      "no trace line on stderr:\n%s", result.err);
	ck_assert_uint_eq(cap, 1024);
	ck_assert_msg(events <= threads * cap, "expected at most %llu events (%llu threads), got %llu",
		      threads * cap, threads, events);
	ck_assert_msg(dropped >= 4096 - 1024, "16 MiB faulted page by page: expected at least %d dropped, got %llu",
		      4096 - 1024, dropped);
	struct json_object *root = json_object_from_file(trace), *other;
	ck_assert_msg(root, "cannot parse the trace %s: %s", trace, json_util_get_last_err());
	ck_assert(json_object_object_get_ex(root, "otherData", &other));
	ck_assert_uint_eq(json_u64(other, "dropped_events"), dropped);
	ck_assert_uint_eq(json_u64(other, "events"), events);
	json_object_put(root);
}
END_TEST


#define SHARED_VMS 8
#define SHARED_SEG_SIZE (64u << 20)

START_TEST(test_eight_vms_share_segment_tables_and_fault_back_evicted_pages)
{
	char cfg[256], json[4096], dir[512], expect[96], stats[256];
	uint8_t *data = malloc(SHARED_SEG_SIZE);
	uint64_t x = 0x9e3779b97f4a7c15ull;

	ck_assert_ptr_nonnull(data);
	for (size_t i = 0; i < SHARED_SEG_SIZE; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(data + i, &x, 8);
	}
	uint64_t sum = write_segment_file("seg64.bin", data, SHARED_SEG_SIZE);
	free(data);
	snprintf(expect, sizeof(expect), "seg=data rounds=4 expect=%#llx", (unsigned long long)sum);
	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [\n"
		 "    { \"name\": \"data\", \"size\": \"64M\", \"gpa\": \"0x2000000000\", \"writable\": false,\n"
		 "      \"file\": \"seg64.bin\" } ],\n"
		 "  \"vms\": [ { \"name\": \"reader\", \"count\": %d, \"image\": \"%s/segread.elf\", \"mem\": \"8M\",\n"
		 "              \"vcpus\": 2, \"cmdline\": \"%s\", \"segments\": [\"data\"],\n"
		 "              \"group\": \"readers\" } ] }\n",
		 SHARED_VMS, dir, expect);
	snprintf(cfg, sizeof(cfg), "%s/shared.json", tmpdir);
	write_text(cfg, json);
	snprintf(stats, sizeof(stats), "%s/shared-stats.json", tmpdir);
	/* Every 20 ms the next 512 pages (2 MiB) of the segment are swapped out,
	 * while the eight VMs checksum it four times each: about 50 s in the
	 * sandbox (16 vCPUs emulated on the host's cores), hence the limit. */
	run_umbra_timeout((const char *[]){ "run", "--config", cfg, "--stats", "--stats-json", stats, "--evict-ms",
					    "20", "--evict-pages", "512", NULL },
			  240, &result);
	assert_status(&result, 0);
	char line[160];
	for (int i = 0; i < SHARED_VMS; i++) {
		snprintf(line, sizeof(line), "[reader%d/0] segread: data at 0x2000000000, 64 MiB, 4 rounds: sum %#llx\n",
			 i, (unsigned long long)sum);
		assert_contains(result.out, line, &result);
	}

	struct json_object *root = json_object_from_file(stats), *vms;
	ck_assert_msg(root, "cannot parse %s: %s", stats, json_util_get_last_err());
	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	ck_assert_uint_eq(json_object_array_length(vms), SHARED_VMS);
	/* The segment's leaf tables exist once: 32 canonical tables (64 MiB in
	 * 2 MiB runs), made by whichever VM came first, reached by all. */
	uint64_t created = 0, invalidations = 0;
	for (int i = 0; i < SHARED_VMS; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, (size_t)i);
		uint64_t shared = json_u64(vm, "shadow.tables_reached.shared");

		created += json_u64(vm, "shadow.sharing.canon_created");
		ck_assert_msg(shared >= SHARED_SEG_SIZE >> 21, "reader%d: expected at least %u shared tables, got %llu",
			      i, SHARED_SEG_SIZE >> 21, (unsigned long long)shared);
		ck_assert_msg(json_u64(vm, "shadow.invalidations") > 0, "reader%d: no invalidation reached it", i);
		invalidations += json_u64(vm, "shadow.invalidations");
		/* A VM's zap flushes its own vCPUs before it drops anything. */
		uint64_t flushes = json_u64(vm, "shadow.flushes_all") + json_u64(vm, "shadow.flushes_va");
		ck_assert_msg(json_u64(vm, "shadow.zapped") == 0 || flushes > 0,
			      "reader%d: expected flushes after %llu zapped entries, got none", i,
			      (unsigned long long)json_u64(vm, "shadow.zapped"));
		(void)json_u64(vm, "shadow.root_evictions");
	}
	assert_contains(result.err, " root_evictions=", &result);
	assert_contains(result.err, " flushes_all=", &result);
	ck_assert_msg(created == SHARED_SEG_SIZE >> 21, "canonical tables created: expected %u, got %llu",
		      SHARED_SEG_SIZE >> 21, (unsigned long long)created);
	uint64_t in_use = json_u64(root, "table_pages.in_use"), unshared = json_u64(root, "table_pages.unshared");
	ck_assert_msg(unshared - in_use >= (SHARED_VMS - 1) * (SHARED_SEG_SIZE >> 21),
		      "table pages: %llu in use, %llu unshared: expected a saving of at least %u",
		      (unsigned long long)in_use, (unsigned long long)unshared,
		      (SHARED_VMS - 1) * (SHARED_SEG_SIZE >> 21));
	/* Pages were evicted while the guests ran, and faulted back. */
	struct json_object *segs = NULL;
	ck_assert(json_object_object_get_ex(root, "segments", &segs));
	uint64_t evictions = json_u64(json_object_array_get_idx(segs, 0), "evictions");
	uint64_t restores = json_u64(json_object_array_get_idx(segs, 0), "restores");
	ck_assert_msg(evictions > 0 && restores > 0, "segment: expected evictions and restores, got %llu and %llu",
		      (unsigned long long)evictions, (unsigned long long)restores);
	/* The figures, for docs and closing notes. */
	for (const char *keys[] = { "umbra: table memory:", "umbra: segment 'data':", "umbra: reader0: exit",
				    "umbra: reader0: tables", "umbra: reader0: shootdowns", NULL },
			**k = keys;
	     *k; k++) {
		const char *p = strstr(result.err, *k), *end = p ? strchr(p, '\n') : NULL;
		if (p && end)
			printf("eight-vms: %.*s\n", (int)(end - p), p);
	}
	printf("eight-vms: %llu invalidations delivered in all\n", (unsigned long long)invalidations);
	struct json_object *shadow0;
	ck_assert(json_object_object_get_ex(json_object_array_get_idx(vms, 0), "shadow", &shadow0));
	printf("eight-vms: reader0 shadow: %s\n", json_object_to_json_string(shadow0));
	json_object_put(root);
}
END_TEST

/* ---- trust groups: one table pool per group ---- */

#define GROUP_SEG_SIZE (4u << 20)
#define GROUP_NOTE "umbra: note: AMD nested paging: the shadow-table pool is guest-writable"

static unsigned int count_occurrences(const char *hay, const char *needle)
{
	unsigned int n = 0;

	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* Two segread VMs attach one 4 MiB read-only segment, in trust group @group
 * ("" for none); their statistics are parsed from --stats-json into *root. */
static void run_two_readers(const char *group, struct json_object **root)
{
	static uint8_t data[GROUP_SEG_SIZE];
	char cfg[256], json[2048], dir[512], expect[96], stats[256], group_key[64] = "";

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 5 + (i >> 10));
	uint64_t sum = write_segment_file("group-seg.bin", data, sizeof(data));
	snprintf(expect, sizeof(expect), "seg=data rounds=2 expect=%#llx", (unsigned long long)sum);
	if (*group)
		snprintf(group_key, sizeof(group_key), ", \"group\": \"%s\"", group);
	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [ { \"name\": \"data\", \"size\": \"4M\", \"gpa\": \"0x2000000000\",\n"
		 "                    \"writable\": false, \"file\": \"group-seg.bin\" } ],\n"
		 "  \"vms\": [ { \"name\": \"reader\", \"count\": 2, \"image\": \"%s/segread.elf\", \"mem\": \"8M\",\n"
		 "              \"cmdline\": \"%s\", \"segments\": [\"data\"]%s } ] }\n",
		 dir, expect, group_key);
	snprintf(cfg, sizeof(cfg), "%s/group.json", tmpdir);
	write_text(cfg, json);
	snprintf(stats, sizeof(stats), "%s/group-stats.json", tmpdir);
	run_umbra((const char *[]){ "run", "--config", cfg, "--stats-json", stats, NULL }, &result);
	assert_status(&result, 0);
	for (int i = 0; i < 2; i++) {
		char line[160];
		snprintf(line, sizeof(line), "[reader%d] segread: data at 0x2000000000, 4 MiB, 2 rounds: sum %#llx\n", i,
			 (unsigned long long)sum);
		assert_contains(result.out, line, &result);
	}
	*root = json_object_from_file(stats);
	ck_assert_msg(*root, "cannot parse %s: %s", stats, json_util_get_last_err());
}

/* The canonical tables the VMs of root made in all. Checks on the way that
 * every pool is empty at the end: a stopped VM's tables are freed. */
static uint64_t canon_created(struct json_object *root)
{
	struct json_object *vms, *pools;
	uint64_t created = 0;

	ck_assert(json_object_object_get_ex(root, "pools", &pools));
	for (size_t i = 0; i < json_object_array_length(pools); i++) {
		struct json_object *pool = json_object_array_get_idx(pools, i);
		ck_assert_msg(json_u64(pool, "in_use") > 0, "pool %zu: no table was ever in use", i);
		ck_assert_msg(json_u64(pool, "in_use_at_end") == 0, "pool %zu: %llu pages still in use after every VM "
			      "stopped", i, (unsigned long long)json_u64(pool, "in_use_at_end"));
	}

	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	for (size_t i = 0; i < json_object_array_length(vms); i++)
		created += json_u64(json_object_array_get_idx(vms, i), "shadow.sharing.canon_created");
	return created;
}

START_TEST(test_vms_without_a_group_share_no_tables_where_the_pool_is_writable)
{
	struct json_object *root, *vms, *pools;
	bool writable = pool_is_guest_writable();

	run_two_readers("", &root);
	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	ck_assert(json_object_object_get_ex(root, "pools", &pools));
	uint64_t pool0 = json_u64(json_object_array_get_idx(vms, 0), "pool");
	uint64_t pool1 = json_u64(json_object_array_get_idx(vms, 1), "pool");
	if (writable) {
		/* Each VM is a group of its own: two pools, and each makes the
		 * segment's canonical tables (2 MiB runs) in its own. */
		ck_assert_uint_eq(json_object_array_length(pools), 2);
		ck_assert_uint_ne(pool0, pool1);
		ck_assert_uint_eq(json_u64(root, "table_pages.pools"), 2);
		ck_assert_uint_eq(canon_created(root), 2 * (GROUP_SEG_SIZE >> 21));
		ck_assert_msg(count_occurrences(result.err, GROUP_NOTE) == 1, "expected the note once, got:\n%s",
			      result.err);
		assert_contains(result.err, "2 VMs without a \"group\" share none (docs/security.md)\n", &result);
	} else {
		/* A read-only pool: VMs without a group share the default one. */
		ck_assert_uint_eq(json_object_array_length(pools), 1);
		ck_assert_uint_eq(pool0, pool1);
		ck_assert_uint_eq(canon_created(root), GROUP_SEG_SIZE >> 21);
		ck_assert_msg(!strstr(result.err, GROUP_NOTE), "expected no note, got:\n%s", result.err);
	}
	json_object_put(root);
}
END_TEST

START_TEST(test_vms_in_one_group_share_canonical_tables)
{
	struct json_object *root, *vms, *pools;

	run_two_readers("readers", &root);
	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	ck_assert(json_object_object_get_ex(root, "pools", &pools));
	ck_assert_uint_eq(json_object_array_length(pools), 1);
	ck_assert_uint_eq(json_u64(json_object_array_get_idx(pools, 0), "vms"), 2);
	/* The segment's canonical tables exist once, reached by both VMs. */
	ck_assert_uint_eq(canon_created(root), GROUP_SEG_SIZE >> 21);
	for (size_t i = 0; i < 2; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i);
		ck_assert_uint_ge(json_u64(vm, "shadow.tables_reached.shared"), GROUP_SEG_SIZE >> 21);
		ck_assert_uint_eq(json_u64(vm, "pool"), 0);
	}
	ck_assert_msg(!strstr(result.err, GROUP_NOTE), "expected no note, every VM has a group; got:\n%s",
		      result.err);
	json_object_put(root);
}
END_TEST

START_TEST(test_group_option_puts_the_command_line_vms_in_one_pool)
{
	char img[512], stats[256];
	struct json_object *root, *pools;

	guest_image("hello", img, sizeof(img));
	snprintf(stats, sizeof(stats), "%s/cli-stats.json", tmpdir);
	run_umbra((const char *[]){ "run", img, "--vms", "3", "--mem", "16M", "--group", "hellos", "--table-quota",
				    "300", "--stats-json", stats, NULL },
		  &result);
	assert_status(&result, 0);
	ck_assert_msg(!strstr(result.err, GROUP_NOTE), "expected no note, every VM has a group; got:\n%s", result.err);
	root = json_object_from_file(stats);
	ck_assert_msg(root, "cannot parse %s: %s", stats, json_util_get_last_err());
	ck_assert(json_object_object_get_ex(root, "pools", &pools));
	ck_assert_uint_eq(json_object_array_length(pools), 1);
	/* Three quotas of 300 pages, no segment. */
	ck_assert_uint_eq(json_u64(json_object_array_get_idx(pools, 0), "pages"), 3 * 300);
	ck_assert_uint_eq(json_u64(json_object_array_get_idx(pools, 0), "in_use_at_end"), 0);
	json_object_put(root);
}
END_TEST

START_TEST(test_ten_vcpus_each_run_their_own_address_space)
{
	char img[512];

	guest_image("spaces", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vcpus", "10", "--mem", "16M", NULL }, &result);
	assert_status(&result, 0);
	assert_contains(result.out, "spaces: 10 vCPUs, each on its own address space, 50 rounds: ok\n", &result);
}
END_TEST

START_TEST(test_run_that_cannot_fit_the_host_is_refused_up_front)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vms", "256", "--mem", "64G", NULL }, &result);
	assert_status(&result, UMBRA_STATUS_USAGE);
	assert_contains(result.err, "umbra: the VMs do not fit this host: they may use ", &result);
	assert_contains(result.err, "guest RAM 16777216 MiB", &result);
	ck_assert_msg(!strstr(result.out, "hello"), "expected no VM to run, got:\n%s", result.out);
}
END_TEST

/* ---- what a guest prints cannot drive the terminal ---- */

START_TEST(test_console_escapes_guest_control_bytes)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", "esc", NULL }, &result);
	assert_status(&result, 0);
	/* hello's line "esc: ESC[31mred ESC[0m a\b TAB c NUL DEL é CR", every
	 * byte that is not printable ASCII, newline or tab as \xHH. */
	assert_contains(result.out, "\nesc: \\x1b[31mred\\x1b[0m a\\\\b\tc \\x00 \\x7f \\xc3\\xa9 \\x0d\n", &result);
	ck_assert_msg(!strchr(result.out, '\x1b') && !strchr(result.out, '\r'),
		      "expected no raw ESC or CR on stdout, got:\n%s", result.out);
}
END_TEST

START_TEST(test_console_raw_passes_guest_bytes_through)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--cmdline", "esc", "--console", "raw", NULL }, &result);
	assert_status(&result, 0);
	/* Up to the NUL, where the captured text ends for strstr. */
	assert_contains(result.out, "\nesc: \x1b[31mred\x1b[0m a\\b\tc ", &result);
}
END_TEST

START_TEST(test_unwritable_stats_json_is_a_warning_and_keeps_the_status)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--stats-json", "/", NULL }, &result);
	assert_status(&result, 0);
	assert_contains(result.err, "umbra: warning: cannot write statistics to '/': Is a directory\n", &result);
	assert_contains(result.out, "hello: all 1 vCPUs checked in", &result);
	run_umbra((const char *[]){ "run", img, "--cmdline", "exit=7", "--stats-json", "/", NULL }, &result);
	assert_status(&result, 7);
	assert_contains(result.err, "umbra: warning: cannot write statistics to '/': Is a directory\n", &result);
}
END_TEST

/* ---- what stays resident ---- */

#define BIGBSS_PAGES (48ul << 8) /* bigbss's 48 MiB array */

/* The pages umbra pins: the boot GDT's, the image's resident segments, and
 * each vCPU's stack but the page of its boot information. */
static unsigned long expected_pinned_pages(const char *img, unsigned long vcpus)
{
	return 1 + image_pages(img, true) + vcpus * (UMBRA_VCPU_STACK_SIZE / 4096 - 1);
}

START_TEST(test_only_the_resident_set_is_pinned)
{
	char img[512];

	guest_image("hello", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--vcpus", "3", "--stats", NULL }, &result);
	assert_status(&result, 0);
	unsigned long pinned = stat_value(result.err, "pinned_pages=");
	printf("resident: hello on 3 vCPUs: %lu pages pinned (%lu resident image pages of %lu)\n", pinned,
	       image_pages(img, true), image_pages(img, true) + image_pages(img, false));
	ck_assert_msg(pinned == expected_pinned_pages(img, 3), "pinned pages: expected %lu, got %lu\n%s",
		      expected_pinned_pages(img, 3), pinned, result.err);
	/* The resident segments hold the entry code and its tables: a page or
	 * two of code, four of IDT, GDTs and TSSs. */
	ck_assert_msg(image_pages(img, true) >= 2 && image_pages(img, true) <= 8,
		      "resident image pages: expected 2 to 8, got %lu", image_pages(img, true));
}
END_TEST

START_TEST(test_large_bss_is_not_faulted_in_at_boot)
{
	char img[512];

	guest_image("bigbss", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--mem", "64M", "--stats", NULL }, &result);
	assert_status(&result, 0);
	assert_contains(result.out, "bigbss: 0 of 48 MiB at 0x", &result);
	unsigned long pinned = stat_value(result.err, "pinned_pages=");
	unsigned long nr_faults = stat_value(result.err, "shadow: faults="), pf = page_fault_calls(result.err);
	unsigned long installs = stat_value(result.err, " installs="), cr3_loads = stat_value(result.err, "cr3_loads=");
	printf("resident: bigbss untouched: %lu pinned pages, %lu shadow faults (%lu page_fault hypercalls), "
	       "%lu installs, %lu CR3 loads\n", pinned, nr_faults, pf, installs, cr3_loads);
	ck_assert_msg(pinned == expected_pinned_pages(img, 1), "pinned pages: expected %lu, got %lu",
		      expected_pinned_pages(img, 1), pinned);
	/* What umbra faulted in by itself is the pins, at each CR3 load (a
	 * read-only page takes two tries); the guest's demand faults cover
	 * the rest: nowhere near the array's 12288 pages. */
	ck_assert_msg(nr_faults - pf <= 2 * pinned * cr3_loads,
		      "umbra's own pre-faults: expected at most %lu (the pins), got %lu\n%s", 2 * pinned * cr3_loads,
		      nr_faults - pf, result.err);
	ck_assert_msg(pf <= demand_fault_bound(img), "page_fault hypercalls: expected at most %lu, got %lu",
		      demand_fault_bound(img), pf);
	ck_assert_msg(installs < BIGBSS_PAGES / 16, "shadow installs: expected fewer than %lu, got %lu\n%s",
		      BIGBSS_PAGES / 16, installs, result.err);
}
END_TEST

START_TEST(test_large_bss_works_when_touched)
{
	char img[512];

	guest_image("bigbss", img, sizeof(img));
	run_umbra((const char *[]){ "run", img, "--mem", "64M", "--cmdline", "touch=48", "--stats",
				    "--huge-leaves", "off", NULL },
		  &result);
	assert_status(&result, 0);
	assert_contains(result.out, "bigbss: 48 of 48 MiB at 0x", &result);
	unsigned long pf = page_fault_calls(result.err);
	printf("resident: bigbss touched: %lu page_fault hypercalls\n", pf);
	/* Every page of the array is faulted in on demand, by the guest: one
	 * fault per fault-around window (umbra did not map the bss at load;
	 * 4 KiB leaves only, so that the count is per window). */
	unsigned long windows = BIGBSS_PAGES / DEFAULT_FAULT_AROUND;
	ck_assert_msg(pf >= windows && pf <= windows + 1 + demand_fault_bound(img),
		      "page_fault hypercalls: expected %lu to %lu, got %lu\n%s", windows,
		      windows + 1 + demand_fault_bound(img), pf, result.err);
	ck_assert_msg(stat_value(result.err, "faulted_around=") >= BIGBSS_PAGES - pf,
		      "pages faulted around: expected at least %lu, got %lu", BIGBSS_PAGES - pf,
		      stat_value(result.err, "faulted_around="));
}
END_TEST

Suite *kvm_suite(void)
{
	Suite *s = suite_create("kvm");
	TCase *tc = tcase_create("guests");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_hello_prints_and_exits_zero);
	tcase_add_loop_test(tc, test_exit_code_is_umbra_status, 0, sizeof(exit_codes) / sizeof(exit_codes[0]));
	tcase_add_test(tc, test_every_vcpu_runs_with_its_own_boot_info);
	tcase_add_test(tc, test_stats_count_exits_of_hello);
	tcase_add_test(tc, test_uart_port_prints_bytes);
	tcase_add_loop_test(tc, test_fault_is_reported_and_stops_vm, 0, sizeof(faults) / sizeof(faults[0]));
	tcase_add_test(tc, test_page_fault_reports_error_code_and_cr2);
	tcase_add_test(tc, test_triple_fault_dumps_registers);
	tcase_add_loop_test(tc, test_misbehaving_guest_is_stopped, 0,
			    sizeof(misbehaviours) / sizeof(misbehaviours[0]));
	tcase_add_test(tc, test_guest_bypassing_shadow_paging_cannot_write_tables_unseen);
	tcase_add_loop_test(tc, test_memtouch_costs_one_exit_per_shadow_fault, 0,
			    sizeof(memtouch_windows) / sizeof(memtouch_windows[0]));
	tcase_add_test(tc, test_memtouch_maps_2m_pages_with_one_exit_each);
	tcase_add_test(tc, test_page_table_churn_is_seen_exactly);
	tcase_add_test(tc, test_remap_is_shot_down_on_the_other_vcpu);
	suite_add_tcase(s, tc);

	TCase *many = tcase_create("many_vms");
	tcase_set_timeout(many, 300);
	tcase_add_checked_fixture(many, tmpdir_setup, tmpdir_teardown);
	tcase_add_test(many, test_many_vms_each_prefix_their_lines_and_status_is_first_failure);
	tcase_add_test(many, test_memtouch_verifies_ram_on_every_vcpu);
	tcase_add_test(many, test_config_runs_vms_sharing_segments_with_preloaded_content);
	tcase_add_test(many, test_eight_vms_share_segment_tables_and_fault_back_evicted_pages);
	tcase_add_test(many, test_dump_tables_pictures_eight_vms_on_one_canonical_pair);
	tcase_add_loop_test(many, test_notifier_mode_chooses_how_evictions_reach_the_vms, 0,
			    (int)(sizeof(notifier_mode_cases) / sizeof(notifier_mode_cases[0])));
	tcase_add_test(many, test_misbehaving_vms_are_stopped_while_the_others_finish);
	tcase_add_test(many, test_write_to_read_only_segment_stops_only_that_vm);
	tcase_add_test(many, test_bad_config_is_named);
	suite_add_tcase(s, many);

	TCase *trace = tcase_create("trace");
	tcase_set_timeout(trace, 400);
	tcase_add_checked_fixture(trace, tmpdir_setup, tmpdir_teardown);
	tcase_add_loop_test(trace, test_trace_follows_each_eviction_to_every_vm_and_vcpu, 0,
			    (int)(sizeof(trace_modes) / sizeof(trace_modes[0])));
	tcase_add_test(trace, test_trace_events_records_only_the_kinds_named);
	tcase_add_test(trace, test_trace_buffer_bounds_what_a_guest_can_record);
	suite_add_tcase(s, trace);

	TCase *bad = tcase_create("bad_input");
	tcase_set_timeout(bad, 120);
	tcase_add_loop_test(bad, test_malformed_image_is_rejected, 0, sizeof(bad_images) / sizeof(bad_images[0]));
	tcase_add_test(bad, test_missing_image_is_named);
	tcase_add_loop_test(bad, test_bad_command_line_is_named, 0,
			    sizeof(bad_command_lines) / sizeof(bad_command_lines[0]));
	tcase_add_test(bad, test_help_documents_every_option);
	suite_add_tcase(s, bad);

	TCase *output = tcase_create("hostile_output");
	tcase_set_timeout(output, 120);
	tcase_add_test(output, test_console_escapes_guest_control_bytes);
	tcase_add_test(output, test_console_raw_passes_guest_bytes_through);
	tcase_add_test(output, test_unwritable_stats_json_is_a_warning_and_keeps_the_status);
	suite_add_tcase(s, output);

	TCase *groups = tcase_create("trust_groups");
	tcase_set_timeout(groups, 300);
	tcase_add_checked_fixture(groups, tmpdir_setup, tmpdir_teardown);
	tcase_add_test(groups, test_vms_without_a_group_share_no_tables_where_the_pool_is_writable);
	tcase_add_test(groups, test_vms_in_one_group_share_canonical_tables);
	tcase_add_test(groups, test_group_option_puts_the_command_line_vms_in_one_pool);
	tcase_add_test(groups, test_ten_vcpus_each_run_their_own_address_space);
	tcase_add_test(groups, test_run_that_cannot_fit_the_host_is_refused_up_front);
	suite_add_tcase(s, groups);

	TCase *resident = tcase_create("resident");
	tcase_set_timeout(resident, 120);
	tcase_add_test(resident, test_only_the_resident_set_is_pinned);
	tcase_add_test(resident, test_large_bss_is_not_faulted_in_at_boot);
	tcase_add_test(resident, test_large_bss_works_when_touched);
	suite_add_tcase(s, resident);
	return s;
}
