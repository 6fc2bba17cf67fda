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

#include "umbra/trace.h"
#include "vm_internal.h"
#include "x86.h"

static __thread struct vcpu *current_vcpu; /* the vCPU this thread runs, if any */

/* ---- --trace: requests, NMIs and acknowledgements -------------------------
 *
 * Request r of a vCPU is the r-th increment of its flush_req; an NMI (or an
 * early flush) serves the requests (nmi_done before it, nmi_done after];
 * the k-th acknowledgement answers the k-th NMI.  Each event names the VM,
 * the vCPU and those request numbers ("req", "first_req", "last_req"), and
 * the requests of one vCPU are linked to the NMI and the acknowledgement
 * that served them by flow events (at most TRACE_FLOWS_PER_NMI per NMI: the
 * numbers in the arguments are complete, the arrows are a sample).
 */
#define TRACE_FLOWS_PER_NMI 16u

static uint64_t flow_id(const struct vcpu *vcpu, uint64_t req)
{
	return (uint64_t)vcpu->vm->trace_id << 40 | (uint64_t)vcpu->id << 32 | (req & 0xffffffffu);
}

static void trace_request(struct vcpu *vcpu, uint64_t t0, uint64_t req, bool kicked)
{
	umbra_trace_span(UMBRA_TRACE_SHOOTDOWN, "shootdown request", t0, &(struct umbra_trace_args){
		.key = { "vm", "vcpu", "req", "inv" },
		.val = { vcpu->vm->trace_id, vcpu->id, req, umbra_trace_current_invalidation() },
		.skey = { "wait" },
		.sval = { kicked ? "kicked, waited for its exit" : "not in guest mode" } });
	umbra_trace_flow(UMBRA_TRACE_SHOOTDOWN, "shootdown", 's', flow_id(vcpu, req), t0);
}

/* The span @name of the vCPU's thread that served requests (@first, @last]
 * (NMI number @nmi, 0 for an early flush), with the flow step @phase for each. */
static void trace_served(struct vcpu *vcpu, const char *name, uint64_t t0, uint64_t first,
			 uint64_t last, uint64_t nmi, char phase)
{
	umbra_trace_span(UMBRA_TRACE_SHOOTDOWN, name, t0, &(struct umbra_trace_args){
		.key = { "vcpu", "nmi", "first_req", "last_req" },
		.val = { vcpu->id, nmi, first + 1, last } });
	for (uint64_t r = last > first + TRACE_FLOWS_PER_NMI ? last - TRACE_FLOWS_PER_NMI : first;
	     r < last; r++)
		umbra_trace_flow(UMBRA_TRACE_SHOOTDOWN, "shootdown", phase, flow_id(vcpu, r + 1), t0);
}

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
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_SHOOTDOWN);
	struct vm *vm = vcpu->vm;
	bool kicked = false;
	uint64_t req;

	req = __atomic_add_fetch(&vcpu->flush_req, 1, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&vm->flush_requests, 1, __ATOMIC_RELAXED);
	if (current_vcpu != vcpu) {
		/* (Its own thread is outside guest mode: flushed before it re-enters.) */
		umbra_mutex_lock(&vcpu->mode_lock);
		if (vcpu->in_guest) {
			uint64_t seq = vcpu->exit_seq;
			__atomic_fetch_add(&vm->kicks, 1, __ATOMIC_RELAXED);
			vcpu_kick(vcpu);
			kicked = true;
			while (vcpu->in_guest && vcpu->exit_seq == seq)
				umbra_cond_wait(&vcpu->mode_cond, &vcpu->mode_lock);
		}
		umbra_mutex_unlock(&vcpu->mode_lock);
	}
	if (t0)
		trace_request(vcpu, t0, req, kicked);
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
	uint64_t req = __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST), done = vcpu->nmi_done;
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_SHOOTDOWN);
	struct kvm_sregs sregs;

	if (req == vcpu->nmi_done)
		return 0;
	vcpu->nmi_done = req;
	if (t0)
		trace_served(vcpu, "early flush", t0, done, req, 0, 'f');
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
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_SHOOTDOWN), done = vcpu->nmi_done;

	vcpu->nmi_done = __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST);
	if (ioctl(vcpu->fd, KVM_NMI) < 0)
		return -errno;
	vcpu->nmis_injected++;
	__atomic_fetch_add(&vcpu->vm->nmis, 1, __ATOMIC_RELAXED);
	vcpu->nmi_served[vcpu->nmis_injected % VCPU_NMI_RING] =
		(struct vcpu_nmi_served){ .first = done, .last = vcpu->nmi_done };
	if (t0)
		trace_served(vcpu, "nmi", t0, done, vcpu->nmi_done, vcpu->nmis_injected, 't');
	return 0;
}

bool vcpu_flush_ack(struct vcpu *vcpu)
{
	/* KVM may coalesce NMIs (one pending, one latched while the handler
	 * runs), so the guest may receive fewer than were injected, never
	 * more: each acknowledgement answers one injected NMI. */
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_SHOOTDOWN);

	if (vcpu->acks_received >= vcpu->nmis_injected)
		return false;
	vcpu->acks_received++;
	__atomic_fetch_add(&vcpu->vm->flush_acks, 1, __ATOMIC_RELAXED);
	if (t0) {
		const struct vcpu_nmi_served *n =
			&vcpu->nmi_served[vcpu->acks_received % VCPU_NMI_RING];

		trace_served(vcpu, "ack", t0, n->first, n->last, vcpu->acks_received, 'f');
	}
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
