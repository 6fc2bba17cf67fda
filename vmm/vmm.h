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

#include "umbra/shadow.h"
#include "umbra/abi.h"

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
#define VMM_MAX_VMS 256u
#define VMM_NAME_MAX 24 /* VM names, including the NUL */
/* Guest-physical layout of a VM: RAM from 0 (at most 64 GiB), shared
 * segments from 128 GiB to 512 GiB, the shadow table pool at SHADOW_POOL_GPA
 * (512 GiB). */
#define VMM_SEGMENT_GPA_MIN (128ull << 30)
#define VMM_SEGMENTS_TOTAL_MAX (64ull << 30)
#define VMM_SEGMENT_GPA_END (1ull << 39) /* the boot PDPT covers 512 GiB */
#define VMM_SEGMENT_ALIGN (2ull << 20)

struct vmm_options {
	enum vmm_command command;
	const char *image;      /* run: path of the ELF64 image (or NULL with config) */
	const char *config;     /* run: path of a JSON config (or NULL) */
	uint64_t mem;           /* run: bytes of guest RAM */
	unsigned int vcpus;     /* run: number of vCPUs */
	unsigned int vms;       /* run: number of VMs of the image */
	const char *cmdline;    /* run: string passed in the boot info ("" if none) */
	bool stats;             /* run: print statistics at the end */
	const char *stats_json; /* run: write statistics as JSON here (or NULL) */
	unsigned int evict_ms;    /* run: evict segment pages every evict_ms ms (0: never) */
	unsigned int evict_pages; /* run: ... this many pages of each segment each time */
};

#define VMM_EVICT_MS_MAX 60000u
#define VMM_EVICT_PAGES_DEFAULT 64u
#define VMM_EVICT_PAGES_MAX 65536u

/* Parses argv into opts. On a bad command line returns -EINVAL with err
 * naming the offending option or value. */
int vmm_options_parse(int argc, char *const argv[], struct vmm_options *opts,
		      struct vmm_error *err);
/* Parses a size such as 64M, 1G, 2097152 or 512K (binary units). */
int vmm_parse_size(const char *text, uint64_t *out);
/* Validators shared by the command line and the config file: 0 or -EINVAL
 * with err saying what the value must be (what names the value). */
int vmm_check_mem(const char *what, uint64_t mem, unsigned int vcpus, struct vmm_error *err);
int vmm_check_vcpus(const char *what, unsigned long vcpus, struct vmm_error *err);
int vmm_check_cmdline(const char *what, const char *cmdline, struct vmm_error *err);
extern const char vmm_usage[];

/* ---- the plan: which VMs and segments to run ---- */

struct plan_segment {
	char name[UMBRA_SEGMENT_NAME_MAX];
	uint64_t gpa;
	uint64_t size;
	bool writable;
	char *file; /* preload from this file, or NULL for zeroes */
};

struct plan_vm {
	char name[VMM_NAME_MAX];
	char *image;
	uint64_t mem;
	unsigned int vcpus;
	char cmdline[UMBRA_CMDLINE_MAX];
	unsigned int nr_segments;
	unsigned int segments[UMBRA_MAX_SEGMENTS]; /* indexes into plan.segments */
};

struct plan {
	unsigned int nr_segments;
	struct plan_segment segments[UMBRA_MAX_SEGMENTS];
	unsigned int nr_vms;
	struct plan_vm *vms;
};

/* Builds a plan of opts->vms identical VMs from the command line. */
int plan_from_options(const struct vmm_options *opts, struct plan *plan, struct vmm_error *err);
/*
 * Builds a plan from a JSON config file (format in docs/config.md). Image and
 * segment file paths are relative to the config file's directory. Options
 * given on the command line (--cmdline, --vcpus, --mem) do not apply.
 * Returns 0, or -EINVAL / -ENOENT with err naming the file, the key and the
 * problem.
 */
int plan_from_config(const char *path, struct plan *plan, struct vmm_error *err);
/* Parses config text (for tests); base_dir prefixes relative paths. */
int plan_from_config_text(const char *text, const char *base_dir, const char *what,
			  struct plan *plan, struct vmm_error *err);
void plan_free(struct plan *plan);

/* ---- shared segments ---- */

/* A named memfd that VMs attach at the same guest-physical address. */
struct segment {
	char name[UMBRA_SEGMENT_NAME_MAX];
	uint64_t gpa;
	uint64_t size;
	bool writable;
	int fd;
	void *host; /* the VMM's mapping */
	struct notifier_object *obj; /* the memory object every attached VM subscribes to */
	struct shadow_store *store;  /* its swap store: evict() and the restore hook */
};

/* Creates the segment and preloads it from pseg->file (which must not be
 * larger than the segment). Returns 0 or -errno with err. */
int segment_create(const struct plan_segment *pseg, struct segment **out, struct vmm_error *err);
void segment_destroy(struct segment *seg);

/*
 * The evictor: a thread that, every @interval_ms, evicts the next @pages
 * pages of each segment (round robin over the segment, wrapping) through
 * shadow_store_evict(): every VM that maps a page is invalidated and its
 * vCPUs shot down while they run; their next access faults the page back
 * through the store's restore hook.  Returns 0 or -errno with err.
 */
struct evictor;
int evictor_start(struct segment *const *segments, unsigned int nr_segments, unsigned int interval_ms,
		  unsigned int pages, struct evictor **out, struct vmm_error *err);
/* Stops the thread and frees the evictor (NULL is fine).  An eviction that
 * fails (other than a page still evicted) is printed as a warning, once per
 * segment, and counted. */
void evictor_stop(struct evictor *ev);

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

/* ---- the process: what every VM shares ---- */

#define VMM_POOL_PAGES_DEFAULT 16384u /* 64 MiB of shadow tables */

/* The shadow-table pool, mapped read-only at SHADOW_POOL_GPA in every VM. */
struct vmm_host {
	struct shadow_pool *pool;
	struct shadow_pool_memory pool_mem; /* its memory (read-write host mapping, memfd) */
	void *pool_ro;                    /* the VMM's read-only mapping, for memslots */
	size_t pool_pages;
};

/* Creates the pool of nr_pages table pages. Returns 0 or -errno with err. */
int vmm_host_create(size_t nr_pages, struct vmm_host **out, struct vmm_error *err);
void vmm_host_destroy(struct vmm_host *host);

/* ---- VMs ---- */

struct vm;

struct vm_config {
	struct vmm_host *host;
	const char *name; /* for messages, e.g. "vm0" */
	uint64_t mem;
	unsigned int vcpus;
	const char *cmdline;
	unsigned int nr_segments;
	struct segment *const *segments; /* attached at their gpa, in this order */
	bool prefix_output; /* prefix console lines with the VM's name */
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
	uint64_t hypercalls[UMBRA_HC_NR]; /* by number */
	struct shadow_mmu_stats shadow;
	struct shadow_table_usage tables; /* the tables the VM reaches now */
	/* TLB shootdowns: flush requests posted to vCPU mailboxes, kicks of
	 * vCPUs in guest mode, NMIs injected, acknowledgements from the guest. */
	uint64_t flush_requests, kicks, nmis, flush_acks;
};

extern const char *const vm_exit_kind_names[VM_EXIT_NR];

/* -ENOTSUP with err when KVM runs without hardware nested paging (see vm.c). */
int vmm_check_nested_paging(struct vmm_error *err);
extern const char *const vm_hypercall_names[UMBRA_HC_NR];

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
/* Blocks the vCPU kick signal in the calling thread (and so in the threads it
 * creates afterwards) and installs its handler. Call once, before vm_start. */
void vmm_signals_init(void);
/* Starts the vCPU threads. Returns 0, or -errno (the VM is then stopped with
 * UMBRA_STATUS_NO_KVM; vm_wait still must be called). */
int vm_start(struct vm *vm);
/* Waits for the VM to stop; returns umbra's exit status for it (the guest's
 * exit code or an UMBRA_STATUS_*). Guest errors have been printed. */
int vm_wait(struct vm *vm);
const char *vm_name(const struct vm *vm);
void vm_get_stats(const struct vm *vm, struct vm_stats *stats);
void vm_destroy(struct vm *vm);

#endif
