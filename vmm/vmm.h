/*
 * vmm/: the umbra program. This header is internal to vmm/ and its tests.
 *
 * The pieces: options (command line), elf (image validation and loading),
 * vm (a KVM VM: RAM, boot state, vCPU threads, exits). Only vmm/ prints and
 * exits; functions here return 0 or -errno and describe failures in a
 * struct vmm_error for main() to print.
 */
#ifndef UMBRA_VMM_H
#define UMBRA_VMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VMM_ERROR_MAX 512

/* A human-readable account of what was wrong, naming the culprit. */
struct vmm_error {
	char msg[VMM_ERROR_MAX];
};

/* Formats msg into err (if err is non-NULL) and returns -errnum. */
int vmm_error_set(struct vmm_error *err, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- command line ---- */

enum vmm_command {
	VMM_CMD_HELP,
	VMM_CMD_VERSION,
	VMM_CMD_RUN,
};

#define VMM_MEM_MIN (4ull << 20)
#define VMM_MEM_MAX (64ull << 30)
#define VMM_MEM_DEFAULT (64ull << 20)
#define VMM_MEM_ALIGN (2ull << 20) /* boot tables map RAM with 2 MiB pages */

struct vmm_options {
	enum vmm_command command;
	const char *image;   /* run: path of the ELF64 image */
	uint64_t mem;        /* run: bytes of guest RAM */
	unsigned int vcpus;  /* run: number of vCPUs */
	const char *cmdline; /* run: string passed in the boot info ("" if none) */
	bool stats;          /* run: print exit statistics at the end */
};

/* Parses argv into opts. On a bad command line returns -EINVAL with err
 * naming the offending option or value. */
int vmm_options_parse(int argc, char *const argv[], struct vmm_options *opts,
		      struct vmm_error *err);
/* Parses a size such as 64M, 1G, 2097152 or 512K (binary units). */
int vmm_parse_size(const char *text, uint64_t *out);
extern const char vmm_usage[];

/* ---- ELF64 images ---- */

#define ELF_MAX_SEGMENTS 16

struct elf_segment {
	uint64_t gpa;    /* load address (p_paddr) */
	uint64_t offset; /* in the file */
	uint64_t filesz;
	uint64_t memsz;
	uint32_t flags; /* PF_R | PF_W | PF_X */
};

struct elf_image {
	uint64_t entry;
	uint64_t end; /* end of the highest segment, page aligned */
	unsigned int nr_segments;
	struct elf_segment segments[ELF_MAX_SEGMENTS];
};

/*
 * Validates an ELF64 x86-64 executable held in buf[0..len): header, program
 * headers, that every PT_LOAD segment lies in the file and in guest RAM range
 * [load_min, load_max), that segments do not overlap, and that the entry point
 * lies in an executable segment. Returns 0 or -ENOEXEC with err saying what is
 * wrong.
 */
int elf_image_parse(const void *buf, size_t len, uint64_t load_min, uint64_t load_max,
		    struct elf_image *image, struct vmm_error *err);
/* Copies the segments of a parsed image into guest RAM (ram = GPA 0) and
 * zero-fills each segment's tail past filesz. */
void elf_image_load(const struct elf_image *image, const void *buf, void *ram);

/* ---- VMs ---- */

struct vm;

struct vm_config {
	const char *name; /* for messages, e.g. "vm0" */
	uint64_t mem;
	unsigned int vcpus;
	const char *cmdline;
};

/* Exits counted per VM (indexes of vm_stats.exits). */
enum vm_exit_kind {
	VM_EXIT_CONSOLE,
	VM_EXIT_HYPERCALL,
	VM_EXIT_IO_OTHER,
	VM_EXIT_MMIO,
	VM_EXIT_HLT,
	VM_EXIT_SHUTDOWN,
	VM_EXIT_FAIL_ENTRY,
	VM_EXIT_INTERNAL_ERROR,
	VM_EXIT_INTERRUPTED,
	VM_EXIT_OTHER,
	VM_EXIT_NR
};

struct vm_stats {
	uint64_t exits[VM_EXIT_NR];
	uint64_t exits_total;
};

extern const char *const vm_exit_kind_names[VM_EXIT_NR];

/* Opens /dev/kvm; -ENOENT (with a message saying how to use the sandbox)
 * when it is missing, -errno for other failures. */
int vmm_kvm_open(int *kvm_fd, struct vmm_error *err);

/* Creates a VM with RAM and vCPUs on kvm_fd. */
int vm_create(int kvm_fd, const struct vm_config *config, struct vm **out,
	      struct vmm_error *err);
/* The end of the RAM an image may load into: below the vCPU stacks. */
uint64_t vm_image_load_max(uint64_t mem, unsigned int vcpus);
/* Loads an image validated by elf_image_parse (against UMBRA_IMAGE_MIN_GPA and
 * vm_image_load_max) into the VM and prepares every vCPU's boot state (long
 * mode, boot tables, stack, boot info in RDI). */
int vm_load_image(struct vm *vm, const struct elf_image *image, const void *buf,
		  struct vmm_error *err);
/* Runs the vCPUs until the guest exits or fails; returns umbra's exit status
 * (the guest's exit code or an UMBRA_STATUS_*). Guest errors are printed. */
int vm_run(struct vm *vm);
void vm_get_stats(const struct vm *vm, struct vm_stats *stats);
void vm_destroy(struct vm *vm);

#endif
