/*
 * Guest runtime: per-vCPU GDT and TSS, the IDT, exception reporting, exit.
 */
#include "guest.h"
#include "runtime.h"
#include "paging.h"

#define GDT_ENTRIES 5 /* null, code64, data, TSS (two slots) */
#define IST_STACK_SIZE 8192u

struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));
_Static_assert(sizeof(struct tss64) == 104, "64-bit TSS is 104 bytes");

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

struct descriptor_table_pointer {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

static uint64_t gdt[UMBRA_MAX_VCPUS][GDT_ENTRIES] __attribute__((aligned(16)));
static struct tss64 tss[UMBRA_MAX_VCPUS] __attribute__((aligned(16)));
static struct idt_gate idt[256] __attribute__((aligned(16)));
static exception_handler_t handlers[32];
static volatile int idt_ready;

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

static void idt_set_gate(unsigned int vector, uint64_t handler, unsigned int ist)
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

static void idt_init_once(uint32_t vcpu_id)
{
	if (vcpu_id == 0) {
		for (unsigned int v = 0; v < 32; v++) {
			/* NMI, #DF and #MC run on IST1 so that they work on a bad stack. */
			unsigned int ist = (v == 2 || v == 8 || v == 18) ? 1 : 0;
			idt_set_gate(v, exception_stubs[v], ist);
		}
		__atomic_store_n(&idt_ready, 1, __ATOMIC_RELEASE);
	}
	while (!__atomic_load_n(&idt_ready, __ATOMIC_ACQUIRE))
		cpu_relax();
}

static void gdt_load(const struct umbra_boot_info *boot)
{
	uint32_t id = boot->vcpu_id;
	uint64_t *g = gdt[id];
	struct tss64 *t = &tss[id];
	uint64_t base = (uint64_t)t;
	uint64_t limit = sizeof(*t) - 1;
	struct descriptor_table_pointer gdtr = { sizeof(gdt[id]) - 1, (uint64_t)g };

	t->ist[0] = boot->stack_bottom + IST_STACK_SIZE;
	t->iomap_base = sizeof(*t);
	g[0] = 0;
	g[1] = 0x00af9b000000ffffull; /* code: L, P, DPL 0, execute/read, accessed */
	g[2] = 0x00cf93000000ffffull; /* data: P, DPL 0, read/write, accessed */
	g[3] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
	       ((limit >> 16 & 0xf) << 48) | ((base >> 24 & 0xff) << 56);
	g[4] = base >> 32;
	__asm__ volatile("lgdt %0\n\t"
			 "mov %1, %%ds\n\t"
			 "mov %1, %%es\n\t"
			 "mov %1, %%ss\n\t"
			 "mov %1, %%fs\n\t"
			 "mov %1, %%gs\n\t"
			 "pushq %2\n\t"
			 "leaq 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:\n\t"
			 "ltr %w3"
			 :
			 : "m"(gdtr), "r"((uint64_t)UMBRA_SEL_DATA), "i"((uint64_t)UMBRA_SEL_CODE64),
			   "r"((uint64_t)UMBRA_SEL_TSS)
			 : "rax", "memory");
}

static void idt_load(void)
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

uint32_t runtime_vcpu_id(void)
{
	struct descriptor_table_pointer gdtr;

	__asm__ volatile("sgdt %0" : "=m"(gdtr));
	return (uint32_t)((gdtr.base - (uint64_t)gdt) / sizeof(gdt[0]));
}

extern const char probe_read_insn[], probe_read_resume[], probe_write_insn[], probe_write_resume[];

/* A page fault: umbra resolves shadow faults; what remains is the guest's. */
static int handle_page_fault(struct exception_frame *frame, uint64_t cr2)
{
	long r = hypercall4(UMBRA_HC_PAGE_FAULT, cr2, frame->error_code, 0, 0);

	if (r == 0)
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

/* Called from exception_common with interrupts off. */
void exception_dispatch(struct exception_frame *frame);
void exception_dispatch(struct exception_frame *frame)
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
__attribute__((noreturn)) void runtime_start(const struct umbra_boot_info *boot)
{
	if (boot->magic != UMBRA_BOOT_MAGIC || boot->abi_version != UMBRA_ABI_VERSION ||
	    boot->vcpu_id >= UMBRA_MAX_VCPUS) {
		printf("guest runtime: boot info magic %#x version %u vcpu %u not supported "
		       "(want magic %#x version %u)\n",
		       boot->magic, boot->abi_version, boot->vcpu_id, UMBRA_BOOT_MAGIC,
		       UMBRA_ABI_VERSION);
		guest_exit(UMBRA_EXIT_CODE_MAX);
	}
	gdt_load(boot);
	idt_init_once(boot->vcpu_id);
	idt_load();
	paging_init(boot);
	/* The NMI handler is in place: shootdowns may come; start from a clean TLB. */
	hypercall4(UMBRA_HC_READY, 0, 0, 0, 0);
	__asm__ volatile("mov %%cr3, %%rax; mov %%rax, %%cr3" ::: "rax", "memory");

	int ret = main(boot);
	if (boot->vcpu_id == 0)
		guest_exit(ret);
	cpu_halt_forever();
}

int cmdline_get(const char *cmdline, const char *key, char *buf, size_t size)
{
	size_t klen = strlen(key);

	for (const char *p = cmdline; *p; p++) {
		if ((p != cmdline && p[-1] != ' ') || memcmp(p, key, klen) != 0 ||
		    (p[klen] != '=' && p[klen] != ' ' && p[klen] != '\0'))
			continue;
		const char *v = p[klen] == '=' ? p + klen + 1 : p + klen;
		size_t n = 0;
		while (v[n] && v[n] != ' ' && n + 1 < size) {
			buf[n] = v[n];
			n++;
		}
		if (size)
			buf[n] = '\0';
		return 1;
	}
	return 0;
}

uint64_t cmdline_u64(const char *cmdline, const char *key, uint64_t def)
{
	char buf[32];
	uint64_t v = 0;
	const char *p = buf;
	unsigned int base = 10;

	if (!cmdline_get(cmdline, key, buf, sizeof(buf)) || !buf[0])
		return def;
	if (buf[0] == '0' && buf[1] == 'x') {
		base = 16;
		p += 2;
	}
	for (; *p; p++) {
		unsigned int d;
		if (*p >= '0' && *p <= '9')
			d = (unsigned int)(*p - '0');
		else if (base == 16 && *p >= 'a' && *p <= 'f')
			d = (unsigned int)(*p - 'a' + 10);
		else
			return def;
		v = v * base + d;
	}
	return v;
}

const struct umbra_segment_info *boot_segment(const struct umbra_boot_info *boot, const char *name)
{
	for (uint32_t i = 0; i < boot->nr_segments && i < UMBRA_MAX_SEGMENTS; i++)
		if (strcmp(boot->segments[i].name, name) == 0)
			return &boot->segments[i];
	return NULL;
}

const struct umbra_segment_info *cmdline_segment(const struct umbra_boot_info *boot, const char *prog,
						 const char *key)
{
	char name[UMBRA_SEGMENT_NAME_MAX];
	const struct umbra_segment_info *seg;

	if (!cmdline_get(boot->cmdline, key, name, sizeof(name))) {
		printf("%s: no %s= on the command line '%s'\n", prog, key, boot->cmdline);
		return NULL;
	}
	if (!(seg = boot_segment(boot, name)))
		printf("%s: no segment '%s' attached (%u attached)\n", prog, name, boot->nr_segments);
	return seg;
}

uint64_t fnv1a(uint64_t hash, const void *data, size_t len)
{
	const unsigned char *p = data;

	while (len--) {
		hash ^= *p++;
		hash *= 0x100000001b3ull;
	}
	return hash;
}

void *memset(void *dst, int c, size_t n)
{
	unsigned char *d = dst;

	while (n--)
		*d++ = (unsigned char)c;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const unsigned char *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (unsigned char)*a - (unsigned char)*b;
}
