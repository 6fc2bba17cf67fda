/*
 * The guest runtime's API for images (freestanding, no libc).
 *
 * An image defines `int main(const struct umbra_boot_info *boot)`. The runtime
 * calls it on every vCPU after loading its own GDT (with a per-vCPU TSS) and
 * IDT. When main returns on vCPU 0 the VM exits with main's return value; on
 * any other vCPU the vCPU halts. Any exception the image does not expect is
 * reported to umbra (vector, RIP, error code, CR2), which stops the VM.
 */
#ifndef UMBRA_GUEST_H
#define UMBRA_GUEST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "umbra/abi.h"
#include "umbra_string.h"

int main(const struct umbra_boot_info *boot);

/*
 * Resident code and data (docs/abi.md, "What stays resident"): the linker
 * script gathers these sections into the image's UMBRA_PF_RESIDENT segments,
 * which umbra keeps mapped in every address space for the VM's life. Mark
 * what an exception handler touches before the fault it handles is resolved
 * (anything else is faulted in on demand, like all other memory): the
 * runtime's exception entry, IDT, GDTs and TSSs are. Data with an
 * initialiser goes in GUEST_RESIDENT_DATA, zero-initialised data in
 * GUEST_RESIDENT_BSS.
 */
#define GUEST_RESIDENT_TEXT __attribute__((section(".text.resident"), noinline))
#define GUEST_RESIDENT_DATA __attribute__((section(".data.resident")))
#define GUEST_RESIDENT_BSS __attribute__((section(".bss.resident")))
/* Inlined into resident code wherever it is called from there. */
#define GUEST_ALWAYS_INLINE inline __attribute__((always_inline))

/* Hypercalls (see umbra_abi.h for the register convention). */
static GUEST_ALWAYS_INLINE long hypercall4(unsigned long nr, unsigned long a0, unsigned long a1,
			      unsigned long a2, unsigned long a3)
{
	register unsigned long r8 __asm__("r8") = a2;
	register unsigned long r9 __asm__("r9") = a3;
	unsigned long ret = nr;

	__asm__ volatile("outl %%eax, %%dx"
			 : "+a"(ret)
			 : "d"((uint16_t)UMBRA_HC_PORT), "D"(a0), "S"(a1), "r"(r8), "r"(r9)
			 : "memory");
	return (long)ret;
}

__attribute__((noreturn)) void guest_exit(int code);

/* Console (UMBRA_CONSOLE_PORT). printf supports %d %i %u %x %X %p %s %c %%,
 * the l/ll/z length modifiers, a field width and the 0 and - flags. */
void console_putc(char c);
void console_write(const char *s, size_t len);
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static GUEST_ALWAYS_INLINE void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
__attribute__((noreturn)) static GUEST_ALWAYS_INLINE void cpu_halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}
static GUEST_ALWAYS_INLINE uint64_t read_cr2(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr2, %0" : "=r"(v));
	return v;
}
static GUEST_ALWAYS_INLINE uint64_t read_cr3(void)
{
	uint64_t v;
	__asm__ volatile("mov %%cr3, %0" : "=r"(v));
	return v;
}
/* The time-stamp counter (rdtsc). */
static GUEST_ALWAYS_INLINE uint64_t read_tsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* Command line "key=value key2=value2 flag": copies key's value into buf
 * (NUL-terminated, truncated to size) and returns 1, or returns 0 if absent.
 * A bare "flag" has the empty value. */
int cmdline_get(const char *cmdline, const char *key, char *buf, size_t size);
/* key's value as a number (decimal or 0x hex), or def if absent or malformed. */
uint64_t cmdline_u64(const char *cmdline, const char *key, uint64_t def);
/* The attached segment called name, or NULL. */
const struct umbra_segment_info *boot_segment(const struct umbra_boot_info *boot, const char *name);
/* The attached segment named by the command line's key (e.g. "seg=data"), or
 * NULL after printing why not (prefixed with prog). */
const struct umbra_segment_info *cmdline_segment(const struct umbra_boot_info *boot, const char *prog,
						 const char *key);

/* Clones the VM n times (UMBRA_HC_CLONE, docs/abi.md "Clones"): 0 in the
 * parent, k (1..n) in clone k, or a negative UMBRA_E* error. */
static GUEST_ALWAYS_INLINE long guest_clone(unsigned long n)
{
	return hypercall4(UMBRA_HC_CLONE, n, 0, 0, 0);
}
/* Where umbra cloned the VM as it became ready (--clone): the clone's index
 * (READY's result on its last vCPU), 0 in the parent and in a VM not cloned
 * that way. */
long guest_clone_index(void);

/* A sense-reversing barrier for all nr_vcpus vCPUs. */
void vcpu_barrier(const struct umbra_boot_info *boot);

#endif
