/*
 * procs: a tiny multi-process kernel, as a real guest kernel keeps many
 * address spaces in one VM (it runs on vCPU 0; any other vCPU halts):
 *
 *   kernel half   every process's PML4 has entry 0 (the runtime's identity
 *                 map, shared with the boot tables) and entry 3, the kernel
 *                 area at KERNEL_BASE, whose PDPT, PD and PT are the same
 *                 pages in every process; it holds the scheduler's state, the
 *                 run queue and the process structs, which the scheduler
 *                 touches after every switch;
 *   user half     at USER_BASE, each process's own tables (PDPT, two PDs, two
 *                 PTs) mapping a read-only text page shared by all, two data
 *                 pages and a stack page at the top of the half;
 *   fork          copies the parent's user tables; the parent's writable pages
 *                 become read-only copy-on-write pages in both (PTE_COW, a
 *                 reference count per frame), with an INVLPG for each page
 *                 of the parent, which is the current address space;
 *   #PF handler   a write by process code (user_store) to a copy-on-write
 *                 page copies the frame, or takes it over when no one else
 *                 maps it any more, then INVLPG (docs/abi.md);
 *   switches      cooperative, with as_switch (SET_CR3 and a CR3 reload).
 *
 * Setup: process 1 (init) is built, and forks (each new process's parent is
 * slot (n - 1) / 2) until procs=N processes are alive (default 30, at most
 * 62). Then one round runs every process once: a child checks that it sees
 * what its parent's pages held at the fork, then writes its own stamp, which
 * breaks the copy-on-write of its data and stack pages. "procs: setup: ..."
 * marks the end of the setup.
 *
 * Measured phases: rounds=R (default 20) rounds over all processes, each a
 * switch to the process, which checks its stamp, its run count (in a data
 * page and on its stack), the shared text page and the page it inherited
 * from init, then writes its run count; no copy-on-write fault is left to
 * take. Then forks=F (default 0) fork/exit cycles: init forks a child, the
 * child runs (and breaks its copy-on-write pages), exits, and init frees its
 * page tables and runs again.
 *
 * Pages freed by an exit are reused only after QUARANTINE_PAGES others were
 * freed, so that a new process does not get the page tables, and so the
 * cached shadow root, of the one that just exited.
 *
 * The output is the same number of lines whatever N, R and F (each is one
 * exit), so that two runs' counters can be subtracted:
 *
 *   procs: setup: N processes, N-1 forks, T table pages
 *   procs: copy-on-write: C copies, U reuses
 *   procs: fork new table pages: P in F forks
 *   procs: N processes, R rounds, S switches, F forks: ok
 *
 * S counts the switches of the rounds alone (R * N). Exits 1 after
 * "expected X, got Y" at the first mismatch, 2 when memory runs out.
 */
#include "guest.h"
#include "paging.h"
#include "runtime.h"

#define MAX_PROCS 64
#define MAX_ALIVE (MAX_PROCS - 2) /* and the fork cycles' child */

/* The software bit of a leaf that fork made read-only. */
#define PTE_COW (1ull << 9)

#define USER_PML4_INDEX 1
#define KERNEL_PML4_INDEX 3
#define KERNEL_BASE (3ull << 39)
#define KERNEL_PAGES 3

#define USER_TEXT USER_BASE
#define USER_DATA (USER_BASE + 0x1000)
#define USER_INHERITED (USER_BASE + 0x2000) /* written by init only */
#define USER_STACK (USER_BASE + (512ull << 30) - 0x1000)

#define TEXT_MAGIC 0x5445585454455854ull /* "TEXTTEXT" */

/* Frames of up to 256 MiB of RAM carry a reference count. */
#define MAX_FRAMES (1u << 16)

#define QUARANTINE_PAGES 256
#define FREED_RING 1024

struct proc {
	uint64_t pid, parent_pid, stamp;
	uint64_t runs;      /* what the process wrote last in its data page and stack */
	uint64_t started;   /* it has run since its fork */
	/* What its pages held when it was forked (its parent's, then). */
	uint64_t inherited_stamp, inherited_runs;
	struct address_space as;
	uint64_t pad[8];
};
_Static_assert(sizeof(struct proc) == 128, "32 process structs per page");

struct kernel {
	uint64_t current;   /* the slot that runs */
	uint64_t nr_alive;
	uint64_t next_pid;
	uint64_t switches;
	uint32_t run_queue[MAX_PROCS];
};

/* The kernel area: page 0 the kernel's state, pages 1 and 2 the processes. */
static struct kernel *const kern = (struct kernel *)KERNEL_BASE;
static struct proc *const procs = (struct proc *)(KERNEL_BASE + 4096);
_Static_assert(sizeof(struct kernel) <= 4096, "one page");
_Static_assert(MAX_PROCS * sizeof(struct proc) <= (KERNEL_PAGES - 1) * 4096, "the process structs fit");

static struct address_space kernel_as;
static uint16_t frame_refs[MAX_FRAMES];
static uint64_t text_frame;

static struct {
	uint64_t ring[FREED_RING];
	uint64_t head, count;
} freed;

static struct {
	uint64_t cow_copies, cow_reuses;
	uint64_t setup_tables, setup_forks;
	uint64_t cycle_tables, cycle_forks;
	uint64_t round_switches;
} counts;

/* A store by process code to its user half: a write fault there is a
 * copy-on-write fault when the page is marked PTE_COW (cow_fault). */
void user_store(uint64_t va, uint64_t value);
extern const char user_store_insn[];
__asm__(".text\n"
	".globl user_store, user_store_insn\n"
	"user_store:\n"
	"user_store_insn:\n"
	"\tmov %rsi, (%rdi)\n"
	"\tret\n");

static uint64_t stamp(uint64_t pid)
{
	return 0x50524f4300000000ull | pid; /* "PROC" | pid */
}

static uint64_t kpage_alloc(void)
{
	uint64_t pa;

	if (freed.count <= QUARANTINE_PAGES)
		return page_alloc();
	pa = freed.ring[freed.head];
	freed.head = (freed.head + 1) % FREED_RING;
	freed.count--;
	memset((void *)pa, 0, 4096);
	return pa;
}

static void kpage_free(uint64_t pa)
{
	if (freed.count == FREED_RING) {
		page_free(freed.ring[freed.head]);
		freed.head = (freed.head + 1) % FREED_RING;
		freed.count--;
	}
	freed.ring[(freed.head + freed.count) % FREED_RING] = pa;
	freed.count++;
}

static void frame_get(uint64_t pa)
{
	frame_refs[pa >> 12]++;
}

static void frame_put(uint64_t pa)
{
	if (--frame_refs[pa >> 12] == 0)
		kpage_free(pa);
}

/* The leaf entry for va under pml4, allocating tables if alloc (counted in
 * *tables); 0 when absent or out of memory. */
static uint64_t *pte_of(uint64_t pml4, uint64_t va, int alloc, uint64_t *tables)
{
	uint64_t *table = (uint64_t *)pml4;

	for (int level = 4; level > 1; level--) {
		uint64_t *e = &table[(va >> (12 + 9 * (level - 1))) & 511];
		if (!(*e & PTE_P)) {
			uint64_t t = alloc ? kpage_alloc() : 0;
			if (!t)
				return 0;
			*e = t | PTE_P | PTE_W | PTE_U;
			(*tables)++;
		}
		table = (uint64_t *)(*e & PTE_ADDR);
	}
	return &table[(va >> 12) & 511];
}

/* Maps a new frame at va (or @frame if nonzero), writes @value at its start. */
static int map_page(uint64_t pml4, uint64_t va, uint64_t frame, uint64_t flags, uint64_t value,
		    uint64_t *tables)
{
	uint64_t *pte;

	if (!frame && !(frame = kpage_alloc()))
		return -1;
	if (!(pte = pte_of(pml4, va, 1, tables)))
		return -1;
	if (value)
		*(uint64_t *)frame = value;
	*pte = frame | flags | PTE_P;
	frame_get(frame);
	return 0;
}

/* A new PML4 with the kernel half: the runtime's entry 0 and the kernel area. */
static uint64_t pml4_create(void)
{
	uint64_t pml4 = kpage_alloc();

	if (pml4) {
		((uint64_t *)pml4)[0] = ((uint64_t *)kernel_as.cr3)[0];
		((uint64_t *)pml4)[KERNEL_PML4_INDEX] = ((uint64_t *)kernel_as.cr3)[KERNEL_PML4_INDEX];
	}
	return pml4;
}

static void switch_to(uint32_t slot)
{
	kern->current = slot;
	kern->switches++;
	as_switch(&procs[slot].as);
}

/*
 * Copies the parent's table at @level (3: the PDPT) covering @va; returns
 * the copy, or 0 (out of memory). Writable leaves become copy-on-write in
 * both; the parent is the current address space, so each is invalidated.
 */
static uint64_t copy_table(uint64_t parent_table, int level, uint64_t va, uint64_t *tables)
{
	uint64_t *from = (uint64_t *)parent_table, *to;
	uint64_t child = kpage_alloc();

	if (!child)
		return 0;
	(*tables)++;
	to = (uint64_t *)child;
	for (uint64_t i = 0; i < 512; i++) {
		uint64_t e = from[i], sub_va = va + (i << (12 + 9 * (level - 1)));

		if (!(e & PTE_P))
			continue;
		if (level > 1) {
			uint64_t sub = copy_table(e & PTE_ADDR, level - 1, sub_va, tables);
			if (!sub)
				return 0;
			to[i] = sub | (e & ~PTE_ADDR);
			continue;
		}
		if (e & PTE_W) {
			e = (e & ~PTE_W) | PTE_COW;
			__atomic_store_n(&from[i], e, __ATOMIC_RELEASE);
			tlb_invlpg(sub_va);
		}
		frame_get(e & PTE_ADDR);
		to[i] = e;
	}
	return child;
}

/* Forks the current process (slot @parent) into slot @slot; returns the
 * page-table pages the child got, or 0 (out of memory). */
static uint64_t fork_process(uint32_t parent, uint32_t slot)
{
	struct proc *p = &procs[parent], *c = &procs[slot];
	uint64_t pml4 = pml4_create(), tables = 1;
	uint64_t user = ((uint64_t *)p->as.cr3)[USER_PML4_INDEX], copy;

	if (!pml4 || !(copy = copy_table(user & PTE_ADDR, 3, USER_BASE, &tables)))
		return 0;
	((uint64_t *)pml4)[USER_PML4_INDEX] = copy | (user & ~PTE_ADDR);
	memset(c, 0, sizeof(*c));
	c->pid = kern->next_pid++;
	c->parent_pid = p->pid;
	c->stamp = stamp(c->pid);
	c->inherited_stamp = p->started ? p->stamp : p->inherited_stamp;
	c->inherited_runs = p->started ? p->runs : p->inherited_runs;
	c->as.cr3 = pml4;
	kern->nr_alive++;
	return tables;
}

static void free_table(uint64_t table, int level)
{
	for (int i = 0; i < 512; i++) {
		uint64_t e = ((uint64_t *)table)[i];

		if (!(e & PTE_P))
			continue;
		if (level > 1)
			free_table(e & PTE_ADDR, level - 1);
		else
			frame_put(e & PTE_ADDR);
	}
	kpage_free(table);
}

/* The process in @slot has exited and is not current: frees its user
 * pages and tables (the kernel half is not its own). */
static void reap(uint32_t slot)
{
	uint64_t pml4 = procs[slot].as.cr3;

	free_table(((uint64_t *)pml4)[USER_PML4_INDEX] & PTE_ADDR, 3);
	kpage_free(pml4);
	procs[slot].as.cr3 = 0;
	kern->nr_alive--;
}

/* The write fault of a copy-on-write page at va, in the current address
 * space: a private copy of the frame, or the frame itself when no one else
 * maps it any more. 0, or -1 if va is no copy-on-write page. */
static int cow_break(uint64_t va)
{
	uint64_t unused = 0, *pte = pte_of(as_current()->cr3, va, 0, &unused);
	uint64_t e = pte ? *pte : 0, frame = e & PTE_ADDR;

	if (!(e & PTE_P) || !(e & PTE_COW))
		return -1;
	if (frame_refs[frame >> 12] > 1) {
		uint64_t copy = kpage_alloc();
		if (!copy)
			return -1;
		memcpy((void *)copy, (void *)frame, 4096);
		frame_put(frame);
		frame = copy;
		frame_get(frame);
		counts.cow_copies++;
	} else {
		counts.cow_reuses++;
	}
	__atomic_store_n(pte, frame | ((e & ~PTE_ADDR & ~PTE_COW) | PTE_W), __ATOMIC_RELEASE);
	tlb_invlpg(va);
	return 0;
}

/* The guest's #PF handler for the faults umbra says are the guest's own. */
static int cow_fault(struct exception_frame *frame)
{
	const uint32_t write_to_present = PF_P | PF_W;

	if (frame->rip != (uint64_t)user_store_insn || (frame->error_code & write_to_present) != write_to_present)
		return 0;
	if (cow_break(frame->rdi) == 0)
		return 1; /* the store is retried */
	printf("procs: write fault at %#lx: no copy-on-write page, or out of memory\n", (unsigned long)frame->rdi);
	return 0; /* umbra reports the fault and stops the VM */
}

static int check(const struct proc *p, const char *what, uint64_t va, uint64_t want)
{
	uint64_t got = 0, err = probe_read(va, &got);

	if (err) {
		printf("procs: pid %lu: %s at %#lx: expected %#lx, got a page fault (error code %#lx)\n",
		       (unsigned long)p->pid, what, (unsigned long)va, (unsigned long)want,
		       (unsigned long)(err & ~PROBE_FAULTED));
		return -1;
	}
	if (got != want) {
		printf("procs: pid %lu: %s at %#lx: expected %#lx, got %#lx\n", (unsigned long)p->pid, what,
		       (unsigned long)va, (unsigned long)want, (unsigned long)got);
		return -1;
	}
	return 0;
}

/* What the process in the current slot does each time it runs. */
static int run_process(void)
{
	struct proc *p = &procs[kern->current];

	if (!p->started) {
		/* What fork copied; then its own stamp (copy-on-write). */
		if (check(p, "data at fork", USER_DATA, p->inherited_stamp) ||
		    check(p, "run count at fork", USER_DATA + 8, p->inherited_runs) ||
		    check(p, "stack at fork", USER_STACK, p->inherited_runs))
			return -1;
		user_store(USER_DATA, p->stamp);
		user_store(USER_DATA + 8, 0);
		user_store(USER_STACK, 0);
		p->runs = 0;
		p->started = 1;
	}
	if (check(p, "text", USER_TEXT, TEXT_MAGIC) || check(p, "stamp", USER_DATA, p->stamp) ||
	    check(p, "run count", USER_DATA + 8, p->runs) || check(p, "stack", USER_STACK, p->runs) ||
	    check(p, "page inherited from init", USER_INHERITED, stamp(1)))
		return -1;
	p->runs++;
	user_store(USER_STACK, p->runs);
	user_store(USER_DATA + 8, p->runs);
	return 0;
}

/* The kernel area, and init in slot 0. */
static int setup_kernel_and_init(void)
{
	uint64_t tables = 0, pml4;
	struct proc *init;

	if (as_create(&kernel_as))
		return -1;
	for (uint64_t i = 0; i < KERNEL_PAGES; i++)
		if (map_page(kernel_as.cr3, KERNEL_BASE + i * 4096, 0, PTE_W | PTE_NX, 0, &tables))
			return -1;
	as_switch(&kernel_as);
	kern->next_pid = 1;
	if (!(text_frame = kpage_alloc()) || !(pml4 = pml4_create()))
		return -1;
	*(uint64_t *)text_frame = TEXT_MAGIC;
	init = &procs[0];
	memset(init, 0, sizeof(*init));
	init->pid = kern->next_pid++;
	init->stamp = stamp(init->pid);
	init->started = 1;
	init->as.cr3 = pml4;
	tables = 1;
	if (map_page(pml4, USER_TEXT, text_frame, PTE_U, 0, &tables) ||
	    map_page(pml4, USER_DATA, 0, PTE_U | PTE_W | PTE_NX, init->stamp, &tables) ||
	    map_page(pml4, USER_INHERITED, 0, PTE_U | PTE_W | PTE_NX, init->stamp, &tables) ||
	    map_page(pml4, USER_STACK, 0, PTE_U | PTE_W | PTE_NX, 0, &tables))
		return -1;
	counts.setup_tables += tables;
	kern->nr_alive = 1;
	kern->run_queue[0] = 0;
	return 0;
}

int main(const struct umbra_boot_info *boot)
{
	uint64_t nprocs = cmdline_u64(boot->cmdline, "procs", 30);
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 20);
	uint64_t forks = cmdline_u64(boot->cmdline, "forks", 0);

	if (boot->vcpu_id != 0)
		return 0;
	if (nprocs < 1 || nprocs > MAX_ALIVE) {
		printf("procs: procs=%lu: expected 1 to %u\n", (unsigned long)nprocs, MAX_ALIVE);
		return 2;
	}
	if (boot->ram_size > (uint64_t)MAX_FRAMES << 12) {
		printf("procs: at most %u MiB of RAM\n", MAX_FRAMES >> 8);
		return 2;
	}
	set_exception_handler(14, cow_fault);
	if (setup_kernel_and_init())
		goto out_of_memory;

	/* Setup: fork until nprocs are alive, then run each once. */
	for (uint32_t n = 1; n < nprocs; n++) {
		uint32_t parent = (n - 1) / 2;
		uint64_t tables;

		switch_to(parent);
		if (!(tables = fork_process(parent, n)))
			goto out_of_memory;
		counts.setup_tables += tables;
		counts.setup_forks++;
		kern->run_queue[n] = n;
	}
	for (uint32_t i = 0; i < nprocs; i++) {
		switch_to(kern->run_queue[i]);
		if (run_process())
			return 1;
	}
	printf("procs: setup: %lu processes, %lu forks, %lu table pages\n", (unsigned long)kern->nr_alive,
	       (unsigned long)counts.setup_forks, (unsigned long)counts.setup_tables);

	/* The rounds: every process runs in turn. */
	for (uint64_t r = 0; r < rounds; r++) {
		for (uint32_t i = 0; i < nprocs; i++) {
			switch_to(kern->run_queue[i]);
			counts.round_switches++;
			if (run_process())
				return 1;
		}
	}

	/* Fork/exit cycles: init forks a child, which runs and exits. */
	if (forks)
		switch_to(0);
	for (uint64_t f = 0; f < forks; f++) {
		uint32_t child = (uint32_t)nprocs;
		uint64_t tables = fork_process(0, child);

		if (!tables)
			goto out_of_memory;
		counts.cycle_tables += tables;
		counts.cycle_forks++;
		switch_to(child);
		if (run_process())
			return 1;
		switch_to(0);
		reap(child);
		if (run_process())
			return 1;
	}

	printf("procs: copy-on-write: %lu copies, %lu reuses\n", (unsigned long)counts.cow_copies,
	       (unsigned long)counts.cow_reuses);
	printf("procs: fork new table pages: %lu in %lu forks\n", (unsigned long)counts.cycle_tables,
	       (unsigned long)counts.cycle_forks);
	printf("procs: %lu processes, %lu rounds, %lu switches, %lu forks: ok\n", (unsigned long)kern->nr_alive,
	       (unsigned long)rounds, (unsigned long)counts.round_switches, (unsigned long)forks);
	return 0;

out_of_memory:
	printf("procs: out of memory\n");
	return 2;
}
