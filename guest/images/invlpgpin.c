/*
 * invlpgpin: invalidates, many times, the pages it needs mapped at every
 * moment: its IDT, its stack, the code it runs, its #PF handler's code, and
 * a page it pins itself (PIN) -- each with INVLPG and then the invlpg
 * instruction, as a guest does after it changed a mapping. Nothing changed,
 * so on x86 this is harmless: the guest must keep running, read its pinned
 * page, take demand-zero heap faults afterwards, and exit 0.
 *
 * rounds=N (default 1000). Prints "invlpgpin: N rounds: ok"; exits 1 if the
 * pinned page reads wrong.
 */
#include "guest.h"
#include "paging.h"

#define PINNED_VA (USER_BASE + 0x400000)
#define PINNED_VALUE 0x50494e4e4544ull /* "PINNED" */
#define HEAP_PAGES 4

struct idtr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

static uint64_t idt_base(void)
{
	struct idtr idtr;

	__asm__ volatile("sidt %0" : "=m"(idtr));
	return idtr.base;
}

/* The handler address in 64-bit IDT gate @vector. */
static uint64_t gate_handler(uint64_t idt, unsigned int vector)
{
	const volatile uint8_t *g = (const volatile uint8_t *)(idt + 16 * vector);
	uint64_t low = g[0] | (uint64_t)g[1] << 8, mid = g[6] | (uint64_t)g[7] << 8;
	uint64_t high = g[8] | (uint64_t)g[9] << 8 | (uint64_t)g[10] << 16 | (uint64_t)g[11] << 24;

	return low | mid << 16 | high << 32;
}

static uint64_t stack_pointer(void)
{
	uint64_t rsp;

	__asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
	return rsp;
}

int main(const struct umbra_boot_info *boot)
{
	const uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 1000);
	const uint64_t idt = idt_base();
	const uint64_t pages[] = { idt, stack_pointer(), (uint64_t)main, gate_handler(idt, 14),
				   gate_handler(idt, 8), PINNED_VA };
	uint64_t frame = page_alloc();

	if (!frame || pt_map(as_current(), PINNED_VA, frame, PTE_W)) {
		printf("invlpgpin: out of memory\n");
		return 2;
	}
	*(volatile uint64_t *)frame = PINNED_VALUE; /* through the identity map */
	hypercall4(UMBRA_HC_PIN, PINNED_VA, 4096, 0, 0);
	for (uint64_t r = 0; r < rounds; r++) {
		for (unsigned int i = 0; i < sizeof(pages) / sizeof(pages[0]); i++)
			tlb_invlpg(pages[i]);
		uint64_t got = *(volatile uint64_t *)PINNED_VA;
		if (got != PINNED_VALUE) {
			printf("invlpgpin: round %lu: pinned page: expected %#lx, got %#lx\n", (unsigned long)r,
			       (unsigned long)PINNED_VALUE, (unsigned long)got);
			return 1;
		}
	}
	/* The #PF path still works: demand-zero heap pages read zero. */
	for (uint64_t i = 0; i < HEAP_PAGES; i++)
		if (*(volatile uint64_t *)(HEAP_BASE + i * 4096) != 0) {
			printf("invlpgpin: heap page %lu is not zero\n", (unsigned long)i);
			return 1;
		}
	printf("invlpgpin: %lu rounds: ok\n", (unsigned long)rounds);
	return 0;
}
