/*
 * misbehave: breaks a rule of the ABI on purpose, as named on the command
 * line, so that umbra's handling of a misbehaving guest is tested. Each kind
 * must stop the VM with a clear error (UMBRA_STATUS_GUEST_ERROR).
 *
 *   bad-hypercall   hypercall number 999
 *   bad-exit-code   exit hypercall with code 200 (> UMBRA_EXIT_CODE_MAX)
 *   bad-port        out to port 0x80, which has no device
 *   mmio            maps guest-physical 0xc0000000 (no RAM there) and writes
 *   halt            every vCPU halts with interrupts off, nobody exits
 *   console-outside-ram   console write of a buffer beyond RAM
 *   console-too-long      console write longer than UMBRA_CONSOLE_WRITE_MAX
 */
#include "guest.h"

#define NO_RAM_GPA 0xc0000000ull /* 3 GiB: beyond any --mem used in tests */

static void map_and_write_no_ram(void)
{
	/* The boot tables identity-map RAM; add a 2 MiB mapping of NO_RAM_GPA in
	 * the PD that covers its GiB (allocating the PD from free RAM if absent). */
	uint64_t *pml4 = (uint64_t *)(read_cr3() & ~0xfffull);
	uint64_t *pdpt = (uint64_t *)(pml4[0] & 0x000ffffffffff000ull);
	uint64_t *pde = &pdpt[NO_RAM_GPA >> 30];
	static uint64_t pd[512] __attribute__((aligned(4096)));

	if (!(*pde & 1))
		*pde = (uint64_t)pd | 0x3;
	uint64_t *pd_table = (uint64_t *)(*pde & 0x000ffffffffff000ull);
	pd_table[(NO_RAM_GPA >> 21) & 511] = NO_RAM_GPA | 0x83; /* P, W, PS */
	__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
	*(volatile uint32_t *)NO_RAM_GPA = 0x12345678;
}

int main(const struct umbra_boot_info *boot)
{
	const char *kind = boot->cmdline;

	if (boot->vcpu_id == 0)
		printf("misbehave: %s\n", kind);
	if (strcmp(kind, "halt") == 0)
		cpu_halt_forever();
	if (boot->vcpu_id != 0)
		return 0;
	if (strcmp(kind, "bad-hypercall") == 0)
		printf("misbehave: hypercall 999 returned %ld\n", hypercall4(999, 1, 2, 3, 4));
	else if (strcmp(kind, "bad-exit-code") == 0)
		hypercall4(UMBRA_HC_EXIT, 200, 0, 0, 0);
	else if (strcmp(kind, "bad-port") == 0)
		__asm__ volatile("outb %%al, $0x80" : : "a"(0));
	else if (strcmp(kind, "mmio") == 0)
		map_and_write_no_ram();
	else if (strcmp(kind, "console-outside-ram") == 0)
		hypercall4(UMBRA_HC_CONSOLE_WRITE, NO_RAM_GPA, 16, 0, 0);
	else if (strcmp(kind, "console-too-long") == 0)
		hypercall4(UMBRA_HC_CONSOLE_WRITE, (unsigned long)boot, UMBRA_CONSOLE_WRITE_MAX + 1, 0, 0);
	else {
		printf("misbehave: unknown kind '%s'\n", kind);
		return 2;
	}
	printf("misbehave: %s was not stopped\n", kind);
	return 1;
}
