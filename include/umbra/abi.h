/*
 * umbra guest ABI: the boot state a guest finds and the hypercalls it may make.
 *
 * This header is the only thing shared between guest/ and vmm/. docs/abi.md is
 * the prose version; both describe UMBRA_ABI_VERSION below. Any incompatible
 * change bumps the version; a guest checks boot_info->abi_version first.
 *
 * Everything here is freestanding C (no libc) so that guest code can include it.
 */
#ifndef UMBRA_ABI_H
#define UMBRA_ABI_H

#include <stdint.h>

#define UMBRA_ABI_VERSION 3u
#define UMBRA_BOOT_MAGIC 0x52424d55u /* "UMBR" in memory (little-endian) */

/*
 * Guest-physical layout at boot (all addresses identity-mapped, see below).
 *
 *   0x0000_0000 .. 0x0000_0fff   never mapped (NULL dereferences fault)
 *   UMBRA_GDT_GPA                umbra's boot GDT (null, code64, data, TSS)
 *   UMBRA_TSS_GPA                a 64-bit TSS (no IST stacks at boot)
 *   UMBRA_PT_GPA ..              boot page tables: PML4, PDPT, PDs
 *   UMBRA_IMAGE_MIN_GPA ..       the ELF image's PT_LOAD segments
 *   ... free RAM ...             boot_info.free_start .. boot_info.free_end
 *   top of RAM                   per-vCPU stacks, boot info at each stack top
 *
 * What stays resident (pre-faulted in every address space, docs/abi.md
 * "What stays resident"): the boot GDT/TSS page, the image's PT_LOAD
 * segments marked UMBRA_PF_RESIDENT, each vCPU's stack (not the page of its
 * boot info), and the guest's PIN ranges. Everything else (the image's other
 * segments, bss included, the boot page tables, the boot info, free RAM) is
 * faulted in on demand.
 */
#define UMBRA_GDT_GPA 0x1000u
#define UMBRA_TSS_GPA 0x1800u
#define UMBRA_PT_GPA 0x2000u
#define UMBRA_IMAGE_MIN_GPA 0x100000u /* PT_LOAD segments must start here or above */

/* Boot GDT selectors (the guest may load its own GDT; the runtime does). */
#define UMBRA_SEL_CODE64 0x08u
#define UMBRA_SEL_DATA 0x10u
#define UMBRA_SEL_TSS 0x18u

/* Each vCPU gets UMBRA_VCPU_STACK_SIZE bytes at the top of RAM: vCPU i's region
 * is [ram_size - (i+1)*size, ram_size - i*size); its boot_info sits in the
 * region's top page and RSP starts at that page's base (stack_top), so the
 * stack below it stays resident and the boot info page does not. */
#define UMBRA_VCPU_STACK_SIZE 0x10000u

/* A PT_LOAD segment whose p_flags carry UMBRA_PF_RESIDENT (a bit of ELF's
 * PF_MASKOS) stays mapped in every address space for the VM's life: it holds
 * what the guest's exception entry needs before any fault can be resolved
 * (handler code, IDT, GDT, TSS). At most UMBRA_MAX_RESIDENT_SEGMENTS such
 * segments covering at most UMBRA_RESIDENT_MAX bytes in all. */
#define UMBRA_PF_RESIDENT 0x00100000u
#define UMBRA_MAX_RESIDENT_SEGMENTS 4u
#define UMBRA_RESIDENT_MAX (4ull << 20)

#define UMBRA_MAX_VCPUS 64u
#define UMBRA_MAX_SEGMENTS 16u
#define UMBRA_CMDLINE_MAX 256u
#define UMBRA_SEGMENT_NAME_MAX 32u

/* A shared segment attached to this VM (none in ABI version 1's skeleton; the
 * field exists so the layout does not change when segments arrive). */
struct umbra_segment_info {
	char name[UMBRA_SEGMENT_NAME_MAX]; /* NUL-terminated */
	uint64_t gpa;                      /* guest-physical base, 2 MiB aligned */
	uint64_t size;                     /* bytes, multiple of 4 KiB */
	uint64_t flags;                    /* UMBRA_SEGMENT_* */
};

#define UMBRA_SEGMENT_WRITABLE 0x1u

/*
 * Boot-information block. RDI holds its guest-physical (= virtual) address at
 * entry. One block per vCPU; every field but vcpu_id and the stack bounds is
 * the same in all blocks of a VM.
 */
struct umbra_boot_info {
	uint32_t magic;        /* UMBRA_BOOT_MAGIC */
	uint32_t abi_version;  /* UMBRA_ABI_VERSION */
	uint32_t size;         /* sizeof(struct umbra_boot_info) as built by umbra */
	uint32_t vcpu_id;      /* 0 .. nr_vcpus - 1 */
	uint32_t nr_vcpus;
	uint32_t nr_segments;  /* valid entries in segments[] */
	uint64_t ram_size;     /* bytes of private RAM at guest-physical 0 */
	uint64_t free_start;   /* first free page after the image and boot data */
	uint64_t free_end;     /* end of free RAM (start of the vCPU stacks) */
	uint64_t stack_bottom; /* this vCPU's stack region */
	uint64_t stack_top;
	char cmdline[UMBRA_CMDLINE_MAX]; /* NUL-terminated, from --cmdline */
	struct umbra_segment_info segments[UMBRA_MAX_SEGMENTS];
	/* Version 2: the guest CR3 of the boot page tables (the CPU's CR3 holds
	 * umbra's shadow of them, in the table pool: never load it yourself). */
	uint64_t boot_cr3;
	uint64_t pool_gpa;   /* guest-physical base of the shadow-table pool */
	uint64_t pool_size;  /* its size in bytes (read-only where the CPU allows: docs/abi.md) */
};

/*
 * Hypercalls: `out %eax, %dx` with DX = UMBRA_HC_PORT. Registers at the out:
 * RAX = hypercall number, RDI, RSI, R8, R9 = arguments 0..3. umbra writes the
 * result to RAX: 0 or a positive value on success, a negative UMBRA_E* on error.
 * An invalid hypercall (unknown number, bad argument) also prints an error
 * naming the hypercall and the argument on umbra's console, and stops the VM
 * (exit status UMBRA_STATUS_GUEST_ERROR).
 */
#define UMBRA_HC_PORT 0x0510u

enum umbra_hypercall {
	UMBRA_HC_EXIT = 0,      /* a0 = exit code 0..UMBRA_EXIT_CODE_MAX; never returns */
	UMBRA_HC_EXCEPTION = 1, /* a0 = vector, a1 = RIP, a2 = error code, a3 = CR2;
	                           an unexpected exception: umbra reports it and
	                           stops the VM; never returns */
	UMBRA_HC_CONSOLE_WRITE = 2, /* a0 = guest-physical address, a1 = length
	                               (1..UMBRA_CONSOLE_WRITE_MAX, inside RAM);
	                               prints the bytes; returns the length */
	/* Paravirtual shadow paging (docs/abi.md). The guest owns its page tables
	 * in its RAM; the CPU runs on umbra's shadow of them. */
	UMBRA_HC_SET_CR3 = 3,    /* a0 = guest CR3 (a 4 KiB-aligned PML4 in RAM):
	                            switch this vCPU to that address space; the
	                            guest then reloads CR3 (mov %cr3,%rax;
	                            mov %rax,%cr3) to flush its own TLB */
	UMBRA_HC_PAGE_FAULT = 4, /* a0 = CR2, a1 = the #PF error code: from the
	                            guest's #PF handler. Returns 0 (fixed: return
	                            and retry the access) or UMBRA_PF_GUEST | error
	                            code (the guest's own tables forbid it) */
	UMBRA_HC_INVLPG = 5,     /* a0 = linear address; then invlpg it locally */
	UMBRA_HC_FLUSH = 6,      /* full flush of the current address space;
	                            then reload CR3 locally */
	UMBRA_HC_FLUSH_ACK = 7,  /* from the NMI handler, after it flushed; once
	                            per shootdown NMI received, never more */
	UMBRA_HC_PIN = 8,        /* a0 = linear address, a1 = length: keep this
	                            range mapped (pre-faulted) in every address
	                            space of the VM; at most UMBRA_MAX_PINS,
	                            UMBRA_PIN_TOTAL_MAX bytes in all */
	UMBRA_HC_READY = 9,      /* this vCPU's IDT, with its NMI handler, is
	                            loaded: umbra may inject shootdown NMIs from
	                            now on; the guest then reloads CR3.  Returns
	                            0, or, where umbra clones VMs when they are
	                            ready (--clone), k in child k on the vCPU
	                            whose READY was the VM's last */
	UMBRA_HC_SYNC_TABLE = 10, /* a0 = guest-physical address of a page-table
	                             page (4 KiB-aligned) the guest changed, which
	                             other address spaces may also use: every
	                             shadow of it, in every address space, is
	                             brought up to date and every vCPU flushed;
	                             then invlpg locally; returns 0 */
	UMBRA_HC_CLONE = 11,     /* a0 = n, 1..UMBRA_CLONE_MAX: clone the VM n
	                            times, as fork does (docs/abi.md, "Clones"):
	                            every vCPU stops, the VM's memory, vCPU state
	                            and shadow tables are shared copy-on-write with
	                            n new VMs, and all run on from this point;
	                            returns 0 in the parent and k (1..n) in child
	                            k; -UMBRA_EAGAIN if another vCPU of the VM
	                            is cloning it (in the parent and in the
	                            clones that one makes); -UMBRA_ENOSPC or
	                            -UMBRA_ENOMEM in the parent alone when no
	                            clone could be made */
	UMBRA_HC_NR
};

#define UMBRA_CONSOLE_WRITE_MAX 4096u
#define UMBRA_PF_GUEST (1ull << 32)
#define UMBRA_MAX_PINS 16u
#define UMBRA_PIN_MAX_BYTES (64ull << 20)
/* The bytes all of a VM's PINs may cover together (the resident segments
 * and the stacks aside): every CR3 load pre-faults them, so they bound
 * its work (2048 pages). Room for handler code, an IDT, a GDT and a 64 KiB
 * stack for each of 64 vCPUs (4 MiB). */
#define UMBRA_PIN_TOTAL_MAX (8ull << 20)

/* Errors returned in RAX (as negative numbers). */
#define UMBRA_EAGAIN 11
#define UMBRA_ENOMEM 12
#define UMBRA_EINVAL 22
#define UMBRA_ENOSPC 28

/* The most clones one CLONE makes; a run holds at most 256 VMs in all. */
#define UMBRA_CLONE_MAX 64u

/* Console: a 16550-style UART's transmit register. Writes of one byte to
 * UMBRA_CONSOLE_PORT are printed; reads of the line-status register
 * (UMBRA_CONSOLE_PORT + 5) return "transmitter empty". */
#define UMBRA_CONSOLE_PORT 0x3f8u

/* umbra's exit status: the guest's exit code 0..UMBRA_EXIT_CODE_MAX when it
 * exits through UMBRA_HC_EXIT; otherwise one of these. */
#define UMBRA_EXIT_CODE_MAX 119
#define UMBRA_STATUS_GUEST_ERROR 120 /* exception, triple fault, bad hypercall, failed entry */
#define UMBRA_STATUS_IMAGE_ERROR 121 /* image missing or malformed */
#define UMBRA_STATUS_NO_KVM 122      /* /dev/kvm missing or a KVM call failed */
#define UMBRA_STATUS_USAGE 123       /* bad command line or config */
#define UMBRA_STATUS_SEGMENT_ERROR 124 /* a segment could not be created or preloaded */

#endif /* UMBRA_ABI_H */
