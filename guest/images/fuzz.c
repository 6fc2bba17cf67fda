/*
 * fuzz: a seeded hostile guest. Each vCPU runs ops=N operations (default
 * 20000) drawn from a generator seeded with seed=S (and its vCPU id):
 *
 *   probes      reads and writes, through the fault probes, in its fuzz
 *               window (USER_BASE + the arena's guest-physical offset)
 *   table edits flips of P, W, U, A, D, PS, NX, PWT, PCD, G, reserved bits,
 *               frames retargeted to other pages, to tables (cycles, self
 *               references), cleared entries, a reserved address bit (above
 *               MAXPHYADDR); then INVLPG, FLUSH, a switch
 *               of address space, or nothing
 *   hypercalls  every number below UMBRA_HC_NR but EXIT, EXCEPTION and CLONE, with
 *               valid-looking arguments (PAGE_FAULT with any error code that
 *               a CPU gives, INVLPG anywhere canonical, pinned pages
 *               included, and every pinned=K-th operation (default 64, 0:
 *               never) one of a page in use: its stack, its code, the
 *               GDT; SET_CR3 of its
 *               spaces, PIN, READY, short CONSOLE_WRITEs of arena bytes)
 *   segments    writes to the writable segment scratch=NAME, reads of the
 *               read-only one ro=NAME (optional)
 *   the pool    with pool=1 (default), writes to its own shadow tables in
 *               the pool, through a CR3 of its own loaded with a plain mov
 *               (hostile.h), where the pool memslot is writable
 *
 * and, once every end=K operations on average (default 20000; 0: never), an
 * ending operation that a guest may not make (an unknown hypercall or a bad
 * argument, a CLONE of 0 VMs, a mapping of no RAM or of the pool, a write to
 * a read-only segment, an empty CR3, a halt, ...), after which umbra stops the VM or
 * the guest carries on if it can. Each ending operation is printed first.
 *
 * Every table page and data frame of the fuzz window lies in a 2 MiB-aligned
 * arena of RAM, and every value the fuzzer writes there (or into a table)
 * names an arena page, so whatever the edits make of the tables (a page read
 * as a table of any level, 2 MiB and 1 GiB leaves included), the window maps
 * arena pages only: the fuzzer does not scribble on its own code and stacks
 * before it means to. Progress is printed every report=R operations
 * (default 2000) and a summary at the end: vCPU 0 returns 0 when its
 * operations are done.
 */
#include "guest.h"
#include "hostile.h"
#include "runtime.h"

#define ARENA_MAX (4ull << 20)
#define TABLE_PAGES 16 /* the arena's first pages: the window's tables */
#define NR_SPACES 4
#define MAX_FUZZ_PINS 4
#define MAX_ROOTS 16

enum op_kind { OP_READ, OP_WRITE, OP_TABLE, OP_HYPERCALL, OP_SWITCH, OP_SEGMENT, OP_POOL, OP_END, NR_OPS };
static const char *const op_names[NR_OPS] = { "reads", "writes", "edits", "hypercalls", "switches",
					      "segment", "pool", "ending" };

static struct {
	uint64_t base, size; /* the arena: 2 MiB aligned, a multiple of 2 MiB */
	uint64_t window;     /* where the spaces map it: USER_BASE + base */
	uint64_t ram_size;
	uint64_t stacks; /* the vCPUs' stack regions (pinned by umbra but each top page) */
	struct address_space spaces[NR_SPACES];
	const struct umbra_segment_info *scratch, *ro;
	struct pool_view view;
	int pool_ok;
	uint64_t roots[MAX_ROOTS]; /* shadow roots seen after switches */
	uint64_t reserved;         /* an address bit above MAXPHYADDR, or 0 */
	uint32_t nr_pins;
	volatile int ready;
} fz;

struct fuzzer {
	struct rng rng;
	uint32_t vcpu;
	uint64_t op;
	uint64_t count[NR_OPS];
	uint64_t faults;
};

static uint64_t arena_page(struct fuzzer *f)
{
	return fz.base + rng_below(&f->rng, fz.size / 4096) * 4096;
}

static uint64_t table_page(struct fuzzer *f)
{
	return fz.base + rng_below(&f->rng, TABLE_PAGES) * 4096;
}

/* A value that is safe anywhere in the arena: when present, it names an
 * arena page; any flags, sometimes a reserved bit. */
static uint64_t arena_entry(struct fuzzer *f)
{
	static const uint64_t flag_bits[] = { PTE_P, PTE_W, PTE_U, 1ull << 3, 1ull << 4, PTE_A, PTE_D,
					      PTE_PS, 1ull << 8, PTE_NX };
	uint64_t e = rng_below(&f->rng, 4) ? table_page(f) : arena_page(f);

	e |= PTE_P | PTE_W | PTE_U;
	for (unsigned int i = 0; i < sizeof(flag_bits) / sizeof(flag_bits[0]); i++)
		if (rng_below(&f->rng, 8) == 0)
			e ^= flag_bits[i];
	if (rng_below(&f->rng, 32) == 0)
		e |= fz.reserved;
	return e;
}

static uint64_t window_va(struct fuzzer *f)
{
	return fz.window + (rng_next(&f->rng) % fz.size & ~7ull);
}

extern const char __resident_start[], __resident_end[]; /* linker.ld */

/* What umbra pins: the boot GDT's page, the image's resident segments, the
 * stacks (docs/abi.md, "What stays resident"). Spurious INVLPGs of them are
 * harmless on x86, and must be here. */
static uint64_t pinned_va(struct fuzzer *f)
{
	uint64_t resident = (uint64_t)__resident_start, resident_size = (uint64_t)__resident_end - resident;

	switch (rng_below(&f->rng, 3)) {
	case 0: return UMBRA_GDT_GPA + (rng_below(&f->rng, 4096) & ~7ull);
	case 1: return resident + (rng_below(&f->rng, resident_size) & ~7ull);
	default: return fz.stacks + (rng_below(&f->rng, fz.ram_size - fz.stacks) & ~7ull);
	}
}

static uint64_t canonical_va(struct fuzzer *f)
{
	switch (rng_below(&f->rng, 5)) {
	case 0: return window_va(f);
	case 1: return rng_below(&f->rng, fz.ram_size) & ~7ull; /* the identity map */
	case 2: return pinned_va(f);
	case 3: return (rng_next(&f->rng) & 0x00007ffffffff000ull);
	default: return 0xffff800000000000ull | (rng_next(&f->rng) & 0x00007ffffffff000ull);
	}
}

static void record_root(void)
{
	uint64_t root = read_cr3();

	for (int i = 0; i < MAX_ROOTS; i++) {
		uint64_t old = __atomic_load_n(&fz.roots[i], __ATOMIC_RELAXED);
		if (old == root)
			return;
		if (!old && __atomic_compare_exchange_n(&fz.roots[i], &old, root, 0, __ATOMIC_RELAXED,
							 __ATOMIC_RELAXED))
			return;
	}
	fz.roots[root / 4096 % MAX_ROOTS] = root;
}

static void switch_space(struct fuzzer *f)
{
	uint64_t i = rng_below(&f->rng, NR_SPACES + 1);

	as_switch(i == NR_SPACES ? as_boot() : &fz.spaces[i]);
	record_root();
}

static void probe(struct fuzzer *f, int write)
{
	uint64_t va = window_va(f), v;

	if (write ? probe_write(va, arena_entry(f)) : probe_read(va, &v))
		f->faults++;
	f->count[write ? OP_WRITE : OP_READ]++;
}

static void edit_table(struct fuzzer *f)
{
	uint64_t page = rng_below(&f->rng, 8) ? table_page(f) : arena_page(f);
	unsigned int index = (unsigned int)rng_below(&f->rng, 512);
	volatile uint64_t *e = (volatile uint64_t *)(page + index * 8ull);
	uint64_t v = *e;

	if (rng_below(&f->rng, 8) == 0) { /* a space's PML4 entry for the window */
		e = (volatile uint64_t *)(fz.spaces[rng_below(&f->rng, NR_SPACES)].cr3 + 8);
		v = *e;
	}
	switch (rng_below(&f->rng, 6)) {
	case 0: v = arena_entry(f); break;
	case 1: v = (v & ~PTE_ADDR) | table_page(f); break;        /* another table */
	case 2: v = (v & ~PTE_ADDR) | (page & PTE_ADDR) | PTE_P; break; /* itself: a cycle */
	case 3: v = 0; break;
	default: { /* one flag */
		static const uint64_t bits[] = { PTE_P, PTE_W, PTE_U, PTE_A, PTE_D, PTE_PS, PTE_NX, 1ull << 8 };
		v ^= bits[rng_below(&f->rng, sizeof(bits) / sizeof(bits[0]))];
	}
	}
	if ((v & PTE_P) && ((v & PTE_ADDR) < fz.base || (v & PTE_ADDR) >= fz.base + fz.size))
		v = arena_entry(f); /* what was there was not the arena's: keep the window in it */
	*e = v;
	switch (rng_below(&f->rng, 6)) {
	case 0: case 1: tlb_invlpg(window_va(f)); break;
	case 2: tlb_flush(); break;
	case 3: switch_space(f); break;
	default: break; /* stale until later: allowed */
	}
	f->count[OP_TABLE]++;
}

/* A #PF error code a CPU gives: P, W, U, RSVD, I in any mix but W with I,
 * and RSVD only with P (a reserved bit is found in a present entry). */
static uint64_t error_code(struct fuzzer *f)
{
	uint64_t ec = rng_below(&f->rng, 32);

	if ((ec & PF_W) && (ec & PF_I))
		ec &= ~PF_I;
	return ec & PF_RSVD ? ec | PF_P : ec;
}

static void hypercall(struct fuzzer *f)
{
	uint64_t nr = 2 + rng_below(&f->rng, UMBRA_HC_NR - 2);

	switch (nr) {
	case UMBRA_HC_CONSOLE_WRITE:
		if (rng_below(&f->rng, 16) == 0)
			hypercall4(nr, arena_page(f) + rng_below(&f->rng, 4000), 1 + rng_below(&f->rng, 64), 0, 0);
		break;
	case UMBRA_HC_SET_CR3: switch_space(f); break;
	case UMBRA_HC_PAGE_FAULT: hypercall4(nr, canonical_va(f), error_code(f), 0, 0); break;
	case UMBRA_HC_INVLPG: tlb_invlpg(canonical_va(f)); break;
	case UMBRA_HC_FLUSH: tlb_flush(); break;
	case UMBRA_HC_FLUSH_ACK: break; /* unsolicited: an ending operation */
	case UMBRA_HC_PIN:
		if (__atomic_fetch_add(&fz.nr_pins, 1, __ATOMIC_RELAXED) < MAX_FUZZ_PINS)
			hypercall4(nr, window_va(f), 1 + rng_below(&f->rng, 256 << 10), 0, 0);
		break;
	case UMBRA_HC_READY:
		hypercall4(nr, 0, 0, 0, 0);
		local_tlb_flush();
		break;
	case UMBRA_HC_CLONE: break; /* a fuzzer that cloned itself would multiply (kvm_clone covers CLONE) */
	default: /* a newer hypercall: a page of RAM that is one of its tables */
		hypercall4(nr, rng_below(&f->rng, 2) ? table_page(f) : fz.spaces[rng_below(&f->rng, NR_SPACES)].cr3, 0,
			   0, 0);
		break;
	}
	f->count[OP_HYPERCALL]++;
}

static void segment_op(struct fuzzer *f)
{
	if (fz.scratch && rng_below(&f->rng, 2)) {
		uint64_t off = rng_next(&f->rng) % fz.scratch->size & ~7ull;
		*(volatile uint64_t *)(fz.scratch->gpa + off) = arena_entry(f);
	} else if (fz.ro) {
		(void)*(volatile uint64_t *)(fz.ro->gpa + (rng_next(&f->rng) % fz.ro->size & ~7ull));
	}
	f->count[OP_SEGMENT]++;
}

/* Marks the pool pages reachable from @table at @level; with @all false
 * only through PML4 entry 0 (what maps RAM: code, stacks). */
static void pool_mark(uint8_t *mark, uint64_t table, int level, int from, int to)
{
	uint64_t page = (table - fz.view.pool_gpa) / 4096;

	if (!pool_holds(&fz.view, table) || mark[page])
		return;
	mark[page] = 1;
	for (int i = from; i < to && level > 1; i++) {
		uint64_t e = *pool_entry(page, (unsigned int)i);
		if ((e & PTE_P) && !(e & PTE_PS))
			pool_mark(mark, e & PTE_ADDR, level - 1, 0, 512);
	}
}

/*
 * Writes to the shadow tables of the window (pages reached from the roots
 * seen, through PML4 entries 1 and up, and not through entry 0): arena
 * leaves with any flags, pointers to one another and to themselves, cleared
 * entries. With @anywhere, any entry of any pool page, with anything.
 */
static void pool_op(struct fuzzer *f, int anywhere)
{
	static uint8_t marks[2][UMBRA_MAX_VCPUS][1 << 15];
	uint8_t *keep = marks[0][f->vcpu], *ours = marks[1][f->vcpu];
	uint64_t nr = fz.view.nr_pages < sizeof(marks[0][0]) ? fz.view.nr_pages : sizeof(marks[0][0]);
	uint64_t cr3 = raw_cr3_enter(&fz.view);
	uint64_t pages[64], nr_ours = 0;

	memset(keep, 0, nr);
	memset(ours, 0, nr);
	for (int r = 0; r < MAX_ROOTS; r++) {
		uint64_t root = __atomic_load_n(&fz.roots[r], __ATOMIC_RELAXED) & PTE_ADDR;
		if (!root || !pool_holds(&fz.view, root))
			continue;
		pool_mark(keep, root, 4, 0, 1);
		pool_mark(ours, root, 4, 1, 256);
	}
	for (uint64_t p = 0; p < nr && nr_ours < 64; p++)
		if (ours[p] && !keep[p])
			pages[nr_ours++] = p;
	for (uint64_t n = 1 + rng_below(&f->rng, 16); n-- && (nr_ours || anywhere);) {
		uint64_t page = anywhere ? rng_below(&f->rng, nr) : pages[rng_below(&f->rng, nr_ours)];
		volatile uint64_t *e = pool_entry(page, (unsigned int)rng_below(&f->rng, 512));
		uint64_t v = *e;

		if (anywhere)
			v = rng_below(&f->rng, 2) ? rng_next(&f->rng) : fz.view.pool_gpa + rng_below(&f->rng, nr) * 4096 + 7;
		else if (pool_holds(&fz.view, v & PTE_ADDR) && nr_ours) /* a table pointer */
			v = (v & ~PTE_ADDR) | (fz.view.pool_gpa + pages[rng_below(&f->rng, nr_ours)] * 4096);
		else if (rng_below(&f->rng, 4) == 0)
			v = 0;
		else
			v = arena_entry(f) & ~PTE_PS;
		*e = v;
	}
	raw_cr3_leave(cr3);
	if (rng_below(&f->rng, 2))
		tlb_flush();
	f->count[OP_POOL]++;
}

/* Maps guest-physical @gpa at a window page in the current space and
 * writes it (umbra must refuse: no RAM there, or a shadow table). */
static void map_and_touch(struct fuzzer *f, uint64_t gpa)
{
	uint64_t va = fz.window + 4096 * (TABLE_PAGES + rng_below(&f->rng, 16));

	if (pt_map(as_current(), va, gpa, PTE_W) == 0) {
		tlb_invlpg(va);
		probe_write(va, 1);
	}
}

/* An operation no guest may make; umbra stops the VM, or it goes on. */
static void ending_op(struct fuzzer *f)
{
	static const char *const names[] = { "unknown hypercall", "exit code 200", "console outside RAM",
					     "unaligned CR3", "non-canonical invlpg", "write+fetch page fault",
					     "pin of 0 bytes", "unsolicited flush ack", "exception hypercall",
					     "empty CR3", "mapping of no RAM", "mapping of the pool",
					     "write to the read-only segment", "pool scribble anywhere", "halt",
					     "clone of 0 VMs" };
	uint64_t k = rng_below(&f->rng, sizeof(names) / sizeof(names[0]));

	printf("fuzz: vCPU %u op %lu: ending: %s\n", f->vcpu, (unsigned long)f->op, names[k]);
	f->count[OP_END]++;
	switch (k) {
	case 0: hypercall4(UMBRA_HC_NR + rng_below(&f->rng, 1000), 1, 2, 3, 4); break;
	case 1: hypercall4(UMBRA_HC_EXIT, 200, 0, 0, 0); break;
	case 2: hypercall4(UMBRA_HC_CONSOLE_WRITE, fz.ram_size + 0x1000, 16, 0, 0); break;
	case 3: hypercall4(UMBRA_HC_SET_CR3, fz.spaces[0].cr3 + 8, 0, 0, 0); break;
	case 4: hypercall4(UMBRA_HC_INVLPG, 0x0000800000000000ull | rng_next(&f->rng), 0, 0, 0); break;
	case 5: hypercall4(UMBRA_HC_PAGE_FAULT, window_va(f), PF_W | PF_I, 0, 0); break;
	case 6: hypercall4(UMBRA_HC_PIN, window_va(f), 0, 0, 0); break;
	case 7: hypercall4(UMBRA_HC_FLUSH_ACK, 0, 0, 0, 0); break;
	case 8: hypercall4(UMBRA_HC_EXCEPTION, 13, 0, 0, 0); break;
	case 9: /* an empty PML4: nothing mapped, not even the IDT */
		hypercall4(UMBRA_HC_SET_CR3, page_alloc(), 0, 0, 0);
		local_tlb_flush();
		break;
	case 10: map_and_touch(f, 0xc0000000ull + rng_below(&f->rng, 1024) * 4096); break;
	case 11: map_and_touch(f, fz.view.pool_gpa); break;
	case 12:
		if (fz.ro)
			*(volatile uint64_t *)fz.ro->gpa = 1;
		break;
	case 13:
		if (fz.pool_ok)
			pool_op(f, 1);
		break;
	case 15: hypercall4(UMBRA_HC_CLONE, 0, 0, 0, 0); break;
	default: cpu_halt_forever();
	}
}

/* The lowest address bit above MAXPHYADDR (CPUID 0x80000008), reserved in
 * every entry, or 0 where MAXPHYADDR is 52. */
static uint64_t reserved_address_bit(void)
{
	uint32_t eax = 0x80000008, ebx, ecx = 0, edx;

	__asm__ volatile("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
	return (eax & 0xff) < 52 ? 1ull << (eax & 0xff) : 0;
}

static int setup_arena(const struct umbra_boot_info *boot)
{
	uint64_t pa, want;

	/* Skip to a 2 MiB boundary, then take consecutive pages. */
	do
		pa = page_alloc();
	while (pa && (pa & ((2ull << 20) - 1)));
	want = (boot->free_end - pa) / 2 > ARENA_MAX ? ARENA_MAX : 2ull << 20;
	fz.base = pa;
	for (fz.size = 4096; pa && fz.size < want; fz.size += 4096)
		if (page_alloc() != pa + fz.size)
			return -1;
	if (!pa)
		return -1;
	fz.window = USER_BASE + fz.base;
	/* Each space: PML4[1] -> PDPT -> PD -> one PT per 2 MiB of the window. */
	for (int s = 0; s < NR_SPACES; s++) {
		uint64_t pdpt = fz.base + (uint64_t)(4 * s) * 4096, pd = pdpt + 4096;

		if (as_create(&fz.spaces[s]))
			return -1;
		((uint64_t *)fz.spaces[s].cr3)[1] = pdpt | PTE_P | PTE_W | PTE_U;
		((uint64_t *)pdpt)[(fz.window >> 30) & 511] = pd | PTE_P | PTE_W | PTE_U;
		for (uint64_t m = 0; m < fz.size >> 21 && m < 2; m++) {
			uint64_t pt = pd + 4096 * (1 + m);

			((uint64_t *)pd)[((fz.window >> 21) + m) & 511] = pt | PTE_P | PTE_W | PTE_U;
			for (int i = 0; i < 512; i++)
				((uint64_t *)pt)[i] = (fz.base + 4096 * ((uint64_t)(s * 97 + i * 13 + (int)m * 512) %
									  (fz.size / 4096))) |
						      PTE_P | PTE_W | PTE_U;
		}
	}
	return 0;
}

/* Every pinned=K operations (default 64; 0: never), whatever the seed, a
 * spurious INVLPG of a page the vCPU is using: its stack and the boot GDT,
 * which umbra pins, and its code, which it does not (harmless on x86: an
 * unchanged mapping stays). Draws nothing from the generator. */
static void invlpg_pinned_in_use(struct fuzzer *f, uint64_t every)
{
	uint64_t here = (uint64_t)__builtin_frame_address(0);

	switch (f->op / every % 3) {
	case 0: tlb_invlpg(here); break;
	case 1: tlb_invlpg((uint64_t)invlpg_pinned_in_use); break;
	default: tlb_invlpg(UMBRA_GDT_GPA); break;
	}
	f->count[OP_HYPERCALL]++;
}

static void fuzz_one(struct fuzzer *f, uint64_t end_every, uint64_t pinned_every)
{
	if (pinned_every && f->op % pinned_every == pinned_every - 1) {
		invlpg_pinned_in_use(f, pinned_every);
		return;
	}
	uint64_t end_roll = rng_next(&f->rng), roll = rng_below(&f->rng, 100);

	/* Drawn whether or not ending operations are on: a seed makes the
	 * same other operations with end=0. */
	if (end_every && end_roll % end_every == 0)
		ending_op(f);
	else if (roll < 20)
		probe(f, 0);
	else if (roll < 35)
		probe(f, 1);
	else if (roll < 55)
		edit_table(f);
	else if (roll < 75)
		hypercall(f);
	else if (roll < 83)
		switch_space(f), f->count[OP_SWITCH]++;
	else if (roll < 93)
		segment_op(f);
	else if (fz.pool_ok)
		pool_op(f, 0);
}

int main(const struct umbra_boot_info *boot)
{
	static struct fuzzer fuzzers[UMBRA_MAX_VCPUS];
	struct fuzzer *f = &fuzzers[boot->vcpu_id];
	uint64_t seed = cmdline_u64(boot->cmdline, "seed", 1), ops = cmdline_u64(boot->cmdline, "ops", 20000);
	uint64_t end_every = cmdline_u64(boot->cmdline, "end", 20000);
	uint64_t report = cmdline_u64(boot->cmdline, "report", 2000);
	uint64_t pinned_every = cmdline_u64(boot->cmdline, "pinned", 64);

	if (boot->vcpu_id == 0) {
		char name[UMBRA_SEGMENT_NAME_MAX];

		fz.ram_size = boot->ram_size;
		fz.reserved = reserved_address_bit();
		fz.stacks = boot->free_end;
		if (cmdline_get(boot->cmdline, "scratch", name, sizeof(name)))
			fz.scratch = cmdline_segment(boot, "fuzz", "scratch");
		if (cmdline_get(boot->cmdline, "ro", name, sizeof(name)))
			fz.ro = cmdline_segment(boot, "fuzz", "ro");
		if (setup_arena(boot) || pool_view_create(boot, &fz.view)) {
			printf("fuzz: not enough free RAM for the arena and tables\n");
			return 2;
		}
		fz.pool_ok = cmdline_u64(boot->cmdline, "pool", 1) != 0;
		printf("fuzz: seed %lu, %lu ops per vCPU on %u vCPUs, arena %#lx+%lu KiB, pool %s, end 1/%lu\n",
		       (unsigned long)seed, (unsigned long)ops, boot->nr_vcpus, (unsigned long)fz.base,
		       (unsigned long)(fz.size >> 10), fz.pool_ok ? "on" : "off", (unsigned long)end_every);
		__atomic_store_n(&fz.ready, 1, __ATOMIC_RELEASE);
	}
	while (!__atomic_load_n(&fz.ready, __ATOMIC_ACQUIRE))
		cpu_relax();
	f->vcpu = boot->vcpu_id;
	rng_seed(&f->rng, seed * 0x9e3779b97f4a7c15ull + boot->vcpu_id);
	for (f->op = 0; f->op < ops; f->op++) {
		fuzz_one(f, end_every, pinned_every);
		if (report && (f->op + 1) % report == 0)
			printf("fuzz: vCPU %u: %lu ops\n", f->vcpu, (unsigned long)(f->op + 1));
	}
	as_switch(as_boot());
	printf("fuzz: vCPU %u: done: %lu ops (", f->vcpu, (unsigned long)ops);
	for (int k = 0; k < NR_OPS; k++)
		printf("%s%s %lu", k ? ", " : "", op_names[k], (unsigned long)f->count[k]);
	printf("), %lu probe faults\n", (unsigned long)f->faults);
	return 0;
}
