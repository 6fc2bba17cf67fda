/*
 * Exits: what a vCPU thread does when KVM_RUN returns (port I/O: the
 * console UART and hypercalls; MMIO; HLT; failures), the console lines the
 * guest prints, and the reports of guest failures. Output of every vCPU of
 * every VM goes out in whole lines under the host's output_lock; a guest's
 * bytes are escaped (vmm_console_escape) unless --console raw.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "vm_internal.h"
#include "x86.h"

/* ---- output ---- */

size_t vmm_console_escape(const char *in, size_t len, char *out)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];

		if (c == '\\') {
			out[n++] = '\\';
			out[n++] = '\\';
		} else if ((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t') {
			out[n++] = (char)c;
		} else {
			out[n++] = '\\';
			out[n++] = 'x';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 0xf];
		}
	}
	return n;
}

/* Prints the vCPU's pending console line, escaped unless the host's console
 * is raw; the caller holds output_lock. */
static void console_flush_locked(struct vcpu *vcpu)
{
	struct vmm_host *host = vcpu->vm->host;

	umbra_mutex_assert_held(&host->output_lock);
	if (!vcpu->line_len)
		return;
	if (vcpu->vm->nr_vcpus > 1)
		fprintf(stdout, "[%s/%u] ", vcpu->vm->name, vcpu->id);
	else if (vcpu->vm->prefix_output)
		fprintf(stdout, "[%s] ", vcpu->vm->name);
	if (host->console == VMM_CONSOLE_RAW) {
		fwrite(vcpu->line, 1, vcpu->line_len, stdout);
	} else {
		char escaped[VMM_CONSOLE_ESCAPED_MAX(CONSOLE_LINE_MAX)];

		fwrite(escaped, 1, vmm_console_escape(vcpu->line, vcpu->line_len, escaped), stdout);
	}
	if (vcpu->line[vcpu->line_len - 1] != '\n')
		fputc('\n', stdout);
	fflush(stdout);
	vcpu->line_len = 0;
}

void console_flush(struct vcpu *vcpu)
{
	struct umbra_mutex *output_lock = &vcpu->vm->host->output_lock;

	umbra_mutex_lock(output_lock);
	console_flush_locked(vcpu);
	umbra_mutex_unlock(output_lock);
}

void console_put(struct vcpu *vcpu, char c)
{
	vcpu->line[vcpu->line_len++] = c;
	if (c == '\n' || vcpu->line_len == sizeof(vcpu->line))
		console_flush(vcpu);
}

void vm_print_error(struct vm *vm, const char *fmt, ...)
{
	va_list ap;

	umbra_mutex_lock(&vm->host->output_lock);
	fprintf(stderr, "umbra: %s: ", vm->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	umbra_mutex_unlock(&vm->host->output_lock);
}

/* Prints the vCPU's registers on stderr; the caller holds output_lock. */
static void dump_registers_locked(struct vcpu *vcpu)
{
	struct kvm_regs r;
	struct kvm_sregs s;

	umbra_mutex_assert_held(&vcpu->vm->host->output_lock);
	if (ioctl(vcpu->fd, KVM_GET_REGS, &r) < 0 || ioctl(vcpu->fd, KVM_GET_SREGS, &s) < 0) {
		fprintf(stderr, "  (registers unavailable: %s)\n", strerror(errno));
		return;
	}
	fprintf(stderr,
		"  RIP=%016llx RSP=%016llx RFLAGS=%08llx\n"
		"  RAX=%016llx RBX=%016llx RCX=%016llx RDX=%016llx\n"
		"  RSI=%016llx RDI=%016llx RBP=%016llx R8 =%016llx\n"
		"  R9 =%016llx R10=%016llx R11=%016llx R12=%016llx\n"
		"  R13=%016llx R14=%016llx R15=%016llx\n"
		"  CR0=%016llx CR2=%016llx CR3=%016llx CR4=%016llx EFER=%llx\n"
		"  CS=%04x (base %llx, l=%u) SS=%04x DS=%04x TR=%04x GDT=%llx/%x IDT=%llx/%x\n",
		r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9,
		r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, s.cr0, s.cr2, s.cr3, s.cr4, s.efer,
		s.cs.selector, s.cs.base, s.cs.l, s.ss.selector, s.ds.selector, s.tr.selector, s.gdt.base,
		s.gdt.limit, s.idt.base, s.idt.limit);
}

void vcpu_fail(struct vcpu *vcpu, bool dump, const char *fmt, ...)
{
	struct vm *vm = vcpu->vm;
	va_list ap;

	if (vm_is_stopped(vm))
		return;
	umbra_mutex_lock(&vm->host->output_lock);
	console_flush_locked(vcpu);
	fprintf(stderr, "umbra: %s vCPU %u: ", vm->name, vcpu->id);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (dump)
		dump_registers_locked(vcpu);
	umbra_mutex_unlock(&vm->host->output_lock);
	vm_stop(vm, UMBRA_STATUS_GUEST_ERROR);
}

/* ---- exits ---- */

static void vm_count_exit(struct vm *vm, enum vm_exit_kind kind)
{
	__atomic_fetch_add(&vm->exits[kind], 1, __ATOMIC_RELAXED);
}

/* The console UART: the data register prints, LSR reads "transmitter
 * empty", other registers read 0 and ignore writes. */
static void handle_uart(struct vcpu *vcpu, uint16_t port, bool out, uint8_t *data, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++) {
		if (out && port == UMBRA_CONSOLE_PORT)
			console_put(vcpu, (char)data[i]);
		else if (!out)
			data[i] = port == UMBRA_CONSOLE_PORT + UART_LSR ? UART_LSR_THRE | UART_LSR_TEMT : 0;
	}
}

static void handle_io(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint16_t port = run->io.port;
	bool out = run->io.direction == KVM_EXIT_IO_OUT;

	if (port == UMBRA_HC_PORT && out && run->io.size == 4 && run->io.count == 1) {
		vm_count_exit(vcpu->vm, VM_EXIT_HYPERCALL);
		vcpu_handle_hypercall(vcpu);
		return;
	}
	if (port >= UMBRA_CONSOLE_PORT && port < UMBRA_CONSOLE_PORT + UART_NR_REGS && run->io.size == 1) {
		vm_count_exit(vcpu->vm, VM_EXIT_CONSOLE);
		handle_uart(vcpu, port, out, data, run->io.count);
		return;
	}
	vm_count_exit(vcpu->vm, VM_EXIT_IO_OTHER);
	vcpu_fail(vcpu, true, "unhandled port I/O: %s port %#x, size %u, count %u%s",
		  out ? "out to" : "in from", port, run->io.size, run->io.count,
		  port == UMBRA_HC_PORT ? " (hypercalls are a 4-byte out, count 1)" : "");
}

/* An access KVM could not back with a memslot (or a write to a read-only
 * one): say what lies at the address. */
static void handle_mmio(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	struct vm *vm = vcpu->vm;
	const struct segment *ro = NULL;
	const struct vm_area *layer;
	uint64_t page;
	uint64_t pool_bytes = (uint64_t)vm->group->pool_pages * SHADOW_PAGE_SIZE;

	vm_count_exit(vm, VM_EXIT_MMIO);
	for (unsigned int i = 0; i < vm->nr_segments; i++)
		if (run->mmio.phys_addr - vm->segments[i]->gpa < vm->segments[i]->size)
			ro = vm->segments[i];
	if (run->mmio.is_write && run->mmio.phys_addr - SHADOW_POOL_GPA < pool_bytes)
		vcpu_fail(vcpu, true, "write of %u bytes at guest-physical %#llx, a shadow page table (the pool "
			  "is read-only to guests)", run->mmio.len, run->mmio.phys_addr);
	else if (ro && run->mmio.is_write)
		vcpu_fail(vcpu, true, "write of %u bytes at guest-physical %#llx, in read-only segment '%s'",
			  run->mmio.len, run->mmio.phys_addr, ro->name);
	else if (run->mmio.is_write && (layer = vm_area_of_mpa(vm, run->mmio.phys_addr, &page)) &&
		 layer != vm->areas[vm->own_slot])
		vcpu_fail(vcpu, true, "write of %u bytes at guest-physical %#llx, in RAM shared copy-on-write with "
			  "the VM's clones (a read-only memslot: only writes through umbra's shadow get a copy, "
			  "not writes under a CR3 of the guest's own)", run->mmio.len, run->mmio.phys_addr);
	else
		vcpu_fail(vcpu, true, "%s of %u bytes at guest-physical %#llx, where there is no RAM or device",
			  run->mmio.is_write ? "write" : "read", run->mmio.len, run->mmio.phys_addr);
}

static void handle_hlt(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;
	bool all;

	vm_count_exit(vm, VM_EXIT_HLT);
	umbra_mutex_lock(&vm->lock);
	all = ++vm->nr_halted == vm->nr_vcpus;
	umbra_mutex_unlock(&vm->lock);
	if (all)
		vcpu_fail(vcpu, false, "every vCPU halted without the exit hypercall");
}

void vcpu_handle_exit(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	struct vm *vm = vcpu->vm;

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		handle_io(vcpu);
		break;
	case KVM_EXIT_MMIO:
		handle_mmio(vcpu);
		break;
	case KVM_EXIT_HLT:
		handle_hlt(vcpu);
		break;
	case KVM_EXIT_SHUTDOWN:
		vm_count_exit(vm, VM_EXIT_SHUTDOWN);
		vcpu_fail(vcpu, true, "triple fault (KVM_EXIT_SHUTDOWN)");
		break;
	case KVM_EXIT_FAIL_ENTRY:
		vm_count_exit(vm, VM_EXIT_FAIL_ENTRY);
		vcpu_fail(vcpu, true, "VM entry failed (KVM_EXIT_FAIL_ENTRY), hardware reason %#llx",
			  run->fail_entry.hardware_entry_failure_reason);
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		vm_count_exit(vm, VM_EXIT_INTERNAL_ERROR);
		vcpu_fail(vcpu, true, "KVM internal error, suberror %u (%s)", run->internal.suberror,
			  run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? "emulation failed" :
			  run->internal.suberror == KVM_INTERNAL_ERROR_DELIVERY_EV ? "event delivery failed" :
			  "see linux/kvm.h");
		break;
	default:
		vm_count_exit(vm, VM_EXIT_OTHER);
		vcpu_fail(vcpu, true, "unexpected KVM exit reason %u", run->exit_reason);
		break;
	}
}
