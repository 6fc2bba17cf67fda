/*
 * KVM suite "kvm_paging": guest paging under the shadow MMU as a CPU would
 * run it, on real KVM (scripts/kvm-test runs it where there is none):
 *
 *   invlpg       INVLPG of pinned pages that did not change is harmless;
 *   shared_table a change to a page table two address spaces share reaches
 *                the other vCPU's address space through SYNC_TABLE;
 *   nxe          EFER.NXE cleared and set with wrmsr: bit 63 reads as a
 *                reserved bit, then as NX again, and no fault loop;
 *   procs        a multi-process guest kernel (procs.elf: a kernel half
 *                shared by every process, fork with copy-on-write,
 *                cooperative switches) runs correctly; prints the exits per
 *                switch and the shadow table pages created per fork.
 *
 * UMBRA_BIN and UMBRA_GUEST_DIR say where the program and the images are, as
 * for the "kvm" suite.
 */
#include <check.h>
#include <json-c/json.h>
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
	/* What SYNC_TABLE is for (docs/abi.md): B reaches the shared table at
	 * another address, so it has a shadow of its own, and INVLPG covers
	 * only the current address space's: vCPU 1 keeps the old frame. */
	run_image("sharedpt", (const char *[]){ "--vcpus", "2", "--cmdline", "rounds=2 sync=0 alias=1", NULL },
		  &run);
	assert_status(&run, 1);
	assert_contains(run.out, "sharedpt: round 1: vCPU 1 read 0x20000200000: expected 0x5348415245440001, "
		    "got 0x5348415245440000", &run);
}
END_TEST

START_TEST(test_address_spaces_sharing_a_table_at_one_address_share_its_shadow)
{
	/* The same guest with B reaching the table at the same address: one
	 * shadow for both (one shadow per guest table within a VM), so A's
	 * INVLPG reaches it and vCPU 1 reads each new frame. */
	run_image("sharedpt", (const char *[]){ "--vcpus", "2", "--cmdline", "rounds=20 sync=0", "--stats", NULL },
		  &run);
	const char *reused;
	unsigned long links = 0;

	assert_status(&run, 0);
	assert_contains(run.out, "sharedpt: 20 rounds: ok", &run);
	reused = strstr(run.err, " tables_reused=");
	ck_assert_msg(reused && sscanf(reused, " tables_reused=%lu", &links) == 1 && links >= 1,
		      "expected B to link A's shadows (tables_reused >= 1), got %lu\n%s", links, run.err);
	/* With SYNC_TABLE and the alias, B's own shadow is re-checked. */
	run_image("sharedpt", (const char *[]){ "--vcpus", "2", "--cmdline", "rounds=20 alias=1", NULL }, &run);
	assert_status(&run, 0);
	assert_contains(run.out, "sharedpt: 20 rounds: ok", &run);
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

/* What one run of procs.elf cost (from --stats-json). */
struct procs_cost {
	uint64_t exits, tables_created, set_cr3, guest_faults, pin_walks, pin_walks_skipped;
	unsigned long fork_tables, forks; /* the guest's "fork new table pages" line */
};

/* Runs procs.elf with @cmdline; it must print @ok_line and exit 0. */
static void run_procs(const char *cmdline, const char *ok_line, struct procs_cost *c)
{
	char img[512];
	struct json_object *root, *vms, *vm;
	const char *line;

	guest_image("procs", img, sizeof(img));
	root = run_umbra_stats((const char *[]){ "run", img, "--cmdline", cmdline, NULL }, 120, NULL, NULL, &run);
	assert_status(&run, 0);
	assert_contains(run.out, ok_line, &run);
	ck_assert(json_object_object_get_ex(root, "vms", &vms));
	vm = json_object_array_get_idx(vms, 0);
	c->exits = json_u64(vm, "exits.total");
	c->tables_created = json_u64(vm, "shadow.tables_created");
	c->set_cr3 = json_u64(vm, "hypercalls.set_cr3");
	c->guest_faults = json_u64(vm, "shadow.guest_faults");
	c->pin_walks = json_u64(vm, "shadow.pin_walks");
	c->pin_walks_skipped = json_u64(vm, "shadow.pin_walks_skipped");
	json_object_put(root);
	line = strstr(run.out, "procs: fork new table pages: ");
	ck_assert_msg(line && sscanf(line, "procs: fork new table pages: %lu in %lu forks", &c->fork_tables,
				      &c->forks) == 2,
		      "expected a line \"procs: fork new table pages: P in F forks\"\n%s", run.out);
}

/*
 * procs.elf's setup (forking its processes, running each once) is the same
 * whatever its rounds and forks: the difference between a run with rounds
 * (or fork/exit cycles) and one without is what those cost. The guest prints
 * the same lines in every run, so its console exits cancel out.
 */
START_TEST(test_many_processes_switch_and_fork_correctly)
{
	struct procs_cost setup, rounds, forks, cached_setup, cached_rounds;
	double exits_per_switch, cached_exits_per_switch, tables_per_fork, guest_tables_per_fork;

	run_procs("procs=30 rounds=0 forks=0", "procs: 30 processes, 0 rounds, 0 switches, 0 forks: ok\n", &setup);
	run_procs("procs=30 rounds=20 forks=0", "procs: 30 processes, 20 rounds, 600 switches, 0 forks: ok\n",
		  &rounds);
	run_procs("procs=30 rounds=0 forks=20", "procs: 30 processes, 0 rounds, 0 switches, 20 forks: ok\n", &forks);
	/* 6 processes: a switch costs what it costs among 30, as the root
	 * cache keeps every address space in use (it fits the quota). */
	run_procs("procs=6 rounds=0 forks=0", "procs: 6 processes, 0 rounds, 0 switches, 0 forks: ok\n",
		  &cached_setup);
	run_procs("procs=6 rounds=50 forks=0", "procs: 6 processes, 50 rounds, 300 switches, 0 forks: ok\n",
		  &cached_rounds);

	/* One SET_CR3 per switch; the rounds take no copy-on-write fault
	 * (the setup broke them all). */
	ck_assert_uint_eq(rounds.set_cr3 - setup.set_cr3, 600);
	ck_assert_msg(rounds.guest_faults == setup.guest_faults,
		      "guest faults in the rounds: expected none, got %llu",
		      (unsigned long long)(rounds.guest_faults - setup.guest_faults));
	/* Each fork copies the user tables, PDPT, two PDs and two PTs, and
	 * makes a PML4. */
	ck_assert_msg(forks.forks == 20 && forks.fork_tables == 6 * 20,
		      "fork new table pages: expected 120 in 20 forks, got %lu in %lu", forks.fork_tables,
		      forks.forks);

	exits_per_switch = (double)(rounds.exits - setup.exits) / 600;
	cached_exits_per_switch = (double)(cached_rounds.exits - cached_setup.exits) / 300;
	tables_per_fork = (double)(forks.tables_created - setup.tables_created) / 20;
	guest_tables_per_fork = (double)forks.fork_tables / (double)forks.forks;
	printf("procs: %.1f exits per switch (%.1f with every root cached), %.1f table pages per fork "
	       "(guest's new tables: %.1f)\n",
	       exits_per_switch, cached_exits_per_switch, tables_per_fork, guest_tables_per_fork);
	printf("procs: exits %llu, %llu with 600 switches, %llu with 20 forks; tables created %llu, %llu with 20 "
	       "forks; with 6 processes: exits %llu, %llu with 300 switches\n",
	       (unsigned long long)setup.exits, (unsigned long long)rounds.exits, (unsigned long long)forks.exits,
	       (unsigned long long)setup.tables_created, (unsigned long long)forks.tables_created,
	       (unsigned long long)cached_setup.exits, (unsigned long long)cached_rounds.exits);

	/* A switch to a cached address space does not walk the pins again
	 * once nothing was zapped since they were pre-faulted there: the
	 * first round walks each process's once (the setup's copy-on-write
	 * breaks zapped), the 19 others none. */
	ck_assert_msg(rounds.pin_walks - setup.pin_walks <= 30 &&
			      rounds.pin_walks_skipped - setup.pin_walks_skipped >= 570,
		      "pin walks in the rounds: expected at most 30 walked and 570 skipped, got %llu and %llu",
		      (unsigned long long)(rounds.pin_walks - setup.pin_walks),
		      (unsigned long long)(rounds.pin_walks_skipped - setup.pin_walks_skipped));
	/* A switch between cached address spaces costs its SET_CR3 (and at
	 * most one more exit), among 6 processes or 30. */
	ck_assert_msg(cached_exits_per_switch <= 2, "exits per switch among 6 processes: expected at most 2, got %.1f",
		      cached_exits_per_switch);
	ck_assert_msg(exits_per_switch <= 2, "exits per switch among 30 processes: expected at most 2, got %.1f",
		      exits_per_switch);
	/* A fork's new address space links the one shadow of the kernel half
	 * and of the identity map (one shadow per guest table within a VM):
	 * it costs at most twice the guest's own new tables. */
	ck_assert_msg(tables_per_fork <= 2 * guest_tables_per_fork,
		      "table pages created per fork: expected at most %.1f (twice the guest's), got %.1f",
		      2 * guest_tables_per_fork, tables_per_fork);
}
END_TEST

Suite *kvm_paging_suite(void)
{
	Suite *s = suite_create("kvm_paging");
	TCase *invlpg = tcase_create("invlpg");
	TCase *shared = tcase_create("shared_table");
	TCase *nxe = tcase_create("nxe");
	TCase *procs = tcase_create("procs");

	tcase_set_timeout(invlpg, 120);
	tcase_add_test(invlpg, test_invlpg_of_pinned_pages_is_harmless);
	suite_add_tcase(s, invlpg);
	tcase_set_timeout(shared, 120);
	tcase_add_test(shared, test_shared_table_change_reaches_other_address_space);
	tcase_add_test(shared, test_invlpg_alone_leaves_other_address_space_stale);
	tcase_add_test(shared, test_address_spaces_sharing_a_table_at_one_address_share_its_shadow);
	tcase_add_test(shared, test_sync_table_with_unaligned_address_is_named);
	suite_add_tcase(s, shared);
	tcase_set_timeout(nxe, 120);
	tcase_add_test(nxe, test_nxe_toggle_gives_reserved_bit_fault_then_nx);
	tcase_add_test(nxe, test_repeated_reserved_bit_faults_stop_the_vm);
	suite_add_tcase(s, nxe);
	tcase_set_timeout(procs, 300);
	tcase_add_checked_fixture(procs, tmpdir_setup, tmpdir_teardown);
	tcase_add_test(procs, test_many_processes_switch_and_fork_correctly);
	suite_add_tcase(s, procs);
	return s;
}
