/*
 * segwrite: fills segment seg=NAME with bytes (offset * 131 + value) & 0xff,
 * value=V (default 1), verifies it, and prints the checksum of the segment.
 * Exits 1 on a mismatch.
 */
#include "guest.h"

int main(const struct umbra_boot_info *boot)
{
	const struct umbra_segment_info *seg;

	if (boot->vcpu_id != 0)
		return 0;
	if (!(seg = cmdline_segment(boot, "segwrite", "seg")))
		return 2;
	uint64_t value = cmdline_u64(boot->cmdline, "value", 1);
	volatile uint8_t *p = (volatile uint8_t *)seg->gpa;
	for (uint64_t off = 0; off < seg->size; off++)
		p[off] = (uint8_t)(off * 131 + value);
	for (uint64_t off = 0; off < seg->size; off++) {
		if (p[off] != (uint8_t)(off * 131 + value)) {
			printf("segwrite: %s+%#lx: expected %#x, got %#x\n", seg->name, (unsigned long)off,
			       (uint8_t)(off * 131 + value), p[off]);
			return 1;
		}
	}
	printf("segwrite: %s filled, sum %#lx\n", seg->name,
	       (unsigned long)fnv1a(FNV_OFFSET, (const void *)seg->gpa, seg->size));
	return 0;
}
