/*
 * memtouch: writes a pattern that depends on the address into mib=N MiB of
 * free RAM (default: all of it), then verifies every word, rounds=R times
 * (default 2). vCPUs split the range. Exits 1 at the first mismatch.
 */
#include "guest.h"

static uint64_t pattern(uint64_t addr, uint64_t round)
{
	return (addr * 0x9e3779b97f4a7c15ull) ^ (round << 56) ^ 0x5a5a5a5a5a5a5a5aull;
}

static volatile uint32_t failures;

int main(const struct umbra_boot_info *boot)
{
	uint64_t start = (boot->free_start + 0xfff) & ~0xfffull;
	uint64_t avail = boot->free_end - start;
	uint64_t bytes = cmdline_u64(boot->cmdline, "mib", avail >> 20) << 20;
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 2);

	if (bytes > avail || bytes == 0) {
		if (boot->vcpu_id == 0)
			printf("memtouch: mib=%lu: only %lu MiB free\n", (unsigned long)(bytes >> 20),
			       (unsigned long)(avail >> 20));
		return 2;
	}
	uint64_t share = (bytes / boot->nr_vcpus) & ~7ull;
	uint64_t lo = start + share * boot->vcpu_id;
	uint64_t hi = boot->vcpu_id + 1 == boot->nr_vcpus ? start + bytes : lo + share;
	for (uint64_t r = 0; r < rounds; r++) {
		for (uint64_t a = lo; a < hi; a += 8)
			*(volatile uint64_t *)a = pattern(a, r);
		for (uint64_t a = lo; a < hi; a += 8) {
			uint64_t got = *(volatile uint64_t *)a;
			if (got != pattern(a, r)) {
				printf("memtouch: round %lu: at %#lx expected %#lx, got %#lx\n", (unsigned long)r,
				       (unsigned long)a, (unsigned long)pattern(a, r), (unsigned long)got);
				__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
				break;
			}
		}
	}
	vcpu_barrier(boot);
	if (boot->vcpu_id == 0)
		printf("memtouch: %lu MiB x %lu rounds on %u vCPUs: %s\n", (unsigned long)(bytes >> 20),
		       (unsigned long)rounds, boot->nr_vcpus, failures ? "MISMATCH" : "ok");
	return failures ? 1 : 0;
}
