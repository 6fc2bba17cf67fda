/*
 * The boot state a guest starts with (docs/abi.md, "Boot state"): the boot
 * GDT and TSS, identity page tables, one boot-information block per vCPU and
 * the long-mode registers. Pure code: it fills guest RAM and register
 * structures and calls no KVM (kvm.c hands them to KVM), so that the native
 * tests check it.
 */
#include <linux/kvm.h>
#include <string.h>

#include "umbra/abi.h"
#include "vmm.h"
#include "x86.h"

_Static_assert(UMBRA_TSS_GPA + X86_TSS64_SIZE <= UMBRA_PT_GPA &&
		       UMBRA_GDT_GPA + BOOT_GDT_ENTRIES * X86_DESC_SIZE <= UMBRA_TSS_GPA,
	       "boot GDT, TSS and page tables do not overlap");
_Static_assert(UMBRA_SEL_CODE64 == 1 * X86_DESC_SIZE && UMBRA_SEL_DATA == 2 * X86_DESC_SIZE &&
		       UMBRA_SEL_TSS == 3 * X86_DESC_SIZE,
	       "the selectors index the boot GDT's entries");

#define BOOT_INFO_ALIGN 64ull

uint64_t vm_image_load_max(uint64_t mem, unsigned int vcpus)
{
	return mem - (uint64_t)vcpus * UMBRA_VCPU_STACK_SIZE;
}

/* A 64-bit TSS descriptor's low entry (Intel SDM vol. 3A 8.2.3): limit[15:0]
 * in bits 0-15, base[23:0] in bits 16-39, the access byte in bits 40-47,
 * base[31:24] in bits 56-63 (limit[19:16] and the flags stay 0). */
static uint64_t tss_descriptor_low(uint64_t base, uint64_t limit)
{
	return (limit & 0xffff) | ((base & 0xffffff) << 16) | (BOOT_GDT_TSS_ACCESS << 40) |
	       ((base >> 24 & 0xff) << 56);
}

void boot_write_gdt(void *ram)
{
	uint64_t *gdt = (uint64_t *)((char *)ram + UMBRA_GDT_GPA);

	gdt[0] = 0;
	gdt[UMBRA_SEL_CODE64 / X86_DESC_SIZE] = BOOT_GDT_CODE64;
	gdt[UMBRA_SEL_DATA / X86_DESC_SIZE] = BOOT_GDT_DATA;
	gdt[UMBRA_SEL_TSS / X86_DESC_SIZE] = tss_descriptor_low(UMBRA_TSS_GPA, X86_TSS64_SIZE - 1);
	gdt[UMBRA_SEL_TSS / X86_DESC_SIZE + 1] = (uint64_t)UMBRA_TSS_GPA >> 32; /* base[63:32] */
	/* TSS: all zero but the I/O map base, which points past its end. */
	*(uint16_t *)((char *)ram + UMBRA_TSS_GPA + X86_TSS64_IOMAP_BASE) = X86_TSS64_SIZE;
}

/* Boot page-table builder: page-table pages come from a bump allocator that
 * starts after the PML4 and the PDPT and must stay below the image. */
struct boot_tables {
	uint64_t *ram;
	uint64_t pml4, pdpt, next;
};

static uint64_t boot_table_alloc(struct boot_tables *bt)
{
	uint64_t page = bt->next;

	bt->next += X86_PAGE_SIZE;
	return page;
}

/* Boot table entries: directories accessed, leaves accessed and dirty (as
 * Linux presets its kernel mappings), so that no first access or write
 * of a boot mapping needs A/D written, and a fault may map the resident
 * neighbours of its page writable (fault-around). */
#define BOOT_DIR (X86_PTE_PRESENT | X86_PTE_WRITABLE | X86_PTE_ACCESSED)
#define BOOT_LEAF (BOOT_DIR | X86_PTE_DIRTY)

/* Identity-maps the 2 MiB page at gpa (2 MiB aligned, below 512 GiB). */
static void boot_map_2m(struct boot_tables *bt, uint64_t gpa)
{
	uint64_t *pdpte = &bt->ram[bt->pdpt / 8 + (gpa >> X86_HUGE_PAGE_SHIFT)];

	if (!(*pdpte & X86_PTE_PRESENT))
		*pdpte = boot_table_alloc(bt) | BOOT_DIR;
	uint64_t pd = *pdpte & X86_PTE_ADDR_MASK;
	bt->ram[pd / 8 + ((gpa >> X86_PD_SHIFT) & (X86_ENTRIES_PER_TABLE - 1))] = gpa | BOOT_LEAF | X86_PTE_LARGE;
}

/* The first 2 MiB through a page table, without page 0. */
static void boot_map_first_2m(struct boot_tables *bt)
{
	uint64_t pd0 = bt->ram[bt->pdpt / 8] & X86_PTE_ADDR_MASK;

	if (!pd0) {
		pd0 = boot_table_alloc(bt);
		bt->ram[bt->pdpt / 8] = pd0 | BOOT_DIR;
	}
	uint64_t pt0 = boot_table_alloc(bt);
	bt->ram[pd0 / 8] = pt0 | BOOT_DIR;
	for (uint64_t i = 1; i < X86_ENTRIES_PER_TABLE; i++)
		bt->ram[pt0 / 8 + i] = (i * X86_PAGE_SIZE) | BOOT_LEAF;
}

uint64_t boot_write_page_tables(const struct boot_layout *l, uint64_t *end)
{
	struct boot_tables bt = { l->ram, UMBRA_PT_GPA, UMBRA_PT_GPA + X86_PAGE_SIZE,
				  UMBRA_PT_GPA + 2 * X86_PAGE_SIZE };
	uint64_t nr_pds = (l->ram_size + (1ull << X86_HUGE_PAGE_SHIFT) - 1) >> X86_HUGE_PAGE_SHIFT;

	/* A segment needs one page directory per GiB, plus one at each end
	 * when it is not GiB-aligned. */
	for (unsigned int i = 0; i < l->nr_segments; i++)
		nr_pds += (l->segments[i]->size >> X86_HUGE_PAGE_SHIFT) + 2;
	if (bt.next + (nr_pds + 1) * X86_PAGE_SIZE > UMBRA_IMAGE_MIN_GPA)
		return 0;
	bt.ram[bt.pml4 / 8] = bt.pdpt | BOOT_DIR;
	for (uint64_t gpa = X86_LARGE_PAGE_SIZE; gpa < l->ram_size; gpa += X86_LARGE_PAGE_SIZE)
		boot_map_2m(&bt, gpa);
	boot_map_first_2m(&bt);
	for (unsigned int i = 0; i < l->nr_segments; i++)
		for (uint64_t off = 0; off < l->segments[i]->size; off += X86_LARGE_PAGE_SIZE)
			boot_map_2m(&bt, l->segments[i]->gpa + off);
	*end = bt.next;
	return bt.pml4;
}

/* The bottom of vCPU id's stack region. */
static uint64_t stack_region(uint64_t ram_size, unsigned int id)
{
	return ram_size - (uint64_t)(id + 1) * UMBRA_VCPU_STACK_SIZE;
}

uint64_t boot_info_gpa(uint64_t ram_size, unsigned int id)
{
	uint64_t top = stack_region(ram_size, id) + UMBRA_VCPU_STACK_SIZE;

	return (top - sizeof(struct umbra_boot_info)) & ~(BOOT_INFO_ALIGN - 1);
}

_Static_assert(sizeof(struct umbra_boot_info) + BOOT_INFO_ALIGN <= X86_PAGE_SIZE,
	       "the boot-information block fits in the top page of its stack region");

uint64_t boot_stack_top(uint64_t ram_size, unsigned int id)
{
	return boot_info_gpa(ram_size, id) & ~(X86_PAGE_SIZE - 1);
}

void boot_write_info(const struct boot_layout *l, unsigned int id, uint64_t free_start, uint64_t boot_cr3)
{
	uint64_t info_gpa = boot_info_gpa(l->ram_size, id);
	struct umbra_boot_info *bi = (struct umbra_boot_info *)((char *)l->ram + info_gpa);

	memset(bi, 0, sizeof(*bi));
	bi->magic = UMBRA_BOOT_MAGIC;
	bi->abi_version = UMBRA_ABI_VERSION;
	bi->size = sizeof(*bi);
	bi->vcpu_id = id;
	bi->nr_vcpus = l->nr_vcpus;
	bi->nr_segments = l->nr_segments;
	for (unsigned int i = 0; i < l->nr_segments; i++) {
		struct umbra_segment_info *si = &bi->segments[i];
		memcpy(si->name, l->segments[i]->name, sizeof(si->name));
		si->gpa = l->segments[i]->gpa;
		si->size = l->segments[i]->size;
		si->flags = l->segments[i]->writable ? UMBRA_SEGMENT_WRITABLE : 0;
	}
	bi->ram_size = l->ram_size;
	bi->free_start = free_start;
	bi->free_end = vm_image_load_max(l->ram_size, l->nr_vcpus);
	bi->stack_bottom = stack_region(l->ram_size, id);
	bi->stack_top = boot_stack_top(l->ram_size, id);
	memcpy(bi->cmdline, l->cmdline, strnlen(l->cmdline, sizeof(bi->cmdline) - 1));
	bi->boot_cr3 = boot_cr3;
	bi->pool_gpa = SHADOW_POOL_GPA;
	bi->pool_size = l->pool_size;
}

/* A flat segment register: base 0, limit 4 GiB, present, DPL 0. */
static void set_flat_segment(struct kvm_segment *seg, uint16_t selector, uint8_t type, bool code)
{
	*seg = (struct kvm_segment){
		.base = 0, .limit = X86_SEG_LIMIT_4G, .selector = selector, .type = type,
		.present = 1, .dpl = 0, .db = code ? 0 : 1, .s = 1, .l = code ? 1 : 0, .g = 1,
	};
}

void boot_set_sregs(struct kvm_sregs *sregs, uint64_t cr3, bool nxe)
{
	set_flat_segment(&sregs->cs, UMBRA_SEL_CODE64, X86_SEG_TYPE_CODE_RX_ACCESSED, true);
	set_flat_segment(&sregs->ds, UMBRA_SEL_DATA, X86_SEG_TYPE_DATA_RW_ACCESSED, false);
	sregs->es = sregs->fs = sregs->gs = sregs->ss = sregs->ds;
	sregs->tr = (struct kvm_segment){ .base = UMBRA_TSS_GPA, .limit = X86_TSS64_SIZE - 1,
					  .selector = UMBRA_SEL_TSS, .type = X86_SEG_TYPE_TSS64_BUSY,
					  .present = 1 };
	sregs->ldt = (struct kvm_segment){ .unusable = 1, .type = X86_SEG_TYPE_LDT, .present = 0 };
	sregs->gdt.base = UMBRA_GDT_GPA;
	sregs->gdt.limit = BOOT_GDT_ENTRIES * X86_DESC_SIZE - 1;
	sregs->idt.base = 0;
	sregs->idt.limit = 0; /* the guest installs its own IDT first thing */
	sregs->cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
	sregs->cr3 = cr3;
	sregs->cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
	sregs->efer = X86_EFER_LME | X86_EFER_LMA | (nxe ? X86_EFER_NXE : 0);
}

void boot_set_regs(struct kvm_regs *regs, uint64_t entry, uint64_t info_gpa, uint64_t stack_top)
{
	memset(regs, 0, sizeof(*regs));
	regs->rip = entry;
	regs->rsp = stack_top;
	regs->rdi = info_gpa;
	regs->rflags = X86_RFLAGS_FIXED;
}
