/*
 * TLB shootdown of a KVM vCPU: the shadow MMU's flush interface (struct
 * shadow_tlb_ops). A flush request is posted in the vCPU's mailbox; a vCPU
 * in guest mode is kicked out of KVM_RUN and the requester waits until it
 * has left it (as KVM's remote TLB flush waits only for vCPUs in guest
 * mode). Before it enters the guest again, the vCPU thread injects an NMI;
 * the guest's NMI handler reloads CR3 (flushing its TLB) before it runs
 * anything else, and acknowledges (UMBRA_HC_FLUSH_ACK): a vCPU acknowledges
 * at most as many NMIs as were injected into it (vcpu_flush_ack).
 *
 * A flush that comes with a reclaim of the VM's shadow tables (pool full or
 * quota reached) took the pinned translations with it: the vCPU pre-faults
 * its pins again before it enters the guest (vcpu_enter_guest_mode), so
 * that the NMI finds its handler, IDT and stack mapped.
 */
#include <errno.h>
#include <stddef.h>
#include <sys/ioctl.h>

#include "vm_internal.h"
#include "x86.h"

static __thread struct vcpu *current_vcpu; /* the vCPU this thread runs, if any */

/*
 * Posts a flush request and, if the vCPU is in guest mode, kicks it and
 * waits for its next return from KVM_RUN. Called under the shadow MMU's
 * flush contract (this VM's mmu_lock, or another VM's mmu_lock and this
 * VM's tlbs_lock: shadow.h, struct shadow_tlb_ops); takes mode_lock
 * (UMBRA_LOCK_RANK_VMM_VCPU_MODE) and may wait on mode_cond under it. On return
 * the vCPU runs no guest instruction before the NMI that flushes its TLB.
 */
static void vcpu_request_flush(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;

	__atomic_fetch_add(&vcpu->flush_req, 1, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&vm->flush_requests, 1, __ATOMIC_RELAXED);
	if (current_vcpu == vcpu)
		return; /* its own thread: outside guest mode, flushed before it re-enters */
	umbra_mutex_lock(&vcpu->mode_lock);
	if (vcpu->in_guest) {
		uint64_t seq = vcpu->exit_seq;
		__atomic_fetch_add(&vm->kicks, 1, __ATOMIC_RELAXED);
		vcpu_kick(vcpu);
		while (vcpu->in_guest && vcpu->exit_seq == seq)
			umbra_cond_wait(&vcpu->mode_cond, &vcpu->mode_lock);
	}
	umbra_mutex_unlock(&vcpu->mode_lock);
}

static struct vcpu *tlb_to_vcpu(struct shadow_tlb *tlb)
{
	return (struct vcpu *)((char *)tlb - offsetof(struct vcpu, tlb));
}

static void vcpu_tlb_flush_all(struct shadow_tlb *tlb)
{
	vcpu_request_flush(tlb_to_vcpu(tlb));
}

/* The NMI handler flushes the whole TLB: a per-address request is a full one. */
static void vcpu_tlb_flush_va(struct shadow_tlb *tlb, uint64_t va)
{
	(void)va;
	vcpu_request_flush(tlb_to_vcpu(tlb));
}

const struct shadow_tlb_ops vcpu_tlb_ops = {
	.flush_all = vcpu_tlb_flush_all,
	.flush_va = vcpu_tlb_flush_va,
};

void vcpu_shootdown_thread_init(struct vcpu *vcpu)
{
	current_vcpu = vcpu;
}

void vcpu_shootdown_ready(struct vcpu *vcpu)
{
	vcpu->nmi_done = __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST);
	__atomic_store_n(&vcpu->nmi_ready, true, __ATOMIC_RELEASE);
}

/* True when a posted flush request is not served yet (by an injected NMI,
 * or before the NMI handler is installed by vcpu_flush_before_ready). */
static bool vcpu_flush_pending(struct vcpu *vcpu)
{
	return __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST) != vcpu->nmi_done;
}

/*
 * Before the guest's NMI handler is installed a flush cannot be an NMI, and
 * the vCPU may be booting on translations a zap just freed (a reclaim while
 * it starts): umbra flushes its TLB itself. A CR4 change through
 * KVM_SET_SREGS makes KVM reset the vCPU's MMU context, and loading it again
 * flushes the guest's TLB (its ASID); the second call puts CR4 back.
 */
static int vcpu_flush_before_ready(struct vcpu *vcpu)
{
	uint64_t req = __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST);
	struct kvm_sregs sregs;

	if (req == vcpu->nmi_done)
		return 0;
	vcpu->nmi_done = req;
	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	sregs.cr4 ^= X86_CR4_PGE;
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0)
		return -errno;
	sregs.cr4 ^= X86_CR4_PGE;
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0)
		return -errno;
	__atomic_fetch_add(&vcpu->vm->early_flushes, 1, __ATOMIC_RELAXED);
	return 0;
}

int vcpu_inject_pending_flush(struct vcpu *vcpu)
{
	if (!__atomic_load_n(&vcpu->nmi_ready, __ATOMIC_ACQUIRE))
		return vcpu_flush_before_ready(vcpu);
	if (!vcpu_flush_pending(vcpu))
		return 0;
	vcpu->nmi_done = __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST);
	if (ioctl(vcpu->fd, KVM_NMI) < 0)
		return -errno;
	vcpu->nmis_injected++;
	__atomic_fetch_add(&vcpu->vm->nmis, 1, __ATOMIC_RELAXED);
	return 0;
}

bool vcpu_flush_ack(struct vcpu *vcpu)
{
	/* KVM may coalesce NMIs (one pending, one latched while the handler
	 * runs), so the guest may receive fewer than were injected, never
	 * more: each acknowledgement answers one injected NMI. */
	if (vcpu->acks_received >= vcpu->nmis_injected)
		return false;
	vcpu->acks_received++;
	__atomic_fetch_add(&vcpu->vm->flush_acks, 1, __ATOMIC_RELAXED);
	return true;
}

/* Sets in_guest; the caller holds mode_lock. */
static void vcpu_set_in_guest_locked(struct vcpu *vcpu, bool in_guest)
{
	umbra_mutex_assert_held(&vcpu->mode_lock);
	vcpu->in_guest = in_guest;
	if (!in_guest) {
		vcpu->exit_seq++;
		pthread_cond_broadcast(&vcpu->mode_cond);
	}
}

bool vcpu_enter_guest_mode(struct vcpu *vcpu)
{
	char why[96];
	bool enter;
	int ret;

	/* After the NMI is injected, before entry: a reclaim counted before
	 * the flush that this NMI answers is seen here (the flush request is
	 * posted after the count; a request posted after this point keeps the
	 * vCPU out below, and it comes back here). */
	ret = vcpu_refresh_pins(vcpu);
	if (ret) {
		vcpu_fail(vcpu, false, "pre-faulting the pinned ranges again after a reclaim: %s",
			  vm_room_error(vcpu->vm, ret, why, sizeof(why)));
		return false;
	}

	/* A requester that sees in_guest kicks us and waits for the next exit;
	 * one that posted before we took the lock is served first. */
	umbra_mutex_lock(&vcpu->mode_lock);
	enter = !vcpu_flush_pending(vcpu);
	if (enter)
		vcpu_set_in_guest_locked(vcpu, true);
	umbra_mutex_unlock(&vcpu->mode_lock);
	return enter;
}

void vcpu_exit_guest_mode(struct vcpu *vcpu)
{
	umbra_mutex_lock(&vcpu->mode_lock);
	vcpu_set_in_guest_locked(vcpu, false);
	umbra_mutex_unlock(&vcpu->mode_lock);
}
