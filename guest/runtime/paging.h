/*
 * Guest page tables under paravirtual shadow paging (docs/abi.md): the guest
 * owns its tables in its RAM and tells umbra about every address-space
 * switch, invlpg and flush; the CPU runs on umbra's shadow of them.
 *
 * Every address space shares PML4 entry 0 with the boot tables (the identity
 * map of RAM and segments, where the runtime, its stacks and page tables
 * live); images map their own pages at PML4 index 1 and above.
 */
#ifndef UMBRA_GUEST_PAGING_H
#define UMBRA_GUEST_PAGING_H

#include <stdint.h>

#include "umbra/abi.h"

#define PTE_P (1ull << 0)
#define PTE_W (1ull << 1)
#define PTE_U (1ull << 2)
#define PTE_A (1ull << 5)
#define PTE_D (1ull << 6)
#define PTE_PS (1ull << 7)
#define PTE_NX (1ull << 63)
#define PTE_ADDR 0x000ffffffffff000ull

#define PF_P (1u << 0)
#define PF_W (1u << 1)
#define PF_U (1u << 2)
#define PF_RSVD (1u << 3)
#define PF_I (1u << 4)

/* Images map their own pages from here (PML4 index 1). */
#define USER_BASE 0x0000008000000000ull
/* The demand-zero heap: a not-present fault here maps a zeroed page. */
#define HEAP_BASE 0x0000010000000000ull
#define HEAP_SIZE (1ull << 30)

struct address_space {
	uint64_t cr3; /* guest-physical address of the PML4 */
};

/* Set up by the runtime before main: free-page allocator, boot address space. */
void paging_init(const struct umbra_boot_info *boot);

/* A zeroed page of free RAM (identity-mapped), or 0 when none is left. */
uint64_t page_alloc(void);
void page_free(uint64_t pa);

/* The boot address space (the boot tables). */
struct address_space *as_boot(void);
/* A new address space sharing the runtime's mappings; 0 or -1 (no memory). */
int as_create(struct address_space *as);
/* This vCPU's current address space. */
struct address_space *as_current(void);
/* Switches this vCPU to as (SET_CR3 hypercall, then a local CR3 reload). */
void as_switch(struct address_space *as);

/* Maps the 4 KiB page at va to pa with flags (PTE_W, PTE_U, PTE_NX); 0, or
 * -1 when a page table cannot be allocated. Does not flush: call tlb_invlpg
 * when va was mapped before. */
int pt_map(struct address_space *as, uint64_t va, uint64_t pa, uint64_t flags);
/* Clears the mapping of va; returns the old entry (0 if none). No flush. */
uint64_t pt_unmap(struct address_space *as, uint64_t va);
/* Replaces the flags of va's mapping; returns the old entry. No flush. */
uint64_t pt_protect(struct address_space *as, uint64_t va, uint64_t flags);
/* The entry that maps va (0 if none). */
uint64_t pt_lookup(struct address_space *as, uint64_t va);

/* After changing a mapping of the current address space (umbra shoots the
 * translation down on every vCPU). */
void tlb_invlpg(uint64_t va);
void tlb_flush(void);
/* After changing the entry for va in the page table at guest-physical
 * table_pa, a table other address spaces also use: every address space's
 * shadow of that table is brought up to date on every vCPU (SYNC_TABLE),
 * then va is invalidated locally. */
void tlb_sync_table(uint64_t table_pa, uint64_t va);
/* The guest-physical address of the page table (level 1) that holds the
 * entry for va, or 0 if there is none. */
uint64_t pt_table_of(struct address_space *as, uint64_t va);

/* The guest's own #PF policy, called by the runtime's #PF handler for a fault
 * that umbra says is the guest's (error_code: the guest tables' view): maps
 * a zeroed page for a not-present fault in the demand-zero heap and returns
 * 1, else returns 0. */
int paging_handle_own_fault(uint64_t cr2, uint32_t error_code);

/* Fault probes: read or write 8 bytes at va; return 0, or the page-fault
 * error code | PROBE_FAULTED if the access faulted (the fault is not
 * reported to umbra as an unexpected exception). */
#define PROBE_FAULTED (1ull << 63)
uint64_t probe_read(uint64_t va, uint64_t *value);
uint64_t probe_write(uint64_t va, uint64_t value);

#endif
