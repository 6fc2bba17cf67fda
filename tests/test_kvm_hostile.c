/*
 * Hostile guests on real KVM (docs/fuzzing.md): the attacks of a guest that
 * loads a CR3 of its own with a plain mov and so writes the shadow table
 * pool where its memslot is writable (AMD nested paging), each a test that
 * fails if the attack succeeds, and the seeded fuzzer next to well-behaved
 * VMs of another trust group.
 *
 * The attacks run their VMs with no group: where the pool is writable,
 * such VMs share no pool, so an attacker reaches only its own tables.
 *
 * The fuzzer runs twice over: keeping to the ABI (no pool writes, no ending
 * operations: it must run to its end, case fuzz_abi), and hostile (case
 * fuzz), which reads its seeds from the environment (scripts/fuzz sets
 * them): UMBRA_FUZZ_SEED (the first, default 1), UMBRA_FUZZ_SEEDS (how many,
 * default 1), UMBRA_FUZZ_SECONDS (run seeds until that many seconds have
 * gone by instead: a soak), UMBRA_FUZZ_OPS (operations per fuzzer vCPU,
 * default 1500), UMBRA_FUZZ_END (one ending operation in that many,
 * default 20000; 0 for none), UMBRA_FUZZ_TIMEOUT (seconds one run may take,
 * default 60).
 */
#include <check.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvm_run.h"
#include "tests.h"
#include "umbra/abi.h"

static struct run_result result;

/* The line of @text that contains @needle, without its newline, in @line. */
static const char *line_with(const char *text, const char *needle, char *line, size_t size)
{
	const char *p = strstr(text, needle);

	if (!p) {
		snprintf(line, size, "(no line with \"%s\")", needle);
		return line;
	}
	while (p > text && p[-1] != '\n')
		p--;
	size_t n = strcspn(p, "\n");
	snprintf(line, size, "%.*s", (int)(n < size ? n : size - 1), p);
	return line;
}

/* VM @name's exit status as umbra printed it ("umbra: NAME: exit status N",
 * on its --stats line or alone), or -1 if umbra printed none. */
static int vm_status(const char *err, const char *name)
{
	char key[64];
	const char *p;
	int status = -1;

	snprintf(key, sizeof(key), "umbra: %s: exit status ", name);
	for (p = strstr(err, key); p; p = strstr(p + 1, key)) {
		int s = atoi(p + strlen(key));

		if (status <= 0)
			status = s;
	}
	return status;
}

/* The attacker's outcome is umbra's status: 0, or a guest error where the
 * pool is read-only (Intel) and its first write to it stopped it. The victim
 * finished with 0. */
static void assert_only_the_attacker_may_fail(const struct run_result *r)
{
	ck_assert_msg(vm_status(r->err, "victim") == 0, "the victim's exit status: expected 0, got %d\n%s",
		      vm_status(r->err, "victim"), r->err);
	ck_assert_msg(r->status == 0 || (r->status == UMBRA_STATUS_GUEST_ERROR &&
					 strstr(r->err, "umbra: attacker: exit status 120")),
		      "exit status: expected 0, or %d for the attacker, got %d\nstdout:\n%s\nstderr:\n%s",
		      UMBRA_STATUS_GUEST_ERROR, r->status, r->out, r->err);
}

/* umbra ended by itself (no signal, no time limit), with the statistics of
 * every VM printed to the end. */
static void assert_umbra_survived(const struct run_result *r, const char *what)
{
	ck_assert_msg(!r->timed_out, "%s: umbra did not exit within its time limit\nstdout:\n%s\nstderr:\n%s", what,
		      r->out, r->err);
	ck_assert_msg(r->status < 128, "%s: umbra was killed by signal %d\nstdout:\n%s\nstderr:\n%s", what,
		      r->status - 128, r->out, r->err);
	ck_assert_msg(strstr(r->err, "umbra: table memory:") != NULL,
		      "%s: umbra's statistics end early (no \"umbra: table memory:\")\nstderr:\n%s", what, r->err);
}

static void run_config(const char *name, const char *json, const char *const extra[], int timeout_s)
{
	char cfg[256];
	const char *args[24] = { "run", "--config", cfg, "--stats" };
	int n = 4;

	snprintf(cfg, sizeof(cfg), "%s/%s", tmpdir, name);
	write_text(cfg, json);
	for (; extra && *extra && n < 23; extra++)
		args[n++] = *extra;
	args[n] = NULL;
	run_umbra_timeout(args, timeout_s, &result);
}

/* ---- the three attacks ---- */

/* A guest writes garbage into every shadow table it reaches (non-leaf
 * entries outside the pool, at other tables, at their own), then makes
 * umbra walk them; a well-behaved VM keeps faulting meanwhile. umbra must
 * neither crash nor hang, and the other VM must finish with its data. */
START_TEST(test_pool_scribbler_cannot_crash_umbra_or_reach_another_vm)
{
	char json[2048], dir[512];

	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"vms\": [\n"
		 "    { \"name\": \"good\", \"image\": \"%s/memtouch.elf\", \"mem\": \"32M\", \"vcpus\": 2,\n"
		 "      \"cmdline\": \"mib=16 rounds=6\" },\n"
		 "    { \"name\": \"scribbler\", \"image\": \"%s/attack.elf\", \"mem\": \"16M\",\n"
		 "      \"cmdline\": \"mode=scribble rounds=3\" } ] }\n",
		 dir, dir);
	run_config("scribble.json", json, NULL, 120);
	assert_umbra_survived(&result, "pool scribbler");
	assert_contains(result.out, "[good/0] memtouch: 16 MiB x 6 rounds on 2 vCPUs: ok", &result);
	ck_assert_msg(vm_status(result.err, "good") == 0, "the good VM's exit status: expected 0, got %d\n%s",
		      vm_status(result.err, "good"), result.err);
	/* The scribbler broke at most its own translations: it finished, or
	 * umbra stopped it with a guest error. */
	ck_assert_msg(result.status == 0 || result.status == UMBRA_STATUS_GUEST_ERROR,
		      "exit status: expected 0 or %d (the scribbler's outcome), got %d\nstderr:\n%s",
		      UMBRA_STATUS_GUEST_ERROR, result.status, result.err);
	if (result.status != 0)
		assert_contains(result.err, "umbra: scribbler: exit status 120", &result);
}
END_TEST

#define SEG_DATA_GPA 0x2000000000ull
#define SEG_DATA_SIZE (4u << 20)

/* The attacker does not attach the victim's read-only segment; it looks for
 * the victim's leaves of it in the pool and points each at the next page.
 * The victim must read what the segment holds. */
START_TEST(test_attacker_cannot_rewrite_another_vms_segment_leaves)
{
	char json[2048], dir[512], expect[160], line[256];
	static uint8_t data[SEG_DATA_SIZE];

	fill_pattern(data, sizeof(data), 0x243f6a8885a308d3ull);
	uint64_t sum = write_segment_file("data.bin", data, sizeof(data));
	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [\n"
		 "    { \"name\": \"data\", \"size\": \"4M\", \"gpa\": \"%#llx\", \"writable\": false, \"file\": \"data.bin\" },\n"
		 "    { \"name\": \"mbox\", \"size\": \"2M\", \"gpa\": \"0x3000000000\" } ],\n"
		 "  \"vms\": [\n"
		 "    { \"name\": \"victim\", \"image\": \"%s/attack.elf\", \"mem\": \"16M\",\n"
		 "      \"cmdline\": \"mode=leaves-victim mbox=mbox seg=data expect=%#llx\", \"segments\": [\"data\", \"mbox\"] },\n"
		 "    { \"name\": \"attacker\", \"image\": \"%s/attack.elf\", \"mem\": \"16M\",\n"
		 "      \"cmdline\": \"mode=leaves-attacker mbox=mbox target=%#llx size=%u\", \"segments\": [\"mbox\"] } ] }\n",
		 (unsigned long long)SEG_DATA_GPA, dir, (unsigned long long)sum, dir,
		 (unsigned long long)SEG_DATA_GPA, SEG_DATA_SIZE);
	run_config("leaves.json", json, NULL, 120);
	printf("leaves: %s\n", line_with(result.out, "[attacker] attack:", line, sizeof(line)));
	snprintf(expect, sizeof(expect), "[victim] attack: victim: data sum before the attack %#llx, after: expected %#llx, got %#llx\n",
		 (unsigned long long)sum, (unsigned long long)sum, (unsigned long long)sum);
	ck_assert_msg(strstr(result.out, expect) != NULL,
		      "the attacker changed what the victim reads from its read-only segment: %s\nstdout:\n%s\nstderr:\n%s",
		      line_with(result.out, "[victim] attack: victim:", line, sizeof(line)), result.out, result.err);
	assert_umbra_survived(&result, "leaf rewriter");
	assert_only_the_attacker_may_fail(&result);
}
END_TEST

#define VICTIM_PAGE 0x600000ull
#define VICTIM_SECRET 0x5ec3e7c0ffee1234ull

/* Both attach a segment; the attacker points the victim's leaf for a page
 * of its private RAM at a page of the segment, where it reads what the
 * victim writes. It must never read the victim's secret. */
START_TEST(test_attacker_cannot_redirect_another_vms_private_page)
{
	char json[2048], dir[512], line[256];
	unsigned long long got = 0;

	guest_image_dir(dir, sizeof(dir));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [ { \"name\": \"shared\", \"size\": \"2M\", \"gpa\": \"0x3000000000\" } ],\n"
		 "  \"vms\": [\n"
		 "    { \"name\": \"victim\", \"image\": \"%s/attack.elf\", \"mem\": \"16M\",\n"
		 "      \"cmdline\": \"mode=private-victim mbox=shared page=%#llx secret=%#llx\", \"segments\": [\"shared\"] },\n"
		 "    { \"name\": \"attacker\", \"image\": \"%s/attack.elf\", \"mem\": \"16M\",\n"
		 "      \"cmdline\": \"mode=private-attacker mbox=shared page=%#llx\", \"segments\": [\"shared\"] } ] }\n",
		 dir, VICTIM_PAGE, VICTIM_SECRET, dir, VICTIM_PAGE);
	run_config("private.json", json, NULL, 120);
	line_with(result.out, "[attacker] attack:", line, sizeof(line));
	printf("private: %s\n", line);
	const char *p = strstr(line, "the trap page reads ");
	/* Where the pool is read-only, umbra stopped the attacker at its first write. */
	ck_assert_msg((p && sscanf(p + strlen("the trap page reads "), "%llx", &got) == 1) ||
			      strstr(result.err, "umbra: attacker: exit status 120"),
		      "the attacker did not report what it read\nstdout:\n%s\nstderr:\n%s", result.out, result.err);
	ck_assert_msg(got != VICTIM_SECRET,
		      "the attacker read the victim's secret %#llx from a page of private RAM redirected into the "
		      "shared segment: %s\nstdout:\n%s\nstderr:\n%s",
		      VICTIM_SECRET, line, result.out, result.err);
	assert_contains(result.out, "[victim] attack: victim: page 0x600000 reads the secret", &result);
	assert_umbra_survived(&result, "page redirector");
	assert_only_the_attacker_may_fail(&result);
}
END_TEST

/* ---- the fuzzer ---- */

static uint64_t env_u64(const char *name, uint64_t def)
{
	const char *v = getenv(name);
	char *end;

	if (!v || !*v)
		return def;
	uint64_t x = strtoull(v, &end, 0);
	return *end ? def : x;
}

#define FUZZ_SEG_SIZE (2u << 20)
#define FUZZ_READERS 2

/* What one seed's run did, for its line of the report. */
struct fuzz_outcome {
	uint64_t ops, hypercalls;
	int status;
	char why[256];
};

/* The fuzzer's operations: the sum over its vCPUs of the last count each
 * printed ("fuzz: vCPU N: M ops" or "... done: M ops"). */
static uint64_t fuzz_ops(const char *out)
{
	uint64_t last[UMBRA_MAX_VCPUS] = { 0 }, sum = 0;

	for (const char *p = out; (p = strstr(p, "fuzz: vCPU ")); p++) {
		unsigned int vcpu;
		unsigned long long n;

		if (sscanf(p, "fuzz: vCPU %u: %llu ops", &vcpu, &n) == 2 ||
		    sscanf(p, "fuzz: vCPU %u: done: %llu ops", &vcpu, &n) == 2)
			if (vcpu < UMBRA_MAX_VCPUS && n > last[vcpu])
				last[vcpu] = n;
	}
	for (unsigned int i = 0; i < UMBRA_MAX_VCPUS; i++)
		sum += last[i];
	return sum;
}

/* Checks one run; fills @o; returns NULL or why the seed failed (in @buf).
 * A fuzzer that keeps to the ABI (@abiding) must complete its operations. */
static const char *fuzz_check(const char *stats, uint64_t sum, bool abiding, struct fuzz_outcome *o, char *buf,
			      size_t size)
{
	char line[160];

	o->ops = fuzz_ops(result.out);
	o->status = result.status;
	/* Why umbra stopped it: a vCPU's error, else the VM's first line. */
	line_with(result.err, strstr(result.err, "umbra: fuzzer vCPU") ? "umbra: fuzzer vCPU" : "umbra: fuzzer: ", o->why,
		  sizeof(o->why));
	if (result.timed_out)
		return "umbra did not exit within the time limit";
	if (result.status >= 128)
		return snprintf(buf, size, "umbra was killed by signal %d", result.status - 128), buf;
	if (result.status == UMBRA_STATUS_USAGE)
		return snprintf(buf, size, "umbra refused the configuration: %s",
				line_with(result.err, "umbra: ", line, sizeof(line))), buf;
	struct json_object *root = json_object_from_file(stats), *vms;
	if (!root || !json_object_object_get_ex(root, "vms", &vms) || json_object_array_length(vms) != FUZZ_READERS + 2) {
		json_object_put(root);
		return snprintf(buf, size, "no statistics for every VM in %s (exit status %d)", stats, result.status), buf;
	}
	struct json_object *fuzzer = json_object_array_get_idx(vms, FUZZ_READERS + 1), *calls;
	int fuzz_status = (int)json_u64(fuzzer, "exit_status");
	if (json_object_object_get_ex(fuzzer, "hypercalls", &calls)) {
		json_object_object_foreach(calls, key, value) {
			(void)key;
			o->hypercalls += (uint64_t)json_object_get_uint64(value);
		}
	}
	for (size_t i = 0; i <= FUZZ_READERS; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i), *vm_name;
		int good_status = (int)json_u64(vm, "exit_status");

		if (good_status != 0) {
			snprintf(buf, size, "well-behaved VM %s exited with status %d",
				 json_object_object_get_ex(vm, "name", &vm_name) ? json_object_get_string(vm_name) : "?",
				 good_status);
			json_object_put(root);
			return buf;
		}
	}
	json_object_put(root);
	for (int i = 0; i < FUZZ_READERS; i++) {
		snprintf(line, sizeof(line), "[reader%d] segread: data at 0x2000000000, 2 MiB, 40 rounds: sum %#llx\n", i,
			 (unsigned long long)sum);
		if (!strstr(result.out, line))
			return snprintf(buf, size, "reader%d did not print \"%.*s\"", i, (int)strlen(line) - 1, line), buf;
	}
	if (!strstr(result.out, "[toucher/0] memtouch: 8 MiB x 12 rounds on 2 vCPUs: ok"))
		return "the toucher did not verify its RAM";
	if (abiding && fuzz_status != 0)
		return snprintf(buf, size, "the fuzzer kept to the ABI but was stopped (exit status %d): %s", fuzz_status,
				o->why), buf;
	if (fuzz_status != 0 && fuzz_status != UMBRA_STATUS_GUEST_ERROR)
		return snprintf(buf, size, "the fuzzer's exit status is %d, not 0 or %d", fuzz_status,
				UMBRA_STATUS_GUEST_ERROR), buf;
	if (result.status != fuzz_status)
		return snprintf(buf, size, "umbra's exit status is %d, not the fuzzer's %d", result.status, fuzz_status), buf;
	if (strstr(result.err, "umbra: table memory:") == NULL)
		return "umbra's statistics end early";
	return NULL;
}

/* One seed: the fuzzer (group "fuzz", two vCPUs) next to two segment
 * readers and a RAM toucher (group "good") under evictions of the segments
 * they share. @abiding: no pool writes and no ending operations, a guest
 * that keeps to the ABI however odd its page tables. Returns NULL or why it
 * failed. */
static const char *fuzz_seed(uint64_t seed, bool abiding, struct fuzz_outcome *o, char *buf, size_t size)
{
	static uint8_t data[FUZZ_SEG_SIZE];
	char json[4096], dir[512], stats[256], name[64], knobs[64];
	const char *const extra[] = { "--stats-json", stats, "--evict-ms", "5", "--evict-pages", "64", NULL };

	memset(o, 0, sizeof(*o));
	fill_pattern(data, sizeof(data), 0x13198a2e03707344ull ^ seed);
	uint64_t sum = write_segment_file("fuzzdata.bin", data, sizeof(data));
	guest_image_dir(dir, sizeof(dir));
	if (abiding)
		snprintf(knobs, sizeof(knobs), "pool=0 end=0");
	else
		snprintf(knobs, sizeof(knobs), "end=%llu", (unsigned long long)env_u64("UMBRA_FUZZ_END", 20000));
	snprintf(json, sizeof(json),
		 "{ \"segments\": [\n"
		 "    { \"name\": \"data\", \"size\": \"2M\", \"gpa\": \"0x2000000000\", \"writable\": false, \"file\": \"fuzzdata.bin\" },\n"
		 "    { \"name\": \"scratch\", \"size\": \"2M\", \"gpa\": \"0x2000200000\" } ],\n"
		 "  \"vms\": [\n"
		 "    { \"name\": \"reader\", \"count\": %d, \"group\": \"good\", \"image\": \"%s/segread.elf\", \"mem\": \"8M\",\n"
		 "      \"cmdline\": \"seg=data rounds=40 expect=%#llx\", \"segments\": [\"data\"] },\n"
		 "    { \"name\": \"toucher\", \"group\": \"good\", \"image\": \"%s/memtouch.elf\", \"mem\": \"16M\", \"vcpus\": 2,\n"
		 "      \"cmdline\": \"mib=8 rounds=12\" },\n"
		 "    { \"name\": \"fuzzer\", \"group\": \"fuzz\", \"image\": \"%s/fuzz.elf\", \"mem\": \"32M\", \"vcpus\": 2,\n"
		 "      \"cmdline\": \"seed=%llu ops=%llu %s report=250 scratch=scratch ro=data\", \"segments\": [\"data\", \"scratch\"] } ] }\n",
		 FUZZ_READERS, dir, (unsigned long long)sum, dir, dir, (unsigned long long)seed,
		 (unsigned long long)env_u64("UMBRA_FUZZ_OPS", 1500), knobs);
	snprintf(stats, sizeof(stats), "%s/fuzz-stats.json", tmpdir);
	snprintf(name, sizeof(name), "fuzz-%llu.json", (unsigned long long)seed);
	unlink(stats);
	run_config(name, json, extra, (int)env_u64("UMBRA_FUZZ_TIMEOUT", 60));
	return fuzz_check(stats, sum, abiding, o, buf, size);
}

START_TEST(test_fuzzer_next_to_good_vms_of_another_group)
{
	uint64_t seed = env_u64("UMBRA_FUZZ_SEED", 1), seeds = env_u64("UMBRA_FUZZ_SEEDS", 1);
	uint64_t soak = env_u64("UMBRA_FUZZ_SECONDS", 0), runs = 0, nr_failed = 0;
	time_t start = time(NULL);
	char failed[1024] = "", why[512];

	for (;; seed++, runs++) {
		if (soak ? time(NULL) - start >= (time_t)soak : runs >= seeds)
			break;
		struct fuzz_outcome o;
		const char *failure = fuzz_seed(seed, false, &o, why, sizeof(why));

		printf("fuzz: seed %llu: %llu ops, %llu hypercalls in %.1f s (%.0f hypercalls/s), exit status %d: %s%s%s\n",
		       (unsigned long long)seed, (unsigned long long)o.ops, (unsigned long long)o.hypercalls,
		       result.seconds, result.seconds > 0 ? (double)o.hypercalls / result.seconds : 0.0, o.status,
		       failure ? "FAILED: " : o.status == 0 ? "completed" : "stopped: ",
		       failure ? failure : "", failure || o.status == 0 ? "" : o.why);
		fflush(stdout);
		if (failure) {
			nr_failed++;
			size_t n = strlen(failed);
			snprintf(failed + n, sizeof(failed) - n, "%s%llu", n ? " " : "", (unsigned long long)seed);
			fprintf(stderr, "fuzz: seed %llu failed: %s\n--- stdout ---\n%s--- stderr ---\n%s\n",
				(unsigned long long)seed, failure, result.out, result.err);
		}
	}
	ck_assert_msg(nr_failed == 0, "fuzz: %llu of %llu seeds failed: %s (reproduce one: scripts/fuzz --seed N --seeds 1)",
		      (unsigned long long)nr_failed, (unsigned long long)runs, failed);
}
END_TEST

/* The fuzzer without pool writes or ending operations keeps to the ABI:
 * whatever it makes of its own page tables, and its spurious INVLPGs of the
 * pages it uses (its stack, its code), it must run to its end. */
#define FUZZ_ABI_SEED 1

START_TEST(test_fuzzer_that_keeps_to_the_abi_runs_to_its_end)
{
	struct fuzz_outcome o;
	char why[512];
	const char *failure = fuzz_seed(FUZZ_ABI_SEED, true, &o, why, sizeof(why));

	printf("fuzz: ABI-abiding seed %d: %llu ops, %llu hypercalls in %.1f s (%.0f hypercalls/s), exit status %d\n",
	       FUZZ_ABI_SEED, (unsigned long long)o.ops, (unsigned long long)o.hypercalls, result.seconds,
	       result.seconds > 0 ? (double)o.hypercalls / result.seconds : 0.0, o.status);
	if (failure) /* the whole output is longer than a Check message may be */
		fprintf(stderr, "fuzz: ABI-abiding seed %d failed: %s\n--- stdout ---\n%s--- stderr ---\n%s\n", FUZZ_ABI_SEED,
			failure, result.out, result.err);
	ck_assert_msg(!failure, "fuzz: ABI-abiding seed %d failed: %s (its output is on stderr)", FUZZ_ABI_SEED, failure);
}
END_TEST

Suite *kvm_hostile_suite(void)
{
	Suite *s = suite_create("kvm_hostile");
	TCase *attacks = tcase_create("attacks");

	tcase_set_timeout(attacks, 400);
	tcase_add_checked_fixture(attacks, tmpdir_setup, tmpdir_teardown);
	tcase_add_test(attacks, test_pool_scribbler_cannot_crash_umbra_or_reach_another_vm);
	tcase_add_test(attacks, test_attacker_cannot_rewrite_another_vms_segment_leaves);
	tcase_add_test(attacks, test_attacker_cannot_redirect_another_vms_private_page);
	suite_add_tcase(s, attacks);

	TCase *abiding = tcase_create("fuzz_abi");
	tcase_set_timeout(abiding, (double)env_u64("UMBRA_FUZZ_TIMEOUT", 60) + 15);
	tcase_add_checked_fixture(abiding, tmpdir_setup, tmpdir_teardown);
	tcase_add_test(abiding, test_fuzzer_that_keeps_to_the_abi_runs_to_its_end);
	suite_add_tcase(s, abiding);

	/* The fuzzer's time: each seed's limit, or the soak and one more run. */
	uint64_t per_run = env_u64("UMBRA_FUZZ_TIMEOUT", 60) + 5;
	uint64_t soak = env_u64("UMBRA_FUZZ_SECONDS", 0);
	TCase *fuzz = tcase_create("fuzz");
	tcase_set_timeout(fuzz, (double)(soak ? soak + per_run : env_u64("UMBRA_FUZZ_SEEDS", 1) * per_run) + 10);
	tcase_add_checked_fixture(fuzz, tmpdir_setup, tmpdir_teardown);
	tcase_add_test(fuzz, test_fuzzer_next_to_good_vms_of_another_group);
	suite_add_tcase(s, fuzz);
	return s;
}
