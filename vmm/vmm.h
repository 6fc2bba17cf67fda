/*
 * vmm/: the umbra program. This header is internal to vmm/ and its tests.
 *
 * One file per mechanism:
 *   main.c       the program: plan, images, VMs, exit status
 *   options.c    the command line
 *   config.c     JSON config files: the plan of VMs and segments
 *   config_scan.c  the config text pass: duplicate keys, NUL bytes
 *   segment.c    shared segments (memfds every attached VM maps)
 *   evict.c      the evictor thread (--evict-ms, a test mode)
 *   memory.c     guest memory under the pager: swap file, limit, pins, errors
 *   area.c       RAM areas: the memfds of guest RAM, own areas and layers
 *   clone.c      clones of a running VM: parking, vCPU state, sharing
 *   elf.c        ELF64 image validation and loading
 *   kvm.c        /dev/kvm, VM and vCPU creation, memslots, CPUID, loading
 *   boot.c       the boot state: GDT, TSS, page tables, boot block,
 *                registers (pure: fills buffers, calls no KVM)
 *   group.c      trust groups: which VMs share a table pool, table quotas
 *   fit.c        whether a plan fits the host's memory (checked up front)
 *   mmu.c        the groups' table pools and each VM's shadow MMU, pins
 *   run.c        vCPU threads and the run loop, stopping a VM
 *   exit.c       exit handling, console output, guest-failure reports
 *   hypercall.c  hypercall dispatch and the paging hypercalls
 *   shootdown.c  TLB shootdown by NMI (the shadow MMU's flush interface)
 *   stats.c      statistics: collection, --stats and --stats-json
 *   x86.h        architectural constants; vm_internal.h: struct vm, vcpu
 *
 * Only vmm/ prints and exits; functions here return 0 or -errno and
 * describe failures in a struct vmm_error for main() to print.
 */
#ifndef UMBRA_VMM_H
#define UMBRA_VMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "umbra/lock.h"
#include "umbra/pager.h"
#include "umbra/shadow.h"
#include "umbra/abi.h"

/*
 * Locks (docs/locking.md, "vmm/"). Ranks are those of the one table in
 * include/umbra/lock.h (UMBRA_LOCK_RANK_VMM_*); a thread takes locks in
 * strictly increasing rank. Every vmm lock is a leaf: nothing is taken while
 * one is held, and none is held across a call into shadow/ or notifier/.
 * Each is documented where it is declared.
 */

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
	VMM_CMD_TRACE_REPORT,
};

#define VMM_MEM_MIN (4ull << 20)
#define VMM_MEM_MAX (64ull << 30)
#define VMM_MEM_DEFAULT (64ull << 20)
#define VMM_MEM_ALIGN (2ull << 20) /* boot tables map RAM with 2 MiB pages */
/* RAM below the vCPU stacks holds the boot area (below UMBRA_IMAGE_MIN_GPA)
 * and at least as much again for the image. */
#define VMM_RAM_BELOW_STACKS_MIN (2ull * UMBRA_IMAGE_MIN_GPA)
#define VMM_MAX_VMS 256u
#define VMM_NAME_MAX 24 /* VM names, including the NUL */
#define VMM_GROUP_NAME_MAX 32 /* trust-group names, including the NUL */
/* Table quotas (pages of shadow tables a VM may hold, docs/config.md): at
 * least what booting needs (a few address spaces' tables for the pinned boot
 * ranges), at most one pool. */
#define VMM_TABLE_QUOTA_MIN 64u
#define VMM_TABLE_QUOTA_MAX ((uint64_t)SHADOW_POOL_MAX_PAGES)
/* Guest-physical layout of a VM: RAM from 0 (at most 64 GiB), shared
 * segments from 128 GiB to 512 GiB, the shadow table pool at SHADOW_POOL_GPA
 * (512 GiB). */
#define VMM_SEGMENT_GPA_MIN (128ull << 30)
#define VMM_SEGMENTS_TOTAL_MAX (64ull << 30)
#define VMM_SEGMENT_GPA_END (1ull << 39) /* the boot PDPT covers 512 GiB */
#define VMM_SEGMENT_ALIGN (2ull << 20)

/* How the guests' console bytes reach umbra's stdout (--console). */
enum vmm_console_mode {
	VMM_CONSOLE_ESCAPED, /* the default: see vmm_console_escape() */
	VMM_CONSOLE_RAW,     /* every byte as the guest wrote it */
};

/*
 * The pager of a run (docs/pager.md, "In umbra"): guest memory (every VM's
 * RAM and every segment) swapped to a file under a memory limit. It is on
 * when any of mem_limit, swap, swap_size or --evict-ms is given. Zero (NULL,
 * -1) means not given.
 */
#define VMM_MEM_LIMIT_MIN (4ull << 20)
#define VMM_SWAP_SIZE_MIN (1ull << 20)
#define VMM_SWAP_SIZE_MAX (PAGER_SWAP_MAX_SLOTS * PAGER_SLOT_SIZE)
struct vmm_pager_options {
	uint64_t mem_limit;  /* bytes of guest memory in host memory, at most */
	const char *swap;    /* the swap file's path (a temporary file if NULL) */
	uint64_t swap_size;  /* its capacity in bytes (default: all guest memory) */
	int policy;          /* enum pager_policy, -1 for the default (clock) */
	/* Testing (--swap-inject KIND:N, command line only): kind -1 for none. */
	int inject_kind;     /* enum pager_inject_kind */
	uint64_t inject_n;
	/* --reclaim-nonblocking (command line only): the pager's invalidations
	 * are not blockable (pager_set_nonblocking). */
	bool nonblocking;
};
/* Parses the value of --reclaim-policy / "reclaim_policy". 0 or -EINVAL. */
int vmm_parse_policy(const char *text, int *policy);
/* "range" or "page" into *mode: 0, or -EINVAL. */
int vmm_parse_notifier_mode(const char *text, enum notifier_mode *mode);
/* Checks a memory limit / swap size (what names the value). 0 or -EINVAL with err. */
int vmm_check_mem_limit(const char *what, uint64_t bytes, struct vmm_error *err);
int vmm_check_swap_size(const char *what, uint64_t bytes, struct vmm_error *err);

#define VMM_REPORT_TRACES_MAX 16u

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
	const char *dump_tables; /* run: write the picture of the shadow tables here (or NULL) */
	const char *trace;        /* run: write the trace here at exit (or NULL: no trace) */
	unsigned int trace_events; /* run: the umbra/trace.h kinds recorded (0: all) */
	unsigned long trace_buffer; /* run: events per thread (0: UMBRA_TRACE_DEFAULT_CAP) */
	const char *report_traces[VMM_REPORT_TRACES_MAX]; /* trace-report: the traces read */
	unsigned int nr_report_traces;
	const char *report_png;   /* trace-report: the histogram's PNG (or NULL) */
	enum vmm_console_mode console; /* run: how guest console bytes are printed */
	unsigned int evict_ms;    /* run: evict segment pages every evict_ms ms (0: never) */
	unsigned int evict_pages; /* run: ... this many pages of each segment each time */
	const char *group;        /* run: the trust group of the VMs (or NULL: none) */
	uint64_t table_quota;     /* run: table pages each VM may hold (0: the default) */
	unsigned int clones;      /* run: clones of each VM at READY (0: none) */
	unsigned int fault_around; /* run: fault-around window in pages (1: off) */
	bool huge_leaves;          /* run: 2 MiB shadow leaves (--huge-leaves; default on) */
	enum notifier_mode notifier_mode; /* run: how invalidations of guest memory are
					   * delivered (a segment's notifier_mode overrides it) */
	struct vmm_pager_options pager; /* run: --mem-limit, --swap, ... (they override the config's) */
};

/* The fault-around window (shadow_mmu_config.fault_around) by default, in
 * pages: a shadow fault maps up to 31 resident neighbours too. */
#define VMM_FAULT_AROUND_DEFAULT 32u
#define VMM_TRACE_BUFFER_MIN 1024u
#define VMM_TRACE_BUFFER_MAX 16777216u
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
/* A trust-group name: 1 to VMM_GROUP_NAME_MAX - 1 printable ASCII
 * characters (0x21..0x7e: no space, no control byte). */
int vmm_check_group(const char *what, const char *name, struct vmm_error *err);
/* A table quota: VMM_TABLE_QUOTA_MIN to VMM_TABLE_QUOTA_MAX pages. */
int vmm_check_table_quota(const char *what, uint64_t pages, struct vmm_error *err);
extern const char vmm_usage[];

/* ---- the plan: which VMs and segments to run ---- */

struct plan_segment {
	char name[UMBRA_SEGMENT_NAME_MAX];
	uint64_t gpa;
	uint64_t size;
	bool writable;
	char *file; /* preload from this file, or NULL for zeroes */
	int notifier_mode; /* enum notifier_mode, or -1: the run's (--notifier-mode) */
};

struct plan_vm {
	char name[VMM_NAME_MAX];
	char *image;
	uint64_t mem;
	unsigned int vcpus;
	char cmdline[UMBRA_CMDLINE_MAX];
	unsigned int nr_segments;
	unsigned int segments[UMBRA_MAX_SEGMENTS]; /* indexes into plan.segments */
	char group[VMM_GROUP_NAME_MAX]; /* the declared trust group, "" for none */
	uint64_t table_quota;           /* table pages it may hold (never 0 in a built plan) */
	unsigned int clones;            /* clones made when its last vCPU is READY (0: none) */
	unsigned int group_index;       /* its group in plan.groups (plan_assign_groups) */
};

/* A trust group of the plan: the VMs that share one table pool. */
struct plan_group {
	char name[VMM_GROUP_NAME_MAX]; /* "" for a VM without a group, or the default group */
	unsigned int nr_vms;
	uint64_t pool_pages; /* the quotas of its VMs plus the canonical tables of their segments */
};

/* The pager settings of a plan: the config's top-level keys, then the
 * command line's options over them (plan_apply_pager_options). */
struct plan_pager {
	uint64_t mem_limit, swap_size; /* bytes, 0 if not given */
	char *swap;                    /* owned, or NULL */
	int policy;                    /* enum pager_policy (PAGER_POLICY_CLOCK unless given) */
};

struct plan {
	struct plan_pager pager;
	unsigned int nr_segments;
	struct plan_segment segments[UMBRA_MAX_SEGMENTS];
	unsigned int nr_vms;
	struct plan_vm *vms;
	unsigned int nr_groups; /* set by plan_assign_groups */
	struct plan_group *groups;
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
/* Applies the pager options given on the command line over the plan's.
 * Returns 0 or -ENOMEM with err. */
int plan_apply_pager_options(struct plan *plan, const struct vmm_pager_options *po, struct vmm_error *err);
/* Whether the plan (with evict_ms from the command line) runs the pager. */
bool plan_uses_pager(const struct plan *plan, unsigned int evict_ms);

/* ---- trust groups and table quotas (group.c, docs/security.md) ---- */

/*
 * The default table quota of a VM of mem bytes of RAM with vcpus vCPUs and
 * segment_bytes of attached segments: four times the tables that map all of
 * it with 4 KiB pages, plus 16 tables for each of vmm_quota_roots() address
 * spaces, and at least VMM_TABLE_QUOTA_DEFAULT_MIN (docs/config.md). Pure.
 */
#define VMM_TABLE_QUOTA_DEFAULT_MIN 512u
uint64_t vmm_table_quota_default(uint64_t mem, unsigned int vcpus, uint64_t segment_bytes);
/* The address spaces the default quota of a VM with vcpus vCPUs has room
 * for: one per vCPU and VMM_QUOTA_SPACES more to switch among (its root
 * cache holds as many as its quota allows). Pure. */
#define VMM_QUOTA_SPACES 8u
unsigned int vmm_quota_roots(unsigned int vcpus);
/* Fills in the default table quota of every VM of the plan that has none. */
void plan_set_default_quotas(struct plan *plan);
/*
 * Puts every VM of the plan in a trust group (plan->groups, each VM's
 * group_index) and sizes each group's pool. VMs that name the same group
 * share it. VMs without a group share one default group when share_ungrouped
 * (the pool is a read-only memslot), else each is a group of its own.
 * Returns 0 or -ENOMEM with err. Pure but for the allocation.
 */
int plan_assign_groups(struct plan *plan, bool share_ungrouped, struct vmm_error *err);
/* The VMs of the plan that declare no group. */
unsigned int plan_nr_ungrouped(const struct plan *plan);

/* ---- whether the plan fits the host (fit.c) ---- */

/* What a plan needs of the host, in bytes (an estimate: docs/config.md). */
struct vmm_fit {
	uint64_t guest_ram;   /* every VM's declared RAM */
	uint64_t segments;    /* every segment, once */
	uint64_t bookkeeping; /* umbra's own per-VM and per-vCPU structures */
	uint64_t pools;       /* every group's table pool, full */
	uint64_t total;       /* all of the above: what the address space must hold */
	/* What host memory must hold: total, but with guest RAM and segments
	 * counted at most to the plan's memory limit (the rest is swapped to
	 * the pager's file, and its slot bookkeeping, 4.25 bytes a page, is
	 * counted in bookkeeping). */
	uint64_t resident;
};

/* The host's memory, in bytes. */
struct vmm_host_memory {
	uint64_t ram, swap; /* MemTotal, SwapTotal */
	uint64_t as_limit;  /* RLIMIT_AS, or UINT64_MAX for none */
};

/* What the plan (its groups assigned) needs. Pure. */
void plan_fit_estimate(const struct plan *plan, struct vmm_fit *fit);
/* 0 if fit fits the host, else -ENOMEM with err naming the figures and what
 * to change. Pure. */
int vmm_fit_check(const struct vmm_fit *fit, const struct vmm_host_memory *hm, struct vmm_error *err);
/* Reads /proc/meminfo and RLIMIT_AS. Returns 0 or -errno with err. */
int vmm_host_memory_read(struct vmm_host_memory *hm, struct vmm_error *err);

/* ---- shared segments ---- */

/* ---- guest memory under the pager (memory.c, docs/pager.md "In umbra") ---- */

struct vm;
struct vmm_memory;

/* Creates the process's pager and its swap file for the plan
 * (plan_uses_pager): the file is plan->pager.swap (or a temporary one) of
 * plan->pager.swap_size bytes (or all the plan's guest memory); po's
 * --swap-inject is armed. Returns 0 or -errno with err. */
int vmm_memory_create(const struct plan *plan, const struct vmm_pager_options *po, struct vmm_memory **out,
		      struct vmm_error *err);
/* Puts a memfd, mapped MAP_SHARED read-write at host for size bytes, under
 * the pager as the memory object obj named name (for statistics and
 * messages): a RAM area of owner, or a segment (owner NULL), whose page 0 is
 * at guest-physical gpa. Sets *id. Any thread (a clone adds areas while
 * other VMs run). Returns 0 or -errno with err. */
int vmm_memory_add(struct vmm_memory *m, const char *name, struct vm *owner, uint64_t gpa,
		   struct notifier_object *obj, int memfd, void *host, uint64_t size, int *id,
		   struct vmm_error *err);
/* Names vm's vCPU threads to the pager's callbacks, so that a page that
 * cannot be read back stops the VM whose thread needed it. As the VM starts
 * (vm_start), before its threads run; any thread. */
void vmm_memory_add_vm(struct vmm_memory *m, struct vm *vm);
/* The shadow slot of object id (its get_page swaps pages in); the caller
 * sets mpa and readonly. */
void vmm_memory_slot(struct vmm_memory *m, int id, struct shadow_slot *slot);
/* Keeps the pages of bytes [offset, offset + len) of object id resident
 * for the rest of the run (pager_pin). No lock held. 0 or -errno. */
int vmm_memory_pin(struct vmm_memory *m, int id, uint64_t offset, uint64_t len);
/* Frees pages [first, first + npages) of object id, which no VM maps any
 * more (pager_discard). No lock held. 0 or -errno. */
int vmm_memory_discard(struct vmm_memory *m, int id, uint64_t first, uint64_t npages);
/* Swaps out pages [first, first + npages) of object id now (pager_evict).
 * Caller registered with liburcu, no lock held. 0 or -errno. */
int vmm_memory_evict(struct vmm_memory *m, int id, uint64_t first, uint64_t npages);
/* Starts the reclaimer when the plan has a memory limit, after every object
 * is added and the resident set pinned, before the VMs start: -EINVAL with
 * err if the limit is below the pinned pages and 1 MiB. 0 or -errno. */
int vmm_memory_start(struct vmm_memory *m, struct vmm_error *err);
/* Stops the reclaimer and the pager, brings every page back and closes the
 * swap file. After the VMs have stopped, before their memory is unmapped.
 * NULL is allowed. */
void vmm_memory_destroy(struct vmm_memory *m);
/* The pager's counters of object id. 0 or -errno. */
int vmm_memory_object_stats(struct vmm_memory *m, int id, struct pager_stats *st);
/* --stats: the pager's lines on stderr; --stats-json: its "pager" object. */
void vmm_memory_stats_print(struct vmm_memory *m);
struct json_object *vmm_memory_stats_json(struct vmm_memory *m);

/* ---- shared segments ---- */

/* A named memfd that VMs attach at the same guest-physical address. */
struct segment {
	char name[UMBRA_SEGMENT_NAME_MAX];
	uint64_t gpa;
	uint64_t size;
	bool writable;
	int fd;
	void *host; /* the VMM's mapping (the pager's registered one when it runs) */
	struct notifier_object *obj; /* the memory object every attached VM subscribes to */
	struct vmm_memory *memory;   /* the pager it is under, or NULL */
	int pager_id;                /* its object there (-1 without a pager) */
};

/* Creates the segment and preloads it from pseg->file (which must not be
 * larger than the segment), then puts it under memory's pager (memory may
 * be NULL). Returns 0 or -errno with err. */
int segment_create(const struct plan_segment *pseg, struct vmm_memory *memory, struct segment **out,
		   struct vmm_error *err);
void segment_destroy(struct segment *seg);

/*
 * The evictor (testing, --evict-ms): a thread that, every @interval_ms,
 * swaps out the next @pages pages of each segment (round robin over the
 * segment, wrapping) through the pager: every VM that maps a page is
 * invalidated and its vCPUs shot down while they run; their next access
 * swaps the page back in. The segments must be under a pager. Returns 0 or
 * -errno with err.
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
	uint32_t flags; /* PF_R | PF_W | PF_X | UMBRA_PF_RESIDENT */
};

struct elf_image {
	uint64_t entry;
	uint64_t end; /* end of the highest segment, page aligned */
	uint64_t resident_bytes; /* of the pages of UMBRA_PF_RESIDENT segments */
	unsigned int nr_segments;
	struct elf_segment segments[ELF_MAX_SEGMENTS];
};

/*
 * Validates an ELF64 x86-64 executable held in buf[0..len): header, program
 * headers, that every PT_LOAD segment lies in the file and in guest RAM range
 * [load_min, load_max), that segments do not overlap, and that the entry point
 * lies in an executable segment, and that at most UMBRA_MAX_RESIDENT_SEGMENTS
 * segments covering at most UMBRA_RESIDENT_MAX bytes of pages are marked
 * UMBRA_PF_RESIDENT. Returns 0 or -ENOEXEC with err saying what is wrong.
 */
int elf_image_parse(const void *buf, size_t len, uint64_t load_min, uint64_t load_max,
		    struct elf_image *image, struct vmm_error *err);
/* Copies the file bytes of each segment of a parsed image into guest RAM
 * (ram = GPA 0), which must be all zero (a fresh memfd): each segment's tail
 * past filesz (bss) is left as it is, unwritten. */
void elf_image_load(const struct elf_image *image, const void *buf, void *ram);

/* ---- the process: trust groups' pools and the output ---- */

/* A trust group's shadow-table pool, mapped at SHADOW_POOL_GPA in each VM of
 * the group (and in no other VM): read-only where the CPU allows, else
 * writable (vmm_pool_must_be_writable()). The pool's memfd (and the shadow
 * library's private copy of its tables) is sparse: a page costs memory once
 * a table lives in it. */
struct vmm_group {
	char name[VMM_GROUP_NAME_MAX]; /* as in the plan */
	struct shadow_pool *pool;
	struct shadow_pool_memory pool_mem; /* its memory (read-write host mapping, memfd) */
	void *pool_ro;                      /* the VMM's read-only mapping, for memslots */
	size_t pool_pages;
	/* The most pages in use in the pool seen as its VMs stopped (each VM's
	 * stop samples it before the VM's tables are freed); atomic. */
	size_t in_use_seen;
};

/* The groups' pools and the output every VM prints to. */
struct vmm_host {
	unsigned int nr_groups;
	struct vmm_group *groups; /* [nr_groups], as plan.groups */
	/* output_lock (UMBRA_LOCK_RANK_VMM_OUTPUT) serialises whole lines of output
	 * from all vCPUs of all VMs (console lines and reports). */
	struct umbra_mutex output_lock;
	/* Set by main() after vmm_host_create() (which leaves it
	 * VMM_CONSOLE_ESCAPED) and before any VM starts; read-only afterwards. */
	enum vmm_console_mode console;
	/* Each VM's fault-around window in pages (--fault-around); set by
	 * main() like console (vmm_host_create leaves it
	 * VMM_FAULT_AROUND_DEFAULT). */
	unsigned int fault_around;
	/* 2 MiB shadow leaves for the VMs (--huge-leaves); set by main() like
	 * console (vmm_host_create leaves it true). */
	bool huge_leaves;
	/* How invalidations of the VMs' RAM are delivered (--notifier-mode);
	 * set by main() like console (vmm_host_create leaves it
	 * NOTIFIER_MODE_RANGE). */
	enum notifier_mode notifier_mode;
	/* The pager of guest memory, or NULL when it is off; set by main()
	 * like console. */
	struct vmm_memory *memory;
	/* --dump-tables's graph, or NULL; set by main() like console. Each VM
	 * adds its tables as it stops (vm_mmu_release). */
	struct vmm_dump *dump;
	/* The run's VMs in the order they were made: the plan's, then each
	 * clone as its parent makes it (vmm_host_add_vm). vms_lock
	 * (UMBRA_LOCK_RANK_VMM_VMS, a leaf) protects vms, nr_vms and
	 * nr_reserved (entries a clone in progress may fill). */
	struct umbra_mutex vms_lock;
	unsigned int nr_vms, nr_reserved;
	struct vm *vms[VMM_MAX_VMS];
	/* Machine addresses handed to RAM areas of clones so far (atomic;
	 * clone.c). */
	uint64_t area_next;
	/* The most host memory of RAM areas seen as VMs stopped (each stop
	 * samples it before its tables and areas are freed); atomic. */
	size_t ram_bytes_seen;
};

/* The host memory (st_blocks) of the RAM areas of the run's VMs now, each
 * area counted once, and how many there are. Takes vms_lock. */
size_t vmm_host_ram_bytes(struct vmm_host *host, unsigned int *nr_areas);

/* Reserves room for n more VMs: 0, or -ENOSPC (VMM_MAX_VMS). */
int vmm_host_reserve_vms(struct vmm_host *host, unsigned int n);
void vmm_host_unreserve_vms(struct vmm_host *host, unsigned int n);
/* Appends vm to the run's VMs, in a reserved entry (or, for the plan's VMs
 * before any runs, a new one). */
void vmm_host_add_vm(struct vmm_host *host, struct vm *vm);
/* The run's i-th VM, or NULL past the last. */
struct vm *vmm_host_vm(struct vmm_host *host, unsigned int i);

/* Creates a pool for each group of the plan (plan_assign_groups done), of
 * its pool_pages (mmu.c). Returns 0 or -errno with err. */
int vmm_host_create(const struct plan *plan, struct vmm_host **out, struct vmm_error *err);
void vmm_host_destroy(struct vmm_host *host);

/* ---- VMs ---- */

struct vm;

struct vm_config {
	struct vmm_host *host;
	struct vmm_group *group; /* one of host->groups */
	uint64_t table_quota;    /* table pages the VM's shadow MMU may hold */
	const char *name; /* for messages, e.g. "vm0" */
	uint64_t mem;
	unsigned int vcpus;
	const char *cmdline;
	unsigned int nr_segments;
	struct segment *const *segments; /* attached at their gpa, in this order */
	bool prefix_output; /* prefix console lines with the VM's name */
};

/* Exits counted per VM: X(ENUM, "name"), in the order --stats and
 * --stats-json print them. */
#define VM_EXIT_KINDS(X)                          \
	X(CONSOLE, "console")                     \
	X(HYPERCALL, "hypercall")                 \
	X(IO_OTHER, "io-other")                   \
	X(MMIO, "mmio")                           \
	X(HLT, "hlt")                             \
	X(SHUTDOWN, "shutdown")                   \
	X(FAIL_ENTRY, "fail-entry")               \
	X(INTERNAL_ERROR, "internal-error")       \
	X(INTERRUPTED, "interrupted")             \
	X(OTHER, "other")

/* Indexes of vm_stats.exits. */
enum vm_exit_kind {
#define VM_EXIT_KIND_ENUM(kind, name) VM_EXIT_##kind,
	VM_EXIT_KINDS(VM_EXIT_KIND_ENUM)
#undef VM_EXIT_KIND_ENUM
	VM_EXIT_NR
};

struct vm_stats {
	uint64_t exits[VM_EXIT_NR];
	uint64_t exits_total;
	uint64_t hypercalls[UMBRA_HC_NR]; /* by number */
	uint64_t pinned_pages; /* the pages kept resident (docs/abi.md) */
	/* CR3 loads that pre-faulted the pinned ranges into the root, and those
	 * whose cached root had kept them since (docs/abi.md). */
	uint64_t pin_walks, pin_walks_skipped;
	struct shadow_mmu_stats shadow;
	struct shadow_table_usage tables; /* the tables the VM reaches (when it stopped, once stopped) */
	/* TLB shootdowns: flush requests posted to vCPU mailboxes, kicks of
	 * vCPUs in guest mode, NMIs injected, acknowledgements from the guest. */
	uint64_t flush_requests, kicks, nmis, flush_acks, early_flushes;
	/* Clones (docs/abi.md, "Clones"): the clones this VM made; the time its
	 * CLONEs took, from the hypercall until its vCPUs resumed (ns); for a
	 * clone, the time from its parent's CLONE until its first vCPU entered
	 * the guest (ns, 0 if it never did). */
	uint64_t clones_made, clone_ns, clone_to_run_ns;
	uint64_t layers_taken_over; /* layers it became the last holder of and made its own */
	/* The notifier object of the RAM the VM writes to (its own area, else
	 * its boot RAM): its delivery mode and counters. */
	enum notifier_mode notifier_mode;
	struct notifier_stats notifier;
};

/*
 * A notifier object's counters that --stats and --stats-json report, in
 * output order: X(key, value), value an expression of n, a const struct
 * notifier_stats * (include/umbra/notifier.h says what each counts).
 */
#define NOTIFIER_STATS(X)                              \
	X("starts", n->starts)                         \
	X("ends", n->ends)                             \
	X("aborts", n->aborts)                         \
	X("pages", n->pages)                           \
	X("range_starts", n->starts_by_mode[NOTIFIER_MODE_RANGE]) \
	X("page_starts", n->starts_by_mode[NOTIFIER_MODE_PAGE])   \
	X("cb_range_start", n->cb_range_start)         \
	X("cb_range_end", n->cb_range_end)             \
	X("cb_page", n->cb_page)                       \
	X("cb_eagain", n->cb_eagain)                   \
	X("clear_young", n->clear_young)               \
	X("test_young", n->test_young)                 \
	X("subscribes", n->subscribes)                 \
	X("unsubscribes", n->unsubscribes)             \
	X("read_begins", n->read_begins)               \
	X("read_waits", n->read_waits)                 \
	X("read_retries", n->read_retries)

/*
 * The counters of a VM that --stats and --stats-json report besides exits
 * and hypercalls, in output order: X(GROUP, key, before, after, value).
 * GROUP is where the counter goes (enum vm_stat_group); key its JSON name;
 * --stats prints before, the value in decimal, after (before NULL: JSON
 * only); value is an expression of s, a const struct vm_stats *.
 *
 * --stats prints the groups as lines: "shadow:" SHADOW, "shootdowns:"
 * SHOOTDOWNS, "tables reached:" TABLES_REACHED "; sharing:" SHARING.
 * --stats-json nests them: "shadow" holds SHADOW, "sharing" and
 * "tables_reached"; "shootdowns" is beside it.
 */
#define VM_STATS(X)                                                                                \
	X(SHADOW, faults, " faults=", "", s->shadow.faults)                                        \
	X(SHADOW, fixed, " fixed=", "", s->shadow.fixed)                                           \
	X(SHADOW, guest_faults, " guest=", "", s->shadow.guest_faults)                             \
	X(SHADOW, retries, " retries=", "", s->shadow.retries)                                     \
	X(SHADOW, installs, " installs=", "", s->shadow.installs)                                  \
	X(SHADOW, faulted_around, " faulted_around=", "", s->shadow.faulted_around)                \
	X(SHADOW, read_mode_installs, " read_mode_installs=", "", s->shadow.read_mode_installs)    \
	X(SHADOW, huge_installs, " huge_installs=", "", s->shadow.huge_installs)                   \
	X(SHADOW, huge_splits, " huge_splits=", "", s->shadow.huge_splits)                         \
	X(SHADOW, zapped, " zapped=", "", s->shadow.zapped)                                        \
	X(SHADOW, tables, " tables=", "", s->shadow.tables_created - s->shadow.tables_freed)       \
	X(SHADOW, tables_created, " (created ", "", s->shadow.tables_created)                      \
	X(SHADOW, tables_freed, ", freed ", ")", s->shadow.tables_freed)                           \
	X(SHADOW, tables_reused, " tables_reused=", "", s->shadow.tables_reused)                   \
	X(SHADOW, invlpg, " invlpg=", "", s->shadow.invlpg)                                        \
	X(SHADOW, cr3_loads, " cr3_loads=", "", s->shadow.cr3_loads)                               \
	X(SHADOW, syncs, " syncs=", "", s->shadow.syncs)                                           \
	X(SHADOW, invalidations, " invalidations=", "", s->shadow.invalidations)                   \
	X(SHADOW, rmap_scans, " rmap_scans=", "", s->shadow.rmap_scans)                            \
	X(SHADOW, access_tracked, " access_tracked=", "", s->shadow.access_tracked)                \
	X(SHADOW, fast_restores, " fast_restores=", "", s->shadow.fast_restores)                   \
	X(SHADOW, root_evictions, " root_evictions=", "", s->shadow.root_evictions)                \
	X(SHADOW, flushes_all, " flushes_all=", "", s->shadow.flushes_all)                         \
	X(SHADOW, flushes_va, " flushes_va=", "", s->shadow.flushes_va)                            \
	X(SHADOW, quota_refusals, " quota_refusals=", "", s->shadow.quota_refusals)                \
	X(SHADOW, reclaims, " reclaims=", "", s->shadow.reclaims)                                  \
	X(SHADOW, pinned_pages, " pinned_pages=", "", s->pinned_pages)                             \
	X(SHADOW, pin_walks, " pin_walks=", "", s->pin_walks)                                      \
	X(SHADOW, pin_walks_skipped, " skipped=", "", s->pin_walks_skipped)                        \
	X(SHOOTDOWNS, requests, " requests=", "", s->flush_requests)                               \
	X(SHOOTDOWNS, kicks, " kicks=", "", s->kicks)                                              \
	X(SHOOTDOWNS, nmis, " nmis=", "", s->nmis)                                                 \
	X(SHOOTDOWNS, acks, " acks=", "", s->flush_acks)                                           \
	X(SHOOTDOWNS, early_flushes, " early_flushes=", "", s->early_flushes)                      \
	X(TABLES_REACHED, reached, " ", "", s->tables.tables)                                      \
	X(TABLES_REACHED, private, " (private ", "", s->tables.private_)                           \
	X(TABLES_REACHED, shared, ", shared ", ")", s->tables.shared)                              \
	X(TABLES_REACHED, pt, NULL, NULL, s->tables.by_level[1])                                   \
	X(TABLES_REACHED, pd, NULL, NULL, s->tables.by_level[2])                                   \
	X(TABLES_REACHED, pdpt, NULL, NULL, s->tables.by_level[3])                                 \
	X(TABLES_REACHED, pml4, NULL, NULL, s->tables.by_level[4])                                 \
	X(SHARING, clones, " clones=", "", s->shadow.clones)                                       \
	X(SHARING, privatizations, " privatizations=", "", s->shadow.privatizations)               \
	X(SHARING, cow_breaks, " cow_breaks=", "", s->shadow.cow_breaks)                           \
	X(SHARING, fills_in_place, " fills_in_place=", "", s->shadow.fills_in_place)               \
	X(SHARING, cow_takeovers, " cow_takeovers=", "", s->shadow.cow_takeovers)                  \
	X(SHARING, pages_freed, " pages_freed=", "", s->shadow.pages_freed)                        \
	X(SHARING, p2m_nodes_copied, " p2m_nodes_copied=", "", s->shadow.p2m_nodes_copied)         \
	X(SHARING, canon_created, " canonical created=", "", s->shadow.canon_created)              \
	X(SHARING, canon_reused, " reused=", "", s->shadow.canon_reused)                           \
	X(SHARING, canon_exchanged, " exchanged=", "", s->shadow.canon_exchanged)                  \
	X(SHARING, remote_flushes, " remote_flushes=", "", s->shadow.remote_flushes)               \
	X(SHARING, clones_made, " clones_made=", "", s->clones_made)                               \
	X(SHARING, clone_ns, " clone_ns=", "", s->clone_ns)                                        \
	X(SHARING, clone_to_run_ns, " clone_to_run_ns=", "", s->clone_to_run_ns)                   \
	X(SHARING, layers_taken_over, " layers_taken_over=", "", s->layers_taken_over)

enum vm_stat_group {
	VM_STAT_SHADOW,
	VM_STAT_SHOOTDOWNS,
	VM_STAT_TABLES_REACHED,
	VM_STAT_SHARING,
	VM_STAT_GROUP_NR
};

/* Indexes of the values vm_stats_values() returns. */
enum vm_stat {
#define VM_STAT_ENUM(group, key, before, after, value) VM_STAT_##group##_##key,
	VM_STATS(VM_STAT_ENUM)
#undef VM_STAT_ENUM
	VM_STAT_NR
};

struct vm_stat_desc {
	enum vm_stat_group group;
	const char *key;    /* JSON name */
	const char *before; /* --stats text before the value, or NULL */
	const char *after;  /* ... and after it */
};

/* Every counter of VM_STATS, indexed by enum vm_stat. */
extern const struct vm_stat_desc vm_stat_descs[VM_STAT_NR];
/* Evaluates VM_STATS on s into values[VM_STAT_NR]. */
void vm_stats_values(const struct vm_stats *s, uint64_t *values);

extern const char *const vm_exit_kind_names[VM_EXIT_NR];
extern const char *const vm_hypercall_names[UMBRA_HC_NR];

/* -ENOTSUP with err when KVM runs without hardware nested paging (see kvm.c). */
int vmm_check_nested_paging(struct vmm_error *err);
/* True where the pool must be a writable memslot (AMD nested paging, see
 * kvm.c): there a guest can write its group's pool. */
bool vmm_pool_must_be_writable(void);

/* Opens /dev/kvm; -ENOENT (with a message saying how to use the sandbox)
 * when it is missing, -errno for other failures. */
int vmm_kvm_open(int *kvm_fd, struct vmm_error *err);

/* Creates a VM with RAM and vCPUs on kvm_fd. */
int vm_create(int kvm_fd, const struct vm_config *config, struct vm **out,
	      struct vmm_error *err);
/* Loads an image validated by elf_image_parse (against UMBRA_IMAGE_MIN_GPA and
 * vm_image_load_max) into the VM and prepares every vCPU's boot state (long
 * mode, boot tables, stack, boot info in RDI). */
int vm_load_image(struct vm *vm, const struct elf_image *image, const void *buf,
		  struct vmm_error *err);
/* The VM is the plan's VM plan_index; clones (0: none) clones of it are
 * made when its last vCPU makes the READY hypercall. Before it starts. */
void vm_set_clone_at_ready(struct vm *vm, unsigned int plan_index, unsigned int clones);
/* Blocks the vCPU kick signal in the calling thread (and so in the threads it
 * creates afterwards) and installs its handler. Call once, before vm_start. */
void vmm_signals_init(void);
/* Starts the vCPU threads; the last of them to end destroys the VM's shadow
 * MMU, so that its tables return to its group's pool (vm_get_stats then
 * reports what was recorded at that point). Returns 0, or -errno (the VM is
 * then stopped with UMBRA_STATUS_NO_KVM; vm_wait still must be called). */
int vm_start(struct vm *vm);
/* Waits for the VM to stop; returns umbra's exit status for it (the guest's
 * exit code or an UMBRA_STATUS_*). Guest errors have been printed. */
int vm_wait(struct vm *vm);
const char *vm_name(const struct vm *vm);
/* The VM that cloned vm, or NULL for a VM of the plan. */
const struct vm *vm_parent(const struct vm *vm);
/* The plan's VM that vm is, or that it is a clone (of a clone...) of. */
unsigned int vm_plan_index(const struct vm *vm);
void vm_get_stats(const struct vm *vm, struct vm_stats *stats);
void vm_destroy(struct vm *vm);

/* ---- console output (exit.c) ---- */

/* The most bytes vmm_console_escape() writes for len bytes of input. */
#define VMM_CONSOLE_ESCAPED_MAX(len) (4 * (len))

/*
 * Writes in[0..len), bytes a guest printed, to out as text that a terminal
 * shows and does not obey: printable ASCII (0x20..0x7e), '\n' and '\t' are
 * copied, a backslash becomes two, and every other byte (the other C0
 * controls, ESC among them, DEL, and 0x80..0xff, so also UTF-8) becomes
 * "\xHH" in lowercase hex. The result is unambiguous: the guest's bytes
 * can be read back from it. out holds VMM_CONSOLE_ESCAPED_MAX(len) bytes;
 * returns how many it received (no NUL is added). Pure; any thread.
 */
size_t vmm_console_escape(const char *in, size_t len, char *out);

/* ---- statistics of the whole run (stats.c) ---- */

/* Table memory of the whole process, summed over the groups' pools: their
 * pages, the pages in use (for each pool, the most seen as its VMs stopped,
 * or now if more), against the sum of what each VM reaches (at its stop):
 * what the VMs would need without sharing. */
struct table_memory {
	uint64_t pools, pool_pages, in_use, unshared;
};

void table_memory_get(const struct vmm_host *host, struct vm *const *vms, unsigned int nr_vms,
		      struct table_memory *tm);
/* --stats: one VM's statistics on stderr. */
void vm_stats_print(const char *name, int status, const struct vm_stats *stats);
/* --stats: the table memory and each segment's evictions on stderr. */
void vmm_stats_print_process(const struct table_memory *tm, struct segment *const *segments,
			     unsigned int nr_segments);
/* --stats-json: every VM's statistics (vms[i] or status[i] of a VM that was
 * not created: zeroes) written to path as JSON (docs/config.md). Returns 0,
 * or -errno with err saying "cannot write statistics to 'PATH': reason". */
int vmm_stats_write_json(const char *path, const struct plan *plan, const struct vmm_host *host,
			 struct segment *const *segments, struct vm *const *vms, unsigned int nr_vms, const int *status,
			 const struct table_memory *tm, struct vmm_error *err);

/* ---- the boot state (boot.c): pure code that fills RAM and register
 * structures and calls no KVM, so that it is testable natively ---- */

/* The boot GDT at UMBRA_GDT_GPA: null, code64 (UMBRA_SEL_CODE64), data
 * (UMBRA_SEL_DATA), the TSS's two entries (UMBRA_SEL_TSS). */
#define BOOT_GDT_ENTRIES 5u
/* Flat 64-bit code: limit 0xfffff, G, L (so D/B clear), P, DPL 0, S,
 * type execute/read accessed. */
#define BOOT_GDT_CODE64 0x00af9b000000ffffull
/* Flat data: limit 0xfffff, G, D/B, P, DPL 0, S, type read/write accessed. */
#define BOOT_GDT_DATA 0x00cf93000000ffffull
/* The TSS descriptor's access byte: P, DPL 0, type 64-bit TSS (busy). */
#define BOOT_GDT_TSS_ACCESS 0x8bull

/* What the boot state of a VM depends on. */
struct boot_layout {
	void *ram;         /* guest RAM, guest-physical 0 at ram[0] */
	uint64_t ram_size; /* a multiple of 2 MiB */
	unsigned int nr_vcpus;
	unsigned int nr_segments;
	struct segment *const *segments; /* name, gpa, size, writable are used */
	const char *cmdline;             /* shorter than UMBRA_CMDLINE_MAX */
	uint64_t pool_size;              /* bytes of the table pool at SHADOW_POOL_GPA */
};

/* The end of the RAM an image may load into: below the vCPU stacks. */
uint64_t vm_image_load_max(uint64_t mem, unsigned int vcpus);
/* Writes the boot GDT (UMBRA_GDT_GPA) and TSS (UMBRA_TSS_GPA) into ram. */
void boot_write_gdt(void *ram);
/*
 * Writes page tables from UMBRA_PT_GPA that identity-map RAM (4 KiB pages in
 * the first 2 MiB, page 0 not present; 2 MiB pages above) and every segment
 * (2 MiB pages). Returns the PML4's address (the boot CR3) and the end of the
 * tables in *end, or 0 when they would not fit below UMBRA_IMAGE_MIN_GPA.
 */
uint64_t boot_write_page_tables(const struct boot_layout *l, uint64_t *end);
/* Guest-physical address of vCPU id's boot-information block (the top of
 * its stack region, 64-byte aligned). */
uint64_t boot_info_gpa(uint64_t ram_size, unsigned int id);
/* vCPU id's initial RSP and stack_top: the base of the page that holds its
 * boot-information block; the stack below it stays resident, that page not. */
uint64_t boot_stack_top(uint64_t ram_size, unsigned int id);
/* Writes vCPU id's boot-information block (docs/abi.md). */
void boot_write_info(const struct boot_layout *l, unsigned int id, uint64_t free_start, uint64_t boot_cr3);
struct kvm_sregs;
struct kvm_regs;
/* Sets the long-mode state of docs/abi.md in sregs (segments, TR, GDTR,
 * IDTR, CR0, CR3 = cr3, CR4, EFER with NXE if nxe); other fields are kept. */
void boot_set_sregs(struct kvm_sregs *sregs, uint64_t cr3, bool nxe);
/* Sets regs to the entry state: RIP = entry, RDI = info_gpa, RSP =
 * stack_top, RFLAGS 0x2, every other register 0. */
void boot_set_regs(struct kvm_regs *regs, uint64_t entry, uint64_t info_gpa, uint64_t stack_top);

/* ---- report.c: umbra trace-report ---- */

/* Reads the --trace files @paths[@n] and prints, per delivery mode, the
 * fan-out of their invalidations and the start-to-last-acknowledgement
 * latency, then the totals; with @png, writes a histogram of the latencies
 * there (runs gnuplot).  Returns the exit status (0, or 123 for a file that
 * is not a trace or a plot that failed, after saying why on stderr). */
int vmm_trace_report(const char *const *paths, unsigned int n, const char *png);

/* ---- dump.c: --dump-tables ---- */

struct vmm_dump;
struct vm;
/* An empty graph to be written to @path: 0 or -ENOMEM. */
int vmm_dump_create(const char *path, struct vmm_dump **out);
void vmm_dump_destroy(struct vmm_dump *d);
/* Adds the tables @vm reaches (its roots and below) to @d; called by the
 * VM's last thread as it stops, before its tables are freed, with no lock
 * held. Takes @vm's mmu_lock, then d's lock. A failure to allocate is kept
 * for vmm_dump_write to report. */
void vmm_dump_add_vm(struct vmm_dump *d, struct vm *vm);
/* Writes the graph in the DOT language (Graphviz): 0, or -errno with err. */
int vmm_dump_write(struct vmm_dump *d, struct vmm_error *err);

#endif
