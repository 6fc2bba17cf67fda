/*
 * A guest image built outside the tree against the installed guest SDK
 * (pkg-config --cflags --libs umbra-guest).  It prints a checksum of work
 * done on every vCPU and exits with 0 when the boot block is consistent.
 */
#include "guest.h"

static uint64_t partial[UMBRA_MAX_VCPUS];

int main(const struct umbra_boot_info *boot)
{
	uint64_t sum = 0;

	for (uint64_t i = 1; i <= 1000; i++)
		sum += i * (boot->vcpu_id + 1);
	partial[boot->vcpu_id] = sum;
	vcpu_barrier(boot);
	if (boot->vcpu_id != 0)
		return 0;
	sum = 0;
	for (uint32_t v = 0; v < boot->nr_vcpus; v++)
		sum += partial[v];
	printf("sdk guest: %u vCPUs, abi %u, sum %lu\n", boot->nr_vcpus, boot->abi_version,
	       (unsigned long)sum);
	return boot->abi_version == UMBRA_ABI_VERSION ? 0 : 3;
}
