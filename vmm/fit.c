/*
 * Whether a plan fits the host: what its VMs may come to use (declared guest
 * RAM, segments, umbra's own bookkeeping, the table pools) against the
 * host's memory and swap and RLIMIT_AS, checked before anything is created,
 * so that a run that cannot fit is refused with the figures instead of
 * ending in the OOM killer. The estimate is the most the run can use, not
 * what it uses at first: guest RAM, segments and pools are sparse and cost
 * memory as they are touched, but a guest may touch all of its RAM and fill
 * its table quota (docs/config.md, "Fitting the host").
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "vmm.h"

/* umbra's own memory per VM and per vCPU besides RAM and tables: struct vm,
 * CPUID, kvm_run, a vCPU thread's stack in use, KVM's own per-vCPU state. */
#define FIT_PER_VM (1ull << 20)
#define FIT_PER_VCPU (256ull << 10)
/* Per declared 4 KiB page of a VM's RAM and attached segments: its entry in
 * the shadow MMU's P2M and the memory object's per-page state. */
#define FIT_PER_GUEST_PAGE 16u
/* Per table page of a pool: the page in the pool's memfd, the shadow
 * library's private copy of it, and its descriptor. */
#define FIT_PER_POOL_PAGE (2ull * SHADOW_PAGE_SIZE + 128u)
/* Per guest page that may be swapped: the swap file's slot state (two bits
 * and a crc32), rounded up. */
#define FIT_PER_SWAP_SLOT 5u

#define MIB(bytes) ((unsigned long long)(((bytes) + (1u << 20) - 1) >> 20))

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

void plan_fit_estimate(const struct plan *plan, struct vmm_fit *fit)
{
	memset(fit, 0, sizeof(*fit));
	for (unsigned int s = 0; s < plan->nr_segments; s++)
		fit->segments += plan->segments[s].size;
	for (unsigned int i = 0; i < plan->nr_vms; i++) {
		const struct plan_vm *v = &plan->vms[i];
		uint64_t declared = v->mem;

		for (unsigned int k = 0; k < v->nr_segments; k++)
			declared += plan->segments[v->segments[k]].size;
		fit->guest_ram += v->mem;
		fit->bookkeeping += FIT_PER_VM + FIT_PER_VCPU * v->vcpus +
				    declared / SHADOW_PAGE_SIZE * FIT_PER_GUEST_PAGE;
	}
	for (unsigned int g = 0; g < plan->nr_groups; g++)
		fit->pools += plan->groups[g].pool_pages * FIT_PER_POOL_PAGE;
	uint64_t guest = sat_add(fit->guest_ram, fit->segments);

	fit->total = sat_add(guest, sat_add(fit->bookkeeping, fit->pools));
	fit->resident = fit->total;
	if (plan->pager.mem_limit && plan->pager.mem_limit < guest) {
		fit->bookkeeping += guest / SHADOW_PAGE_SIZE * FIT_PER_SWAP_SLOT;
		fit->total = sat_add(guest, sat_add(fit->bookkeeping, fit->pools));
		fit->resident = sat_add(plan->pager.mem_limit, sat_add(fit->bookkeeping, fit->pools));
	}
}

int vmm_fit_check(const struct vmm_fit *fit, const struct vmm_host_memory *hm, struct vmm_error *err)
{
	uint64_t memory = sat_add(hm->ram, hm->swap);
	bool over_memory = fit->resident > memory, over_limit = fit->total > hm->as_limit;

	if (!over_memory && !over_limit)
		return 0;
	char host[128];
	if (over_memory)
		snprintf(host, sizeof(host), "the host has %llu MiB of memory and swap (MemTotal + SwapTotal)",
			 MIB(memory));
	else
		snprintf(host, sizeof(host), "umbra may map only %llu MiB (RLIMIT_AS)", MIB(hm->as_limit));
	return vmm_error_set(err, ENOMEM,
			     "the VMs do not fit this host: they may use %llu MiB (guest RAM %llu MiB, segments %llu "
			     "MiB, umbra's bookkeeping %llu MiB, table pools %llu MiB), but %s; run fewer VMs (--vms, "
			     "\"count\"), give them less RAM (--mem, \"mem\"), smaller table quotas "
			     "(--table-quota, \"table_quota\") or a memory limit (--mem-limit, \"mem_limit\")",
			     MIB(over_memory ? fit->resident : fit->total), MIB(fit->guest_ram), MIB(fit->segments), MIB(fit->bookkeeping),
			     MIB(fit->pools), host);
}

int vmm_host_memory_read(struct vmm_host_memory *hm, struct vmm_error *err)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	unsigned long long kib;
	struct rlimit rl;

	if (!f)
		return vmm_error_set(err, errno, "cannot read /proc/meminfo: %s", strerror(errno));
	hm->ram = hm->swap = 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "MemTotal: %llu kB", &kib) == 1)
			hm->ram = (uint64_t)kib << 10;
		else if (sscanf(line, "SwapTotal: %llu kB", &kib) == 1)
			hm->swap = (uint64_t)kib << 10;
	}
	fclose(f);
	if (!hm->ram)
		return vmm_error_set(err, EINVAL, "/proc/meminfo has no MemTotal");
	hm->as_limit = UINT64_MAX;
	if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		hm->as_limit = (uint64_t)rl.rlim_cur;
	return 0;
}
