/*
 * KVM suite kvm_pager: guests running under a host memory budget smaller
 * than their memory (docs/pager.md; umbra's --mem-limit, --swap,
 * --reclaim-policy, --swap-inject and the "pager" block of --stats-json).
 * One test per case, so that each runs alone:
 *
 *   CK_RUN_CASE=four_vms scripts/kvm-test build kvm_pager
 *
 *   four_vms        four VMs whose RAM is twice the limit write and verify all
 *                   of it; umbra's memfds, sampled from outside, stay within
 *                   the limit plus a stated slack
 *   shared_segment  eight VMs checksum a read-only segment larger than the
 *                   limit; every sum is the host's
 *   hot_cold        a hot set survives CLOCK aging while round robin evicts it
 *   write_error     an injected write error loses nothing
 *   read_error      an injected read error stops only the VM that needed the page
 *   corrupt         a corrupted slot likewise, as a checksum mismatch
 *   enospc          a full swap file system loses nothing
 *   own_cr3         a guest on its own CR3 (a plain mov) reads evicted data back
 *
 * Sizes are small: the sandbox emulates the CPU, and every swapped page
 * costs a shadow fault or a userfault there.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kvm_run.h"
#include "tests.h"
#include "umbra/abi.h"

#define MIB (1ull << 20)
#define SEG_GPA "0x2000000000"

static struct run_result result;

/* ---- running umbra and reading its statistics ---- */

/* Runs umbra with @args, then "--stats-json FILE" (and a sampler if
 * @sample), and returns the parsed statistics (json_object_put them), or
 * fails the test if umbra wrote none. */
static struct json_object *run_pager(const char *const args[], int timeout_s, run_sampler sample, void *arg)
{
	struct json_object *root = run_umbra_stats(args, timeout_s, sample, arg, &result);

	ck_assert_msg(json_object_object_get_ex(root, "pager", NULL),
		      "the statistics have no \"pager\" block: the pager is off\nstderr:\n%s", result.err);
	return root;
}

/* Writes @json to @name in the test's directory; its path in @cfg. */
static void write_config(const char *name, const char *json, char *cfg, size_t size)
{
	snprintf(cfg, size, "%s/%s", tmpdir, name);
	write_text(cfg, json);
}

/* The element of array @path of @root whose "name" is @name. */
static struct json_object *named(struct json_object *root, const char *path, const char *name)
{
	struct json_object *o = root, *next, *key;
	char buf[64], *save = NULL;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); k; k = strtok_r(NULL, ".", &save)) {
		ck_assert_msg(json_object_object_get_ex(o, k, &next), "statistics: no \"%s\" (in %s)", k, path);
		o = next;
	}
	for (size_t i = 0; i < json_object_array_length(o); i++) {
		struct json_object *e = json_object_array_get_idx(o, i);

		if (json_object_object_get_ex(e, "name", &key) && strcmp(json_object_get_string(key), name) == 0)
			return e;
	}
	ck_abort_msg("statistics: no \"%s\" in %s\n%s", name, path, json_object_to_json_string(o));
	return NULL;
}

static int vm_exit_status(struct json_object *root, const char *vm)
{
	return (int)json_u64(named(root, "vms", vm), "exit_status");
}

/* How many times @needle occurs in @hay. */
static unsigned int count_of(const char *hay, const char *needle)
{
	unsigned int n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* The evictions of the run: swap-outs with and without I/O. */
static uint64_t evictions(struct json_object *root)
{
	return json_u64(root, "pager.swapouts_io") + json_u64(root, "pager.swapouts_cached");
}

static void assert_real_swapping(struct json_object *root)
{
	ck_assert_msg(json_u64(root, "pager.swapouts_io") > 0 && json_u64(root, "pager.swapins") > 0,
		      "no real swapping: swapouts_io %llu, swapins %llu\nstderr:\n%s",
		      (unsigned long long)json_u64(root, "pager.swapouts_io"),
		      (unsigned long long)json_u64(root, "pager.swapins"), result.err);
}

/* Every VM in vm0 .. vm(n-1) printed "memtouch: ... : ok" and exited 0. */
static void assert_memtouch_ok(struct json_object *root, unsigned int n, const char *summary)
{
	char line[128];

	for (unsigned int i = 0; i < n; i++) {
		snprintf(line, sizeof(line), "[vm%u] memtouch: %s: ok\n", i, summary);
		assert_contains(result.out, line, &result);
		snprintf(line, sizeof(line), "vm%u", i);
		ck_assert_msg(vm_exit_status(root, line) == 0, "vm%u: exit status %d\nstderr:\n%s", i,
			      vm_exit_status(root, line), result.err);
	}
}

/*
 * What the memfds may hold above the limit at a sampled moment. The pager
 * counts a page present from its swap-in and reclaims to the low watermark
 * in the background, and directly when a fault finds the limit reached; the
 * memfds may briefly hold more: pages of an eviction batch still being
 * written (up to 256 pages, 1 MiB, per reclaiming thread: the background
 * reclaimer and each faulting vCPU, four here) until their holes are
 * punched, and swap-ins installed by the userfault handler before the
 * reclaim they cause. 1/8 of the limit plus 4 MiB covers both.
 */
static uint64_t resident_slack(uint64_t limit)
{
	return limit / 8 + 4 * MIB;
}

/* ---- (a) four VMs with twice the limit in RAM ---- */

#define FOUR_VMS 4
#define FOUR_VMS_MEM "8M"
#define FOUR_VMS_LIMIT (16 * MIB)
#define FOUR_VMS_ROUNDS 3
#define FOUR_VMS_CMDLINE "rounds=3"

START_TEST(test_four_vms_twice_the_limit_stay_within_it)
{
	struct memfd_samples samples = { 0 };
	char image[512], limit[32], line[64];

	guest_image("memtouch", image, sizeof(image));
	snprintf(limit, sizeof(limit), "%llu", (unsigned long long)FOUR_VMS_LIMIT);
	struct json_object *root = run_pager(
		(const char *[]){ "run", image, "--vms", "4", "--mem", FOUR_VMS_MEM, "--cmdline", FOUR_VMS_CMDLINE,
				  "--mem-limit", limit, NULL },
		120, sample_memfds, &samples);
	uint64_t slack = resident_slack(FOUR_VMS_LIMIT), peak = json_u64(root, "pager.peak_present_bytes");

	printf("four_vms: memfds sampled %llu times (longest gap %.1f ms): max %.1f MiB resident, limit %llu MiB + "
	       "slack %llu MiB; peak present %.1f MiB; swapouts_io %llu, swapins %llu, refaults %llu\n",
	       (unsigned long long)samples.count, samples.max_gap_ms, (double)samples.max / MIB,
	       (unsigned long long)(FOUR_VMS_LIMIT / MIB), (unsigned long long)(slack / MIB), (double)peak / MIB,
	       (unsigned long long)json_u64(root, "pager.swapouts_io"), (unsigned long long)json_u64(root, "pager.swapins"),
	       (unsigned long long)json_u64(root, "pager.refaults"));
	assert_status(&result, 0);
	for (unsigned int i = 0; i < FOUR_VMS; i++) {
		snprintf(line, sizeof(line), "[vm%u] memtouch: ", i);
		assert_contains(result.out, line, &result);
	}
	snprintf(line, sizeof(line), " MiB x %d rounds on 1 vCPUs: ok\n", FOUR_VMS_ROUNDS);
	ck_assert_msg(count_of(result.out, line) == FOUR_VMS, "expected %d VMs to verify their RAM\nstdout:\n%s",
		      FOUR_VMS, result.out);
	ck_assert_uint_eq(json_u64(root, "pager.limit_bytes"), FOUR_VMS_LIMIT);
	assert_real_swapping(root);
	ck_assert_msg(samples.count >= 20, "only %llu samples of umbra's memfds", (unsigned long long)samples.count);
	ck_assert_msg(samples.max <= FOUR_VMS_LIMIT + slack,
		      "umbra's memfds held %llu bytes at one sample: over the limit %llu + slack %llu",
		      (unsigned long long)samples.max, (unsigned long long)FOUR_VMS_LIMIT, (unsigned long long)slack);
	ck_assert_msg(peak <= FOUR_VMS_LIMIT + slack && json_u64(root, "pager.present_bytes") <= FOUR_VMS_LIMIT + slack,
		      "present %llu, peak %llu bytes: over the limit %llu + slack %llu",
		      (unsigned long long)json_u64(root, "pager.present_bytes"), (unsigned long long)peak,
		      (unsigned long long)FOUR_VMS_LIMIT, (unsigned long long)slack);
	json_object_put(root);
}
END_TEST

/* ---- (b) eight VMs read a segment larger than the limit ---- */

#define SEGMENT_READERS 8
#define SEGMENT_SIZE (16 * MIB)
#define SEGMENT_LIMIT "8M"

START_TEST(test_eight_vms_read_a_segment_larger_than_the_limit)
{
	struct memfd_samples samples = { 0 };
	char json[1024], cfg[256], dir[512], key[64];
	uint8_t *data = malloc(SEGMENT_SIZE);

	ck_assert_ptr_nonnull(data);
	fill_pattern(data, SEGMENT_SIZE, 0x452821e638d01377ull);
	uint64_t sum = write_segment_file("data.bin", data, SEGMENT_SIZE);
	free(data);
	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [ { \"name\": \"data\", \"size\": \"%lluM\", \"gpa\": \"" SEG_GPA "\", "
		 "\"writable\": false, \"file\": \"data.bin\" } ],\n"
		 "  \"vms\": [ { \"name\": \"reader\", \"count\": %d, \"image\": \"%s/segread.elf\", \"mem\": \"4M\",\n"
		 "               \"cmdline\": \"seg=data rounds=1\", \"segments\": [\"data\"] } ] }\n",
		 (unsigned long long)(SEGMENT_SIZE / MIB), SEGMENT_READERS, dir);
	write_config("segment.json", json, cfg, sizeof(cfg));
	struct json_object *root =
		run_pager((const char *[]){ "run", "--config", cfg, "--mem-limit", SEGMENT_LIMIT, NULL }, 120,
			  sample_memfds, &samples);
	struct json_object *seg = named(root, "pager.objects", "segment data");

	printf("shared_segment: memfds sampled %llu times: max %.1f MiB resident (limit " SEGMENT_LIMIT
	       "), peak present %.1f MiB, over_limit %llu; segment: swapins %llu, swapouts_io %llu, swapouts_cached %llu\n",
	       (unsigned long long)samples.count, (double)samples.max / MIB,
	       (double)json_u64(root, "pager.peak_present_bytes") / MIB, (unsigned long long)json_u64(root, "pager.over_limit"),
	       (unsigned long long)json_u64(seg, "swapins"), (unsigned long long)json_u64(seg, "swapouts_io"),
	       (unsigned long long)json_u64(seg, "swapouts_cached"));
	for (int i = 0; i < SEGMENT_READERS; i++) {
		unsigned long long got = 0;
		const char *p;

		snprintf(key, sizeof(key), "[reader%d] segread: data at " SEG_GPA ", ", i);
		p = strstr(result.out, key);
		ck_assert_msg(p && (p = strstr(p, ": sum ")) && sscanf(p + 6, "%llx", &got) == 1,
			      "reader%d printed no sum\nstdout:\n%s\nstderr:\n%s", i, result.out, result.err);
		ck_assert_msg(got == sum, "reader%d's sum of the segment: expected %#llx (the host's), got %#llx", i,
			      (unsigned long long)sum, got);
	}
	assert_status(&result, 0);
	ck_assert_msg(json_u64(seg, "swapins") > 0, "the segment was never swapped in\nstderr:\n%s", result.err);
	json_object_put(root);
}
END_TEST

/* ---- (c) the hot set survives aging ---- */

/*
 * hotcold's hot set is a 2 MiB writable segment, swept after every 8 cold
 * pages, and its cold set 12 MiB of RAM, each page touched once per round,
 * under a limit of 6 MiB. The hot set is an object of its own, so its
 * refaults (swap-ins of pages evicted within the last limit's worth of
 * evictions) are counted apart from the cold set's. A policy that ages by
 * access keeps the hot set resident: it is young at every pass of the
 * hand, so after warm-up its refaults are a small fraction of the
 * evictions, which are then cold pages. Round robin evicts hot pages as
 * often as cold ones, and each comes back at the next sweep, within the
 * refault window. (A cold page is re-read one round after it was touched:
 * the cold set less what of it stays resident, some 9 MiB of evictions after
 * its own, outside the window of 6 MiB.) The warm-up, where every page is
 * young and the hand clears and takes them within one pick, costs CLOCK
 * about one eviction of the hot set; eight rounds make it a small part.
 */
#define HOT_COLD_MEM "16M"
#define HOT_COLD_LIMIT "6M"
#define HOT_COLD_CMDLINE "hot=hot cold=12 rounds=8 every=8"

struct policy_run {
	uint64_t evictions, refaults, hot_refaults, hot_swapins;
};

static void run_hot_cold(const char *policy, struct policy_run *p)
{
	char json[1024], cfg[256], dir[512], name[64];

	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [ { \"name\": \"hot\", \"size\": \"2M\", \"gpa\": \"" SEG_GPA "\" } ],\n"
		 "  \"vms\": [ { \"name\": \"hotcold\", \"image\": \"%s/hotcold.elf\", \"mem\": \"" HOT_COLD_MEM "\",\n"
		 "               \"cmdline\": \"" HOT_COLD_CMDLINE "\", \"segments\": [\"hot\"] } ] }\n",
		 dir);
	snprintf(name, sizeof(name), "hotcold-%s.json", policy);
	write_config(name, json, cfg, sizeof(cfg));
	struct json_object *root = run_pager((const char *[]){ "run", "--config", cfg, "--mem-limit", HOT_COLD_LIMIT,
							       "--reclaim-policy", policy, NULL },
					     120, NULL, NULL);
	struct json_object *hot = named(root, "pager.objects", "segment hot");

	assert_status(&result, 0);
	assert_contains(result.out, "hotcold: hot 2048 KiB x ", &result);
	assert_contains(result.out, " rounds: ok\n", &result);
	assert_real_swapping(root);
	p->evictions = evictions(root);
	p->refaults = json_u64(root, "pager.refaults");
	p->hot_refaults = json_u64(hot, "refaults");
	p->hot_swapins = json_u64(hot, "swapins");
	printf("hot_cold: %s: %llu evictions, %llu refaults (%.1f%%), hot set: %llu refaults (%.1f%% of evictions), "
	       "%llu swap-ins\n",
	       policy, (unsigned long long)p->evictions, (unsigned long long)p->refaults,
	       100.0 * (double)p->refaults / (double)(p->evictions ? p->evictions : 1),
	       (unsigned long long)p->hot_refaults,
	       100.0 * (double)p->hot_refaults / (double)(p->evictions ? p->evictions : 1),
	       (unsigned long long)p->hot_swapins);
	json_object_put(root);
}

START_TEST(test_clock_keeps_the_hot_set_that_round_robin_evicts)
{
	struct policy_run clock, rr;

	run_hot_cold("clock", &clock);
	run_hot_cold("round-robin", &rr);
	ck_assert_msg(rr.hot_refaults > 0,
		      "round robin never refaulted the hot set (%llu evictions): the load does not tell the policies apart",
		      (unsigned long long)rr.evictions);
	ck_assert_msg(clock.hot_refaults * 20 <= clock.evictions,
		      "clock: the hot set's refaults are %llu of %llu evictions, more than 5%%",
		      (unsigned long long)clock.hot_refaults, (unsigned long long)clock.evictions);
	ck_assert_msg(clock.hot_refaults * 2 <= rr.hot_refaults,
		      "the hot set's refaults: clock %llu, round robin %llu: clock should have at most half",
		      (unsigned long long)clock.hot_refaults, (unsigned long long)rr.hot_refaults);
}
END_TEST

/* ---- (d) injected faults ---- */

/* Two VMs that each write and verify all their RAM, twice the limit
 * between them: both are swapped out and in. */
#define INJECT_LIMIT "8M"
#define INJECT_SUMMARY "6 MiB x 2 rounds on 1 vCPUs"

static struct json_object *run_two_touchers(const char *const extra[])
{
	char image[512];
	const char *args[24] = { "run", image, "--vms", "2", "--mem", "8M", "--cmdline", "mib=6 rounds=2",
				 "--mem-limit", INJECT_LIMIT };
	int n = 10;

	guest_image("memtouch", image, sizeof(image));
	for (; extra && *extra && n < 23; extra++)
		args[n++] = *extra;
	args[n] = NULL;
	return run_pager(args, 60, NULL, NULL);
}

START_TEST(test_write_error_loses_nothing)
{
	struct json_object *root = run_two_touchers((const char *[]){ "--swap-inject", "write-error:1", NULL });

	assert_status(&result, 0);
	assert_memtouch_ok(root, 2, INJECT_SUMMARY);
	ck_assert_msg(json_u64(root, "pager.write_errors") >= 1, "pager.write_errors is 0\nstderr:\n%s", result.err);
	ck_assert_msg(count_of(result.err, "umbra: warning: swap: cannot write pages out: Input/output error") == 1,
		      "expected the write warning once\nstderr:\n%s", result.err);
	assert_real_swapping(root);
	json_object_put(root);
}
END_TEST

/* The one VM that @root says umbra stopped with a message "could not be
 * read back from swap: @cause" naming it; the other exited 0. */
static void assert_only_the_reader_stopped(struct json_object *root, const char *cause)
{
	char tail[128], name[32], vm[32];
	const char *p;

	snprintf(tail, sizeof(tail), " could not be read back from swap: %s\n", cause);
	ck_assert_msg(count_of(result.err, tail) == 1, "expected one \"%s\" message\nstderr:\n%s", tail, result.err);
	p = strstr(result.err, tail);
	while (p > result.err && p[-1] != '\n')
		p--;
	ck_assert_msg(sscanf(p, "umbra: %31[^:]: guest-physical page 0x", name) == 1, "the message names no VM: %.*s",
		      (int)strcspn(p, "\n"), p);
	ck_assert_msg(strstr(p, ": guest-physical page 0x") && strstr(p, ": guest-physical page 0x") < strstr(p, tail),
		      "the message names no guest-physical page: %.*s", (int)strcspn(p, "\n"), p);
	printf("%s: %.*s\n", tcase_name(), (int)strcspn(p, "\n"), p);
	ck_assert_msg(!strcmp(name, "vm0") || !strcmp(name, "vm1"), "the message names VM '%s'", name);
	snprintf(vm, sizeof(vm), "vm%d", !strcmp(name, "vm0"));
	ck_assert_int_eq(vm_exit_status(root, name), UMBRA_STATUS_GUEST_ERROR);
	ck_assert_msg(vm_exit_status(root, vm) == 0, "the other VM, %s, exited with %d\nstderr:\n%s", vm,
		      vm_exit_status(root, vm), result.err);
	snprintf(tail, sizeof(tail), "[%s] memtouch: " INJECT_SUMMARY ": ok\n", vm);
	assert_contains(result.out, tail, &result);
	assert_status(&result, UMBRA_STATUS_GUEST_ERROR);
}

START_TEST(test_read_error_stops_only_the_vm_that_needed_the_page)
{
	struct json_object *root = run_two_touchers((const char *[]){ "--swap-inject", "read-error:1", NULL });

	assert_only_the_reader_stopped(root, "Input/output error");
	ck_assert_msg(json_u64(root, "pager.read_errors") >= 1, "pager.read_errors is 0");
	json_object_put(root);
}
END_TEST

/* The 100th page written is corrupted: a page of the touchers' data (the
 * few pages they never touch again, their start-up code, are far fewer),
 * which their verification reads back. */
START_TEST(test_corrupt_slot_stops_only_the_vm_that_needed_the_page)
{
	struct json_object *root = run_two_touchers((const char *[]){ "--swap-inject", "corrupt:100", NULL });

	ck_assert_msg(json_u64(root, "pager.swap.checksum_failures") >= 1,
		      "no checksum failure: the corrupted page was never read back (exit status %d)\nstderr:\n%s",
		      result.status, result.err);
	assert_only_the_reader_stopped(root, "checksum mismatch");
	json_object_put(root);
}
END_TEST

/* A swap file on a 1 MiB tmpfs (in the test's directory, unmounted by the
 * fixture): it fills after 256 pages. Where the mount is refused (not
 * root), a swap of 256 slots gives -ENOSPC the same way, from the slot
 * allocator. */
static char small_fs[128];

static void small_fs_teardown(void)
{
	umount2(small_fs, MNT_DETACH);
	tmpdir_teardown();
}

START_TEST(test_full_swap_loses_nothing)
{
	char swap[160];
	int mounted;

	snprintf(small_fs, sizeof(small_fs), "%s/small", tmpdir);
	ck_assert_int_eq(mkdir(small_fs, 0700), 0);
	mounted = mount("tmpfs", small_fs, "tmpfs", 0, "size=1m") == 0;
	if (!mounted)
		printf("enospc: cannot mount a tmpfs (%s): using --swap-size 1M instead\n", strerror(errno));
	snprintf(swap, sizeof(swap), "%s/swap", small_fs);
	struct json_object *root = run_two_touchers(
		mounted ? (const char *[]){ "--swap", swap, NULL } : (const char *[]){ "--swap-size", "1M", NULL });

	assert_status(&result, 0);
	assert_memtouch_ok(root, 2, INJECT_SUMMARY);
	ck_assert_msg(json_u64(root, "pager.write_errors") >= 1, "pager.write_errors is 0\nstderr:\n%s", result.err);
	ck_assert_msg(count_of(result.err, "umbra: warning: swap: cannot write pages out: No space left on device") == 1,
		      "expected the ENOSPC warning once\nstderr:\n%s", result.err);
	printf("enospc: write_errors %llu, swapouts_io %llu, peak present %.1f MiB (limit " INJECT_LIMIT ")\n",
	       (unsigned long long)json_u64(root, "pager.write_errors"),
	       (unsigned long long)json_u64(root, "pager.swapouts_io"),
	       (double)json_u64(root, "pager.peak_present_bytes") / MIB);
	json_object_put(root);
}
END_TEST

/* ---- (e) a guest on its own CR3 ---- */

/*
 * owncr3 bypasses umbra's shadow: its accesses reach the memfd mapping
 * through KVM's nested paging alone, so a swapped page comes back through
 * the host's fault on the mapping, taken by the vCPU's thread inside
 * KVM_RUN, where no signal gets it out until the page is there. An
 * eviction must never wait for that vCPU (a shootdown) while it holds a
 * page that the vCPU waits for: that would hang here.
 */

START_TEST(test_guest_on_its_own_cr3_reads_evicted_data_back)
{
	char image[512];

	guest_image("owncr3", image, sizeof(image));
	struct json_object *root = run_pager((const char *[]){ "run", image, "--mem", "16M", "--cmdline",
							       "mib=12 rounds=1", "--mem-limit", "6M", NULL },
					     60, NULL, NULL);

	assert_status(&result, 0);
	assert_contains(result.out, "owncr3: 12 MiB written through the shadow, read back and rewritten 1 times under CR3 ",
			&result);
	assert_real_swapping(root);
	printf("own_cr3: swapins %llu, swapouts_io %llu\n", (unsigned long long)json_u64(root, "pager.swapins"),
	       (unsigned long long)json_u64(root, "pager.swapouts_io"));
	json_object_put(root);
}
END_TEST

Suite *kvm_pager_suite(void)
{
	Suite *s = suite_create("kvm_pager");

	kvm_add_case(s, "four_vms", test_four_vms_twice_the_limit_stay_within_it, 150, tmpdir_teardown);
	kvm_add_case(s, "shared_segment", test_eight_vms_read_a_segment_larger_than_the_limit, 150, tmpdir_teardown);
	kvm_add_case(s, "hot_cold", test_clock_keeps_the_hot_set_that_round_robin_evicts, 270, tmpdir_teardown);
	kvm_add_case(s, "write_error", test_write_error_loses_nothing, 90, tmpdir_teardown);
	kvm_add_case(s, "read_error", test_read_error_stops_only_the_vm_that_needed_the_page, 90, tmpdir_teardown);
	kvm_add_case(s, "corrupt", test_corrupt_slot_stops_only_the_vm_that_needed_the_page, 90, tmpdir_teardown);
	kvm_add_case(s, "enospc", test_full_swap_loses_nothing, 90, small_fs_teardown);
	kvm_add_case(s, "own_cr3", test_guest_on_its_own_cr3_reads_evicted_data_back, 90, tmpdir_teardown);
	return s;
}
