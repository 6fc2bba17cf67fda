/*
 * attack: the attacks of a guest that loads its own CR3 with a plain mov
 * (no exit under nested paging) and so reaches the shadow table pool where
 * its memslot is writable (AMD). umbra must come through each with no VM
 * reaching another's memory (tests/test_kvm_hostile.c):
 *
 *   mode=scribble rounds=R
 *       writes garbage into every shadow table it can reach except those
 *       that map its own RAM (non-leaf entries pointing outside the pool,
 *       at other tables, at their own table: cycles; leaves at random
 *       frames), then returns to umbra's CR3 and makes umbra walk: flush,
 *       invlpg, address-space switches, faults. R rounds (default 3).
 *   mode=leaves-attacker mbox=SEG target=GPA size=BYTES
 *       rewrites every shadow leaf of the pool that maps a page of
 *       [GPA, GPA+BYTES) (another VM's segment, not attached here) to map
 *       the next page of it, once the victim says it mapped them.
 *   mode=leaves-victim mbox=SEG seg=NAME expect=SUM
 *       checksums segment NAME (FNV-1a), tells the attacker, waits for it,
 *       flushes its TLB and checksums again: prints both sums; exits 1 if
 *       the second is not SUM.
 *   mode=private-attacker mbox=SEG page=GPA
 *       rewrites every shadow leaf that maps guest-physical page GPA
 *       (another VM's private RAM) to map page 2 of segment SEG, which it
 *       attaches too, then prints what it reads there.
 *   mode=private-victim mbox=SEG page=GPA secret=X
 *       fills its RAM page GPA with X, tells the attacker, waits for it,
 *       flushes its TLB, fills the page again, and checks it reads X back.
 *
 * SEG is a writable segment that both VMs of an attack attach (struct
 * mailbox in its first page). Waits are bounded (wait=S seconds, default
 * 60): a VM whose peer was stopped goes on alone.
 */
#include "guest.h"
#include "hostile.h"

#define TRAP_PAGE 2 /* the mailbox segment's page that the private attack redirects to */

static uint64_t wait_s;

/* Pool pages that translate this VM's RAM and segments (PML4 entry 0 of
 * each shadow root it ran on), which the scribbler leaves alone so that it
 * lives on to make umbra walk what it wrote. */
static uint8_t *keep;

static void keep_subtree(const struct pool_view *view, uint64_t table, int level)
{
	uint64_t page = (table - view->pool_gpa) / 4096;

	if (!pool_holds(view, table) || keep[page])
		return;
	keep[page] = 1;
	for (unsigned int i = 0; i < (level == 4 ? 1u : 512u) && level > 1; i++) {
		uint64_t e = *pool_entry(page, i);

		if ((e & PTE_P) && !(e & PTE_PS))
			keep_subtree(view, e & PTE_ADDR, level - 1);
	}
}

/* Garbage for a present entry @e of pool page @page. */
static uint64_t garbage(const struct pool_view *view, struct rng *rng, uint64_t page, uint64_t e)
{
	uint64_t pool_end = view->pool_gpa + view->nr_pages * 4096;
	uint64_t flags = e & ~PTE_ADDR;

	switch (rng_below(rng, 6)) {
	case 0: /* outside the pool, just past its end */
		return (pool_end + rng_below(rng, 512) * 4096) | flags;
	case 1: /* a cycle: the entry's own table */
		return (view->pool_gpa + page * 4096) | flags;
	case 2: /* another table, any */
		return (view->pool_gpa + rng_below(rng, view->nr_pages) * 4096) | flags;
	case 3: /* RAM: a guest page read as a table */
		return (rng_below(rng, 4096) * 4096) | flags;
	case 4: /* the top of the address field */
		return PTE_ADDR | flags;
	default: /* anything at all, present */
		return rng_next(rng) | PTE_P;
	}
}

static uint64_t scribble_once(const struct pool_view *view, struct rng *rng, const uint64_t *roots, int nr_roots)
{
	uint64_t written = 0;
	uint64_t cr3 = raw_cr3_enter(view);

	memset(keep, 0, view->nr_pages);
	for (int r = 0; r < nr_roots; r++)
		keep_subtree(view, roots[r] & PTE_ADDR, 4);
	for (uint64_t page = 0; page < view->nr_pages; page++) {
		if (keep[page])
			continue;
		for (unsigned int i = 0; i < 512; i++) {
			volatile uint64_t *e = pool_entry(page, i);

			if ((*e & PTE_P) || rng_below(rng, 64) == 0) {
				*e = garbage(view, rng, page, *e | PTE_P);
				written++;
			}
		}
	}
	raw_cr3_leave(cr3);
	return written;
}

/* Makes umbra walk the tables: faults, invlpg, flush, switches. Only
 * reads: through scribbled tables a write could land anywhere in RAM. */
static void make_umbra_walk(struct address_space *user, int nr)
{
	tlb_flush();
	for (int i = 0; i < nr; i++)
		tlb_invlpg(USER_BASE + (uint64_t)i * 4096);
	as_switch(user);
	for (int i = 0; i < nr; i++) {
		uint64_t v;
		probe_read(USER_BASE + (uint64_t)i * 4096, &v);
		tlb_invlpg(USER_BASE + (uint64_t)i * 4096);
		probe_read(USER_BASE + (uint64_t)i * 4096 + 8, &v);
	}
	tlb_flush();
	as_switch(as_boot());
}

static int scribble(const struct umbra_boot_info *boot)
{
	static struct address_space user;
	static uint64_t frames[16];
	struct pool_view view;
	struct rng rng;
	uint64_t roots[2];

	rng_seed(&rng, cmdline_u64(boot->cmdline, "seed", 1));
	if (as_create(&user) || pool_view_create(boot, &view))
		return 2;
	keep = (uint8_t *)page_alloc();
	for (uint64_t i = 1; keep && i < (view.nr_pages + 4095) / 4096; i++)
		if (!page_alloc())
			keep = NULL;
	for (int i = 0; i < 16 && keep; i++)
		if (!(frames[i] = page_alloc()) || pt_map(&user, USER_BASE + (uint64_t)i * 4096, frames[i], PTE_W))
			keep = NULL;
	if (!keep) {
		printf("attack: out of memory\n");
		return 2;
	}
	roots[0] = read_cr3();
	as_switch(&user);
	for (int i = 0; i < 16; i++)
		*(volatile uint64_t *)(USER_BASE + (uint64_t)i * 4096) = (uint64_t)i;
	roots[1] = read_cr3();
	as_switch(as_boot());
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 3);
	for (uint64_t r = 0; r < rounds; r++) {
		uint64_t n = scribble_once(&view, &rng, roots, 2);
		printf("attack: round %lu: %lu pool entries scribbled\n", (unsigned long)r, (unsigned long)n);
		make_umbra_walk(&user, 16);
	}
	return 0;
}

/* Rewrites every present 4 KiB leaf of the pool that maps a page of
 * [lo, hi): to the page @shift later, wrapping in [lo, hi), or to @to. */
static uint64_t retarget_leaves(const struct pool_view *view, uint64_t lo, uint64_t hi, uint64_t shift, uint64_t to)
{
	uint64_t n = 0, cr3 = raw_cr3_enter(view);

	for (uint64_t page = 0; page < view->nr_pages; page++) {
		for (unsigned int i = 0; i < 512; i++) {
			volatile uint64_t *e = pool_entry(page, i);
			uint64_t v = *e, addr = v & PTE_ADDR;

			if (!(v & PTE_P) || addr < lo || addr >= hi)
				continue;
			addr = to ? to : lo + (addr - lo + shift) % (hi - lo);
			*e = (v & ~PTE_ADDR) | addr;
			n++;
		}
	}
	raw_cr3_leave(cr3);
	return n;
}

static int leaves_attacker(const struct umbra_boot_info *boot, struct mailbox *mb)
{
	uint64_t target = cmdline_u64(boot->cmdline, "target", 0), size = cmdline_u64(boot->cmdline, "size", 0);
	struct pool_view view;

	if (!target || !size || pool_view_create(boot, &view))
		return 2;
	if (!mailbox_wait(&mb->ready, wait_s))
		printf("attack: the victim never said it was ready\n");
	uint64_t n = retarget_leaves(&view, target, target + size, 4096, 0);
	printf("attack: %lu leaves of [%#lx, %#lx) rewritten\n", (unsigned long)n, (unsigned long)target,
	       (unsigned long)(target + size));
	__atomic_store_n(&mb->done, n + 1, __ATOMIC_RELEASE);
	return 0;
}

static int leaves_victim(const struct umbra_boot_info *boot, struct mailbox *mb)
{
	const struct umbra_segment_info *seg = cmdline_segment(boot, "attack", "seg");
	uint64_t expect = cmdline_u64(boot->cmdline, "expect", 0);

	if (!seg)
		return 2;
	uint64_t before = fnv1a(FNV_OFFSET, (const void *)seg->gpa, seg->size);
	__atomic_store_n(&mb->ready, 1, __ATOMIC_RELEASE);
	if (!mailbox_wait(&mb->done, wait_s))
		printf("attack: victim: the attacker never said it was done\n");
	local_tlb_flush();
	uint64_t after = fnv1a(FNV_OFFSET, (const void *)seg->gpa, seg->size);
	printf("attack: victim: %s sum before the attack %#lx, after: expected %#lx, got %#lx\n", seg->name,
	       (unsigned long)before, (unsigned long)expect, (unsigned long)after);
	return after == expect && before == expect ? 0 : 1;
}

static int private_attacker(const struct umbra_boot_info *boot, struct mailbox *mb)
{
	uint64_t page = cmdline_u64(boot->cmdline, "page", 0);
	uint64_t trap = (uint64_t)mb + TRAP_PAGE * 4096;
	struct pool_view view;

	if (!page || pool_view_create(boot, &view))
		return 2;
	if (!mailbox_wait(&mb->ready, wait_s))
		printf("attack: the victim never said it was ready\n");
	uint64_t n = retarget_leaves(&view, page, page + 4096, 0, trap);
	__atomic_store_n(&mb->done, n + 1, __ATOMIC_RELEASE);
	if (!mailbox_wait(&mb->written, wait_s))
		printf("attack: the victim never said it wrote again\n");
	printf("attack: %lu leaves of page %#lx redirected; the trap page reads %#lx\n", (unsigned long)n,
	       (unsigned long)page, (unsigned long)*(volatile uint64_t *)trap);
	__atomic_store_n(&mb->read, 1, __ATOMIC_RELEASE);
	return 0;
}

static void fill(uint64_t page, uint64_t value)
{
	for (uint64_t off = 0; off < 4096; off += 8)
		*(volatile uint64_t *)(page + off) = value;
}

static int private_victim(const struct umbra_boot_info *boot, struct mailbox *mb)
{
	uint64_t page = cmdline_u64(boot->cmdline, "page", 0), secret = cmdline_u64(boot->cmdline, "secret", 0);

	if (!page || page + 4096 > boot->free_end || page < boot->free_start || !secret)
		return 2;
	fill(page, secret);
	__atomic_store_n(&mb->ready, 1, __ATOMIC_RELEASE);
	if (!mailbox_wait(&mb->done, wait_s))
		printf("attack: victim: the attacker never said it was done\n");
	local_tlb_flush();
	fill(page, secret);
	__atomic_store_n(&mb->written, 1, __ATOMIC_RELEASE);
	mailbox_wait(&mb->read, wait_s);
	uint64_t got = *(volatile uint64_t *)page;
	printf("attack: victim: page %#lx reads %s\n", (unsigned long)page, got == secret ? "the secret" : "garbage");
	return got == secret ? 0 : 1;
}

int main(const struct umbra_boot_info *boot)
{
	char mode[32];
	struct mailbox *mb = NULL;

	if (boot->vcpu_id != 0)
		return 0;
	wait_s = cmdline_u64(boot->cmdline, "wait", 60);
	if (!cmdline_get(boot->cmdline, "mode", mode, sizeof(mode))) {
		printf("attack: no mode= on the command line\n");
		return 2;
	}
	if (strcmp(mode, "scribble") == 0)
		return scribble(boot);
	if (!(mb = mailbox_get(boot, "attack")))
		return 2;
	if (strcmp(mode, "leaves-attacker") == 0)
		return leaves_attacker(boot, mb);
	if (strcmp(mode, "leaves-victim") == 0)
		return leaves_victim(boot, mb);
	if (strcmp(mode, "private-attacker") == 0)
		return private_attacker(boot, mb);
	if (strcmp(mode, "private-victim") == 0)
		return private_victim(boot, mb);
	printf("attack: unknown mode '%s'\n", mode);
	return 2;
}
