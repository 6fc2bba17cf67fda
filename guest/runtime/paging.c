/*
 * Guest page tables, the free-page allocator and the TLB hypercalls.
 */
#include "guest.h"
#include "paging.h"
#include "vcpu.h"

static struct {
	uint64_t next, end;   /* bump allocation of never-used pages */
	uint64_t free_list;   /* pages given back: each holds the next's address */
	volatile int lock;
} pages;

static struct address_space boot_as;
static struct address_space *current_as[UMBRA_MAX_VCPUS];

static void spin_lock(volatile int *lock)
{
	while (__atomic_exchange_n(lock, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
}

static void spin_unlock(volatile int *lock)
{
	__atomic_store_n(lock, 0, __ATOMIC_RELEASE);
}

static uint32_t vcpu_id(void)
{
	return runtime_vcpu_id();
}

void paging_init(const struct umbra_boot_info *boot)
{
	static volatile int ready;

	if (boot->vcpu_id == 0) {
		pages.next = (boot->free_start + 0xfff) & ~0xfffull;
		pages.end = boot->free_end;
		boot_as.cr3 = boot->boot_cr3;
		__atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
	}
	while (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
		cpu_relax();
	current_as[boot->vcpu_id] = &boot_as;
}

uint64_t page_alloc(void)
{
	uint64_t pa = 0;

	spin_lock(&pages.lock);
	if (pages.free_list) {
		pa = pages.free_list;
		pages.free_list = *(uint64_t *)pa;
	} else if (pages.next < pages.end) {
		pa = pages.next;
		pages.next += 4096;
	}
	spin_unlock(&pages.lock);
	if (pa)
		memset((void *)pa, 0, 4096);
	return pa;
}

void page_free(uint64_t pa)
{
	spin_lock(&pages.lock);
	*(uint64_t *)pa = pages.free_list;
	pages.free_list = pa;
	spin_unlock(&pages.lock);
}

struct address_space *as_boot(void)
{
	return &boot_as;
}

struct address_space *as_current(void)
{
	return current_as[vcpu_id()];
}

int as_create(struct address_space *as)
{
	uint64_t pml4 = page_alloc();

	if (!pml4)
		return -1;
	((uint64_t *)pml4)[0] = ((uint64_t *)boot_as.cr3)[0];
	as->cr3 = pml4;
	return 0;
}

void as_switch(struct address_space *as)
{
	hypercall4(UMBRA_HC_SET_CR3, as->cr3, 0, 0, 0);
	__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
	current_as[vcpu_id()] = as;
}

/* The entry for va at level 1, allocating tables on the way if alloc. */
static uint64_t *pte_of(struct address_space *as, uint64_t va, int alloc)
{
	uint64_t *table = (uint64_t *)as->cr3;

	for (int level = 4; level > 1; level--) {
		uint64_t *e = &table[(va >> (12 + 9 * (level - 1))) & 511];
		if (!(*e & PTE_P)) {
			if (!alloc)
				return 0;
			uint64_t t = page_alloc();
			if (!t)
				return 0;
			uint64_t expected = 0;
			/* Another vCPU may install the same table: keep the first. */
			if (!__atomic_compare_exchange_n(e, &expected, t | PTE_P | PTE_W | PTE_U, 0,
							 __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
				page_free(t);
		}
		if (*e & PTE_PS)
			return 0; /* a large page: not ours to split */
		table = (uint64_t *)(*e & PTE_ADDR);
	}
	return &table[(va >> 12) & 511];
}

int pt_map(struct address_space *as, uint64_t va, uint64_t pa, uint64_t flags)
{
	uint64_t *pte = pte_of(as, va, 1);

	if (!pte)
		return -1;
	__atomic_store_n(pte, (pa & PTE_ADDR) | flags | PTE_P, __ATOMIC_RELEASE);
	return 0;
}

uint64_t pt_unmap(struct address_space *as, uint64_t va)
{
	uint64_t *pte = pte_of(as, va, 0);

	return pte ? __atomic_exchange_n(pte, 0, __ATOMIC_ACQ_REL) : 0;
}

uint64_t pt_protect(struct address_space *as, uint64_t va, uint64_t flags)
{
	uint64_t *pte = pte_of(as, va, 0);

	if (!pte || !(*pte & PTE_P))
		return 0;
	return __atomic_exchange_n(pte, (*pte & PTE_ADDR) | flags | PTE_P, __ATOMIC_ACQ_REL);
}

uint64_t pt_lookup(struct address_space *as, uint64_t va)
{
	uint64_t *pte = pte_of(as, va, 0);

	return pte ? *pte : 0;
}

void tlb_invlpg(uint64_t va)
{
	hypercall4(UMBRA_HC_INVLPG, va, 0, 0, 0);
	__asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

void tlb_sync_table(uint64_t table_pa, uint64_t va)
{
	hypercall4(UMBRA_HC_SYNC_TABLE, table_pa, 0, 0, 0);
	__asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

uint64_t pt_table_of(struct address_space *as, uint64_t va)
{
	uint64_t *pte = pte_of(as, va, 0);

	return pte ? (uint64_t)pte & PTE_ADDR : 0;
}

void tlb_flush(void)
{
	hypercall4(UMBRA_HC_FLUSH, 0, 0, 0, 0);
	__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
}

/* Called from the #PF path for the guest's own faults: the demand-zero heap. */
int paging_handle_own_fault(uint64_t cr2, uint32_t error_code)
{
	if (cr2 < HEAP_BASE || cr2 >= HEAP_BASE + HEAP_SIZE || (error_code & PF_P))
		return 0;
	uint64_t pa = page_alloc();
	uint64_t *pte = pa ? pte_of(as_current(), cr2, 1) : 0;
	uint64_t expected = 0;

	if (!pte) {
		if (pa)
			page_free(pa);
		return 0;
	}
	/* Two vCPUs may fault on the same page: the first mapping wins. */
	if (!__atomic_compare_exchange_n(pte, &expected, pa | PTE_W | PTE_NX | PTE_P, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		page_free(pa);
	return 1; /* it was not present: no stale translation to flush */
}
