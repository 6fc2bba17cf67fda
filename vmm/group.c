/*
 * Trust groups (docs/security.md): which VMs share a shadow-table pool, and
 * how large each pool is. A group's pool is mapped into its VMs only; where
 * the CPU needs the pool writable (AMD nested paging) a guest can write any
 * table of its group's pool, so VMs that declare no group share nothing.
 * Table quotas bound what one VM may take of its group's pool.
 *
 * Pure code but for allocating plan->groups: testable natively.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "vmm.h"

#define TABLE_ENTRIES 512u /* entries of a table page: each level maps 512 times more */
#define SEGMENT_RUN (2ull << 20) /* a canonical leaf table maps one 2 MiB run */
#define SEGMENT_GIB (1ull << 30) /* a canonical level-2 table, one GiB */
/* Default quota: how many times over the VM's memory may be mapped with
 * 4 KiB pages (address spaces that map the same memory), and the tables of
 * one address space's own (PML4, PDPT, PDs and PTs of the pinned boot
 * ranges and a stack or two). */
#define QUOTA_MAPPINGS 4u
#define QUOTA_TABLES_PER_ROOT 16u
/* Canonical tables of a segment in a pool: one per 2 MiB run and one per GiB
 * for each of the rights (e.g. read-only and read-write mappings) the
 * group's guests use. */
#define CANON_RIGHTS_ALLOWANCE 2u

int vmm_check_group(const char *what, const char *name, struct vmm_error *err)
{
	size_t n = strlen(name);

	if (n == 0 || n >= VMM_GROUP_NAME_MAX)
		return vmm_error_set(err, EINVAL, "%s: a group name has 1 to %u characters", what,
				     VMM_GROUP_NAME_MAX - 1);
	for (const char *p = name; *p; p++)
		if (*p < 0x21 || *p > 0x7e)
			return vmm_error_set(err, EINVAL,
					     "%s: a group name has only printable ASCII characters (no space, byte "
					     "%#x at offset %zu)",
					     what, (unsigned int)(unsigned char)*p, (size_t)(p - name));
	return 0;
}

int vmm_check_table_quota(const char *what, uint64_t pages, struct vmm_error *err)
{
	if (pages < VMM_TABLE_QUOTA_MIN || pages > VMM_TABLE_QUOTA_MAX)
		return vmm_error_set(err, EINVAL, "%s: must be a number of table pages from %u to %" PRIu64, what,
				     VMM_TABLE_QUOTA_MIN, VMM_TABLE_QUOTA_MAX);
	return 0;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
	return (a + b - 1) / b;
}

/* The tables of one address space that maps bytes with 4 KiB pages. */
static uint64_t tables_to_map(uint64_t bytes)
{
	uint64_t pt = div_up(bytes / SHADOW_PAGE_SIZE, TABLE_ENTRIES);
	uint64_t pd = div_up(pt, TABLE_ENTRIES);

	return pt + pd + div_up(pd, TABLE_ENTRIES) + 1;
}

unsigned int vmm_quota_roots(unsigned int vcpus)
{
	return VMM_QUOTA_SPACES + vcpus;
}

uint64_t vmm_table_quota_default(uint64_t mem, unsigned int vcpus, uint64_t segment_bytes)
{
	uint64_t quota = QUOTA_MAPPINGS * tables_to_map(mem + segment_bytes) +
			 (uint64_t)QUOTA_TABLES_PER_ROOT * vmm_quota_roots(vcpus);

	if (quota < VMM_TABLE_QUOTA_DEFAULT_MIN)
		quota = VMM_TABLE_QUOTA_DEFAULT_MIN;
	return quota < VMM_TABLE_QUOTA_MAX ? quota : VMM_TABLE_QUOTA_MAX;
}

void plan_set_default_quotas(struct plan *plan)
{
	for (unsigned int i = 0; i < plan->nr_vms; i++) {
		struct plan_vm *v = &plan->vms[i];
		uint64_t segment_bytes = 0;

		if (v->table_quota)
			continue;
		for (unsigned int k = 0; k < v->nr_segments; k++)
			segment_bytes += plan->segments[v->segments[k]].size;
		v->table_quota = vmm_table_quota_default(v->mem, v->vcpus, segment_bytes);
	}
}

unsigned int plan_nr_ungrouped(const struct plan *plan)
{
	unsigned int n = 0;

	for (unsigned int i = 0; i < plan->nr_vms; i++)
		n += plan->vms[i].group[0] == '\0';
	return n;
}

/* The group VM i joins: an existing one of the same name (or the default
 * group), else a new one. */
static unsigned int group_of(struct plan *plan, unsigned int i, bool share_ungrouped)
{
	const char *name = plan->vms[i].group;

	if (*name || share_ungrouped)
		for (unsigned int g = 0; g < plan->nr_groups; g++)
			if (strcmp(plan->groups[g].name, name) == 0)
				return g;
	memcpy(plan->groups[plan->nr_groups].name, name, VMM_GROUP_NAME_MAX);
	return plan->nr_groups++;
}

/* The pool of group g: its VMs' quotas and the canonical tables of every
 * segment one of them attaches, at most SHADOW_POOL_MAX_PAGES. */
static uint64_t group_pool_pages(const struct plan *plan, unsigned int g)
{
	bool attached[UMBRA_MAX_SEGMENTS] = { false };
	uint64_t pages = 0;

	for (unsigned int i = 0; i < plan->nr_vms; i++) {
		const struct plan_vm *v = &plan->vms[i];

		if (v->group_index != g)
			continue;
		pages += v->table_quota;
		for (unsigned int k = 0; k < v->nr_segments; k++)
			attached[v->segments[k]] = true;
	}
	for (unsigned int s = 0; s < plan->nr_segments; s++)
		if (attached[s])
			pages += CANON_RIGHTS_ALLOWANCE * (div_up(plan->segments[s].size, SEGMENT_RUN) +
							   div_up(plan->segments[s].size, SEGMENT_GIB));
	return pages < SHADOW_POOL_MAX_PAGES ? pages : SHADOW_POOL_MAX_PAGES;
}

int plan_assign_groups(struct plan *plan, bool share_ungrouped, struct vmm_error *err)
{
	free(plan->groups);
	plan->nr_groups = 0;
	plan->groups = calloc(plan->nr_vms ? plan->nr_vms : 1, sizeof(*plan->groups));
	if (!plan->groups)
		return vmm_error_set(err, ENOMEM, "out of memory");
	for (unsigned int i = 0; i < plan->nr_vms; i++) {
		unsigned int g = group_of(plan, i, share_ungrouped);

		plan->vms[i].group_index = g;
		plan->groups[g].nr_vms++;
	}
	for (unsigned int g = 0; g < plan->nr_groups; g++)
		plan->groups[g].pool_pages = group_pool_pages(plan, g);
	return 0;
}
