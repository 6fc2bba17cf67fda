/*
 * spaces: every vCPU runs an address space of its own, all at the same time:
 * each vCPU creates one, maps a frame of its own at USER_BASE, switches to
 * it, and (between barriers, so that every address space is live at once)
 * checks rounds=N times (default 50) that it reads its own stamp there.
 * Prints one line on vCPU 0 and exits 0, or exits 1 at the first mismatch
 * (2 when memory runs out). Up to UMBRA_MAX_VCPUS vCPUs.
 */
#include "guest.h"
#include "paging.h"

static struct address_space spaces[UMBRA_MAX_VCPUS];
static volatile int failed;

static uint64_t stamp(uint32_t vcpu, uint64_t round)
{
	return 0x5ace000000000000ull | ((uint64_t)vcpu << 32) | round;
}

int main(const struct umbra_boot_info *boot)
{
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 50);
	uint32_t id = boot->vcpu_id;
	uint64_t frame = page_alloc(), v = 0;

	if (!frame || as_create(&spaces[id]) || pt_map(&spaces[id], USER_BASE, frame, PTE_W))
		failed = 2;
	vcpu_barrier(boot);
	if (!failed)
		as_switch(&spaces[id]);
	vcpu_barrier(boot); /* every vCPU is on its own address space */
	for (uint64_t r = 1; r <= rounds; r++) { /* every vCPU meets every barrier */
		if (failed) {
			vcpu_barrier(boot);
			continue;
		}
		*(volatile uint64_t *)frame = stamp(id, r);
		if (probe_read(USER_BASE, &v) || v != stamp(id, r)) {
			printf("spaces: vCPU %u round %lu: expected %#lx at %#lx, got %#lx\n", id, (unsigned long)r,
			       (unsigned long)stamp(id, r), (unsigned long)USER_BASE, (unsigned long)v);
			failed = 1;
		}
		vcpu_barrier(boot);
	}
	if (id != 0)
		return 0;
	if (failed)
		return failed;
	printf("spaces: %u vCPUs, each on its own address space, %lu rounds: ok\n", boot->nr_vcpus,
	       (unsigned long)rounds);
	return 0;
}
