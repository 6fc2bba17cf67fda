/*
 * KVM: /dev/kvm, the VM and its vCPUs, guest RAM and the memslots (RAM,
 * segments, the shadow-table pool), CPUID, and loading an image with the
 * boot state boot.c builds.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vm_internal.h"
#include "x86.h"

/* KVM_GET_SUPPORTED_CPUID: the entry buffer grows from 64 to 4096 entries. */
#define CPUID_ENTRIES_MIN 64u
#define CPUID_ENTRIES_MAX 4096u

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
 * but a guest that loads a CR3 of its own can write the tables of its pool.
 * Each trust group has a pool of its own, so such a guest reaches only the
 * tables of its group (docs/security.md). On Intel (EPT) the pool is
 * read-only and such a write stops the VM.
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

bool vmm_pool_must_be_writable(void)
{
	static int cached = -1;

	if (cached < 0)
		cached = module_param_is("/sys/module/kvm_amd/parameters/npt", 'Y');
	return cached;
}

/* ---- CPUID ---- */

static int get_supported_cpuid(struct vm *vm, struct vmm_error *err)
{
	for (unsigned int n = CPUID_ENTRIES_MIN; n <= CPUID_ENTRIES_MAX; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
		if (!c)
			return vmm_error_set(err, ENOMEM, "out of memory for CPUID entries");
		c->nent = n;
		if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			vm->cpuid = c;
			for (unsigned int i = 0; i < c->nent; i++)
				if (c->entries[i].function == X86_CPUID_EXT_FEATURES)
					vm->has_nx = c->entries[i].edx & X86_CPUID_EXT_EDX_NX;
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
		if (e->function == X86_CPUID_FEATURES) /* initial APIC id = vCPU id */
			e->ebx = (e->ebx & ~X86_CPUID_1_EBX_APIC_ID_MASK) | (vcpu->id << X86_CPUID_1_EBX_APIC_ID_SHIFT);
	}
	if (ioctl(vcpu->fd, KVM_SET_CPUID2, vm->cpuid) < 0)
		return vmm_error_set(err, errno, "KVM_SET_CPUID2 on vCPU %u: %s", vcpu->id, strerror(errno));
	return 0;
}

/* ---- RAM and memslots ---- */

/* The boot RAM: the VM's first area (slot 0 of its shadow MMU, its own
 * area until a clone freezes it), at machine address 0. */
static int vm_create_ram(struct vm *vm, struct vmm_error *err)
{
	char name[sizeof(vm->name) + 8];
	int ret;

	snprintf(name, sizeof(name), "%s.ram", vm->name);
	ret = area_create(vm->host, name, vm, vm->ram_size, 0, &vm->areas[0], err);
	if (ret)
		return ret;
	vm->areas[0]->live = 1;
	vm->ram = vm->areas[0]->host;
	return 0;
}

static int vm_set_segment_memslots(struct vm *vm, struct vmm_error *err)
{
	for (unsigned int i = 0; i < vm->nr_segments; i++) {
		const struct segment *seg = vm->segments[i];
		struct kvm_userspace_memory_region r = {
			.slot = VMM_MEMSLOT_SEGMENT(i), .guest_phys_addr = seg->gpa, .memory_size = seg->size,
			.userspace_addr = (uint64_t)(uintptr_t)seg->host,
			.flags = seg->writable ? 0 : KVM_MEM_READONLY,
		};
		if (!seg->writable && ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0)
			return vmm_error_set(err, ENOTSUP, "segment '%s' is read-only, but KVM lacks KVM_CAP_READONLY_MEM",
					     seg->name);
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
			return vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (segment '%s' at %#" PRIx64 "): %s",
					     seg->name, seg->gpa, strerror(errno));
	}
	return 0;
}

/* The table pool of the VM's trust group at SHADOW_POOL_GPA: read-only, but
 * on AMD (see module_param_is()). */
static int vm_set_pool_memslot(struct vm *vm, struct vmm_error *err)
{
	const struct vmm_group *group = vm->group;
	bool writable = vmm_pool_must_be_writable();
	struct kvm_userspace_memory_region r = {
		.slot = VMM_MEMSLOT_POOL, .flags = writable ? 0 : KVM_MEM_READONLY,
		.guest_phys_addr = SHADOW_POOL_GPA, .memory_size = (uint64_t)group->pool_pages * SHADOW_PAGE_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)(writable ? group->pool_mem.host : group->pool_ro),
	};

	if (!writable && ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0)
		return vmm_error_set(err, ENOTSUP, "KVM lacks KVM_CAP_READONLY_MEM, needed to map the shadow table pool");
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (shadow table pool): %s", strerror(errno));
	return 0;
}

static int vm_set_memslots(struct vm *vm, struct vmm_error *err)
{
	struct kvm_userspace_memory_region region = {
		.slot = VMM_MEMSLOT_RAM, .guest_phys_addr = 0, .memory_size = vm->ram_size,
		.userspace_addr = (uint64_t)(uintptr_t)vm->ram,
	};
	int ret;

	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		return vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (RAM): %s", strerror(errno));
	ret = vm_set_segment_memslots(vm, err);
	if (ret)
		return ret;
	return vm_set_pool_memslot(vm, err);
}

/* ---- vCPUs ---- */

/* Tears down what vcpus_create() set up of each vCPU. */
static void vcpus_destroy(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *vcpu = &vm->vcpus[i];

		if (vcpu->tlb.ops) {
			if (vm->mmu) /* else vm_mmu_release() did it */
				shadow_mmu_tlb_unregister(vm->mmu, &vcpu->tlb);
			pthread_cond_destroy(&vcpu->mode_cond);
			umbra_mutex_exit(&vcpu->mode_lock);
		}
		if (vcpu->run != MAP_FAILED)
			munmap(vcpu->run, vm->run_size);
		if (vcpu->fd >= 0)
			close(vcpu->fd);
	}
	free(vm->vcpus);
	vm->vcpus = NULL;
}

static int vcpu_create(struct vm *vm, struct vcpu *vcpu, struct vmm_error *err)
{
	int ret;

	vcpu->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)vcpu->id);
	if (vcpu->fd < 0)
		return vmm_error_set(err, errno, "KVM_CREATE_VCPU %u: %s", vcpu->id, strerror(errno));
	vcpu->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
	if (vcpu->run == MAP_FAILED)
		return vmm_error_set(err, errno, "mmap of vCPU %u's kvm_run: %s", vcpu->id, strerror(errno));
	ret = set_vcpu_cpuid(vm, vcpu, err);
	if (ret)
		return ret;
	umbra_mutex_init(&vcpu->mode_lock, "vmm.vcpu.mode_lock", UMBRA_LOCK_RANK_VMM_VCPU_MODE);
	pthread_cond_init(&vcpu->mode_cond, NULL);
	vcpu->tlb.ops = &vcpu_tlb_ops;
	shadow_mmu_tlb_register(vm->mmu, &vcpu->tlb);
	return 0;
}

static int vcpus_create(struct vm *vm, struct vmm_error *err)
{
	vm->vcpus = calloc(vm->nr_vcpus, sizeof(*vm->vcpus));
	if (!vm->vcpus)
		return vmm_error_set(err, ENOMEM, "out of memory");
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		vm->vcpus[i].vm = vm;
		vm->vcpus[i].id = i;
		vm->vcpus[i].fd = -1;
		vm->vcpus[i].run = MAP_FAILED;
	}
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		int ret = vcpu_create(vm, &vm->vcpus[i], err);
		if (ret) {
			vcpus_destroy(vm);
			return ret;
		}
	}
	return 0;
}

/* ---- the VM ---- */

static int vm_check_config(const struct vm_config *config, struct vmm_error *err)
{
	if (config->vcpus == 0 || config->vcpus > UMBRA_MAX_VCPUS)
		return vmm_error_set(err, EINVAL, "%u vCPUs: must be 1 to %u", config->vcpus, UMBRA_MAX_VCPUS);
	if (config->mem % VMM_MEM_ALIGN || config->mem < VMM_MEM_MIN || config->mem > VMM_MEM_MAX)
		return vmm_error_set(err, EINVAL, "RAM size %" PRIu64 ": must be a multiple of 2 MiB from 4 MiB to 64 GiB",
				     config->mem);
	if (vm_image_load_max(config->mem, config->vcpus) < VMM_RAM_BELOW_STACKS_MIN)
		return vmm_error_set(err, EINVAL, "RAM of %" PRIu64 " MiB is too small for %u vCPUs' stacks and an image",
				     config->mem >> 20, config->vcpus);
	if (strlen(config->cmdline) >= UMBRA_CMDLINE_MAX)
		return vmm_error_set(err, EINVAL, "command line longer than %u bytes", UMBRA_CMDLINE_MAX - 1);
	if (config->nr_segments > UMBRA_MAX_SEGMENTS)
		return vmm_error_set(err, EINVAL, "%u segments: at most %u", config->nr_segments, UMBRA_MAX_SEGMENTS);
	if (!config->group)
		return vmm_error_set(err, EINVAL, "no trust group");
	return vmm_check_table_quota("table quota", config->table_quota, err);
}

/* The VM's fd and what KVM tells about it: the kvm_run size, CPUID. */
static int vm_create_fd(struct vm *vm, struct vmm_error *err)
{
	int ret;

	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		return vmm_error_set(err, errno, "KVM_CREATE_VM: %s", strerror(errno));
	int run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run)) {
		ret = vmm_error_set(err, EINVAL, "KVM_GET_VCPU_MMAP_SIZE returned %d", run_size);
		goto close_vm;
	}
	vm->run_size = (size_t)run_size;
	ret = get_supported_cpuid(vm, err);
	if (ret)
		goto close_vm;
	return 0;

close_vm:
	close(vm->vm_fd);
	vm->vm_fd = -1;
	return ret;
}

int vm_create(int kvm_fd, const struct vm_config *config, struct vm **out, struct vmm_error *err)
{
	struct vm *vm;
	int ret = vm_check_config(config, err);

	if (ret)
		return ret;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return vmm_error_set(err, ENOMEM, "out of memory");
	snprintf(vm->name, sizeof(vm->name), "%s", config->name);
	snprintf(vm->cmdline, sizeof(vm->cmdline), "%s", config->cmdline);
	vm->prefix_output = config->prefix_output || config->vcpus > 1;
	vm->nr_segments = config->nr_segments;
	for (unsigned int i = 0; i < config->nr_segments; i++)
		vm->segments[i] = config->segments[i];
	vm->kvm_fd = kvm_fd;
	vm->host = config->host;
	vm->group = config->group;
	vm->table_quota = config->table_quota;
	vm->ram_size = config->mem;
	vm->nr_vcpus = config->vcpus;
	vm->vm_fd = -1;
	vm->ram = MAP_FAILED;
	umbra_mutex_init(&vm->lock, "vmm.vm.lock", UMBRA_LOCK_RANK_VMM_VM);
	pthread_cond_init(&vm->pause_cond, NULL);

	ret = vm_create_fd(vm, err);
	if (ret)
		goto free_vm;
	ret = vm_create_ram(vm, err);
	if (ret)
		goto close_vm;
	ret = vm_set_memslots(vm, err);
	if (ret)
		goto unmap_ram;
	ret = vm_mmu_init(vm, err);
	if (ret)
		goto unmap_ram;
	ret = vcpus_create(vm, err);
	if (ret)
		goto exit_mmu;
	*out = vm;
	return 0;

exit_mmu:
	vm_mmu_exit(vm);
unmap_ram:
	area_put(vm->areas[0]);
close_vm:
	free(vm->cpuid);
	close(vm->vm_fd);
free_vm:
	pthread_cond_destroy(&vm->pause_cond);
	umbra_mutex_exit(&vm->lock);
	free(vm);
	return ret;
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	if (vm->vcpus)
		vcpus_destroy(vm);
	vm_mmu_exit(vm);
	for (unsigned int i = 0; i < SHADOW_MAX_SLOTS; i++)
		area_put(vm->areas[i]);
	free(vm->cpuid);
	close(vm->vm_fd);
	pthread_cond_destroy(&vm->pause_cond);
	umbra_mutex_exit(&vm->lock);
	free(vm);
}

/* ---- clones ---- */

/* The clone's memslots: every area it holds (read-only but its own), the
 * segments, the pool. */
static int clone_set_memslots(struct vm *c, struct vmm_error *err)
{
	int ret;

	for (int i = 0; i < SHADOW_MAX_SLOTS; i++) {
		if (!c->areas[i])
			continue;
		ret = area_set_memslot(c, i, i != c->own_slot, err);
		if (ret)
			return ret;
	}
	ret = vm_set_segment_memslots(c, err);
	if (ret)
		return ret;
	return vm_set_pool_memslot(c, err);
}

/* The clone's vCPUs, in the states saved from vm's (vCPU caller gets RAX =
 * k), each on the clone's copy of its root. */
static int clone_set_vcpus(struct vm *vm, struct vm *c, unsigned int caller, unsigned int k,
			   struct vmm_error *err)
{
	for (unsigned int i = 0; i < c->nr_vcpus; i++) {
		struct vcpu_snapshot snap = vm->vcpus[i].snap;
		struct vcpu *v = &c->vcpus[i];
		uint64_t root;
		int ret;

		if (snap.halted) {
			v->halted = true;
			c->nr_halted++;
			continue;
		}
		if (i == caller)
			snap.regs.rax = k;
		ret = vcpu_resume_guest_cr3(v, snap.guest_cr3, &root);
		if (ret)
			return vmm_error_set(err, -ret, "vCPU %u's address space %#" PRIx64 ": %s", i, snap.guest_cr3,
					     strerror(-ret));
		ret = vcpu_restore_state(v, &snap, root);
		if (ret)
			return vmm_error_set(err, -ret, "restoring vCPU %u's state: %s", i, strerror(-ret));
	}
	return 0;
}

int vm_create_clone(struct vm *vm, unsigned int caller, unsigned int k, unsigned int index,
		    struct shadow_mmu *mmu, struct vm_area *own_area, struct vm **out, struct vmm_error *err)
{
	struct vm *c = calloc(1, sizeof(*c));
	int ret;

	if (!c) {
		shadow_mmu_destroy(mmu);
		area_put(own_area);
		return vmm_error_set(err, ENOMEM, "out of memory");
	}
	if ((size_t)snprintf(c->name, sizeof(c->name), "%s.%u", vm->name, index) >= sizeof(c->name)) {
		shadow_mmu_destroy(mmu);
		area_put(own_area);
		free(c);
		return vmm_error_set(err, ENOSPC, "the clone's name '%s.%u' is longer than %u bytes", vm->name, index,
				     VM_NAME_MAX - 1);
	}
	memcpy(c->cmdline, vm->cmdline, sizeof(c->cmdline));
	c->prefix_output = true;
	c->nr_segments = vm->nr_segments;
	memcpy(c->segments, vm->segments, sizeof(c->segments));
	memcpy(c->segment_slots, vm->segment_slots, sizeof(c->segment_slots));
	c->kvm_fd = vm->kvm_fd;
	c->host = vm->host;
	c->group = vm->group;
	c->table_quota = vm->table_quota;
	c->ram_size = vm->ram_size;
	c->nr_vcpus = vm->nr_vcpus;
	c->boot_tables_end = vm->boot_tables_end;
	c->ram_slot = vm->ram_slot;
	c->own_slot = vm->own_slot;
	c->nr_slots = vm->nr_slots;
	c->ram = MAP_FAILED;
	c->parent = vm;
	c->clone_index = index;
	c->plan_index = vm->plan_index;
	c->vm_fd = -1;
	c->mmu = mmu;
	umbra_mutex_init(&c->lock, "vmm.vm.lock", UMBRA_LOCK_RANK_VMM_VM);
	pthread_cond_init(&c->pause_cond, NULL);
	umbra_mutex_lock(&vm->lock);
	memcpy(c->pins, vm->pins, sizeof(c->pins));
	c->nr_pins = vm->nr_pins;
	c->guest_pinned_bytes = vm->guest_pinned_bytes;
	c->pinned_pages = vm->pinned_pages;
	umbra_mutex_unlock(&vm->lock);
	/* The areas: the parent's, but its own area, in place of which the
	 * clone has its own. */
	for (int i = 0; i < SHADOW_MAX_SLOTS; i++) {
		struct vm_area *a = i == vm->own_slot ? own_area : vm->areas[i];

		if (!a)
			continue;
		if (a != own_area)
			area_get(a);
		__atomic_add_fetch(&a->live, 1, __ATOMIC_ACQ_REL);
		c->areas[i] = a;
	}
	ret = vm_create_fd(c, err);
	if (ret)
		goto destroy;
	c->has_nx = vm->has_nx;
	ret = clone_set_memslots(c, err);
	if (ret)
		goto destroy;
	ret = vcpus_create(c, err);
	if (ret)
		goto destroy;
	ret = clone_set_vcpus(vm, c, caller, k, err);
	if (ret)
		goto destroy;
	*out = c;
	return 0;

destroy:
	vm_destroy(c);
	return ret;
}

/* ---- loading an image ---- */

struct boot_layout vm_boot_layout(const struct vm *vm)
{
	return (struct boot_layout){
		.ram = vm->ram, .ram_size = vm->ram_size, .nr_vcpus = vm->nr_vcpus,
		.nr_segments = vm->nr_segments, .segments = vm->segments, .cmdline = vm->cmdline,
		.pool_size = (uint64_t)vm->group->pool_pages * SHADOW_PAGE_SIZE,
	};
}

/* Hands the boot registers (boot.c) of the vCPU to KVM. */
static int vcpu_set_boot_state(struct vm *vm, struct vcpu *vcpu, uint64_t entry, uint64_t cr3,
			       struct vmm_error *err)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;

	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0)
		return vmm_error_set(err, errno, "KVM_GET_SREGS: %s", strerror(errno));
	boot_set_sregs(&sregs, cr3, vm->has_nx);
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0)
		return vmm_error_set(err, errno, "KVM_SET_SREGS (long mode) on vCPU %u: %s", vcpu->id,
				     strerror(errno));
	boot_set_regs(&regs, entry, boot_info_gpa(vm->ram_size, vcpu->id), boot_stack_top(vm->ram_size, vcpu->id));
	if (ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0)
		return vmm_error_set(err, errno, "KVM_SET_REGS on vCPU %u: %s", vcpu->id, strerror(errno));
	return 0;
}

/* What stays resident (docs/abi.md, "What stays resident"): the boot
 * GDT/TSS page, every vCPU's stack below the page of its boot info, and the
 * image's UMBRA_PF_RESIDENT segments: kept mapped in every address space
 * and, under the pager, never swapped out. The rest of the image (its other
 * segments, bss included) is faulted in on demand. Returns 0 or the pager's
 * -errno. */
static int vm_pin_resident_ranges(struct vm *vm, const struct elf_image *image)
{
	uint64_t stacks = vm_image_load_max(vm->ram_size, vm->nr_vcpus);
	unsigned int n = 0;

	umbra_mutex_lock(&vm->lock);
	vm->pins[n++] = (struct pin){ UMBRA_GDT_GPA, X86_PAGE_SIZE, 0, 1 };
	vm->pins[n++] = (struct pin){ stacks, boot_stack_top(vm->ram_size, vm->nr_vcpus - 1) - stacks,
				      UMBRA_VCPU_STACK_SIZE, vm->nr_vcpus };
	for (unsigned int i = 0; i < image->nr_segments; i++) {
		const struct elf_segment *seg = &image->segments[i];

		if (seg->flags & UMBRA_PF_RESIDENT)
			vm->pins[n++] = (struct pin){ seg->gpa, seg->memsz, 0, 1 };
	}
	vm->nr_pins = n;
	for (unsigned int i = 0; i < n; i++)
		__atomic_add_fetch(&vm->pinned_pages, pin_pages(&vm->pins[i]), __ATOMIC_RELAXED);
	umbra_mutex_unlock(&vm->lock);
	/* The boot tables map these ranges one to one (va = gpa), in RAM. */
	for (unsigned int i = 0; vm->host->memory && i < n; i++) {
		for (unsigned int k = 0; k < vm->pins[i].count; k++) {
			int ret = vmm_memory_pin(vm->host->memory, vm->areas[vm->ram_slot]->pager_id,
						 vm->pins[i].va + k * vm->pins[i].stride, vm->pins[i].len);
			if (ret)
				return ret;
		}
	}
	return 0;
}

int vm_load_image(struct vm *vm, const struct elf_image *image, const void *buf,
		  struct vmm_error *err)
{
	struct boot_layout layout = vm_boot_layout(vm);
	uint64_t tables_end;
	int ret;

	if (image->end > vm_image_load_max(vm->ram_size, vm->nr_vcpus))
		return vmm_error_set(err, EINVAL, "image ends at %#" PRIx64 ", past the loadable RAM", image->end);
	elf_image_load(image, buf, vm->ram);
	boot_write_gdt(vm->ram);
	uint64_t cr3 = boot_write_page_tables(&layout, &tables_end);
	if (!cr3)
		return vmm_error_set(err, EINVAL, "boot page tables for RAM and segments do not fit below 1 MiB");
	ret = vm_pin_resident_ranges(vm, image);
	if (ret)
		return vmm_error_set(err, -ret, "pinning the resident pages: %s", strerror(-ret));
	for (unsigned int i = 0; i < vm->nr_vcpus; i++) {
		uint64_t root;
		boot_write_info(&layout, i, image->end, cr3);
		ret = vcpu_load_guest_cr3(&vm->vcpus[i], cr3, &root);
		if (ret)
			return vmm_error_set(err, -ret, "shadowing the boot page tables for vCPU %u: %s", i,
					     strerror(-ret));
		ret = vcpu_set_boot_state(vm, &vm->vcpus[i], image->entry, root, err);
		if (ret)
			return ret;
	}
	return 0;
}
