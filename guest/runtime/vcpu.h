/*
 * Per-vCPU descriptor tables (vcpu.c): uses nothing else in the runtime, so
 * that paging.c and runtime.c may both use it.
 */
#ifndef UMBRA_GUEST_VCPU_H
#define UMBRA_GUEST_VCPU_H

#include <stdint.h>

#include "umbra/abi.h"

/* The operand of lgdt, lidt and sgdt. */
struct descriptor_table_pointer {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

/* Loads this vCPU's own GDT (code, data, its TSS) and TSS; reloads the
 * segment registers.  Called once per vCPU by runtime_start, first. */
void vcpu_gdt_load(const struct umbra_boot_info *boot);

/* This vCPU's id (from its GDT's address: each vCPU loads its own), or
 * UMBRA_MAX_VCPUS before vcpu_gdt_load on this vCPU. Resident. */
uint32_t runtime_vcpu_id(void);

#endif
