/*
 * ptchurn: changes its own page tables in a loop, in several address spaces,
 * and checks after every change that the CPU (running on umbra's shadow of
 * those tables) sees exactly what the tables say:
 *
 *   map       pages at USER_BASE to frames with known contents: reads match
 *   remap     a page to another frame + invlpg: reads see the new frame
 *   protect   read-only + invlpg: writes fault (P|W), reads still work
 *   unmap     + invlpg: reads fault (not present)
 *   switch    between address spaces: each sees its own frames
 *   heap      first touches of the demand-zero heap read zero
 *
 * rounds=N (default 20), spaces=K (default 3, at most 8). With 2 or more
 * vCPUs, vCPU 1 also reads a shared page while vCPU 0 remaps it: after the
 * remap returns (umbra shot the old translation down on vCPU 1 by NMI),
 * vCPU 1 must see the new frame. Exits 1 at the first mismatch.
 */
#include "guest.h"
#include "paging.h"

#define PAGES 8
#define MAX_SPACES 8
#define SHARED_VA (USER_BASE + 0x100000)

static struct address_space spaces[MAX_SPACES];
static uint64_t frames[MAX_SPACES][PAGES];
static volatile uint64_t shared_generation; /* what vCPU 1 must read at SHARED_VA */
static volatile int shared_done, shared_failed;

static int check(int ok, const char *what, uint64_t round, uint64_t a, uint64_t b)
{
	if (!ok)
		printf("ptchurn: round %lu: %s: expected %#lx, got %#lx\n", (unsigned long)round, what,
		       (unsigned long)a, (unsigned long)b);
	return ok;
}

static uint64_t stamp(int space, int page, uint64_t round)
{
	return ((uint64_t)space << 48) | ((uint64_t)page << 32) | round;
}

/* vCPU 1: read SHARED_VA until vCPU 0 is done; the value never goes back. */
static void shared_reader(void)
{
	uint64_t last = 0;

	while (!__atomic_load_n(&shared_done, __ATOMIC_ACQUIRE)) {
		uint64_t want = __atomic_load_n(&shared_generation, __ATOMIC_ACQUIRE);
		uint64_t got = *(volatile uint64_t *)SHARED_VA;
		if (got < want || got < last) {
			printf("ptchurn: vCPU 1 read a stale page after a remap: expected >= %#lx, got %#lx\n",
			       (unsigned long)want, (unsigned long)got);
			shared_failed = 1;
			return;
		}
		last = got;
	}
}

int main(const struct umbra_boot_info *boot)
{
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 20);
	uint64_t nspaces = cmdline_u64(boot->cmdline, "spaces", 3);
	uint64_t shared_frames[2];
	uint64_t v, err;

	if (nspaces < 1 || nspaces > MAX_SPACES)
		nspaces = 3;
	if (boot->vcpu_id == 1) {
		vcpu_barrier(boot);
		shared_reader();
		vcpu_barrier(boot);
		return 0;
	}
	if (boot->vcpu_id > 1) {
		vcpu_barrier(boot);
		vcpu_barrier(boot);
		return 0;
	}
	/* The shared page lives in the boot address space, which vCPU 1 runs. */
	for (int i = 0; i < 2; i++)
		shared_frames[i] = page_alloc();
	if (!shared_frames[0] || !shared_frames[1] ||
	    pt_map(as_boot(), SHARED_VA, shared_frames[0], PTE_W))
		return 2;
	for (uint64_t s = 0; s < nspaces; s++) {
		if (as_create(&spaces[s]))
			return 2;
		for (int p = 0; p < PAGES; p++)
			if (!(frames[s][p] = page_alloc()) ||
			    pt_map(&spaces[s], USER_BASE + p * 4096ull, frames[s][p], PTE_W))
				return 2;
	}
	vcpu_barrier(boot); /* vCPU 1 starts reading */

	for (uint64_t r = 1; r <= rounds; r++) {
		/* The shared page: write the next generation into the other frame,
		 * remap to it, shoot down, then publish what must be seen. */
		uint64_t next = shared_frames[r & 1];
		*(volatile uint64_t *)next = r;
		pt_map(as_boot(), SHARED_VA, next, PTE_W);
		tlb_invlpg(SHARED_VA);
		__atomic_store_n(&shared_generation, r, __ATOMIC_RELEASE);

		for (uint64_t s = 0; s < nspaces; s++) {
			as_switch(&spaces[s]);
			for (int p = 0; p < PAGES; p++)
				*(volatile uint64_t *)frames[s][p] = stamp((int)s, p, r);
			for (int p = 0; p < PAGES; p++) {
				if (probe_read(USER_BASE + p * 4096ull, &v) ||
				    !check(v == stamp((int)s, p, r), "map: read", r, stamp((int)s, p, r), v))
					return 1;
			}
			/* remap page 0 to page 1's frame */
			pt_map(&spaces[s], USER_BASE, frames[s][1], PTE_W);
			tlb_invlpg(USER_BASE);
			if (probe_read(USER_BASE, &v) || !check(v == stamp((int)s, 1, r), "remap: read", r,
								 stamp((int)s, 1, r), v))
				return 1;
			pt_map(&spaces[s], USER_BASE, frames[s][0], PTE_W);
			tlb_invlpg(USER_BASE);
			/* protect page 2 read-only */
			pt_protect(&spaces[s], USER_BASE + 2 * 4096, 0);
			tlb_invlpg(USER_BASE + 2 * 4096);
			err = probe_write(USER_BASE + 2 * 4096, 0xbad);
			if (!check(err == (PROBE_FAULTED | PF_P | PF_W), "protect: write fault", r,
				   PROBE_FAULTED | PF_P | PF_W, err))
				return 1;
			if (probe_read(USER_BASE + 2 * 4096, &v) ||
			    !check(v == stamp((int)s, 2, r), "protect: read", r, stamp((int)s, 2, r), v))
				return 1;
			pt_protect(&spaces[s], USER_BASE + 2 * 4096, PTE_W);
			tlb_invlpg(USER_BASE + 2 * 4096);
			/* unmap page 3 */
			pt_unmap(&spaces[s], USER_BASE + 3 * 4096);
			tlb_invlpg(USER_BASE + 3 * 4096);
			err = probe_read(USER_BASE + 3 * 4096, &v);
			if (!check(err == PROBE_FAULTED, "unmap: read fault", r, PROBE_FAULTED, err))
				return 1;
			pt_map(&spaces[s], USER_BASE + 3 * 4096, frames[s][3], PTE_W);
			tlb_invlpg(USER_BASE + 3 * 4096);
			/* the demand-zero heap */
			volatile uint64_t *heap = (volatile uint64_t *)(HEAP_BASE + ((r * nspaces + s) << 12));
			if (!check(*heap == 0, "heap: first read", r, 0, *heap))
				return 1;
			*heap = r;
		}
		as_switch(as_boot());
	}
	__atomic_store_n(&shared_done, 1, __ATOMIC_RELEASE);
	vcpu_barrier(boot);
	if (shared_failed)
		return 1;
	printf("ptchurn: %lu rounds in %lu address spaces on %u vCPUs: ok\n", (unsigned long)rounds,
	       (unsigned long)nspaces, boot->nr_vcpus);
	return 0;
}
