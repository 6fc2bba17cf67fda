/*
 * A KVM virtual machine: RAM, the long-mode boot state, vCPU threads and the
 * handling of every exit.
 *
 * Threads: main() calls vm_run(), which starts one thread per vCPU and joins
 * them. A vCPU thread runs KVM_RUN and handles exits itself. Stopping the VM
 * (the guest exits, or fails) is vm_stop(): the first caller records the exit
 * status, then every vCPU is kicked out of KVM_RUN (immediate_exit + signal).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "umbra/abi.h"
#include "vmm.h"

#define PAGE_SIZE 4096ull
#define LARGE_PAGE_SIZE (2ull << 20)
#define KICK_SIGNAL SIGUSR1
#define CONSOLE_LINE_MAX 1024

/* x86 control bits used for the boot state. */
#define X86_CR0_PE (1ull << 0)
#define X86_CR0_MP (1ull << 1)
#define X86_CR0_ET (1ull << 4)
#define X86_CR0_NE (1ull << 5)
#define X86_CR0_WP (1ull << 16)
#define X86_CR0_PG (1ull << 31)
#define X86_CR4_PAE (1ull << 5)
#define X86_CR4_OSFXSR (1ull << 9)
#define X86_CR4_OSXMMEXCPT (1ull << 10)
#define X86_EFER_LME (1ull << 8)
#define X86_EFER_LMA (1ull << 10)
#define X86_EFER_NXE (1ull << 11)
#define X86_PTE_PRESENT (1ull << 0)
#define X86_PTE_WRITABLE (1ull << 1)
#define X86_PTE_LARGE (1ull << 7)

struct vcpu {
	struct vm *vm;
	unsigned int id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool thread_started; /* atomic: read by whichever thread stops the VM */
	/* Console bytes of this vCPU until a newline; only its thread touches it. */
	char line[CONSOLE_LINE_MAX];
	size_t line_len;

	/* Shadow paging. tlb is registered with the VM's shadow MMU, which calls
	 * its ops (with mmu_lock held) to flush this vCPU. guest_cr3 is the
	 * address space it runs (its thread only). */
	struct shadow_tlb tlb;
	uint64_t guest_cr3;
	/* TLB-shootdown mailbox: flush_req counts flush requests (atomic);
	 * nmi_done is how many of them the vCPU thread has turned into an
	 * injected NMI (its thread only); nmi_ready says the guest's NMI
	 * handler is installed (atomic, set once by UMBRA_HC_READY). */
	uint64_t flush_req;
	uint64_t nmi_done;
	bool nmi_ready;
	/* mode_lock protects in_guest and exit_seq: in_guest is true while the
	 * thread is in (or about to enter) KVM_RUN; exit_seq counts returns from
	 * KVM_RUN. Requesters that find in_guest wait on mode_cond for the next
	 * return. A leaf lock (taken under mmu_lock by the flush ops). */
	pthread_mutex_t mode_lock;
	pthread_cond_t mode_cond;
	bool in_guest;
	uint64_t exit_seq;
};

/* A range the guest asked to keep mapped in every address space. */
struct pin {
	uint64_t va, len;
};

struct vm {
	char name[32];
	int kvm_fd; /* borrowed */
	int vm_fd;
	int ram_fd; /* memfd backing guest RAM */
	void *ram;
	uint64_t ram_size;
	size_t run_size;
	bool has_nx;
	char cmdline[UMBRA_CMDLINE_MAX];
	bool prefix_output;
	unsigned int nr_segments;
	struct segment *segments[UMBRA_MAX_SEGMENTS]; /* borrowed from main */
	uint64_t boot_tables_end;
	struct kvm_cpuid2 *cpuid;

	/* Shadow paging: the VM's shadow MMU, its RAM as a memory object, and
	 * the slot ids of RAM, the pool and each segment. */
	struct vmm_host *host;
	struct shadow_mmu *mmu;
	struct notifier_object *ram_obj;
	int ram_slot, segment_slots[UMBRA_MAX_SEGMENTS];
	/* pins, nr_pins: under lock. */
	struct pin pins[UMBRA_MAX_PINS];
	unsigned int nr_pins;
	unsigned int nr_vcpus;
	struct vcpu *vcpus;

	/* lock protects stopped, exit_status and nr_halted; it is taken by vCPU
	 * threads when they stop the VM or halt. Nests inside nothing. */
	pthread_mutex_t lock;
	bool stopped;
	int exit_status;
	unsigned int nr_halted;

	_Atomic uint64_t exits[VM_EXIT_NR];
	_Atomic uint64_t hypercalls[UMBRA_HC_NR];
	_Atomic uint64_t flush_requests, kicks, nmis, flush_acks;
};

const char *const vm_exit_kind_names[VM_EXIT_NR] = {
	[VM_EXIT_CONSOLE] = "console",
	[VM_EXIT_HYPERCALL] = "hypercall",
	[VM_EXIT_IO_OTHER] = "io-other",
	[VM_EXIT_MMIO] = "mmio",
	[VM_EXIT_HLT] = "hlt",
	[VM_EXIT_SHUTDOWN] = "shutdown",
	[VM_EXIT_FAIL_ENTRY] = "fail-entry",
	[VM_EXIT_INTERNAL_ERROR] = "internal-error",
	[VM_EXIT_INTERRUPTED] = "interrupted",
	[VM_EXIT_OTHER] = "other",
};

const char *const vm_hypercall_names[UMBRA_HC_NR] = {
	[UMBRA_HC_EXIT] = "exit",
	[UMBRA_HC_EXCEPTION] = "exception",
	[UMBRA_HC_CONSOLE_WRITE] = "console_write",
	[UMBRA_HC_SET_CR3] = "set_cr3",
	[UMBRA_HC_PAGE_FAULT] = "page_fault",
	[UMBRA_HC_INVLPG] = "invlpg",
	[UMBRA_HC_FLUSH] = "flush",
	[UMBRA_HC_FLUSH_ACK] = "flush_ack",
	[UMBRA_HC_PIN] = "pin",
	[UMBRA_HC_READY] = "ready",
};

/* Serialises whole lines of output from all vCPUs (console and reports). */
static pthread_mutex_t output_lock = PTHREAD_MUTEX_INITIALIZER;

int vmm_kvm_open(int *kvm_fd, struct vmm_error *err)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return vmm_error_set(err, ENOENT,
					     "/dev/kvm does not exist on this machine; run umbra inside the KVM "
					     "sandbox instead: scripts/sandbox --add build/vmm/umbra --add build/guest "
					     "-- /umbra/umbra run /umbra/guest/IMAGE.elf");
		return vmm_error_set(err, e, "cannot open /dev/kvm: %s", strerror(e));
	}
	int version = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION) {
		close(fd);
		return vmm_error_set(err, ENOTSUP, "KVM API version %d, umbra needs %d", version,
				     KVM_API_VERSION);
	}
	if (ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_IMMEDIATE_EXIT) <= 0 ||
	    ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_USER_MEMORY) <= 0) {
		close(fd);
		return vmm_error_set(err, ENOTSUP, "KVM lacks KVM_CAP_IMMEDIATE_EXIT or KVM_CAP_USER_MEMORY");
	}
	*kvm_fd = fd;
	return 0;
}

/* ---- the process's shared state: the shadow-table pool ---- */

int vmm_host_create(size_t nr_pages, struct vmm_host **out, struct vmm_error *err)
{
	struct vmm_host *host = calloc(1, sizeof(*host));
	int ret;

	if (!host)
		return vmm_error_set(err, ENOMEM, "out of memory");
	host->pool_pages = nr_pages;
	ret = shadow_pool_create(nr_pages, &host->pool);
	if (ret) {
		vmm_error_set(err, -ret, "shadow table pool of %zu pages: %s", nr_pages, strerror(-ret));
		goto free_host;
	}
	shadow_pool_memory(host->pool, &host->pool_mem);
	host->pool_ro = mmap(NULL, host->pool_mem.bytes, PROT_READ, MAP_SHARED, host->pool_mem.fd, 0);
	if (host->pool_ro == MAP_FAILED) {
		ret = vmm_error_set(err, errno, "read-only mapping of the shadow table pool: %s", strerror(errno));
		goto destroy_pool;
	}
	*out = host;
	return 0;

destroy_pool:
	shadow_pool_destroy(host->pool);
free_host:
	free(host);
	return ret;
}

void vmm_host_destroy(struct vmm_host *host)
{
	if (!host)
		return;
	munmap(host->pool_ro, host->pool_mem.bytes);
	shadow_pool_destroy(host->pool);
	free(host);
}

/* ---- TLB shootdown (the shadow MMU's flush interface on a KVM vCPU) ---- */

static __thread struct vcpu *current_vcpu; /* the vCPU this thread runs, if any */

static void vcpu_kick(struct vcpu *vcpu);

/*
 * Posts a flush request in the vCPU's mailbox and, if the vCPU is in guest
 * mode, kicks it out of KVM_RUN and waits until it has left it (as KVM's
 * remote TLB flush waits only for vCPUs in guest mode). Before it enters the
 * guest again, the vCPU thread injects an NMI; the guest's NMI handler
 * reloads CR3 (flushing its TLB) before it runs anything else, and
 * acknowledges. Called under the shadow MMU's flush contract (this VM's
 * mmu_lock, or another VM's mmu_lock and this VM's tlbs_lock: shadow.h,
 * struct shadow_tlb_ops); takes mode_lock, a leaf.
 */
static void vcpu_request_flush(struct vcpu *vcpu)
{
	struct vm *vm = vcpu->vm;

	__atomic_fetch_add(&vcpu->flush_req, 1, __ATOMIC_SEQ_CST);
	__atomic_fetch_add(&vm->flush_requests, 1, __ATOMIC_RELAXED);
	if (current_vcpu == vcpu)
		return; /* its own thread: outside guest mode, flushed before it re-enters */
	pthread_mutex_lock(&vcpu->mode_lock);
	if (vcpu->in_guest) {
		uint64_t seq = vcpu->exit_seq;
		__atomic_fetch_add(&vm->kicks, 1, __ATOMIC_RELAXED);
		vcpu_kick(vcpu);
		while (vcpu->in_guest && vcpu->exit_seq == seq)
			pthread_cond_wait(&vcpu->mode_cond, &vcpu->mode_lock);
	}
	pthread_mutex_unlock(&vcpu->mode_lock);
}

static void kvm_tlb_flush_all(struct shadow_tlb *tlb)
{
	vcpu_request_flush((struct vcpu *)((char *)tlb - offsetof(struct vcpu, tlb)));
}

/* The NMI handler flushes the whole TLB: a per-address request is a full one. */
static void kvm_tlb_flush_va(struct shadow_tlb *tlb, uint64_t va)
{
	(void)va;
	kvm_tlb_flush_all(tlb);
}

static const struct shadow_tlb_ops kvm_tlb_ops = {
	.flush_all = kvm_tlb_flush_all,
	.flush_va = kvm_tlb_flush_va,
};

/* ---- boot state ---- */

uint64_t vm_image_load_max(uint64_t mem, unsigned int vcpus)
{
	return mem - (uint64_t)vcpus * UMBRA_VCPU_STACK_SIZE;
}

static uint64_t stacks_base(const struct vm *vm)
{
	return vm_image_load_max(vm->ram_size, vm->nr_vcpus);
}

/* The boot GDT and TSS, matching the segment state set in setup_sregs(). */
static void write_boot_gdt(struct vm *vm)
{
	uint64_t *gdt = (uint64_t *)((char *)vm->ram + UMBRA_GDT_GPA);
	uint64_t base = UMBRA_TSS_GPA, limit = 103;

	gdt[0] = 0;
	gdt[1] = 0x00af9b000000ffffull; /* code64: L, P, execute/read, accessed */
	gdt[2] = 0x00cf93000000ffffull; /* data: P, read/write, accessed */
	gdt[3] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x8bull << 40) | ((base >> 24 & 0xff) << 56);
	gdt[4] = base >> 32;
	/* TSS: all zero but the I/O map base, which points past its end. */
	*(uint16_t *)((char *)vm->ram + UMBRA_TSS_GPA + 102) = 104;
}

/* Boot page-table builder: page-table pages come from a bump allocator that
 * starts after the PML4 and the PDPT and must stay below the image. */
struct boot_tables {
	uint64_t *ram;
	uint64_t pml4, pdpt, next;
};

static uint64_t boot_table_alloc(struct boot_tables *bt)
{
	uint64_t page = bt->next;

	bt->next += PAGE_SIZE;
	return page;
}

/* Identity-maps the 2 MiB page at gpa (2 MiB aligned, below 512 GiB). */
static void boot_map_2m(struct boot_tables *bt, uint64_t gpa)
{
	const uint64_t rw = X86_PTE_PRESENT | X86_PTE_WRITABLE;
	uint64_t *pdpte = &bt->ram[bt->pdpt / 8 + (gpa >> 30)];

	if (!(*pdpte & X86_PTE_PRESENT))
		*pdpte = boot_table_alloc(bt) | rw;
	uint64_t pd = *pdpte & ~(PAGE_SIZE - 1);
	bt->ram[pd / 8 + ((gpa >> 21) & 511)] = gpa | rw | X86_PTE_LARGE;
}

/*
 * Identity-maps guest RAM and the attached segments: RAM with 4 KiB pages in
 * the first 2 MiB (page 0 left unmapped so that NULL dereferences fault) and
 * 2 MiB pages above; segments with 2 MiB pages. Returns the PML4's address,
 * or 0 if the tables would not fit below the image.
 */
static uint64_t write_boot_page_tables(struct vm *vm)
{
	const uint64_t rw = X86_PTE_PRESENT | X86_PTE_WRITABLE;
	struct boot_tables bt = { vm->ram, UMBRA_PT_GPA, UMBRA_PT_GPA + PAGE_SIZE, UMBRA_PT_GPA + 2 * PAGE_SIZE };
	uint64_t nr_pds = (vm->ram_size + (1ull << 30) - 1) >> 30;

	for (unsigned int i = 0; i < vm->nr_segments; i++)
		nr_pds += (vm->segments[i]->size >> 30) + 2;
	if (bt.next + (nr_pds + 1) * PAGE_SIZE > UMBRA_IMAGE_MIN_GPA)
		return 0;
	((uint64_t *)vm->ram)[bt.pml4 / 8] = bt.pdpt | rw;
	for (uint64_t gpa = LARGE_PAGE_SIZE; gpa < vm->ram_size; gpa += LARGE_PAGE_SIZE)
		boot_map_2m(&bt, gpa);
	/* The first 2 MiB through a page table, without page 0. */
	uint64_t pd0 = ((uint64_t *)vm->ram)[bt.pdpt / 8] & ~(PAGE_SIZE - 1);
	if (!pd0) {
		pd0 = boot_table_alloc(&bt);
		((uint64_t *)vm->ram)[bt.pdpt / 8] = pd0 | rw;
	}
	uint64_t pt0 = boot_table_alloc(&bt);
	((uint64_t *)vm->ram)[pd0 / 8] = pt0 | rw;
	for (uint64_t i = 1; i < 512; i++)
		((uint64_t *)vm->ram)[pt0 / 8 + i] = (i * PAGE_SIZE) | rw;
	for (unsigned int i = 0; i < vm->nr_segments; i++)
		for (uint64_t off = 0; off < vm->segments[i]->size; off += LARGE_PAGE_SIZE)
			boot_map_2m(&bt, vm->segments[i]->gpa + off);
	vm->boot_tables_end = bt.next;
	return bt.pml4;
}

static void write_boot_info(struct vm *vm, unsigned int id, uint64_t free_start, uint64_t boot_cr3)
{
	uint64_t region = vm->ram_size - (uint64_t)(id + 1) * UMBRA_VCPU_STACK_SIZE;
	uint64_t top = region + UMBRA_VCPU_STACK_SIZE;
	uint64_t info_gpa = (top - sizeof(struct umbra_boot_info)) & ~63ull;
	struct umbra_boot_info *bi = (struct umbra_boot_info *)((char *)vm->ram + info_gpa);

	memset(bi, 0, sizeof(*bi));
	bi->magic = UMBRA_BOOT_MAGIC;
	bi->abi_version = UMBRA_ABI_VERSION;
	bi->size = sizeof(*bi);
	bi->vcpu_id = id;
	bi->nr_vcpus = vm->nr_vcpus;
	bi->nr_segments = vm->nr_segments;
	for (unsigned int i = 0; i < vm->nr_segments; i++) {
		struct umbra_segment_info *si = &bi->segments[i];
		memcpy(si->name, vm->segments[i]->name, sizeof(si->name));
		si->gpa = vm->segments[i]->gpa;
		si->size = vm->segments[i]->size;
		si->flags = vm->segments[i]->writable ? UMBRA_SEGMENT_WRITABLE : 0;
	}
	bi->ram_size = vm->ram_size;
	bi->free_start = free_start;
	bi->free_end = stacks_base(vm);
	bi->stack_bottom = region;
	bi->stack_top = info_gpa;
	memcpy(bi->cmdline, vm->cmdline, sizeof(bi->cmdline));
	bi->boot_cr3 = boot_cr3;
	bi->pool_gpa = SHADOW_POOL_GPA;
	bi->pool_size = (uint64_t)vm->host->pool_pages * SHADOW_PAGE_SIZE;
}

/* Pre-faults every pinned range into the shadow of guest_cr3: writable where
 * the guest's tables allow it, else readable. Ranges the guest does not map
 * there are skipped. Returns 0, or -ENOMEM when the pool is exhausted. */
static int prefault_pins(struct vm *vm, uint64_t guest_cr3)
{
	struct pin pins[UMBRA_MAX_PINS];
	unsigned int nr;

	pthread_mutex_lock(&vm->lock);
	nr = vm->nr_pins;
	memcpy(pins, vm->pins, sizeof(pins));
	pthread_mutex_unlock(&vm->lock);
	for (unsigned int i = 0; i < nr; i++) {
		for (uint64_t va = pins[i].va & ~(PAGE_SIZE - 1); va < pins[i].va + pins[i].len; va += PAGE_SIZE) {
			uint32_t ec;
			int r = shadow_mmu_fault(vm->mmu, guest_cr3, va, SHADOW_ACCESS_WRITE, &ec);
			if (r == SHADOW_FAULT_GUEST || r == -EACCES)
				r = shadow_mmu_fault(vm->mmu, guest_cr3, va, 0, &ec);
			if (r == -ENOMEM)
				return r;
		}
	}
	return 0;
}

/* Switches the vCPU to the shadow of the address space guest_cr3 and returns
 * the shadow root (the CR3 the CPU must load) in *root. */
static int vcpu_load_guest_cr3(struct vcpu *vcpu, uint64_t guest_cr3, uint64_t *root)
{
	int ret = shadow_mmu_load_cr3(vcpu->vm->mmu, &vcpu->tlb, guest_cr3, root);

	if (ret)
		return ret;
	vcpu->guest_cr3 = guest_cr3;
	return prefault_pins(vcpu->vm, guest_cr3);
}

static void set_segment(struct kvm_segment *seg, uint16_t selector, uint8_t type, bool code)
{
	*seg = (struct kvm_segment){
		.base = 0, .limit = 0xffffffff, .selector = selector, .type = type,
		.present = 1, .dpl = 0, .db = code ? 0 : 1, .s = 1, .l = code ? 1 : 0, .g = 1,
	};
}

static int setup_vcpu_state(struct vm *vm, struct vcpu *vcpu, uint64_t entry, uint64_t cr3,
			    struct vmm_error *err)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0)
		return vmm_error_set(err, errno, "KVM_GET_SREGS: %s", strerror(errno));
	set_segment(&sregs.cs, UMBRA_SEL_CODE64, 0xb, true);
	set_segment(&sregs.ds, UMBRA_SEL_DATA, 0x3, false);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.tr = (struct kvm_segment){ .base = UMBRA_TSS_GPA, .limit = 103, .selector = UMBRA_SEL_TSS,
					 .type = 0xb, .present = 1 };
	sregs.ldt = (struct kvm_segment){ .unusable = 1, .type = 0x2, .present = 0 };
	sregs.gdt.base = UMBRA_GDT_GPA;
	sregs.gdt.limit = 5 * 8 - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0; /* the guest installs its own IDT first thing */
	sregs.cr0 = X86_CR0_PE | X86_CR0_MP | X86_CR0_ET | X86_CR0_NE | X86_CR0_WP | X86_CR0_PG;
	sregs.cr3 = cr3;
	sregs.cr4 = X86_CR4_PAE | X86_CR4_OSFXSR | X86_CR4_OSXMMEXCPT;
	sregs.efer = X86_EFER_LME | X86_EFER_LMA | (vm->has_nx ? X86_EFER_NXE : 0);
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0)
		return vmm_error_set(err, errno, "KVM_SET_SREGS (long mode) on vCPU %u: %s", vcpu->id,
				     strerror(errno));

	uint64_t region = vm->ram_size - (uint64_t)(vcpu->id + 1) * UMBRA_VCPU_STACK_SIZE;
	uint64_t info_gpa = (region + UMBRA_VCPU_STACK_SIZE - sizeof(struct umbra_boot_info)) & ~63ull;
	memset(&regs, 0, sizeof(regs));
	regs.rip = entry;
	regs.rsp = info_gpa;
	regs.rdi = info_gpa;
	regs.rflags = 0x2;
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0)
		return vmm_error_set(err, errno, "KVM_SET_REGS on vCPU %u: %s", vcpu->id, strerror(errno));
	return 0;
}

static int get_supported_cpuid(struct vm *vm, struct vmm_error *err)
{
	for (unsigned int n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
		if (!c)
			return vmm_error_set(err, ENOMEM, "out of memory for CPUID entries");
		c->nent = n;
		if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			vm->cpuid = c;
			for (unsigned int i = 0; i < c->nent; i++)
				if (c->entries[i].function == 0x80000001)
					vm->has_nx = c->entries[i].edx & (1u << 20);
			return 0;
		}
		int e = errno;
		free(c);
		if (e != E2BIG)
			return vmm_error_set(err, e, "KVM_GET_SUPPORTED_CPUID: %s", strerror(e));
	}
	return vmm_error_set(err, E2BIG, "KVM_GET_SUPPORTED_CPUID: too many entries");
}

static int set_vcpu_cpuid(struct vm *vm, struct vcpu *vcpu, struct vmm_error *err)
{
	for (unsigned int i = 0; i < vm->cpuid->nent; i++) {
		struct kvm_cpuid_entry2 *e = &vm->cpuid->entries[i];
		if (e->function == 1) /* initial APIC id = vCPU id */
			e->ebx = (e->ebx & 0x00ffffffu) | (vcpu->id << 24);
	}
	if (ioctl(vcpu->fd, KVM_SET_CPUID2, vm->cpuid) < 0)
		return vmm_error_set(err, errno, "KVM_SET_CPUID2 on vCPU %u: %s", vcpu->id, strerror(errno));
	return 0;
}

#define POOL_MEMSLOT 32

/*
 * Hardware nested paging is required: with KVM's own shadow paging (npt=0,
 * ept=0) KVM write-protects the guest page tables it shadows and never sees
 * umbra's edits of the table pool, which are made from the host, so its
 * shadow of umbra's shadow goes stale.
 *
 * AMD's nested paging checks the CPU's reads of guest page tables against the
 * nested tables as writes, so a guest walking shadow tables in a
 * KVM_MEM_READONLY memslot takes nested faults that KVM then emulates at the
 * wrong address. On AMD the pool must therefore be a writable memslot: shadow
 * entries carry A/D preset, so the CPU never writes them, and guests reach
 * memory only through shadow entries umbra makes, which never map the pool;
 * but a guest that loads a CR3 of its own could write shared tables. On Intel
 * (EPT) the pool is read-only and such a write stops the VM.
 */
static bool module_param_is(const char *path, char value)
{
	char c = 0;
	FILE *f = fopen(path, "re");

	if (!f)
		return false;
	if (fread(&c, 1, 1, f) != 1)
		c = 0;
	fclose(f);
	return c == value || (value == 'Y' && c == '1') || (value == 'N' && c == '0');
}

int vmm_check_nested_paging(struct vmm_error *err)
{
	if (module_param_is("/sys/module/kvm_amd/parameters/npt", 'N') ||
	    module_param_is("/sys/module/kvm_intel/parameters/ept", 'N'))
		return vmm_error_set(err, ENOTSUP,
				     "KVM runs without hardware nested paging (kvm_amd.npt=0 or kvm_intel.ept=0); umbra "
				     "needs it, because KVM's own shadow paging never sees umbra's edits of shadow tables");
	return 0;
}

static bool pool_must_be_writable(void)
{
	static int cached = -1;

	if (cached < 0) {
		cached = module_param_is("/sys/module/kvm_amd/parameters/npt", 'Y');
		if (cached)
			fprintf(stderr, "umbra: note: AMD nested paging: the shadow table pool is a writable memslot, so a "
					"guest that bypasses shadow paging could write shared shadow tables "
					"(docs/abi.md)\n");
	}
	return cached;
}

/* The paging controls of the boot state, as the shadow MMU must model them. */
static struct shadow_paging_mode vm_paging_mode(const struct vm *vm)
{
	struct shadow_paging_mode mode = shadow_default_mode;

	mode.wp = true;
	mode.nxe = vm->has_nx;
	mode.smep = false;
	for (unsigned int i = 0; i < vm->cpuid->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &vm->cpuid->entries[i];
		if (e->function == 0x80000001)
			mode.gbpages = e->edx & (1u << 26);
		if (e->function == 0x80000008 && (e->eax & 0xff) >= 32 && (e->eax & 0xff) <= 52)
			mode.maxphyaddr = e->eax & 0xff;
	}
	return mode;
}

/* Maps the table pool into the VM and creates its shadow MMU with
 * slots for RAM, the pool and each segment, and the identity P2M. */
static int vm_paging_init(struct vm *vm, struct vmm_error *err)
{
	struct vmm_host *host = vm->host;
	uint64_t pool_bytes = (uint64_t)host->pool_pages * SHADOW_PAGE_SIZE;
	bool writable = pool_must_be_writable();
	struct kvm_userspace_memory_region r = {
		.slot = POOL_MEMSLOT, .flags = writable ? 0 : KVM_MEM_READONLY, .guest_phys_addr = SHADOW_POOL_GPA,
		.memory_size = pool_bytes,
		.userspace_addr = (uint64_t)(uintptr_t)(writable ? host->pool_mem.host : host->pool_ro),
	};
	char name[64];
	int ret;

	if (!writable && ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0)
		return vmm_error_set(err, ENOTSUP, "KVM lacks KVM_CAP_READONLY_MEM, needed to map the shadow table pool");
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (shadow table pool): %s", strerror(errno));
	snprintf(name, sizeof(name), "%s-ram", vm->name);
	ret = notifier_object_create(name, vm->ram_size / SHADOW_PAGE_SIZE, &vm->ram_obj);
	if (ret)
		return vmm_error_set(err, -ret, "memory object for RAM: %s", strerror(-ret));
	uint64_t max_gpa = vm->ram_size;
	for (unsigned int i = 0; i < vm->nr_segments; i++)
		if (vm->segments[i]->gpa + vm->segments[i]->size > max_gpa)
			max_gpa = vm->segments[i]->gpa + vm->segments[i]->size;
	struct shadow_mmu_config config = { host->pool, max_gpa, 0, vm_paging_mode(vm) };
	ret = shadow_mmu_create(&config, &vm->mmu);
	if (ret) {
		vmm_error_set(err, -ret, "shadow MMU: %s", strerror(-ret));
		goto destroy_ram_obj;
	}
	/* The pool itself is not in the P2M: a guest that maps a shadow table
	 * in its own page tables gets no shadow entry for it (see
	 * report_unbacked_fault()). */
	struct shadow_slot ram = { vm->ram_obj, 0, vm->ram, false, NULL, NULL };
	if ((ret = shadow_mmu_add_slot(vm->mmu, &ram, &vm->ram_slot)) ||
	    (ret = shadow_mmu_map_gpa(vm->mmu, 0, vm->ram_size / SHADOW_PAGE_SIZE, vm->ram_slot, 0))) {
		vmm_error_set(err, -ret, "shadow MMU slot for RAM: %s", strerror(-ret));
		goto destroy_mmu;
	}
	for (unsigned int i = 0; i < vm->nr_segments; i++) {
		struct segment *seg = vm->segments[i];
		/* Every VM places the segment at the same machine (KVM
		 * guest-physical) address, so the runs the guest maps with 2 MiB
		 * pages use the canonical tables every VM shares; the store's
		 * get_page restores evicted pages. */
		struct shadow_slot slot = { seg->obj, seg->gpa, seg->host, !seg->writable, &shadow_store_slot_ops,
					    seg->store };
		if ((ret = shadow_mmu_add_segment(vm->mmu, &slot, &vm->segment_slots[i])) ||
		    (ret = shadow_mmu_map_gpa(vm->mmu, seg->gpa, seg->size / SHADOW_PAGE_SIZE,
					      vm->segment_slots[i], 0))) {
			vmm_error_set(err, -ret, "shadow MMU slot for segment '%s': %s", seg->name, strerror(-ret));
			goto destroy_mmu;
		}
	}
	return 0;

destroy_mmu:
	shadow_mmu_destroy(vm->mmu);
	vm->mmu = NULL;
destroy_ram_obj:
	notifier_object_destroy(vm->ram_obj);
	vm->ram_obj = NULL;
	return ret;
}

static void vm_paging_exit(struct vm *vm)
{
	shadow_mmu_destroy(vm->mmu);
	notifier_object_destroy(vm->ram_obj);
}

int vm_create(int kvm_fd, const struct vm_config *config, struct vm **out, struct vmm_error *err)
{
	struct vm *vm;
	int ret;

	if (config->vcpus == 0 || config->vcpus > UMBRA_MAX_VCPUS)
		return vmm_error_set(err, EINVAL, "%u vCPUs: must be 1 to %u", config->vcpus, UMBRA_MAX_VCPUS);
	if (config->mem % VMM_MEM_ALIGN || config->mem < VMM_MEM_MIN || config->mem > VMM_MEM_MAX)
		return vmm_error_set(err, EINVAL, "RAM size %" PRIu64 ": must be a multiple of 2 MiB from 4 MiB to 64 GiB",
				     config->mem);
	if (config->mem - (uint64_t)config->vcpus * UMBRA_VCPU_STACK_SIZE < 2 * UMBRA_IMAGE_MIN_GPA)
		return vmm_error_set(err, EINVAL, "RAM of %" PRIu64 " MiB is too small for %u vCPUs' stacks and an image",
				     config->mem >> 20, config->vcpus);
	if (strlen(config->cmdline) >= UMBRA_CMDLINE_MAX)
		return vmm_error_set(err, EINVAL, "command line longer than %u bytes", UMBRA_CMDLINE_MAX - 1);

	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return vmm_error_set(err, ENOMEM, "out of memory");
	snprintf(vm->name, sizeof(vm->name), "%s", config->name);
	snprintf(vm->cmdline, sizeof(vm->cmdline), "%s", config->cmdline);
	vm->prefix_output = config->prefix_output || config->vcpus > 1;
	if (config->nr_segments > UMBRA_MAX_SEGMENTS) {
		free(vm);
		return vmm_error_set(err, EINVAL, "%u segments: at most %u", config->nr_segments, UMBRA_MAX_SEGMENTS);
	}
	vm->nr_segments = config->nr_segments;
	for (unsigned int i = 0; i < config->nr_segments; i++)
		vm->segments[i] = config->segments[i];
	vm->kvm_fd = kvm_fd;
	vm->host = config->host;
	vm->ram_size = config->mem;
	vm->nr_vcpus = config->vcpus;
	vm->ram_fd = vm->vm_fd = -1;
	vm->ram = MAP_FAILED;
	pthread_mutex_init(&vm->lock, NULL);

	vm->vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		ret = vmm_error_set(err, errno, "KVM_CREATE_VM: %s", strerror(errno));
		goto free_vm;
	}
	int run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run)) {
		ret = vmm_error_set(err, EINVAL, "KVM_GET_VCPU_MMAP_SIZE returned %d", run_size);
		goto close_vm;
	}
	vm->run_size = (size_t)run_size;
	ret = get_supported_cpuid(vm, err);
	if (ret)
		goto close_vm;

	vm->ram_fd = memfd_create("umbra-ram", MFD_CLOEXEC);
	if (vm->ram_fd < 0 || ftruncate(vm->ram_fd, (off_t)vm->ram_size) < 0) {
		ret = vmm_error_set(err, errno, "guest RAM memfd of %" PRIu64 " bytes: %s", vm->ram_size,
				    strerror(errno));
		goto free_cpuid;
	}
	vm->ram = mmap(NULL, vm->ram_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, vm->ram_fd, 0);
	if (vm->ram == MAP_FAILED) {
		ret = vmm_error_set(err, errno, "mmap of guest RAM: %s", strerror(errno));
		goto close_ram;
	}
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = vm->ram_size,
		.userspace_addr = (uint64_t)(uintptr_t)vm->ram,
	};
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
		ret = vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (RAM): %s", strerror(errno));
		goto unmap_ram;
	}
	for (unsigned int i = 0; i < vm->nr_segments; i++) {
		const struct segment *seg = vm->segments[i];
		struct kvm_userspace_memory_region r = {
			.slot = 1 + i, .guest_phys_addr = seg->gpa, .memory_size = seg->size,
			.userspace_addr = (uint64_t)(uintptr_t)seg->host,
			.flags = seg->writable ? 0 : KVM_MEM_READONLY,
		};
		if (!seg->writable && ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0) {
			ret = vmm_error_set(err, ENOTSUP, "segment '%s' is read-only, but KVM lacks KVM_CAP_READONLY_MEM",
					    seg->name);
			goto unmap_ram;
		}
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
			ret = vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (segment '%s' at %#" PRIx64 "): %s",
					    seg->name, seg->gpa, strerror(errno));
			goto unmap_ram;
		}
	}

	ret = vm_paging_init(vm, err);
	if (ret)
		goto unmap_ram;
	vm->vcpus = calloc(vm->nr_vcpus, sizeof(*vm->vcpus));
	if (!vm->vcpus) {
		ret = vmm_error_set(err, ENOMEM, "out of memory");
		goto exit_paging;
	}
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *vcpu = &vm->vcpus[i];

		vcpu->vm = vm;
		vcpu->id = i;
		vcpu->run = MAP_FAILED;
		vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
		if (vcpu->fd < 0) {
			ret = vmm_error_set(err, errno, "KVM_CREATE_VCPU %u: %s", i, strerror(errno));
			goto destroy_vcpus;
		}
		vcpu->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
		if (vcpu->run == MAP_FAILED) {
			ret = vmm_error_set(err, errno, "mmap of vCPU %u's kvm_run: %s", i, strerror(errno));
			goto destroy_vcpus;
		}
		ret = set_vcpu_cpuid(vm, vcpu, err);
		if (ret)
			goto destroy_vcpus;
		pthread_mutex_init(&vcpu->mode_lock, NULL);
		pthread_cond_init(&vcpu->mode_cond, NULL);
		vcpu->tlb.ops = &kvm_tlb_ops;
		shadow_mmu_tlb_register(vm->mmu, &vcpu->tlb);
	}
	*out = vm;
	return 0;

destroy_vcpus:
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *vcpu = &vm->vcpus[i];
		if (vcpu->tlb.ops) {
			shadow_mmu_tlb_unregister(vm->mmu, &vcpu->tlb);
			pthread_cond_destroy(&vcpu->mode_cond);
			pthread_mutex_destroy(&vcpu->mode_lock);
		}
		if (vcpu->run != MAP_FAILED && vcpu->run)
			munmap(vcpu->run, vm->run_size);
		if (vcpu->fd > 0)
			close(vcpu->fd);
	}
	free(vm->vcpus);
exit_paging:
	vm_paging_exit(vm);
unmap_ram:
	munmap(vm->ram, vm->ram_size);
close_ram:
	if (vm->ram_fd >= 0)
		close(vm->ram_fd);
free_cpuid:
	free(vm->cpuid);
close_vm:
	close(vm->vm_fd);
free_vm:
	pthread_mutex_destroy(&vm->lock);
	free(vm);
	return ret;
}

int vm_load_image(struct vm *vm, const struct elf_image *image, const void *buf,
		  struct vmm_error *err)
{
	int ret;

	if (image->end > stacks_base(vm))
		return vmm_error_set(err, EINVAL, "image ends at %#" PRIx64 ", past the loadable RAM", image->end);
	_Static_assert(UMBRA_TSS_GPA + 104 <= UMBRA_PT_GPA && UMBRA_GDT_GPA + 40 <= UMBRA_TSS_GPA,
		       "boot GDT, TSS and page tables do not overlap");
	elf_image_load(image, buf, vm->ram);
	write_boot_gdt(vm);
	uint64_t cr3 = write_boot_page_tables(vm);
	if (!cr3)
		return vmm_error_set(err, EINVAL, "boot page tables for RAM and segments do not fit below 1 MiB");
	/* What the guest runs before its own #PF handler exists stays mapped in
	 * every address space: the boot GDT/TSS page, the image, the stacks. */
	uint64_t image_start = image->segments[0].gpa;
	for (unsigned int i = 1; i < image->nr_segments; i++)
		if (image->segments[i].gpa < image_start)
			image_start = image->segments[i].gpa;
	vm->pins[0] = (struct pin){ UMBRA_GDT_GPA, PAGE_SIZE };
	vm->pins[1] = (struct pin){ image_start, image->end - image_start };
	vm->pins[2] = (struct pin){ stacks_base(vm), vm->ram_size - stacks_base(vm) };
	vm->nr_pins = 3;
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		uint64_t root;
		write_boot_info(vm, i, image->end, cr3);
		ret = vcpu_load_guest_cr3(&vm->vcpus[i], cr3, &root);
		if (ret)
			return vmm_error_set(err, -ret, "shadowing the boot page tables for vCPU %u: %s", i,
					     strerror(-ret));
		ret = setup_vcpu_state(vm, &vm->vcpus[i], image->entry, root, err);
		if (ret)
			return ret;
	}
	return 0;
}

/* ---- running ---- */

static void kick_signal_handler(int sig)
{
	(void)sig; /* its only job is to interrupt KVM_RUN */
}

static void vcpu_kick(struct vcpu *vcpu)
{
	__atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&vcpu->thread_started, __ATOMIC_ACQUIRE))
		pthread_kill(vcpu->thread, KICK_SIGNAL);
}

static bool vm_is_stopped(struct vm *vm)
{
	return __atomic_load_n(&vm->stopped, __ATOMIC_ACQUIRE);
}

/* Records status (the first stop wins) and kicks every vCPU out of KVM_RUN. */
static void vm_stop(struct vm *vm, int status)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->stopped) {
		vm->exit_status = status;
		__atomic_store_n(&vm->stopped, true, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&vm->lock);
	for (unsigned int i = 0; i < vm->nr_vcpus; i++)
		vcpu_kick(&vm->vcpus[i]);
}

static void console_flush_locked(struct vcpu *vcpu)
{
	if (!vcpu->line_len)
		return;
	if (vcpu->vm->nr_vcpus > 1)
		fprintf(stdout, "[%s/%u] ", vcpu->vm->name, vcpu->id);
	else if (vcpu->vm->prefix_output)
		fprintf(stdout, "[%s] ", vcpu->vm->name);
	fwrite(vcpu->line, 1, vcpu->line_len, stdout);
	if (vcpu->line[vcpu->line_len - 1] != '\n')
		fputc('\n', stdout);
	fflush(stdout);
	vcpu->line_len = 0;
}

static void console_put(struct vcpu *vcpu, char c)
{
	vcpu->line[vcpu->line_len++] = c;
	if (c == '\n' || vcpu->line_len == sizeof(vcpu->line)) {
		pthread_mutex_lock(&output_lock);
		console_flush_locked(vcpu);
		pthread_mutex_unlock(&output_lock);
	}
}

static void dump_registers_locked(struct vcpu *vcpu)
{
	struct kvm_regs r;
	struct kvm_sregs s;

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

/* Reports a guest failure (with registers if dump) and stops the VM with
 * UMBRA_STATUS_GUEST_ERROR. Only the first failure of a VM is reported. */
static void __attribute__((format(printf, 3, 4)))
vcpu_fail(struct vcpu *vcpu, bool dump, const char *fmt, ...)
{
	struct vm *vm = vcpu->vm;
	va_list ap;

	if (vm_is_stopped(vm))
		return;
	pthread_mutex_lock(&output_lock);
	console_flush_locked(vcpu);
	fprintf(stderr, "umbra: %s vCPU %u: ", vm->name, vcpu->id);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (dump)
		dump_registers_locked(vcpu);
	pthread_mutex_unlock(&output_lock);
	vm_stop(vm, UMBRA_STATUS_GUEST_ERROR);
}

static const char *exception_mnemonic(uint64_t vector)
{
	static const char *const names[32] = {
		"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
		"#NP", "#SS", "#GP", "#PF", "reserved", "#MF", "#AC", "#MC", "#XM", "#VE",
		"#CP", "reserved", "reserved", "reserved", "reserved", "reserved", "reserved",
		"#HV", "#VC", "#SX", "reserved",
	};
	return vector < 32 ? names[vector] : "interrupt";
}

/* The guest's memory as the shadow walker reads it (RAM and segments). */
static int guest_mem_read(void *ctx, uint64_t pa, uint64_t *val)
{
	struct vm *vm = ctx;

	if (pa + 8 <= vm->ram_size) {
		*val = __atomic_load_n((uint64_t *)((char *)vm->ram + pa), __ATOMIC_RELAXED);
		return 0;
	}
	for (unsigned int i = 0; i < vm->nr_segments; i++) {
		const struct segment *seg = vm->segments[i];
		if (pa - seg->gpa < seg->size) {
			*val = __atomic_load_n((uint64_t *)((char *)seg->host + (pa - seg->gpa)), __ATOMIC_RELAXED);
			return 0;
		}
	}
	return -EFAULT;
}

static const struct shadow_mem_ops guest_mem_ops = { .read = guest_mem_read };

/* A fault the shadow MMU could not back: say what the guest's tables point at. */
static void report_unbacked_fault(struct vcpu *vcpu, uint64_t va, unsigned int access)
{
	struct vm *vm = vcpu->vm;
	struct shadow_walk w;
	const struct shadow_paging_mode *mode = shadow_mmu_mode(vm->mmu);
	uint64_t pool_end = SHADOW_POOL_GPA + (uint64_t)vm->host->pool_pages * SHADOW_PAGE_SIZE;

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

/* The paging hypercalls (docs/abi.md). Returns the result for RAX, or
 * INT64_MIN when the VM was stopped (a bad argument or a failure). */
static int64_t handle_paging_hypercall(struct vcpu *vcpu, const struct kvm_regs *regs)
{
	struct vm *vm = vcpu->vm;
	uint64_t a0 = regs->rdi, a1 = regs->rsi;
	const int64_t stopped = INT64_MIN;
	uint32_t ec = 0;
	int r;

	switch (regs->rax) {
	case UMBRA_HC_SET_CR3: {
		struct kvm_sregs sregs;
		uint64_t root;
		if (a0 == 0 || a0 % PAGE_SIZE || a0 >= vm->ram_size) {
			vcpu_fail(vcpu, false, "bad hypercall: set_cr3: guest CR3 %#llx (argument 0) is not a 4 KiB-aligned "
				  "page in RAM", (unsigned long long)a0);
			return stopped;
		}
		r = vcpu_load_guest_cr3(vcpu, a0, &root);
		if (r) {
			vcpu_fail(vcpu, false, "set_cr3 %#llx: %s", (unsigned long long)a0,
				  r == -EBUSY ? "every cached shadow root is in use by another vCPU" :
				  r == -ENOMEM ? "the shadow table pool is exhausted" : strerror(-r));
			return stopped;
		}
		if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0) {
			vcpu_fail(vcpu, false, "KVM_GET_SREGS at set_cr3: %s", strerror(errno));
			return stopped;
		}
		sregs.cr3 = root;
		if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0) {
			vcpu_fail(vcpu, false, "KVM_SET_SREGS at set_cr3: %s", strerror(errno));
			return stopped;
		}
		return 0;
	}
	case UMBRA_HC_PAGE_FAULT:
		if (!shadow_va_is_canonical(a0)) {
			vcpu_fail(vcpu, false, "bad hypercall: page fault at %#llx (argument 0): not a canonical address",
				  (unsigned long long)a0);
			return stopped;
		}
		r = shadow_mmu_fault(vm->mmu, vcpu->guest_cr3, a0,
				     (unsigned int)a1 & SHADOW_ACCESS_MASK, &ec);
		if (r == SHADOW_FAULT_FIXED)
			return 0;
		if (r == SHADOW_FAULT_GUEST)
			return (int64_t)(UMBRA_PF_GUEST | ec);
		if (r == -EFAULT)
			report_unbacked_fault(vcpu, a0, (unsigned int)a1 & SHADOW_ACCESS_MASK);
		else if (r == -EACCES)
			vcpu_fail(vcpu, true, "write at %#llx to a read-only segment", (unsigned long long)a0);
		else if (r == -ENOMEM)
			vcpu_fail(vcpu, false, "page fault at %#llx: the shadow table pool (%zu pages) is exhausted",
				  (unsigned long long)a0, vm->host->pool_pages);
		else
			vcpu_fail(vcpu, true, "page fault at %#llx: the shadow MMU failed: %s", (unsigned long long)a0,
				  strerror(-r));
		return stopped;
	case UMBRA_HC_INVLPG:
		if (!shadow_va_is_canonical(a0)) {
			vcpu_fail(vcpu, false, "bad hypercall: invlpg %#llx (argument 0): not a canonical address",
				  (unsigned long long)a0);
			return stopped;
		}
		shadow_mmu_invlpg(vm->mmu, vcpu->guest_cr3, a0);
		return 0;
	case UMBRA_HC_FLUSH:
		r = shadow_mmu_flush(vm->mmu, vcpu->guest_cr3);
		if (r) {
			vcpu_fail(vcpu, false, "flush of address space %#llx: %s", (unsigned long long)vcpu->guest_cr3,
				  strerror(-r));
			return stopped;
		}
		return 0;
	case UMBRA_HC_FLUSH_ACK:
		__atomic_fetch_add(&vm->flush_acks, 1, __ATOMIC_RELAXED);
		return 0;
	case UMBRA_HC_READY:
		/* The guest reloads CR3 after this: requests so far are served. */
		vcpu->nmi_done = __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST);
		__atomic_store_n(&vcpu->nmi_ready, true, __ATOMIC_RELEASE);
		return 0;
	case UMBRA_HC_PIN: {
		if (a1 == 0 || a1 > UMBRA_PIN_MAX_BYTES || !shadow_va_is_canonical(a0) || !shadow_va_is_canonical(a0 + a1 - 1) ||
		    a0 + a1 < a0) {
			vcpu_fail(vcpu, false, "bad hypercall: pin %#llx+%#llx (arguments 0, 1): must be 1 byte to 64 MiB "
				  "of canonical addresses", (unsigned long long)a0, (unsigned long long)a1);
			return stopped;
		}
		pthread_mutex_lock(&vm->lock);
		bool full = vm->nr_pins == UMBRA_MAX_PINS;
		if (!full)
			vm->pins[vm->nr_pins++] = (struct pin){ a0, a1 };
		pthread_mutex_unlock(&vm->lock);
		if (full) {
			vcpu_fail(vcpu, false, "bad hypercall: pin: more than %u pinned ranges", UMBRA_MAX_PINS);
			return stopped;
		}
		if (prefault_pins(vm, vcpu->guest_cr3)) {
			vcpu_fail(vcpu, false, "pin: the shadow table pool is exhausted");
			return stopped;
		}
		return 0;
	}
	}
	vcpu_fail(vcpu, true, "bad hypercall: unknown number %llu (RAX)", regs->rax);
	return stopped;
}

static void handle_hypercall(struct vcpu *vcpu)
{
	struct kvm_regs regs;
	int64_t result = 0;

	if (ioctl(vcpu->fd, KVM_GET_REGS, &regs) < 0) {
		vcpu_fail(vcpu, false, "KVM_GET_REGS failed at a hypercall: %s", strerror(errno));
		return;
	}
	if (regs.rax < UMBRA_HC_NR)
		__atomic_fetch_add(&vcpu->vm->hypercalls[regs.rax], 1, __ATOMIC_RELAXED);
	switch (regs.rax) {
	case UMBRA_HC_EXIT:
		if (regs.rdi > UMBRA_EXIT_CODE_MAX) {
			vcpu_fail(vcpu, false, "bad hypercall: exit code %llu (argument 0) is outside 0..%d",
				  regs.rdi, UMBRA_EXIT_CODE_MAX);
			return;
		}
		pthread_mutex_lock(&output_lock);
		console_flush_locked(vcpu);
		pthread_mutex_unlock(&output_lock);
		vm_stop(vcpu->vm, (int)regs.rdi);
		return;
	case UMBRA_HC_CONSOLE_WRITE: {
		struct vm *vm = vcpu->vm;
		uint64_t gpa = regs.rdi, len = regs.rsi;
		if (len == 0 || len > UMBRA_CONSOLE_WRITE_MAX) {
			vcpu_fail(vcpu, false, "bad hypercall: console write of %llu bytes (argument 1) is outside 1..%u",
				  regs.rsi, UMBRA_CONSOLE_WRITE_MAX);
			return;
		}
		if (gpa >= vm->ram_size || len > vm->ram_size - gpa) {
			vcpu_fail(vcpu, false,
				  "bad hypercall: console write buffer %#llx+%llu (arguments 0, 1) is outside guest RAM",
				  regs.rdi, regs.rsi);
			return;
		}
		for (uint64_t i = 0; i < len; i++)
			console_put(vcpu, ((const char *)vm->ram)[gpa + i]);
		result = (int64_t)len;
		break;
	}
	case UMBRA_HC_EXCEPTION:
		vcpu_fail(vcpu, false,
			  "guest exception %s (vector %llu) at RIP %#llx, error code %#llx, CR2 %#llx",
			  exception_mnemonic(regs.rdi), regs.rdi, regs.rsi, regs.r8, regs.r9);
		return;
	default:
		result = handle_paging_hypercall(vcpu, &regs);
		if (result == INT64_MIN)
			return;
		break;
	}
	regs.rax = (uint64_t)result;
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0)
		vcpu_fail(vcpu, false, "KVM_SET_REGS failed after a hypercall: %s", strerror(errno));
}

static void handle_io(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	uint16_t port = run->io.port;
	bool out = run->io.direction == KVM_EXIT_IO_OUT;

	if (port == UMBRA_HC_PORT && out && run->io.size == 4 && run->io.count == 1) {
		__atomic_fetch_add(&vcpu->vm->exits[VM_EXIT_HYPERCALL], 1, __ATOMIC_RELAXED);
		handle_hypercall(vcpu);
		return;
	}
	if (port >= UMBRA_CONSOLE_PORT && port <= UMBRA_CONSOLE_PORT + 7 && run->io.size == 1) {
		__atomic_fetch_add(&vcpu->vm->exits[VM_EXIT_CONSOLE], 1, __ATOMIC_RELAXED);
		for (uint32_t i = 0; i < run->io.count; i++) {
			if (out && port == UMBRA_CONSOLE_PORT)
				console_put(vcpu, (char)data[i]);
			else if (!out) /* LSR: transmitter empty; other registers read 0 */
				data[i] = port == UMBRA_CONSOLE_PORT + 5 ? 0x60 : 0;
			/* Writes to the UART's configuration registers have no effect. */
		}
		return;
	}
	__atomic_fetch_add(&vcpu->vm->exits[VM_EXIT_IO_OTHER], 1, __ATOMIC_RELAXED);
	vcpu_fail(vcpu, true, "unhandled port I/O: %s port %#x, size %u, count %u%s",
		  out ? "out to" : "in from", port, run->io.size, run->io.count,
		  port == UMBRA_HC_PORT ? " (hypercalls are a 4-byte out, count 1)" : "");
}

static void handle_exit(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	struct vm *vm = vcpu->vm;

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		handle_io(vcpu);
		break;
	case KVM_EXIT_MMIO: {
		const struct segment *ro = NULL;
		__atomic_fetch_add(&vm->exits[VM_EXIT_MMIO], 1, __ATOMIC_RELAXED);
		for (unsigned int i = 0; i < vm->nr_segments; i++)
			if (run->mmio.phys_addr - vm->segments[i]->gpa < vm->segments[i]->size)
				ro = vm->segments[i];
		uint64_t pool_bytes = (uint64_t)vm->host->pool_pages * SHADOW_PAGE_SIZE;
		if (run->mmio.is_write && run->mmio.phys_addr - SHADOW_POOL_GPA < pool_bytes)
			vcpu_fail(vcpu, true, "write of %u bytes at guest-physical %#llx, a shadow page table (the pool "
				  "is read-only to guests)", run->mmio.len, run->mmio.phys_addr);
		else if (ro && run->mmio.is_write)
			vcpu_fail(vcpu, true, "write of %u bytes at guest-physical %#llx, in read-only segment '%s'",
				  run->mmio.len, run->mmio.phys_addr, ro->name);
		else
			vcpu_fail(vcpu, true, "%s of %u bytes at guest-physical %#llx, where there is no RAM or device",
				  run->mmio.is_write ? "write" : "read", run->mmio.len, run->mmio.phys_addr);
		break;
	}
	case KVM_EXIT_HLT: {
		__atomic_fetch_add(&vm->exits[VM_EXIT_HLT], 1, __ATOMIC_RELAXED);
		pthread_mutex_lock(&vm->lock);
		bool all = ++vm->nr_halted == vm->nr_vcpus;
		pthread_mutex_unlock(&vm->lock);
		if (all)
			vcpu_fail(vcpu, false, "every vCPU halted without the exit hypercall");
		break;
	}
	case KVM_EXIT_SHUTDOWN:
		__atomic_fetch_add(&vm->exits[VM_EXIT_SHUTDOWN], 1, __ATOMIC_RELAXED);
		vcpu_fail(vcpu, true, "triple fault (KVM_EXIT_SHUTDOWN)");
		break;
	case KVM_EXIT_FAIL_ENTRY:
		__atomic_fetch_add(&vm->exits[VM_EXIT_FAIL_ENTRY], 1, __ATOMIC_RELAXED);
		vcpu_fail(vcpu, true, "VM entry failed (KVM_EXIT_FAIL_ENTRY), hardware reason %#llx",
			  run->fail_entry.hardware_entry_failure_reason);
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		__atomic_fetch_add(&vm->exits[VM_EXIT_INTERNAL_ERROR], 1, __ATOMIC_RELAXED);
		vcpu_fail(vcpu, true, "KVM internal error, suberror %u (%s)", run->internal.suberror,
			  run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ? "emulation failed" :
			  run->internal.suberror == KVM_INTERNAL_ERROR_DELIVERY_EV ? "event delivery failed" :
			  "see linux/kvm.h");
		break;
	default:
		__atomic_fetch_add(&vm->exits[VM_EXIT_OTHER], 1, __ATOMIC_RELAXED);
		vcpu_fail(vcpu, true, "unexpected KVM exit reason %u", run->exit_reason);
		break;
	}
}

/* True when a posted flush request has not yet become an injected NMI. */
static bool vcpu_flush_pending(struct vcpu *vcpu)
{
	return __atomic_load_n(&vcpu->nmi_ready, __ATOMIC_ACQUIRE) &&
	       __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST) != vcpu->nmi_done;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	struct vm *vm = vcpu->vm;
	sigset_t kick;

	current_vcpu = vcpu;
	sigemptyset(&kick);
	sigaddset(&kick, KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);

	while (!vm_is_stopped(vm)) {
		/* The mailbox: turn flush requests into one NMI, which the guest
		 * takes before it executes anything else. */
		if (vcpu_flush_pending(vcpu)) {
			vcpu->nmi_done = __atomic_load_n(&vcpu->flush_req, __ATOMIC_SEQ_CST);
			if (ioctl(vcpu->fd, KVM_NMI) < 0) {
				vcpu_fail(vcpu, true, "KVM_NMI (TLB shootdown) failed: %s", strerror(errno));
				break;
			}
			__atomic_fetch_add(&vm->nmis, 1, __ATOMIC_RELAXED);
		}
		/* Enter guest mode unless a request slipped in: a requester that
		 * sees in_guest kicks us and waits for the next exit. */
		pthread_mutex_lock(&vcpu->mode_lock);
		if (vcpu_flush_pending(vcpu)) {
			pthread_mutex_unlock(&vcpu->mode_lock);
			continue;
		}
		vcpu->in_guest = true;
		pthread_mutex_unlock(&vcpu->mode_lock);
		int r = ioctl(vcpu->fd, KVM_RUN, 0);
		int run_errno = errno;
		pthread_mutex_lock(&vcpu->mode_lock);
		vcpu->in_guest = false;
		vcpu->exit_seq++;
		pthread_cond_broadcast(&vcpu->mode_cond);
		pthread_mutex_unlock(&vcpu->mode_lock);
		if (r < 0) {
			if (run_errno == EINTR || run_errno == EAGAIN) {
				__atomic_fetch_add(&vm->exits[VM_EXIT_INTERRUPTED], 1, __ATOMIC_RELAXED);
				__atomic_store_n(&vcpu->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
				continue;
			}
			vcpu_fail(vcpu, true, "KVM_RUN failed: %s", strerror(run_errno));
			break;
		}
		handle_exit(vcpu);
		if (vcpu->run->exit_reason == KVM_EXIT_HLT)
			break; /* interrupts are off: nothing can wake this vCPU */
	}
	pthread_mutex_lock(&output_lock);
	console_flush_locked(vcpu);
	pthread_mutex_unlock(&output_lock);
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
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *vcpu = &vm->vcpus[i];
		int e = pthread_create(&vcpu->thread, NULL, vcpu_thread, vcpu);
		if (e) {
			pthread_mutex_lock(&output_lock);
			fprintf(stderr, "umbra: %s: cannot start vCPU %u's thread: %s\n", vm->name, i, strerror(e));
			pthread_mutex_unlock(&output_lock);
			vm_stop(vm, UMBRA_STATUS_NO_KVM);
			return -e;
		}
		__atomic_store_n(&vcpu->thread_started, true, __ATOMIC_RELEASE);
		if (vm_is_stopped(vm))
			vcpu_kick(vcpu);
	}
	return 0;
}

int vm_wait(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->nr_vcpus; i++)
		if (__atomic_load_n(&vm->vcpus[i].thread_started, __ATOMIC_ACQUIRE))
			pthread_join(vm->vcpus[i].thread, NULL);
	return vm->exit_status;
}

const char *vm_name(const struct vm *vm)
{
	return vm->name;
}

void vm_get_stats(const struct vm *vm, struct vm_stats *stats)
{
	memset(stats, 0, sizeof(*stats));
	for (int i = 0; i < VM_EXIT_NR; i++) {
		stats->exits[i] = __atomic_load_n(&vm->exits[i], __ATOMIC_RELAXED);
		stats->exits_total += stats->exits[i];
	}
	for (int i = 0; i < UMBRA_HC_NR; i++)
		stats->hypercalls[i] = __atomic_load_n(&vm->hypercalls[i], __ATOMIC_RELAXED);
	shadow_mmu_stats(vm->mmu, &stats->shadow);
	(void)shadow_mmu_table_usage(vm->mmu, &stats->tables); /* on -ENOMEM: zeroes */
	stats->flush_requests = __atomic_load_n(&vm->flush_requests, __ATOMIC_RELAXED);
	stats->kicks = __atomic_load_n(&vm->kicks, __ATOMIC_RELAXED);
	stats->nmis = __atomic_load_n(&vm->nmis, __ATOMIC_RELAXED);
	stats->flush_acks = __atomic_load_n(&vm->flush_acks, __ATOMIC_RELAXED);
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *vcpu = &vm->vcpus[i];
		shadow_mmu_tlb_unregister(vm->mmu, &vcpu->tlb);
		pthread_cond_destroy(&vcpu->mode_cond);
		pthread_mutex_destroy(&vcpu->mode_lock);
		munmap(vcpu->run, vm->run_size);
		close(vcpu->fd);
	}
	free(vm->vcpus);
	vm_paging_exit(vm);
	munmap(vm->ram, vm->ram_size);
	close(vm->ram_fd);
	free(vm->cpuid);
	close(vm->vm_fd);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}
