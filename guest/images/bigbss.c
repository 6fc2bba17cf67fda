/*
 * bigbss: a 48 MiB static array, all bss, which umbra must not fault in at
 * boot (docs/abi.md, "What stays resident"): touch=N writes a pattern that
 * depends on the address over the array's first N MiB (default 0: none),
 * then verifies every word. Exits 1 at the first mismatch, 2 on a bad N.
 */
#include "guest.h"

#define ARRAY_MIB 48u

static uint64_t array[(uint64_t)ARRAY_MIB << 17]; /* 8-byte words */

static uint64_t pattern(const uint64_t *p)
{
	return (uint64_t)p * 0x9e3779b97f4a7c15ull ^ 0xa5a5a5a5a5a5a5a5ull;
}

int main(const struct umbra_boot_info *boot)
{
	uint64_t mib = cmdline_u64(boot->cmdline, "touch", 0);
	uint64_t words = mib << 17;

	if (mib > ARRAY_MIB) {
		printf("bigbss: touch=%lu: the array has %u MiB\n", (unsigned long)mib, ARRAY_MIB);
		return 2;
	}
	for (uint64_t i = 0; i < words; i++)
		((volatile uint64_t *)array)[i] = pattern(&array[i]);
	for (uint64_t i = 0; i < words; i++) {
		uint64_t got = ((volatile uint64_t *)array)[i];
		if (got != pattern(&array[i])) {
			printf("bigbss: at %p expected %#lx, got %#lx\n", (void *)&array[i],
			       (unsigned long)pattern(&array[i]), (unsigned long)got);
			return 1;
		}
	}
	printf("bigbss: %lu of %u MiB at %p ok\n", (unsigned long)mib, ARRAY_MIB, (void *)array);
	return 0;
}
