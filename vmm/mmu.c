/*
 * Shadow paging of KVM VMs: the trust groups' shadow-table pools (struct
 * vmm_host, struct vmm_group), each VM's shadow MMU with its slots (freed
 * when the VM stops), CR3 switches and the pinned ranges every address
 * space keeps mapped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "umbra/trace.h"
#include "vm_internal.h"
#include "x86.h"

/* ---- the process's shared state: the trust groups' pools ---- */

static int group_pool_create(struct vmm_group *group, const struct plan_group *pg, struct vmm_error *err)
{
	int ret;

	memcpy(group->name, pg->name, sizeof(group->name));
	group->pool_ro = MAP_FAILED;
	group->pool_pages = pg->pool_pages;
	ret = shadow_pool_create(group->pool_pages, &group->pool);
	if (ret)
		return vmm_error_set(err, -ret, "shadow table pool of %zu pages for trust group '%s': %s",
				     group->pool_pages, pg->name, strerror(-ret));
	shadow_pool_memory(group->pool, &group->pool_mem);
	group->pool_ro = mmap(NULL, group->pool_mem.bytes, PROT_READ, MAP_SHARED, group->pool_mem.fd, 0);
	if (group->pool_ro == MAP_FAILED) {
		ret = vmm_error_set(err, errno, "read-only mapping of the shadow table pool: %s", strerror(errno));
		shadow_pool_destroy(group->pool);
		group->pool = NULL;
		return ret;
	}
	return 0;
}

static void group_pool_destroy(struct vmm_group *group)
{
	if (!group->pool)
		return;
	munmap(group->pool_ro, group->pool_mem.bytes);
	shadow_pool_destroy(group->pool);
	group->pool = NULL;
}

int vmm_host_create(const struct plan *plan, struct vmm_host **out, struct vmm_error *err)
{
	struct vmm_host *host = calloc(1, sizeof(*host));
	int ret;

	if (!host)
		return vmm_error_set(err, ENOMEM, "out of memory");
	host->fault_around = VMM_FAULT_AROUND_DEFAULT;
	host->huge_leaves = true;
	host->notifier_mode = NOTIFIER_MODE_RANGE;
	host->groups = calloc(plan->nr_groups ? plan->nr_groups : 1, sizeof(*host->groups));
	if (!host->groups) {
		ret = vmm_error_set(err, ENOMEM, "out of memory");
		goto free_host;
	}
	for (; host->nr_groups < plan->nr_groups; host->nr_groups++) {
		ret = group_pool_create(&host->groups[host->nr_groups], &plan->groups[host->nr_groups], err);
		if (ret)
			goto destroy_pools;
	}
	umbra_mutex_init(&host->output_lock, "vmm.output_lock", UMBRA_LOCK_RANK_VMM_OUTPUT);
	umbra_mutex_init(&host->vms_lock, "vmm.vms_lock", UMBRA_LOCK_RANK_VMM_VMS);
	*out = host;
	return 0;

destroy_pools:
	for (unsigned int g = 0; g < host->nr_groups; g++)
		group_pool_destroy(&host->groups[g]);
	free(host->groups);
free_host:
	free(host);
	return ret;
}

void vmm_host_destroy(struct vmm_host *host)
{
	if (!host)
		return;
	umbra_mutex_exit(&host->output_lock);
	umbra_mutex_exit(&host->vms_lock);
	for (unsigned int g = 0; g < host->nr_groups; g++)
		group_pool_destroy(&host->groups[g]);
	free(host->groups);
	free(host);
}

/* ---- the run's VMs ---- */

int vmm_host_reserve_vms(struct vmm_host *host, unsigned int n)
{
	int ret = 0;

	umbra_mutex_lock(&host->vms_lock);
	if (n > VMM_MAX_VMS - host->nr_vms - host->nr_reserved)
		ret = -ENOSPC;
	else
		host->nr_reserved += n;
	umbra_mutex_unlock(&host->vms_lock);
	return ret;
}

void vmm_host_unreserve_vms(struct vmm_host *host, unsigned int n)
{
	umbra_mutex_lock(&host->vms_lock);
	host->nr_reserved -= n;
	umbra_mutex_unlock(&host->vms_lock);
}

void vmm_host_add_vm(struct vmm_host *host, struct vm *vm)
{
	umbra_mutex_lock(&host->vms_lock);
	if (vm->parent)
		host->nr_reserved--;
	host->vms[host->nr_vms++] = vm;
	vm->trace_id = host->nr_vms;
	umbra_mutex_unlock(&host->vms_lock);
	if (vm->mmu)
		shadow_mmu_set_trace_id(vm->mmu, vm->trace_id);
	if (umbra_trace_active())
		(void)umbra_trace_process_name(vm->trace_id, vm->name); /* unnamed without memory */
}

size_t vmm_host_ram_bytes(struct vmm_host *host, unsigned int *nr_areas)
{
	const struct vm_area *seen[SHADOW_MAX_SLOTS * 4];
	unsigned int n = 0, dropped = 0;
	size_t bytes = 0;

	umbra_mutex_lock(&host->vms_lock);
	for (unsigned int i = 0; i < host->nr_vms; i++) {
		for (unsigned int s = 0; s < SHADOW_MAX_SLOTS; s++) {
			const struct vm_area *a = host->vms[i]->areas[s];
			unsigned int k;
			struct stat st;

			if (!a)
				continue;
			for (k = 0; k < n && seen[k] != a; k++)
				;
			if (k < n)
				continue;
			if (n < sizeof(seen) / sizeof(seen[0]))
				seen[n++] = a;
			else
				dropped++; /* counted again if held twice: an upper bound */
			if (fstat(a->fd, &st) == 0)
				bytes += (size_t)st.st_blocks * 512;
		}
	}
	umbra_mutex_unlock(&host->vms_lock);
	if (nr_areas)
		*nr_areas = n + dropped;
	return bytes;
}

void vmm_host_offer_layer(struct vmm_host *host, struct vm *stopped, int slot, const struct vm_area *a)
{
	umbra_mutex_lock(&host->vms_lock);
	for (unsigned int i = 0; i < host->nr_vms; i++) {
		struct vm *vm = host->vms[i];

		if (vm != stopped && vm->areas[slot] == a && !vm_is_stopped(vm))
			__atomic_fetch_or(&vm->takeover_req, 1ull << slot, __ATOMIC_RELEASE);
	}
	umbra_mutex_unlock(&host->vms_lock);
}

struct vm *vmm_host_vm(struct vmm_host *host, unsigned int i)
{
	struct vm *vm = NULL;

	umbra_mutex_lock(&host->vms_lock);
	if (i < host->nr_vms)
		vm = host->vms[i];
	umbra_mutex_unlock(&host->vms_lock);
	return vm;
}

/* ---- a VM's shadow MMU ---- */

/* The paging controls of the boot state, as the shadow MMU must model them. */
static struct shadow_paging_mode vm_paging_mode(const struct vm *vm)
{
	struct shadow_paging_mode mode = shadow_default_mode;

	mode.wp = true;
	mode.nxe = vm->has_nx;
	mode.smep = false;
	for (unsigned int i = 0; i < vm->cpuid->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &vm->cpuid->entries[i];
		unsigned int phys_bits = e->eax & X86_CPUID_ADDR_SIZES_PHYS_MASK;

		if (e->function == X86_CPUID_EXT_FEATURES)
			mode.gbpages = e->edx & X86_CPUID_EXT_EDX_PDPE1GB;
		if (e->function == X86_CPUID_ADDR_SIZES && phys_bits >= X86_MAXPHYADDR_MIN &&
		    phys_bits <= X86_MAXPHYADDR_MAX)
			mode.maxphyaddr = phys_bits;
	}
	return mode;
}

/* Adds the shadow MMU's slot of each segment, mapped at its gpa. */
static int vm_mmu_add_segments(struct vm *vm, struct vmm_error *err)
{
	for (unsigned int i = 0; i < vm->nr_segments; i++) {
		struct segment *seg = vm->segments[i];
		/* Every VM places the segment at the same machine (KVM
		 * guest-physical) address, so the runs the guest maps with 2 MiB
		 * pages use the canonical tables every VM shares; the pager's
		 * get_page swaps pages in. */
		struct shadow_slot slot = { seg->obj, seg->gpa, seg->host, !seg->writable, NULL, NULL };
		int ret;

		if (seg->memory) {
			vmm_memory_slot(seg->memory, seg->pager_id, &slot);
			slot.mpa = seg->gpa;
			slot.readonly = !seg->writable;
		}

		if ((ret = shadow_mmu_add_segment(vm->mmu, &slot, &vm->segment_slots[i])) ||
		    (ret = shadow_mmu_map_gpa(vm->mmu, seg->gpa, seg->size / SHADOW_PAGE_SIZE,
					      vm->segment_slots[i], 0)))
			return vmm_error_set(err, -ret, "shadow MMU slot for segment '%s': %s", seg->name,
					     strerror(-ret));
	}
	return 0;
}

int vm_mmu_init(struct vm *vm, struct vmm_error *err)
{
	int ret;

	uint64_t max_gpa = vm->ram_size;
	for (unsigned int i = 0; i < vm->nr_segments; i++)
		if (vm->segments[i]->gpa + vm->segments[i]->size > max_gpa)
			max_gpa = vm->segments[i]->gpa + vm->segments[i]->size;
	/* Every vCPU may run an address space of its own, with room to switch. */
	struct shadow_mmu_config config = {
		.pool = vm->group->pool, .max_gpa = max_gpa, .nr_roots = 0,
		.max_tables = (unsigned long)vm->table_quota, .mode = vm_paging_mode(vm),
		.fault_around = vm->host->fault_around, .huge_leaves = vm->host->huge_leaves,
	};
	ret = shadow_mmu_create(&config, &vm->mmu);
	if (ret)
		return vmm_error_set(err, -ret, "shadow MMU: %s", strerror(-ret));
	/* The pool itself is not in the P2M: a guest that maps a shadow table
	 * in its own page tables gets no shadow entry for it (see
	 * report_unbacked_fault() in hypercall.c). RAM is the first slot,
	 * and the VM's own area (its private copies go there once cloned). */
	struct shadow_slot ram;
	area_slot(vm->areas[0], false, &ram);
	if ((ret = shadow_mmu_add_slot(vm->mmu, &ram, &vm->ram_slot)) ||
	    (ret = shadow_mmu_map_gpa(vm->mmu, 0, vm->ram_size / SHADOW_PAGE_SIZE, vm->ram_slot, 0)) ||
	    (ret = shadow_mmu_set_own_slot(vm->mmu, vm->ram_slot))) {
		vmm_error_set(err, -ret, "shadow MMU slot for RAM: %s", strerror(-ret));
		goto destroy_mmu;
	}
	vm->own_slot = vm->ram_slot;
	ret = vm_mmu_add_segments(vm, err);
	if (ret)
		goto destroy_mmu;
	vm->nr_slots = 1 + (int)vm->nr_segments;
	return 0;

destroy_mmu:
	shadow_mmu_destroy(vm->mmu);
	vm->mmu = NULL;
	return ret;
}

/* Records v in *seen unless *seen is larger (atomic). */
static void record_max(size_t *seen, size_t v)
{
	size_t old = __atomic_load_n(seen, __ATOMIC_RELAXED);

	while (v > old && !__atomic_compare_exchange_n(seen, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

void vm_mmu_release(struct vm *vm)
{
	if (vm->host->dump)
		vmm_dump_add_vm(vm->host->dump, vm);
	shadow_mmu_stats(vm->mmu, &vm->mmu_stats_at_stop);
	(void)shadow_mmu_table_usage(vm->mmu, &vm->tables_at_stop); /* on -ENOMEM: zeroes */
	record_max(&vm->group->in_use_seen, shadow_pool_pages_in_use(vm->group->pool, 0));
	record_max(&vm->host->ram_bytes_seen, vmm_host_ram_bytes(vm->host, NULL));
	for (unsigned int i = 0; i < vm->nr_vcpus; i++)
		if (vm->vcpus[i].tlb.ops)
			shadow_mmu_tlb_unregister(vm->mmu, &vm->vcpus[i].tlb);
	vm_mmu_destroy(vm);
}

void vm_mmu_destroy(struct vm *vm)
{
	bool last[SHADOW_MAX_SLOTS] = { false };

	if (!vm->mmu)
		return;
	/* The areas no running VM holds any more are freed whole, after the
	 * MMU: the pages it frees one by one meanwhile are not discarded. */
	for (unsigned int i = 0; i < SHADOW_MAX_SLOTS; i++) {
		struct vm_area *a = vm->areas[i];

		unsigned int live = a ? __atomic_sub_fetch(&a->live, 1, __ATOMIC_ACQ_REL) : 1;

		if (live == 0) {
			__atomic_store_n(&a->dying, true, __ATOMIC_RELEASE);
			last[i] = true;
		} else if (live == 1 && (int)i != vm->own_slot) {
			vmm_host_offer_layer(vm->host, vm, (int)i, a);
		}
	}
	shadow_mmu_destroy(vm->mmu);
	vm->mmu = NULL;
	for (unsigned int i = 0; i < SHADOW_MAX_SLOTS; i++)
		if (last[i])
			area_free_memory(vm->areas[i]);
}

void vm_mmu_exit(struct vm *vm)
{
	vm_mmu_destroy(vm);
}

/* ---- pins and CR3 ---- */

/* The VM's shadow reclaims and quota refusals so far. */
static void vm_room_counts(const struct vm *vm, uint64_t *reclaims, uint64_t *refusals)
{
	struct shadow_mmu_stats st;

	shadow_mmu_stats(vm->mmu, &st);
	*reclaims = st.reclaims;
	*refusals = st.quota_refusals;
}

/* Pre-faults the pages of [start, start + len) into the shadow of guest_cr3.
 * 0, -ENOMEM or -EDQUOT. */
static int prefault_range(struct vm *vm, uint64_t guest_cr3, uint64_t start, uint64_t len)
{
	for (uint64_t va = start & ~(X86_PAGE_SIZE - 1); va < start + len; va += X86_PAGE_SIZE) {
		uint32_t ec;
		int r = shadow_mmu_fault(vm->mmu, guest_cr3, va, SHADOW_ACCESS_WRITE, &ec);
		if (r == SHADOW_FAULT_GUEST || r == -EACCES)
			r = shadow_mmu_fault(vm->mmu, guest_cr3, va, 0, &ec);
		if (r == -ENOMEM || r == -EDQUOT)
			return r;
	}
	return 0;
}

/* One pass of prefault_pins() over @pins. 0, -ENOMEM or -EDQUOT. */
static int prefault_pins_once(struct vm *vm, uint64_t guest_cr3, const struct pin *pins, unsigned int nr)
{
	for (unsigned int i = 0; i < nr; i++) {
		for (unsigned int k = 0; k < pins[i].count; k++) {
			int r = prefault_range(vm, guest_cr3, pins[i].va + k * pins[i].stride, pins[i].len);
			if (r)
				return r;
		}
	}
	return 0;
}

uint64_t pin_pages(const struct pin *pin)
{
	uint64_t first = pin->va & ~(X86_PAGE_SIZE - 1);
	uint64_t end = (pin->va + pin->len + X86_PAGE_SIZE - 1) & ~(X86_PAGE_SIZE - 1);

	return (uint64_t)pin->count * ((end - first) / X86_PAGE_SIZE);
}

/* Pre-faults every pinned range into the shadow of guest_cr3: writable where
 * the guest's tables allow it, else readable. Ranges the guest does not map
 * there are skipped. A pass during which the VM reclaimed (which drops what
 * the pass pre-faulted before) is run again once; if that one reclaims too,
 * the pins do not fit. Sets *seen to the reclaims count the pins are good
 * for. Returns 0, -ENOMEM (the pool is exhausted) or -EDQUOT (the quota). */
static int prefault_pins(struct vm *vm, uint64_t guest_cr3, uint64_t *seen)
{
	struct pin pins[UMBRA_MAX_PINS];
	uint64_t reclaims, refusals, now, refusals_now;
	unsigned int nr;

	umbra_mutex_lock(&vm->lock);
	nr = vm->nr_pins;
	memcpy(pins, vm->pins, sizeof(pins));
	umbra_mutex_unlock(&vm->lock);
	for (int pass = 0; pass < 2; pass++) {
		vm_room_counts(vm, &reclaims, &refusals);
		int r = prefault_pins_once(vm, guest_cr3, pins, nr);
		if (r)
			return r;
		vm_room_counts(vm, &now, &refusals_now);
		if (now == reclaims) {
			*seen = now;
			return 0;
		}
	}
	return refusals_now != refusals ? -EDQUOT : -ENOMEM;
}

const char *vm_room_error(const struct vm *vm, int err, char *buf, size_t size)
{
	if (err == -EDQUOT)
		snprintf(buf, size, "the VM's shadow-table quota (%llu pages) is exhausted",
			 (unsigned long long)vm->table_quota);
	else if (err == -ENOMEM)
		snprintf(buf, size, "the shadow table pool (%zu pages) is exhausted", vm->group->pool_pages);
	else
		snprintf(buf, size, "%s", strerror(-err));
	return buf;
}

int vcpu_load_guest_cr3(struct vcpu *vcpu, uint64_t guest_cr3, uint64_t *root)
{
	struct vm *vm = vcpu->vm;
	int ret = shadow_mmu_load_cr3(vm->mmu, &vcpu->tlb, guest_cr3, root);
	uint64_t reclaims, gen;

	if (ret)
		return ret;
	vcpu->guest_cr3 = guest_cr3;
	/* A cached root that nothing was zapped from since the pins were
	 * pre-faulted into it still has them: no walk. */
	reclaims = shadow_mmu_reclaims(vm->mmu);
	if (shadow_mmu_root_is_marked(vm->mmu, guest_cr3, &gen)) {
		vcpu->pins_reclaims = reclaims;
		__atomic_fetch_add(&vm->pin_walks_skipped, 1, __ATOMIC_RELAXED);
		return 0;
	}
	__atomic_fetch_add(&vm->pin_walks, 1, __ATOMIC_RELAXED);
	ret = prefault_pins(vm, guest_cr3, &vcpu->pins_reclaims);
	if (!ret)
		shadow_mmu_root_mark(vm->mmu, guest_cr3, gen);
	return ret;
}

int vcpu_resume_guest_cr3(struct vcpu *vcpu, uint64_t guest_cr3, uint64_t *root)
{
	int ret = shadow_mmu_resume_cr3(vcpu->vm->mmu, &vcpu->tlb, guest_cr3, root);

	if (!ret)
		vcpu->guest_cr3 = guest_cr3;
	return ret;
}

int vcpu_prefault_pins(struct vcpu *vcpu)
{
	return prefault_pins(vcpu->vm, vcpu->guest_cr3, &vcpu->pins_reclaims);
}

/* Under the pager: pins the pages that [va, va + len) translates to in the
 * vCPU's address space now, so that they are never swapped out (docs/abi.md:
 * a pinned range must translate to the same pages in every address space).
 * A page the guest does not map is skipped; the guest's PINs total at most
 * UMBRA_PIN_TOTAL_MAX, so the pages pinned are bounded. No lock held. */
void vm_pin_va_range(struct vcpu *vcpu, uint64_t va, uint64_t len)
{
	struct vm *vm = vcpu->vm;
	struct vmm_memory *memory = vm->host->memory;

	if (!memory)
		return;
	for (uint64_t p = va & ~(X86_PAGE_SIZE - 1); p < va + len; p += X86_PAGE_SIZE) {
		uint64_t gpa;

		if (shadow_mmu_translate(vm->mmu, vcpu->guest_cr3, p, &gpa))
			continue;
		vm_pin_gpa(vm, gpa & ~(X86_PAGE_SIZE - 1));
	}
}

void vm_pin_gpa(struct vm *vm, uint64_t gpa)
{
	struct vmm_memory *memory = vm->host->memory;
	struct vm_area *a;
	uint64_t mpa, page;

	if (!memory || shadow_mmu_p2m_lookup(vm->mmu, gpa, &mpa, NULL))
		return;
	a = vm_area_of_mpa(vm, mpa, &page);
	if (a) {
		(void)vmm_memory_pin(memory, a->pager_id, page * X86_PAGE_SIZE, X86_PAGE_SIZE);
		return;
	}
	for (unsigned int i = 0; i < vm->nr_segments; i++) {
		const struct segment *seg = vm->segments[i];

		if (mpa >= seg->gpa && mpa - seg->gpa < seg->size && seg->memory)
			(void)vmm_memory_pin(memory, seg->pager_id, (mpa - seg->gpa) & ~(X86_PAGE_SIZE - 1),
					     X86_PAGE_SIZE);
	}
}

int vcpu_add_pin(struct vcpu *vcpu, uint64_t va, uint64_t len)
{
	struct vm *vm = vcpu->vm;
	int ret = 0;

	umbra_mutex_lock(&vm->lock);
	if (vm->nr_pins == UMBRA_MAX_PINS) {
		ret = -ENOSPC;
	} else if (len > UMBRA_PIN_TOTAL_MAX - vm->guest_pinned_bytes) {
		ret = -E2BIG;
	} else {
		vm->pins[vm->nr_pins] = (struct pin){ va, len, 0, 1 };
		vm->guest_pinned_bytes += len;
		__atomic_add_fetch(&vm->pinned_pages, pin_pages(&vm->pins[vm->nr_pins++]), __ATOMIC_RELAXED);
	}
	umbra_mutex_unlock(&vm->lock);
	if (ret)
		return ret;
	vm_pin_va_range(vcpu, va, len);
	return prefault_pins(vm, vcpu->guest_cr3, &vcpu->pins_reclaims);
}

int vcpu_refresh_pins(struct vcpu *vcpu)
{
	if (!vcpu->guest_cr3 || shadow_mmu_reclaims(vcpu->vm->mmu) == vcpu->pins_reclaims)
		return 0;
	return prefault_pins(vcpu->vm, vcpu->guest_cr3, &vcpu->pins_reclaims);
}
