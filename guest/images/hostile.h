/*
 * What the hostile images (attack.c, fuzz.c) share: a view of the shadow
 * table pool through page tables of the guest's own, loaded with a plain
 * `mov` to CR3 behind umbra's back (no SET_CR3: with nested paging the load
 * does not exit), a mailbox in a shared segment, and a seeded generator.
 *
 * These images do what docs/abi.md says a guest must never do; umbra must
 * survive it and keep every other VM's memory out of their reach.
 */
#ifndef UMBRA_GUEST_HOSTILE_H
#define UMBRA_GUEST_HOSTILE_H

#include <stdint.h>

#include "umbra/abi.h"
#include "paging.h"

/* The pool's view: PML4 index 3, clear of USER_BASE (1) and the heap (2). */
#define POOL_VA (3ull << 39)

/*
 * The guest's own address space that maps the whole pool, writable, at
 * POOL_VA with 2 MiB pages, besides PML4 entry 0 (RAM, segments) of the boot
 * tables.
 */
struct pool_view {
	struct address_space own;
	uint64_t pool_gpa, nr_pages;
};

/* 0, or -1 when no page is left for the tables. */
int pool_view_create(const struct umbra_boot_info *boot, struct pool_view *view);
/* Loads view->own into CR3 with a plain mov; returns the CR3 it replaced
 * (umbra's shadow root), which raw_cr3_leave takes. */
uint64_t raw_cr3_enter(const struct pool_view *view);
void raw_cr3_leave(uint64_t cr3);
/* Entry @index of pool page @page, through the view (valid between
 * raw_cr3_enter and raw_cr3_leave). */
static inline volatile uint64_t *pool_entry(uint64_t page, unsigned int index)
{
	return (volatile uint64_t *)(POOL_VA + page * 4096 + index * 8ull);
}
static inline int pool_holds(const struct pool_view *view, uint64_t addr)
{
	return addr >= view->pool_gpa && addr < view->pool_gpa + view->nr_pages * 4096;
}

/*
 * The mailbox: the first page of a segment that the VMs of an attack
 * attach (writable). Each flag goes from 0 to nonzero once.
 */
struct mailbox {
	volatile uint64_t ready;   /* the victim has mapped its target */
	volatile uint64_t done;    /* the attacker has finished: 1 + entries rewritten */
	volatile uint64_t written; /* the victim has written again after done */
	volatile uint64_t read;    /* the attacker has read its trap */
};

/* The mailbox in the segment named by the command line's mbox=, or NULL
 * after printing why not. */
struct mailbox *mailbox_get(const struct umbra_boot_info *boot, const char *prog);
/* Waits until *flag is nonzero or about wait_s seconds of TSC ticks (at an
 * assumed 1 GHz) went by; returns the flag's value (0 on timeout). */
uint64_t mailbox_wait(volatile uint64_t *flag, uint64_t wait_s);

/* xorshift64*: a seeded, reproducible sequence (seed 0 is replaced). */
struct rng {
	uint64_t state;
};
void rng_seed(struct rng *rng, uint64_t seed);
uint64_t rng_next(struct rng *rng);
/* Uniform in 0 .. n-1 (n > 0). */
static inline uint64_t rng_below(struct rng *rng, uint64_t n)
{
	return rng_next(rng) % n;
}

/* This vCPU's TLB, flushed with a plain CR3 reload (no hypercall). */
static inline void local_tlb_flush(void)
{
	__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
}

#endif
