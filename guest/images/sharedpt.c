/*
 * sharedpt: two address spaces A and B share their page tables at
 * USER_BASE (B's PML4 entry points at A's PDPT, so both reach one page
 * table); vCPU 0 runs A, vCPU 1 runs B. Each round vCPU 0 points the shared
 * table's entry for SHARED_VA at the other of two frames, whose content
 * names the round, and makes the change visible in every address space
 * (SYNC_TABLE, the table's guest-physical address); vCPU 1, whose shadow of
 * B still maps the old frame, must then read the new content.
 *
 * rounds=N (default 20); sync=0 uses INVLPG instead of SYNC_TABLE (which
 * covers only A's shadow); alias=1 makes B reach A's PDPT through PML4
 * entry ALIAS_INDEX instead, so that vCPU 1 reads the shared table at
 * another address (SHARED_VA + ALIAS_OFFSET): B then has a shadow of its
 * own, and with sync=0 vCPU 1 reads a stale frame (at the same address,
 * umbra keeps one shadow for both, which INVLPG reaches). Needs exactly 2
 * vCPUs. Prints "sharedpt: N rounds: ok", or "expected X, got Y" and exits
 * 1.
 *
 * bad_sync: SYNC_TABLE of an address that is not 4 KiB-aligned (umbra must
 * stop the VM naming argument 0; exits 1 if it does not).
 */
#include "guest.h"
#include "paging.h"

#define SHARED_VA (USER_BASE + 0x200000)
/* B's alias of A's PDPT: PML4 entry 4 (2 TiB; entry 2 is the heap). */
#define ALIAS_INDEX 4
#define ALIAS_OFFSET ((uint64_t)(ALIAS_INDEX - 1) << 39)

static struct address_space a, b;
static uint64_t frames[2], table;
static volatile int failed;

static uint64_t stamp(uint64_t round)
{
	return 0x5348415245440000ull | round; /* "SHARED" | round */
}

/* vCPU 0: point SHARED_VA at the frame of @round, filled first. */
static void remap(uint64_t round, int sync)
{
	uint64_t frame = frames[round % 2];

	*(volatile uint64_t *)frame = stamp(round);
	pt_map(&a, SHARED_VA, frame, PTE_W);
	if (sync)
		tlb_sync_table(table, SHARED_VA);
	else
		tlb_invlpg(SHARED_VA);
}

static int setup(int alias)
{
	frames[0] = page_alloc();
	frames[1] = page_alloc();
	if (!frames[0] || !frames[1] || as_create(&a) || as_create(&b) ||
	    pt_map(&a, SHARED_VA, frames[0], PTE_W))
		return -1;
	((uint64_t *)b.cr3)[alias ? ALIAS_INDEX : 1] = ((uint64_t *)a.cr3)[1];
	table = pt_table_of(&a, SHARED_VA);
	*(volatile uint64_t *)frames[0] = stamp(0);
	return 0;
}

int main(const struct umbra_boot_info *boot)
{
	const uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 20);
	const int sync = (int)cmdline_u64(boot->cmdline, "sync", 1);
	const int alias = (int)cmdline_u64(boot->cmdline, "alias", 0);
	/* Where this vCPU reads the shared table's page. */
	const uint64_t va = SHARED_VA + (boot->vcpu_id == 1 && alias ? ALIAS_OFFSET : 0);

	if (cmdline_get(boot->cmdline, "bad_sync", (char[2]){ 0 }, 2)) {
		hypercall4(UMBRA_HC_SYNC_TABLE, 0x1008, 0, 0, 0);
		printf("sharedpt: SYNC_TABLE of 0x1008 was not refused\n");
		return 1;
	}
	if (boot->nr_vcpus != 2) {
		printf("sharedpt: needs exactly 2 vCPUs\n");
		return 2;
	}
	if (boot->vcpu_id == 0 && setup(alias)) {
		printf("sharedpt: out of memory\n");
		return 2;
	}
	vcpu_barrier(boot);
	as_switch(boot->vcpu_id == 0 ? &a : &b);
	for (uint64_t r = 0; r <= rounds && !failed; r++) {
		/* Round r: vCPU 0 has mapped frame r % 2 holding stamp(r). */
		if (r > 0 && boot->vcpu_id == 0)
			remap(r, sync);
		vcpu_barrier(boot);
		uint64_t got = *(volatile uint64_t *)va;
		if (got != stamp(r)) {
			printf("sharedpt: round %lu: vCPU %u read %#lx: expected %#lx, got %#lx\n",
			       (unsigned long)r, boot->vcpu_id, (unsigned long)va,
			       (unsigned long)stamp(r), (unsigned long)got);
			failed = 1;
		}
		vcpu_barrier(boot);
	}
	if (boot->vcpu_id == 0 && !failed)
		printf("sharedpt: %lu rounds: ok\n", (unsigned long)rounds);
	return failed;
}
