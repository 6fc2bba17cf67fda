/*
 * roomhog: asks for more of umbra's bounded resources than a VM may have,
 * as named on the command line. Each kind must stop the VM with a clear
 * error (UMBRA_STATUS_GUEST_ERROR) and leave other VMs running.
 *
 *   pin-total    PINs of 1 MiB each until they would cover more than
 *                UMBRA_PIN_TOTAL_MAX bytes in all
 *   flush-ack    FLUSH_ACK with no shootdown NMI received
 *   pin-tables   PINs of two mapped pages that straddle a 512 GiB boundary
 *                each (six shadow tables a pin): more tables than a small
 *                table quota holds, so pre-faulting them cannot fit
 */
#include "guest.h"
#include "paging.h"

#define MIB (1ull << 20)
#define STRADDLE_PAGES 2

/* Pins 1 MiB ranges (unmapped: nothing to pre-fault) until stopped. */
static void pin_total(void)
{
	for (uint64_t i = 0; i * MIB <= UMBRA_PIN_TOTAL_MAX; i++)
		hypercall4(UMBRA_HC_PIN, USER_BASE + i * MIB, MIB, 0, 0);
}

/* Maps and pins two pages around each 512 GiB boundary from PML4 index 3
 * on (above the heap), as many as the pins left allow. */
static void pin_tables(const struct umbra_boot_info *boot)
{
	uint64_t page = (boot->free_start + 0xfff) & ~0xfffull;

	for (uint64_t k = 3; k < 3 + UMBRA_MAX_PINS; k++) {
		uint64_t va = (k << 39) - 0x1000;

		for (uint64_t p = 0; p < STRADDLE_PAGES; p++) {
			if (pt_map(as_current(), va + p * 0x1000, page, PTE_W)) {
				printf("roomhog: out of memory for page tables\n");
				return;
			}
		}
		hypercall4(UMBRA_HC_PIN, va, STRADDLE_PAGES * 0x1000, 0, 0);
	}
}

int main(const struct umbra_boot_info *boot)
{
	const char *kind = boot->cmdline;

	if (boot->vcpu_id != 0)
		return 0;
	printf("roomhog: %s\n", kind);
	if (strcmp(kind, "pin-total") == 0)
		pin_total();
	else if (strcmp(kind, "flush-ack") == 0)
		hypercall4(UMBRA_HC_FLUSH_ACK, 0, 0, 0, 0);
	else if (strcmp(kind, "pin-tables") == 0)
		pin_tables(boot);
	else {
		printf("roomhog: unknown kind '%s'\n", kind);
		return 2;
	}
	printf("roomhog: %s was not stopped\n", kind);
	return 1;
}
