/*
 * KVM suite kvm_clone: clones of a running VM (the CLONE hypercall,
 * --clone; docs/abi.md "Clones", docs/sharing.md "Clones on KVM"), with the
 * guest image clone.c. One test per case, so that each runs alone:
 *
 *   CK_RUN_CASE=family scripts/kvm-test build kvm_clone
 *
 *   family          64 MiB filled, cloned into 8: each clone rewrites its
 *                   part and verifies its whole view while the parent
 *                   rewrites everything
 *   family_vcpus    the same with 2 vCPUs: the second vCPU, parked mid-loop
 *                   by the clone, runs on in every clone
 *   own_cr3         a clone that loads its own CR3 and writes shared memory
 *                   is stopped; its parent and sibling still read the first
 *                   pattern
 *   nested          clones of clones: 9 VMs, each with its lineage's marks
 *   at_ready        --clone 3: umbra clones the VM as it becomes ready
 *   takeover        a parent whose only clone exited takes the memory over:
 *                   its writes need no copy
 *   readonly_memory the host memory of 8 read-only clones against 9
 *                   cold-booted VMs of the same image and size
 *   under_pager     read-only clones under a memory limit smaller than their
 *                   memory: every clone verifies its data, each swap-out is
 *                   swapped in at most once for all of them, refaults fill
 *                   shared tables in place, and every VM but the last to
 *                   stop still shares tables when it stops
 */
#include <check.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kvm_run.h"
#include "tests.h"

#define MIB (1ull << 20)

static struct run_result result;
static char image[256];

/* Runs umbra run IMAGE @args... --stats-json FILE and returns the parsed
 * statistics (json_object_put them). */
static struct json_object *run_clone(const char *const args[], int timeout_s, run_sampler sample, void *arg)
{
	const char *argv[30];
	int n = 0;

	guest_image("clone", image, sizeof(image));
	argv[n++] = "run";
	argv[n++] = image;
	for (int i = 0; args[i]; i++) {
		ck_assert_int_lt(n, 28);
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	return run_umbra_stats(argv, timeout_s, sample, arg, &result);
}

/* The VM called @name in the statistics, or NULL. */
static struct json_object *vm_stats(struct json_object *root, const char *name)
{
	struct json_object *vms, *key;

	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	for (size_t i = 0; i < json_object_array_length(vms); i++) {
		struct json_object *e = json_object_array_get_idx(vms, i);

		if (json_object_object_get_ex(e, "name", &key) && strcmp(json_object_get_string(key), name) == 0)
			return e;
	}
	return NULL;
}

static unsigned int nr_vms(struct json_object *root)
{
	struct json_object *vms;

	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	return (unsigned int)json_object_array_length(vms);
}

/* VM @name ran, exited with @status and printed @line (NULL: nothing
 * checked) with the prefix of its vCPU 0 ("[NAME/0]" if it has several). */
static void assert_vm_vcpus(struct json_object *root, const char *name, int status, const char *line,
			    unsigned int vcpus)
{
	struct json_object *v = vm_stats(root, name);
	char want[160];

	ck_assert_msg(v, "no VM '%s' in the statistics\nstdout:\n%s\nstderr:\n%s", name, result.out, result.err);
	ck_assert_msg((int)json_u64(v, "exit_status") == status, "%s: exit status: expected %d, got %d\nstdout:\n%s\nstderr:\n%s",
		      name, status, (int)json_u64(v, "exit_status"), result.out, result.err);
	if (line) {
		snprintf(want, sizeof(want), vcpus > 1 ? "[%s/0] %s" : "[%s] %s", name, line);
		assert_contains(result.out, want, &result);
	}
}

static void assert_vm(struct json_object *root, const char *name, int status, const char *line)
{
	assert_vm_vcpus(root, name, status, line, 1);
}

static unsigned int count_of(const char *hay, const char *needle)
{
	unsigned int n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* Umbra ran vm0 and its clones vm0.1 .. vm0.@n (and no other VM), with
 * @vcpus vCPUs each; each exited 0 after printing "clone: VM k: @mib MiB,
 * mode @mode: ok" and names vm0 as its parent. */
static void assert_family(struct json_object *root, unsigned int n, unsigned int mib, const char *mode,
			  unsigned int vcpus)
{
	char name[16], line[64];

	assert_status(&result, 0);
	ck_assert_msg(nr_vms(root) == n + 1, "expected %u VMs, got %u", n + 1, nr_vms(root));
	for (unsigned int k = 0; k <= n; k++) {
		snprintf(name, sizeof(name), k ? "vm0.%u" : "vm0", k);
		snprintf(line, sizeof(line), "clone: VM %u: %u MiB, mode %s: ok", k, mib, mode);
		assert_vm_vcpus(root, name, 0, line, vcpus);
		if (k)
			ck_assert_msg(strcmp(json_object_get_string(json_object_object_get(vm_stats(root, name), "parent")),
					     "vm0") == 0, "%s: parent is not vm0", name);
	}
}

START_TEST(test_eight_clones_each_see_their_own_memory)
{
	const char *args[] = { "--mem", "128M", "--cmdline", "mode=family mib=64 clones=8 rounds=1", NULL };
	struct json_object *root = run_clone(args, 240, NULL, NULL);
	char name[16];

	assert_family(root, 8, 64, "family", 1);
	/* Every clone copied what it wrote and nothing more (8 MiB - 4 KiB:
	 * 2047 pages, and the pinned pages its stack and handlers wrote). */
	for (unsigned int k = 1; k <= 8; k++) {
		snprintf(name, sizeof(name), "vm0.%u", k);
		uint64_t breaks = json_u64(vm_stats(root, name), "shadow.sharing.cow_breaks");
		ck_assert_msg(breaks >= 2047 && breaks < 2047 + 256, "%s: cow_breaks: expected 2047 to 2302, got %llu",
			      name, (unsigned long long)breaks);
	}
	json_object_put(root);
}
END_TEST

START_TEST(test_clones_of_a_two_vcpu_vm_run_both_vcpus)
{
	const char *args[] = { "--mem", "64M", "--vcpus", "2", "--cmdline", "mode=family mib=16 clones=3 rounds=1",
			       NULL };
	struct json_object *root = run_clone(args, 120, NULL, NULL);

	assert_family(root, 3, 16, "family", 2);
	json_object_put(root);
}
END_TEST

START_TEST(test_a_clone_on_its_own_cr3_cannot_write_shared_memory)
{
	const char *args[] = { "--mem", "64M", "--cmdline", "mode=owncr3 mib=8 clones=2", NULL };
	struct json_object *root = run_clone(args, 120, NULL, NULL);

	assert_vm(root, "vm0", 0, "clone: VM 0: 8 MiB, mode owncr3: ok");
	assert_vm(root, "vm0.2", 0, "clone: VM 2: 8 MiB, mode owncr3: ok");
	assert_vm(root, "vm0.1", 120, NULL);
	/* Stopped by KVM's refusal: a write to the read-only memslot, or (on
	 * AMD, whose nested walk of the guest's own tables writes A/D bits)
	 * the walk itself (docs/sharing.md, "Clones on KVM"). */
	assert_contains(result.err, "umbra: vm0.1: ", &result);
	ck_assert_msg(!strstr(result.out, "wrote the shared memory under its own CR3"),
		      "vm0.1 wrote shared memory under its own CR3\nstdout:\n%s", result.out);
	json_object_put(root);
}
END_TEST

START_TEST(test_clones_of_clones_keep_their_lineage)
{
	const char *args[] = { "--mem", "32M", "--cmdline", "mode=nested mib=4 clones=2", NULL };
	struct json_object *root = run_clone(args, 120, NULL, NULL);
	char line[64];

	assert_status(&result, 0);
	ck_assert_msg(nr_vms(root) == 9, "expected 9 VMs, got %u", nr_vms(root));
	for (unsigned int a = 0; a <= 2; a++) {
		for (unsigned int b = 0; b <= 2; b++) {
			snprintf(line, sizeof(line), "clone: VM %u.%u: 4 MiB, mode nested: ok", a, b);
			ck_assert_msg(count_of(result.out, line) == 1, "expected one \"%s\", got %u\nstdout:\n%s", line,
				      count_of(result.out, line), result.out);
		}
	}
	assert_vm(root, "vm0.1.1", 0, NULL);
	assert_vm(root, "vm0.2.2", 0, NULL);
	json_object_put(root);
}
END_TEST

START_TEST(test_clone_option_clones_when_ready)
{
	const char *args[] = { "--mem", "32M", "--clone", "3", "--cmdline", "mode=ready mib=4", NULL };
	struct json_object *root = run_clone(args, 120, NULL, NULL);

	assert_family(root, 3, 4, "ready", 1);
	json_object_put(root);
}
END_TEST

/* Host memory of 8 read-only clones of a VM that filled 32 MiB, against 9
 * VMs booted with the same image that each fill 32 MiB. */
START_TEST(test_read_only_clones_share_their_memory)
{
	const char *clones[] = { "--mem", "64M", "--cmdline", "mode=readonly mib=32 clones=8 rounds=3", NULL };
	const char *cold[] = { "--mem", "64M", "--vms", "9", "--cmdline", "mode=cold mib=32 rounds=3", NULL };
	struct memfd_samples sc = { 0 }, sb = { 0 };
	struct json_object *root;

	root = run_clone(clones, 180, sample_memfds, &sc);
	assert_family(root, 8, 32, "readonly", 1);
	json_object_put(root);
	root = run_clone(cold, 180, sample_memfds, &sb);
	assert_status(&result, 0);
	json_object_put(root);
	printf("readonly_memory: 1 VM + 8 read-only clones: peak %.1f MiB; 9 cold-booted VMs: peak %.1f MiB; "
	       "ratio %.3f (%llu and %llu samples)\n",
	       (double)sc.max / MIB, (double)sb.max / MIB, (double)sc.max / (double)sb.max,
	       (unsigned long long)sc.count, (unsigned long long)sb.count);
	/* The clones hold the parent's 32 MiB once, plus what each wrote (its
	 * stack, pinned pages); the cold VMs 32 MiB each. */
	ck_assert_msg(sc.max < 48 * MIB, "clones: expected below 48 MiB of memfds, got %.1f MiB", (double)sc.max / MIB);
	ck_assert_msg(sb.max > 9 * 32 * MIB * 3 / 4, "cold VMs: expected above 216 MiB, got %.1f MiB",
		      (double)sb.max / MIB);
}
END_TEST

START_TEST(test_clones_under_the_pager_refault_and_stay_shared)
{
	const char *args[] = { "--mem", "64M", "--mem-limit", "20M", "--cmdline",
			       "mode=readonly mib=24 clones=4 rounds=4", NULL };
	struct json_object *root = run_clone(args, 240, NULL, NULL);
	char name[16];

	assert_family(root, 4, 24, "readonly", 1);
	ck_assert_msg(json_u64(root, "pager.swapins") > 0 && json_u64(root, "pager.swapouts_io") > 0,
		      "no swapping: swapins %llu, swapouts_io %llu", (unsigned long long)json_u64(root, "pager.swapins"),
		      (unsigned long long)json_u64(root, "pager.swapouts_io"));
	/* A page the 5 VMs share is evicted once and swapped in once for all:
	 * never more swap-ins than swap-outs (each clone reads every page each
	 * round, so a swap-in per VM would be up to 5 times as many). */
	uint64_t ins = json_u64(root, "pager.swapins");
	uint64_t outs = json_u64(root, "pager.swapouts_io") + json_u64(root, "pager.swapouts_cached");
	printf("under_pager: swap-outs %llu, swap-ins %llu\n", (unsigned long long)outs, (unsigned long long)ins);
	ck_assert_msg(ins <= outs, "expected at most one swap-in per swap-out, got %llu swap-ins for %llu swap-outs",
		      (unsigned long long)ins, (unsigned long long)outs);
	/* The pager evicted pages every VM maps and each refaulted them: the
	 * refaults filled the shared tables in place, and a VM still shares
	 * tables when it stops (but the last to stop: nobody is left to share
	 * them with). */
	unsigned int sharing = 0;

	for (unsigned int k = 0; k <= 4; k++) {
		snprintf(name, sizeof(name), k ? "vm0.%u" : "vm0", k);
		uint64_t shared = json_u64(vm_stats(root, name), "shadow.tables_reached.shared");
		uint64_t refaults = json_u64(vm_stats(root, name), "shadow.faults");
		uint64_t fills = json_u64(vm_stats(root, name), "shadow.sharing.fills_in_place");
		uint64_t priv = json_u64(vm_stats(root, name), "shadow.sharing.privatizations");
		printf("under_pager: %s: %llu shadow faults, %llu fills in place, %llu privatizations, "
		       "%llu shared tables at its end\n", name, (unsigned long long)refaults, (unsigned long long)fills,
		       (unsigned long long)priv, (unsigned long long)shared);
		if (k)
			ck_assert_msg(fills > 0, "%s: no leaf filled in place into a shared table", name);
		sharing += shared > 0;
	}
	ck_assert_msg(sharing >= 4, "expected every VM but the last to stop to share tables at its end, got %u of 5",
		      sharing);
	json_object_put(root);
}
END_TEST

/* The parent outlives its only clone: it takes the shared memory over and
 * rewrites most of it without copying. */
START_TEST(test_the_last_holder_takes_the_memory_over)
{
	const char *args[] = { "--mem", "64M", "--cmdline", "mode=takeover mib=16 clones=1 rounds=3", NULL };
	struct json_object *root = run_clone(args, 120, NULL, NULL);
	struct json_object *p;

	assert_status(&result, 0);
	assert_vm(root, "vm0", 0, "clone: VM 0: 16 MiB, mode takeover: ok");
	assert_vm(root, "vm0.1", 0, NULL);
	p = vm_stats(root, "vm0");
	uint64_t taken = json_u64(p, "shadow.sharing.layers_taken_over");
	uint64_t inplace = json_u64(p, "shadow.sharing.cow_takeovers");
	uint64_t breaks = json_u64(p, "shadow.sharing.cow_breaks");
	printf("takeover: layers taken over %llu, writes in place %llu, copies %llu\n", (unsigned long long)taken,
	       (unsigned long long)inplace, (unsigned long long)breaks);
	ck_assert_msg(taken >= 1, "vm0 took no layer over");
	/* 16 MiB is 4096 pages: most of them written in place. */
	ck_assert_msg(inplace > 2048, "vm0: expected more than 2048 writes in place, got %llu (and %llu copies)",
		      (unsigned long long)inplace, (unsigned long long)breaks);
	json_object_put(root);
}
END_TEST

Suite *kvm_clone_suite(void)
{
	Suite *s = suite_create("kvm_clone");

	kvm_add_case(s, "family", test_eight_clones_each_see_their_own_memory, 300, tmpdir_teardown);
	kvm_add_case(s, "family_vcpus", test_clones_of_a_two_vcpu_vm_run_both_vcpus, 150, tmpdir_teardown);
	kvm_add_case(s, "own_cr3", test_a_clone_on_its_own_cr3_cannot_write_shared_memory, 150, tmpdir_teardown);
	kvm_add_case(s, "nested", test_clones_of_clones_keep_their_lineage, 150, tmpdir_teardown);
	kvm_add_case(s, "at_ready", test_clone_option_clones_when_ready, 150, tmpdir_teardown);
	kvm_add_case(s, "takeover", test_the_last_holder_takes_the_memory_over, 150, tmpdir_teardown);
	kvm_add_case(s, "readonly_memory", test_read_only_clones_share_their_memory, 400, tmpdir_teardown);
	kvm_add_case(s, "under_pager", test_clones_under_the_pager_refault_and_stay_shared, 300, tmpdir_teardown);
	return s;
}
