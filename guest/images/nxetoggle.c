/*
 * nxetoggle: clears and sets EFER.NXE with wrmsr (which does not exit to
 * umbra) while it touches two pages, one whose PTE has bit 63 (NX) set, and
 * checks that it sees what a CPU gives:
 *
 *   NXE set     both pages read (NX forbids only fetches);
 *   NXE clear   the plain page reads; bit 63 is a reserved bit, so reading
 *               the NX page faults with P|RSVD (error code 0x9).
 *
 * rounds=N (default 10). Prints "nxetoggle: N rounds: ok", or "expected X,
 * got Y" and exits 1.
 *
 * fake_rsvd: instead reports, through PAGE_FAULT, reserved-bit faults at a
 * mapped page that the CPU never took, EFER unchanged: umbra must stop the
 * VM after a few rather than answer "fixed" forever (exits 1 if it does not).
 */
#include "guest.h"
#include "paging.h"

#define MSR_EFER 0xc0000080u
#define EFER_NXE (1ull << 11)
#define NX_VA (USER_BASE + 0x300000)
#define PLAIN_VA (USER_BASE + 0x301000)
#define FAKE_RSVD_FAULTS 100

static uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;

	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return lo | (uint64_t)hi << 32;
}

static void wrmsr(uint32_t msr, uint64_t value)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32))
			 : "memory");
}

/* Reads @va: 0 and its value, or the fault's error code | PROBE_FAULTED. */
static int expect_read(uint64_t round, const char *what, uint64_t va, uint64_t want_fault,
		       uint64_t want_value)
{
	uint64_t value = 0, fault = probe_read(va, &value);

	if (fault != want_fault || (!fault && value != want_value)) {
		printf("nxetoggle: round %lu: %s: expected fault %#lx value %#lx, got fault %#lx value %#lx\n",
		       (unsigned long)round, what, (unsigned long)want_fault, (unsigned long)want_value,
		       (unsigned long)fault, (unsigned long)value);
		return 0;
	}
	return 1;
}

static int fake_rsvd_faults(void)
{
	for (int i = 0; i < FAKE_RSVD_FAULTS; i++)
		hypercall4(UMBRA_HC_PAGE_FAULT, PLAIN_VA, PF_P | PF_RSVD, 0, 0);
	printf("nxetoggle: umbra answered %d reserved-bit faults at one address\n", FAKE_RSVD_FAULTS);
	return 1;
}

int main(const struct umbra_boot_info *boot)
{
	const uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 10);
	const uint64_t efer = rdmsr(MSR_EFER);
	const uint64_t rsvd = PROBE_FAULTED | PF_P | PF_RSVD;
	uint64_t nx = page_alloc(), plain = page_alloc();

	if (!(efer & EFER_NXE)) {
		printf("nxetoggle: EFER.NXE is clear at boot (a CPU without NX)\n");
		return 2;
	}
	if (!nx || !plain || pt_map(as_current(), NX_VA, nx, PTE_W | PTE_NX) ||
	    pt_map(as_current(), PLAIN_VA, plain, PTE_W)) {
		printf("nxetoggle: out of memory\n");
		return 2;
	}
	*(volatile uint64_t *)nx = 0x4e58; /* "NX" */
	*(volatile uint64_t *)plain = 0x504c; /* "PL" */
	if (cmdline_get(boot->cmdline, "fake_rsvd", (char[2]){ 0 }, 2))
		return fake_rsvd_faults();
	for (uint64_t r = 0; r < rounds; r++) {
		if (!expect_read(r, "NXE set, NX page", NX_VA, 0, 0x4e58) ||
		    !expect_read(r, "NXE set, plain page", PLAIN_VA, 0, 0x504c))
			return 1;
		wrmsr(MSR_EFER, efer & ~EFER_NXE);
		if (!expect_read(r, "NXE clear, plain page", PLAIN_VA, 0, 0x504c) ||
		    !expect_read(r, "NXE clear, NX page", NX_VA, rsvd, 0))
			return 1;
		wrmsr(MSR_EFER, efer);
	}
	printf("nxetoggle: %lu rounds: ok\n", (unsigned long)rounds);
	return 0;
}
