/*
 * owncr3: reads its evicted data back through its own page tables, loaded
 * with a plain mov to CR3 (no SET_CR3 hypercall).
 *
 *   mib=N      how much free RAM it writes (default: all of it)
 *   rounds=R   passes under its own CR3 (default 2)
 *
 * It first writes a pattern over N MiB through umbra's shadow, as any guest
 * does; under a memory limit smaller than that, the pages written first are
 * swapped out by the time it finishes. Then it loads the boot page tables
 * (boot_cr3, the identity map of RAM) into CR3 itself: with nested paging
 * the load does not exit, the CPU walks the guest's own tables and reaches
 * RAM through KVM's nested page tables alone, so every evicted page (the
 * data, and the boot tables themselves) comes back only through the host's
 * fault on umbra's mapping of the memfd. It verifies every word, then, R
 * times, writes a new pattern and verifies it, all under its own CR3 (so
 * that pages written there are evicted and read back too), and exits from
 * there: it never returns to umbra's shadow. Exits 1 at a mismatch.
 *
 * The runtime's handlers stay usable: the IDT, GDT, stacks and handler code
 * are identity-mapped by the boot tables, and the NMI handler's CR3 reload
 * reloads the guest's own CR3.
 */
#include "guest.h"

static uint64_t pattern(uint64_t addr, uint64_t round)
{
	return (addr * 0xd6e8feb86659fd93ull) ^ (round << 52) ^ 0x0c3c3c3c3c3c3c3cull;
}

static void fill(uint64_t lo, uint64_t hi, uint64_t round)
{
	for (uint64_t a = lo; a < hi; a += 8)
		*(volatile uint64_t *)a = pattern(a, round);
}

/* 0, or -1 after printing the first mismatch. */
static int verify(uint64_t lo, uint64_t hi, uint64_t round, const char *where)
{
	for (uint64_t a = lo; a < hi; a += 8) {
		uint64_t got = *(volatile uint64_t *)a;

		if (got != pattern(a, round)) {
			printf("owncr3: %s, round %lu: at %#lx expected %#lx, got %#lx\n", where, (unsigned long)round,
			       (unsigned long)a, (unsigned long)pattern(a, round), (unsigned long)got);
			return -1;
		}
	}
	return 0;
}

int main(const struct umbra_boot_info *boot)
{
	uint64_t lo = (boot->free_start + 0xfff) & ~0xfffull;
	uint64_t avail = boot->free_end - lo;
	uint64_t bytes = cmdline_u64(boot->cmdline, "mib", avail >> 20) << 20;
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 2);

	if (boot->vcpu_id != 0)
		return 0;
	if (bytes == 0 || bytes > avail) {
		printf("owncr3: mib=%lu: only %lu MiB free\n", (unsigned long)(bytes >> 20), (unsigned long)(avail >> 20));
		return 2;
	}
	fill(lo, lo + bytes, 0);
	__asm__ volatile("mov %0, %%cr3" : : "r"(boot->boot_cr3) : "memory");
	if (read_cr3() != boot->boot_cr3) {
		printf("owncr3: CR3 reads %#lx after loading %#lx\n", (unsigned long)read_cr3(),
		       (unsigned long)boot->boot_cr3);
		return 1;
	}
	if (verify(lo, lo + bytes, 0, "under its own CR3, written through the shadow"))
		return 1;
	for (uint64_t r = 1; r <= rounds; r++) {
		fill(lo, lo + bytes, r);
		if (verify(lo, lo + bytes, r, "under its own CR3"))
			return 1;
	}
	printf("owncr3: %lu MiB written through the shadow, read back and rewritten %lu times under CR3 %#lx: ok\n",
	       (unsigned long)(bytes >> 20), (unsigned long)rounds, (unsigned long)read_cr3());
	return 0;
}
