/*
 * Guest runtime: boot (runtime_start), the IDT, exception dispatch and
 * reporting, exit, and the vCPU barrier.
 */
#include "guest.h"
#include "paging.h"
#include "runtime.h"
#include "vcpu.h"

struct idt_gate {
	uint16_t offset_low;
	uint16_t selector;
	uint8_t ist;
	uint8_t type_attr;
	uint16_t offset_mid;
	uint32_t offset_high;
	uint32_t reserved;
} __attribute__((packed));
_Static_assert(sizeof(struct idt_gate) == 16, "long-mode IDT gate is 16 bytes");

/* The exception entry's state is resident (docs/abi.md, "What stays
 * resident"): a #PF reaches the PAGE_FAULT hypercall touching nothing else
 * than these, the entry code in entry.S, the functions marked
 * GUEST_RESIDENT_TEXT here and in vcpu.c, and the stack. */
static struct idt_gate idt[256] GUEST_RESIDENT_BSS __attribute__((aligned(16)));
static exception_handler_t handlers[32] GUEST_RESIDENT_BSS;

extern const uint64_t exception_stubs[32];

static const char *const exception_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP",
	"#SS", "#GP", "#PF", "-15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "-22", "-23",
	"-24", "-25", "-26", "-27", "#HV", "#VC", "#SX", "-31",
};

const char *exception_name(unsigned int vector)
{
	return vector < 32 ? exception_names[vector] : "IRQ";
}

GUEST_RESIDENT_TEXT static void idt_set_gate(unsigned int vector, uint64_t handler, unsigned int ist)
{
	struct idt_gate *g = &idt[vector];

	g->offset_low = (uint16_t)handler;
	g->selector = UMBRA_SEL_CODE64;
	g->ist = (uint8_t)ist;
	g->type_attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
	g->offset_mid = (uint16_t)(handler >> 16);
	g->offset_high = (uint32_t)(handler >> 32);
	g->reserved = 0;
}

/* Every vCPU writes the same gates (so it needs no boot information, which
 * is not resident, before its IDT is loaded): a vCPU already using the IDT
 * reads the bytes it had. */
GUEST_RESIDENT_TEXT static void idt_init(void)
{
	for (unsigned int v = 0; v < 32; v++) {
		/* NMI, #DF and #MC run on IST1 so that they work on a bad stack. */
		unsigned int ist = (v == 2 || v == 8 || v == 18) ? 1 : 0;
		idt_set_gate(v, exception_stubs[v], ist);
	}
}

GUEST_RESIDENT_TEXT static void idt_load(void)
{
	struct descriptor_table_pointer idtr = { sizeof(idt) - 1, (uint64_t)idt };

	__asm__ volatile("lidt %0" : : "m"(idtr) : "memory");
}

exception_handler_t set_exception_handler(unsigned int vector, exception_handler_t handler)
{
	exception_handler_t old = handlers[vector & 31];

	handlers[vector & 31] = handler;
	return old;
}

extern const char probe_read_insn[], probe_read_resume[], probe_write_insn[], probe_write_resume[];

/*
 * A fault that umbra says it fixed but that comes straight back for the same
 * instruction and address, again and again, makes no progress (a shadow
 * table the guest scribbled on through a CR3 of its own, say). After
 * FAULT_RETRY_MAX such retries, each within FAULT_RETRY_TICKS TSC ticks of
 * the last, it is treated as the guest's own fault: a probe reports it, and
 * anything else is reported to umbra, instead of the vCPU looping for ever.
 * A page evicted again and again comes back far less often than that.
 */
#define FAULT_RETRY_MAX 1000u
#define FAULT_RETRY_TICKS 10000000ull /* 10 ms at 1 GHz */

static struct {
	uint64_t rip, cr2, tsc;
	uint32_t count;
} fault_retry[UMBRA_MAX_VCPUS] GUEST_RESIDENT_BSS;

GUEST_RESIDENT_TEXT static int fault_retry_exhausted(const struct exception_frame *frame, uint64_t cr2)
{
	uint32_t id = runtime_vcpu_id();
	uint64_t now = read_tsc();

	if (id >= UMBRA_MAX_VCPUS)
		return 0; /* before this vCPU loaded its own GDT: not counted */
	if (fault_retry[id].rip != frame->rip || fault_retry[id].cr2 != cr2 ||
	    now - fault_retry[id].tsc > FAULT_RETRY_TICKS) {
		fault_retry[id].rip = frame->rip;
		fault_retry[id].cr2 = cr2;
		fault_retry[id].count = 0;
	}
	fault_retry[id].tsc = now;
	return ++fault_retry[id].count > FAULT_RETRY_MAX;
}

/* A page fault: umbra resolves shadow faults; what remains is the guest's.
 * Once PAGE_FAULT has answered, the fault is resolved and what follows
 * (the guest's own #PF policy, the image's handler) may fault in turn. */
GUEST_RESIDENT_TEXT static int handle_page_fault(struct exception_frame *frame, uint64_t cr2)
{
	long r = hypercall4(UMBRA_HC_PAGE_FAULT, cr2, frame->error_code, 0, 0);

	if (r == 0 && fault_retry_exhausted(frame, cr2))
		r = (long)(UMBRA_PF_GUEST | frame->error_code);
	else if (r == 0)
		return 1; /* fixed in the shadow: retry the access */
	frame->error_code = (uint32_t)r; /* the guest tables' view of the fault */
	if (paging_handle_own_fault(cr2, (uint32_t)r))
		return 1;
	if (frame->rip == (uint64_t)probe_read_insn || frame->rip == (uint64_t)probe_write_insn) {
		frame->rax = (1ull << 63) | (uint32_t)r;
		frame->rip = frame->rip == (uint64_t)probe_read_insn ? (uint64_t)probe_read_resume :
								      (uint64_t)probe_write_resume;
		return 1;
	}
	return handlers[14] && handlers[14](frame);
}

/* What READY returned on the VM's last vCPU to make it, where umbra cloned
 * the VM then (--clone): the clone's index; 0 in the parent. */
static long clone_index_at_ready;

long guest_clone_index(void)
{
	return __atomic_load_n(&clone_index_at_ready, __ATOMIC_ACQUIRE);
}

/* The rest of the boot, once faults can be taken (not resident): checks the
 * boot information, loads this vCPU's GDT and TSS, sets up paging, says
 * READY and runs main. */
static __attribute__((noreturn, noinline)) void runtime_main(const struct umbra_boot_info *boot)
{
	if (boot->magic != UMBRA_BOOT_MAGIC || boot->abi_version != UMBRA_ABI_VERSION ||
	    boot->vcpu_id >= UMBRA_MAX_VCPUS) {
		printf("guest runtime: boot info magic %#x version %u vcpu %u not supported "
		       "(want magic %#x version %u)\n",
		       boot->magic, boot->abi_version, boot->vcpu_id, UMBRA_BOOT_MAGIC,
		       UMBRA_ABI_VERSION);
		guest_exit(UMBRA_EXIT_CODE_MAX);
	}
	vcpu_gdt_load(boot);
	paging_init(boot);
	/* The NMI handler is in place: shootdowns may come; start from a clean TLB. */
	long ready = hypercall4(UMBRA_HC_READY, 0, 0, 0, 0);
	if (ready > 0)
		clone_index_at_ready = ready;
	__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");

	int ret = main(boot);
	if (boot->vcpu_id == 0)
		guest_exit(ret);
	cpu_halt_forever();
}

/* Called from exception_common with interrupts off. */
void exception_dispatch(struct exception_frame *frame);
GUEST_RESIDENT_TEXT void exception_dispatch(struct exception_frame *frame)
{
	uint64_t cr2 = read_cr2(); /* before anything can fault again */

	if (frame->vector == 2) {
		/* A TLB shootdown from umbra: flush, then acknowledge. */
		__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");
		hypercall4(UMBRA_HC_FLUSH_ACK, 0, 0, 0, 0);
		return;
	}
	if (frame->vector == 14) {
		if (handle_page_fault(frame, cr2))
			return;
	} else {
		exception_handler_t h = frame->vector < 32 ? handlers[frame->vector] : NULL;
		if (h && h(frame))
			return;
	}
	hypercall4(UMBRA_HC_EXCEPTION, frame->vector, frame->rip, frame->error_code, cr2);
	cpu_halt_forever(); /* not reached: umbra stops the VM */
}

void guest_exit(int code)
{
	hypercall4(UMBRA_HC_EXIT, (unsigned long)code, 0, 0, 0);
	cpu_halt_forever(); /* not reached: umbra stops the VM */
}

void vcpu_barrier(const struct umbra_boot_info *boot)
{
	static volatile uint32_t arrived, generation;
	uint32_t gen = __atomic_load_n(&generation, __ATOMIC_ACQUIRE);

	if (__atomic_add_fetch(&arrived, 1, __ATOMIC_ACQ_REL) == boot->nr_vcpus) {
		__atomic_store_n(&arrived, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&generation, gen + 1, __ATOMIC_RELEASE);
		return;
	}
	while (__atomic_load_n(&generation, __ATOMIC_ACQUIRE) == gen)
		cpu_relax();
}

void runtime_start(const struct umbra_boot_info *boot);
/* Resident: until its IDT is loaded the vCPU cannot take a fault, and so
 * touches only resident memory (this code, the IDT and its stack). */
GUEST_RESIDENT_TEXT __attribute__((noreturn)) void runtime_start(const struct umbra_boot_info *boot)
{
	idt_init();
	idt_load();
	runtime_main(boot);
}
