/*
 * Per-vCPU descriptor tables: each vCPU's own GDT and 64-bit TSS (with an
 * IST stack for NMI, #DF and #MC), and the vCPU id derived from them.
 */
#include "vcpu.h"

#define GDT_ENTRIES 5 /* null, code64, data, TSS (two slots) */
#define IST_STACK_SIZE 8192u

struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));
_Static_assert(sizeof(struct tss64) == 104, "64-bit TSS is 104 bytes");

/* Resident (docs/abi.md, "What stays resident"): the CPU reads them while it
 * delivers an exception, when it cannot take a page fault. */
static uint64_t gdt[UMBRA_MAX_VCPUS][GDT_ENTRIES] __attribute__((aligned(16), section(".bss.resident")));
static struct tss64 tss[UMBRA_MAX_VCPUS] __attribute__((aligned(16), section(".bss.resident")));

void vcpu_gdt_load(const struct umbra_boot_info *boot)
{
	uint32_t id = boot->vcpu_id;
	uint64_t *g = gdt[id];
	struct tss64 *t = &tss[id];
	uint64_t base = (uint64_t)t;
	uint64_t limit = sizeof(*t) - 1;
	struct descriptor_table_pointer gdtr = { sizeof(gdt[id]) - 1, (uint64_t)g };

	t->ist[0] = boot->stack_bottom + IST_STACK_SIZE;
	t->iomap_base = sizeof(*t);
	g[0] = 0;
	g[1] = 0x00af9b000000ffffull; /* code: L, P, DPL 0, execute/read, accessed */
	g[2] = 0x00cf93000000ffffull; /* data: P, DPL 0, read/write, accessed */
	g[3] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
	       ((limit >> 16 & 0xf) << 48) | ((base >> 24 & 0xff) << 56);
	g[4] = base >> 32;
	__asm__ volatile("lgdt %0\n\t"
			 "mov %1, %%ds\n\t"
			 "mov %1, %%es\n\t"
			 "mov %1, %%ss\n\t"
			 "mov %1, %%fs\n\t"
			 "mov %1, %%gs\n\t"
			 "pushq %2\n\t"
			 "leaq 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:\n\t"
			 "ltr %w3"
			 :
			 : "m"(gdtr), "r"((uint64_t)UMBRA_SEL_DATA), "i"((uint64_t)UMBRA_SEL_CODE64),
			   "r"((uint64_t)UMBRA_SEL_TSS)
			 : "rax", "memory");
}

/* Resident: the #PF path calls it. */
__attribute__((section(".text.resident"), noinline)) uint32_t runtime_vcpu_id(void)
{
	struct descriptor_table_pointer gdtr;

	__asm__ volatile("sgdt %0" : "=m"(gdtr));
	if (gdtr.base < (uint64_t)gdt || gdtr.base >= (uint64_t)(gdt + UMBRA_MAX_VCPUS))
		return UMBRA_MAX_VCPUS; /* still on the boot GDT */
	return (uint32_t)((gdtr.base - (uint64_t)gdt) / sizeof(gdt[0]));
}
