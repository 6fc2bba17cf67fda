/*
 * Hypercalls (docs/abi.md, "Hypercalls"): the dispatch of an out to
 * UMBRA_HC_PORT, the console and exit calls, and the paging calls that
 * drive the VM's shadow MMU. A bad argument stops the VM with a report
 * naming it.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vm_internal.h"
#include "x86.h"

/* What a handler returns when it stopped the VM (not a result for RAX). */
#define HC_STOPPED INT64_MIN
/* What a handler returns when it set the registers itself. */
#define HC_DONE (INT64_MIN + 1)

static const char *exception_mnemonic(uint64_t vector)
{
	static const char *const names[X86_NR_EXCEPTIONS] = {
		"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
		"#NP", "#SS", "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM", "#VE",
		"#CP", "reserved", "reserved", "reserved", "reserved", "reserved", "reserved",
		"#HV", "#VC", "#SX", "reserved",
	};
	return vector < X86_NR_EXCEPTIONS ? names[vector] : "interrupt";
}

/* The guest's memory as the shadow walker reads it (RAM and segments, as
 * the VM's P2M maps them: a clone's pages are in its areas). */
static int guest_mem_read(void *ctx, uint64_t pa, uint64_t *val)
{
	struct vm *vm = ctx;
	uint64_t mpa;
	void *host;

	if ((pa & 7) || shadow_mmu_p2m_lookup(vm->mmu, pa, &mpa, &host))
		return -EFAULT;
	*val = __atomic_load_n((uint64_t *)host, __ATOMIC_RELAXED);
	return 0;
}

static const struct shadow_mem_ops guest_mem_ops = { .read = guest_mem_read };

/* A fault the shadow MMU could not back: say what the guest's tables point at. */
static void report_unbacked_fault(struct vcpu *vcpu, uint64_t va, unsigned int access)
{
	struct vm *vm = vcpu->vm;
	struct shadow_walk w;
	const struct shadow_paging_mode *mode = shadow_mmu_mode(vm->mmu);
	uint64_t pool_end = SHADOW_POOL_GPA + (uint64_t)vm->group->pool_pages * SHADOW_PAGE_SIZE;

	if (shadow_walk(mode, &guest_mem_ops, vm, vcpu->guest_cr3, va, access, 0, &w) != 0)
		vcpu_fail(vcpu, true, "page fault at %#llx: a guest page table lies outside RAM",
			  (unsigned long long)va);
	else if (w.pa >= SHADOW_POOL_GPA && w.pa < pool_end)
		vcpu_fail(vcpu, true, "%s at %#llx: the guest's page tables map it to guest-physical %#llx, a shadow "
			  "page table (the pool is umbra's, never the guest's)",
			  access & SHADOW_ACCESS_WRITE ? "write" : "access", (unsigned long long)va,
			  (unsigned long long)w.pa);
	else
		vcpu_fail(vcpu, true, "page fault at %#llx: the guest's page tables map it to guest-physical %#llx, "
			  "where there is no RAM or segment", (unsigned long long)va, (unsigned long long)w.pa);
}

/* ---- the paging hypercalls ---- */

#define PF_RSVD (1u << 3) /* #PF error code: a reserved bit was set in an entry */
/* Reserved-bit faults in a row at one address, EFER unchanged, before the VM
 * stops: the shadow entries umbra writes have no bit reserved under the
 * guest's EFER, so such faults repeat only when something else wrote them (a
 * guest that maps the table pool, where it is writable) or when the guest
 * reports faults the CPU did not take. */
#define RSVD_FAULTS_MAX 8u

/*
 * The guest may set or clear EFER.NXE with wrmsr, which does not exit to
 * umbra: what bit 63 of a page-table entry means changes (no-execute, or a
 * reserved bit). Brings the shadow MMU's mode in line with @efer, as KVM
 * resets its MMU context on an EFER write (a sync of every cached address
 * space). Returns true if the mode changed.
 */
static bool sync_efer_nxe(struct vcpu *vcpu, uint64_t efer)
{
	struct shadow_mmu *mmu = vcpu->vm->mmu;
	struct shadow_paging_mode mode = *shadow_mmu_mode(mmu);
	bool nxe = efer & X86_EFER_NXE;

	if (mode.nxe == nxe)
		return false;
	mode.nxe = nxe;
	return shadow_mmu_set_mode(mmu, &mode) == 0;
}

/* sync_efer_nxe with the vCPU's EFER read now; after a change, the pinned
 * ranges are faulted back into the current address space (a pinned page the
 * guest marks NX lost its shadow when NXE was set). -1 (the VM stopped), or
 * sync_efer_nxe's answer. */
static int sync_efer_nxe_now(struct vcpu *vcpu)
{
	struct kvm_sregs sregs;
	uint64_t root;
	int r;

	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0) {
		vcpu_fail(vcpu, false, "KVM_GET_SREGS (EFER) at a paging hypercall: %s", strerror(errno));
		return -1;
	}
	if (!sync_efer_nxe(vcpu, sregs.efer))
		return 0;
	/* The same root (cached, and this vCPU's): only the pins are new. */
	r = vcpu_load_guest_cr3(vcpu, vcpu->guest_cr3, &root);
	if (r) {
		vcpu_fail(vcpu, false, "EFER.NXE changed: re-pinning address space %#llx: %s",
			  (unsigned long long)vcpu->guest_cr3,
			  r == -ENOMEM ? "the shadow table pool is exhausted" : strerror(-r));
		return -1;
	}
	return 1;
}

static int64_t hc_set_cr3(struct vcpu *vcpu, uint64_t guest_cr3)
{
	struct kvm_sregs sregs;
	uint64_t root;
	int r;

	if (guest_cr3 == 0 || guest_cr3 % X86_PAGE_SIZE || guest_cr3 >= vcpu->vm->ram_size) {
		vcpu_fail(vcpu, false, "bad hypercall: set_cr3: guest CR3 %#llx (argument 0) is not a 4 KiB-aligned "
			  "page in RAM", (unsigned long long)guest_cr3);
		return HC_STOPPED;
	}
	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0) {
		vcpu_fail(vcpu, false, "KVM_GET_SREGS at set_cr3: %s", strerror(errno));
		return HC_STOPPED;
	}
	/* The address-space switch flushes: a changed EFER.NXE takes effect
	 * for the pages already shadowed too (before the pins are faulted). */
	sync_efer_nxe(vcpu, sregs.efer);
	r = vcpu_load_guest_cr3(vcpu, guest_cr3, &root);
	if (r) {
		char why[96];

		vcpu_fail(vcpu, false, "set_cr3 %#llx: %s", (unsigned long long)guest_cr3,
			  r == -EBUSY ? "every cached shadow root is in use by another vCPU" :
			  vm_room_error(vcpu->vm, r, why, sizeof(why)));
		return HC_STOPPED;
	}
	sregs.cr3 = root;
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0) {
		vcpu_fail(vcpu, false, "KVM_SET_SREGS at set_cr3: %s", strerror(errno));
		return HC_STOPPED;
	}
	return 0;
}

/*
 * A #PF the CPU took with RSVD set comes from a shadow entry with a bit
 * reserved under the guest's EFER now: EFER.NXE changed since the shadow
 * was built (then the mode follows and the access is retried), or the
 * entries were written behind umbra's back. Bounded: after
 * RSVD_FAULTS_MAX in a row at one address with EFER unchanged the VM stops.
 * Returns 0 (go on with the fault), 1 (retry the access) or -1 (stopped).
 */
static int rsvd_fault_check(struct vcpu *vcpu, uint64_t va, uint32_t error_code)
{
	int r;

	if (!(error_code & PF_RSVD)) {
		vcpu->rsvd_faults = 0;
		return 0;
	}
	r = sync_efer_nxe_now(vcpu);
	if (r) {
		vcpu->rsvd_faults = 0;
		return r;
	}
	if (va != vcpu->rsvd_va)
		vcpu->rsvd_faults = 0;
	vcpu->rsvd_va = va;
	if (++vcpu->rsvd_faults >= RSVD_FAULTS_MAX) {
		vcpu_fail(vcpu, true, "page fault at %#llx: %u reserved-bit faults in a row with EFER unchanged "
			  "(EFER.NXE %s): the shadow page tables the CPU walks were changed behind umbra's back",
			  (unsigned long long)va, vcpu->rsvd_faults,
			  shadow_mmu_mode(vcpu->vm->mmu)->nxe ? "set" : "clear");
		return -1;
	}
	return 0;
}

static int64_t hc_page_fault(struct vcpu *vcpu, uint64_t va, uint64_t error_code)
{
	struct vm *vm = vcpu->vm;
	unsigned int access = (unsigned int)error_code & SHADOW_ACCESS_MASK;
	uint32_t ec = 0;
	int r;

	if (!shadow_va_is_canonical(va)) {
		vcpu_fail(vcpu, false, "bad hypercall: page fault at %#llx (argument 0): not a canonical address",
			  (unsigned long long)va);
		return HC_STOPPED;
	}
	/* A #PF error code is 32 bits; the shadow MMU takes its access bits
	 * (the others, such as present or reserved-bit, say why the CPU
	 * faulted and are not needed) and refuses a write that is a fetch. */
	if (error_code >> 32) {
		vcpu_fail(vcpu, false, "bad hypercall: page fault at %#llx: error code %#llx (argument 1) is wider "
			  "than 32 bits", (unsigned long long)va, (unsigned long long)error_code);
		return HC_STOPPED;
	}
	if ((access & SHADOW_ACCESS_WRITE) && (access & SHADOW_ACCESS_FETCH)) {
		vcpu_fail(vcpu, false, "bad hypercall: page fault at %#llx: error code %#llx (argument 1) has both "
			  "write and fetch set", (unsigned long long)va, (unsigned long long)error_code);
		return HC_STOPPED;
	}
	r = rsvd_fault_check(vcpu, va, (uint32_t)error_code);
	if (r)
		return r < 0 ? HC_STOPPED : 0;
	r = shadow_mmu_fault(vm->mmu, vcpu->guest_cr3, va, access, &ec);
	if (r == SHADOW_FAULT_FIXED)
		return 0;
	if (r == SHADOW_FAULT_GUEST) {
		/* A reserved bit in the guest's entry: bit 63 read under a
		 * stale EFER.NXE?  Then walk again under the new mode. */
		int changed = (ec & PF_RSVD) ? sync_efer_nxe_now(vcpu) : 0;

		if (changed)
			return changed < 0 ? HC_STOPPED : 0;
		return (int64_t)(UMBRA_PF_GUEST | ec);
	}
	if (r == -EFAULT)
		report_unbacked_fault(vcpu, va, access);
	else if (r == -EACCES)
		vcpu_fail(vcpu, true, "write at %#llx to a read-only segment", (unsigned long long)va);
	else if (r == -ENOMEM || r == -EDQUOT) {
		char why[96];

		vcpu_fail(vcpu, false, "page fault at %#llx: %s", (unsigned long long)va,
			  vm_room_error(vm, r, why, sizeof(why)));
	} else if (r == -EROFS)
		vcpu_fail(vcpu, false, "page fault at %#llx: the guest's page tables for it lie in a read-only "
			  "segment and need their Accessed/Dirty bits set; set A (and D) in page tables placed there",
			  (unsigned long long)va);
	else if (r == -ELOOP)
		vcpu_fail(vcpu, true, "page fault at %#llx: the guest's page tables for it kept changing while "
			  "umbra resolved the fault (64 walks); the guest must not rewrite them that fast",
			  (unsigned long long)va);
	else
		vcpu_fail(vcpu, true, "page fault at %#llx: the shadow MMU failed: %s", (unsigned long long)va,
			  strerror(-r));
	return HC_STOPPED;
}

static int64_t hc_invlpg(struct vcpu *vcpu, uint64_t va)
{
	if (!shadow_va_is_canonical(va)) {
		vcpu_fail(vcpu, false, "bad hypercall: invlpg %#llx (argument 0): not a canonical address",
			  (unsigned long long)va);
		return HC_STOPPED;
	}
	/* The guest runs invlpg after the call (docs/abi.md): no NMI to it. */
	shadow_mmu_invlpg(vcpu->vm->mmu, &vcpu->tlb, vcpu->guest_cr3, va);
	return 0;
}

static int64_t hc_flush(struct vcpu *vcpu)
{
	int r;

	/* A full flush: a changed EFER.NXE takes effect for every page. */
	if (sync_efer_nxe_now(vcpu) < 0)
		return HC_STOPPED;
	r = shadow_mmu_flush(vcpu->vm->mmu, vcpu->guest_cr3);
	if (r) {
		vcpu_fail(vcpu, false, "flush of address space %#llx: %s", (unsigned long long)vcpu->guest_cr3,
			  strerror(-r));
		return HC_STOPPED;
	}
	return 0;
}

static int64_t hc_sync_table(struct vcpu *vcpu, uint64_t gpa)
{
	int r = shadow_mmu_sync_guest_table(vcpu->vm->mmu, gpa);

	if (r == -EINVAL) {
		vcpu_fail(vcpu, false, "bad hypercall: sync_table %#llx (argument 0): not a 4 KiB-aligned "
			  "guest-physical address of the VM's memory", (unsigned long long)gpa);
		return HC_STOPPED;
	}
	if (r < 0) {
		vcpu_fail(vcpu, true, "sync_table %#llx: the shadow MMU failed: %s", (unsigned long long)gpa,
			  strerror(-r));
		return HC_STOPPED;
	}
	return 0;
}

static int64_t hc_pin(struct vcpu *vcpu, uint64_t va, uint64_t len)
{
	int r;

	if (len == 0 || len > UMBRA_PIN_MAX_BYTES || !shadow_va_is_canonical(va) ||
	    !shadow_va_is_canonical(va + len - 1) || va + len < va) {
		vcpu_fail(vcpu, false, "bad hypercall: pin %#llx+%#llx (arguments 0, 1): must be 1 byte to 64 MiB "
			  "of canonical addresses", (unsigned long long)va, (unsigned long long)len);
		return HC_STOPPED;
	}
	r = vcpu_add_pin(vcpu, va, len);
	if (r == -ENOSPC) {
		vcpu_fail(vcpu, false, "bad hypercall: pin: more than %u pinned ranges", UMBRA_MAX_PINS);
		return HC_STOPPED;
	}
	if (r == -E2BIG) {
		vcpu_fail(vcpu, false, "bad hypercall: pin %#llx+%#llx (arguments 0, 1): the guest's pins would "
			  "cover more than %llu bytes in all (UMBRA_PIN_TOTAL_MAX)", (unsigned long long)va,
			  (unsigned long long)len, (unsigned long long)UMBRA_PIN_TOTAL_MAX);
		return HC_STOPPED;
	}
	if (r) {
		char why[96];

		vcpu_fail(vcpu, false, "pin %#llx+%#llx: %s", (unsigned long long)va, (unsigned long long)len,
			  vm_room_error(vcpu->vm, r, why, sizeof(why)));
		return HC_STOPPED;
	}
	return 0;
}

/* ---- clones ---- */

/* CLONE(n), or the clones --clone asks for at READY: the parent's result
 * (0 once any clone was made) is in RAX already, or set here. */
static int64_t hc_clone(struct vcpu *vcpu, unsigned int n)
{
	struct kvm_regs regs;
	int r = vm_clone(vcpu, n);

	if (r == -EAGAIN)
		return -UMBRA_EAGAIN;
	if (r == -ESHUTDOWN || vm_is_stopped(vcpu->vm))
		return HC_STOPPED;
	if (r > 0)
		return HC_DONE;
	/* Nothing cloned: the out may be complete already (RIP past it), so
	 * the result goes into the registers as they are now. */
	if (ioctl(vcpu->fd, KVM_GET_REGS, &regs) < 0) {
		vcpu_fail(vcpu, false, "KVM_GET_REGS failed after a clone: %s", strerror(errno));
		return HC_STOPPED;
	}
	regs.rax = (uint64_t)(int64_t)(r == -ENOSPC ? -UMBRA_ENOSPC : -UMBRA_ENOMEM);
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0) {
		vcpu_fail(vcpu, false, "KVM_SET_REGS failed after a clone: %s", strerror(errno));
		return HC_STOPPED;
	}
	return HC_DONE;
}

/* READY: once every vCPU of a VM that --clone (or "clones") asks to clone
 * has sent it, the last one clones the VM. */
static int64_t hc_ready(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	unsigned int n = 0;

	umbra_mutex_lock(&vm->lock);
	if (++vm->nr_ready == vm->nr_vcpus) {
		n = vm->clone_at_ready;
		vm->clone_at_ready = 0;
	}
	umbra_mutex_unlock(&vm->lock);
	return n ? hc_clone(vcpu, n) : 0;
}

/* The paging hypercalls. Returns the result for RAX, or HC_STOPPED. */
static int64_t handle_paging_hypercall(struct vcpu *vcpu, const struct kvm_regs *regs)
{
	uint64_t a0 = regs->rdi, a1 = regs->rsi;

	switch (regs->rax) {
	case UMBRA_HC_SET_CR3:
		return hc_set_cr3(vcpu, a0);
	case UMBRA_HC_PAGE_FAULT:
		return hc_page_fault(vcpu, a0, a1);
	case UMBRA_HC_INVLPG:
		return hc_invlpg(vcpu, a0);
	case UMBRA_HC_FLUSH:
		return hc_flush(vcpu);
	case UMBRA_HC_FLUSH_ACK:
		if (!vcpu_flush_ack(vcpu)) {
			vcpu_fail(vcpu, true, "bad hypercall: FLUSH_ACK with no shootdown NMI pending (%llu NMIs "
				  "injected into this vCPU, each acknowledged)",
				  (unsigned long long)vcpu->nmis_injected);
			return HC_STOPPED;
		}
		return 0;
	case UMBRA_HC_READY:
		/* The guest reloads CR3 after this: requests so far are served. */
		vcpu_shootdown_ready(vcpu);
		return hc_ready(vcpu);
	case UMBRA_HC_CLONE:
		if (a0 == 0 || a0 > UMBRA_CLONE_MAX) {
			vcpu_fail(vcpu, false, "bad hypercall: clone %llu (argument 0): must be 1 to %u clones",
				  (unsigned long long)a0, UMBRA_CLONE_MAX);
			return HC_STOPPED;
		}
		return hc_clone(vcpu, (unsigned int)a0);
	case UMBRA_HC_PIN:
		return hc_pin(vcpu, a0, a1);
	case UMBRA_HC_SYNC_TABLE:
		return hc_sync_table(vcpu, a0);
	}
	vcpu_fail(vcpu, true, "bad hypercall: unknown number %llu (RAX)", regs->rax);
	return HC_STOPPED;
}

/* ---- console, exit, exception ---- */

static int64_t hc_console_write(struct vcpu *vcpu, uint64_t gpa, uint64_t len)
{
	struct vm *vm = vcpu->vm;

	if (len == 0 || len > UMBRA_CONSOLE_WRITE_MAX) {
		vcpu_fail(vcpu, false, "bad hypercall: console write of %llu bytes (argument 1) is outside 1..%u",
			  (unsigned long long)len, UMBRA_CONSOLE_WRITE_MAX);
		return HC_STOPPED;
	}
	char buf[UMBRA_CONSOLE_WRITE_MAX];

	if (gpa >= vm->ram_size || len > vm->ram_size - gpa || vm_read_guest(vm, gpa, buf, len)) {
		vcpu_fail(vcpu, false, "bad hypercall: console write buffer %#llx+%llu (arguments 0, 1) is outside guest RAM",
			  (unsigned long long)gpa, (unsigned long long)len);
		return HC_STOPPED;
	}
	for (uint64_t i = 0; i < len; i++)
		console_put(vcpu, buf[i]);
	return (int64_t)len;
}

/* The exit hypercall: stops the VM with the guest's code (does not return
 * to the guest, so HC_STOPPED). */
static int64_t hc_exit(struct vcpu *vcpu, uint64_t code)
{
	if (code > UMBRA_EXIT_CODE_MAX) {
		vcpu_fail(vcpu, false, "bad hypercall: exit code %llu (argument 0) is outside 0..%d",
			  (unsigned long long)code, UMBRA_EXIT_CODE_MAX);
		return HC_STOPPED;
	}
	console_flush(vcpu);
	vm_stop(vcpu->vm, (int)code);
	return HC_STOPPED;
}

void vcpu_handle_hypercall(struct vcpu *vcpu)
{
	struct kvm_regs regs;
	int64_t result;

	if (ioctl(vcpu->fd, KVM_GET_REGS, &regs) < 0) {
		vcpu_fail(vcpu, false, "KVM_GET_REGS failed at a hypercall: %s", strerror(errno));
		return;
	}
	if (regs.rax < UMBRA_HC_NR)
		__atomic_fetch_add(&vcpu->vm->hypercalls[regs.rax], 1, __ATOMIC_RELAXED);
	switch (regs.rax) {
	case UMBRA_HC_EXIT:
		result = hc_exit(vcpu, regs.rdi);
		break;
	case UMBRA_HC_CONSOLE_WRITE:
		result = hc_console_write(vcpu, regs.rdi, regs.rsi);
		break;
	case UMBRA_HC_EXCEPTION:
		vcpu_fail(vcpu, false, "guest exception %s (vector %llu) at RIP %#llx, error code %#llx, CR2 %#llx",
			  exception_mnemonic(regs.rdi), regs.rdi, regs.rsi, regs.r8, regs.r9);
		result = HC_STOPPED;
		break;
	default:
		result = handle_paging_hypercall(vcpu, &regs);
		break;
	}
	if (result == HC_STOPPED || result == HC_DONE)
		return;
	regs.rax = (uint64_t)result;
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0)
		vcpu_fail(vcpu, false, "KVM_SET_REGS failed after a hypercall: %s", strerror(errno));
}
