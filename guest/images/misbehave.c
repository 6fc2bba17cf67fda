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
 *   bad-cr3         set_cr3 with a CR3 that is not a page in RAM
 *   pin-huge        pin of more than 64 MiB
 *   pf-write-fetch  page-fault hypercall with an error code that is a write
 *                   and an instruction fetch at once
 *   pf-wide-error-code   page-fault hypercall with an error code of more
 *                   than 32 bits
 *   write-shadow-table   maps a shadow table (in the pool) and writes it
 *   bypass-shadow   loads a CR3 of its own (not umbra's shadow) and writes
 *                   a shadow table through it: the read-only pool stops it
 */
#include "guest.h"
#include "paging.h"

#define NO_RAM_GPA 0xc0000000ull /* 3 GiB: beyond any --mem used in tests */

/* Maps the page at guest-physical gpa at USER_BASE, writable, and writes it. */
static void map_and_write(uint64_t gpa)
{
	if (pt_map(as_current(), USER_BASE, gpa, PTE_W)) {
		printf("misbehave: out of memory for page tables\n");
		return;
	}
	*(volatile uint32_t *)USER_BASE = 0x12345678;
}

/* Runs on page tables of its own, without telling umbra, and writes the
 * shadow table pool through them. */
static void bypass_shadow(const struct umbra_boot_info *boot)
{
	struct address_space own;

	if (as_create(&own) || pt_map(&own, USER_BASE, boot->pool_gpa, PTE_W)) {
		printf("misbehave: out of memory for page tables\n");
		return;
	}
	__asm__ volatile("mov %0, %%cr3" : : "r"(own.cr3) : "memory");
	*(volatile uint64_t *)USER_BASE = 0x12345678;
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
		map_and_write(NO_RAM_GPA);
	else if (strcmp(kind, "write-shadow-table") == 0)
		map_and_write(boot->pool_gpa);
	else if (strcmp(kind, "bypass-shadow") == 0)
		bypass_shadow(boot);
	else if (strcmp(kind, "bad-cr3") == 0)
		hypercall4(UMBRA_HC_SET_CR3, 0x1234, 0, 0, 0);
	else if (strcmp(kind, "pin-huge") == 0)
		hypercall4(UMBRA_HC_PIN, USER_BASE, 1ull << 30, 0, 0);
	else if (strcmp(kind, "pf-write-fetch") == 0)
		hypercall4(UMBRA_HC_PAGE_FAULT, USER_BASE, PF_W | PF_I, 0, 0);
	else if (strcmp(kind, "pf-wide-error-code") == 0)
		hypercall4(UMBRA_HC_PAGE_FAULT, USER_BASE, (1ull << 32) | PF_W, 0, 0);
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
