/*
 * fault: raises the exception named on the command line, on purpose, so that
 * the reporting path is tested. Each kind states what umbra must report.
 *
 *   pf-write     write to an unmapped address   #PF, error 0x2, CR2 = FAULT_ADDR
 *   pf-read      read of an unmapped address    #PF, error 0x0, CR2 = FAULT_ADDR
 *   ud           ud2                            #UD
 *   de           divide by zero                 #DE
 *   gp           non-canonical access           #GP, error 0
 *   triple       IDT limit 0, then #UD          triple fault (shutdown)
 */
#include "guest.h"

#define FAULT_ADDR 0x00007f0000001000ull /* beyond any guest RAM: never mapped */

static volatile int zero;

int main(const struct umbra_boot_info *boot)
{
	const char *kind = boot->cmdline[0] ? boot->cmdline : "pf-write";

	printf("fault: raising %s\n", kind);
	if (strcmp(kind, "pf-write") == 0)
		*(volatile uint64_t *)FAULT_ADDR = 1;
	else if (strcmp(kind, "pf-read") == 0)
		(void)*(volatile uint64_t *)FAULT_ADDR;
	else if (strcmp(kind, "ud") == 0)
		__asm__ volatile("ud2");
	else if (strcmp(kind, "de") == 0) {
		/* An explicit div: the compiler may turn 1 / x into a comparison. */
		uint32_t eax = 1, edx = 0;
		__asm__ volatile("divl %2" : "+a"(eax), "+d"(edx) : "r"((uint32_t)zero));
	}
	else if (strcmp(kind, "gp") == 0)
		(void)*(volatile uint64_t *)0x8000000000000000ull;
	else if (strcmp(kind, "triple") == 0) {
		struct {
			uint16_t limit;
			uint64_t base;
		} __attribute__((packed)) empty = { 0, 0 };
		__asm__ volatile("lidt %0; ud2" : : "m"(empty));
	} else {
		printf("fault: unknown kind '%s'\n", kind);
		return 2;
	}
	printf("fault: %s did not fault\n", kind);
	return 1;
}
