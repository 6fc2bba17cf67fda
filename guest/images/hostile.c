/*
 * The pool view, the mailbox and the generator of hostile.h.
 */
#include "guest.h"
#include "hostile.h"

#define PD_SPAN (1ull << 30) /* what one page directory of 2 MiB pages maps */

int pool_view_create(const struct umbra_boot_info *boot, struct pool_view *view)
{
	uint64_t pdpt;

	view->pool_gpa = boot->pool_gpa;
	view->nr_pages = boot->pool_size / 4096;
	if (as_create(&view->own) || !(pdpt = page_alloc()))
		return -1;
	((uint64_t *)view->own.cr3)[(POOL_VA >> 39) & 511] = pdpt | PTE_P | PTE_W;
	for (uint64_t off = 0; off < boot->pool_size; off += PD_SPAN) {
		uint64_t pd = page_alloc();

		if (!pd)
			return -1;
		((uint64_t *)pdpt)[off / PD_SPAN] = pd | PTE_P | PTE_W;
		for (uint64_t i = 0; i < 512 && off + i * (2ull << 20) < boot->pool_size; i++)
			((uint64_t *)pd)[i] = (boot->pool_gpa + off + i * (2ull << 20)) | PTE_P | PTE_W | PTE_PS;
	}
	return 0;
}

uint64_t raw_cr3_enter(const struct pool_view *view)
{
	uint64_t old = read_cr3();

	__asm__ volatile("mov %0, %%cr3" : : "r"(view->own.cr3) : "memory");
	return old;
}

void raw_cr3_leave(uint64_t cr3)
{
	__asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

struct mailbox *mailbox_get(const struct umbra_boot_info *boot, const char *prog)
{
	const struct umbra_segment_info *seg = cmdline_segment(boot, prog, "mbox");

	if (seg && !(seg->flags & UMBRA_SEGMENT_WRITABLE)) {
		printf("%s: mailbox segment '%s' is not writable\n", prog, seg->name);
		return NULL;
	}
	return seg ? (struct mailbox *)seg->gpa : NULL;
}

uint64_t mailbox_wait(volatile uint64_t *flag, uint64_t wait_s)
{
	uint64_t start = read_tsc(), v;

	while (!(v = __atomic_load_n(flag, __ATOMIC_ACQUIRE)) && read_tsc() - start < wait_s * 1000000000ull)
		cpu_relax();
	return v;
}

void rng_seed(struct rng *rng, uint64_t seed)
{
	rng->state = seed ? seed : 0x9e3779b97f4a7c15ull;
	for (int i = 0; i < 4; i++)
		rng_next(rng);
}

uint64_t rng_next(struct rng *rng)
{
	uint64_t x = rng->state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng->state = x;
	return x * 0x2545f4914f6cdd1dull;
}
