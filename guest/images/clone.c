/*
 * clone: fills memory with a pattern, clones itself with the CLONE
 * hypercall, and checks that every VM of the family sees its own memory.
 *
 *   mib=N        MiB of free RAM it fills (default 16)
 *   clones=C     clones CLONE makes (default 4)
 *   mode=M       what happens after the clone (default family):
 *     family     clone k rewrites part k of C parts with its own pattern and
 *                verifies its whole view (part k its own, the rest the
 *                parent's first pattern) rounds=R times; meanwhile the parent
 *                rewrites everything with a pattern of its own, R times, and
 *                verifies it. With several vCPUs every vCPU takes part: the
 *                others spin until vCPU 0 has cloned, then verify their
 *                share, in the parent and in every clone.
 *     nested     clones of clones: after the first CLONE each clone writes
 *                its mark into part 1 and clones itself again (clones=C
 *                again); every VM checks the marks of its whole lineage.
 *     owncr3     clone 1 loads the boot page tables into CR3 itself (no exit:
 *                nested paging) and writes the shared memory there; umbra
 *                must stop it (the memory is a read-only memslot). The other
 *                VMs verify that they still read the first pattern.
 *     readonly   every VM only reads: each verifies the whole region R times
 *                (host memory of read-only clones against cold-booted VMs).
 *     cold       no CLONE: fills and verifies R times (the cold-booted VMs
 *                that readonly is measured against).
 *     takeover   CLONE(1): the clone exits at once; the parent reads the
 *                region R times (meanwhile the clone is gone and the parent
 *                takes its memory over), then rewrites and verifies it.
 *     bench      fills, clones, and every VM exits at once (scripts/bench-clone
 *                times the clone from umbra's statistics).
 *     ready      no CLONE: umbra clones the VM when it is ready (--clone);
 *                READY's result (guest_clone_index(): the clone's index, 0
 *                in the parent) names the VM, which fills the region with a
 *                pattern of its own and verifies it.
 *
 * Prints "clone: VM k: ... ok" and exits 0, or prints the first mismatch
 * ("expected X, got Y") and exits 1.
 */
#include "guest.h"

static uint64_t pattern(uint64_t addr, uint64_t tag)
{
	return (addr * 0x9e3779b97f4a7c15ull) ^ (tag << 40) ^ 0x3c3c3c3c3c3c3c3cull;
}

static void fill(uint64_t lo, uint64_t hi, uint64_t tag)
{
	for (uint64_t a = lo; a < hi; a += 8)
		*(volatile uint64_t *)a = pattern(a, tag);
}

/* 0, or -1 after printing the first mismatch. */
static int verify(uint64_t lo, uint64_t hi, uint64_t tag, const char *who)
{
	for (uint64_t a = lo; a < hi; a += 8) {
		uint64_t got = *(volatile uint64_t *)a;

		if (got != pattern(a, tag)) {
			printf("clone: %s: at %#lx expected %#lx, got %#lx\n", who, (unsigned long)a,
			       (unsigned long)pattern(a, tag), (unsigned long)got);
			return -1;
		}
	}
	return 0;
}

/* Set by vCPU 0 once it has cloned (in the parent and in each clone, as the
 * clone's memory is a copy of the parent's at the clone). */
static volatile long clone_index = -1;
static volatile uint32_t failures;

/* family: vCPU 0's part. */
static int family(uint64_t lo, uint64_t bytes, uint64_t clones, uint64_t rounds, const char *who, long k)
{
	/* The last page is no clone's: the other vCPUs check it. */
	uint64_t part = ((bytes - 4096) / clones) & ~0xfffull;

	if (k == 0) {
		for (uint64_t r = 1; r <= rounds; r++) {
			fill(lo, lo + bytes, 1000 + r);
			if (verify(lo, lo + bytes, 1000 + r, who))
				return -1;
		}
		return 0;
	}
	uint64_t mine = lo + part * (uint64_t)(k - 1);
	for (uint64_t r = 1; r <= rounds; r++) {
		fill(mine, mine + part, 100 * (uint64_t)k + r);
		if (verify(lo, mine, 0, who) || verify(mine, mine + part, 100 * (uint64_t)k + r, who) ||
		    verify(mine + part, lo + bytes, 0, who))
			return -1;
	}
	return 0;
}

/* nested: the lineage's marks live in the first pages of the region: page
 * d holds the index taken at depth d. */
static int nested(uint64_t lo, uint64_t clones, char *who, size_t who_size)
{
	long k1 = guest_clone(clones);

	if (k1 < 0) {
		printf("clone: CLONE(%lu) returned %ld\n", (unsigned long)clones, k1);
		return -1;
	}
	fill(lo, lo + 4096, 10 + (uint64_t)k1);
	long k2 = guest_clone(clones);
	if (k2 < 0) {
		printf("clone: second CLONE(%lu) returned %ld\n", (unsigned long)clones, k2);
		return -1;
	}
	fill(lo + 4096, lo + 8192, 20 + (uint64_t)k2);
	snprintf(who, who_size, "VM %ld.%ld", k1, k2);
	if (verify(lo, lo + 4096, 10 + (uint64_t)k1, who) || verify(lo + 4096, lo + 8192, 20 + (uint64_t)k2, who) ||
	    verify(lo + 8192, lo + (64ull << 10), 0, who))
		return -1;
	return 0;
}

/* owncr3: clone 1 writes the shared memory under the boot page tables. */
static int owncr3(const struct umbra_boot_info *boot, uint64_t lo, uint64_t bytes, long k, const char *who)
{
	if (k == 1) {
		__asm__ volatile("mov %0, %%cr3" : : "r"(boot->boot_cr3) : "memory");
		fill(lo, lo + bytes, 666);
		printf("clone: %s: wrote the shared memory under its own CR3\n", who);
		return -1;
	}
	return verify(lo, lo + bytes, 0, who);
}

int main(const struct umbra_boot_info *boot)
{
	uint64_t lo = (boot->free_start + 0xfff) & ~0xfffull;
	uint64_t avail = boot->free_end - lo;
	uint64_t bytes = cmdline_u64(boot->cmdline, "mib", 16) << 20;
	uint64_t clones = cmdline_u64(boot->cmdline, "clones", 4);
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 2);
	char mode[16] = "family", who[32];
	long k_done = 0;
	int ret = 0;

	(void)cmdline_get(boot->cmdline, "mode", mode, sizeof(mode));
	if (bytes == 0 || bytes > avail || clones == 0 || clones > UMBRA_CLONE_MAX) {
		if (boot->vcpu_id == 0)
			printf("clone: mib=%lu clones=%lu: want 1..%lu MiB, 1..%u clones\n", (unsigned long)(bytes >> 20),
			       (unsigned long)clones, (unsigned long)(avail >> 20), UMBRA_CLONE_MAX);
		return 2;
	}
	if (boot->vcpu_id != 0) {
		/* family: wait for vCPU 0's clone, then verify a share of the
		 * first pattern (the part no clone rewrites: the last page). */
		while (clone_index < 0)
			cpu_relax();
		snprintf(who, sizeof(who), "VM %ld vCPU %u", clone_index, boot->vcpu_id);
		if (verify(lo + bytes - 4096, lo + bytes, clone_index > 0 ? 0 : 1000 + rounds, who))
			__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
		vcpu_barrier(boot);
		return 0;
	}
	if (strcmp(mode, "ready") == 0) {
		snprintf(who, sizeof(who), "VM %ld", guest_clone_index());
		fill(lo, lo + bytes, 7 + (uint64_t)guest_clone_index());
		ret = verify(lo, lo + bytes, 7 + (uint64_t)guest_clone_index(), who);
		k_done = guest_clone_index();
		goto out;
	}
	fill(lo, lo + bytes, 0);
	if (strcmp(mode, "cold") == 0) {
		snprintf(who, sizeof(who), "VM 0");
		for (uint64_t r = 0; r < rounds && !ret; r++)
			ret = verify(lo, lo + bytes, 0, who);
		goto out;
	}
	if (strcmp(mode, "nested") == 0) {
		ret = nested(lo, clones, who, sizeof(who));
		goto out;
	}
	long k = guest_clone(clones);
	if (k < 0) {
		printf("clone: CLONE(%lu) returned %ld\n", (unsigned long)clones, k);
		return 1;
	}
	snprintf(who, sizeof(who), "VM %ld", k);
	if (strcmp(mode, "bench") == 0 || (strcmp(mode, "takeover") == 0 && k > 0))
		return 0;
	if (strcmp(mode, "takeover") == 0) {
		for (uint64_t r = 0; r < rounds && !ret; r++)
			ret = verify(lo, lo + bytes, 0, who);
		fill(lo, lo + bytes, 5);
		ret = ret ? ret : verify(lo, lo + bytes, 5, who);
		goto out;
	}
	if (strcmp(mode, "owncr3") == 0) {
		ret = owncr3(boot, lo, bytes, k, who);
	} else if (strcmp(mode, "readonly") == 0) {
		for (uint64_t r = 0; r < rounds && !ret; r++)
			ret = verify(lo, lo + bytes, 0, who);
	} else {
		ret = family(lo, bytes, clones, rounds, who, k);
	}
	k_done = k;
out:
	clone_index = k_done;
	if (boot->nr_vcpus > 1)
		vcpu_barrier(boot);
	if (ret || failures)
		return 1;
	printf("clone: %s: %lu MiB, mode %s: ok\n", who, (unsigned long)(bytes >> 20), mode);
	return 0;
}
