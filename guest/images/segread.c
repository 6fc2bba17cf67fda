/*
 * segread: checksums (FNV-1a 64) segment seg=NAME rounds=R times (default 3)
 * and checks that every round gives the same sum, and the sum given as
 * expect=0x... if any. Prints the sum. Exits 1 on any mismatch.
 */
#include "guest.h"

int main(const struct umbra_boot_info *boot)
{
	const struct umbra_segment_info *seg;

	if (boot->vcpu_id != 0)
		return 0;
	if (!(seg = cmdline_segment(boot, "segread", "seg")))
		return 2;
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 3);
	uint64_t expect = cmdline_u64(boot->cmdline, "expect", 0);
	uint64_t first = 0;
	for (uint64_t r = 0; r < rounds; r++) {
		uint64_t sum = fnv1a(FNV_OFFSET, (const void *)seg->gpa, seg->size);
		if (r == 0)
			first = sum;
		if (sum != first || (expect && sum != expect)) {
			printf("segread: %s round %lu: expected %#lx, got %#lx\n", seg->name, (unsigned long)r,
			       (unsigned long)(expect ? expect : first), (unsigned long)sum);
			return 1;
		}
	}
	printf("segread: %s at %#lx, %lu MiB, %lu rounds: sum %#lx\n", seg->name, (unsigned long)seg->gpa,
	       (unsigned long)(seg->size >> 20), (unsigned long)rounds, (unsigned long)first);
	return 0;
}
