/*
 * Running a VM: one thread per vCPU runs KVM_RUN and handles its exits;
 * vm_stop() records the exit status and kicks every vCPU out of KVM_RUN
 * (immediate_exit and the kick signal). The last vCPU thread to end frees
 * the VM's shadow tables (vm_mmu_release), so that a stopped VM holds no
 * pool pages while others run.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>

#include "umbra/trace.h"
#include "vm_internal.h"

#define KICK_SIGNAL SIGUSR1

static void kick_signal_handler(int sig)
{
	(void)sig; /* its only job is to interrupt KVM_RUN */
}

void vcpu_kick(struct vcpu *vcpu)
{
	__atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&vcpu->thread_started, __ATOMIC_ACQUIRE))
		pthread_kill(vcpu->thread, KICK_SIGNAL);
}

bool vm_is_stopped(struct vm *vm)
{
	return __atomic_load_n(&vm->stopped, __ATOMIC_ACQUIRE);
}

void vm_stop(struct vm *vm, int status)
{
	umbra_mutex_lock(&vm->lock);
	if (!vm->stopped) {
		vm->exit_status = status;
		__atomic_store_n(&vm->stopped, true, __ATOMIC_RELEASE);
	}
	umbra_mutex_unlock(&vm->lock);
	for (unsigned int i = 0; i < vm->nr_vcpus; i++)
		vcpu_kick(&vm->vcpus[i]);
}

/* One KVM_RUN and its exit. Returns false when the thread must stop. */
static bool vcpu_run_once(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	int r, ret;

	/* A clone of the VM parks every vCPU first. */
	if (!vcpu_park(vcpu))
		return false;
	/* The mailbox: turn flush requests into one NMI, which the guest
	 * takes before it executes anything else. */
	ret = vcpu_inject_pending_flush(vcpu);
	if (ret) {
		vcpu_fail(vcpu, true, "KVM_NMI (TLB shootdown) failed: %s", strerror(-ret));
		return false;
	}
	/* Enter guest mode unless a request slipped in. */
	if (!vcpu_enter_guest_mode(vcpu))
		return true;
	if (!__atomic_load_n(&vm->first_run_ns, __ATOMIC_RELAXED)) {
		uint64_t zero = 0;

		__atomic_compare_exchange_n(&vm->first_run_ns, &zero, vmm_now_ns(), false, __ATOMIC_RELEASE,
					    __ATOMIC_RELAXED);
	}
	r = ioctl(vcpu->fd, KVM_RUN, 0);
	int run_errno = errno;
	vcpu_exit_guest_mode(vcpu);
	if (r < 0) {
		if (run_errno == EINTR || run_errno == EAGAIN) {
			__atomic_fetch_add(&vm->exits[VM_EXIT_INTERRUPTED], 1, __ATOMIC_RELAXED);
			__atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
			return true;
		}
		vcpu_fail(vcpu, true, "KVM_RUN failed: %s", strerror(run_errno));
		return false;
	}
	vcpu_handle_exit(vcpu);
	/* After HLT, interrupts are off: nothing can wake this vCPU. */
	if (vcpu->run->exit_reason == KVM_EXIT_HLT) {
		__atomic_store_n(&vcpu->halted, true, __ATOMIC_RELEASE);
		return false;
	}
	return true;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	sigset_t kick;

	__atomic_store_n(&vcpu->tid, gettid(), __ATOMIC_RELEASE);
	vcpu_shootdown_thread_init(vcpu);
	if (umbra_trace_active()) {
		char name[32];

		snprintf(name, sizeof(name), "vCPU %u", vcpu->id);
		umbra_trace_thread_set(vcpu->vm->trace_id, vcpu->id + 1, name);
	}
	sigemptyset(&kick);
	sigaddset(&kick, KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);

	while (!vm_is_stopped(vcpu->vm) && vcpu_run_once(vcpu))
		;
	console_flush(vcpu);
	/* The last thread frees the VM's tables (its pool pages return). */
	if (__atomic_sub_fetch(&vcpu->vm->threads_running, 1, __ATOMIC_ACQ_REL) == 0)
		vm_mmu_release(vcpu->vm);
	else
		vcpu_thread_ended(vcpu); /* a clone may wait for it to park */
	return NULL;
}

void vmm_signals_init(void)
{
	struct sigaction sa = { .sa_handler = kick_signal_handler };
	sigset_t kick;

	sigemptyset(&sa.sa_mask);
	sigaction(KICK_SIGNAL, &sa, NULL); /* no SA_RESTART: KVM_RUN returns EINTR */
	/* vCPU threads inherit a mask with the kick signal blocked and unblock it
	 * themselves, so that it is never delivered to another thread. */
	sigemptyset(&kick);
	sigaddset(&kick, KICK_SIGNAL);
	pthread_sigmask(SIG_BLOCK, &kick, NULL);
}

int vm_start(struct vm *vm)
{
	unsigned int running = 0;

	if (vm->host->memory)
		vmm_memory_add_vm(vm->host->memory, vm);
	/* A clone's copy of a halted vCPU stays halted: no thread. */
	for (unsigned int i = 0; i < vm->nr_vcpus; i++)
		running += !vm->vcpus[i].halted;
	__atomic_store_n(&vm->threads_running, running, __ATOMIC_RELEASE);
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *vcpu = &vm->vcpus[i];

		if (vcpu->halted)
			continue;
		int e = pthread_create(&vcpu->thread, NULL, vcpu_thread, vcpu);
		if (e) {
			vm_print_error(vm, "cannot start vCPU %u's thread: %s", i, strerror(e));
			vm_stop(vm, UMBRA_STATUS_NO_KVM);
			if (__atomic_sub_fetch(&vm->threads_running, running, __ATOMIC_ACQ_REL) == 0)
				vm_mmu_release(vm);
			return -e;
		}
		running--;
		__atomic_store_n(&vcpu->thread_started, true, __ATOMIC_RELEASE);
		if (vm_is_stopped(vm))
			vcpu_kick(vcpu);
	}
	return 0;
}

int vm_wait(struct vm *vm)
{
	int status;

	for (unsigned int i = 0; i < vm->nr_vcpus; i++)
		if (__atomic_load_n(&vm->vcpus[i].thread_started, __ATOMIC_ACQUIRE))
			pthread_join(vm->vcpus[i].thread, NULL);
	umbra_mutex_lock(&vm->lock);
	status = vm->exit_status;
	umbra_mutex_unlock(&vm->lock);
	return status;
}

const char *vm_name(const struct vm *vm)
{
	return vm->name;
}

const struct vm *vm_parent(const struct vm *vm)
{
	return vm->parent;
}

void vm_set_clone_at_ready(struct vm *vm, unsigned int plan_index, unsigned int clones)
{
	vm->plan_index = plan_index;
	vm->clone_at_ready = clones;
}

unsigned int vm_plan_index(const struct vm *vm)
{
	return vm->plan_index;
}
