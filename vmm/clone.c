/*
 * Clones of a running VM (docs/abi.md "Clones", docs/sharing.md "Clones on
 * KVM"): CLONE(n), or READY of a VM's last vCPU under --clone, makes n new
 * VMs that run on from the same point as the parent.
 *
 *  1. Park: the calling vCPU's thread asks every other vCPU thread of the VM
 *     to park (vm->pausing, a kick); each saves its vCPU's state (after
 *     completing a pending port I/O with an immediate-exit KVM_RUN) and
 *     waits. A halted vCPU has no thread: its state is read by the caller.
 *  2. Share: the parent's own RAM area is frozen into a layer, a read-only
 *     memslot of the parent and of every clone; the parent and each clone
 *     get a fresh, sparse own area for their private copies; the shadow
 *     MMU shares the P2M and the tables by use count (shadow_mmu_clone).
 *  3. Build: each clone is a KVM VM with the same memslots (its own area
 *     writable), segments and pool, and vCPUs with the saved state, on the
 *     clone's copies of the parent's roots.
 *  4. Pins: every vCPU's pinned ranges are faulted in again, which copies
 *     the pinned pages the guest may write into the VM's own area before it
 *     runs (a stack or handler page that faulted on write while the CPU
 *     delivers an exception would be fatal), and the copies are pinned.
 *  5. Resume: the parent's vCPUs go on, the clones start.
 *
 * Locks: vm->lock (a leaf) around the parking state only; nothing is held
 * across a call into shadow/ or KVM.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "umbra/trace.h"
#include "vm_internal.h"
#include "x86.h"

/* Machine addresses of RAM areas other than the boot RAM: above the largest
 * pool, below the CPU's physical-address limit. */
#define AREA_MPA_BASE (SHADOW_POOL_GPA + (uint64_t)SHADOW_POOL_MAX_PAGES * SHADOW_PAGE_SIZE)

/* ---- saving a vCPU's state ---- */

/* Reads the vCPU's state into its snapshot. A port I/O or MMIO exit is
 * complete only at the next KVM_RUN: one with immediate_exit set completes
 * it without running the guest. 0 or -errno. */
static int vcpu_save_state(struct vcpu *vcpu, bool complete_io)
{
	struct vcpu_snapshot *s = &vcpu->snap;

	if (complete_io) {
		__atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
		int r = ioctl(vcpu->fd, KVM_RUN, 0);
		int e = errno;

		__atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
		if (r == 0 || e != EINTR)
			return r == 0 ? -EPROTO : -e;
	}
	if (ioctl(vcpu->fd, KVM_GET_REGS, &s->regs) < 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &s->sregs) < 0 ||
	    ioctl(vcpu->fd, KVM_GET_FPU, &s->fpu) < 0 || ioctl(vcpu->fd, KVM_GET_VCPU_EVENTS, &s->events) < 0)
		return -errno;
	struct kvm_device_attr tsc = { .group = KVM_VCPU_TSC_CTRL, .attr = KVM_VCPU_TSC_OFFSET,
				       .addr = (uint64_t)(uintptr_t)&s->tsc_offset };
	s->has_tsc_offset = ioctl(vcpu->fd, KVM_GET_DEVICE_ATTR, &tsc) == 0;
	s->guest_cr3 = vcpu->guest_cr3;
	s->nmi_ready = __atomic_load_n(&vcpu->nmi_ready, __ATOMIC_ACQUIRE);
	s->nmis_injected = vcpu->nmis_injected;
	s->acks_received = vcpu->acks_received;
	return 0;
}

int vcpu_restore_state(struct vcpu *vcpu, const struct vcpu_snapshot *s, uint64_t root)
{
	struct kvm_sregs sregs = s->sregs;

	/* The clone's copy of the root, with the parent's CR3 flag bits. */
	sregs.cr3 = root | (s->sregs.cr3 & (X86_PAGE_SIZE - 1));
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(vcpu->fd, KVM_SET_REGS, &s->regs) < 0 ||
	    ioctl(vcpu->fd, KVM_SET_FPU, &s->fpu) < 0 || ioctl(vcpu->fd, KVM_SET_VCPU_EVENTS, &s->events) < 0)
		return -errno;
	if (s->has_tsc_offset) {
		struct kvm_device_attr tsc = { .group = KVM_VCPU_TSC_CTRL, .attr = KVM_VCPU_TSC_OFFSET,
					       .addr = (uint64_t)(uintptr_t)&s->tsc_offset };
		(void)ioctl(vcpu->fd, KVM_SET_DEVICE_ATTR, &tsc); /* a TSC of its own otherwise */
	}
	vcpu->guest_cr3 = s->guest_cr3;
	__atomic_store_n(&vcpu->nmi_ready, s->nmi_ready, __ATOMIC_RELEASE);
	/* An NMI pending in the saved events is one the guest will acknowledge. */
	vcpu->nmis_injected = s->nmis_injected;
	vcpu->acks_received = s->acks_received;
	return 0;
}

uint64_t vmm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- parking ---- */

static int vm_park_others(struct vcpu *self);
static void vm_resume_others(struct vm *vm);
static void vm_take_over_layers(struct vcpu *self);

bool vcpu_park(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	uint64_t gen;
	int ret;

	if (__atomic_load_n(&vm->takeover_req, __ATOMIC_ACQUIRE))
		vm_take_over_layers(vcpu);
	if (!__atomic_load_n(&vm->pausing, __ATOMIC_ACQUIRE))
		return true;
	ret = vcpu_save_state(vcpu, true);
	if (ret) {
		vcpu_fail(vcpu, true, "saving the vCPU's state for a clone: %s", strerror(-ret));
		return false;
	}
	umbra_mutex_lock(&vm->lock);
	gen = vm->pause_gen;
	vm->nr_parked++;
	pthread_cond_broadcast(&vm->pause_cond);
	while (vm->pausing && vm->pause_gen == gen)
		umbra_cond_wait(&vm->pause_cond, &vm->lock);
	vm->nr_parked--;
	umbra_mutex_unlock(&vm->lock);
	return !vm_is_stopped(vm);
}

void vcpu_thread_ended(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;

	umbra_mutex_lock(&vm->lock);
	pthread_cond_broadcast(&vm->pause_cond);
	umbra_mutex_unlock(&vm->lock);
}

/* Asks every other vCPU thread to park and waits until they have (or the VM
 * stopped: -ESHUTDOWN). -EAGAIN if another vCPU is cloning the VM. */
static int vm_park_others(struct vcpu *self)
{
	struct vm *vm = self->vm;
	int ret = 0;

	umbra_mutex_lock(&vm->lock);
	if (vm->pausing) {
		umbra_mutex_unlock(&vm->lock);
		return -EAGAIN;
	}
	__atomic_store_n(&vm->pausing, true, __ATOMIC_RELEASE);
	vm->pause_gen++;
	umbra_mutex_unlock(&vm->lock);
	for (unsigned int i = 0; i < vm->nr_vcpus; i++)
		if (&vm->vcpus[i] != self)
			vcpu_kick(&vm->vcpus[i]);
	umbra_mutex_lock(&vm->lock);
	while (vm->nr_parked + 1 < __atomic_load_n(&vm->threads_running, __ATOMIC_ACQUIRE) && !vm->stopped)
		umbra_cond_wait(&vm->pause_cond, &vm->lock);
	if (vm->stopped)
		ret = -ESHUTDOWN;
	umbra_mutex_unlock(&vm->lock);
	return ret;
}

static void vm_resume_others(struct vm *vm)
{
	umbra_mutex_lock(&vm->lock);
	__atomic_store_n(&vm->pausing, false, __ATOMIC_RELEASE);
	vm->pause_gen++;
	pthread_cond_broadcast(&vm->pause_cond);
	umbra_mutex_unlock(&vm->lock);
}

/* ---- taking a layer over ---- */

/*
 * The VM is the last running holder of the layers of takeover_req: each
 * becomes a writable memslot of its own, and the shadow MMU makes a write
 * to a page of it that no other VM maps writable in place, without a copy
 * (shadow_mmu_slot_take_over). The vCPUs are parked meanwhile (KVM cannot
 * change a memslot's flags in place). A layer another VM holds again (a
 * clone made since) stays as it is. The vCPU's thread, at the top of its
 * loop; if the VM is being cloned, the request waits for the next exit.
 */
static void vm_take_over_layers(struct vcpu *self)
{
	struct vm *vm = self->vm;
	struct vmm_error err = { "" };
	uint64_t req;

	int ret = vm_park_others(self);

	if (ret) {
		if (ret != -EAGAIN)
			vm_resume_others(vm);
		return;
	}
	req = __atomic_exchange_n(&vm->takeover_req, 0, __ATOMIC_ACQ_REL);
	for (int i = 0; i < SHADOW_MAX_SLOTS; i++) {
		struct vm_area *a = vm->areas[i];

		if (!(req & (1ull << i)) || !a || i == vm->own_slot || (vm->writable_layers & (1ull << i)) ||
		    __atomic_load_n(&a->live, __ATOMIC_ACQUIRE) != 1)
			continue;
		if (area_set_memslot(vm, i, false, &err)) {
			vm_print_error(vm, "taking over %s: %s", a->name, err.msg);
			vm_stop(vm, UMBRA_STATUS_NO_KVM);
			break;
		}
		vm->writable_layers |= 1ull << i;
		if (shadow_mmu_slot_take_over(vm->mmu, i) == 0)
			vm->layers_taken_over++;
	}
	vm_resume_others(vm);
}

/* Before a clone: the layers the VM took over are shared again, read-only
 * memslots (the shadow MMU's clone freezes them for its part). */
static int vm_give_back_layers(struct vm *vm, struct vmm_error *err)
{
	for (int i = 0; i < SHADOW_MAX_SLOTS; i++) {
		if (!(vm->writable_layers & (1ull << i)))
			continue;
		int ret = area_set_memslot(vm, i, true, err);
		if (ret)
			return ret;
		vm->writable_layers &= ~(1ull << i);
	}
	return 0;
}

/* ---- the clone ---- */

/* Machine address for n + 1 new areas of size bytes (the parent's and each
 * clone's own area share it: no VM maps another's own area). -ENOSPC past
 * the CPU's physical-address limit. */
static int area_mpa_alloc(struct vm *vm, uint64_t *mpa)
{
	uint64_t span = (vm->ram_size + VMM_MEM_ALIGN - 1) & ~(VMM_MEM_ALIGN - 1);
	uint64_t off = __atomic_fetch_add(&vm->host->area_next, span, __ATOMIC_RELAXED);
	unsigned int bits = shadow_mmu_mode(vm->mmu)->maxphyaddr;

	*mpa = AREA_MPA_BASE + off;
	if (bits >= 64 || *mpa + span > (1ull << bits))
		return -ENOSPC;
	return 0;
}

/* Saves every vCPU's state: the caller's after completing its hypercall
 * with RAX 0 (its RIP past the out), the halted ones' as they are (the
 * parked ones saved theirs). 0 or -errno. */
static int vm_save_states(struct vcpu *self)
{
	struct vm *vm = self->vm;
	struct kvm_regs regs;
	int ret;

	if (ioctl(self->fd, KVM_GET_REGS, &regs) < 0)
		return -errno;
	regs.rax = 0;
	if (ioctl(self->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	ret = vcpu_save_state(self, true);
	for (unsigned int i = 0; !ret && i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		v->snap.halted = __atomic_load_n(&v->halted, __ATOMIC_ACQUIRE);
		if (v->snap.halted)
			ret = vcpu_save_state(v, false);
	}
	return ret;
}

/* Faults the pinned ranges in again in every address space of the VM's
 * vCPUs (a writable pinned page shared with a clone is copied into the VM's
 * own area now), then pins what they map. No lock held. 0 or -errno. */
static int vm_refresh_pins_after_clone(struct vm *vm)
{
	struct pin pins[UMBRA_MAX_PINS];
	unsigned int nr;
	int ret;

	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (v->snap.halted || !v->guest_cr3)
			continue;
		ret = vcpu_prefault_pins(v);
		if (ret)
			return ret;
	}
	if (!vm->host->memory)
		return 0;
	umbra_mutex_lock(&vm->lock);
	nr = vm->nr_pins;
	memcpy(pins, vm->pins, sizeof(pins));
	umbra_mutex_unlock(&vm->lock);
	for (unsigned int i = 0; i < nr; i++)
		for (unsigned int k = 0; k < pins[i].count; k++)
			vm_pin_va_range(&vm->vcpus[0], pins[i].va + k * pins[i].stride, pins[i].len);
	return 0;
}

/* Freezes the parent's own area and gives the parent a new one at mpa: the
 * first clone of this CLONE. Then clone k of n. */
static int clone_one(struct vcpu *self, unsigned int k, uint64_t mpa, struct vm **out, struct vmm_error *err)
{
	struct vm *vm = self->vm;
	struct vm_area *parent_own = NULL, *child_own = NULL;
	struct shadow_slot ps, cs;
	struct shadow_mmu *mmu = NULL;
	char name[VM_NAME_MAX + 16];
	int old_own = vm->own_slot, new_own, ret;

	if (k == 1) {
		ret = vm_give_back_layers(vm, err);
		if (ret) {
			vm_stop(vm, UMBRA_STATUS_NO_KVM);
			return ret;
		}
		snprintf(name, sizeof(name), "%s.ram%u", vm->name, vm->nr_clones + 1);
		ret = area_create(vm->host, name, vm, vm->ram_size, mpa, &parent_own, err);
		if (ret)
			return ret;
		area_slot(parent_own, false, &ps);
	}
	snprintf(name, sizeof(name), "%s.%u.ram", vm->name, vm->nr_clones + k);
	ret = area_create(vm->host, name, NULL, vm->ram_size, mpa, &child_own, err);
	if (ret)
		goto put_areas;
	area_slot(child_own, false, &cs);
	ret = shadow_mmu_clone(vm->mmu, parent_own ? &ps : NULL, &cs, &mmu);
	if (ret) {
		vmm_error_set(err, -ret, "shadow MMU clone: %s", strerror(-ret));
		goto put_areas;
	}
	if (parent_own) {
		/* The shadow MMU gave the new own area the next slot id. */
		new_own = vm->nr_slots++;
		vm->areas[new_own] = parent_own;
		parent_own->live = 1;
		vm->own_slot = new_own;
		parent_own = NULL;
		/* KVM: the old own area becomes a read-only layer, the new one
		 * a writable memslot. */
		ret = area_set_memslot(vm, old_own, true, err);
		if (!ret)
			ret = area_set_memslot(vm, new_own, false, err);
		if (ret) {
			/* The shadow MMU froze the area but KVM may not: the
			 * parent cannot go on safely. */
			vm_stop(vm, UMBRA_STATUS_NO_KVM);
			shadow_mmu_destroy(mmu);
			goto put_areas;
		}
	}
	ret = vm_create_clone(vm, self->id, k, vm->nr_clones + k, mmu, child_own, out, err);
	child_own = NULL; /* the clone's now, or freed by it */
	return ret;

put_areas:
	area_put(child_own);
	area_put(parent_own);
	return ret;
}

int vm_clone(struct vcpu *self, unsigned int n)
{
	struct vm *vm = self->vm;
	struct vm *clones[UMBRA_CLONE_MAX];
	struct vmm_error err = { "" };
	unsigned int made = 0;
	uint64_t mpa, start = vmm_now_ns();
	const uint64_t trace_t0 = umbra_trace_begin_ns(UMBRA_TRACE_CLONE);
	int ret;

	ret = vm_park_others(self);
	if (ret == -EAGAIN)
		return ret;
	if (ret)
		goto resume;
	ret = vm_save_states(self);
	if (ret) {
		vmm_error_set(&err, -ret, "saving the vCPUs' state: %s", strerror(-ret));
		goto resume;
	}
	ret = vmm_host_reserve_vms(vm->host, n);
	if (ret) {
		vmm_error_set(&err, -ret, "a run holds at most %u VMs", VMM_MAX_VMS);
		goto resume;
	}
	ret = area_mpa_alloc(vm, &mpa);
	if (ret) {
		vmm_error_set(&err, -ret, "no machine address left below the CPU's physical-address limit for "
			      "another RAM area of %" PRIu64 " MiB", vm->ram_size >> 20);
		goto unreserve;
	}
	for (made = 0; made < n; made++) {
		ret = clone_one(self, made + 1, mpa, &clones[made], &err);
		if (ret)
			break;
	}
	if (made == 0)
		goto unreserve;
	if (made < n)
		vm_print_error(vm, "CLONE(%u) made %u clones: %s", n, made, err.msg);
	/* Some clones: the parent goes on with them, whatever failed after. */
	ret = vm_refresh_pins_after_clone(vm);
	for (unsigned int k = 0; !ret && k < made; k++)
		ret = vm_refresh_pins_after_clone(clones[k]);
	if (ret)
		vmm_error_set(&err, -ret, "faulting in the pinned ranges after the clone: %s", strerror(-ret));
	__atomic_store_n(&vm->nr_clones, vm->nr_clones + made, __ATOMIC_RELAXED);
	vm->prefix_output = true;
	vmm_host_unreserve_vms(vm->host, n - made);
	for (unsigned int k = 0; k < made; k++) {
		clones[k]->clone_started_ns = start;
		vmm_host_add_vm(vm->host, clones[k]);
		vm_start(clones[k]);
	}
	vm_resume_others(vm);
	__atomic_fetch_add(&vm->clone_ns, vmm_now_ns() - start, __ATOMIC_RELAXED);
	if (trace_t0)
		umbra_trace_span(UMBRA_TRACE_CLONE, "clone", trace_t0, &(struct umbra_trace_args){
			.key = { "vm", "clones", "first_clone_vm" },
			.val = { vm->trace_id, made, clones[0]->trace_id } });
	if (ret) {
		vm_print_error(vm, "clone: %s", err.msg);
		vm_stop(vm, UMBRA_STATUS_GUEST_ERROR);
	}
	return (int)made;

unreserve:
	vmm_host_unreserve_vms(vm->host, n);
resume:
	vm_resume_others(vm);
	if (ret != -ESHUTDOWN)
		vm_print_error(vm, "CLONE(%u) made no clone: %s", n, err.msg);
	return ret;
}
